"""What the SQLite-backed stores share: opening a connection, and a helpful hint for a
database that will not open."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

__all__ = ["connect", "open_error_hint"]


def connect(
    path: Path,
    *,
    timeout: float,
    prepare: Callable[[sqlite3.Connection], None],
    error: Callable[[BaseException], Exception],
) -> sqlite3.Connection:
    """Open ``path`` (creating its folder) in autocommit mode, usable from any thread, and
    run ``prepare`` on it. Failures to open are raised as ``error(exc)``; the connection is
    closed on any failure, including one ``prepare`` raises."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error(exc) from exc
    conn: sqlite3.Connection | None = None
    try:
        conn = sqlite3.connect(path, timeout=timeout, isolation_level=None,
                               check_same_thread=False)
        prepare(conn)
    except (sqlite3.Error, OSError) as exc:
        if conn is not None:
            conn.close()
        raise error(exc) from exc
    except BaseException:
        if conn is not None:
            conn.close()
        raise
    return conn


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
