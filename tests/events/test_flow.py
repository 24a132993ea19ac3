"""Overflow strategies with exact counts, water-mark notices in order, the rate limit."""

from __future__ import annotations

import asyncio

import pytest

from llmspell.core import ManualClock
from llmspell.errors import InvalidValueError, QueueFullError, RateLimitedError
from llmspell.events import (
    BackpressureKind,
    BackpressureNotice,
    EventBus,
    RateLimit,
    TokenBucket,
    UniversalEvent,
)


def recording_bus(**options):  # type: ignore[no-untyped-def]
    notices: list[BackpressureNotice] = []
    bus = EventBus(on_backpressure=notices.append, **options)
    notice_events: list[str] = []
    bus.subscribe("bus.backpressure.*", lambda e: notice_events.append(e.event_type))
    return bus, notices, notice_events


async def queued_sub(bus: EventBus, overflow: str, got: list[int], **options):  # type: ignore[no-untyped-def]
    async def handler(event: UniversalEvent) -> None:
        got.append(event.data)

    return bus.subscribe("work", handler, name="worker", overflow=overflow, queue_size=4,
                         high_water=3, low_water=1, **options)


async def test_drop_oldest_keeps_the_newest() -> None:
    bus, notices, notice_events = recording_bus()
    got: list[int] = []
    await queued_sub(bus, "drop_oldest", got)
    for i in range(10):  # no await: the worker cannot run, so the queue fills
        bus.publish("work", i)
    (flow,) = [f for f in bus.subscriptions() if f.subscription == "worker"]
    assert (flow.depth, flow.dropped, flow.rejected, flow.max_depth) == (4, 6, 0, 4)
    await bus.drain(5)
    assert got == [6, 7, 8, 9]
    (flow,) = [f for f in bus.subscriptions() if f.subscription == "worker"]
    assert (flow.delivered, flow.dropped, flow.backpressure, flow.episodes) == (4, 6, False, 1)
    assert [n.kind for n in notices] == ["started", "warning", "relieved"]
    assert notice_events == ["bus.backpressure.started", "bus.backpressure.warning",
                             "bus.backpressure.relieved"]
    assert notices[0].depth == 3 and notices[1].dropped == 1 and notices[2].depth == 1
    await bus.close()


async def test_drop_newest_keeps_the_oldest() -> None:
    bus, notices, _ = recording_bus()
    got: list[int] = []
    await queued_sub(bus, "drop_newest", got)
    for i in range(10):
        bus.publish("work", i)
    await bus.drain(5)
    assert got == [0, 1, 2, 3]
    (flow,) = [f for f in bus.subscriptions() if f.subscription == "worker"]
    assert (flow.delivered, flow.dropped, flow.rejected) == (4, 6, 0)
    assert [n.kind for n in notices] == ["started", "warning", "relieved"]
    await bus.close()


async def test_reject_raises_to_the_publisher_and_others_still_get_the_event() -> None:
    bus, notices, _ = recording_bus()
    got: list[int] = []
    others: list[int] = []
    await queued_sub(bus, "reject", got)
    bus.subscribe("work", lambda e: others.append(e.data))
    rejected = 0
    for i in range(10):
        try:
            bus.publish("work", i)
        except QueueFullError as exc:
            assert exc.subscription == "worker" and "rejected" in str(exc)
            rejected += 1
    assert rejected == 6 and others == list(range(10))
    await bus.drain(5)
    assert got == [0, 1, 2, 3]
    (flow,) = [f for f in bus.subscriptions() if f.subscription == "worker"]
    assert (flow.delivered, flow.dropped, flow.rejected) == (4, 0, 6)
    assert [n.kind for n in notices] == ["started", "warning", "relieved"]
    assert notices[1].rejected == 1
    await bus.close()


async def test_block_makes_a_thread_publisher_wait_for_room() -> None:
    bus, _notices, _ = recording_bus()
    got: list[int] = []
    await queued_sub(bus, "block", got, block_timeout=5.0)

    def publish_all() -> None:
        for i in range(20):
            bus.publish("work", i)

    await asyncio.to_thread(publish_all)
    await bus.drain(5)
    assert got == list(range(20))
    (flow,) = [f for f in bus.subscriptions() if f.subscription == "worker"]
    assert (flow.delivered, flow.dropped, flow.rejected) == (20, 0, 0)
    assert flow.max_depth <= 4
    await bus.close()


async def test_block_times_out_into_a_rejection() -> None:
    bus, notices, _ = recording_bus()
    gate = asyncio.Event()
    got: list[int] = []

    async def stuck(event: UniversalEvent) -> None:
        await gate.wait()
        got.append(event.data)

    bus.subscribe("work", stuck, name="worker", overflow="block", queue_size=2,
                  high_water=2, low_water=0, block_timeout=0.05)
    bus.publish("work", 0)
    await asyncio.sleep(0.01)  # the worker takes event 0 and waits at the gate

    def publish_some() -> list[str]:
        outcomes = []
        for i in range(1, 5):
            try:
                bus.publish("work", i)
                outcomes.append("ok")
            except QueueFullError as exc:
                assert "stayed full for 0.05 s" in str(exc)
                outcomes.append("rejected")
        return outcomes

    assert await asyncio.to_thread(publish_some) == ["ok", "ok", "rejected", "rejected"]
    gate.set()
    await bus.drain(5)
    assert got == [0, 1, 2]
    (flow,) = [f for f in bus.subscriptions() if f.subscription == "worker"]
    assert (flow.delivered, flow.dropped, flow.rejected) == (3, 0, 2)
    assert [n.kind for n in notices] == ["started", "warning", "relieved"]
    await bus.close()


async def test_block_from_the_loop_thread_sync_is_refused_but_async_waits() -> None:
    bus, _notices, _ = recording_bus()
    got: list[int] = []
    await queued_sub(bus, "block", got, block_timeout=2.0)
    for i in range(4):
        bus.publish("work", i)
    with pytest.raises(QueueFullError, match="publish_async"):
        bus.publish("work", 99)  # would block the loop the worker needs
    for i in range(4, 12):
        await bus.publish_async("work", i)  # waits for room without blocking the loop
    await bus.drain(5)
    assert got == list(range(12))
    (flow,) = [f for f in bus.subscriptions() if f.subscription == "worker"]
    assert (flow.delivered, flow.rejected) == (12, 1)
    await bus.close()


async def test_notices_are_not_delivered_to_the_full_subscription_itself() -> None:
    bus = EventBus()
    got: list[str] = []

    async def everything(event: UniversalEvent) -> None:
        got.append(event.event_type)

    bus.subscribe("**", everything, queue_size=2, high_water=2, low_water=0)
    for _ in range(5):
        bus.publish("work")
    await bus.drain(5)
    assert all(t == "work" for t in got)
    await bus.close()


def test_token_bucket_with_an_injected_clock() -> None:
    clock = ManualClock()
    bucket = TokenBucket(rate=10, burst=2, clock=clock)
    assert bucket.take() == 0.0 and bucket.take() == 0.0
    assert bucket.take() == pytest.approx(0.1)
    clock.advance(0.05)
    assert bucket.take() == pytest.approx(0.05)
    clock.advance(0.05)
    assert bucket.take() == 0.0
    clock.advance(10)
    assert bucket.take() == 0.0 and bucket.take() == 0.0 and bucket.take() > 0
    with pytest.raises(InvalidValueError):
        TokenBucket(0, 1)


def test_rate_limit_reject_and_its_notice() -> None:
    clock = ManualClock()
    notices: list[BackpressureNotice] = []
    bus = EventBus(rate_limit=RateLimit(rate=10, burst=2, on_limit="reject"), clock=clock,
                   on_backpressure=notices.append)
    got: list[int] = []
    bus.subscribe("x", lambda e: got.append(e.data))
    bus.publish("x", 1)
    bus.publish("x", 2)
    with pytest.raises(RateLimitedError) as info:
        bus.publish("x", 3)
    assert info.value.retry_after == pytest.approx(0.1)
    with pytest.raises(RateLimitedError):
        bus.publish("x", 4)
    assert [n.kind for n in notices] == [BackpressureKind.RATE_LIMIT_EXCEEDED]  # once
    clock.advance(0.1)
    bus.publish("x", 5)
    assert got == [1, 2, 5]
    assert bus.stats().rate_limited == 2


def test_rate_limit_wait_paces_a_sync_publisher() -> None:
    bus = EventBus(rate_limit=RateLimit(rate=200, burst=1, on_limit="wait", max_wait=1.0))
    got: list[int] = []
    bus.subscribe("x", lambda e: got.append(e.data))
    import time

    start = time.monotonic()
    for i in range(5):
        bus.publish("x", i)
    assert got == list(range(5))
    assert time.monotonic() - start >= 4 / 200 * 0.9


async def test_rate_limit_wait_in_async_code() -> None:
    bus = EventBus(rate_limit=RateLimit(rate=500, burst=1, max_wait=1.0))
    got: list[int] = []
    bus.subscribe("x", lambda e: got.append(e.data))
    for i in range(5):
        await bus.publish_async("x", i)
    assert got == list(range(5))
    with pytest.raises(RateLimitedError):  # sync publish on the loop must not sleep
        for i in range(5):
            bus.publish("x", i)
    await bus.close()
    strict = EventBus(rate_limit=RateLimit(rate=1, burst=1, max_wait=0.0))
    await strict.publish_async("x")
    with pytest.raises(RateLimitedError):
        await strict.publish_async("x")


def test_rate_limit_validation() -> None:
    with pytest.raises(InvalidValueError):
        RateLimit(rate=0)
    with pytest.raises(InvalidValueError):
        RateLimit(rate=1, burst=0)
    with pytest.raises(InvalidValueError, match="on_limit"):
        RateLimit(rate=1, on_limit="drop")
    with pytest.raises(InvalidValueError):
        RateLimit(rate=1, max_wait=-1)
