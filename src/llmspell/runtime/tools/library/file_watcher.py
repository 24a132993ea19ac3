"""A file watcher confined to one directory: poll for a bounded time and report changes.

Why polling rather than inotify and friends: it needs no extra dependency, behaves the
same on every platform, and a watch bounded to at most a minute does not need kernel
events. Each poll takes a snapshot (modification time in nanoseconds and size of every
file under the watched paths; symlinks are not followed) on a worker thread, and the
difference with the previous snapshot gives ``created``, ``modified`` and ``deleted``
changes. Each change is also handed to ``publish("tool.file_watcher.change", change)``
when a publisher is configured (e.g. ``system.bus.publish``).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

from llmspell.core.clock import SYSTEM_CLOCK, Clock
from llmspell.core.errors import ToolExecutionError
from llmspell.runtime.tools.base import SecurityLevel, Tool
from llmspell.runtime.tools.library.file_search import check_root, resolve_in_root

__all__ = ["CHANGE_EVENT", "FileWatcherTool"]

_NAME = "file_watcher"
CHANGE_EVENT: Final = "tool.file_watcher.change"
"""The event type each change is published as."""
MAX_DURATION: Final = 60.0

_Snapshot = dict[str, tuple[int, int]]


def _fail(message: str, hint: str | None = None) -> ToolExecutionError:
    return ToolExecutionError(_NAME, message, hint=hint)


class FileWatcherTool(Tool):
    """Watch files under one sandbox directory for a while and report what changed.

    ``clock`` (its ``monotonic``) measures the watch and ``sleep`` waits between polls;
    tests inject a ``ManualClock`` and a recording sleep.
    """

    name = _NAME
    description = (
        "Watch files or directories inside a sandbox directory ('paths', relative to it; "
        "default the whole sandbox) for 'duration' seconds (at most 60), polling every "
        "'interval' seconds, and report the changes: created, modified, deleted, each with "
        "its path. 'stop_on_change' returns as soon as something changed."
    )
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "paths": {"type": "array", "minItems": 1, "maxItems": 100,
                      "items": {"type": "string", "maxLength": 4096},
                      "description": "Files or directories to watch (default ['.'])."},
            "duration": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_DURATION,
                         "description": "How long to watch, in seconds (at most 60)."},
            "interval": {"type": "number", "minimum": 0.01, "maximum": 10,
                         "description": "Seconds between polls (default 0.5)."},
            "recursive": {"type": "boolean",
                          "description": "Watch subdirectories too (default true)."},
            "stop_on_change": {"type": "boolean",
                               "description": "Return after the first poll that saw a "
                                              "change (default false)."},
        },
        "required": ["duration"],
        "additionalProperties": False,
    }
    timeout = MAX_DURATION + 15.0
    security_level = SecurityLevel.RESTRICTED

    def __init__(self, root: Path | str, *,
                 publish: Callable[[str, dict[str, Any]], object] | None = None,
                 max_files: int = 10_000, max_changes: int = 1000,
                 clock: Clock = SYSTEM_CLOCK,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        self.root = check_root(root)
        self._clock = clock
        self._sleep = sleep
        self.publish = publish
        self.max_files = max_files
        self.max_changes = max_changes

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix() or "."

    def _snapshot(self, targets: list[Path], recursive: bool) -> _Snapshot:
        """(mtime_ns, size) of every regular file under ``targets``."""
        found: _Snapshot = {}

        def add(path: Path) -> None:
            try:
                info = path.lstat()
            except OSError:
                return  # vanished between listing and stat: seen as deleted or not yet there
            if not path.is_symlink() and path.is_file():
                if len(found) >= self.max_files:
                    raise _fail(f"more than {self.max_files} files to watch",
                                hint="watch fewer or smaller directories")
                found[self._relative(path)] = (info.st_mtime_ns, info.st_size)

        for target in targets:
            if target.is_symlink() or not target.is_dir():
                add(target)
                continue
            for directory, dirs, files in os.walk(target, followlinks=False):
                if not recursive:
                    dirs.clear()
                for name in files:
                    add(Path(directory) / name)
        return found

    async def execute(self, params: dict[str, Any]) -> dict[str, Any]:
        """Watch for ``params["duration"]`` seconds and return the changes seen."""
        targets = [resolve_in_root(self.root, raw, _NAME)
                   for raw in params.get("paths", ["."])]
        duration = min(float(params["duration"]), MAX_DURATION)
        interval = float(params.get("interval", 0.5))
        recursive: bool = params.get("recursive", True)
        stop_on_change: bool = params.get("stop_on_change", False)
        clock = self._clock
        started = clock.monotonic()
        deadline = started + duration
        previous = await asyncio.to_thread(self._snapshot, targets, recursive)
        changes: list[dict[str, Any]] = []
        truncated = False
        polls = 0
        while clock.monotonic() < deadline:
            await self._sleep(max(0.0, min(interval, deadline - clock.monotonic())))
            current = await asyncio.to_thread(self._snapshot, targets, recursive)
            polls += 1
            found = self._diff(previous, current, round(clock.monotonic() - started, 3))
            previous = current
            for change in found:
                if len(changes) >= self.max_changes:
                    truncated = True
                    break
                changes.append(change)
                await self._publish(change)
            if truncated or (stop_on_change and found):
                break
        return {"changes": changes, "polls": polls, "watched_files": len(previous),
                "elapsed": round(clock.monotonic() - started, 3), "truncated": truncated}

    @staticmethod
    def _diff(before: _Snapshot, after: _Snapshot, elapsed: float) -> list[dict[str, Any]]:
        now = time.time()
        changes: list[dict[str, Any]] = [
            {"type": "created", "path": path, "size": after[path][1]}
            for path in sorted(after.keys() - before.keys())
        ]
        changes.extend({"type": "modified", "path": path, "size": after[path][1]}
                       for path in sorted(after.keys() & before.keys())
                       if after[path] != before[path])
        changes.extend({"type": "deleted", "path": path, "size": None}
                       for path in sorted(before.keys() - after.keys()))
        for change in changes:
            change.update(elapsed=elapsed, timestamp=now)
        return changes

    async def _publish(self, change: dict[str, Any]) -> None:
        if self.publish is None:
            return
        result = self.publish(CHANGE_EVENT, dict(change))
        if inspect.isawaitable(result):
            await result
