"""The distributed bus: one event bus across processes, over a transport (NATS JetStream).

:class:`DistributedBus` is an :class:`~llmspell.events.bus.EventBus` whose events also go
to every other process on the same transport and namespace, with the same API:

* **Publishing.** An event is delivered to this process's subscribers at once (inline and
  queued, exactly as on the in-process bus), then put in a bounded *outbox* that one
  long-lived sender task publishes from, in order, each event under its id as the message
  id (a retried publish is stored once). ``publish`` returns before the server has the
  event; ``publish(..., durable=True)`` returns once the server accepted it (its PubAck).
  While the server cannot be reached the outbox keeps up to ``buffer_size`` events (and
  ``buffer_bytes``); past that its ``overflow`` strategy applies (``drop_oldest`` by
  default; ``drop_newest``, ``reject`` and ``block`` as for a subscription's queue, the last
  two refusing or waiting *before* anything is delivered locally). Buffered events are
  published when the connection returns; those still buffered when the bus closes are
  logged and counted (``distributed_stats().unsent``). Replayed events
  (``metadata.replayed``) stay local.
* **Subscribing.** A subscription gets this process's events inline, as before, and the
  other processes' events from the transport: each subscription has its own ephemeral
  consumer that skips the messages this bus published (its *origin*), so no subscriber
  sees its own process's event twice. Remote events reach inline handlers on the bus's
  event loop thread, and queued subscriptions through their queue and overflow strategy,
  like local ones. ``local=True`` keeps a subscription to this process's events.
  A new subscription receives the remote events stored from the moment ``subscribe`` was
  called (the consumer starts at that time).
* **Durable subscriptions** (``subscribe(pattern, handler, durable="name")``) are fed by
  the stream only, every process's events including this one's, and keep their position
  on the server: a handler's success acks the event (and the ack is confirmed by the
  server before the next one), an exception naks it for redelivery after a backoff, and
  after ``max_deliver`` failed deliveries it is *parked* on the subscription's dead-letter
  subject and reported (a ``bus.dead_letter`` event, the log, ``distributed_stats()``),
  never retried forever. An event that was delivered but never settled (its process died)
  is redelivered after ``ack_wait``; one that keeps killing its process is parked on its
  next delivery past ``max_deliver``, without calling the handler. Delivery is
  *at-least-once*: an acked event is never delivered again to that subscription, but one
  whose handler finished while its ack was lost (a crash between the two) is. Processes
  subscribing with the same name share the subscription: each event goes to one of them.

The transport lives on the bus's event loop (the running loop when :meth:`connect` is
awaited, or a private loop thread for sync programs); :meth:`connect` must be called before
events flow (``System.start()`` does it). Without a transport URL the system keeps the
in-process :class:`~llmspell.events.bus.EventBus`, unchanged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import itertools
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from time import perf_counter_ns
from typing import Any

import msgspec

from llmspell.core.errors import (
    ConfigurationError,
    EventError,
    EventTooLargeError,
    InvalidValueError,
    QueueFullError,
    TransportError,
)
from llmspell.core.ids import new_id
from llmspell.core.redact import get_logger
from llmspell.core.stats import counter_value
from llmspell.events.bus import EventBus, Handler
from llmspell.events.event import EventMetadata, UniversalEvent
from llmspell.events.flow import (
    BackpressureKind,
    BackpressureNotice,
    DeliveryMode,
    OverflowStrategy,
)
from llmspell.events.mirror import MirrorStats, StreamMirror
from llmspell.events.pattern import compile_pattern
from llmspell.events.store.base import EventQuery, EventStore
from llmspell.events.stream import EventStream
from llmspell.events.stream_replay import choose_source, query_of, replay_stream_events
from llmspell.events.subscription import Subscription, SubscriptionHandle
from llmspell.events.transport import transport_from_url, validate_bus_url
from llmspell.events.transport.base import (
    ConsumerOptions,
    ConsumerState,
    DeadLetter,
    Delivery,
    OutgoingEvent,
    PublishAck,
    PublishAnswers,
    StreamReset,
    StreamState,
    Transport,
    TransportStats,
    TransportSubscription,
    validate_consumer_name,
)

__all__ = [
    "DEAD_LETTER_TYPE",
    "DistributedBus",
    "DistributedStats",
    "DurableStats",
    "check_bus_url",
    "make_bus",
    "split_bus_url",
]

logger = get_logger("llmspell.events")

DEAD_LETTER_TYPE = "bus.dead_letter"
"""The local event a durable subscription publishes when it parks an event."""
DISCONNECTED_TYPE = "bus.transport.disconnected"
RECONNECTED_TYPE = "bus.transport.reconnected"
PUBLISH_FAILED_TYPE = "bus.transport.publish_failed"
STREAM_RESET_TYPE = "bus.transport.stream_reset"
"""The local event a subscription's consumer publishes when it found the stream replaced
(deleted and created again) and moved to the new one; its data is a
:class:`~llmspell.events.transport.base.StreamReset`'s fields."""

_SEND_BATCH = 256
_IN_FLIGHT = 4
"""Batches of ``_SEND_BATCH`` the sender keeps on the wire at once (waiting for each
batch's PubAcks before sending the next one would idle the link for a round trip)."""
_BUS_EXAMPLES = {"buffer": "10000", "buffer_bytes": "67108864", "overflow": "drop_oldest",
                 "publish_timeout": "5", "mirror": "host-1"}
_BUS_KEYS = {"buffer": ("buffer_size", int), "buffer_bytes": ("buffer_bytes", int),
             "overflow": ("overflow", str), "publish_timeout": ("publish_timeout", float),
             "mirror": ("mirror", str)}


class DurableStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counters of one durable subscription in this process: handler calls, acks (confirmed
    by the server), failures, naks (redeliveries asked for), parked events, acks the server
    did not confirm."""

    name: str
    pattern: str
    delivered: int
    acked: int
    failed: int
    naked: int
    parked: int
    ack_failures: int


class DistributedStats(msgspec.Struct, frozen=True, kw_only=True):
    """The distributed side of a bus: its origin id, whether it is connected, the outbox
    (events ``buffered`` now and at most, ``forwarded`` into it, ``accepted`` by the server
    and how many of those were ``duplicates``, ``retries``, events ``dropped`` or
    ``rejected`` by the overflow strategy, ``failed`` (refused by the server), ``unsent``
    when the bus closed), remote events delivered to local subscriptions, the durable
    subscriptions and the transport's own counters."""

    origin: str
    connected: bool
    buffered: int
    max_buffered: int
    forwarded: int
    accepted: int
    duplicates: int
    retries: int
    dropped: int
    rejected: int
    failed: int
    unsent: int
    remote_delivered: int
    durables: list[DurableStats]
    transport: TransportStats
    mirrors: list[MirrorStats] = []


class _Pending:
    """One event in the outbox (``waiter``: a durable publish waiting for its PubAck)."""

    __slots__ = ("item", "size", "waiter")

    def __init__(self, item: OutgoingEvent, waiter: _Waiter | None) -> None:
        self.item = item
        self.size = len(item.payload)
        self.waiter = waiter


_Waiter = concurrent.futures.Future[PublishAck] | asyncio.Future[PublishAck]
"""A durable publish's wait for its PubAck: an asyncio future when it was made on the bus's
loop (``publish_async`` there: no thread hop), else a thread-safe one."""


def _fail(pending: _Pending, error: Exception) -> None:
    waiter = pending.waiter
    if waiter is None or waiter.done():
        return
    if isinstance(waiter, asyncio.Future):
        loop = waiter.get_loop()
        if not loop.is_closed():
            loop.call_soon_threadsafe(_set_error, waiter, error)
        return
    waiter.set_exception(error)


def _set_error(waiter: asyncio.Future[PublishAck], error: Exception) -> None:
    if not waiter.done():
        waiter.set_exception(error)


class _Outbox:
    """The bounded buffer between publishers (any thread) and the sender task."""

    def __init__(self, capacity: int, max_bytes: int, overflow: OverflowStrategy,
                 block_timeout: float) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.overflow = overflow
        self.block_timeout = block_timeout
        self.lock = threading.Lock()
        self.room = threading.Condition(self.lock)
        self.items: deque[_Pending] = deque()
        self.bytes = 0
        self.inflight = 0
        self.max_depth = 0
        self.dropped = 0
        self.rejected = 0
        self.pressured = False
        self.warned = False
        self.waiter: asyncio.Future[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread = 0

    @property
    def depth(self) -> int:
        return len(self.items) + self.inflight

    def _full(self, size: int) -> bool:
        # Lock held.
        return self.depth >= self.capacity or (
            bool(self.items) and self.bytes + size > self.max_bytes)

    def check_room(self, *, can_block: bool) -> None:
        """For ``reject`` and ``block``: refuse, or wait for room, before an event is
        delivered anywhere. Raises ``QueueFullError``."""
        with self.lock:
            if not self._full(0):
                return
            if self.overflow is OverflowStrategy.BLOCK and can_block:
                deadline = time.monotonic() + self.block_timeout
                while self._full(0):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self.room.wait(remaining)
                else:
                    return
            self.rejected += 1
            depth = self.depth
        raise QueueFullError(
            "transport",
            f"the distributed bus's outbox is full ({depth} events not yet accepted by the "
            "server)",
            hint="the server is unreachable or slower than publishing: wait for it, raise "
                 "buffer_size, or choose overflow drop_oldest/drop_newest")

    def put(self, pending: _Pending, *, wake: bool = True
            ) -> tuple[list[_Pending], list[tuple[BackpressureKind, str]]]:
        """Add ``pending`` (applying ``drop_oldest``/``drop_newest`` when full); returns
        the events lost and the notices to send. ``wake=False``: leave the sender asleep
        (the caller sends it itself)."""
        lost: list[_Pending] = []
        notices: list[tuple[BackpressureKind, str]] = []
        with self.lock:
            size = pending.size
            if self._full(size):
                if self.overflow is OverflowStrategy.DROP_NEWEST:
                    lost.append(pending)
                else:  # drop_oldest (reject and block checked room before delivery)
                    while self.items and self._full(size) and \
                            self.overflow is OverflowStrategy.DROP_OLDEST:
                        old = self.items.popleft()
                        self.bytes -= old.size
                        lost.append(old)
                self.dropped += len(lost)
                if lost and not self.warned:
                    self.warned = True
                    notices.append((BackpressureKind.WARNING,
                                    f"dropped {len(lost)} event(s) not yet published"))
            if not lost or lost[-1] is not pending:
                self.items.append(pending)
                self.bytes += size
                depth = self.depth
                if depth > self.max_depth:
                    self.max_depth = depth
                if depth >= max(1, int(self.capacity * 0.8)) and not self.pressured:
                    self.pressured = True
                    self.warned = False
                    notices.append((BackpressureKind.STARTED, f"{depth} events buffered"))
            waiter = None
            if wake:
                waiter, self.waiter = self.waiter, None
        if waiter is not None:
            self._wake(waiter)
        return lost, notices

    def _wake(self, waiter: asyncio.Future[None]) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        if threading.get_ident() == self.loop_thread:
            if not waiter.done():
                waiter.set_result(None)
        else:
            loop.call_soon_threadsafe(_set_done, waiter)

    def take(self, limit: int) -> list[_Pending]:
        with self.lock:
            count = min(limit, len(self.items))
            batch = [self.items.popleft() for _ in range(count)]
            for pending in batch:
                self.bytes -= pending.size
            self.inflight += count
            return batch

    def settle(self, done: int, retry: list[_Pending]) -> list[tuple[BackpressureKind, str]]:
        """``done`` taken events are settled; ``retry`` go back to the front, in order."""
        with self.lock:
            self.inflight -= done + len(retry)
            for pending in reversed(retry):
                self.items.appendleft(pending)
                self.bytes += pending.size
            self.room.notify_all()
            if self.pressured and self.depth <= self.capacity // 2:
                self.pressured = False
                return [(BackpressureKind.RELIEVED, f"{self.depth} events buffered")]
        return []

    async def wait_for_items(self) -> None:
        loop = asyncio.get_running_loop()
        with self.lock:
            if self.items:
                return
            waiter: asyncio.Future[None] = loop.create_future()
            self.waiter = waiter
        await waiter

    def wake(self) -> None:
        with self.lock:
            waiter, self.waiter = self.waiter, None
        if waiter is not None:
            self._wake(waiter)

    def drain_all(self) -> list[_Pending]:
        with self.lock:
            items = list(self.items)
            self.items.clear()
            self.bytes = 0
            self.room.notify_all()
            return items


def _failed(error: Exception, count: int) -> PublishAnswers:
    """Answers saying each of ``count`` events failed with ``error`` (retried)."""

    async def answers() -> list[Any]:
        return [error] * count

    return answers


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Remote:
    """The transport side of one local subscription (or of a durable one)."""

    __slots__ = (
        "ack_failures",
        "acked",
        "backoff",
        "durable",
        "max_deliver",
        "naked",
        "options",
        "parked",
        "sub",
        "tsub",
    )

    def __init__(self, sub: Subscription, options: ConsumerOptions, *, durable: bool,
                 max_deliver: int = 0, backoff: tuple[float, ...] = ()) -> None:
        self.sub = sub
        self.options = options
        self.durable = durable
        self.max_deliver = max_deliver
        self.backoff = backoff
        self.tsub: TransportSubscription | None = None
        self.acked = 0
        self.naked = 0
        self.parked = 0
        self.ack_failures = 0


class DistributedBus(EventBus):
    """An event bus shared by every process on ``transport`` (see the module docstring).

    ``buffer_size``/``buffer_bytes``: the outbox's bounds; ``overflow``: what a full outbox
    does (``drop_oldest``, ``drop_newest``, ``reject``, ``block`` for up to
    ``block_timeout`` seconds); ``publish_timeout``: seconds a publish waits for the
    server's PubAck (a durable publish, and each attempt of the sender); ``origin``: this
    bus's id in message headers (a fresh id by default). ``mirror``: the name of a mirror
    of the stream into the bus's store, started at :meth:`connect` (see :meth:`mirror`).
    Other keywords go to :class:`~llmspell.events.bus.EventBus`.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        buffer_size: int = 10_000,
        buffer_bytes: int = 64 * 1024 * 1024,
        overflow: OverflowStrategy | str = OverflowStrategy.DROP_OLDEST,
        block_timeout: float = 1.0,
        publish_timeout: float = 5.0,
        origin: str | None = None,
        mirror: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if mirror is not None and self._store is None:
            raise ConfigurationError(
                f"mirror={mirror!r} needs a store to mirror the stream into",
                hint="give the bus a store (SystemConfig(store=...), or store=SQLiteStore(...))")
        if not isinstance(buffer_size, int) or buffer_size < 1:
            raise InvalidValueError(f"buffer_size must be an int >= 1, got {buffer_size!r}")
        if not isinstance(buffer_bytes, int) or buffer_bytes < 1:
            raise InvalidValueError(f"buffer_bytes must be an int >= 1, got {buffer_bytes!r}")
        if not publish_timeout > 0:
            raise InvalidValueError(f"publish_timeout must be > 0 seconds, got "
                                    f"{publish_timeout!r}")
        if not block_timeout >= 0:
            raise InvalidValueError("block_timeout must be >= 0 seconds")
        try:
            strategy = OverflowStrategy(overflow)
        except ValueError:
            raise InvalidValueError(
                f"unknown overflow strategy {overflow!r}",
                hint=f"use one of: {', '.join(s.value for s in OverflowStrategy)}") from None
        self.transport = transport
        self.origin = origin or new_id()
        self._outbox = _Outbox(buffer_size, buffer_bytes, strategy, block_timeout)
        self._publish_timeout = publish_timeout
        self._remotes: dict[int, _Remote] = {}
        self._pending_opens: list[_Remote] = []
        self._mirrors: dict[str, StreamMirror] = {}
        self._pending_mirrors: list[StreamMirror] = []
        self._setups: set[concurrent.futures.Future[None] | asyncio.Future[None]] = set()
        self._setup_errors: list[BaseException] = []
        self._started = False
        self._sender: asyncio.Task[None] | None = None
        self._settling: set[asyncio.Task[None]] = set()
        self._window: asyncio.Semaphore | None = None
        self._retry_delay = 0.0
        self._in_flight = 0  # batches the sender (or a direct send) holds
        self._connected_event: asyncio.Event | None = None
        self._forwarded = itertools.count()  # publishers on any thread: atomic
        self._accepted = 0
        self._duplicates = 0
        self._retries = 0
        self._failed = 0
        self._unsent = 0
        self._remote_delivered = 0
        self._durable_names: set[str] = set()
        self._closing = False
        if mirror is not None:
            self.mirror(name=mirror)

    # -- connecting --------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """True while the transport is connected."""
        return self._started and self.transport.connected

    async def connect(self) -> None:
        """Connect the transport (on the bus's event loop), start the sender and open the
        subscriptions made so far. Idempotent. Raises
        :class:`~llmspell.errors.TransportUnavailableError` when the server cannot be
        reached."""
        loop = self._transport_loop()
        if asyncio.get_running_loop() is loop:
            await self._connect_here()
        else:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._connect_here(),
                                                                       loop))

    def connect_sync(self, timeout: float = 30.0) -> None:
        """:meth:`connect` for sync code (not inside a running event loop): the bus then
        runs its transport on a private loop thread."""
        if _running_loop() is not None:
            raise EventError("connect_sync() was called inside a running event loop",
                             hint="use `await bus.connect()`")
        loop = self._transport_loop()
        asyncio.run_coroutine_threadsafe(self._connect_here(), loop).result(timeout)

    def _transport_loop(self) -> asyncio.AbstractEventLoop:
        """The loop the transport runs on: the bus's loop if queued subscriptions already
        bound one (a private loop thread, in a program that subscribed before it had a
        running loop), else the running loop (or a private one for sync code)."""
        loop = self._loop
        if loop is not None and not loop.is_closed() and self._own_thread is not None:
            return loop
        return self._bind_loop()

    async def _connect_here(self) -> None:
        if self._started:
            return
        if self._closed:
            raise EventError("the bus is closed", hint="make a new bus")
        loop = asyncio.get_running_loop()
        self._connected_event = asyncio.Event()
        self.transport.listeners.append(self._on_connection)
        resets = getattr(self.transport, "reset_listeners", None)
        if resets is not None:  # a transport written before they existed has none
            resets.append(self._on_stream_reset)
        try:
            await self.transport.connect()
        except BaseException:
            # Added again by the next attempt: a bus retrying an unreachable server must not
            # collect one listener per attempt (each would announce every reconnect).
            self.transport.listeners.remove(self._on_connection)
            if resets is not None:
                resets.remove(self._on_stream_reset)
            raise
        self._connected_event.set()
        outbox = self._outbox
        outbox.loop = loop
        outbox.loop_thread = threading.get_ident()
        self._started = True
        self._sender = loop.create_task(self._send_loop(), name="llmspell-bus-sender")
        opens, self._pending_opens = self._pending_opens, []
        for remote in opens:
            await self._open(remote)
        mirrors, self._pending_mirrors = self._pending_mirrors, []
        for mirror in mirrors:
            await mirror.start()

    def _on_connection(self, connected: bool) -> None:
        event = self._connected_event
        if event is not None:
            if connected:
                event.set()
            else:
                event.clear()
        self._publish_internal(RECONNECTED_TYPE if connected else DISCONNECTED_TYPE,
                               {"server": self.transport.description,
                                "buffered": self._outbox.depth}, persist=False)

    def _on_stream_reset(self, reset: StreamReset) -> None:
        self._publish_internal(STREAM_RESET_TYPE, msgspec.structs.asdict(reset),
                               persist=False)

    async def ready(self, timeout: float | None = 10.0) -> None:
        """Wait until every subscription made so far has its consumer on the server (a
        subscription made on the bus's event loop thread is set up in the background).
        Raises the first error a set-up met."""
        pending = [asyncio.wrap_future(f) if isinstance(f, concurrent.futures.Future) else f
                   for f in list(self._setups)]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        if self._setup_errors:
            raise self._setup_errors[0]

    # -- publishing -------------------------------------------------------------------------
    def _prepare(self, event: UniversalEvent | str, data: Any,
                 metadata: EventMetadata | dict[str, Any] | None
                 ) -> tuple[UniversalEvent, OutgoingEvent | None]:
        if type(event) is not UniversalEvent:
            event = self._build(event, data, metadata)
        if event.metadata.replayed:
            return event, None
        item = OutgoingEvent.of(event)
        limit = self.max_event_bytes
        if limit is not None and len(item.payload) > limit:
            raise EventTooLargeError(
                f"event {event.event_type!r} is {len(item.payload)} bytes as JSON; this bus "
                f"keeps events of at most {limit} bytes", size=len(item.payload), limit=limit,
                hint="publish a reference (a path, an id) instead of the payload")
        return event, item

    def _on_loop_thread(self) -> bool:
        return self._loop is not None and threading.get_ident() == self._loop_thread

    def publish(
        self,
        event: UniversalEvent | str,
        data: Any = None,
        metadata: EventMetadata | dict[str, Any] | None = None,
        persist: bool = True,
        durable: bool = False,
    ) -> UniversalEvent:
        """Publish here (as :meth:`EventBus.publish`) and to every other process.
        ``durable=True`` also waits until the server accepted the event (raising
        ``TransportError`` after ``publish_timeout``; the event stays buffered) and, with
        a store, until the store committed it. A ``reject``/``block`` outbox that is full
        raises ``QueueFullError`` before anything was delivered."""
        if durable and self._on_loop_thread():
            raise EventError("a durable publish cannot wait on the bus's event loop thread",
                             hint="use `await bus.publish_async(..., durable=True)`")
        event, item = self._prepare(event, data, metadata)
        if item is not None and self._outbox.overflow in (OverflowStrategy.REJECT,
                                                          OverflowStrategy.BLOCK):
            self._outbox.check_room(can_block=not self._on_loop_thread())
        error: QueueFullError | None = None
        try:
            super().publish(event, None, None, persist,
                            durable and persist and self._store is not None)
        except QueueFullError as exc:  # delivered to every other subscription: it goes out
            error = exc
        if item is not None:
            waiter: concurrent.futures.Future[PublishAck] | None = \
                concurrent.futures.Future() if durable else None
            pending = self._enqueue(item, waiter)
            if pending is not None and waiter is not None:
                self._wait_accepted(waiter, event)
        if error is not None:
            raise error
        return event

    async def publish_async(
        self,
        event: UniversalEvent | str,
        data: Any = None,
        metadata: EventMetadata | dict[str, Any] | None = None,
        persist: bool = True,
        durable: bool = False,
    ) -> UniversalEvent:
        """:meth:`publish` for async code: a full ``block`` outbox and a durable publish are
        waited on without blocking the event loop."""
        event, item = self._prepare(event, data, metadata)
        if item is not None and self._outbox.overflow in (OverflowStrategy.REJECT,
                                                          OverflowStrategy.BLOCK):
            await self._room_async()
        error: QueueFullError | None = None
        try:
            await super().publish_async(event, None, None, persist,
                                        durable and persist and self._store is not None)
        except QueueFullError as exc:
            error = exc
        if item is not None:
            waiter: _Waiter | None = None
            if durable:
                waiter = (asyncio.get_running_loop().create_future()
                          if self._on_loop_thread() else concurrent.futures.Future())
            idle = waiter is not None and self._idle_link()
            pending = self._enqueue(item, waiter, wake=not idle)
            if idle:
                # Nothing queued or on the wire ahead of it: send it now rather than wake
                # the sender (a durable publish one at a time saves two loop turns).
                await self._send_now()
                if self._outbox.items:  # published meanwhile, by other tasks or threads
                    self._outbox.wake()
            if pending is not None and waiter is not None:
                accepted = waiter if isinstance(waiter, asyncio.Future) \
                    else asyncio.wrap_future(waiter)
                if accepted.done():  # sent and settled by _send_now
                    accepted.result()
                else:
                    try:
                        await asyncio.wait_for(accepted, self._publish_timeout)
                    except TimeoutError:
                        raise self._not_accepted(event) from None
        if error is not None:
            raise error
        return event

    async def _room_async(self) -> None:
        outbox = self._outbox
        if outbox.overflow is OverflowStrategy.REJECT:
            outbox.check_room(can_block=False)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + outbox.block_timeout
        while True:
            with outbox.lock:
                if not outbox._full(0):
                    return
            if loop.time() >= deadline:
                outbox.check_room(can_block=False)  # raises (counted as rejected)
                return
            await asyncio.sleep(0.005)

    def _enqueue(self, item: OutgoingEvent, waiter: _Waiter | None, *, wake: bool = True
                 ) -> _Pending | None:
        pending = _Pending(item, waiter)
        lost, notices = self._outbox.put(pending, wake=wake)
        next(self._forwarded)
        for old in lost:
            _fail(old, TransportError(
                f"event {old.item.id} was dropped from the full outbox before the server "
                "accepted it", hint="raise buffer_size or use overflow='block'"))
        if lost:
            logger.warning("distributed bus: %d event(s) dropped from the full outbox "
                           "(overflow %s)", len(lost), self._outbox.overflow.value)
        self._outbox_notices(notices)
        return None if lost and lost[-1] is pending else pending

    def _outbox_notices(self, notices: list[tuple[BackpressureKind, str]]) -> None:
        outbox = self._outbox
        for kind, detail in notices:
            self._deliver_notice(BackpressureNotice(
                kind=kind, subscription="transport", depth=outbox.depth,
                capacity=outbox.capacity, dropped=outbox.dropped, rejected=outbox.rejected,
                at=self._clock.now(), detail=detail))

    def _wait_accepted(self, waiter: concurrent.futures.Future[PublishAck],
                       event: UniversalEvent) -> None:
        try:
            waiter.result(self._publish_timeout)
        except concurrent.futures.TimeoutError:
            raise self._not_accepted(event) from None

    def _not_accepted(self, event: UniversalEvent) -> TransportError:
        return TransportError(
            f"event {event.event_type!r} ({event.id}) was not accepted by the server within "
            f"{self._publish_timeout:g} s",
            hint="it stays buffered and is published when the connection returns; raise "
                 "publish_timeout to wait longer")

    async def _send_loop(self) -> None:
        """The one sender: publish the outbox in order, up to ``_IN_FLIGHT`` batches on the
        wire at once (each batch is sent after the one before it, and its answers are
        settled by a task of its own); retry what the server did not answer (same ids, so
        never stored twice), report what it refused."""
        outbox = self._outbox
        transport = self.transport
        connected = self._connected_event
        assert connected is not None
        window = self._window = asyncio.Semaphore(_IN_FLIGHT)
        loop = asyncio.get_running_loop()
        while True:
            await window.acquire()
            self._in_flight += 1
            if self._retry_delay:
                await asyncio.sleep(self._retry_delay)
            batch = outbox.take(_SEND_BATCH)
            if not batch:
                self._in_flight -= 1
                window.release()
                await outbox.wait_for_items()
                continue
            if not transport.connected:
                self._in_flight -= 1
                window.release()
                self._outbox_notices(outbox.settle(0, batch))
                if connected.is_set():  # the disconnect is not reported yet
                    await asyncio.sleep(0.05)
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(connected.wait(), 1.0)
                continue
            try:
                answers = await transport.send([p.item for p in batch], origin=self.origin,
                                               timeout=self._publish_timeout)
            except Exception as exc:  # a transport bug must not lose the batch
                logger.exception("transport publish failed")
                answers = _failed(exc, len(batch))
            task = loop.create_task(self._settle_batch(batch, answers, window))
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)

    def _idle_link(self) -> bool:
        """On the bus's loop: connected, nothing buffered or in flight, no retry pending."""
        return (self._window is not None and self._in_flight == 0 and not self._retry_delay
                and self._outbox.depth == 0 and self.transport.connected
                and self._on_loop_thread())

    async def _send_now(self) -> None:
        """Send what the outbox holds and settle it, in this task (see publish_async)."""
        window = self._window
        assert window is not None
        await window.acquire()
        self._in_flight += 1
        batch = self._outbox.take(_SEND_BATCH)
        if not batch:
            self._in_flight -= 1
            window.release()
            return
        try:
            answers = await self.transport.send([p.item for p in batch], origin=self.origin,
                                                timeout=self._publish_timeout)
        except Exception as exc:  # a transport bug must not lose the batch
            logger.exception("transport publish failed")
            answers = _failed(exc, len(batch))
        await self._settle_batch(batch, answers, window)

    async def _settle_batch(self, batch: list[_Pending], answers: PublishAnswers,
                            window: asyncio.Semaphore) -> None:
        """Wait for one batch's answers and settle it (the outbox, durable waiters)."""
        outbox = self._outbox
        try:
            try:
                results: list[Any] = await answers()
            except Exception as exc:
                logger.exception("transport publish failed")
                results = [exc] * len(batch)
            retry: list[_Pending] = []
            for pending, result in zip(batch, results, strict=True):
                if isinstance(result, PublishAck):
                    self._accepted += 1
                    self._duplicates += result.duplicate
                    waiter = pending.waiter
                    if waiter is not None and not waiter.done():
                        waiter.set_result(result)
                elif isinstance(result, Exception) or result.retriable:
                    retry.append(pending)
                else:
                    self._failed += 1
                    self._report_failure(pending, result.error)
            self._outbox_notices(outbox.settle(len(batch) - len(retry), retry))
            if retry:
                self._retries += len(retry)
                self._retry_delay = min(max(self._retry_delay * 2, 0.05), 2.0)
                # The sender may be waiting for new events by now: the retried ones are.
                outbox.wake()
            else:
                self._retry_delay = 0.0
        finally:
            self._in_flight -= 1
            window.release()

    def _report_failure(self, pending: _Pending, error: str) -> None:
        item = pending.item
        logger.error("the server refused event %s (%s): %s", item.id, item.event_type, error)
        _fail(pending, TransportError(f"the server refused event {item.id}: {error}"))
        self._publish_internal(PUBLISH_FAILED_TYPE, {"event_id": item.id,
                                                     "event_type": item.event_type,
                                                     "error": error}, persist=False)

    # -- subscribing ------------------------------------------------------------------------
    def subscribe(
        self,
        pattern: str,
        handler: Handler,
        *,
        mode: DeliveryMode | str = DeliveryMode.AUTO,
        name: str | None = None,
        queue_size: int | None = None,
        overflow: OverflowStrategy | str = OverflowStrategy.DROP_OLDEST,
        high_water: int | None = None,
        low_water: int | None = None,
        block_timeout: float = 1.0,
        on_error: Callable[[UniversalEvent, Exception], None] | None = None,
        max_queue_bytes: int | None = None,
        durable: str | None = None,
        local: bool = False,
        max_deliver: int = 5,
        backoff: Sequence[float] = (1.0, 5.0, 30.0),
        ack_wait: float = 30.0,
        start: str = "new",
        max_ack_pending: int = 1000,
        prefetch: int = 1,
    ) -> SubscriptionHandle:
        """Subscribe across processes (see :meth:`EventBus.subscribe` for the delivery
        options, and the module docstring). ``local=True``: this process's events only.

        ``durable="name"``: a durable subscription (handled one event at a time on the
        bus's event loop; ``mode``, the queue options and ``local`` do not apply).
        ``max_deliver``: handler attempts per event before it is parked; ``backoff``:
        seconds before each redelivery after a failure (the last repeats); ``ack_wait``:
        seconds an unsettled delivery waits before the server redelivers it (a handler
        running longer keeps it alive); ``start``: where a *new* subscription begins,
        ``"new"`` (events stored from now on) or ``"all"`` (every stored event); an
        existing one resumes where it was. ``max_ack_pending``: unsettled deliveries the
        server allows at once. ``prefetch``: events this process fetches ahead of its
        handler (1 by default: more is faster, but every event a process held when it died
        counts one delivery towards ``max_deliver``).
        """
        if durable is not None:
            return self._subscribe_durable(
                pattern, handler, durable, name=name, on_error=on_error,
                max_deliver=max_deliver, backoff=backoff, ack_wait=ack_wait, start=start,
                max_ack_pending=max_ack_pending, prefetch=prefetch)
        handle = super().subscribe(
            pattern, handler, mode=mode, name=name, queue_size=queue_size, overflow=overflow,
            high_water=high_water, low_water=low_water, block_timeout=block_timeout,
            on_error=on_error, max_queue_bytes=max_queue_bytes)
        if not local:
            self._attach(self._subs[handle.id])
        return handle

    def stream(
        self,
        pattern: str = "**",
        *,
        name: str | None = None,
        queue_size: int | None = None,
        overflow: OverflowStrategy | str = OverflowStrategy.DROP_OLDEST,
        high_water: int | None = None,
        low_water: int | None = None,
        block_timeout: float = 1.0,
        max_queue_bytes: int | None = None,
        local: bool = False,
    ) -> EventStream:
        """:meth:`EventBus.stream` across processes (``local=True``: this process only)."""
        stream = super().stream(pattern, name=name, queue_size=queue_size, overflow=overflow,
                                high_water=high_water, low_water=low_water,
                                block_timeout=block_timeout, max_queue_bytes=max_queue_bytes)
        if not local:
            self._attach(stream._sub)
        return stream

    def _attach(self, sub: Subscription) -> None:
        batch = 64 if sub.inline else max(1, min(sub.capacity, 256))
        options = ConsumerOptions(start_time=time.time(), skip_origin=self.origin, batch=batch)
        remote = _Remote(sub, options, durable=False)
        self._remotes[sub.id] = remote
        self._schedule_open(remote)

    def _subscribe_durable(
        self, pattern: str, handler: Handler, durable: str, *, name: str | None,
        on_error: Callable[[UniversalEvent, Exception], None] | None, max_deliver: int,
        backoff: Sequence[float], ack_wait: float, start: str, max_ack_pending: int,
        prefetch: int,
    ) -> SubscriptionHandle:
        validate_consumer_name(durable)
        if not callable(handler):
            raise InvalidValueError(
                f"a handler must be callable, not {type(handler).__name__}",
                hint="pass a function taking one UniversalEvent")
        if not isinstance(max_deliver, int) or max_deliver < 1:
            raise InvalidValueError(f"max_deliver must be an int >= 1, got {max_deliver!r}")
        delays = tuple(float(d) for d in backoff)
        if any(not d >= 0 for d in delays):
            raise InvalidValueError(f"backoff delays must be >= 0 seconds, got {backoff!r}")
        if start not in ("new", "all"):
            raise InvalidValueError(f"unknown start {start!r}", hint="use 'new' or 'all'")
        if isinstance(prefetch, int) and isinstance(max_ack_pending, int) \
                and prefetch > max_ack_pending:
            raise InvalidValueError(
                f"prefetch {prefetch} is more than max_ack_pending {max_ack_pending}: the "
                "server would never hand over that many unacked events",
                hint="raise max_ack_pending, or lower prefetch")
        with self._lock:
            if durable in self._durable_names:
                raise EventError(f"durable subscription {durable!r} is already subscribed on "
                                 "this bus", hint="unsubscribe it first, or use another name")
            self._durable_names.add(durable)
        try:
            options = ConsumerOptions(
                durable=durable, start=start,
                start_time=time.time() if start == "new" else None, ack_wait=ack_wait,
                # One delivery more than handler attempts: an event whose process died
                # on its last attempt is parked on that extra delivery.
                max_deliver=max_deliver + 1, max_ack_pending=max_ack_pending,
                batch=prefetch)
            is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
                getattr(handler, "__call__", None))  # noqa: B004
            sub = self._new_subscription(
                pattern, handler, is_async, DeliveryMode.QUEUED, name or durable, 1,
                OverflowStrategy.BLOCK, None, None, 1.0, on_error)
        except BaseException:
            self._durable_names.discard(durable)
            raise
        with self._lock:
            self._subs[sub.id] = sub  # listed in stats; never routed local events
        remote = _Remote(sub, options, durable=True, max_deliver=max_deliver, backoff=delays)
        self._remotes[sub.id] = remote
        self._schedule_open(remote)
        return sub.handle

    def _schedule_open(self, remote: _Remote) -> None:
        """Open ``remote``'s consumer: now if connected (waiting for it, unless on the
        bus's loop thread, where it runs in the background: see :meth:`ready`), else at
        :meth:`connect`."""
        if not self._started:
            self._pending_opens.append(remote)
            return
        loop = self._loop
        assert loop is not None
        if self._on_loop_thread():
            task = loop.create_task(self._open(remote))
            self._track(task)
            return
        future = asyncio.run_coroutine_threadsafe(self._open(remote), loop)
        self._track(future)
        future.result(30.0)

    def _track(self, future: concurrent.futures.Future[None] | asyncio.Future[None]) -> None:
        self._setups.add(future)
        future.add_done_callback(self._settled)

    def _settled(self, future: concurrent.futures.Future[None] | asyncio.Future[None]) -> None:
        self._setups.discard(future)
        if not future.cancelled():
            future.exception()  # recorded in _setup_errors by _open (see ready())

    async def _open(self, remote: _Remote) -> None:
        sub = remote.sub
        try:
            if remote.durable:
                handler = functools.partial(self._deliver_durable, remote)
            else:
                handler = functools.partial(self._deliver_remote, sub)
            tsub = await self.transport.subscribe(sub.pattern.source, handler, remote.options)
        except Exception as exc:
            logger.error("subscription %r could not be opened on the transport: %s",
                         sub.name, exc)
            self._setup_errors.append(exc)
            raise
        if sub.closed or self._remotes.get(sub.id) is not remote:
            await tsub.stop()
            return
        remote.tsub = tsub

    def unsubscribe(self, handle: SubscriptionHandle, *, timeout: float = 5.0) -> bool:
        """Stop a subscription here and its consumer on the transport (a durable one stays
        on the server: subscribing with its name again resumes it; see
        :meth:`delete_durable`)."""
        remote = self._remotes.pop(handle.id, None)
        removed = super().unsubscribe(handle, timeout=timeout)
        if remote is not None:
            if remote.durable:
                with self._lock:
                    self._durable_names.discard(remote.options.durable or "")
            if remote in self._pending_opens:
                self._pending_opens.remove(remote)
            elif remote.tsub is not None:
                self._stop_remote(remote.tsub, timeout)
        return removed

    def _stop_remote(self, tsub: TransportSubscription, timeout: float) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if self._on_loop_thread():
            self._track(loop.create_task(tsub.stop(timeout)))
            return
        try:
            asyncio.run_coroutine_threadsafe(tsub.stop(timeout), loop).result(timeout + 1.0)
        except Exception as exc:
            logger.warning("stopping a transport subscription failed: %s", exc)

    # -- delivering remote events -------------------------------------------------------------
    async def _deliver_remote(self, sub: Subscription, delivery: Delivery) -> None:
        """A remote event for a local subscription: inline handlers are called here (on the
        bus's loop), queued subscriptions get it through their queue."""
        if sub.closed:
            return
        event = delivery.event
        self._remote_delivered += 1
        if sub.inline:
            next(sub.late)
            try:
                result = sub.handler(event)  # type: ignore[misc]
                if result is not None and inspect.isawaitable(result):
                    await result
            except Exception as exc:
                self._handler_failed(sub, event, exc)
            return
        try:
            if sub.overflow is OverflowStrategy.BLOCK:
                await self._offer_held(sub, event, delivery.size)
            else:
                sub.offer(event, delivery.size)
        except QueueFullError:
            pass  # counted by the subscription, which reported it

    async def _offer_held(self, sub: Subscription, event: UniversalEvent, size: int) -> None:
        """A remote event for a ``block`` subscription: wait for room as long as it takes
        (not ``block_timeout``): meanwhile its consumer fetches nothing more, so the events
        behind it wait on the server (backpressure), and none is lost. Gives up when the bus
        closes."""
        if sub.offer(event, size, block=False):
            return
        while True:
            await sub.wait_for_room(size, 0.25)
            if self._closing:
                error = sub.block_timed_out()
                if error is not None:
                    raise error
                return
            if sub.offer(event, size, block=False, waiting=True):
                return

    async def _deliver_durable(self, remote: _Remote, delivery: Delivery) -> None:
        """One delivery of a durable subscription: call, then ack / nak with backoff / park."""
        sub = remote.sub
        event = delivery.event
        if delivery.deliveries > remote.max_deliver:
            await self._park(remote, delivery, "no ack", "NoAck",
                             f"delivered {delivery.deliveries - 1} times without an ack "
                             "(its process stopped, or the handler ran past ack_wait)")
            return
        handler = sub.handler
        assert handler is not None
        next(sub.delivered)
        beat = _Heartbeat(delivery, remote.options.ack_wait)
        start = perf_counter_ns()
        try:
            result = handler(event)
            if result is not None and inspect.isawaitable(result):
                await result
        except Exception as exc:
            beat.cancel()
            sub.latency.append(perf_counter_ns() - start)
            self._handler_failed(sub, event, exc)
            if delivery.deliveries >= remote.max_deliver:
                await self._park(remote, delivery, "handler failed", type(exc).__name__,
                                 str(exc))
                return
            delays = remote.backoff
            delay = delays[min(delivery.deliveries, len(delays)) - 1] if delays else 0.0
            try:
                await delivery.nak(delay)
                remote.naked += 1
            except TransportError as error:
                logger.warning("durable %r: %s", sub.name, error)
            return
        beat.cancel()
        sub.latency.append(perf_counter_ns() - start)
        try:
            await delivery.ack()
            remote.acked += 1
        except TransportError as error:
            remote.ack_failures += 1
            logger.warning("durable %r: %s", sub.name, error)

    async def _park(self, remote: _Remote, delivery: Delivery, reason: str, error_type: str,
                    message: str) -> None:
        sub = remote.sub
        name = remote.options.durable or sub.name
        try:
            parked = await self.transport.park(delivery, consumer=name, reason=reason,
                                               error_type=error_type, message=message)
        except TransportError as exc:
            logger.error("durable %r: %s", name, exc)
            with contextlib.suppress(TransportError):
                await delivery.nak(remote.backoff[-1] if remote.backoff else 1.0)
            return
        try:
            await delivery.term()
        except TransportError as exc:  # parked already; a redelivery is parked once more
            logger.warning("durable %r: %s", name, exc)
        remote.parked += 1
        event = delivery.event
        logger.error("durable subscription %r parked event %s (%s) after %d deliveries: %s: %s",
                     name, event.id, event.event_type, delivery.deliveries, error_type, message)
        self._publish_internal(DEAD_LETTER_TYPE, {
            "subscription": name, "pattern": sub.pattern.source, "event_id": event.id,
            "event_type": event.event_type, "deliveries": delivery.deliveries,
            "reason": reason, "error_type": error_type, "message": message,
            "stream_sequence": delivery.sequence, "dead_letter_sequence": parked.sequence,
        }, persist=False)

    # -- mirroring the stream into a store ---------------------------------------------------
    def mirror(
        self,
        store: EventStore | None = None,
        *,
        name: str,
        pattern: str = "**",
        start: str = "all",
        start_sequence: int | None = None,
        start_time: float | None = None,
        batch: int = 256,
        flush_interval: float = 0.05,
        ack_wait: float = 30.0,
    ) -> StreamMirror:
        """Copy the stream's events matching ``pattern`` into ``store`` (the bus's store by
        default), with their ids and run ids, so queries and runs work on this machine's
        file; see :mod:`llmspell.events.mirror`. ``name`` names the mirror's durable
        consumer: a process that mirrors again under the same name resumes where it was
        (no gaps, no duplicates). A *new* mirror starts with every event the stream holds
        (``start="all"``), or those stored from now (``"new"``), or at ``start_sequence`` /
        ``start_time``. Into the bus's own store, this bus's own events are skipped (the
        bus stored them already, or was told not to). ``batch``/``flush_interval``: a
        commit (then acks) every ``batch`` events or ``flush_interval`` seconds. Events a
        mirror process held when it died come again after ``ack_wait`` seconds (so after a
        crash they are stored after later ones). Starts at :meth:`connect`, or now when
        connected (in the background on the bus's loop thread: see :meth:`ready`)."""
        chosen = store if store is not None else self._store
        if chosen is None:
            raise EventError("mirror() needs a store", hint="pass store=SQLiteStore(path), "
                                                           "or give the bus a store")
        validate_consumer_name(name)
        compile_pattern(pattern)
        with self._lock:
            if name in self._mirrors:
                raise EventError(f"mirror {name!r} is already running on this bus",
                                 hint="use another name, or stop_mirror() it first")
            mirror = StreamMirror(
                self.transport, chosen, name=name, pattern=pattern, start=start,
                start_sequence=start_sequence, start_time=start_time, batch=batch,
                flush_interval=flush_interval, ack_wait=ack_wait,
                skip_origin=self.origin if chosen is self._store else None)
            self._mirrors[name] = mirror
        if not self._started:
            self._pending_mirrors.append(mirror)
            return mirror
        loop = self._loop
        assert loop is not None
        if self._on_loop_thread():
            self._track(loop.create_task(self._start_mirror(mirror)))
        else:
            future = asyncio.run_coroutine_threadsafe(self._start_mirror(mirror), loop)
            self._track(future)
            future.result(30.0)
        return mirror

    async def _start_mirror(self, mirror: StreamMirror) -> None:
        try:
            await mirror.start()
        except Exception as exc:
            logger.error("mirror %r could not start: %s", mirror.name, exc)
            self._setup_errors.append(exc)
            with self._lock:
                self._mirrors.pop(mirror.name, None)
            raise

    async def mirror_caught_up(self, name: str, timeout: float = 30.0) -> MirrorStats:
        """Wait until mirror ``name`` has committed every event the stream holds for it
        (``TimeoutError`` after ``timeout`` seconds); returns its counters."""
        mirror = self._mirror(name)
        await self._here(mirror.caught_up(timeout))
        return mirror.stats()

    async def stop_mirror(self, name: str) -> MirrorStats:
        """Stop mirror ``name`` (committing what it received); its consumer stays on the
        server, so mirroring again under the name resumes. Returns its counters."""
        mirror = self._mirror(name)
        if mirror in self._pending_mirrors:
            self._pending_mirrors.remove(mirror)
        else:
            await self._here(mirror.stop())
        with self._lock:
            self._mirrors.pop(name, None)
        return mirror.stats()

    def _mirror(self, name: str) -> StreamMirror:
        mirror = self._mirrors.get(name)
        if mirror is None:
            raise EventError(f"no mirror {name!r} on this bus",
                             hint=f"running: {', '.join(sorted(self._mirrors)) or 'none'}")
        return mirror

    # -- the stream on the server -------------------------------------------------------------
    async def _here(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` on the bus's loop (where the transport lives)."""
        loop = self._loop
        if not self._started or loop is None:
            coro.close()
            raise EventError("the distributed bus is not connected",
                             hint="await bus.connect() (System.start() does it)")
        if asyncio.get_running_loop() is loop:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    async def dead_letters(self, name: str) -> list[DeadLetter]:
        """The events durable subscription ``name`` parked, oldest first."""
        validate_consumer_name(name)

        async def read() -> list[DeadLetter]:
            return [letter async for letter in self.transport.dead_letters(name)]

        result: list[DeadLetter] = await self._here(read())
        return result

    async def durable_state(self, name: str) -> ConsumerState:
        """Durable subscription ``name`` as the server sees it (pending, ack pending...)."""
        validate_consumer_name(name)
        return await self._state(name)  # type: ignore[no-any-return]

    async def _state(self, name: str) -> Any:
        consumer_state = getattr(self.transport, "consumer_state", None)
        if consumer_state is None:
            raise EventError("this transport does not report consumer state")
        return await self._here(consumer_state(name))

    async def delete_durable(self, name: str) -> bool:
        """Delete durable subscription ``name`` from the server (its position and pending
        events are lost). Unsubscribe it in every process first. False if there was none."""
        validate_consumer_name(name)
        result: bool = await self._here(self.transport.delete_consumer(name))
        return result

    async def stream_state(self) -> StreamState:
        """The namespace's stream as the server holds it."""
        result: StreamState = await self._here(self.transport.stream_state())
        return result

    async def replay(
        self,
        query: EventQuery | None = None,
        *,
        source: str | None = None,
        store: EventStore | None = None,
        start_sequence: int | None = None,
        start_time: float | None = None,
        stop_sequence: int | None = None,
        pace: float | None = None,
        persist: bool = False,
        **fields: Any,
    ) -> int:
        """Re-publish stored events in this process, in their original order, marked
        ``replayed`` (they stay here: never sent to the stream), from the event store or
        from the namespace's stream on the server; returns how many.

        ``source="store"`` reads ``store`` or the bus's store, exactly as
        :meth:`EventBus.replay`. ``source="stream"`` reads the stream: from
        ``start_sequence`` (a stream sequence, as in ``stream_state()``), or from
        ``start_time`` (wall seconds; when the server stored the event), or from the
        query's ``since``, or from the oldest event; up to ``stop_sequence`` or the last
        event stored when the replay began. Left out, ``source`` is ``"stream"`` when a
        stream position is given or there is no store, else ``"store"``. Both take the same
        query (``query`` or its fields as keywords: ``pattern``, ``correlation_id``,
        ``run_id``, ``since``, ``until``, ``min_sequence``, ``max_sequence``, ``limit``),
        ``pace`` (the original pace times ``pace``; None: as fast as possible) and
        ``persist`` (store the replayed events). Callable from any event loop.
        """
        selected = query_of(query, fields)
        positions = start_sequence is not None or start_time is not None \
            or stop_sequence is not None
        chosen = choose_source(source, has_store=(store or self._store) is not None,
                               positions=positions)
        if chosen == "store":
            return await super().replay(selected, store=store, pace=pace, persist=persist)

        async def publish(event: UniversalEvent) -> None:
            await self.publish_async(event, persist=persist)

        result: int = await self._here(replay_stream_events(
            self.transport, selected, publish, start_sequence=start_sequence,
            start_time=start_time, stop_sequence=stop_sequence, pace=pace))
        return result

    async def replay_stream(self, pattern: str = "**", *, start_sequence: int | None = None,
                            start_time: float | None = None, stop_sequence: int | None = None,
                            pace: float | None = None) -> int:
        """``replay(pattern=pattern, source="stream", ...)``: kept for code written before
        :meth:`replay` read the stream."""
        return await self.replay(source="stream", pattern=pattern,
                                 start_sequence=start_sequence, start_time=start_time,
                                 stop_sequence=stop_sequence, pace=pace)

    # -- stats and closing ------------------------------------------------------------------
    def distributed_stats(self) -> DistributedStats:
        """The outbox, remote deliveries, durable subscriptions and transport counters."""
        outbox = self._outbox
        durables = [
            DurableStats(name=r.options.durable or r.sub.name, pattern=r.sub.pattern.source,
                         delivered=r.sub.stats().delivered, acked=r.acked,
                         failed=r.sub.stats().errors, naked=r.naked, parked=r.parked,
                         ack_failures=r.ack_failures)
            for r in list(self._remotes.values()) if r.durable]
        return DistributedStats(
            origin=self.origin, connected=self.connected, buffered=outbox.depth,
            max_buffered=outbox.max_depth, forwarded=counter_value(self._forwarded),
            accepted=self._accepted,
            duplicates=self._duplicates, retries=self._retries, dropped=outbox.dropped,
            rejected=outbox.rejected, failed=self._failed, unsent=self._unsent,
            remote_delivered=self._remote_delivered, durables=durables,
            transport=self.transport.stats(),
            mirrors=[m.stats() for m in list(self._mirrors.values())])

    async def close(self, timeout: float = 5.0) -> None:
        """Stop the transport subscriptions (a durable handler in progress finishes and
        acks), close the local subscriptions as :meth:`EventBus.close` does, publish what
        the outbox holds (up to ``timeout`` seconds; the rest is logged and counted as
        ``unsent``), disconnect, flush the store. Idempotent."""
        if self._closed:
            return
        loop = self._loop
        if not self._started or loop is None or loop.is_closed():
            self._count_unsent(self._outbox.drain_all())
            await super().close(timeout)
            return
        if asyncio.get_running_loop() is loop:
            await self._close_here(timeout)
        else:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
                self._close_here(timeout), loop))
        self._finish()

    def close_sync(self, timeout: float = 5.0) -> None:
        """:meth:`close` for sync code (not from inside a running event loop)."""
        if _running_loop() is not None:
            raise EventError("close_sync() was called inside a running event loop",
                             hint="use `await bus.close()`")
        if self._closed:
            return
        loop = self._loop
        if self._started and loop is not None and not loop.is_closed() and loop.is_running():
            asyncio.run_coroutine_threadsafe(self._close_here(timeout), loop).result(
                4 * timeout + 10.0)
            self._finish()
            return
        super().close_sync(timeout)

    async def _close_here(self, timeout: float) -> None:
        self._closing = True
        await self._finish_setups(timeout)
        mirrors = list(self._mirrors.values())
        self._mirrors.clear()
        for result in await asyncio.gather(*(m.stop(timeout) for m in mirrors),
                                           return_exceptions=True):
            if isinstance(result, Exception):
                logger.error("stopping a mirror failed: %s", result)
        remotes = list(self._remotes.values())
        self._remotes.clear()
        await asyncio.gather(*(r.tsub.stop(timeout) for r in remotes if r.tsub is not None),
                             return_exceptions=True)
        await self._close_subscriptions(timeout)
        await self._flush_outbox(timeout)
        try:
            await self.transport.close()
        except Exception as exc:
            logger.warning("closing the transport failed: %s", exc)

    async def _finish_setups(self, timeout: float) -> None:
        """Wait (up to ``timeout`` seconds, then cancel) for the consumers and mirrors still
        being opened or stopped in the background, while the transport is up: what they
        open is then stopped with the rest, and no task of this bus outlives it (an open
        left running would fail on the closed connection, or wait for its timeout)."""
        setups = [f for f in self._setups if isinstance(f, asyncio.Future)]
        if not setups:
            return
        _, pending = await asyncio.wait(setups, timeout=timeout)
        for future in pending:
            future.cancel()
        if pending:
            await asyncio.wait(pending)

    async def _flush_outbox(self, timeout: float) -> None:
        outbox = self._outbox
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while outbox.depth and loop.time() < deadline and self._sender is not None \
                and not self._sender.done():
            await asyncio.sleep(0.005)
        tasks = [t for t in (self._sender, *self._settling) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with outbox.lock:
            inflight, outbox.inflight = outbox.inflight, 0
        self._count_unsent(outbox.drain_all(), unconfirmed=inflight)

    def _count_unsent(self, items: list[_Pending], unconfirmed: int = 0) -> None:
        total = len(items) + unconfirmed
        if not total:
            return
        self._unsent += total
        for pending in items:
            _fail(pending, TransportError(
                f"event {pending.item.id} was not published: the bus closed first"))
        logger.error("distributed bus closed with %d event(s) not accepted by the server "
                     "(%d never sent, %d sent without an answer); first ids: %s", total,
                     len(items), unconfirmed, ", ".join(p.item.id for p in items[:5]))


class _Heartbeat:
    """While a durable handler runs past half its ack wait, tell the server it is still in
    progress (so it is not redelivered meanwhile). A timer, not a task, per delivery."""

    __slots__ = ("_delivery", "_handle", "_interval", "_sent")

    def __init__(self, delivery: Delivery, ack_wait: float) -> None:
        self._delivery = delivery
        self._interval = ack_wait / 2
        self._sent: asyncio.Future[None] | None = None
        self._handle: asyncio.TimerHandle | None = \
            asyncio.get_running_loop().call_later(self._interval, self._beat)

    def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        self._sent = asyncio.ensure_future(self._delivery.in_progress())
        self._sent.add_done_callback(_ignore_result)
        self._handle = loop.call_later(self._interval, self._beat)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def _ignore_result(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.debug("in-progress ack failed: %s", future.exception())


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def split_bus_url(url: str) -> tuple[str, dict[str, Any]]:
    """Split the bus options (``buffer``, ``buffer_bytes``, ``overflow``,
    ``publish_timeout``) out of a bus URL's query; returns the transport URL and them."""
    base, sep, query = url.partition("?")
    if not sep:
        return url, {}
    keep: list[tuple[str, str]] = []
    options: dict[str, Any] = {}
    for key, raw in urllib.parse.parse_qsl(query, keep_blank_values=True):
        spec = _BUS_KEYS.get(key)
        if spec is None:
            keep.append((key, raw))
            continue
        field, kind = spec
        try:
            options[field] = kind(raw)
        except ValueError:
            raise ConfigurationError(
                f"option {key}={raw!r} in bus URL is not a valid {kind.__name__}",
                hint=f"give a {kind.__name__}, e.g. {key}={_BUS_EXAMPLES[key]}") from None
    rest = urllib.parse.urlencode(keep)
    return (f"{base}?{rest}" if rest else base), options


def check_bus_url(url: str) -> str:
    """Return ``url`` (stripped) if it is a valid bus URL (transport and bus options),
    else raise ``ConfigurationError`` saying what is wrong."""
    if not isinstance(url, str) or not url.strip():
        validate_bus_url(url)  # raises, saying it is empty
    url = url.strip()
    transport_url, options = split_bus_url(url)
    try:
        validate_bus_url(transport_url)
    except ConfigurationError as exc:
        if not exc.message.startswith("unknown option"):
            raise
        raise ConfigurationError(exc.message, hint=f"{exc.hint}; for the bus: "
                                 f"{', '.join(sorted(_BUS_KEYS))}") from None
    overflow = options.get("overflow")
    if overflow is not None and overflow not in {s.value for s in OverflowStrategy}:
        raise ConfigurationError(
            f"unknown overflow {overflow!r} in bus URL",
            hint=f"use one of: {', '.join(s.value for s in OverflowStrategy)}")
    return url


def make_bus(url: str | None = None, **options: Any) -> EventBus:
    """The bus for ``url``: the in-process :class:`EventBus` when it is None or empty, else a
    :class:`DistributedBus` on the transport the URL names (``nats://host:4222?...``; the
    query may also set ``buffer``, ``buffer_bytes``, ``overflow`` and
    ``publish_timeout``). ``options`` go to the bus. Raises ``ConfigurationError`` for a
    bad URL. A distributed bus must be connected (:meth:`DistributedBus.connect`)."""
    if url is None or not url.strip():
        return EventBus(**options)
    transport_url, bus_options = split_bus_url(check_bus_url(url))
    try:
        return DistributedBus(transport_from_url(transport_url), **bus_options, **options)
    except InvalidValueError as exc:
        raise ConfigurationError(f"bad bus option in {transport_url.split('?')[0]!r}: "
                                 f"{exc.message}", hint=exc.hint) from None
