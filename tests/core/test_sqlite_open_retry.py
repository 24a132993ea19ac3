"""Opening a SQLite store while another process opens it too: a preparation that fails
because the database is busy or locked is run again until the busy timeout has passed (SQLite
answers some lock upgrades "busy" at once, without waiting); any other failure is raised at
once, as the store's own typed error."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from llmspell.core.errors import StoreError
from llmspell.core.sqlite import connect


def _busy(code: int | None) -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError("database is locked")
    if code is not None:
        exc.sqlite_errorcode = code  # type: ignore[attr-defined]
    return exc


def _as_store_error(exc: BaseException) -> Exception:
    return StoreError(f"cannot open: {exc}", hint="try again")


@pytest.mark.parametrize("code", [sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED,
                                  sqlite3.SQLITE_BUSY | 0x200, None])
def test_a_busy_preparation_is_run_again_until_it_succeeds(tmp_path: Path,
                                                           code: int | None) -> None:
    calls: list[int] = []

    def prepare(conn: sqlite3.Connection) -> None:
        calls.append(1)
        if len(calls) < 3:
            raise _busy(code)
        conn.execute("CREATE TABLE t (x)")

    conn = connect(tmp_path / "a.db", timeout=5.0, prepare=prepare, error=_as_store_error)
    try:
        assert len(calls) == 3
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    finally:
        conn.close()


def test_another_failure_is_raised_at_once(tmp_path: Path) -> None:
    calls: list[int] = []

    def prepare(conn: sqlite3.Connection) -> None:
        calls.append(1)
        conn.execute("SELECT * FROM missing")

    with pytest.raises(StoreError, match="no such table"):
        connect(tmp_path / "b.db", timeout=5.0, prepare=prepare, error=_as_store_error)
    assert len(calls) == 1


def test_a_database_busy_past_the_timeout_gives_the_typed_error(tmp_path: Path) -> None:
    calls: list[int] = []

    def prepare(conn: sqlite3.Connection) -> None:
        calls.append(1)
        raise _busy(sqlite3.SQLITE_BUSY)

    with pytest.raises(StoreError, match="database is locked"):
        connect(tmp_path / "c.db", timeout=0.1, prepare=prepare, error=_as_store_error)
    assert 1 <= len(calls) < 50  # a bounded number of tries
