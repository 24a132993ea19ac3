"""The ``llmspell`` command: run a Lua or JavaScript script against a fresh runtime.

    llmspell run SCRIPT.lua|SCRIPT.js [--allow-env] [--allow-read=PATH ...]
        [--allow-write=PATH ...] [--allow-exec] [--allow-net] [--allow-all]
        [--time-budget SECONDS] [--max-memory MB] [--config FILE] [-- args...]
    llmspell --version

The script's return value is printed as JSON on stdout (nothing when it returns nothing);
what the script prints or logs goes to stderr. Exit codes: 0 success, 1 the script failed
(file:line: message, the hint and the script's traceback on stderr), 2 any other llmspell
error (configuration, a missing file...) or bad usage. See ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import msgspec

from llmspell import __version__
from llmspell.core.errors import LlmspellError, ScriptError
from llmspell.runtime import System
from llmspell.runtime.config import load_config
from llmspell.runtime.tools.library import default_tools
from llmspell.scripting import ScriptHost
from llmspell.scripting.lua import MIB, Capabilities
from llmspell.scripting.runner import capabilities_from, language_of

__all__ = ["DEFAULT_TIME_BUDGET", "build_parser", "main"]

DEFAULT_TIME_BUDGET = 30.0
"""Seconds of wall-clock time each entry into the script may run (``--time-budget``)."""
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


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
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
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``llmspell`` command."""
    parser = _Parser(prog="llmspell",
                     description="Run Lua and JavaScript scripts against the llmspell runtime.")
    parser.add_argument("--version", action="version", version=f"llmspell {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    run = commands.add_parser(
        "run", help="run a .lua or .js script",
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
                      help="let the script read under PATH (repeatable)")
    caps.add_argument("--allow-write", action="append", default=[], metavar="PATH",
                      help="let the script write under PATH (repeatable)")
    caps.add_argument("--allow-exec", action="store_true", help="let the script run processes")
    caps.add_argument("--allow-net", action="store_true", help="let the script use the network")
    caps.add_argument("--allow-all", action="store_true", help="every capability above")
    limits = run.add_argument_group("limits and configuration")
    limits.add_argument("--time-budget", type=_positive_float, default=None,
                        metavar="SECONDS",
                        help="wall-clock seconds each entry into the script may run "
                             f"(default {DEFAULT_TIME_BUDGET:g})")
    limits.add_argument("--max-memory", type=_megabytes, default=None,
                        metavar="MB",
                        help=f"memory each script engine may allocate, in MB "
                             f"(default {DEFAULT_MAX_MEMORY_MB})")
    limits.add_argument("--config", type=Path, metavar="FILE",
                        help="a TOML configuration file (LLMSPELL_* variables override it)")
    return parser


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
    log = logging.getLogger("llmspell.scripts")
    log.addHandler(handler)
    if log.level == logging.NOTSET or log.level > logging.INFO:
        log.setLevel(logging.INFO)
    return handler


async def _run(options: argparse.Namespace) -> Any:
    script = Path(options.script)
    flags = Capabilities(
        allow_env=options.allow_env, allow_read=tuple(options.allow_read),
        allow_write=tuple(options.allow_write), allow_exec=options.allow_exec,
        allow_net=options.allow_net, allow_all=options.allow_all)
    system = System(load_config(options.config))
    settings = system.config.scripting
    allow = capabilities_from(settings, flags)  # the flags add to the config's switches
    budget = options.time_budget or settings.time_budget or DEFAULT_TIME_BUDGET
    megabytes = options.max_memory or settings.max_memory_mb or DEFAULT_MAX_MEMORY_MB
    try:
        system.tools.register_all(default_tools())
        await system.start()
        host = ScriptHost(system, allow=allow, max_memory=megabytes * MIB,
                          time_budget=budget)
        try:
            return await host.run_file_async(script, args=tuple(options.args))
        finally:
            host.close()
    finally:
        await system.shutdown()


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
    return None


def _report_script_error(exc: ScriptError, err: TextIO) -> None:
    """``file:line: message``, the hint, then the script's traceback."""
    print(exc.message, file=err)
    if exc.hint:
        print(f"hint: {exc.hint}", file=err)
    if exc.traceback:
        lines = exc.traceback.rstrip().splitlines()
        if lines and lines[0].strip() and lines[0].strip() in exc.message:
            lines = lines[1:]  # the traceback repeats the message first
        if lines:
            print("\n".join(lines), file=err)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
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
        options = parser.parse_args(words)
    except _UsageError as exc:
        exc.parser.print_usage(err)
        print(f"{exc.parser.prog}: error: {exc.message}", file=err)
        return EXIT_ERROR
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    options.args = [*options.args, *passed]
    problem = _check_script(Path(options.script))
    if problem is not None:
        message, hint = problem
        print(f"llmspell: error: {message}", file=err)
        print(f"hint: {hint}", file=err)
        return EXIT_ERROR
    handler = _route_script_output(err)
    try:
        result = asyncio.run(_run(options))
    except ScriptError as exc:
        _report_script_error(exc, err)
        return EXIT_SCRIPT_ERROR
    except LlmspellError as exc:
        print(f"llmspell: error: {exc.message}", file=err)
        if exc.hint:
            print(f"hint: {exc.hint}", file=err)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("llmspell: interrupted", file=err)
        return 130
    finally:
        logging.getLogger("llmspell.scripts").removeHandler(handler)
    if result is not None:
        try:
            text = msgspec.json.encode(result).decode()
        except (TypeError, msgspec.EncodeError) as exc:
            print(f"llmspell: error: the script's result is not JSON: {exc}", file=err)
            return EXIT_ERROR
        print(text, file=out)
    return EXIT_OK
