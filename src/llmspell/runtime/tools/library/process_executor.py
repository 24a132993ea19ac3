"""A tool that runs allow-listed programs directly, never through a shell.

The command is an argv list; its first item must be on the allow-list, either by name
(looked up on ``PATH``) or by absolute path. Arguments are passed to the program as they
are, so ``"; rm -rf /"`` is one literal argument, never a second command. The child gets a
minimal environment (``PATH`` plus the names the tool is configured to pass through), its
output is capped, and past its timeout it is killed.

Nothing the program starts outlives the call: it runs under
:mod:`llmspell.core.contained_process` (on Linux a child-subreaper supervisor that kills
every descendant left, even one that called ``setsid``; elsewhere its process group is
killed).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

from llmspell.core.contained_process import start_contained
from llmspell.core.errors import ConfigurationError, SandboxViolationError, ToolExecutionError
from llmspell.runtime.tools.base import SecurityLevel, SideEffect, Tool

__all__ = ["ProcessExecutorTool"]

_NAME = "process_executor"
_CHUNK: Final = 65536
def _refuse(message: str, hint: str | None = None) -> SandboxViolationError:
    return SandboxViolationError(_NAME, message, hint=hint)


class _Capture:
    """Reads a stream to its end, keeping at most ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.total = 0

    async def drain(self, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        while chunk := await stream.read(_CHUNK):
            self.total += len(chunk)
            room = self.limit - len(self.data)
            if room > 0:
                self.data.extend(chunk[:room])

    def text(self) -> str:
        return bytes(self.data).decode("utf-8", "replace")

    @property
    def truncated(self) -> bool:
        return self.total > len(self.data)


class ProcessExecutorTool(Tool):
    """Run an allow-listed program (argv list, no shell) and return its exit code and
    output."""

    name = _NAME
    description = (
        "Run a program without a shell. 'argv' is the command as a list (program first, "
        "then its arguments, each passed literally); 'stdin' optional text input; 'timeout' "
        "seconds (capped by configuration). Only allow-listed programs can run. Returns "
        "exit_code, stdout, stderr (truncated past a limit), timed_out and duration_ms."
    )
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "argv": {"type": "array", "minItems": 1, "maxItems": 1000,
                     "items": {"type": "string", "maxLength": 32768},
                     "description": "The program and its arguments."},
            "stdin": {"type": "string", "maxLength": 1048576,
                      "description": "Text written to the program's standard input."},
            "timeout": {"type": "number", "exclusiveMinimum": 0,
                        "description": "Seconds before the program is killed."},
        },
        "required": ["argv"],
        "additionalProperties": False,
    }
    security_level = SecurityLevel.PRIVILEGED
    side_effects = frozenset({SideEffect.PROCESS})

    def __init__(
        self,
        *,
        allow_commands: Iterable[str],
        cwd: Path | None = None,
        max_output: int = 64 * 1024,
        timeout: float = 30.0,
        pass_env: Iterable[str] = (),
    ) -> None:
        self._names: set[str] = set()
        self._paths: set[str] = set()
        for command in allow_commands:
            if not command or "\x00" in command:
                raise ConfigurationError(f"invalid allowed command {command!r}")
            if os.sep in command or (os.altsep and os.altsep in command):
                if not os.path.isabs(command):
                    raise ConfigurationError(
                        f"allowed command {command!r} is a relative path",
                        hint="allow programs by bare name (looked up on PATH) or absolute path",
                    )
                self._paths.add(os.path.normpath(command))
            else:
                self._names.add(command)
        if not self._names and not self._paths:
            raise ConfigurationError("ProcessExecutorTool needs at least one allowed command",
                                     hint="pass allow_commands=['git', '/usr/bin/python3']")
        if cwd is not None and not Path(cwd).is_dir():
            raise ConfigurationError(f"the working directory {str(cwd)!r} does not exist")
        if max_output <= 0 or timeout <= 0:
            raise ConfigurationError("max_output and timeout must be positive")
        self.cwd = cwd
        self.max_output = max_output
        self.process_timeout = timeout
        self.pass_env = tuple(pass_env)
        # The pipeline's timeout is a backstop; the tool kills the process itself.
        self.timeout = timeout + 5.0

    def _env(self) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", os.defpath)}
        if sys.platform == "win32":  # pragma: no cover - Windows needs it to start anything
            env["SYSTEMROOT"] = os.environ.get("SYSTEMROOT", "")
        for name in self.pass_env:
            if name in os.environ:
                env[name] = os.environ[name]
        return env

    def resolve(self, program: str, env: dict[str, str]) -> str:
        """The absolute path to run for ``program``; raise when it is not allowed."""
        hint = ("allowed: " + ", ".join(sorted(self._names | self._paths))
                + " (ProcessExecutorTool(allow_commands=...))")
        if "\x00" in program or not program:
            raise _refuse(f"invalid program name {program!r}", hint=hint)
        if os.sep in program or (os.altsep and os.altsep in program):
            if not os.path.isabs(program):
                raise _refuse(f"the program {program!r} is a relative path", hint=hint)
            path = os.path.normpath(program)
            if path not in self._paths:
                raise _refuse(f"the program {program!r} is not allowed", hint=hint)
            return path
        found = shutil.which(program, path=env["PATH"])
        if program in self._names:
            if found is None:
                raise ToolExecutionError(_NAME, f"the program {program!r} was not found on "
                                         "PATH")
            return found
        if found is not None and os.path.normpath(found) in self._paths:
            return found
        raise _refuse(f"the program {program!r} is not allowed", hint=hint)

    async def execute(self, params: dict[str, Any]) -> dict[str, Any]:
        """Run ``argv``; see the class description."""
        argv: list[str] = params["argv"]
        if any("\x00" in arg for arg in argv):
            raise ToolExecutionError(_NAME, "arguments cannot contain NUL characters")
        env = self._env()
        program = self.resolve(argv[0], env)
        budget = min(float(params.get("timeout", self.process_timeout)), self.process_timeout)
        stdin_data = None if params.get("stdin") is None else _encoded(params["stdin"])
        for arg in argv:
            _encoded(arg, os.fsencode, "an argument")
        started = time.perf_counter()
        try:
            contained = await start_contained(
                program, argv[1:], env=env, cwd=self.cwd,
                stdin=asyncio.subprocess.PIPE if stdin_data is not None
                else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise _cannot_start(argv[0], exc.strerror or str(exc)) from None
        process = contained.process
        out, err = _Capture(self.max_output), _Capture(self.max_output)
        timed_out = False
        try:
            async with asyncio.timeout(budget):
                # stdin is fed while the output is read: a program that answers as it
                # reads (cat) would otherwise block on a full pipe while we block on its
                # full stdin, until the timeout.
                await asyncio.gather(_feed(process.stdin, stdin_data),
                                     out.drain(process.stdout), err.drain(process.stderr),
                                     contained.wait())
        except TimeoutError:
            timed_out = True
        finally:
            try:
                await contained.stop()
            finally:
                failed = contained.start_error()
        if failed is not None:
            raise _cannot_start(argv[0], failed.strerror or str(failed))
        return {
            "argv": argv,
            "exit_code": process.returncode,
            "stdout": out.text(),
            "stderr": err.text(),
            "stdout_truncated": out.truncated,
            "stderr_truncated": err.truncated,
            "timed_out": timed_out,
            "error": (f"the program ran longer than {budget:g} s and was killed"
                      if timed_out else None),
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        }


def _encoded(text: str, encode: Callable[[str], bytes] | None = None,
             what: str = "stdin") -> bytes:
    """``text`` as bytes (UTF-8, or ``encode``); a lone surrogate is a typed error."""
    try:
        return encode(text) if encode is not None else text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ToolExecutionError(
            _NAME, f"{what} holds a character that cannot be encoded "
            f"({exc.object[exc.start:exc.end]!r} at {exc.start}: {exc.reason})",
            hint="pass valid Unicode text (no unpaired UTF-16 surrogates)") from None


async def _feed(stdin: asyncio.StreamWriter | None, data: bytes | None) -> None:
    """Write ``data`` to the program's stdin and close it (a program that stops reading
    early is no error)."""
    if stdin is None or data is None:
        return
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        stdin.write(data)
        await stdin.drain()
    stdin.close()


def _cannot_start(program: str, reason: str) -> ToolExecutionError:
    return ToolExecutionError(_NAME, f"cannot start {program!r}: {reason}",
                              hint="check that the program exists and is executable")
