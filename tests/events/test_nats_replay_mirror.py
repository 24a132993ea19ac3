"""Replay from the stream through ``bus.replay`` and mirroring the stream into SQLite, against
the real NATS server.

Replay: by stream sequence, by time, with the store's query fields, at a pace, and the
choice between the store and the stream. Mirror: every process's events land in one SQLite
file with their ids and run ids (queries by run work there), this bus's own events are not
stored twice, and a mirroring bus that is restarted (closed, or killed with SIGKILL
mid-stream) resumes under its name with no gap and no duplicate.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmspell.errors import ConfigurationError, EventError, InvalidValueError
from llmspell.events import UniversalEvent
from llmspell.events.distributed import DistributedBus, make_bus
from llmspell.events.store import EventQuery, MemoryStore, SQLiteStore
from llmspell.runtime import System, SystemConfig
from tests.events.nats_support import bus_url, buses, eventually, namespace, nats_url

__all__ = ["buses", "namespace", "nats_url"]  # fixtures

MIRROR_WORKER = Path(__file__).with_name("nats_mirror_worker.py")


def _replayed(bus: DistributedBus, pattern: str = "**") -> list[UniversalEvent]:
    seen: list[UniversalEvent] = []
    bus.subscribe(pattern, lambda e: seen.append(e) if e.metadata.replayed else None,
                  local=True)
    return seen


async def _accepted(bus: DistributedBus) -> None:
    await eventually(lambda: bus.distributed_stats().buffered == 0, what="the outbox")


# -- replay ---------------------------------------------------------------------------------
async def test_replay_reads_the_stream_by_sequence_and_by_time(
        buses: Callable[..., Any]) -> None:
    publisher, reader = await buses(), await buses()
    for i in range(5):
        await publisher.publish_async("audit.entry", {"i": i}, durable=True)
    state = await reader.stream_state()
    third = state.last_sequence - 2                      # the stream sequence of i=2
    await asyncio.sleep(0.3)
    middle = time.time()
    await asyncio.sleep(0.3)
    for i in range(5, 10):
        await publisher.publish_async("audit.entry", {"i": i}, durable=True)
    await publisher.publish_async("other.entry", {"i": 99}, durable=True)
    seen = _replayed(reader)

    assert await reader.replay(pattern="audit.*", start_sequence=third) == 8
    assert [e.data["i"] for e in seen] == list(range(2, 10))
    seen.clear()
    assert await reader.replay(pattern="audit.*", start_time=middle) == 5
    assert [e.data["i"] for e in seen] == list(range(5, 10))
    seen.clear()
    # stop_sequence bounds it; a bus without a store reads the stream by default.
    assert await reader.replay(start_sequence=third, stop_sequence=third + 1) == 2
    assert [e.data["i"] for e in seen] == [2, 3]
    # Replayed events keep their ids, stay in this process and are not sent again.
    first = [e.id for e in seen]
    assert first == [e.event.id async for e in reader.transport.replay(
        "audit.*", start_sequence=third, stop_sequence=third + 1)]
    assert reader.distributed_stats().forwarded == 0


async def test_replay_from_the_stream_takes_the_store_query_fields(
        buses: Callable[..., Any]) -> None:
    publisher, reader = await buses(), await buses()
    for i in range(6):
        publisher.publish("job.step", {"i": i},
                          {"run_id": "run-a" if i % 2 else "run-b",
                           "correlation_id": f"c{i % 3}"})
    await _accepted(publisher)
    seen = _replayed(reader)
    assert await reader.replay(EventQuery(pattern="job.*", run_id="run-a")) == 3
    assert [e.data["i"] for e in seen] == [1, 3, 5]
    assert all(e.metadata.run_id == "run-a" for e in seen)
    seen.clear()
    assert await reader.replay(source="stream", correlation_id="c0", limit=1) == 1
    assert [e.data["i"] for e in seen] == [0]
    seen.clear()
    stamps = [e.event.timestamp async for e in reader.transport.replay("job.*")]
    assert await reader.replay(source="stream", since=stamps[2], until=stamps[4]) == 3
    assert [e.data["i"] for e in seen] == [2, 3, 4]


async def test_replay_at_the_original_pace_or_instantly(buses: Callable[..., Any]) -> None:
    publisher, reader = await buses(), await buses()
    base = time.time()
    for i in range(3):  # events stamped one second apart
        publisher.publish(UniversalEvent(event_type="tick.at", data=i, timestamp=base + i))
    await _accepted(publisher)
    seen = _replayed(reader)
    started = time.monotonic()
    assert await reader.replay(pattern="tick.*", pace=4.0) == 3  # 2 s of events, 4x
    assert time.monotonic() - started >= 0.45
    assert [e.data for e in seen] == [0, 1, 2]
    assert await reader.replay(pattern="tick.*") == 3           # instantly (no bound)


async def test_replay_chooses_the_store_or_the_stream(buses: Callable[..., Any]) -> None:
    store = MemoryStore()
    bus = await buses(store=store)
    other = await buses()
    mine = await bus.publish_async("note.mine", 1, durable=True)
    await other.publish_async("note.theirs", 2, durable=True)
    seen = _replayed(bus)
    assert await bus.replay(pattern="note.*") == 1                  # the store: its own
    assert [e.id for e in seen] == [mine.id]
    seen.clear()
    assert await bus.replay(pattern="note.*", source="stream") == 2  # every process's
    assert sorted(e.data for e in seen) == [1, 2]
    with pytest.raises(InvalidValueError, match="positions in the stream"):
        await bus.replay(source="store", start_sequence=1)
    with pytest.raises(InvalidValueError, match="unknown replay source"):
        await bus.replay(source="disk")
    with pytest.raises(InvalidValueError, match="start_sequence must be"):
        await bus.replay(start_sequence=0)
    with pytest.raises(InvalidValueError, match="original order"):
        await bus.replay(source="stream", descending=True)
    assert await bus.replay_stream("note.*") == 2                   # the older name


async def test_replay_from_the_stream_works_from_a_sync_program(
        nats_url: str, namespace: str) -> None:
    def program() -> list[Any]:
        bus = make_bus(bus_url(nats_url, namespace))
        assert isinstance(bus, DistributedBus)
        bus.connect_sync()
        try:
            seen = _replayed(bus)
            bus.publish("sync.x", 1, durable=True)
            count = asyncio.run(bus.replay(pattern="sync.*"))   # another loop than the bus's
            assert count == 1
            return [e.data for e in seen]
        finally:
            bus.close_sync()

    assert await asyncio.to_thread(program) == [1]


# -- mirror ---------------------------------------------------------------------------------
def _rows(db: Path) -> list[tuple[str, str, str | None]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute("SELECT id, event_type, run_id FROM events ORDER BY position"))


async def test_a_mirror_stores_every_process_event_once_with_ids_and_runs(
        buses: Callable[..., Any], tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    store = SQLiteStore(db)
    here = await buses(store=store)
    mirror = here.mirror(name="host-1")
    await here.ready()
    elsewhere = await buses()
    theirs = [elsewhere.publish("tool.search.done", {"i": i}, {"run_id": f"run-{i % 2}"})
              for i in range(20)]
    mine = [here.publish("tool.local.done", {"i": i}, {"run_id": "run-0"}) for i in range(5)]
    kept_out = here.publish("tool.local.quiet", {}, persist=False)
    await _accepted(elsewhere)
    await _accepted(here)
    stats = await here.mirror_caught_up("host-1")
    assert stats.committed == 20 and stats.pending == 0        # this bus's own: skipped
    assert here.distributed_stats().transport.skipped_own >= 6
    rows = _rows(db)
    assert len(rows) == 25 == len({r[0] for r in rows})
    assert {r[0] for r in rows} == {e.id for e in theirs + mine}
    assert kept_out.id not in {r[0] for r in rows}
    run0 = store.query(run_id="run-0")
    assert sorted(e.id for e in run0) == sorted(
        [e.id for e in theirs if e.metadata.run_id == "run-0"] + [e.id for e in mine])
    stored = {e.id: e for e in store.query(pattern="tool.search.*")}
    assert all(stored[e.id].data == e.data and stored[e.id].timestamp == e.timestamp
               and not stored[e.id].metadata.replayed for e in theirs)
    assert mirror.stats().batches >= 1
    with pytest.raises(EventError, match="already running"):
        here.mirror(name="host-1")
    await here.stop_mirror("host-1")
    store.close()


async def test_a_restarted_mirror_resumes_without_gaps_or_duplicates(
        nats_url: str, namespace: str, tmp_path: Path) -> None:
    url = bus_url(nats_url, namespace)
    db = tmp_path / "events.db"
    publisher = make_bus(url)
    assert isinstance(publisher, DistributedBus)
    await publisher.connect()
    try:
        published = []
        for round_ in range(3):
            store = SQLiteStore(db)
            bus = make_bus(f"{url}&mirror=host-1", store=store)   # the URL option
            assert isinstance(bus, DistributedBus)
            await bus.connect()
            published += [publisher.publish("order.placed", {"round": round_, "i": i})
                          for i in range(30)]
            await _accepted(publisher)
            stats = await bus.mirror_caught_up("host-1")
            # Each run receives what was published since the last one: it resumed.
            assert stats.received == (30 if round_ == 0 else 40)
            await bus.close()
            store.close()
            # Published while no mirror runs: the next one picks them up.
            published += [publisher.publish("order.placed", {"round": round_, "gap": i})
                          for i in range(10)]
            await _accepted(publisher)
        store = SQLiteStore(db)
        bus = make_bus(f"{url}&mirror=host-1", store=store)
        assert isinstance(bus, DistributedBus)
        await bus.connect()
        await bus.mirror_caught_up("host-1")
        await bus.close()
        store.close()
    finally:
        await publisher.close()
    rows = _rows(db)
    assert [r[0] for r in rows] == [e.id for e in published]     # in order, once each


async def test_a_mirror_killed_mid_stream_resumes_with_every_event_once(
        nats_url: str, namespace: str, tmp_path: Path) -> None:
    url = bus_url(nats_url, namespace)
    db = tmp_path / "events.db"
    publisher = make_bus(url)
    assert isinstance(publisher, DistributedBus)
    await publisher.connect()

    def spawn() -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, str(MIRROR_WORKER), url, "host-1", str(db)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    async def line(proc: subprocess.Popen[str]) -> str:
        assert proc.stdout is not None
        text = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        if not text:
            pytest.fail(f"the mirror worker exited: {proc.communicate(timeout=10)[1][-3000:]}")
        return text.strip()

    total = 2000
    first = spawn()
    try:
        assert await line(first) == "ready"
        published = [publisher.publish("order.placed", {"i": i}) for i in range(total)]
        await _accepted(publisher)
        await eventually(lambda: db.exists() and len(_rows(db)) >= 200, timeout=60,
                         what="the first mirror to store events")
        first.kill()                                             # SIGKILL, mid-stream
        first.wait(10)
        before = len(_rows(db))
        assert before < total, "the kill came too late to test anything"
        second = spawn()
        try:
            assert await line(second) == "ready"
            await eventually(lambda: len(_rows(db)) >= total, timeout=120,
                             what="the second mirror to catch up")
            assert second.stdin is not None
            second.stdin.write("stop\n")
            second.stdin.flush()
            await line(second)
            second.wait(30)
        finally:
            second.kill()
        state = await publisher.transport.consumer_state("host-1")  # type: ignore[attr-defined]
    finally:
        first.kill()
        await publisher.close()
    rows = _rows(db)
    ids = [r[0] for r in rows]
    assert len(ids) == total and set(ids) == {e.id for e in published}  # no gap, no duplicate
    # The events the killed process held came again after ack_wait: out of order, once.
    assert state.pending == 0 and state.ack_pending == 0


async def test_a_system_mirrors_the_stream_into_its_store(nats_url: str, namespace: str,
                                                          tmp_path: Path) -> None:
    url = bus_url(nats_url, namespace)
    system = System(SystemConfig(store="sqlite", data_dir=str(tmp_path),
                                 bus=f"{url}&mirror=box-1", hook_events=False))
    other = make_bus(url)
    assert isinstance(other, DistributedBus)
    async with system:
        await other.connect()
        try:
            sent = other.publish("agent.elsewhere.done", {"ok": True}, {"run_id": "r-9"})
            await _accepted(other)
            bus = system.bus
            assert isinstance(bus, DistributedBus)
            await bus.mirror_caught_up("box-1")
            found = system.store.query(run_id="r-9") if system.store is not None else []
            assert [e.id for e in found] == [sent.id]
        finally:
            await other.close()


def test_a_mirror_needs_a_store(nats_url: str, namespace: str) -> None:
    with pytest.raises(ConfigurationError, match="needs a store"):
        make_bus(f"{bus_url(nats_url, namespace)}&mirror=m")
    bus = make_bus(bus_url(nats_url, namespace))
    assert isinstance(bus, DistributedBus)
    with pytest.raises(EventError, match="needs a store"):
        bus.mirror(name="m")
    with pytest.raises(InvalidValueError, match="invalid durable subscription name"):
        bus.mirror(MemoryStore(), name="bad name")
    bus.close_sync()
