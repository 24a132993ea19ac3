"""A subscription: a pattern, a handler and, for queued delivery, a bounded queue.

The queue is a ``deque`` guarded by a ``threading.Lock`` so that publishers on any thread and
the consumer (one long-lived asyncio worker, or a stream's reader) agree on depth, water marks
and overflow. It is bounded twice: by ``capacity`` events and by ``max_bytes`` (the sum of
the queued events' sizes, see :func:`~llmspell.events.event.event_size`); either bound
being reached makes the queue full for the overflow strategy. The consumer waits on one
asyncio future that a publisher completes only when the consumer is idle, so a busy queue
costs no wake-ups at all.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from llmspell.core.clock import Clock
from llmspell.core.errors import QueueFullError
from llmspell.core.stats import counter_value
from llmspell.events.event import UniversalEvent
from llmspell.events.flow import (
    BackpressureKind,
    BackpressureNotice,
    DeliveryMode,
    FlowStats,
    OverflowStrategy,
)
from llmspell.events.pattern import EventPattern

__all__ = ["Subscription", "SubscriptionHandle"]

Notifier = Callable[["Subscription", BackpressureKind, str], None]


class SubscriptionHandle:
    """Returned by :meth:`EventBus.subscribe`; pass it to ``unsubscribe``."""

    __slots__ = ("id", "name", "pattern")

    def __init__(self, sub_id: int, name: str, pattern: str) -> None:
        self.id = sub_id
        self.name = name
        self.pattern = pattern

    def __repr__(self) -> str:
        return f"SubscriptionHandle({self.name!r}, pattern={self.pattern!r})"


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _wake_all(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]) -> None:
    """Wake futures that may belong to other threads' event loops."""
    for loop, future in waiters:
        if not loop.is_closed():
            loop.call_soon_threadsafe(_wake, future)


class Subscription:
    """Internal state of one subscription (see :class:`EventBus`)."""

    __slots__ = (
        "_async_blocked",
        "_blocked",
        "_bytes",
        "_ep_dropped",
        "_ep_rejected",
        "_space_waiters",
        "_waiter",
        "_warned",
        "block_timeout",
        "capacity",
        "clock",
        "closed",
        "delivered",
        "dropped",
        "episodes",
        "errors",
        "expired",
        "handle",
        "handler",
        "high_water",
        "id",
        "inline",
        "inline_base",
        "is_async",
        "late",
        "latency",
        "lock",
        "loop",
        "loop_thread",
        "low_water",
        "max_bytes",
        "max_depth",
        "mode",
        "name",
        "not_full",
        "notify",
        "on_error",
        "overflow",
        "pattern",
        "pressured",
        "queue",
        "rejected",
        "sizes",
        "worker",
    )

    def __init__(
        self,
        *,
        sub_id: int,
        name: str,
        pattern: EventPattern,
        handler: Callable[[UniversalEvent], Any] | None,
        is_async: bool,
        mode: DeliveryMode,
        capacity: int,
        overflow: OverflowStrategy,
        high_water: int,
        low_water: int,
        block_timeout: float,
        on_error: Callable[[UniversalEvent, Exception], None] | None,
        clock: Clock,
        notify: Notifier,
        max_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.id = sub_id
        self.name = name
        self.pattern = pattern
        self.handler = handler
        self.is_async = is_async
        self.mode = mode
        self.inline = mode is DeliveryMode.INLINE
        self.capacity = capacity
        self.overflow = overflow
        self.high_water = high_water
        self.low_water = low_water
        self.block_timeout = block_timeout
        self.on_error = on_error
        self.clock = clock
        self.notify = notify
        self.handle = SubscriptionHandle(sub_id, name, pattern.source)
        self.delivered = itertools.count()
        # Inline deliveries are counted by the bus's routes; retired routes fold in here.
        self.inline_base = 0
        # Inline deliveries made by publishers that raced a route change (see the bus).
        self.late = itertools.count()
        self.errors = itertools.count()
        self.latency: deque[int] = deque(maxlen=1024)
        self.queue: deque[UniversalEvent] = deque()
        self.sizes: deque[int] = deque()
        self.max_bytes = max_bytes
        self._bytes = 0
        self.lock = threading.Lock()
        self.not_full = threading.Condition(self.lock)
        self.dropped = 0
        self.rejected = 0
        self.expired = 0
        self.max_depth = 0
        self.pressured = False
        self.episodes = 0
        self.closed = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread = 0
        self.worker: asyncio.Task[None] | None = None
        self._warned = False
        self._ep_dropped = 0
        self._ep_rejected = 0
        self._blocked = 0
        self._async_blocked = 0
        self._waiter: asyncio.Future[None] | None = None
        self._space_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    # -- producer side ---------------------------------------------------------------
    @property
    def queued_bytes(self) -> int:
        """The summed sizes of the queued events."""
        return self._bytes

    def _fits(self, size: int) -> bool:
        # Lock held. An event larger than max_bytes still fits an empty queue (the bus's
        # max_event_bytes bounds single events).
        return len(self.queue) < self.capacity and (
            not self.queue or self._bytes + size <= self.max_bytes)

    def offer(self, event: UniversalEvent, size: int = 0, *, quiet: bool = False,
              block: bool = True, waiting: bool = False) -> bool:
        """Queue ``event`` (of ``size`` bytes), applying the overflow strategy when full.
        May raise ``QueueFullError`` (reject, or block timed out / impossible on this
        thread). With ``block=False`` a full ``block`` queue returns False at once (the
        publisher is then counted as waiting until it offers again with ``waiting=True``
        and succeeds, or :meth:`block_timed_out`; it waits with :meth:`wait_for_room`);
        otherwise returns True."""
        notices: list[tuple[BackpressureKind, str]] = []
        error: QueueFullError | None = None
        waiter: asyncio.Future[None] | None = None
        with self.lock:
            if self.closed:
                return True  # a waiting publisher's event was counted by close()
            queue = self.queue
            accepted: bool | None = True
            if len(queue) >= self.capacity or (queue and self._bytes + size > self.max_bytes):
                accepted, error = self._overflow(event, size, notices, block)
                if accepted is None:
                    if not waiting:
                        self._async_blocked += 1
                    return False
            if waiting:
                self._async_blocked -= 1
            if accepted:
                queue.append(event)
                self.sizes.append(size)
                self._bytes += size
                depth = len(queue)
                if depth > self.max_depth:
                    self.max_depth = depth
                if depth >= self.high_water and not self.pressured:
                    self.pressured = True
                    self.episodes += 1
                    self._warned = False
                    self._ep_dropped = self._ep_rejected = 0
                    notices.append((BackpressureKind.STARTED, f"depth reached {depth}"))
                waiter = self._waiter
                if waiter is not None:
                    self._waiter = None
        if waiter is not None:
            self._wake(waiter)
        if notices and not quiet:
            self._emit(notices)
        if error is not None:
            raise error
        return True

    def _pop_oldest(self) -> None:
        # Lock held.
        self.queue.popleft()
        self._bytes -= self.sizes.popleft()

    def _overflow(
        self, event: UniversalEvent, size: int, notices: list[tuple[BackpressureKind, str]],
        block: bool,
    ) -> tuple[bool | None, QueueFullError | None]:
        """Called with the lock held and the queue full. Returns (accepted, error);
        accepted is None when a ``block`` queue would block and ``block`` is False."""
        strategy = self.overflow
        if strategy is OverflowStrategy.DROP_OLDEST:
            while self.queue and not self._fits(size):
                self._pop_oldest()
                self._lose(notices, "dropped the oldest queued event")
            return True, None
        if strategy is OverflowStrategy.DROP_NEWEST:
            self._lose(notices, "dropped the newest event")
            return False, None
        if strategy is OverflowStrategy.REJECT:
            self._lose(notices, "rejected an event", rejected=True)
            return False, QueueFullError(
                self.name,
                f"subscription {self.name!r} is full ({len(self.queue)} queued, "
                f"{self._bytes} bytes); event {event.event_type!r} rejected",
                hint="slow down, raise queue_size/max_queue_bytes, or choose another overflow "
                "strategy",
            )
        if not block:
            return None, None
        # BLOCK: wait for room, unless this is the thread the consumer runs on.
        if threading.get_ident() == self.loop_thread:
            self._lose(notices, "rejected an event (cannot block the event loop)", rejected=True)
            return False, QueueFullError(
                self.name,
                f"subscription {self.name!r} is full and a sync publish on the event loop's "
                "thread cannot wait for room",
                hint="use `await bus.publish_async(...)`, which waits without blocking the loop",
            )
        deadline = time.monotonic() + self.block_timeout
        self._blocked += 1
        try:
            while not self._fits(size) and not self.closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False, self._timed_out(notices)
                self.not_full.wait(remaining)
        finally:
            self._blocked -= 1
        if self.closed:
            return False, None  # counted as dropped by close()
        return True, None

    def _timed_out(self, notices: list[tuple[BackpressureKind, str]]) -> QueueFullError:
        # Lock held.
        self._lose(notices, "a blocked publish timed out", rejected=True)
        return QueueFullError(
            self.name,
            f"subscription {self.name!r} stayed full for {self.block_timeout:g} s",
            hint="raise block_timeout or queue_size, or make the handler faster",
        )

    def block_timed_out(self, *, quiet: bool = False) -> QueueFullError | None:
        """Count an async publisher's timed-out wait as a rejection; the error to raise
        (None if the subscription closed meanwhile: close() counted the event)."""
        notices: list[tuple[BackpressureKind, str]] = []
        with self.lock:
            if self.closed:
                return None
            self._async_blocked -= 1
            error = self._timed_out(notices)
        if not quiet:
            self._emit(notices)
        return error

    async def wait_for_room(self, size: int, timeout: float) -> None:
        """Async publishers (on any event loop) wait here while a BLOCK queue has no room
        for ``size`` bytes, without blocking their loop. Returns on room, close or timeout."""
        loop = asyncio.get_running_loop()
        with self.lock:
            if self._fits(size) or self.closed:
                return
            future: asyncio.Future[None] = loop.create_future()
            entry = (loop, future)
            self._space_waiters.append(entry)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            pass
        finally:
            with self.lock:
                if entry in self._space_waiters:
                    self._space_waiters.remove(entry)

    def _lose(self, notices: list[tuple[BackpressureKind, str]], detail: str, *,
              rejected: bool = False) -> None:
        if rejected:
            self.rejected += 1
            self._ep_rejected += 1
        else:
            self.dropped += 1
            self._ep_dropped += 1
        if not self._warned:
            self._warned = True
            notices.append((BackpressureKind.WARNING, detail))

    def _wake(self, waiter: asyncio.Future[None]) -> None:
        if threading.get_ident() == self.loop_thread:
            _wake(waiter)
        elif self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(_wake, waiter)

    def _emit(self, notices: list[tuple[BackpressureKind, str]]) -> None:
        for kind, detail in notices:
            self.notify(self, kind, detail)

    def notice(self, kind: BackpressureKind, detail: str, at: float) -> BackpressureNotice:
        """A notice describing this subscription now."""
        return BackpressureNotice(
            kind=kind,
            subscription=self.name,
            depth=len(self.queue),
            capacity=self.capacity,
            dropped=self._ep_dropped,
            rejected=self._ep_rejected,
            at=at,
            detail=detail,
        )

    # -- consumer side ---------------------------------------------------------------
    @property
    def waiting(self) -> bool:
        """True while the consumer waits for events (its queue was empty)."""
        return self._waiter is not None

    def take_nowait(self) -> UniversalEvent | None:
        """Pop the oldest queued event, or None if the queue is empty."""
        notices: list[tuple[BackpressureKind, str]] | None = None
        spaces: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] | None = None
        with self.lock:
            if not self.queue:
                return None
            event = self.queue.popleft()
            self._bytes -= self.sizes.popleft()
            if self.pressured and len(self.queue) <= self.low_water:
                self.pressured = False
                notices = [(BackpressureKind.RELIEVED, f"depth fell to {len(self.queue)}")]
            if self._blocked:
                self.not_full.notify_all()
            if self._space_waiters:
                spaces = self._space_waiters
                self._space_waiters = []
        if spaces is not None:
            _wake_all(spaces)
        if notices:
            self._emit(notices)
        return event

    async def take(self) -> UniversalEvent | None:
        """Wait for the next event; None once the subscription is closed and drained."""
        while True:
            event = self.take_nowait()
            if event is not None:
                return event
            with self.lock:
                if self.queue:
                    continue
                if self.closed:
                    return None
                waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._waiter = waiter
            await waiter

    def close(self, *, discard: bool) -> int:
        """Stop accepting events; wake the consumer. Returns how many were discarded."""
        with self.lock:
            if not self.closed:
                # Publishers waiting for room lose their events: counted like discards.
                self.dropped += self._blocked + self._async_blocked
                self._async_blocked = 0
            self.closed = True
            discarded = 0
            if discard:
                discarded = len(self.queue)
                self.dropped += discarded
                self.queue.clear()
                self.sizes.clear()
                self._bytes = 0
            waiter, self._waiter = self._waiter, None
            spaces = self._space_waiters
            self._space_waiters = []
            self.not_full.notify_all()
        if waiter is not None:
            if self.loop is not None and threading.get_ident() != self.loop_thread:
                if not self.loop.is_closed():
                    self.loop.call_soon_threadsafe(_wake, waiter)
            else:
                _wake(waiter)
        _wake_all(spaces)
        return discarded

    def stats(self, delivered: int | None = None) -> FlowStats:
        """This subscription's flow counters (``delivered`` given by the bus for inline)."""
        with self.lock:
            return FlowStats(
                subscription=self.name,
                pattern=self.pattern.source,
                mode=self.mode,
                capacity=self.capacity,
                depth=len(self.queue),
                max_depth=self.max_depth,
                delivered=counter_value(self.delivered) if delivered is None else delivered,
                dropped=self.dropped,
                rejected=self.rejected,
                expired=self.expired,
                errors=counter_value(self.errors),
                backpressure=self.pressured,
                episodes=self.episodes,
                queued_bytes=self._bytes,
                max_queue_bytes=self.max_bytes,
            )
