"""Cost tracking: whose budget a run spends (trusted metadata only, ``user_from_params`` to
opt back in) and reservations given back as soon as a model call ends without an answer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import pytest

from llmspell.builtin.caching import CachingHook
from llmspell.builtin.cost import (
    RESERVATION_METADATA,
    Budget,
    CostConfig,
    CostTrackingHook,
    TokenPrice,
)
from llmspell.core.operation_scope import OperationScope, on_operation_end
from llmspell.errors import (
    ConfigurationError,
    InvalidValueError,
    ModelCallCancelledError,
    OperationCancelled,
    ProviderError,
)
from llmspell.hooks import (
    Cancel,
    ComponentId,
    ComponentType,
    HookContext,
    HookPoint,
    Modified,
    Redirect,
    Replace,
    Retry,
)
from llmspell.runtime import System, SystemConfig
from llmspell.runtime.providers import ScriptedProvider
from llmspell.runtime.providers.base import Message
from tests.ci import require_module

QUESTION = "q" * 400   # ScriptedProvider: 100 input tokens
ANSWER = "a" * 40      # 10 output tokens
HI = [Message(role="user", content="hi")]
# Output only, $1 a token: a call's estimate is its max_tokens (100 by default here) and
# its real cost its 10 output tokens. A budget of 150 holds one estimate, not two.
PER_TOKEN = TokenPrice(input=Decimal(0), output=Decimal(1_000_000))
ESTIMATE = Decimal(100)
LATER = 100   # a priority after cost tracking's (-700) at BeforeModelCall


def provider(name: str = "openai", asked: list[int] | None = None) -> ScriptedProvider:
    def reply(messages: Any, tools: Any) -> str:
        if asked is not None:
            asked.append(1)
        return ANSWER

    return ScriptedProvider(reply, model="gpt-4o-mini", name=name)


def budget_hook(limit: str = "150", **config: Any) -> CostTrackingHook:
    return CostTrackingHook(CostConfig(
        prices={"gpt-4o-mini": PER_TOKEN, "gpt-4o": PER_TOKEN}, use_genai_prices=False,
        budgets=(Budget(limit=Decimal(limit)),), default_max_tokens=100, **config))


def held_by(hook: CostTrackingHook, held: list[Decimal], name: str = "openai",
            answer: str = ANSWER) -> ScriptedProvider:
    """A provider that notes in ``held`` what ``hook`` holds reserved while it answers."""
    def reply(messages: Any, tools: Any) -> str:
        held.append(hook.stats().reserved)
        return answer

    return ScriptedProvider(reply, model="gpt-4o-mini", name=name)


@asynccontextmanager
async def installed(hook: CostTrackingHook, name: str = "decider",
                    decide: Callable[[HookContext], Any] | None = None,
                    watch: list[Decimal] | None = None) -> AsyncIterator[System]:
    """A System (memory store) with ``hook`` installed; ``decide`` registered as ``name``
    at BeforeModelCall after it (LATER); ``watch`` given, a hook just before that one
    notes in it what ``hook`` holds reserved."""
    async with System(SystemConfig(store="memory")) as system:
        hook.install(system.registry)
        if watch is not None:
            system.registry.register(HookPoint.BEFORE_MODEL_CALL,
                                     lambda ctx: watch.append(hook.stats().reserved),
                                     name="watcher", priority=LATER - 1)
        if decide is not None:
            system.registry.register(HookPoint.BEFORE_MODEL_CALL, decide, name=name,
                                     priority=LATER)
        yield system


def retry_first(ctx: HookContext) -> Retry | None:
    return Retry(delay=0, max_attempts=2) if ctx.data["attempt"] == 1 else None


# -- whose budget: the user ------------------------------------------------------------------
def user_hook(**config: Any) -> CostTrackingHook:
    """$0.00035 a call; estimates that let every call through (the budgets here are
    crossed by spending, and block the next run)."""
    return CostTrackingHook(CostConfig(
        prices={"gpt-4o-mini": TokenPrice(input=Decimal("2.50"), output=Decimal("10"))},
        use_genai_prices=False, default_max_tokens=1, **config), tokenizer=lambda text: 0)


def says_the_user_is(system: System, user: str) -> None:
    """The application's own hook, naming the caller in the metadata (first of all)."""
    system.registry.register(HookPoint.BEFORE_AGENT_EXECUTION,
                             lambda ctx: ctx.metadata.update(user=user),
                             name="who-is-calling", priority="highest")


async def test_a_run_input_naming_users_does_not_choose_whose_budget_is_spent() -> None:
    # A per-user budget for alice; the runs' input (a model's or an end user's choice)
    # names alice and then new users: none of it is read.
    hook = user_hook(
        budgets=(Budget(scope="user:alice", limit=Decimal("0.0001")),))
    async with installed(hook) as system:
        agent = system.agents.create("a", provider=provider())
        for user in ("alice", "mallory-1", "mallory-2"):
            await agent.run({"input": QUESTION, "user": user})
    assert [r.user for r in hook.history()] == [None, None, None]
    stats = hook.stats()
    assert stats.by_user == {} and stats.budgets[0].spent == 0
    assert [r.group["user"] for r in hook.report(group_by=("user",))] == [None]


async def test_the_user_comes_from_trusted_metadata_whatever_the_input_says() -> None:
    hook = user_hook(
        budgets=(Budget(scope="user:alice", limit=Decimal("0.0005")),))
    async with installed(hook) as system:
        # The application knows who is calling and says so in the metadata.
        says_the_user_is(system, "alice")
        agent = system.agents.create("a", provider=provider())
        await agent.run({"input": QUESTION, "user": "mallory-1"})   # 0.00035: fits
        await agent.run({"input": QUESTION, "user": "mallory-2"})   # crosses 0.0005
        with pytest.raises(OperationCancelled, match="user:alice"):
            await agent.run({"input": QUESTION, "user": "mallory-3"})
    assert {r.user for r in hook.history()} == {"alice"}
    assert set(hook.stats().by_user) == {"alice"}


async def test_a_parent_context_names_the_user() -> None:
    hook = user_hook()
    parent = HookContext(point="request", component=ComponentId(type=ComponentType.SYSTEM,
                                                                name="web"),
                         metadata={"user": "ann", "session": "s-9"})
    async with installed(hook) as system:
        agent = system.agents.create("a", provider=provider())
        await agent.run({"input": QUESTION, "user": "bob"}, parent=parent)
    [record] = hook.history()
    assert (record.user, record.session) == ("ann", "s-9")


async def test_user_from_params_reads_the_run_input_as_before() -> None:
    hook = user_hook(
        budgets=(Budget(scope="user:alice", limit=Decimal("0.0005")),),
        user_from_params=True)
    async with installed(hook) as system:
        agent = system.agents.create("a", provider=provider())
        await agent.run({"input": QUESTION, "user": "alice", "session": "s1"})
        await agent.run({"input": QUESTION, "user": "alice"})
        with pytest.raises(OperationCancelled, match="user:alice"):
            await agent.run({"input": QUESTION, "user": "alice"})
        await agent.run({"input": QUESTION, "user": "bob"})    # bob has no budget
    assert [r.user for r in hook.history()] == ["alice", "alice", "bob"]
    assert hook.history()[0].session == "s1"


async def test_metadata_wins_over_the_input_even_when_reading_it() -> None:
    hook = user_hook(user_from_params=True)
    async with installed(hook) as system:
        says_the_user_is(system, "alice")
        agent = system.agents.create("a", provider=provider())
        await agent.run({"input": QUESTION, "user": "mallory"})
    assert hook.history()[0].user == "alice"


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_user_from_params_must_be_a_bool(value: Any) -> None:
    with pytest.raises(InvalidValueError, match="user_from_params must be True or False") \
            as info:
        CostConfig(user_from_params=value)
    assert info.value.hint


def test_both_built_ins_name_the_option_alike() -> None:
    from llmspell.builtin.rate_limit import RateLimitConfig

    assert CostConfig().user_from_params is False
    assert RateLimitConfig().user_from_params is False


# -- reservations given back when the call ends without an answer ---------------------------
async def test_a_later_cancel_gives_the_reservation_back() -> None:
    hook = budget_hook()
    refuse = {"on": True}
    async with installed(hook, "moderation",
                         lambda ctx: Cancel("moderation said no") if refuse["on"] else None
                         ) as system:
        for _ in range(3):
            with pytest.raises(ModelCallCancelledError, match="moderation said no"):
                await system.models.call(provider(), HI)
            assert hook.stats().reserved == 0
        refuse["on"] = False
        # Nothing spent, nothing held: the call fits (it was refused before the fix).
        result = await system.models.call(provider(), HI)
    assert result.completion.message.content == ANSWER
    stats = hook.stats()
    assert stats.reserved == 0 and stats.blocked_calls == 0 and stats.total_cost == 10


async def test_a_later_replace_gives_the_reservation_back() -> None:
    hook = budget_hook()
    asked: list[int] = []
    answering = provider(asked=asked)
    async with installed(hook, "replacer",
                         lambda ctx: Replace("from the replacement")) as system:
        for _ in range(3):
            result = await system.models.call(answering, HI)
            assert result.replaced and hook.stats().reserved == 0
    assert asked == [] and hook.stats().blocked_calls == 0


async def test_a_later_modified_request_keeps_then_releases_its_reservation() -> None:
    hook = budget_hook()
    seen: list[Decimal] = []

    def shorten(ctx: HookContext) -> Modified:
        return Modified({**ctx.data, "params": {**ctx.data["params"], "temperature": 0.0}})

    async with installed(hook, "rewriter", shorten) as system:
        await system.models.call(held_by(hook, seen), HI)
    assert seen == [ESTIMATE]     # held while the provider answered
    assert hook.stats().reserved == 0 and hook.stats().total_cost == 10


async def test_a_later_redirect_gives_the_reservation_back_before_the_target_runs() -> None:
    hook = budget_hook()
    held: list[Decimal] = []
    async with installed(
            hook, "failover",
            lambda ctx: Redirect("backup/gpt-4o-mini") if ctx.data["provider"] == "openai"
            else None) as system:
        system.models.register(held_by(hook, held, name="backup", answer="from the backup"))
        # The original's estimate plus the target's would not fit in the budget: the
        # target was refused before the fix.
        result = await system.models.call(provider(), HI)
    assert result.redirected_to == "backup/gpt-4o-mini"
    assert result.completion.message.content == "from the backup"
    assert held == [ESTIMATE]            # only the target's own estimate
    assert hook.stats().reserved == 0 and hook.stats().blocked_calls == 0


async def test_a_cache_hit_of_a_later_caching_hook_gives_the_reservation_back() -> None:
    hook = budget_hook("200")
    asked: list[int] = []
    answering = provider(asked=asked)
    async with installed(hook) as system:
        CachingHook(priority=LATER).install(system.registry)
        results = [await system.models.call(answering, HI) for _ in range(4)]
        assert hook.stats().reserved == 0
    assert [r.replaced for r in results] == [False, True, True, True]   # served by the hook
    assert len(asked) == 1
    stats = hook.stats()
    assert stats.blocked_calls == 0 and stats.total_cost == 10


async def test_a_later_before_retry_holds_one_reservation_not_two() -> None:
    hook = budget_hook()
    held: list[Decimal] = []
    async with installed(hook, "not-yet", retry_first) as system:
        result = await system.models.call(held_by(hook, held), HI)
    assert result.completion.message.content == ANSWER
    assert held == [ESTIMATE] and hook.stats().reserved == 0


async def test_a_redirect_that_raises_gives_the_reservation_back() -> None:
    hook = budget_hook()
    async with installed(hook, "bad-failover", lambda ctx: Redirect("nowhere/model")
                         ) as system:
        for _ in range(2):
            with pytest.raises(ConfigurationError, match="nowhere/model"):
                await system.models.call(provider(), HI)
            assert hook.stats().reserved == 0


async def test_a_call_cancelled_in_a_later_hook_gives_the_reservation_back() -> None:
    hook = budget_hook()
    task = asyncio.current_task()
    assert task is not None

    async def cancel_me(ctx: HookContext) -> None:
        task.cancel()
        await asyncio.sleep(0)   # the CancelledError arrives here

    async with installed(hook, "canceller", cancel_me) as system:
        with pytest.raises(asyncio.CancelledError):
            await system.models.call(provider(), HI)
        task.uncancel()
        # This task lives on (a long-lived worker): the reservation is not waiting for it.
        assert hook.stats().reserved == 0


async def test_a_failing_provider_releases_once() -> None:
    hook = budget_hook()

    def boom(messages: Any, tools: Any) -> str:
        raise ProviderError("openai", "upstream down", status=500)

    async with installed(hook) as system:
        for _ in range(3):
            with pytest.raises(ProviderError):
                await system.models.call(ScriptedProvider(boom, model="gpt-4o-mini",
                                                          name="openai"), HI)
        assert hook.stats().reserved == 0
        await system.models.call(provider(), HI)
    assert hook.stats().total_cost == 10


# -- the scope itself --------------------------------------------------------------------------
def before_ctx(parent: HookContext | None = None, model: str = "gpt-4o-mini"
               ) -> HookContext:
    component = ComponentId(type=ComponentType.MODEL, name=f"openai/{model}")
    data = {"provider": "openai", "model": model, "caller": None, "turn": 1, "attempt": 1,
            "params": {"messages": [{"role": "user", "content": "hi"}], "tools": [],
                       "max_tokens": None}}
    if parent is not None:
        return parent.child(HookPoint.BEFORE_MODEL_CALL, component, data)
    return HookContext(point=HookPoint.BEFORE_MODEL_CALL, component=component, data=data)


def test_ending_a_scope_releases_only_its_own_reservation_once() -> None:
    hook = budget_hook("1000")
    first = OperationScope()
    with first:
        ctx = before_ctx()
        assert hook.execute(ctx) is None
    assert hook.stats().reserved == ESTIMATE
    # The call was answered: its after point released the reservation.
    hook.execute(ctx.child(HookPoint.AFTER_MODEL_CALL, ctx.component, {**ctx.data,
                                                                       "result": None}))
    second = OperationScope()
    with second:
        assert hook.execute(before_ctx()) is None
    assert hook.stats().reserved == ESTIMATE
    first.end()
    first.end()
    assert hook.stats().reserved == ESTIMATE    # the second call's is untouched
    second.end()
    second.end()
    assert hook.stats().reserved == 0


def test_on_operation_end_outside_a_scope_says_so() -> None:
    assert on_operation_end(lambda: None) is False
    ran: list[str] = []
    scope = OperationScope()
    with scope:
        inner = OperationScope()
        with inner:
            assert on_operation_end(lambda: ran.append("inner"))
        assert on_operation_end(lambda: ran.append("outer"))
    assert on_operation_end(lambda: None) is False
    inner.end()
    assert ran == ["inner"]
    scope.end()
    assert ran == ["inner", "outer"]


def test_a_failing_callback_is_logged_and_the_others_run(
        caplog: pytest.LogCaptureFixture) -> None:
    ran: list[int] = []
    scope = OperationScope()

    def fail() -> None:
        raise RuntimeError("broken callback")

    scope.add(fail)
    scope.add(lambda: ran.append(1))
    with caplog.at_level(logging.ERROR, logger="llmspell.hooks"):
        scope.end()
    assert ran == [1]
    assert "end-of-operation callback failed" in caplog.text


def test_a_nested_call_does_not_release_the_parent_calls_reservation() -> None:
    # A redirected or shadow call's context inherits its parent's metadata, the parent's
    # reservation id with it: the nested call (here unpriced, so reserving nothing) must
    # not give back what its parent holds.
    hook = CostTrackingHook(CostConfig(
        prices={"openai/gpt-4o-mini": PER_TOKEN}, use_genai_prices=False,
        budgets=(Budget(limit=Decimal(1000)),), default_max_tokens=100))
    parent = before_ctx()
    assert hook.execute(parent) is None and RESERVATION_METADATA in parent.metadata
    nested = before_ctx(parent, model="unpriced-model")
    assert hook.execute(nested) is None
    assert RESERVATION_METADATA not in nested.metadata
    hook.execute(nested.child(HookPoint.AFTER_MODEL_CALL, nested.component,
                              {**nested.data, "result": None}))
    assert hook.stats().reserved == ESTIMATE
    hook.execute(parent.child(HookPoint.AFTER_MODEL_CALL, parent.component,
                              {**parent.data, "result": None}))
    assert hook.stats().reserved == 0


# -- the pydantic-ai adapter, which dispatches the model points itself ------------------------
def pydantic_agent(system: System) -> Any:
    require_module("pydantic_ai", install="pydantic-ai")
    from tests.integrations.conftest_pydantic_ai import calc_agent

    return calc_agent(system, [])



@pytest.mark.parametrize("decide", [lambda ctx: Cancel("moderation said no"),
                                    lambda ctx: Replace("replaced"), retry_first],
                         ids=["cancel", "replace", "retry"])
async def test_pydantic_ai_gives_the_reservation_back_when_a_later_hook_decides(
        decide: Any) -> None:
    hook = budget_hook()
    held: list[Decimal] = []
    async with installed(hook, "decider", decide, watch=held) as system:
        agent = pydantic_agent(system)
        for _ in range(3):   # two leaked estimates would not fit in the budget
            if decide is retry_first:
                assert (await agent.run("go")).output.startswith("done")
            elif isinstance(decide(None), Cancel):
                with pytest.raises(ModelCallCancelledError, match="moderation said no"):
                    await agent.run("go")
            else:
                assert (await agent.run("go")).output == "replaced"
            assert hook.stats().reserved == 0
    # Each model call was priced and reserved, one estimate at a time.
    assert held and set(held) == {ESTIMATE}
    assert hook.stats().blocked_calls == 0


# -- the OpenAI Agents adapter, whose model-input filter dispatches BeforeModelCall ------------
async def test_openai_agents_gives_the_reservation_back_when_a_later_hook_cancels() -> None:
    require_module("agents", install="openai-agents")
    from llmspell.integrations.openai_agents import OpenAIAgentsAdapter
    from tests.integrations.conftest_openai_agents import (
        ScriptModel,
        tool_then_answer,
        weather_agent,
    )

    hook = budget_hook()
    held: list[Decimal] = []
    async with installed(hook, "moderation", lambda ctx: Cancel("moderation said no"),
                         watch=held) as system:
        model = ScriptModel(tool_then_answer())
        agent, _ = weather_agent(model)
        for _ in range(2):
            with pytest.raises(ModelCallCancelledError, match="moderation said no"):
                await OpenAIAgentsAdapter(system).run(agent, "weather?")
            assert hook.stats().reserved == 0
    assert held == [ESTIMATE, ESTIMATE] and model.calls == []


# -- the LangChain callback handler, which observes and can only cancel ------------------------
async def test_the_langchain_callback_handler_gives_the_reservation_back_on_cancel() -> None:
    # LangChain runs each callback in a task of its own: the reservation comes back when
    # that task ends (LlmspellMiddleware goes through run_hooked, tested above).
    require_module("langchain_core", install="langchain")
    from langchain_core.prompts import ChatPromptTemplate

    from llmspell.integrations.langchain import AsyncLlmspellCallbackHandler
    from tests.integrations.conftest_langchain import ScriptedChatModel

    hook = budget_hook()
    held: list[Decimal] = []
    async with installed(hook, "moderation", lambda ctx: Cancel("not this chain"),
                         watch=held) as system:
        chain = ChatPromptTemplate.from_messages([("user", "{question}")]) | \
            ScriptedChatModel(steps=["never"])
        handler = AsyncLlmspellCallbackHandler(system)
        for _ in range(2):
            with pytest.raises(OperationCancelled, match="not this chain"):
                await chain.ainvoke({"question": "x"}, config={"callbacks": [handler]})
            assert hook.stats().reserved == 0
    assert held == [ESTIMATE, ESTIMATE]
