"""A tool ``Redirect`` to another of the LangChain agent's own tools: the target runs as a
tool call of its own, through its own tool points (a security hook guarding it holds; its
hooks see ``tool`` = the target and their results apply to it), with its arguments
validated as LangChain validates a call's, publishing its own ``tool.<target>.*`` events,
with the run's user and correlation; a loop of redirects ends. Offline models only."""

from __future__ import annotations

from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import ToolMessage
from langchain_core.tools import tool

from llmspell.errors import ToolExecutionError, ToolValidationError
from llmspell.events.event import UniversalEvent
from llmspell.hooks import HookContext, HookPoint
from llmspell.hooks.result import Cancel, Modified, Redirect
from llmspell.integrations.langchain import LlmspellMiddleware
from llmspell.runtime.system import System
from tests.integrations.conftest_langchain import RAN, ScriptedChatModel, add, call, shout

P = HookPoint
ASK: Any = {"messages": [{"role": "user", "content": "please compute"}]}


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two whole numbers."""
    RAN.append(("multiply", {"a": a, "b": b}))
    return a * b


@pytest.fixture(autouse=True)
def _clear_ran() -> None:
    RAN.clear()


def agent_for(system: System) -> Any:
    model = ScriptedChatModel(steps=[call("add", a=2, b=3), "done"])
    return create_agent(model, tools=[add, multiply, shout], name="calc",
                        middleware=[LlmspellMiddleware(system)])


def hook(system: System, point: str, fn: Any, name: str) -> None:
    system.registry.register(point, fn, name=name)


def add_to(target: str) -> Any:
    return lambda ctx: Redirect(target) if ctx.data["tool"] == "add" else None


def tool_messages(out: dict[str, Any]) -> list[ToolMessage]:
    return [m for m in out["messages"] if isinstance(m, ToolMessage)]


async def test_a_security_hook_guarding_the_target_holds(system: System) -> None:
    hook(system, P.BEFORE_TOOL_EXECUTION, add_to("multiply"), "route")
    hook(system, P.BEFORE_TOOL_EXECUTION,
         lambda ctx: Cancel("multiply is not allowed") if ctx.data["tool"] == "multiply"
         else None, "guard")
    events: list[UniversalEvent] = []
    system.bus.subscribe("tool.**", events.append, mode="inline")
    out = await agent_for(system).ainvoke(ASK)
    assert RAN == []  # neither the model's tool nor the guarded target ran
    message = tool_messages(out)[0]
    assert message.status == "error" and "multiply is not allowed" in str(message.content)
    assert "tool.multiply.failed" in [e.event_type for e in events]


async def test_the_target_runs_through_its_own_points_with_the_runs_user(
        system: System) -> None:
    seen: list[tuple[str, Any, str]] = []
    system.registry.register(P.BEFORE_AGENT_EXECUTION,
                             lambda ctx: ctx.metadata.update(user="alice"),
                             name="who-is-calling", priority="highest")

    def watch(ctx: HookContext) -> None:
        seen.append((ctx.data["tool"], ctx.metadata.get("user"), ctx.correlation_id))

    system.registry.register(P.BEFORE_TOOL_EXECUTION, watch, name="watch",
                             priority="highest")
    hook(system, P.BEFORE_TOOL_EXECUTION, add_to("multiply"), "route")
    hook(system, P.AFTER_TOOL_EXECUTION,
         lambda ctx: Modified({**ctx.data, "result": 100}) if ctx.data["tool"] == "multiply"
         else None, "rewrite")
    events: list[UniversalEvent] = []
    system.bus.subscribe("tool.**", events.append, mode="inline")
    out = await agent_for(system).ainvoke(ASK)
    assert RAN == [("multiply", {"a": 2, "b": 3})]
    assert [(t, u) for t, u, _ in seen] == [("add", "alice"), ("multiply", "alice")]
    assert seen[0][2] == seen[1][2]  # the run's correlation
    assert str(tool_messages(out)[0].content) == "100"  # the target's own hook applied
    kinds = [e.event_type for e in events]
    assert "tool.multiply.started" in kinds and "tool.multiply.completed" in kinds


async def test_a_redirect_loop_ends_naming_the_chain(system: System) -> None:
    hook(system, P.BEFORE_TOOL_EXECUTION,
         lambda ctx: Redirect("multiply" if ctx.data["tool"] == "add" else "add"), "loop")
    with pytest.raises(ToolExecutionError,
                       match="add -> multiply -> add -> multiply -> add -> multiply") as info:
        await agent_for(system).ainvoke(ASK)
    assert "Redirect" in (info.value.hint or "")
    assert RAN == []


async def test_arguments_the_target_refuses_are_a_typed_error(system: System) -> None:
    hook(system, P.BEFORE_TOOL_EXECUTION, add_to("shout"), "route")
    with pytest.raises(ToolValidationError, match=r"params\.text") as info:
        await agent_for(system).ainvoke(ASK)
    assert info.value.path == "params.text"
    assert "Modified" in (info.value.hint or "")
    assert RAN == []
