"""What the SQLite-backed stores share: opening a connection, and a helpful hint for a
database that will not open."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

__all__ = ["connect", "file_identity", "open_error_hint"]


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
