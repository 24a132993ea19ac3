"""Mirror the distributed stream into an event store: what :meth:`DistributedBus.mirror`
starts.

A mirror is a durable consumer on the namespace's stream (its name is the mirror's, so a
restarted process resumes where its mirror was) that appends every event it receives to a
store, *as it was published*: the same id, run id, correlation id, timestamp and data, not
marked replayed. Events are appended in stream order and acknowledged only once the store
has committed them, a batch at a time (``batch`` events, or what arrived within
``flush_interval`` seconds), so:

* **no gaps**: an event is acked after it is on disk; one whose process died before that is
  delivered again to the mirror's next run;
* **no duplicates**: an event delivered again (its ack was lost) has an id the store holds
  already, and the store keeps one row per id (``INSERT OR IGNORE``; for
  :class:`~llmspell.events.store.MemoryStore`, a redelivered event would be kept twice, so
  mirror into a :class:`~llmspell.events.store.SQLiteStore`);
* **this process's events once**: when the mirror writes into the bus's own store, the
  events this bus published (stored by it already, or kept out by ``persist=False``) are
  skipped by the consumer, never handed to the mirror.

A store that cannot commit (disk full) holds the batch: nothing is acked, the commit is
retried with backoff, and the stream keeps the events meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec

from llmspell.core.errors import InvalidValueError, StoreError, TransportError
from llmspell.core.redact import get_logger
from llmspell.events.store.base import EventStore
from llmspell.events.transport.base import (
    ConsumerOptions,
    ConsumerState,
    Delivery,
    Transport,
    TransportSubscription,
    validate_consumer_name,
)

__all__ = ["MirrorStats", "StreamMirror"]

logger = get_logger("llmspell.events.mirror")

_MAX_DELIVER = 1_000_000
"""Deliveries of one event before the server gives up on it: a mirror never gives up
(an event it could not store is retried, not dropped)."""


class MirrorStats(msgspec.Struct, frozen=True, kw_only=True):
    """One mirror's counters: events ``received`` from the stream, ``committed`` to the
    store (and acked), ``pending`` (appended, not yet committed), commit ``batches``,
    commits that failed (``store_errors``) and acks the server did not confirm
    (``ack_failures``: those events come again and are ignored by the store), the highest
    stream sequence committed, whether it is running, and the events ``parked`` on its
    dead-letter subject because the store refused them for good (too large for it, or not
    storable)."""

    name: str
    pattern: str
    received: int
    committed: int
    pending: int
    batches: int
    store_errors: int
    ack_failures: int
    last_sequence: int
    running: bool
    parked: int = 0


class StreamMirror:
    """Copies the stream's events matching ``pattern`` into ``store`` (module docstring).

    Made by :meth:`DistributedBus.mirror`; ``start="all"`` (default) begins a new mirror
    with every event the stream holds, ``"new"`` with those stored from now on;
    ``start_sequence``/``start_time`` at that position. An existing mirror (same name)
    resumes where it was. ``skip_origin``: the bus whose events are not mirrored.
    """

    def __init__(
        self,
        transport: Transport,
        store: EventStore,
        *,
        name: str,
        pattern: str = "**",
        start: str = "all",
        start_sequence: int | None = None,
        start_time: float | None = None,
        batch: int = 256,
        flush_interval: float = 0.05,
        skip_origin: str | None = None,
        ack_wait: float = 30.0,
    ) -> None:
        validate_consumer_name(name)
        if not isinstance(batch, int) or not 1 <= batch <= 10_000:
            raise InvalidValueError(f"a mirror's batch must be an int from 1 to 10000, got "
                                    f"{batch!r}", hint="the default is 256")
        if not flush_interval > 0:
            raise InvalidValueError(f"flush_interval must be > 0 seconds, got "
                                    f"{flush_interval!r}")
        self.name = name
        self.pattern = pattern
        self.store = store
        self.transport = transport
        self._batch = batch
        self._flush_interval = float(flush_interval)
        self.options = ConsumerOptions(
            durable=name, start=start, start_sequence=start_sequence, start_time=start_time,
            ack_wait=ack_wait, max_deliver=_MAX_DELIVER, max_ack_pending=max(1000, 4 * batch),
            batch=batch, skip_origin=skip_origin)
        self._pending: list[Delivery] = []
        self._timer: asyncio.TimerHandle | None = None
        self._commit_lock = asyncio.Lock()
        self._tsub: TransportSubscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._retry = 0.0
        self._received = 0
        self._committed = 0
        self._batches = 0
        self._store_errors = 0
        self._ack_failures = 0
        self._parked = 0
        self._last_sequence = 0

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._tsub is not None

    async def start(self) -> None:
        """Create (or resume) the durable consumer and start receiving. On the transport's
        loop."""
        if self._tsub is None:
            self._tsub = await self.transport.subscribe(self.pattern, self._receive,
                                                        self.options)

    async def _receive(self, delivery: Delivery) -> None:
        self._received += 1
        try:
            self.store.append(delivery.event)
        except InvalidValueError as exc:  # never storable (too large, unencodable): park it
            await self._park(delivery, exc)
            return
        self._pending.append(delivery)
        if len(self._pending) >= self._batch:
            await self.commit()  # holds the next delivery back: the store sets the pace
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(
                self._flush_interval + self._retry, self._spawn, self.commit)

    async def _park(self, delivery: Delivery, exc: InvalidValueError) -> None:
        """Park an event the store refuses for good on the mirror's dead-letter subject (a
        redelivery would be refused again, a million times), and report it."""
        event = delivery.event
        try:
            await self.transport.park(delivery, consumer=self.name, reason="refused by the store",
                                      error_type=type(exc).__name__, message=str(exc))
        except TransportError as error:  # unsettled: delivered again, and parked then
            logger.error("mirror %r: %s", self.name, error)
            return
        try:
            await delivery.term()
        except TransportError as error:
            logger.warning("mirror %r: %s", self.name, error)
        self._parked += 1
        logger.error("mirror %r parked event %s (%s): the store refused it: %s", self.name,
                     event.id, event.event_type, exc)

    def _spawn(self, make: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._timer = None
        task = asyncio.get_running_loop().create_task(make())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def commit(self) -> None:
        """Commit what was appended and ack it (one batch at a time). A store error keeps
        the batch for the next try (after a backoff); nothing is acked."""
        async with self._commit_lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            batch, self._pending = self._pending, []
            if not batch:
                return
            try:
                # Commits what was appended before this call: the batch (and no later
                # event goes in it while the store works).
                await asyncio.to_thread(self.store.flush)
            except StoreError as exc:
                self._pending = batch + self._pending
                self._store_errors += 1
                self._retry = min(max(2 * self._retry, 0.1), 5.0)
                logger.error("mirror %r: the store did not commit %d event(s) (%s); "
                             "retrying in %.1f s", self.name, len(batch), exc, self._retry)
                if self._timer is None and self._tsub is not None:
                    self._timer = asyncio.get_running_loop().call_later(
                        self._retry, self._spawn, self.commit)
                return
            self._retry = 0.0
            results = await asyncio.gather(*(d.ack() for d in batch), return_exceptions=True)
            failed = [r for r in results if isinstance(r, TransportError)]
            self._ack_failures += len(failed)
            if failed:
                logger.warning("mirror %r: %d ack(s) not confirmed (%s); those events come "
                               "again and the store keeps them once", self.name, len(failed),
                               failed[0])
            self._committed += len(batch)
            self._batches += 1
            self._last_sequence = max(self._last_sequence, *(d.sequence for d in batch))

    async def state(self) -> ConsumerState:
        """The mirror's consumer as the server sees it."""
        if self._tsub is None:
            raise InvalidValueError(f"mirror {self.name!r} is not running")
        return await self._tsub.state()

    async def caught_up(self, timeout: float = 30.0) -> None:
        """Wait (on the transport's loop) until the mirror has committed every event the
        stream holds for it: nothing pending on the server, nothing unacked, nothing
        waiting for the store. ``TimeoutError`` after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            # A commit in flight has taken its batch out of _pending (and not acked it yet),
            # so it counts as not caught up until it is done.
            if not self._pending and not self._busy() and self._tsub is not None:
                state = await self._tsub.state()
                if (not state.pending and not state.ack_pending and not self._pending
                        and not self._busy()):
                    return
            if loop.time() > deadline:
                raise TimeoutError(f"mirror {self.name!r} did not catch up within "
                                   f"{timeout:g} s ({self.stats()})")
            await asyncio.sleep(0.02)

    def _busy(self) -> bool:
        """True while a commit runs or is about to (its batch is out of ``_pending``)."""
        return self._commit_lock.locked() or bool(self._tasks)

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop receiving (what was fetched but not handed over is given back), commit
        and ack what was appended. The consumer stays on the server: a mirror started
        again with the same name resumes. Idempotent."""
        tsub, self._tsub = self._tsub, None
        if tsub is not None:
            await tsub.stop(timeout)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task
        await self.commit()

    def stats(self) -> MirrorStats:
        """The mirror's counters."""
        return MirrorStats(
            name=self.name, pattern=self.pattern, received=self._received,
            committed=self._committed, pending=len(self._pending), batches=self._batches,
            store_errors=self._store_errors, ack_failures=self._ack_failures,
            last_sequence=self._last_sequence, running=self.running, parked=self._parked)
