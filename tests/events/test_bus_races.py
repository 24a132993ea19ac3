"""The bus under concurrency and at its limits: unsubscribe vs publishers on other threads,
counts across subscription changes, blocked publishers, other event loops, event and queue
size bounds, durable publishes and event data the store must be able to encode."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from llmspell.errors import EventError, EventTooLargeError
from llmspell.events import EventBus, UniversalEvent
from llmspell.events.event import event_size
from llmspell.events.store import MemoryStore, SQLiteStore
from llmspell.hooks import ComponentId, ComponentType, HookPoint


def test_no_inline_call_starts_or_runs_after_unsubscribe_returns() -> None:
    bus = EventBus()
    stop = threading.Event()
    violations: list[str] = []
    returned: set[int] = set()

    def publisher() -> None:
        while not stop.is_set():
            bus.publish("race.tick")

    threads = [threading.Thread(target=publisher, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for round_no in range(300):
            def handler(event: UniversalEvent, round_no: int = round_no) -> None:
                if round_no in returned:
                    violations.append(f"round {round_no}: called after unsubscribe returned")
                time.sleep(0)  # let other threads run inside the call
                if round_no in returned:
                    violations.append(f"round {round_no}: running after unsubscribe returned")

            handle = bus.subscribe("race.*", handler)
            time.sleep(0.0005)
            assert bus.unsubscribe(handle)
            returned.add(round_no)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert violations == []


def test_a_handler_may_unsubscribe_itself_without_waiting_for_itself() -> None:
    bus = EventBus()
    calls: list[int] = []
    handles = []

    def once(event: UniversalEvent) -> None:
        calls.append(event.data)
        bus.unsubscribe(handles[0], timeout=30)

    handles.append(bus.subscribe("one.shot", once))
    bus.publish("one.shot", 1)
    bus.publish("one.shot", 2)
    assert calls == [1]


def test_delivery_counts_survive_subscription_changes() -> None:
    bus = EventBus()
    calls = [0]
    lock = threading.Lock()

    def counted(event: UniversalEvent) -> None:
        with lock:
            calls[0] += 1

    bus.subscribe("count.*", counted, name="stable")
    per_thread = 20_000
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            handle = bus.subscribe("count.**", lambda e: None, name="churn")
            bus.unsubscribe(handle)

    def publisher() -> None:
        for _ in range(per_thread):
            bus.publish("count.tick")

    churner = threading.Thread(target=churn, daemon=True)
    churner.start()
    publishers = [threading.Thread(target=publisher) for _ in range(4)]
    for thread in publishers:
        thread.start()
    for thread in publishers:
        thread.join()
    stop.set()
    churner.join(10)
    total = 4 * per_thread
    assert calls[0] == total
    stats = bus.stats()
    assert stats.by_type["count.tick"] == total
    stable = next(f for f in stats.subscriptions if f.subscription == "stable")
    assert stable.delivered == total
    assert stats.delivered >= total  # plus what the churned subscriptions received


def test_unsubscribe_counts_the_event_of_a_publisher_blocked_on_a_full_queue() -> None:
    bus = EventBus()
    release = threading.Event()
    started = threading.Event()

    async def stuck(event: UniversalEvent) -> None:
        started.set()
        await asyncio.to_thread(release.wait, 30)

    handle = bus.subscribe("blk", stuck, queue_size=1, overflow="block", block_timeout=30)
    bus.publish("blk", 1)           # taken by the worker, whose handler then waits
    assert started.wait(10)
    bus.publish("blk", 2)           # fills the queue
    outcome: list[object] = []
    publisher = threading.Thread(target=lambda: outcome.append(bus.publish("blk", 3)))
    publisher.start()
    deadline = time.monotonic() + 10
    while not bus._subs[handle.id]._blocked and time.monotonic() < deadline:
        time.sleep(0.001)
    assert bus.unsubscribe(handle)
    publisher.join(10)
    assert not publisher.is_alive() and len(outcome) == 1
    # Event 2 was discarded from the queue and event 3 from the blocked publisher: both count.
    assert bus.stats().dropped == 2
    release.set()
    bus.close_sync(timeout=5)


def test_publish_async_on_another_loop_waits_for_room_without_blocking_that_loop() -> None:
    bus = EventBus()
    release = threading.Event()
    started = threading.Event()
    got: list[int] = []

    async def slow(event: UniversalEvent) -> None:
        started.set()
        await asyncio.to_thread(release.wait, 30)
        got.append(event.data)

    bus.subscribe("blk", slow, queue_size=1, overflow="block", block_timeout=30)
    bus.publish("blk", 1)  # the bus's own background loop takes it; the handler waits
    assert started.wait(10)

    async def other_loop() -> tuple[int, bool]:
        await bus.publish_async("blk", 2)         # fills the queue
        waiting = asyncio.create_task(bus.publish_async("blk", 3))
        ticks = 0
        for _ in range(10):                        # this loop keeps running meanwhile
            await asyncio.sleep(0.005)
            ticks += 1
        still_waiting = not waiting.done()
        release.set()
        await waiting
        return ticks, still_waiting

    ticks, still_waiting = asyncio.run(other_loop())
    assert ticks == 10 and still_waiting
    bus.close_sync(timeout=10)
    assert got == [1, 2, 3]


@pytest.mark.parametrize("size", [1, 2, 3])
async def test_tiny_queues_get_valid_default_water_marks(size: int) -> None:
    bus = EventBus()
    got: list[int] = []

    async def handler(event: UniversalEvent) -> None:
        got.append(event.data)

    bus.subscribe("tiny", handler, queue_size=size)
    for i in range(5):
        await bus.publish_async("tiny", i)
        await bus.drain()
    await bus.close()
    assert got == list(range(5))


# -- size bounds ------------------------------------------------------------------------------


def test_events_larger_than_the_limit_are_refused_before_anything_keeps_them() -> None:
    store = MemoryStore()
    bus = EventBus(store=store)
    inline: list[str] = []
    bus.subscribe("big.*", lambda e: inline.append(e.event_type))
    huge = "x" * (4 * 1024 * 1024)
    with pytest.raises(EventTooLargeError, match="at most 1048576 bytes") as info:
        bus.publish("big.one", {"blob": huge})
    assert info.value.size > info.value.limit == 1024 * 1024
    prebuilt = UniversalEvent(event_type="big.two", data=huge)
    with pytest.raises(EventTooLargeError):
        bus.publish(prebuilt)            # the store would keep it
    assert inline == [] and store.count() == 0
    small = bus.publish("big.ok", {"blob": "x" * 1000})
    assert inline == ["big.ok"] and store.count() == 1
    assert 1000 < event_size(small) < 1400

    roomy = EventBus(max_event_bytes=8 * 1024 * 1024)
    roomy.publish("big.one", {"blob": huge})
    tight = EventBus(max_event_bytes=100, queue_size=4)
    tight_seen: list[str] = []
    tight.subscribe("a.*", lambda e: tight_seen.append(e.data))
    # Delivered only inline, the bus keeps nothing of it: not measured, delivered.
    tight.publish("a.b", "y" * 200)
    assert tight_seen == ["y" * 200]
    tight.subscribe("a.*", lambda e: None, mode="queued")
    with pytest.raises(EventTooLargeError):   # a queue would keep it: measured, refused
        tight.publish("a.b", "z" * 200)
    assert tight_seen == ["y" * 200]


async def test_queues_are_bounded_in_bytes_not_only_in_events() -> None:
    bus = EventBus(max_event_bytes=8 * 1024 * 1024, max_queue_bytes=10 * 1024 * 1024)
    seen: list[int] = []

    async def slow(event: UniversalEvent) -> None:
        seen.append(event.data["i"])

    bus.subscribe("mem.*", slow, queue_size=1000)
    blob = "x" * (4 * 1024 * 1024)
    for i in range(40):                   # the worker does not run before the loop yields
        bus.publish("mem.big", {"i": i, "blob": blob})
        flow = bus.subscriptions()[0]
        assert flow.queued_bytes <= 10 * 1024 * 1024
    flow = bus.subscriptions()[0]
    assert flow.depth == 2 and flow.dropped == 38
    await bus.drain()
    await bus.close()
    assert seen == [38, 39]


def test_queue_byte_bounds_are_validated() -> None:
    from llmspell.errors import InvalidValueError

    with pytest.raises(InvalidValueError, match="max_queue_bytes"):
        EventBus(max_queue_bytes=0)
    with pytest.raises(InvalidValueError, match="max_event_bytes"):
        EventBus(max_event_bytes=0)
    with pytest.raises(InvalidValueError, match="max_queue_bytes"):
        EventBus().subscribe("a", lambda e: None, mode="queued", max_queue_bytes=-1)


# -- durable publishes ----------------------------------------------------------------------


def test_a_durable_publish_returns_once_the_event_is_committed(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "events.db", flush_interval=60.0, flush_before_read=False)
    bus = EventBus(store=store)
    bus.publish("a.lazy")                   # accepted, still buffered (flush_interval 60 s)
    assert store.stats().pending == 1
    event = bus.publish("a.durable", {"k": 1}, durable=True)
    stats = store.stats()
    assert stats.pending == 0 and stats.written == 2
    assert [e.id for e in store.query()][-1] == event.id
    with pytest.raises(EventError, match="needs a store"):
        bus.publish("a.b", durable=True, persist=False)
    with pytest.raises(EventError, match="needs a store"):
        EventBus().publish("a.b", durable=True)
    memory = EventBus(store=MemoryStore())
    memory.publish("a.b", durable=True)     # a memory store commits on append
    store.close()


async def test_a_durable_async_publish_awaits_the_commit(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "events.db", flush_interval=60.0, flush_before_read=False)
    bus = EventBus(store=store)
    await bus.publish_async("a.durable", durable=True)
    assert store.stats().written == 1
    with pytest.raises(EventError, match="needs a store"):
        await EventBus().publish_async("a.b", durable=True)
    await bus.close()
    store.close()


# -- event data the store must encode ---------------------------------------------------------


def test_custom_hook_points_in_event_data_are_stored(tmp_path: Path) -> None:
    point = HookPoint.custom("model.call")
    store = SQLiteStore(tmp_path / "events.db")
    bus = EventBus(store=store)
    seen: list[object] = []
    bus.subscribe("hook.**", lambda e: seen.append(e.data))
    bus.publish("hook.breaker.open", {"point": point, "points": [point], "level": 3})
    bus.flush()
    stored = store.query()
    assert [e.data for e in stored] == [{"point": "custom:model.call",
                                          "points": ["custom:model.call"], "level": 3}]
    assert type(stored[0].data["point"]) is str and type(seen[0]["point"]) is str  # type: ignore[index]
    store.close()


async def test_check_performance_with_a_slow_hook_at_a_custom_point(tmp_path: Path) -> None:
    from llmspell.runtime import System, SystemConfig

    point = HookPoint.custom("model.call")
    async with System(SystemConfig(data_dir=str(tmp_path))) as system:
        system.registry.register(point, lambda c: time.sleep(0.003), name="slow-custom")
        await system.dispatch(point, ComponentId(type=ComponentType.TOOL, name="x"), {})
        assert await system.check_performance(threshold_ms=1.0) >= 1
        system.bus.flush()
        stored = system.store.query(pattern="system.performance_threshold_exceeded")  # type: ignore[union-attr]
        assert any(e.data["point"] == "custom:model.call" for e in stored)


async def test_breaker_changes_of_hooks_at_custom_points_are_published(tmp_path: Path) -> None:
    from llmspell.runtime import System, SystemConfig

    point = HookPoint.custom("model.call")
    async with System(SystemConfig(data_dir=str(tmp_path))) as system:
        def boom(ctx: object) -> None:
            raise RuntimeError("provider down")

        system.registry.register(point, boom, name="boom")
        component = ComponentId(type=ComponentType.TOOL, name="x")
        for _ in range(5):
            await system.dispatch(point, component, {})
        system.bus.flush()
        opened = system.store.query(pattern="hook.breaker.*")  # type: ignore[union-attr]
        assert opened and opened[0].data["point"] == "custom:model.call"
