"""Bus metrics: rates over sliding windows, handler latency, error counters.

Per-type counts come from the bus (its routes count publishes lock-free). Rates come from
snapshots taken at most every ``snapshot_interval`` seconds (the publisher ticks once every
64 events of a type; ``stats()`` ticks too); a rate over a window compares the newest counts
with the newest snapshot at least that old.

History is bounded whatever the number of event types: the total count is kept at every
snapshot (a number each, for ``history`` seconds), the per-type table only every half of
the widest window (:data:`WINDOWS`), and only the few copies that window needs. So the
per-type rates cover between one and one and a half widest windows (60-90 s), each
divided by the time it really spans; the total rates keep their fine resolution.

The counts may be a :class:`TypeCounts`: then ``untracked`` publishes (of event types the
bus no longer counts one by one) add to the totals but to no type. A type that reappears
after it was forgotten is counted from zero: its rate is taken over its new count alone.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import msgspec

from llmspell.core.clock import SYSTEM_CLOCK, Clock
from llmspell.core.stats import percentile
from llmspell.events.flow import FlowStats

__all__ = ["BusMetrics", "BusStats", "HandlerLatency", "TypeCounts", "WINDOWS", "total_count"]

WINDOWS = (1.0, 10.0, 60.0)


class TypeCounts(dict[str, int]):
    """Publishes per event type, and ``untracked``: the publishes of the event types no
    longer counted one by one (a bus bounds how many types it counts)."""

    __slots__ = ("untracked",)

    def __init__(self, *args: Any, **kwargs: int) -> None:
        super().__init__(*args, **kwargs)
        self.untracked = 0


def total_count(counts: dict[str, int]) -> int:
    """Every publish ``counts`` covers: its types' and, for a :class:`TypeCounts`, its
    untracked ones."""
    total = sum(counts.values())
    return total + counts.untracked if isinstance(counts, TypeCounts) else total


class HandlerLatency(msgspec.Struct, frozen=True, kw_only=True):
    """Latency of one subscription's handler over recent (sampled, for inline) calls, in ns."""

    subscription: str
    samples: int
    p50_ns: int
    p95_ns: int
    p99_ns: int
    max_ns: int


class BusStats(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`EventBus.stats` reports. ``published`` counts every publish;
    ``by_type`` lists the event types the bus still counts one by one (a bounded number, see
    :class:`~llmspell.events.bus.EventBus`), so its sum may be less."""

    published: int
    by_type: dict[str, int]
    rates: dict[str, float]
    rates_by_type: dict[str, float]
    delivered: int
    dropped: int
    rejected: int
    expired: int
    handler_errors: int
    rate_limited: int
    store_errors: int
    subscriptions: list[FlowStats]
    handlers: list[HandlerLatency]


class BusMetrics:
    """Counters and periodic snapshots of the per-type counts (for rates)."""

    def __init__(self, counts: Callable[[], dict[str, int]], clock: Clock = SYSTEM_CLOCK,
                 snapshot_interval: float = 0.25, history: float = 120.0) -> None:
        self.counts = counts
        self.clock = clock
        self.snapshot_interval = snapshot_interval
        self._lock = threading.Lock()
        self.handler_errors = itertools.count()
        self.rate_limited = itertools.count()
        self.store_errors = itertools.count()
        # (time, total count): one per snapshot, for the total rates.
        self._totals: deque[tuple[float, int]] = deque(
            maxlen=max(8, int(history / snapshot_interval) + 4)
        )
        # (time, per-type counts): one per half widest window; 4 cover it (see module doc).
        self.type_interval = WINDOWS[-1] / 2
        self._snapshots: deque[tuple[float, dict[str, int]]] = deque(maxlen=4)
        self._last_snapshot = self._last_types = clock.monotonic()
        self._totals.append((self._last_snapshot, 0))
        self._snapshots.append((self._last_snapshot, {}))

    def tick(self) -> None:
        """Take a snapshot if the last one is older than ``snapshot_interval``."""
        now = self.clock.monotonic()
        if now - self._last_snapshot < self.snapshot_interval:
            return
        with self._lock:
            if now - self._last_snapshot < self.snapshot_interval:
                return
            self._last_snapshot = now
            counts = self.counts()
            self._totals.append((now, total_count(counts)))
            if now - self._last_types >= self.type_interval:
                self._last_types = now
                self._snapshots.append((now, counts))

    def rates(self) -> tuple[dict[str, float], dict[str, float]]:
        """(total events/s per window, events/s per type over the widest window)."""
        self.tick()
        now = self.clock.monotonic()
        current = self.counts()
        total_now = total_count(current)
        with self._lock:
            snapshots = list(self._snapshots)
            total_snapshots = list(self._totals)
        totals: dict[str, float] = {}
        for window in WINDOWS:
            at, total = _snapshot_before(total_snapshots, now - window)
            span = now - at
            totals[f"{window:g}s"] = (total_now - total) / span if span > 0 else 0.0
        at, counts = _snapshot_before(snapshots, now - WINDOWS[-1])
        span = now - at
        by_type: dict[str, float] = {}
        for t, n in current.items():
            old = counts.get(t, 0)
            # Below its snapshot: the type was forgotten and is counted from zero since.
            since = n - old if n >= old else n
            by_type[t] = since / span if span > 0 else 0.0
        return totals, by_type


_S = TypeVar("_S")


def _snapshot_before(snapshots: list[tuple[float, _S]], horizon: float) -> tuple[float, _S]:
    chosen = snapshots[0]
    for snap in snapshots:
        if snap[0] <= horizon:
            chosen = snap
        else:
            break
    return chosen


def latency_of(name: str, samples: Iterable[int]) -> HandlerLatency:
    """Percentiles of a subscription's latency samples."""
    ordered = sorted(samples)
    return HandlerLatency(
        subscription=name,
        samples=len(ordered),
        p50_ns=int(percentile(ordered, 50)),
        p95_ns=int(percentile(ordered, 95)),
        p99_ns=int(percentile(ordered, 99)),
        max_ns=ordered[-1] if ordered else 0,
    )
