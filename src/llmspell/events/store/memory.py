"""An in-memory, bounded, thread-safe event store (for tests, development and short runs).

``append`` stores the event at once, so :meth:`MemoryStore.flush` has nothing to do and never
fails: an event is committed (visible to reads) when ``append`` returns, but nothing
survives the process. Events are kept and read in the order they were appended (the store
order; ``sequence`` is only ordered within the process that created the event). Past
``max_events`` the oldest stored event is dropped (counted in
:attr:`MemoryStore.evicted`). Like the SQLite store, an event whose ``id`` is already stored
is ignored (counted in :attr:`MemoryStore.duplicates`), so a retried append cannot duplicate.

This module also holds the query helpers both stores share: :func:`resolve_query` (an
:class:`EventQuery` from a query and/or keywords, validated) and :func:`event_matches`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator

import msgspec

from llmspell.core.clock import SYSTEM_CLOCK, Clock
from llmspell.core.errors import InvalidValueError, SerializationError, StoreError, brief
from llmspell.core.values import MAX_INT64, MIN_INT64
from llmspell.events.event import UniversalEvent
from llmspell.events.pattern import EventPattern, compile_pattern
from llmspell.events.store.base import EventQuery, StoreStats

__all__ = ["MemoryStore", "check_retention", "event_matches", "resolve_query"]

_QUERY_FIELDS = tuple(EventQuery.__struct_fields__)



def resolve_query(query: EventQuery | None, fields: dict[str, object]) -> EventQuery:
    """Combine ``query`` and keyword ``fields`` (keywords win) into one checked query.

    Raises :class:`InvalidValueError` for an unknown field, a value of the wrong type, a
    negative ``limit`` or an invalid ``pattern``.
    """
    if query is not None and not isinstance(query, EventQuery):
        raise InvalidValueError(
            f"query must be an EventQuery or None, not {type(query).__name__}",
            hint="pass EventQuery(...) or the same fields as keywords",
        )
    unknown = sorted(set(fields) - set(_QUERY_FIELDS))
    if unknown:
        raise InvalidValueError(
            f"unknown query field(s): {', '.join(unknown)}",
            hint="valid fields are " + ", ".join(_QUERY_FIELDS),
        )
    base = msgspec.structs.asdict(query) if query is not None else {}
    base.update(fields)
    try:
        resolved = msgspec.convert(base, EventQuery, strict=False)
    except msgspec.ValidationError as exc:
        raise InvalidValueError(
            f"invalid event query: {exc}",
            hint="pattern/correlation_id/run_id are strings, since/until seconds, "
            "min_sequence/max_sequence/limit integers, descending a bool",
        ) from exc
    if resolved.limit is not None and resolved.limit < 0:
        raise InvalidValueError(
            f"query limit must be >= 0 or None, got {resolved.limit}",
            hint="use limit=None for no limit",
        )
    for name in ("limit", "min_sequence", "max_sequence"):
        value = getattr(resolved, name)
        if value is not None and not MIN_INT64 <= value <= MAX_INT64:
            raise InvalidValueError(
                f"query {name} {value} does not fit in 64 bits (what a store can compare)",
                hint="use None for no bound" if name != "limit" else "use limit=None for no "
                "limit")
    if resolved.pattern is not None:
        compile_pattern(resolved.pattern)  # raises InvalidValueError saying why
    return resolved


def event_matches(event: UniversalEvent, query: EventQuery,
                  pattern: EventPattern | None = None) -> bool:
    """True when ``event`` satisfies every field of ``query`` except ``limit``/``descending``.

    ``pattern`` is ``query.pattern`` compiled (compiled here when not given).
    """
    if query.pattern is not None:
        if pattern is None:
            pattern = compile_pattern(query.pattern)
        if not pattern.matches(event.event_type):
            return False
    if query.correlation_id is not None and event.metadata.correlation_id != query.correlation_id:
        return False
    if query.run_id is not None and event.metadata.run_id != query.run_id:
        return False
    if query.since is not None and event.timestamp < query.since:
        return False
    if query.until is not None and event.timestamp > query.until:
        return False
    if query.min_sequence is not None and event.sequence < query.min_sequence:
        return False
    return query.max_sequence is None or event.sequence <= query.max_sequence


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidValueError(f"batch_size must be an int >= 1, got {batch_size!r}")


def check_retention(max_age: float | None, max_count: int | None) -> None:
    """Raise :class:`InvalidValueError` unless ``max_age >= 0`` and ``max_count >= 0``."""
    if max_age is not None and not max_age >= 0:
        raise InvalidValueError(
            f"max_age must be >= 0 seconds or None, got {max_age!r}",
            hint="max_age=3600 keeps the last hour",
        )
    if max_count is not None and (not isinstance(max_count, int)
                                  or not 0 <= max_count <= MAX_INT64):
        raise InvalidValueError(
            f"max_count must be an int from 0 to 2**63 - 1, or None, got {max_count!r}",
            hint="max_count=10_000 keeps the newest 10 000 events; None keeps them all",
        )


class MemoryStore:
    """A bounded in-memory store; every method is safe to call from any thread.

    ``max_events`` bounds how many events are kept (the oldest appended are dropped first);
    ``clock.now()`` is the wall time :meth:`apply_retention` measures ``max_age`` against.
    Extra counters beyond :class:`StoreStats`: :attr:`evicted` (dropped by the bound) and
    :attr:`duplicates` (appends of an id already stored, ignored).
    """

    on_error: Callable[[Exception], None] | None

    accepts_encoded_data = True
    """An event whose ``data`` is a ``msgspec.Raw`` (JSON the runtime encoded itself, as
    run records are) is kept as it is and decoded once, by the first read that returns it:
    a recording nobody reads costs no decode."""

    def __init__(self, max_events: int = 100_000, *, clock: Clock = SYSTEM_CLOCK,
                 on_error: Callable[[Exception], None] | None = None) -> None:
        if not isinstance(max_events, int) or max_events < 1:
            raise InvalidValueError(
                f"max_events must be an int >= 1, got {max_events!r}",
                hint="the default keeps 100 000 events",
            )
        self.max_events = max_events
        self.on_error = on_error  # never called: in-memory appends do not fail
        self._clock = clock
        self._lock = threading.Lock()
        self._events: OrderedDict[str, UniversalEvent] = OrderedDict()
        self._accepted = 0
        self._closed = False
        self.evicted = 0
        """Events dropped because the store was full."""
        self.duplicates = 0
        """Appends ignored because an event with the same id was stored."""
        self._encoded = 0  # events stored with msgspec.Raw data, not yet decoded

    def _closed_error(self) -> StoreError:
        return StoreError("the memory store is closed",
                          hint="create a new MemoryStore; close() releases its events")

    def _add(self, event: UniversalEvent) -> None:
        # Caller holds the lock.
        if not isinstance(event, UniversalEvent):
            raise InvalidValueError(
                f"a store accepts UniversalEvent, not {type(event).__name__}",
                hint="build events with UniversalEvent.create(...)",
            )
        events = self._events
        if event.id in events:
            self.duplicates += 1
        else:
            events[event.id] = event
            if type(event.data) is msgspec.Raw:
                self._encoded += 1
            if len(events) > self.max_events:
                events.popitem(last=False)
                self.evicted += 1
        self._accepted += 1

    def append(self, event: UniversalEvent) -> None:
        """Store one event now (an id already stored is ignored)."""
        with self._lock:
            if self._closed:
                raise self._closed_error()
            self._add(event)

    def append_many(self, events: Iterable[UniversalEvent]) -> None:
        """Store several events, in order."""
        batch = list(events)
        with self._lock:
            if self._closed:
                raise self._closed_error()
            for event in batch:
                self._add(event)

    def flush(self, timeout: float | None = None) -> int:
        """Nothing to do (appends are immediate); returns 0 and never raises."""
        return 0

    def _snapshot(self, decoded: bool = True) -> list[UniversalEvent]:
        """The stored events; ``decoded``: with encoded data decoded first (a read that
        returns events; a count needs no data)."""
        with self._lock:
            if self._closed:
                raise self._closed_error()
            events = self._events
            if decoded and self._encoded:
                for key in [k for k, e in events.items() if type(e.data) is msgspec.Raw]:
                    event = events[key]
                    try:
                        data = msgspec.json.decode(event.data)
                    except (msgspec.DecodeError, RecursionError) as exc:
                        raise SerializationError(
                            f"cannot decode the data of stored event {key!r}: {brief(exc)}",
                            hint="encoded data (msgspec.Raw) must be the JSON the runtime "
                            "wrote") from None
                    events[key] = msgspec.structs.replace(event, data=data)
                self._encoded = 0
            return list(events.values())

    def query(self, query: EventQuery | None = None, **fields: object) -> list[UniversalEvent]:
        """Events matching ``query`` (or the same fields as keywords), in store order
        (the order they were appended; ``descending`` reverses)."""
        q = resolve_query(query, fields)
        pattern = compile_pattern(q.pattern) if q.pattern is not None else None
        found = [e for e in self._snapshot() if event_matches(e, q, pattern)]
        if q.descending:
            found.reverse()
        if q.limit is not None:
            del found[q.limit:]
        return found

    def iter_events(self, query: EventQuery | None = None, *, batch_size: int = 1000
                    ) -> Iterator[UniversalEvent]:
        """The events :meth:`query` returns, as an iterator over a snapshot taken when this is
        called: events appended while it is consumed (a replay re-publishing into this
        store) are left out, so it always ends."""
        _check_batch_size(batch_size)
        q = resolve_query(query, {})
        return iter(self.query(q))

    def count(self, query: EventQuery | None = None, **fields: object) -> int:
        """How many stored events match (``limit`` caps the answer)."""
        q = resolve_query(query, fields)
        pattern = compile_pattern(q.pattern) if q.pattern is not None else None
        n = sum(1 for e in self._snapshot(decoded=False) if event_matches(e, q, pattern))
        return n if q.limit is None else min(n, q.limit)

    def apply_retention(self, *, max_age: float | None = None, max_count: int | None = None
                        ) -> int:
        """Delete events with ``timestamp < clock.now() - max_age`` and then all but the
        ``max_count`` appended last; return how many were deleted."""
        check_retention(max_age, max_count)
        with self._lock:
            if self._closed:
                raise self._closed_error()
            events = self._events
            before = len(events)
            if max_age is not None:
                cutoff = self._clock.now() - max_age
                for key in [k for k, e in events.items() if e.timestamp < cutoff]:
                    del events[key]
            while max_count is not None and len(events) > max_count:
                events.popitem(last=False)
            return before - len(events)

    def stats(self) -> StoreStats:
        """Counters: everything accepted is written at once, so nothing is ever pending."""
        with self._lock:
            return StoreStats(accepted=self._accepted, written=self._accepted, pending=0,
                              write_errors=0, retries=0, stored=len(self._events))

    def close(self) -> None:
        """Release the events; later appends and reads raise ``StoreError``. Idempotent."""
        with self._lock:
            self._closed = True
            self._events.clear()

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MemoryStore(max_events={self.max_events}, stored={len(self._events)})"
