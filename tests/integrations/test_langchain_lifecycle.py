"""The LangChain adapter's run lifecycle and its refusals, with LangGraph and the offline
chat model: every way out of an agent run (success, an error, a cancellation at any point,
a stream closed early) ends its llmspell run exactly once, and a hook result the middleware
cannot honour at a point is a typed error naming the hook, the point and the result."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.tools import tool

from llmspell.errors import UnsupportedHookResultError
from llmspell.events import UniversalEvent
from llmspell.hooks import HookContext
from llmspell.hooks.result import Cache, Fork, ForkOperation, Modified, Replace, Retry
from llmspell.integrations.langchain import LlmspellCallbackHandler, LlmspellMiddleware
from llmspell.runtime.system import System

from .conftest_langchain import ScriptedChatModel, add, call

ASK: Any = {"messages": [{"role": "user", "content": "please compute"}]}
LIFECYCLE = ("run.started", "run.completed", "run.failed")


def recorder(system: System) -> list[UniversalEvent]:
    events: list[UniversalEvent] = []
    system.bus.subscribe("**", events.append, mode="inline")
    return events


def lifecycle(events: list[UniversalEvent]) -> list[str]:
    """The run's start and end records and the agent's end events, in order."""
    return [e.event_type for e in events
            if e.event_type in LIFECYCLE or (e.event_type.startswith("agent.")
                                             and not e.event_type.endswith(".started"))]


def failed_with(events: list[UniversalEvent]) -> str:
    return str(next(e for e in events if e.event_type == "agent.calc.failed")
               .data["error_type"])


def stored_status(system: System, events: list[UniversalEvent]) -> str:
    """The run's status as the store has it (``running``: never ended)."""
    assert system.store is not None
    system.store.flush()
    run_id = next(e for e in events if e.event_type == "run.started").data["run_id"]
    return system.runs.get(run_id).status


class Pause(AgentMiddleware):  # type: ignore[type-arg]
    """A middleware whose ``after_model`` node waits for a gate that never opens (the
    node awaits something outside any model or tool call), or raises ``error``."""

    def __init__(self, error: BaseException | None = None) -> None:
        super().__init__()
        self.reached = asyncio.Event()
        self.error = error

    async def aafter_model(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        self.reached.set()
        if self.error is not None:
            raise self.error
        await asyncio.Event().wait()
        return None

    def after_model(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        if self.error is not None:
            raise self.error
        return None


def agent_with(system: System, steps: list[Any], *extra: Any) -> Any:
    return create_agent(ScriptedChatModel(steps=steps), tools=[add], name="calc",
                        middleware=[LlmspellMiddleware(system), *extra])


def hook(system: System, point: str, fn: Callable[[HookContext], Any], name: str) -> None:
    system.registry.register(point, fn, name=name)


# -- every way out ends the run once ----------------------------------------------------------

async def test_a_run_cancelled_between_nodes_ends_failed_once(system: System) -> None:
    pause = Pause()
    agent = agent_with(system, [call("add", a=1, b=2), "three"], pause)
    events = recorder(system)
    task = asyncio.ensure_future(agent.ainvoke(ASK))
    await pause.reached.wait()  # the model node finished; the next node waits
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert lifecycle(events) == ["run.started", "agent.calc.failed", "run.failed"]
    assert failed_with(events) == "CancelledError"
    assert stored_status(system, events) == "cancelled"


async def test_an_error_in_another_middlewares_node_ends_the_run_failed(
        system: System) -> None:
    agent = agent_with(system, [call("add", a=1, b=2), "three"], Pause(ValueError("bad")))
    events = recorder(system)
    with pytest.raises(ValueError, match="bad"):
        await agent.ainvoke(ASK)
    assert lifecycle(events) == ["run.started", "agent.calc.failed", "run.failed"]
    assert failed_with(events) == "ValueError"
    assert stored_status(system, events) == "failed"


def test_a_sync_run_failing_between_nodes_ends_the_run_failed(system: System) -> None:
    agent = agent_with(system, [call("add", a=1, b=2), "three"], Pause(ValueError("bad")))
    events = recorder(system)
    with pytest.raises(ValueError, match="bad"):
        agent.invoke(ASK)
    assert lifecycle(events) == ["run.started", "agent.calc.failed", "run.failed"]


async def test_an_async_stream_closed_early_ends_the_run(system: System) -> None:
    agent = agent_with(system, [call("add", a=1, b=2), "three"])
    events = recorder(system)
    async with contextlib.aclosing(agent.astream(ASK, stream_mode="updates")) as stream:
        async for _ in stream:
            break  # after the first node: the consumer has seen enough
    assert lifecycle(events) == ["run.started", "agent.calc.failed", "run.failed"]
    assert stored_status(system, events) == "failed"


def test_a_sync_stream_closed_early_ends_the_run(system: System) -> None:
    agent = agent_with(system, [call("add", a=1, b=2), "three"])
    events = recorder(system)
    stream = agent.stream(ASK, stream_mode="updates")
    next(stream)
    stream.close()
    assert lifecycle(events) == ["run.started", "agent.calc.failed", "run.failed"]


async def test_a_run_ends_once_however_it_ends(system: System) -> None:
    events = recorder(system)
    assert (await agent_with(system, [call("add", a=1, b=2), "three"]).ainvoke(ASK))
    assert lifecycle(events) == ["run.started", "agent.calc.completed", "run.completed"]
    events.clear()
    # a model error ends the run in the model seam; the graph's failure must not end it again
    with pytest.raises(RuntimeError, match="down"):
        await agent_with(system, [RuntimeError("down")]).ainvoke(ASK)
    assert lifecycle(events) == ["run.started", "agent.calc.failed", "run.failed"]


async def test_a_run_cancelled_inside_a_tool_ends_once(system: System) -> None:
    inside = asyncio.Event()

    @tool
    async def wait_forever(x: int) -> int:
        """Waits."""
        inside.set()
        await asyncio.Event().wait()
        return x

    agent = create_agent(ScriptedChatModel(steps=[call("wait_forever", x=1), "done"]),
                         tools=[wait_forever], name="calc",
                         middleware=[LlmspellMiddleware(system)])
    events = recorder(system)
    task = asyncio.ensure_future(agent.ainvoke(ASK))
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert lifecycle(events) == ["run.started", "agent.calc.failed", "run.failed"]


async def test_the_callback_handler_ends_a_cancelled_graph_run(system: System) -> None:
    reached = asyncio.Event()

    async def slow(value: dict[str, Any]) -> str:
        reached.set()
        await asyncio.Event().wait()
        return "never"

    chain = ChatPromptTemplate.from_messages([("user", "{q}")]) | slow
    events = recorder(system)
    task = asyncio.ensure_future(chain.ainvoke({"q": "x"}, config={
        "callbacks": [LlmspellCallbackHandler(system)], "run_name": "calc"}))
    await reached.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert lifecycle(events) == ["run.started", "agent.calc.failed", "run.failed"]


# -- results the middleware cannot honour ------------------------------------------------------

@pytest.mark.parametrize(("result", "kind"), [
    (Fork([ForkOperation(type="tool", target="audit")]), "fork"),
    (Cache("failure"), "cache"),
    (Modified({"error": "rewritten"}), "modified"),
])
async def test_agent_error_refuses_what_it_cannot_honour(system: System, result: Any,
                                                         kind: str) -> None:
    hook(system, "AgentError", lambda ctx: result, "odd-one")
    events = recorder(system)
    with pytest.raises(UnsupportedHookResultError) as info:
        await agent_with(system, [RuntimeError("down")]).ainvoke(ASK)
    error = info.value
    assert (error.framework, error.point, error.result, error.hook) == (
        "langchain", "agent_error", kind, "odd-one")
    assert "honours Continue, Skipped, Cancel, Redirect, Replace, Retry" in (error.hint or "")
    assert lifecycle(events) == ["run.started", "agent.calc.failed", "run.failed"]


@pytest.mark.parametrize("point", ["ToolError", "ModelCallError"])
@pytest.mark.parametrize(("result", "kind"), [
    (Modified({"error": "rewritten"}), "modified"),
    (Cache("failure"), "cache"),
    (Fork([ForkOperation(type="tool", target="audit")]), "fork"),
])
async def test_error_points_refuse_what_they_cannot_honour(system: System, point: str,
                                                           result: Any, kind: str) -> None:
    @tool
    def broken(x: int) -> int:
        """Always fails."""
        raise RuntimeError("tool down")

    hook(system, point, lambda ctx: result, "odd-one")
    steps: list[Any] = ([call("broken", x=1), "done"] if point == "ToolError"
                        else [RuntimeError("model down")])
    agent = create_agent(ScriptedChatModel(steps=steps), tools=[broken], name="calc",
                         middleware=[LlmspellMiddleware(system)])
    with pytest.raises(UnsupportedHookResultError) as info:
        await agent.ainvoke(ASK)
    error = info.value
    assert error.result == kind and error.hook == "odd-one"
    assert error.point == ("tool_error" if point == "ToolError" else "model_call_error")
    assert "Replace, Retry" in (error.hint or "")


async def test_error_points_still_honour_recovery(system: System) -> None:
    """Guard: what the error points do honour still works through the checked seam."""
    hook(system, "ModelCallError", lambda ctx: Replace({"message": {
        "role": "assistant", "content": "recovered"}}), "fallback")
    tries: list[int] = []
    hook(system, "AgentError",
         lambda ctx: tries.append(1) or (Retry(0, 2) if len(tries) < 2 else None), "again")
    out = await agent_with(system, [RuntimeError("model down")]).ainvoke(ASK)
    assert out["messages"][-1].content == "recovered" and tries == []


def test_the_honoured_table_is_public_and_matches_the_refusals() -> None:
    from llmspell.integrations import langchain

    honoured = langchain.HONOURED
    for point in ("agent_error", "model_call_error", "tool_error"):
        assert honoured[point] == {"replace", "redirect", "retry", "cancel"}
    for point in ("before_agent_execution", "after_agent_execution", "before_model_call",
                  "after_model_call", "before_tool_execution", "after_tool_execution"):
        assert {"modified", "fork", "cache"} <= honoured[point]


def test_a_callback_refusal_says_what_the_point_honours(system: System) -> None:
    hook(system, "AfterModelCall", lambda ctx: Replace("cannot"), "replacer")
    chain = ChatPromptTemplate.from_messages([("user", "{q}")]) | ScriptedChatModel(
        steps=["never"])
    with pytest.raises(UnsupportedHookResultError) as info:
        chain.invoke({"q": "x"}, config={"callbacks": [LlmspellCallbackHandler(system)]})
    assert info.value.point == "after_model_call" and info.value.hook == "replacer"
    assert "only observes" in (info.value.hint or "")
    assert "honours Continue, Skipped, Cancel" in (info.value.hint or "")
