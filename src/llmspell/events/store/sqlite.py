"""The embedded default event store: one SQLite file, a batching writer that never loses.

Why hand-written: the standard library's :mod:`sqlite3` plus one background thread is all a
batching writer needs, and no maintained library offers the guarantee this store makes
(an accepted event is kept in memory, in order, and retried until it is committed; never
dropped on a write error). An ORM or async wrapper would add a dependency and a second
queue without giving that guarantee.

How it works
------------
:meth:`SQLiteStore.append` builds the row (about 0.3 µs; encoding on the caller's thread
snapshots mutable ``data`` at the moment of acceptance and turns an unencodable event into an
immediate error instead of a poison batch) and puts it on an in-memory pending buffer; that
is all it does. One long-lived daemon writer thread, started on first use, takes up to
``batch_size`` rows and writes them in one transaction (``INSERT OR IGNORE`` + ``COMMIT``).
It wakes when the buffer reaches ``batch_size``, when a ``flush()`` asks, or
``flush_interval`` seconds after the first row arrived.

Writing is what limits throughput, so rows are kept small and inserted cheaply. The id,
sequence, type, correlation id and timestamp have their own columns; the ``payload`` holds
only the rest as a JSON array, usually just ``[data]`` (the metadata is left out when it is
all defaults apart from the correlation id): ``[{"i":5}]`` instead of ~300 bytes of JSON for
the whole event. A batch is inserted by multi-row ``INSERT`` statements of 100 rows (then
10, then single rows), one statement step per chunk instead of one per row. Schema version
1 stored the whole event as JSON; such payloads are still read, so a version 1 file is
upgraded just by its version number (a file from a newer version is refused with a
``StoreError``).

If a write fails (disk full, database locked past ``busy_timeout``, I/O error...) the batch
goes back to the *front* of the buffer in order, the failure is counted
(``stats().write_errors``, ``last_error``), ``on_error(exc)`` is called, and the writer
retries with backoff (``retry_delay`` doubling up to ``max_retry_delay``). ``INSERT OR
IGNORE`` on the event id makes a retry of a batch that was in fact committed harmless.

What ``flush()`` promises
-------------------------
An appended event is *accepted*: kept in memory, in order, until it is committed. The
buffer is bounded (``max_pending_bytes``, 32 MiB by default). Past it, ``overflow``
decides: ``"block"`` (the default) makes ``append`` wait, while the writer is writing, up
to ``block_timeout`` seconds for it to make room, so a publisher faster than the disk is
paced to it; while a write is failing (a lock held by another process, a full disk) it
waits for nothing. ``"reject"`` never waits. When there is no room, ``append`` raises
:class:`~llmspell.errors.StoreFullError` and the event is not accepted.
The bus's other two overflow rules, dropping the oldest or the newest event, are not offered:
an accepted event is never dropped, and an event refused is the publisher's to keep. Each
refusal is counted (``stats().refused``), and ``stats().pending_bytes`` is what the bound
is measured against; a bus over the store turns refusals into backpressure notices. ``flush()``
returns once every event accepted before the call is committed (``EventBus.publish(...,
durable=True)`` flushes for one publish). The database
runs in WAL mode. With ``synchronous="normal"`` (the default) a confirmed event survives a
crash or ``SIGKILL`` of the process, but the last commits may be lost on a power failure or
OS crash (the database itself stays consistent). With ``synchronous="full"`` every commit
is fsynced and a confirmed event survives power loss too, at a higher cost per batch.
While writes keep failing, ``flush()`` raises :class:`~llmspell.errors.StoreError` naming the
underlying error (after a retry of the batch failed again) or when its ``timeout`` expires;
the events stay pending and are still retried. Events appended but not yet confirmed by a
``flush()`` may be lost if the process dies.

Reads
-----
Reads use one read connection guarded by a lock and see committed data only. By default
(``flush_before_read=True``) every read, ``count`` and ``apply_retention`` first calls
``flush()``, so a read sees every event appended before it (and raises ``StoreError`` while
writes are failing). With ``flush_before_read=False`` reads never wait for the writer; call
``flush()`` yourself when you need read-your-writes. Results are in store order: the
``position`` column, assigned at commit and increasing across every process that writes
the file (``descending`` reverses). ``sequence`` restarts in every process, so it is not
used for ordering.
Exact patterns become ``event_type = ?``; glob patterns use an index range on their literal
prefix plus a SQL function running the compiled pattern.
``iter_events`` reads only the events committed when it is called (up to the newest
``position`` then), so it ends even while other writers, or the replay consuming it, keep
storing events.
:class:`SQLiteStoreReader` reads a file another process may be writing, read-only (it never
writes, upgrades or locks the file, and creates no file beside it), with the same
``query``/``iter_events``/``count`` and by ``position`` (what ``llmspell view``, ``llmspell
events`` and ``llmspell runs list|show|diff`` read), without opening a writer.

The store is safe to share between threads. Several processes may open the same file
(WAL allows concurrent readers and one writer at a time), but a store object must not be
used across ``fork``. Call :meth:`SQLiteStore.close` when done (it can be retried if
writes failed); at interpreter exit open stores are closed (flushed, bounded time) by an
``atexit`` hook. A file this process cannot write is refused when the store is opened.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import math
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec

from llmspell.core.clock import SYSTEM_CLOCK, Clock
from llmspell.core.errors import (
    EventTooLargeError,
    InvalidValueError,
    SerializationError,
    StoreError,
    StoreFullError,
    brief,
)
from llmspell.core.language import Language
from llmspell.core.process import this_process
from llmspell.core.sqlite import connect, file_identity, open_error_hint
from llmspell.core.text import is_utf8
from llmspell.core.values import MAX_INT64, MIN_INT64
from llmspell.events.event import _EMPTY_METADATA as _EVENT_DEFAULT_METADATA
from llmspell.events.event import SCHEMA_VERSION as EVENT_SCHEMA_VERSION
from llmspell.events.event import EventMetadata, UniversalEvent, decode_event
from llmspell.events.pattern import compile_pattern
from llmspell.events.store.base import EventQuery, StoreStats
from llmspell.events.store.memory import check_retention, resolve_query

__all__ = ["SCHEMA_VERSION", "SQLiteStore", "SQLiteStoreReader"]

SCHEMA_VERSION = 4
"""The table layout version, kept in ``PRAGMA user_version``. Version 4 adds ``run_id``
(the event's run, indexed) and ``writer`` (the process that wrote the row: a row of the
``writers`` table with its host, pid and start time). Version 3 added ``position``, the
store-wide order assigned at commit (``INTEGER PRIMARY KEY AUTOINCREMENT``: increasing
across every process writing the file, never reused). Version 2 stored a compact payload
(see :func:`_row`); version 1 the whole event as JSON. All stay readable; opening an older
file upgrades it once (version 3 gains the two columns; versions 1 and 2 are rebuilt,
numbering their rows in their commit order); :class:`SQLiteStoreReader` never upgrades
and refuses an older file with a hint saying how to upgrade it."""

DEFAULT_MAX_PENDING_BYTES = 32 * 1024 * 1024
"""The default bound on accepted, not yet written events (see :class:`SQLiteStore`)."""

_COLUMNS = ("position", "id", "sequence", "event_type", "correlation_id", "timestamp",
            "payload", "run_id", "writer")
_V3_COLUMNS = _COLUMNS[:7]
_OLD_COLUMNS = ("id", "sequence", "event_type", "correlation_id", "timestamp", "payload")
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS events (
        position INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        sequence INTEGER NOT NULL,
        event_type TEXT NOT NULL,
        correlation_id TEXT,
        timestamp REAL NOT NULL,
        payload BLOB NOT NULL,
        run_id TEXT,
        writer INTEGER
    )""",
    """CREATE TABLE IF NOT EXISTS writers (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started REAL NOT NULL,
        UNIQUE (host, pid, started)
    )""",
    "CREATE INDEX IF NOT EXISTS events_event_type ON events(event_type)",
    # Partial: most events carry no correlation id, and `correlation_id = ?` implies NOT NULL.
    "CREATE INDEX IF NOT EXISTS events_correlation_id ON events(correlation_id) "
    "WHERE correlation_id IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS events_run_id ON events(run_id) WHERE run_id IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS events_timestamp ON events(timestamp)",
    "CREATE INDEX IF NOT EXISTS events_sequence ON events(sequence)",
)
_INSERT_HEAD = ("INSERT OR IGNORE INTO events (id, sequence, event_type, correlation_id, "
                "timestamp, payload, run_id, writer) VALUES ")
_FIELDS = 8
_PLACES = "(" + ", ".join(["?"] * _FIELDS) + ")"
_INSERT = _INSERT_HEAD + _PLACES
# Rows per multi-row INSERT, largest first: one statement step per chunk instead of one per
# row (SQLite allows 32766 parameters; 8 per row). The rest of a batch uses executemany.
_CHUNKS = tuple((n, _INSERT_HEAD + ", ".join([_PLACES] * n)) for n in (100, 10))
_SELECT = "SELECT id, sequence, event_type, correlation_id, timestamp, payload, run_id"
_GLOB_CHARS = "*?["
_MATCH_FUNCTION = "llmspell_match"
_MAX_TYPES_WALKED = 1024
"""The most distinct event types a limited glob query walks to pick its types (past it,
one statement filters every row under the pattern's literal prefix)."""
_FIRST_TYPE = "SELECT event_type FROM events WHERE event_type >= ? ORDER BY event_type LIMIT 1"
_NEXT_TYPE = "SELECT event_type FROM events WHERE event_type > ? ORDER BY event_type LIMIT 1"

# A pending row: (id, sequence, event_type, correlation_id, timestamp, payload, run_id,
# writer); the writer is filled in when the row is accepted.
_Row = tuple[str, int, str, str | None, float, bytes, str | None, int]


class _Rest(msgspec.Struct, array_like=True, frozen=True):
    """The payload: what the columns do not hold, as a JSON array. ``metadata`` is null when
    it is all defaults apart from ``correlation_id`` (which has its own column); trailing
    default fields are left out, so most payloads are just ``[data]``."""

    data: Any = None
    metadata: EventMetadata | None = None
    language: Language = Language.PYTHON
    schema_version: int = EVENT_SCHEMA_VERSION


_NO_METADATA = _EVENT_DEFAULT_METADATA  # one object: identity tells the default apart
_encode = msgspec.json.Encoder().encode
_decode_rest = msgspec.json.Decoder(_Rest).decode


def _column_metadata(correlation_id: str | None, run_id: str | None) -> EventMetadata:
    """The metadata the columns alone describe."""
    if correlation_id is None and run_id is None:
        return _NO_METADATA
    return EventMetadata(correlation_id=correlation_id, run_id=run_id)


def _row(event: UniversalEvent, writer: int) -> _Row:
    """The row for ``event``; encoding ``data`` here snapshots it at acceptance.

    Raises :class:`InvalidValueError` unless SQLite can store the row's columns as they
    are. Checked on the caller's thread: a row the writer cannot bind (a sequence past 64
    bits, a lone surrogate in a string) would fail its whole batch on every retry, and a NaN
    timestamp (bound as NULL) would be dropped by ``INSERT OR IGNORE`` without a word.
    Every event the bus builds passes the first test (exact types, ASCII ids); only an odd
    one is looked at field by field."""
    metadata = event.metadata
    correlation_id = metadata.correlation_id
    run_id = metadata.run_id
    # (An event built without metadata shares one default object: no comparison for it.)
    if metadata is _EVENT_DEFAULT_METADATA or \
            metadata == _column_metadata(correlation_id, run_id):
        if event.language is Language.PYTHON and event.schema_version == EVENT_SCHEMA_VERSION:
            payload = _encode((event.data,))
        else:
            payload = _encode(_Rest(event.data, None, event.language, event.schema_version))
    else:
        payload = _encode(_Rest(event.data, metadata, event.language, event.schema_version))
    event_id, sequence, event_type, timestamp = (
        event.id, event.sequence, event.event_type, event.timestamp)
    row = (event_id, sequence, event_type, correlation_id, timestamp, payload, run_id, writer)
    if (type(sequence) is int and -_SMALL_INT < sequence < _SMALL_INT
            and type(timestamp) is float and timestamp - timestamp == 0.0  # not NaN, inf
            and type(event_id) is str and event_id.isascii()
            and type(event_type) is str and event_type.isascii()
            and (correlation_id is None or (type(correlation_id) is str
                                            and correlation_id.isascii()))
            and (run_id is None or (type(run_id) is str and run_id.isascii()))):
        return row
    _check_columns_one_by_one(row)
    return row


_SMALL_INT = 1 << 62


def _check_columns_one_by_one(row: _Row) -> None:
    sequence = row[1]
    if type(sequence) is not int or not MIN_INT64 <= sequence <= MAX_INT64:
        raise InvalidValueError(
            f"event {row[0]!r} has sequence {sequence!r}; a stored sequence is a 64-bit int",
            hint="build events with UniversalEvent.create(...), which numbers them")
    timestamp = row[4]
    if type(timestamp) not in (float, int) or math.isnan(timestamp):
        raise InvalidValueError(
            f"event {row[0]!r} has timestamp {timestamp!r}; it must be a number of seconds",
            hint="build events with UniversalEvent.create(...), which stamps them")
    for name, value in (("id", row[0]), ("event_type", row[2]), ("correlation_id", row[3]),
                        ("run_id", row[6])):
        if value is None and name in ("correlation_id", "run_id"):
            continue
        if type(value) is not str:
            raise InvalidValueError(f"an event's {name} must be a string, got {value!r}",
                                    hint="build events with UniversalEvent.create(...)")
        if not value.isascii() and not is_utf8(value):
            raise InvalidValueError(
                f"an event's {name} {value!r} holds a lone surrogate, which UTF-8 cannot "
                "store", hint="pass text without lone surrogates")


def _row_bytes(row: _Row) -> int:
    """What a pending row costs in memory, roughly: its strings and payload plus the
    tuple and object overhead."""
    return len(row[5]) + len(row[0]) + len(row[2]) + 200


def _event(row: tuple[Any, ...]) -> UniversalEvent:
    """The event stored as ``row`` (the columns of ``_SELECT``, in order). A row that does
    not decode to an event (damaged, written by another program, nested deeper than an
    event may be) raises :class:`SerializationError` naming it."""
    try:
        return _decoded(row)
    except (msgspec.DecodeError, InvalidValueError, SerializationError,
            RecursionError, TypeError) as exc:
        raise SerializationError(f"cannot decode the stored event {row[0]!r}: {brief(exc)}",
                                 hint="the event store file may be damaged or written by "
                                 "another program") from None


_TEXT_OR_NULL = (str, type(None))
"""What a text column may hold (a tuple: ``str | None`` would build a union per check)."""


def _decoded(row: tuple[Any, ...]) -> UniversalEvent:
    if (type(row[0]) is not str or type(row[1]) is not int or type(row[2]) is not str
            or type(row[4]) not in (float, int) or not isinstance(row[3], _TEXT_OR_NULL)
            or not isinstance(row[6], _TEXT_OR_NULL)):
        raise TypeError("a column holds a value of the wrong type")
    payload = row[5]
    if type(payload) is not bytes:
        if isinstance(payload, str):  # written as TEXT by another program
            payload = payload.encode(errors="surrogatepass")
        elif not isinstance(payload, bytes):
            raise TypeError(f"the payload is {type(payload).__name__}, not JSON")
    if payload[:1] != b"[":  # a version 1 payload: the whole event as a JSON object
        return decode_event(payload)
    rest = _decode_rest(payload)
    metadata = rest.metadata
    if metadata is None:
        metadata = _column_metadata(row[3], row[6])
    return UniversalEvent(event_type=row[2], data=rest.data, id=row[0], language=rest.language,
                          timestamp=row[4], sequence=row[1], metadata=metadata,
                          schema_version=rest.schema_version)


_open_stores: set[SQLiteStore] = set()
_open_stores_lock = threading.Lock()


@atexit.register
def _close_open_stores() -> None:
    with _open_stores_lock:
        stores = list(_open_stores)
    for store in stores:
        try:
            store.close(timeout=2.0)
        except StoreError as exc:
            print(f"llmspell: {exc}", file=sys.stderr)


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> Callable[[str], bool]:
    return compile_pattern(pattern).matches


def _sql_match(pattern: str, event_type: str) -> int:
    return 1 if _compiled(pattern)(event_type) else 0


def _literal_prefix(pattern: str) -> str:
    """The text every event type matching glob ``pattern`` starts with ('' if none)."""
    first = min((i for i in (pattern.find(c) for c in _GLOB_CHARS) if i >= 0),
                default=len(pattern))
    prefix = pattern[:first]
    if pattern.startswith("**", first) and prefix.endswith("."):
        prefix = prefix[:-1]  # 'a.**' also matches 'a' itself
    return prefix


def _where(q: EventQuery) -> tuple[list[str], list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if q.pattern is not None:
        if not any(c in q.pattern for c in _GLOB_CHARS):
            clauses.append("event_type = ?")
            params.append(q.pattern)
        else:
            prefix = _literal_prefix(q.pattern)
            if prefix:
                # Event type characters are ASCII, so the next code point bounds the range.
                clauses.append("event_type >= ? AND event_type < ?")
                params += [prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)]
            clauses.append(f"{_MATCH_FUNCTION}(?, event_type)")
            params.append(q.pattern)
    if q.correlation_id is not None:
        clauses.append("correlation_id = ?")
        params.append(q.correlation_id)
    if q.run_id is not None:
        clauses.append("run_id = ?")
        params.append(q.run_id)
    for value, clause in ((q.since, "timestamp >= ?"), (q.until, "timestamp <= ?"),
                          (q.min_sequence, "sequence >= ?"), (q.max_sequence, "sequence <= ?")):
        if value is not None:
            clauses.append(clause)
            params.append(value)
    return clauses, params


def _is_glob(pattern: str | None) -> bool:
    """True for a pattern with glob characters (an exact type is one indexed lookup)."""
    return pattern is not None and any(c in pattern for c in _GLOB_CHARS)


def _types_matching(read: Callable[[str, list[Any]], list[Any]], pattern: str
                    ) -> list[str] | None:
    """The distinct stored event types glob ``pattern`` matches, or None when there are
    more than :data:`_MAX_TYPES_WALKED` types to look at.

    Walks the event-type index from the pattern's literal prefix, one indexed lookup per
    distinct type (SQLite has no loose index scan to do it in one statement)."""
    prefix = _literal_prefix(pattern)
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix else None
    matches = _compiled(pattern)
    found: list[str] = []
    rows = read(_FIRST_TYPE, [prefix])
    for _ in range(_MAX_TYPES_WALKED):
        if not rows:
            return found
        event_type = rows[0][0]
        if upper is not None and event_type >= upper:
            return found
        if matches(event_type):
            found.append(event_type)
        rows = read(_NEXT_TYPE, [event_type])
    return None


def _limited_by_type(read: Callable[[str, list[Any]], list[Any]], q: EventQuery, limit: int,
                     *, descending: bool, extra: Sequence[tuple[str, Any]] = ()
                     ) -> list[Any] | None:
    """The first ``limit`` rows (with their position, column 7) in store order that match
    ``q`` (whose pattern is a glob) and the ``extra`` clauses: None when the glob would walk
    too many types (then one statement must do).

    One statement with a glob filters every row under the pattern's literal prefix and
    sorts them, so the 100 newest of a million cost as much as all of them. Instead each
    matching type is read on its own, ``limit`` rows at most (the event-type index holds a
    type's rows in position order, the position being the rowid), and the rows merged:
    linear in the number of types times ``limit``."""
    assert q.pattern is not None
    types = _types_matching(read, q.pattern)
    if types is None:
        return None
    clauses, params = _where(msgspec.structs.replace(q, pattern=None))
    for clause, value in extra:
        clauses.append(clause)
        params.append(value)
    sql = (_SELECT + ", position FROM events WHERE "
           + " AND ".join(["event_type = ?", *clauses])
           + f" ORDER BY position {'DESC' if descending else 'ASC'} LIMIT ?")
    rows: list[Any] = []
    for event_type in types:
        rows += read(sql, [event_type, *params, limit])
    rows.sort(key=lambda row: int(row[7]), reverse=descending)
    return rows[:limit]


def _snapshot_reader(conn: sqlite3.Connection, path: Path
                     ) -> Callable[[str, list[Any]], list[Any]]:
    """Begin a read transaction on ``conn`` (the caller holds its lock and rolls it back)
    and return a function running one statement in it."""

    def read(sql: str, params: list[Any]) -> list[Any]:
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"reading the event store at {path} failed: {exc}",
                             hint="check that the file is intact and readable") from exc

    read("BEGIN", [])
    return read


def _insert(conn: sqlite3.Connection, batch: list[_Row]) -> int:
    """Insert ``batch`` (ignoring ids already stored); return how many rows were new."""
    inserted = 0
    start = 0
    end = len(batch)
    for size, sql in _CHUNKS:
        if end - start >= size:
            values = list(chain.from_iterable(batch[start:end - (end - start) % size]))
            step = size * _FIELDS
            for i in range(0, len(values), step):
                inserted += conn.execute(sql, values[i:i + step]).rowcount
            start += len(values) // _FIELDS
    if start < end:
        inserted += conn.executemany(_INSERT, batch[start:]).rowcount
    return inserted


def _upgrade_v3(conn: sqlite3.Connection) -> None:
    """Add version 4's ``run_id`` and ``writer`` columns to a version 3 table (inside the
    caller's transaction). Rows written before the upgrade have neither."""
    conn.execute("ALTER TABLE events ADD COLUMN run_id TEXT")
    conn.execute("ALTER TABLE events ADD COLUMN writer INTEGER")


def _upgrade_to_positions(conn: sqlite3.Connection) -> None:
    """Rebuild a version 1/2 table with the ``position`` column (inside the caller's
    transaction). Rows are numbered in ``rowid`` order: the order they were committed in,
    across every process that wrote the file (their sequences are per process)."""
    conn.execute("ALTER TABLE events RENAME TO events_before_v3")
    conn.execute(_SCHEMA[0])
    conn.execute("INSERT INTO events (id, sequence, event_type, correlation_id, timestamp, "
                 "payload) SELECT id, sequence, event_type, correlation_id, timestamp, payload "
                 "FROM events_before_v3 ORDER BY rowid")
    conn.execute("DROP TABLE events_before_v3")  # and its indexes, recreated on the new one


def _open_error(path: Path, exc: BaseException) -> StoreError:
    return StoreError(f"cannot open the event store at {path}: {exc}", hint=open_error_hint(exc))


def _rollback(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(Exception):
        if conn.in_transaction:
            conn.execute("ROLLBACK")


_Read = Callable[[str, list[Any]], list[Any]]
"""Runs one SQL statement with its parameters and returns its rows."""
_T = TypeVar("_T")


class _Reads:
    """The reads :class:`SQLiteStore` and :class:`SQLiteStoreReader` share: ``query``,
    ``iter_events`` and ``count``, written once over three primitives each class provides
    (its own connection handling)."""

    path: Path

    def _before_read(self) -> None:
        """Called before every read (the store flushes its writer here)."""

    def _read(self, sql: str, params: list[Any]) -> list[Any]:
        """The rows of one statement."""
        return self._consistent(lambda read: read(sql, params))

    def _consistent(self, work: Callable[[_Read], _T]) -> _T:
        """``work(read)``, every statement ``read`` runs seeing one snapshot of the file."""
        raise NotImplementedError

    def _newest_position(self) -> int:
        """The position of the newest committed event (0 when there is none)."""
        return int(self._read("SELECT COALESCE(MAX(position), 0) FROM events", [])[0][0])

    def query(self, query: EventQuery | None = None, **fields: object) -> list[UniversalEvent]:
        """Committed events matching ``query`` (or the same fields as keywords), in store
        order (``descending`` reverses). A :class:`SQLiteStore` flushes first unless
        ``flush_before_read`` is False."""
        q = resolve_query(query, fields)
        self._before_read()
        if q.limit is not None and _is_glob(q.pattern):
            limit = q.limit
            limited = self._consistent(
                lambda read: _limited_by_type(read, q, limit, descending=q.descending))
            if limited is not None:
                return [_event(row) for row in limited]
        clauses, params = _where(q)
        order = "DESC" if q.descending else "ASC"
        sql = _SELECT + " FROM events"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += f" ORDER BY position {order}"
        if q.limit is not None:
            sql += " LIMIT ?"
            params.append(q.limit)
        return [_event(row) for row in self._read(sql, params)]

    def iter_events(self, query: EventQuery | None = None, *, batch_size: int = 1000
                    ) -> Iterator[UniversalEvent]:
        """Committed events matching ``query``, read lazily ``batch_size`` at a time (pages
        by position, so a large store is never loaded at once).

        Only the events committed when this is called are read (up to the newest position
        then): events stored while the iterator is consumed, by this process or another,
        are left out, so an iteration always ends, even over a store being written or one a
        replay re-publishes into. A :class:`SQLiteStore` flushes first unless
        ``flush_before_read`` is False."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        q = resolve_query(query, {})
        self._before_read()
        upto = self._newest_position()  # now, not when the first page is read
        return self._pages(q, batch_size, upto)

    def _pages(self, q: EventQuery, batch_size: int, upto: int) -> Iterator[UniversalEvent]:
        clauses, params = _where(q)
        clauses.append("position <= ?")
        params.append(upto)
        order, cmp = ("DESC", "<") if q.descending else ("ASC", ">")
        remaining = q.limit
        last: int | None = None
        while remaining is None or remaining > 0:
            page_clauses, page_params = list(clauses), list(params)
            if last is not None:
                page_clauses.append(f"position {cmp} ?")
                page_params.append(last)
            size = batch_size if remaining is None else min(batch_size, remaining)
            sql = (_SELECT + ", position FROM events WHERE " + " AND ".join(page_clauses)
                   + f" ORDER BY position {order} LIMIT ?")
            rows = self._read(sql, [*page_params, size])
            for row in rows:
                yield _event(row)
            if remaining is not None:
                remaining -= len(rows)
            if len(rows) < size:
                return
            last = rows[-1][7]

    def count(self, query: EventQuery | None = None, **fields: object) -> int:
        """How many committed events match (``limit`` caps the answer). A
        :class:`SQLiteStore` flushes first unless ``flush_before_read`` is False."""
        q = resolve_query(query, fields)
        self._before_read()
        clauses, params = _where(q)
        inner = "SELECT 1 FROM events"
        if clauses:
            inner += " WHERE " + " AND ".join(clauses)
        if q.limit is not None:
            inner += " LIMIT ?"
            params.append(q.limit)
        return int(self._read(f"SELECT COUNT(*) FROM ({inner})", params)[0][0])


class SQLiteStore(_Reads):
    """An event store in one SQLite file, with a batching writer thread (see the module doc).

    ``path`` is the database file (parent directories are created). ``batch_size`` is the
    most events written per transaction; ``flush_interval`` the longest an appended event
    waits before the writer picks it up (seconds). ``synchronous`` is SQLite's durability
    level (``"normal"``: survives a process crash; ``"full"``: survives power loss).
    ``busy_timeout`` is how long one statement waits for another writer's lock.
    ``retry_delay``/``max_retry_delay`` shape the retry backoff after a failed write (there is
    no retry limit: accepted events are never dropped). ``on_error`` is called with each write
    error (from the writer thread; an exception it raises is ignored). ``clock.now()`` is the
    wall time :meth:`apply_retention` measures ``max_age`` against. ``max_pending_bytes``
    bounds the accepted, unwritten events; ``overflow`` (``"reject"`` or ``"block"``) and
    ``block_timeout`` say what an ``append`` past it does (see the module doc).
    """

    on_error: Callable[[Exception], None] | None

    accepts_encoded_data = True
    """An event whose ``data`` is a ``msgspec.Raw`` (JSON the runtime encoded itself, as
    run records are) is written as it is, with no decode and encode on the way."""

    def __init__(
        self,
        path: str | Path,
        *,
        batch_size: int = 1000,
        flush_interval: float = 0.05,
        synchronous: Literal["normal", "full"] = "normal",
        busy_timeout: float = 5.0,
        retry_delay: float = 0.01,
        max_retry_delay: float = 1.0,
        flush_before_read: bool = True,
        on_error: Callable[[Exception], None] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        overflow: Literal["reject", "block"] = "block",
        block_timeout: float = 5.0,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidValueError(f"batch_size must be an int >= 1, got {batch_size!r}",
                                    hint="the default is 1000 events per transaction")
        for name, value in (("flush_interval", flush_interval), ("busy_timeout", busy_timeout),
                            ("retry_delay", retry_delay), ("max_retry_delay", max_retry_delay)):
            if not isinstance(value, int | float) or not value > 0:
                raise InvalidValueError(f"{name} must be > 0 seconds, got {value!r}")
        if not isinstance(max_pending_bytes, int) or max_pending_bytes < 1:
            raise InvalidValueError(
                f"max_pending_bytes must be an int >= 1, got {max_pending_bytes!r}",
                hint="the default is 32 MiB of accepted, unwritten events")
        if overflow not in ("reject", "block"):
            raise InvalidValueError(
                f"overflow must be 'reject' or 'block', got {overflow!r}",
                hint="a store never drops an event it accepted, so 'drop_oldest' and "
                "'drop_newest' are not offered: catch StoreFullError to drop on purpose")
        if not isinstance(block_timeout, int | float) or not block_timeout > 0:
            raise InvalidValueError(f"block_timeout must be > 0 seconds, got {block_timeout!r}")
        if synchronous not in ("normal", "full"):
            raise InvalidValueError(f"synchronous must be 'normal' or 'full', got {synchronous!r}",
                                    hint="'normal' survives a process crash, 'full' power loss")
        raw = str(path)
        if not raw or raw == ":memory:" or raw.startswith("file:"):
            raise InvalidValueError(
                f"SQLiteStore needs a file path, got {raw!r}",
                hint="use MemoryStore for an in-memory store",
            )
        self.path = Path(path)
        self.batch_size = batch_size
        self.flush_interval = float(flush_interval)
        self.synchronous = synchronous
        self.busy_timeout = float(busy_timeout)
        self.retry_delay = float(retry_delay)
        self.max_retry_delay = float(max_retry_delay)
        self.flush_before_read = flush_before_read
        self.max_pending_bytes = max_pending_bytes
        self.overflow = overflow
        self.block_timeout = float(block_timeout)
        self.on_error = on_error
        self._clock = clock
        self._writer = 0  # this process's row in the writers table, set when opened

        # Writer state, all guarded by _lock (_done waits on the same lock).
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._pending: deque[_Row] = deque()
        self._pending_bytes = 0  # of the rows pending or in flight (see _row_bytes)
        self._in_flight = 0
        self._accepted = 0
        self._refused = 0
        self._written = 0
        self._duplicates = 0
        self._write_errors = 0
        self._retries = 0
        self._failures = 0  # consecutive failed attempts of the batch at the front
        self._last_error: str | None = None
        self._last_exception: Exception | None = None
        self._flush_target = 0
        self._kicks = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        self._stop = False
        self._finished = False  # connections released
        self._stored_at_close = 0
        self.callback_errors = 0
        """How many times ``on_error`` itself raised (the exception is ignored)."""

        self._rlock = threading.Lock()
        self._wconn = self._connect(writer=True)
        # The file opened: a write checks the path still names it (see _check_file). The
        # path is made absolute first, as SQLite does: a later chdir changes nothing.
        self._file = self.path.absolute()
        self._identity = file_identity(self._file)
        try:
            self._rconn = self._connect(writer=False)
        except StoreError:
            self._wconn.close()
            raise
        with _open_stores_lock:
            _open_stores.add(self)

    # -- opening ----------------------------------------------------------------------

    def _connect(self, *, writer: bool) -> sqlite3.Connection:
        return connect(self.path, timeout=self.busy_timeout,
                       prepare=self._prepare if writer else self._prepare_reader,
                       error=lambda exc: _open_error(self.path, exc))

    def _prepare_reader(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
        conn.create_function(_MATCH_FUNCTION, 2, _sql_match, deterministic=True)

    def _prepare(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(
                f"cannot switch {self.path} to WAL journal mode (it stays in {mode!r} mode)",
                hint="put the database on a local file system that supports WAL",
            )
        conn.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has event store schema version {version}; this llmspell "
                f"understands up to {SCHEMA_VERSION}",
                hint="upgrade llmspell, or use a new file",
            )
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(_SCHEMA[0])
            columns = tuple(row[1] for row in conn.execute("PRAGMA table_info(events)"))
            if columns == _OLD_COLUMNS:
                _upgrade_to_positions(conn)
            elif columns == _V3_COLUMNS:
                _upgrade_v3(conn)
            elif columns != _COLUMNS:
                raise StoreError(
                    f"{self.path} has a table 'events' that is not an llmspell event table "
                    f"(columns {', '.join(columns)})",
                    hint="use a separate database file for the event store",
                )
            for statement in _SCHEMA[1:]:
                conn.execute(statement)
            me = this_process()
            conn.execute("INSERT OR IGNORE INTO writers (host, pid, started) VALUES (?, ?, ?)",
                         (me.host, me.pid, me.started))
            self._writer = conn.execute(
                "SELECT id FROM writers WHERE host = ? AND pid = ? AND started = ?",
                (me.host, me.pid, me.started)).fetchone()[0]
            # Always written: it makes a file this process cannot write fail here, at open,
            # instead of at the first flush.
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    # -- accepting --------------------------------------------------------------------

    def _closed_error(self) -> StoreError:
        return StoreError(f"the event store at {self.path} is closed",
                          hint="open a new SQLiteStore on the same path to keep writing")

    @property
    def pending_bytes(self) -> int:
        """The size of the accepted, unwritten events, as ``max_pending_bytes`` bounds it
        (read without the lock: a moment's value)."""
        return self._pending_bytes

    def _make_room(self, size: int) -> None:
        """Called with the lock held when ``size`` more bytes do not fit: wait for room
        (``overflow="block"``) or raise. Returns only when they fit."""
        if size > self.max_pending_bytes:
            raise EventTooLargeError(
                f"an event of {size} bytes cannot fit the event store's buffer of "
                f"{self.max_pending_bytes} bytes", size=size, limit=self.max_pending_bytes,
                hint="store a reference instead of the payload, or raise max_pending_bytes")
        waited = 0.0
        # Waiting makes sense only while the writer is writing: with a write failing (a
        # lock held elsewhere, a full disk) room may not come for minutes, and every
        # publisher would wait out its timeout. The writer thread itself (an on_error
        # callback publishing) must not wait for itself.
        if self.overflow == "block" and not self._failures \
                and threading.current_thread() is not self._thread:
            start = time.monotonic()
            deadline = start + self.block_timeout
            while (self._pending_bytes + size > self.max_pending_bytes and not self._closed
                   and not self._failures):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._done.wait(remaining)  # notified after every batch the writer ends
            if self._closed:
                raise self._closed_error()
            if self._pending_bytes + size <= self.max_pending_bytes:
                return
            if not self._failures:  # the wait timed out (else a write failed meanwhile)
                waited = time.monotonic() - start
        self._refused += 1
        pending = len(self._pending) + self._in_flight
        raise StoreFullError(
            f"the event store at {self.path} has {pending} events ({self._pending_bytes} "
            f"bytes) accepted but not yet written, its limit"
            + (f", and no room came in {waited:.3g} s" if waited else "")
            + "; the event was not accepted"
            + (f" (last write error: {self._last_error})" if self._last_error else ""),
            hint="writes are failing or slower than publishing: fix the cause (a lock held "
            "by another process, disk space), publish less, or raise max_pending_bytes"
            + (" or block_timeout" if waited else ""),
        )

    def append(self, event: UniversalEvent) -> None:
        """Accept one event; it is written by the background writer (see :meth:`flush`).
        Raises :class:`~llmspell.errors.StoreFullError` when ``max_pending_bytes`` of
        accepted events are still unwritten (nothing is accepted then)."""
        if not isinstance(event, UniversalEvent):
            raise InvalidValueError(f"a store accepts UniversalEvent, not {type(event).__name__}",
                                    hint="build events with UniversalEvent.create(...)")
        row = _row(event, self._writer)
        size = _row_bytes(row)
        with self._lock:
            if self._closed:
                raise self._closed_error()
            if self._pending_bytes + size > self.max_pending_bytes:
                self._make_room(size)
            pending = self._pending
            pending.append(row)
            self._pending_bytes += size
            self._accepted += 1
            n = len(pending)
            if n == 1 and self._thread is None:
                self._start_writer()
        if n in (1, self.batch_size):
            self._wake.set()

    def append_many(self, events: Iterable[UniversalEvent]) -> None:
        """Accept several events, in order (all or none: a bad item raises before any is
        accepted)."""
        rows: list[_Row] = []
        for event in events:
            if not isinstance(event, UniversalEvent):
                raise InvalidValueError(
                    f"a store accepts UniversalEvent, not {type(event).__name__}",
                    hint="build events with UniversalEvent.create(...)")
            rows.append(_row(event, self._writer))
        if not rows:
            return
        size = sum(map(_row_bytes, rows))
        with self._lock:
            if self._closed:
                raise self._closed_error()
            if self._pending_bytes + size > self.max_pending_bytes:
                self._make_room(size)
            self._pending.extend(rows)
            self._pending_bytes += size
            self._accepted += len(rows)
            self._start_writer()
        self._wake.set()

    # -- the writer -------------------------------------------------------------------

    def _start_writer(self) -> None:
        # Caller holds _lock. (Re)start the writer unless it is running.
        if self._thread is not None and self._thread.is_alive():
            return
        thread = threading.Thread(target=self._run, name=f"llmspell-store-writer:{self.path.name}",
                                  daemon=True)
        self._thread = thread
        thread.start()

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            with self._lock:
                self._done.notify_all()

    def _loop(self) -> None:
        monotonic = time.monotonic
        wake = self._wake
        deadline: float | None = None  # when the first waiting row must be written
        retry_at = 0.0
        delay = 0.0
        seen_kicks = 0
        while True:
            wake.clear()
            with self._lock:
                if self._stop:
                    return
                n = len(self._pending)
                urgent = self._written < self._flush_target
                kicks = self._kicks
                failing = self._failures > 0
            if n == 0:
                deadline = None
                wake.wait()
                continue
            now = monotonic()
            if failing:
                if now < retry_at and kicks == seen_kicks:
                    wake.wait(retry_at - now)
                    continue
            elif n < self.batch_size and not urgent:
                if deadline is None:
                    deadline = now + self.flush_interval
                if now < deadline:
                    wake.wait(deadline - now)
                    continue
            seen_kicks = kicks
            if self._write_batch():
                delay = 0.0
                deadline = None
            else:
                delay = min(max(delay * 2, self.retry_delay), self.max_retry_delay)
                retry_at = monotonic() + delay

    def _write_batch(self) -> bool:
        with self._lock:
            pending = self._pending
            take = min(self.batch_size, len(pending))
            batch = [pending.popleft() for _ in range(take)]
            self._in_flight = take
            if self._failures:
                self._retries += 1
        conn = self._wconn
        try:
            conn.execute("BEGIN IMMEDIATE")
            self._check_file()
            inserted = _insert(conn, batch)
            conn.execute("COMMIT")
        except Exception as exc:  # sqlite3.Error, MemoryError, OSError: keep the batch
            _rollback(conn)
            with self._lock:
                pending.extendleft(reversed(batch))
                self._in_flight = 0
                self._write_errors += 1
                self._failures += 1
                self._last_error = f"{type(exc).__name__}: {exc}"
                self._last_exception = exc
                self._done.notify_all()
            self._report(exc)
            return False
        with self._lock:
            self._in_flight = 0
            self._written += take
            self._pending_bytes -= sum(map(_row_bytes, batch))
            if 0 <= inserted <= take:
                self._duplicates += take - inserted
            self._failures = 0
            self._done.notify_all()
        return True

    def _check_file(self) -> None:
        """Raise :class:`StoreError` when the path no longer names the file this store
        opened (another process deleted, moved or replaced it): the connection would go on
        committing into a file nobody can open again, and the events would be lost without
        a word. Called in the write transaction, so the batch stays pending."""
        if file_identity(self._file) != self._identity:
            raise StoreError(
                f"the event store file {self.path} was deleted or replaced while this store "
                "had it open; nothing more is written to it",
                hint="the unwritten events stay buffered: close() reports them, "
                "unwritten_events() returns them (abandon() too) to append to a new "
                "SQLiteStore on the path; keep the data directory in place while "
                "processes use it")

    def _report(self, exc: Exception) -> None:
        callback = self.on_error
        if callback is None:
            return
        try:
            callback(exc)
        except Exception:  # a broken callback must not stop the writer
            self.callback_errors += 1

    # -- flushing ---------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> int:
        """Block until every event accepted before this call is committed; return how many
        events were committed while waiting.

        Raises :class:`StoreError` (the events stay pending and are retried) when a write
        failed and a retry of it failed again, or when ``timeout`` seconds pass first.
        Calling it from ``on_error`` (the writer thread) raises ``StoreError``.
        """
        return self._flush(timeout, fail_fast=True)

    def _flush(self, timeout: float | None, *, fail_fast: bool) -> int:
        if self._thread is not None and threading.current_thread() is self._thread:
            raise StoreError("flush() was called from the store's writer thread",
                             hint="do not flush or read the store inside on_error")
        if timeout is not None and not timeout >= 0:  # NaN too: it would wait forever
            raise InvalidValueError(f"timeout must be >= 0 seconds or None, got {timeout!r}",
                                    hint="pass None to wait until everything is written")
        end = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            target = self._accepted
            start_written = self._written
            if start_written >= target:
                return 0
            start_errors = self._write_errors
            self._flush_target = max(self._flush_target, target)
            self._kicks += 1
            if not self._stop:
                self._start_writer()
        self._wake.set()
        with self._lock:
            while self._written < target:
                if fail_fast and self._write_errors > start_errors and self._failures >= 2:
                    raise StoreError(
                        f"cannot write to the event store at {self.path}: {self._last_error} "
                        f"({len(self._pending) + self._in_flight} events pending, "
                        f"{self._write_errors} write errors)",
                        hint=getattr(self._last_exception, "hint", None)
                        or "the events stay buffered and are retried; fix the cause (disk "
                        "space, permissions, a lock held by another process) and flush again",
                    ) from self._last_exception
                thread = self._thread
                if self._stop or thread is None or not thread.is_alive():
                    raise StoreError(
                        f"the writer of the event store at {self.path} is not running "
                        f"({len(self._pending)} events pending)",
                        hint="the store was closed; unwritten_events() returns what is left",
                    )
                wait = 0.25
                if end is not None:
                    remaining = end - time.monotonic()
                    if remaining <= 0:
                        raise StoreError(
                            f"flush timed out after {timeout} s with "
                            f"{len(self._pending) + self._in_flight} events still pending"
                            + (f"; last error: {self._last_error}" if self._last_error else ""),
                            hint="the events stay buffered; flush again or pass a longer "
                            "timeout",
                        )
                    wait = min(wait, remaining)
                self._done.wait(wait)
            return self._written - start_written

    def unwritten_events(self) -> list[UniversalEvent]:
        """The accepted events not yet committed (pending or being written), in order."""
        with self._lock:
            rows = list(self._pending)
        return [_event(row) for row in rows]

    # -- reading ----------------------------------------------------------------------

    def _read(self, sql: str, params: list[Any]) -> list[Any]:
        with self._rlock:
            if self._finished:
                raise self._closed_error()
            try:
                return self._rconn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(
                    f"reading the event store at {self.path} failed: {exc}",
                    hint="check that the file is intact and readable",
                ) from exc

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[Callable[[str, list[Any]], list[Any]]]:
        """A read function whose statements all see one snapshot of the file (one read
        transaction), for a read made of several statements."""
        with self._rlock:
            if self._finished:
                raise self._closed_error()
            conn = self._rconn
            try:
                yield _snapshot_reader(conn, self.path)
            finally:
                _rollback(conn)  # a read transaction: nothing to keep

    def _before_read(self) -> None:
        if self.flush_before_read and not self._closed:
            self.flush()

    def _consistent(self, work: Callable[[_Read], _T]) -> _T:
        with self._snapshot() as read:
            return work(read)

    # -- maintenance ------------------------------------------------------------------

    def apply_retention(self, *, max_age: float | None = None, max_count: int | None = None
                        ) -> int:
        """Delete events with ``timestamp < clock.now() - max_age``, then all but the
        ``max_count`` with the highest sequence; return how many were deleted. Flushes
        first (raising ``StoreError`` while writes fail) so buffered events are included."""
        check_retention(max_age, max_count)
        if self._closed:
            raise self._closed_error()
        if max_age is None and max_count is None:
            return 0
        self.flush()
        with self._rlock:
            if self._closed:
                raise self._closed_error()
            conn = self._rconn
            deleted = 0
            try:
                conn.execute("BEGIN IMMEDIATE")
                if max_age is not None:
                    cutoff = self._clock.now() - max_age
                    deleted += conn.execute("DELETE FROM events WHERE timestamp < ?",
                                            (cutoff,)).rowcount
                if max_count is not None:
                    deleted += conn.execute(
                        "DELETE FROM events WHERE position IN (SELECT position FROM events "
                        "ORDER BY position DESC LIMIT -1 OFFSET ?)",
                        (max_count,),
                    ).rowcount
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(conn)
                raise StoreError(
                    f"applying retention to the event store at {self.path} failed: {exc}",
                    hint="nothing was deleted; check disk space and locks, then try again",
                ) from exc
            except BaseException:
                _rollback(conn)  # never leave the write lock held by the read connection
                raise
            return deleted

    @property
    def duplicates(self) -> int:
        """Written events ignored because an event with the same id was already stored."""
        with self._lock:
            return self._duplicates

    def stats(self) -> StoreStats:
        """Counters: accepted, written (committed), pending (not yet committed), write
        errors, retries (re-attempts of a failed batch), stored (rows in the file)."""
        with self._rlock:
            if self._finished:
                stored = self._stored_at_close
            else:
                try:
                    stored = int(self._rconn.execute("SELECT COUNT(*) FROM events")
                                 .fetchone()[0])
                except sqlite3.Error as exc:
                    raise StoreError(f"counting the events in {self.path} failed: {exc}",
                                     hint="check that the file is intact and readable") from exc
        with self._lock:
            return StoreStats(
                accepted=self._accepted,
                written=self._written,
                pending=len(self._pending) + self._in_flight,
                write_errors=self._write_errors,
                retries=self._retries,
                stored=stored,
                last_error=self._last_error,
                pending_bytes=self._pending_bytes,
                refused=self._refused,
            )

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, write what is pending (waiting at most ``timeout`` seconds, and
        giving up early once a write and its retry have failed), stop the writer and close
        the connections. Idempotent once everything is written.

        Raises :class:`StoreError` if accepted events could not be written; they are then
        available from :meth:`unwritten_events`, and calling ``close()`` again retries
        writing them (the writer connection stays open until they are written or
        :meth:`abandon` is called).
        """
        with self._lock:
            if self._finished:
                return
            self._closed = True
            self._done.notify_all()  # a blocked append gives up
            retry = self._stop
            if retry:  # a previous close left events unwritten: write them again
                self._stop = False
                self._failures = 0
                self._start_writer()
        with contextlib.suppress(StoreError):
            self._flush(timeout, fail_fast=True)
        self._stop_writer()
        with self._lock:
            left = len(self._pending) + self._in_flight
            last_error = self._last_error
        if left:
            raise StoreError(
                f"the event store at {self.path} closed with {left} accepted events unwritten"
                + (f" (last error: {last_error})" if last_error else ""),
                hint="unwritten_events() returns them; call close() again to retry writing "
                "them, or abandon() to drop them",
            )
        self._release()

    def abandon(self) -> list[UniversalEvent]:
        """Close without writing what is still pending; returns those events (for
        appending to a working store). Idempotent."""
        with self._lock:
            self._closed = True
            self._done.notify_all()
        self._stop_writer()
        left = self.unwritten_events()
        with self._lock:
            self._pending.clear()
            self._pending_bytes = 0
        self._release()
        return left

    def _stop_writer(self) -> None:
        with self._lock:
            self._stop = True
            self._done.notify_all()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.busy_timeout + 1.0)

    def _release(self) -> None:
        """Close the connections (all events are written, or abandoned)."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
        with self._rlock:
            with contextlib.suppress(sqlite3.Error):
                self._stored_at_close = int(
                    self._rconn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
            self._rconn.close()
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._wconn.close()
        with _open_stores_lock:
            _open_stores.discard(self)

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r}, batch_size={self.batch_size})"


def _check_positions(**values: int | None) -> None:
    """Raise :class:`InvalidValueError` unless every given value is None or an int SQLite
    can compare (``limit`` must also be >= 0: SQLite reads a negative limit as none)."""
    for name, value in values.items():
        if value is None and name == "upto":
            continue
        if not isinstance(value, int) or isinstance(value, bool) \
                or not MIN_INT64 <= value <= MAX_INT64 or (name == "limit" and value < 0):
            raise InvalidValueError(
                f"{name} must be an int{' >= 0' if name == 'limit' else ''} that fits in 64 "
                f"bits, got {value!r}",
                hint="positions and limits are what last_position() and the reads return")


_READ_ATTEMPTS = 5
"""How many times a reader reads a file that changes under it before giving up."""


class SQLiteStoreReader(_Reads):
    """A read-only view of an event store file, for tools that inspect or follow a store
    another process may be writing (``llmspell events``, ``llmspell runs list|show|diff``,
    the live viewer ``llmspell view``). It never writes the file, never upgrades it, takes
    no write lock and leaves no file beside it:

    * it opens the file with ``mode=ro``, so a file on a read-only mount, or one this
      process may not write, is read all the same;
    * while no writer has the file open (there is no ``-wal`` file beside it: a writer
      removes it when it closes), SQLite would create the ``-wal`` and ``-shm`` files a
      WAL reader needs, owned by this process and left behind, and a writer of another
      user could then not open the store. The file is instead read as immutable, and every
      read checks that the file did not change while it ran (its size, time and inode):
      if it did, the read is made again on a fresh connection;
    * once a ``-wal`` file is there (a writer has the store open), it reads through the
      writer's ``-wal`` and ``-shm``, seeing each commit as it lands.

    ``query``, ``iter_events`` and ``count`` are those of :class:`SQLiteStore` (the same
    code), in store order; ``last_position``, ``read_after``, ``newest`` and
    ``count_types`` read by ``position``, the store-wide order assigned at commit, so a
    reader that remembers the last position it saw resumes exactly after it. It satisfies
    the :class:`~llmspell.events.store.base.EventStore` protocol, so a
    :class:`~llmspell.runtime.System` can read runs through it: ``flush`` has nothing to do,
    and ``append``, ``append_many`` and ``apply_retention`` raise :class:`StoreError`.

    ``path`` must be an existing store of the current schema version: a file of an older
    version is refused with a :class:`StoreError` saying how to upgrade it (reading never
    upgrades), one of a newer version with one saying to upgrade llmspell. Safe to share
    between threads (one connection, guarded by a lock). Call :meth:`close` when done.
    """

    on_error: Callable[[Exception], None] | None

    def __init__(self, path: str | Path, *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(f"no event store at {self.path}",
                             hint="give the path of an events.db a program has recorded into")
        self.busy_timeout = float(busy_timeout)
        self.on_error = None  # nothing is written, so no write fails
        self._file = self.path.absolute()  # as SQLite opens it: a later chdir changes nothing
        self._wal = self.path.with_name(self.path.name + "-wal")
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._live = False  # reading through a writer's -wal (else: the file as immutable)
        self._signature: tuple[int, int, int] | None = None
        self._identity: tuple[int, int] | None = None  # the file the connection opened
        self._closed = False
        with self._lock:
            conn = self._reopen()
            try:
                version = int(conn.execute("PRAGMA user_version").fetchone()[0])
                table = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                                     "name = 'events'").fetchall()
            except sqlite3.Error as exc:
                self._shut()
                raise _open_error(self.path, exc) from exc
            if version != SCHEMA_VERSION:
                self._shut()
                raise self._version_error(version, bool(table))

    def _version_error(self, version: int, has_table: bool) -> StoreError:
        if version > SCHEMA_VERSION:
            return StoreError(
                f"{self.path} has event store schema version {version}; this llmspell "
                f"understands up to {SCHEMA_VERSION}", hint="upgrade llmspell")
        if version == 0 and not has_table:
            return StoreError(
                f"{self.path} holds no llmspell event table (an empty file, or another "
                "program's database)",
                hint="point at the events.db llmspell recorded into")
        return StoreError(
            f"{self.path} has event store schema version {version}, older than the version "
            f"{SCHEMA_VERSION} this llmspell reads; reading never upgrades a store",
            hint="upgrade it by opening it once for writing with this llmspell: python -c "
                 f"\"from llmspell.events.store import SQLiteStore; SQLiteStore("
                 f"{str(self.path)!r}).close()\" (or run any llmspell command that records "
                 "into it); programs using an older llmspell cannot write it afterwards")

    # -- the connection ---------------------------------------------------------------

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            found = self.path.stat()
        except OSError:
            return None
        return found.st_ino, found.st_size, found.st_mtime_ns

    def _reopen(self) -> sqlite3.Connection:
        """(Re)open the connection: through the writer's files when a ``-wal`` file is there,
        else on the file as immutable (lock held)."""
        self._shut()
        identity = file_identity(self._file)
        live = self._wal.exists()
        signature = None if live else self._stat()
        options = "mode=ro" if live else "mode=ro&immutable=1"
        try:
            conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?{options}", uri=True,
                                   timeout=self.busy_timeout, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            raise _open_error(self.path, exc) from exc
        try:
            conn.create_function(_MATCH_FUNCTION, 2, _sql_match, deterministic=True)
        except sqlite3.Error as exc:
            conn.close()
            raise _open_error(self.path, exc) from exc
        self._conn, self._live, self._signature = conn, live, signature
        self._identity = identity
        return conn

    def _shut(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _current(self) -> sqlite3.Connection:
        """The connection to read with (lock held): reopened when a writer has come (a
        ``-wal`` file appeared), the immutable file changed since it was opened, or the
        path names another file (the one read was deleted or replaced: a live connection
        would go on reading it, stale, forever); a file gone raises :class:`StoreError`."""
        if self._closed:
            raise StoreError(f"the reader of {self.path} is closed",
                             hint="open a new SQLiteStoreReader")
        conn = self._conn
        identity = file_identity(self._file)
        if identity is None:
            raise StoreError(f"the event store at {self.path} was deleted while it was read",
                             hint="point at the events.db a program records into")
        if conn is None or identity != self._identity or (
                not self._live and (self._wal.exists() or self._stat() != self._signature)):
            conn = self._reopen()
        return conn

    def _consistent(self, work: Callable[[_Read], _T]) -> _T:
        with self._lock:
            for _ in range(_READ_ATTEMPTS):
                conn = self._current()
                seen = self._signature
                try:
                    read = _snapshot_reader(conn, self.path)
                    try:
                        result = work(read)
                    finally:
                        _rollback(conn)
                except StoreError:
                    if self._live or self._stat() == seen:
                        raise
                    continue  # the file changed under an immutable read: read it again
                if self._live or self._stat() == seen:
                    return result
            raise StoreError(f"the event store at {self.path} kept changing while it was read",
                             hint="read it again")

    # -- reading by position ----------------------------------------------------------

    def last_position(self) -> int:
        """The position of the newest committed event (0 when the store is empty)."""
        return self._newest_position()

    def read_after(self, position: int, *, limit: int = 1000, pattern: str | None = None,
                   upto: int | None = None) -> list[tuple[int, UniversalEvent]]:
        """Up to ``limit`` committed events after ``position`` (and at most ``upto``),
        oldest first, each with its position; ``pattern`` narrows them by type."""
        _check_positions(position=position, limit=limit, upto=upto)
        if _is_glob(pattern):
            extra: list[tuple[str, Any]] = [("position > ?", position)]
            if upto is not None:
                extra.append(("position <= ?", upto))
            limited = self._consistent(lambda read: _limited_by_type(
                read, EventQuery(pattern=pattern), limit, descending=False, extra=extra))
            if limited is not None:
                return [(row[7], _event(row)) for row in limited]
        clauses, params = _where(EventQuery(pattern=pattern))
        clauses.append("position > ?")
        params.append(position)
        if upto is not None:
            clauses.append("position <= ?")
            params.append(upto)
        sql = (_SELECT + ", position FROM events WHERE " + " AND ".join(clauses)
               + " ORDER BY position ASC LIMIT ?")
        return [(row[7], _event(row)) for row in self._read(sql, [*params, limit])]

    def newest(self, limit: int, *, pattern: str | None = None, upto: int | None = None
               ) -> list[tuple[int, UniversalEvent]]:
        """The newest ``limit`` committed events (at most ``upto``) matching ``pattern``,
        oldest first, each with its position."""
        _check_positions(limit=limit, upto=upto)
        if _is_glob(pattern):
            limited = self._consistent(lambda read: _limited_by_type(
                read, EventQuery(pattern=pattern), limit, descending=True,
                extra=[("position <= ?", upto)] if upto is not None else ()))
            if limited is not None:
                return [(row[7], _event(row)) for row in reversed(limited)]
        clauses, params = _where(EventQuery(pattern=pattern))
        if upto is not None:
            clauses.append("position <= ?")
            params.append(upto)
        sql = _SELECT + ", position FROM events"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY position DESC LIMIT ?"
        rows = self._read(sql, [*params, limit])
        return [(row[7], _event(row)) for row in reversed(rows)]

    def count_types(self, after: int, upto: int) -> dict[str, int]:
        """How many committed events of each type lie in positions ``(after, upto]``."""
        _check_positions(after=after, upto=upto)
        rows = self._read("SELECT event_type, COUNT(*) FROM events WHERE position > ? AND "
                          "position <= ? GROUP BY event_type", [after, upto])
        return {str(name): int(count) for name, count in rows}

    def headers(self, after: int, limit: int, *, newest: bool = False,
                pattern: str | None = None, upto: int | None = None
                ) -> list[tuple[int, str, str, float, str | None, str | None]]:
        """``(position, id, event_type, timestamp, correlation_id, run_id)`` of up to
        ``limit`` committed events in positions ``(after, upto]`` matching ``pattern``,
        oldest first (``newest``: the newest ones, newest first), read without their
        payloads: for a tool showing events whose payload may not decode."""
        _check_positions(after=after, limit=limit, upto=upto)
        clauses, params = _where(EventQuery(pattern=pattern))
        clauses += ["position > ?", "position <= ?"]
        params += [after, MAX_INT64 if upto is None else upto]
        sql = ("SELECT position, id, event_type, timestamp, correlation_id, run_id FROM events"
               " WHERE " + " AND ".join(clauses)
               + f" ORDER BY position {'DESC' if newest else 'ASC'} LIMIT ?")
        return [(int(row[0]), str(row[1]), str(row[2]), float(row[3]), row[4], row[5])
                for row in self._read(sql, [*params, limit])]

    def type_summary(self, since: float | None = None
                     ) -> dict[str, tuple[int, float, float]]:
        """Per event type, ``(count, oldest timestamp, newest timestamp)`` of the committed
        events (those at or after ``since``, wall seconds, when given). Counted by SQLite
        without decoding an event, so it is quick on a large store and works on one with a
        damaged payload."""
        if since is not None and (isinstance(since, bool) or not isinstance(since, int | float)
                                  or math.isnan(since)):
            raise InvalidValueError(f"since must be wall seconds (a number), got {since!r}")
        sql = "SELECT event_type, COUNT(*), MIN(timestamp), MAX(timestamp) FROM events"
        params: list[Any] = []
        if since is not None:
            sql += " WHERE timestamp >= ?"
            params.append(float(since))
        rows = self._read(sql + " GROUP BY event_type", params)
        return {str(name): (int(count), float(oldest), float(newest))
                for name, count, oldest, newest in rows}

    # -- the rest of the EventStore protocol ------------------------------------------

    def _read_only(self, what: str) -> StoreError:
        return StoreError(f"cannot {what}: {self.path} is open read-only (SQLiteStoreReader)",
                          hint="open it with SQLiteStore to write to it")

    def append(self, event: UniversalEvent) -> None:
        """Refused: the reader never writes (raises :class:`StoreError`)."""
        raise self._read_only("append an event")

    def append_many(self, events: Iterable[UniversalEvent]) -> None:
        """Refused: the reader never writes (raises :class:`StoreError`)."""
        raise self._read_only("append events")

    def apply_retention(self, *, max_age: float | None = None, max_count: int | None = None
                        ) -> int:
        """Refused: the reader never deletes (raises :class:`StoreError`)."""
        raise self._read_only("apply retention")

    def flush(self, timeout: float | None = None) -> int:
        """Nothing to write: returns 0 (what other processes commit is read as it lands)."""
        return 0

    def stats(self) -> StoreStats:
        """Counters: nothing is accepted or written here; ``stored`` is the events in the
        file."""
        stored = int(self._read("SELECT COUNT(*) FROM events", [])[0][0])
        return StoreStats(accepted=0, written=0, pending=0, write_errors=0, retries=0,
                          stored=stored)

    def close(self) -> None:
        """Close the connection. Idempotent."""
        with self._lock:
            self._closed = True
            self._shut()

    def __enter__(self) -> SQLiteStoreReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLiteStoreReader({str(self.path)!r})"
