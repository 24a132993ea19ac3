"""Lifecycle events about an operation whose values no event can carry (a string holding a
lone surrogate, containers nested thousands deep): the operation succeeds and keeps its
own result, and its event is published with those values made safe. And a cancelled tool
or model call ends its events with ``.failed``."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from llmspell.core.values import MAX_DEPTH
from llmspell.errors import NotJsonSafeError
from llmspell.events import UniversalEvent
from llmspell.events.event import EventMetadata, PlainJson, event_size
from llmspell.hooks import HookPoint
from llmspell.hooks.result import Continue
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.providers.base import Message
from llmspell.runtime.providers.scripted import ScriptedProvider
from llmspell.runtime.runs.records import digest
from llmspell.runtime.withheld import (
    is_withheld,
    json_safe_copy,
    publish_withheld,
    publish_withheld_async,
    unsafe_marker,
)
from llmspell.runtime.workflows import Sequential, Step
from tests.runtime.test_oversized_events import cancelled_tool_event, collect, stored

BAD = "ok \udcff end"
"""Text with a lone surrogate (a byte that was not UTF-8, decoded with surrogateescape)."""
CLEAN = "ok \ufffd end"
"""What an event carries of it."""
BIG = "x" * 2_000_000


def deep(levels: int) -> Any:
    """``levels`` lists nested in one another around 1."""
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def marker_in(value: Any) -> dict[str, Any]:
    """The marker at the bottom of a chain of one-item lists (and dicts)."""
    levels = 0
    while not is_withheld(value):
        value = value[0] if isinstance(value, list) else next(iter(value.values()))
        levels += 1
        assert levels <= MAX_DEPTH, "no marker"
    assert value["withheld"] == "not JSON-safe"
    assert "nested deeper than 64 containers" in value["reason"]
    return value  # type: ignore[no-any-return]


def carries(event: UniversalEvent) -> None:
    """``event`` can be encoded as JSON (the store and every other language read it)."""
    assert event_size(event) > 0
    assert UniversalEvent.from_json(event.to_json()).data == event.data


@tool(name="bad")
def bad() -> str:
    """Returns text holding a lone surrogate."""
    return BAD


@tool(name="echo")
def echo(x: list[Any] | str | None = None) -> str:
    """Answers "fine", whatever ``x`` is."""
    return "fine"


@pytest_asyncio.fixture
async def system() -> AsyncIterator[System]:
    sys = System(SystemConfig(store="memory", record_content="full"))
    await sys.start()
    sys.tools.register(bad)
    sys.tools.register(echo)
    yield sys
    await sys.shutdown()


# -- the operations ---------------------------------------------------------------------
async def test_a_tool_result_with_a_lone_surrogate_is_kept(system: System) -> None:
    # Publishing tool.bad.completed raised NotJsonSafeError: the call failed although
    # the tool had its result.
    completed = collect(system, "tool.bad.completed")
    run = await system.tools.run("bad", {})
    assert run.result == BAD  # the tool's own result, not the event's copy
    await system.bus.drain(5)
    [event] = completed
    assert event.data["result"] == CLEAN and event.data["attempts"] == 1
    [kept] = stored(system, "tool.bad.completed")
    assert kept.data == event.data
    carries(kept)


async def test_tool_params_with_a_lone_surrogate_or_nested_deep_do_not_fail_the_call(
        system: System) -> None:
    started = collect(system, "tool.echo.started")
    assert (await system.tools.run("echo", {"x": BAD})).result == "fine"
    assert (await system.tools.run("echo", {"x": deep(5000)})).result == "fine"
    await system.bus.drain(5)
    first, second = started
    assert first.data["params"] == {"x": CLEAN}
    assert len(marker_in(second.data["params"]["x"])["digest"]) == 16
    assert len(stored(system, "tool.echo.started")) == 2


async def test_a_model_answer_with_a_lone_surrogate_reaches_the_agent(
        system: System) -> None:
    completed = collect(system, "model.scripted.completed")
    agent = system.agents.create("a", provider=ScriptedProvider([BAD]))
    assert (await agent.run("q")).output == BAD
    await system.bus.drain(5)
    [event] = completed
    assert event.data["response"]["content"] == CLEAN
    assert event.data["request"]["messages"] == [{"role": "user", "content": "q"}]
    carries(stored(system, "model.scripted.completed")[0])


async def test_an_agent_reads_a_tool_result_with_a_lone_surrogate(system: System) -> None:
    # Encoding the result for the model raised UnicodeEncodeError: the run failed.
    seen: list[str] = []

    def model(messages: list[Message], tools: Any) -> Any:
        if messages[-1].role == "tool":
            seen.append(messages[-1].content or "")
            return "done"
        return {"tool_calls": [{"name": "bad", "arguments": {}}]}

    agent = system.agents.create("reader", provider=ScriptedProvider(model), tools=["bad"])
    response = await agent.run("q")
    assert response.output == "done"
    assert response.tool_calls[0]["result"] == BAD  # the agent's record keeps the value
    assert seen == [f'"{CLEAN}"']


async def test_a_model_direct_call_keeps_its_answer(system: System) -> None:
    completed = collect(system, "model.scripted.completed")
    done = await system.models.call(ScriptedProvider([BAD]), [Message(role="user",
                                                                      content="q")])
    assert done.completion.message.content == BAD
    await system.bus.drain(5)
    assert completed[0].data["response"]["content"] == CLEAN


async def test_tool_call_arguments_nested_thousands_deep_do_not_fail_the_agent(
        system: System) -> None:
    completed = collect(system, "model.scripted.completed")
    provider = ScriptedProvider([
        {"tool_calls": [{"name": "echo", "arguments": {"x": deep(5000)}}]}, "done"])
    agent = system.agents.create("a", provider=provider, tools=["echo"])
    assert (await agent.run("q")).output == "done"
    await system.bus.drain(5)
    first = completed[0].data["response"]
    [call] = first["tool_calls"]
    assert call["name"] == "echo"
    marker_in(call["arguments"]["x"])
    assert completed[1].data["response"]["content"] == "done"


async def test_a_streamed_chunk_with_a_lone_surrogate_does_not_fail_the_stream(
        system: System) -> None:
    deltas = collect(system, "model.scripted.delta")
    agent = system.agents.create("s", provider=ScriptedProvider([BAD]))
    assert (await agent.run("q")).output == BAD
    await system.bus.drain(5)
    assert deltas
    assert CLEAN in "".join(e.data.get("text", "") for e in deltas)


async def test_a_workflow_step_output_with_a_lone_surrogate_completes(
        system: System) -> None:
    stages = collect(system, "workflow.w.stage_completed")
    wf = Sequential("w", [Step("make", fn=lambda ctx: BAD), Step("next", fn=lambda ctx: 1)])
    result = await wf.run(system)
    assert result.status == "completed" and result.outputs == {"make": BAD, "next": 1}
    await system.bus.drain(5)
    assert [e.data["output"] for e in stages] == [CLEAN, 1]


async def test_a_cancel_reason_with_a_lone_surrogate_still_cancels() -> None:
    # The hook event raised NotJsonSafeError in place of OperationCancelled.
    event = await cancelled_tool_event(echo, BAD)
    assert event.data["result"] == "cancel" and event.data["reason"] == CLEAN


async def test_an_adapter_event_with_a_lone_surrogate_is_kept(system: System) -> None:
    # The adapters' EventSink let NotJsonSafeError out into the framework's callback.
    from llmspell.integrations._bridge import EventSink

    EventSink(system, "llmspell.test").publish("tool.x.completed",
                                               {"result": BAD, "ok": True})
    await system.bus.drain(5)
    [event] = stored(system, "tool.x.completed")
    assert event.data == {"result": CLEAN, "ok": True}


async def test_a_huge_result_with_a_lone_surrogate_is_made_safe_then_withheld(
        system: System) -> None:
    @tool(name="both")
    def both() -> dict[str, str]:
        """Huge and not UTF-8."""
        return {"text": BIG + BAD, "note": BAD}

    system.tools.register(both)
    completed = collect(system, "tool.both.completed")
    assert (await system.tools.run("both", {})).result["note"] == BAD
    await system.bus.drain(5)
    [event] = completed
    result = event.data["result"]
    assert result["note"] == CLEAN
    assert result["text"]["withheld"] == "too large"


# -- the run recording ------------------------------------------------------------------
async def test_a_recorded_step_with_a_lone_surrogate_is_kept_cleaned(system: System) -> None:
    async with system.runs.start("job", "j") as run:
        await system.tools.run("bad", {})
    step = next(s for s in system.runs.recording(run.run_id).ordered if s.kind == "tool")
    assert step.result == CLEAN
    assert not step.results_withheld


async def test_a_step_nested_too_deep_keeps_its_digests_and_the_run_its_other_steps(
        system: System, caplog: pytest.LogCaptureFixture) -> None:
    # The whole run.steps batch was dropped ("maximum recursion depth exceeded"): the
    # recording had no step at all.
    provider = ScriptedProvider([
        {"tool_calls": [{"name": "echo", "arguments": {"x": deep(5000)}}]}, "done"])
    agent = system.agents.create("a", provider=provider, tools=["echo"])
    with caplog.at_level(logging.WARNING, "llmspell.runs"):
        async with system.runs.start("job", "j") as run:
            await agent.run("q")
    steps = system.runs.recording(run.run_id).ordered
    kinds = [(s.kind, s.results_withheld) for s in steps]
    assert kinds == [("job", False), ("agent", False), ("model", True), ("tool", True),
                     ("model", False)]
    tool_step = steps[3]
    assert tool_step.name == "echo" and tool_step.input_digest
    assert tool_step.output_digest == digest("fine")
    assert steps[4].result["message"]["content"] == "done"
    assert "nested too deep to encode" in caplog.text


# -- cancellation -----------------------------------------------------------------------
async def _cancelled(run: Callable[[], Any]) -> None:
    """Start ``run()``, let it reach its await, cancel it; the cancellation propagates."""
    task = asyncio.ensure_future(run())
    for _ in range(20):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancelled_tool_call_publishes_failed(system: System) -> None:
    # Only tool.slow.started was published: nothing ended it.
    @tool(name="slow")
    async def slow() -> str:
        """Never answers."""
        await asyncio.Event().wait()
        return "never"

    system.tools.register(slow)
    events = collect(system, "tool.slow.*")
    await _cancelled(lambda: system.tools.run("slow", {}))
    await system.bus.drain(5)
    assert [e.event_type for e in events] == ["tool.slow.started", "tool.slow.failed"]
    failed = events[1].data
    assert failed["error_type"] == "CancelledError" and failed["error"] == "cancelled"
    assert isinstance(failed["duration_ms"], float) and failed["duration_ms"] >= 0


async def _never(messages: list[Message], tools: list[Any]) -> str:
    await asyncio.Event().wait()
    return "never"


@pytest.mark.parametrize("how", ["direct", "hooked", "recorded"])
async def test_a_cancelled_model_call_publishes_failed(system: System, how: str) -> None:
    if how == "hooked":
        system.registry.register(HookPoint.AFTER_MODEL_CALL, lambda ctx: Continue(),
                                 name="look")
    events = collect(system, "model.scripted.*")
    def call() -> Any:
        return system.models.call(ScriptedProvider(_never),
                                  [Message(role="user", content="q")])
    if how == "recorded":
        async def in_run() -> Any:
            async with system.runs.start("job", "j"):
                return await call()
        await _cancelled(in_run)
    else:
        await _cancelled(call)
    await system.bus.drain(5)
    [failed] = [e for e in events if e.event_type == "model.scripted.failed"]
    assert failed.data["error_type"] == "CancelledError"
    assert failed.data["error"] == "cancelled"


# -- the helpers ------------------------------------------------------------------------
def test_json_safe_copy_replaces_lone_surrogates_in_texts_and_keys() -> None:
    data: dict[str, Any] = {"k\udcff": [BAD, ("t", 1)], "pair": "\ud83d\ude00",
                            "n": None, "f": 1.5}
    safe = json_safe_copy(data)
    assert safe == {"k\ufffd": [CLEAN, ["t", 1]], "pair": "\U0001f600", "n": None, "f": 1.5}
    assert data["k\udcff"][0] is BAD  # the caller's data is not changed
    carries(UniversalEvent(event_type="x.y", data=safe))


def test_json_safe_copy_marks_what_cannot_be_made_safe() -> None:
    cycle: list[Any] = [1]
    cycle.append(cycle)
    data: dict[Any, Any] = {"nan": math.nan, "big": 2**1100, "obj": object(), "cycle": cycle,
            3: "int key", "a\udcff": 1}
    data["a\udcfe"] = 2  # made the same key as "a\udcff"
    safe = json_safe_copy(data)
    assert safe["nan"]["reason"] == "non-finite float"
    assert safe["big"]["reason"] == "integer outside the 1024-bit range"
    assert safe["obj"]["reason"] == "object object"
    assert safe["cycle"][0] == 1
    assert safe["cycle"][1]["reason"] == "list that contains itself (a cycle)"
    assert safe["3"] == "int key"
    assert safe["a\ufffd"] == 1 and safe["a\ufffd (2)"] == 2  # no key lost
    assert all(is_withheld(safe[k]) for k in ("nan", "big", "obj"))
    carries(UniversalEvent(event_type="x.y", data=safe))


def test_json_safe_copy_keeps_as_much_nesting_as_an_event_takes() -> None:
    fits = deep(MAX_DEPTH - 1)  # with the data dict: MAX_DEPTH containers
    assert json_safe_copy({"v": fits}) == {"v": fits}
    UniversalEvent(event_type="x.y", data={"v": fits})  # the limit itself
    safe = json_safe_copy({"v": deep(MAX_DEPTH)})
    carries(UniversalEvent(event_type="x.y", data=safe))
    marker_in(safe["v"])


def test_a_marker_is_kept_as_it_is() -> None:
    marker = unsafe_marker(deep(5000), "list nested deeper than 64 containers")
    assert is_withheld(marker) and json_safe_copy(marker) == marker
    assert marker["digest"] == digest(deep(5000))
    assert not is_withheld({"withheld": "not JSON-safe"})


async def test_publish_withheld_makes_unsafe_data_and_metadata_safe(
        system: System) -> None:
    seen = collect(system, "x.**")
    meta = EventMetadata(correlation_id="c\udcff", source="s", tags=("t\udcff",))
    data = PlainJson(text=BAD)
    with pytest.raises(NotJsonSafeError) as refused:
        system.bus.publish("x.one", data, meta)
    event = publish_withheld(system.bus, refused.value, "x.one", data, meta)
    assert event is not None and event.data == {"text": CLEAN}
    assert event.metadata.correlation_id == "c\ufffd" and event.metadata.tags == ("t\ufffd",)
    with pytest.raises(NotJsonSafeError) as again:
        await system.bus.publish_async("x.two", {"v": deep(100)})
    event = await publish_withheld_async(system.bus, again.value, "x.two",
                                         {"v": deep(100)})
    assert event is not None
    marker_in(event.data["v"])
    await system.bus.drain(5)
    assert [e.event_type for e in seen] == ["x.one", "x.two"]


async def test_the_callers_own_event_still_raises(system: System) -> None:
    collect(system, "mine.**")
    with pytest.raises(NotJsonSafeError):
        system.bus.publish("mine.bad", {"text": BAD})
    with pytest.raises(NotJsonSafeError):
        await system.emit("mine.bad", {"text": BAD})
