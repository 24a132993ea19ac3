"""State reads from an SQLite file another process deleted or replaced: they raise the
``StateError`` a write raises, instead of serving the old, unlinked file's values (a live
connection goes on reading it, so a process kept seeing values no longer on disk)."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmspell.errors import StateError
from llmspell.runtime import StateScope, System, SystemConfig
from llmspell.runtime.state import SQLiteStateBackend

_G = StateScope.GLOBAL
_SPAWN = multiprocessing.get_context("spawn")


def _remove(path: Path | str) -> None:
    for name in (str(path), f"{path}-wal", f"{path}-shm"):
        if os.path.exists(name):
            os.unlink(name)


def _replace(path: str, value: str) -> None:
    """Delete the state file and make a new one at the path holding ``value`` under "k"."""
    _remove(path)
    backend = SQLiteStateBackend(path)
    backend.put(_G, "", "k", value, None, 0.0)
    backend.close()


def _reads(backend: SQLiteStateBackend) -> list[Callable[[], Any]]:
    return [lambda: backend.get(_G, "", "k"), lambda: backend.keys(_G, ""),
            lambda: backend.items(_G, ""), lambda: backend.scopes(_G)]


def _assert_refused(backend: SQLiteStateBackend) -> None:
    for read in _reads(backend):
        with pytest.raises(StateError, match="deleted or replaced") as caught:
            read()
        assert "nothing was read" in str(caught.value)
        assert "restart" in (caught.value.hint or "")


def test_reads_of_a_deleted_file_raise_as_writes_do(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    backend = SQLiteStateBackend(path)
    backend.put(_G, "", "k", "old", None, 0.0)
    _remove(path)
    # Before the fix these read "old" from the unlinked file, which a write refuses.
    _assert_refused(backend)
    with pytest.raises(StateError, match="deleted or replaced"):
        backend.put(_G, "", "k", "x", None, 0.0)
    _assert_refused(backend)  # still refused: nothing came back at the path
    backend.close()


def test_reads_of_a_file_replaced_by_another_value_raise(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    backend = SQLiteStateBackend(path)
    backend.put(_G, "", "k", "old", None, 0.0)
    _replace(str(path), "new")
    _assert_refused(backend)  # it read "old", which no other process can see any more
    backend.close()
    fresh = SQLiteStateBackend(path)
    entry = fresh.get(_G, "", "k")
    assert entry is not None and (entry.value, entry.version) == ("new", 1)
    fresh.close()


def test_the_read_after_a_refused_write_raises_at_once(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    backend = SQLiteStateBackend(path)  # the default interval: reads check now and then
    backend.put(_G, "", "k", "old", None, 0.0)
    entry = backend.get(_G, "", "k")
    assert entry is not None and entry.value == "old"
    _replace(str(path), "new")
    with pytest.raises(StateError, match="deleted or replaced"):
        backend.put(_G, "", "k", "x", 1, 0.0)
    # The write saw the file change: reads agree now, without waiting for their own check.
    _assert_refused(backend)
    backend.close()


def test_a_file_replaced_by_another_process_is_seen_by_the_next_read(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    backend = SQLiteStateBackend(path)
    backend.put(_G, "", "k", "a", None, 0.0)
    proc = _SPAWN.Process(target=_replace, args=(path, "b"))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    _assert_refused(backend)
    backend.close()


def test_with_interval_zero_every_read_checks(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    backend = SQLiteStateBackend(path, file_check_interval=0)
    backend.put(_G, "", "k", "a", None, 0.0)
    for _ in range(3):  # the file in place: no false alarm
        entry = backend.get(_G, "", "k")
        assert entry is not None and entry.value == "a"
    assert backend.keys(_G, "") == ["k"]
    proc = _SPAWN.Process(target=_replace, args=(path, "b"))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    _assert_refused(backend)  # the read right after, though reads checked a moment ago
    backend.close()


def test_reads_keep_working_after_a_chdir(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    backend = SQLiteStateBackend("state.db", file_check_interval=0)
    backend.put(_G, "", "k", 1, None, 0.0)
    monkeypatch.chdir(tmp_path / "elsewhere")  # the file did not move: no false alarm
    entry = backend.get(_G, "", "k")
    assert entry is not None and entry.value == 1
    backend.close()


@pytest.mark.parametrize("bad", [-1, -0.5, float("nan"), float("inf"), True, "1", None])
def test_a_bad_file_check_interval_is_refused(tmp_path: Path, bad: object) -> None:
    with pytest.raises(StateError, match="file_check_interval") as caught:
        SQLiteStateBackend(tmp_path / "state.db", file_check_interval=bad)  # type: ignore[arg-type]
    assert caught.value.hint


async def test_a_system_reading_a_deleted_state_file_raises(tmp_path: Path) -> None:
    async with System(SystemConfig(data_dir=str(tmp_path))) as system:
        await system.state.set("k", "old")
        assert await system.state.get("k") == "old"
        _remove(tmp_path / "state.db")
        with pytest.raises(StateError, match="deleted or replaced"):
            await system.state.set("k", "new")
        # Before the fix this read "old" from the deleted file the write had refused.
        with pytest.raises(StateError, match="deleted or replaced"):
            await system.state.get("k")
