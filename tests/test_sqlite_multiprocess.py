"""Several real processes (spawned, not threads) sharing llmspell's SQLite files: one event
store written by two processes while a third reads it, one state file under compare-and-set
from two processes, and a file deleted or replaced under a process that has it open."""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import pytest

from llmspell.errors import StateConflictError, StateError, StoreError
from llmspell.events import UniversalEvent
from llmspell.events.store import SQLiteStore
from llmspell.events.store.sqlite import SQLiteStoreReader
from llmspell.runtime import StateScope, System, SystemConfig
from llmspell.runtime.state import SQLiteStateBackend

_SPAWN = multiprocessing.get_context("spawn")
_EVENTS = 1500  # per writer process


def _payload(writer: str, i: int) -> dict[str, Any]:
    """Data whose integrity a reader can check (a half-written row would not match)."""
    pad = "x" * (i % 97)
    digest = hashlib.sha256(f"{writer}:{i}:{pad}".encode()).hexdigest()[:16]
    return {"writer": writer, "i": i, "pad": pad, "digest": digest}


def _write_events(path: str, writer: str, start: Any, out: Any) -> None:
    try:
        store = SQLiteStore(path, flush_interval=0.005)
        start.wait(60)
        for i in range(_EVENTS):
            store.append(UniversalEvent.create(f"work.{writer}.step", _payload(writer, i),
                                               correlation_id=writer))
            if i % 50 == 49:
                store.flush()  # many small commits, interleaving with the other writer
        store.close()
        out.put((writer, "ok", None))
    except BaseException as exc:  # reported to the parent, which fails the test
        out.put((writer, "error", f"{type(exc).__module__}.{type(exc).__name__}: {exc}"))


def _follow_events(path: str, start: Any, out: Any) -> None:
    """Follow the store by position while the writers write, as `llmspell events tail` does,
    checking every row it sees; also query newest-first on the side."""
    try:
        start.wait(60)
        deadline = time.monotonic() + 60
        while not Path(path).exists():
            time.sleep(0.01)
        reader = SQLiteStoreReader(path)
        seen: list[tuple[int, str, int]] = []
        last = 0
        while len(seen) < 2 * _EVENTS and time.monotonic() < deadline:
            for position, event in reader.read_after(last, limit=500):
                data = event.data
                assert data == _payload(data["writer"], data["i"]), data
                assert position > last
                last = position
                seen.append((position, data["writer"], data["i"]))
            newest = reader.query(pattern="work.*.step", descending=True, limit=5)
            assert all(e.data == _payload(e.data["writer"], e.data["i"]) for e in newest)
            time.sleep(0.002)
        reader.close()
        out.put(("reader", "ok", seen))
    except BaseException as exc:
        out.put(("reader", "error", f"{type(exc).__module__}.{type(exc).__name__}: {exc}"))


def _run_all(targets: list[tuple[Any, tuple[Any, ...]]], parties: int) -> dict[str, Any]:
    start = _SPAWN.Barrier(parties)
    out = _SPAWN.Queue()
    procs = [_SPAWN.Process(target=target, args=(*args, start, out)) for target, args in targets]
    for proc in procs:
        proc.start()
    try:
        results = [out.get(timeout=120) for _ in procs]
    finally:
        for proc in procs:
            proc.join(30)
    errors = [r for r in results if r[1] != "ok"]
    assert not errors, errors
    return {name: value for name, _, value in results}


def test_two_writers_and_a_reader_share_one_event_store(tmp_path: Path) -> None:
    path = str(tmp_path / "events.db")
    results = _run_all([(_write_events, (path, "a")), (_write_events, (path, "b")),
                        (_follow_events, (path,))], parties=3)
    with SQLiteStoreReader(path) as reader:
        rows = reader.read_after(0, limit=10 * _EVENTS)
        newest = reader.query(descending=True, limit=1)
    # Nothing lost, nothing doubled; each writer's events in its own order.
    assert len(rows) == 2 * _EVENTS
    for writer in ("a", "b"):
        mine = [event.data["i"] for _, event in rows if event.data["writer"] == writer]
        assert mine == list(range(_EVENTS))
    # Store-wide order is position order, and newest-first returns the last committed.
    positions = [position for position, _ in rows]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert newest[0].id == rows[-1][1].id
    # The follower saw every row exactly once, in position order, each one whole.
    seen = results["reader"]
    assert [p for p, _, _ in seen] == positions


def _cas_worker(path: str, name: str, rounds: int, start: Any, out: Any) -> None:
    try:
        backend = SQLiteStateBackend(path)
        start.wait(60)
        wins: list[int] = []
        conflicts = 0
        for _ in range(rounds):
            entry = backend.get(StateScope.GLOBAL, "", "counter")
            assert entry is not None
            new = backend.put(StateScope.GLOBAL, "", "counter", entry.value + 1,
                              entry.version, 0.0)
            if new is None:
                conflicts += 1
            else:
                wins.append(new.version)
            # A key of its own, written without a version check, beside the contended one.
            backend.put(StateScope.GLOBAL, "", f"own.{name}", len(wins), None, 0.0)
        backend.close()
        out.put((name, "ok", (wins, conflicts)))
    except BaseException as exc:
        out.put((name, "error", f"{type(exc).__module__}.{type(exc).__name__}: {exc}"))


def test_compare_and_set_holds_across_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    backend = SQLiteStateBackend(path)
    backend.put(StateScope.GLOBAL, "", "counter", 0, None, 0.0)
    results = _run_all([(_cas_worker, (path, "a", 150)), (_cas_worker, (path, "b", 150))],
                       parties=2)
    (wins_a, _), (wins_b, _) = results["a"], results["b"]
    # Every version was won by exactly one process, and no increment was lost.
    assert sorted(wins_a + wins_b) == list(range(2, len(wins_a) + len(wins_b) + 2))
    entry = backend.get(StateScope.GLOBAL, "", "counter")
    assert entry is not None and entry.value == len(wins_a) + len(wins_b)
    for name, wins in (("a", wins_a), ("b", wins_b)):
        own = backend.get(StateScope.GLOBAL, "", f"own.{name}")
        assert own is not None and own.value == len(wins) and own.version == 150
    backend.close()


def _conflicting_set(data_dir: str, name: str, start: Any, out: Any) -> None:
    async def main() -> str:
        async with System(SystemConfig(data_dir=data_dir)) as system:
            start.wait(60)
            try:
                await system.state.set("owner", name, expected_version=1)
            except StateConflictError as exc:
                return f"conflict {exc.expected} {exc.actual}"
            return "won"

    try:
        out.put((name, "ok", asyncio.run(main())))
    except BaseException as exc:
        out.put((name, "error", f"{type(exc).__module__}.{type(exc).__name__}: {exc}"))


def test_two_processes_setting_one_key_at_one_version_one_wins(tmp_path: Path) -> None:
    async def seed() -> None:
        async with System(SystemConfig(data_dir=str(tmp_path))) as system:
            await system.state.set("owner", "nobody")

    asyncio.run(seed())
    results = _run_all([(_conflicting_set, (str(tmp_path), "a")),
                        (_conflicting_set, (str(tmp_path), "b"))], parties=2)
    assert sorted(results.values()) == ["conflict 1 2", "won"]
    winner = next(name for name, outcome in results.items() if outcome == "won")

    async def check() -> tuple[Any, int]:
        async with System(SystemConfig(data_dir=str(tmp_path))) as system:
            entry = await system.state.entry("owner")
            assert entry is not None
            return entry.value, entry.version

    assert asyncio.run(check()) == (winner, 2)


def _remove_store_files(path: str) -> None:
    """Another process deletes the store (its -wal and -shm too), then a new worker
    creates a fresh file at the same path and writes one event."""
    for name in (path, path + "-wal", path + "-shm"):
        if os.path.exists(name):
            os.unlink(name)
    fresh = SQLiteStore(path)
    fresh.append(UniversalEvent.create("work.fresh"))
    fresh.close()


def _in_another_process(target: Any, *args: Any) -> None:
    proc = _SPAWN.Process(target=target, args=args)
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0


def test_an_event_store_file_deleted_under_a_writer_is_reported_not_written_into(
        tmp_path: Path) -> None:
    path = str(tmp_path / "events.db")
    store = SQLiteStore(path, retry_delay=0.01, max_retry_delay=0.02)
    store.append(UniversalEvent.create("work.before"))
    store.flush()
    _in_another_process(_remove_store_files, path)
    accepted = [UniversalEvent.create("work.after", {"i": i}) for i in range(3)]
    for event in accepted:
        store.append(event)
    # Before the fix these "committed" into the deleted file and were gone without a word.
    with pytest.raises(StoreError, match="deleted or replaced") as caught:
        store.flush(timeout=10)
    assert "unwritten_events()" in (caught.value.hint or "")
    assert [e.id for e in store.unwritten_events()] == [e.id for e in accepted]
    with pytest.raises(StoreError, match="3 accepted events unwritten"):
        store.close(timeout=1)
    left = store.abandon()
    with SQLiteStore(path) as fresh:  # they can still be written where the file is now
        fresh.append_many(left)
    with SQLiteStoreReader(path) as reader:
        assert [e.event_type for e in reader.query()] == ["work.fresh", *["work.after"] * 3]


def test_a_state_file_deleted_under_a_writer_refuses_its_writes(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    backend = SQLiteStateBackend(path)
    backend.put(StateScope.GLOBAL, "", "owner", "a", None, 0.0)
    _in_another_process(_remove_and_claim_state, path)
    # The new file says "b" at version 1; a compare-and-set at version 1 against the old,
    # deleted file would have "won" where no other process can see it.
    with pytest.raises(StateError, match="deleted or replaced") as caught:
        backend.put(StateScope.GLOBAL, "", "owner", "a2", 1, 0.0)
    assert "restart" in (caught.value.hint or "")
    for write in (lambda: backend.delete(StateScope.GLOBAL, "", "owner", None),
                  lambda: backend.apply(StateScope.GLOBAL, "", {"x": 1}, [], None, 0.0)):
        with pytest.raises(StateError, match="deleted or replaced"):
            write()
    backend.close()
    fresh = SQLiteStateBackend(path)
    entry = fresh.get(StateScope.GLOBAL, "", "owner")
    assert entry is not None and (entry.value, entry.version) == ("b", 1)
    assert fresh.get(StateScope.GLOBAL, "", "x") is None
    fresh.close()


def _remove_and_claim_state(path: str) -> None:
    for name in (path, path + "-wal", path + "-shm"):
        if os.path.exists(name):
            os.unlink(name)
    backend = SQLiteStateBackend(path)
    backend.put(StateScope.GLOBAL, "", "owner", "b", None, 0.0)
    backend.close()


def _record_runs(data_dir: str, name: str, start: Any, out: Any) -> None:
    async def main() -> list[str]:
        ids = []
        async with System(SystemConfig(data_dir=data_dir)) as system:
            start.wait(60)
            for i in range(5):
                async with system.runs.start("job", name, {"i": i}) as run:
                    ids.append(run.run_id)
        return ids

    try:
        out.put((name, "ok", asyncio.run(main())))
    except BaseException as exc:
        out.put((name, "error", f"{type(exc).__module__}.{type(exc).__name__}: {exc}"))


def test_runs_recorded_at_once_by_two_processes_are_all_listed(tmp_path: Path) -> None:
    results = _run_all([(_record_runs, (str(tmp_path), "a")),
                        (_record_runs, (str(tmp_path), "b"))], parties=2)

    async def listed() -> list[Any]:
        async with System(SystemConfig(data_dir=str(tmp_path))) as system:
            return system.runs.list()

    runs = asyncio.run(listed())
    assert sorted(r.run_id for r in runs) == sorted(results["a"] + results["b"])
    for name in ("a", "b"):  # newest first: each process's runs in reverse order
        assert [r.run_id for r in runs if r.name == name] == results[name][::-1]
    assert len({r.pid for r in runs}) == 2


def _delete_store_files(path: str) -> None:
    for name in (path, path + "-wal", path + "-shm"):
        if os.path.exists(name):
            os.unlink(name)


def test_a_reader_follows_a_store_file_replaced_and_reports_one_deleted(
        tmp_path: Path) -> None:
    path = str(tmp_path / "events.db")
    writer = SQLiteStore(path)
    writer.append(UniversalEvent.create("work.old"))
    writer.flush()
    reader = SQLiteStoreReader(path)  # reads through the writer's -wal: live
    assert [e.event_type for _, e in reader.read_after(0)] == ["work.old"]
    writer.close()
    # Before the fix the reader went on reading the deleted file: stale, without a word.
    _in_another_process(_remove_store_files, path)
    assert [e.event_type for _, e in reader.read_after(0)] == ["work.fresh"]
    _in_another_process(_delete_store_files, path)
    with pytest.raises(StoreError, match="deleted") as caught:
        reader.read_after(0)
    assert caught.value.hint
    reader.close()


def test_a_relative_path_keeps_working_after_a_chdir(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    store = SQLiteStore("events.db")
    backend = SQLiteStateBackend("state.db")
    reader_store = SQLiteStore("events.db")
    reader_store.append(UniversalEvent.create("work.first"))
    reader_store.close()
    reader = SQLiteStoreReader("events.db")
    monkeypatch.chdir(tmp_path / "elsewhere")  # the files did not move: no false alarm
    store.append(UniversalEvent.create("work.after_chdir"))
    store.flush()
    assert backend.put(StateScope.GLOBAL, "", "k", 1, None, 0.0) is not None
    assert [e.event_type for _, e in reader.read_after(0)] == ["work.first", "work.after_chdir"]
    reader.close()
    store.close()
    backend.close()
