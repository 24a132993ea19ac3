"""Flow control of remote events, against the real NATS server: a subscription's queue and
overflow strategy apply to the events other processes publish, and a ``block`` subscription
holds its consumer (the server keeps the rest) instead of dropping after ``block_timeout``;
the consumer fetches no more than the queue holds; a durable subscription's prefetch and
``max_ack_pending`` reach the server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from llmspell.errors import InvalidValueError
from llmspell.events import UniversalEvent
from tests.events.nats_support import buses, eventually, namespace, nats_url

__all__ = ["buses", "namespace", "nats_url"]  # fixtures


async def test_a_block_subscription_holds_its_consumer_and_loses_nothing(
        buses: Callable[..., Any]) -> None:
    publisher, subscriber = await buses(), await buses()
    gate = asyncio.Event()
    got: list[int] = []

    async def slow(event: UniversalEvent) -> None:
        await gate.wait()
        got.append(event.data)

    handle = subscriber.subscribe("job.*", slow, queue_size=4, overflow="block",
                                  block_timeout=0.05)
    await subscriber.ready()
    for i in range(60):
        publisher.publish("job.run", i)
    await eventually(lambda: publisher.distributed_stats().buffered == 0, what="the outbox")
    remote = subscriber._remotes[handle.id]
    consumer: Any = remote.tsub
    await asyncio.sleep(0.5)                     # 10x block_timeout: nothing may be dropped
    # The queue is full and the consumer holds what it fetched: no more than the queue.
    assert consumer._queue.qsize() + consumer._requested <= 4
    state = await consumer.state()
    assert state.pending > 40                    # the rest waits on the server
    gate.set()
    await eventually(lambda: len(got) == 60, what="every event")
    assert got == list(range(60))
    flow = {f.subscription: f for f in subscriber.subscriptions()}[handle.name]
    assert (flow.dropped, flow.rejected) == (0, 0) and flow.max_depth <= 4


async def test_drop_strategies_apply_to_remote_events_as_to_local_ones(
        buses: Callable[..., Any]) -> None:
    publisher, subscriber = await buses(), await buses()
    gate = asyncio.Event()
    got: list[int] = []
    notices: list[str] = []

    async def slow(event: UniversalEvent) -> None:
        await gate.wait()
        got.append(event.data)

    subscriber.subscribe("bus.backpressure.*", lambda e: notices.append(e.event_type),
                         local=True)
    handle = subscriber.subscribe("job.*", slow, queue_size=4, overflow="drop_newest")
    await subscriber.ready()
    for i in range(30):
        publisher.publish("job.run", i)
    flows = lambda: {f.subscription: f for f in subscriber.subscriptions()}[handle.name]  # noqa: E731
    await eventually(lambda: flows().dropped + flows().delivered + 5 >= 30 and
                     flows().dropped > 0, what="drops")
    gate.set()
    await eventually(lambda: flows().dropped + len(got) == 30, what="the rest")
    assert got[:5] == [0, 1, 2, 3, 4] and flows().dropped >= 20  # the newest were dropped
    assert "bus.backpressure.warning" in notices or "bus.backpressure.started" in notices


async def test_a_durable_subscription_sets_prefetch_and_max_ack_pending_on_the_server(
        buses: Callable[..., Any]) -> None:
    bus = await buses()
    bus.subscribe("job.*", lambda e: None, durable="flow", prefetch=8, max_ack_pending=16)
    await bus.ready()
    info = await bus.transport._jetstream().consumer_info(  # type: ignore[attr-defined]
        bus.transport.config.stream_name, "flow")  # type: ignore[attr-defined]
    assert info.config.max_ack_pending == 16
    remote = next(r for r in bus._remotes.values() if r.durable)
    assert remote.options.batch == 8
    with pytest.raises(InvalidValueError, match="prefetch 32 is more than max_ack_pending"):
        bus.subscribe("job.*", lambda e: None, durable="flow2", prefetch=32,
                      max_ack_pending=16)
    await bus.delete_durable("flow")
