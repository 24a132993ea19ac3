"""A subscription: a pattern, a handler and, for queued delivery, a bounded queue.

The queue is a ``deque`` guarded by a ``threading.Lock`` so that publishers on any thread and
the consumer (a queued handler's drain, or a stream's reader) agree on depth, water marks
and overflow. It is bounded twice: by ``capacity`` events and by ``max_bytes`` (the sum of
the queued events' sizes, see :func:`~llmspell.events.event.event_size`); either bound
being reached makes the queue full for the overflow strategy.

A queued handler is driven without a task switch per event. The publish that makes an idle
queue non-empty schedules one drain callback on the loop (``call_soon``, or
``call_soon_threadsafe`` from another thread); the drain takes events one at a time and
calls the handler, driving the coroutine it returns with ``send(None)``. A handler that
finishes without suspending (the common case) costs no future, no task step. One that
suspends (awaits I/O, a sleep, a lock) is handed, where it stopped, to the subscription's
long-lived worker task, which awaits it to the end and drains on; once the queue is empty
the drain callback takes over again. So one handler call of a subscription runs at a time,
in queue order. Both run in the worker's context (copied when it started, as a task's is)
and with the worker as :func:`asyncio.current_task`, so a handler sees the same task
whether or not it has suspended yet (``asyncio.timeout`` and task groups work from its first
line, and cancel the task that runs it). Subsequent events (and a busy queue) cost no
wake-ups at all. A stream's reader waits on one asyncio future that a publisher completes
only when the reader is idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import itertools
import threading
import time
import types
from asyncio.tasks import _enter_task, _leave_task
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from time import perf_counter_ns
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
Failed = Callable[["Subscription", UniversalEvent, Exception], None]
"""Reports a queued handler's failure (the bus counts it, calls on_error, publishes it)."""

_Coroutine = types.CoroutineType
_BATCH = 256
"""Events one drain callback delivers before it yields the loop to other callbacks."""


class _Job:
    """A handler call that suspended in the drain callback, for the worker to finish."""

    __slots__ = ("coro", "event", "pending", "start")

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any, event: UniversalEvent,
                 start: int) -> None:
        self.coro = coro
        self.pending = pending  # what the coroutine yielded: a future, or None (a bare yield)
        self.event = event
        self.start = start


_END = _Job.__new__(_Job)
"""Handed to the worker when the subscription is closed and drained: it returns."""


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], pending: Any,
            thrown: BaseException | None) -> Generator[Any, Any, Any]:
    """Await ``coro``, which was started outside the awaiting task and is suspended on
    ``pending``: the task waits for ``pending`` as if it had awaited it itself; values and
    exceptions (cancellation) go on into ``coro``. ``thrown``: raise this into ``coro``
    first (the task was cancelled before it took the call over)."""
    if thrown is not None:
        try:
            pending = coro.throw(thrown)
        except StopIteration as stop:
            return stop.value
    while True:
        try:
            sent = yield pending
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                pending = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                pending = coro.send(sent)
            except StopIteration as stop:
                return stop.value


async def _awaiting(awaitable: Awaitable[Any]) -> Any:
    """A coroutine for a handler's awaitable that is not one (a future, a custom object)."""
    return await awaitable


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
        "_baton",
        "_blocked",
        "_bytes",
        "_context",
        "_ended",
        "_ep_dropped",
        "_ep_rejected",
        "_failed",
        "_handle",
        "_idle",
        "_ready",
        "_space_waiters",
        "_stash",
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
        # Handler delivery (see the module docstring): _idle is True while no drain is
        # scheduled or running and the worker carries no call, so the next offer schedules
        # one; _ended once closed and drained. Both change under the lock.
        self._idle = False
        self._ended = False
        self._baton: asyncio.Future[_Job] | None = None
        self._stash: _Job | None = None
        self._context: contextvars.Context | None = None
        self._handle: asyncio.Handle  # set by start(), with _ready
        self._ready: deque[asyncio.Handle] | None = None
        self._failed: Failed | None = None

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
        with self.lock:
            queue = self.queue
            depth = len(queue) + 1
            # The common case, in one pass: room, and below the high-water mark (or
            # already pressured); a consumer to wake only if it is idle.
            fast = (depth <= self.capacity and not waiting and not self.closed
                    and (depth < self.high_water or self.pressured)
                    and (depth == 1 or self._bytes + size <= self.max_bytes))
            if fast:
                queue.append(event)
                self.sizes.append(size)
                self._bytes += size
                if depth > self.max_depth:
                    self.max_depth = depth
                waiter = self._waiter
                if waiter is None:
                    if not self._idle:
                        return True
                    self._idle = False
                else:
                    self._waiter = None
        if not fast:
            return self._offer(event, size, quiet, block, waiting)
        if waiter is None:
            self._kick()
        else:
            self._wake(waiter)
        return True

    def _offer(self, event: UniversalEvent, size: int, quiet: bool, block: bool,
               waiting: bool) -> bool:
        """:meth:`offer` past its common case: overflow, water marks, a waiting publisher."""
        notices: list[tuple[BackpressureKind, str]] = []
        error: QueueFullError | None = None
        waiter: asyncio.Future[None] | None = None
        kick = False
        with self.lock:
            if self.closed:
                # A waiting publisher's event was counted by close(); one that raced the
                # close (it passed the bus's gate first) is lost here: count it too.
                if not waiting:
                    self.dropped += 1
                return True
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
                elif self._idle:
                    self._idle = False
                    kick = True
        if kick:
            self._kick()
        elif waiter is not None:
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
        """True while the consumer waits for events (its queue was empty): a stream's
        reader waits, or a handler's drain is neither scheduled nor running a call."""
        return self._idle or self._waiter is not None

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

    # -- handler delivery (queued handlers; see the module docstring) -------------------
    def start(self, failed: Failed) -> asyncio.Task[None]:
        """Start delivering to the handler, on the running loop (``self.loop``): creates
        the worker task and returns it. ``failed`` reports a handler's exception."""
        loop = self.loop
        assert loop is not None and self.handler is not None
        self._failed = failed
        context = self._context = contextvars.copy_context()
        self._handle = asyncio.Handle(self._drain, (), loop, context)
        ready = getattr(loop, "_ready", None)
        # A standard asyncio loop keeps its ready callbacks in a deque, ``_ready``; another
        # loop (uvloop), or debug mode (which checks the calling thread), gets call_soon.
        if isinstance(loop, asyncio.BaseEventLoop) and type(ready) is deque \
                and not loop.get_debug():
            self._ready = ready
        self.worker = loop.create_task(self._work(None), name=f"llmspell-sub-{self.name}",
                                       context=context)
        with self.lock:
            # An event offered before the worker existed is delivered now.
            if self.queue or self.closed:
                self._kick()
            else:
                self._idle = True
        return self.worker

    def _kick(self) -> None:
        """Schedule a drain (the caller took it over from the idle state)."""
        if threading.get_ident() == self.loop_thread:
            ready = self._ready
            if ready is not None:
                # What call_soon does, without building a Handle each time: at most one
                # drain is scheduled at a time, so one Handle serves them all.
                ready.append(self._handle)
                return
            loop = self.loop
            assert loop is not None
            with contextlib.suppress(RuntimeError):  # closed: nothing delivers any more
                loop.call_soon(self._drain, context=self._context)
        else:
            loop = self.loop
            assert loop is not None
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._drain, context=self._context)

    def _next(self) -> UniversalEvent | None:
        """The next event for the handler; None when there is none, after going idle (the
        next offer schedules a drain) or, once closed, ending (``_ended``)."""
        notices: list[tuple[BackpressureKind, str]] | None = None
        spaces: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] | None = None
        with self.lock:
            queue = self.queue
            if not queue:
                if self.closed:
                    self._ended = True
                else:
                    self._idle = True
                return None
            event = queue.popleft()
            self._bytes -= self.sizes.popleft()
            if not (self.pressured or self._blocked or self._space_waiters):
                return event
            if self.pressured and len(queue) <= self.low_water:
                self.pressured = False
                notices = [(BackpressureKind.RELIEVED, f"depth fell to {len(queue)}")]
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

    def _drain(self) -> None:
        """The drain callback: deliver queued events until the queue is empty, a handler
        suspends (the worker takes it over) or :data:`_BATCH` were delivered (another drain
        is scheduled, so other callbacks get the loop)."""
        loop = self.loop
        worker = self.worker
        assert loop is not None and worker is not None
        # The handler runs as part of the worker task, which finishes it if it suspends.
        _enter_task(loop, worker)
        try:
            self._deliver_eagerly()
        except BaseException:
            # KeyboardInterrupt, SystemExit: let it through, but leave no stuck queue.
            loop.call_soon(self._drain, context=self._context)
            raise
        finally:
            _leave_task(loop, worker)

    def _deliver_eagerly(self) -> None:
        handler = self.handler
        assert handler is not None
        take = self._next
        clock = self.clock
        delivered = self.delivered
        latency = self.latency
        for _ in range(_BATCH):
            event = take()
            if event is None:
                if self._ended:
                    self._hand_over(_END)
                return
            if event.metadata.ttl is not None and event.expired(clock.now()):
                self.expired += 1
                continue
            next(delivered)
            start = perf_counter_ns()
            try:
                result = handler(event)
                if result is not None:
                    if type(result) is not _Coroutine:
                        result = _awaiting(result) if inspect.isawaitable(result) else None
                    if result is not None:
                        # Iterating runs the coroutine like send(None), but its end costs
                        # no StopIteration; a first item means it suspended.
                        for pending in result.__await__():
                            self._hand_over(_Job(result, pending, event, start))
                            return
            except Exception as exc:
                self._fail(event, exc)
            except asyncio.CancelledError:
                pass  # the handler cancelled itself: the call is over
            latency.append(perf_counter_ns() - start)
        self.loop.call_soon(self._drain, context=self._context)  # type: ignore[union-attr]

    def _hand_over(self, job: _Job) -> None:
        """Give the worker a suspended call (or :data:`_END`)."""
        baton = self._baton
        if baton is not None and not baton.done():
            baton.set_result(job)
        elif baton is not None and baton.cancelled() and self.worker is not None \
                and not self.worker.done():
            # The worker was cancelled during this very call (it is the call's task), and
            # wakes with the CancelledError: it takes the call from here and raises it in.
            self._stash = job
        elif job is not _END:
            # The worker is gone (cancelled with its loop's tasks): a new one finishes it.
            assert self.loop is not None
            self.worker = self.loop.create_task(
                self._work(job), name=f"llmspell-sub-{self.name}", context=self._context)

    def _fail(self, event: UniversalEvent, exc: Exception) -> None:
        failed = self._failed
        assert failed is not None
        failed(self, event, exc)

    async def _work(self, job: _Job | None) -> None:
        """The worker task: waits while the drain callback delivers; finishes a handler
        call that suspended there, then delivers on until the queue is empty. Returns once
        the subscription is closed and drained."""
        loop = self.loop
        assert loop is not None
        try:
            while True:
                thrown: BaseException | None = None
                if job is None:
                    if self._ended:  # closed and drained before this task first ran
                        return
                    baton: asyncio.Future[_Job] = loop.create_future()
                    self._baton = baton
                    try:
                        job = await baton
                    except asyncio.CancelledError as exc:
                        # Cancelled during or after a call was handed over: the call gets it.
                        if baton.cancelled():
                            stashed, self._stash = self._stash, None
                            if stashed is None or stashed is _END:
                                raise
                            job = stashed
                        elif baton.done():
                            job = baton.result()
                        else:
                            raise
                        thrown = exc
                if job is _END:
                    return
                try:
                    await _resume(job.coro, job.pending, thrown)
                except Exception as exc:
                    self._fail(job.event, exc)
                self.latency.append(perf_counter_ns() - job.start)
                job = None
                await self._deliver_awaiting()
                if self._ended:
                    return
        except BaseException:
            with self.lock:
                # Cancelled: a later offer schedules a drain (it starts a new worker if a
                # handler suspends), so the queue is never left stuck. A worker already
                # replaced leaves the state to its successor. (The loop is named: a worker
                # whose loop was closed under it is closed by the collector, with no loop
                # running, and must not raise a second error then.)
                if not self._ended and self.worker is asyncio.current_task(loop):
                    self._idle = True
            raise

    async def _deliver_awaiting(self) -> None:
        """Deliver queued events inside the worker until the queue is empty, yielding the
        loop every :data:`_BATCH` events: awaiting a handler that finishes without
        suspending does not yield, so a backlog would otherwise starve every other task."""
        handler = self.handler
        assert handler is not None
        clock = self.clock
        streak = 0
        while True:
            if streak >= _BATCH:
                streak = 0
                await asyncio.sleep(0)  # before taking the next event: a cancel loses none
            event = self._next()
            if event is None:
                return
            streak += 1
            if event.metadata.ttl is not None and event.expired(clock.now()):
                self.expired += 1
                continue
            next(self.delivered)
            start = perf_counter_ns()
            try:
                result = handler(event)
                if result is not None and (type(result) is _Coroutine
                                           or inspect.isawaitable(result)):
                    await result
            except Exception as exc:
                self._fail(event, exc)
            self.latency.append(perf_counter_ns() - start)

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
            kick = self._idle
            self._idle = False
            spaces = self._space_waiters
            self._space_waiters = []
            self.not_full.notify_all()
        if kick:
            self._kick()  # the drain delivers what is left, then ends the worker
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
