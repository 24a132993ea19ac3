"""What the SQLite store promises at its edges: the order of events from several processes,
upgrading older files, a bounded write buffer, unwritable files, retryable closing, the
system's shutdown over a failing store, and durable publishes under SIGKILL."""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from llmspell.errors import (
    EventTooLargeError,
    InvalidValueError,
    ShutdownError,
    StoreError,
    StoreFullError,
)
from llmspell.events import EventBus, UniversalEvent
from llmspell.events.store import MemoryStore, SQLiteStore
from llmspell.events.store import sqlite as sqlite_module
from llmspell.events.store.sqlite import SCHEMA_VERSION

_OTHER_PROCESS = """
import sys
from llmspell.events.event import UniversalEvent
from llmspell.events.store import SQLiteStore

with SQLiteStore(sys.argv[1]) as store:
    for i in range(3):
        store.append(UniversalEvent.create("proc.child", {"i": i}))
"""


def test_events_from_several_processes_are_read_in_commit_order(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    for _ in range(50):  # this process's sequence numbers are now well above the child's
        UniversalEvent.create("warm.up")
    with SQLiteStore(path) as store:
        store.append_many([UniversalEvent.create("proc.parent", {"i": i}) for i in range(3)])
    subprocess.run([sys.executable, "-c", _OTHER_PROCESS, str(path)], check=True, timeout=60)
    with SQLiteStore(path) as store:
        store.append(UniversalEvent.create("proc.parent", {"i": 3}))
        store.flush()
        order = [(e.event_type, e.data["i"]) for e in store.query()]
        assert order == [("proc.parent", 0), ("proc.parent", 1), ("proc.parent", 2),
                         ("proc.child", 0), ("proc.child", 1), ("proc.child", 2),
                         ("proc.parent", 3)]
        newest = store.query(limit=2, descending=True)
        assert [(e.event_type, e.data["i"]) for e in newest] == [("proc.parent", 3),
                                                                  ("proc.child", 2)]
        assert [(e.event_type, e.data["i"]) for e in store.iter_events(batch_size=2)] == order
        assert store.apply_retention(max_count=2) == 5
        assert [(e.event_type, e.data["i"]) for e in store.query()] == order[-2:]


def test_a_version_2_file_is_upgraded_keeping_its_commit_order(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    # Two processes wrote this file: their sequences interleave, rowid is the commit order.
    rows = [UniversalEvent(event_type="v2.a", data=i, sequence=100 + i) for i in range(3)]
    rows += [UniversalEvent(event_type="v2.b", data=i, sequence=1 + i) for i in range(3)]
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE events (id TEXT PRIMARY KEY, sequence INTEGER NOT NULL, "
                 "event_type TEXT NOT NULL, correlation_id TEXT, timestamp REAL NOT NULL, "
                 "payload BLOB NOT NULL)")
    conn.execute("CREATE INDEX events_sequence ON events(sequence)")
    conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)",
                     [(e.id, e.sequence, e.event_type, None, e.timestamp,
                       b"[%d]" % e.data) for e in rows])
    conn.execute("PRAGMA user_version=2")
    conn.close()
    with SQLiteStore(path) as store:
        assert store.query() == rows
        assert store.query(descending=True, limit=1) == rows[-1:]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT position, sequence FROM events ORDER BY position"
                        ).fetchall() == [(1, 100), (2, 101), (3, 102), (4, 1), (5, 2), (6, 3)]
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_the_write_buffer_is_bounded_while_the_file_is_locked(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    store = SQLiteStore(path, max_pending_bytes=64 * 1024, busy_timeout=0.05,
                        retry_delay=0.01, max_retry_delay=0.02)
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    accepted: list[UniversalEvent] = []
    with pytest.raises(StoreFullError, match="not accepted") as info:
        for i in range(100_000):
            event = UniversalEvent.create("load.tick", {"i": i, "pad": "x" * 100})
            store.append(event)
            accepted.append(event)
    assert info.value.hint and "max_pending_bytes" in info.value.hint
    assert 100 < len(accepted) < 1000
    stats = store.stats()
    assert stats.pending == len(accepted) and stats.accepted == len(accepted)
    # A bus over the full store refuses the event before delivering it to anyone.
    bus = EventBus(store=store)
    seen: list[str] = []
    bus.subscribe("load.*", lambda e: seen.append(e.event_type))
    with pytest.raises(StoreFullError):
        bus.publish("load.more", {"pad": "x" * 100})
    assert seen == []
    with pytest.raises(EventTooLargeError):
        store.append(UniversalEvent.create("big", "y" * (128 * 1024)))
    locker.execute("ROLLBACK")
    locker.close()
    store.flush(timeout=30)
    assert store.query() == accepted  # nothing accepted was lost
    bus.publish("load.more")          # room again
    store.close()


def test_a_full_store_refusing_events_raises_backpressure_notices(tmp_path: Path) -> None:
    """The bus turns the store's refusals into one warning per episode and a relieved
    notice once the store has room again; the counts are in the store's stats."""
    path = tmp_path / "events.db"
    store = SQLiteStore(path, max_pending_bytes=16 * 1024, busy_timeout=0.05,
                        retry_delay=0.01, max_retry_delay=0.02)
    notices: list[Any] = []
    bus = EventBus(store=store, on_backpressure=notices.append)
    seen: list[str] = []
    bus.subscribe("bus.backpressure.*", lambda e: seen.append(e.event_type))
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    refused = 0
    for i in range(2000):
        try:
            bus.publish("load.tick", {"i": i, "pad": "x" * 100})
        except StoreFullError:
            refused += 1
    stats = store.stats()
    assert refused > 0 and stats.refused == refused
    assert 0 < stats.pending_bytes <= 16 * 1024
    assert [(n.kind, n.subscription) for n in notices] == [("warning", "store")]
    assert notices[0].capacity == 16 * 1024 and "not accepted" in notices[0].detail
    locker.execute("ROLLBACK")
    locker.close()
    store.flush(timeout=30)
    bus.publish("load.tick", {"i": -1})  # room again: the episode ends
    assert [n.kind for n in notices] == ["warning", "relieved"]
    assert notices[1].rejected == refused
    assert seen == ["bus.backpressure.warning", "bus.backpressure.relieved"]
    # the notices were not stored (the store was what was full); every accepted event was
    assert store.count(pattern="bus.**") == 0
    assert store.count(pattern="load.tick") == 2000 - refused + 1
    store.close()


def _slow_writes(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Every batch the writer commits takes ``seconds`` longer: a slow disk."""
    real_insert = sqlite_module._insert

    def slow_insert(conn: sqlite3.Connection, batch: list[Any]) -> int:
        time.sleep(seconds)
        return real_insert(conn, batch)

    monkeypatch.setattr(sqlite_module, "_insert", slow_insert)


def test_a_blocking_store_paces_a_publisher_faster_than_its_writer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default overflow waits for the writer: nothing is refused, every event is
    written, and the buffer never holds more than its bound."""
    _slow_writes(monkeypatch, 0.02)
    store = SQLiteStore(tmp_path / "events.db", max_pending_bytes=8 * 1024, batch_size=20,
                        block_timeout=30)
    assert store.overflow == "block"
    bus = EventBus(store=store)
    most = 0
    for i in range(300):
        bus.publish("load.tick", {"i": i, "pad": "x" * 100})
        most = max(most, store.stats().pending_bytes)
    bus.flush()
    stats = store.stats()
    assert stats.refused == 0 and stats.written == 300 and store.count() == 300
    assert 0 < most <= 8 * 1024
    store.close()


async def test_an_async_publisher_waits_for_a_full_store_without_stalling_the_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _slow_writes(monkeypatch, 0.05)
    store = SQLiteStore(tmp_path / "events.db", max_pending_bytes=4 * 1024, batch_size=10,
                        block_timeout=30)
    bus = EventBus(store=store)
    ticks = 0
    publishing = True

    async def ticker() -> None:
        nonlocal ticks
        while publishing:
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    for i in range(150):
        await bus.publish_async("load.tick", {"i": i, "pad": "x" * 100})
    publishing = False
    await task
    await asyncio.to_thread(bus.flush)
    # 150 events at 10 a batch and 50 ms a batch: the publisher waited ~0.5 s or more,
    # and the loop ran the ticker meanwhile
    assert ticks >= 10
    assert store.count() == 150 and store.stats().refused == 0
    store.close()


def test_a_blocking_store_refuses_when_no_room_comes_in_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _slow_writes(monkeypatch, 1.0)
    store = SQLiteStore(tmp_path / "events.db", max_pending_bytes=4 * 1024, batch_size=5,
                        block_timeout=0.05)
    with pytest.raises(StoreFullError, match="no room came in") as info:
        for i in range(1000):
            store.append(UniversalEvent.create("load.tick", {"i": i, "pad": "x" * 100}))
    assert info.value.hint and "block_timeout" in info.value.hint
    assert store.stats().refused == 1
    store.flush(timeout=60)
    assert store.count() == store.stats().accepted  # what was accepted was written
    store.close()


def test_a_blocking_store_does_not_wait_while_its_writes_fail(tmp_path: Path) -> None:
    """With the file locked elsewhere room may not come for minutes: once a write has
    failed, an append past the bound is refused at once instead of waiting its timeout."""
    path = tmp_path / "events.db"
    store = SQLiteStore(path, max_pending_bytes=8 * 1024, busy_timeout=0.05,
                        retry_delay=0.01, max_retry_delay=0.02, block_timeout=60)
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreFullError) as info:
        for i in range(1000):
            store.append(UniversalEvent.create("load.tick", {"i": i, "pad": "x" * 100}))
    assert "no room came in" not in str(info.value)
    assert "database is locked" in str(info.value)  # the failing write is named
    for _ in range(50):  # each refused without waiting out the 60 s
        with pytest.raises(StoreFullError):
            store.append(UniversalEvent.create("load.tick", {"pad": "x" * 100}))
    assert store.stats().refused == 51
    locker.execute("ROLLBACK")
    locker.close()
    store.flush(timeout=30)
    store.close()


def test_a_blocked_append_gives_up_when_the_store_closes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "events.db"
    store = SQLiteStore(path, max_pending_bytes=4 * 1024, block_timeout=30)
    _slow_writes(monkeypatch, 30.0)  # the first batch takes a while; the rest must wait
    errors: list[BaseException] = []

    def fill() -> None:
        try:
            for i in range(1000):
                store.append(UniversalEvent.create("load.tick", {"i": i, "pad": "x" * 100}))
        except BaseException as exc:  # what the blocked thread got
            errors.append(exc)

    worker = threading.Thread(target=fill)
    worker.start()
    deadline = time.monotonic() + 10
    while store.stats().pending_bytes < 3 * 1024 and time.monotonic() < deadline:
        time.sleep(0.01)
    left = store.abandon()
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], StoreError)
    assert "closed" in str(errors[0]) and left


@pytest.mark.parametrize(("overflow", "block_timeout", "message"), [
    ("drop_oldest", 1.0, "never drops"), ("drop_newest", 1.0, "never drops"),
    ("block", 0, "block_timeout")])
def test_a_store_overflow_it_cannot_honour_is_refused(tmp_path: Path, overflow: Any,
                                                      block_timeout: float, message: str
                                                      ) -> None:
    with pytest.raises(InvalidValueError) as info:
        SQLiteStore(tmp_path / "e.db", overflow=overflow, block_timeout=block_timeout)
    assert message in str(info.value) + (info.value.hint or "")


def test_a_file_that_cannot_be_written_fails_when_opened(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "events.db"
    SQLiteStore(path).close()
    real_connect = sqlite3.connect

    def read_only(database: Any, **kwargs: Any) -> sqlite3.Connection:
        # As SQLite sees a file without write permission (the tests may run as root).
        return real_connect(f"file:{database}?mode=ro", uri=True, **kwargs)

    monkeypatch.setattr("llmspell.core.sqlite.sqlite3.connect", read_only)
    with pytest.raises(StoreError, match="readonly") as info:
        SQLiteStore(path)
    assert info.value.hint and "writable" in info.value.hint


class _FailingCommits:
    """Wraps the writer's connection: every COMMIT fails while ``failing`` is set."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.failing = True

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT" and self.failing:
            raise sqlite3.OperationalError("attempt to write a readonly database (injected)")
        return self.conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def test_close_gives_up_early_on_failing_writes_and_can_be_retried(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "events.db", retry_delay=0.01, max_retry_delay=0.02)
    failing = _FailingCommits(store._wconn)
    store._wconn = failing  # type: ignore[assignment]
    events = [UniversalEvent.create("a.b", {"i": i}) for i in range(5)]
    store.append_many(events)
    with pytest.raises(StoreError, match="5 accepted events unwritten") as info:
        store.close(timeout=60)  # does not wait the whole minute: the retry failed too
    assert "close() again" in (info.value.hint or "")
    assert store.unwritten_events() == events
    failing.failing = False
    store.close()             # the retry writes them
    store.close()             # idempotent
    with SQLiteStore(tmp_path / "events.db") as reopened:
        assert reopened.query() == events

    other = SQLiteStore(tmp_path / "other.db", retry_delay=0.01, max_retry_delay=0.02)
    other._wconn = _FailingCommits(other._wconn)  # type: ignore[assignment]
    other.append_many(events)
    with pytest.raises(StoreError):
        other.close()
    assert other.abandon() == events
    other.close()


async def test_shutdown_closes_everything_reports_together_and_retries(tmp_path: Path) -> None:
    from llmspell.runtime import System, SystemConfig

    system = System(SystemConfig(data_dir=str(tmp_path)))
    await system.start()
    store = system.store
    assert isinstance(store, SQLiteStore)
    failing = _FailingCommits(store._wconn)
    store._wconn = failing  # type: ignore[assignment]
    store.retry_delay = store.max_retry_delay = 0.01
    with pytest.raises(ShutdownError, match="unwritten") as info:
        await system.shutdown()
    assert any(isinstance(e, StoreError) for e in info.value.errors)
    assert system.bus.closed
    assert system.state.backend._closed  # type: ignore[attr-defined]
    failing.failing = False
    await system.shutdown()  # retries writing the events, then closes the store
    await system.shutdown()  # nothing left to do
    with SQLiteStore(tmp_path / "events.db") as reopened:
        types = [e.event_type for e in reopened.query()]
    assert types[0] == "system.started" and types[-1] == "system.stopped"


def test_memory_store_reads_in_append_order() -> None:
    store = MemoryStore()
    late = UniversalEvent(event_type="a.late", sequence=1)
    early = UniversalEvent(event_type="a.early", sequence=2)
    store.append(early)
    store.append(late)
    assert store.query() == [early, late]
    assert store.query(descending=True) == [late, early]
    assert store.apply_retention(max_count=1) == 1 and store.query() == [late]


_DURABLE_CHILD = """
import sys
from llmspell.events import EventBus
from llmspell.events.store import SQLiteStore

store = SQLiteStore(sys.argv[1], flush_interval=60.0)
bus = EventBus(store=store)
i = 0
while True:
    bus.publish("crash.accepted", {"i": i})          # accepted only: may be lost
    event = bus.publish("crash.durable", {"i": i}, durable=True)
    print(event.id, flush=True)                       # committed before this line runs
    i += 1
"""


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")
def test_durable_publishes_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "crash" / "events.db"
    confirmed: list[str] = []
    for _round in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _DURABLE_CHILD, str(path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines: queue.Queue[str] = queue.Queue()

        def read(proc: subprocess.Popen[str] = proc, lines: queue.Queue[str] = lines) -> None:
            for line in proc.stdout or ():
                lines.put(line.strip())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        got = 0
        deadline = time.monotonic() + 30
        try:
            while got < 30:
                try:
                    line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    pytest.fail("the child confirmed no durable publish in time")
                confirmed.append(line)
                got += 1
            assert proc.poll() is None
        finally:
            proc.kill()  # SIGKILL: no atexit, no final flush
            proc.wait(timeout=10)
            reader.join(timeout=10)
        assert proc.returncode == -9
        while not lines.empty():  # confirmed after we stopped reading: also promised
            line = lines.get()
            if line:
                confirmed.append(line)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = {row[0] for row in conn.execute(
        "SELECT id FROM events WHERE event_type = 'crash.durable'")}
    conn.close()
    assert set(confirmed) <= stored
