"""The event: one JSON form for every language and process.

``UniversalEvent`` is a frozen msgspec Struct: cheap to build (no ``uuid4``: ids come from
:func:`llmspell.core.ids.new_id`), exact to round-trip through JSON, and checked for
JSON-safe data when built (an error names the path of the bad value; ``str``/``int``/
``float`` subclasses in the data become their plain values). ``sequence`` is process-wide
and strictly increasing in creation order, across threads; it restarts in every process,
so stores order events by their own commit position instead.
"""

from __future__ import annotations

import itertools
import re
import time
from typing import Any

import msgspec

from llmspell.core.errors import (
    InvalidValueError,
    NotJsonSafeError,
    SerializationError,
    brief,
)
from llmspell.core.ids import new_id
from llmspell.core.language import Language
from llmspell.core.speedups import native
from llmspell.core.values import is_plain_json_safe, lone_surrogate_error, normalize_json_safe

__all__ = [
    "MAX_EVENT_TYPE_LENGTH",
    "SCHEMA_VERSION",
    "EventMetadata",
    "PlainJson",
    "UniversalEvent",
    "decode_event",
    "decode_events",
    "encode_event",
    "event_size",
    "next_sequence",
    "validate_event_type",
]

SCHEMA_VERSION = 1

# itertools.count.__next__ is atomic in CPython: a lock-free, thread-safe sequence.
_sequence = itertools.count(1)
next_sequence = _sequence.__next__

MAX_EVENT_TYPE_LENGTH = 255
"""The longest event type name, in characters."""

_EVENT_TYPE = re.compile(r"[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*")


def validate_event_type(event_type: str) -> str:
    """Return ``event_type`` if it is a concrete dotted name of at most
    :data:`MAX_EVENT_TYPE_LENGTH` characters, else raise ``InvalidValueError``."""
    if not isinstance(event_type, str) or not _EVENT_TYPE.fullmatch(event_type):
        raise InvalidValueError(
            f"invalid event type {event_type!r}",
            hint="use dotted segments of letters, digits, '_' or '-', e.g. "
            "'tool.calculator.completed' (patterns with '*' are for subscribing)",
        )
    if len(event_type) > MAX_EVENT_TYPE_LENGTH:
        raise InvalidValueError(
            f"event type is {len(event_type)} characters long; the limit is "
            f"{MAX_EVENT_TYPE_LENGTH}", hint="use a shorter dotted name")
    return event_type


class EventMetadata(msgspec.Struct, frozen=True, kw_only=True):
    """Routing and bookkeeping: correlation id, source, target, tags, priority, ttl (s).

    ``replayed`` marks an event re-published from a store by :meth:`EventBus.replay`.
    ``run_id`` is the run the event belongs to (``system.runs``); the bus fills it in from
    the current run when it builds an event.
    """

    correlation_id: str | None = None
    source: str | None = None
    target: str | None = None
    tags: tuple[str, ...] = ()
    priority: int = 0
    ttl: float | None = None
    replayed: bool = False
    run_id: str | None = None


_EMPTY_METADATA = EventMetadata()
_REPLAYED_METADATA = EventMetadata(replayed=True)


class PlainJson(dict[str, Any]):
    """Event data the runtime decoded with msgspec from JSON it encoded itself: string
    keys, finite numbers, plain types only. An event built with it skips the JSON-safety
    walk (the data becomes a plain ``dict``). For producers that encode in C on a hot
    path (run records); anything else is checked as usual."""

    __slots__ = ()


def _normalize_data(event: Any) -> None:
    """An event's data that is not plain JSON: checked (an error names the bad value's
    path) and normalised (``str``/``int``/``float`` subclasses become their plain values)."""
    data = event.data
    if type(data) is PlainJson:  # decoded by msgspec from JSON: already checked
        msgspec.structs.force_setattr(event, "data", dict(data))
        return
    plain = normalize_json_safe(data, "event.data")
    if plain is not data:
        msgspec.structs.force_setattr(event, "data", plain)


class UniversalEvent(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An event. Build with keywords; only ``event_type`` is required."""

    event_type: str
    data: Any = None
    id: str = msgspec.field(default_factory=new_id)
    language: Language = Language.PYTHON
    timestamp: float = msgspec.field(default_factory=time.time)
    sequence: int = msgspec.field(default_factory=next_sequence)
    metadata: EventMetadata = _EMPTY_METADATA
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if is_plain_json_safe(self.data):  # plain JSON data, the common case: nothing to do
            return
        _normalize_data(self)

    if native is not None:
        # The same check in C, and _normalize_data only for data that is not plain JSON.
        __post_init__ = native.event_post_init(_normalize_data)  # type: ignore[misc]

    @classmethod
    def create(
        cls,
        event_type: str,
        data: Any = None,
        *,
        language: Language | str = Language.PYTHON,
        correlation_id: str | None = None,
        source: str | None = None,
        target: str | None = None,
        tags: tuple[str, ...] | list[str] = (),
        priority: int = 0,
        ttl: float | None = None,
        run_id: str | None = None,
    ) -> UniversalEvent:
        """Build an event, validating the type name and metadata (the friendly constructor)."""
        validate_event_type(event_type)
        if ttl is not None and not ttl > 0:
            raise InvalidValueError(f"ttl must be > 0 seconds or None, got {ttl!r}")
        if correlation_id is None and source is None and target is None and not tags \
                and priority == 0 and ttl is None and run_id is None:
            metadata = _EMPTY_METADATA
        else:
            metadata = EventMetadata(
                correlation_id=correlation_id,
                source=source,
                target=target,
                tags=tuple(tags),
                priority=priority,
                ttl=ttl,
                run_id=run_id,
            )
        return cls(
            event_type=event_type,
            data=data,
            language=Language.parse(language),
            metadata=metadata,
        )

    @property
    def correlation_id(self) -> str | None:
        """Shortcut for ``metadata.correlation_id``."""
        return self.metadata.correlation_id

    @property
    def run_id(self) -> str | None:
        """Shortcut for ``metadata.run_id``."""
        return self.metadata.run_id

    def expired(self, now: float) -> bool:
        """True when the event has a ttl and ``now`` (wall seconds) is past it."""
        ttl = self.metadata.ttl
        return ttl is not None and now > self.timestamp + ttl

    def as_replayed(self) -> UniversalEvent:
        """A copy marked ``metadata.replayed = True`` (same id, sequence and timestamp)."""
        data = self.data
        if type(data) is dict:
            # A copy, so a subscriber that changes the replayed event's data does not change
            # the stored one. In C the plain copy is checked for less than the PlainJson
            # marker (which spares the Python walk) costs: its copy, then a plain dict of it.
            data = dict(data) if native is not None else PlainJson(data)
        metadata = self.metadata
        return msgspec.structs.replace(
            self, data=data,
            metadata=_REPLAYED_METADATA if metadata is _EMPTY_METADATA
            else msgspec.structs.replace(metadata, replayed=True))

    def to_json(self) -> bytes:
        """The event's JSON form."""
        return encode_event(self)

    @classmethod
    def from_json(cls, payload: bytes | str) -> UniversalEvent:
        """Decode an event from its JSON form."""
        return decode_event(payload)


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(UniversalEvent)
_LIST_DECODER = msgspec.json.Decoder(list[UniversalEvent])


_SIZE_OVERHEAD = 200
"""Bytes :func:`event_size` adds for the fixed fields (id, language, timestamp, ...)."""


def event_size(event: UniversalEvent) -> int:
    """The event's size as encoded JSON, in bytes: its data and metadata exactly, its type,
    plus :data:`_SIZE_OVERHEAD` for the fixed-size fields. Encoding only data (and metadata
    when it is not the default) keeps this cheap enough to run on every queued publish.
    Raises :class:`NotJsonSafeError` if the metadata cannot be encoded, or a string in the
    data holds a lone surrogate (which UTF-8 cannot carry)."""
    try:
        size = len(_ENCODER.encode(event.data)) + len(event.event_type) + _SIZE_OVERHEAD
    except UnicodeEncodeError:
        raise lone_surrogate_error(event.data, "event.data") from None
    metadata = event.metadata
    if metadata is not _EMPTY_METADATA:
        try:
            size += len(_ENCODER.encode(metadata))
        except (TypeError, ValueError) as exc:
            raise NotJsonSafeError("event.metadata", f"value the encoder refuses ({exc})"
                                   ) from None
    return size


def encode_event(event: UniversalEvent) -> bytes:
    """Encode one event as JSON."""
    return _ENCODER.encode(event)


def decode_event(payload: bytes | str) -> UniversalEvent:
    """Decode one event; a malformed payload (nested too deep, a string that is not UTF-8
    included) raises :class:`SerializationError`."""
    try:
        return _DECODER.decode(payload)
    except (msgspec.DecodeError, InvalidValueError, RecursionError, UnicodeDecodeError) as exc:
        raise SerializationError(
            f"cannot decode an event: {brief(exc)}",
            hint="pass JSON produced by encode_event") from None


def decode_events(payload: bytes | str) -> list[UniversalEvent]:
    """Decode a JSON list of events."""
    try:
        return _LIST_DECODER.decode(payload)
    except (msgspec.DecodeError, InvalidValueError, RecursionError, UnicodeDecodeError) as exc:
        raise SerializationError(f"cannot decode a list of events: {brief(exc)}") from None
