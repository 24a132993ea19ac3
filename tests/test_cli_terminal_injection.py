"""What the CLI prints for a person cannot act on the terminal. The store holds text others
wrote: a model's output, a tool's result, a hook's Cancel reason, run and script names, error
messages, events from other processes. Escape sequences (clear the screen, OSC 52 clipboard
writes, OSC 8 links, window titles), carriage returns that overwrite a line, bidi overrides
and zero-width characters in it are printed as visible escapes (``\\x1b``, ``\\r``,
``\\u202e``); ``--json`` stays exact JSON; the CLI's own colours still work."""

from __future__ import annotations

import asyncio
import io
import json
import re
import sys
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from llmspell.cli import main
from llmspell.core import text
from llmspell.events.event import EventMetadata, UniversalEvent
from llmspell.events.store.sqlite import SQLiteStore
from llmspell.hooks import Cancel
from llmspell.hooks import HookPoint as P
from llmspell.runtime import System
from llmspell.runtime.config import load_config
from llmspell.runtime.providers.scripted import ScriptedProvider
from tests.cli_helpers import isolated_data_dir

EVIL = ("ok\x1b[2J\x1b]52;c;cm0gLXJmIH4=\x07\x1b]0;pwned\x07"
        "\x1b]8;;https://evil.example\x1b\\link\x1b]8;;\x1b\\"
        "\rcompleted\b\b\u202eevil\u200b\x9b31m\x7f")
"""Clear screen, a clipboard write, a title, a hyperlink, a carriage return faking a status,
backspaces, a bidi override, a zero-width space, a C1 CSI and DEL."""

RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u200b-\u200f]")
"""What must never reach the terminal from the store (line breaks, and tabs in a traceback,
are the CLI's own)."""


def raw_controls(text: str) -> list[str]:
    return RAW.findall(text)


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return isolated_data_dir(tmp_path, monkeypatch)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


class Terminal(io.StringIO):
    """Standard output that says it is a terminal (the events commands print a table)."""

    def isatty(self) -> bool:
        return True


def on_a_terminal(monkeypatch: pytest.MonkeyPatch, *argv: str) -> tuple[int, str]:
    screen = Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    code = main(list(argv))
    return code, screen.getvalue()


# -- the function -------------------------------------------------------------------------
def test_terminal_safe_escapes_every_control_format_and_separator_character() -> None:
    unsafe = [chr(c) for c in range(0x110000)
              if unicodedata.category(chr(c)) in ("Cc", "Cf", "Zl", "Zp")]
    shown = text.terminal_safe("".join(unsafe))
    assert not [ch for ch in shown if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")]
    assert text.terminal_safe("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert text.terminal_safe("x\ry\tz\n") == "x\\ry\\tz\\n"
    assert text.terminal_safe("\u202eabc\u200b\x9b\U000e0041") == \
        "\\u202eabc\\u200b\\x9b\\U000e0041"


def test_terminal_safe_keeps_ordinary_text_and_is_idempotent() -> None:
    plain = "héllo wörld 日本語 👍 \\x1b C:\\path ~!@#$%^&*()"
    assert text.terminal_safe(plain) == plain
    once = text.terminal_safe(EVIL)
    assert text.terminal_safe(once) == once and not raw_controls(once)
    assert text.terminal_safe("line 1\n\tline 2\r", multiline=True) == "line 1\n\tline 2\\r"
    assert text.terminal_safe("ab\udcffc") == "ab\ufffdc"  # not UTF-8: shown as U+FFFD


# -- runs ---------------------------------------------------------------------------------
def cancelled_agent_run() -> str:
    """An agent run whose model answered EVIL and a hook cancelled with EVIL as its reason;
    its run id."""
    async def go() -> str:
        system = System(load_config())
        try:
            system.agents.create("helper", provider=ScriptedProvider([EVIL]))
            system.registry.register(P.AFTER_AGENT_EXECUTION,
                                     lambda c: Cancel("blocked: " + EVIL), name="dlp")
            with pytest.raises(Exception, match="blocked"):
                await system.agents.get("helper").run("hello")
            return system.runs.list(limit=1)[0].run_id
        finally:
            await system.shutdown()
    return asyncio.run(go())


EVIL_SCRIPT = 'error("bad\\27]52;c;eA==\\7\\27[2J\\rcompleted\\226\\128\\174")'
"""A script that fails with an error message holding a clipboard write, a clear screen, a
carriage return and U+202E."""


def evil_script_run(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                    name: str = "evil\x1b[31m\u202e.lua") -> dict[str, Any]:
    (tmp_path / name).write_text(EVIL_SCRIPT)
    code, _, err = run(capsys, "run", name)
    assert code == 1
    assert not raw_controls(err), err  # the script's error, echoed by `llmspell run`
    assert "\\x1b]52;c;eA==\\x07" in err and "\\u202e" in err
    code, out, err = run(capsys, "runs", "list", "--json", "--limit", "1")
    assert code == 0, err
    newest: dict[str, Any] = json.loads(out)[0]
    assert newest["name"] == name  # --json keeps the exact text
    return newest


def test_runs_list_and_show_escape_names_errors_and_hook_reasons(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = evil_script_run(tmp_path, capsys)
    agent = cancelled_agent_run()

    code, out, err = run(capsys, "runs", "list")
    assert code == 0, err
    assert not raw_controls(out), out
    assert "evil\\x1b[31m\\u202e.lua" in out

    code, out, err = run(capsys, "runs", "show", agent)
    assert code == 0, err
    assert not raw_controls(out), out
    error = next(line for line in out.splitlines() if line.startswith("error "))
    assert "blocked: ok\\x1b[2J\\x1b]52;c;cm0gLXJmIH4=\\x07" in error
    assert "\\rcompleted\\x08\\x08\\u202eevil\\u200b\\x9b31m\\x7f" in error
    assert "status     failed" in out

    code, out, err = run(capsys, "runs", "show", script["run_id"])
    assert code == 0, err
    assert not raw_controls(out), out
    assert "\\x1b]52;c;eA==\\x07\\x1b[2J\\rcompleted\\u202e" in out

    code, out, err = run(capsys, "runs", "show", agent, "--json")
    assert code == 0, err
    shown = json.loads(out)  # exact JSON: the reason comes back as it was recorded
    assert EVIL in shown["run"]["error"]["message"]


def test_runs_diff_escapes_names_and_changes(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    a = evil_script_run(tmp_path, capsys)["run_id"]
    b = evil_script_run(tmp_path, capsys, name="other\x1b]0;title\x07.lua")["run_id"]
    code, out, err = run(capsys, "runs", "diff", a, b)
    assert code == 0, err
    assert not raw_controls(out), out
    assert "steps differ" in out or "step(s) differ" in out
    assert "\\u202e" in out  # JSON leaves U+202E as it is; the terminal sees an escape


def test_runs_replay_progress_and_report_escape_the_recorded_text(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary = evil_script_run(tmp_path, capsys)
    code, out, err = run(capsys, "runs", "replay", summary["run_id"])
    assert code == 1  # the replayed script fails again
    assert not raw_controls(out), out
    assert not raw_controls(err), err
    assert "(exact): failed" in out and "\\x1b]52;c;eA==\\x07" in out


def test_a_very_long_name_does_not_widen_every_row(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    evil_script_run(tmp_path, capsys)
    evil_script_run(tmp_path, capsys, name="n" * 240 + ".lua")
    code, out, err = run(capsys, "runs", "list")
    assert code == 0, err
    assert "n" * 97 + "..." in out and "n" * 98 not in out  # --json has it whole
    assert max(len(line) for line in out.splitlines()) < 380


# -- events -------------------------------------------------------------------------------
def store_hostile_events(data_dir: Path) -> None:
    """Events as another process on a distributed bus could have stored them: a type, a
    source, a run id and data holding escape sequences."""
    data_dir.mkdir(parents=True, exist_ok=True)
    store = SQLiteStore(data_dir / "events.db")
    try:
        store.append(UniversalEvent(
            event_type="custom.\x1b[2J\x1b]0;pwned\x07completed", data={"text": EVIL},
            metadata=EventMetadata(source="peer\u202e\x1b[8m", run_id="r\x1b[2J-1")))
        store.append(UniversalEvent(event_type="tool.echo.completed", data=EVIL))
    finally:
        store.close()


@pytest.mark.parametrize("command", ["query", "tail"])
def test_events_tables_escape_the_stored_text_and_keep_their_colours(
        data_dir: Path, monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    store_hostile_events(data_dir)
    code, out = on_a_terminal(monkeypatch, "events", command)
    assert code == 0
    ours = re.sub(r"\x1b\[(3[1236]|0)m", "", out)  # the CLI's own colours
    assert ours != out  # ... are still there
    assert not raw_controls(ours), ours
    assert "custom.\\x1b[2J\\x1b]0;pwned\\x07completed" in ours
    assert "peer\\u202e\\x1b[8m" in ours

    monkeypatch.setenv("NO_COLOR", "1")
    code, out = on_a_terminal(monkeypatch, "events", command)
    assert code == 0 and not raw_controls(out), out


def test_events_stats_escapes_the_types(data_dir: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    store_hostile_events(data_dir)
    code, out = on_a_terminal(monkeypatch, "events", "stats")
    assert code == 0
    ours = re.sub(r"\x1b\[(3[1236]|0)m", "", out)
    assert not raw_controls(ours), ours
    assert "custom.\\x1b[2J" in ours


def test_events_json_stays_exact(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store_hostile_events(data_dir)
    code, out = on_a_terminal(monkeypatch, "events", "query", "--json", "--oldest-first")
    assert code == 0
    first, second = (json.loads(line) for line in out.splitlines())
    assert first["data"] == {"text": EVIL} and second["data"] == EVIL
    assert first["metadata"]["source"] == "peer\u202e\x1b[8m"


# -- error messages -----------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ("runs", "list", "--bogus\x1b[2J\u202e"),
    ("events", "query", "bad..\x1b]52;c;eA==\x07pattern"),
    ("runs", "show", "no-such-run\x1b[2J\r"),
    ("run", "missing\x1b]0;t\x07.lua"),
])
def test_error_messages_escape_what_they_echo(capsys: pytest.CaptureFixture[str],
                                              data_dir: Path, argv: tuple[str, ...]) -> None:
    store_hostile_events(data_dir)
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert "error" in err
    assert not raw_controls(err), err


# -- JSON output ----------------------------------------------------------------------------
def test_terminal_safe_json_keeps_the_value_and_escapes_what_a_terminal_acts_on() -> None:
    for value in ["\u009b2J", "a\u202eb", "tag\U000e0041", "caf\u00e9 \x7f", "line\nbreak",
                  {"k\u200b": ["\u2028", 1]}]:
        shown = text.terminal_safe_json(json.dumps(value, ensure_ascii=False))
        assert json.loads(shown) == value and not raw_controls(shown)
        assert "\U000e0041" not in shown and "\u2028" not in shown


def test_a_scripts_result_reaches_stdout_without_raw_controls(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "result.lua"
    script.write_text('return {text = "\\u{9b}2J\\u{202e}ok", n = 1}')
    code, out, err = run(capsys, "run", str(script))
    assert code == 0, err
    assert not raw_controls(out), out
    assert json.loads(out) == {"text": "\u009b2J\u202eok", "n": 1}


def test_json_output_of_runs_and_events_has_no_raw_controls(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evil_script_run(tmp_path, capsys)
    for argv in (("runs", "list", "--json"), ("events", "query", "--json"),
                 ("events", "stats", "--json")):
        code, out, err = run(capsys, *argv)
        assert code == 0, (argv, err)
        assert out.strip() and not raw_controls(out), (argv, out)
