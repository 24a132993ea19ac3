"""Payloads whose strings are not UTF-8 are refused as SerializationError by the shared
decoders (stores, transports and the CLI read them; a raw UnicodeDecodeError escaped)."""

from __future__ import annotations

import pytest

from llmspell.errors import SerializationError
from llmspell.events.event import UniversalEvent, decode_event, decode_events, encode_event


def _not_utf8(payload: bytes) -> bytes:
    return payload.replace(b"hello", b"he\xff\xfeo", 1)


def test_decode_event_refuses_a_string_that_is_not_utf8() -> None:
    payload = encode_event(UniversalEvent.create("demo.sent", {"text": "hello"}))
    with pytest.raises(SerializationError, match="cannot decode an event"):
        decode_event(_not_utf8(payload))


def test_decode_events_refuses_a_string_that_is_not_utf8() -> None:
    payload = b"[" + encode_event(UniversalEvent.create("demo.sent", {"text": "hello"})) + b"]"
    assert decode_events(payload)[0].data == {"text": "hello"}
    with pytest.raises(SerializationError, match="cannot decode a list of events"):
        decode_events(_not_utf8(payload))
