"""Lifecycle events about an operation whose values are larger than the bus's
``max_event_bytes``: the operation succeeds and keeps its result, and its event is still
published (to subscribers and the store), with the too-large values withheld."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
import pytest_asyncio

from llmspell.errors import EventTooLargeError, NotJsonSafeError, OperationCancelled
from llmspell.events import UniversalEvent
from llmspell.events.event import PlainJson
from llmspell.hooks import Cancel, HookPoint
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.providers.scripted import ScriptedProvider
from llmspell.runtime.runs.records import digest
from llmspell.runtime.withheld import (
    is_withheld,
    publish_withheld,
    publish_withheld_async,
    withheld_marker,
    withhold_largest,
)
from llmspell.runtime.workflows import Sequential, Step

BIG = "x" * 2_000_000
"""2 MB of text: about twice the bus's default ``max_event_bytes`` (1 MiB)."""


@tool(name="huge")
def huge() -> str:
    """Returns 2 MB of text."""
    return BIG


@pytest_asyncio.fixture
async def system() -> AsyncIterator[System]:
    sys = System(SystemConfig(store="memory"))
    await sys.start()
    sys.tools.register(huge)
    yield sys
    await sys.shutdown()


def collect(system: System, pattern: str) -> list[UniversalEvent]:
    """Every event matching ``pattern``, through a queued subscription (which the bus
    measures, like the store)."""
    seen: list[UniversalEvent] = []
    system.bus.subscribe(pattern, seen.append, mode="queued")
    return seen


def stored(system: System, event_type: str) -> list[UniversalEvent]:
    assert system.store is not None
    return [e for e in system.store.query() if e.event_type == event_type]


async def cancelled_tool_event(cancelled: Any, reason: str) -> UniversalEvent:
    """The hook.before_tool_execution event of a call of the tool ``cancelled`` that a hook
    cancels with ``reason`` (in a System of its own, publishing hook events)."""
    async with System(SystemConfig(store="memory", hook_events=True)) as sys:
        sys.tools.register(cancelled)
        sys.registry.register(HookPoint.BEFORE_TOOL_EXECUTION,
                              lambda ctx: Cancel(reason), name="refuse")
        seen = collect(sys, "hook.before_tool_execution")
        with pytest.raises(OperationCancelled):
            await sys.tools.run(cancelled.name, {})
        await sys.bus.drain(5)
        [event] = seen
    return event


def assert_withheld(marker: Any, value: Any) -> None:
    """``marker`` is the documented stand-in for ``value``."""
    assert isinstance(marker, dict), type(marker)
    assert marker["withheld"] == "too large"
    assert marker["bytes"] > 1_000_000
    assert marker["digest"] == digest(value)


async def test_a_tool_with_a_huge_result_succeeds_and_its_event_is_kept(
        system: System) -> None:
    # Publishing tool.huge.completed raised EventTooLargeError: the tool call failed
    # although the tool had its result.
    completed = collect(system, "tool.huge.completed")
    run = await system.tools.run("huge", {})
    assert run.result == BIG
    await system.bus.drain(5)
    [event] = completed
    assert_withheld(event.data["result"], BIG)
    assert event.data["cached"] is False and event.data["attempts"] == 1
    [kept] = stored(system, "tool.huge.completed")
    assert kept.data == event.data


async def test_huge_tool_params_do_not_fail_the_call(system: System) -> None:
    @tool(name="length")
    def length(text: str) -> int:
        """The length of ``text``."""
        return len(text)

    system.tools.register(length)
    started = collect(system, "tool.length.started")
    assert (await system.tools.run("length", {"text": BIG})).result == len(BIG)
    await system.bus.drain(5)
    [event] = started
    assert_withheld(event.data["params"]["text"], BIG)
    assert event.data["attempt"] == 1


@pytest_asyncio.fixture
async def verbatim() -> AsyncIterator[System]:
    """A system that records prompts and replies whole (``record_content="full"``; the
    default cuts each text to 4000 characters)."""
    sys = System(SystemConfig(store="memory", record_content="full"))
    await sys.start()
    yield sys
    await sys.shutdown()


async def test_a_huge_model_answer_reaches_the_agent_and_the_event_is_kept(
        verbatim: System) -> None:
    # model.<provider>.completed was refused and only logged: the call succeeded but the
    # record of it was lost.
    system = verbatim
    completed = collect(system, "model.scripted.completed")
    agent = system.agents.create("big", provider=ScriptedProvider([BIG]))
    answer = await agent.run("q")
    assert answer.output == BIG
    await system.bus.drain(5)
    [event] = completed
    response = event.data["response"]
    assert response["role"] == "assistant"
    assert_withheld(response["content"], BIG)
    # what fitted is kept as it was
    assert event.data["request"]["messages"] == [{"role": "user", "content": "q"}]
    assert event.data["usage"]["output_tokens"] == len(BIG) // 4
    assert len(stored(system, "model.scripted.completed")) == 1


async def test_a_huge_prompt_is_withheld_from_the_model_event(verbatim: System) -> None:
    system = verbatim
    completed = collect(system, "model.scripted.completed")
    agent = system.agents.create("echo", provider=ScriptedProvider(["short"]))
    assert (await agent.run(BIG)).output == "short"
    await system.bus.drain(5)
    [event] = completed
    [message] = event.data["request"]["messages"]
    assert message["role"] == "user"
    assert_withheld(message["content"], BIG)
    assert event.data["response"]["content"] == "short"


async def test_a_workflow_step_with_a_huge_output_completes(system: System) -> None:
    stages = collect(system, "workflow.big.stage_completed")
    done = collect(system, "workflow.big.completed")
    wf = Sequential("big", [Step("make", fn=lambda ctx: BIG), Step("small", fn=lambda ctx: 1)])
    result = await wf.run(system)
    assert result.status == "completed" and result.outputs == {"make": BIG, "small": 1}
    await system.bus.drain(5)
    first, second = stages
    assert first.data["step"] == "make"
    assert_withheld(first.data["output"], BIG)
    assert second.data["output"] == 1
    assert len(done) == 1


async def test_a_workflow_tool_step_with_a_huge_result_completes(system: System) -> None:
    wf = Sequential("tooled", [Step("get", tool="huge")])
    result = await wf.run(system)
    assert result.status == "completed" and result.outputs == {"get": BIG}


async def test_a_huge_state_value_is_written(system: System) -> None:
    changed = collect(system, "state.**")
    entry = await system.state.set("k", BIG)
    assert entry.version == 1
    assert await system.state.get("k") == BIG
    await system.bus.drain(5)
    assert [e.event_type for e in changed] == ["state.global.changed"]


async def test_hook_event_with_a_huge_cancel_reason_is_kept() -> None:
    event = await cancelled_tool_event(huge, BIG)
    assert event.data["result"] == "cancel"
    assert_withheld(event.data["reason"], BIG)


async def test_the_callers_own_event_still_raises(system: System) -> None:
    # The bus's documented contract for the caller's own events is unchanged.
    collect(system, "mine.**")
    with pytest.raises(EventTooLargeError):
        system.bus.publish("mine.big", {"text": BIG})
    with pytest.raises(EventTooLargeError):
        await system.bus.publish_async("mine.big", {"text": BIG})
    with pytest.raises(EventTooLargeError):
        await system.emit("mine.big", {"text": BIG})


async def test_a_huge_streamed_chunk_does_not_fail_the_model_call(system: System) -> None:
    # model.<provider>.delta events are not stored, but a queued subscriber makes the bus
    # measure them: one 2 MB chunk raised EventTooLargeError in the middle of the stream.
    deltas = collect(system, "model.scripted.delta")
    agent = system.agents.create("streamer", provider=ScriptedProvider([BIG]))
    assert (await agent.run("q")).output == BIG
    await system.bus.drain(5)
    assert deltas
    withheld = [e for e in deltas if isinstance(e.data.get("text"), dict)]
    assert len(withheld) == 1
    assert_withheld(withheld[0].data["text"], BIG)


async def test_the_marker_digest_is_the_run_recordings_output_digest(system: System) -> None:
    # One digest for one value: the event's marker can be matched with the recorded step.
    completed = collect(system, "tool.huge.completed")
    async with system.runs.start("job", "big") as run:
        await system.tools.run("huge", {})
    await system.bus.drain(5)
    step = next(s for s in system.runs.recording(run.run_id).ordered if s.kind == "tool")
    [event] = completed
    assert event.data["result"]["digest"] == step.output_digest == digest(BIG)


# -- the reduction itself ---------------------------------------------------------------
def test_withhold_largest_keeps_what_fits_beside_the_huge_value() -> None:
    data = {"tool": "t", "result": {"rows": ["a", BIG, "b"], "count": 3}, "n": 1}
    reduced = withhold_largest(data, 1_500_000)
    assert reduced["tool"] == "t" and reduced["n"] == 1
    rows = reduced["result"]["rows"]
    assert rows[0] == "a" and rows[2] == "b" and reduced["result"]["count"] == 3
    assert_withheld(rows[1], BIG)
    assert is_withheld(rows[1]) and not is_withheld(rows)
    assert data["result"]["rows"][1] is BIG  # the caller's data is not changed


def test_withhold_largest_withholds_a_container_of_many_small_values_whole() -> None:
    many = ["y" * 50] * 40_000  # 2 MB in items each no larger than their marker
    reduced = withhold_largest({"items": many, "k": 1}, 1_000_000)
    assert reduced["k"] == 1
    assert reduced["items"] == withheld_marker(many)


def test_a_marker_is_never_withheld_again() -> None:
    marker = withheld_marker(BIG)
    assert withhold_largest(marker, 10) == marker
    assert marker["bytes"] == len(BIG) + 2  # the value as JSON: quotes included


class _SmallBus:
    """A bus that refuses events whose data is larger than ``limit`` bytes as JSON, or
    always (``refuse_all``): what a store with a lower limit than the bus's looks like."""

    def __init__(self, limit: int, refuse_all: bool = False) -> None:
        self.limit = limit
        self.refuse_all = refuse_all
        self.published: list[tuple[str, Any]] = []

    def _check(self, event_type: str, data: Any) -> None:
        size = len(msgspec.json.encode(data))
        if self.refuse_all or size > self.limit:
            raise EventTooLargeError(f"{event_type} is too large", size=size,
                                     limit=self.limit)
        self.published.append((event_type, data))

    def publish(self, event_type: str, data: Any, metadata: Any = None,
                persist: bool = True) -> UniversalEvent:
        self._check(event_type, data)
        return UniversalEvent(event_type=event_type, data=data)

    async def publish_async(self, event_type: str, data: Any, metadata: Any = None,
                            persist: bool = True) -> UniversalEvent:
        return self.publish(event_type, data, metadata, persist)


def _refusal(bus: _SmallBus, data: Any) -> EventTooLargeError:
    try:
        bus.publish("x.completed", data)
    except EventTooLargeError as exc:
        return exc
    raise AssertionError("the bus took it")


async def test_publish_withheld_tries_again_until_the_event_fits() -> None:
    # The first refusal says how much to cut; a lower limit further on (a store's) is
    # met by cutting again.
    bus = _SmallBus(limit=3_000_000)
    data = {"a": "a" * 1_500_000, "b": "b" * 1_500_000, "c": "c" * 1_500_000}
    error = _refusal(bus, data)
    bus.limit = 600
    event = publish_withheld(bus, error, "x.completed", data)
    assert event is not None and bus.published == [("x.completed", event.data)]
    assert all(is_withheld(v) for v in event.data.values())
    bus.published.clear()
    event = await publish_withheld_async(bus, _refusal(bus, data), "x.completed", data)
    assert event is not None and all(is_withheld(v) for v in event.data.values())


async def test_publish_withheld_never_raises_too_large(
        caplog: pytest.LogCaptureFixture) -> None:
    bus = _SmallBus(limit=10, refuse_all=True)
    data = {"result": BIG}
    assert publish_withheld(bus, _refusal(bus, data), "x.completed", data) is None
    assert await publish_withheld_async(bus, _refusal(bus, data), "x.completed",
                                        data) is None
    assert bus.published == []
    assert "x.completed not published" in caplog.text


async def test_plain_json_data_stays_plain_json() -> None:
    bus = _SmallBus(limit=1000)
    data = PlainJson(reason=BIG, result="cancel")
    assert publish_withheld(bus, _refusal(bus, data), "hook.x", data) is not None
    [(_, sent)] = bus.published
    assert type(sent) is PlainJson  # what the bus was handed: it skips the JSON walk
    assert sent["result"] == "cancel" and is_withheld(sent["reason"])


async def test_a_session_with_a_huge_name_publishes_its_event_withheld(system: System) -> None:
    # session.started raised EventTooLargeError after the session was already written.
    # Names are bounded (MAX_SESSION_NAME), so a bus with a small limit stands in.
    started = collect(system, "session.started")
    system.bus.max_event_bytes = 600
    session = await system.sessions.start("n" * 256)
    await system.bus.drain(5)
    [event] = started
    assert event.data["session_id"] == session.id
    marker = event.data["name"]
    assert marker["withheld"] == "too large" and marker["digest"] == digest("n" * 256)
    assert [s.id for s in await system.sessions.list()] == [session.id]


async def test_an_adapter_event_too_large_is_kept_withheld(system: System) -> None:
    # The adapters' EventSink logged the EventTooLargeError and lost the event.
    from llmspell.integrations._bridge import EventSink

    sink = EventSink(system, "llmspell.test")
    sink.publish("tool.big.completed", {"result": BIG, "ok": True})
    await system.bus.drain(5)
    [event] = stored(system, "tool.big.completed")
    assert event.data["ok"] is True
    assert_withheld(event.data["result"], BIG)
    assert event.metadata.source == "llmspell.test"


class _ScriptedRefusals(_SmallBus):
    """A bus that raises ``errors`` in turn, then takes the event."""

    def __init__(self, errors: list[Exception]) -> None:
        super().__init__(limit=1 << 30)
        self.errors = errors

    def _check(self, event_type: str, data: Any) -> None:
        if self.errors:
            raise self.errors.pop(0)
        super()._check(event_type, data)


def _too_large() -> EventTooLargeError:
    return EventTooLargeError("too large", size=2_000, limit=1_000)


@pytest.mark.parametrize("use_async", [False, True])
async def test_publish_withheld_raises_what_a_reduction_cannot_cure(use_async: bool) -> None:
    # A reduced event holds only values that were published before: a bus calling it not
    # JSON-safe is a fault of the bus, passed on as it is (sync and async alike).
    strange = NotJsonSafeError("event.data", "bus fault")
    bus = _ScriptedRefusals([strange])
    with pytest.raises(NotJsonSafeError) as caught:
        if use_async:
            await publish_withheld_async(bus, _too_large(), "x.completed", {"r": BIG})
        else:
            publish_withheld(bus, _too_large(), "x.completed", {"r": BIG})
    assert caught.value is strange and bus.published == []


@pytest.mark.parametrize("use_async", [False, True])
async def test_publish_withheld_makes_safe_then_reduces(use_async: bool) -> None:
    # Made safe first (the lone surrogate), then too large: reduced, and published.
    bus = _ScriptedRefusals([_too_large()])
    data = {"r": BIG, "s": "\ud800"}
    unsafe = NotJsonSafeError("event.data.s", "lone surrogate")
    if use_async:
        event = await publish_withheld_async(bus, unsafe, "x.completed", data)
    else:
        event = publish_withheld(bus, unsafe, "x.completed", data)
    assert event is not None and is_withheld(event.data["r"])
    assert event.data["s"] == "\ufffd"
