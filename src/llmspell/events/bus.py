"""The event bus: publish, subscribe by pattern, deliver inline or through bounded queues.

Publishing resolves the subscriptions for the event's type once (then one dict lookup per
publish), calls inline handlers in the publisher's flow and offers the event to queued
subscriptions. A queued subscription's queue is drained by a loop callback scheduled when
it becomes non-empty, which calls the handler and runs its coroutine until it finishes or
suspends; one that suspends is finished by the subscription's one long-lived worker task
(see :mod:`llmspell.events.subscription`). No task is ever created per event. A handler
that raises never affects another handler or the publisher: the failure is counted, passed
to the ``on_error`` callbacks and published as an ``event.handler.error`` event.

What the bus keeps is bounded: an event it would queue or store is measured first
(:func:`~llmspell.events.event.event_size`) and refused past ``max_event_bytes``; queues are
bounded in events and in bytes; the store is appended to before any delivery, so an event it
refuses (full, too large) reaches nobody. ``durable=True`` publishes return once the store
has committed the event.

Threads: ``publish`` may be called from any thread. Queued subscriptions and streams live on
one asyncio event loop: the loop that is running when the first one is created, or, when
none is running (a sync program), a private loop on a background thread the bus starts.
Inline handlers run on the publisher's thread. That thread holds no reference to the bus: a
bus dropped without :meth:`~EventBus.close` is collected, and its finalizer cancels the
workers left on the private loop, stops it and lets the thread end (the events still
queued are not delivered; ``close`` delivers them).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from time import perf_counter_ns
from typing import Any

import msgspec

from llmspell.core.clock import SYSTEM_CLOCK, Clock
from llmspell.core.errors import (
    BusClosedError,
    EventError,
    EventTooLargeError,
    InvalidValueError,
    OperationDepthError,
    QueueFullError,
    RateLimitedError,
    StoreFullError,
)
from llmspell.core.loops import thread_loop as _thread_loop
from llmspell.core.redact import get_logger
from llmspell.core.run_scope import current_run_id
from llmspell.core.stats import counter_value
from llmspell.events.event import EventMetadata, UniversalEvent, event_size, validate_event_type
from llmspell.events.flow import (
    BackpressureKind,
    BackpressureNotice,
    DeliveryMode,
    FlowStats,
    OverflowStrategy,
    RateLimit,
    TokenBucket,
)
from llmspell.events.metrics import BusMetrics, BusStats, TypeCounts, latency_of, total_count
from llmspell.events.pattern import PatternRouter, compile_pattern
from llmspell.events.store.base import EventQuery, EventStore
from llmspell.events.stream import EventStream
from llmspell.events.subscription import Subscription, SubscriptionHandle

__all__ = ["EventBus", "HandlerFailure", "Handler"]

logger = get_logger("llmspell.events")

Handler = Callable[[UniversalEvent], Any]

HANDLER_ERROR_TYPE = "event.handler.error"
STORE_ERROR_TYPE = "event.store.error"
_local = threading.local()


_TOTALS = ("delivered", "dropped", "rejected", "expired")
"""The flow counters :meth:`EventBus.stats` totals over current and removed subscriptions."""

DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
"""The default largest event a bus keeps (queues or stores), as encoded JSON."""
DEFAULT_MAX_QUEUE_BYTES = 16 * 1024 * 1024
"""The default bound on the summed sizes of the events in one subscription's queue."""


def _check_queue_size(value: int) -> None:
    """Raise :class:`InvalidValueError` unless ``value`` is an int >= 1 (a count of events)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidValueError(f"queue_size must be an int >= 1, got {value!r}",
                                hint="a queue holds whole events; the default is 1024")


def _check_queue_bytes(value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise InvalidValueError(f"max_queue_bytes must be an int >= 1, got {value!r}",
                                hint="the default is 16 MiB per subscription")

class HandlerFailure(msgspec.Struct, frozen=True, kw_only=True):
    """A handler raised: which subscription, on which event, with what."""

    subscription: str
    pattern: str
    event_type: str
    event_id: str
    error_type: str
    message: str


def _store_would_wait(store: EventStore, size: int) -> bool:
    """True when appending ``size`` bytes to ``store`` would wait for room (a bounded
    store with ``overflow="block"`` that is full, as far as a read without its lock says)."""
    bound = getattr(store, "max_pending_bytes", None)
    return (isinstance(bound, int) and getattr(store, "overflow", None) == "block"
            and getattr(store, "pending_bytes", 0) + size > bound)


class _Route:
    """The subscriptions for one event type, split by delivery mode, and a counter of the
    publishes through this route.

    The counter doubles as the delivery count of every inline subscription on the route,
    so the hot path keeps no per-handler counter. Which publishes are in progress on a route
    (what :meth:`EventBus.unsubscribe` waits for) costs the hot path nothing either: a sync
    publish stores the route in its frame's local ``entered`` before it reads ``inline``,
    and the bus finds those frames on the threads' stacks (:func:`_entered_routes`); an
    async publish registers in ``async_threads``. Retiring a route (a subscription changed)
    replaces ``inline`` with a :class:`_Retired` *before* it looks for such publishes. So a
    publisher either is seen in progress, or sees the retired marker, which sends it to the
    subscriptions still subscribed and counts it in ``aborted``. Once no publish is in
    progress, ``entries - aborted`` is final and is folded into the totals.
    """

    __slots__ = ("aborted", "async_threads", "counter", "event_type", "holds",
                 "inline", "mark", "members", "queued")

    def __init__(self, event_type: str, subs: tuple[Subscription, ...], store: bool) -> None:
        self.event_type = event_type
        queued = tuple(s for s in subs if not s.inline) if subs else ()
        self.members = tuple(s for s in subs if s.inline) if queued else subs
        self.inline: tuple[Subscription, ...] | _Retired = self.members
        self.queued = queued
        # The bus keeps what goes through this route (a queue or a store): the slower
        # publish path measures the event's size and persists it.
        self.holds = bool(self.queued) or store
        self.counter = itertools.count(1)
        # The counter's value at the cache's last eviction sweep (see EventBus._evict).
        self.mark = 1
        self.aborted = itertools.count()
        self.async_threads: dict[object, int] = {}

    @property
    def count(self) -> int:
        """Publishes that delivered through this route's own inline tuple so far."""
        return counter_value(self.counter) - 1 - counter_value(self.aborted)


class _Retired:
    """What a retired route's ``inline`` becomes (see :class:`_Route`)."""

    __slots__ = ("late_published", "route")

    def __init__(self, route: _Route, late_published: dict[str, itertools.count[int]]) -> None:
        self.route = route
        self.late_published = late_published

    def __iter__(self) -> Iterator[Subscription]:
        route = self.route
        next(route.aborted)
        counter = self.late_published.get(route.event_type)
        if counter is None:
            counter = self.late_published.setdefault(route.event_type, itertools.count())
        next(counter)
        return _still_subscribed(route.members)


def _still_subscribed(members: tuple[Subscription, ...]) -> Iterator[Subscription]:
    for sub in members:
        if not sub.closed:
            next(sub.late)
            yield sub


PRIVATE_LOOP_GRACE = 5.0
"""Seconds the private loop of a bus dropped unclosed gives its cancelled workers."""


def _run_private_loop(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    """The body of a bus's private loop thread. It holds the loop, never the bus (so a bus
    dropped unclosed can be collected); once the loop is stopped, the tasks left on it are
    cancelled and the loop is closed."""
    asyncio.set_event_loop(loop)
    ready.set()
    try:
        loop.run_forever()
    finally:
        try:
            left = asyncio.all_tasks(loop)
            for task in left:
                task.cancel()
            if left:
                loop.run_until_complete(asyncio.wait(left, timeout=PRIVATE_LOOP_GRACE))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _bus_dropped(loop: asyncio.AbstractEventLoop, workers: set[asyncio.Task[None]]) -> None:
    """A bus with a private loop was collected unclosed (the collector may run this on any
    thread): its loop cancels the workers and stops."""
    with contextlib.suppress(RuntimeError):  # the loop is closed already
        loop.call_soon_threadsafe(_wind_down, loop, workers)


def _wind_down(loop: asyncio.AbstractEventLoop, workers: set[asyncio.Task[None]]) -> None:
    for task in list(workers):
        task.cancel()
    loop.call_soon(loop.stop)  # after the cancelled workers' next step


def _track(worker: asyncio.Task[None], workers: set[asyncio.Task[None]] | None) -> None:
    """Keep a worker on a bus's private loop in ``workers`` while it runs."""
    if workers is not None:
        workers.add(worker)
        worker.add_done_callback(workers.discard)


def _weakly(method: Callable[..., None]) -> Callable[..., None]:
    """``method`` (a bound method) called through a weak reference: what the bus hands the
    subscriptions, whose workers live on its loop, so they do not keep the bus alive."""
    ref = weakref.WeakMethod(method)

    def call(*args: Any) -> None:
        bound = ref()
        if bound is not None:
            bound(*args)

    return call


def _in_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class EventBus:
    """Publish events, subscribe handlers and streams by pattern.

    ``store``: persist every published event (none by default). ``rate_limit``: a publisher
    :class:`RateLimit` (off by default). ``queue_size``: default capacity of queued
    subscriptions. ``route_cache_size``: how many event types keep a resolved route (a
    full cache evicts the least recently published types, a quarter at a time; an evicted
    type is resolved again on its next publish, through the pattern trie). The per-type
    counts of :meth:`stats` (``by_type``) are bounded the same way: past ``route_cache_size``
    types counted apart from their cached routes, the least recently counted quarter of the
    types without a cached route is forgotten; their publishes still count in ``published``
    and the total rates, and a forgotten type published again is counted from zero.
    ``on_handler_error``/``on_backpressure``: bus-wide callbacks. Inline handlers are timed
    on one publish in 64 of each event type (queued handlers on every call).
    """

    def __init__(
        self,
        *,
        store: EventStore | None = None,
        rate_limit: RateLimit | None = None,
        queue_size: int = 1024,
        route_cache_size: int = 4096,
        on_handler_error: Callable[[HandlerFailure], None] | None = None,
        on_backpressure: Callable[[BackpressureNotice], None] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        max_event_bytes: int | None = DEFAULT_MAX_EVENT_BYTES,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
    ) -> None:
        _check_queue_size(queue_size)
        if max_event_bytes is not None and (not isinstance(max_event_bytes, int)
                                            or max_event_bytes < 1):
            raise InvalidValueError(f"max_event_bytes must be an int >= 1 or None, got "
                                    f"{max_event_bytes!r}", hint="the default is 1 MiB")
        _check_queue_bytes(max_queue_bytes)
        self.max_event_bytes = max_event_bytes
        self._max_queue_bytes = max_queue_bytes
        self._clock = clock
        self._store = store
        self._queue_size = queue_size
        self._route_cache_size = route_cache_size
        self._router: PatternRouter[Subscription] = PatternRouter(
            route_cache_size, validate=validate_event_type
        )
        self._routes: dict[str, _Route] = {}
        # Bumped (under the lock) at every subscription change: a route resolved from the
        # router before a change must not be cached after it (see _resolve_route), and what
        # a caller decided from has_subscribers() holds while it is unchanged. Read only.
        self.subscription_generation = 0
        self._gated_routes: dict[str, _Route] = {}
        # Per type, the publishes of its retired routes, least recently folded first;
        # bounded by route_cache_size (see _trim_type_base). _untracked: the publishes of the
        # types trimmed from it.
        self._type_base: dict[str, int] = {}
        self._untracked = 0
        self._late_published: dict[str, itertools.count[int]] = {}
        self._unsettled: list[_Route] = []
        self._retired: dict[str, int] = dict.fromkeys(_TOTALS, 0)
        self._subs: dict[int, Subscription] = {}
        # Streams garbage-collected without aclose(): unsubscribed on the loop, soon after.
        self._abandoned: deque[SubscriptionHandle] = deque()
        self._next_id = 0
        self._lock = threading.Lock()
        self._metrics = BusMetrics(self._type_counts, clock)
        self._rate_limit = rate_limit
        self._bucket = TokenBucket(rate_limit.rate, rate_limit.burst, clock) if rate_limit \
            else None
        self._limited = False
        # A store that refused an event (StoreFullError) starts an episode; see
        # _store_refused. Read without the lock on the publish path; changed under it.
        self._store_pressed = False
        self._store_episode_refused = 0
        self.on_handler_error = on_handler_error
        self.on_backpressure = on_backpressure
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._own_thread: threading.Thread | None = None
        # The workers on the private loop (kept by the finalizer too, so a bus dropped
        # unclosed can cancel them on the loop; see _bus_dropped).
        self._own_workers: set[asyncio.Task[None]] | None = None
        self._loop_finalizer: weakref.finalize[Any, Any] | None = None
        self._weak_notify = _weakly(self._notify)
        self._weak_failed = _weakly(self._handler_failed)
        self._closed = False
        self._gated = rate_limit is not None
        if store is not None:
            store.on_error = self._store_failed

    # -- subscribing ---------------------------------------------------------------------
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
    ) -> SubscriptionHandle:
        """Call ``handler(event)`` for every event whose type matches ``pattern``.

        ``mode``: ``inline``, ``queued`` or ``auto`` (inline for sync handlers, queued for
        async ones). Queued subscriptions take ``queue_size``, ``max_queue_bytes`` (the
        bound on the summed sizes of queued events; the bus's default when None),
        ``overflow``, the water marks (default 80 % and 50 % of the queue) and
        ``block_timeout`` (for ``block``). ``durable`` (a subscription that resumes after
        a restart) needs a distributed bus
        (:class:`~llmspell.events.distributed.DistributedBus`); ``local`` asks a
        distributed bus to keep the subscription to this process's events (every
        subscription of this bus is local).
        """
        if durable is not None:
            raise EventError(
                "a durable subscription needs a distributed bus",
                hint="set SystemConfig(bus='nats://127.0.0.1:4222') or LLMSPELL_BUS "
                     "(docs/distributed.md)")
        if not callable(handler):
            raise InvalidValueError(
                f"a handler must be callable, not {type(handler).__name__}",
                hint="pass a function taking one UniversalEvent",
            )
        is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)  # noqa: B004
        )
        chosen = _parse_mode(mode)
        if chosen is DeliveryMode.AUTO:
            chosen = DeliveryMode.QUEUED if is_async else DeliveryMode.INLINE
        label = name or getattr(handler, "__qualname__", None) or type(handler).__name__
        sub = self._new_subscription(pattern, handler, is_async, chosen, label, queue_size,
                                     overflow, high_water, low_water, block_timeout, on_error,
                                     max_queue_bytes)
        if chosen is DeliveryMode.QUEUED:
            self._start_worker(sub)
        self._add(sub)
        return sub.handle

    def subscribe_all(self, handler: Handler, **options: Any) -> SubscriptionHandle:
        """Subscribe ``handler`` to every event (pattern ``**``)."""
        return self.subscribe("**", handler, **options)

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
        """An async iterator over matching events (see :mod:`llmspell.events.stream`).

        Call it from the coroutine that reads it (it binds to that event loop). The stream
        buffers up to ``queue_size`` events with the given overflow strategy. ``local``: see
        :meth:`subscribe`.
        """
        sub = self._new_subscription(pattern, None, False, DeliveryMode.QUEUED,
                                     name or f"stream:{pattern}", queue_size, overflow,
                                     high_water, low_water, block_timeout, None,
                                     max_queue_bytes)
        loop = self._bind_loop(require_running=True)
        sub.loop = loop
        sub.loop_thread = self._loop_thread
        self._reap_abandoned()
        self._add(sub)
        dropped: list[weakref.finalize[Any, Any]] = []

        def unsubscribe() -> bool:
            for finalizer in dropped:
                finalizer.detach()
            return self.unsubscribe(sub.handle)

        stream = EventStream(sub, unsubscribe)
        # A stream dropped without aclose() (a reader that broke out of its loop) must not
        # stay subscribed, queueing events for nobody, for the life of the bus.
        finalizer = weakref.finalize(stream, self._stream_dropped, sub.handle, loop)
        finalizer.atexit = False
        dropped.append(finalizer)
        return stream

    def _stream_dropped(self, handle: SubscriptionHandle,
                        loop: asyncio.AbstractEventLoop) -> None:
        """A stream was collected unclosed. The collector may run this on any thread, even
        inside this bus's lock: the unsubscribe is left to the loop (or the next stream)."""
        abandoned = self._abandoned
        abandoned.append(handle)
        if len(abandoned) == 1 and not loop.is_closed():  # else a reap is on its way
            # A loop closed meanwhile raises: then the next stream() reaps it.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._reap_abandoned)

    def _reap_abandoned(self) -> None:
        """Unsubscribe the streams collected without aclose()."""
        abandoned = self._abandoned
        while abandoned:
            try:
                handle = abandoned.popleft()
            except IndexError:
                return
            self.unsubscribe(handle)

    def unsubscribe(self, handle: SubscriptionHandle, *, timeout: float = 5.0) -> bool:
        """Stop a subscription; events still queued for it are discarded (counted as dropped).
        Returns False if it was not subscribed.

        Once this returns, an inline handler is never called again and no call of it is
        still running on another thread: calls already in progress there are waited for
        (at most ``timeout`` seconds, then a warning is logged). A call on this thread (the
        handler unsubscribing itself) is not waited for, nor is a queued handler's current
        call.
        """
        with self._lock:
            sub = self._subs.pop(handle.id, None)
            if sub is None:
                return False
            # Closed first, routes retired second: a publisher that raced the change skips
            # it (see _Route).
            sub.close(discard=True)
            self._router.remove(sub)
            retired = self._retire_routes()
        if sub.inline:
            self._wait_for_calls([r for r in retired if sub in r.members], timeout)
        with self._lock:
            self._fold_settled()
            routed = sum(r.count for r in self._unsettled if sub in r.members)
            final = sub.stats(sub.inline_base + counter_value(sub.late) + routed) \
                if sub.inline else sub.stats()
            # The bus totals keep what removed subscriptions counted.
            for field in _TOTALS:
                self._retired[field] += getattr(final, field)
        return True

    def _wait_for_calls(self, routes: list[_Route], timeout: float) -> None:
        """Wait until no publish on another thread is in progress on ``routes``."""
        me = threading.get_ident()
        deadline = time.monotonic() + timeout
        delay = 0.0001
        for route in routes:
            while True:
                busy = id(route) in _entered_routes(me) or any(
                    thread != me for thread in list(route.async_threads.values()))
                if not busy:
                    break
                if time.monotonic() >= deadline:
                    logger.warning("unsubscribe: a call of the handler on another thread is "
                                   "still running after %s s; not waiting longer", timeout)
                    return
                time.sleep(delay)
                delay = min(delay * 2, 0.005)

    def _new_subscription(
        self,
        pattern: str,
        handler: Handler | None,
        is_async: bool,
        mode: DeliveryMode,
        name: str,
        queue_size: int | None,
        overflow: OverflowStrategy | str,
        high_water: int | None,
        low_water: int | None,
        block_timeout: float,
        on_error: Callable[[UniversalEvent, Exception], None] | None,
        max_queue_bytes: int | None = None,
    ) -> Subscription:
        if self._closed:
            raise BusClosedError("the bus is closed; it takes no new subscriptions")
        compiled = compile_pattern(pattern)
        capacity = self._queue_size if queue_size is None else queue_size
        _check_queue_size(capacity)
        max_bytes = self._max_queue_bytes if max_queue_bytes is None else max_queue_bytes
        _check_queue_bytes(max_bytes)
        high = max(1, int(capacity * 0.8)) if high_water is None else high_water
        # The default low mark stays below the high one for tiny queues (2 -> high 1, low 0).
        low = min(int(capacity * 0.5), high - 1) if low_water is None else low_water
        if not 0 <= low < high <= capacity:
            raise InvalidValueError(
                f"water marks must satisfy 0 <= low_water < high_water <= queue_size; got "
                f"low={low}, high={high}, queue_size={capacity}"
            )
        if not block_timeout >= 0:
            raise InvalidValueError("block_timeout must be >= 0 seconds")
        with self._lock:
            self._next_id += 1
            sub_id = self._next_id
        return Subscription(
            sub_id=sub_id,
            name=name,
            pattern=compiled,
            handler=handler,
            is_async=is_async,
            mode=mode,
            capacity=capacity,
            overflow=_parse_overflow(overflow),
            high_water=high,
            low_water=low,
            block_timeout=block_timeout,
            on_error=on_error,
            clock=self._clock,
            notify=self._weak_notify,
            max_bytes=max_bytes,
        )

    def _add(self, sub: Subscription) -> None:
        with self._lock:
            self._subs[sub.id] = sub
            self._router.add(sub.pattern, sub)
            self._retire_routes()

    # -- the event loop that queued subscriptions live on ---------------------------------
    def _bind_loop(self, *, require_running: bool = False) -> asyncio.AbstractEventLoop:
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        with self._lock:
            if self._loop is not None and not self._loop.is_closed():
                if running is not None and running is not self._loop:
                    raise EventError(
                        "this bus's queued subscriptions live on another event loop",
                        hint="create and use a bus inside one event loop, or from sync code",
                    )
                if require_running and running is None:
                    raise EventError("bus.stream() must be called from async code")
                return self._loop
            if running is not None:
                self._loop = running
                self._loop_thread = threading.get_ident()
                self._own_workers = None
                return running
            if require_running:
                raise EventError("bus.stream() must be called from async code",
                                 hint="call it inside the coroutine that iterates it")
            loop = asyncio.new_event_loop()
            ready = threading.Event()
            thread = threading.Thread(target=_run_private_loop, args=(loop, ready),
                                      name="llmspell-bus", daemon=True)
            thread.start()
            ready.wait()
            assert thread.ident is not None
            self._loop_thread = thread.ident
            self._loop = loop
            self._own_thread = thread
            workers: set[asyncio.Task[None]] = set()
            self._own_workers = workers
            finalizer = weakref.finalize(self, _bus_dropped, loop, workers)
            finalizer.atexit = False  # at exit the daemon thread just stops
            self._loop_finalizer = finalizer
            return loop

    def _start_worker(self, sub: Subscription) -> None:
        loop = self._bind_loop()
        sub.loop = loop
        sub.loop_thread = self._loop_thread
        workers = self._own_workers  # None unless the loop is the bus's own
        if threading.get_ident() == self._loop_thread:
            _track(sub.start(self._weak_failed), workers)
        else:
            started = threading.Event()

            def start() -> None:
                _track(sub.start(self._weak_failed), workers)
                started.set()

            loop.call_soon_threadsafe(start)
            started.wait(5.0)

    # -- publishing -------------------------------------------------------------------------
    def _build(
        self, event_type: object, data: Any, metadata: EventMetadata | dict[str, Any] | None
    ) -> UniversalEvent:
        if not isinstance(event_type, str):
            raise InvalidValueError(
                f"publish() takes an event or an event type, not {type(event_type).__name__}"
            )
        run_id = current_run_id()
        if metadata is None:
            if run_id is None:
                return UniversalEvent(event_type=event_type, data=data)
            return UniversalEvent(event_type=event_type, data=data,
                                  metadata=EventMetadata(run_id=run_id))
        if isinstance(metadata, EventMetadata):
            if run_id is not None and metadata.run_id is None:
                metadata = msgspec.structs.replace(metadata, run_id=run_id)
            return UniversalEvent(event_type=event_type, data=data, metadata=metadata)
        if not isinstance(metadata, dict):
            raise InvalidValueError(
                f"metadata must be a dict or an EventMetadata, not {type(metadata).__name__}"
            )
        if run_id is not None and metadata.get("run_id") is None:
            metadata = {**metadata, "run_id": run_id}
        try:
            return UniversalEvent.create(event_type, data, **metadata)
        except TypeError as exc:
            raise InvalidValueError(
                f"bad event metadata {metadata!r}: {exc}",
                hint="use correlation_id, source, target, tags, priority, ttl, language, "
                     "run_id",
            ) from None

    def _route(self, event_type: str) -> _Route:
        """The slow path of routing for sync publish: gate checks, then the route."""
        if self._gated:
            self._check_gate()
        return self._resolve_route(event_type)

    def _resolve_route(self, event_type: str) -> _Route:
        """Resolve and cache the route of ``event_type``. While the bus is gated, routes are
        cached aside so that every publish still passes the gate."""
        cache = self._gated_routes if self._gated else self._routes
        route = cache.get(event_type)
        if route is not None:
            return route
        generation = self.subscription_generation
        subs = self._router.resolve(event_type)
        with self._lock:
            cache = self._gated_routes if self._gated else self._routes
            route = cache.get(event_type)
            if route is None:
                if generation != self.subscription_generation:
                    # A subscription changed while the router was read: those subscribers
                    # may include one just removed (its handler would run after unsubscribe
                    # returned) or miss one just added. Read it again, under the lock.
                    subs = self._router.resolve(event_type)
                route = _Route(event_type, subs, self._store is not None)
                if len(cache) >= self._route_cache_size:
                    self._evict(cache)
                cache[event_type] = route
        return route

    def _evict(self, cache: dict[str, _Route]) -> None:
        """Make room in a full route cache (lock held) by recency, a quarter of it at a time:
        from the oldest entry on, a route published through since the last sweep gets a
        second chance (it moves to the end), one that was not is retired (its counts are
        folded into the totals as when a subscription changes). Publishers need no
        bookkeeping for this: a route's own counter says whether it was used."""
        target = self._route_cache_size - max(1, self._route_cache_size // 4)
        evicted: list[_Route] = []
        for event_type in list(cache):
            if len(cache) <= target:
                break
            route = cache[event_type]
            used = counter_value(route.counter)
            del cache[event_type]
            if used != route.mark:
                route.mark = used
                cache[event_type] = route  # a publisher missing it meanwhile re-resolves
            else:
                evicted.append(route)
        if len(cache) > target:  # every route was used since the last sweep: the oldest go
            evicted.extend(cache.pop(t) for t in list(cache)[: len(cache) - target])
        for route in evicted:
            route.inline = _Retired(route, self._late_published)
        self._unsettled.extend(evicted)
        self._fold_settled()

    def _retire_routes(self) -> list[_Route]:
        """Drop every cached route (lock held); their counts are folded into the totals
        once no publish is in progress on them. Returns the retired routes."""
        self.subscription_generation += 1
        old = [*self._routes.values(), *self._gated_routes.values()]
        self._routes = {}
        self._gated_routes = {}
        for route in old:
            route.inline = _Retired(route, self._late_published)
        self._unsettled.extend(old)
        self._fold_settled()
        return old

    def _fold_settled(self) -> None:
        """Fold the counts of retired routes no publish is in progress on (lock held).

        Per route: read the entries, *then* look for publishes in progress, then read the
        aborted count and the entries again. If none is in progress and the entries did
        not move, every entry counted has finished (so its abort, if any, is counted too),
        and ``entries - aborted`` is final: later entrants all abort (see :class:`_Route`).
        """
        routes = self._unsettled
        if not routes:
            return
        firsts = [counter_value(route.counter) for route in routes]
        active = _entered_routes(None)
        keep: list[_Route] = []
        for route, entered in zip(routes, firsts, strict=True):
            if route.async_threads or id(route) in active:
                keep.append(route)
                continue
            aborted = counter_value(route.aborted)
            if counter_value(route.counter) != entered:
                keep.append(route)
                continue
            count = entered - 1 - aborted
            if count:
                base = self._type_base
                # Popped and set again: the most recently folded types come last.
                base[route.event_type] = base.pop(route.event_type, 0) + count
                for sub in route.members:
                    sub.inline_base += count
        self._unsettled = keep
        if len(self._type_base) > self._route_cache_size:
            self._trim_type_base()

    def _trim_type_base(self) -> None:
        """Bound the per-type counts of retired routes (lock held) with the route cache's
        bound and policy: a quarter of ``route_cache_size`` at a time, from the least
        recently folded type on. A type still counted elsewhere (a cached or unsettled route,
        late publishes) is kept, moved to the end, as its reported count needs its base;
        any other is forgotten, its count moved to ``_untracked`` (``published`` and the
        total rates stay exact; ``by_type`` no longer lists it)."""
        size = self._route_cache_size
        target = size - max(1, size // 4)
        base = self._type_base
        routes, gated, late = self._routes, self._gated_routes, self._late_published
        unsettled = {route.event_type for route in self._unsettled}  # routes in use: few
        for event_type in list(base):
            if len(base) <= target:
                break
            count = base.pop(event_type)
            if (event_type in routes or event_type in gated or event_type in late
                    or event_type in unsettled):
                base[event_type] = count
            else:
                self._untracked += count

    def _type_counts(self) -> TypeCounts:
        with self._lock:
            self._fold_settled()
            counts = TypeCounts(self._type_base)
            counts.untracked = self._untracked
            routes = [*self._routes.values(), *self._gated_routes.values(), *self._unsettled]
            for route in routes:
                counts[route.event_type] = counts.get(route.event_type, 0) + route.count
            for event_type, late in list(self._late_published.items()):
                counts[event_type] = counts.get(event_type, 0) + counter_value(late)
        return counts

    def has_subscribers(self, event_type: str) -> bool:
        """True when publishing ``event_type`` would reach at least one subscription (the
        route is resolved and cached, as a publish would). The answer stands while
        :attr:`subscription_generation` is unchanged."""
        route = self._routes.get(event_type) or self._resolve_route(event_type)
        return bool(route.members or route.queued)

    def _check_gate(self) -> None:
        """The rare checks, folded behind one flag on the hot path: closed, rate limit."""
        if self._closed:
            raise BusClosedError("the bus is closed; publish refused")
        if self._bucket is not None:
            self._throttle_sync()

    def publish(
        self,
        event: UniversalEvent | str,
        data: Any = None,
        metadata: EventMetadata | dict[str, Any] | None = None,
        persist: bool = True,
        durable: bool = False,
    ) -> UniversalEvent:
        """Publish an event, or build one from a type, data and ``metadata`` (an
        :class:`EventMetadata` or a dict of its fields: ``correlation_id``, ``source``,
        ``target``, ``tags``, ``priority``, ``ttl``, and ``language``), and return it.
        ``persist=False`` keeps it out of the store. ``durable=True`` returns only once the
        store has committed the event (it blocks on :meth:`EventStore.flush`; from async
        code use ``await publish_async(..., durable=True)``).

        The event is appended to the store first, then inline handlers run, then it is
        offered to queued subscriptions. May raise ``EventTooLargeError`` or a store's
        ``StoreError``/``StoreFullError`` (nothing was delivered), ``QueueFullError`` (a
        ``reject`` or ``block`` subscription could not take the event; every other
        subscription still got it, and it was stored), ``RateLimitedError`` or
        ``BusClosedError``.
        """
        if type(event) is not UniversalEvent:
            if metadata is None and type(event) is str and current_run_id() is None:
                # the common call outside a run, built inline
                event = UniversalEvent(event_type=event, data=data)
            else:
                event = self._build(event, data, metadata)
        # The size is measured only where the bus keeps the event (_publish_held): inline
        # handlers get the object the publisher built, which costs no memory of the bus.
        # While the bus is gated (closed, rate-limited) no route is cached, so the gate is
        # checked in _route() and costs nothing here. (A subscript in a try block is the
        # cheapest cached lookup; a miss happens once per event type.)
        try:
            route = self._routes[event.event_type]
        except KeyError:
            route = self._route(event.event_type)
        if route.holds or durable:
            return self._publish_held(event, route, persist, durable)
        entered = route  # marks this frame as in progress on the route (see _Route)
        if next(entered.counter) & 63 == 1:
            # One publish in 64 per route (the first included) is timed and ticks the rates.
            self._deliver(event, entered, timed=True, quiet=False, size=0)
            self._metrics.tick()
        else:
            # The hot path: _deliver() inlined, untimed, no per-handler counters.
            for sub in entered.inline:
                try:
                    if (result := sub.handler(event)) is not None:  # type: ignore[misc]
                        self._settle_inline(result)
                except Exception as exc:
                    self._handler_failed(sub, event, exc)
        return event

    def _check_size(self, event: UniversalEvent) -> int:
        """The event's size; ``EventTooLargeError`` past ``max_event_bytes``."""
        size = event_size(event)
        limit = self.max_event_bytes
        if limit is not None and size > limit:
            raise EventTooLargeError(
                f"event {event.event_type!r} is {size} bytes as JSON; this bus keeps events "
                f"of at most {limit} bytes", size=size, limit=limit,
                hint="publish a reference (a path, an id) instead of the payload, or raise "
                "EventBus(max_event_bytes=...)")
        return size

    def _store_append(self, store: EventStore, event: UniversalEvent) -> None:
        """Append to the store; a refusal (``StoreFullError``) becomes a backpressure
        notice before it is raised, and the first append that finds room again ends the
        episode."""
        try:
            store.append(event)
        except StoreFullError as exc:
            self._store_refused(store, exc)
            raise
        if self._store_pressed:
            self._store_relieved(store)

    def _store_refused(self, store: EventStore, exc: StoreFullError) -> None:
        """One refusal of an episode of store pressure: the first sends a ``warning``."""
        with self._lock:
            self._store_episode_refused += 1
            refused = self._store_episode_refused
            first = not self._store_pressed
            self._store_pressed = True
        if first:
            self._store_notice(store, BackpressureKind.WARNING, refused, str(exc))

    def _store_relieved(self, store: EventStore) -> None:
        """End the episode once the store's pending bytes are back at half its bound (a
        store without a bound: at once)."""
        pending = getattr(store, "pending_bytes", 0)
        bound = getattr(store, "max_pending_bytes", None)
        if isinstance(bound, int) and pending > bound // 2:
            return
        with self._lock:
            if not self._store_pressed:
                return
            self._store_pressed = False
            refused = self._store_episode_refused
            self._store_episode_refused = 0
        self._store_notice(store, BackpressureKind.RELIEVED, refused,
                           f"the store took events again after refusing {refused}")

    def _store_notice(self, store: EventStore, kind: BackpressureKind, refused: int,
                      detail: str) -> None:
        # For the store, depth and capacity are bytes (pending, and the bound). The notice
        # event is not stored: the store is what is full.
        bound = getattr(store, "max_pending_bytes", 0)
        notice = BackpressureNotice(
            kind=kind, subscription="store", depth=int(getattr(store, "pending_bytes", 0)),
            capacity=bound if isinstance(bound, int) else 0, dropped=0, rejected=refused,
            at=self._clock.now(), detail=detail)
        self._deliver_notice(notice, persist=False)

    def _durable_check(self, persist: bool) -> None:
        if self._store is None or not persist:
            raise EventError(
                "a durable publish needs a store and persist=True",
                hint="give the bus a store (SQLiteStore for crash durability)")

    def _publish_held(self, event: UniversalEvent, route: _Route, persist: bool,
                      durable: bool) -> UniversalEvent:
        """publish() when the bus keeps the event: measure, store, deliver (, flush)."""
        if durable:
            self._durable_check(persist)
        store = self._store if persist else None
        size = -1
        if route.queued or store is not None:
            size = self._check_size(event)
        if store is not None:
            self._store_append(store, event)
        entered = route
        timed = next(entered.counter) & 63 == 1
        error = self._deliver(event, entered, timed=timed, quiet=False, size=size)
        if timed:
            self._metrics.tick()
        del entered  # no longer in progress on the route
        if durable:
            assert store is not None
            store.flush()
        if error is not None:
            raise error
        return event

    def _deliver(
        self, event: UniversalEvent, route: _Route, *, timed: bool, quiet: bool, size: int
    ) -> QueueFullError | None:
        """Deliver to every subscription of ``route``; returns the first queue error."""
        for sub in route.inline:
            start = perf_counter_ns() if timed else 0
            try:
                result = sub.handler(event)  # type: ignore[misc]
                if result is not None:
                    self._settle_inline(result)
            except Exception as exc:
                self._handler_failed(sub, event, exc)
            if timed:
                sub.latency.append(perf_counter_ns() - start)
        return self._offer(event, route.queued, quiet=quiet, size=size) if route.queued \
            else None

    @staticmethod
    def _offer(
        event: UniversalEvent, subs: tuple[Subscription, ...], *, quiet: bool, size: int
    ) -> QueueFullError | None:
        error: QueueFullError | None = None
        for sub in subs:
            try:
                sub.offer(event, size, quiet=quiet)
            except QueueFullError as exc:
                error = error or exc
        return error

    def _settle_inline(self, result: object) -> None:
        if inspect.isawaitable(result):
            self._await_inline(result)

    async def publish_async(
        self,
        event: UniversalEvent | str,
        data: Any = None,
        metadata: EventMetadata | dict[str, Any] | None = None,
        persist: bool = True,
        durable: bool = False,
    ) -> UniversalEvent:
        """Like :meth:`publish`, for async code: inline async handlers are awaited, a
        rate limit waits with ``asyncio.sleep``, a full ``block`` queue is waited on without
        blocking the event loop (whichever loop this runs on), and ``durable=True`` awaits
        the store's commit on a worker thread."""
        if type(event) is not UniversalEvent:
            event = self._build(event, data, metadata)
        if self._closed:
            raise BusClosedError("the bus is closed; publish refused")
        if durable:
            self._durable_check(persist)
        if self._bucket is not None:
            await self._throttle_async()
        route = self._routes.get(event.event_type) or self._resolve_route(event.event_type)
        store = self._store if persist else None
        size = -1
        if route.queued or store is not None:
            size = self._check_size(event)
        if store is not None:
            if _store_would_wait(store, size):
                # A blocking store is full: wait for its room on a worker thread, so the
                # loop keeps running (the store's writer is a thread of its own).
                await asyncio.to_thread(self._store_append, store, event)
            else:
                self._store_append(store, event)
        token = object()
        route.async_threads[token] = threading.get_ident()
        timed = next(route.counter) & 63 == 1
        try:
            if timed:
                self._metrics.tick()
            for sub in route.inline:
                if sub.closed:  # unsubscribed while an earlier handler was awaited
                    continue
                start = perf_counter_ns() if timed else 0
                try:
                    result = sub.handler(event)  # type: ignore[misc]
                    if result is not None and inspect.isawaitable(result):
                        await result
                except Exception as exc:
                    self._handler_failed(sub, event, exc)
                if timed:
                    sub.latency.append(perf_counter_ns() - start)
        finally:
            del route.async_threads[token]
        error: QueueFullError | None = None
        for sub in route.queued:
            try:
                if sub.overflow is OverflowStrategy.BLOCK:
                    await self._offer_waiting(sub, event, size)
                else:
                    sub.offer(event, size)
            except QueueFullError as exc:
                error = error or exc
        if durable:
            assert store is not None
            await asyncio.to_thread(store.flush)
        if error is not None:
            raise error
        return event

    @staticmethod
    async def _offer_waiting(sub: Subscription, event: UniversalEvent, size: int) -> None:
        """Offer to a ``block`` subscription, awaiting room (never blocking the loop)."""
        if sub.offer(event, size, block=False):
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + sub.block_timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                error = sub.block_timed_out()
                if error is not None:
                    raise error
                return
            await sub.wait_for_room(size, remaining)
            if sub.offer(event, size, block=False, waiting=True):
                return

    def _await_inline(self, awaitable: Any) -> None:
        """An inline handler returned an awaitable inside a sync publish: run it to the end."""
        if _in_running_loop():
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            raise EventError(
                "an async inline handler cannot finish inside a sync publish() on a running "
                "event loop",
                hint="use `await bus.publish_async(...)`, or subscribe with mode='queued'",
            )

        async def wait() -> None:
            await awaitable

        _thread_loop().run_until_complete(wait())

    def _publish_internal(self, event_type: str, data: dict[str, Any], *,
                          persist: bool = True, exclude: Subscription | None = None) -> None:
        """Publish a bus notice. Queue overflows it causes raise no further notices, and
        nothing it causes can break the code path that emitted it."""
        if self._closed:
            return
        try:
            event = UniversalEvent.create(event_type, data, source="llmspell.bus")
            route = self._routes.get(event_type) or self._resolve_route(event_type)
            size = event_size(event)
            if self._store is not None and persist:
                self._store.append(event)
            entered = route
            next(entered.counter)
            for sub in entered.inline:
                try:
                    result = sub.handler(event)  # type: ignore[misc]
                    if result is not None:
                        self._settle_inline(result)
                except Exception as exc:
                    self._handler_failed(sub, event, exc)
            del entered
            # A full queue is not sent the notice about itself (it would only lose an event).
            queued = tuple(s for s in route.queued if s is not exclude)
            self._offer(event, queued, quiet=True, size=size)
        except Exception as exc:
            logger.debug("bus notice %s not fully delivered: %s", event_type, exc)

    # -- rate limiting ----------------------------------------------------------------------
    def _first_wait(self, *, can_wait: bool) -> float:
        """Take a token: 0.0 when one was free, else the wait before one is (after the
        checks that refuse to wait). Shared by the sync and async publishers."""
        assert self._bucket is not None and self._rate_limit is not None
        wait = self._bucket.take()
        if wait == 0.0:
            self._limited = False
            return 0.0
        self._rate_limited(wait)
        limit = self._rate_limit
        if limit.on_limit == "reject" or wait > limit.max_wait or not can_wait:
            raise RateLimitedError(
                f"publish rate limit of {limit.rate:g}/s (burst {limit.burst}) exceeded",
                retry_after=wait,
            )
        return wait

    def _throttle_sync(self) -> None:
        # A sync publish on a running loop must not sleep: it is refused instead.
        wait = self._first_wait(can_wait=not _in_running_loop())
        assert self._bucket is not None and self._rate_limit is not None
        deadline = time.monotonic() + self._rate_limit.max_wait
        while wait > 0.0:
            time.sleep(wait)
            wait = self._bucket.take()
            if wait and time.monotonic() + wait > deadline:
                raise RateLimitedError("publish rate limit: waited too long", retry_after=wait)

    async def _throttle_async(self) -> None:
        wait = self._first_wait(can_wait=True)
        assert self._bucket is not None and self._rate_limit is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._rate_limit.max_wait
        while wait > 0.0:
            await asyncio.sleep(wait)
            wait = self._bucket.take()
            if wait and loop.time() + wait > deadline:
                raise RateLimitedError("publish rate limit: waited too long", retry_after=wait)

    def _rate_limited(self, wait: float) -> None:
        next(self._metrics.rate_limited)
        if self._limited or getattr(_local, "quiet", False):
            return
        self._limited = True
        assert self._rate_limit is not None
        notice = BackpressureNotice(
            kind=BackpressureKind.RATE_LIMIT_EXCEEDED, subscription="publisher", depth=0,
            capacity=self._rate_limit.burst, dropped=0, rejected=0, at=self._clock.now(),
            detail=f"next token in {wait:.4f} s",
        )
        self._deliver_notice(notice)

    # -- failures and notices -------------------------------------------------------------
    def _notify(self, sub: Subscription, kind: BackpressureKind, detail: str) -> None:
        self._deliver_notice(sub.notice(kind, detail, self._clock.now()), sub)

    def _deliver_notice(self, notice: BackpressureNotice,
                        origin: Subscription | None = None, *, persist: bool = True) -> None:
        level = logging.WARNING if notice.kind in ("warning", "rate_limit_exceeded") \
            else logging.INFO
        logger.log(level, "backpressure %s on %s: %s", notice.kind, notice.subscription,
                   notice.detail)
        callback = self.on_backpressure
        if callback is not None:
            try:
                callback(notice)
            except Exception:
                logger.exception("on_backpressure callback failed")
        self._publish_internal(f"bus.backpressure.{notice.kind}", msgspec.to_builtins(notice),
                               exclude=origin, persist=persist)

    def _handler_failed(self, sub: Subscription, event: UniversalEvent, exc: Exception) -> None:
        next(sub.errors)
        next(self._metrics.handler_errors)
        traced = True
        if isinstance(exc, RecursionError):
            looped = _delivery_loop(sub, event)
            if looped is not None:  # said as what it is, without hundreds of frames of it
                exc, traced = looped, False
        failure = HandlerFailure(
            subscription=sub.name,
            pattern=sub.pattern.source,
            event_type=event.event_type,
            event_id=event.id,
            error_type=type(exc).__name__,
            message=str(exc),
        )
        logger.warning("handler %r failed on %s (%s): %s", sub.name, event.event_type,
                       failure.error_type, exc, exc_info=exc if traced else None)
        if sub.on_error is not None:
            try:
                sub.on_error(event, exc)
            except Exception:
                logger.exception("on_error callback of subscription %r failed", sub.name)
        if self.on_handler_error is not None:
            try:
                self.on_handler_error(failure)
            except Exception:
                logger.exception("on_handler_error callback failed")
        if event.event_type != HANDLER_ERROR_TYPE:
            self._publish_internal(HANDLER_ERROR_TYPE, msgspec.to_builtins(failure))

    def _store_failed(self, exc: Exception) -> None:
        next(self._metrics.store_errors)
        logger.error("event store write failed (events are kept and retried): %s", exc)
        self._publish_internal(
            STORE_ERROR_TYPE, {"error_type": type(exc).__name__, "message": str(exc)},
            persist=False,
        )

    # -- store, replay, lifecycle -------------------------------------------------------------
    @property
    def store(self) -> EventStore | None:
        """The store events are persisted to, if any."""
        return self._store

    def flush(self, timeout: float | None = None) -> int:
        """Make every event published so far durable in the store (see the store's docs for
        what durable means); raises ``StoreError`` if it cannot. 0 without a store."""
        return self._store.flush(timeout) if self._store is not None else 0

    async def replay(
        self,
        query: EventQuery | None = None,
        *,
        store: EventStore | None = None,
        pace: float | None = None,
        persist: bool = False,
        **fields: Any,
    ) -> int:
        """Re-publish stored events in their original order, marked ``replayed``.

        ``query`` (or the same fields as keywords) selects them; ``pace`` replays at the
        original pace times ``pace`` (1.0 = real time, 2.0 = twice as fast; None = as fast
        as possible). Replayed events are not stored again unless ``persist``. Returns the
        number replayed.
        """
        source = store or self._store
        if source is None:
            raise EventError("replay needs a store", hint="pass store=... or give the bus one")
        if pace is not None and not pace > 0:
            raise InvalidValueError(f"pace must be > 0 or None, got {pace!r}")
        try:
            selected = query if query is not None else EventQuery(**fields)
        except TypeError as exc:
            raise InvalidValueError(
                f"bad replay query: {exc}",
                hint="use pattern, correlation_id, since, until, min_sequence, max_sequence, "
                "limit",
            ) from None
        if selected.descending:
            raise InvalidValueError("replay runs in original order; use descending=False")
        # Store reads may block (SQLite): they run on a worker thread, a page at a time, so
        # the event loop keeps serving the events being replayed. The next page is read
        # while this one is published (SQLite releases the GIL while it reads).
        events = await asyncio.to_thread(source.iter_events, selected)
        count = 0
        previous: float | None = None
        ahead = asyncio.ensure_future(asyncio.to_thread(_next_page, events, 500))
        try:
            while True:
                page = await ahead
                if not page:
                    return count
                ahead = asyncio.ensure_future(asyncio.to_thread(_next_page, events, 500))
                for event in page:
                    if pace is not None and previous is not None:
                        await asyncio.sleep(max(0.0, (event.timestamp - previous) / pace))
                    previous = event.timestamp
                    await self.publish_async(event.as_replayed(), persist=persist)
                    count += 1
        finally:
            if not ahead.done():  # left early (an error, a cancel): the read finishes alone
                ahead.add_done_callback(_ignore_outcome)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until every queued subscription's queue is empty and its handler idle."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            busy = [s for s in list(self._subs.values())
                    if s.worker is not None and (s.queue or _worker_busy(s))]
            if not busy:
                return
            if deadline is not None and loop.time() >= deadline:
                names = ", ".join(s.name for s in busy)
                raise TimeoutError(f"subscriptions still busy after {timeout} s: {names}")
            await asyncio.sleep(0.001)

    async def close(self, timeout: float = 5.0) -> None:
        """Refuse new events, let queued subscriptions finish what they hold (up to
        ``timeout``), end streams, flush the store. Idempotent."""
        if self._closed:
            return
        await self._close_subscriptions(timeout)
        self._finish()

    async def _close_subscriptions(self, timeout: float) -> None:
        """Close the gate and let queued subscriptions finish (the part of :meth:`close`
        before the store's final flush)."""
        self._close_gate()
        subs = list(self._subs.values())
        for sub in subs:
            sub.close(discard=False)
        workers = [s.worker for s in subs if s.worker is not None]
        same_loop = _in_running_loop() and asyncio.get_running_loop() is self._loop
        if workers and same_loop:
            await _wait_all(workers, timeout)
        elif workers and self._loop is not None and not self._loop.is_closed():
            future = asyncio.run_coroutine_threadsafe(_wait_all(workers, timeout), self._loop)
            await asyncio.wrap_future(future)

    def close_sync(self, timeout: float = 5.0) -> None:
        """:meth:`close` for sync code (not from inside a running event loop)."""
        if _in_running_loop():
            raise EventError("close_sync() was called inside a running event loop",
                             hint="use `await bus.close()`")
        if self._closed:
            return
        if self._own_thread is not None and self._loop is not None:
            self._close_gate()
            subs = list(self._subs.values())
            for sub in subs:
                sub.close(discard=False)
            workers = [s.worker for s in subs if s.worker is not None]
            future = asyncio.run_coroutine_threadsafe(_wait_all(workers, timeout), self._loop)
            future.result(timeout + 1.0)
            self._finish()
            return
        _thread_loop().run_until_complete(self.close(timeout))

    def _close_gate(self) -> None:
        with self._lock:
            self._closed = True
            self._gated = True
            self._retire_routes()

    def _finish(self) -> None:
        if self._store is not None:
            try:
                self._store.flush(5.0)
            except Exception as exc:
                logger.error("final flush of the event store failed: %s", exc)
        if self._own_thread is not None and self._loop is not None:
            if self._loop_finalizer is not None:
                self._loop_finalizer.detach()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._own_thread.join(5.0)
            if not self._own_thread.is_alive():
                self._loop.close()  # the thread closed it; a no-op then
            self._own_thread = None

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has begun."""
        return self._closed

    # -- stats -----------------------------------------------------------------------------
    def subscriptions(self) -> list[FlowStats]:
        """Flow counters of every subscription, in subscription order."""
        with self._lock:
            self._fold_settled()
            subs = list(self._subs.values())
            live = [*self._routes.values(), *self._gated_routes.values(), *self._unsettled]
            routed: dict[int, int] = {}
            for route in live:
                count = route.count
                for sub in route.members:
                    routed[sub.id] = routed.get(sub.id, 0) + count
            return [
                s.stats(s.inline_base + counter_value(s.late) + routed.get(s.id, 0))
                if s.inline else s.stats()
                for s in subs
            ]

    def stats(self) -> BusStats:
        """Counts per type, rates, deliveries, drops, errors, queues and handler latency."""
        flows = self.subscriptions()
        totals, by_type_rates = self._metrics.rates()
        counts = self._metrics.counts()
        return BusStats(
            published=total_count(counts),
            by_type=dict(counts),
            rates=totals,
            rates_by_type=by_type_rates,
            delivered=self._retired["delivered"] + sum(f.delivered for f in flows),
            dropped=self._retired["dropped"] + sum(f.dropped for f in flows),
            rejected=self._retired["rejected"] + sum(f.rejected for f in flows),
            expired=self._retired["expired"] + sum(f.expired for f in flows),
            handler_errors=counter_value(self._metrics.handler_errors),
            rate_limited=counter_value(self._metrics.rate_limited),
            store_errors=counter_value(self._metrics.store_errors),
            subscriptions=flows,
            handlers=[latency_of(s.name, list(s.latency)) for s in list(self._subs.values())
                      if s.handler is not None],
        )


_ENTERING_CODES = frozenset({EventBus.publish.__code__, EventBus._publish_held.__code__,
                             EventBus._publish_internal.__code__})
_PUBLISHING_CODES = frozenset({EventBus.publish.__code__, EventBus.publish_async.__code__})


def _delivery_loop(sub: Subscription, event: UniversalEvent) -> OperationDepthError | None:
    """The error a handler's :class:`RecursionError` is reported as when it came from a
    delivery loop (the handler's publish, directly or through a tool, a hook or a script,
    reached an inline handler again until Python's recursion limit): the publishes in
    progress on this thread's stack name it. None for a recursion of the handler's own.
    Bounding the nesting up front would cost every publish a context-variable round trip
    (~0.1 µs, an eighth of a publish) for a bug that already ends here."""
    types: list[str] = []
    frame: Any = sys._getframe(1)
    try:
        while frame is not None:
            if frame.f_code in _PUBLISHING_CODES:
                seen = frame.f_locals.get("event")
                types.append(seen.event_type if isinstance(seen, UniversalEvent)
                             else str(frame.f_locals.get("event_type", "?")))
            frame = frame.f_back
    finally:
        frame = None
    if len(types) < 2:
        return None
    types.reverse()
    shown = types if len(types) <= 6 else [*types[:3], "...", *types[-3:]]
    return OperationDepthError(
        f"handler {sub.name!r} looped: delivering {event.event_type!r} led to publishes "
        f"nested {len(types)} deep, until Python's recursion limit: "
        + " -> ".join(map(repr, shown)),
        hint="an inline handler publishes (or runs a tool, hook or script that publishes) an "
             "event that reaches it again: break the loop (skip the events it published "
             "itself, or subscribe to a narrower pattern)")


def _entered_routes(skip_thread: int | None) -> set[int]:
    """The ids of the routes a sync publish is in progress on, on any thread but
    ``skip_thread``: the bus's publish frames on the threads' stacks whose local ``entered``
    is set. Unsubscribing is rare, so walking the stacks costs the hot path nothing."""
    found: set[int] = set()
    frames: dict[int, Any] | None = sys._current_frames()
    top: Any = None
    assert frames is not None
    try:
        for thread, top in frames.items():
            if thread == skip_thread:
                continue
            frame: Any = top
            while frame is not None:
                if frame.f_code in _ENTERING_CODES:
                    route = frame.f_locals.get("entered")
                    if route is not None:
                        found.add(id(route))
                frame = frame.f_back
    finally:
        # This thread's top frame is this function's own: holding it makes a cycle that
        # keeps every caller's frame, and so its locals, alive until the collector runs.
        frames = top = frame = None
    return found


def _next_page(events: Iterator[UniversalEvent], size: int) -> list[UniversalEvent]:
    return list(itertools.islice(events, size))


def _ignore_outcome(future: asyncio.Future[Any]) -> None:
    """Retrieve a result nobody waits for any more (no 'never retrieved' warning)."""
    if not future.cancelled():
        future.exception()


def _worker_busy(sub: Subscription) -> bool:
    return sub.worker is not None and not sub.worker.done() and not sub.waiting


async def _wait_all(workers: list[asyncio.Task[None]], timeout: float) -> None:
    if not workers:
        return
    _, pending = await asyncio.wait(workers, timeout=timeout)
    for task in pending:
        task.cancel()


def _parse_mode(mode: DeliveryMode | str) -> DeliveryMode:
    try:
        return DeliveryMode(mode)
    except ValueError:
        valid = ", ".join(m.value for m in DeliveryMode)
        raise InvalidValueError(f"unknown delivery mode {mode!r}", hint=f"use one of: {valid}"
                                ) from None


def _parse_overflow(overflow: OverflowStrategy | str) -> OverflowStrategy:
    try:
        return OverflowStrategy(overflow)
    except ValueError:
        valid = ", ".join(s.value for s in OverflowStrategy)
        raise InvalidValueError(
            f"unknown overflow strategy {overflow!r}", hint=f"use one of: {valid}"
        ) from None

