"""Where the viewer's events come from: a store file followed read-only, or a bus."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from llmspell.errors import StoreError
from llmspell.events import EventBus
from llmspell.events.event import UniversalEvent
from llmspell.events.store.sqlite import SQLiteStore, SQLiteStoreReader
from llmspell.viewer.source import BusSource, StoreSource


def fill(path: Path, types: list[str]) -> None:
    store = SQLiteStore(path)
    try:
        store.append_many(UniversalEvent.create(t, {"i": i}) for i, t in enumerate(types))
        store.flush()
    finally:
        store.close()


def test_the_reader_reads_by_position_and_never_writes(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    fill(path, ["a.x", "b.y", "a.z", "c"])
    before = path.read_bytes()
    with SQLiteStoreReader(path) as reader:
        assert reader.last_position() == 4
        assert [(p, e.event_type) for p, e in reader.read_after(1, limit=2)] == [
            (2, "b.y"), (3, "a.z")]
        assert [p for p, _ in reader.read_after(0, pattern="a.*")] == [1, 3]
        assert [p for p, _ in reader.read_after(0, upto=2)] == [1, 2]
        assert [p for p, _ in reader.newest(2)] == [3, 4]
        assert [p for p, _ in reader.newest(5, pattern="a.*", upto=2)] == [1]
        assert reader.count_types(1, 4) == {"b.y": 1, "a.z": 1, "c": 1}
    assert path.read_bytes() == before
    with pytest.raises(StoreError, match="closed"):
        reader.last_position()


def test_the_reader_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no event store"):
        SQLiteStoreReader(tmp_path / "missing.db")
    bogus = tmp_path / "bogus.db"
    bogus.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError):
        SQLiteStoreReader(bogus)


async def test_a_store_source_waits_for_its_file(tmp_path: Path) -> None:
    path = tmp_path / "later" / "events.db"
    source = StoreSource(path, poll_interval=0.01)
    await source.start()
    assert source.describe()["status"] == "waiting"
    assert await source.last() == 0 and await source.read_after(0, 10) == []
    path.parent.mkdir()
    fill(path, ["a", "b", "c"])
    assert await source.last() == 3
    assert source.describe()["status"] == "reading"
    assert [p for p, _ in await source.read_after(1, 10)] == [2, 3]
    assert [p for p, _ in await source.newest(1)] == [3]
    assert await source.count_types(0, 3) == {"a": 1, "b": 1, "c": 1}
    event = await source.get(2)
    assert event is not None and event.event_type == "b"
    assert await source.get(9) is None
    await source.wait(3, 5.0)  # one poll interval
    assert source.format_id(7) == "7" and source.parse_id("7") == 7
    assert source.parse_id("x") is None and source.parse_id("-1") is None
    await source.close()
    await source.close()


async def test_a_bus_source_keeps_a_bounded_ring() -> None:
    bus = EventBus()
    source = BusSource(bus, max_events=5)
    await source.start()
    for i in range(8):
        bus.publish("tick" if i % 2 else "tock", {"i": i})
    assert await source.last() == 8
    assert [p for p, _ in await source.read_after(0, 100)] == [4, 5, 6, 7, 8]
    assert [p for p, _ in await source.read_after(5, 100, pattern="tick")] == [6, 8]
    assert [p for p, _ in await source.newest(2, upto=7)] == [6, 7]
    assert await source.count_types(0, 8) == {"tick": 3, "tock": 2, "(no longer held)": 3}
    assert source.evicted == 3 and source.describe()["held"] == 5
    found = await source.get(6)
    assert found is not None and found.data == {"i": 5}
    assert await source.get(1) is None
    ident = source.format_id(6)
    assert source.parse_id(ident) == 6
    assert source.parse_id("6") is None and source.parse_id("other-6") is None
    await source.close()
    bus.publish("tick")
    assert await source.last() == 8
    await bus.close()


async def test_a_bus_source_wakes_when_an_event_arrives_from_another_thread() -> None:
    bus = EventBus()
    source = BusSource(bus, max_bytes=10_000_000)
    await source.start()
    waiter = asyncio.create_task(source.wait(0, 30.0))
    await asyncio.sleep(0.01)
    threading.Thread(target=bus.publish, args=("from.thread",)).start()
    await asyncio.wait_for(waiter, 10.0)
    assert [e.event_type for _, e in await source.read_after(0, 10)] == ["from.thread"]
    await source.wait(0, 30.0)  # an event is there already: returns at once
    await source.close()
    await bus.close()


def test_bad_source_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="poll_interval"):
        StoreSource("x.db", poll_interval=0)
    with pytest.raises(ValueError, match="max_events"):
        BusSource(EventBus(), max_events=0)
