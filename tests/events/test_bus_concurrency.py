"""The bus under concurrent publishers: threads publishing at once, replay while threads
publish, subscriptions changing on other threads, closing while threads publish, and a
queued subscriber that never reads. Every check is about what was delivered and counted,
never about how long it took (timeouts only guard against hangs)."""

from __future__ import annotations

import asyncio
import threading
import time

from llmspell.errors import BusClosedError
from llmspell.events import BackpressureNotice, EventBus, EventQuery, UniversalEvent
from llmspell.events.store import MemoryStore

THREADS = 8
PER_THREAD = 1500


def _in_publisher_order(received: list[tuple[str, int]], names: list[str], count: int) -> bool:
    return all([i for p, i in received if p == name] == list(range(count)) for name in names)


async def test_threads_publishing_at_once_deliver_each_event_once_in_publisher_order() -> None:
    store = MemoryStore(100_000)
    bus = EventBus(store=store, queue_size=THREADS * PER_THREAD)
    inline: list[tuple[str, int]] = []
    queued: list[tuple[str, int]] = []
    queued_sync: list[tuple[str, int]] = []
    lock = threading.Lock()

    def on_inline(event: UniversalEvent) -> None:
        with lock:
            inline.append((event.data["p"], event.data["i"]))

    async def on_queued(event: UniversalEvent) -> None:
        queued.append((event.data["p"], event.data["i"]))
        if event.data["i"] % 97 == 0:
            await asyncio.sleep(0)  # some calls suspend: the worker task finishes them

    def on_queued_sync(event: UniversalEvent) -> None:
        queued_sync.append((event.data["p"], event.data["i"]))

    bus.subscribe("load.*", on_inline)
    bus.subscribe("load.**", on_queued)
    bus.subscribe("load.*", on_queued_sync, mode="queued")
    start = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def publisher(name: str) -> None:
        start.wait()
        try:
            for i in range(PER_THREAD):
                bus.publish("load.thread", {"p": name, "i": i})
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    names = [f"t{n}" for n in range(THREADS)]
    threads = [threading.Thread(target=publisher, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    await asyncio.to_thread(lambda: [thread.join(30) for thread in threads])
    await bus.drain(30)
    total = THREADS * PER_THREAD
    assert errors == []
    for received in (inline, queued, queued_sync):
        assert len(received) == len(set(received)) == total  # exactly once
        assert _in_publisher_order(received, names, PER_THREAD)
    stats = bus.stats()
    assert stats.by_type["load.thread"] == total
    assert stats.delivered == 3 * total and stats.dropped == stats.rejected == 0
    assert [flow.delivered for flow in stats.subscriptions] == [total] * 3
    assert store.count(pattern="load.*") == total
    await bus.close()


async def test_a_subscriber_that_never_reads_stays_bounded_and_reports_backpressure() -> None:
    notices: list[BackpressureNotice] = []
    bus = EventBus(on_backpressure=notices.append)  # default queue: 1024 events, drop_oldest
    release = asyncio.Event()

    async def stuck(event: UniversalEvent) -> None:
        await release.wait()

    bus.subscribe("flood.*", stuck, name="stuck")

    def publisher() -> None:
        for i in range(2000):
            bus.publish("flood.tick", {"i": i, "pad": "x" * 100})

    threads = [threading.Thread(target=publisher) for _ in range(4)]
    for thread in threads:
        thread.start()
    await asyncio.to_thread(lambda: [thread.join(30) for thread in threads])
    flow = bus.subscriptions()[0]
    assert flow.max_depth <= flow.capacity == 1024 and flow.depth <= 1024
    assert flow.queued_bytes <= flow.max_queue_bytes
    # Every event is delivered (the one call in progress), dropped or still queued.
    assert flow.delivered + flow.dropped + flow.depth == 8000
    assert flow.dropped > 0
    kinds = [(n.kind, n.subscription) for n in notices]
    assert ("started", "stuck") in kinds and ("warning", "stuck") in kinds
    release.set()
    await bus.drain(30)
    flow = bus.subscriptions()[0]
    assert flow.depth == 0 and flow.delivered + flow.dropped == 8000
    await bus.close()


async def test_replay_while_threads_publish_replays_each_stored_event_once() -> None:
    source = MemoryStore(10_000)
    recorder = EventBus(store=source)
    for i in range(2000):
        recorder.publish("old.step", {"i": i})
    bus = EventBus(store=MemoryStore(100_000), queue_size=10_000)
    replayed: list[tuple[int, bool, str]] = []
    live: list[int] = []
    lock = threading.Lock()

    async def on_old(event: UniversalEvent) -> None:
        replayed.append((event.data["i"], event.metadata.replayed, event.id))

    def on_new(event: UniversalEvent) -> None:
        with lock:
            live.append(event.data["i"])

    bus.subscribe("old.*", on_old)
    bus.subscribe("new.*", on_new)

    def publisher() -> None:
        for i in range(3000):
            bus.publish("new.tick", {"i": i})

    threads = [threading.Thread(target=publisher) for _ in range(4)]
    for thread in threads:
        thread.start()
    count = await bus.replay(EventQuery(pattern="old.*"), store=source)
    await asyncio.to_thread(lambda: [thread.join(30) for thread in threads])
    await bus.drain(30)
    assert count == 2000
    assert [i for i, _, _ in replayed] == list(range(2000))  # in order, none missing or twice
    assert all(flag for _, flag, _ in replayed)
    assert len({event_id for _, _, event_id in replayed}) == 2000
    assert len(live) == 12_000
    assert bus.store is not None
    assert bus.store.count(pattern="old.*") == 0  # not stored again without persist=True
    assert bus.store.count(pattern="new.*") == 12_000
    await bus.close()


async def test_subscriptions_changing_on_other_threads_keep_delivery_counts_exact() -> None:
    bus = EventBus()
    steady: list[int] = []
    bus.subscribe("churn.*", lambda event: steady.append(1), name="steady")
    stop = threading.Event()
    errors: list[BaseException] = []

    async def passing(event: UniversalEvent) -> None:
        pass

    def churner() -> None:
        try:
            while not stop.is_set():
                inline = bus.subscribe("churn.*", lambda event: None)
                queued = bus.subscribe("churn.**", passing)
                time.sleep(0.001)
                assert bus.unsubscribe(inline) and bus.unsubscribe(queued)
        except BaseException as exc:
            errors.append(exc)

    def publisher() -> None:
        try:
            for i in range(3000):
                bus.publish("churn.tick", i)
        except BaseException as exc:
            errors.append(exc)

    churners = [threading.Thread(target=churner) for _ in range(2)]
    publishers = [threading.Thread(target=publisher) for _ in range(4)]
    for thread in churners + publishers:
        thread.start()
    await asyncio.to_thread(lambda: [thread.join(30) for thread in publishers])
    stop.set()
    await asyncio.to_thread(lambda: [thread.join(30) for thread in churners])
    await bus.drain(30)
    assert errors == []
    stats = bus.stats()
    assert len(steady) == stats.by_type["churn.tick"] == 12_000
    assert [(flow.subscription, flow.delivered) for flow in stats.subscriptions] == [
        ("steady", 12_000)]
    await bus.close()


async def test_closing_while_threads_publish_refuses_the_rest_and_counts_every_event() -> None:
    bus = EventBus()
    got: list[int] = []

    async def handler(event: UniversalEvent) -> None:
        got.append(event.data)

    bus.subscribe("closing.*", handler, name="q")
    accepted: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    running = threading.Barrier(7)

    def publisher() -> None:
        sent = 0
        running.wait()
        try:
            while True:
                bus.publish("closing.tick", sent)
                sent += 1
        except BusClosedError:
            pass
        except BaseException as exc:
            errors.append(exc)
        with lock:
            accepted.append(sent)

    threads = [threading.Thread(target=publisher) for _ in range(6)]
    for thread in threads:
        thread.start()
    await asyncio.to_thread(running.wait)
    await asyncio.sleep(0.05)
    await asyncio.wait_for(bus.close(), 30)
    await asyncio.to_thread(lambda: [thread.join(30) for thread in threads])
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    stats = bus.stats()
    flow = stats.subscriptions[0]
    assert stats.by_type["closing.tick"] == sum(accepted)
    # Every accepted event was delivered or counted as dropped: none vanished.
    assert flow.depth == 0 and flow.delivered == len(got)
    assert flow.delivered + flow.dropped == sum(accepted)


def test_an_event_published_as_the_bus_closes_is_counted_as_dropped() -> None:
    """A publish that passed the closed check just before close() began reaches a closed
    queue: it is counted as dropped (it used to vanish from every counter)."""
    bus = EventBus()
    got: list[int] = []

    async def queued(event: UniversalEvent) -> None:
        got.append(event.data)

    def closer(event: UniversalEvent) -> None:
        if event.data == 2:  # runs before the event is offered to the queued subscription
            bus.close_sync()

    bus.subscribe("race.*", queued, name="queued")
    bus.subscribe("race.*", closer, name="closer")
    for i in range(3):
        bus.publish("race.done", i)
    flow = next(f for f in bus.subscriptions() if f.subscription == "queued")
    assert got == [0, 1] and flow.delivered == 2
    assert flow.dropped == 1 and flow.depth == 0
    assert bus.stats().by_type["race.done"] == 3
