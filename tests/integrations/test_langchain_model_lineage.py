"""A model call a hook makes of another at LangChain's model seam (a ``Redirect``, a shadow
``Fork``) keeps what the call it came from had: the caller (a shadow marked as one), the
turn, the run's correlation and, as its parent, the hook's context, whose metadata names
the user (what per-user budgets and rate limits key on)."""

from __future__ import annotations

from typing import Any

from langchain.agents import create_agent

from llmspell.hooks import HookContext, HookPoint
from llmspell.hooks.result import Fork, ForkOperation, Redirect
from llmspell.integrations.langchain import LlmspellMiddleware
from llmspell.runtime.system import System

from .conftest_langchain import ScriptedChatModel

ASK: Any = {"messages": [{"role": "user", "content": "hello"}]}


def names_the_user(system: System) -> None:
    """The application's own hook naming the user in the metadata."""
    system.registry.register(HookPoint.BEFORE_AGENT_EXECUTION,
                             lambda ctx: ctx.metadata.update(user="alice"),
                             name="who", priority="highest")


def watch_model_calls(system: System) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    def watch(ctx: HookContext) -> None:
        seen.append({"model": ctx.data["model"], "caller": ctx.data["caller"],
                     "turn": ctx.data["turn"], "user": ctx.metadata.get("user"),
                     "correlation": ctx.correlation_id})

    system.registry.register(HookPoint.BEFORE_MODEL_CALL, watch, name="watch",
                             priority="low")
    return seen


async def test_a_shadow_call_is_marked_and_keeps_the_runs_user(system: System) -> None:
    names_the_user(system)
    seen = watch_model_calls(system)
    system.registry.register(
        HookPoint.BEFORE_MODEL_CALL,
        lambda ctx: Fork((ForkOperation(type="model", target="shadow"),))
        if ctx.data["caller"]["type"] == "agent" else None, name="shadowing")
    shadow = ScriptedChatModel(steps=["shadow answer"], model="gpt-4o-mini")
    main = ScriptedChatModel(steps=["main answer"])
    agent = create_agent(main, tools=[], name="calc",
                         middleware=[LlmspellMiddleware(system, models={"shadow": shadow})])
    out = await agent.ainvoke(ASK)
    assert out["messages"][-1].content == "main answer" and len(shadow.seen) == 1
    first, forked = seen
    assert first["caller"] == {"type": "agent", "name": "calc"} and first["user"] == "alice"
    assert forked["caller"] == {"type": "shadow", "name": f"openai/{first['model']}"}
    assert forked["model"] == "gpt-4o-mini"
    assert (forked["turn"], forked["user"], forked["correlation"]) == (
        first["turn"], "alice", first["correlation"])


async def test_a_redirected_call_keeps_the_caller_and_the_user(system: System) -> None:
    names_the_user(system)
    seen = watch_model_calls(system)
    system.registry.register(
        HookPoint.BEFORE_MODEL_CALL,
        lambda ctx: Redirect("other") if ctx.data["model"] != "gpt-4o-mini" else None,
        name="redirecting")
    other = ScriptedChatModel(steps=["other answer"], model="gpt-4o-mini")
    main = ScriptedChatModel(steps=["main answer"])
    agent = create_agent(main, tools=[], name="calc",
                         middleware=[LlmspellMiddleware(system, models={"other": other})])
    out = await agent.ainvoke(ASK)
    assert out["messages"][-1].content == "other answer" and len(main.seen) == 0
    redirected = seen[-1]
    assert redirected["model"] == "gpt-4o-mini"
    assert redirected["caller"] == {"type": "agent", "name": "calc"}
    assert (redirected["turn"], redirected["user"]) == (1, "alice")
    assert redirected["correlation"] == seen[0]["correlation"]
