"""The ``llmspell`` command: run a Lua or JavaScript script against a fresh runtime.

    llmspell run SCRIPT.lua|SCRIPT.js [--allow-env] [--allow-read=PATH ...]
        [--allow-write=PATH ...] [--allow-exec] [--allow-net] [--allow-all]
        [--persist-state] [--time-budget SECONDS] [--max-memory MB] [--config FILE]
        [-- args...]
    llmspell runs list|show|replay|diff ...   (see llmspell.cli_runs)
    llmspell events query|tail|stats|replay ...   (see llmspell.cli_events)
    llmspell view [--store PATH | --bus URL] [--host H] [--port P] [--token T]
        (the live web viewer; see llmspell.cli_view)
    llmspell hooks serve POLICY.py [--bus URL] [--key-env VAR] [--queue NAME]
        (serve a policy file's hooks to remote callers; see llmspell.cli_hooks)
    llmspell --version

The script's return value is printed as JSON on stdout (nothing when it returns nothing);
what the script prints or logs goes to stderr. Exit codes: 0 success, 1 the script failed
(file:line: message, the hint and the script's traceback on stderr), 2 any other llmspell
error (configuration, a missing file...) or bad usage. ``llmspell runs`` lists, shows,
replays and compares recorded runs (:mod:`llmspell.cli_runs`); ``llmspell events`` reads the
event store (:mod:`llmspell.cli_events`). See ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import msgspec

from llmspell import __version__
from llmspell.cli_events import add_events_parser, run_events
from llmspell.cli_hooks import add_hooks_parser, run_hooks
from llmspell.cli_runs import add_runs_parser, run_runs
from llmspell.cli_view import add_view_parser, run_view
from llmspell.core.errors import LlmspellError, ScriptError
from llmspell.core.redact import get_logger
from llmspell.core.text import terminal_safe, terminal_safe_json
from llmspell.runtime import System
from llmspell.runtime.config import MAX_MEMORY_MB, SystemConfig, load_config
from llmspell.runtime.state.base import StateBackend
from llmspell.runtime.state.memory import MemoryStateBackend
from llmspell.runtime.state.quota import QuotaStateBackend
from llmspell.runtime.state.sqlite import SQLiteStateBackend
from llmspell.runtime.tools.library import default_tools
from llmspell.scripting import ScriptHost
from llmspell.scripting.lua import MIB, Capabilities
from llmspell.scripting.runner import capabilities_from, language_of

__all__ = ["DEFAULT_TIME_BUDGET", "build_parser", "main"]

DEFAULT_TIME_BUDGET = 30.0
"""Seconds of script time the run, and each call of its hooks and callbacks, may use
(``--time-budget``); time spent waiting for the host does not count."""
DEFAULT_MAX_MEMORY_MB = 32
"""Megabytes each script engine may allocate (``--max-memory``)."""


EXIT_OK = 0
EXIT_SCRIPT_ERROR = 1
EXIT_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors raise instead of exiting (so ``main`` returns 2)."""

    def error(self, message: str) -> Any:
        raise _UsageError(self, message)


class _UsageError(Exception):
    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser
        self.message = message


_PATH_FLAGS = ("--allow-read", "--allow-write")
"""Flags whose value must be joined with ``=``: a separate word would be taken as the path
(``--allow-read ok.lua`` would grant ok.lua and lose the script's name)."""


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds, got {text}")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return value


def _megabytes(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of MB") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 MB, got {text}")
    if value > MAX_MEMORY_MB:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_MEMORY_MB} MB (1 TiB), got "
                                         f"{text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``llmspell`` command."""
    # allow_abbrev=False: a prefix of a flag is an error, never the flag (--allow-ne is not
    # --allow-net: security flags are spelled out).
    parser = _Parser(prog="llmspell", allow_abbrev=False,
                     description="Run Lua and JavaScript scripts against the llmspell runtime.")
    parser.add_argument("--version", action="version", version=f"llmspell {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    run = commands.add_parser(
        "run", help="run a .lua or .js script", allow_abbrev=False,
        description="Run SCRIPT (.lua, .js or .mjs). Arguments after -- are passed to it "
                    "(... in Lua, arguments in JavaScript). Its return value is printed as "
                    "JSON on stdout.")
    run.add_argument("script", metavar="SCRIPT", help="the script file (.lua, .js or .mjs)")
    run.add_argument("args", nargs="*", default=[], metavar="ARG",
                     help="arguments for the script (put them after --)")
    caps = run.add_argument_group("capabilities (what the script may do beyond the sandbox)")
    caps.add_argument("--allow-env", action="store_true",
                      help="let the script read environment variables (os.getenv)")
    caps.add_argument("--allow-read", action="append", default=[], metavar="PATH",
                      help="let the script read under PATH (repeatable; write "
                           "--allow-read=PATH)")
    caps.add_argument("--allow-write", action="append", default=[], metavar="PATH",
                      help="let the script write under PATH (repeatable; write "
                           "--allow-write=PATH)")
    caps.add_argument("--allow-exec", action="store_true", help="let the script run processes")
    caps.add_argument("--allow-net", action="store_true", help="let the script use the network")
    caps.add_argument("--allow-all", action="store_true", help="every capability above")
    caps.add_argument("--persist-state", action="store_true",
                      help="keep State and sessions in the data directory across runs "
                           "(default: each run starts empty and keeps nothing)")
    limits = run.add_argument_group("limits and configuration")
    limits.add_argument("--time-budget", type=_positive_float, default=None,
                        metavar="SECONDS",
                        help="seconds of script time the run (and each hook call) may use "
                             f"(default {DEFAULT_TIME_BUDGET:g})")
    limits.add_argument("--max-memory", type=_megabytes, default=None,
                        metavar="MB",
                        help=f"memory each script engine may allocate, in MB "
                             f"(default {DEFAULT_MAX_MEMORY_MB})")
    limits.add_argument("--config", type=Path, metavar="FILE",
                        help="a TOML configuration file (LLMSPELL_* variables override it)")
    add_runs_parser(commands, _Parser)
    add_events_parser(commands, _Parser)
    add_view_parser(commands, _Parser)
    add_hooks_parser(commands, _Parser)
    return parser


def _choice(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of subcommand ``name`` inside ``parser``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            found: argparse.ArgumentParser = action.choices[name]
            return found
    raise LookupError(f"no {name} command")  # pragma: no cover


def _run_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``run`` subcommand's parser inside ``parser``."""
    return _choice(parser, "run")


class _ScriptLogFormatter(logging.Formatter):
    """``[lua] message`` / ``[javascript] WARNING message``."""

    def format(self, record: logging.LogRecord) -> str:
        language = record.name.rsplit(".", 1)[-1]
        level = "" if record.levelno == logging.INFO else f"{record.levelname} "
        return f"[{language}] {level}{record.getMessage()}"


def _route_script_output(stream: TextIO) -> logging.Handler:
    """Send what scripts print and log (``llmspell.scripts.*``) to ``stream``."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_ScriptLogFormatter())
    log = get_logger("llmspell.scripts")
    log.addHandler(handler)
    if log.level == logging.NOTSET or log.level > logging.INFO:
        log.setLevel(logging.INFO)
    return handler


def _state_backend(config: SystemConfig, persist: bool) -> StateBackend:
    """Per-run state (in memory) unless persistence was asked for; either way bounded by
    ``scripting.max_state_bytes``."""
    inner: StateBackend
    if persist and config.store == "sqlite":
        folder = config.resolved_data_dir
        folder.mkdir(parents=True, exist_ok=True)
        inner = SQLiteStateBackend(folder / "state.db")
    else:
        inner = MemoryStateBackend()
    return QuotaStateBackend(inner, config.scripting.max_state_bytes)


async def _run(options: argparse.Namespace) -> Any:
    script = Path(options.script)
    flags = Capabilities(
        allow_env=options.allow_env, allow_read=tuple(options.allow_read),
        allow_write=tuple(options.allow_write), allow_exec=options.allow_exec,
        allow_net=options.allow_net, allow_all=options.allow_all)
    config = load_config(options.config)
    settings = config.scripting
    persist = options.persist_state or settings.persist_state
    state = _state_backend(config, persist)
    system = System(config, state_backend=state)
    allow = capabilities_from(settings, flags)  # the flags add to the config's switches
    budget = options.time_budget or settings.time_budget or DEFAULT_TIME_BUDGET
    megabytes = options.max_memory or settings.max_memory_mb or DEFAULT_MAX_MEMORY_MB
    try:
        # Tools obey the same capability flags as the globals: no network tool without
        # --allow-net; system_monitor reports disks under the read roots only and
        # processes' users only to a script that may run programs anyway.
        everything = allow.allow_all
        system.tools.register_all(default_tools(
            network=allow.allow_net or everything,
            read_roots=("/",) if everything else allow.allow_read,
            process_users=allow.allow_exec or everything))
        await system.start()
        host = ScriptHost(system, allow=allow, max_memory=megabytes * MIB,
                          time_budget=budget)
        try:
            return await host.run_file_async(script, args=tuple(options.args))
        finally:
            host.close()
    finally:
        try:
            await system.shutdown()
        finally:
            state.close()  # the System does not close a backend it was handed


def _check_script(script: Path) -> tuple[str, str] | None:
    """Why ``script`` cannot be run (message, hint), before starting the runtime."""
    try:
        language_of(script)
    except ScriptError as exc:
        return exc.message, exc.hint or ""
    if not script.exists():
        return f"{script}: no such file", "check the path"
    if not script.is_file():
        return f"{script}: not a file", "give the path of a .lua or .js file"
    try:
        script.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        return f"{script}: cannot read it: {exc.strerror}", "check the file's permissions"
    except UnicodeDecodeError as exc:
        return (f"{script}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                f"{exc.start})", "save the script as UTF-8")
    return None


def _misplaced_path_flag(words: Sequence[str]) -> str | None:
    """The message for ``--allow-read PATH`` written as two words, or None."""
    for word in words:
        if word in _PATH_FLAGS:
            return (f"{word} takes its path joined with '=': write {word}=PATH (as two "
                    "words the next word, perhaps the script, would be taken as the path)")
    return None


def _unknown_options_message(parser: argparse.ArgumentParser, extras: Sequence[str]) -> str:
    """``unrecognized option --allow-nett (did you mean --allow-net?)``."""
    known = [flag for action in parser._actions for flag in action.option_strings]
    parts = []
    others = []  # words left over beside the flags: most likely an unknown flag's value
    for word in extras:
        if not word.startswith("-"):
            others.append(word)
            continue
        flag = word.split("=", 1)[0]
        close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
        parts.append(f"{word} (did you mean {close[0]}?)" if close else word)
    noun = "option" if len(parts) == 1 else "options"
    message = f"unrecognized {noun}: " + ", ".join(parts)
    if others:
        message += f" (with {' '.join(others)})"
    return message


def _say(text: str, err: TextIO) -> None:
    """Print ``text`` for a person, its line breaks kept and every other control, bidi or
    invisible character a visible escape (:func:`~llmspell.core.text.terminal_safe`): a
    message can quote a model's output, a tool's result, a hook's reason or a name from the
    store, and must not act on the terminal."""
    print(terminal_safe(text, multiline=True), file=err)


def _report_script_error(exc: ScriptError, err: TextIO) -> None:
    """``file:line: message``, the hint, then the script's traceback."""
    _say(exc.message, err)
    if exc.hint:
        _say(f"hint: {exc.hint}", err)
    if exc.traceback:
        lines = exc.traceback.rstrip().split("\n")  # a \r is escaped, not a line
        if lines and lines[0].strip() and lines[0].strip() in exc.message:
            lines = lines[1:]  # the traceback repeats the message first
        if lines:
            _say("\n".join(lines), err)


def _report_error(exc: LlmspellError, err: TextIO) -> int:
    """``llmspell: error: message`` and the hint on the next line; the exit code."""
    _say(f"llmspell: error: {exc.message}", err)
    if exc.hint:
        _say(f"hint: {exc.hint}", err)
    return EXIT_ERROR


def _runs(options: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``llmspell runs ...``: llmspell errors exit with code 2 (message and hint)."""
    try:
        return run_runs(options, out, err)
    except LlmspellError as exc:
        return _report_error(exc, err)
    except KeyboardInterrupt:
        print("llmspell: interrupted", file=err)
        return 130


def _events(options: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``llmspell events ...``: llmspell errors exit with code 2, on one line (message and
    hint)."""
    try:
        return run_events(options, out, err)
    except LlmspellError as exc:
        hint = f" (hint: {exc.hint})" if exc.hint else ""
        print(terminal_safe(f"llmspell: error: {exc.message}{hint}"), file=err)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("llmspell: interrupted", file=err)
        return 130


def _view(options: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``llmspell view``: llmspell errors (a refused bind, a missing extra) exit with
    code 2 (message and hint)."""
    try:
        return run_view(options, out, err)
    except LlmspellError as exc:
        return _report_error(exc, err)
    except KeyboardInterrupt:
        return EXIT_OK


def _subparser(parser: argparse.ArgumentParser, options: argparse.Namespace
               ) -> argparse.ArgumentParser | None:
    """The parser of the ``runs`` or ``events`` subcommand chosen, for usage errors (None
    for other commands)."""
    if options.command not in ("runs", "events", "view", "hooks"):
        return None
    group = _choice(parser, options.command)
    name = getattr(options, f"{options.command}_command", None)
    return _choice(group, name) if name else group


EXIT_BROKEN_PIPE = 141
"""The exit code when the reader of the output went away (``llmspell runs list | head``):
128 + SIGPIPE, as a command killed by the signal reports it."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default ``sys.argv[1:]``); return the exit code. A
    reader of the output that goes away (``| head``) ends the command quietly."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # Nothing more can be shown, and Python's own flush of stdout at exit must not
        # fail with a second traceback: stdout goes to the null device from here.
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # stdout replaced by a non-file
            pass
        return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    out, err = sys.stdout, sys.stderr
    words = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first "--" belongs to the script (argparse alone would refuse
    # "-- args" after an option such as --config FILE).
    passed: list[str] = []
    if "--" in words:
        cut = words.index("--")
        words, passed = words[:cut], words[cut + 1:]
    try:
        misplaced = _misplaced_path_flag(words)
        if misplaced is not None:
            _run_parser(parser).error(misplaced)
        options, extras = parser.parse_known_args(words)
        sub = _subparser(parser, options)
        if sub is not None and passed:
            sub.error("unrecognized arguments after --: " + " ".join(passed))
        if extras:
            target = _run_parser(parser) if options.command == "run" else (sub or parser)
            if any(word.startswith("-") for word in extras):
                target.error(_unknown_options_message(target, extras))
            (sub or parser).error(
                "unrecognized arguments: " + " ".join(extras))
    except _UsageError as exc:
        exc.parser.print_usage(err)
        _say(f"{exc.parser.prog}: error: {exc.message}", err)
        return EXIT_ERROR
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    if options.command == "runs":
        return _runs(options, out, err)
    if options.command == "events":
        return _events(options, out, err)
    if options.command == "view":
        return _view(options, out, err)
    if options.command == "hooks":
        return run_hooks(options, out, err)
    options.args = [*options.args, *passed]
    problem = _check_script(Path(options.script))
    if problem is not None:
        message, hint = problem
        _say(f"llmspell: error: {message}", err)
        _say(f"hint: {hint}", err)
        return EXIT_ERROR
    handler = _route_script_output(err)
    try:
        result = asyncio.run(_run(options))
    except ScriptError as exc:
        _report_script_error(exc, err)
        return EXIT_SCRIPT_ERROR
    except LlmspellError as exc:
        return _report_error(exc, err)
    except KeyboardInterrupt:
        print("llmspell: interrupted", file=err)
        return 130
    finally:
        get_logger("llmspell.scripts").removeHandler(handler)
    if result is not None:
        try:
            text = terminal_safe_json(msgspec.json.encode(result).decode())
        except (TypeError, msgspec.EncodeError) as exc:
            _say(f"llmspell: error: the script's result is not JSON: {exc}", err)
            return EXIT_ERROR
        print(text, file=out)
    return EXIT_OK
