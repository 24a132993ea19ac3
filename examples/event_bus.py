"""Events: publish, subscribe by pattern, backpressure, streams, a SQLite store and replay.

Run it with ``python examples/event_bus.py``. A simulated agent run publishes its steps;
an inline subscriber counts them, a slow queued subscriber overflows its small queue
(backpressure notices show what happened), a stream batches the tool results, everything is
persisted to SQLite, and finally the run is replayed from the store.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from llmspell.events import BackpressureNotice, EventBus, EventQuery, UniversalEvent
from llmspell.events.store import SQLiteStore


async def main(data_dir: Path) -> None:
    store = SQLiteStore(data_dir / "events.db")
    notices: list[BackpressureNotice] = []
    bus = EventBus(store=store, on_backpressure=notices.append)

    counts: dict[str, int] = {}
    bus.subscribe("**", lambda e: counts.__setitem__(e.event_type.split(".")[0],
                                                     counts.get(e.event_type.split(".")[0], 0)
                                                     + 1))

    slow_log: list[str] = []

    async def slow_exporter(event: UniversalEvent) -> None:
        await asyncio.sleep(0.001)
        slow_log.append(event.event_type)

    bus.subscribe("tool.**", slow_exporter, name="exporter", queue_size=8,
                  overflow="drop_oldest")

    results = bus.stream("tool.*.completed").batched(5, max_wait=0.05)

    run = {"correlation_id": "run-42", "source": "demo-agent"}
    bus.publish("agent.planner.started", {"goal": "sum the squares of 1..20"}, run)
    for n in range(1, 21):
        bus.publish("tool.calculator.started", {"expression": f"{n}**2"}, run)
        bus.publish("tool.calculator.completed", {"result": n * n}, run)
    bus.publish("agent.planner.finished", {"answer": sum(n * n for n in range(1, 21))}, run)

    total = 0
    batches = 0
    async for batch in results:
        total += sum(e.data["result"] for e in batch)
        batches += 1
        if total == 2870:
            break
    await results.aclose()
    await bus.drain()
    bus.flush()

    exporter = next(f for f in bus.subscriptions() if f.subscription == "exporter")
    print(f"published per category: {counts}")
    print(f"stream: {batches} batches, results summed to {total}")
    print(f"slow exporter: delivered {exporter.delivered}, dropped {exporter.dropped} "
          f"(queue of {exporter.capacity}); notices: {[n.kind.value for n in notices]}")
    print(f"stored: {store.count()} events in {data_dir / 'events.db'}")

    replayed: list[str] = []
    bus.subscribe("agent.**", lambda e: replayed.append(e.event_type)
                  if e.metadata.replayed else None)
    count = await bus.replay(EventQuery(correlation_id="run-42", pattern="agent.**"))
    print(f"replayed {count} agent events in their original order: {replayed}")
    await bus.close()
    store.close()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp)))
