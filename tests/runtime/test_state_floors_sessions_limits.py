"""What a store remembers of deleted keys stays bounded however many scopes (sessions) are
deleted: scope version floors past ``max_floors`` fold into one global floor, and a batch
that empties a scope leaves one floor instead of a tombstone per key, in both backends,
without ever reusing a version. And sessions refuse over-long names and checkpoint labels,
and oversized metadata, before anything is written (Python and Lua)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llmspell.core.errors import SessionError, StateConflictError, StateError
from llmspell.hooks.points import HookPoint
from llmspell.hooks.result import Modified
from llmspell.runtime import StateScope, System, SystemConfig
from llmspell.runtime.sessions import (
    MAX_CHECKPOINT_LABEL,
    MAX_SESSION_METADATA_BYTES,
    MAX_SESSION_NAME,
    SESSION_KEY,
)
from llmspell.runtime.state import MemoryStateBackend, SQLiteStateBackend
from llmspell.runtime.state.base import MAX_FLOORS, StateBackend
from llmspell.scripting import ScriptHost
from tests.runtime.state_support import BackendFactory, make_backend, opened, state, system

__all__ = ["make_backend", "state", "system"]  # fixtures

G = StateScope.GLOBAL
S = StateScope.SESSION

def _rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _write_to(backend: StateBackend, scope_id: str, key: str, version: int) -> None:
    """Write ``key`` of session scope ``scope_id`` until it is at ``version``."""
    entry = backend.get(S, scope_id, key)
    while entry is None or entry.version < version:
        entry = backend.put(S, scope_id, key, "v", None, 0.0)
        assert entry is not None
    assert entry.version == version


def _apply(backend: StateBackend, scope: StateScope, scope_id: str,
           deletes: list[str]) -> bool:
    apply = backend.apply  # type: ignore[attr-defined]
    done: bool = apply(scope, scope_id, {}, deletes, None, 0.0)
    return done


# -- floors are bounded ------------------------------------------------------------------
def test_floors_past_the_bound_fold_into_a_global_floor_without_reusing_a_version(
        make_backend: BackendFactory, tmp_path: Path) -> None:
    backend = make_backend(max_tombstones=0, max_floors=2)     # every delete makes a floor
    versions = {"s1": 3, "s2": 1, "s3": 5, "s4": 2}
    for scope_id, version in versions.items():
        _write_to(backend, scope_id, "k", version)
    for scope_id in versions:
        assert backend.delete(S, scope_id, "k", None) is True
    # s1 and s2 (the oldest floors) folded into the global floor (3); s3 and s4 kept theirs.
    for scope_id, version in versions.items():                 # a stale write conflicts ...
        assert backend.put(S, scope_id, "k", "stale", version, 0.0) is None
    again = {sid: backend.put(S, sid, "k", "new", 0, 0.0) for sid in versions}
    assert {sid: e.version for sid, e in again.items() if e is not None} == {
        "s1": 4, "s2": 4,         # after the global floor (3): never 1..3 again
        "s3": 6,                  # after its own floor (5)
        "s4": 4}                  # the higher of its floor (2) and the global floor (3)
    fresh = backend.put(S, "never-used", "k", "x", None, 0.0)
    assert fresh is not None and fresh.version == 4            # any scope starts after it
    other = backend.put(G, "", "g", "x", None, 0.0)
    assert other is not None and other.version == 4
    backend.close()
    if isinstance(backend, SQLiteStateBackend):
        floors = _rows(tmp_path / "state.db",
                       "SELECT scope, scope_id, version FROM state_floors ORDER BY rowid")
        assert sorted(floors) == [("*", "", 3), ("session", "s3", 5), ("session", "s4", 2)]


def test_a_scope_floor_below_the_global_floor_never_brings_a_version_back(
        make_backend: BackendFactory) -> None:
    backend = make_backend(max_tombstones=2, max_floors=1)
    _write_to(backend, "a", "k", 5)
    backend.delete(S, "a", "k", None)                           # tombstone a/k = 5
    _write_to(backend, "a", "old", 2)
    backend.delete(S, "a", "old", None)                         # tombstone a/old = 2
    backend.put(S, "c", "y", 1, None, 0.0)
    backend.delete(S, "c", "y", None)                           # folds a/k: floor a = 5
    for key in ("p", "q"):
        backend.put(S, "b", key, 1, None, 0.0)
    assert _apply(backend, S, "b", ["p", "q"]) is True          # floor b: folds a into global
    backend.put(S, "d", "z", 1, None, 0.0)
    backend.delete(S, "d", "z", None)                           # folds a/old: a new floor a = 2
    # a/k has no tombstone and its scope's floor (2) is below what it had (5): the global
    # floor (5) keeps it from starting at 3.
    assert backend.put(S, "a", "k", "stale", 5, 0.0) is None
    entry = backend.put(S, "a", "k", "new", 0, 0.0)
    assert entry is not None and entry.version == 6
    backend.close()


def test_max_floors_0_keeps_only_the_global_floor(make_backend: BackendFactory,
                                                   tmp_path: Path) -> None:
    backend = make_backend(max_tombstones=0, max_floors=0)
    _write_to(backend, "s", "k", 4)
    backend.delete(S, "s", "k", None)
    assert backend.put(S, "s", "k", "stale", 4, 0.0) is None
    entry = backend.put(S, "t", "new", "x", None, 0.0)
    assert entry is not None and entry.version == 5
    backend.close()
    if isinstance(backend, SQLiteStateBackend):
        assert _rows(tmp_path / "state.db", "SELECT scope, scope_id, version FROM "
                     "state_floors") == [("*", "", 4)]
        assert _rows(tmp_path / "state.db", "SELECT count(*) FROM state_tombstones") == [(0,)]


@pytest.mark.parametrize("bad", [-1, 2.5, False, "100"])
def test_a_bad_floor_bound_is_a_state_error(make_backend: BackendFactory, bad: Any) -> None:
    with pytest.raises(StateError, match="max_floors") as info:
        make_backend(max_floors=bad)
    assert info.value.hint and str(MAX_FLOORS) in info.value.hint


def test_the_default_bounds(make_backend: BackendFactory) -> None:
    backend = make_backend()
    assert backend.max_floors == MAX_FLOORS == 10_000  # type: ignore[attr-defined]
    backend.close()


def test_two_connections_share_the_global_floor(tmp_path: Path) -> None:
    with opened(tmp_path / "state.db", max_tombstones=0, max_floors=0) as one, \
            opened(tmp_path / "state.db") as two:
        one.put(S, "s", "k", 1, None, 0.0)
        one.put(S, "s", "k", 2, None, 0.0)
        assert one.delete(S, "s", "k", 2) is True              # straight to the global floor
        assert two.put(S, "s", "k", "stale", 2, 0.0) is None
        entry = two.put(S, "other", "k", "x", 0, 0.0)
        assert entry is not None and entry.version == 3


# -- a batch that empties a scope leaves one floor ----------------------------------------
def test_a_batch_emptying_a_scope_leaves_one_floor_instead_of_tombstones(
        make_backend: BackendFactory, tmp_path: Path) -> None:
    backend = make_backend()
    _write_to(backend, "s", "gone-before", 7)
    backend.delete(S, "s", "gone-before", None)                # an earlier tombstone (7)
    _write_to(backend, "s", "a", 1)
    _write_to(backend, "s", "b", 3)
    _write_to(backend, "kept", "a", 2)
    backend.put(S, "kept", "b", 1, None, 0.0)
    assert _apply(backend, S, "s", ["a", "b", "not-there"]) is True
    assert backend.keys(S, "s") == [] and backend.scopes(S) == ["kept"]
    for key, old in (("a", 1), ("b", 3), ("gone-before", 7)):
        assert backend.put(S, "s", key, "stale", old, 0.0) is None
    # One floor (the highest of 1, 3 and 7) stands for the whole scope.
    after = {key: backend.put(S, "s", key, "x", 0, 0.0) for key in ("a", "b", "gone-before",
                                                                    "brand-new")}
    assert {key: e.version for key, e in after.items() if e is not None} == dict.fromkeys(
        after, 8)
    # A batch that leaves keys in its scope keeps tombstones.
    assert _apply(backend, S, "kept", ["a"]) is True
    entry = backend.put(S, "kept", "a", "x", None, 0.0)
    assert entry is not None and entry.version == 3
    backend.close()
    if isinstance(backend, SQLiteStateBackend):
        path = tmp_path / "state.db"
        assert _rows(path, "SELECT scope_id, key FROM state_tombstones") == []
        assert _rows(path, "SELECT scope, scope_id, version FROM state_floors") == [
            ("session", "s", 7)]


def test_one_key_emptying_its_scope_keeps_its_precise_tombstone(
        make_backend: BackendFactory) -> None:
    backend = make_backend()
    _write_to(backend, "s", "only", 4)
    assert _apply(backend, S, "s", ["only"]) is True            # one tombstone: kept as is
    fresh = backend.put(S, "s", "other", "x", None, 0.0)
    assert fresh is not None and fresh.version == 1
    again = backend.put(S, "s", "only", "x", 0, 0.0)
    assert again is not None and again.version == 5
    backend.close()


@pytest.fixture(params=["memory", "sqlite"])
async def small_system(request: pytest.FixtureRequest,
                       tmp_path: Path) -> AsyncIterator[tuple[System, StateBackend]]:
    """A system whose state backend keeps at most 3 tombstones and 3 scope floors."""
    backend: StateBackend = (
        MemoryStateBackend(max_tombstones=3, max_floors=3) if request.param == "memory"
        else SQLiteStateBackend(tmp_path / "state.db", max_tombstones=3, max_floors=3))
    async with System(SystemConfig(store="memory"), state_backend=backend) as system:
        yield system, backend
    backend.close()


async def test_purging_many_sessions_keeps_a_bounded_number_of_floors(
        small_system: tuple[System, StateBackend], tmp_path: Path) -> None:
    system, backend = small_system
    stale: list[tuple[str, int]] = []
    for i in range(25):
        session = await system.sessions.start(f"s{i}")
        entry = await session.set("step", i)
        await session.checkpoint("c")
        if i % 2:
            await session.delete("step")                        # a tombstone in the scope
        stale.append((session.id, entry.version))
        await session.end()
    assert await system.sessions.purge(0) == 25
    assert await system.state.scopes(S) == []
    if isinstance(backend, SQLiteStateBackend):
        path = tmp_path / "state.db"
        assert _rows(path, "SELECT count(*) FROM state_tombstones")[0][0] <= 3
        assert _rows(path, "SELECT count(*) FROM state_floors WHERE scope != '*'"
                     )[0][0] <= 3
        assert _rows(path, "SELECT count(*) FROM state_floors WHERE scope = '*'") == [(1,)]
    else:
        assert isinstance(backend, MemoryStateBackend)
        assert len(backend._tombstones) <= 3 and len(backend._floors) <= 3
    # No purged session's key comes back at a version it had.
    for session_id, version in stale:
        with pytest.raises(StateConflictError):
            await system.state.set("step", "stale", scope="session", scope_id=session_id,
                                   expected_version=version)
        assert await system.state.get(SESSION_KEY, scope="session",
                                      scope_id=session_id) is None


# -- SQLite files --------------------------------------------------------------------------
def test_a_version_1_file_upgrades_and_folds_floors(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    conn.execute("""CREATE TABLE state (scope TEXT NOT NULL, scope_id TEXT NOT NULL,
        key TEXT NOT NULL, value BLOB NOT NULL, version INTEGER NOT NULL,
        updated_at REAL NOT NULL, PRIMARY KEY (scope, scope_id, key)) WITHOUT ROWID""")
    conn.executemany("INSERT INTO state VALUES (?, ?, ?, ?, ?, ?)", [
        ("session", "s1", "a", b'"x"', 6, 1.0), ("session", "s1", "b", b'"y"', 2, 1.0)])
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    with opened(path, max_floors=0) as backend:
        assert _apply(backend, S, "s1", ["a", "b"]) is True      # a floor, then the global one
        assert backend.put(S, "s1", "a", "stale", 6, 0.0) is None
        entry = backend.put(S, "s2", "new", "x", None, 0.0)
        assert entry is not None and entry.version == 7
    assert _rows(path, "SELECT scope, scope_id, version FROM state_floors") == [("*", "", 6)]


# -- session limits ------------------------------------------------------------------------
def _count(system: System, point: HookPoint) -> list[Any]:
    seen: list[Any] = []

    def count(ctx: Any) -> None:
        seen.append(ctx.data)

    system.registry.register(point, count, name=f"count-{point.value}")
    return seen


def _published(system: System) -> list[str]:
    seen: list[str] = []
    system.bus.subscribe("session.*", lambda event: seen.append(event.event_type))
    return seen


async def test_an_over_long_session_name_is_refused_before_anything_happens(
        system: System) -> None:
    starts = _count(system, HookPoint.SESSION_START)
    events = _published(system)
    for name in ("n" * (MAX_SESSION_NAME + 1), "x" * 2_000_000):
        with pytest.raises(SessionError, match="session name too long") as info:
            await system.sessions.start(name)
        assert f"{len(name)} characters" in str(info.value)
        assert info.value.hint and "session.set" in info.value.hint
    assert starts == [] and events == []
    assert await system.sessions.list() == []
    assert await system.state.scopes(S) == []
    ok = await system.sessions.start("n" * MAX_SESSION_NAME)      # the limit itself is fine
    assert (await system.sessions.load(ok.id)).name == "n" * MAX_SESSION_NAME


async def test_oversized_metadata_is_refused_before_anything_happens(
        system: System) -> None:
    starts = _count(system, HookPoint.SESSION_START)
    big = {"blob": "x" * MAX_SESSION_METADATA_BYTES}
    with pytest.raises(SessionError, match="session metadata too large") as info:
        await system.sessions.start("s", metadata=big)
    assert info.value.hint and "session.set" in info.value.hint
    assert starts == [] and await system.sessions.list() == []
    fits = {"blob": "x" * (MAX_SESSION_METADATA_BYTES - 100)}
    session = await system.sessions.start("s", metadata=fits)
    assert (await system.sessions.load(session.id)).metadata == fits


async def test_a_start_hook_cannot_smuggle_in_an_over_long_name_or_metadata(
        system: System) -> None:
    answer: dict[str, Any] = {"name": "n" * (MAX_SESSION_NAME + 1)}
    system.registry.register(HookPoint.SESSION_START,
                             lambda ctx: Modified({**ctx.data, **answer}), name="rename")
    with pytest.raises(SessionError, match="SessionStart hooks returned"):
        await system.sessions.start("short")
    answer.clear()
    answer["metadata"] = {"blob": "x" * MAX_SESSION_METADATA_BYTES}
    with pytest.raises(SessionError, match="SessionStart hooks returned"):
        await system.sessions.start("short")
    assert await system.sessions.list() == []


async def test_save_and_end_refuse_a_record_over_the_limits_and_keep_the_stored_one(
        system: System) -> None:
    saves = _count(system, HookPoint.SESSION_SAVE)
    ends = _count(system, HookPoint.SESSION_END)
    session = await system.sessions.start("short", metadata={"user": "ada"})
    session.name = "n" * (MAX_SESSION_NAME + 1)
    with pytest.raises(SessionError, match="session name too long"):
        await session.save()
    with pytest.raises(SessionError, match="session name too long"):
        await session.end()
    session.name = "short"
    session.metadata["blob"] = "x" * MAX_SESSION_METADATA_BYTES
    with pytest.raises(SessionError, match="session metadata too large"):
        await session.save()
    with pytest.raises(SessionError, match="session metadata too large"):
        await session.end()
    assert saves == [] and ends == [] and session.active
    stored = await system.sessions.load(session.id)
    assert (stored.name, stored.status, stored.metadata) == ("short", "active",
                                                             {"user": "ada"})
    del session.metadata["blob"]
    system.registry.register(
        HookPoint.SESSION_SAVE,
        lambda ctx: Modified({**ctx.data, "metadata": {"blob": "y" * 100_000}}), name="grow")
    with pytest.raises(SessionError, match="SessionSave hooks returned"):
        await session.save()
    assert (await system.sessions.load(session.id)).metadata == {"user": "ada"}
    assert session.metadata == {"user": "ada"}


async def test_an_over_long_checkpoint_label_is_refused_before_anything_happens(
        system: System) -> None:
    checkpoints = _count(system, HookPoint.SESSION_CHECKPOINT)
    restores = _count(system, HookPoint.SESSION_RESTORE)
    session = await system.sessions.start("s")
    await session.set("step", 1)
    events = _published(system)
    for label in ("l" * (MAX_CHECKPOINT_LABEL + 1), "x" * 2_000_000):
        with pytest.raises(SessionError, match="checkpoint label too long") as info:
            await session.checkpoint(label)
        assert info.value.hint and "before-step-3" in info.value.hint
        with pytest.raises(SessionError, match="checkpoint label too long") as info:
            await session.restore(label)
        assert info.value.hint and "session.checkpoints()" in info.value.hint
    assert checkpoints == [] and restores == [] and events == []
    assert await session.checkpoints() == []
    label = "l" * MAX_CHECKPOINT_LABEL
    assert await session.checkpoint(label) == label
    assert await session.checkpoints() == [label]


async def test_lua_session_bindings_refuse_over_long_names_and_labels() -> None:
    async with System(SystemConfig(store="memory")) as system:
        host = ScriptHost(system)
        try:
            out = await host.run_lua_async(f"""
              local ok, err = pcall(Session.start, {{name = string.rep("n", 2000000)}})
              local s = Session.start({{name = "fine"}})
              local cok, cerr = pcall(Session.checkpoint, s,
                                      string.rep("l", {MAX_CHECKPOINT_LABEL + 1}))
              return {{ok = ok, err = tostring(err), cok = cok, cerr = tostring(cerr),
                       count = #Session.list()}}
            """)
        finally:
            host.close()
    assert out["ok"] is False and "session name too long: 2000000 characters" in out["err"]
    assert out["cok"] is False and "checkpoint label too long" in out["cerr"]
    assert out["count"] == 1
