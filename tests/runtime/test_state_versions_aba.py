"""State versions are never reused for a key (the ABA problem): a compare-and-set based on
a value that was deleted can never succeed against the key written again, in both backends,
through the store, migrations, restores, quotas and the script APIs; SQLite files of the
old layout are upgraded in place with their data kept."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from llmspell.core.errors import StateConflictError, StateError
from llmspell.runtime import StateScope, StateStore, System
from llmspell.runtime.state import SQLiteStateBackend
from llmspell.runtime.state.base import MAX_TOMBSTONES, StateBackend
from llmspell.runtime.state.quota import QuotaStateBackend
from llmspell.runtime.state.sqlite import SCHEMA_VERSION
from llmspell.scripting import ScriptHost
from tests.runtime.state_support import BackendFactory, make_backend, opened, state, system

__all__ = ["make_backend", "state", "system"]  # fixtures

G = StateScope.GLOBAL
S = StateScope.SESSION

@pytest.fixture
def backend(make_backend: BackendFactory) -> StateBackend:
    return make_backend()


# -- the defect: compare-and-set after delete + re-create ---------------------------------
async def test_a_stale_compare_and_set_after_delete_and_recreate_conflicts(
        state: StateStore) -> None:
    await state.set("cart", ["apple"])
    seen = await state.entry("cart")                   # a writer reads version 1 ...
    assert seen is not None and seen.version == 1
    assert await state.delete("cart") is True          # ... someone deletes the key ...
    recreated = await state.set("cart", ["pear"])      # ... and writes it again
    assert recreated.version == 2                      # never version 1 again
    with pytest.raises(StateConflictError) as info:    # the stale write is refused
        await state.set("cart", ["apple", "plum"], expected_version=seen.version)
    assert (info.value.expected, info.value.actual) == (1, 2)
    assert await state.get("cart") == ["pear"]        # nothing was overwritten
    with pytest.raises(StateConflictError):            # a stale delete too
        await state.delete("cart", expected_version=seen.version)
    assert await state.get("cart") == ["pear"]


async def test_a_stale_write_before_the_key_is_recreated_conflicts_as_absent(
        state: StateStore) -> None:
    first = await state.set("k", 1)
    await state.set("k", 2)
    await state.delete("k")
    with pytest.raises(StateConflictError) as info:
        await state.set("k", 9, expected_version=first.version)
    assert (info.value.expected, info.value.actual) == (1, 0)  # absent reads as 0
    assert await state.get("k") is None


async def test_first_writes_start_at_1_and_expected_0_still_creates(state: StateStore) -> None:
    assert (await state.set("fresh", "x")).version == 1
    assert (await state.set("other", "y", expected_version=0)).version == 1
    await state.set("fresh", "x2")
    await state.delete("fresh")
    # "must not exist yet" holds for a deleted key; it continues after its last version.
    created = await state.set("fresh", "again", expected_version=0)
    assert created.version == 3
    with pytest.raises(StateConflictError):
        await state.set("fresh", "twice", expected_version=0)


async def test_tombstones_are_invisible(state: StateStore) -> None:
    await state.set("gone", 1, scope="agent", scope_id="a1")
    await state.set("kept", 1, scope="agent", scope_id="a2")
    await state.delete("gone", scope="agent", scope_id="a1")
    assert await state.get("gone", scope="agent", scope_id="a1") is None
    assert await state.entry("gone", scope="agent", scope_id="a1") is None
    assert await state.keys("agent", "a1", include_reserved=True) == []
    assert await state.snapshot("agent", "a1", include_reserved=True) == {}
    assert await state.scopes("agent") == ["a2"]       # a scope of tombstones holds no key
    assert await state.delete("gone", scope="agent", scope_id="a1") is False


async def test_scopes_keep_their_own_versions(state: StateStore) -> None:
    await state.set("k", 1, scope="session", scope_id="s1")
    await state.delete("k", scope="session", scope_id="s1")
    assert (await state.set("k", 1, scope="session", scope_id="s2")).version == 1
    assert (await state.set("k", 1)).version == 1
    assert (await state.set("k", 1, scope="session", scope_id="s1")).version == 2


async def test_a_conflict_hook_resolves_on_top_of_the_recreated_version(
        system: System) -> None:
    from llmspell.hooks.points import HookPoint
    from llmspell.hooks.result import Replace

    state = system.state
    await state.set("n", 1)
    await state.delete("n")
    await state.set("n", 10)                           # version 2
    system.registry.register(HookPoint.STATE_CONFLICT,
                             lambda ctx: Replace(ctx.data["current"] + 1), name="merge")
    entry = await state.set("n", 5, expected_version=1)
    assert (entry.value, entry.version) == (11, 3)


async def test_restore_with_clear_and_migrations_never_reuse_versions(
        state: StateStore) -> None:
    await state.set("a", 1, scope="workflow", scope_id="w")
    await state.set("b", 1, scope="workflow", scope_id="w")
    await state.set("b", 2, scope="workflow", scope_id="w")     # b at version 2
    await state.restore("workflow", "w", {"a": 5})              # clears b
    assert await state.keys("workflow", "w") == ["a"]
    await state.restore("workflow", "w", {"a": 6, "b": 3})
    b = await state.entry("b", scope="workflow", scope_id="w")
    assert b is not None and b.version == 3
    # A migration deletes c in one step and brings it back in the next (apply).
    await state.set("c", "old", scope="agent", scope_id="x")    # version 1
    state.register_migration(1, lambda values: {}, scope="agent")
    state.register_migration(2, lambda values: {**values, "c": "new"}, scope="agent")
    assert await state.migrate("agent", "x") == 2
    c = await state.entry("c", scope="agent", scope_id="x")
    assert c is not None and (c.value, c.version) == ("new", 2)
    with pytest.raises(StateConflictError):
        await state.set("c", "stale", scope="agent", scope_id="x", expected_version=1)


# -- the backends directly ----------------------------------------------------------------
def test_backend_put_delete_and_apply_never_reuse_a_version(backend: StateBackend) -> None:
    assert backend.put(G, "", "k", 1, None, 1.0) is not None    # version 1
    assert backend.delete(G, "", "k", 1) is True
    assert backend.put(G, "", "k", 2, 1, 2.0) is None           # stale: conflict
    entry = backend.put(G, "", "k", 2, 0, 2.0)
    assert entry is not None and entry.version == 2
    apply = backend.apply  # type: ignore[attr-defined]
    assert apply(G, "", {}, ["k", "never-there"], None, 3.0) is True
    assert backend.get(G, "", "k") is None and backend.keys(G, "") == []
    assert apply(G, "", {"k": 3, "new": 1}, [], None, 4.0) is True
    got = backend.items(G, "")
    assert {k: e.version for k, e in got.items()} == {"k": 3, "new": 1}
    assert apply(G, "", {"k": 4}, ["k"], ("k", 3), 5.0) is True  # delete 3, then write: 4
    again = backend.get(G, "", "k")
    assert again is not None and (again.value, again.version) == (4, 4)
    backend.close()


def test_tombstones_are_bounded_and_folding_never_reuses_a_version(
        make_backend: BackendFactory, tmp_path: Path) -> None:
    backend = make_backend(max_tombstones=2)
    for key in ("a", "b", "c"):
        backend.put(S, "s", key, 1, None, 0.0)
        backend.put(S, "s", key, 2, None, 0.0)                  # each at version 2
    backend.put(G, "", "g", 1, None, 0.0)
    for key in ("a", "b", "c"):
        assert backend.delete(S, "s", key, None) is True
    # "a" was folded into the session scope's floor (2); "b" and "c" keep tombstones.
    assert backend.delete(G, "", "g", None) is True             # folds "b" as well
    for key in ("a", "b", "c"):
        entry = backend.put(S, "s", key, 3, None, 0.0)
        assert entry is not None and entry.version == 3         # never 1 or 2 again
    # A new key of a scope with a floor starts after it; other scopes still start at 1.
    new = backend.put(S, "s", "new", 1, None, 0.0)
    assert new is not None and new.version == 3
    other = backend.put(S, "t", "new", 1, None, 0.0)
    assert other is not None and other.version == 1
    regained = backend.put(G, "", "g", 1, None, 0.0)
    assert regained is not None and regained.version == 2
    backend.close()
    if isinstance(backend, SQLiteStateBackend):
        with closing(sqlite3.connect(tmp_path / "state.db")) as conn:
            assert conn.execute("SELECT count(*) FROM state_tombstones").fetchone()[0] <= 2
            assert conn.execute("SELECT scope, scope_id, version FROM state_floors"
                                ).fetchall() == [("session", "s", 2)]


@pytest.mark.parametrize("bad", [-1, 1.5, True, "10"])
def test_a_bad_tombstone_bound_is_a_state_error(make_backend: BackendFactory,
                                                bad: Any) -> None:
    with pytest.raises(StateError, match="max_tombstones") as info:
        make_backend(max_tombstones=bad)
    assert info.value.hint and str(MAX_TOMBSTONES) in info.value.hint


def test_max_tombstones_0_keeps_only_floors(make_backend: BackendFactory) -> None:
    backend = make_backend(max_tombstones=0)
    backend.put(G, "", "k", 1, None, 0.0)
    backend.delete(G, "", "k", None)
    entry = backend.put(G, "", "k", 1, 1, 0.0)
    assert entry is None                                    # the stale version conflicts
    entry = backend.put(G, "", "k", 1, None, 0.0)
    assert entry is not None and entry.version == 2
    backend.close()


def test_two_connections_to_one_file_share_tombstones(tmp_path: Path) -> None:
    with opened(tmp_path / "state.db") as one, opened(tmp_path / "state.db") as two:
        one.put(G, "", "k", "a", None, 0.0)
        assert two.delete(G, "", "k", 1) is True
        assert one.put(G, "", "k", "stale", 1, 0.0) is None
        entry = one.put(G, "", "k", "b", 0, 0.0)
        assert entry is not None and entry.version == 2


def test_the_quota_does_not_count_tombstones(backend: StateBackend) -> None:
    quota = QuotaStateBackend(backend, 200)
    for i in range(50):                     # far more than 200 bytes written over time
        assert quota.put(G, "", f"tmp-{i}", "x" * 50, None, 0.0) is not None
        assert quota.delete(G, "", f"tmp-{i}", None) is True
        assert quota.used == 0
    assert quota.put(G, "", "tmp-0", "x" * 50, None, 0.0) is not None
    entry = quota.get(G, "", "tmp-0")
    assert entry is not None and entry.version == 2
    quota.close()


# -- SQLite files of the old layout (schema version 1) ------------------------------------
_V1_SCHEMA = """CREATE TABLE state (
    scope TEXT NOT NULL,
    scope_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    version INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (scope, scope_id, key)
) WITHOUT ROWID"""


def _make_v1_file(path: Path) -> None:
    """A state file exactly as llmspell wrote it before tombstones (user_version 1)."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(_V1_SCHEMA)
        conn.executemany("INSERT INTO state VALUES (?, ?, ?, ?, ?, ?)", [
            ("global", "", "greeting", b'"hello"', 4, 10.0),
            ("session", "s1", "cart", b'["apple",1]', 2, 11.0),
            ("session", "s1", "__session__", b'{"id":"s1"}', 1, 12.0),
        ])
        conn.execute("PRAGMA user_version=1")
        conn.commit()
    finally:
        conn.close()


def test_an_old_layout_file_is_upgraded_with_its_data_kept(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    _make_v1_file(path)
    with opened(path) as backend:
        greeting = backend.get(G, "", "greeting")
        assert greeting is not None
        assert (greeting.value, greeting.version, greeting.updated_at) == ("hello", 4, 10.0)
        assert {k: (e.value, e.version) for k, e in backend.items(S, "s1").items()} == {
            "__session__": ({"id": "s1"}, 1), "cart": (["apple", 1], 2)}
        assert backend.scopes(S) == ["s1"]
        # It works: versions continue, and a delete + re-create never reuses one.
        assert backend.delete(G, "", "greeting", 4) is True
        assert backend.put(G, "", "greeting", "stale", 4, 0.0) is None
        again = backend.put(G, "", "greeting", "hi", 0, 0.0)
        assert again is not None and again.version == 5
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    with opened(path) as reopened:                      # an upgraded file opens again
        entry = reopened.get(G, "", "greeting")
        assert entry is not None and (entry.value, entry.version) == ("hi", 5)


def test_a_newer_file_and_a_foreign_tombstone_table_are_refused(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    _make_v1_file(newer)
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StateError, match=f"schema version {SCHEMA_VERSION + 1}") as info:
        SQLiteStateBackend(newer)
    assert info.value.hint and "upgrade llmspell" in info.value.hint
    foreign = tmp_path / "foreign.db"
    _make_v1_file(foreign)
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE state_tombstones (a TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(StateError, match="'state_tombstones' that is not an llmspell"):
        SQLiteStateBackend(foreign)
    with closing(sqlite3.connect(foreign)) as conn:      # refused: left as it was
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM state").fetchone()[0] == 3


# -- the script APIs see the same versions ------------------------------------------------
async def test_lua_and_js_state_apis_never_reuse_a_version(system: System) -> None:
    host = ScriptHost(system)
    try:
        lua = await host.run_lua_async("""
          local v1 = State.set("lua.k", "a")
          State.delete("lua.k")
          local v2 = State.set("lua.k", "b")
          local ok, err = pcall(State.set, "lua.k", "stale", {expected_version = v1})
          return {v1 = v1, v2 = v2, ok = ok, err = tostring(err), now = State.get("lua.k")}
        """)
        js = await host.run_js_async("""
          const v1 = await State.set("js.k", "a");
          await State.delete("js.k");
          const v2 = await State.set("js.k", "b");
          let err = null;
          try { await State.set("js.k", "stale", {expected_version: v1}); }
          catch (e) { err = String(e); }
          return {v1, v2, err, now: await State.get("js.k")};
        """)
    finally:
        host.close()
    assert (lua["v1"], lua["v2"], lua["ok"], lua["now"]) == (1, 2, False, "b")
    assert "expected version 1, found 2" in lua["err"]
    assert (js["v1"], js["v2"], js["now"]) == (1, 2, "b")
    assert js["err"] is not None and "expected version 1, found 2" in js["err"]
