"""The pydantic-ai adapter's model forks are governed, as the runtime's and LangChain's: a
``Fork`` of type ``model`` is a shadow call that runs the model points itself (marked
``caller={"type": "shadow", ...}``, so a hook can leave it alone and it does not fork
again), that budgets count and can refuse, whose reservation comes back however it ends,
whose ``Cancel`` or failure ends the shadow alone (never the run, never its answer), and
whose events are published and stored. Offline models only (FunctionModel)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pydantic_ai import Agent
from pydantic_ai.exceptions import ModelHTTPError
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from llmspell.builtin.cost import (
    RESERVATION_METADATA,
    Budget,
    CostConfig,
    CostTrackingHook,
    TokenPrice,
)
from llmspell.events.store.base import EventQuery
from llmspell.hooks import HookContext, HookPoint
from llmspell.hooks.result import Cancel, Fork, ForkOperation, Redirect
from llmspell.integrations.pydantic_ai import LlmspellCapability
from llmspell.runtime.system import System
from tests.integrations.conftest_pydantic_ai import capture

P = HookPoint
SHADOW = {"type": "shadow", "name": "function/main-model"}
PER_TOKEN = TokenPrice(input=Decimal(0), output=Decimal(1_000_000))  # output only, $1 a token
DEARER = TokenPrice(input=Decimal(0), output=Decimal(2_000_000))
ESTIMATE = Decimal(100)   # default_max_tokens=100 at $1 a token: one call's estimate


def answering(text: str, name: str, asked: list[list[ModelMessage]] | None = None,
              fail: Exception | None = None) -> FunctionModel:
    """A model that answers ``text`` (streamed too); ``asked`` collects each request's
    messages; ``fail`` is raised instead of answering."""

    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if asked is not None:
            asked.append(list(messages))
        if fail is not None:
            raise fail
        return ModelResponse(parts=[TextPart(text)])

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> Any:
        answer(messages, info)
        yield text

    return FunctionModel(answer, stream_function=stream, model_name=name)


def fork_main_calls(ctx: HookContext) -> Fork | None:
    """Fork each call to the ``shadow`` model, but not a shadow call itself."""
    if (ctx.data.get("caller") or {}).get("type") == "shadow":
        return None
    return Fork((ForkOperation(type="model", target="shadow"),))


def agent_with(system: System, shadow: FunctionModel,
               main_asked: list[list[ModelMessage]] | None = None) -> Agent[None, str]:
    return Agent(answering("main answer", "main-model", main_asked), name="calc",
                 capabilities=[LlmspellCapability(system, models={"shadow": shadow})])


async def output_of(agent: Agent[None, str], stream: bool, prompt: str = "hi") -> str:
    if stream:
        async with agent.run_stream(prompt) as result:
            return await result.get_output()
    return (await agent.run(prompt)).output


def as_alice(system: System) -> None:
    """The application says who runs the agent (trusted metadata, read by cost tracking)."""
    system.registry.register(P.BEFORE_AGENT_EXECUTION,
                             lambda ctx: ctx.metadata.update(user="alice"),
                             name="who-is-calling", priority="highest")


def user_budget(limit: str, **prices: TokenPrice) -> CostTrackingHook:
    return CostTrackingHook(CostConfig(
        prices=prices, use_genai_prices=False, default_max_tokens=100,
        budgets=(Budget(scope="user:alice", limit=Decimal(limit)),)))


# -- the model points run for the fork, marked as a shadow ------------------------------------

@pytest.mark.parametrize("stream", [False, True])
async def test_the_model_points_see_the_fork_marked_as_a_shadow(system: System,
                                                                stream: bool) -> None:
    seen: dict[str, list[tuple[str, Any, int | None]]] = {"before": [], "after": []}

    def before(ctx: HookContext) -> Fork | None:
        seen["before"].append((ctx.data["model"], ctx.data["caller"], ctx.data["turn"]))
        return fork_main_calls(ctx)

    system.registry.register(P.BEFORE_MODEL_CALL, before, name="forker")
    system.registry.register(
        P.AFTER_MODEL_CALL,
        lambda ctx: seen["after"].append((ctx.data["model"], ctx.data["caller"],
                                          ctx.data["result"]["message"]["content"])),
        name="after")
    asked: list[list[ModelMessage]] = []
    agent = agent_with(system, answering("shadow answer", "shadow-model", asked))

    assert await output_of(agent, stream) == "main answer"
    caller = {"type": "agent", "name": "calc"}
    assert sorted(seen["before"], key=str) == sorted(
        [("main-model", caller, 1), ("shadow-model", SHADOW, 1)], key=str)
    assert sorted(seen["after"], key=str) == sorted(
        [("main-model", caller, "main answer"), ("shadow-model", SHADOW, "shadow answer")],
        key=str)
    # The shadow was sent the run's request (the user's prompt).
    assert len(asked) == 1
    assert [p.content for m in asked[0] for p in getattr(m, "parts", ())
            if isinstance(p, UserPromptPart)] == ["hi"]


async def test_a_shadow_does_not_fork_again(system: System) -> None:
    # A hook forking every call, shadows included: each main call has one shadow.
    system.registry.register(
        P.BEFORE_MODEL_CALL, lambda ctx: Fork((ForkOperation(type="model", target="shadow"),)),
        name="forks-everything")
    asked: list[list[ModelMessage]] = []
    agent = agent_with(system, answering("shadow answer", "shadow-model", asked))
    for _ in range(2):
        assert (await agent.run("hi")).output == "main answer"
    assert len(asked) == 2


async def test_a_redirected_shadow_goes_to_the_other_model_through_its_points(
        system: System) -> None:
    seen: list[tuple[str, Any]] = []

    def before(ctx: HookContext) -> Any:
        seen.append((ctx.data["model"], ctx.data["caller"]))
        if ctx.data["model"] == "shadow-model":
            return Redirect("other")
        return fork_main_calls(ctx)

    system.registry.register(P.BEFORE_MODEL_CALL, before, name="router")
    shadow_asked: list[list[ModelMessage]] = []
    other_asked: list[list[ModelMessage]] = []
    agent: Agent[None, str] = Agent(
        answering("main answer", "main-model"), name="calc",
        capabilities=[LlmspellCapability(system, models={
            "shadow": answering("shadow", "shadow-model", shadow_asked),
            "other": answering("other", "other-model", other_asked)})])
    assert (await agent.run("hi")).output == "main answer"
    assert not shadow_asked and len(other_asked) == 1
    assert ("other-model", SHADOW) in seen


# -- budgets count the fork and can refuse it -------------------------------------------------

async def test_a_user_budget_counts_the_fork(system: System) -> None:
    as_alice(system)
    cost = user_budget("1000", **{"main-model": PER_TOKEN, "shadow-model": PER_TOKEN})
    cost.install(system.registry)
    system.registry.register(P.BEFORE_MODEL_CALL, fork_main_calls, name="forker")
    agent = agent_with(system, answering("shadow answer", "shadow-model"))
    assert (await agent.run("hi")).output == "main answer"
    records = {(r.model, r.user) for r in cost.history()}
    assert records == {("main-model", "alice"), ("shadow-model", "alice")}
    stats = cost.stats()
    assert stats.reserved == 0
    assert stats.budgets[0].spent == stats.total_cost > 0


@pytest.mark.parametrize("stream", [False, True])
async def test_a_user_budget_refuses_the_fork_and_the_run_goes_on(system: System,
                                                                  stream: bool) -> None:
    # Alice's budget holds the main call's estimate (100), not the dearer shadow's (200):
    # the shadow is refused before its model is asked; the run is not.
    as_alice(system)
    cost = user_budget("150", **{"main-model": PER_TOKEN, "shadow-model": DEARER})
    cost.install(system.registry)
    system.registry.register(P.BEFORE_MODEL_CALL, fork_main_calls, name="forker")
    events = capture(system, "model.**")
    shadow_asked: list[list[ModelMessage]] = []
    main_asked: list[list[ModelMessage]] = []
    agent = agent_with(system, answering("shadow answer", "shadow-model", shadow_asked),
                       main_asked)

    assert await output_of(agent, stream) == "main answer"
    assert not shadow_asked and len(main_asked) == 1
    stats = cost.stats()
    assert stats.blocked_calls == 1 and stats.reserved == 0
    assert {r.model for r in cost.history()} == {"main-model"}
    await system.bus.drain()
    [failed] = [e for e in events if e.event_type == "model.function.failed"]
    assert failed.data["caller"] == SHADOW and failed.data["model"] == "shadow-model"
    assert "budget user:alice" in failed.data["error"]
    assert not [e for e in events if e.event_type == "model.function.shadow"]


# -- a hook cancelling the fork, a failing fork: the run and its answer are untouched ---------

async def test_a_hook_cancelling_only_the_fork_leaves_the_answer_unchanged(
        system: System) -> None:
    # Cost tracking reserves the shadow's estimate; a later hook cancels the shadow: the
    # reservation comes back (the shadow's operation scope), the main call goes on.
    cost = CostTrackingHook(CostConfig(
        prices={"main-model": PER_TOKEN, "shadow-model": PER_TOKEN}, use_genai_prices=False,
        default_max_tokens=100, budgets=(Budget(limit=Decimal(1000)),)))
    cost.install(system.registry)
    held: list[tuple[Any, Decimal]] = []
    system.registry.register(P.BEFORE_MODEL_CALL, fork_main_calls, name="forker")

    def no_shadows(ctx: HookContext) -> Cancel | None:
        if ctx.data["caller"]["type"] != "shadow":
            return None
        # The shadow's own reservation (cost tracking drops the one its parent named).
        held.append((ctx.metadata.get(RESERVATION_METADATA), cost.stats().reserved))
        return Cancel("no shadow traffic")

    system.registry.register(P.BEFORE_MODEL_CALL, no_shadows, name="no-shadows",
                             priority=100)
    shadow_asked: list[list[ModelMessage]] = []
    main_asked: list[list[ModelMessage]] = []
    agent = agent_with(system, answering("SHADOW ANSWER", "shadow-model", shadow_asked),
                       main_asked)

    result = await agent.run("hi")
    assert result.output == "main answer"
    assert not shadow_asked and len(main_asked) == 1
    assert "SHADOW" not in repr(result.all_messages())
    # The shadow was priced and reserved while it was decided on, then given back.
    [(reservation, reserved)] = held
    assert reservation is not None and reserved >= ESTIMATE
    stats = cost.stats()
    assert stats.reserved == 0 and stats.blocked_calls == 0
    assert {r.model for r in cost.history()} == {"main-model"}


@pytest.mark.parametrize("stream", [False, True])
async def test_a_failing_fork_does_not_fail_the_run(system: System, stream: bool) -> None:
    errors: list[tuple[str, Any, Any]] = []
    system.registry.register(P.BEFORE_MODEL_CALL, fork_main_calls, name="forker")
    system.registry.register(
        P.MODEL_CALL_ERROR,
        lambda ctx: errors.append((ctx.data["model"], ctx.data["caller"], ctx.data["status"])),
        name="errors")
    events = capture(system, "model.**")
    broken = answering("never", "shadow-model",
                       fail=ModelHTTPError(503, "shadow-model", "overloaded"))
    agent = agent_with(system, broken)

    assert await output_of(agent, stream) == "main answer"
    assert errors == [("shadow-model", SHADOW, 503)]
    await system.bus.drain()
    [failed] = [e for e in events if e.event_type == "model.function.failed"]
    assert failed.data["caller"] == SHADOW and failed.data["status"] == 503
    completed = [e for e in events if e.event_type == "model.function.completed"]
    assert [e.data["model"] for e in completed] == ["main-model"]


# -- the fork's events are published and stored ------------------------------------------------

async def test_the_forks_events_are_in_the_store(system: System) -> None:
    system.registry.register(P.AFTER_MODEL_CALL, fork_main_calls, name="forker")
    agent = agent_with(system, answering("shadow answer", "shadow-model"))
    assert (await agent.run("hi")).output == "main answer"
    await system.bus.drain()
    assert system.store is not None
    system.store.flush()
    [started] = system.store.query(EventQuery(pattern="agent.calc.started"))
    mine = system.store.query(EventQuery(correlation_id=started.metadata.correlation_id))
    shadow_done = [e for e in mine if e.event_type == "model.function.completed"
                   and e.data["caller"] == SHADOW]
    assert [e.data["model"] for e in shadow_done] == ["shadow-model"]
    assert shadow_done[0].data["response"]["content"] == "shadow answer"
    assert shadow_done[0].metadata.run_id == started.metadata.run_id
    [shadow] = [e for e in mine if e.event_type == "model.function.shadow"]
    assert shadow.data["shadowing"] == "function/main-model"
