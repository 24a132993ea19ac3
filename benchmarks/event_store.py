"""The SQLite event store at the sizes users reach: writing, querying and replaying a file
of N events, and a store whose file stays locked (N = 1,000,000; ``--quick``: 100,000).

* Write: ``bus.publish(type, data)`` of N events (a 3-key payload; event types as an agent
  run publishes them: tool, model and agent events, several names each) onto a bus with a
  :class:`SQLiteStore`, the events built inside the timing, until ``bus.flush()`` returns
  (every event committed). Baseline: the same publishes onto a bus without a store.
  Target >= 150,000 events/s.
* Query: the 100 newest events matching a filter, ``store.query(pattern=...,
  descending=True, limit=100)`` on the N-event file, for a glob matching 1 in 4 events, a
  glob matching 1 in 400 (its newest 100 lie far back), an exact type and a correlation id.
  Baseline: the 100 newest events of any type. Best of several calls, each a fresh query.
  Target <= 20 ms.
* Replay: ``await bus.replay(pattern=...)`` on the N-event file to one inline subscriber,
  which counts them, for a glob selecting 1 in 4 of them and for one selecting all. Baseline:
  reading the same events with ``store.iter_events`` without publishing them. Target for
  1,000,000 stored events: <= 5 s (the quick run's target is scaled to its size).
* Locked: another connection holds the file's write lock (``BEGIN IMMEDIATE``) while N
  events are published onto a store with ``max_pending_bytes`` of 8 MiB: the pending bytes
  must stay within that bound, refused publishes must be counted (``StoreFullError``, the
  store's overflow), the process must grow by no more than twice the bound, and once the
  lock is released every accepted event must be committed.

Usage::

    python benchmarks/event_store.py [--quick] [--json out.json]
"""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Row, parse_args, report, rss_bytes

from llmspell.errors import StoreFullError
from llmspell.events import EventBus
from llmspell.events.pattern import compile_pattern
from llmspell.events.store import EventQuery, SQLiteStore

TOOLS = ("calculator", "search", "weather", "shell", "files", "http", "email", "sql")
"""Tool names in the generated events; ``tool.<name>.completed`` is 1 in 4 of them."""
RARE = "tool.sql.failed"
"""An event type published once in every 400 events."""
QUERY_TARGET_MS = 20.0
WRITE_TARGET = 150_000.0
REPLAY_TARGET_S_PER_MILLION = 5.0
LOCKED_BOUND = 8 * 1024 * 1024


def event_type(i: int) -> str:
    """The type of the ``i``-th generated event: tool started/completed, model and agent
    events, and a rare failure."""
    if i % 400 == 399:
        return RARE
    kind = i % 4
    tool = TOOLS[(i // 4) % len(TOOLS)]
    if kind == 0:
        return f"tool.{tool}.started"
    if kind == 1:
        return f"tool.{tool}.completed"
    if kind == 2:
        return "model.openai.completed"
    return "agent.researcher.step"


def publish_all(bus: EventBus, count: int) -> None:
    """Publish ``count`` events as an application does: a type and a fresh 3-key dict."""
    publish = bus.publish
    for i in range(count):
        publish(event_type(i), {"i": i, "ok": True, "call": f"c{i}"},
                {"correlation_id": f"run-{i // 1000}"} if i % 1000 == 0 else None)


def write_rows(path: Path, count: int) -> list[Row]:
    """Write ``count`` events into ``path`` through a bus; the rows for writing."""
    bare = EventBus()
    gc.collect()
    start = time.perf_counter()
    publish_all(bare, count)
    bare_rate = count / (time.perf_counter() - start)
    store = SQLiteStore(path)
    bus = EventBus(store=store)
    gc.collect()
    start = time.perf_counter()
    publish_all(bus, count)
    bus.flush()
    rate = count / (time.perf_counter() - start)
    stored = store.count()
    store.close()
    if stored != count:
        raise RuntimeError(f"{stored} of {count} events were stored")
    return [
        Row(f"publish(type, data), no store, {count:,} events", bare_rate, "events/s",
            None, None, "baseline", True),
        Row(f"publish(type, data) + SQLite, {count:,} events built and committed",
            rate, "events/s", bare_rate, bare_rate / rate, f"value >= {WRITE_TARGET:g}",
            rate >= WRITE_TARGET),
    ]


def best_ms(store: SQLiteStore, count: int, repeat: int, **fields: object) -> float:
    """Best-of-``repeat`` milliseconds for the 100 newest events matching ``fields``."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        found = store.query(descending=True, limit=100, **fields)
        best = min(best, (time.perf_counter() - start) * 1000)
        if len(found) != min(100, count):
            raise RuntimeError(f"the query {fields} found {len(found)} events")
    return best


def query_rows(path: Path, count: int, repeat: int) -> list[Row]:
    """The 100 newest events for several filters, against the 100 newest of any type."""
    store = SQLiteStore(path)
    try:
        base = best_ms(store, count, repeat)
        rows = [Row(f"query: 100 newest of {count:,}, any type", base, "ms", None, None,
                    "baseline", True)]
        for label, fields, matching in (
                ("a glob matching 1 in 4", {"pattern": "tool.*.completed"}, count // 4),
                ("a glob matching 1 in 400", {"pattern": "tool.*.failed"}, count // 400),
                ("an exact type", {"pattern": "model.openai.completed"}, count // 4),
                ("a correlation id", {"correlation_id": "run-7"}, 1)):
            value = best_ms(store, matching, repeat, **fields)
            rows.append(Row(f"query: 100 newest of {count:,}, {label}", value, "ms", base,
                            value / base, f"value <= {QUERY_TARGET_MS:g} ms",
                            value <= QUERY_TARGET_MS))
        return rows
    finally:
        store.close()


def replay_rows(path: Path, count: int, pattern: str, label: str) -> list[Row]:
    """Replay ``pattern`` to one subscriber, against reading the same events."""
    matches = compile_pattern(pattern).matches
    expected = sum(1 for i in range(count) if matches(event_type(i)))
    store = SQLiteStore(path)
    try:
        gc.collect()
        start = time.perf_counter()
        read = sum(1 for _ in store.iter_events(EventQuery(pattern=pattern)))
        read_s = time.perf_counter() - start
        bus = EventBus(store=store)
        seen = [0]

        def count_one(event: object) -> None:
            seen[0] += 1

        bus.subscribe(pattern, count_one)
        gc.collect()
        start = time.perf_counter()
        replayed = asyncio.run(bus.replay(pattern=pattern))
        replay_s = time.perf_counter() - start
    finally:
        store.close()
    if not read == replayed == seen[0] == expected:
        raise RuntimeError(f"read {read}, replayed {replayed}, delivered {seen[0]}, "
                           f"expected {expected}")
    target = REPLAY_TARGET_S_PER_MILLION * count / 1_000_000
    return [
        Row(f"read {label} of {count:,} ({pattern!r}, iter_events)", read_s, "s", None,
            None, "baseline", True),
        Row(f"replay {label} of {count:,} stored events by glob {pattern!r}", replay_s, "s",
            read_s, replay_s / read_s, f"value <= {target:g} s", replay_s <= target),
    ]


def locked_rows(directory: Path, count: int) -> list[Row]:
    """Publish ``count`` events while another connection holds the write lock."""
    path = directory / "locked.db"
    store = SQLiteStore(path, max_pending_bytes=LOCKED_BOUND, busy_timeout=0.05,
                        retry_delay=0.01, max_retry_delay=0.05)
    bus = EventBus(store=store)
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    gc.collect()
    rss_before = rss_bytes()
    accepted = refused = peak = 0
    try:
        for i in range(count):
            try:
                bus.publish(event_type(i), {"i": i, "ok": True, "call": f"c{i}"})
                accepted += 1
            except StoreFullError:
                refused += 1
            if i % 1000 == 0:
                peak = max(peak, store.stats().pending_bytes)
        peak = max(peak, store.stats().pending_bytes)
        grown = max(0, rss_bytes() - rss_before)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    store.flush(timeout=60)
    stored = store.count()
    stats = store.stats()
    store.close()
    if stored != accepted or stats.refused != refused:
        raise RuntimeError(f"accepted {accepted}, stored {stored}; refused {refused}, "
                           f"counted {stats.refused}")
    mib = 1024 * 1024
    return [
        Row(f"locked store, {count:,} publishes: most pending", peak / mib, "MiB",
            LOCKED_BOUND / mib, peak / LOCKED_BOUND, "value <= bound (8 MiB)",
            peak <= LOCKED_BOUND),
        Row(f"locked store, {count:,} publishes: refused (StoreFullError)", refused,
            "events", float(count), refused / count, "refused > 0, each counted",
            refused > 0 and stats.refused == refused),
        Row(f"locked store, {count:,} publishes: process growth", grown / mib, "MiB",
            LOCKED_BOUND / mib, grown / LOCKED_BOUND, "value <= 2x bound",
            grown <= 2 * LOCKED_BOUND),
    ]


def main() -> int:
    args = parse_args(__doc__ or "")
    count = 100_000 if args.quick else 1_000_000
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.db"
        rows += write_rows(path, count)
        rows += query_rows(path, count, 3 if args.quick else 5)
        rows += replay_rows(path, count, "tool.*.completed", "1 in 4")
        rows += replay_rows(path, count, "*.*.*", "all")
        rows += locked_rows(Path(tmp), count)
    return report("SQLite event store", rows, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
