"""A worker process for the multi-process NATS tests (run by tests/events/test_nats_processes.py).

``publish URL WORKER COUNT TYPE...``: publish COUNT events of each TYPE with data
``{"worker": WORKER, "i": i}``, close (the outbox is flushed), print ``done <accepted>``.

``subscribe URL OUT PATTERN...``: one subscription per pattern; print ``ready`` once every
consumer exists; on ``stop`` from stdin, wait until no consumer has anything pending, write
``{pattern: [[type, worker, i], ...]}`` to OUT as JSON and exit.

``durable URL NAME PATTERN LOG ACK_WAIT MAX_DELIVER [POISON]``: a durable subscription whose
handler appends ``<k>`` (the event's ``data["k"]``) to LOG (one ``os.write`` per line, so a
kill -9 loses nothing written) after a short pause, and kills its own process (SIGKILL) on
an event of type POISON; ``ready`` once subscribed; ``stop`` on stdin closes gracefully.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

from llmspell.events import UniversalEvent
from llmspell.events.distributed import DistributedBus, make_bus


def _bus(url: str) -> DistributedBus:
    bus = make_bus(url)
    assert isinstance(bus, DistributedBus)
    return bus


async def publish(url: str, worker: str, count: int, types: list[str]) -> int:
    bus = _bus(url)
    await bus.connect()
    for i in range(count):
        for event_type in types:
            bus.publish(event_type, {"worker": worker, "i": i})
    await bus.close(timeout=30)
    stats = bus.distributed_stats()
    print(f"done {stats.accepted}", flush=True)
    return 0 if stats.accepted == count * len(types) and not stats.unsent else 1


async def _stdin_line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def subscribe(url: str, out: str, patterns: list[str]) -> int:
    bus = _bus(url)
    await bus.connect()
    received: dict[str, list[list[Any]]] = {p: [] for p in patterns}

    def keeper(pattern: str) -> Any:
        def keep(event: UniversalEvent) -> None:
            received[pattern].append([event.event_type, event.data["worker"],
                                      event.data["i"]])
        return keep

    for pattern in patterns:
        bus.subscribe(pattern, keeper(pattern), name=pattern)
    await bus.ready()
    print("ready", flush=True)
    await _stdin_line()
    # Everything published has been accepted (the publishers exited): wait until no
    # consumer has a message left to hand over (without acks, a consumer's ack floor is the
    # last message the server sent it).
    for remote in list(bus._remotes.values()):
        consumer: Any = remote.tsub
        while True:
            state = await consumer.state()
            if not state.pending and consumer.seen_sequence >= state.ack_floor \
                    and consumer._queue.empty() and not consumer._busy:
                break
            await asyncio.sleep(0.02)
    with open(out, "w", encoding="utf-8") as file:
        json.dump(received, file)
    await bus.close()
    return 0


async def durable(url: str, name: str, pattern: str, log: str, ack_wait: float,
                  max_deliver: int, poison: str | None) -> int:
    bus = _bus(url)
    await bus.connect()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    async def handle(event: UniversalEvent) -> None:
        await asyncio.sleep(0.002)
        os.write(fd, f"{event.data['k']}\n".encode())
        if event.event_type == poison:
            os.kill(os.getpid(), signal.SIGKILL)

    bus.subscribe(pattern, handle, durable=name, ack_wait=ack_wait, max_deliver=max_deliver,
                  backoff=(0.05,), start="all")
    await bus.ready()
    print("ready", flush=True)
    await _stdin_line()
    await bus.close()
    os.close(fd)
    return 0


def main(argv: list[str]) -> int:
    role, url, *rest = argv
    if role == "publish":
        worker, count, *types = rest
        return asyncio.run(publish(url, worker, int(count), types))
    if role == "subscribe":
        out, *patterns = rest
        return asyncio.run(subscribe(url, out, patterns))
    if role == "durable":
        name, pattern, log, ack_wait, max_deliver, *poison = rest
        return asyncio.run(durable(url, name, pattern, log, float(ack_wait), int(max_deliver),
                                   poison[0] if poison else None))
    raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
