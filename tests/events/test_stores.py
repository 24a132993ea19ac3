"""Behaviour of the event stores: the same tests over MemoryStore and SQLiteStore, then the
SQLite specifics (WAL, threads, write failures, crash durability)."""

from __future__ import annotations

import os
import queue
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from llmspell.core import Language, ManualClock
from llmspell.errors import InvalidValueError, SerializationError, StoreError
from llmspell.events.event import EventMetadata, UniversalEvent
from llmspell.events.pattern import compile_pattern
from llmspell.events.store import EventQuery, EventStore, MemoryStore, SQLiteStore, StoreStats
from llmspell.events.store.sqlite import SCHEMA_VERSION

MakeStore = Callable[..., Any]

TYPES = [
    "tool.calculator.completed",
    "tool.calculator.failed",
    "tool.search.completed",
    "tool.calc2.completed",
    "agent.run.started",
    "agent.run.step.done",
    "bgent.x",
    "agent",
    "a.b",
]


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeStore]:
    made: list[Any] = []

    def make(**kwargs: Any) -> Any:
        if request.param == "memory":
            kwargs.pop("batch_size", None)
            store: Any = MemoryStore(**kwargs)
        else:
            store = SQLiteStore(tmp_path / f"db{len(made)}" / "events.db", **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def store(make_store: MakeStore) -> Any:
    return make_store()


def _events(n: int, **kw: Any) -> list[UniversalEvent]:
    return [UniversalEvent.create(TYPES[i % len(TYPES)], {"i": i}, **kw) for i in range(n)]


# -- shared behaviour ---------------------------------------------------------------------


def test_both_stores_implement_the_protocol(store: Any) -> None:
    assert isinstance(store, EventStore)
    assert isinstance(store.stats(), StoreStats)


def test_append_flush_query_round_trips_events_exactly(store: Any) -> None:
    originals = [
        UniversalEvent.create("tool.calculator.completed", {"x": 1.1, "nested": {"l": [1, "ü", None,
                              True, 2.5e-300]}}, correlation_id="c-1", source="calc",
                              target="bus", tags=["a", "b"], priority=3, ttl=60.0,
                              language=Language.LUA),
        UniversalEvent.create("agent.run.started", "plain string", language="javascript"),
        UniversalEvent.create("agent.run.step.done"),
        UniversalEvent(event_type="x.y", data=[1, 2, {"k": 0.1 + 0.2}], timestamp=1.5,
                       metadata=EventMetadata(replayed=True, correlation_id="c-2")),
    ]
    store.append(originals[0])
    store.append_many(originals[1:])
    store.flush()
    assert store.query() == sorted(originals, key=lambda e: e.sequence)
    assert store.query(EventQuery(correlation_id="c-2")) == [originals[3]]
    stats = store.stats()
    assert (stats.accepted, stats.written, stats.pending, stats.stored) == (4, 4, 0, 4)
    assert stats.write_errors == 0


def test_a_duplicate_id_is_stored_once(store: Any) -> None:
    event = UniversalEvent.create("a.b")
    store.append(event)
    store.append(event)
    store.flush()
    assert store.count() == 1
    assert store.query() == [event]


def test_an_event_with_encoded_data_reads_back_decoded(store: Any) -> None:
    """Run records reach a store that ``accepts_encoded_data`` as JSON text (msgspec.Raw):
    a read returns the decoded data, every other field as it was, and a second read the
    same; the duplicate rule and the counters hold as for any event."""
    assert store.accepts_encoded_data
    encoded = UniversalEvent(event_type="run.steps", metadata=EventMetadata(run_id="r-1"))
    msgspec.structs.force_setattr(encoded, "data",
                                  msgspec.Raw(b'{"steps":[{"key":"tool:t#0","n":1.5}]}'))
    plain = UniversalEvent.create("run.completed", {"ok": True})
    store.append(encoded)
    store.append(encoded)
    store.append(plain)
    store.flush()
    first = store.query()
    assert [e.id for e in first] == [encoded.id, plain.id]
    assert first[0].data == {"steps": [{"key": "tool:t#0", "n": 1.5}]}
    assert (first[0].event_type, first[0].metadata.run_id, first[0].timestamp,
            first[0].sequence) == ("run.steps", "r-1", encoded.timestamp, encoded.sequence)
    assert first[1] == plain
    assert store.query(run_id="r-1") == first[:1]
    assert store.count() == 2
    stats = store.stats()
    assert (stats.accepted, stats.stored) == (3, 2)


def test_encoded_data_that_is_not_json_is_a_typed_error_on_read(store: Any) -> None:
    bad = UniversalEvent(event_type="run.steps")
    msgspec.structs.force_setattr(bad, "data", msgspec.Raw(b'{"steps": [1,'))
    good = UniversalEvent.create("run.completed", {"ok": True})
    store.append(good)
    store.append(bad)
    store.flush()
    with pytest.raises(SerializationError) as info:
        store.query()
    assert bad.id in str(info.value)
    assert store.count(pattern="run.*") == 2  # counting reads no data


@pytest.mark.parametrize(
    "pattern",
    ["tool.calculator.completed", "tool.*.completed", "tool.**", "**", "**.completed",
     "agent.**", "agent.*", "tool.calc*.*", "tool.calc?.completed", "[ab]gent.**",
     "[!a]gent.*", "*.run.**", "a.b", "a.*", "nothing.here", "tool.*"],
)
def test_query_by_pattern_matches_the_compiled_pattern(store: Any, pattern: str) -> None:
    events = _events(len(TYPES) * 3)
    store.append_many(events)
    store.flush()
    compiled = compile_pattern(pattern)
    expected = [e for e in events if compiled.matches(e.event_type)]
    assert store.query(pattern=pattern) == expected
    assert store.count(pattern=pattern) == len(expected)
    assert list(store.iter_events(EventQuery(pattern=pattern), batch_size=2)) == expected


def test_query_by_correlation_time_and_sequence_ranges(store: Any) -> None:
    events = [UniversalEvent(event_type="t.e", data=i, timestamp=1000.0 + i,
                             metadata=EventMetadata(correlation_id=f"c{i % 3}"))
              for i in range(30)]
    store.append_many(events)
    store.flush()
    assert store.query(correlation_id="c1") == [e for e in events if e.correlation_id == "c1"]
    assert store.query(since=1010.0, until=1012.0) == events[10:13]
    assert store.query(since=1025) == events[25:]
    assert store.query(until=1001.0) == events[:2]
    first = events[0].sequence
    assert store.query(min_sequence=first + 5, max_sequence=first + 7) == events[5:8]
    assert store.query(EventQuery(correlation_id="c0", since=1003.0), until=1009.0) == [
        events[3], events[6], events[9]]
    assert store.count(correlation_id="c2", min_sequence=first + 20) == 4


def test_limit_descending_and_count(store: Any) -> None:
    events = _events(50)
    store.append_many(events)
    store.flush()
    assert store.query(limit=5) == events[:5]
    assert store.query(limit=5, descending=True) == events[::-1][:5]
    assert store.query(descending=True) == events[::-1]
    assert store.query(limit=0) == []
    assert store.count() == 50
    assert store.count(limit=7) == 7
    assert store.query(pattern="tool.**", limit=3, descending=True) == [
        e for e in events if e.event_type.startswith("tool.")][::-1][:3]


def test_iter_events_pages_over_a_large_store(make_store: MakeStore) -> None:
    store = make_store(batch_size=500)
    events = [UniversalEvent.create("bulk.item", {"i": i}) for i in range(2500)]
    store.append_many(events)
    store.flush()
    assert store.count() == 2500
    assert list(store.iter_events(batch_size=1000)) == events
    assert list(store.iter_events(batch_size=7)) == events
    assert list(store.iter_events(EventQuery(descending=True), batch_size=333)) == events[::-1]
    assert list(store.iter_events(EventQuery(limit=1001), batch_size=500)) == events[:1001]
    assert list(store.iter_events(EventQuery(min_sequence=events[2000].sequence),
                                  batch_size=64)) == events[2000:]


def test_retention_by_age_uses_the_injected_clock(make_store: MakeStore) -> None:
    clock = ManualClock()
    store = make_store(clock=clock)
    now = clock.now()
    events = [UniversalEvent(event_type="t.e", timestamp=now - age) for age in (300, 200, 100, 0)]
    store.append_many(events)
    assert store.apply_retention(max_age=150) == 2
    assert store.query() == events[2:]
    clock.advance(100)
    assert store.apply_retention(max_age=150) == 1
    assert store.query() == events[3:]
    assert store.apply_retention() == 0


def test_retention_by_count_keeps_the_newest(store: Any) -> None:
    events = _events(20)
    store.append_many(events)
    assert store.apply_retention(max_count=8) == 12
    assert store.query() == events[12:]
    assert store.apply_retention(max_count=8) == 0
    assert store.apply_retention(max_count=0) == 8
    assert store.count() == 0


def test_invalid_arguments_are_refused_with_a_hint(store: Any) -> None:
    with pytest.raises(InvalidValueError, match="unknown query field"):
        store.query(kind="x")
    with pytest.raises(InvalidValueError, match="invalid event pattern"):
        store.query(pattern="a..b")
    with pytest.raises(InvalidValueError, match="limit"):
        store.count(limit=-1)
    with pytest.raises(InvalidValueError, match="invalid event query"):
        store.query(limit="ten")
    with pytest.raises(InvalidValueError, match="batch_size"):
        store.iter_events(batch_size=0)
    with pytest.raises(InvalidValueError, match="max_age"):
        store.apply_retention(max_age=-1)
    with pytest.raises(InvalidValueError, match="max_count"):
        store.apply_retention(max_count=-3)
    with pytest.raises(InvalidValueError, match="UniversalEvent") as info:
        store.append({"event_type": "a.b"})
    assert info.value.hint


def test_append_after_close_raises_and_close_is_idempotent(store: Any) -> None:
    store.append(UniversalEvent.create("a.b"))
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed") as info:
        store.append(UniversalEvent.create("a.b"))
    assert info.value.hint
    with pytest.raises(StoreError, match="closed"):
        store.query()
    assert store.flush() == 0


# -- MemoryStore --------------------------------------------------------------------------


def test_memory_store_is_bounded() -> None:
    store = MemoryStore(max_events=10)
    events = _events(25)
    for event in events:
        store.append(event)
    assert store.query() == events[15:]
    assert store.evicted == 15
    assert store.stats() == StoreStats(accepted=25, written=25, pending=0, write_errors=0,
                                       retries=0, stored=10)
    with pytest.raises(InvalidValueError, match="max_events"):
        MemoryStore(max_events=0)


# -- SQLiteStore --------------------------------------------------------------------------


def test_sqlite_uses_wal_and_the_documented_schema(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "events.db"
    with SQLiteStore(path, synchronous="full") as store:
        store.append(UniversalEvent.create("a.b", correlation_id="c"))
        store.flush()
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        columns = [row[1] for row in conn.execute("PRAGMA table_info(events)")]
        assert columns == ["position", "id", "sequence", "event_type", "correlation_id",
                           "timestamp", "payload", "run_id", "writer"]
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(events)")}
        assert {"events_event_type", "events_correlation_id", "events_timestamp",
                "events_sequence", "events_run_id"} <= indexes
        writer = conn.execute("SELECT writer FROM events").fetchone()[0]
        host, pid = conn.execute("SELECT host, pid FROM writers WHERE id = ?",
                                 (writer,)).fetchone()
        assert (host, pid) == (socket.gethostname(), os.getpid())
        assert conn.execute("SELECT event_type, correlation_id FROM events").fetchall() == [
            ("a.b", "c")]
        conn.close()


def test_sqlite_threads_appending_concurrently_store_every_event_once(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "events.db")
    barrier = threading.Barrier(4)

    def work(t: int) -> None:
        barrier.wait()
        for i in range(5000):
            store.append(UniversalEvent.create("load.tick", {"t": t, "i": i}))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.flush()
    stats = store.stats()
    assert (stats.accepted, stats.written, stats.pending, stats.stored) == (20000, 20000, 0,
                                                                           20000)
    assert store.duplicates == 0
    stored = list(store.iter_events(batch_size=4096))
    assert len({e.sequence for e in stored}) == 20000
    # Store order is append order: each thread's events keep the order it appended them.
    for t in range(4):
        assert [e.data["i"] for e in stored if e.data["t"] == t] == list(range(5000))
    store.close()
    conn = sqlite3.connect(tmp_path / "events.db")
    assert conn.execute("SELECT COUNT(DISTINCT id) FROM events").fetchone()[0] == 20000
    conn.close()


class FlakyConnection:
    """Wraps the writer's connection: the next ``failures`` COMMITs raise."""

    def __init__(self, conn: sqlite3.Connection, failures: int) -> None:
        self.conn = conn
        self.failures = failures

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT" and self.failures > 0:
            self.failures -= 1
            raise sqlite3.OperationalError("disk I/O error (injected)")
        return self.conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def test_sqlite_write_failure_keeps_events_and_recovers(tmp_path: Path) -> None:
    seen: list[Exception] = []

    def on_error(exc: Exception) -> None:
        seen.append(exc)
        raise RuntimeError("a broken callback must not stop the writer")

    store = SQLiteStore(tmp_path / "events.db", flush_interval=60.0, retry_delay=0.01,
                        on_error=on_error)
    events = _events(50)
    store.append_many(events)
    real = store._wconn
    store._wconn = FlakyConnection(real, failures=2)  # type: ignore[assignment]
    with pytest.raises(StoreError, match="injected") as info:
        store.flush(timeout=10)
    assert info.value.hint and "retried" in info.value.hint
    stats = store.stats()
    assert stats.write_errors >= 2 and stats.retries >= 1
    assert stats.last_error is not None and "injected" in stats.last_error
    assert len(seen) >= 2 and isinstance(seen[0], sqlite3.OperationalError)
    assert store.callback_errors >= 2
    # The fault has cleared: the next flush succeeds and every event is stored exactly once.
    store.flush(timeout=10)
    stats = store.stats()
    assert (stats.written, stats.pending, stats.stored) == (50, 0, 50)
    assert store.query() == events
    store._wconn = real
    store.close()


def test_sqlite_locked_database_times_out_then_recovers(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    store = SQLiteStore(path, flush_interval=60.0, busy_timeout=0.05, retry_delay=0.01,
                        max_retry_delay=0.02)
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    events = _events(10)
    store.append_many(events)
    with pytest.raises(StoreError, match="locked"):
        store.flush(timeout=10)
    with pytest.raises(StoreError, match="timed out"):
        store.flush(timeout=0.0)
    assert store.unwritten_events() == events
    locker.execute("ROLLBACK")
    locker.close()
    store.flush(timeout=10)
    assert store.query() == events
    store.close()


def test_sqlite_close_reports_events_it_could_not_write(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    store = SQLiteStore(path, busy_timeout=0.02, retry_delay=0.01, max_retry_delay=0.02)
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    events = _events(5)
    store.append_many(events)
    with pytest.raises(StoreError, match="5 accepted events unwritten") as info:
        store.close(timeout=0.2)
    assert "unwritten_events" in (info.value.hint or "")
    assert store.unwritten_events() == events
    locker.execute("ROLLBACK")
    locker.close()
    store.close()  # idempotent


def test_sqlite_reads_without_flush_see_committed_data_only(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "events.db", flush_interval=60.0, flush_before_read=False)
    store.append(UniversalEvent.create("a.b"))
    assert store.query() == []
    assert store.flush() == 1
    assert store.count() == 1
    store.close()


def test_sqlite_not_a_database_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    path.write_bytes(b"this is certainly not an SQLite database\n" * 100)
    with pytest.raises(StoreError, match="cannot open the event store") as info:
        SQLiteStore(path)
    assert info.value.hint and "not an SQLite database" in info.value.hint


def test_sqlite_rejects_a_foreign_events_table_and_bad_arguments(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE events (name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not an llmspell event table"):
        SQLiteStore(path)
    with pytest.raises(InvalidValueError, match="MemoryStore"):
        SQLiteStore(":memory:")
    with pytest.raises(InvalidValueError, match="batch_size"):
        SQLiteStore(tmp_path / "x.db", batch_size=0)
    with pytest.raises(InvalidValueError, match="synchronous"):
        SQLiteStore(tmp_path / "x.db", synchronous="off")  # type: ignore[arg-type]


def test_sqlite_reopen_keeps_events(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    events = _events(30)
    with SQLiteStore(path) as store:
        store.append_many(events)
    with SQLiteStore(path) as store:
        assert store.query() == events
        assert store.stats().accepted == 0


_CHILD = """
import sys
from llmspell.events.event import UniversalEvent
from llmspell.events.store import SQLiteStore

store = SQLiteStore(sys.argv[1])
appended = 0
while True:
    event = UniversalEvent.create("durability.tick", {"i": appended})
    store.append(event)
    appended += 1
    if appended % 100 == 0:
        store.flush()
        print(event.sequence, appended, flush=True)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")
def test_flushed_events_survive_sigkill_of_the_writing_process(tmp_path: Path) -> None:
    path = tmp_path / "crash" / "events.db"
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()

    def read_lines() -> None:
        for line in proc.stdout or ():
            lines.put(line)

    reader = threading.Thread(target=read_lines, daemon=True)
    reader.start()
    confirmed: tuple[int, int] | None = None
    flushes = 0
    deadline = time.monotonic() + 20
    try:
        while flushes < 20:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail("the child confirmed no flush in time")
            if not line.endswith("\n") or len(line.split()) != 2:
                continue  # cut short by the kill (cannot happen before it, but be exact)
            sequence, count = map(int, line.split())
            confirmed = (sequence, count)
            flushes += 1
        assert proc.poll() is None, "the child must still be writing when it is killed"
    finally:
        proc.kill()  # SIGKILL on POSIX
        proc.wait(timeout=10)
        reader.join(timeout=10)
    err = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == -9, err
    # Anything the child confirmed after the last line we read is also fine; drain them.
    # A line the kill cut short (no newline, or half of it) confirmed nothing.
    while not lines.empty():
        line = lines.get()
        if line.endswith("\n") and len(line.split()) == 2:
            confirmed = tuple(map(int, line.split()))  # type: ignore[assignment]
    assert confirmed is not None
    last_sequence, last_count = confirmed

    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT COUNT(*) FROM events WHERE sequence <= ?",
                        (last_sequence,)).fetchone()[0] == last_count
    conn.close()
    with SQLiteStore(path) as store:
        kept = store.query(max_sequence=last_sequence)
        assert [e.data["i"] for e in kept] == list(range(last_count))
        assert store.count() >= last_count


_V1_SCHEMA = (
    "CREATE TABLE events (id TEXT PRIMARY KEY, sequence INTEGER NOT NULL, "
    "event_type TEXT NOT NULL, correlation_id TEXT, timestamp REAL NOT NULL, "
    "payload BLOB NOT NULL)",
    "CREATE INDEX events_event_type ON events(event_type)",
    "CREATE INDEX events_correlation_id ON events(correlation_id) "
    "WHERE correlation_id IS NOT NULL",
    "CREATE INDEX events_timestamp ON events(timestamp)",
    "CREATE INDEX events_sequence ON events(sequence)",
)


def test_sqlite_opens_a_version_1_file_and_upgrades_it(tmp_path: Path) -> None:
    # A file as version 1 wrote it: the whole event as JSON in `payload`.
    path = tmp_path / "events.db"
    old = _events(12, correlation_id="run-1")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for statement in _V1_SCHEMA:
        conn.execute(statement)
    conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)",
                     [(e.id, e.sequence, e.event_type, e.correlation_id, e.timestamp,
                       e.to_json()) for e in old])
    conn.execute("PRAGMA user_version=1")
    conn.close()

    new = _events(5)
    with SQLiteStore(path) as store:
        assert store.query() == old
        store.append_many([*new, old[0]])  # a duplicate of a version 1 row is still ignored
        store.flush()
        assert store.query() == old + new
        assert store.duplicates == 1
        assert store.query(correlation_id="run-1", limit=3, descending=True) == old[::-1][:3]
        assert list(store.iter_events(batch_size=5)) == old + new
        assert store.apply_retention(max_count=10) == 7
        assert store.query() == old[7:] + new
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    with SQLiteStore(path) as store:
        assert store.query() == old[7:] + new


def test_sqlite_refuses_a_file_from_a_newer_version(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    SQLiteStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}") as info:
        SQLiteStore(path)
    assert info.value.hint and "upgrade llmspell" in info.value.hint


def test_sqlite_compact_payload_round_trips_every_field(tmp_path: Path) -> None:
    events = [
        UniversalEvent(event_type="a.plain", data={"k": [1, 2.5, None]}),
        UniversalEvent(event_type="a.corr", data=None,
                       metadata=EventMetadata(correlation_id="c-9")),
        UniversalEvent(event_type="a.lang", data="x", language=Language.NATIVE,
                       schema_version=7, metadata=EventMetadata(correlation_id="c-9")),
        UniversalEvent(event_type="a.meta", data=[], metadata=EventMetadata(
            correlation_id="c-9", source="s", target="t", tags=("x",), priority=-2,
            ttl=0.5, replayed=True)),
        UniversalEvent(event_type="a.meta2", data=0, metadata=EventMetadata(priority=1)),
    ]
    path = tmp_path / "events.db"
    with SQLiteStore(path, flush_interval=60.0) as store:
        store.append_many(events)
        assert store.unwritten_events() == events
        assert store.query() == events
        assert store.query(correlation_id="c-9") == events[1:4]
    conn = sqlite3.connect(path)
    payloads = [row[0] for row in conn.execute("SELECT payload FROM events ORDER BY sequence")]
    conn.close()
    assert payloads[:2] == [b'[{"k":[1,2.5,null]}]', b"[null]"]
    assert payloads[2] == b'["x",null,"native",7]'


def test_sqlite_batches_of_any_size_are_written_once_in_order(tmp_path: Path) -> None:
    # Batches go in multi-row INSERTs of 100 and 10 rows, the rest one by one.
    store = SQLiteStore(tmp_path / "events.db", batch_size=237, flush_interval=60.0)
    events = _events(1000)
    store.append_many(events[:500])
    store.append_many(events[200:300])  # duplicates, some in the same statement as originals
    store.append_many(events[500:])
    # The writer commits a batch as soon as 237 rows are pending, so some may be written
    # before flush() is called: flush() returns only what it waited for.
    assert 0 <= store.flush() <= 1100
    assert store.stats().written == 1100
    assert store.duplicates == 100
    assert store.query() == events
    store.close()


def test_sqlite_a_damaged_payload_raises_a_serialization_error(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with SQLiteStore(path) as store:
        store.append(UniversalEvent.create("a.b"))
        store.flush()
        conn = sqlite3.connect(path)
        conn.execute("UPDATE events SET payload = ?", (b"[{oops",))
        conn.commit()
        conn.close()
        with pytest.raises(SerializationError, match="cannot decode the stored event") as info:
            store.query()
        assert info.value.hint



@pytest.mark.parametrize("payload", [
    b"[" + b"[" * 100 + b"]" * 100 + b"]",  # decodes, but deeper than an event may nest
    b"[" + b"[" * 5000 + b"]" * 5000 + b"]",  # deeper than msgspec's decoder recurses
    b"[" + b"{" * 3000 + b"}" * 3000 + b"]",  # (not even valid JSON at that depth)
    b'{"event_type": "a.b", "data": ' + b"[" * 5000 + b"]" * 5000 + b"}",  # a v1 payload
])
def test_sqlite_a_row_nested_too_deep_raises_a_serialization_error(
        tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "events.db"
    with SQLiteStore(path) as store:
        store.append(UniversalEvent.create("a.b"))
        store.flush()
        conn = sqlite3.connect(path)
        conn.execute("UPDATE events SET payload = ?", (payload,))
        conn.commit()
        conn.close()
        with pytest.raises(SerializationError, match="cannot decode the stored event") as info:
            store.query()
        assert len(info.value.message) < 400  # the path into the data is cut short

_V3_SCHEMA = (
    """CREATE TABLE events (
        position INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        sequence INTEGER NOT NULL,
        event_type TEXT NOT NULL,
        correlation_id TEXT,
        timestamp REAL NOT NULL,
        payload BLOB NOT NULL
    )""",
    "CREATE INDEX events_event_type ON events(event_type)",
)


def test_sqlite_upgrades_a_version_3_file_in_place(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    old = _events(4, correlation_id="c")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for statement in _V3_SCHEMA:
        conn.execute(statement)
    conn.executemany(
        "INSERT INTO events (id, sequence, event_type, correlation_id, timestamp, payload) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [(e.id, e.sequence, e.event_type, e.correlation_id, e.timestamp,
          msgspec.json.encode([e.data])) for e in old])
    conn.execute("PRAGMA user_version=3")
    conn.close()
    in_run = UniversalEvent(event_type="x.y", metadata=EventMetadata(run_id="r1"))
    with SQLiteStore(path) as store:
        assert store.query() == old
        store.append(in_run)
        store.flush()
        assert store.query(run_id="r1") == [in_run]
        assert store.query() == [*old, in_run]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT count(*) FROM events WHERE run_id IS NULL").fetchone()[0] == 4
    conn.close()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_stores_select_one_runs_events_and_keep_the_run_id(kind: str, tmp_path: Path) -> None:
    store: Any = MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "e.db")
    events = [UniversalEvent(event_type="a.b", metadata=EventMetadata(run_id=f"r{i % 2}",
                                                                      correlation_id=c))
              for i, c in enumerate(["c1", None, "c2", None])]
    store.append_many(events)
    store.flush()
    assert store.query(run_id="r0") == [events[0], events[2]]
    assert store.query(run_id="r1", descending=True) == [events[3], events[1]]
    assert [e.run_id for e in store.query()] == ["r0", "r1", "r0", "r1"]
    store.close()


def test_the_bus_stamps_the_current_run_on_events_it_builds() -> None:
    from llmspell.core.run_scope import enter_run_id, leave_run_id
    from llmspell.events.bus import EventBus

    store = MemoryStore()
    bus = EventBus(store=store)
    token = enter_run_id("r9")
    try:
        inside = [bus.publish("a.b", {"x": 1}), bus.publish("a.c", None, {"source": "s"}),
                  bus.publish("a.d", None, EventMetadata(correlation_id="c"))]
    finally:
        leave_run_id(token)
    outside = bus.publish("a.e", {})
    assert [e.run_id for e in inside] == ["r9", "r9", "r9"]
    assert outside.run_id is None
    assert [e.run_id for e in store.query(run_id="r9")] == ["r9", "r9", "r9"]
