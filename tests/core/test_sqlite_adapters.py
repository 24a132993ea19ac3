"""The identity adapters llmspell.core.sqlite registers for bytes and None: what is bound
is what was given, and an application's own adapter is left in place."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from llmspell.core import sqlite as core_sqlite


def test_bytes_and_none_have_an_adapter_after_import() -> None:
    for kind in (bytes, type(None)):
        assert (kind, sqlite3.PrepareProtocol) in sqlite3.adapters


@pytest.mark.parametrize("value", [None, b"", b"[1,2]", b"\x00\xff" * 100])
def test_values_are_bound_as_they_are(value: bytes | None) -> None:
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("CREATE TABLE t (v)")
        conn.execute("INSERT INTO t VALUES (?)", (value,))
        conn.executemany("INSERT INTO t VALUES (?)", [(value,), (value,)])
        rows = conn.execute("SELECT v, typeof(v) FROM t").fetchall()
    finally:
        conn.close()
    expected_type = "null" if value is None else "blob"
    assert rows == [(value, expected_type)] * 3


def test_a_bytes_subclass_is_still_bound_as_bytes() -> None:
    class Payload(bytes):
        pass

    conn = sqlite3.connect(":memory:")
    try:
        (got,) = conn.execute("SELECT ?", (Payload(b"abc"),)).fetchone()
    finally:
        conn.close()
    assert got == b"abc"


def test_an_application_adapter_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    def theirs(value: Any) -> str:
        return "theirs"

    registered: dict[Any, Any] = {(bytes, sqlite3.PrepareProtocol): theirs}
    calls: list[type] = []
    monkeypatch.setattr(sqlite3, "adapters", registered)
    monkeypatch.setattr(sqlite3, "register_adapter",
                        lambda kind, adapter: calls.append(kind))
    core_sqlite._adapt_plain_values_directly()
    assert calls == [type(None)]  # bytes already had one: left alone
    assert registered[(bytes, sqlite3.PrepareProtocol)] is theirs


def test_without_the_registry_both_are_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[type] = []
    monkeypatch.delattr(sqlite3, "adapters")
    monkeypatch.setattr(sqlite3, "register_adapter",
                        lambda kind, adapter: calls.append(kind))
    core_sqlite._adapt_plain_values_directly()
    assert calls == [bytes, type(None)]
