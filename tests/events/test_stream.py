from __future__ import annotations

import asyncio
import time

import pytest

from llmspell.errors import InvalidValueError
from llmspell.events import EventBus, UniversalEvent
from llmspell.events.stream import collect


async def publish_later(bus: EventBus, items: list[int], event_type: str = "s.x",
                        gap: float = 0.0) -> None:
    for i in items:
        await bus.publish_async(event_type, i)
        await asyncio.sleep(gap)


async def test_stream_yields_matching_events_in_order_and_closing_unsubscribes() -> None:
    bus = EventBus()
    async with bus.stream("s.*") as stream:
        task = asyncio.create_task(publish_later(bus, list(range(5))))
        bus.publish("other.x", 99)
        got = [e.data for e in await collect(stream, 5)]
        await task
    assert got == [0, 1, 2, 3, 4]
    assert bus.subscriptions() == []  # closed -> unsubscribed
    await bus.close()


async def test_stream_ends_when_the_bus_closes() -> None:
    bus = EventBus()
    stream = bus.stream("s.*")
    bus.publish("s.x", 1)

    async def read() -> list[int]:
        return [e.data async for e in stream]

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.01)
    await bus.close()
    assert await asyncio.wait_for(reader, 2) == [1]


async def test_filtered() -> None:
    bus = EventBus()
    stream = bus.stream("s.*").filtered(lambda e: e.data % 2 == 0)
    task = asyncio.create_task(publish_later(bus, list(range(10))))
    got = [e.data for e in await collect(stream, 5)]
    await task
    assert got == [0, 2, 4, 6, 8]
    await stream.aclose()
    await bus.close()


async def test_batched_by_size_and_by_max_wait() -> None:
    bus = EventBus()
    by_size = bus.stream("s.*").batched(3)
    for i in range(7):
        bus.publish("s.x", i)
    assert [[e.data for e in b] for b in await collect(by_size, 2)] == [[0, 1, 2], [3, 4, 5]]
    timed = bus.stream("t.*").batched(100, max_wait=0.05)
    bus.publish("t.x", 1)
    bus.publish("t.x", 2)
    loop = asyncio.get_running_loop()
    start = loop.time()
    (batch,) = await collect(timed, 1)
    assert [e.data for e in batch] == [1, 2] and loop.time() - start >= 0.04
    await by_size.aclose()
    await timed.aclose()
    await bus.close()


async def test_batched_flushes_the_tail_when_the_source_ends() -> None:
    bus = EventBus()
    batches = bus.stream("s.*").batched(4)
    for i in range(6):
        bus.publish("s.x", i)

    async def read() -> list[list[int]]:
        return [[e.data for e in b] async for b in batches]

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.01)
    await bus.close()
    assert await asyncio.wait_for(reader, 2) == [[0, 1, 2, 3], [4, 5]]


async def test_throttled_delays_but_never_drops() -> None:
    bus = EventBus()
    stream = bus.stream("s.*").throttled(100)  # at most one per 10 ms
    for i in range(5):
        bus.publish("s.x", i)
    loop = asyncio.get_running_loop()
    start = loop.time()
    got = [e.data for e in await collect(stream, 5)]
    assert got == [0, 1, 2, 3, 4] and loop.time() - start >= 0.035
    await stream.aclose()
    await bus.close()


async def test_operators_compose_and_are_cancel_safe() -> None:
    bus = EventBus()
    stream = bus.stream("s.*").filtered(lambda e: e.data >= 0).throttled(200).batched(2, 0.5)
    for i in range(4):
        bus.publish("s.x", i)
    first = await collect(stream, 1)
    # A timeout while the pipeline waits must not lose what it held.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.001):
            await stream.__anext__()
    rest = await collect(stream, 1)
    got = [e.data for b in first + rest for e in b]
    assert got == [0, 1, 2, 3]
    await stream.aclose()
    await bus.close()


async def test_stream_overflow_and_expiry() -> None:
    from llmspell.core import ManualClock
    from llmspell.events import EventMetadata

    clock = ManualClock(wall_start=time.time() + 60)  # expiry by the bus's clock, no waiting
    bus = EventBus(clock=clock)
    stream = bus.stream("s.*", queue_size=3, overflow="drop_oldest")
    for i in range(6):
        bus.publish("s.x", i)
    bus.publish(UniversalEvent(event_type="s.x", data=100, metadata=EventMetadata(ttl=1.0)))
    bus.publish("s.x", 7)
    # queue of 3, drop_oldest: 0..5 leave [3, 4, 5]; 100 (ttl) and 7 push out 3 and 4
    got = [e.data for e in await asyncio.wait_for(collect(stream, 2), 2)]
    assert got == [5, 7]
    (flow,) = bus.subscriptions()
    assert (flow.dropped, flow.expired, flow.delivered) == (5, 1, 2)
    await stream.aclose()
    await bus.close()


def test_operator_validation() -> None:
    async def go() -> None:
        bus = EventBus()
        stream = bus.stream("s.*")
        with pytest.raises(InvalidValueError):
            stream.batched(0)
        with pytest.raises(InvalidValueError):
            stream.batched(2, max_wait=0)
        with pytest.raises(InvalidValueError):
            stream.throttled(0)
        await stream.aclose()

    asyncio.run(go())
