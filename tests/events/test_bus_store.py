"""The bus with a store: persistence, replay, and store failures that surface."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from llmspell.errors import EventError, InvalidValueError, StoreError
from llmspell.events import EventBus, EventQuery, UniversalEvent
from llmspell.events import bus as bus_module
from llmspell.events.store import MemoryStore, SQLiteStore


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    if request.param == "memory":
        yield MemoryStore()
    else:
        s = SQLiteStore(tmp_path / "events.db")
        yield s
        s.close()


async def test_published_events_are_persisted_and_replay_reproduces_them(store) -> None:  # type: ignore[no-untyped-def]
    bus = EventBus(store=store)
    originals = [
        bus.publish("tool.calc.completed", {"i": i, "nested": {"v": [i, i * 1.5]}},
                    {"correlation_id": "run-1" if i % 2 else "run-2"})
        for i in range(20)
    ]
    bus.publish("agent.x.started", None, persist=False)
    assert bus.flush() >= 0
    stored = store.query(pattern="tool.**")
    assert stored == originals

    replayed: list[UniversalEvent] = []
    bus.subscribe("tool.**", replayed.append)
    count = await bus.replay(pattern="tool.**")
    assert count == 20
    assert [(e.event_type, e.data, e.sequence, e.id) for e in replayed] == [
        (e.event_type, e.data, e.sequence, e.id) for e in originals]
    assert all(e.metadata.replayed for e in replayed)
    assert store.count() == 20  # replay does not store again by default

    only_run1 = await bus.replay(EventQuery(correlation_id="run-1"))
    assert only_run1 == 10
    await bus.close()


async def test_replay_at_original_pace(store, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    # The waits replay asks for are recorded (and not slept), so the pace is checked the
    # same way on an idle or a loaded machine.
    slept: list[float] = []

    class RecordingAsyncio:
        """The bus module's asyncio, with a sleep that records instead of waiting."""

        def __getattr__(self, name: str) -> object:
            return getattr(asyncio, name)

        async def sleep(self, seconds: float) -> None:
            slept.append(seconds)
            await asyncio.sleep(0)

    bus = EventBus(store=store)
    base = 1_000.0
    for i in range(3):
        bus.publish(UniversalEvent(event_type="t.x", data=i, timestamp=base + i * 0.05))
    bus.flush()
    monkeypatch.setattr(bus_module, "asyncio", RecordingAsyncio())
    assert await bus.replay(pace=1.0) == 3
    assert slept == [pytest.approx(0.05), pytest.approx(0.05)]  # the original gaps
    slept.clear()
    assert await bus.replay(pace=10.0) == 3
    assert slept == [pytest.approx(0.005), pytest.approx(0.005)]  # ten times faster
    slept.clear()
    assert await bus.replay() == 3
    assert slept == []  # no pace: no waits
    monkeypatch.undo()
    await bus.close()


async def test_replay_needs_a_store_and_a_sane_query() -> None:
    bus = EventBus()
    with pytest.raises(EventError, match="store"):
        await bus.replay()
    bus = EventBus(store=MemoryStore())
    with pytest.raises(InvalidValueError):
        await bus.replay(pace=0)
    with pytest.raises(InvalidValueError, match="original order"):
        await bus.replay(descending=True)
    with pytest.raises(InvalidValueError, match="query"):
        await bus.replay(colour="red")
    await bus.close()


class FlakyConnection:
    """Wraps the writer's connection: COMMIT fails while ``failing`` is set."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.failing = True

    def execute(self, sql: str, *args: object) -> object:
        if sql == "COMMIT" and self.failing:
            raise sqlite3.OperationalError("disk I/O error (injected)")
        return self.conn.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self.conn, name)


async def test_store_failure_is_surfaced_and_nothing_is_lost(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "events.db", flush_interval=0.01)
    bus = EventBus(store=store)
    errors: list[UniversalEvent] = []
    bus.subscribe("event.store.error", errors.append)
    store.flush()
    flaky = FlakyConnection(store._wconn)
    store._wconn = flaky  # type: ignore[assignment]
    for i in range(50):
        bus.publish("work.item", i)
    with pytest.raises(StoreError, match="disk I/O error"):
        await asyncio.to_thread(bus.flush, 2.0)
    assert bus.stats().store_errors >= 1
    assert errors and errors[0].data["error_type"] == "OperationalError"
    flaky.failing = False
    await asyncio.to_thread(bus.flush, 5.0)
    assert [e.data for e in store.query(pattern="work.item")] == list(range(50))
    assert store.count(pattern="event.store.error") == 0  # store errors are not stored
    await bus.close()
    store.close()


async def test_a_replay_cancelled_midway_leaves_its_read_ahead_quiet(tmp_path: Path) -> None:
    """The next page is read while one is published; a replay cancelled with a read in
    flight lets it finish alone, and the store stays usable."""
    store = SQLiteStore(tmp_path / "events.db")
    for i in range(3000):
        store.append(UniversalEvent.create("tick", {"i": i}))
    store.flush()
    bus = EventBus(store=store)
    seen: list[int] = []
    task: asyncio.Task[int] | None = None

    def on_tick(event: UniversalEvent) -> None:
        seen.append(event.data["i"])
        if len(seen) == 700 and task is not None:  # inside the second page
            task.cancel()

    bus.subscribe("tick", on_tick)
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    task = asyncio.ensure_future(bus.replay(pattern="tick"))
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.2)  # the read in flight ends
    # (it stops at its next await: the end of the page it is publishing)
    assert 700 <= len(seen) < 3000 and seen == list(range(len(seen))) and errors == []
    assert await bus.replay(pattern="tick", limit=5) == 5
    assert store.count() == 3000
    await bus.close()
    store.close()
