"""One connection's stream: hello and state, the backlog (tail or resumption), live events,
and summaries instead of unbounded buffers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from llmspell.errors import InvalidValueError
from llmspell.events import EventBus
from llmspell.events.event import UniversalEvent
from llmspell.events.store.sqlite import SQLiteStore
from llmspell.viewer.hub import Hub, HubLimits, frame
from llmspell.viewer.source import BusSource, StoreSource


class Frames:
    """Reads one stream's frames as (event, id, data)."""

    def __init__(self, stream: AsyncIterator[bytes]) -> None:
        self.stream = stream

    async def next(self, timeout: float = 10.0) -> tuple[str, str | None, Any]:
        while True:
            chunk = await asyncio.wait_for(self.stream.__anext__(), timeout)
            fields: dict[str, str] = {}
            for line in chunk.decode().split("\n"):
                name, _, value = line.partition(": ")
                if name in ("id", "event", "data"):
                    fields[name] = value
            if "event" in fields:
                return fields["event"], fields.get("id"), msgspec.json.decode(fields["data"])

    async def until(self, kind: str, timeout: float = 10.0) -> tuple[str | None, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            assert left > 0, f"no {kind} message within {timeout} s"
            event, ident, data = await self.next(left)
            if event == kind:
                return ident, data

    async def positions(self, count: int, timeout: float = 10.0) -> list[int]:
        """Positions of the next ``count`` events (from ``events`` messages)."""
        got: list[int] = []
        while len(got) < count:
            ident, batch = await self.until("events", timeout)
            got += [e["p"] for e in batch]
            assert ident is not None and ident.endswith(str(batch[-1]["p"]))
        return got

    async def close(self) -> None:
        await self.stream.aclose()  # type: ignore[attr-defined]


def publish(store: SQLiteStore, types: list[str]) -> None:
    store.append_many(UniversalEvent.create(t, {"n": i}) for i, t in enumerate(types))
    store.flush()


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[SQLiteStore, StoreSource]]:
    store = SQLiteStore(tmp_path / "events.db")
    publish(store, ["boot"])
    source = StoreSource(store.path, poll_interval=0.01)
    yield store, source
    store.close()


async def started(source: Any, **limits: int) -> Hub:
    hub = Hub(source, limits=HubLimits(**limits))
    await hub.start()
    return hub


async def test_a_new_page_gets_state_then_its_tail_then_live_events(setup: Any) -> None:
    store, source = setup
    publish(store, [f"e.{i}" for i in range(9)])  # positions 2..10
    hub = await started(source, tail=3)
    frames = Frames(hub.stream())
    event, _, hello = await frames.next()
    assert event == "hello" and hello["resumed"] is False and hello["cursor"] == "10"
    assert (await frames.next())[0] == "runs"
    assert (await frames.next())[0] == "stats"
    assert await frames.positions(3) == [8, 9, 10]
    publish(store, ["live.a", "live.b"])
    assert await frames.positions(2) == [11, 12]
    await frames.close()
    assert not hub.feeds
    await hub.stop()


async def test_a_reconnect_resumes_after_its_last_event(setup: Any) -> None:
    store, source = setup
    publish(store, [f"e.{i}" for i in range(9)])
    hub = await started(source)
    frames = Frames(hub.stream(last_id="4"))
    _, _, hello = await frames.next()
    assert hello["resumed"] is True
    assert await frames.positions(6) == [5, 6, 7, 8, 9, 10]
    publish(store, ["after"])
    assert await frames.positions(1) == [11]
    await frames.close()
    await hub.stop()


async def test_an_unknown_id_starts_afresh(setup: Any) -> None:
    _, source = setup
    hub = await started(source)
    for last_id in ("nonsense", "999"):
        frames = Frames(hub.stream(last_id=last_id))
        _, _, hello = await frames.next()
        assert hello["resumed"] is False and hello["unknown_id"] is True
        await frames.close()
    await hub.stop()


async def test_a_long_absence_is_summarised(setup: Any) -> None:
    store, source = setup
    publish(store, ["old.a"] * 30 + ["old.b"] * 10 + ["recent"] * 5)  # positions 2..46
    hub = await started(source, max_backfill=5)
    frames = Frames(hub.stream(last_id="1"))
    ident, info = await frames.until("coalesced")
    assert ident is None and info["reason"] == "backfill"
    assert info["count"] == 40 and info["types"] == {"old.a": 30, "old.b": 10}
    assert (info["from"], info["to"]) == (2, 41)
    assert await frames.positions(5) == [42, 43, 44, 45, 46]
    await frames.close()
    await hub.stop()


async def test_a_slow_page_gets_a_summary_and_the_newest_events(setup: Any) -> None:
    store, source = setup
    hub = await started(source, feed_items=10, tail=0)
    frames = Frames(hub.stream())
    await frames.until("stats")
    publish(store, [f"burst.{i % 3}" for i in range(50)])  # positions 2..51
    while hub.cursor < 51:
        await asyncio.sleep(0.01)
    _, info = await frames.until("coalesced")
    assert info["reason"] == "behind" and info["count"] == 40
    assert sum(info["types"].values()) == 40
    assert await frames.positions(10) == list(range(42, 52))
    _, stats = await frames.until("stats")
    assert stats["client"]["coalesced"] == 40
    await frames.close()
    await hub.stop()


async def test_the_filter_narrows_events_but_not_runs(setup: Any) -> None:
    store, source = setup
    hub = await started(source, tail=0)
    frames = Frames(hub.stream(pattern="tool.**"))
    await frames.until("stats")
    for kind in ("run.started", "tool.t.started", "agent.a.state_changed", "tool.t.completed"):
        store.append(UniversalEvent.create(kind, {"kind": "k", "name": "n"}, run_id="r1"))
    store.flush()
    got: list[str] = []
    runs: list[Any] = []
    while len(got) < 2 or not runs:
        event, _, data = await frames.next()
        if event == "events":
            got += [e["t"] for e in data]
        elif event == "runs":
            runs += data
    assert got == ["tool.t.started", "tool.t.completed"]
    assert runs[-1]["run_id"] == "r1"
    await frames.close()
    await hub.stop()


async def test_a_bus_source_streams_and_resumes() -> None:
    bus = EventBus()
    hub = await started(BusSource(bus), tail=0)
    frames = Frames(hub.stream())
    await frames.until("stats")
    for i in range(3):
        bus.publish("bus.e", {"i": i})
    ident, batch = await frames.until("events")
    while len(batch) < 3:
        ident, more = await frames.until("events")
        batch += more
    await frames.close()
    bus.publish("bus.e", {"i": 3})
    again = Frames(hub.stream(last_id=ident))
    _, _, hello = await again.next()
    assert hello["resumed"] is True
    assert await again.positions(1) == [4]
    await again.close()
    await hub.stop()
    await bus.close()


async def test_stopping_the_hub_ends_its_streams(setup: Any) -> None:
    _, source = setup
    hub = await started(source, tail=0)
    stream = hub.stream()
    frames = Frames(stream)
    await frames.until("stats")
    await hub.stop()
    with pytest.raises(StopAsyncIteration):
        while True:
            await asyncio.wait_for(stream.__anext__(), 10.0)


def test_frames_and_limits() -> None:
    assert frame("events", b"[1]", "7") == b"id: 7\nevent: events\ndata: [1]\n\n"
    assert frame("stats", b"{}") == b"event: stats\ndata: {}\n\n"
    with pytest.raises(InvalidValueError, match="feed_items"):
        HubLimits(feed_items=0)


class SlowSource(StoreSource):
    """A store source whose reads take 20 ms: a hub that cannot keep up."""

    async def read_after(self, cursor: int, limit: int, *, pattern: str | None = None,
                         upto: int | None = None) -> list[tuple[int, UniversalEvent]]:
        await asyncio.sleep(0.02)
        return await super().read_after(cursor, limit, pattern=pattern, upto=upto)


async def test_a_hub_far_behind_skips_ahead_and_says_so(setup: Any) -> None:
    store, _ = setup
    source = SlowSource(store.path, poll_interval=0.01)
    hub = await started(source, batch=10, max_lag=100, tail=0)
    frames = Frames(hub.stream())
    await frames.until("stats")
    publish(store, ["flood.a"] * 600 + ["flood.b"] * 400)  # positions 2..1001
    _, info = await frames.until("coalesced", timeout=30)
    assert info["reason"] == "overload" and info["count"] > 0
    while hub.cursor < 1001:
        await asyncio.sleep(0.01)
    assert hub.skipped >= info["count"] and hub.total + hub.skipped == 1000
    await frames.close()
    await hub.stop()


async def test_a_replaced_store_is_followed_from_its_start(setup: Any, tmp_path: Path) -> None:
    store, source = setup
    publish(store, ["old"] * 5)
    hub = await started(source, tail=0)
    assert hub.cursor == 6
    store.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(store.path) + suffix).unlink(missing_ok=True)
    fresh = SQLiteStore(store.path)
    try:
        publish(fresh, ["new.a", "new.b"])
        deadline = asyncio.get_running_loop().time() + 30
        while hub.total < 2:
            assert asyncio.get_running_loop().time() < deadline, "the new file was not read"
            await asyncio.sleep(0.05)
        assert hub.cursor == 2
    finally:
        fresh.close()
        await hub.stop()
