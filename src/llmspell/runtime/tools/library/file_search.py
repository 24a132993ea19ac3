"""Search files under a sandbox directory: by glob pattern and by content.

Why hand-written: the walk must stay inside the sandbox. Paths given by the caller are
resolved with :func:`resolve_in_root` (absolute paths, ``..`` and symlink escapes are
refused); the walk never descends into symlinked directories and reads a symlinked file
only when it resolves inside the root. Limits bound the files scanned, the matches
returned and the size of a file read; files that look binary (a NUL byte) are skipped.

:func:`resolve_in_root` is shared by the other sandboxed data-file tools.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Final

from llmspell.core.errors import ConfigurationError, SandboxViolationError, ToolExecutionError
from llmspell.core.text import printable
from llmspell.runtime.tools.base import SecurityLevel, Tool
from llmspell.runtime.tools.library.safe_regex import UserRegex, compile_user_regex

__all__ = ["FileSearchTool", "check_root", "glob_regex", "resolve_in_root"]

_NAME = "file_search"
MAX_PATTERN_LENGTH: Final = 500
"""Longest glob pattern or content query accepted."""
MAX_LINE_SHOWN: Final = 500
"""Matched lines longer than this are cut in the result."""


def check_root(root: Path | str) -> Path:
    """``root`` resolved; :class:`ConfigurationError` unless it is an existing directory."""
    resolved = Path(root).resolve()
    if not resolved.is_dir():
        raise ConfigurationError(f"the sandbox {str(root)!r} is not a directory",
                                 hint="create it first, or pass an existing directory")
    return resolved


def resolve_in_root(root: Path, raw: str, tool: str) -> Path:
    """The path ``raw`` (relative to the resolved ``root``) resolved, symlinks followed.

    Raises :class:`SandboxViolationError` (naming ``tool``) for NUL bytes, absolute paths,
    ``..`` components, and paths that a symlink leads outside ``root``. The path need not
    exist.
    """
    if "\0" in raw:
        raise SandboxViolationError(tool, "the path contains a NUL byte")
    if PurePosixPath(raw).is_absolute() or PureWindowsPath(raw).drive or raw.startswith(
            ("/", "\\")):
        raise SandboxViolationError(tool, f"absolute paths are not allowed: {raw!r}",
                                    hint="paths are relative to the sandbox root")
    parts = PurePosixPath(raw.replace("\\", "/")).parts
    if ".." in parts:
        raise SandboxViolationError(
            tool, f"'..' is not allowed in paths: {raw!r}",
            hint="paths are relative to the sandbox root and cannot leave it")
    try:
        resolved = root.joinpath(*parts).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop, among others
        raise ToolExecutionError(tool, f"cannot resolve {raw!r}: {exc}") from None
    if resolved != root and not resolved.is_relative_to(root):
        raise SandboxViolationError(tool, f"{raw!r} leads outside the sandbox (through a "
                                    "symlink)", hint="symlinks may only point inside the "
                                    "sandbox")
    return resolved


def glob_regex(pattern: str) -> UserRegex:
    """A regex for a glob over ``/``-separated relative paths: ``*`` and ``?`` stay within
    one path component, ``**`` spans components, ``[...]`` is a character class. A pattern
    without ``/`` matches the file name at any depth.

    It runs on RE2: with :mod:`re`, a glob such as ``*a*a*a*a*a*a*a*a*a*a*b`` backtracks
    for minutes on one long file name. Raises :class:`ToolExecutionError` for a glob that
    makes no valid regex."""
    if "/" not in pattern:
        pattern = "**/" + pattern
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = pattern.find("]", i + 2)
            if end == -1:
                out.append(re.escape(char))
            else:
                body = pattern[i + 1:end].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = end + 1
                continue
        else:
            out.append(re.escape(char))
        i += 1
    return compile_user_regex("(?s)" + "".join(out) + r"\Z", _NAME, what="glob pattern",
                              max_length=8 * MAX_PATTERN_LENGTH)


def _fail(message: str, hint: str | None = None) -> ToolExecutionError:
    return ToolExecutionError(_NAME, message, hint=hint)


class FileSearchTool(Tool):
    """Find files by glob pattern and search their contents, inside one sandbox."""

    name = _NAME
    description = (
        "Search files inside a sandbox directory. 'pattern' is a glob ('*.py', "
        "'src/**/*.md'; without '/' it matches file names at any depth; default '*'); "
        "'path' is the directory to search (default the root). With 'query' the files' "
        "contents are searched too (literal text, or a regex with regex=true; "
        "'case_sensitive' defaults to true) and each match gives file, line number and "
        "line. Binary and oversized files are skipped."
    )
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "pattern": {"type": "string", "minLength": 1, "maxLength": MAX_PATTERN_LENGTH,
                        "description": "A glob over paths relative to 'path'."},
            "path": {"type": "string", "maxLength": 4096,
                     "description": "The directory to search, relative to the sandbox."},
            "query": {"type": "string", "minLength": 1, "maxLength": MAX_PATTERN_LENGTH,
                      "description": "Text (or regex) to find in the files' lines."},
            "regex": {"type": "boolean", "description": "'query' is a regular expression."},
            "case_sensitive": {"type": "boolean", "description": "Default true."},
            "max_results": {"type": "integer", "minimum": 1, "maximum": 1000,
                            "description": "Most files (glob) or matches returned "
                                           "(default 100)."},
        },
        "additionalProperties": False,
    }
    timeout = 30.0
    security_level = SecurityLevel.RESTRICTED
    blocking = True

    def __init__(self, root: Path | str, *, max_files: int = 10_000,
                 max_file_bytes: int = 1024 * 1024) -> None:
        self.root = check_root(root)
        self.max_files = max_files
        self.max_file_bytes = max_file_bytes

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix() or "."

    def _walk(self, base: Path) -> tuple[list[tuple[str, Path]], bool]:
        """(path relative to ``base``, path) of the files under ``base``, sorted; and
        whether the file limit cut the walk short."""
        found: list[tuple[str, Path]] = []
        for directory, dirs, files in os.walk(base, followlinks=False):
            dirs.sort()
            current = Path(directory)
            for name in sorted(files):
                path = current / name
                if path.is_symlink():
                    target = path.resolve()
                    if not target.is_relative_to(self.root) or not target.is_file():
                        continue
                if len(found) >= self.max_files:
                    return found, True
                found.append((path.relative_to(base).as_posix(), path))
        return found, False

    def execute(self, params: dict[str, Any]) -> dict[str, Any]:
        """Search as ``params`` say; see the class description."""
        base = resolve_in_root(self.root, params.get("path", "."), _NAME)
        if not base.is_dir():
            raise _fail(f"{params.get('path', '.')!r} is not a directory",
                        hint="'path' names a directory to search")
        try:
            matcher = glob_regex(params.get("pattern", "*"))
        except ToolExecutionError:
            raise _fail(f"invalid glob pattern {params.get('pattern')!r}",
                        hint="e.g. '*.py', 'docs/**/*.md', '[abc]*.txt'") from None
        limit: int = params.get("max_results", 100)
        files, capped = self._walk(base)
        selected = [(rel, path) for rel, path in files if matcher.match(printable(rel))]
        result: dict[str, Any] = {"path": self._relative(base), "files_scanned": len(files),
                                  "file_limit_reached": capped}
        if "query" not in params:
            result["files"] = [self._relative(p) for _, p in selected[:limit]]
            result["truncated"] = len(selected) > limit
            return result
        query: str = params["query"]
        ignore_case = not params.get("case_sensitive", True)
        # RE2: matching time is linear in the line, whatever the pattern.
        search = compile_user_regex(query if params.get("regex", False) else re.escape(query),
                                    _NAME, ignore_case=ignore_case)
        matches: list[dict[str, Any]] = []
        skipped: list[str] = []
        truncated = False
        for _, path in selected:
            text = self._text(path)
            if text is None:
                skipped.append(self._relative(path))
                continue
            for number, line in enumerate(text.splitlines(), start=1):
                if search.search(line):
                    if len(matches) >= limit:
                        truncated = True
                        break
                    matches.append({"file": self._relative(path), "line": number,
                                    "text": line[:MAX_LINE_SHOWN]})
            if truncated:
                break
        result.update(matches=matches, truncated=truncated, skipped=skipped,
                      files_searched=len(selected))
        return result

    def _text(self, path: Path) -> str | None:
        """The file's text, or None when it is too big, binary or unreadable."""
        try:
            # O_NONBLOCK: opening a FIFO would otherwise wait for a writer, forever.
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            with os.fdopen(fd, "rb") as handle:
                info = os.fstat(handle.fileno())
                if not stat.S_ISREG(info.st_mode) or info.st_size > self.max_file_bytes:
                    return None  # a FIFO, socket or device: no end, or no content
                data = handle.read(self.max_file_bytes + 1)
        except OSError:
            return None
        if len(data) > self.max_file_bytes or b"\0" in data[:8192]:
            return None
        return data.decode("utf-8", "replace")
