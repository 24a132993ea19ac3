"""A tool that reports system resource use with :mod:`psutil` (the optional ``tools``
extra: ``pip install 'llmspell[tools]'``).

It reports CPU percent (sampled over a bounded interval), memory, disk usage of a path,
the load average and the top processes by CPU or memory. Process entries carry the pid,
name and usage only, never command lines (which often hold secrets); the user owning each
process only when the tool is built with ``process_users=True`` (``default_tools`` ties
that to the exec capability: whoever may run ``ps`` learns nothing new).

Disk usage is reported for the root filesystem by default. A ``path`` the caller names must
lie inside one of the tool's ``read_roots`` (the same folder check as the file tools,
separator-aware and after resolving symlinks); anything else is refused with the same
error whether it exists or not, so the tool is no oracle for files outside the roots.
Without read roots, ``path`` is refused altogether.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any, Final

from llmspell.core.errors import ConfigurationError, SandboxViolationError, ToolExecutionError
from llmspell.runtime.tools.base import SecurityLevel, Tool

__all__ = ["SystemMonitorTool"]

_NAME = "system_monitor"
METRICS: Final = ("cpu", "memory", "disk", "load", "processes")
MAX_INTERVAL: Final = 5.0


def _psutil() -> ModuleType:
    try:
        import psutil  # noqa: PLC0415 - optional dependency
    except ImportError:
        raise ConfigurationError("the system_monitor tool needs psutil",
                                 hint="pip install 'llmspell[tools]'") from None
    return psutil


def _num(value: float) -> float | None:
    return round(value, 2) if math.isfinite(value) else None


class SystemMonitorTool(Tool):
    """Report CPU, memory, disk, load average and top processes."""

    name = _NAME
    description = (
        "Report system resource use. 'metrics': any of cpu, memory, disk, load, processes "
        "(default all); 'interval' seconds to sample CPU over (0-5, default 0.2); 'path' "
        "whose disk usage to report (default /; other paths only inside the configured "
        "read roots); 'top' processes to list (1-50, default 5) sorted by 'sort_by' cpu or "
        "memory."
    )
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "metrics": {"type": "array", "items": {"enum": list(METRICS)}, "minItems": 1,
                        "uniqueItems": True, "description": "What to report."},
            "interval": {"type": "number", "minimum": 0, "maximum": MAX_INTERVAL,
                         "description": "Seconds to sample CPU use over."},
            "path": {"type": "string", "minLength": 1, "maxLength": 4096,
                     "description": "A path on the disk to report."},
            "top": {"type": "integer", "minimum": 1, "maximum": 50,
                    "description": "How many processes to list."},
            "sort_by": {"enum": ["cpu", "memory"], "description": "Process order."},
        },
        "additionalProperties": False,
    }
    timeout = 2 * MAX_INTERVAL + 10.0
    security_level = SecurityLevel.PRIVILEGED
    blocking = True

    def __init__(self, *, read_roots: Iterable[Path | str] = (),
                 process_users: bool = False) -> None:
        self.read_roots = tuple(Path(os.path.realpath(r)) for r in read_roots)
        self.process_users = process_users

    def _disk_path(self, raw: str) -> str:
        """``raw`` resolved, when it lies inside a read root; otherwise a refusal that does
        not depend on whether ``raw`` exists."""
        if os.path.isabs(raw):
            resolved = Path(os.path.realpath(raw))
            for root in self.read_roots:
                if resolved == root or resolved.is_relative_to(root):
                    return str(resolved)
        raise SandboxViolationError(
            _NAME, f"path {raw!r} is not inside the tool's read roots",
            hint="pass an absolute path under one of: "
            + (", ".join(str(r) for r in self.read_roots) or "(none configured)")
            + "; omit 'path' for the root filesystem")

    def execute(self, params: dict[str, Any]) -> dict[str, Any]:
        """Collect the metrics asked for; see the class description."""
        psutil = _psutil()
        wanted = params.get("metrics", list(METRICS))
        interval = float(params.get("interval", 0.2))
        result: dict[str, Any] = {"timestamp": time.time()}
        procs: list[Any] = []
        sort_by = params.get("sort_by", "cpu")
        if "processes" in wanted and sort_by == "cpu":
            procs = list(psutil.process_iter(["pid", "name", "username", "memory_percent",
                                              "memory_info"]))
            for proc in procs:  # the first call starts each process's CPU measurement
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied,
                                         psutil.ZombieProcess):
                    proc.cpu_percent(None)
        if "cpu" in wanted:
            per_cpu = psutil.cpu_percent(interval=interval, percpu=True)
            result["cpu"] = {
                "percent": _num(sum(per_cpu) / len(per_cpu)) if per_cpu else None,
                "per_cpu": [_num(p) for p in per_cpu],
                "count_logical": psutil.cpu_count(logical=True),
                "count_physical": psutil.cpu_count(logical=False),
            }
        elif procs:
            time.sleep(max(interval, 0.1))
        if "memory" in wanted:
            mem = psutil.virtual_memory()
            swap = psutil.swap_memory()
            result["memory"] = {"total": mem.total, "available": mem.available,
                                "used": mem.used, "percent": _num(mem.percent),
                                "swap_total": swap.total, "swap_used": swap.used,
                                "swap_percent": _num(swap.percent)}
        if "disk" in wanted:
            path = os.path.abspath(os.sep)
            if "path" in params:
                path = self._disk_path(params["path"])
            try:
                disk = psutil.disk_usage(path)
            except OSError as exc:
                raise ToolExecutionError(_NAME, f"cannot read disk usage of {path!r}: "
                                         f"{exc.strerror or exc}",
                                         hint="pass an existing path") from None
            result["disk"] = {"path": params.get("path", path), "total": disk.total,
                              "used": disk.used, "free": disk.free,
                              "percent": _num(disk.percent)}
        if "load" in wanted:
            try:
                load = psutil.getloadavg()
            except (AttributeError, OSError):  # pragma: no cover - platform without it
                result["load"] = None
            else:
                result["load"] = {"1m": _num(load[0]), "5m": _num(load[1]),
                                  "15m": _num(load[2])}
        if "processes" in wanted:
            rows = self._top(psutil, procs, sort_by, params.get("top", 5))
            if not self.process_users:
                for row in rows:
                    del row["username"]
            result["processes"] = rows
        return result

    @staticmethod
    def _top(psutil: ModuleType, procs: list[Any], sort_by: str,
             top: int) -> list[dict[str, Any]]:
        if not procs:
            procs = list(psutil.process_iter(["pid", "name", "username", "memory_percent",
                                              "memory_info"]))
        rows: list[dict[str, Any]] = []
        for proc in procs:
            try:
                info = proc.info
                cpu = proc.cpu_percent(None) if sort_by == "cpu" else None
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            memory_info = info.get("memory_info")
            mem_pct = info.get("memory_percent")
            rows.append({
                "pid": int(info["pid"]),
                "name": str(info.get("name") or ""),
                "username": None if info.get("username") is None else str(info["username"]),
                "cpu_percent": None if cpu is None else _num(float(cpu)),
                "memory_percent": None if mem_pct is None else _num(float(mem_pct)),
                "rss": None if memory_info is None else int(memory_info.rss),
            })
        key = "cpu_percent" if sort_by == "cpu" else "memory_percent"
        rows.sort(key=lambda r: r[key] or 0.0, reverse=True)
        return rows[:top]
