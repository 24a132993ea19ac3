"""LangChain adapter: a model ``Redirect`` loop ends as the runtime's does (the nesting
bound, ``OperationDepthError``, after as many redirects), and an agent ``Redirect`` target
in ``agents=`` that runs no ``LlmspellMiddleware`` of the system is refused with
``IntegrationError`` instead of running with no llmspell hooks."""

from __future__ import annotations

from typing import Any

import pytest
from langchain.agents import create_agent

from llmspell.errors import IntegrationError, OperationCancelled, OperationDepthError
from llmspell.hooks import HookContext, HookPoint
from llmspell.hooks.result import Cancel, Redirect
from llmspell.integrations.langchain import LlmspellMiddleware
from llmspell.runtime import SystemConfig
from llmspell.runtime.providers.scripted import ScriptedProvider
from llmspell.runtime.system import System

from .conftest_langchain import ScriptedChatModel

ASK: Any = {"messages": [{"role": "user", "content": "hello"}]}


async def runtime_hops_in_a_model_redirect_loop() -> int:
    """How many model calls the runtime's hooks see in a ping-pong ``Redirect`` loop of an
    agent's model call before it is refused (the runtime's rule)."""
    async with System(SystemConfig(store="memory")) as system:
        one = ScriptedProvider(lambda m, t: "one", name="pa", model="a")
        two = ScriptedProvider(lambda m, t: "two", name="pb", model="b")
        system.models.register(one)
        system.models.register(two)
        hops: list[str] = []

        def loop(ctx: HookContext) -> Redirect:
            hops.append(ctx.data["provider"])
            return Redirect("pb/b" if ctx.data["provider"] == "pa" else "pa/a")

        system.registry.register(HookPoint.BEFORE_MODEL_CALL, loop, name="loop")
        agent = system.agents.create("x", provider=one)
        with pytest.raises(Exception) as caught:
            await agent.run("q")
        seen: BaseException | None = caught.value
        while seen is not None and not isinstance(seen, OperationDepthError):
            seen = seen.__cause__
        assert isinstance(seen, OperationDepthError)
        assert one.calls == [] and two.calls == []
        return len(hops)


async def test_a_model_redirect_loop_ends_as_the_runtimes_does(system: System) -> None:
    one = ScriptedChatModel(steps=["one"], model="gpt-4o")
    two = ScriptedChatModel(steps=["two"], model="gpt-4o-mini")
    hops: list[str] = []

    def loop(ctx: HookContext) -> Redirect:
        hops.append(ctx.data["model"])
        return Redirect("two" if ctx.data["model"] == "gpt-4o" else "one")

    system.registry.register(HookPoint.BEFORE_MODEL_CALL, loop, name="loop")
    agent = create_agent(one, tools=[], name="calc", middleware=[
        LlmspellMiddleware(system, models={"one": one, "two": two})])
    with pytest.raises(OperationDepthError, match="would be nested 17 deep") as caught:
        await agent.ainvoke(ASK)
    assert "Redirect" in (caught.value.hint or "")
    assert one.seen == [] and two.seen == []
    # The same bound as the runtime's: as many model calls before the loop is refused.
    assert len(hops) == await runtime_hops_in_a_model_redirect_loop() == 16
    assert hops[:4] == ["gpt-4o", "gpt-4o-mini", "gpt-4o", "gpt-4o-mini"]


async def test_a_few_model_redirects_in_a_row_still_answer(system: System) -> None:
    """Five redirects (refused before, with ``ConfigurationError``) are well inside the
    bound: the last model answers."""
    models = {f"m{i}": ScriptedChatModel(steps=[f"answer {i}"], model=f"m{i}")
              for i in range(7)}

    def hop(ctx: HookContext) -> Redirect | None:
        at = int(ctx.data["model"][1:])
        return Redirect(f"m{at + 1}") if at < 6 else None

    system.registry.register(HookPoint.BEFORE_MODEL_CALL, hop, name="hop")
    agent = create_agent(models["m0"], tools=[], name="calc",
                         middleware=[LlmspellMiddleware(system, models=models)])
    out = await agent.ainvoke(ASK)
    assert out["messages"][-1].content == "answer 6"
    assert [len(m.seen) for m in models.values()] == [0, 0, 0, 0, 0, 0, 1]


def test_an_ungoverned_redirect_target_is_refused_at_install(system: System) -> None:
    bare = create_agent(ScriptedChatModel(steps=["bare answer"]), tools=[], name="bare")
    with pytest.raises(IntegrationError, match="runs no LlmspellMiddleware") as caught:
        LlmspellMiddleware(system, agents={"bare": bare})
    assert "'bare'" in str(caught.value)
    assert "middleware=[LlmspellMiddleware(system)]" in (caught.value.hint or "")


async def test_a_target_governed_by_another_system_is_refused(system: System) -> None:
    async with System(SystemConfig(store="memory")) as other:
        elsewhere = create_agent(ScriptedChatModel(steps=["x"]), tools=[], name="elsewhere",
                                 middleware=[LlmspellMiddleware(other)])
        with pytest.raises(IntegrationError, match="another llmspell System"):
            LlmspellMiddleware(system, agents={"elsewhere": elsewhere})


def test_a_plain_runnable_target_is_refused(system: System) -> None:
    from langchain_core.runnables import RunnableLambda

    with pytest.raises(IntegrationError, match="runs no LlmspellMiddleware"):
        LlmspellMiddleware(system, agents={"fn": RunnableLambda(lambda state: state)})


async def test_an_ungoverned_target_added_later_is_refused_before_it_runs(
        system: System) -> None:
    bare_model = ScriptedChatModel(steps=["bare answer"])
    bare = create_agent(bare_model, tools=[], name="bare")
    middleware = LlmspellMiddleware(system)
    middleware.agents["bare"] = bare
    system.registry.register(HookPoint.BEFORE_AGENT_EXECUTION, lambda ctx: Redirect(
        "bare") if ctx.data["agent"] == "front" else None, name="route")
    front_model = ScriptedChatModel(steps=["front answer"])
    front = create_agent(front_model, tools=[], name="front", middleware=[middleware])
    with pytest.raises(IntegrationError, match="not governed"):
        await front.ainvoke(ASK)
    assert bare_model.seen == [] and front_model.seen == []


async def test_a_governed_target_runs_with_its_guard(system: System) -> None:
    """The way the refusal points to: the target runs its own middleware, so a hook
    guarding it holds for a redirected run."""
    target_model = ScriptedChatModel(steps=["admin answer"])
    admin = create_agent(target_model, tools=[], name="admin",
                         middleware=[LlmspellMiddleware(system)])
    front = create_agent(ScriptedChatModel(steps=["front answer"]), tools=[], name="front",
                         middleware=[LlmspellMiddleware(system, agents={"admin": admin})])
    system.registry.register(HookPoint.BEFORE_AGENT_EXECUTION, lambda ctx: Redirect(
        "admin") if ctx.data["agent"] == "front" else None, name="route")
    system.registry.register(HookPoint.BEFORE_AGENT_EXECUTION, lambda ctx: Cancel(
        "admin is closed") if ctx.data["agent"] == "admin" else None, name="guard")
    with pytest.raises(OperationCancelled, match="admin is closed"):
        await front.ainvoke(ASK)
    assert target_model.seen == []


async def test_a_governed_redirect_target_is_a_child_run(system: System) -> None:
    """As in the other adapters: the target's run is a child of the run that redirected."""
    events: list[Any] = []
    system.bus.subscribe("run.started", events.append, mode="inline")
    admin = create_agent(ScriptedChatModel(steps=["admin answer"]), tools=[], name="admin",
                         middleware=[LlmspellMiddleware(system)])
    front = create_agent(ScriptedChatModel(steps=["front answer"]), tools=[], name="front",
                         middleware=[LlmspellMiddleware(system, agents={"admin": admin})])
    system.registry.register(HookPoint.BEFORE_AGENT_EXECUTION, lambda ctx: Redirect(
        "admin") if ctx.data["agent"] == "front" else None, name="route")
    out = await front.ainvoke(ASK)
    assert out["messages"][-1].content == "admin answer"
    started = {e.data["name"]: e for e in events}
    assert started["front"].data.get("parent_run_id") is None
    assert started["admin"].data["parent_run_id"] == started["front"].metadata.run_id
