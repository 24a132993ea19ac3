"""A file tool confined to one directory: read, write, append, list, exists, stat, delete,
mkdir, move and copy.

Why hand-written: the confinement is the point of this tool and must be auditable in one
place. Every path is relative to the sandbox root; absolute paths and ``..`` components
are refused outright, and the target and its parent are resolved (symlinks followed) and
must stay inside the root, so a symlink pointing outside can be neither read, written
through nor deleted. Writes go to a temporary file in the same directory and are moved into
place with :func:`os.replace`, so a reader never sees a half-written file. A symlink could
still be swapped between the check and the use by another process with write access to the
sandbox; the tool guards against what the model asks for, not against a hostile local user.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat as stat_module
import tempfile
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Final

from llmspell.core.errors import ConfigurationError, SandboxViolationError, ToolExecutionError
from llmspell.runtime.tools.base import SecurityLevel, SideEffect, Tool

__all__ = ["FileOperationsTool"]

_NAME = "file_operations"
DEFAULT_MAX_BYTES: Final = 10 * 1024 * 1024
"""Default cap of a file read or written, in bytes."""
MAX_LIST_ENTRIES: Final = 1000
"""Most entries ``list`` returns (``truncated`` says when there were more)."""

_WRITES: Final = frozenset({"write", "append", "delete", "mkdir", "move", "copy"})
OPERATIONS: Final = (
    "read", "write", "append", "list", "exists", "stat", "delete", "mkdir", "move", "copy",
)


def _fail(message: str, hint: str | None = None) -> ToolExecutionError:
    return ToolExecutionError(_NAME, message, hint=hint)


def _refuse(message: str, hint: str | None = None) -> SandboxViolationError:
    return SandboxViolationError(_NAME, message, hint=hint)


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat()


def _kind(mode: int) -> str:
    if stat_module.S_ISLNK(mode):
        return "symlink"
    if stat_module.S_ISDIR(mode):
        return "dir"
    if stat_module.S_ISREG(mode):
        return "file"
    return "other"


class FileOperationsTool(Tool):
    """Work with files under one sandbox directory (``root``)."""

    name = _NAME
    description = (
        "Work with files inside a sandbox directory; every path is relative to it. "
        "operations: read, write ('content'; overwrites unless overwrite=false), append "
        "('content'), list ('recursive'), exists, stat, delete ('recursive' for non-empty "
        "directories), mkdir ('parents'), move and copy ('destination', 'overwrite'). "
        "'encoding' defaults to utf-8; 'parents' creates missing parent directories."
    )
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "operation": {"enum": list(OPERATIONS), "description": "What to do."},
            "path": {"type": "string", "maxLength": 4096,
                     "description": "A path relative to the sandbox ('' or '.' is the root)."},
            "destination": {"type": "string", "maxLength": 4096,
                            "description": "move/copy: the new path."},
            "content": {"type": "string", "description": "write/append: the text."},
            "encoding": {"type": "string", "maxLength": 64,
                         "description": "read/write/append: text encoding (default utf-8)."},
            "recursive": {"type": "boolean",
                          "description": "list: walk subdirectories; delete/copy: whole "
                                         "directories."},
            "parents": {"type": "boolean",
                        "description": "write/append/mkdir/move/copy: create missing parent "
                                       "directories."},
            "overwrite": {"type": "boolean",
                          "description": "write (default true), move/copy (default false): "
                                         "replace an existing file."},
        },
        "required": ["operation", "path"],
        "additionalProperties": False,
        "allOf": [
            {"if": {"properties": {"operation": {"enum": ["write", "append"]}}},
             "then": {"required": ["content"]}},
            {"if": {"properties": {"operation": {"enum": ["move", "copy"]}}},
             "then": {"required": ["destination"]}},
        ],
    }
    timeout = 30.0
    security_level = SecurityLevel.RESTRICTED
    side_effects = frozenset({SideEffect.FILE_WRITE})

    def side_effects_for(self, params: dict[str, Any]) -> frozenset[SideEffect]:
        """``file_write`` for write, append, delete, mkdir, move and copy; none otherwise."""
        return self.side_effects if params.get("operation") in _WRITES else frozenset()

    def __init__(self, root: Path | str, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 allow_write: bool = True) -> None:
        resolved = Path(root).resolve()
        if not resolved.is_dir():
            raise ConfigurationError(f"the file sandbox {str(root)!r} is not a directory",
                                     hint="create it first, or pass an existing directory")
        self.root = resolved
        self.max_bytes = max_bytes
        self.allow_write = allow_write

    # -- paths -----------------------------------------------------------------------

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix() or "."

    def _inside(self, path: Path) -> bool:
        return path == self.root or path.is_relative_to(self.root)

    def _lexical(self, raw: str) -> Path:
        """``root / raw`` after refusing absolute paths, ``..`` and NUL bytes."""
        if "\0" in raw:
            raise _refuse("the path contains a NUL byte")
        if PurePosixPath(raw).is_absolute() or PureWindowsPath(raw).drive or raw.startswith(
                ("/", "\\")):
            raise _refuse(f"absolute paths are not allowed: {raw!r}",
                          hint="paths are relative to the sandbox root")
        parts = PurePosixPath(raw.replace("\\", "/")).parts
        if ".." in parts:
            raise _refuse(f"'..' is not allowed in paths: {raw!r}",
                          hint="paths are relative to the sandbox root and cannot leave it")
        return self.root.joinpath(*parts)

    def _resolve(self, raw: str) -> tuple[Path, Path]:
        """The lexical path and its resolved form, both checked to be inside the sandbox."""
        lexical = self._lexical(raw)
        try:
            parent = lexical.parent.resolve()
            resolved = lexical.resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop, among others
            raise _fail(f"cannot resolve {raw!r}: {exc}") from None
        if lexical != self.root and not self._inside(parent):
            raise _refuse(f"{raw!r} leads outside the sandbox (through a symlink)",
                          hint="symlinks may only point inside the sandbox")
        if not self._inside(resolved):
            raise _refuse(f"{raw!r} leads outside the sandbox (through a symlink)",
                          hint="symlinks may only point inside the sandbox")
        return lexical, resolved

    # -- dispatch ----------------------------------------------------------------------

    blocking = True  # a worker thread runs it: the event loop never waits on it

    def execute(self, params: dict[str, Any]) -> dict[str, Any]:
        """Run ``params["operation"]`` on ``params["path"]`` inside the sandbox."""
        operation: str = params["operation"]
        if operation in _WRITES and not self.allow_write:
            raise _refuse(f"{operation!r} is not allowed: this file sandbox is read-only")
        raw: str = params["path"]
        lexical, path = self._resolve(raw)
        encoding: str = params.get("encoding", "utf-8")
        if operation in ("read", "write", "append"):
            try:
                "".encode(encoding)  # refuses unknown codecs and non-text ones (rot13, base64)
            except LookupError:
                raise _fail(f"unknown text encoding {encoding!r}",
                            hint="e.g. utf-8, latin-1, utf-16") from None
        try:
            if operation == "read":
                return self._read(path, encoding)
            if operation == "write":
                return self._write(path, params, encoding)
            if operation == "append":
                return self._append(path, params["content"], encoding, params)
            if operation == "list":
                return self._list(path, params.get("recursive", False))
            if operation == "exists":
                return {"path": self._relative(path), "exists": os.path.lexists(lexical),
                        "is_dir": path.is_dir(), "is_file": path.is_file()}
            if operation == "stat":
                return self._stat(lexical, path)
            if operation == "delete":
                return self._delete(lexical, path, params.get("recursive", False))
            if operation == "mkdir":
                return self._mkdir(path, params.get("parents", False))
            if operation in ("move", "copy"):
                _, destination = self._resolve(params["destination"])
                if operation == "move" and lexical.is_symlink():
                    path = lexical  # move the link itself, not what it points to
                return self._move_or_copy(operation, path, destination, params)
        except SandboxViolationError:
            raise  # it is a PermissionError too: keep it from the handlers below
        except FileNotFoundError as exc:
            raise _fail(f"{operation}: no such file or directory: {self._shown(exc)}") from None
        except IsADirectoryError as exc:
            raise _fail(f"{operation}: is a directory: {self._shown(exc)}") from None
        except NotADirectoryError as exc:
            raise _fail(f"{operation}: not a directory: {self._shown(exc)}") from None
        except PermissionError as exc:
            raise _fail(f"{operation}: permission denied: {self._shown(exc)}") from None
        except OSError as exc:
            raise _fail(f"{operation} failed: {exc.strerror or exc}") from None
        raise _fail(f"unknown operation {operation!r}", hint="one of: " + ", ".join(OPERATIONS))

    def _shown(self, exc: OSError) -> str:
        if exc.filename is None:
            return str(exc)
        filename = Path(os.fsdecode(exc.filename))
        return self._relative(filename) if self._inside(filename) else filename.name

    # -- operations ----------------------------------------------------------------------

    def _read(self, path: Path, encoding: str) -> dict[str, Any]:
        if path.is_dir():
            raise _fail(f"read: {self._relative(path)!r} is a directory",
                        hint="use operation 'list'")
        # O_NONBLOCK: opening a FIFO would otherwise wait for a writer, forever.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat_module.S_ISREG(info.st_mode):
                raise _fail(f"read: {self._relative(path)!r} is not a regular file (a FIFO, "
                            "socket or device)", hint="only regular files can be read")
            size = info.st_size
            if size > self.max_bytes:
                raise _fail(f"read: {self._relative(path)!r} is {size} bytes, more than the "
                            f"limit of {self.max_bytes}")
            data = handle.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise _fail(f"read: {self._relative(path)!r} is larger than the limit of "
                        f"{self.max_bytes} bytes")
        try:
            content = data.decode(encoding)
        except UnicodeDecodeError as exc:
            raise _fail(f"read: {self._relative(path)!r} is not valid {encoding} "
                        f"(byte {exc.start}: {exc.reason})",
                        hint="pass another 'encoding', e.g. latin-1") from None
        return {"path": self._relative(path), "content": content, "size": len(data),
                "encoding": encoding}

    def _encode(self, content: str, encoding: str) -> bytes:
        try:
            data = content.encode(encoding)
        except UnicodeEncodeError as exc:
            raise _fail(f"the content cannot be encoded as {encoding} "
                        f"(character {exc.start}: {exc.reason})",
                        hint="use utf-8") from None
        if len(data) > self.max_bytes:
            raise _fail(f"the content is {len(data)} bytes, more than the limit of "
                        f"{self.max_bytes}")
        return data

    def _parent_ready(self, path: Path, parents: bool) -> None:
        if path == self.root:
            raise _fail("the sandbox root itself cannot be the target")
        if parents:
            path.parent.mkdir(parents=True, exist_ok=True)
        elif not path.parent.is_dir():
            raise _fail(f"the directory {self._relative(path.parent)!r} does not exist",
                        hint="pass parents=true to create it")

    def _write(self, path: Path, params: dict[str, Any], encoding: str) -> dict[str, Any]:
        data = self._encode(params["content"], encoding)
        if path.is_dir():
            raise _fail(f"write: {self._relative(path)!r} is a directory")
        existed = path.exists()
        if existed and not params.get("overwrite", True):
            raise _fail(f"write: {self._relative(path)!r} exists",
                        hint="pass overwrite=true to replace it")
        self._parent_ready(path, params.get("parents", False))
        mode = stat_module.S_IMODE(path.stat().st_mode) if existed else 0o644
        handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                             suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            os.chmod(temp_name, mode)
            os.replace(temp_name, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp_name)
            raise
        return {"path": self._relative(path), "bytes_written": len(data), "created": not existed}

    def _append(self, path: Path, content: str, encoding: str,
                params: dict[str, Any]) -> dict[str, Any]:
        data = self._encode(content, encoding)
        if path.is_dir():
            raise _fail(f"append: {self._relative(path)!r} is a directory")
        self._parent_ready(path, params.get("parents", False))
        existing = path.stat().st_size if path.exists() else 0
        if existing + len(data) > self.max_bytes:
            raise _fail(f"append: {self._relative(path)!r} would grow to "
                        f"{existing + len(data)} bytes, more than the limit of "
                        f"{self.max_bytes}")
        flags = (os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
                 | getattr(os, "O_NONBLOCK", 0))  # a FIFO would block until read
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            fd = -1  # a FIFO nobody reads
        if fd < 0 or not stat_module.S_ISREG(os.fstat(fd).st_mode):
            if fd >= 0:
                os.close(fd)
            raise _fail(f"append: {self._relative(path)!r} is not a regular file",
                        hint="only regular files can be appended to")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "ab") as stream:
            stream.write(data)
        return {"path": self._relative(path), "bytes_written": len(data),
                "size": existing + len(data)}

    def _entry(self, path: Path) -> dict[str, Any]:
        info = path.lstat()
        kind = _kind(info.st_mode)
        return {"path": self._relative(path), "name": path.name, "type": kind,
                "size": info.st_size if kind == "file" else None,
                "modified": _iso(info.st_mtime)}

    def _list(self, path: Path, recursive: bool) -> dict[str, Any]:
        if not path.is_dir():
            raise _fail(f"list: {self._relative(path)!r} is not a directory")
        entries: list[dict[str, Any]] = []
        truncated = False
        pending = [path]
        while pending and not truncated:
            directory = pending.pop(0)
            for child in sorted(directory.iterdir(), key=lambda p: p.name):
                if len(entries) == MAX_LIST_ENTRIES:
                    truncated = True
                    break
                entry = self._entry(child)
                entries.append(entry)
                if recursive and entry["type"] == "dir":  # symlinks are not followed
                    pending.append(child)
        return {"path": self._relative(path), "entries": entries, "truncated": truncated}

    def _stat(self, lexical: Path, path: Path) -> dict[str, Any]:
        info = path.stat()
        return {
            "path": self._relative(path),
            "size": info.st_size,
            "modified": _iso(info.st_mtime),
            "accessed": _iso(info.st_atime),
            "type": _kind(info.st_mode),
            "is_dir": stat_module.S_ISDIR(info.st_mode),
            "is_file": stat_module.S_ISREG(info.st_mode),
            "is_symlink": lexical.is_symlink(),
            "mode": oct(stat_module.S_IMODE(info.st_mode)),
        }

    def _delete(self, lexical: Path, path: Path, recursive: bool) -> dict[str, Any]:
        if self.root in (path, lexical):
            raise _refuse("the sandbox root cannot be deleted")
        if lexical.is_symlink():  # remove the link, never what it points to
            lexical.unlink()
            return {"path": self._relative(lexical), "deleted": "symlink"}
        if path.is_dir():
            if recursive:
                shutil.rmtree(path)
            elif any(path.iterdir()):
                raise _fail(f"delete: {self._relative(path)!r} is not empty",
                            hint="pass recursive=true to delete it and its contents")
            else:
                path.rmdir()
            return {"path": self._relative(path), "deleted": "dir"}
        path.unlink()
        return {"path": self._relative(path), "deleted": "file"}

    def _mkdir(self, path: Path, parents: bool) -> dict[str, Any]:
        if path.is_dir():
            return {"path": self._relative(path), "created": False}
        if path.exists():
            raise _fail(f"mkdir: {self._relative(path)!r} exists and is not a directory")
        path.mkdir(parents=parents)
        return {"path": self._relative(path), "created": True}

    def _tree_size(self, path: Path) -> int:
        total = 0
        for base, _dirs, files in os.walk(path):
            for file_name in files:
                total += os.lstat(os.path.join(base, file_name)).st_size
        return total

    def _move_or_copy(self, operation: str, source: Path, destination: Path,
                      params: dict[str, Any]) -> dict[str, Any]:
        if source == self.root:
            raise _refuse(f"the sandbox root cannot be the source of {operation}")
        if not os.path.lexists(source):
            raise _fail(f"{operation}: no such file or directory: {self._relative(source)}")
        if destination == source or destination.is_relative_to(source):
            raise _fail(f"{operation}: cannot {operation} {self._relative(source)!r} onto or "
                        "into itself")
        if destination.exists():
            if not params.get("overwrite", False):
                raise _fail(f"{operation}: {self._relative(destination)!r} exists",
                            hint="pass overwrite=true to replace it")
            if destination.is_dir():
                raise _fail(f"{operation}: {self._relative(destination)!r} is a directory; "
                            "it is never replaced",
                            hint="name the new path inside it, e.g. dir/file.txt")
        self._parent_ready(destination, params.get("parents", False))
        if operation == "move":
            try:
                os.replace(source, destination)
            except OSError:  # e.g. across file systems
                shutil.move(source, destination)
            return {"path": self._relative(source), "destination": self._relative(destination)}
        if source.is_dir():
            if not params.get("recursive", False):
                raise _fail(f"copy: {self._relative(source)!r} is a directory",
                            hint="pass recursive=true to copy it with its contents")
            size = self._tree_size(source)
            if size > self.max_bytes:
                raise _fail(f"copy: {self._relative(source)!r} holds {size} bytes, more "
                            f"than the limit of {self.max_bytes}")
            shutil.copytree(source, destination, symlinks=True)
        else:
            size = source.stat().st_size
            if size > self.max_bytes:
                raise _fail(f"copy: {self._relative(source)!r} is {size} bytes, more than "
                            f"the limit of {self.max_bytes}")
            shutil.copy2(source, destination)
        return {"path": self._relative(source), "destination": self._relative(destination),
                "bytes": size}
