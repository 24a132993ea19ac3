"""The distributed bus: buses in one test process stand for processes (each has its own
origin and connection). Local delivery stays inline and is not repeated by the server;
remote events reach inline, queued and stream subscribers; durable publishes wait for the
PubAck; durable subscriptions ack, retry with backoff and park; a publisher cut off from
the server buffers, applies its overflow strategy and publishes (or reports) what it held;
``System(SystemConfig(bus=...))`` is distributed end to end."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmspell.errors import EventError, QueueFullError, TransportError
from llmspell.events import UniversalEvent
from llmspell.events.distributed import DEAD_LETTER_TYPE, DistributedBus, make_bus
from llmspell.events.store import MemoryStore
from llmspell.runtime import System, SystemConfig
from tests.events.nats_support import (
    OwnServer,
    bus_url,
    buses,
    eventually,
    namespace,
    nats_url,
    own_server,
)

__all__ = ["buses", "namespace", "nats_url", "own_server"]  # fixtures


def _data(events: list[UniversalEvent]) -> list[Any]:
    return [e.data for e in events]


async def test_local_subscribers_get_local_events_inline_once_and_remote_ones_too(
        buses: Callable[..., Any]) -> None:
    a, b = await buses(), await buses()
    assert a.origin != b.origin
    got_a: list[UniversalEvent] = []
    a.subscribe("x.*", got_a.append)
    got_b: list[UniversalEvent] = []
    b.subscribe("x.*", got_b.append)
    await a.ready()
    await b.ready()
    a.publish("x.one", "a1")
    assert _data(got_a) == ["a1"]            # inline, before publish returned
    b.publish("x.two", "b1")
    a.publish("x.mark", "a-mark")
    b.publish("x.mark", "b-mark")
    # Each bus's consumer hands events on in stream order: once the other bus's marker
    # arrived, this bus's own events (published before it) would have come back already.
    await eventually(lambda: "b-mark" in _data(got_a) and "a-mark" in _data(got_b),
                     what="both markers")
    assert sorted(_data(got_a)) == sorted(["a1", "b1", "a-mark", "b-mark"])
    assert sorted(_data(got_b)) == sorted(["a1", "b1", "a-mark", "b-mark"])
    assert a.distributed_stats().transport.skipped_own >= 2
    flows = {f.subscription: f for f in a.subscriptions()}
    assert sum(f.delivered for f in flows.values()) == 4


async def test_remote_events_reach_queued_and_stream_subscribers_and_local_stays_local(
        buses: Callable[..., Any]) -> None:
    a, b = await buses(), await buses()
    queued: list[Any] = []

    async def slow(event: UniversalEvent) -> None:
        await asyncio.sleep(0)
        queued.append(event.data)

    b.subscribe("job.**", slow)
    only_here: list[Any] = []
    b.subscribe("job.**", lambda e: only_here.append(e.data), local=True)
    stream = b.stream("job.*")
    await b.ready()
    for i in range(5):
        a.publish("job.run", i)
    b.publish("job.run", "mine")
    await eventually(lambda: len(queued) == 6, what="the queued subscriber")
    streamed = [await stream.__anext__() for _ in range(6)]
    assert sorted(map(str, queued)) == sorted(map(str, [0, 1, 2, 3, 4, "mine"]))
    assert [e.data for e in streamed if e.data != "mine"] == [0, 1, 2, 3, 4]
    assert only_here == ["mine"]
    await stream.aclose()
    assert b.distributed_stats().remote_delivered == 10


async def test_a_durable_publish_returns_once_the_server_accepted_it(
        buses: Callable[..., Any]) -> None:
    store = MemoryStore()
    a = await buses(store=store)
    event = await a.publish_async("audit.entry", {"n": 1}, durable=True)
    assert a.distributed_stats().accepted == 1
    assert store.query() == [event]
    assert [d.event async for d in a.transport.replay("audit.*")] == [event]
    done = await asyncio.to_thread(a.publish, "audit.entry", {"n": 2}, durable=True)
    assert a.distributed_stats().accepted == 2 and done.data == {"n": 2}
    with pytest.raises(EventError, match="cannot wait on the bus's event loop"):
        a.publish("audit.entry", {"n": 3}, durable=True)  # on the loop's thread
    # Replayed events stay in this process.
    replayed = await a.replay_stream("audit.*")
    assert replayed == 2
    await eventually(lambda: a.distributed_stats().buffered == 0, what="the outbox")
    assert a.distributed_stats().forwarded == 2


async def test_the_same_event_published_twice_is_stored_and_delivered_once(
        buses: Callable[..., Any]) -> None:
    a, b, c = await buses(), await buses(), await buses()
    got: list[UniversalEvent] = []
    c.subscribe("dup.*", got.append)
    await c.ready()
    event = UniversalEvent.create("dup.once", {"v": 1})
    await a.publish_async(event, durable=True)
    await b.publish_async(event, durable=True)     # a retry from elsewhere: same id
    await a.publish_async("dup.mark", durable=True)
    await eventually(lambda: len(got) == 2, what="the marker")
    assert [e.event_type for e in got] == ["dup.once", "dup.mark"]
    assert b.distributed_stats().duplicates == 1
    assert (await a.stream_state()).messages == 2


async def test_a_failing_durable_handler_is_retried_with_backoff_then_parked(
        buses: Callable[..., Any]) -> None:
    a, b = await buses(), await buses()
    calls: list[tuple[Any, float]] = []
    loop = asyncio.get_running_loop()

    def handler(event: UniversalEvent) -> None:
        calls.append((event.data, loop.time()))
        if event.data == "bad":
            raise ValueError("cannot handle bad")

    failures: list[Any] = []
    b.on_handler_error = failures.append
    dead: list[UniversalEvent] = []
    b.subscribe(DEAD_LETTER_TYPE, dead.append, local=True)
    b.subscribe("job.*", handler, durable="jobs", max_deliver=3, backoff=(0.2, 0.4))
    await b.ready()
    for data in ("ok", "bad", "ok2"):
        a.publish("job.run", data)
    await eventually(lambda: bool(dead), what="the dead letter")
    bad = [t for d, t in calls if d == "bad"]
    assert len(bad) == 3                                   # max_deliver attempts
    assert bad[1] - bad[0] >= 0.2 and bad[2] - bad[1] >= 0.4   # the backoff was honoured
    assert [d for d, _ in calls if d != "bad"] == ["ok", "ok2"]
    assert len(failures) == 3
    letter = dead[0].data
    assert (letter["subscription"], letter["event_type"], letter["deliveries"],
            letter["error_type"], letter["message"]) == ("jobs", "job.run", 3, "ValueError",
                                                         "cannot handle bad")
    # Settled: never redelivered. The term is not confirmed by the server (the dead letter
    # can be seen before the server has taken it), so its state is asked until it shows.
    deadline = time.monotonic() + 10
    while True:
        state = await b.durable_state("jobs")
        if (state.pending, state.ack_pending) == (0, 0) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    assert (state.pending, state.ack_pending) == (0, 0)
    letters = await a.dead_letters("jobs")
    assert [(d.event.data if d.event else None, d.reason) for d in letters] == [
        ("bad", "handler failed")]
    durable = b.distributed_stats().durables[0]
    assert (durable.name, durable.acked, durable.failed, durable.naked, durable.parked) == (
        "jobs", 2, 3, 2, 1)


async def test_durable_subscriptions_share_work_resume_by_name_and_can_be_deleted(
        buses: Callable[..., Any]) -> None:
    a, b, c = await buses(), await buses(), await buses()
    seen_b: list[Any] = []
    seen_c: list[Any] = []
    hb = b.subscribe("task.*", lambda e: seen_b.append(e.data), durable="pool")
    hc = c.subscribe("task.*", lambda e: seen_c.append(e.data), durable="pool")
    await b.ready()
    await c.ready()
    with pytest.raises(EventError, match="already subscribed"):
        b.subscribe("task.*", print, durable="pool")
    for i in range(20):
        a.publish("task.do", i)
    await eventually(lambda: len(seen_b) + len(seen_c) == 20, what="the tasks")
    assert sorted(seen_b + seen_c) == list(range(20))        # each to one of them
    assert b.unsubscribe(hb)
    a.publish("task.do", 20)
    await eventually(lambda: 20 in seen_c, what="the remaining member")
    hb = b.subscribe("task.*", lambda e: seen_b.append(e.data), durable="pool")
    await b.ready()
    assert b.unsubscribe(hb)
    await eventually(lambda: b.distributed_stats().durables == [], what="unsubscribe")
    assert c.unsubscribe(hc)  # in every process, before deleting it
    assert await a.delete_durable("pool")
    assert not await a.delete_durable("pool")


async def test_a_subscription_made_before_connecting_opens_at_connect(nats_url: str,
                                                                      namespace: str) -> None:
    url = bus_url(nats_url, namespace)
    a = make_bus(url)
    b = make_bus(url)
    assert isinstance(a, DistributedBus) and isinstance(b, DistributedBus)
    got: list[Any] = []
    b.subscribe("early.*", lambda e: got.append(e.data))
    b.subscribe("early.*", lambda e: None, durable="early")
    a.publish("early.bird", 1)            # buffered until a connects
    assert a.distributed_stats().buffered == 1 and not a.connected
    with pytest.raises(EventError, match="not connected"):
        await a.stream_state()
    await b.connect()
    await a.connect()
    try:
        await eventually(lambda: got == [1], what="the buffered event")
        assert a.distributed_stats().accepted == 1
    finally:
        await a.close()
        await b.close()


async def test_a_system_with_a_bus_url_is_distributed(nats_url: str, namespace: str,
                                                      tmp_path: Path) -> None:
    url = bus_url(nats_url, namespace)
    one = System(SystemConfig(store="none", bus=url))
    two = System(SystemConfig(store="sqlite", data_dir=str(tmp_path), bus=url))
    assert isinstance(one.bus, DistributedBus) and isinstance(two.bus, DistributedBus)
    seen: list[UniversalEvent] = []
    two.bus.subscribe("order.*", seen.append)
    async with one, two:
        await two.bus.ready()
        await one.emit("order.placed", {"id": 7})
        await eventually(lambda: [e.data for e in seen] == [{"id": 7}], what="the event")
        started = [d.event async for d in one.bus.transport.replay("system.started")]
        assert len(started) == 2
    assert one.bus.closed and not two.bus.connected


# -- a publisher cut off from the server ---------------------------------------------------------
async def _wait_disconnected(bus: DistributedBus) -> None:
    await eventually(lambda: not bus.transport.connected, what="the disconnect")


async def test_a_cut_off_publisher_buffers_and_publishes_when_the_server_returns(
        own_server: OwnServer) -> None:
    url = f"{own_server.url}?namespace=buffered"
    pub = make_bus(url)
    sub = make_bus(url)
    assert isinstance(pub, DistributedBus) and isinstance(sub, DistributedBus)
    notices: list[UniversalEvent] = []
    pub.subscribe("bus.transport.*", notices.append, local=True)
    local: list[Any] = []
    pub.subscribe("order.*", lambda e: local.append(e.data), local=True)
    remote: list[Any] = []
    sub.subscribe("order.*", lambda e: remote.append(e.data))
    await pub.connect()
    await sub.connect()
    try:
        pub.publish("order.placed", 0)
        await eventually(lambda: remote == [0], what="the first event")
        own_server.stop()
        await _wait_disconnected(pub)
        for i in range(1, 6):
            pub.publish("order.placed", i)
        assert local == [0, 1, 2, 3, 4, 5]               # local delivery does not wait
        assert pub.distributed_stats().buffered == 5
        own_server.start()                                # same port, same store
        await eventually(lambda: remote == [0, 1, 2, 3, 4, 5], timeout=30,
                         what="the buffered events")
        stats = pub.distributed_stats()
        assert (stats.buffered, stats.accepted, stats.dropped) == (0, 6, 0)
        assert [e.event_type for e in notices][:2] == ["bus.transport.disconnected",
                                                       "bus.transport.reconnected"]
    finally:
        await pub.close()
        await sub.close()


async def test_a_full_outbox_applies_its_overflow_strategy(own_server: OwnServer) -> None:
    base = f"{own_server.url}?namespace=overflow"
    reject = make_bus(f"{base}&buffer=3&overflow=reject")
    drop = make_bus(f"{base}&buffer=3")
    block = make_bus(f"{base}&buffer=2&overflow=block", block_timeout=0.1)
    buses = [reject, drop, block]
    got: dict[int, list[Any]] = {}
    warnings: list[UniversalEvent] = []
    for n, bus in enumerate(buses):
        assert isinstance(bus, DistributedBus)
        got[n] = []
        bus.subscribe("x.*", lambda e, n=n: got[n].append(e.data), local=True)
        await bus.connect()
    drop.subscribe("bus.backpressure.*", warnings.append, local=True)
    try:
        own_server.stop()
        for bus in buses:
            await _wait_disconnected(bus)  # type: ignore[arg-type]
        for i in range(3):
            reject.publish("x.y", i)
        with pytest.raises(QueueFullError, match="outbox is full"):
            reject.publish("x.y", 3)
        with pytest.raises(QueueFullError):
            await reject.publish_async("x.y", 3)
        assert got[0] == [0, 1, 2]                 # refused before local delivery
        for i in range(5):
            drop.publish("x.y", i)
        assert got[1] == [0, 1, 2, 3, 4]
        stats = drop.distributed_stats()
        assert (stats.buffered, stats.dropped) == (3, 2)
        assert {e.event_type for e in warnings} >= {"bus.backpressure.started",
                                                     "bus.backpressure.warning"}
        assert all(e.data["subscription"] == "transport" for e in warnings)
        block.publish("x.y", 0)
        block.publish("x.y", 1)
        with pytest.raises(QueueFullError):
            await asyncio.to_thread(block.publish, "x.y", 2)   # waited, then refused
        with pytest.raises(QueueFullError):
            await block.publish_async("x.y", 2)
        own_server.start()
        for bus in buses:
            await eventually(lambda bus=bus: bus.distributed_stats().buffered == 0,  # type: ignore[misc]
                             timeout=30, what="the outbox to empty")
        seen = [d.event.data async for d in drop.transport.replay("x.*")]
        assert sorted(seen) == [0, 0, 1, 1, 2, 2, 3, 4]  # drop kept its 3 newest
        relieved = [e for e in warnings if e.event_type == "bus.backpressure.relieved"]
        assert relieved
    finally:
        for bus in buses:
            await bus.close()


async def test_events_still_buffered_at_close_are_reported(own_server: OwnServer,
                                                           caplog: pytest.LogCaptureFixture
                                                           ) -> None:
    bus = make_bus(f"{own_server.url}?namespace=unsent&publish_timeout=0.5")
    assert isinstance(bus, DistributedBus)
    await bus.connect()
    own_server.stop()
    await _wait_disconnected(bus)
    bus.publish("lost.one", 1)
    with pytest.raises(TransportError, match=r"not accepted by the server within 0\.5 s"):
        await bus.publish_async("lost.two", 2, durable=True)
    with caplog.at_level(logging.ERROR, logger="llmspell.events"):
        await bus.close(timeout=0.3)
    assert bus.distributed_stats().unsent == 2
    assert "2 event(s) not accepted by the server" in caplog.text
    never = make_bus(f"{own_server.url}?namespace=unsent")
    never.publish("never.sent", 1)
    await never.close()
    assert never.distributed_stats().unsent == 1  # type: ignore[attr-defined]


def test_a_sync_program_connects_and_closes_the_bus_on_its_own_loop_thread(
        nats_url: str, namespace: str) -> None:
    url = bus_url(nats_url, namespace)
    bus = make_bus(url)
    other = make_bus(url)
    assert isinstance(bus, DistributedBus) and isinstance(other, DistributedBus)
    got: list[Any] = []
    bus.subscribe("sync.*", lambda e: got.append(e.data))
    bus.connect_sync()
    other.connect_sync()
    try:
        other.publish("sync.ping", 1, durable=True)   # waits for the PubAck on this thread
        deadline = time.monotonic() + 20
        while got != [1] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert got == [1]
    finally:
        bus.close_sync()
        other.close_sync()
    assert bus.closed and not bus.connected
    with pytest.raises(EventError, match="inside a running event loop"):
        asyncio.run(_call(bus.close_sync))


async def _call(function: Callable[[], object]) -> object:
    return function()


def test_queued_subscriptions_made_before_the_loop_share_the_bus_thread(nats_url: str,
                                                                        namespace: str) -> None:
    url = bus_url(nats_url, namespace)
    bus = make_bus(url)
    assert isinstance(bus, DistributedBus)
    got: list[Any] = []

    async def handler(event: UniversalEvent) -> None:
        got.append(event.data)

    bus.subscribe("early.*", handler)   # queued: binds the bus's own loop thread

    async def main() -> None:
        other = make_bus(url)
        assert isinstance(other, DistributedBus)
        await bus.connect()             # runs on the bus's thread, not this loop
        await other.connect()
        try:
            await other.publish_async("early.one", 1, durable=True)
            await eventually(lambda: got == [1], what="the remote event")
        finally:
            await other.close()
            await bus.close()

    asyncio.run(main())


async def test_a_handler_running_past_ack_wait_is_not_redelivered(
        buses: Callable[..., Any]) -> None:
    a, b = await buses(), await buses()
    calls: list[Any] = []

    async def slow(event: UniversalEvent) -> None:
        calls.append(event.data)
        await asyncio.sleep(1.6)        # longer than ack_wait: it says "in progress"

    b.subscribe("slow.*", slow, durable="slow", ack_wait=1.0)
    await b.ready()
    a.publish("slow.job", 1)
    await eventually(lambda: b.distributed_stats().durables[0].acked == 1, what="the ack")
    state = await b.durable_state("slow")
    assert calls == [1] and state.redelivered == 0
