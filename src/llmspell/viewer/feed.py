"""What one browser is sent: events in the page's wire form, through a bounded buffer that
summarises instead of growing when the browser reads slower than events arrive.

An :class:`Item` is one event as the page sees it, encoded once (by the hub) and shared by
every client: ``{"p": position, "t": type, "ts": time, "r": run, "c": correlation, "s":
source, "d": data}``, where ``d`` is cut to a short preview (``"x": true``) when the data is
larger than :data:`PREVIEW_BYTES` (the page fetches the whole event on demand). An event
that cannot be encoded (data nested deeper than the encoder recurses, values it refuses) is
sent with a small placeholder as its data (:func:`unshown`; ``Item.unshown`` is set) rather
than stopping the stream: its id, type and time are kept. Event types longer than
:data:`~llmspell.events.event.MAX_EVENT_TYPE_LENGTH` are cut (:func:`bounded_type`).

A :class:`Feed` belongs to one connection. The hub pushes every new item into every feed;
a feed keeps the items its pattern matches, at most ``max_items`` of them and
``max_bytes`` in total. When one more would pass either bound, the *oldest* buffered items
are dropped and counted per event type (:class:`Skipped`): the browser stays live (it gets
the newest events) and is told, in one ``coalesced`` message, how many events of which
types it did not get and between which positions. A feed's memory is therefore bounded
whatever the event rate, the number of types included (at most :data:`MAX_SKIPPED_TYPES`
are named, the rest are counted together).

Why hand-written: a deque with two bounds and a per-type tally is a few lines; a broker or
a queue library would add a dependency without the summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec

from llmspell.events.event import MAX_EVENT_TYPE_LENGTH, UniversalEvent

__all__ = [
    "MAX_SKIPPED_TYPES",
    "PREVIEW_BYTES",
    "Feed",
    "Item",
    "Skipped",
    "bounded_type",
    "encode_item",
    "unshown",
]

PREVIEW_BYTES = 1024
"""Event data larger than this (encoded) is sent as a preview of this many bytes."""
MAX_SKIPPED_TYPES = 32
"""How many event types a :class:`Skipped` summary names; the others are counted as
``"(other types)"``."""
OTHER_TYPES = "(other types)"
UNSHOWABLE: tuple[type[Exception], ...] = (RecursionError, msgspec.MsgspecError, ValueError,
                                           TypeError, OverflowError)
"""What decoding, summarising or encoding one hostile event can raise (``RecursionError``
for data nested thousands deep): caught per event, never allowed to stop the viewer."""

_encode = msgspec.json.Encoder().encode


class _Wire(msgspec.Struct, omit_defaults=True):
    """The page's form of an event (short keys: at 10,000 events/s every byte counts)."""

    p: int
    t: str
    ts: float
    d: msgspec.Raw
    r: str | None = None
    c: str | None = None
    s: str | None = None
    x: bool = False


class Item:
    """One event, encoded for the page once and shared by every feed. ``unshown``: its data
    could not be encoded and was replaced by a placeholder."""

    __slots__ = ("cursor", "event_type", "unshown", "wire")

    def __init__(self, cursor: int, event_type: str, wire: bytes, unshown: bool = False
                 ) -> None:
        self.cursor = cursor
        self.event_type = event_type
        self.wire = wire
        self.unshown = unshown

    @property
    def size(self) -> int:
        """What the item costs a buffer: its encoded bytes plus the object's overhead."""
        return len(self.wire) + 100

    def __repr__(self) -> str:
        return f"Item({self.cursor}, {self.event_type!r}, {len(self.wire)} bytes)"


def unshown(reason: BaseException | str) -> dict[str, str]:
    """The placeholder data of an event the viewer cannot show (``reason``: why)."""
    why = reason if isinstance(reason, str) else type(reason).__name__
    return {"unshown": "the viewer cannot show this event's data: it is nested too deeply "
                       f"or cannot be encoded ({why[:200]}); see it with llmspell events "
                       "query"}


def bounded_type(event: UniversalEvent) -> UniversalEvent:
    """``event``, or a copy of it whose type is cut to
    :data:`~llmspell.events.event.MAX_EVENT_TYPE_LENGTH` characters when it is longer (an
    event from another writer or a remote bus, which do not check types): a longer type
    would make every page's pattern matching and type caches cost as much as it is long."""
    event_type = event.event_type
    if isinstance(event_type, str) and len(event_type) <= MAX_EVENT_TYPE_LENGTH:
        return event
    text = event_type if isinstance(event_type, str) else repr(type(event_type))
    cut = copy.copy(event)
    msgspec.structs.force_setattr(cut, "event_type", text[:MAX_EVENT_TYPE_LENGTH - 3] + "...")
    return cut


def encode_item(cursor: int, event: UniversalEvent) -> Item:
    """``event`` (at ``cursor``) in the page's wire form; its data replaced by a placeholder
    (:func:`unshown`) when it cannot be encoded."""
    event_type = event.event_type
    meta = event.metadata
    try:
        data = _encode(event.data)
        cut = len(data) > PREVIEW_BYTES
        if cut:
            preview = data[:PREVIEW_BYTES].decode("utf-8", "ignore")
            data = _encode(preview + "...")
        wire = _encode(_Wire(p=cursor, t=event_type, ts=event.timestamp,
                             d=msgspec.Raw(data), r=meta.run_id, c=meta.correlation_id,
                             s=meta.source, x=cut))
    except UNSHOWABLE as exc:
        placeholder = _encode(unshown(exc))
        try:
            wire = _encode(_Wire(p=cursor, t=event_type, ts=event.timestamp,
                                 d=msgspec.Raw(placeholder), r=meta.run_id,
                                 c=meta.correlation_id, s=meta.source))
        except UNSHOWABLE:  # metadata the encoder refuses as well: the position alone
            wire = _encode(_Wire(p=cursor, t=str(event_type)[:MAX_EVENT_TYPE_LENGTH],
                                 ts=0.0, d=msgspec.Raw(placeholder)))
        return Item(cursor, str(event_type), wire, unshown=True)
    return Item(cursor, event_type, wire)


class Skipped:
    """Events a feed dropped (or a backfill left out): how many, of which types, and the
    positions they lie between."""

    __slots__ = ("count", "first", "last", "overload", "types")

    def __init__(self) -> None:
        self.count = 0
        self.first = 0
        self.last = 0
        self.overload = False
        """Some of them were skipped by the hub itself (it could not keep up), not by the
        connection's buffer."""
        self.types: dict[str, int] = {}

    def add(self, cursor: int, event_type: str, count: int = 1, *,
            first: int | None = None) -> None:
        """Count ``count`` events of ``event_type`` at (or up to) ``cursor`` (from ``first``
        when they are a range)."""
        if not self.count:
            self.first = cursor if first is None else first
        self.count += count
        self.last = max(self.last, cursor)
        types = self.types
        if event_type in types or len(types) < MAX_SKIPPED_TYPES:
            types[event_type] = types.get(event_type, 0) + count
        else:
            types[OTHER_TYPES] = types.get(OTHER_TYPES, 0) + count

    def as_dict(self, reason: str) -> dict[str, Any]:
        """The ``coalesced`` message's data: count, types (most first), positions, why
        (``overload`` when the hub skipped some, whatever ``reason`` says)."""
        ranked = dict(sorted(self.types.items(), key=lambda kv: -kv[1]))
        return {"count": self.count, "types": ranked, "from": self.first,
                "to": self.last, "reason": "overload" if self.overload else reason}


class Feed:
    """The bounded buffer of one connection (see the module docstring).

    ``matches`` decides which event types the connection wants (None: all); its answers
    are cached per type (bounded). ``push`` never blocks and never grows the buffer past
    ``max_items`` items or ``max_bytes`` bytes; ``take`` empties it in order.
    """

    def __init__(self, matches: Callable[[str], bool] | None = None, *,
                 max_items: int = 5000, max_bytes: int = 4 * 1024 * 1024) -> None:
        if max_items < 1 or max_bytes < 1:
            raise ValueError("a feed needs max_items >= 1 and max_bytes >= 1")
        self.matches = matches
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: deque[Item] = deque()
        self._bytes = 0
        self._skipped: Skipped | None = None
        self._cache: dict[str, bool] = {}
        self._wake = asyncio.Event()
        self.pushed = 0
        """Items accepted (matching) so far."""
        self.dropped = 0
        """Items dropped because the buffer was full, so far."""

    def wants(self, event_type: str) -> bool:
        """Whether this feed keeps events of ``event_type``."""
        matches = self.matches
        if matches is None:
            return True
        cache = self._cache
        hit = cache.get(event_type)
        if hit is None:
            if len(cache) >= 4096:
                cache.clear()
            hit = cache[event_type] = matches(event_type)
        return hit

    def push(self, item: Item) -> None:
        """Buffer ``item`` if the feed wants it, dropping the oldest items past the bounds."""
        if not self.wants(item.event_type):
            return
        items = self._items
        items.append(item)
        self._bytes += item.size
        self.pushed += 1
        if len(items) > self.max_items or self._bytes > self.max_bytes:
            skipped = self._skipped
            if skipped is None:
                skipped = self._skipped = Skipped()
            while len(items) > 1 and (len(items) > self.max_items
                                      or self._bytes > self.max_bytes):
                old = items.popleft()
                self._bytes -= old.size
                skipped.add(old.cursor, old.event_type)
                self.dropped += 1
        self._wake.set()

    def skip(self, cursor: int, event_type: str, count: int = 1, *,
             first: int | None = None) -> None:
        """Record events the connection will not get because the hub skipped them (it
        fell too far behind the source), if the feed wants their type."""
        if not self.wants(event_type):
            return
        skipped = self._skipped
        if skipped is None:
            skipped = self._skipped = Skipped()
        skipped.add(cursor, event_type, count, first=first)
        skipped.overload = True
        self.dropped += count
        self._wake.set()

    def take(self, max_items: int = 500, max_bytes: int = 512 * 1024
             ) -> tuple[list[Item], Skipped | None]:
        """The oldest buffered items (up to the limits, at least one when any is buffered)
        and the summary of what was dropped before them (None when nothing was)."""
        skipped, self._skipped = self._skipped, None
        items = self._items
        out: list[Item] = []
        size = 0
        while items and len(out) < max_items and (not out or size + items[0].size <= max_bytes):
            item = items.popleft()
            size += item.size
            out.append(item)
        self._bytes -= size
        if not items and self._skipped is None:
            self._wake.clear()
        return out, skipped

    @property
    def depth(self) -> int:
        """Items buffered now."""
        return len(self._items)

    @property
    def buffered_bytes(self) -> int:
        """Bytes buffered now (as counted against ``max_bytes``)."""
        return self._bytes

    def has_data(self) -> bool:
        """Whether :meth:`take` would return something."""
        return bool(self._items) or self._skipped is not None

    async def wait(self, timeout: float) -> None:
        """Wait until something is buffered, at most ``timeout`` seconds."""
        if self.has_data():
            return
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    def wake(self) -> None:
        """Wake a waiting :meth:`wait` (the hub has news for the connection)."""
        self._wake.set()
