"""A publisher process for the server-restart test (tests/events/test_nats_restart.py).

``python nats_restart_worker.py URL WORKER COUNT ACKED SENT``: publishes COUNT events of
type ``order.placed`` with data ``{"worker": WORKER, "i": i}``, one durable publish after
another (``publish_async(..., durable=True)``), a few milliseconds apart. Each event's id
goes to SENT before it is published and to ACKED once its publish returned (the server
accepted it); a publish that times out while the server is away raises ``TransportError``
and the event stays in the bus's buffer, published when the server returns. Both files get
one ``os.write`` per line, so nothing written is lost. At the end the bus closes (sending
what it still holds) and the process prints ``done <accepted> <unsent> <timeouts>``.
"""

from __future__ import annotations

import asyncio
import os
import sys

from llmspell.errors import TransportError
from llmspell.events import UniversalEvent
from llmspell.events.distributed import DistributedBus, make_bus


async def main(url: str, worker: str, count: int, acked: str, sent: str) -> int:
    bus = make_bus(url)
    assert isinstance(bus, DistributedBus)
    await bus.connect()
    acked_fd = os.open(acked, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sent_fd = os.open(sent, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    timeouts = 0
    for i in range(count):
        event = UniversalEvent(event_type="order.placed", data={"worker": worker, "i": i})
        os.write(sent_fd, f"{event.id}\n".encode())
        try:
            await bus.publish_async(event, durable=True)
        except TransportError:
            timeouts += 1
        else:
            os.write(acked_fd, f"{event.id}\n".encode())
        await asyncio.sleep(0.004)
    await bus.close(timeout=60)
    stats = bus.distributed_stats()
    os.close(acked_fd)
    os.close(sent_fd)
    print(f"done {stats.accepted} {stats.unsent} {timeouts}", flush=True)
    return 0 if not stats.unsent else 1


if __name__ == "__main__":
    url, worker, count, acked, sent = sys.argv[1:6]
    sys.exit(asyncio.run(main(url, worker, int(count), acked, sent)))
