"""A process that mirrors a namespace's stream into an SQLite file, for
tests/events/test_nats_replay_mirror.py.

``python nats_mirror_worker.py URL NAME DB``: a bus on URL with an SQLiteStore at DB (small
batches, so it commits often) mirrors the stream under NAME; prints ``ready`` once the
mirror's consumer exists, then runs until killed (the test sends SIGKILL mid-stream) or
``stop`` arrives on stdin (then it closes cleanly and prints its counters as JSON).
"""

from __future__ import annotations

import asyncio
import sys

import msgspec

from llmspell.events.distributed import DistributedBus, make_bus
from llmspell.events.store import SQLiteStore


async def main(url: str, name: str, db: str) -> int:
    store = SQLiteStore(db, flush_interval=0.01)
    bus = make_bus(url, store=store)
    assert isinstance(bus, DistributedBus)
    await bus.connect()
    bus.mirror(name=name, batch=16, flush_interval=0.01, ack_wait=2.0)
    await bus.ready()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    stats = bus.distributed_stats().mirrors
    await bus.close()
    store.close()
    print(msgspec.json.encode(stats).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(*sys.argv[1:4])))
