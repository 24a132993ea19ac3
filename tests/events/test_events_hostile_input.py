"""The event layer under hostile input: events a store cannot write, integers past 64 bits
in queries and reads, rows of the wrong shape in a store file, odd bus settings, and
messages on the bus's NATS subjects that no llmspell publisher sends.

Expected everywhere: a typed error from :mod:`llmspell.errors` saying what was wrong, at the
call that was wrong; never a traceback from deep inside, a store whose writer is stuck on
one bad event, an accepted event lost, or a subscriber reached through the wrong subject.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llmspell.errors import (
    InvalidValueError,
    SerializationError,
)
from llmspell.events import EventBus, UniversalEvent
from llmspell.events.event import decode_event
from llmspell.events.store import EventQuery, MemoryStore, SQLiteStore
from llmspell.events.store.sqlite import SQLiteStoreReader
from llmspell.events.transport import ConsumerOptions, Delivery, OutgoingEvent
from llmspell.events.transport.nats import NatsTransport
from tests.events.nats_support import bus_url, buses, eventually, namespace, nats_url

__all__ = ["buses", "namespace", "nats_url"]  # fixtures

MakeStore = Callable[..., Any]
HUGE = 2**70


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeStore]:
    made: list[Any] = []

    def make(**kwargs: Any) -> Any:
        if request.param == "memory":
            store: Any = MemoryStore(**kwargs)
        else:
            store = SQLiteStore(tmp_path / f"db{len(made)}" / "events.db", **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


# -- events a store cannot write ---------------------------------------------------------------
@pytest.mark.parametrize("bad", [
    pytest.param(lambda: decode_event(b'{"event_type":"a.b","sequence":%d}' % HUGE),
                 id="sequence-past-64-bits"),
    pytest.param(lambda: UniversalEvent(event_type="a.b", id="\ud800"), id="surrogate-id"),
    pytest.param(lambda: UniversalEvent(event_type="a.\udc80"), id="surrogate-type"),
    pytest.param(lambda: UniversalEvent(event_type="a.b", timestamp=float("nan")),
                 id="nan-timestamp"),
])
def test_an_event_sqlite_cannot_write_is_refused_at_append_and_the_writer_goes_on(
        tmp_path: Path, bad: Callable[[], UniversalEvent]) -> None:
    store = SQLiteStore(tmp_path / "events.db", busy_timeout=0.5)
    try:
        with pytest.raises(InvalidValueError) as info:
            store.append(bad())
        assert info.value.hint
        with pytest.raises(InvalidValueError):
            store.append_many([UniversalEvent.create("a.ok"), bad()])  # all or none
        good = UniversalEvent.create("a.ok", {"i": 1})
        store.append(good)
        store.flush(timeout=30)
        assert [e.id for e in store.query()] == [good.id]
        stats = store.stats()
        assert (stats.accepted, stats.written, stats.write_errors) == (1, 1, 0)
    finally:
        store.close()


def test_a_flush_timeout_that_is_not_a_number_is_refused(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "events.db", flush_interval=60)
    try:
        store.append(UniversalEvent.create("a.b"))
        with pytest.raises(InvalidValueError, match="timeout"):
            store.flush(timeout=float("nan"))
        assert store.flush(timeout=30) == 1
    finally:
        store.close()


# -- integers past 64 bits in queries and reads ------------------------------------------------
@pytest.mark.parametrize("fields", [
    {"limit": 2**63}, {"limit": 10**30}, {"min_sequence": HUGE}, {"max_sequence": -HUGE},
    {"pattern": "a.*", "limit": 2**63},
])
def test_a_query_bound_past_64_bits_is_an_invalid_value(make_store: MakeStore,
                                                        fields: dict[str, Any]) -> None:
    store = make_store()
    store.append(UniversalEvent.create("a.b"))
    for read in (lambda: store.query(**fields), lambda: store.count(**fields),
                 lambda: list(store.iter_events(EventQuery(**fields)))):
        with pytest.raises(InvalidValueError, match="64 bits") as info:
            read()
        assert info.value.hint
    assert store.count() == 1


def test_retention_past_64_bits_is_refused_and_leaves_the_store_writable(
        make_store: MakeStore) -> None:
    store = make_store()
    store.append(UniversalEvent.create("a.b"))
    with pytest.raises(InvalidValueError, match="max_count"):
        store.apply_retention(max_count=2**64)
    store.append(UniversalEvent.create("a.c"))  # no write lock left behind
    store.flush(timeout=30)
    assert store.count() == 2
    assert store.apply_retention(max_count=1) == 1


@pytest.fixture
def reader(tmp_path: Path) -> Iterator[SQLiteStoreReader]:
    path = tmp_path / "events.db"
    with SQLiteStore(path) as store:
        for i in range(6):
            store.append(UniversalEvent.create(f"a.t{i % 2}", {"i": i}))
    with SQLiteStoreReader(path) as opened:
        yield opened


@pytest.mark.parametrize("read", [
    pytest.param(lambda r: r.read_after(HUGE), id="position"),
    pytest.param(lambda r: r.read_after(0, limit=HUGE), id="limit"),
    pytest.param(lambda r: r.read_after(0, upto=HUGE), id="upto"),
    pytest.param(lambda r: r.newest(HUGE), id="newest"),
    pytest.param(lambda r: r.count_types(HUGE, 1), id="count_types"),
    pytest.param(lambda r: r.read_after(0, limit=-1), id="negative-limit"),
    pytest.param(lambda r: r.read_after(0, limit=-1, pattern="a.*"), id="negative-glob"),
    pytest.param(lambda r: r.newest(-1, pattern="a.*"), id="negative-newest-glob"),
])
def test_a_reader_refuses_positions_and_limits_it_cannot_use(
        reader: SQLiteStoreReader, read: Callable[[SQLiteStoreReader], object]) -> None:
    with pytest.raises(InvalidValueError) as info:
        read(reader)
    assert info.value.hint
    assert len(reader.read_after(0, limit=0)) == 0
    assert len(reader.newest(3, pattern="a.*")) == 3


# -- store rows of the wrong shape ---------------------------------------------------------------
@pytest.mark.parametrize("damage", [
    "payload = 12345", "sequence = 'abc'", "timestamp = 'zz'", "event_type = x'ff'",
    "id = x'00'",
])
def test_a_row_of_the_wrong_shape_is_a_serialization_error(tmp_path: Path,
                                                           damage: str) -> None:
    path = tmp_path / "events.db"
    with SQLiteStore(path) as store:
        store.append(UniversalEvent.create("a.b", {"i": 1}))
    with sqlite3.connect(path) as conn:
        conn.execute(f"UPDATE events SET {damage}")
    conn.close()
    with SQLiteStore(path) as store:
        with pytest.raises(SerializationError, match="cannot decode the stored event") as info:
            store.query()
        assert info.value.hint
    with SQLiteStoreReader(path) as opened, pytest.raises(SerializationError):
        opened.read_after(0)


def test_a_payload_stored_as_text_is_read(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with SQLiteStore(path) as store:
        event = UniversalEvent.create("a.b", {"i": 1})
        store.append(event)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE events SET payload = CAST(payload AS TEXT)")
    conn.close()
    with SQLiteStore(path) as store:
        assert [(e.id, e.data) for e in store.query()] == [(event.id, {"i": 1})]


# -- bus settings ----------------------------------------------------------------------------------
@pytest.mark.parametrize("size", ["3", 1.5, True, 0])
def test_a_queue_size_that_is_not_a_positive_int_is_refused(size: object) -> None:
    with pytest.raises(InvalidValueError, match="queue_size"):
        EventBus(queue_size=size)  # type: ignore[arg-type]
    bus = EventBus()

    async def handler(event: UniversalEvent) -> None:
        pass

    with pytest.raises(InvalidValueError, match="queue_size"):
        bus.subscribe("a.*", handler, queue_size=size)  # type: ignore[arg-type]
    bus.close_sync()


# -- messages on the bus's subjects that no llmspell publisher sends -----------------------------
async def test_an_event_on_another_types_subject_or_of_no_valid_type_is_parked(
        nats_url: str, namespace: str) -> None:
    transport = NatsTransport(bus_url(nats_url, namespace))
    await transport.connect()
    try:
        durable: list[str] = []
        ephemeral: list[str] = []

        async def handle(delivery: Delivery) -> None:
            durable.append(delivery.event.event_type)
            await delivery.ack()

        async def watch(delivery: Delivery) -> None:
            ephemeral.append(delivery.event.event_type)

        await transport.subscribe("job.*", handle, ConsumerOptions(durable="w", start="all"))
        await transport.subscribe("job.*", watch, ConsumerOptions(start="all"))
        js = transport._jetstream()
        stream = transport.config.stream_name
        forged = [b'{"event_type":"admin.secret","data":1}', b'{"event_type":"","data":1}',
                  b'{"event_type":"job.raw","sequence":%d}' % HUGE]
        for payload in forged:
            await js.publish(transport.subject_of("job.raw"), payload, stream=stream)
        await transport.publish([OutgoingEvent.of(UniversalEvent.create("job.ok", 7))])
        await eventually(lambda: durable == ephemeral == ["job.ok"], what="the good event")
        letters = [d async for d in transport.dead_letters("w")]
        await eventually(lambda: transport.stats().undecodable == 6, what="both consumers")
        assert sorted(d.payload for d in letters) == sorted(forged)
        assert {d.reason for d in letters} == {"undecodable"}
        replayed = [d.event.event_type async for d in transport.replay("job.*")]
        assert replayed == ["job.ok"]
    finally:
        await transport.close()


async def test_a_mirror_parks_an_event_its_store_refuses_and_catches_up(
        buses: Callable[..., Any], tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "events.db", max_pending_bytes=4096)
    here = await buses()
    mirror = here.mirror(store, name="m1")
    await here.ready()
    elsewhere = await buses()
    big = await elsewhere.publish_async("doc.saved", {"text": "x" * 20_000}, durable=True)
    small = await elsewhere.publish_async("doc.saved", {"text": "ok"}, durable=True)
    stats = await here.mirror_caught_up("m1", timeout=30)
    assert (stats.committed, stats.parked, stats.pending) == (1, 1, 0)
    assert [e.id for e in store.query()] == [small.id]
    letters = await here.dead_letters("m1")
    assert [(d.event.id if d.event else None, d.reason, d.error_type) for d in letters] == [
        (big.id, "refused by the store", "EventTooLargeError")]
    assert mirror.stats().parked == 1
    await here.stop_mirror("m1")
    store.close()
