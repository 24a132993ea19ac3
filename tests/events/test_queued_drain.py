"""Queued handlers: the drain callback runs a handler until it finishes or suspends; a
suspended call is finished by the subscription's worker task. Order, one call at a time,
errors, unsubscribe/close mid-call, current_task and context, threads."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import Any

import pytest

from llmspell.events import EventBus, HandlerFailure, UniversalEvent

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


class Tracker:
    """Records handler calls and checks that no two of them overlap."""

    def __init__(self) -> None:
        self.running = 0
        self.overlapped = False
        self.order: list[int] = []

    def enter(self) -> None:
        self.running += 1
        self.overlapped = self.overlapped or self.running > 1

    def leave(self, value: int) -> None:
        self.order.append(value)
        self.running -= 1


async def test_a_handler_that_suspends_mid_drain_keeps_order_one_call_at_a_time() -> None:
    bus = EventBus()
    track = Tracker()

    async def handler(event: UniversalEvent) -> None:
        track.enter()
        if event.data % 3 == 0:
            await asyncio.sleep(0)  # suspends: the worker task takes the call over
            if event.data % 2 == 0:
                await asyncio.sleep(0.001)
        track.leave(event.data)

    bus.subscribe("n", handler)
    for i in range(30):
        bus.publish("n", i)
        if i % 7 == 0:
            await asyncio.sleep(0)  # events arrive while a call is suspended
    await bus.drain(5)
    for i in range(30, 40):  # and again once everything was idle
        bus.publish("n", i)
        await asyncio.sleep(0)
    await bus.drain(5)
    assert track.order == list(range(40)) and not track.overlapped
    (flow,) = bus.subscriptions()
    assert flow.delivered == 40 and flow.depth == 0 and flow.errors == 0
    await bus.close()


async def test_handler_errors_before_and_after_suspending_are_reported() -> None:
    failures: list[HandlerFailure] = []
    per_sub: list[str] = []
    error_events: list[UniversalEvent] = []
    bus = EventBus(on_handler_error=failures.append)
    seen: list[int] = []

    async def handler(event: UniversalEvent) -> None:
        seen.append(event.data)
        if event.data == 1:
            raise RuntimeError("eager")  # before any await: raised in the drain callback
        if event.data == 3:
            await asyncio.sleep(0)
            raise ValueError("late")  # after suspending: raised in the worker task

    async def record(event: UniversalEvent) -> None:
        error_events.append(event)

    bus.subscribe("n", handler, name="h", on_error=lambda e, x: per_sub.append(str(x)))
    bus.subscribe("event.handler.error", record)
    for i in range(5):
        bus.publish("n", i)
    await bus.drain(5)
    assert seen == [0, 1, 2, 3, 4]  # the subscription went on after each failure
    assert per_sub == ["eager", "late"]
    assert [f.error_type for f in failures] == ["RuntimeError", "ValueError"]
    assert [e.data["message"] for e in error_events] == ["eager", "late"]
    flow = next(f for f in bus.subscriptions() if f.subscription == "h")
    assert flow.errors == 2 and flow.delivered == 5
    await bus.close()


async def test_sync_and_awaitable_returning_handlers_in_queued_mode() -> None:
    bus = EventBus()
    got: list[str] = []
    loop = asyncio.get_running_loop()

    def sync(event: UniversalEvent) -> None:
        got.append(f"sync{event.data}")

    def returns_future(event: UniversalEvent) -> asyncio.Future[None]:
        future: asyncio.Future[None] = loop.create_future()
        loop.call_later(0.001, future.set_result, None)
        future.add_done_callback(lambda _: got.append(f"future{event.data}"))
        return future

    bus.subscribe("s", sync, mode="queued")
    bus.subscribe("f", returns_future, mode="queued")
    for i in range(3):
        bus.publish("s", i)
        bus.publish("f", i)
    await bus.drain(5)
    assert [g for g in got if g.startswith("sync")] == ["sync0", "sync1", "sync2"]
    assert [g for g in got if g.startswith("future")] == ["future0", "future1", "future2"]
    await bus.close()


async def test_unsubscribe_while_a_handler_is_suspended() -> None:
    bus = EventBus()
    release = asyncio.Event()
    started: list[int] = []
    finished: list[int] = []

    async def handler(event: UniversalEvent) -> None:
        started.append(event.data)
        await release.wait()
        finished.append(event.data)

    handle = bus.subscribe("n", handler, name="h")
    for i in range(5):
        bus.publish("n", i)
    await asyncio.sleep(0.01)
    assert started == [0]  # one call at a time: the rest wait in the queue
    sub = bus._subs[handle.id]
    assert bus.unsubscribe(handle)
    release.set()
    assert sub.worker is not None
    await asyncio.wait_for(sub.worker, 5)  # the call finishes, then the worker ends
    assert finished == [0] and started == [0]  # the 4 queued events were discarded
    bus.publish("n", 99)
    await asyncio.sleep(0.01)
    assert started == [0]
    assert bus.stats().dropped == 4
    await bus.close()


async def test_close_while_draining_finishes_every_queued_event() -> None:
    bus = EventBus()
    done: list[int] = []

    async def handler(event: UniversalEvent) -> None:
        if event.data % 2:
            await asyncio.sleep(0.001)
        done.append(event.data)

    bus.subscribe("n", handler)
    for i in range(20):
        bus.publish("n", i)
    await asyncio.sleep(0)  # the drain has started and a call is suspended
    await bus.close(timeout=5)
    assert done == list(range(20))


async def test_close_cancels_a_handler_that_does_not_finish() -> None:
    bus = EventBus()
    cancelled: list[int] = []

    async def stuck(event: UniversalEvent) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(event.data)
            raise

    bus.subscribe("n", stuck)
    bus.publish("n", 7)
    await asyncio.sleep(0.01)
    await bus.close(timeout=0.05)
    await asyncio.sleep(0.01)
    assert cancelled == [7]


async def test_handlers_see_the_worker_task_and_its_context() -> None:
    bus = EventBus()
    VAR.set("subscriber")
    seen: list[tuple[Any, ...]] = []
    outcomes: list[str] = []

    async def handler(event: UniversalEvent) -> None:
        first = asyncio.current_task()
        before = VAR.get()
        VAR.set(f"set by {event.data}")  # kept for the next call, as in one task
        await asyncio.sleep(0)
        seen.append((first, asyncio.current_task(), before))

    async def timed(event: UniversalEvent) -> None:
        try:
            async with asyncio.timeout(0.01):  # needs a current task from the first line
                await asyncio.sleep(60)
        except TimeoutError:
            outcomes.append("timed out")

    async def grouped(event: UniversalEvent) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(asyncio.sleep(0))
        outcomes.append("group done")

    handle = bus.subscribe("n", handler)
    bus.subscribe("t", timed)
    bus.subscribe("g", grouped)
    worker = bus._subs[handle.id].worker
    VAR.set("publisher")  # the publisher's context does not leak into handlers
    bus.publish("n", 1)
    bus.publish("n", 2)
    bus.publish("t")
    bus.publish("g")
    await bus.drain(5)
    assert [s[0] for s in seen] == [worker, worker]
    assert [s[1] for s in seen] == [worker, worker]
    assert [s[2] for s in seen] == ["subscriber", "set by 1"]
    assert sorted(outcomes) == ["group done", "timed out"]
    assert bus.stats().handler_errors == 0
    await bus.close()


async def test_publishers_on_other_threads_wake_the_drain() -> None:
    bus = EventBus(queue_size=10_000)
    got: dict[int, list[int]] = {}

    async def handler(event: UniversalEvent) -> None:
        thread, i = event.data
        got.setdefault(thread, []).append(i)
        if i % 50 == 0:
            await asyncio.sleep(0)

    bus.subscribe("n", handler)

    def publish(thread: int) -> None:
        for i in range(300):
            bus.publish("n", [thread, i])

    threads = [threading.Thread(target=publish, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        await asyncio.sleep(0.001)
    await bus.drain(5)
    assert got == {t: list(range(300)) for t in range(3)}
    await bus.close()


async def test_a_long_queue_does_not_starve_the_loop() -> None:
    bus = EventBus(queue_size=2_000)
    got: list[int] = []
    marks: list[int] = []

    async def handler(event: UniversalEvent) -> None:
        got.append(event.data)

    bus.subscribe("n", handler)
    for i in range(1_000):
        bus.publish("n", i)  # all queued before the drain first runs
    asyncio.get_running_loop().call_soon(lambda: marks.append(len(got)))
    await bus.drain(5)
    assert got == list(range(1_000))
    assert marks and marks[0] < 1_000  # the drain yielded between batches


async def test_a_cancelled_worker_is_replaced_when_a_handler_suspends() -> None:
    bus = EventBus()
    got: list[int] = []

    async def handler(event: UniversalEvent) -> None:
        await asyncio.sleep(0)
        got.append(event.data)

    handle = bus.subscribe("n", handler)
    await asyncio.sleep(0)
    sub = bus._subs[handle.id]
    old = sub.worker
    assert old is not None
    old.cancel()  # as asyncio.run's shutdown would: the subscription is not stuck
    await asyncio.sleep(0.01)
    assert old.cancelled()
    for i in range(3):
        bus.publish("n", i)
    await bus.drain(5)
    assert got == [0, 1, 2] and sub.worker is not old
    await bus.close()


async def test_a_handler_cancelling_its_own_task_before_waiting_gets_the_cancellation() -> None:
    bus = EventBus()
    track = Tracker()
    caught: list[int] = []

    async def handler(event: UniversalEvent) -> None:
        track.enter()
        if event.data == 1:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()  # the worker, still waiting in the background, is cancelled
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                caught.append(event.data)
                task.uncancel()
        else:
            await asyncio.sleep(0)
        track.leave(event.data)

    bus.subscribe("n", handler)
    for i in range(4):
        bus.publish("n", i)
        await bus.drain(5)  # each call starts in the drain callback
    for i in range(4, 6):
        bus.publish("n", i)
    await bus.drain(5)
    assert caught == [1]
    assert track.order == list(range(6)) and not track.overlapped
    await bus.close()


def test_a_worker_left_on_a_closed_loop_is_collected_without_a_second_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A loop closed while a queued handler still waits (a test's loop, a program that
    ends): the collector closes the worker's coroutine with no loop running, which must
    not raise from its cleanup ("no running event loop")."""
    import gc
    import sys

    seen: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    loop = asyncio.new_event_loop()
    held = {"bus": EventBus()}

    async def setup() -> None:
        bus = held["bus"]
        never: asyncio.Future[None] = loop.create_future()

        async def stuck(event: UniversalEvent) -> None:
            await never

        bus.subscribe("w", stuck)
        await bus.publish_async("w", 1)
        await asyncio.sleep(0.01)

    loop.run_until_complete(setup())
    loop.close()
    held.clear()
    gc.collect()
    assert [u for u in seen if "Subscription._work" in repr(u.object)] == []
