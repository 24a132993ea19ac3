"""Where the viewer's events come from: an event store file it follows, or a bus.

Both give every event a *cursor*, an increasing number the browser gets back as the SSE
message id and sends again (``Last-Event-ID``) when it reconnects, so the stream resumes
exactly after the last event it received:

* :class:`StoreSource` follows an SQLite event store (``events.db``) read-only, polling for
  rows after the last position it read. The cursor is the store's ``position``: it survives
  a restart of the viewer and of the programs writing the file, so a reconnect resumes from
  the store even after the viewer restarted. A file that does not exist yet is waited for.
* :class:`BusSource` subscribes to a bus (``make_bus("nats://...")`` for other processes'
  events, or an in-process :class:`~llmspell.events.EventBus`) and keeps the newest events
  in a ring bounded in events and bytes. The cursor counts events since the viewer started
  (its ids carry a per-start prefix, so an id from an earlier viewer is not mistaken for
  one of this one); a reconnect resumes from the ring, and events that have left it are
  reported as skipped.

Reads that touch the disk run on a worker thread, never on the event loop.

A stored row the reader cannot decode (data nested deeper than the decoder recurses, values
an event refuses, a damaged payload) does not stop the viewer: :class:`StoreSource` reads
the batch it is in again row by row and gives that row as an event with its id, type, time
and run but a placeholder as data (counted in :attr:`StoreSource.unshown`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sqlite3
import threading
from collections import deque
from pathlib import Path
from typing import Any, Protocol

from llmspell.core.errors import SerializationError, StoreError
from llmspell.core.text import printable
from llmspell.events.bus import EventBus
from llmspell.events.event import EventMetadata, UniversalEvent, event_size
from llmspell.events.pattern import compile_pattern
from llmspell.events.store.sqlite import SQLiteStoreReader
from llmspell.events.subscription import SubscriptionHandle
from llmspell.viewer.feed import UNSHOWABLE, unshown

__all__ = ["BusSource", "Source", "StoreSource"]

Batch = list[tuple[int, UniversalEvent]]

_UNDECODABLE: tuple[type[Exception], ...] = (*UNSHOWABLE, SerializationError)
"""What decoding one stored row can raise (a ``RecursionError`` for data nested thousands
deep, ``NotJsonSafeError`` for data an event refuses, ``SerializationError`` for a damaged
payload)."""
class Source(Protocol):
    """What the hub reads events from (see the module docstring)."""

    kind: str

    async def start(self) -> None:
        """Open the source (subscribe, or prepare to follow a file)."""
        ...

    async def close(self) -> None:
        """Release it. Idempotent."""
        ...

    async def last(self) -> int:
        """The cursor of the newest event now (0 when there is none)."""
        ...

    async def read_after(self, cursor: int, limit: int, *, pattern: str | None = None,
                         upto: int | None = None) -> Batch:
        """Up to ``limit`` events after ``cursor`` (at most ``upto``), oldest first."""
        ...

    async def newest(self, limit: int, *, pattern: str | None = None,
                     upto: int | None = None) -> Batch:
        """The newest ``limit`` events (at most ``upto``), oldest first."""
        ...

    async def count_types(self, after: int, upto: int) -> dict[str, int]:
        """Events per type with cursors in ``(after, upto]``."""
        ...

    async def get(self, cursor: int) -> UniversalEvent | None:
        """The event at ``cursor``, if the source still has it."""
        ...

    async def wait(self, cursor: int, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) for an event after ``cursor``."""
        ...

    def format_id(self, cursor: int) -> str:
        """The SSE id of ``cursor``."""
        ...

    def parse_id(self, text: str) -> int | None:
        """The cursor an SSE id names, or None when it is not one of this source's."""
        ...

    def describe(self) -> dict[str, Any]:
        """What the page shows about the source (kind, where, status)."""
        ...


class StoreSource:
    """Follows the event store at ``path`` read-only (see the module docstring), checking
    for new rows every ``poll_interval`` seconds when idle."""

    kind = "store"

    def __init__(self, path: str | Path, *, poll_interval: float = 0.1) -> None:
        if not poll_interval > 0:
            raise ValueError("poll_interval must be > 0 seconds")
        self.path = Path(path)
        self.poll_interval = poll_interval
        self._reader: SQLiteStoreReader | None = None
        self._inode: int | None = None
        self._problem: str | None = None
        self._lock = threading.Lock()
        self.unshown = 0
        """Stored events the viewer could not decode and showed as placeholders."""
        self._counted = 0

    async def start(self) -> None:
        """Open the file if it is there (else it is opened once it appears)."""
        await asyncio.to_thread(self._open)

    def _open(self) -> SQLiteStoreReader | None:
        with self._lock:
            if self._reader is not None:
                return self._reader
            if not self.path.is_file():
                self._problem = f"waiting for {self.path} to be created"
                return None
            try:
                self._reader = SQLiteStoreReader(self.path)
                self._inode = os.stat(self.path).st_ino
            except (StoreError, OSError) as exc:
                self._problem = exc.message if isinstance(exc, StoreError) else str(exc)
                return None
            self._problem = None
            return self._reader

    def _reopen_if_replaced(self) -> None:
        """Close the file when the path now names another one (deleted and created again):
        the next read opens the new file."""
        try:
            inode: int | None = os.stat(self.path).st_ino
        except OSError:
            inode = None
        with self._lock:
            reader = self._reader
            if reader is None or inode == self._inode:
                return
            self._reader = None
            self._counted = 0
        reader.close()

    async def close(self) -> None:
        """Close the file. Idempotent."""
        with self._lock:
            reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        reader = self._open()
        if reader is None:
            return None
        try:
            return getattr(reader, name)(*args, **kwargs)
        except StoreError as exc:
            self._problem = exc.message
            return None
        except _UNDECODABLE:
            if name not in ("read_after", "newest"):
                raise
        newest = name == "newest"
        try:
            return self._salvage(reader, 0 if newest else args[0],
                                 args[0] if newest else kwargs["limit"], newest=newest,
                                 pattern=kwargs.get("pattern"), upto=kwargs.get("upto"))
        except (StoreError, sqlite3.Error) as exc:
            self._problem = exc.message if isinstance(exc, StoreError) else str(exc)
            return None

    def _salvage(self, reader: SQLiteStoreReader, after: int, limit: int, *, newest: bool,
                 pattern: str | None, upto: int | None) -> Batch:
        """``reader.read_after`` (or ``reader.newest``) for a batch with a row that cannot
        be decoded: the rows' positions and headers read without their payloads, then each
        row on its own; a row that still fails becomes a placeholder event."""
        headers = reader.headers(after, limit, newest=newest, pattern=pattern, upto=upto)
        if newest:
            headers.reverse()
        out: Batch = []
        for position, event_id, event_type, timestamp, correlation_id, run_id in headers:
            try:
                out += reader.read_after(position - 1, limit=1, upto=position)
            except _UNDECODABLE as exc:
                out.append((position, UniversalEvent(
                    event_type=str(event_type), id=str(event_id), timestamp=float(timestamp),
                    data=unshown(exc), metadata=EventMetadata(
                        correlation_id=correlation_id, run_id=run_id))))
                if position > self._counted:
                    self._counted = position
                    self.unshown += 1
        return out

    async def last(self) -> int:
        """The newest position in the file (0 while there is no file). Notices a file
        replaced by a new one (its positions start again)."""

        def newest() -> Any:
            self._reopen_if_replaced()
            return self._call("last_position")

        found = await asyncio.to_thread(newest)
        return int(found or 0)

    async def read_after(self, cursor: int, limit: int, *, pattern: str | None = None,
                         upto: int | None = None) -> Batch:
        """Rows after position ``cursor``."""
        found = await asyncio.to_thread(self._call, "read_after", cursor, limit=limit,
                                        pattern=pattern, upto=upto)
        return found or []

    async def newest(self, limit: int, *, pattern: str | None = None,
                     upto: int | None = None) -> Batch:
        """The newest rows."""
        found = await asyncio.to_thread(self._call, "newest", limit, pattern=pattern,
                                        upto=upto)
        return found or []

    async def count_types(self, after: int, upto: int) -> dict[str, int]:
        """Rows per type in ``(after, upto]``."""
        found = await asyncio.to_thread(self._call, "count_types", after, upto)
        return found or {}

    async def get(self, cursor: int) -> UniversalEvent | None:
        """The row at position ``cursor``."""
        found = await self.read_after(cursor - 1, 1, upto=cursor)
        return found[0][1] if found else None

    async def wait(self, cursor: int, timeout: float) -> None:
        """Sleep one poll interval (SQLite has no change notification across processes)."""
        await asyncio.sleep(min(timeout, self.poll_interval))

    def format_id(self, cursor: int) -> str:
        """The position itself."""
        return str(cursor)

    def parse_id(self, text: str) -> int | None:
        """A position (a non-negative integer)."""
        text = text.strip()
        return int(text) if text.isascii() and text.isdigit() and len(text) < 20 else None

    def describe(self) -> dict[str, Any]:
        """Kind, path and whether the file is being read (a path's bytes that are not
        UTF-8 shown as U+FFFD: JSON cannot carry them)."""
        return {"kind": self.kind, "where": printable(str(self.path)),
                "status": "reading" if self._reader is not None else "waiting",
                "problem": None if self._problem is None else printable(self._problem)}


class BusSource:
    """Subscribes to ``bus`` (``patterns``, default every event) and keeps the newest
    events in a ring of at most ``max_events`` events and ``max_bytes`` bytes.

    For an in-process bus, note that a subscription to ``**`` makes the runtime publish
    what it otherwise skips when nobody listens (``hook.<point>`` events with per-hook
    timings, ``model.<p>.started``, and ``model.<p>.delta`` events, which make providers
    stream): that is what gives the viewer every step's start and every decision, at the
    cost of building those events. Narrow ``patterns`` to avoid it.
    A distributed bus is connected by :meth:`start` when it is not yet and closed by
    :meth:`close` when ``owns_bus`` is true.
    """

    kind = "bus"

    def __init__(self, bus: EventBus, *, patterns: tuple[str, ...] = ("**",),
                 max_events: int = 20_000, max_bytes: int = 32 * 1024 * 1024,
                 owns_bus: bool = False, where: str | None = None) -> None:
        if max_events < 1 or max_bytes < 1:
            raise ValueError("a bus source needs max_events >= 1 and max_bytes >= 1")
        for pattern in patterns:
            compile_pattern(pattern)
        self.bus = bus
        self.patterns = patterns
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.owns_bus = owns_bus
        self.where = where or type(bus).__name__
        self.boot = secrets.token_hex(4)
        self._ring: deque[tuple[int, UniversalEvent, int]] = deque()
        self._bytes = 0
        self._next = 1
        self._lock = threading.Lock()
        self._handles: list[SubscriptionHandle] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._arrived: asyncio.Event | None = None
        self._waiting = False
        self.evicted = 0
        """Events that left the ring to respect its bounds."""

    async def start(self) -> None:
        """Connect a distributed bus if needed, then subscribe."""
        self._loop = asyncio.get_running_loop()
        self._arrived = asyncio.Event()
        connect = getattr(self.bus, "connect", None)
        if connect is not None and not getattr(self.bus, "connected", True):
            await connect()
        for pattern in self.patterns:
            self._handles.append(self.bus.subscribe(pattern, self._take, mode="inline",
                                                    name=f"viewer:{pattern}"))

    async def close(self) -> None:
        """Unsubscribe (and close the bus when the source owns it). Idempotent."""
        handles, self._handles = self._handles, []
        for handle in handles:
            self.bus.unsubscribe(handle)
        if self.owns_bus:
            self.owns_bus = False
            await self.bus.close()

    def _take(self, event: UniversalEvent) -> None:
        # Inline handler: runs on the publisher's thread (or the bus loop for remote events).
        try:
            size = event_size(event)
        except UNSHOWABLE:  # metadata the encoder refuses, data nested too deeply:
            size = 1024    # count it at a typical size (the hub shows a placeholder)
        with self._lock:
            cursor = self._next
            self._next += 1
            ring = self._ring
            ring.append((cursor, event, size))
            self._bytes += size
            while len(ring) > 1 and (len(ring) > self.max_events or self._bytes > self.max_bytes):
                self._bytes -= ring.popleft()[2]
                self.evicted += 1
            wake = self._waiting
            self._waiting = False
        if wake and self._loop is not None and self._arrived is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed
                self._loop.call_soon_threadsafe(self._arrived.set)

    def _snapshot(self, after: int, upto: int | None) -> list[tuple[int, UniversalEvent, int]]:
        with self._lock:
            ring = self._ring
            if not ring or ring[-1][0] <= after:
                return []
            first = ring[0][0]
            start = max(0, after + 1 - first)
            stop = len(ring) if upto is None else max(0, min(len(ring), upto + 1 - first))
            return [ring[i] for i in range(start, stop)]

    async def last(self) -> int:
        """The newest cursor given out."""
        with self._lock:
            return self._next - 1

    async def read_after(self, cursor: int, limit: int, *, pattern: str | None = None,
                         upto: int | None = None) -> Batch:
        """Events in the ring after ``cursor``."""
        matches = compile_pattern(pattern).matches if pattern else None
        out: Batch = []
        for position, event, _ in self._snapshot(cursor, upto):
            if matches is None or matches(event.event_type):
                out.append((position, event))
                if len(out) >= limit:
                    break
        return out

    async def newest(self, limit: int, *, pattern: str | None = None,
                     upto: int | None = None) -> Batch:
        """The newest events in the ring."""
        matches = compile_pattern(pattern).matches if pattern else None
        out: Batch = []
        for position, event, _ in reversed(self._snapshot(0, upto)):
            if matches is None or matches(event.event_type):
                out.append((position, event))
                if len(out) >= limit:
                    break
        out.reverse()
        return out

    async def count_types(self, after: int, upto: int) -> dict[str, int]:
        """Events per type in ``(after, upto]``, counting those that left the ring as
        ``(no longer held)``."""
        counts: dict[str, int] = {}
        held = self._snapshot(after, upto)
        for _, event, _ in held:
            counts[event.event_type] = counts.get(event.event_type, 0) + 1
        gone = (upto - after) - len(held)
        if gone > 0:
            counts["(no longer held)"] = gone
        return counts

    async def get(self, cursor: int) -> UniversalEvent | None:
        """The event at ``cursor`` while the ring holds it."""
        found = self._snapshot(cursor - 1, cursor)
        return found[0][1] if found else None

    async def wait(self, cursor: int, timeout: float) -> None:
        """Wait until an event after ``cursor`` arrives (or ``timeout`` passes)."""
        arrived = self._arrived
        if arrived is None:
            await asyncio.sleep(timeout)
            return
        with self._lock:
            if self._next - 1 > cursor:
                return
            arrived.clear()
            self._waiting = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(arrived.wait(), timeout)

    def format_id(self, cursor: int) -> str:
        """``<boot>-<cursor>``: ids of an earlier viewer are not taken for this one's."""
        return f"{self.boot}-{cursor}"

    def parse_id(self, text: str) -> int | None:
        """The cursor of an id this viewer gave out, else None."""
        boot, _, number = text.strip().partition("-")
        if (boot != self.boot or not number.isascii() or not number.isdigit()
                or len(number) >= 20):
            return None
        return int(number)

    def describe(self) -> dict[str, Any]:
        """Kind, bus and how much the ring holds."""
        with self._lock:
            held = len(self._ring)
        return {"kind": self.kind, "where": self.where, "status": "subscribed"
                if self._handles else "closed", "held": held, "evicted": self.evicted,
                "problem": None}
