"""Event bus costs on the paths users take, each against a baseline from the same run.

Rows:

* ``publish(type, data)`` with a 3-key payload (the event built inside the timing) to 1 and
  to 10 inline handlers, against a bare emitter (a dict lookup of the handlers by type and a
  call of each in a try block, as a minimal emitter does). Every figure here is net of the
  timing loop's own cost.
* Routing with 10/100/1000 glob subscriptions: an event type never published before (its
  publish minus a cached type's publish on the same bus), and a cached type (its publish
  against a publish on a bus with one exact subscription).
* A queued async subscriber whose publisher yields to the event loop after every event
  (``publish(type, data)`` with a fresh 3-key dict: the event is built inside the timing),
  against an ``asyncio.Queue`` producer/consumer passing the same (type, dict) pairs; the
  loop's own floor for that pattern (a ``sleep(0)``, one ``call_soon`` and a coroutine run
  per event) is shown too: the subscriber cannot beat it, and its publish (build, measure,
  route, queue) comes on top.
* Persisting to SQLite, batched and durable; event construction.
* Memory: a bus publishing 100 000 distinct event types for 60 s (a manual clock drives the
  metrics' snapshots, so the minute is simulated; ``--quick``: 10 000 types, 30 s).

Targets (issue 18): publish(type, data) >= 2 M deliveries/s and <= 5x the bare emitter;
a new type routed with 1000 globs <= 10 µs, a cached one <= 1.5x an exact match; queued
>= 300 k events/s; memory growth <= 50 MB. (Issue 3: SQLite >= 100 k events/s, event
construction <= 1 µs.)

    python benchmarks/event_bus.py [--quick] [--json out.json]
"""

from __future__ import annotations

import asyncio
import gc
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Row, call_overhead_ns, net_ns, parse_args, report, rss_bytes

from llmspell.core.clock import ManualClock
from llmspell.events import EventBus, UniversalEvent
from llmspell.events.store import SQLiteStore

TYPE = "tool.calculator.completed"
DATA = {"tool": "calculator", "result": 42, "elapsed_ms": 1.25}
EVENT = UniversalEvent(event_type=TYPE, data=DATA)


def handler(event: object) -> None:
    return None


def bare_emit_ns(n_handlers: int, number: int, repeat: int, overhead: float) -> float:
    """ns per ``emit(type, data)`` of a bare emitter: a dict lookup of the type's handlers,
    each called in a try block."""
    handlers = {TYPE: [handler] * n_handlers}

    def emit(event_type: str, data: object) -> None:
        for h in handlers.get(event_type, ()):
            try:  # noqa: SIM105 - a try block per handler, as any safe dispatcher needs
                h(data)
            except Exception:
                pass

    return net_ns(lambda: emit(TYPE, DATA), number, repeat, overhead)


def publish_ns(n_handlers: int, number: int, repeat: int, overhead: float) -> float:
    """ns per ``bus.publish(type, data)``: the event is built, routed and delivered."""
    bus = EventBus()
    for _ in range(n_handlers):
        bus.subscribe(TYPE, handler)
    publish = bus.publish
    return net_ns(lambda: publish(TYPE, DATA), number, repeat, overhead)


def glob_patterns(n: int) -> list[str]:
    """``n`` glob subscriptions of the shapes applications use; of them only ``tool.*.done``
    matches the benchmark's ``tool.<name>.done`` types."""
    shapes = ("svc{i}.*.done", "agent.a{i}.**", "*.w{i}.started", "team{i}.calc*.**",
              "**.job{i}", "tool.k{i}.*")
    return ["tool.*.done"] + [shapes[i % len(shapes)].format(i=i) for i in range(n - 1)]


def routing_rows(n_subs: int, types: int, number: int, repeat: int,
                 overhead: float) -> list[Row]:
    """A new type's publish minus a cached type's on one bus; a cached type's publish
    against a bus with one exact subscription."""
    bus = EventBus()
    for pattern in glob_patterns(n_subs):
        bus.subscribe(pattern, handler)
    cached_event = UniversalEvent(event_type="tool.cached.done", data=DATA)
    exact_bus = EventBus()
    exact_bus.subscribe("tool.cached.done", handler)
    publish, publish_exact = bus.publish, exact_bus.publish
    publish(cached_event)
    publish_exact(cached_event)
    cached = net_ns(lambda: publish(cached_event), number, repeat, overhead)
    exact = net_ns(lambda: publish_exact(cached_event), number, repeat, overhead)
    best = float("inf")
    for r in range(repeat):
        events = [UniversalEvent(event_type=f"tool.r{r}n{n_subs}t{i}.done", data=DATA)
                  for i in range(types)]
        gc.disable()
        try:
            start = time.perf_counter_ns()
            for event in events:
                publish(event)
            best = min(best, (time.perf_counter_ns() - start) / types)
        finally:
            gc.enable()
    new = max(0.0, best - cached)
    return [
        Row(f"{n_subs} globs: new event type routed", new / 1000, "µs", cached / 1000,
            new / cached, "value <= 10 µs", new <= 10_000),
        Row(f"{n_subs} globs: publish, cached type", cached, "ns", exact, cached / exact,
            "ratio <= 1.5 (baseline: 1 exact subscription)", cached / exact <= 1.5),
    ]


def queued_rows(count: int) -> list[Row]:
    """A queued async subscriber, the publisher yielding after every event, against an
    asyncio.Queue producer and consumer doing the same."""

    async def bus_run() -> float:
        bus = EventBus(queue_size=1024)
        seen = 0

        async def consumer(event: UniversalEvent) -> None:
            nonlocal seen
            seen += 1

        bus.subscribe("tool.**", consumer)
        await asyncio.sleep(0)
        publish = bus.publish
        start = time.perf_counter()
        for i in range(count):
            publish(TYPE, {"tool": "calculator", "ok": True, "n": i})
            await asyncio.sleep(0)
        await bus.drain()
        elapsed = time.perf_counter() - start
        assert seen == count, (seen, count)
        await bus.close()
        return count / elapsed

    async def queue_run() -> float:
        queue: asyncio.Queue[tuple[str, dict[str, object]]] = asyncio.Queue(1024)
        seen = 0

        async def consumer(event: tuple[str, dict[str, object]]) -> None:
            nonlocal seen
            seen += 1

        async def work() -> None:
            while True:
                event = await queue.get()
                await consumer(event)
                queue.task_done()

        worker = asyncio.create_task(work())
        await asyncio.sleep(0)
        start = time.perf_counter()
        for i in range(count):
            queue.put_nowait((TYPE, {"tool": "calculator", "ok": True, "n": i}))
            await asyncio.sleep(0)
        await queue.join()
        elapsed = time.perf_counter() - start
        worker.cancel()
        assert seen == count
        return count / elapsed

    async def floor_run() -> float:
        # What the event loop itself costs: the publisher's sleep(0), one call_soon, and
        # the consumer's coroutine run with send(None); no queue, no bus.
        loop = asyncio.get_running_loop()
        seen = 0

        async def consumer(event: UniversalEvent) -> None:
            nonlocal seen
            seen += 1

        def deliver() -> None:
            coro = consumer(EVENT)
            try:  # noqa: SIM105 - suppress() would add its own cost to the floor
                coro.send(None)
            except StopIteration:
                pass

        call_soon = loop.call_soon
        start = time.perf_counter()
        for _ in range(count):
            call_soon(deliver)
            await asyncio.sleep(0)
        elapsed = time.perf_counter() - start
        assert seen == count
        return count / elapsed

    bus_rate = max(asyncio.run(bus_run()) for _ in range(3))
    queue_rate = max(asyncio.run(queue_run()) for _ in range(3))
    floor_rate = max(asyncio.run(floor_run()) for _ in range(3))
    return [
        Row("loop floor: sleep(0) + call_soon + coroutine send", floor_rate, "events/s",
            None, None, "baseline", True),
        Row("asyncio.Queue, producer yielding per event", queue_rate, "events/s", None,
            None, "baseline", True),
        Row("queued subscriber, publisher yielding per event", bus_rate, "events/s",
            queue_rate, queue_rate / bus_rate, "value >= 300000", bus_rate >= 300_000),
    ]


def memory_rows(types: int, seconds: float, per_step: int) -> list[Row]:
    """RSS growth of a bus publishing ``types`` distinct event types for ``seconds``
    (simulated: a manual clock moves 0.25 s per step), against a plain dict counting them
    (its size traced by tracemalloc)."""
    names = [f"svc.t{i}.done" for i in range(types)]
    data = {"i": 1}
    tracemalloc.start()
    plain = {name: 1 for name in names}
    baseline = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del plain
    gc.collect()
    clock = ManualClock()
    bus = EventBus(clock=clock)
    bus.subscribe("svc.**", handler)
    gc.collect()
    start = rss_bytes()
    peak = start
    steps = int(seconds / 0.25)
    k = 0
    for _ in range(steps):
        for _ in range(per_step):
            bus.publish(names[k % types], data)
            k += 1
        clock.advance(0.25)
        peak = max(peak, rss_bytes())
    stats = bus.stats()
    assert stats.published == k
    peak = max(peak, rss_bytes())
    growth = (peak - start) / 1e6
    return [
        Row(f"dict counting {types} event types", baseline / 1e6, "MB", None, None,
            "baseline", True),
        Row(f"bus memory growth, {types} types, {seconds:g} s", growth, "MB",
            baseline / 1e6, growth / max(baseline / 1e6, 0.001), "value <= 50 MB",
            growth <= 50),
    ]


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
    overhead = call_overhead_ns(number, repeat)

    bare1 = bare_emit_ns(1, number, repeat, overhead)
    pub1 = publish_ns(1, number, repeat, overhead)
    bare10 = bare_emit_ns(10, number // 4, repeat, overhead)
    pub10 = publish_ns(10, number // 4, repeat, overhead)
    rows.append(Row("bare emitter, 1 handler", 1e9 / bare1, "deliv/s", None, None,
                    "baseline", True))
    rows.append(Row("publish(type, data) to 1 inline handler", 1e9 / pub1, "deliv/s",
                    1e9 / bare1, pub1 / bare1, "value >= 2e6 and ratio <= 5",
                    1e9 / pub1 >= 2e6 and pub1 / bare1 <= 5))
    rows.append(Row("bare emitter, 10 handlers", 10e9 / bare10, "deliv/s", None, None,
                    "baseline", True))
    rows.append(Row("publish(type, data) to 10 inline handlers", 10e9 / pub10, "deliv/s",
                    10e9 / bare10, pub10 / bare10, "value >= 1e6", 10e9 / pub10 >= 1e6))

    types = 2_000 if args.quick else 10_000
    for n_subs in (10, 100, 1000):
        rows.extend(routing_rows(n_subs, types, number, repeat, overhead))

    rows.extend(queued_rows(20_000 if args.quick else 200_000))

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
        return _Plain(event_type=TYPE, data=DATA)

    plain = net_ns(bare_struct, number, repeat, overhead)
    built = net_ns(lambda: UniversalEvent(event_type=TYPE, data=DATA), number, repeat,
                   overhead)
    rows.append(Row("msgspec Struct with 2 fields", plain, "ns", None, None, "baseline", True))
    rows.append(Row("UniversalEvent construction", built, "ns", plain, built / plain,
                    "value <= 1000 ns", built <= 1000))

    if args.quick:
        rows.extend(memory_rows(10_000, 30.0, 400))
    else:
        rows.extend(memory_rows(100_000, 60.0, 2_000))
    return report("event bus (best of repeats; ns figures net of the timing loop)", rows,
                  args.json)


import msgspec  # noqa: E402


class _Plain(msgspec.Struct, kw_only=True):
    event_type: str
    data: object


if __name__ == "__main__":
    raise SystemExit(main())
