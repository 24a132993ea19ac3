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
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
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


async def interleaved_medians(runs: Sequence[Callable[[], Awaitable[object]]], rounds: int,
                              *, expect: object, warmup: int = 5) -> list[float]:
    """Median µs per call of each of ``runs`` (in their order), for runs of milliseconds.

    After ``warmup`` calls of each, ``rounds`` rounds take one call of each in turn (the
    order reversed every other round), with a collection before each round and the
    collector held back during it: a load spike or a collection hits them all alike. Each
    call must return ``expect`` (else ``RuntimeError``: a benchmark that measured the
    wrong thing must not report a figure)."""

    async def once(run: Callable[[], Awaitable[object]]) -> float:
        start = time.perf_counter()
        out = await run()
        elapsed = (time.perf_counter() - start) * 1e6
        if out != expect:
            raise RuntimeError(f"a benchmarked run returned {out!r}, not {expect!r}")
        return elapsed

    timings: list[list[float]] = [[] for _ in runs]
    was_enabled = gc.isenabled()
    try:
        for _ in range(warmup):
            for run in runs:
                await once(run)
        order = list(enumerate(runs))
        for i in range(rounds):
            gc.collect()
            gc.disable()
            for index, run in order if i % 2 == 0 else order[::-1]:
                timings[index].append(await once(run))
            if was_enabled:
                gc.enable()
    finally:
        if was_enabled:
            gc.enable()
    return [statistics.median(t) for t in timings]


def report(title: str, rows: list[Row], json_path: Path | None) -> int:
    """Print the table, write JSON if asked; return 0 (benchmarks inform, tests gate)."""
    print(title)
    width = max([44, *(len(r.name) for r in rows)])
    header = (f"{'name':<{width}} {'value':>12} {'unit':<10} {'baseline':>10} {'ratio':>8}"
              "  target")
    print(header)
    print("-" * len(header))
    for r in rows:
        base = f"{r.baseline:.1f}" if r.baseline is not None else "-"
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
        mark = "ok" if r.met else "MISSED"
        print(f"{r.name:<{width}} {r.value:>12.1f} {r.unit:<10} {base:>10} {ratio:>8}  "
              f"{r.target} [{mark}]")
    if json_path is not None:
        json_path.write_text(json.dumps([asdict(r) for r in rows], indent=2))
        print(f"wrote {json_path}")
    return 0
