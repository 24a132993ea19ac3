"""Event bus throughput against a bare dispatch loop over plain callables, from one run.

Rows: publish of a pre-built event to 1 and to 10 inline handlers; routing with 100 glob
subscriptions (the per-type cache vs an exact dict lookup, and the uncached scan); a queued
async subscriber; persisting to SQLite, batched and durable (a commit per publish); event
construction.
Targets (issue 3): >= 1 M deliveries/s and <= 3x the bare loop for 1 inline handler;
cached glob routing <= 1.5x exact lookup; queued >= 300 k events/s; SQLite >= 100 k
events/s; event construction <= 1 µs.

    python benchmarks/event_bus.py [--quick] [--json out.json]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Row, parse_args, report, time_sync

from llmspell.events import EventBus, UniversalEvent, compile_pattern
from llmspell.events.store import SQLiteStore

EVENT = UniversalEvent(event_type="tool.calculator.completed", data={"result": 42})


def handler(event: UniversalEvent) -> None:
    return None


def bare_loop_ns(handlers: list, number: int, repeat: int) -> float:  # type: ignore[type-arg]
    """ns per event of the bare loop: every handler called in a try block."""

    def run() -> None:
        for h in handlers:
            try:  # noqa: SIM105 - a try block per handler, as any safe dispatcher needs
                h(EVENT)
            except Exception:
                pass

    return time_sync(run, number, repeat)


def publish_ns(n_handlers: int, number: int, repeat: int) -> float:
    bus = EventBus()
    for _ in range(n_handlers):
        bus.subscribe("tool.calculator.completed", handler)
    publish = bus.publish
    return time_sync(lambda: publish(EVENT), number, repeat)


def routing_rows(number: int, repeat: int) -> list[Row]:
    """Routing as publish() does it: one dict lookup in the bus's per-type route cache,
    with 100 glob subscriptions behind it, against an exact-type dict lookup."""
    bus = EventBus()
    patterns = [f"tool.calc{i}*.**" if i % 2 else f"*.svc{i}.*" for i in range(100)]
    for pattern in patterns:
        bus.subscribe(pattern, handler)
    event_type = "tool.calc7x.done"
    exact = {event_type: (handler,)}
    bus.publish(event_type)  # resolve once; later publishes hit the cache
    # The lookup publish() does (private attributes, on purpose): a subscript in a try
    # block, the route resolved on a miss; the baseline is the same on an exact-type dict.
    routes = bus._routes
    resolve = bus._route

    def cached_route() -> object:
        try:
            return routes[event_type]
        except KeyError:
            return resolve(event_type)

    def exact_lookup() -> object:
        try:
            return exact[event_type]
        except KeyError:
            return resolve(event_type)

    cached = time_sync(cached_route, number, repeat)
    lookup = time_sync(exact_lookup, number, repeat)
    compiled = [compile_pattern(p) for p in patterns]
    scan = time_sync(lambda: [p for p in compiled if p.matches(event_type)],
                     max(1000, number // 100), repeat)
    return [
        Row("exact dict lookup", lookup, "ns", None, None, "baseline", True),
        Row("100 glob subscriptions, cached routing", cached, "ns", lookup, cached / lookup,
            "ratio <= 1.5", cached / lookup <= 1.5),
        Row("100 glob subscriptions, uncached scan", scan, "ns", lookup, scan / lookup,
            "informational", True),
    ]


def queued_events_per_s(count: int) -> float:
    async def run() -> float:
        bus = EventBus(queue_size=count + 10)
        seen = 0

        async def consumer(event: UniversalEvent) -> None:
            nonlocal seen
            seen += 1

        bus.subscribe("tool.**", consumer)
        await asyncio.sleep(0)
        start = time.perf_counter()
        publish = bus.publish
        for i in range(count):
            publish(EVENT)
            if not i & 1023:
                await asyncio.sleep(0)  # let the worker run alongside, as in real use
        await bus.drain()
        elapsed = time.perf_counter() - start
        assert seen == count
        await bus.close()
        return count / elapsed

    return asyncio.run(run())


def sqlite_events_per_s(count: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "events.db")
        bus = EventBus(store=store)
        events = [UniversalEvent(event_type="tool.calculator.completed", data={"i": i})
                  for i in range(count)]
        start = time.perf_counter()
        for event in events:
            bus.publish(event)
        bus.flush()
        elapsed = time.perf_counter() - start
        assert store.count() == count
        store.close()
        bare = EventBus()
        start = time.perf_counter()
        for event in events:
            bare.publish(event)
        bare_elapsed = time.perf_counter() - start
    return count / elapsed, count / bare_elapsed


def durable_events_per_s(count: int) -> float:
    """Publishes with durable=True: each returns once its event is committed."""
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "events.db")
        bus = EventBus(store=store)
        start = time.perf_counter()
        for i in range(count):
            bus.publish("tool.calculator.completed", {"i": i}, durable=True)
        elapsed = time.perf_counter() - start
        store.close()
    return count / elapsed


def main() -> int:
    args = parse_args(__doc__ or "")
    number, repeat = (20_000, 3) if args.quick else (200_000, 5)
    rows: list[Row] = []

    bare1 = bare_loop_ns([handler], number, repeat)
    bare10 = bare_loop_ns([handler] * 10, number // 4, repeat)
    pub1 = publish_ns(1, number, repeat)
    pub10 = publish_ns(10, number // 4, repeat)
    rows.append(Row("bare loop, 1 handler", 1e9 / bare1, "deliv/s", None, None, "baseline",
                    True))
    rows.append(Row("publish to 1 inline handler", 1e9 / pub1, "deliv/s", 1e9 / bare1,
                    pub1 / bare1, "value >= 1e6 and ratio <= 3",
                    1e9 / pub1 >= 1e6 and pub1 / bare1 <= 3))
    rows.append(Row("bare loop, 10 handlers", 10e9 / bare10, "deliv/s", None, None,
                    "baseline", True))
    rows.append(Row("publish to 10 inline handlers", 10e9 / pub10, "deliv/s", 10e9 / bare10,
                    pub10 / bare10, "value >= 1e6", 10e9 / pub10 >= 1e6))

    rows.extend(routing_rows(number, repeat))

    queued = queued_events_per_s(20_000 if args.quick else 200_000)
    rows.append(Row("queued async subscriber", queued, "events/s", 1e9 / bare1,
                    (1e9 / bare1) / queued, "value >= 300000", queued >= 300_000))

    persisted, unpersisted = sqlite_events_per_s(20_000 if args.quick else 100_000)
    rows.append(Row("publish without a store", unpersisted, "events/s", None, None,
                    "baseline", True))
    rows.append(Row("publish + persist to SQLite (flushed)", persisted, "events/s",
                    unpersisted, unpersisted / persisted, "value >= 100000",
                    persisted >= 100_000))
    durable = durable_events_per_s(300 if args.quick else 2000)
    rows.append(Row("durable publish to SQLite (a commit each)", durable, "events/s",
                    persisted, persisted / durable, "informational", True))

    def bare_struct() -> object:
        return _Plain(event_type="tool.calculator.completed", data={"result": 42})

    plain = time_sync(bare_struct, number, repeat)
    built = time_sync(lambda: UniversalEvent(event_type="tool.calculator.completed",
                                             data={"result": 42}), number, repeat)
    rows.append(Row("msgspec Struct with 2 fields", plain, "ns", None, None, "baseline", True))
    rows.append(Row("UniversalEvent construction", built, "ns", plain, built / plain,
                    "value <= 1000 ns", built <= 1000))
    return report("event bus (throughput; best of repeats)", rows, args.json)


import msgspec  # noqa: E402


class _Plain(msgspec.Struct, kw_only=True):
    event_type: str
    data: object


if __name__ == "__main__":
    raise SystemExit(main())
