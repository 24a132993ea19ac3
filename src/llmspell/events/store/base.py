"""The event store protocol: what a bus needs to persist events and what replay reads.

A store *accepts* events with :meth:`EventStore.append` (cheap, may buffer) and commits
them by :meth:`EventStore.flush` at the latest. An accepted event is never silently lost
while the process lives: a failed write is retried; while it keeps failing the events stay
buffered (up to a bound, past which ``append`` refuses with ``StoreFullError``), the failure
is reported (``on_error`` callback, ``stats().write_errors``) and ``flush()`` raises
:class:`~llmspell.errors.StoreError`. Whether a committed event survives the process dying
depends on the store (SQLite: yes; memory: no). Every store reads events back in its own
store order (the order they were committed), not by ``sequence``, which restarts in every
process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol, runtime_checkable

import msgspec

from llmspell.events.event import UniversalEvent

__all__ = ["EventQuery", "EventStore", "StoreStats"]


class EventQuery(msgspec.Struct, frozen=True, kw_only=True):
    """What to read from a store. Every field narrows; ranges are inclusive.

    ``pattern`` uses the bus's pattern syntax; ``run_id`` selects one run's events
    (``metadata.run_id``); ``since``/``until`` are wall-clock seconds;
    ``min_sequence``/``max_sequence`` bound ``event.sequence`` (a per-process number);
    results come in store order, oldest committed first (``descending`` reverses), at most
    ``limit`` of them.
    """

    pattern: str | None = None
    correlation_id: str | None = None
    run_id: str | None = None
    since: float | None = None
    until: float | None = None
    min_sequence: int | None = None
    max_sequence: int | None = None
    limit: int | None = None
    descending: bool = False


class StoreStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counters of a store. ``pending_bytes``: the size of the accepted, unwritten events
    (what a bounded store's ``max_pending_bytes`` limits); ``refused``: appends the store
    did not accept because that bound was reached."""

    accepted: int
    written: int
    pending: int
    write_errors: int
    retries: int
    stored: int
    last_error: str | None = None
    pending_bytes: int = 0
    refused: int = 0


@runtime_checkable
class EventStore(Protocol):
    """A place events are persisted and read back from."""

    on_error: Callable[[Exception], None] | None

    def append(self, event: UniversalEvent) -> None:
        """Accept one event (may buffer; see :meth:`flush`)."""
        ...

    def append_many(self, events: Iterable[UniversalEvent]) -> None:
        """Accept several events, in order."""
        ...

    def flush(self, timeout: float | None = None) -> int:
        """Make every accepted event durable; return how many were written by this call.

        Raises ``StoreError`` if they could not be written (they stay buffered and are
        retried), or ``StoreError`` on timeout.
        """
        ...

    def query(self, query: EventQuery | None = None, **fields: object) -> list[UniversalEvent]:
        """Read events matching ``query`` (or the same fields as keywords)."""
        ...

    def iter_events(self, query: EventQuery | None = None, *, batch_size: int = 1000
                    ) -> Iterator[UniversalEvent]:
        """Read events matching ``query`` lazily, in batches (for replay of large stores).

        Only the events stored when this is called are read: events stored while the
        iterator is consumed (by other writers, or re-published by the replay that consumes
        it) are left out, so the iteration ends even while the store is being written."""
        ...

    def count(self, query: EventQuery | None = None, **fields: object) -> int:
        """How many stored events match."""
        ...

    def apply_retention(self, *, max_age: float | None = None, max_count: int | None = None
                        ) -> int:
        """Delete events older than ``max_age`` seconds and/or all but the newest
        ``max_count``; return how many were deleted."""
        ...

    def stats(self) -> StoreStats:
        """Counters: accepted, written, pending, write errors, retries, stored."""
        ...

    def close(self) -> None:
        """Flush what can be flushed and release resources. Idempotent."""
        ...
