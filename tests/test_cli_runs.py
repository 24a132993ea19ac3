"""``llmspell runs``: scripts run through ``main(["run", ...])`` are recorded in the SQLite
store under the data directory, then listed, shown, replayed and compared by the command."""

from __future__ import annotations

import asyncio
import datetime
import json
from pathlib import Path
from typing import Any

import pytest

from llmspell.cli import main
from llmspell.runtime import System
from llmspell.runtime.config import load_config
from llmspell.runtime.providers.scripted import ScriptedProvider
from llmspell.runtime.tools.library import CalculatorTool
from tests.cli_helpers import isolated_data_dir


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Runs are stored under the test's own folder (also the working directory)."""
    return isolated_data_dir(tmp_path, monkeypatch)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


DOUBLE = """
local n = ...
local r = Tool.invoke("calculator", {expression = n .. " * 2"})
return {doubled = r.result}
"""


def record(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str,
           name: str = "double.lua", source: str = DOUBLE, flags: tuple[str, ...] = ()
           ) -> dict[str, Any]:
    """Run the script through the command; return the summary of the run it recorded."""
    (tmp_path / name).write_text(source)
    run(capsys, "run", name, *flags, "--", *args)
    code, out, err = run(capsys, "runs", "list", "--json", "--limit", "1")
    assert code == 0, err
    newest: dict[str, Any] = json.loads(out)[0]
    assert newest["name"] == name
    return newest


def test_list_shows_the_recorded_runs_newest_first(tmp_path: Path, data_dir: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    first = record(tmp_path, capsys, "21")
    second = record(tmp_path, capsys, "5")
    assert (data_dir / "events.db").exists()

    code, out, err = run(capsys, "runs", "list", "--json")
    assert code == 0, err
    runs = json.loads(out)
    assert [r["run_id"] for r in runs] == [second["run_id"], first["run_id"]]
    assert runs[1]["kind"] == "script" and runs[1]["status"] == "completed"
    assert runs[1]["tool_calls"] == 1 and runs[1]["model_calls"] == 0
    assert runs[1]["replay_of"] is None and runs[1]["pid"] > 0

    code, out, err = run(capsys, "runs", "list")
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split()[:4] == ["RUN", "ID", "KIND", "NAME"] and "HOST:PID" in header
    assert [row.split()[0] for row in rows] == [second["run_id"], first["run_id"]]
    started = datetime.datetime.fromtimestamp(first["started"]).astimezone()
    assert started.isoformat(timespec="seconds") in rows[1]
    assert f"{first['host']}:{first['pid']}" in rows[1]
    assert rows[1].split()[1:4] == ["script", "double.lua", "completed"]


def test_list_filters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record(tmp_path, capsys, "1")
    record(tmp_path, capsys, "x", name="broken.lua", source="error('boom')")
    code, out, _ = run(capsys, "runs", "list", "--json", "--status", "failed")
    failed = json.loads(out)
    assert code == 0 and [r["name"] for r in failed] == ["broken.lua"]
    assert failed[0]["error"]["type"] == "ScriptError"
    code, out, _ = run(capsys, "runs", "list", "--json", "--name", "double.lua")
    assert [r["name"] for r in json.loads(out)] == ["double.lua"]
    code, out, _ = run(capsys, "runs", "list", "--json", "--kind", "agent")
    assert json.loads(out) == []
    code, out, _ = run(capsys, "runs", "list", "--kind", "agent")
    assert (code, out) == (0, "no runs\n")


def test_show_prints_the_summary_and_the_steps(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    summary = record(tmp_path, capsys, "21")
    code, out, err = run(capsys, "runs", "show", summary["run_id"])
    assert code == 0, err
    assert f"run        {summary['run_id']}" in out
    assert "status     completed" in out and "1 tool calls" in out
    step = next(line for line in out.splitlines() if line.startswith("1 "))
    assert step.split()[:4] == ["1", "tool:calculator#0", "tool", "calculator"]

    code, out, err = run(capsys, "runs", "show", summary["run_id"], "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["run"]["run_id"] == summary["run_id"]
    (only,) = shown["steps"]
    assert (only["index"], only["kind"], only["name"]) == (1, "tool", "calculator")
    assert only["input"] == {"expression": "21 * 2"} and only["output"]["result"] == 42
    assert only["decisions"] == [] and only["error"] is None


def test_replay_serves_the_tool_from_the_recording(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    summary = record(tmp_path, capsys, "21")

    def executed(self: Any, params: Any) -> Any:
        raise AssertionError("the replay executed the calculator")

    monkeypatch.setattr(CalculatorTool, "execute", executed)
    code, out, err = run(capsys, "runs", "replay", summary["run_id"])
    assert code == 0, err
    assert "step 1 tool calculator: served from recording" in err.splitlines()
    assert f"of {summary['run_id']} (exact): completed" in out.splitlines()[0]
    assert 'output: {"doubled":42}' in out and "served: 1 recording" in out
    assert "no divergence" in out

    code, out, err = run(capsys, "runs", "replay", summary["run_id"], "--json",
                         "--fail-on-divergence")
    assert code == 0, err
    result = json.loads(out)
    assert result["status"] == "completed" and result["output"] == {"doubled": 42}
    assert result["diverged"] is False and result["divergences"] == []
    assert result["served"] == {"recording": 1} and result["replay_of"] == summary["run_id"]

    code, out, _ = run(capsys, "runs", "list", "--json", "--limit", "1")
    newest = json.loads(out)[0]
    assert newest["run_id"] == result["run_id"] and newest["replay_of"] == summary["run_id"]
    assert newest["mode"] == "exact"


READS = """
local f = assert(io.open(..., "r"))
local text = f:read("a")
f:close()
local r = Tool.invoke("calculator", {expression = "2 + 2"})
return {text = text, sum = r.result}
"""


def test_a_divergence_is_reported_and_fails_on_request(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    data = tmp_path / "in.txt"
    data.write_text("before")
    summary = record(tmp_path, capsys, str(data), name="reads.lua", source=READS,
                     flags=(f"--allow-read={tmp_path}",))
    assert summary["status"] == "completed"
    data.write_text("after")  # the replayed script reads the file live: its output changes

    code, out, err = run(capsys, "runs", "replay", summary["run_id"])
    assert code == 0, err
    assert "divergences (1):" in out
    assert "the run: output: expected" in out and "'after'" in out
    code, out, err = run(capsys, "runs", "replay", summary["run_id"], "--fail-on-divergence",
                         "--json")
    assert code == 1, err
    (divergence,) = json.loads(out)["divergences"]
    assert divergence["what"] == "output" and divergence["key"] == ""
    assert divergence["got"]["text"] == "after" and divergence["text"].startswith("the run")


def test_replaying_a_failed_run_exits_1(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    summary = record(tmp_path, capsys, name="broken.lua", source="error('boom')")
    assert summary["status"] == "failed"
    code, out, err = run(capsys, "runs", "replay", summary["run_id"])
    assert code == 1, err
    assert "(exact): failed" in out and "error: ScriptError:" in out and "boom" in out


def test_diff_shows_the_totals_and_the_differing_steps(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    a = record(tmp_path, capsys, "21")["run_id"]
    b = record(tmp_path, capsys, "5")["run_id"]
    code, out, err = run(capsys, "runs", "diff", a, b)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["A", "B"]
    assert lines[1].split() == ["run", a, b]
    assert lines[2].split() == ["status", "completed", "completed"]
    assert "2 step(s) differ:" in lines
    tool = lines.index("step 1/1 tool calculator (tool:calculator#0)")
    assert lines[tool + 1] == '  input: {"expression":"21 * 2"} -> {"expression":"5 * 2"}'
    assert lines[tool + 2].startswith('  output: {"result":42,') and '"result":10' in \
        lines[tool + 2]
    assert "the run (script double.lua)" in lines

    code, out, err = run(capsys, "runs", "diff", a, b, "--json")
    assert code == 0, err
    diff = json.loads(out)
    assert (diff["a"], diff["b"], diff["same"]) == (a, b, False)
    assert diff["totals"]["steps"] == [1, 1]
    changed = {step["key"]: step for step in diff["steps"]}
    assert changed["tool:calculator#0"]["changes"]["output"][1]["result"] == 10

    code, out, err = run(capsys, "runs", "diff", a, a)
    assert code == 0 and "no step differs" in out


def test_unknown_run_exits_2_with_a_hint(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    record(tmp_path, capsys, "1")
    for argv in (("show", "nope"), ("replay", "nope"), ("diff", "nope", "nope")):
        code, out, err = run(capsys, "runs", *argv)
        assert (code, out) == (2, ""), argv
        message, hint = err.splitlines()
        assert message == "llmspell: error: no run 'nope' in the event store"
        assert hint.startswith("hint: ") and "llmspell runs list" in hint


def test_agent_runs_are_not_replayed_by_the_command(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]
                                                    ) -> None:
    async def agent_run() -> str:
        system = System(load_config())
        try:
            system.agents.create("helper", provider=ScriptedProvider(["hi"]))
            await system.agents.get("helper").run("hello")
            return system.runs.list(limit=1)[0].run_id
        finally:
            await system.shutdown()

    run_id = asyncio.run(agent_run())
    code, out, err = run(capsys, "runs", "show", run_id, "--json")
    assert code == 0 and json.loads(out)["run"]["kind"] == "agent"
    code, out, err = run(capsys, "runs", "replay", run_id)
    assert (code, out) == (2, "")
    assert f"run {run_id!r} is of kind 'agent' ('helper')" in err
    assert "system.runs.replay(run_id, operation=...)" in err


@pytest.mark.parametrize("argv", [
    ("runs",), ("runs", "list", "--bogus"), ("runs", "list", "--limit", "0"),
    ("runs", "show"), ("runs", "replay", "x", "--mode", "rewind"),
    ("runs", "diff", "a"), ("runs", "list", "extra"), ("runs", "show", "x", "--", "y"),
])
def test_bad_usage_exits_2(argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "")
    assert err.startswith("usage: llmspell runs") and "error:" in err


def test_the_run_command_still_works(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                     ) -> None:
    (tmp_path / "double.lua").write_text(DOUBLE)
    code, out, err = run(capsys, "run", "double.lua", "--", "4")
    assert (code, json.loads(out)) == (0, {"doubled": 8}), err
