"""The inspection commands only read the event store: ``llmspell events query|tail|stats|
replay`` and ``llmspell runs list|show|diff`` leave the file, its schema version and its
folder exactly as they were (no -wal or -shm file appears), read a file they could not
write, and refuse a store of an older schema version with a hint instead of upgrading it."""

from __future__ import annotations

import json
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

from llmspell.cli import main
from llmspell.events.event import UniversalEvent
from llmspell.events.store.sqlite import SCHEMA_VERSION, SQLiteStore
from tests.cli_helpers import isolated_data_dir
from tests.events.test_store_read_only import make_v3_store


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return isolated_data_dir(tmp_path, monkeypatch)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def files(folder: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file in ``folder``: its bytes, modification time and mode."""
    return {entry.name: (entry.read_bytes(), entry.stat().st_mtime_ns,
                         stat.S_IMODE(entry.stat().st_mode))
            for entry in sorted(folder.iterdir())}


def user_version(path: Path) -> int:
    """The schema version in the file's header (read without SQLite, which would create
    the -wal and -shm files)."""
    return int.from_bytes(path.read_bytes()[60:64], "big")


@pytest.fixture
def events_recorded(data_dir: Path) -> Path:
    with SQLiteStore(data_dir / "events.db") as store:
        store.append_many(UniversalEvent.create(t, {"i": i}, run_id="run-1")
                          for i, t in enumerate(["agent.started", "tool.calc.completed",
                                                 "agent.completed"]))
    return data_dir


@pytest.fixture
def runs_recorded(tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
                  ) -> tuple[Path, str]:
    (tmp_path / "one.lua").write_text("return {answer = 42}\n")
    code, _, err = run(capsys, "run", "one.lua")
    assert code == 0, err
    code, out, err = run(capsys, "runs", "list", "--json")
    assert code == 0, err
    run_id = json.loads(out)[0]["run_id"]
    assert list(files(data_dir)) == ["events.db"]  # the writer closed: no -wal, no -shm
    return data_dir, str(run_id)


EVENT_COMMANDS = [("query",), ("query", "tool.*.*", "--oldest-first"), ("tail", "-n", "2"),
                  ("stats",), ("replay",), ("replay", "agent.*", "--run", "run-1")]


@pytest.mark.parametrize("argv", EVENT_COMMANDS)
def test_events_commands_leave_the_store_as_it_was(
        events_recorded: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    before = files(events_recorded)
    code, out, err = run(capsys, "events", *argv, "--json")
    assert code == 0, err
    assert out
    assert files(events_recorded) == before  # same bytes and times; no -wal, no -shm
    assert user_version(events_recorded / "events.db") == SCHEMA_VERSION


def test_events_read_a_store_they_may_not_write(events_recorded: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    # Permission bits do not stop root: whoever runs it, the file must come out unchanged.
    path = events_recorded / "events.db"
    path.chmod(0o444)
    events_recorded.chmod(0o555)
    try:
        before = files(events_recorded)
        code, out, err = run(capsys, "events", "query", "--oldest-first", "--json")
        assert code == 0, err
        assert [json.loads(line)["data"]["i"] for line in out.splitlines()] == [0, 1, 2]
        code, out, err = run(capsys, "events", "stats", "--json")
        assert code == 0, err
        assert json.loads(out)["total"] == 3
        assert files(events_recorded) == before
    finally:
        events_recorded.chmod(0o755)


def test_runs_inspection_commands_leave_the_store_as_it_was(
        runs_recorded: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    folder, run_id = runs_recorded
    before = files(folder)
    for argv in (("list",), ("list", "--json"), ("show", run_id), ("show", run_id, "--json"),
                 ("diff", run_id, run_id), ("diff", run_id, run_id, "--json")):
        code, out, err = run(capsys, "runs", *argv)
        assert code == 0, (argv, err)
        assert run_id in out
        assert files(folder) == before, argv
    assert user_version(folder / "events.db") == SCHEMA_VERSION


@pytest.mark.parametrize("argv", [("events", "query"), ("events", "tail"),
                                  ("events", "stats"), ("events", "replay"),
                                  ("runs", "list"), ("runs", "show", "r"),
                                  ("runs", "diff", "a", "b")])
def test_an_older_store_is_refused_with_a_hint_not_upgraded(
        data_dir: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]) -> None:
    path = data_dir / "events.db"
    make_v3_store(path)
    before = files(data_dir)
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "")
    assert "has event store schema version 3, older than the version" in err
    assert f"SQLiteStore({str(path)!r}).close()" in err  # how to upgrade it
    assert files(data_dir) == before
    assert user_version(path) == 3


def test_the_upgrade_the_hint_names_makes_the_store_readable(
        data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = data_dir / "events.db"
    make_v3_store(path)
    SQLiteStore(path).close()
    code, out, err = run(capsys, "events", "query", "--json")
    assert code == 0, err
    event: dict[str, Any] = json.loads(out)
    assert (event["id"], event["data"]) == ("old-1", {"i": 1})


def test_stats_counts_in_sqlite_and_survives_a_damaged_payload(
        events_recorded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # stats decoded every event to count its type: slow on a large store, and one damaged
    # payload failed the whole command.
    path = events_recorded / "events.db"
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE events SET payload = x'ff00' WHERE event_type = 'agent.started'")
    conn.close()
    code, out, err = run(capsys, "events", "stats", "--json")
    assert code == 0, err
    view = json.loads(out)
    assert view["total"] == 3 and view["types"] == 3
    assert view["counts"] == {"agent.started": 1, "tool.calc.completed": 1,
                              "agent.completed": 1}
    assert view["oldest"] <= view["newest"]
