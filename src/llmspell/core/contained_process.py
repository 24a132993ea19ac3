"""Run a program so that nothing it starts outlives it: a child process and its whole tree.

Killing a program's process group on timeout (``start_new_session`` plus ``killpg``)
misses every descendant that left the group with ``setsid``: a daemonising child, or
``setsid sleep 1000 &`` in a shell command, lives on after the call, and its open pipes
keep a caller that reads the program's output waiting. On Linux the program therefore runs
under a small supervisor (:data:`SUPERVISOR_SOURCE`, a second Python interpreter started
with ``-I -S``) that marks itself a *child subreaper*: every orphaned descendant, in the
group or not, is re-parented to it, and once the program ends (or the caller asks it to
stop) it kills and reaps every descendant left, then exits as the program did. The calling
process is never made a subreaper (that would change how the user's own process reaps).
The supervisor costs one interpreter start-up per call (about 10 ms here). Elsewhere on
POSIX, or where ``sys.executable`` is not a Python interpreter to start (an application
embedding Python), the process group is killed, which a ``setsid`` child escapes.

Written here rather than taken from a library: no maintained package contains a process
tree this way (``psutil`` can list children but not the ones already re-parented to init).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

__all__ = ["SUPERVISOR_SOURCE", "ContainedProcess", "start_contained", "supervisor_command"]

_POSIX: Final = os.name == "posix"
STOP_GRACE: Final = 2.0
"""Seconds the supervisor gets to kill what the program left before its group is killed."""

SUPERVISOR_SOURCE: Final = r"""
import os, sys, time
# The C modules under signal and ctypes: importing those two costs more than the rest of
# the start-up (their enums and wrappers are not needed here).
import _signal as sig
status_fd, lc_ctype, program = int(sys.argv[1]), sys.argv[2], sys.argv[3]
os.set_inheritable(status_fd, False)
env = dict(os.environ)
# Python's start-up sets LC_CTYPE when the locale is C (PEP 538): give the program the
# environment the tool chose, not the supervisor's.
if lc_ctype:
    env["LC_CTYPE"] = lc_ctype[1:]
else:
    env.pop("LC_CTYPE", None)
# prctl(PR_SET_CHILD_SUBREAPER = 36, 1): orphaned descendants are re-parented to us.
try:
    import _ctypes
    _ctypes.call_function(_ctypes.dlsym(_ctypes.dlopen(None), "prctl"), (36, 1, 0, 0, 0))
except (ImportError, AttributeError, OSError):
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)
sig.signal(sig.SIGCHLD, sig.SIG_DFL)
sig.signal(sig.SIGTERM, sig.SIG_DFL)
watched = {sig.SIGCHLD, sig.SIGTERM}
mask = sig.pthread_sigmask(sig.SIG_BLOCK, watched)
defaults = [getattr(sig, n) for n in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(sig, n)]
try:
    pid = os.posix_spawn(program, sys.argv[3:], env, setsigmask=mask, setsigdef=defaults)
except OSError as exc:
    os.write(status_fd, str(exc.errno or 0).encode())
    os._exit(127)
code = None
while code is None:
    if sig.sigwaitinfo(watched).si_signo == sig.SIGTERM:
        code = -sig.SIGKILL  # the caller's timeout: stop everything
        break
    try:
        while True:
            reaped, status = os.waitpid(-1, os.WNOHANG)
            if reaped == 0:
                break
            if reaped == pid:
                code = os.waitstatus_to_exitcode(status)
    except ChildProcessError:
        code = 0 if code is None else code

def children():
    me = os.getpid()
    found = []
    try:
        for tid in os.listdir(f"/proc/{me}/task"):
            with open(f"/proc/{me}/task/{tid}/children", "rb") as handle:
                found += handle.read().split()
    except OSError:
        pass
    if not found:  # no children file (or it missed one): scan every process's parent
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat", "rb") as handle:
                        fields = handle.read().rsplit(b")", 1)[1].split()
                except (OSError, IndexError):
                    continue
                if len(fields) > 1 and int(fields[1]) == me:
                    found.append(name)
    return [int(p) for p in found]

delay = 0.0002
while True:
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        break  # no descendant is left
    for kid in children():
        try:
            os.kill(kid, sig.SIGKILL)
        except OSError:
            pass
    time.sleep(delay)
    delay = min(delay * 2, 0.01)
if code >= 0:
    os._exit(code)
import resource
resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
if -code != sig.SIGKILL:
    sig.signal(-code, sig.SIG_DFL)
sig.pthread_sigmask(sig.SIG_UNBLOCK, {-code})
os.kill(os.getpid(), -code)
os._exit(128 - code)
"""
"""The Linux supervisor's source, run as ``python -I -S -c SOURCE status_fd lc_ctype
program args...``. It spawns the program, waits for it (or for SIGTERM, the caller's
timeout), then kills every descendant still alive, re-parented to it as a child
subreaper, and reaps them all. It exits as the program did (dying by the same signal),
after writing the errno to ``status_fd`` when the program could not be started."""


def supervisor_command() -> list[str] | None:
    """The command prefix that runs a program under the supervisor, or None where there is
    none (not Linux, or no Python interpreter to start: an application that embeds Python
    names itself in ``sys.executable``)."""
    executable = sys.executable
    if not sys.platform.startswith("linux") or not executable \
            or not os.path.basename(executable).startswith(("python", "pypy")) \
            or not os.path.isfile(executable):
        return None
    return [executable, "-I", "-S", "-c", SUPERVISOR_SOURCE]


class ContainedProcess:
    """A program started by :func:`start_contained`: ``process`` is the child this process
    waits on (the supervisor, when ``supervised``, which exits as the program did)."""

    def __init__(self, process: asyncio.subprocess.Process, *, supervised: bool,
                 status_fd: int) -> None:
        self.process = process
        self.supervised = supervised
        self._status_fd = status_fd

    async def wait(self) -> int:
        """Wait until the program has ended and nothing it started is left running; return
        its exit code (negative: killed by that signal). Without a supervisor, what the
        program left in its process group is killed once it has exited (its open pipes
        would otherwise keep a reader waiting)."""
        if self.supervised:
            return await self.process.wait()
        delay = 0.001  # a quick program is seen soon; a long one is polled every 50 ms
        while self.process.returncode is None:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        self.kill()
        return self.process.returncode

    def kill(self) -> None:
        """Kill the child at once, and on POSIX the process group it leads."""
        with contextlib.suppress(ProcessLookupError):
            if _POSIX:
                os.killpg(self.process.pid, signal.SIGKILL)
            else:  # pragma: no cover
                self.process.kill()

    async def stop(self) -> None:
        """End the program and everything it started. A running supervisor is asked first
        (SIGTERM: it kills and reaps every descendant); the process group is killed in any
        case, the only means where there is no supervisor."""
        if self.supervised and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), STOP_GRACE)
        self.kill()  # the group too: background children must not outlive the call
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.process.wait(), 5.0)

    def start_error(self) -> OSError | None:
        """Once the process has ended: the error that kept the supervisor from starting the
        program (a missing or non-executable file), else None. Reads it once."""
        fd, self._status_fd = self._status_fd, -1
        if fd < 0:
            return None
        try:
            os.set_blocking(fd, False)
            data = os.read(fd, 32)
        except OSError:  # BlockingIOError: a supervisor that could not be stopped wrote nothing
            data = b""
        finally:
            _close(fd)
        if not data.isdigit():
            return None
        code = int(data) or errno.ENOENT
        return OSError(code, os.strerror(code))


async def start_contained(program: str, args: Sequence[str], *, env: Mapping[str, str] | None,
                          cwd: str | Path | None, stdin: Any, stdout: Any, stderr: Any
                          ) -> ContainedProcess:
    """Start ``program`` with ``args`` (``asyncio.create_subprocess_exec`` semantics: no
    shell; ``env`` None inherits this process's environment) in its own session, under the
    supervisor where there is one. A bare program name is looked up on the ``PATH`` of
    ``env``. Raises :class:`OSError` when it cannot be started (also found out by
    :meth:`ContainedProcess.start_error` after the supervisor ran)."""
    prefix = supervisor_command()
    command = [program, *args]
    status_read = status_write = -1
    if prefix is not None:
        environment = os.environ if env is None else env
        if os.sep not in program:  # the supervisor's posix_spawn does not search PATH
            found = shutil.which(program, path=environment.get("PATH", os.defpath))
            if found is None:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
            program = found
        status_read, status_write = os.pipe()
        lc_ctype = "=" + environment["LC_CTYPE"] if "LC_CTYPE" in environment else ""
        command = [*prefix, str(status_write), lc_ctype, program, *args]
    try:
        process = await asyncio.create_subprocess_exec(
            *command, stdin=stdin, stdout=stdout, stderr=stderr, cwd=cwd,
            env=None if env is None else dict(env), start_new_session=_POSIX,
            pass_fds=() if status_write < 0 else (status_write,))
    except BaseException:
        _close(status_read)
        raise
    finally:
        _close(status_write)
    return ContainedProcess(process, supervised=prefix is not None, status_fd=status_read)


def _close(fd: int) -> None:
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)
