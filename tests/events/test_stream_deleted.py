"""The namespace's stream deleted under running buses (``nats stream rm``, or another
process's ``delete_stream``): it is created again with the configured settings, every
consumer moves to the new stream and reads it from its first event, so nothing published
after the deletion is lost (publishes that found no stream are retried); the replacement
is counted and reported (``bus.transport.stream_reset``, with what the old stream still
held for the consumer)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from llmspell.events import UniversalEvent
from llmspell.events.distributed import STREAM_RESET_TYPE, DistributedBus
from llmspell.events.transport.base import OutgoingEvent, PublishAck
from llmspell.events.transport.nats import NatsTransport
from tests.events.nats_support import bus_url, buses, eventually, namespace, nats_url

__all__ = ["buses", "namespace", "nats_url"]  # fixtures


@pytest.fixture
async def admin(nats_url: str, namespace: str) -> AsyncIterator[NatsTransport]:
    """A transport standing for an operator (or another process) on the namespace."""
    transport = NatsTransport(bus_url(nats_url, namespace))
    await transport.connect()
    yield transport
    await transport.close()


def _data(events: list[UniversalEvent]) -> list[Any]:
    return [e.data for e in events]


def _resets(bus: DistributedBus) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    bus.subscribe(STREAM_RESET_TYPE, lambda e: got.append(e.data), local=True)
    return got


async def test_subscribers_move_to_the_recreated_stream_and_miss_nothing_published_after(
        buses: Callable[..., Any], admin: NatsTransport) -> None:
    a, b = await buses(), await buses()
    inline: list[UniversalEvent] = []
    a.subscribe("x.*", inline.append)
    durable: list[UniversalEvent] = []
    a.subscribe("x.*", durable.append, durable="keeper")
    stream = a.stream("x.*")
    streamed: list[UniversalEvent] = []

    async def read() -> None:
        async for event in stream:
            streamed.append(event)  # noqa: PERF401 - the test watches it grow

    reader = asyncio.create_task(read())
    resets = _resets(a)
    await a.ready()
    for i in range(3):
        await b.publish_async("x.y", i, durable=True)
    everyone = (inline, durable, streamed)
    await eventually(lambda: all(_data(got) == [0, 1, 2] for got in everyone),
                     what="the events before the deletion")

    assert await admin.delete_stream()
    for i in range(3, 8):
        await b.publish_async("x.y", i)
    await eventually(lambda: all(_data(got) == list(range(8)) for got in everyone),
                     what="every event published after the deletion")
    await eventually(lambda: len(resets) == 3, what="a reset report per consumer")
    assert sorted(r["durable"] for r in resets) == [False, False, True]
    assert {(r["last_sequence"], r["unreceived"], r["pattern"]) for r in resets} == {
        (3, 0, "x.*")}
    stats = a.distributed_stats().transport
    assert (stats.consumers_recreated, stats.lost_with_stream) == (3, 0)
    # The stream was made again with the configured settings, by one of the buses (or
    # both: a server before 2.11 does not say which create made it).
    state = await a.stream_state()
    assert state.last_sequence == 5
    assert a.distributed_stats().transport.streams_recreated \
        + b.distributed_stats().transport.streams_recreated >= 1
    assert b.distributed_stats().failed == 0
    await stream.aclose()
    await reader


async def test_a_publish_that_found_no_stream_is_accepted_once_it_is_made_again(
        buses: Callable[..., Any], admin: NatsTransport) -> None:
    b = await buses()
    await b.publish_async("x.y", "before", durable=True)
    assert await admin.delete_stream()
    accepted = await b.publish_async("x.y", "after", durable=True)  # raises if refused
    state = await b.stream_state()
    assert (state.messages, state.last_sequence) == (1, 1)  # a new stream: only "after"
    stats = b.distributed_stats()
    assert (stats.accepted, stats.failed, stats.dropped, stats.buffered) == (2, 0, 0, 0)
    assert stats.transport.streams_recreated == 1
    assert accepted.data == "after"


async def test_a_subscriber_alone_makes_the_stream_again_and_resumes(
        buses: Callable[..., Any], admin: NatsTransport) -> None:
    a = await buses()
    got: list[UniversalEvent] = []
    a.subscribe("x.*", got.append)
    await a.ready()
    assert await admin.delete_stream()
    # Nobody publishes: the subscriber's own recovery makes the stream again.
    await _stream_exists(admin)
    (answer,) = await admin.publish([_outgoing("x.y", "late")])
    assert isinstance(answer, PublishAck)
    await eventually(lambda: _data(got) == ["late"], what="the event on the new stream")
    assert a.distributed_stats().transport.streams_recreated == 1


async def test_what_the_old_stream_still_held_for_a_consumer_is_reported_as_lost(
        buses: Callable[..., Any], admin: NatsTransport) -> None:
    a, b = await buses(), await buses()
    release = asyncio.Event()
    handled: list[Any] = []

    async def slow(event: UniversalEvent) -> None:
        handled.append(event.data)
        if event.data == 0:
            await release.wait()

    for i in range(5):
        await b.publish_async("x.y", i, durable=True)
    a.subscribe("x.*", slow, durable="slow", prefetch=1, start="all")
    resets = _resets(a)
    await a.ready()
    await eventually(lambda: handled == [0], what="the first event to be held")
    assert await admin.delete_stream()  # events 1..4 were still on the server for it
    release.set()
    await eventually(lambda: len(resets) == 1, what="the reset report")
    (reset,) = resets
    assert (reset["consumer"], reset["durable"], reset["last_sequence"],
            reset["unreceived"], reset["recreated"]) == ("slow", True, 1, 4, True)
    assert a.distributed_stats().transport.lost_with_stream == 4
    await b.publish_async("x.y", "new", durable=True)
    await eventually(lambda: handled == [0, "new"], what="the new stream's event")


def _outgoing(event_type: str, data: Any) -> OutgoingEvent:
    return OutgoingEvent.of(UniversalEvent(event_type=event_type, data=data))


async def _stream_exists(transport: NatsTransport, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            await transport.stream_state()
            return
        except Exception:
            if loop.time() > deadline:
                pytest.fail("the stream was not created again")
            await asyncio.sleep(0.05)
