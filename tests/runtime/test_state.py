"""The state store: both backends, validation, hooks and their effects, conflicts,
concurrent writers (threads and processes), migrations."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmspell.core.errors import (
    HookExecutionError,
    NotJsonSafeError,
    OperationCancelled,
    StateConflictError,
    StateError,
)
from llmspell.events import UniversalEvent
from llmspell.hooks import HookContext
from llmspell.hooks.points import HookPoint
from llmspell.hooks.result import Cancel, Modified, Replace
from llmspell.runtime import StateScope, StateStore, System, SystemConfig
from llmspell.runtime.state import (
    SCHEMA_KEY,
    MemoryStateBackend,
    SQLiteStateBackend,
    StateBackend,
)
from tests.runtime.state_support import state, system

__all__ = ["state", "system"]  # fixtures

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def events(system: System) -> list[UniversalEvent]:
    seen: list[UniversalEvent] = []
    system.bus.subscribe("state.**", seen.append)
    return seen


# -- wiring ---------------------------------------------------------------------------------
async def test_system_picks_the_backend_from_the_config(tmp_path: Path) -> None:
    memory = System(SystemConfig(store="memory"))
    assert isinstance(memory.state.backend, MemoryStateBackend)
    disk = System(SystemConfig(data_dir=str(tmp_path)))
    assert isinstance(disk.state.backend, SQLiteStateBackend)
    assert (tmp_path / "state.db").exists()
    await disk.shutdown()
    with pytest.raises(StateError, match="closed"):
        disk.state.backend.get(StateScope.GLOBAL, "", "x")


async def test_an_explicit_backend_is_used_and_not_closed() -> None:
    backend = MemoryStateBackend()
    system = System(SystemConfig(store="memory"), state_backend=backend)
    assert system.state.backend is backend
    assert isinstance(backend, StateBackend)
    await system.start()
    await system.state.set("k", 1)
    await system.shutdown()
    assert backend.get(StateScope.GLOBAL, "", "k") is not None


# -- basic operations, both backends -------------------------------------------------------
async def test_get_set_delete_and_versions(state: StateStore, events: list[UniversalEvent]
                                           ) -> None:
    assert await state.get("missing") is None
    assert await state.get("missing", default=7) == 7
    first = await state.set("user", {"name": "ada", "tags": ["x"]})
    assert first.version == 1 and first.scope is StateScope.GLOBAL
    second = await state.set("user", {"name": "ada", "tags": ["x", "y"]})
    assert second.version == 2
    assert await state.get("user") == {"name": "ada", "tags": ["x", "y"]}
    entry = await state.entry("user")
    assert entry is not None and entry.version == 2
    assert await state.delete("user") is True
    assert await state.delete("user") is False
    assert await state.get("user") is None
    again = await state.set("user", 1)
    assert again.version == 3  # a deleted key continues after its last version (no reuse)
    kinds = [(e.event_type, e.data["key"], e.data["version"]) for e in events]
    assert kinds == [("state.global.changed", "user", 1), ("state.global.changed", "user", 2),
                     ("state.global.deleted", "user", None),
                     ("state.global.changed", "user", 3)]
    assert all("value" not in e.data for e in events)  # values may be secret


async def test_stored_values_are_copies(state: StateStore) -> None:
    value = {"items": [1]}
    await state.set("v", value)
    value["items"].append(2)
    got = await state.get("v")
    assert got == {"items": [1]}
    got["items"].append(3)
    assert await state.get("v") == {"items": [1]}


async def test_scopes_are_separate(state: StateStore) -> None:
    await state.set("k", "global")
    await state.set("k", "s1", scope="session", scope_id="s1")
    await state.set("k", "s2", scope=StateScope.SESSION, scope_id="s2")
    await state.set("k", "a", scope="agent", scope_id="bot")
    assert await state.get("k") == "global"
    assert await state.get("k", scope="session", scope_id="s1") == "s1"
    assert await state.get("k", scope="session", scope_id="s2") == "s2"
    assert await state.scopes("session") == ["s1", "s2"]
    assert await state.scopes("workflow") == []


async def test_keys_snapshot_restore(state: StateStore) -> None:
    for key, value in {"a.1": 1, "a.2": 2, "b": 3}.items():
        await state.set(key, value, scope="workflow", scope_id="w")
    assert await state.keys("workflow", "w") == ["a.1", "a.2", "b"]
    assert await state.keys("workflow", "w", prefix="a.") == ["a.1", "a.2"]
    snap = await state.snapshot("workflow", "w")
    assert snap == {"a.1": 1, "a.2": 2, "b": 3}
    await state.set("c", 4, scope="workflow", scope_id="w")
    await state.set("a.1", 100, scope="workflow", scope_id="w")
    await state.restore("workflow", "w", snap)
    assert await state.snapshot("workflow", "w") == snap
    await state.restore("workflow", "w", {"z": 0}, clear=False)
    assert await state.snapshot("workflow", "w") == {**snap, "z": 0}


async def test_reserved_keys_are_hidden_unless_asked(state: StateStore) -> None:
    await state.set("visible", 1)
    await state._put_raw(StateScope.GLOBAL, "", "__internal__", 2)
    assert await state.keys() == ["visible"]
    assert await state.keys(include_reserved=True) == ["__internal__", "visible"]
    assert await state.snapshot() == {"visible": 1}
    assert await state.snapshot(include_reserved=True) == {"__internal__": 2, "visible": 1}


async def test_expected_version_conflict(state: StateStore) -> None:
    await state.set("n", 1)
    entry = await state.set("n", 2, expected_version=1)
    assert entry.version == 2
    with pytest.raises(StateConflictError) as info:
        await state.set("n", 3, expected_version=1)
    assert (info.value.key, info.value.expected, info.value.actual) == ("n", 1, 2)
    assert info.value.hint and "retry" in info.value.hint
    assert await state.get("n") == 2
    # 0 means "must not exist yet"
    created = await state.set("fresh", "x", expected_version=0)
    assert created.version == 1
    with pytest.raises(StateConflictError):
        await state.set("fresh", "y", expected_version=0)
    with pytest.raises(StateConflictError):
        await state.delete("n", expected_version=1)
    assert await state.delete("n", expected_version=2) is True


async def test_validation_errors_are_clear(state: StateStore) -> None:
    with pytest.raises(StateError, match="non-empty string"):
        await state.set("", 1)
    with pytest.raises(StateError, match="non-empty string"):
        await state.get(3)  # type: ignore[arg-type]
    with pytest.raises(StateError, match="unknown state scope 'sesion'") as info:
        await state.get("k", scope="sesion")
    assert info.value.hint == "use one of: global, session, workflow, agent"
    with pytest.raises(StateError, match="needs a scope_id"):
        await state.set("k", 1, scope="session")
    with pytest.raises(StateError, match="takes no scope_id"):
        await state.set("k", 1, scope_id="x")
    with pytest.raises(StateError, match="expected_version"):
        await state.set("k", 1, expected_version=-1)
    with pytest.raises(NotJsonSafeError) as bad:
        await state.set("cfg", {"items": [1, {"when": object()}]})
    assert bad.value.path == "cfg.items[1].when"
    with pytest.raises(NotJsonSafeError):
        await state.restore("global", "", {"k": float("nan")})
    assert await state.keys() == []


async def test_a_bad_file_is_a_clear_state_error(tmp_path: Path) -> None:
    bad = tmp_path / "state.db"
    bad.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StateError, match="cannot open the state database") as info:
        SQLiteStateBackend(bad)
    assert info.value.hint and "not an SQLite database" in info.value.hint
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE state (a TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(StateError, match="not an llmspell state table"):
        SQLiteStateBackend(other)


async def test_lone_surrogates_and_a_restore_of_no_mapping_are_typed_refusals(
        state: StateStore) -> None:
    with pytest.raises(StateError, match="lone surrogate") as key_error:
        await state.set("half\ud800", 1)
    assert key_error.value.hint
    with pytest.raises(StateError, match="takes a mapping"):
        await state.restore("global", "", "not a mapping")  # type: ignore[arg-type]
    assert await state.keys() == []


async def test_a_value_sqlite_cannot_encode_is_named_not_a_unicode_error(
        tmp_path: Path) -> None:
    async with System(SystemConfig(data_dir=str(tmp_path))) as system:
        with pytest.raises(NotJsonSafeError, match="lone surrogate") as info:
            await system.state.set("note", {"text": ["ok", "half \udc80 of a pair"]})
        assert info.value.path == "note.text[1]"
        assert await system.state.keys() == []


async def test_a_damaged_stored_value_is_a_state_error_and_can_be_deleted(
        tmp_path: Path) -> None:
    async with System(SystemConfig(data_dir=str(tmp_path))) as system:
        await system.state.set("good", 1)
        await system.state.set("bad", {"a": 1})
    conn = sqlite3.connect(tmp_path / "state.db")
    conn.execute("UPDATE state SET value = x'ff00ff' WHERE key = 'bad'")
    conn.commit()
    conn.close()
    async with System(SystemConfig(data_dir=str(tmp_path))) as system:
        with pytest.raises(StateError, match=r"'bad' .* is damaged") as info:
            await system.state.get("bad")
        assert info.value.hint and "delete the key" in info.value.hint
        with pytest.raises(StateError, match="damaged"):
            await system.state.snapshot()
        assert await system.state.get("good") == 1
        assert await system.state.delete("bad")
        assert await system.state.snapshot() == {"good": 1}


async def test_sqlite_state_survives_a_new_system(tmp_path: Path) -> None:
    async with System(SystemConfig(data_dir=str(tmp_path))) as first:
        await first.state.set("kept", {"a": 1}, scope="agent", scope_id="bot")
    async with System(SystemConfig(data_dir=str(tmp_path))) as second:
        entry = await second.state.entry("kept", scope="agent", scope_id="bot")
        assert entry is not None and entry.value == {"a": 1} and entry.version == 1


# -- hooks ----------------------------------------------------------------------------------
async def test_every_state_point_fires_with_key_scope_and_value(system: System) -> None:
    seen: list[tuple[str, dict[str, Any], str]] = []

    def record(ctx: HookContext) -> None:
        seen.append((str(ctx.point), dict(ctx.data), ctx.correlation_id))

    for point in (HookPoint.BEFORE_STATE_READ, HookPoint.AFTER_STATE_READ,
                  HookPoint.BEFORE_STATE_WRITE, HookPoint.AFTER_STATE_WRITE):
        system.registry.register(point, record, name=f"rec-{point}")
    await system.state.set("k", {"v": 1}, scope="agent", scope_id="a1")
    assert await system.state.get("k", scope="agent", scope_id="a1") == {"v": 1}
    points = [p for p, _, _ in seen]
    assert points == ["before_state_write", "after_state_write", "before_state_read",
                      "after_state_read"]
    before_write, after_write, before_read, after_read = (d for _, d, _ in seen)
    assert before_write["key"] == "k" and before_write["scope"] == "agent"
    assert before_write["scope_id"] == "a1" and before_write["value"] == {"v": 1}
    assert after_write["version"] == 1 and after_write["value"] == {"v": 1}
    assert before_read["key"] == "k" and before_read["value"] is None
    assert after_read["value"] == {"v": 1} and after_read["version"] == 1
    # a parent context's correlation id is shared
    parent = HookContext(point="custom", component=system.state._component(
        StateScope.GLOBAL, "", "x"), correlation_id="corr-1")
    await system.state.set("k2", 1, parent=parent)
    assert seen[-1][2] == "corr-1"


async def test_cancel_vetoes_reads_and_writes(system: System) -> None:
    await system.state.set("secret", "s3cr3t")
    system.registry.register(
        HookPoint.BEFORE_STATE_READ,
        lambda ctx: Cancel("no reading secrets") if ctx.data["key"] == "secret" else None,
        name="guard-read")
    with pytest.raises(OperationCancelled, match="no reading secrets") as info:
        await system.state.get("secret")
    assert info.value.hook == "guard-read"
    system.registry.register(
        HookPoint.BEFORE_STATE_WRITE,
        lambda ctx: Cancel("read-only") if ctx.data["key"].startswith("ro.") else None,
        name="guard-write")
    with pytest.raises(OperationCancelled, match="read-only"):
        await system.state.set("ro.x", 1)
    with pytest.raises(OperationCancelled):
        await system.state.delete("ro.x")
    assert await system.state.keys() == ["secret"]


async def test_modified_transforms_the_value_written(system: System) -> None:
    def normalise(ctx: HookContext) -> Modified | None:
        if isinstance(ctx.data["value"], str):
            return Modified({**ctx.data, "value": ctx.data["value"].strip().lower()})
        return None

    system.registry.register(HookPoint.BEFORE_STATE_WRITE, normalise, name="normalise")
    entry = await system.state.set("email", "  Ada@Example.COM ")
    assert entry.value == "ada@example.com"
    assert await system.state.get("email") == "ada@example.com"
    system.registry.register(HookPoint.BEFORE_STATE_WRITE,
                             lambda ctx: Modified({**ctx.data, "value": object()}),
                             name="broken", priority="low")
    with pytest.raises(NotJsonSafeError):
        await system.state.set("email", "x")


async def test_after_read_redacts_the_value_returned(system: System) -> None:
    await system.state.set("api_key", "sk-123456")
    await system.state.set("plain", "hello")

    def redact(ctx: HookContext) -> Modified | None:
        if ctx.data["key"].endswith("_key") and ctx.data["value"] is not None:
            return Modified({**ctx.data, "value": "***"})
        return None

    system.registry.register(HookPoint.AFTER_STATE_READ, redact, name="redact")
    assert await system.state.get("api_key") == "***"
    entry = await system.state.entry("api_key")
    assert entry is not None and entry.value == "***" and entry.version == 1
    assert await system.state.get("plain") == "hello"
    assert await system.state.snapshot() == {"api_key": "***", "plain": "hello"}
    # the stored value is untouched
    stored = system.state.backend.get(StateScope.GLOBAL, "", "api_key")
    assert stored is not None and stored.value == "sk-123456"


async def test_state_conflict_fires_and_replace_resolves(system: System) -> None:
    await system.state.set("counter", {"n": 1, "by": ["a"]})
    await system.state.set("counter", {"n": 2, "by": ["a", "b"]})
    seen: list[dict[str, Any]] = []

    def merge(ctx: HookContext) -> Replace:
        seen.append(dict(ctx.data))
        current, mine = ctx.data["current"], ctx.data["value"]
        return Replace({"n": current["n"] + 1, "by": current["by"] + mine["by"][-1:]})

    system.registry.register(HookPoint.STATE_CONFLICT, merge, name="merge")
    entry = await system.state.set("counter", {"n": 2, "by": ["a", "c"]}, expected_version=1)
    assert entry.version == 3
    assert entry.value == {"n": 3, "by": ["a", "b", "c"]}
    (data,) = seen
    assert data["key"] == "counter" and data["scope"] == "global"
    assert (data["expected"], data["actual"]) == (1, 2)
    assert data["value"] == {"n": 2, "by": ["a", "c"]}
    assert data["current"] == {"n": 2, "by": ["a", "b"]}


async def test_state_conflict_modified_resolves_too(system: System) -> None:
    await system.state.set("x", 1)
    await system.state.set("x", 2)
    system.registry.register(HookPoint.STATE_CONFLICT,
                             lambda ctx: Modified({**ctx.data, "value": "mine-wins"}),
                             name="mine")
    entry = await system.state.set("x", 10, expected_version=1)
    assert (entry.value, entry.version) == ("mine-wins", 3)


async def test_unresolved_conflict_raises(system: System) -> None:
    await system.state.set("x", 1)
    await system.state.set("x", 2)
    fired: list[str] = []
    system.registry.register(HookPoint.STATE_CONFLICT,
                             lambda ctx: fired.append(ctx.data["key"]), name="observer")
    with pytest.raises(StateConflictError) as info:
        await system.state.set("x", 3, expected_version=1)
    assert (info.value.expected, info.value.actual) == (1, 2)
    assert fired == ["x"]
    assert await system.state.get("x") == 2


async def test_a_point_without_hooks_builds_no_context(system: System) -> None:
    calls: list[str] = []
    real = system.dispatch

    async def spy(point: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(point)
        return await real(point, *args, **kwargs)

    system.dispatch = spy  # type: ignore[method-assign]
    await system.state.set("k", 1)
    await system.state.get("k")
    assert calls == []


# -- concurrency ------------------------------------------------------------------------------
def _increment_worker(path: Path, key: str, rounds: int, results: dict[str, int],
                      lock: threading.Lock, barrier: threading.Barrier) -> None:
    """Read-modify-write ``rounds`` times through a StateStore on its own loop and its own
    connection; count wins and conflicts."""

    async def run() -> tuple[int, int]:
        system = System(SystemConfig(store="none"), state_backend=SQLiteStateBackend(path))
        wins = conflicts = 0
        barrier.wait()
        for _ in range(rounds):
            entry = await system.state.entry(key)
            assert entry is not None
            try:
                await system.state.set(key, entry.value + 1, expected_version=entry.version)
                wins += 1
            except StateConflictError:
                conflicts += 1
        system.state.backend.close()
        return wins, conflicts

    wins, conflicts = asyncio.run(run())
    with lock:
        results["wins"] += wins
        results["conflicts"] += conflicts


def test_concurrent_writers_exactly_one_wins_per_version(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    setup = SQLiteStateBackend(path)
    setup.put(StateScope.GLOBAL, "", "counter", 0, None, 0.0)
    results = {"wins": 0, "conflicts": 0}
    lock = threading.Lock()
    barrier = threading.Barrier(8)
    rounds = 25
    threads = [threading.Thread(target=_increment_worker,
                                args=(path, "counter", rounds, results, lock, barrier))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    entry = setup.get(StateScope.GLOBAL, "", "counter")
    assert entry is not None
    assert results["wins"] + results["conflicts"] == 8 * rounds
    assert results["conflicts"] > 0  # they really raced
    assert entry.value == results["wins"]  # nothing silently overwritten
    assert entry.version == results["wins"] + 1
    setup.close()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_shared_backend_cas_from_threads(kind: str, tmp_path: Path) -> None:
    backend: MemoryStateBackend | SQLiteStateBackend = (
        MemoryStateBackend() if kind == "memory" else SQLiteStateBackend(tmp_path / "s.db"))
    backend.put(StateScope.GLOBAL, "", "n", 0, None, 0.0)
    wins: list[int] = []
    failures: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(50):
            entry = backend.get(StateScope.GLOBAL, "", "n")
            assert entry is not None
            new = backend.put(StateScope.GLOBAL, "", "n", entry.value + 1, entry.version, 1.0)
            with lock:
                (wins if new is not None else failures).append(entry.version)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    final = backend.get(StateScope.GLOBAL, "", "n")
    assert final is not None and final.value == len(wins)
    assert sorted(wins) == list(range(1, len(wins) + 1))  # one winner per version
    assert len(wins) + len(failures) == 400
    backend.close()


async def test_concurrent_tasks_on_one_store(state: StateStore) -> None:
    await state.set("n", 0)
    outcomes: list[bool] = []

    async def bump() -> None:
        entry = await state.entry("n")
        assert entry is not None
        await asyncio.sleep(0)
        try:
            await state.set("n", entry.value + 1, expected_version=entry.version)
            outcomes.append(True)
        except StateConflictError:
            outcomes.append(False)

    await asyncio.gather(*(bump() for _ in range(20)))
    assert await state.get("n") == outcomes.count(True) >= 1


_PROCESS_WORKER = textwrap.dedent("""
    import sys
    from llmspell.runtime.state import SQLiteStateBackend, StateScope
    backend = SQLiteStateBackend(sys.argv[1])
    wins = conflicts = 0
    for _ in range(int(sys.argv[2])):
        entry = backend.get(StateScope.GLOBAL, "", "counter")
        new = backend.put(StateScope.GLOBAL, "", "counter", entry.value + 1, entry.version, 0.0)
        if new is None:
            conflicts += 1
        else:
            wins += 1
    backend.close()
    print(wins, conflicts)
""")


def test_two_processes_compare_and_set_on_one_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    backend = SQLiteStateBackend(path)
    backend.put(StateScope.GLOBAL, "", "counter", 0, None, 0.0)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    procs = [subprocess.Popen([sys.executable, "-c", _PROCESS_WORKER, str(path), "200"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]
    total_wins = total = 0
    for proc in procs:
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
        wins, conflicts = map(int, out.split())
        total_wins += wins
        total += wins + conflicts
    entry = backend.get(StateScope.GLOBAL, "", "counter")
    assert entry is not None
    assert total == 400
    assert entry.value == total_wins and entry.version == total_wins + 1
    backend.close()


# -- migrations ---------------------------------------------------------------------------------
def _rename_user(values: dict[str, Any]) -> dict[str, Any]:
    out = dict(values)
    if "username" in out:
        out["user"] = {"name": out.pop("username")}
    return out


def _add_tier(values: dict[str, Any]) -> dict[str, Any]:
    return {**values, "tier": "free"}


async def test_migrations_run_in_order_with_hooks(system: System) -> None:
    state = system.state
    await state.set("username", "ada", scope="agent", scope_id="bot")
    await state.set("other", 1, scope="agent", scope_id="bot")
    state.register_migration(2, _add_tier, scope="agent")
    state.register_migration(1, _rename_user)
    seen: list[tuple[int, int, dict[str, Any]]] = []

    def watch(ctx: HookContext) -> None:
        seen.append((ctx.data["from_version"], ctx.data["to_version"], ctx.data["values"]))
        assert ctx.data["scope"] == "agent" and ctx.data["scope_id"] == "bot"

    system.registry.register(HookPoint.STATE_MIGRATION, watch, name="watch")
    assert await state.schema_version("agent", "bot") == 0
    assert await state.migrate("agent", "bot") == 2
    assert [(f, t) for f, t, _ in seen] == [(0, 1), (1, 2)]
    assert seen[0][2] == {"user": {"name": "ada"}, "other": 1}
    assert await state.snapshot("agent", "bot") == {"user": {"name": "ada"}, "other": 1,
                                                    "tier": "free"}
    assert SCHEMA_KEY in await state.keys("agent", "bot", include_reserved=True)
    assert SCHEMA_KEY not in await state.keys("agent", "bot")
    assert await state.migrate("agent", "bot") == 2  # nothing pending
    assert len(seen) == 2
    # the agent-only step does not apply to the global scope
    assert await state.migrate() == 1


async def test_migration_cancel_stops_and_modified_replaces(system: System) -> None:
    state = system.state
    await state.set("a", 1)
    state.register_migration(1, lambda v: {**v, "b": 2})
    state.register_migration(2, lambda v: {**v, "c": 3})

    def hook(ctx: HookContext) -> Cancel | Modified:
        if ctx.data["to_version"] == 1:
            return Modified({**ctx.data, "values": {**ctx.data["values"], "hooked": True}})
        return Cancel("not yet")

    system.registry.register(HookPoint.STATE_MIGRATION, hook, name="gate")
    with pytest.raises(OperationCancelled, match="not yet"):
        await state.migrate()
    assert await state.schema_version() == 1
    assert await state.snapshot() == {"a": 1, "b": 2, "hooked": True}


async def test_migration_errors(system: System) -> None:
    state = system.state
    with pytest.raises(StateError, match=">= 1"):
        state.register_migration(0, _add_tier)
    state.register_migration(1, _add_tier)
    with pytest.raises(StateError, match="already registered"):
        state.register_migration(1, _add_tier)

    def broken(values: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("oops")

    state.register_migration(2, broken)
    with pytest.raises(StateError, match="to version 2 failed") as info:
        await state.migrate()
    assert info.value.hint and "stays at version 1" in info.value.hint
    assert await state.schema_version() == 1


@pytest.fixture
def sqlite_pair(tmp_path: Path) -> Iterator[tuple[SQLiteStateBackend, SQLiteStateBackend]]:
    a, b = SQLiteStateBackend(tmp_path / "m.db"), SQLiteStateBackend(tmp_path / "m.db")
    yield a, b
    a.close()
    b.close()


def test_apply_is_guarded(sqlite_pair: tuple[SQLiteStateBackend, SQLiteStateBackend]) -> None:
    a, b = sqlite_pair
    g = StateScope.GLOBAL
    assert a.apply(g, "", {"x": 1, SCHEMA_KEY: 1}, [], (SCHEMA_KEY, 0), 0.0)
    assert not b.apply(g, "", {"x": 2, SCHEMA_KEY: 1}, [], (SCHEMA_KEY, 0), 0.0)
    assert b.apply(g, "", {SCHEMA_KEY: 2}, ["x"], (SCHEMA_KEY, 1), 0.0)
    assert a.keys(g, "") == [SCHEMA_KEY]


async def test_cancel_at_after_state_write_is_ignored_and_the_event_goes_out(
    system: System, caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[UniversalEvent] = []
    system.bus.subscribe("state.**", seen.append)
    system.registry.register(HookPoint.AFTER_STATE_WRITE,
                             lambda ctx: Cancel("too late to object"), name="objector")
    with caplog.at_level("WARNING", logger="llmspell.state"):
        entry = await system.state.set("k", 1)  # no OperationCancelled: it is told only
        assert await system.state.delete("k")
    assert entry.version == 1
    await system.bus.drain()
    assert [e.event_type for e in seen] == ["state.global.changed", "state.global.deleted"]
    assert "objector" in caplog.text and "too late to object" in caplog.text


async def test_a_raising_after_state_write_hook_still_lets_the_event_out(
    system: System,
) -> None:
    seen: list[UniversalEvent] = []
    system.bus.subscribe("state.**", seen.append)

    def boom(ctx: HookContext) -> None:
        raise RuntimeError("audit sink down")

    system.registry.register(HookPoint.AFTER_STATE_WRITE, boom, name="strict",
                             error_policy="raise")
    with pytest.raises(HookExecutionError):
        await system.state.set("k", 1)
    assert await system.state.get("k") == 1  # written, and said so
    await system.bus.drain()
    assert [e.event_type for e in seen] == ["state.global.changed"]


async def test_cancel_at_state_conflict_raises_state_conflict_error(system: System) -> None:
    await system.state.set("x", 1)
    await system.state.set("x", 2)
    system.registry.register(HookPoint.STATE_CONFLICT,
                             lambda ctx: Cancel("refusing to merge"), name="strict")
    with pytest.raises(StateConflictError) as info:
        await system.state.set("x", 3, expected_version=1)
    assert (info.value.expected, info.value.actual) == (1, 2)
    cause = info.value.__cause__
    assert isinstance(cause, OperationCancelled)
    assert cause.hook == "strict" and cause.reason == "refusing to merge"
    assert await system.state.get("x") == 2
