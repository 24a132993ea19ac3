"""Replay from the distributed stream: what :meth:`DistributedBus.replay` does with
``source="stream"``.

The stream is read through a short-lived consumer that starts on the server at
``start_sequence``, or at ``start_time`` (the time the server stored the event), or at the
query's ``since``, or at the oldest event; it ends at ``stop_sequence`` or at the last event
stored when the replay began. The rest of the query (``correlation_id``, ``run_id``,
``since``/``until`` on the event's own timestamp, ``min_sequence``/``max_sequence`` on its
per-process sequence, ``limit``) is applied to each event as it arrives, so the same
:class:`~llmspell.events.store.base.EventQuery` selects the same events from a store and
from the stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from llmspell.core.errors import InvalidValueError
from llmspell.events.event import UniversalEvent
from llmspell.events.pattern import compile_pattern
from llmspell.events.store.base import EventQuery
from llmspell.events.transport.base import Transport

__all__ = ["SOURCES", "choose_source", "query_of", "replay_stream_events"]

SOURCES = ("store", "stream")
"""Where :meth:`DistributedBus.replay` reads: the bus's (or a given) event store, or the
namespace's stream on the server."""

_QUERY_FIELDS = "pattern, correlation_id, run_id, since, until, min_sequence, max_sequence, limit"


def query_of(query: EventQuery | None, fields: dict[str, Any]) -> EventQuery:
    """``query``, or one built from keyword ``fields``; ``InvalidValueError`` for a field
    that is not a query field, or a descending query (replay keeps the original order)."""
    if query is not None and fields:
        raise InvalidValueError("give a query or query fields as keywords, not both",
                                hint=f"the fields: {_QUERY_FIELDS}")
    try:
        selected = query if query is not None else EventQuery(**fields)
    except TypeError as exc:
        raise InvalidValueError(f"bad replay query: {exc}",
                                hint=f"use {_QUERY_FIELDS}") from None
    if selected.descending:
        raise InvalidValueError("replay runs in original order; use descending=False")
    return selected


def choose_source(source: str | None, *, has_store: bool, positions: bool) -> str:
    """The source a replay reads: ``source`` if given (``store``/``stream``), else the stream
    when a stream position is given or no store is at hand, else the store."""
    if source is None:
        return "stream" if positions or not has_store else "store"
    if source not in SOURCES:
        raise InvalidValueError(f"unknown replay source {source!r}",
                                hint="use 'store' or 'stream'")
    if source == "store" and positions:
        raise InvalidValueError(
            "start_sequence, start_time and stop_sequence are positions in the stream",
            hint="use source='stream' (or leave source out), or since/until for the store")
    return source


def _filter(query: EventQuery) -> Callable[[UniversalEvent], bool] | None:
    """A check of the query fields the stream's consumer does not apply itself."""
    checks: list[Callable[[UniversalEvent], bool]] = []
    if query.correlation_id is not None:
        cid = query.correlation_id
        checks.append(lambda e: e.metadata.correlation_id == cid)
    if query.run_id is not None:
        rid = query.run_id
        checks.append(lambda e: e.metadata.run_id == rid)
    if query.since is not None:
        since = query.since
        checks.append(lambda e: e.timestamp >= since)
    if query.until is not None:
        until = query.until
        checks.append(lambda e: e.timestamp <= until)
    if query.min_sequence is not None:
        low = query.min_sequence
        checks.append(lambda e: e.sequence >= low)
    if query.max_sequence is not None:
        high = query.max_sequence
        checks.append(lambda e: e.sequence <= high)
    if not checks:
        return None
    return lambda e: all(check(e) for check in checks)


async def replay_stream_events(
    transport: Transport,
    query: EventQuery,
    publish: Callable[[UniversalEvent], Awaitable[object]],
    *,
    start_sequence: int | None,
    start_time: float | None,
    stop_sequence: int | None,
    pace: float | None,
) -> int:
    """Hand ``publish`` each stored event the query selects, in stream order (at the
    original pace times ``pace``, or as fast as possible when None); returns how many."""
    pattern = query.pattern or "**"
    compile_pattern(pattern)
    if start_sequence is not None and (not isinstance(start_sequence, int)
                                       or start_sequence < 1):
        raise InvalidValueError(f"start_sequence must be an int >= 1, got {start_sequence!r}",
                                hint="stream sequences start at 1")
    if stop_sequence is not None and (not isinstance(stop_sequence, int) or stop_sequence < 1):
        raise InvalidValueError(f"stop_sequence must be an int >= 1, got {stop_sequence!r}")
    if start_sequence is not None and start_time is not None:
        raise InvalidValueError("give start_sequence or start_time, not both")
    if pace is not None and not pace > 0:
        raise InvalidValueError(f"pace must be > 0 or None, got {pace!r}")
    if start_sequence is None and start_time is None:
        start_time = query.since
    keep = _filter(query)
    limit = query.limit
    if limit is not None and limit < 1:
        return 0
    count = 0
    previous: float | None = None
    deliveries = transport.replay(pattern, start_sequence=start_sequence,
                                  start_time=start_time, stop_sequence=stop_sequence)
    try:
        async for delivery in deliveries:
            event = delivery.event
            if keep is not None and not keep(event):
                continue
            if pace is not None and previous is not None:
                await asyncio.sleep(max(0.0, (event.timestamp - previous) / pace))
            previous = event.timestamp
            await publish(event.as_replayed())
            count += 1
            if limit is not None and count >= limit:
                break
    finally:
        close = getattr(deliveries, "aclose", None)
        if close is not None:  # the reading consumer is deleted now, not at collection
            await close()
    return count
