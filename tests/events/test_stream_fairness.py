"""A stream reader draining a backlog shares the event loop: taking an event that is already
queued does not suspend, so the reader yields the loop at least once every
``YIELD_EVERY`` events (handed out or skipped as expired), without losing an event to a
cancellation at that point."""

from __future__ import annotations

import asyncio
import time

from llmspell.core import ManualClock
from llmspell.events import EventBus, EventMetadata, UniversalEvent
from llmspell.events.stream import YIELD_EVERY

BACKLOG = 4 * YIELD_EVERY + 7


async def test_a_reader_draining_a_backlog_lets_other_tasks_run_at_least_every_yield_every(
        ) -> None:
    bus = EventBus()
    stream = bus.stream("s.*", queue_size=BACKLOG + 1)
    for i in range(BACKLOG):
        bus.publish("s.x", i)
    read = 0
    seen_at: list[int] = []  # how many events the reader had when the other task ran
    done = False

    async def other() -> None:
        while not done:
            seen_at.append(read)
            await asyncio.sleep(0)

    task = asyncio.create_task(other())
    await asyncio.sleep(0)
    seen_at.clear()
    got: list[int] = []
    async for event in stream:
        got.append(event.data)
        read += 1
        if read == BACKLOG:
            break
    done = True
    await task
    assert got == list(range(BACKLOG))
    assert len(seen_at) >= BACKLOG // YIELD_EVERY
    gaps = [b - a for a, b in zip([0, *seen_at], [*seen_at, read], strict=True)]
    assert max(gaps) <= YIELD_EVERY
    await stream.aclose()
    await bus.close()


async def test_a_timer_fires_while_a_backlog_is_drained() -> None:
    bus = EventBus()
    stream = bus.stream("s.*", queue_size=BACKLOG + 1)
    for i in range(BACKLOG):
        bus.publish("s.x", i)
    fired: list[int] = []
    read = 0
    asyncio.get_running_loop().call_soon(lambda: fired.append(read))
    async for _ in stream:
        read += 1
        if read == BACKLOG:
            break
    assert fired and fired[0] <= YIELD_EVERY
    await stream.aclose()
    await bus.close()


async def test_expired_events_skipped_in_a_backlog_count_towards_yielding() -> None:
    clock = ManualClock(wall_start=time.time() + 60)  # every ttl event is already expired
    bus = EventBus(clock=clock)
    stream = bus.stream("s.*", queue_size=BACKLOG + 2)
    for i in range(BACKLOG):
        bus.publish(UniversalEvent(event_type="s.x", data=i, metadata=EventMetadata(ttl=1.0)))
    bus.publish("s.x", "last")
    fired: list[bool] = []
    asyncio.get_running_loop().call_soon(fired.append, True)
    # One __anext__ skips every expired event: it must still let the callback run.
    event = await stream.__anext__()
    assert event.data == "last"
    assert fired == [True]
    (flow,) = bus.subscriptions()
    assert (flow.expired, flow.delivered) == (BACKLOG, 1)
    await stream.aclose()
    await bus.close()


async def test_a_read_cancelled_where_it_yields_loses_no_event() -> None:
    bus = EventBus()
    count = 3 * YIELD_EVERY
    stream = bus.stream("s.*", queue_size=count + 1)
    for i in range(count):
        bus.publish("s.x", i)
    got: list[int] = []
    cancelled = 0
    while len(got) < count:
        reader = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0)  # a reader about to yield is suspended there now
        if reader.cancel():
            try:
                got.append((await reader).data)
            except asyncio.CancelledError:
                cancelled += 1
        else:
            got.append(reader.result().data)
    assert got == list(range(count))
    assert cancelled >= 2  # the reads that yielded were cancelled there...
    (flow,) = bus.subscriptions()
    assert (flow.delivered, flow.dropped, flow.depth) == (count, 0, 0)  # ...losing nothing
    await stream.aclose()
    await bus.close()


async def test_an_idle_stream_still_waits_and_ends_on_close() -> None:
    bus = EventBus()
    stream = bus.stream("s.*")
    reader = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0.01)
    assert not reader.done()  # nothing queued: it waits
    bus.publish("s.x", 1)
    assert (await asyncio.wait_for(reader, 2)).data == 1
    await bus.close()
    assert [e async for e in stream] == []


async def test_a_queued_handler_draining_a_backlog_lets_other_tasks_run() -> None:
    # Once an async handler has suspended, the worker delivers the rest of the queue
    # itself; awaiting a handler that finishes without suspending does not yield, so a
    # backlog held the loop until it was gone.
    bus = EventBus()
    got: list[int] = []
    ran_at: list[int] = []  # how many events were delivered when the other task ran
    done = asyncio.Event()

    async def handler(event: UniversalEvent) -> None:
        if not got:
            await asyncio.sleep(0)  # the first one suspends: the worker takes over
        got.append(event.data)
        if len(got) == BACKLOG:
            done.set()

    bus.subscribe("q.*", handler, mode="queued", queue_size=BACKLOG + 1)
    for i in range(BACKLOG):
        bus.publish("q.x", i)

    async def other() -> None:
        while not done.is_set():
            ran_at.append(len(got))
            await asyncio.sleep(0)

    task = asyncio.create_task(other())
    await asyncio.wait_for(done.wait(), 30)
    await task
    assert got == list(range(BACKLOG))
    during = sorted({n for n in ran_at if 0 < n < BACKLOG})
    assert len(during) >= BACKLOG // 256 - 1, ran_at
    await bus.close()
