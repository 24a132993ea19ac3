"""File, process and network access for scripts, granted by :class:`Capabilities` flags.

Deno-style: nothing is allowed unless a flag grants it, and every operation checks its
flag itself (the language bindings only decide which functions exist):

* ``allow_read`` (path roots): read files, list directories, stat. ``allow_write`` (path
  roots): create, write, append, remove, rename, make directories, temporary files.
  A path is resolved first (symlinks followed, ``..`` normalised, relative to the current
  directory) and the operation then works on the *resolved* path, which must lie under one
  of the roots; otherwise :class:`PermissionDeniedError` names the path and the flag.
  ``remove``/``rename`` resolve the parent directory and act on the entry itself (a
  symlink is removed or renamed, never its target). Only regular files are opened.
* ``allow_exec``: run commands (:meth:`IoOps.exec` with an argv list and no shell;
  :meth:`IoOps.shell` through ``/bin/sh -c`` for Lua's ``os.execute``/``io.popen``), with a
  timeout and an output cap; the child runs in its own process group, killed on timeout.
* ``allow_net``: :meth:`IoOps.fetch` (HTTP and HTTPS through ``httpx``), any address.
* ``allow_all``: every flag, and reads and writes anywhere.

Limits: :data:`MAX_READ` bytes per read (one ``read`` call, a whole text file, a script
file, a fetched body), :data:`MAX_OUTPUT` bytes per output stream of a command,
:data:`MAX_ENTRIES` entries per directory listing, :data:`MAX_OPEN` files open at once,
and timeouts (:data:`EXEC_TIMEOUT`/:data:`FETCH_TIMEOUT` by default, at most
:data:`MAX_TIMEOUT`). Writes have no quota. See ``docs/scripting-capabilities.md``.

The Lua file objects live here too (``open``/``read``/``write``/``seek``/``close`` on
handle numbers, see :meth:`IoOps.lua_functions`): Lua keeps only the numbers, never a
Python object.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

import httpx

from llmspell.core.contained_process import start_contained
from llmspell.core.errors import (
    CommandError,
    InvalidValueError,
    NetworkError,
    PermissionDeniedError,
)

if TYPE_CHECKING:
    from llmspell.scripting.lua import Capabilities

__all__ = [
    "check_options",
    "EXEC_TIMEOUT",
    "FETCH_TIMEOUT",
    "MAX_ENTRIES",
    "MAX_OPEN",
    "MAX_OUTPUT",
    "MAX_READ",
    "MAX_TIMEOUT",
    "CommandError",
    "IoOps",
    "NetworkError",
    "PermissionDeniedError",
]

MIB = 1024 * 1024
MAX_READ = 16 * MIB
"""Bytes one read may return (a ``read`` call, a text file, a script file, a body)."""
MAX_OUTPUT = 16 * MIB
"""Bytes a command may write to stdout, and to stderr, before it is killed."""
MAX_ENTRIES = 10_000
"""Entries a directory listing may hold."""
MAX_OPEN = 64
"""Files one engine may hold open at once."""
EXEC_TIMEOUT = 30.0
"""Seconds a command may run unless the call says otherwise."""
FETCH_TIMEOUT = 30.0
"""Seconds a fetch may take (connect, send, receive the whole body) by default."""
MAX_TIMEOUT = 600.0
"""The longest timeout a call may ask for."""
MAX_REDIRECTS = 10

READ = "--allow-read=PATH"
WRITE = "--allow-write=PATH"
EXEC = "--allow-exec"
NET = "--allow-net"


class _Handle:
    __slots__ = ("file", "path", "status")

    def __init__(self, file: IO[bytes], path: str, status: str = "") -> None:
        self.file = file
        self.path = path
        self.status = status


_MODES = {
    "r": (os.O_RDONLY, "rb"), "w": (os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "wb"),
    "a": (os.O_WRONLY | os.O_CREAT | os.O_APPEND, "ab"), "r+": (os.O_RDWR, "r+b"),
    "w+": (os.O_RDWR | os.O_CREAT | os.O_TRUNC, "w+b"),
    "a+": (os.O_RDWR | os.O_CREAT | os.O_APPEND, "a+b"),
}
_NUMERAL = frozenset(b"0123456789abcdefABCDEFxXpP.+-")


def _root(path: str) -> str:
    return os.path.realpath(os.path.abspath(os.path.expanduser(path)))


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _os_message(exc: OSError, path: str) -> str:
    reason = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))
    return f"{path}: {reason}"


def _timeout(value: Any, default: float, what: str) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidValueError(f"{what}: timeout_ms must be a positive number of milliseconds")
    return min(float(value) / 1000, MAX_TIMEOUT)


def check_options(value: Any, allowed: frozenset[str], what: str) -> dict[str, Any]:
    """A script call's options table (None: none), refusing a non-table and unknown keys
    with an :class:`InvalidValueError` that lists the allowed ones."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidValueError(f"{what}: options must be a table/object",
                                hint="keys: " + ", ".join(sorted(allowed)))
    unknown = set(value) - allowed
    if unknown:
        raise InvalidValueError(f"{what}: unknown option(s) {sorted(unknown)}",
                                hint="use " + ", ".join(sorted(allowed)))
    return value


def _text(value: Any, what: str, name: str = "path") -> str:
    if not isinstance(value, str) or not value:
        raise InvalidValueError(f"{what}: the {name} must be a non-empty string")
    if "\0" in value:
        raise InvalidValueError(f"{what}: the {name} contains a NUL character")
    return value


class IoOps:
    """The capability-checked operations for one engine (``allow``: its Capabilities)."""

    def __init__(self, allow: Capabilities | None) -> None:
        everything = bool(allow is not None and allow.allow_all)
        self.unrestricted = everything
        self.read_roots = tuple(_root(p) for p in allow.allow_read) if allow else ()
        self.write_roots = tuple(_root(p) for p in allow.allow_write) if allow else ()
        self.exec_allowed = everything or bool(allow is not None and allow.allow_exec)
        self.net_allowed = everything or bool(allow is not None and allow.allow_net)
        self._files: dict[int, _Handle] = {}
        self._next = 0

    @property
    def can_read(self) -> bool:
        """True when some reading is allowed."""
        return self.unrestricted or bool(self.read_roots)

    @property
    def can_write(self) -> bool:
        """True when some writing is allowed."""
        return self.unrestricted or bool(self.write_roots)

    def operations(self) -> dict[str, Callable[..., Any]]:
        """The host operations: ``fs.*`` (synchronous), ``proc.exec``, ``proc.shell`` and
        ``net.fetch`` (asynchronous)."""
        return {
            "fs.read_text": self.read_text, "fs.read_dir": self.read_dir,
            "fs.stat": self.stat, "fs.write_text": self.write_text, "fs.remove": self.remove,
            "fs.rename": self.rename, "fs.mkdir": self.mkdir, "fs.tmpname": self.tmpname,
            "proc.exec": self.exec, "proc.shell": self.shell, "net.fetch": self.fetch,
        }

    # -- path checks ---------------------------------------------------------------------
    def _confine(self, resolved: str, path: str, roots: tuple[str, ...], flag: str,
                 what: str, verb: str) -> str:
        if self.unrestricted:
            return resolved
        if not roots:
            raise PermissionDeniedError(f"{what}: {verb} {path!r} is not allowed: run with "
                                        f"{flag}")
        if not any(_inside(resolved, root) for root in roots):
            # only the path as given: where a symlink points is not the script's business
            name = flag.partition("=")[0]
            raise PermissionDeniedError(
                f"{what}: {verb} {path!r} is not allowed: it is outside the {name} paths "
                f"({', '.join(roots)})",
                hint=f"run with {name}=DIR, DIR a directory that holds it")
        return resolved

    def readable(self, path: Any, what: str) -> str:
        """``path`` resolved, if reading it is allowed."""
        path = _text(path, what)
        return self._confine(os.path.realpath(path), path, self.read_roots, READ, what,
                             "reading")

    def writable(self, path: Any, what: str) -> str:
        """``path`` resolved, if writing it is allowed."""
        path = _text(path, what)
        return self._confine(os.path.realpath(path), path, self.write_roots, WRITE, what,
                             "writing")

    def _entry(self, path: Any, what: str) -> str:
        """The directory entry ``path`` names (its parent resolved, not the entry itself),
        if changing it is allowed."""
        path = _text(path, what)
        trimmed = path.rstrip(os.sep) or os.sep
        parent, name = os.path.split(trimmed)
        if name in ("", ".", ".."):
            raise InvalidValueError(f"{what}: {path!r} does not name a directory entry")
        entry = os.path.join(os.path.realpath(parent or "."), name)
        resolved = self._confine(entry, path, self.write_roots, WRITE, what, "changing")
        if not self.unrestricted and resolved in self.write_roots:
            raise PermissionDeniedError(f"{what}: {path!r} is an --allow-write root itself; "
                                        "only what is inside it can be removed or renamed")
        return resolved

    @staticmethod
    def _open_fd(resolved: str, flags: int, path: str) -> int:
        """Open a regular file (never a FIFO, device or directory; never a symlink)."""
        fd = os.open(resolved, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(errno.EINVAL, "not a regular file", path)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _read_file(self, path: Any, what: str) -> bytes:
        resolved = self.readable(path, what)
        with os.fdopen(self._open_fd(resolved, os.O_RDONLY, str(path)), "rb") as f:
            data = f.read(MAX_READ + 1)
        if len(data) > MAX_READ:
            raise InvalidValueError(f"{what}: {path} is over the read limit of "
                                    f"{MAX_READ // MIB} MiB")
        return data

    # -- file system (synchronous) -------------------------------------------------------
    def read_text(self, path: Any) -> str:
        """The text of a file (UTF-8; undecodable bytes become U+FFFD)."""
        return self._read_file(path, "fs.readTextFile").decode("utf-8", errors="replace")

    def read_dir(self, path: Any) -> list[dict[str, Any]]:
        """``[{name, is_dir, is_file, is_symlink}]`` of a directory, sorted by name."""
        resolved = self.readable(path, "fs.readDir")
        out: list[dict[str, Any]] = []
        with os.scandir(resolved) as entries:
            for entry in entries:
                if len(out) >= MAX_ENTRIES:
                    raise InvalidValueError(f"fs.readDir: {path} holds more than "
                                            f"{MAX_ENTRIES} entries")
                out.append({"name": entry.name, "is_dir": entry.is_dir(),
                            "is_file": entry.is_file(), "is_symlink": entry.is_symlink()})
        out.sort(key=lambda e: str(e["name"]))
        return out

    def stat(self, path: Any) -> dict[str, Any]:
        """``{size, is_file, is_dir, mtime (ms), mode}`` (symlinks followed)."""
        info = os.stat(self.readable(path, "fs.stat"))
        return {"size": info.st_size, "is_file": stat.S_ISREG(info.st_mode),
                "is_dir": stat.S_ISDIR(info.st_mode), "mtime": info.st_mtime * 1000,
                "mode": stat.S_IMODE(info.st_mode)}

    def write_text(self, path: Any, text: Any, options: Any = None) -> None:
        """Write ``text`` (UTF-8) to a file, replacing it, or appending with ``{append}``."""
        if not isinstance(text, str):
            raise InvalidValueError("fs.writeTextFile(path, text, options?): text is a string")
        opts = check_options(options, frozenset({"append"}), "fs.writeTextFile")
        resolved = self.writable(path, "fs.writeTextFile")
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if opts.get("append") else os.O_TRUNC)
        with os.fdopen(self._open_fd(resolved, flags, str(path)), "wb") as f:
            f.write(text.encode("utf-8"))

    def remove(self, path: Any, options: Any = None) -> None:
        """Remove a file, a symlink or an empty directory (any directory with
        ``{recursive}``)."""
        opts = check_options(options, frozenset({"recursive"}), "fs.remove")
        entry = self._entry(path, "fs.remove")
        if os.path.isdir(entry) and not os.path.islink(entry):
            if opts.get("recursive"):
                shutil.rmtree(entry)
            else:
                os.rmdir(entry)
        else:
            os.unlink(entry)

    def rename(self, old: Any, new: Any) -> None:
        """Rename (move) ``old`` to ``new``; both must be writable."""
        os.rename(self._entry(old, "fs.rename"), self._entry(new, "fs.rename"))

    def mkdir(self, path: Any, options: Any = None) -> None:
        """Make a directory (with its parents and no error if it exists: ``{recursive}``)."""
        opts = check_options(options, frozenset({"recursive"}), "fs.mkdir")
        resolved = self.writable(path, "fs.mkdir")
        if opts.get("recursive"):
            os.makedirs(resolved, exist_ok=True)
        else:
            os.mkdir(resolved)

    def _temp_dir(self, what: str) -> str:
        if self.write_roots:
            return self.write_roots[0]
        if self.unrestricted:
            return tempfile.gettempdir()
        raise PermissionDeniedError(f"{what} is not available: run with {WRITE}")

    def tmpname(self) -> str:
        """A new empty file in the first write root (the system's temp dir with allow_all)."""
        fd, name = tempfile.mkstemp(prefix="lua_", dir=self._temp_dir("os.tmpname"))
        os.close(fd)
        return name

    # -- Lua file handles ----------------------------------------------------------------
    def _add(self, handle: _Handle) -> int:
        if len(self._files) >= MAX_OPEN:
            handle.file.close()
            raise InvalidValueError(f"too many open files (the limit is {MAX_OPEN})",
                                    hint="close files when done (file:close())")
        self._next += 1
        self._files[self._next] = handle
        return self._next

    def _handle(self, fid: Any) -> _Handle:
        handle = self._files.get(fid) if isinstance(fid, int) else None
        if handle is None:
            raise InvalidValueError("attempt to use a closed file")
        return handle

    def lua_open(self, path: Any, mode: Any) -> int | str:
        """A handle number, or ``"errno\\tmessage"`` when the OS refuses."""
        what = "io.open"
        base = str(mode).replace("b", "")
        if base not in _MODES:
            raise InvalidValueError(f"{what}: invalid mode {mode!r}")
        flags, pymode = _MODES[base]
        if base == "r":
            resolved = self.readable(path, what)
        else:
            resolved = self.writable(path, what)
            if "+" in base:
                self.readable(path, what)
        try:
            fd = self._open_fd(resolved, flags, str(path))
        except OSError as exc:
            return f"{exc.errno or 0}\t{_os_message(exc, str(path))}"
        return self._add(_Handle(os.fdopen(fd, pymode), str(path)))

    def lua_tmpfile(self) -> int:
        """A handle to an anonymous temporary file (``io.tmpfile``)."""
        file = tempfile.TemporaryFile(dir=self._temp_dir("io.tmpfile"))  # noqa: SIM115
        return self._add(_Handle(file, "(temporary file)"))

    def lua_buffer(self, data: Any, status: Any) -> int:
        """A read-only handle over ``data`` (``io.popen``'s output); closing it returns
        ``status``."""
        raw = str(data).encode("utf-8")
        return self._add(_Handle(io.BytesIO(raw), "(command output)", str(status)))

    def lua_read(self, fid: Any, fmt: Any) -> bytes | None:
        """One ``file:read`` format: ``"a"``, ``"l"``, ``"L"``, ``"n"`` (the numeral's
        text) or a byte count. None at the end of the file."""
        f = self._handle(fid).file
        if isinstance(fmt, int) and not isinstance(fmt, bool):
            if fmt > MAX_READ:
                raise InvalidValueError(f"read: {fmt} bytes is over the read limit of "
                                        f"{MAX_READ} bytes")
            data = f.read(max(fmt, 0))
            if fmt > 0 and not data:
                return None
            if fmt == 0 and not f.read(1):
                return None
            if fmt == 0:
                f.seek(-1, os.SEEK_CUR)
            return data
        if fmt == "a":
            data = f.read(MAX_READ + 1)
            if len(data) > MAX_READ:
                raise InvalidValueError(f"read: over the read limit of {MAX_READ // MIB} MiB")
            return data
        if fmt in ("l", "L"):
            line = f.readline(MAX_READ + 1)
            if len(line) > MAX_READ:
                raise InvalidValueError(f"read: a line over the limit of {MAX_READ // MIB} MiB")
            if not line:
                return None
            return line[:-1] if fmt == "l" and line.endswith(b"\n") else line
        if fmt == "n":
            return self._numeral(f)
        raise InvalidValueError(f"read: invalid format {fmt!r}")

    @staticmethod
    def _numeral(f: IO[bytes]) -> bytes | None:
        while True:
            c = f.read(1)
            if not c:
                return None
            if not c.isspace():
                break
        token = bytearray(c)
        while len(token) < 200:
            c = f.read(1)
            if not c:
                break
            if c[0] not in _NUMERAL:
                f.seek(-1, os.SEEK_CUR)
                break
            token += c
        return bytes(token)

    def lua_write(self, fid: Any, *data: Any) -> None:
        """Write a string (UTF-8) or byte values to the file."""
        f = self._handle(fid).file
        if len(data) == 1 and isinstance(data[0], str):
            f.write(data[0].encode("utf-8"))
        else:
            f.write(bytes(data))

    def lua_seek(self, fid: Any, whence: Any, offset: Any) -> int:
        """Move to ``offset`` from ``"set"``/``"cur"``/``"end"``; the new position."""
        f = self._handle(fid).file
        where = {"set": os.SEEK_SET, "cur": os.SEEK_CUR, "end": os.SEEK_END}.get(str(whence))
        if where is None or not isinstance(offset, int):
            raise InvalidValueError("seek: whence is \"set\", \"cur\" or \"end\" and the "
                                    "offset an integer")
        return int(f.seek(offset, where))

    def lua_flush(self, fid: Any) -> None:
        """Flush the file's buffer."""
        self._handle(fid).file.flush()

    def lua_close(self, fid: Any) -> str:
        """Close the file; the status of a command's output (``"exit\\t0"``) or ``""``."""
        handle = self._files.pop(fid, None) if isinstance(fid, int) else None
        if handle is None:
            return ""
        handle.file.close()
        return handle.status

    def lua_chunk(self, path: Any) -> bytes:
        """A script file's bytes behind ``b"1"``, or ``b"0errno\\tmessage"``."""
        try:
            return b"1" + self._read_file(path, "loadfile")
        except OSError as exc:
            return f"0{exc.errno or 0}\t{_os_message(exc, str(path))}".encode()

    def lua_remove(self, path: Any) -> str:
        """``os.remove``: ``""``, or ``"errno\\tmessage"`` when the OS refuses."""
        try:
            entry = self._entry(path, "os.remove")
            if os.path.isdir(entry) and not os.path.islink(entry):
                os.rmdir(entry)
            else:
                os.unlink(entry)
        except OSError as exc:
            return f"{exc.errno or 0}\t{_os_message(exc, str(path))}"
        return ""

    def lua_rename(self, old: Any, new: Any) -> str:
        """``os.rename``: ``""``, or ``"errno\\tmessage"`` when the OS refuses."""
        try:
            self.rename(old, new)
        except OSError as exc:
            return f"{exc.errno or 0}\t{_os_message(exc, str(old))}"
        return ""

    def close_all(self) -> None:
        """Close every open file (the engine is going away)."""
        files, self._files = self._files, {}
        for handle in files.values():
            with contextlib.suppress(Exception):
                handle.file.close()

    def lua_functions(self) -> dict[str, Callable[..., Any]]:
        """The synchronous functions Lua's ``io``/``os``/``dofile`` call directly."""
        return {
            "open": self.lua_open, "tmpfile": self.lua_tmpfile, "buffer": self.lua_buffer,
            "read": self.lua_read, "write": self.lua_write, "seek": self.lua_seek,
            "flush": self.lua_flush, "close": self.lua_close, "chunk": self.lua_chunk,
            "remove": self.lua_remove, "rename": self.lua_rename, "tmpname": self.tmpname,
        }

    # -- processes (asynchronous) --------------------------------------------------------
    def _need_exec(self, what: str) -> None:
        if not self.exec_allowed:
            raise PermissionDeniedError(f"{what} is not available: run with {EXEC}")

    async def exec(self, cmd: Any, args: Any = None, options: Any = None) -> dict[str, Any]:
        """Run ``cmd`` with ``args`` (no shell): ``{code, signal, stdout, stderr}``.
        Options: ``timeout_ms``, ``cwd``, ``input`` (text for stdin)."""
        self._need_exec("exec")
        if isinstance(args, dict) and options is None:
            args, options = None, args
        argv = [_text(cmd, "exec", "command")]
        if args is not None:
            if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
                raise InvalidValueError("exec(cmd, args?, options?): args is a list of strings")
            argv += args
        opts = check_options(options, frozenset({"timeout_ms", "cwd", "input"}), "exec")
        result = await self._run(argv, opts, "exec")
        result.setdefault("signal", None)
        return result

    async def shell(self, command: Any, options: Any = None) -> dict[str, Any]:
        """Run ``command`` through ``/bin/sh -c``: ``{code, stdout, stderr}`` plus
        ``signal`` when a signal ended it."""
        self._need_exec("os.execute/io.popen")
        argv = ["/bin/sh", "-c", _text(command, "os.execute", "command")]
        opts = check_options(options, frozenset({"timeout_ms", "cwd", "input"}), "os.execute")
        return await self._run(argv, opts, "os.execute")

    async def _run(self, argv: list[str], opts: dict[str, Any], what: str) -> dict[str, Any]:
        seconds = _timeout(opts.get("timeout_ms"), EXEC_TIMEOUT, what)
        cwd = opts.get("cwd")
        if cwd is not None:
            cwd = _text(cwd, what, "cwd")
        text = opts.get("input")
        if text is not None and not isinstance(text, str):
            raise InvalidValueError(f"{what}: input must be a string")
        try:
            contained = await start_contained(
                argv[0], argv[1:], env=None, cwd=cwd,
                stdin=asyncio.subprocess.PIPE if text is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise CommandError(f"{what}: cannot run {argv[0]!r}: {_os_message(exc, argv[0])}"
                               ) from None
        proc = contained.process
        over: list[str] = []

        async def pump(stream: asyncio.StreamReader | None, name: str) -> bytes:
            buf = bytearray()
            if stream is None:
                return b""
            while chunk := await stream.read(65536):
                if len(buf) + len(chunk) > MAX_OUTPUT:
                    over.append(name)
                    contained.kill()
                    break
                buf += chunk
            return bytes(buf)

        async def feed() -> None:
            if proc.stdin is None or text is None:
                return
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.write(text.encode("utf-8"))
                await proc.stdin.drain()
                proc.stdin.close()

        # Whatever the program started (also a child that left its session with setsid)
        # ends with the call: contained.wait() returns once nothing of it is left running,
        # and stop() kills what is left on a timeout, an error or a cancel.
        try:
            out, err, _, code = await asyncio.wait_for(
                asyncio.gather(pump(proc.stdout, "stdout"), pump(proc.stderr, "stderr"),
                               feed(), contained.wait()), seconds)
        except TimeoutError:
            await contained.stop()
            raise CommandError(f"{what}: {argv[-1] if what != 'exec' else argv[0]!r} ran past "
                               f"its timeout of {seconds * 1000:g} ms and was killed",
                               hint="pass a larger timeout_ms") from None
        except BaseException:
            contained.kill()
            raise
        finally:
            failed = contained.start_error() if proc.returncode is not None else None
        if failed is not None:
            raise CommandError(f"{what}: cannot run {argv[0]!r}: {_os_message(failed, argv[0])}")
        if over:
            raise CommandError(f"{what}: the command wrote more than {MAX_OUTPUT // MIB} MiB "
                               f"to {over[0]} and was killed")
        result: dict[str, Any] = {
            "code": code if code >= 0 else 128 - code,
            "stdout": out.decode("utf-8", errors="replace"),
            "stderr": err.decode("utf-8", errors="replace"),
        }
        if code < 0:
            result["signal"] = -code
        return result

    # -- network (asynchronous) ----------------------------------------------------------
    async def fetch(self, url: Any, options: Any = None) -> dict[str, Any]:
        """An HTTP request: ``{status, ok, headers, body, url}`` (body as text). Options:
        ``method``, ``headers``, ``body`` (a string), ``timeout_ms``."""
        if not self.net_allowed:
            raise PermissionDeniedError(f"fetch is not available: run with {NET}")
        url = _text(url, "fetch", "url")
        if not url.lower().startswith(("http://", "https://")):
            raise InvalidValueError(f"fetch: {url!r} is not an http:// or https:// URL")
        opts = check_options(options, frozenset({"method", "headers", "body", "timeout_ms"}),
                        "fetch")
        method = str(opts.get("method") or "GET").upper()
        headers = opts.get("headers") or {}
        if not isinstance(headers, dict) or not all(
                isinstance(k, str) and isinstance(v, str | int | float)
                for k, v in headers.items()):
            raise InvalidValueError("fetch: headers must map names to strings")
        body = opts.get("body")
        if body is not None and not isinstance(body, str):
            raise InvalidValueError("fetch: body must be a string (JSON.encode a table first)")
        seconds = _timeout(opts.get("timeout_ms"), FETCH_TIMEOUT, "fetch")
        try:
            async with asyncio.timeout(seconds), httpx.AsyncClient(
                    timeout=seconds, follow_redirects=True, max_redirects=MAX_REDIRECTS,
                    trust_env=False) as client, client.stream(
                    method, url, headers={k: str(v) for k, v in headers.items()},
                    content=body.encode("utf-8") if body is not None else None) as response:
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > MAX_READ:
                        raise NetworkError(f"fetch {url}: the response body is over the "
                                           f"limit of {MAX_READ // MIB} MiB")
        except TimeoutError:
            raise NetworkError(f"fetch {url}: no complete response within "
                               f"{seconds * 1000:g} ms") from None
        except httpx.HTTPError as exc:
            raise NetworkError(f"fetch {url}: {type(exc).__name__}: {exc}") from None
        merged: dict[str, str] = {}
        for key, value in response.headers.multi_items():
            name = key.lower()
            merged[name] = f"{merged[name]}, {value}" if name in merged else value
        try:
            text = bytes(data).decode(response.encoding or "utf-8", errors="replace")
        except LookupError:
            text = bytes(data).decode("utf-8", errors="replace")
        status = response.status_code
        return {"status": status, "ok": 200 <= status < 300, "headers": merged,
                "body": text, "url": str(response.url)}
