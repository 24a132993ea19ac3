"""Async streams of events, and composable operators over them.

``bus.stream(pattern)`` returns an :class:`EventStream`: an async iterator backed by a
queued subscription with its own bounded queue (the reader is its consumer; no worker task).
Every stream has ``filtered(predicate)``, ``batched(n, max_wait)`` and ``throttled(rate)``,
each returning another stream, so they compose::

    async for batch in bus.stream("tool.**").filtered(is_error).batched(100, 0.5):
        ...

The operators are cancel-safe: a timeout or cancellation while waiting never loses an event
(a batch in progress and an event held back by a throttle are kept for the next call).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from llmspell.core.errors import InvalidValueError
from llmspell.events.event import UniversalEvent

if TYPE_CHECKING:
    from llmspell.events.subscription import Subscription

__all__ = ["Batched", "EventStream", "Filtered", "Stream", "Throttled"]

T = TypeVar("T")

YIELD_EVERY = 256
"""Events an :class:`EventStream` hands out (or skips as expired) without its reader
suspending before it yields the event loop once: taking an event that is already queued
does not suspend, so a reader of a backlog (a fast publisher, a replay) would otherwise hold
the loop, and starve every other task on it, until the backlog is gone."""


class Stream(Generic[T]):
    """Base of every stream: async iteration plus the composable operators."""

    def __aiter__(self) -> Stream[T]:
        return self

    async def __anext__(self) -> T:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release the stream (and whatever it reads from)."""

    def filtered(self, predicate: Callable[[T], bool]) -> Stream[T]:
        """Only the items for which ``predicate(item)`` is true."""
        return Filtered(self, predicate)

    def batched(self, size: int, max_wait: float | None = None) -> Stream[list[T]]:
        """Lists of up to ``size`` items; a partial list is yielded once its first item has
        waited ``max_wait`` seconds (None: wait for a full batch or the end)."""
        return Batched(self, size, max_wait)

    def throttled(self, rate: float) -> Stream[T]:
        """At most ``rate`` items per second; faster items are delayed, never dropped."""
        return Throttled(self, rate)

    async def __aenter__(self) -> Stream[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class EventStream(Stream[UniversalEvent]):
    """The events of one bus subscription. Closing it unsubscribes."""

    def __init__(self, subscription: Subscription, unsubscribe: Callable[[], object]) -> None:
        self._sub = subscription
        self._unsubscribe = unsubscribe
        self._streak = 0  # events taken since the reader last suspended

    @property
    def name(self) -> str:
        """The subscription's name."""
        return self._sub.name

    async def __anext__(self) -> UniversalEvent:
        sub = self._sub
        while True:
            if self._streak >= YIELD_EVERY:
                # Before taking the next event: a cancellation here loses nothing.
                self._streak = 0
                await asyncio.sleep(0)
            event = sub.take_nowait()
            if event is None:
                self._streak = 0  # take() waits for the next event (it suspends)
                event = await sub.take()
                if event is None:
                    raise StopAsyncIteration
            else:
                self._streak += 1
            if event.metadata.ttl is not None and event.expired(sub.clock.now()):
                sub.expired += 1
                continue
            next(sub.delivered)
            return event

    async def aclose(self) -> None:
        """Unsubscribe; iteration then ends."""
        self._unsubscribe()


class Filtered(Stream[T]):
    """See :meth:`Stream.filtered`."""

    def __init__(self, source: Stream[T], predicate: Callable[[T], bool]) -> None:
        self._source = source
        self._predicate = predicate

    async def __anext__(self) -> T:
        while True:
            item = await self._source.__anext__()
            if self._predicate(item):
                return item

    async def aclose(self) -> None:
        await self._source.aclose()


class Batched(Stream[list[T]]):
    """See :meth:`Stream.batched`."""

    def __init__(self, source: Stream[T], size: int, max_wait: float | None) -> None:
        if size < 1:
            raise InvalidValueError(f"batch size must be >= 1, got {size!r}")
        if max_wait is not None and not max_wait > 0:
            raise InvalidValueError(f"max_wait must be > 0 seconds or None, got {max_wait!r}")
        self._source = source
        self._size = size
        self._max_wait = max_wait
        self._batch: list[T] = []
        self._deadline: float | None = None
        self._ended = False

    async def __anext__(self) -> list[T]:
        if self._ended and not self._batch:
            raise StopAsyncIteration
        loop = asyncio.get_running_loop()
        while len(self._batch) < self._size and not self._ended:
            try:
                if self._deadline is None:
                    item = await self._source.__anext__()
                else:
                    remaining = self._deadline - loop.time()
                    if remaining <= 0:
                        break
                    async with asyncio.timeout(remaining):
                        item = await self._source.__anext__()
            except TimeoutError:
                break
            except StopAsyncIteration:
                self._ended = True
                break
            self._batch.append(item)
            if self._deadline is None and self._max_wait is not None:
                self._deadline = loop.time() + self._max_wait
        if not self._batch:
            raise StopAsyncIteration
        batch, self._batch, self._deadline = self._batch, [], None
        return batch

    async def aclose(self) -> None:
        await self._source.aclose()


class Throttled(Stream[T]):
    """See :meth:`Stream.throttled`."""

    def __init__(self, source: Stream[T], rate: float) -> None:
        if not rate > 0:
            raise InvalidValueError(f"rate must be > 0 items per second, got {rate!r}")
        self._source = source
        self._interval = 1.0 / rate
        self._next_at: float | None = None
        self._held: list[Any] = []

    async def __anext__(self) -> T:
        if not self._held:
            self._held.append(await self._source.__anext__())
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._next_at is not None and self._next_at > now:
            await asyncio.sleep(self._next_at - now)
            now = loop.time()
        self._next_at = max(now, self._next_at or now) + self._interval
        item: T = self._held.pop()
        return item

    async def aclose(self) -> None:
        await self._source.aclose()


async def collect(stream: AsyncIterator[T], limit: int) -> list[T]:
    """Read up to ``limit`` items from ``stream`` (a small helper for tests and scripts)."""
    out: list[T] = []
    async for item in stream:
        out.append(item)
        if len(out) >= limit:
            break
    return out
