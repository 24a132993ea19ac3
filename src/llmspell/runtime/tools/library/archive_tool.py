"""An archive tool confined to one directory: create, list and extract zip and tar files.

Why hand-written rather than ``extractall``: extraction is where archives attack. Before
anything is written every member is checked: absolute names, ``..`` components, drive
letters and NUL bytes are refused; device files and FIFOs are refused; links are never
created (a link pointing outside the destination is refused, one pointing inside is
skipped and reported); the member count and the declared total size must be within the
configured limits. Members are then copied by hand, counting the bytes actually written,
so a member that inflates beyond what it declares is cut off too; on any failure the
files written so far are removed. Each target's parent is resolved and must stay inside
the destination, so a symlink already in the sandbox cannot redirect a write.

Reading a compressed tar at all (to list it, or to check it before extracting) means
inflating it: a member's data is skipped only by decompressing it. So the inflated bytes
read are capped (``max_decompressed_bytes``), as is the member count, and a tar to be
extracted stops being read once its members declare more than ``max_total_bytes``.

CPython before 3.11.10 (and 3.12 before 3.12.6) parses a pax header with a regular
expression that takes time quadratic in a run of digits (CVE-2024-6232): a pax header of a
few hundred kilobytes of digits, which compresses to almost nothing, holds ``tarfile`` for
minutes. On those versions every pax header's bytes are screened as they are read, and a
run of more than :data:`_PAX_MAX_DIGITS` digits is refused before the stdlib parses it.
"""

from __future__ import annotations

import contextlib
import gzip
import lzma
import os
import re
import stat as stat_module
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Final, cast

from llmspell.core.errors import ConfigurationError, SandboxViolationError, ToolExecutionError
from llmspell.runtime.tools.base import SecurityLevel, SideEffect, Tool
from llmspell.runtime.tools.library.file_search import check_root, resolve_in_root

__all__ = ["ArchiveHandlerTool"]

_NAME = "archive_handler"
FORMATS: Final = ("zip", "tar", "tar.gz")
_CHUNK: Final = 64 * 1024


def _fail(message: str, hint: str | None = None) -> ToolExecutionError:
    return ToolExecutionError(_NAME, message, hint=hint)


def _limit_hint(setting: str) -> str:
    return (f"the limit guards against archive bombs; for an archive you trust, raise it: "
            f"ArchiveHandlerTool(root, {setting}=...)")


class _Capped:
    """A read-only view of a decompressed stream that refuses to go past ``limit`` bytes.

    ``tarfile`` reads headers and extended (pax, GNU long name) headers through it, and
    skips member data by seeking, which on a gzip stream decompresses everything skipped:
    both are bounded here, before the bytes are inflated."""

    def __init__(self, raw: gzip.GzipFile, limit: int, exceeded: ToolExecutionError) -> None:
        self._raw = raw
        self._limit = limit
        self._exceeded = exceeded

    def read(self, size: int = -1) -> bytes:
        position = self._raw.tell()
        if size >= 0 and position + size <= self._limit:
            return self._raw.read(size)
        data = self._raw.read(max(self._limit - position, 0))
        if self._raw.read(1):  # the stream goes on past the limit
            raise self._exceeded
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        target = offset if whence == os.SEEK_SET else (
            self._raw.tell() + offset if whence == os.SEEK_CUR else -1)
        if target < 0 or target > self._limit:  # SEEK_END would inflate everything
            raise self._exceeded
        return self._raw.seek(target)

    def tell(self) -> int:
        return self._raw.tell()


_PAX_MAX_DIGITS: Final = 64
"""The longest run of digits a pax header may hold where the stdlib parses it in quadratic
time (a record's length field has a few digits; a value such as a time a few dozen)."""
_PAX_DIGIT_RUN: Final = re.compile(rb"\d{%d}" % (_PAX_MAX_DIGITS + 1))
_QUADRATIC_PAX: Final = sys.version_info < (3, 11, 10) or (
    (3, 12) <= sys.version_info < (3, 12, 6))
"""True on CPython versions whose ``tarfile`` has CVE-2024-6232."""


class _PaxScreen:
    """The archive stream as a pax header reads it: its first read (the header's records)
    is screened for a run of digits the stdlib would take quadratic time over; later reads
    (the next member's header block) pass through."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._screened = False

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._raw.read(size)
        if self._screened:
            return data
        self._screened = True
        if _PAX_DIGIT_RUN.search(data):
            raise _fail(f"the archive has a pax header with a run of more than "
                        f"{_PAX_MAX_DIGITS} digits, which this Python's tarfile parses in "
                        "quadratic time (CVE-2024-6232)",
                        hint="the archive is malformed or hostile; Python 3.11.10 / 3.12.6 "
                             "or newer reads such headers safely")
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class _ScreenedTarInfo(tarfile.TarInfo):
    """A ``TarInfo`` whose pax headers are read through :class:`_PaxScreen`."""

    def _proc_pax(self, tar: tarfile.TarFile) -> Any:
        original = tar.fileobj
        tar.fileobj = cast("IO[bytes]", _PaxScreen(original))
        try:
            return getattr(super(), "_proc_pax")(tar)  # noqa: B009 (not in the stubs)
        finally:
            tar.fileobj = original


_TAR_INFO: Final[type[tarfile.TarInfo]] = _ScreenedTarInfo if _QUADRATIC_PAX else tarfile.TarInfo


def _refuse(message: str, hint: str | None = None) -> SandboxViolationError:
    return SandboxViolationError(_NAME, message, hint=hint)


@dataclass
class _Member:
    """One archive entry, format-neutral."""

    name: str
    kind: str  # file, dir, symlink, hardlink, other
    size: int
    link: str = ""
    source: Any = None  # the ZipInfo or TarInfo


def _format_of(path: str, given: str | None) -> str:
    if given is not None:
        return given
    lower = path.lower()
    if lower.endswith(".zip"):
        return "zip"
    if lower.endswith((".tar.gz", ".tgz")):
        return "tar.gz"
    if lower.endswith(".tar"):
        return "tar"
    raise _fail(f"cannot tell the archive format of {path!r}",
                hint="name it .zip, .tar, .tar.gz or .tgz, or pass 'format'")


def _safe_parts(name: str) -> tuple[str, ...]:
    """The components of a member name, refusing names that could leave the destination."""
    if "\0" in name:
        raise _refuse(f"the archive member {name!r} has a NUL byte in its name")
    clean = name.replace("\\", "/")
    if clean.startswith("/") or (len(clean) > 1 and clean[1] == ":"):
        raise _refuse(f"the archive member {name!r} has an absolute name",
                      hint="the archive is unsafe to extract")
    parts = tuple(p for p in PurePosixPath(clean).parts if p not in ("", "."))
    if ".." in parts:
        raise _refuse(f"the archive member {name!r} has '..' in its name",
                      hint="the archive is unsafe to extract (path traversal)")
    return parts


class ArchiveHandlerTool(Tool):
    """Create, list and extract zip / tar / tar.gz archives inside one sandbox directory."""

    name = _NAME
    description = (
        "Work with zip, tar and tar.gz archives inside a sandbox directory (paths are "
        "relative to it). operations: create ('archive', 'sources': files or directories "
        "to add), list ('archive'), extract ('archive' into 'destination', default '.'; "
        "'overwrite' replaces existing files). 'format' is taken from the archive's name "
        "unless given. Unsafe members (absolute names, '..', links leading outside, "
        "devices) are refused; size and member-count limits apply."
    )
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "operation": {"enum": ["create", "list", "extract"], "description": "What to do."},
            "archive": {"type": "string", "minLength": 1, "maxLength": 4096,
                        "description": "The archive's path."},
            "sources": {"type": "array", "minItems": 1, "maxItems": 1000,
                        "items": {"type": "string", "maxLength": 4096},
                        "description": "create: files and directories to add."},
            "destination": {"type": "string", "maxLength": 4096,
                            "description": "extract: the directory to extract into."},
            "format": {"enum": list(FORMATS), "description": "The archive format."},
            "overwrite": {"type": "boolean",
                          "description": "create/extract: replace existing files "
                                         "(default false)."},
        },
        "required": ["operation", "archive"],
        "additionalProperties": False,
        "allOf": [
            {"if": {"properties": {"operation": {"const": "create"}}},
             "then": {"required": ["sources"]}},
        ],
    }
    timeout = 120.0
    security_level = SecurityLevel.RESTRICTED
    side_effects = frozenset({SideEffect.FILE_WRITE})

    def side_effects_for(self, params: dict[str, Any]) -> frozenset[SideEffect]:
        """``file_write`` for create and extract; none otherwise."""
        return self.side_effects if params.get("operation") != "list" else frozenset()

    blocking = True

    def __init__(self, root: Path | str, *, max_members: int = 10_000,
                 max_total_bytes: int = 100 * 1024 * 1024,
                 max_decompressed_bytes: int = 1024 * 1024 * 1024) -> None:
        """``max_members``: entries an archive may hold (listing included);
        ``max_total_bytes``: bytes an extraction may write (declared and actual) and
        ``create`` may pack; ``max_decompressed_bytes``: bytes of a compressed (tar.gz)
        stream that reading it, to list or to extract, may inflate."""
        self.root = check_root(root)
        for setting, value in (("max_members", max_members),
                               ("max_total_bytes", max_total_bytes),
                               ("max_decompressed_bytes", max_decompressed_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigurationError(f"ArchiveHandlerTool {setting} must be a positive "
                                         f"int, got {value!r}")
        self.max_members = max_members
        self.max_total_bytes = max_total_bytes
        self.max_decompressed_bytes = max_decompressed_bytes

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix() or "."

    def execute(self, params: dict[str, Any]) -> dict[str, Any]:
        """Run ``params["operation"]``; see the class description."""
        operation: str = params["operation"]
        archive = resolve_in_root(self.root, params["archive"], _NAME)
        fmt = _format_of(params["archive"], params.get("format"))
        try:
            if operation == "create":
                return self._create(archive, fmt, params)
            if not archive.is_file():
                raise _fail(f"no archive file {params['archive']!r}")
            members = self._members(archive, fmt, extracting=operation == "extract")
            if operation == "list":
                return {"archive": self._relative(archive), "format": fmt,
                        "members": [{"name": m.name, "type": m.kind, "size": m.size,
                                     **({"link": m.link} if m.link else {})}
                                    for m in members],
                        "total_size": sum(m.size for m in members)}
            destination = resolve_in_root(self.root, params.get("destination", "."), _NAME)
            return self._extract(archive, fmt, members, destination,
                                 params.get("overwrite", False))
        except (SandboxViolationError, ToolExecutionError):
            raise
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, gzip.BadGzipFile,
                zlib.error) as exc:
            raise _fail(f"{operation}: {params['archive']!r} is not a valid {fmt} archive: "
                        f"{exc}") from None
        except RecursionError:  # tarfile follows chained extended headers recursively
            raise _fail(f"{operation}: {params['archive']!r} chains too many extended "
                        "headers (pax or GNU long name) to one member",
                        hint="the archive is malformed or hostile") from None
        except (RuntimeError, NotImplementedError, lzma.LZMAError) as exc:
            # zipfile: an encrypted member (RuntimeError), a compression method it lacks
            # (NotImplementedError), broken LZMA data
            raise _fail(f"{operation}: cannot read a member of {params['archive']!r}: {exc}",
                        hint="encrypted members and compression methods other than stored, "
                             "deflate, bzip2 and lzma are not supported; re-create the "
                             "archive without a password") from None
        except OSError as exc:
            raise _fail(f"{operation} failed: {exc.strerror or exc}") from None

    # -- reading -------------------------------------------------------------------------

    def _too_many(self) -> ToolExecutionError:
        return _fail(f"the archive has more than {self.max_members} members "
                     "(the max_members limit)", hint=_limit_hint("max_members"))

    def _too_big(self, total: int) -> ToolExecutionError:
        return _fail(f"the archive would extract to {total} bytes, more than the limit of "
                     f"{self.max_total_bytes} (max_total_bytes)",
                     hint=_limit_hint("max_total_bytes"))

    def _members(self, archive: Path, fmt: str, *, extracting: bool = False) -> list[_Member]:
        """The archive's members. For a tar the stream is read only as far as the limits
        allow: the member count, the inflated bytes, and (``extracting``) the declared
        total size, which needs no further reading to refuse."""
        members: list[_Member] = []
        if fmt == "zip":
            with zipfile.ZipFile(archive) as handle:
                infos = handle.infolist()
                if len(infos) > self.max_members:
                    raise self._too_many()
                for info in infos:
                    mode = info.external_attr >> 16
                    if info.is_dir():
                        kind = "dir"
                    elif stat_module.S_ISLNK(mode):
                        kind = "symlink"
                    elif stat_module.S_IFMT(mode) and not stat_module.S_ISREG(mode):
                        kind = "other"
                    else:
                        kind = "file"
                    link = handle.read(info)[:4096].decode("utf-8", "replace") \
                        if kind == "symlink" and info.file_size <= 4096 else ""
                    members.append(_Member(info.filename, kind, info.file_size, link, info))
            return members
        total = 0
        with self._opened(archive, fmt) as handle:
            for tinfo in handle:  # streamed: the limits are checked before reading further
                if len(members) >= self.max_members:
                    raise self._too_many()
                if tinfo.isdir():
                    kind = "dir"
                elif tinfo.isreg():
                    kind = "file"
                elif tinfo.issym():
                    kind = "symlink"
                elif tinfo.islnk():
                    kind = "hardlink"
                else:
                    kind = "other"
                members.append(_Member(tinfo.name, kind, tinfo.size if kind == "file" else 0,
                                       tinfo.linkname, tinfo))
                total += members[-1].size
                if extracting and total > self.max_total_bytes:
                    raise self._too_big(total)
        return members

    # -- extracting ----------------------------------------------------------------------

    def _check(self, members: list[_Member]) -> list[tuple[_Member, tuple[str, ...]]]:
        """Each member with its safe name components; raise for any unsafe member."""
        total = sum(m.size for m in members if m.kind == "file")
        if total > self.max_total_bytes:
            raise self._too_big(total)
        checked: list[tuple[_Member, tuple[str, ...]]] = []
        for member in members:
            parts = _safe_parts(member.name)
            if member.kind == "other":
                raise _refuse(f"the archive member {member.name!r} is a device file or FIFO",
                              hint="only files and directories are extracted")
            if member.kind in ("symlink", "hardlink"):
                base = parts[:-1] if member.kind == "symlink" else ()
                target = member.link.replace("\\", "/")
                joined = PurePosixPath(*base, target) if target else PurePosixPath(".")
                depth = 0
                for part in joined.parts:
                    depth += -1 if part == ".." else 0 if part in (".", "") else 1
                    if depth < 0:
                        break
                if target.startswith("/") or depth < 0:
                    raise _refuse(f"the archive member {member.name!r} is a {member.kind} "
                                  f"to {member.link!r}, outside the destination",
                                  hint="the archive is unsafe to extract")
            checked.append((member, parts))
        return checked

    @contextlib.contextmanager
    def _opened(self, archive: Path, fmt: str) -> Iterator[Any]:
        if fmt == "zip":
            with zipfile.ZipFile(archive) as zhandle:
                yield zhandle
        elif fmt == "tar":  # skipping data is a seek in the file: nothing to inflate
            with tarfile.open(archive, "r:", tarinfo=_TAR_INFO) as thandle:
                yield thandle
        else:
            exceeded = _fail(
                f"reading {self._relative(archive)!r} inflates more than "
                f"{self.max_decompressed_bytes} bytes (the max_decompressed_bytes limit)",
                hint=_limit_hint("max_decompressed_bytes"))
            with gzip.open(archive, "rb") as raw:
                capped = cast("IO[bytes]", _Capped(raw, self.max_decompressed_bytes, exceeded))
                with tarfile.open(fileobj=capped, mode="r:", tarinfo=_TAR_INFO) as thandle:
                    yield thandle

    def _extract(self, archive: Path, fmt: str, members: list[_Member], destination: Path,
                 overwrite: bool) -> dict[str, Any]:
        checked = self._check(members)
        if destination.exists() and not destination.is_dir():
            raise _fail(f"the destination {self._relative(destination)!r} is not a "
                        "directory")
        created: list[Path] = []
        made_dirs: list[Path] = []
        extracted: list[str] = []
        skipped: list[str] = []
        written = 0
        try:
            destination.mkdir(parents=True, exist_ok=True)
            with self._opened(archive, fmt) as handle:
                for member, parts in checked:
                    if member.kind in ("symlink", "hardlink"):
                        skipped.append(member.name)
                        continue
                    if not parts:
                        continue
                    target = destination.joinpath(*parts)
                    self._inside(destination, target.parent, member.name)
                    if member.kind == "dir":
                        self._mkdirs(destination, target, made_dirs)
                        continue
                    self._mkdirs(destination, target.parent, made_dirs)
                    if os.path.lexists(target) and (
                            target.is_symlink() or target.is_dir() or not overwrite):
                            raise _fail(f"{self._relative(target)!r} exists",
                                        hint="pass overwrite=true to replace files")
                    source = (handle.open(member.source) if fmt == "zip"
                              else handle.extractfile(member.source))
                    if source is None:
                        raise _fail(f"cannot read the archive member {member.name!r}")
                    with source:
                        written = self._copy(source, target, written, created)
                    extracted.append("/".join(parts))
        except BaseException:
            for path in reversed(created):
                with contextlib.suppress(OSError):
                    path.unlink()
            for directory in reversed(made_dirs):
                with contextlib.suppress(OSError):
                    directory.rmdir()
            raise
        return {"archive": self._relative(archive), "destination": self._relative(destination),
                "extracted": extracted, "skipped_links": skipped, "bytes": written}

    def _inside(self, destination: Path, directory: Path, name: str) -> None:
        resolved = directory.resolve()
        if resolved != destination and not resolved.is_relative_to(destination):
            raise _refuse(f"the archive member {name!r} would be written outside the "
                          "destination (through a symlink)")

    def _mkdirs(self, destination: Path, directory: Path, made: list[Path]) -> None:
        missing: list[Path] = []
        current = directory
        while current != destination and not os.path.lexists(current):
            missing.append(current)
            current = current.parent
        for path in reversed(missing):
            path.mkdir()
            made.append(path)
        self._inside(destination, directory, directory.name)
        if not directory.is_dir():
            raise _fail(f"{self._relative(directory)!r} exists and is not a directory")

    def _copy(self, source: IO[bytes], target: Path, written: int,
              created: list[Path]) -> int:
        """Copy ``source`` to a new ``target``, keeping the running total within limits."""
        temp_fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        temp = Path(temp_name)
        created.append(temp)
        with os.fdopen(temp_fd, "wb") as out:
            while chunk := source.read(_CHUNK):
                written += len(chunk)
                if written > self.max_total_bytes:
                    raise _fail(f"the archive extracts to more than {self.max_total_bytes} "
                                "bytes (max_total_bytes)", hint=_limit_hint("max_total_bytes"))
                out.write(chunk)
        os.chmod(temp, 0o644)
        os.replace(temp, target)
        created[created.index(temp)] = target
        return written

    # -- creating ------------------------------------------------------------------------

    def _create(self, archive: Path, fmt: str, params: dict[str, Any]) -> dict[str, Any]:
        if archive.is_dir():
            raise _fail(f"{params['archive']!r} is a directory")
        if archive.exists() and not params.get("overwrite", False):
            raise _fail(f"{params['archive']!r} exists", hint="pass overwrite=true")
        if not archive.parent.is_dir():
            raise _fail(f"the directory of {params['archive']!r} does not exist")
        entries: list[tuple[Path, str]] = []
        total = 0
        for raw in params["sources"]:
            source = resolve_in_root(self.root, raw, _NAME)
            if not source.exists():
                raise _fail(f"no such file or directory: {raw!r}")
            if not (source.is_file() or source.is_dir()):  # reading a FIFO never ends
                raise _fail(f"{raw!r} is not a regular file or directory",
                            hint="only files and directories can be archived")
            for path in self._walk(source):
                if path == archive:
                    continue
                if len(entries) >= self.max_members:
                    raise self._too_many()
                if path.is_file():
                    total += path.stat().st_size
                    if total > self.max_total_bytes:
                        raise _fail(f"the sources hold more than {self.max_total_bytes} "
                                    "bytes (max_total_bytes)",
                                    hint=_limit_hint("max_total_bytes"))
                entries.append((path, self._relative(path)))
        temp_fd, temp_name = tempfile.mkstemp(dir=archive.parent, prefix=f".{archive.name}.")
        os.close(temp_fd)
        try:
            if fmt == "zip":
                with zipfile.ZipFile(temp_name, "w", zipfile.ZIP_DEFLATED) as zout:
                    for path, name in entries:
                        zout.write(path, name)
            else:
                with tarfile.open(temp_name, "w:gz" if fmt == "tar.gz" else "w") as tout:
                    for path, name in entries:
                        tout.add(path, name, recursive=False)
            os.chmod(temp_name, 0o644)
            os.replace(temp_name, archive)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp_name)
            raise
        return {"archive": self._relative(archive), "format": fmt,
                "members": [name for _, name in entries], "bytes": total,
                "size": archive.stat().st_size}

    def _walk(self, source: Path) -> Iterator[Path]:
        """``source`` and, for a directory, everything under it; symlinks are left out."""
        if source.is_file():
            yield source
            return
        if source != self.root:
            yield source
        for directory, dirs, files in os.walk(source, followlinks=False):
            dirs.sort()
            current = Path(directory)
            for name in [*dirs, *sorted(files)]:
                path = current / name
                if path.is_symlink() or not (path.is_file() or path.is_dir()):
                    continue
                yield path
