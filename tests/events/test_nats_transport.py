"""The transport layer: bus URLs and their errors, patterns mapped to subjects, and the NATS
JetStream transport against the real server (dedupe by event id, replay by sequence and time,
durable consumers that keep their settings, messages that are not events)."""

from __future__ import annotations

import asyncio
import time

import pytest

from llmspell.errors import (
    ConfigurationError,
    EventError,
    InvalidValueError,
    TransportError,
    TransportUnavailableError,
)
from llmspell.events import EventBus, UniversalEvent
from llmspell.events.distributed import DistributedBus, check_bus_url, make_bus, split_bus_url
from llmspell.events.transport import (
    ConsumerOptions,
    Delivery,
    OutgoingEvent,
    PublishAck,
    transport_from_url,
    validate_bus_url,
    validate_consumer_name,
)
from llmspell.events.transport.nats import NatsConfig, NatsTransport, pattern_subjects
from llmspell.runtime import System, SystemConfig, load_config
from tests.events.nats_support import bus_url, eventually, free_port, namespace, nats_url

__all__ = ["namespace", "nats_url"]  # fixtures

ROOT = "llmspell.ns.ev"


# -- URLs and configuration (no server needed) ------------------------------------------------
def test_a_url_sets_the_servers_namespace_and_retention() -> None:
    config = NatsConfig.from_url("nats://u:secret@10.0.0.1:4222,nats://10.0.0.2:4223"
                                 "?namespace=prod&max_age=60&max_msgs=1000&storage=memory")
    assert config.servers == ("nats://u:secret@10.0.0.1:4222", "nats://10.0.0.2:4223")
    assert (config.namespace, config.max_age, config.max_msgs, config.storage) == (
        "prod", 60.0, 1000, "memory")
    assert config.stream_name == "llmspell-prod" and config.prefix == "llmspell.prod"
    assert "secret" not in config.description and "prod" in config.description
    named = NatsConfig.from_url("tls://h:4222?stream=S1&prefix=acme.events")
    assert (named.stream_name, named.prefix) == ("S1", "acme.events")


@pytest.mark.parametrize(("url", "message"), [
    ("http://h:4222", "unsupported bus URL"),
    ("", "empty"),
    ("nats://", "no host"),
    ("nats://h:99999", "Port out of range"),
    ("nats://h:4222/path", "a path"),
    ("nats://h:4222?colour=red", "unknown option 'colour'"),
    ("nats://h:4222?max_age=soon", "not a valid float"),
    ("nats://h:4222?max_age=0", "max_age must be > 0"),
    ("nats://h:4222?namespace=a.b", "invalid namespace"),
    ("nats://h:4222?storage=tape", "unknown storage"),
    ("nats://h:4222?overflow=sometimes", "unknown overflow"),
    ("nats://h:4222?buffer=many", "not a valid int"),
    ("nats://h:4222?max_msgs=0", "max_msgs and max_bytes"),
])
def test_a_bad_bus_url_is_a_configuration_error_saying_what_is_wrong(url: str,
                                                                       message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        check_bus_url(url)
    assert info.value.hint
    with pytest.raises(ConfigurationError):
        SystemConfig(bus=url) if url else validate_bus_url(url)


def test_the_bus_options_of_a_url_go_to_the_bus_the_rest_to_the_transport() -> None:
    base, options = split_bus_url("nats://h:4222?namespace=a&buffer=5&overflow=reject"
                                  "&publish_timeout=2.5&buffer_bytes=1000")
    assert base == "nats://h:4222?namespace=a"
    assert options == {"buffer_size": 5, "overflow": "reject", "publish_timeout": 2.5,
                       "buffer_bytes": 1000}
    assert split_bus_url("nats://h:4222") == ("nats://h:4222", {})
    bus = make_bus("nats://127.0.0.1:4222?namespace=a&buffer=5&overflow=reject")
    assert isinstance(bus, DistributedBus)
    assert (bus._outbox.capacity, bus._outbox.overflow) == (5, "reject")
    assert isinstance(bus.transport, NatsTransport)
    assert bus.transport.config.namespace == "a"
    with pytest.raises(ConfigurationError, match="buffer_size"):
        make_bus("nats://127.0.0.1:4222?buffer=0")
    with pytest.raises(ConfigurationError, match="for the bus: buffer"):
        check_bus_url("nats://h:4222?bufer=3")


def test_without_a_url_the_system_keeps_the_in_process_bus(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    assert type(make_bus(None)) is EventBus and type(make_bus("  ")) is EventBus
    assert type(System(SystemConfig(store="none")).bus) is EventBus
    assert type(System(SystemConfig(store="none", bus="")).bus) is EventBus
    monkeypatch.setenv("LLMSPELL_BUS", "nats://127.0.0.1:4222?namespace=fromenv")
    config = load_config(store="none")
    assert config.bus == "nats://127.0.0.1:4222?namespace=fromenv"
    bus = System(config).bus
    assert isinstance(bus, DistributedBus)
    assert isinstance(bus.transport, NatsTransport)
    assert bus.transport.config.namespace == "fromenv"
    monkeypatch.setenv("LLMSPELL_BUS", "redis://h")
    with pytest.raises(ConfigurationError, match="unsupported bus URL"):
        load_config()


def test_a_durable_subscription_on_the_in_process_bus_says_what_it_needs() -> None:
    bus = EventBus()
    with pytest.raises(EventError, match="durable subscription needs a distributed bus") as info:
        bus.subscribe("a.*", print, durable="x")
    assert "bus=" in (info.value.hint or "")
    handle = bus.subscribe("a.*", print, local=True)  # every subscription is local here
    assert bus.unsubscribe(handle)


@pytest.mark.parametrize(("pattern", "multi", "subjects", "wider"), [
    ("tool.calc.done", False, ("tool.calc.done",), False),
    ("tool.*.done", False, ("tool.*.done",), False),
    ("tool.**", True, ("tool", "tool.>"), False),
    ("tool.**", False, (">",), True),          # one level wider before server 2.10
    ("tool.x.**", False, ("tool.>",), True),
    ("**", False, (">",), False),
    ("**.**", False, (">",), False),
    ("tool.**.done", False, ("tool.>",), True),
    ("**.done", False, (">",), True),
    ("tool.calc*.done", False, ("tool.*.done",), True),
    ("tool.ca?c.*", True, ("tool.*.*",), True),
    ("a.*.**", True, ("a.*", "a.*.>"), False),
])
def test_patterns_map_to_the_narrowest_subjects_that_cover_them(
        pattern: str, multi: bool, subjects: tuple[str, ...], wider: bool) -> None:
    got, got_wider = pattern_subjects(pattern, ROOT, multi_filter=multi)
    assert got == tuple(f"{ROOT}.{s}" for s in subjects)
    assert got_wider is wider


def test_names_and_consumer_options_are_checked() -> None:
    assert validate_consumer_name("billing-worker_2") == "billing-worker_2"
    for bad in ("", "a.b", "a b", "x" * 65, "a*"):
        with pytest.raises(InvalidValueError, match="durable subscription name"):
            validate_consumer_name(bad)
    for kwargs in ({"start": "later"}, {"ack_wait": 0}, {"max_deliver": 0}, {"batch": 0},
                   {"start_sequence": 0}, {"max_ack_pending": 0}, {"durable": "a.b"}):
        with pytest.raises(InvalidValueError):
            ConsumerOptions(**kwargs)  # type: ignore[arg-type]
    event = UniversalEvent(event_type="a.b", data={"x": 1})
    item = OutgoingEvent.of(event)
    assert (item.id, item.event_type) == (event.id, "a.b")
    assert UniversalEvent.from_json(item.payload) == event


async def test_an_unreachable_server_is_a_clear_typed_error() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    transport = transport_from_url(url)
    with pytest.raises(TransportUnavailableError, match="cannot reach the NATS server") as info:
        await transport.connect()
    assert "nats-server -js" in (info.value.hint or "")
    system = System(SystemConfig(store="none", bus=url))
    with pytest.raises(TransportUnavailableError):
        await system.start()
    assert not system.started
    with pytest.raises(TransportError, match="not connected"):
        await transport.subscribe("a", _noop, ConsumerOptions())
    results = await transport.publish([OutgoingEvent.of(UniversalEvent(event_type="a"))])
    assert results[0].retriable and "not connected" in results[0].error  # type: ignore[union-attr]
    await system.shutdown()


async def _noop(delivery: Delivery) -> None:
    return None


# -- against the real server -----------------------------------------------------------------
async def _transport(nats_url: str, namespace: str) -> NatsTransport:
    transport = NatsTransport(bus_url(nats_url, namespace))
    await transport.connect()
    return transport


async def test_a_retried_publish_is_stored_once(nats_url: str, namespace: str) -> None:
    transport = await _transport(nats_url, namespace)
    try:
        item = OutgoingEvent.of(UniversalEvent(event_type="order.placed", data={"n": 1}))
        first = await transport.publish([item], origin="p1")
        again = await transport.publish([item, item], origin="p1")  # a retry, twice
        assert isinstance(first[0], PublishAck) and not first[0].duplicate
        assert all(isinstance(r, PublishAck) and r.duplicate
                   and r.sequence == first[0].sequence for r in again)
        state = await transport.stream_state()
        assert (state.messages, state.last_sequence) == (1, 1)
        stats = transport.stats()
        assert (stats.published, stats.duplicates) == (3, 2)
        replayed = [d async for d in transport.replay()]
        assert [(d.event.id, d.origin, d.sequence) for d in replayed] == [(item.id, "p1", 1)]
    finally:
        await transport.close()


async def test_replay_by_sequence_and_by_time(nats_url: str, namespace: str) -> None:
    transport = await _transport(nats_url, namespace)
    try:
        early = [UniversalEvent(event_type=f"step.{i}", data=i) for i in range(3)]
        await transport.publish([OutgoingEvent.of(e) for e in early])
        await asyncio.sleep(0.05)
        middle = time.time()
        await asyncio.sleep(0.05)
        late = [UniversalEvent(event_type="step.x.late", data=i) for i in range(3)]
        await transport.publish([OutgoingEvent.of(e) for e in late])

        async def read(**kwargs: object) -> list[object]:
            return [d.event.data async for d in transport.replay(**kwargs)]  # type: ignore[arg-type]

        assert await read() == [0, 1, 2, 0, 1, 2]
        assert await read(start_sequence=3) == [2, 0, 1, 2]
        assert await read(start_sequence=2, stop_sequence=4) == [1, 2, 0]
        assert await read(start_time=middle) == [0, 1, 2]
        assert await read(pattern="step.*") == [0, 1, 2]
        assert await read(pattern="step.**.late") == [0, 1, 2]
        assert await read(pattern="step.x.**", start_sequence=5) == [1, 2]
        assert await read(start_sequence=99) == []
        assert await read(pattern="nothing.here") == []
    finally:
        await transport.close()


async def test_a_durable_consumer_resumes_with_its_own_filter_only(nats_url: str,
                                                                  namespace: str) -> None:
    transport = await _transport(nats_url, namespace)
    try:
        seen: list[int] = []

        async def handle(delivery: Delivery) -> None:
            seen.append(delivery.event.data)
            await delivery.ack()

        options = ConsumerOptions(durable="work", start="all", ack_wait=5)
        sub = await transport.subscribe("job.*", handle, options)
        await transport.publish([OutgoingEvent.of(UniversalEvent(event_type="job.a", data=1))])
        await eventually(lambda: seen == [1], what="the first event")
        await sub.stop()
        await transport.publish([OutgoingEvent.of(UniversalEvent(event_type="job.b", data=2))])
        # Same name, other settings: resumed (after the acked event), settings updated.
        sub = await transport.subscribe("job.*", handle, ConsumerOptions(
            durable="work", ack_wait=9, max_deliver=3))
        await eventually(lambda: seen == [1, 2], what="the event published while stopped")
        state = await sub.state()
        assert (state.pending, state.ack_pending, state.ack_floor) == (0, 0, 2)
        with pytest.raises(TransportError, match="exists for subjects") as info:
            await transport.subscribe("other.*", handle, ConsumerOptions(durable="work"))
        assert "another name" in (info.value.hint or "")
        await sub.stop()
        assert await transport.delete_consumer("work")
        assert not await transport.delete_consumer("work")
        with pytest.raises(TransportError, match="no consumer"):
            await transport.consumer_state("work")
    finally:
        await transport.close()


async def test_a_message_that_is_not_an_event_is_parked_by_a_durable_consumer(
        nats_url: str, namespace: str) -> None:
    transport = await _transport(nats_url, namespace)
    try:
        seen: list[object] = []

        async def handle(delivery: Delivery) -> None:
            seen.append(delivery.event.data)
            await delivery.ack()

        await transport.subscribe("job.*", handle, ConsumerOptions(durable="w", start="all"))
        js = transport._jetstream()
        await js.publish(transport.subject_of("job.raw"), b"not json at all",
                         stream=transport.config.stream_name)
        await transport.publish([OutgoingEvent.of(UniversalEvent(event_type="job.ok", data=7))])
        await eventually(lambda: seen == [7], what="the good event")
        letters = [d async for d in transport.dead_letters("w")]
        assert [(d.event, d.payload, d.reason) for d in letters] == [
            (None, b"not json at all", "undecodable")]
        assert transport.stats().undecodable == 1
    finally:
        await transport.close()


async def test_an_ephemeral_consumer_the_server_lost_is_created_again_after_what_it_saw(
        nats_url: str, namespace: str) -> None:
    transport = await _transport(nats_url, namespace)
    try:
        seen: list[object] = []

        async def handle(delivery: Delivery) -> None:
            seen.append(delivery.event.data)

        sub = await transport.subscribe("a.*", handle, ConsumerOptions(start_time=time.time()))
        await transport.publish([OutgoingEvent.of(UniversalEvent(event_type="a.x", data=1))])
        await eventually(lambda: seen == [1], what="the first event")
        await transport._jetstream().delete_consumer(transport.config.stream_name, sub.name)
        await transport.publish([OutgoingEvent.of(UniversalEvent(event_type="a.x", data=2))])
        await eventually(lambda: seen == [1, 2], what="the consumer to come back")
        await sub.stop()
    finally:
        await transport.close()


async def test_a_stream_with_other_subjects_is_refused(nats_url: str, namespace: str) -> None:
    from nats.js import api

    transport = await _transport(nats_url, namespace)
    other = NatsTransport(bus_url(nats_url, namespace, stream=f"{namespace}-x",
                                  prefix=f"other.{namespace}"))
    try:
        js = transport._jetstream()
        await js.add_stream(api.StreamConfig(name=f"{namespace}-x",
                                             subjects=[f"else.{namespace}.>"]))
        with pytest.raises(TransportError, match="exists with subjects") as info:
            await other.connect()
        assert "namespace" in (info.value.hint or "")
        await js.delete_stream(f"{namespace}-x")
    finally:
        await transport.close()
        await other.close()
