"""Reading a store never writes it, and a replay reads only what was stored when it began.

``SQLiteStoreReader`` (what ``llmspell events`` and ``llmspell runs list|show|diff`` open)
reads with the same query code as ``SQLiteStore`` but never writes, upgrades or locks the
file and creates nothing beside it; an older file is refused with a hint saying how to
upgrade it. ``iter_events`` (what ``EventBus.replay`` reads) of both stores stops at the
events stored when it was called, so a replay whose handlers store new events ends.
"""

from __future__ import annotations

import asyncio
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmspell.errors import StoreError
from llmspell.events import EventBus, EventQuery, UniversalEvent
from llmspell.events.store import EventStore, MemoryStore, SQLiteStore
from llmspell.events.store.sqlite import SCHEMA_VERSION, SQLiteStoreReader

TYPES = ["agent.started", "tool.calc.completed", "tool.calc.failed", "agent.completed",
         "custom.note", "tool.search.completed"]


def fill(path: Path, count: int = 12) -> list[UniversalEvent]:
    """Store ``count`` events of the TYPES, in two runs; the writer is closed after."""
    events = [UniversalEvent.create(TYPES[i % len(TYPES)], {"i": i},
                                    run_id="run-a" if i % 2 else "run-b",
                                    correlation_id="c" if i % 3 == 0 else None)
              for i in range(count)]
    with SQLiteStore(path) as store:
        store.append_many(events)
        store.flush()
    return events


def files(folder: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file in ``folder``: its bytes, modification time and mode."""
    out = {}
    for entry in sorted(folder.iterdir()):
        info = entry.stat()
        out[entry.name] = (entry.read_bytes(), info.st_mtime_ns, stat.S_IMODE(info.st_mode))
    return out


def user_version(path: Path) -> int:
    """The schema version in the file's header, read without opening it with SQLite (which
    would create the -wal and -shm files)."""
    return int.from_bytes(path.read_bytes()[60:64], "big")


def make_v3_store(path: Path) -> None:
    """A store as llmspell's schema version 3 wrote it (no run_id, no writer), one event."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE events (position INTEGER PRIMARY KEY AUTOINCREMENT, "
                 "id TEXT NOT NULL UNIQUE, sequence INTEGER NOT NULL, event_type TEXT NOT NULL, "
                 "correlation_id TEXT, timestamp REAL NOT NULL, payload BLOB NOT NULL)")
    conn.execute("INSERT INTO events (id, sequence, event_type, correlation_id, timestamp, "
                 "payload) VALUES ('old-1', 1, 'agent.started', NULL, 1.5, ?)", (b'[{"i":1}]',))
    conn.execute("PRAGMA user_version=3")
    conn.commit()
    conn.close()


@pytest.fixture
def stored(tmp_path: Path) -> Iterator[tuple[Path, list[UniversalEvent]]]:
    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / "events.db"
    yield path, fill(path)


# -- the reader reads what the store reads ----------------------------------------------
@pytest.mark.parametrize("query", [
    EventQuery(),
    EventQuery(descending=True, limit=4),
    EventQuery(pattern="tool.*.completed"),
    EventQuery(pattern="tool.**", limit=2, descending=True),
    EventQuery(pattern="agent.started"),
    EventQuery(run_id="run-a", correlation_id="c"),
    EventQuery(run_id="run-b", limit=3, descending=True),
])
def test_the_reader_answers_as_the_store_does(
        stored: tuple[Path, list[UniversalEvent]], query: EventQuery) -> None:
    path, _ = stored
    with SQLiteStore(path) as store:
        expected = (store.query(query), list(store.iter_events(query, batch_size=2)),
                    store.count(query))
    with SQLiteStoreReader(path) as reader:
        got = (reader.query(query), list(reader.iter_events(query, batch_size=2)),
               reader.count(query))
    assert got == expected
    assert expected[0]  # every query finds something


def test_the_reader_is_an_event_store_that_refuses_to_write(
        stored: tuple[Path, list[UniversalEvent]]) -> None:
    path, events = stored
    before = files(path.parent)
    with SQLiteStoreReader(path) as reader:
        assert isinstance(reader, EventStore)
        assert reader.flush() == 0
        assert reader.stats().stored == len(events)
        for write in (lambda: reader.append(events[0]),
                      lambda: reader.append_many(events),
                      lambda: reader.apply_retention(max_count=1)):
            with pytest.raises(StoreError, match="read-only") as info:
                write()
            assert info.value.hint == "open it with SQLiteStore to write to it"
    assert files(path.parent) == before


# -- reading writes nothing ---------------------------------------------------------------
def test_reading_leaves_the_file_and_its_folder_as_they_were(
        stored: tuple[Path, list[UniversalEvent]]) -> None:
    path, events = stored
    before = files(path.parent)
    assert list(before) == ["events.db"]  # the writer closed: no -wal, no -shm
    with SQLiteStoreReader(path) as reader:
        assert reader.count() == len(events)
        assert [e.id for e in reader.iter_events(batch_size=5)] == [e.id for e in events]
        assert reader.query(pattern="tool.**", limit=1, descending=True)[0].id == events[-1].id
        assert reader.last_position() == len(events)
    assert files(path.parent) == before  # same bytes and times, nothing beside the file
    assert user_version(path) == SCHEMA_VERSION


def test_a_file_and_folder_without_write_permission_are_read(
        stored: tuple[Path, list[UniversalEvent]]) -> None:
    # Root ignores the permission bits; the file must come out unchanged either way.
    path, events = stored
    path.chmod(0o444)
    path.parent.chmod(0o555)
    try:
        before = files(path.parent)
        with SQLiteStoreReader(path) as reader:
            assert reader.count() == len(events)
            assert [e.id for e in reader.query()] == [e.id for e in events]
        assert files(path.parent) == before
    finally:
        path.parent.chmod(0o755)


def test_the_reader_sees_what_a_writer_commits_after_it_opened(
        stored: tuple[Path, list[UniversalEvent]]) -> None:
    path, events = stored
    with SQLiteStoreReader(path) as reader:
        assert reader.count() == len(events)
        # A writer comes, commits and goes (its close folds its -wal into the file).
        with SQLiteStore(path) as writer:
            writer.append(UniversalEvent.create("late.one", {}))
        assert reader.count() == len(events) + 1
        # A writer that stays open: read through its -wal.
        writer = SQLiteStore(path)
        try:
            writer.append(UniversalEvent.create("late.two", {}))
            writer.flush()
            assert [e.event_type for e in reader.query(descending=True, limit=2)] == [
                "late.two", "late.one"]
            writer.append(UniversalEvent.create("late.three", {}))
            writer.flush()
            assert reader.count(pattern="late.*") == 3
        finally:
            writer.close()


# -- schema versions ----------------------------------------------------------------------
def test_an_older_store_is_refused_with_how_to_upgrade_it_and_left_as_it_was(
        tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    make_v3_store(path)
    before = files(tmp_path)
    with pytest.raises(StoreError) as info:
        SQLiteStoreReader(path)
    assert "schema version 3, older than the version" in info.value.message
    assert "reading never upgrades" in info.value.message
    hint = info.value.hint or ""
    assert f"SQLiteStore({str(path)!r}).close()" in hint
    assert files(tmp_path) == before
    assert user_version(path) == 3
    # Doing what the hint says upgrades it, and then it reads.
    SQLiteStore(path).close()
    with SQLiteStoreReader(path) as reader:
        assert [(e.id, e.data) for e in reader.query()] == [("old-1", {"i": 1})]


def test_a_file_without_an_event_table_is_not_called_old(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    path.write_bytes(b"")
    with pytest.raises(StoreError, match="holds no llmspell event table") as info:
        SQLiteStoreReader(path)
    assert info.value.hint == "point at the events.db llmspell recorded into"
    assert path.read_bytes() == b""


# -- a replay reads what was stored when it began -----------------------------------------
@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MemoryStore | SQLiteStore]:
    if request.param == "memory":
        yield MemoryStore()
    else:
        with SQLiteStore(tmp_path / "events.db") as opened:
            yield opened


def test_iterating_while_storing_ends_with_the_events_there_at_the_start(
        store: MemoryStore | SQLiteStore) -> None:
    first = [UniversalEvent.create("a.x", {"i": i}) for i in range(5)]
    store.append_many(first)
    read: list[UniversalEvent] = []
    for event in store.iter_events(batch_size=1):  # a page per event: each sees new rows
        read.append(event)
        if len(read) > 2 * len(first):
            break  # the iteration would never end
        store.append(UniversalEvent.create("a.y", {"from": event.id}))
        store.flush()
    assert [e.id for e in read] == [e.id for e in first]
    assert store.count() == 2 * len(first)


async def test_a_replay_whose_handler_stores_new_events_ends(
        store: MemoryStore | SQLiteStore) -> None:
    bus = EventBus(store=store)
    originals = [bus.publish("job.done", {"i": i}) for i in range(1001)]  # > one SQL page
    bus.flush()
    replaying: asyncio.Task[int] | None = None
    seen: list[UniversalEvent] = []

    def react(event: UniversalEvent) -> None:
        # Each replayed event makes a new, stored event; a replay that read those too
        # would go on for ever (stopped here so that the test fails instead of hanging).
        seen.append(event)
        bus.publish("job.noticed", {"of": event.id})
        if len(seen) % 100 == 0:
            bus.flush()
        if len(seen) > len(originals) and replaying is not None:
            replaying.cancel()

    bus.subscribe("job.*", lambda e: react(e) if e.metadata.replayed else None,
                  mode="inline")
    replaying = asyncio.ensure_future(bus.replay(persist=True))
    assert await replaying == len(originals)
    assert [e.id for e in seen] == [e.id for e in originals]
    bus.flush()
    assert store.count(pattern="job.noticed") == len(originals)
    await bus.close()


def test_iteration_is_bounded_when_called_not_when_first_read(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "events.db") as store:
        store.append(UniversalEvent.create("a.x", {}))
        events = store.iter_events()
        store.append(UniversalEvent.create("a.y", {}))
        store.flush()
        assert [e.event_type for e in events] == ["a.x"]
    with SQLiteStoreReader(tmp_path / "events.db") as reader:
        events = reader.iter_events()
        with SQLiteStore(tmp_path / "events.db") as writer:
            writer.append(UniversalEvent.create("a.z", {}))
        assert [e.event_type for e in events] == ["a.x", "a.y"]
