"""``llmspell events``: events published by a System into the SQLite store under the data
directory are queried, tailed (and followed), counted and listed for replay by the command."""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from llmspell.cli import main
from llmspell.cli_events import parse_time
from llmspell.core.errors import InvalidValueError
from llmspell.events.event import UniversalEvent
from llmspell.events.store.sqlite import SQLiteStore
from llmspell.runtime import System
from llmspell.runtime.config import SystemConfig
from tests.cli_helpers import isolated_data_dir

RUN_A = "run-aaaa-1111"
RUN_B = "run-bbbb-2222"


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Events are stored under the test's own folder."""
    return isolated_data_dir(tmp_path, monkeypatch)


def publish(data_dir: Path, events: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> None:
    """Publish ``(type, data, metadata)`` events through a System storing under data_dir."""
    async def go() -> None:
        system = System(SystemConfig(data_dir=str(data_dir)))
        await system.start()
        for event_type, data, metadata in events:
            await system.bus.publish_async(event_type, data, metadata)
        await system.shutdown()
    asyncio.run(go())


@pytest.fixture
def recorded(data_dir: Path) -> Path:
    """Six events of four types, in two runs, two of them correlated."""
    publish(data_dir, [
        ("agent.started", {"agent": "helper"}, {"run_id": RUN_A, "source": "helper"}),
        ("tool.calculator.completed", {"result": 4}, {"run_id": RUN_A,
                                                      "correlation_id": "corr-1"}),
        ("tool.calculator.failed", {"error": "bad input"}, {"run_id": RUN_A,
                                                            "correlation_id": "corr-1"}),
        ("agent.completed", {"agent": "helper"}, {"run_id": RUN_A, "source": "helper"}),
        ("agent.started", {"agent": "other"}, {"run_id": RUN_B}),
        ("custom.note", {"text": "hello"}, {}),
    ])
    return data_dir


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


def types(out: str) -> list[str]:
    return [event["event_type"] for event in lines(out)]


class Terminal(io.StringIO):
    """A stdout that says it is a terminal."""

    def isatty(self) -> bool:
        return True


# -- query --------------------------------------------------------------------------------
def test_query_prints_json_lines_newest_first_when_piped(
        recorded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "events", "query", "agent.*")
    assert code == 0, err
    events = lines(out)
    assert [e["event_type"] for e in events] == ["agent.started", "agent.completed",
                                                 "agent.started"]
    assert events[0]["data"] == {"agent": "other"}
    assert events[-1]["metadata"]["run_id"] == RUN_A
    assert UniversalEvent.from_json(out.splitlines()[0]).event_type == "agent.started"


def test_query_filters_by_run_correlation_limit_and_order(
        recorded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "events", "query", "--run", RUN_A, "--oldest-first")
    assert code == 0
    assert types(out) == ["agent.started", "tool.calculator.completed",
                          "tool.calculator.failed", "agent.completed"]
    _, out, _ = run(capsys, "events", "query", "--correlation", "corr-1")
    assert types(out) == ["tool.calculator.failed", "tool.calculator.completed"]
    _, out, _ = run(capsys, "events", "query", "tool.**", "--limit", "1")
    assert types(out) == ["tool.calculator.failed"]
    _, out, _ = run(capsys, "events", "query", "custom.note", "--json")
    assert types(out) == ["custom.note"]
    _, out, _ = run(capsys, "events", "query", "nothing.here")
    assert out == ""


def test_query_since_and_until(recorded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "events", "query", "agent.*", "--since", "1h")
    assert len(lines(out)) == 3
    future = (datetime.datetime.now() + datetime.timedelta(hours=1)).isoformat()
    _, out, _ = run(capsys, "events", "query", "agent.*", "--since", future)
    assert out == ""
    _, out, _ = run(capsys, "events", "query", "agent.*", "--until", "2000-01-01T00:00")
    assert out == ""
    _, out, _ = run(capsys, "events", "query", "agent.*", "--until", future)
    assert len(lines(out)) == 3


def test_query_table_on_a_terminal(recorded: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setenv("NO_COLOR", "1")
    assert main(["events", "query", "--run", RUN_A]) == 0
    table = terminal.getvalue().splitlines()
    assert table[0].split() == ["TIME", "TYPE", "RUN", "SOURCE", "DATA"]
    assert len(table) == 5
    assert "agent.completed" in table[1] and "helper" in table[1]
    assert "tool.calculator.failed" in table[2] and '{"error":"bad input"}' in table[2]
    assert "\x1b[" not in terminal.getvalue()


def test_colour_only_without_no_color(recorded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    assert main(["events", "query", "tool.**"]) == 0
    assert "\x1b[31mtool.calculator.failed\x1b[0m" in terminal.getvalue()
    piped = Terminal()
    monkeypatch.setattr(sys, "stdout", piped)
    assert main(["events", "query", "tool.**", "--json"]) == 0
    assert "\x1b[" not in piped.getvalue()
    assert len(lines(piped.getvalue())) == 2


# -- tail ---------------------------------------------------------------------------------
def test_tail_prints_the_newest_oldest_first(recorded: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "events", "tail", "agent.*", "--limit", "2")
    assert code == 0
    assert [(e["event_type"], e["data"]["agent"]) for e in lines(out)] == [
        ("agent.completed", "helper"), ("agent.started", "other")]


class Signalling(io.StringIO):
    """A piped stdout that says when something was written."""

    def __init__(self) -> None:
        super().__init__()
        self.written = threading.Event()

    def write(self, text: str) -> int:
        count = super().write(text)
        self.written.set()
        return count


def test_tail_follow_prints_events_appended_while_it_runs(
        recorded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stdout = Signalling()
    monkeypatch.setattr(sys, "stdout", stdout)

    def append_later() -> None:
        assert stdout.written.wait(20)  # the first events are out: now append new ones
        store = SQLiteStore(recorded / "events.db")
        store.append(UniversalEvent.create("agent.failed", {"n": 1}, run_id=RUN_A))
        store.append(UniversalEvent.create("other.thing", {"n": 2}))  # not matched
        store.append(UniversalEvent.create("agent.started", {"n": 3}, run_id=RUN_B))
        store.close()

    writer = threading.Thread(target=append_later)
    writer.start()
    try:
        code = main(["events", "tail", "agent.*", "--limit", "1", "--follow",
                     "--interval", "0.02", "--max-events", "2", "--duration", "30"])
    finally:
        writer.join()
    assert code == 0
    printed = lines(stdout.getvalue())
    assert [(e["event_type"], e["data"]) for e in printed] == [
        ("agent.started", {"agent": "other"}), ("agent.failed", {"n": 1}),
        ("agent.started", {"n": 3})]


def test_tail_follow_sees_new_events_while_retention_deletes_old_ones(
        recorded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Follow found new events by the growth of the count: two new events while retention
    # deleted two old ones left the count as it was, and nothing was printed.
    stdout = Signalling()
    monkeypatch.setattr(sys, "stdout", stdout)
    real_sleep = time.sleep
    polls: list[float] = []

    def sleep(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 1:
            with SQLiteStore(recorded / "events.db") as store:
                total = store.count()
                store.append(UniversalEvent.create("agent.failed", {"n": 1}))
                store.append(UniversalEvent.create("agent.started", {"n": 2}))
                assert store.apply_retention(max_count=total) == 2
                assert store.count() == total
        real_sleep(min(seconds, 0.01))

    monkeypatch.setattr(time, "sleep", this_thread_only(sleep))
    code = main(["events", "tail", "--limit", "1", "--follow",
                 "--interval", "0.01", "--max-events", "2", "--duration", "3"])
    assert code == 0
    printed = lines(stdout.getvalue())
    assert [(e["event_type"], e["data"]) for e in printed][1:] == [
        ("agent.failed", {"n": 1}), ("agent.started", {"n": 2})]


def test_tail_follow_follows_a_store_file_replaced_by_a_new_one(
        recorded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # After the store file was replaced (positions start again at 1), follow waited for the
    # new file to pass the old file's last position: its first events were never printed.
    stdout = Signalling()
    monkeypatch.setattr(sys, "stdout", stdout)
    real_sleep = time.sleep
    polls: list[float] = []

    def sleep(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 1:
            (recorded / "events.db").unlink()
            for extra in ("events.db-wal", "events.db-shm"):
                (recorded / extra).unlink(missing_ok=True)
            with SQLiteStore(recorded / "events.db") as store:
                store.append(UniversalEvent.create("agent.failed", {"n": 1}))
                store.append(UniversalEvent.create("agent.started", {"n": 2}))
        real_sleep(min(seconds, 0.01))

    monkeypatch.setattr(time, "sleep", this_thread_only(sleep))
    code = main(["events", "tail", "--limit", "1", "--follow",
                 "--interval", "0.01", "--max-events", "2", "--duration", "3"])
    assert code == 0
    printed = lines(stdout.getvalue())
    assert [(e["event_type"], e["data"]) for e in printed][1:] == [
        ("agent.failed", {"n": 1}), ("agent.started", {"n": 2})]


def this_thread_only(fake: Any) -> Any:
    """``fake`` in place of ``time.sleep`` for the calling thread only: a library's
    background thread (an SDK's trace exporter) sleeps for real."""
    real_sleep, here = time.sleep, threading.get_ident()

    def sleep(seconds: float) -> None:
        if threading.get_ident() == here:
            fake(seconds)
        else:
            real_sleep(seconds)
    return sleep


def test_tail_follow_stops_on_ctrl_c(recorded: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt
    monkeypatch.setattr(time, "sleep", this_thread_only(interrupted))
    code, out, err = run(capsys, "events", "tail", "custom.*", "--follow")
    assert (code, err) == (0, "")
    assert types(out) == ["custom.note"]


# -- stats and replay ---------------------------------------------------------------------
def test_stats_counts_per_type(recorded: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = run(capsys, "events", "stats")
    assert code == 0
    view = json.loads(out)
    assert view["counts"]["agent.started"] == 2
    assert view["counts"]["tool.calculator.failed"] == 1
    assert view["counts"]["custom.note"] == 1
    assert view["total"] == sum(view["counts"].values()) >= 6  # plus the system's own
    assert view["bytes"] > 0 and view["oldest"] <= view["newest"]
    _, out, _ = run(capsys, "events", "stats", "--since", "2099-01-01")
    assert json.loads(out)["total"] == 0
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setenv("NO_COLOR", "1")
    assert main(["events", "stats"]) == 0
    text = terminal.getvalue()
    assert f"events   {view['total']} of {view['types']} types" in text
    assert "    2  agent.started" in text
    assert str(recorded / "events.db") in text


def test_replay_lists_events_oldest_first_marked_replayed(
        recorded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "events", "replay", "--run", RUN_A)
    assert code == 0
    events = lines(out)
    assert [e["event_type"] for e in events] == [
        "agent.started", "tool.calculator.completed", "tool.calculator.failed",
        "agent.completed"]
    assert all(e["metadata"]["replayed"] for e in events)
    _, out, _ = run(capsys, "events", "replay", "tool.*.*", "--since", "1d")
    assert types(out) == ["tool.calculator.completed", "tool.calculator.failed"]


def test_reading_writes_no_events(recorded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = json.loads(run(capsys, "events", "stats")[1])["total"]
    run(capsys, "events", "query")
    run(capsys, "events", "tail")
    run(capsys, "events", "replay")
    assert json.loads(run(capsys, "events", "stats")[1])["total"] == before


# -- bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize("argv, says", [
    (["query", "a..b"], "invalid event pattern 'a..b'"),
    (["tail", "***"], "invalid event pattern '***'"),
    (["replay", "x["], "invalid event pattern 'x['"),
    (["query", "--since", "yesterday"], "'yesterday' is not a time"),
    (["stats", "--since", "10x"], "'10x' is not a time"),
    (["query", "--until", "2026-13-01"], "'2026-13-01' is not a time"),
])
def test_bad_input_is_one_line_and_exit_2(recorded: Path, capsys: pytest.CaptureFixture[str],
                                          argv: list[str], says: str) -> None:
    code, out, err = run(capsys, "events", *argv)
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1
    assert err.startswith(f"llmspell: error: {says}")
    assert "hint:" in err


def test_missing_store(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "events", "query")
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"llmspell: error: no event store at {data_dir / 'events.db'}: nothing has been "
        "recorded there (hint: point LLMSPELL_DATA_DIR (or data_dir in --config FILE) at the "
        "data directory llmspell recorded into)"]
    assert not data_dir.exists()  # looking did not create it


def test_memory_store_configured(data_dir: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMSPELL_STORE", "memory")
    code, _, err = run(capsys, "events", "stats")
    assert code == 2 and len(err.splitlines()) == 1
    assert "the configured event store is 'memory'" in err


def test_store_of_a_newer_version(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir.mkdir()
    with sqlite3.connect(data_dir / "events.db") as conn:
        conn.execute("PRAGMA user_version=99")
    code, out, err = run(capsys, "events", "tail")
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1
    assert "has event store schema version 99; this llmspell understands up to" in err
    assert "upgrade llmspell" in err


def test_bad_usage_exits_2(recorded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "events", "query", "--limit", "0")
    assert code == 2 and "must be at least 1" in err
    code, _, err = run(capsys, "events", "tail", "--bogus")
    assert code == 2 and "--bogus" in err
    code, _, err = run(capsys, "events")
    assert code == 2


def test_parse_time() -> None:
    assert parse_time("10m", now=1000.0) == 400.0
    assert parse_time("2h", now=10_000.0) == 2800.0
    assert parse_time("1d", now=100_000.0) == 13_600.0
    assert parse_time("1970-01-01T00:01:00+00:00") == 60.0
    with pytest.raises(InvalidValueError):
        parse_time("-5m")
