from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmspell.core import Language
from llmspell.errors import InvalidValueError, NotJsonSafeError, SerializationError
from llmspell.events import EventMetadata, UniversalEvent, decode_event, encode_event
from llmspell.events.event import decode_events, validate_event_type
from tests.hooks.test_context_results import json_values

segments = st.from_regex(r"[A-Za-z0-9_\-]{1,8}", fullmatch=True)
event_types = st.lists(segments, min_size=1, max_size=4).map(".".join)


@given(
    event_types,
    json_values,
    st.sampled_from(list(Language)),
    st.builds(
        EventMetadata,
        correlation_id=st.none() | st.text(max_size=8),
        source=st.none() | st.text(max_size=8),
        target=st.none() | st.text(max_size=8),
        tags=st.lists(st.text(max_size=5), max_size=3).map(tuple),
        priority=st.integers(-5, 5),
        ttl=st.none() | st.floats(min_value=0.001, max_value=1e6),
        replayed=st.booleans(),
    ),
)
def test_json_round_trip_is_exact(event_type: str, data: object, language: Language,
                                  metadata: EventMetadata) -> None:
    event = UniversalEvent(event_type=event_type, data=data, language=language,
                           metadata=metadata)
    assert decode_event(encode_event(event)) == event
    assert UniversalEvent.from_json(event.to_json()) == event


def test_not_json_safe_data_is_refused_naming_the_path() -> None:
    with pytest.raises(NotJsonSafeError) as info:
        UniversalEvent(event_type="a.b", data={"rows": [{"when": object()}]})
    assert info.value.path == "event.data.rows[0].when"
    with pytest.raises(NotJsonSafeError):
        UniversalEvent(event_type="a.b", data={"x": float("nan")})
    with pytest.raises(NotJsonSafeError):
        UniversalEvent.create("a.b", {1: "int key"})


def test_sequence_is_strictly_increasing_across_threads() -> None:
    seen: list[list[int]] = [[] for _ in range(4)]

    def make(slot: int) -> None:
        seen[slot].extend(UniversalEvent(event_type="x").sequence for _ in range(2000))

    threads = [threading.Thread(target=make, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [s for part in seen for s in part]
    assert len(set(everything)) == 8000
    for part in seen:
        assert part == sorted(part)


def test_create_validates_and_fills_metadata() -> None:
    event = UniversalEvent.create("tool.calc.completed", {"r": 1}, language="js",
                                  correlation_id="c1", source="s", tags=["a"], ttl=5)
    assert event.language is Language.JAVASCRIPT and event.correlation_id == "c1"
    assert event.metadata.tags == ("a",) and event.metadata.ttl == 5
    plain = UniversalEvent.create("a")
    assert plain.metadata == EventMetadata() and plain.schema_version == 1
    for bad in ["", "a..b", "a.*", ".a", "a b"]:
        with pytest.raises(InvalidValueError, match="event type"):
            UniversalEvent.create(bad)
    with pytest.raises(InvalidValueError, match="ttl"):
        UniversalEvent.create("a", ttl=0)
    assert validate_event_type("rust-ok.v_2") == "rust-ok.v_2"


def test_replayed_copy_and_expiry() -> None:
    event = UniversalEvent.create("a.b", {"x": 1}, ttl=10)
    copy = event.as_replayed()
    assert copy.metadata.replayed and not event.metadata.replayed
    assert (copy.id, copy.sequence, copy.timestamp, copy.data) == (
        event.id, event.sequence, event.timestamp, event.data)
    assert not event.expired(event.timestamp + 9.9)
    assert event.expired(event.timestamp + 10.1)
    assert not UniversalEvent(event_type="a").expired(1e12)


def test_decode_errors_are_typed() -> None:
    with pytest.raises(SerializationError):
        decode_event(b'{"data": 1}')
    with pytest.raises(SerializationError):
        decode_events(b"[1]")
    events = [UniversalEvent(event_type="a"), UniversalEvent(event_type="b")]
    import msgspec

    assert decode_events(msgspec.json.encode(events)) == events


@pytest.mark.parametrize("depth", [100, 5000])
def test_a_payload_nested_too_deep_is_a_serialization_error(depth: int) -> None:
    # 100: decodes, but deeper than event data may nest; 5000: deeper than msgspec's
    # decoder recurses (a RecursionError inside it). Either way a typed, short error.
    deep = b"[" * depth + b"]" * depth
    with pytest.raises(SerializationError) as info:
        decode_event(b'{"event_type": "a.b", "data": ' + deep + b"}")
    assert len(str(info.value)) < 400
    with pytest.raises(SerializationError):
        decode_events(b'[{"event_type": "a.b", "data": ' + deep + b"}]")
