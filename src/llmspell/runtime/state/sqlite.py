"""The SQLite state backend: one table in one file, atomic compare-and-set across threads
and processes.

Each operation runs on one connection guarded by a lock (``check_same_thread=False``), so
the backend is safe to share between threads. A write runs in ``BEGIN IMMEDIATE``: it takes
the database's write lock *before* reading the current version, so the version check and
the write are one atomic step even when several processes use the same file (the others
wait up to ``busy_timeout`` seconds). The database runs in WAL mode with
``synchronous=NORMAL``: a committed write survives a crash of the process; the last
commits may be lost on a power failure (the file stays consistent).

Values are stored as msgspec JSON, so they come back as plain JSON types. Text UTF-8
cannot carry (a lone surrogate) is refused as by every backend (see
:mod:`llmspell.runtime.state.base`), never passed to SQLite.

A delete keeps the key's last version in ``state_tombstones`` (at most ``max_tombstones``
rows; the oldest beyond that are folded into ``state_floors``, one row per scope, and at
most ``max_floors`` of those, the oldest beyond that folded into the global floor, the row
of the reserved scope ``*``), so a key written again continues after it: a version is never
reused for a key in one file (the rule is in :mod:`llmspell.runtime.state.base`). Both
tables came with schema version 2; a version 1 file is upgraded in place when opened (its
values and versions kept; keys deleted before the upgrade left no tombstone, so they still
start again at 1). An older llmspell refuses a version 2 file: upgrade every process that
shares one together.

If another process deletes or replaces the file while the backend has it open, the open
connection would go on reading and writing the old, unlinked file. Every write checks that
the path still names the file opened (a stat in the write transaction) and raises
:class:`~llmspell.errors.StateError` when it does not. Reads agree, at a lower cost (a read
is a few microseconds, a stat about one): a read checks when ``file_check_interval`` seconds
have passed since the last check (so the first read does, and every read with 0), and the
read after a write found the file changed checks too. A read may therefore return the old
file's values for up to ``file_check_interval`` seconds (default 0.01) after the change;
after that every read raises the write's ``StateError``.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from time import monotonic
from typing import Any

import msgspec

from llmspell.core.errors import StateError
from llmspell.core.sqlite import connect, file_identity, open_error_hint
from llmspell.core.values import lone_surrogate_error
from llmspell.runtime.state.base import (
    MAX_FLOORS,
    MAX_TOMBSTONES,
    StateEntry,
    StateScope,
    check_max_floors,
    check_max_tombstones,
    check_state_text,
    check_state_write,
)

__all__ = ["FILE_CHECK_INTERVAL", "SCHEMA_VERSION", "SQLiteStateBackend"]

SCHEMA_VERSION = 2
"""The table layout version, kept in ``PRAGMA user_version``. Version 2 adds the
``state_tombstones`` and ``state_floors`` tables (versions are never reused); version 1
files are upgraded in place when opened."""

# (table, CREATE statement, its columns). The tombstones and floors tables have rowids:
# their order is the order of burial, so the oldest are folded first.
_TABLES = (
    ("state", """CREATE TABLE IF NOT EXISTS state (
    scope TEXT NOT NULL,
    scope_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    version INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (scope, scope_id, key)
) WITHOUT ROWID""", ("scope", "scope_id", "key", "value", "version", "updated_at")),
    ("state_tombstones", """CREATE TABLE IF NOT EXISTS state_tombstones (
    scope TEXT NOT NULL,
    scope_id TEXT NOT NULL,
    key TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (scope, scope_id, key)
)""", ("scope", "scope_id", "key", "version")),
    ("state_floors", """CREATE TABLE IF NOT EXISTS state_floors (
    scope TEXT NOT NULL,
    scope_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (scope, scope_id)
)""", ("scope", "scope_id", "version")),
)
_GLOBAL_FLOOR = ("*", "")
"""The (scope, scope_id) of the global floor's row in ``state_floors`` (no scope is ``*``)."""
_UPSERT = ("INSERT INTO state (scope, scope_id, key, value, version, updated_at) "
           "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (scope, scope_id, key) DO UPDATE SET "
           "value = excluded.value, version = excluded.version, "
           "updated_at = excluded.updated_at")
_WHERE_KEY = "scope = ? AND scope_id = ? AND key = ?"
_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder()
FILE_CHECK_INTERVAL = 0.01
"""Seconds a read trusts the last check that the path still names the file opened."""


def _open_error(path: Path, exc: BaseException) -> StateError:
    return StateError(f"cannot open the state database at {path}: {exc}", hint=open_error_hint(exc))


class SQLiteStateBackend:
    """State in an SQLite file at ``path`` (created with its folder when missing).

    ``busy_timeout`` is how long a write waits for another connection's write lock;
    ``max_tombstones`` bounds the tombstones of deleted keys kept in the file and
    ``max_floors`` the scope version floors they fold into (see the module documentation).
    ``file_check_interval`` is how long (seconds, >= 0) a read trusts the last check that
    the file was not deleted or replaced (0: every read checks; see the module
    documentation). Raises :class:`~llmspell.errors.StateError` when the file cannot be
    opened, is not an SQLite database, holds a ``state`` table (or tombstone table) of
    another shape, or was written by a newer llmspell.
    """

    def __init__(self, path: str | Path, *, busy_timeout: float = 10.0,
                 max_tombstones: int = MAX_TOMBSTONES, max_floors: int = MAX_FLOORS,
                 file_check_interval: float = FILE_CHECK_INTERVAL) -> None:
        self.path = Path(path)
        self.busy_timeout = float(busy_timeout)
        self.max_tombstones = check_max_tombstones(max_tombstones)
        self.max_floors = check_max_floors(max_floors)
        self.file_check_interval = _check_interval(file_check_interval)
        self._read_check_at = 0.0  # the monotonic time from which a read checks the file
        self._lock = threading.Lock()
        self._closed = False
        conn = connect(self.path, timeout=self.busy_timeout, prepare=self._prepare,
                       error=lambda exc: _open_error(self.path, exc))
        self._conn = conn
        # The file opened: every write checks the path still names it (see _begin_write).
        # The path is made absolute first, as SQLite does: a later chdir changes nothing.
        self._file = self.path.absolute()
        self._identity = file_identity(self._file)

    def _prepare(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StateError(
                f"cannot switch {self.path} to WAL journal mode (it stays in {mode!r} mode)",
                hint="put the database on a local file system that supports WAL",
            )
        conn.execute("PRAGMA synchronous=NORMAL")
        # Read the layout version under the write lock: another process may be upgrading
        # the file right now, and a stale version must never be written back.
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StateError(
                    f"{self.path} has state schema version {version}; this llmspell "
                    f"understands up to {SCHEMA_VERSION}",
                    hint="upgrade llmspell, or use a new file",
                )
            for table, create, expected in _TABLES:
                conn.execute(create)
                columns = tuple(row[1] for row in conn.execute(f"PRAGMA table_info({table})"))
                if columns != expected:
                    raise StateError(
                        f"{self.path} has a table {table!r} that is not an llmspell state "
                        f"table (columns {', '.join(columns)})",
                        hint="use a separate database file for the state backend",
                    )
            if version < SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    def _check_open(self) -> sqlite3.Connection:
        if self._closed:
            raise StateError(f"the state database at {self.path} is closed",
                             hint="use the backend before closing it (System.shutdown)")
        return self._conn

    def _check_read(self) -> sqlite3.Connection:
        """The connection to read with (lock held), after checking, when
        ``file_check_interval`` has passed since the last check, that the path still names
        the file opened: a read must not serve the values of a deleted or replaced file that
        a write refuses (:class:`StateError`, as a write raises)."""
        conn = self._check_open()
        now = monotonic()
        if now >= self._read_check_at:
            if file_identity(self._file) != self._identity:
                raise self._replaced("nothing was read from it")
            self._read_check_at = now + self.file_check_interval
        return conn

    def _replaced(self, outcome: str) -> StateError:
        return StateError(
            f"the state database {self.path} was deleted or replaced while this process "
            f"had it open; {outcome}",
            hint="restart the process so it opens the file now at the path (what was "
            "in the old file is gone); keep the data directory in place while "
            "processes use it")

    def _begin_write(self, conn: sqlite3.Connection) -> None:
        """Begin a write transaction, refusing (:class:`StateError`) when the path no
        longer names the file this backend opened: another process deleted or replaced it,
        so this one's writes would land in a file no other process sees, and its
        compare-and-set would no longer guard anything shared."""
        conn.execute("BEGIN IMMEDIATE")
        if file_identity(self._file) != self._identity:
            _rollback(conn)
            self._read_check_at = 0.0  # reads agree from now on, without waiting
            raise self._replaced("nothing was written")

    def _fail(self, action: str, exc: sqlite3.Error) -> StateError:
        text = str(exc).lower()
        hint = ("another process holds the write lock; raise busy_timeout"
                if "locked" in text or "busy" in text
                else "check the file, its permissions and the free disk space")
        return StateError(f"{action} in {self.path} failed: {exc}", hint=hint)

    def _entry(self, scope: StateScope, scope_id: str, key: str, value: bytes, version: int,
               updated_at: float) -> StateEntry:
        try:
            decoded = _DECODER.decode(value)
        except (msgspec.DecodeError, TypeError) as exc:  # TypeError: a row that is not text
            where = f"{scope.value} {scope_id!r} " if scope_id else ""
            raise StateError(
                f"the stored value of {where}key {key!r} in {self.path} is damaged ({exc})",
                hint="delete the key (system.state.delete) or restore the scope from a "
                     "checkpoint; the file may have been written by another program") from None
        return StateEntry(key=key, scope=scope, scope_id=scope_id, value=decoded,
                          version=version, updated_at=updated_at)

    def _current(self, conn: sqlite3.Connection, where: tuple[str, str],
                 key: str) -> int | None:
        """The version of a live key, or None when it is absent."""
        row = conn.execute(f"SELECT version FROM state WHERE {_WHERE_KEY}",
                           (*where, key)).fetchone()
        return None if row is None else int(row[0])

    def _store(self, conn: sqlite3.Connection, where: tuple[str, str], key: str,
               payload: bytes, current: int | None, now: float) -> int:
        """Write ``key`` after its ``current`` version (None: absent, so it continues from
        its tombstone, else the higher of its scope's floor and the global floor; the
        tombstone goes) and return the new version. In a write transaction."""
        if current is None:
            current = int(conn.execute(
                "SELECT coalesce((SELECT version FROM state_tombstones WHERE "
                f"{_WHERE_KEY}), max(coalesce((SELECT version FROM state_floors WHERE "
                "scope = ? AND scope_id = ?), 0), coalesce((SELECT version FROM state_floors "
                "WHERE scope = ? AND scope_id = ?), 0)))",
                (*where, key, *where, *_GLOBAL_FLOOR)).fetchone()[0])
            conn.execute(f"DELETE FROM state_tombstones WHERE {_WHERE_KEY}", (*where, key))
        conn.execute(_UPSERT, (*where, key, payload, current + 1, now))
        return current + 1

    def _bury(self, conn: sqlite3.Connection, where: tuple[str, str],
              buried: list[tuple[str, int]]) -> None:
        """Keep the last versions of deleted keys as tombstones, then fold the oldest
        tombstones past ``max_tombstones`` into their scope's floor. In a write
        transaction."""
        conn.executemany(
            "INSERT INTO state_tombstones (scope, scope_id, key, version) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (scope, scope_id, key) DO UPDATE SET "
            "version = max(version, excluded.version)",
            [(*where, key, version) for key, version in buried])
        excess = int(conn.execute("SELECT count(*) FROM state_tombstones").fetchone()[0]
                     ) - self.max_tombstones
        if excess <= 0:
            return
        # WHERE true: an upsert's SELECT needs a WHERE clause (an SQLite parsing rule).
        conn.execute(
            "INSERT INTO state_floors (scope, scope_id, version) "
            "SELECT scope, scope_id, max(version) FROM (SELECT scope, scope_id, version "
            "FROM state_tombstones ORDER BY rowid LIMIT ?) WHERE true "
            "GROUP BY scope, scope_id ON CONFLICT (scope, scope_id) DO UPDATE SET "
            "version = max(version, excluded.version)", (excess,))
        conn.execute("DELETE FROM state_tombstones WHERE rowid IN "
                     "(SELECT rowid FROM state_tombstones ORDER BY rowid LIMIT ?)", (excess,))
        self._fold_floors(conn)

    def _fold_floors(self, conn: sqlite3.Connection) -> None:
        """Fold the oldest scope floors past ``max_floors`` into the global floor. In a
        write transaction."""
        excess = int(conn.execute(
            "SELECT (SELECT count(*) FROM state_floors) - (SELECT count(*) FROM state_floors "
            "WHERE scope = ? AND scope_id = ?)", _GLOBAL_FLOOR).fetchone()[0]) - self.max_floors
        if excess <= 0:
            return
        oldest = "SELECT {} FROM state_floors WHERE scope != ? ORDER BY rowid LIMIT ?"
        conn.execute(
            "INSERT INTO state_floors (scope, scope_id, version) "
            f"SELECT ?, ?, max(version) FROM ({oldest.format('version')}) WHERE true "
            "ON CONFLICT (scope, scope_id) DO UPDATE SET "
            "version = max(version, excluded.version)",
            (*_GLOBAL_FLOOR, _GLOBAL_FLOOR[0], excess))
        conn.execute(f"DELETE FROM state_floors WHERE rowid IN ({oldest.format('rowid')})",
                     (_GLOBAL_FLOOR[0], excess))

    def _seal(self, conn: sqlite3.Connection, where: tuple[str, str],
              buried: list[tuple[str, int]]) -> None:
        """Remember the keys just deleted from scope ``where``, which they left empty: as
        one floor for the scope (taking in the scope's tombstones too) when that replaces
        two or more tombstones, else as tombstones. In a write transaction."""
        count, top = conn.execute(
            "SELECT count(*), coalesce(max(version), 0) FROM state_tombstones "
            "WHERE scope = ? AND scope_id = ?", where).fetchone()
        if len(buried) + int(count) < 2:
            self._bury(conn, where, buried)
            return
        top = max(int(top), *(version for _, version in buried))
        conn.execute("DELETE FROM state_tombstones WHERE scope = ? AND scope_id = ?", where)
        conn.execute(
            "INSERT INTO state_floors (scope, scope_id, version) VALUES (?, ?, ?) "
            "ON CONFLICT (scope, scope_id) DO UPDATE SET "
            "version = max(version, excluded.version)", (*where, top))
        self._fold_floors(conn)

    def get(self, scope: StateScope, scope_id: str, key: str) -> StateEntry | None:
        """The entry, or None."""
        check_state_write(scope_id, (key,))
        with self._lock:
            conn = self._check_read()
            try:
                row = conn.execute(
                    "SELECT value, version, updated_at FROM state "
                    "WHERE scope = ? AND scope_id = ? AND key = ?",
                    (scope.value, scope_id, key),
                ).fetchone()
            except sqlite3.Error as exc:
                raise self._fail(f"reading {key!r}", exc) from exc
        if row is None:
            return None
        return self._entry(scope, scope_id, key, row[0], row[1], row[2])

    def put(self, scope: StateScope, scope_id: str, key: str, value: Any,
            expected_version: int | None, now: float) -> StateEntry | None:
        """Write if the version matches (absent counts as version 0), atomically across
        processes; the new entry (a key written again after a delete continues after its
        last version), or None on conflict."""
        check_state_write(scope_id, (key,))
        try:
            payload = _ENCODER.encode(value)
        except UnicodeEncodeError:
            raise lone_surrogate_error(value, key) from None
        except (TypeError, msgspec.EncodeError) as exc:
            raise StateError(f"cannot encode the value of {key!r} as JSON: {exc}",
                             hint="state values must be JSON-safe") from exc
        with self._lock:
            conn = self._check_open()
            try:
                self._begin_write(conn)
                try:
                    where = (scope.value, scope_id)
                    current = self._current(conn, where, key)
                    if expected_version is not None and expected_version != (
                            current or 0):  # absent counts as 0 (versions start at 1)
                        conn.execute("ROLLBACK")
                        return None
                    version = self._store(conn, where, key, payload, current, now)
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise
            except sqlite3.Error as exc:
                raise self._fail(f"writing {key!r}", exc) from exc
        return StateEntry(key=key, scope=scope, scope_id=scope_id,
                          value=_DECODER.decode(payload), version=version, updated_at=now)

    def delete(self, scope: StateScope, scope_id: str, key: str,
               expected_version: int | None) -> bool | None:
        """Delete if the version matches (keeping the last version as a tombstone): True if
        deleted, False if absent, None on conflict."""
        check_state_write(scope_id, (key,))
        with self._lock:
            conn = self._check_open()
            try:
                self._begin_write(conn)
                try:
                    where = (scope.value, scope_id)
                    current = self._current(conn, where, key)
                    if current is None:
                        conn.execute("ROLLBACK")
                        return None if expected_version not in (None, 0) else False
                    if expected_version is not None and expected_version != current:
                        conn.execute("ROLLBACK")
                        return None
                    conn.execute(f"DELETE FROM state WHERE {_WHERE_KEY}", (*where, key))
                    self._bury(conn, where, [(key, current)])
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise
            except sqlite3.Error as exc:
                raise self._fail(f"deleting {key!r}", exc) from exc
        return True

    def apply(self, scope: StateScope, scope_id: str, writes: Mapping[str, Any],
              deletes: Iterable[str], guard: tuple[str, int] | None,
              now: float) -> bool:
        """Atomically (one transaction) write ``writes`` and delete ``deletes`` in one
        scope, only when the ``guard`` key is at its expected version (0: absent). False
        when it is not. A batch that empties the scope may leave one version floor for it
        instead of tombstones (see :mod:`llmspell.runtime.state.base`)."""
        deletes = list(deletes)
        check_state_write(scope_id, [*writes, *deletes, *(guard[:1] if guard else ())])
        payloads: dict[str, bytes] = {}
        for key, value in writes.items():
            try:
                payloads[key] = _ENCODER.encode(value)
            except UnicodeEncodeError:
                raise lone_surrogate_error(value, key) from None
            except (TypeError, msgspec.EncodeError) as exc:
                raise StateError(f"cannot encode the value of {key!r} as JSON: {exc}",
                                 hint="state values must be JSON-safe") from exc
        where = (scope.value, scope_id)
        with self._lock:
            conn = self._check_open()
            try:
                self._begin_write(conn)
                try:
                    if guard is not None and guard[1] != (
                            self._current(conn, where, guard[0]) or 0):  # absent: 0
                        conn.execute("ROLLBACK")
                        return False
                    buried: list[tuple[str, int]] = []
                    for key in dict.fromkeys(deletes):
                        current = self._current(conn, where, key)
                        if current is not None:
                            conn.execute(f"DELETE FROM state WHERE {_WHERE_KEY}",
                                         (*where, key))
                            buried.append((key, current))
                    if buried and not payloads and conn.execute(
                            "SELECT 1 FROM state WHERE scope = ? AND scope_id = ? LIMIT 1",
                            where).fetchone() is None:  # the batch empties the scope
                        self._seal(conn, where, buried)
                    elif buried:
                        self._bury(conn, where, buried)
                    for key, payload in payloads.items():
                        self._store(conn, where, key, payload,
                                    self._current(conn, where, key), now)
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise
            except sqlite3.Error as exc:
                raise self._fail("a batch write", exc) from exc
        return True

    def keys(self, scope: StateScope, scope_id: str, prefix: str = "") -> list[str]:
        """Keys in a scope, sorted."""
        check_state_write(scope_id, ())
        check_state_text(prefix, "key prefix")
        with self._lock:
            conn = self._check_read()
            try:
                rows = conn.execute(
                    "SELECT key FROM state WHERE scope = ? AND scope_id = ? "
                    "AND substr(key, 1, ?) = ? ORDER BY key",
                    (scope.value, scope_id, len(prefix), prefix),
                ).fetchall()
            except sqlite3.Error as exc:
                raise self._fail("listing keys", exc) from exc
        return [row[0] for row in rows]

    def items(self, scope: StateScope, scope_id: str) -> dict[str, StateEntry]:
        """Every entry in a scope, in key order (one consistent read)."""
        check_state_write(scope_id, ())
        with self._lock:
            conn = self._check_read()
            try:
                rows = conn.execute(
                    "SELECT key, value, version, updated_at FROM state "
                    "WHERE scope = ? AND scope_id = ? ORDER BY key",
                    (scope.value, scope_id),
                ).fetchall()
            except sqlite3.Error as exc:
                raise self._fail("reading a scope", exc) from exc
        return {row[0]: self._entry(scope, scope_id, row[0], row[1], row[2], row[3])
                for row in rows}

    def scopes(self, scope: StateScope) -> list[str]:
        """The scope ids that hold at least one key, sorted."""
        with self._lock:
            conn = self._check_read()
            try:
                rows = conn.execute(
                    "SELECT DISTINCT scope_id FROM state WHERE scope = ? ORDER BY scope_id",
                    (scope.value,),
                ).fetchall()
            except sqlite3.Error as exc:
                raise self._fail("listing scopes", exc) from exc
        return [row[0] for row in rows]

    def close(self) -> None:
        """Close the connection. Idempotent; later calls raise StateError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._conn.close()



def _check_interval(value: object) -> float:
    """``value`` as a file check interval (a finite number >= 0); a StateError otherwise."""
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value < 0):
        raise StateError(f"file_check_interval must be a number of seconds >= 0, got {value!r}",
                         hint=f"pass an interval such as {FILE_CHECK_INTERVAL} (the default), "
                              "or 0 to check at every read")
    return float(value)


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
