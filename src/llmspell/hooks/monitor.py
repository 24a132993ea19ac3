"""The performance monitor: counts, errors and latency percentiles per hook and per point.

Recording is on the dispatch hot path, so it takes no lock: each series counts with
``itertools.count`` (whose ``next`` is atomic in CPython) and keeps a bounded ``deque`` of
recent samples (whose ``append`` is atomic too). Counts are exact over the whole run; mean,
percentiles (nearest rank) and max are computed, when asked for, over the recent samples.

Every call is sampled (no 1-in-N sampling: a circuit breaker must see every slow call, and
percentiles over every call need no correction). To keep that cheap the executor reads the
clock once per hook on its common path, the end of one hook being the start of the next:
a hook's duration includes the executor's step between two hooks (tens of ns), and the
first hook's includes the chain's plan lookup. A point's dispatch time runs from before
that lookup to after the last hook; its "in hooks" time is the sum of the hooks' times.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Iterable

import msgspec

from llmspell.core.stats import counter_value, percentile

__all__ = ["LatencySeries", "LatencyStats", "OverheadRow", "PerformanceMonitor"]


class LatencyStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counts (whole run) and latency over recent samples (nanoseconds) of a hook or point."""

    name: str
    point: str
    count: int
    errors: int
    overruns: int
    mean_ns: float
    p50_ns: int
    p95_ns: int
    p99_ns: int
    max_ns: int


class OverheadRow(msgspec.Struct, frozen=True, kw_only=True):
    """Per point: mean time per dispatch, mean time inside hooks, and the executor's share."""

    point: str
    dispatches: int
    mean_dispatch_ns: float
    mean_in_hooks_ns: float
    mean_overhead_ns: float
    overhead_fraction: float


class LatencySeries:
    """Counts and recent samples for one hook or point. ``record`` is lock-free."""

    __slots__ = ("_errors", "_overruns", "calls", "name", "point", "samples", "side")

    def __init__(self, name: str, point: str, size: int) -> None:
        self.name = name
        self.point = point
        self.calls = itertools.count()
        self._errors = itertools.count()
        self._overruns = itertools.count()
        self.samples: deque[int] = deque(maxlen=size)
        # For points: time spent inside hooks, paired with ``samples``.
        self.side: deque[int] = deque(maxlen=size)

    def record(self, duration_ns: int, *, error: bool = False) -> None:
        """Record one call (``error``: it failed)."""
        self.samples.append(duration_ns)
        next(self.calls)
        if error:
            next(self._errors)

    def record_overrun(self) -> None:
        """Count a sync call that ran past its timeout."""
        next(self._overruns)

    @property
    def count(self) -> int:
        """Calls recorded over the whole run."""
        return counter_value(self.calls)

    def stats(self) -> LatencyStats:
        """Counts and percentiles of this series."""
        ordered = sorted(list(self.samples))
        return LatencyStats(
            name=self.name,
            point=self.point,
            count=counter_value(self.calls),
            errors=counter_value(self._errors),
            overruns=counter_value(self._overruns),
            mean_ns=sum(ordered) / len(ordered) if ordered else 0.0,
            p50_ns=int(percentile(ordered, 50)),
            p95_ns=int(percentile(ordered, 95)),
            p99_ns=int(percentile(ordered, 99)),
            max_ns=ordered[-1] if ordered else 0,
        )


class PerformanceMonitor:
    """Collects per-hook and per-point timings fed by the executor. Thread-safe."""

    def __init__(self, sample_size: int = 1024) -> None:
        if sample_size < 1:
            raise ValueError("sample_size must be >= 1")
        self.sample_size = sample_size
        self._lock = threading.Lock()
        self._hooks: dict[int, LatencySeries] = {}
        self._points: dict[str, LatencySeries] = {}

    def hook_series(self, hook_id: int, name: str, point: str) -> LatencySeries:
        """The series of one registered hook (created on first use)."""
        series = self._hooks.get(hook_id)
        if series is None:
            with self._lock:
                series = self._hooks.get(hook_id)
                if series is None:
                    series = self._hooks[hook_id] = LatencySeries(name, point, self.sample_size)
        return series

    def forget_hooks(self, hook_ids: Iterable[int]) -> None:
        """Drop the series of these hooks (unregistered: their ids are never reused)."""
        with self._lock:
            for hook_id in hook_ids:
                self._hooks.pop(hook_id, None)

    def point_series(self, point: str) -> LatencySeries:
        """The series of whole dispatches of ``point`` (created on first use)."""
        series = self._points.get(point)
        if series is None:
            with self._lock:
                series = self._points.get(point)
                if series is None:
                    series = self._points[point] = LatencySeries(point, point, self.sample_size)
        return series

    def record_hook(
        self, hook_id: int, name: str, point: str, duration_ns: int, *,
        error: bool = False, overrun: bool = False,
    ) -> None:
        """Record one hook call (``overrun``: a sync hook ran past its timeout)."""
        series = self.hook_series(hook_id, name, point)
        series.record(duration_ns, error=error)
        if overrun:
            series.record_overrun()

    def record_dispatch(self, point: str, duration_ns: int, in_hooks_ns: int, errors: int) -> None:
        """Record one whole dispatch of ``point`` and the part of it spent inside hooks."""
        series = self.point_series(point)
        series.side.append(in_hooks_ns)
        series.record(duration_ns, error=errors > 0)

    def hook_stats(self, point: str | None = None) -> list[LatencyStats]:
        """Stats per hook, optionally for one point, slowest p99 first."""
        with self._lock:
            series = list(self._hooks.values())
        rows = [s.stats() for s in series if point is None or s.point == point]
        return sorted(rows, key=lambda r: r.p99_ns, reverse=True)

    def stats_for(self, name: str, point: str | None = None) -> LatencyStats | None:
        """Stats of the hook called ``name`` (at ``point`` if given), or None if never run."""
        for row in self.hook_stats(point):
            if row.name == name:
                return row
        return None

    def point_stats(self) -> list[LatencyStats]:
        """Stats per point (whole dispatches), slowest p99 first."""
        with self._lock:
            series = list(self._points.values())
        return sorted((s.stats() for s in series), key=lambda r: r.p99_ns, reverse=True)

    def overhead_report(self) -> list[OverheadRow]:
        """Per point, over recent dispatches: time in hooks versus time in the executor."""
        with self._lock:
            items = sorted(self._points.items())
        rows = []
        for point, series in items:
            totals = list(series.samples)
            in_hooks = list(series.side)
            n = min(len(totals), len(in_hooks))
            mean_dispatch = sum(totals[-n:]) / n if n else 0.0
            mean_hooks = sum(in_hooks[-n:]) / n if n else 0.0
            overhead = max(0.0, mean_dispatch - mean_hooks)
            rows.append(
                OverheadRow(
                    point=point,
                    dispatches=series.count,
                    mean_dispatch_ns=mean_dispatch,
                    mean_in_hooks_ns=mean_hooks,
                    mean_overhead_ns=overhead,
                    overhead_fraction=overhead / mean_dispatch if mean_dispatch else 0.0,
                )
            )
        return rows

    def reset(self) -> None:
        """Forget everything recorded."""
        with self._lock:
            self._hooks.clear()
            self._points.clear()
