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
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from llmspell.core.errors import StateError
from llmspell.core.sqlite import connect, open_error_hint
from llmspell.core.values import lone_surrogate_error
from llmspell.runtime.state.base import (
    StateEntry,
    StateScope,
    check_state_text,
    check_state_write,
)

__all__ = ["SCHEMA_VERSION", "SQLiteStateBackend"]

SCHEMA_VERSION = 1
"""The table layout version, kept in ``PRAGMA user_version``."""

_COLUMNS = ("scope", "scope_id", "key", "value", "version", "updated_at")
_SCHEMA = """CREATE TABLE IF NOT EXISTS state (
    scope TEXT NOT NULL,
    scope_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    version INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (scope, scope_id, key)
) WITHOUT ROWID"""
_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder()


def _open_error(path: Path, exc: BaseException) -> StateError:
    return StateError(f"cannot open the state database at {path}: {exc}", hint=open_error_hint(exc))


class SQLiteStateBackend:
    """State in an SQLite file at ``path`` (created with its folder when missing).

    ``busy_timeout`` is how long a write waits for another connection's write lock.
    Raises :class:`~llmspell.errors.StateError` when the file cannot be opened, is not an
    SQLite database, or holds a ``state`` table of another shape.
    """

    def __init__(self, path: str | Path, *, busy_timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.busy_timeout = float(busy_timeout)
        self._lock = threading.Lock()
        self._closed = False
        conn = connect(self.path, timeout=self.busy_timeout, prepare=self._prepare,
                       error=lambda exc: _open_error(self.path, exc))
        self._conn = conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StateError(
                f"cannot switch {self.path} to WAL journal mode (it stays in {mode!r} mode)",
                hint="put the database on a local file system that supports WAL",
            )
        conn.execute("PRAGMA synchronous=NORMAL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StateError(
                f"{self.path} has state schema version {version}; this llmspell "
                f"understands up to {SCHEMA_VERSION}",
                hint="upgrade llmspell, or use a new file",
            )
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(_SCHEMA)
            columns = tuple(row[1] for row in conn.execute("PRAGMA table_info(state)"))
            if columns != _COLUMNS:
                raise StateError(
                    f"{self.path} has a table 'state' that is not an llmspell state table "
                    f"(columns {', '.join(columns)})",
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

    def get(self, scope: StateScope, scope_id: str, key: str) -> StateEntry | None:
        """The entry, or None."""
        check_state_write(scope_id, (key,))
        with self._lock:
            conn = self._check_open()
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
        processes; the new entry, or None on conflict."""
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
                conn.execute("BEGIN IMMEDIATE")
                try:
                    row = conn.execute(
                        "SELECT version FROM state WHERE scope = ? AND scope_id = ? "
                        "AND key = ?", (scope.value, scope_id, key),
                    ).fetchone()
                    version = 0 if row is None else int(row[0])
                    if expected_version is not None and expected_version != version:
                        conn.execute("ROLLBACK")
                        return None
                    conn.execute(
                        "INSERT INTO state (scope, scope_id, key, value, version, "
                        "updated_at) VALUES (?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT (scope, scope_id, key) DO UPDATE SET "
                        "value = excluded.value, version = excluded.version, "
                        "updated_at = excluded.updated_at",
                        (scope.value, scope_id, key, payload, version + 1, now),
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise
            except sqlite3.Error as exc:
                raise self._fail(f"writing {key!r}", exc) from exc
        return StateEntry(key=key, scope=scope, scope_id=scope_id,
                          value=_DECODER.decode(payload), version=version + 1,
                          updated_at=now)

    def delete(self, scope: StateScope, scope_id: str, key: str,
               expected_version: int | None) -> bool | None:
        """Delete if the version matches: True if deleted, False if absent, None on
        conflict."""
        check_state_write(scope_id, (key,))
        with self._lock:
            conn = self._check_open()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    row = conn.execute(
                        "SELECT version FROM state WHERE scope = ? AND scope_id = ? "
                        "AND key = ?", (scope.value, scope_id, key),
                    ).fetchone()
                    if row is None:
                        conn.execute("ROLLBACK")
                        return None if expected_version not in (None, 0) else False
                    if expected_version is not None and expected_version != int(row[0]):
                        conn.execute("ROLLBACK")
                        return None
                    conn.execute(
                        "DELETE FROM state WHERE scope = ? AND scope_id = ? AND key = ?",
                        (scope.value, scope_id, key),
                    )
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
        when it is not."""
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
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if guard is not None:
                        row = conn.execute(
                            "SELECT version FROM state WHERE scope = ? AND scope_id = ? "
                            "AND key = ?", (*where, guard[0]),
                        ).fetchone()
                        if (0 if row is None else int(row[0])) != guard[1]:
                            conn.execute("ROLLBACK")
                            return False
                    conn.executemany(
                        "DELETE FROM state WHERE scope = ? AND scope_id = ? AND key = ?",
                        [(*where, key) for key in deletes],
                    )
                    conn.executemany(
                        "INSERT INTO state (scope, scope_id, key, value, version, "
                        "updated_at) VALUES (?, ?, ?, ?, 1, ?) "
                        "ON CONFLICT (scope, scope_id, key) DO UPDATE SET "
                        "value = excluded.value, version = state.version + 1, "
                        "updated_at = excluded.updated_at",
                        [(*where, key, payload, now) for key, payload in payloads.items()],
                    )
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
            conn = self._check_open()
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
            conn = self._check_open()
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
            conn = self._check_open()
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


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
