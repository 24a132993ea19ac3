"""Hostile command lines: numbers too large for the store, times at the ends of the calendar,
arguments whose bytes are not UTF-8, a mistyped data directory, a store under a path that is
not UTF-8, Ctrl-C while ``hooks serve`` loads its policy. Each is a one-line typed error
(or a usage error) and a non-zero exit code, never a traceback, and a read creates nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from llmspell.cli import main
from llmspell.runtime import System
from llmspell.runtime.config import SystemConfig
from tests.cli_helpers import isolated_data_dir

NOT_UTF8 = "ab\udcffc"
"""What Python makes of the bytes ``ab\\xffc`` on the command line (surrogateescape)."""


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Events are stored under the test's own folder."""
    return isolated_data_dir(tmp_path, monkeypatch)


def record(data_dir: Path) -> None:
    """A store under ``data_dir`` with a few events in it."""
    async def go() -> None:
        system = System(SystemConfig(data_dir=str(data_dir)))
        await system.start()
        await system.bus.publish_async("custom.note", {"text": "hello"}, {"run_id": "r-1"})
        await system.shutdown()
    asyncio.run(go())


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv", [
    ["runs", "list", "--limit", "9" * 30],
    ["events", "query", "--limit", "9" * 30],
    ["events", "tail", "--limit", "9" * 20],
    ["events", "query", "--limit", "1000000001"],
])
def test_a_count_too_large_for_the_store_is_a_usage_error(
        data_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    record(data_dir)
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "")
    assert ": must be at most 1000000000" in err
    assert "Traceback" not in err


def test_the_largest_count_is_still_taken(data_dir: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    record(data_dir)
    code, out, err = run(capsys, "events", "tail", "--limit", "1000000000")
    assert code == 0, err
    assert "custom.note" in out


@pytest.mark.parametrize("when", ["0001-01-01", "0001-01-01T00:00:00"])
def test_a_time_at_the_start_of_the_calendar_is_a_typed_error(
        data_dir: Path, capsys: pytest.CaptureFixture[str], when: str) -> None:
    record(data_dir)
    code, out, err = run(capsys, "events", "query", "--since", when)
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1
    assert err.startswith(f"llmspell: error: '{when}' is out of the range of times")
    assert "(hint: " in err


@pytest.mark.parametrize("argv", [
    ["events", "query", "--run", NOT_UTF8],
    ["events", "query", "--correlation", NOT_UTF8],
    ["events", "tail", "--run", NOT_UTF8],
    ["events", "replay", NOT_UTF8],
    ["runs", "show", NOT_UTF8],
    ["runs", "replay", NOT_UTF8],
    ["runs", "diff", "a", NOT_UTF8],
    ["runs", "list", "--name", NOT_UTF8],
    ["runs", "list", "--kind", NOT_UTF8],
])
def test_an_argument_that_is_not_utf8_is_a_usage_error(
        data_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    record(data_dir)
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "")
    assert "'ab\\xffc' is not valid UTF-8 text" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv", [
    ["runs", "list"], ["runs", "list", "--json"], ["runs", "show", "r-1"],
    ["runs", "diff", "a", "b"], ["runs", "replay", "r-1"],
])
def test_runs_commands_create_no_store_where_nothing_was_recorded(
        data_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "")
    assert err.splitlines()[0] == (f"llmspell: error: no event store at "
                                   f"{data_dir / 'events.db'}: nothing has been recorded there")
    assert err.splitlines()[1].startswith("hint: point LLMSPELL_DATA_DIR")
    assert not data_dir.exists()  # looking did not create it


def test_stats_of_a_store_under_a_path_that_is_not_utf8(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "d\udcffata"  # the bytes d, 0xff, ata: a valid Linux file name
    record(folder)
    monkeypatch.setenv("LLMSPELL_DATA_DIR", str(folder))
    code, out, err = run(capsys, "events", "stats", "--json")
    assert code == 0, err
    stats = json.loads(out)
    assert stats["total"] >= 1
    assert stats["store"] == str(tmp_path / "d\ufffdata" / "events.db")


def test_a_memory_limit_past_the_engines_integers_is_a_usage_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.lua").write_text("return 1")
    code, out, err = run(capsys, "run", "x.lua", "--max-memory", "9" * 20)
    assert (code, out) == (2, "")
    assert "--max-memory: must be at most 1048576 MB" in err
    assert "Traceback" not in err


def test_ctrl_c_while_hooks_serve_loads_its_policy(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C before the server has taken over SIGINT (importing a slow policy)."""
    (tmp_path / "slow.py").write_text("raise KeyboardInterrupt\n")
    try:
        code, out, err = run(capsys, "hooks", "serve", "slow.py", "--bus", "nats://127.0.0.1:1")
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped the command (a traceback)")
    assert (code, out) == (130, "")
    assert err == "llmspell: interrupted\n"
