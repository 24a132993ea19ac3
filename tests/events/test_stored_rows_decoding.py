"""Rows read back from a SQLite store: columns of the wrong type are refused, a payload
stored as TEXT by another program still decodes, and the default metadata read back is the
one shared default object. And the replayed copy of an event: its own data, marked."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from llmspell.core.errors import SerializationError
from llmspell.events.event import EventMetadata, PlainJson, UniversalEvent
from llmspell.events.store.sqlite import SQLiteStore


def _stored(path: Path, *events: UniversalEvent) -> None:
    with SQLiteStore(path) as store:
        for event in events:
            store.append(event)
        store.flush()


# (TEXT columns turn numbers into text: a blob is what another program can leave there.)
@pytest.mark.parametrize(("column", "value"), [
    ("correlation_id", b"bytes"), ("run_id", b"\x00"),
])
def test_a_column_of_the_wrong_type_is_a_serialization_error(
        tmp_path: Path, column: str, value: object) -> None:
    path = tmp_path / "events.db"
    _stored(path, UniversalEvent.create("a.b", {"x": 1}))
    conn = sqlite3.connect(path)
    conn.execute(f"UPDATE events SET {column} = ?", (value,))
    conn.commit()
    conn.close()
    with SQLiteStore(path) as store, pytest.raises(SerializationError, match="wrong type"):
        store.query()


def test_a_payload_written_as_text_still_decodes(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    event = UniversalEvent.create("a.b", {"x": 1}, correlation_id="c1")
    _stored(path, event)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE events SET payload = CAST(payload AS TEXT)")
    conn.commit()
    conn.close()
    with SQLiteStore(path) as store:
        (back,) = store.query()
    assert back == event


def test_a_number_payload_is_a_serialization_error(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    _stored(path, UniversalEvent.create("a.b"))
    conn = sqlite3.connect(path)
    conn.execute("UPDATE events SET payload = 12")
    conn.commit()
    conn.close()
    with SQLiteStore(path) as store, pytest.raises(SerializationError, match="not JSON"):
        store.query()


def test_metadata_read_back_from_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    plain = UniversalEvent.create("a.b", {"x": 1})
    tagged = UniversalEvent.create("a.c", correlation_id="c1", run_id="r1")
    _stored(path, plain, tagged)
    with SQLiteStore(path) as store:
        back_plain, back_tagged = store.query()
    assert back_plain.metadata is plain.metadata  # the shared default object
    assert back_tagged.metadata == EventMetadata(correlation_id="c1", run_id="r1")


def test_the_replayed_copy_has_its_own_data() -> None:
    event = UniversalEvent.create("a.b", {"x": 1, "nested": {"y": 2}})
    copy = event.as_replayed()
    assert copy.data == event.data and type(copy.data) is dict
    copy.data["x"] = 99  # a subscriber that changes the replayed event's data
    assert event.data["x"] == 1
    assert copy.metadata == EventMetadata(replayed=True)
    assert not event.metadata.replayed


def test_the_replayed_copy_keeps_metadata_and_other_data() -> None:
    tagged = UniversalEvent.create("a.b", [1, 2], correlation_id="c1", tags=["t"])
    copy = tagged.as_replayed()
    assert copy.data == [1, 2]
    assert copy.metadata == EventMetadata(correlation_id="c1", tags=("t",), replayed=True)
    again = copy.as_replayed()
    assert again.metadata == copy.metadata


def test_the_replayed_copy_without_native_speedups(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmspell.events import event as event_module

    monkeypatch.setattr(event_module, "native", None)
    event = UniversalEvent.create("a.b", {"x": 1})
    copy = event.as_replayed()
    assert copy.data == {"x": 1} and copy.data is not event.data
    assert type(copy.data) in (dict, PlainJson)
