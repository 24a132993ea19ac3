"""What the SQLite-backed stores share: opening a connection, and a helpful hint for a
database that will not open.

Binding parameters: CPython's ``sqlite3`` binds exact ``int``, ``float`` and ``str`` values
directly, but sends every other value (``None`` and ``bytes`` included: a NULL column, an
encoded payload) through its adapter lookup, which for a value with no adapter fails two
attribute lookups and formats two ``AttributeError`` messages before binding the value as
it is: about 2,500 machine instructions per value, three per stored event (about a tenth
of an event's whole cost). Importing this module therefore registers an adapter that
returns the value unchanged for ``bytes`` and ``None`` (only where no adapter is registered
for them): the lookup then finds it at once, and what is bound is the same.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["connect", "file_identity", "open_error_hint"]


def _as_is(value: bytes | None) -> bytes | None:
    """The adapter that binds a value as it is (see the module docstring)."""
    return value


def _adapt_plain_values_directly() -> None:
    """Register :func:`_as_is` for ``bytes`` and ``None`` unless an adapter is registered
    for them already (by the application: then its adapter stays)."""
    registered = getattr(sqlite3, "adapters", None)
    for kind in (bytes, type(None)):
        if registered is None or (kind, sqlite3.PrepareProtocol) not in registered:
            sqlite3.register_adapter(kind, _as_is)


_adapt_plain_values_directly()


def connect(
    path: Path,
    *,
    timeout: float,
    prepare: Callable[[sqlite3.Connection], None],
    error: Callable[[BaseException], Exception],
) -> sqlite3.Connection:
    """Open ``path`` (creating its folder) in autocommit mode, usable from any thread, and
    run ``prepare`` on it. Failures to open are raised as ``error(exc)``; the connection is
    closed on any failure, including one ``prepare`` raises.

    ``prepare`` is run again while it fails because the database is busy or locked, until
    ``timeout`` seconds have passed: processes opening one new file at once each switch it
    to WAL and create its tables, and SQLite answers some of those lock upgrades "busy"
    at once, without waiting ``timeout`` (the deadlock it avoids). ``prepare`` must
    therefore leave nothing half done when it fails (a transaction it began is rolled
    back)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error(exc) from exc
    conn: sqlite3.Connection | None = None
    try:
        conn = sqlite3.connect(path, timeout=timeout, isolation_level=None,
                               check_same_thread=False)
        _prepare_when_free(conn, prepare, timeout)
    except (sqlite3.Error, OSError) as exc:
        if conn is not None:
            conn.close()
        raise error(exc) from exc
    except BaseException:
        if conn is not None:
            conn.close()
        raise
    return conn


_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def _prepare_when_free(conn: sqlite3.Connection, prepare: Callable[[sqlite3.Connection], None],
                       timeout: float) -> None:
    """``prepare(conn)``, run again after a short, growing pause while it fails busy or
    locked, for at most ``timeout`` seconds; then the last error is raised."""
    deadline = time.monotonic() + timeout
    pause = 0.01
    while True:
        try:
            prepare(conn)
            return
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", None)
            busy = (code & 0xFF in _BUSY_CODES if isinstance(code, int)
                    else "locked" in str(exc) or "busy" in str(exc))
            if not busy or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.25)


def file_identity(path: Path) -> tuple[int, int] | None:
    """``(device, inode)`` of the file ``path`` names now, or None when there is none.

    A connection keeps writing to the file it opened even after another process deletes
    or replaces it (SQLite on POSIX writes on through the open descriptor): commits would
    land in a file nobody can open again. Comparing this with the identity taken when the
    file was opened, inside a write transaction, tells such a write apart (a stat, a few
    microseconds)."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def open_error_hint(exc: BaseException) -> str:
    """What to do about ``exc``, raised while opening an SQLite database file."""
    text = str(exc).lower()
    if "not a database" in text or "malformed" in text:
        return ("the file exists but is not an SQLite database (or is damaged); pass the path "
                "of a new file, or move this one away")
    if "locked" in text or "busy" in text:
        return ("another process or connection holds a lock on it; close that, or raise "
                "busy_timeout")
    if "readonly" in text or "unable to open" in text or isinstance(exc, OSError):
        return "check that the path is a writable file in a writable directory"
    return "check the path, its permissions and the free disk space"
