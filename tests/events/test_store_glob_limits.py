"""A limited glob query reads each matching event type on its own and merges the rows
(instead of filtering and sorting every row under the pattern's prefix): the answer must be
exactly what filtering all stored events gives, for the store's query and the reader's
newest/read_after, on both sides of the walk's limit."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmspell.events.event import UniversalEvent
from llmspell.events.pattern import compile_pattern
from llmspell.events.store import sqlite as sqlite_module
from llmspell.events.store.sqlite import SQLiteStore, SQLiteStoreReader

TYPES = ["tool.search.started", "tool.search.completed", "tool.shell.completed",
         "tool.sql.failed", "tool", "tool.a", "model.openai.completed", "agent.x.step",
         "agent.y.step", "toolbox.open", "a.b.c.d", "z"]
PATTERNS = ["tool.*.completed", "tool.**", "**", "*.*.*", "tool.s*.*", "agent.?.step",
            "nothing.*", "tool.[!s]*", "*", "a.**.d", "toolbox.*", "t*.*"]


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[SQLiteStore, SQLiteStoreReader, list[UniversalEvent]]]:
    path = tmp_path_factory.mktemp("globs") / "events.db"
    store = SQLiteStore(path)
    events = [UniversalEvent.create(TYPES[(i * 7) % len(TYPES)], {"i": i},
                                    correlation_id=f"c{i % 3}") for i in range(400)]
    for event in events:
        store.append(event)
    store.flush()
    reader = SQLiteStoreReader(path)
    yield store, reader, events
    reader.close()
    store.close()


@contextmanager
def _walk_limit(limit: int) -> Iterator[None]:
    saved = sqlite_module._MAX_TYPES_WALKED
    sqlite_module._MAX_TYPES_WALKED = limit
    try:
        yield
    finally:
        sqlite_module._MAX_TYPES_WALKED = saved


def _matching(events: list[UniversalEvent], pattern: str, correlation: str | None
              ) -> list[tuple[int, UniversalEvent]]:
    matches = compile_pattern(pattern).matches
    # Appended in one process and flushed in order: positions are 1..n in append order.
    return [(position, e) for position, e in enumerate(events, 1)
            if matches(e.event_type) and (correlation is None or e.correlation_id == correlation)]


@settings(max_examples=150, deadline=None)
@given(pattern=st.sampled_from(PATTERNS), limit=st.integers(1, 60), descending=st.booleans(),
       correlation=st.sampled_from([None, "c1"]), walk_limit=st.sampled_from([1024, 3]))
def test_a_limited_glob_query_is_the_filtered_store(
        stored: tuple[SQLiteStore, SQLiteStoreReader, list[UniversalEvent]], pattern: str,
        limit: int, descending: bool, correlation: str | None, walk_limit: int) -> None:
    store, _, events = stored
    expected = [e for _, e in _matching(events, pattern, correlation)]
    if descending:
        expected.reverse()
    with _walk_limit(walk_limit):
        got = store.query(pattern=pattern, limit=limit, descending=descending,
                          correlation_id=correlation)
    assert got == expected[:limit]


@settings(max_examples=150, deadline=None)
@given(pattern=st.sampled_from(PATTERNS), limit=st.integers(1, 60),
       after=st.integers(0, 400), upto=st.one_of(st.none(), st.integers(0, 400)),
       walk_limit=st.sampled_from([1024, 3]))
def test_the_readers_newest_and_read_after_are_the_filtered_store(
        stored: tuple[SQLiteStore, SQLiteStoreReader, list[UniversalEvent]], pattern: str,
        limit: int, after: int, upto: int | None, walk_limit: int) -> None:
    _, reader, events = stored
    matching = [(p, e) for p, e in _matching(events, pattern, None)
                if upto is None or p <= upto]
    later = [(p, e) for p, e in matching if p > after]
    with _walk_limit(walk_limit):
        assert reader.newest(limit, pattern=pattern, upto=upto) == matching[-limit:]
        assert reader.read_after(after, limit=limit, pattern=pattern,
                                 upto=upto) == later[:limit]


def test_the_type_walk_stops_at_its_limit(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the walk's limit the query is one statement again; the answer is the same."""
    calls: list[str] = []
    with SQLiteStore(tmp_path / "events.db") as store:
        for i, name in zip(range(50), itertools.cycle("abcdefghij"), strict=False):
            store.append(UniversalEvent.create(f"tool.{name}.done", {"i": i}))
        store.flush()
        newest = store.query(pattern="tool.*.done", limit=5, descending=True)
        real_read = store._read
        real_snapshot = sqlite_module._snapshot_reader

        def counting(sql: str, params: list[object]) -> list[object]:
            calls.append(sql)
            return real_read(sql, params)

        def counting_snapshot(conn: Any, path: Any) -> Any:
            read = real_snapshot(conn, path)

            def counted(sql: str, params: list[Any]) -> list[Any]:
                calls.append(sql)
                return read(sql, params)
            return counted

        monkeypatch.setattr(store, "_read", counting)
        monkeypatch.setattr(sqlite_module, "_snapshot_reader", counting_snapshot)
        monkeypatch.setattr(sqlite_module, "_MAX_TYPES_WALKED", 4)
        assert store.query(pattern="tool.*.done", limit=5, descending=True) == newest
        assert [e.data["i"] for e in newest] == [49, 48, 47, 46, 45]
        # 4 types walked, a fifth found past the limit, then the single statement
        assert len(calls) == 6 and "llmspell_match" in calls[-1]
        assert all("llmspell_match" not in sql for sql in calls[:-1])


def test_a_limited_glob_query_reads_one_snapshot(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Its statements run in one read transaction: a row another process commits while
    the types are read one by one is not half-seen."""
    path = tmp_path / "events.db"
    with SQLiteStore(path) as store:
        for i, name in enumerate(["a.x", "a.y", "a.x", "a.y"]):
            store.append(UniversalEvent.create(name, {"i": i}))
        store.flush()
        other = sqlite3.connect(path, isolation_level=None)
        real_snapshot = sqlite_module._snapshot_reader
        statements = 0

        def interleaved(conn: Any, where: Any) -> Any:
            read = real_snapshot(conn, where)

            def then_write(sql: str, params: list[Any]) -> list[Any]:
                nonlocal statements
                rows = read(sql, params)
                statements += 1
                if statements == 1:  # another writer commits a newer a.y meanwhile
                    other.execute("INSERT INTO events (id, sequence, event_type, timestamp, "
                                  "payload) VALUES (?, ?, ?, ?, ?)",
                                  ("late", 1, "a.y", 0.0, b"[99]"))
                return rows
            return then_write

        monkeypatch.setattr(sqlite_module, "_snapshot_reader", interleaved)
        got = store.query(pattern="a.*", limit=3, descending=True)
        assert [e.data["i"] for e in got] == [3, 2, 1]  # as the file was when it began
        monkeypatch.setattr(sqlite_module, "_snapshot_reader", real_snapshot)
        assert [e.data for e in store.query(pattern="a.*", limit=1, descending=True)] == [99]
        other.close()
