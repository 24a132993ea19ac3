"""Shared helpers for the benchmark scripts: timing, the table, the JSON rows.

Every benchmark prints a table and, with ``--json PATH``, writes a list of rows
``{"name", "value", "unit", "baseline", "ratio", "target", "met"}``; ``--quick`` runs a
short version in seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class Row:
    """One measured figure, compared with a baseline measured in the same run."""

    name: str
    value: float
    unit: str
    baseline: float | None
    ratio: float | None
    target: str
    met: bool


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a short run (seconds)")
    parser.add_argument("--json", type=Path, help="write the rows as JSON to this path")
    return parser.parse_args()


def time_sync(fn: Callable[[], object], number: int, repeat: int) -> float:
    """Best-of-``repeat`` nanoseconds per call of ``fn`` over ``number`` calls."""
    best = float("inf")
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            start = time.perf_counter_ns()
            for _ in range(number):
                fn()
            best = min(best, (time.perf_counter_ns() - start) / number)
    finally:
        if gc_was_enabled:
            gc.enable()
    return best


def _nothing() -> None:
    return None


def call_overhead_ns(number: int, repeat: int) -> float:
    """What :func:`time_sync` itself costs per call (its loop and one call of a function
    that does nothing): subtract it from a figure to get the cost of the work alone."""
    return time_sync(_nothing, number, repeat)


def net_ns(fn: Callable[[], object], number: int, repeat: int, overhead: float) -> float:
    """ns per call of ``fn`` minus the harness's own cost per call (``overhead``, from
    :func:`call_overhead_ns`), never below 1 ns."""
    return max(1.0, time_sync(fn, number, repeat) - overhead)


def rss_bytes() -> int:
    """The process's resident memory now (Linux ``/proc/self/statm``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")


def time_async(fn: Callable[[], Awaitable[object]], number: int, repeat: int) -> float:
    """Best-of-``repeat`` nanoseconds per ``await fn()`` over ``number`` awaits."""

    async def run() -> float:
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter_ns()
            for _ in range(number):
                await fn()
            best = min(best, (time.perf_counter_ns() - start) / number)
        return best

    gc.disable()
    try:
        return asyncio.run(run())
    finally:
        gc.enable()


def report(title: str, rows: list[Row], json_path: Path | None) -> int:
    """Print the table, write JSON if asked; return 0 (benchmarks inform, tests gate)."""
    print(title)
    header = f"{'name':<44} {'value':>12} {'unit':<10} {'baseline':>10} {'ratio':>8}  target"
    print(header)
    print("-" * len(header))
    for r in rows:
        base = f"{r.baseline:.1f}" if r.baseline is not None else "-"
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
        mark = "ok" if r.met else "MISSED"
        print(f"{r.name:<44} {r.value:>12.1f} {r.unit:<10} {base:>10} {ratio:>8}  "
              f"{r.target} [{mark}]")
    if json_path is not None:
        json_path.write_text(json.dumps([asdict(r) for r in rows], indent=2))
        print(f"wrote {json_path}")
    return 0
