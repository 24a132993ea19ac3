"""Lifecycle events whose values are too large for the bus: published with those values
withheld, never failing the operation they are about.

The runtime publishes an event about each operation it runs (``tool.<name>.completed``,
``model.<provider>.completed``, ``workflow.<name>.stage_completed``, ``hook.<point>``, ...).
Such an event carries the operation's values (a tool's result, a model's answer, a step's
output), which can be larger than the bus keeps (``EventBus(max_event_bytes=...)``, 1 MiB
by default, or a store's own limit). The operation has its result by then, so the event
must not fail it, and subscribers and the store should still see that it happened.

Every runtime publisher of such events catches :class:`~llmspell.errors.EventTooLargeError`
(nothing is measured up front: an event that fits costs what it always did) and hands the
event to :func:`publish_withheld` / :func:`publish_withheld_async`, which publish it again
with its largest values replaced, at whatever depth they are, by one marker
(:func:`withheld_marker`)::

    {"withheld": "too large", "bytes": 2000002, "digest": "9f86d081884c7d65"}

``bytes`` is the value's size as JSON and ``digest`` its digest as the run recording takes
it (:func:`llmspell.runtime.runs.records.digest`), so the marker matches the
``output_digest`` of the step that produced the value. The rest of the event is kept as it
was; when the values cannot give enough (the metadata alone is too large), the whole data
becomes one marker, and an event too large even then is logged and not published. This is
the event counterpart of the run recording's ``results_withheld`` (a step record too large
for the store keeps its digests without its values).

An event a caller publishes itself (``bus.publish``, ``system.emit``, a script's
``Event.publish``) is the caller's own: one too large still raises ``EventTooLargeError``.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import msgspec

from llmspell.core.errors import EventTooLargeError
from llmspell.events.event import EventMetadata, PlainJson, UniversalEvent
from llmspell.runtime.runs.records import digest

__all__ = ["WITHHELD_TOO_LARGE", "is_withheld", "publish_withheld", "publish_withheld_async",
           "withhold_largest", "withheld_marker"]

logger = logging.getLogger("llmspell.events")

WITHHELD_TOO_LARGE: Final = "too large"
"""The ``withheld`` field of a marker that stands for a value too large for the bus."""

_MARKER_KEYS: Final = frozenset({"withheld", "bytes", "digest"})
_MAX_WALK: Final = 16
"""How deep the search for the largest values goes; a value nested deeper is withheld
whole where the walk stops."""
_TRIES: Final = 3
"""Reduced publishes before the data is withheld whole (a store whose own limit is lower
than the bus's can refuse the first reduction)."""
_SIZES = msgspec.json.Encoder(enc_hook=repr)

Metadata = EventMetadata | dict[str, Any] | None


def withheld_marker(value: Any, size: int | None = None) -> dict[str, Any]:
    """The marker standing for ``value`` in an event: ``{"withheld": "too large",
    "bytes": <its size as JSON>, "digest": <its run-recording digest>}``."""
    return {"withheld": WITHHELD_TOO_LARGE,
            "bytes": _size(value) if size is None else size, "digest": digest(value)}


def is_withheld(value: Any) -> bool:
    """True when ``value`` is a marker made by :func:`withheld_marker`."""
    return (type(value) is dict and value.keys() == _MARKER_KEYS
            and value["withheld"] == WITHHELD_TOO_LARGE)


def withhold_largest(data: Any, excess: int) -> Any:
    """``data`` with its largest values replaced by markers until it is at least
    ``excess`` bytes smaller as JSON. Containers are copied, never changed in place; a
    dict or list is entered (its largest items first) so that what fits beside a huge
    value is kept, and is withheld whole only when its items cannot give enough."""
    return _withhold(data, _size(data), excess, 0)[0]


def publish_withheld(bus: Any, error: EventTooLargeError, event_type: str, data: Any,
                     metadata: Metadata = None, persist: bool = True
                     ) -> UniversalEvent | None:
    """Publish ``event_type`` again after ``bus.publish`` refused it with ``error``, its
    largest values withheld (see the module). Returns the published event, or None when
    even the event with all of its data withheld was too large (logged). Other errors of
    the bus (a closed bus, a full store or queue) propagate as they would from
    ``bus.publish``."""
    original = data
    for _ in range(_TRIES):
        data = _reduced(event_type, data, error)
        try:
            return bus.publish(event_type, data, metadata, persist)  # type: ignore[no-any-return]
        except EventTooLargeError as again:
            error = again
    try:
        return bus.publish(event_type, withheld_marker(original), metadata,  # type: ignore[no-any-return]
                           persist)
    except EventTooLargeError as exc:
        _dropped(event_type, exc)
        return None


async def publish_withheld_async(bus: Any, error: EventTooLargeError, event_type: str,
                                 data: Any, metadata: Metadata = None, persist: bool = True
                                 ) -> UniversalEvent | None:
    """:func:`publish_withheld` for async code (``bus.publish_async``)."""
    original = data
    for _ in range(_TRIES):
        data = _reduced(event_type, data, error)
        try:
            return await bus.publish_async(  # type: ignore[no-any-return]
                event_type, data, metadata, persist)
        except EventTooLargeError as again:
            error = again
    try:
        return await bus.publish_async(  # type: ignore[no-any-return]
            event_type, withheld_marker(original), metadata, persist)
    except EventTooLargeError as exc:
        _dropped(event_type, exc)
        return None


def _reduced(event_type: str, data: Any, error: EventTooLargeError) -> Any:
    logger.warning("event %s is %d bytes, over the limit of %d: published with its largest "
                   "values withheld", event_type, error.size, error.limit)
    reduced = withhold_largest(data, max(error.size - error.limit, 1))
    # A marker is plain JSON: data the producer vouched for stays so.
    return PlainJson(reduced) if isinstance(data, PlainJson) else reduced


def _dropped(event_type: str, exc: EventTooLargeError) -> None:
    logger.warning("event %s not published: too large even with its data withheld (%s)",
                   event_type, exc)


def _size(value: Any) -> int:
    try:
        return len(_SIZES.encode(value))
    except Exception:  # measured only to choose what to withhold: never fail for it
        return 0


def _withhold(value: Any, size: int, excess: int, depth: int) -> tuple[Any, int]:
    """(``value`` reduced, the bytes that saved); see :func:`withhold_largest`."""
    if is_withheld(value):
        return value, 0
    if depth < _MAX_WALK and type(value) in (dict, list, tuple, PlainJson) and value:
        items: list[tuple[Any, Any]] = (list(value.items()) if isinstance(value, dict)
                                        else list(enumerate(value)))
        sized = sorted(((_size(item), index) for index, (_, item) in enumerate(items)),
                       reverse=True)
        out: Any = dict(value) if isinstance(value, dict) else list(value)
        saved = 0
        for item_size, index in sized:
            if saved >= excess or item_size <= _MARKER_BYTES:
                break  # done, or what is left is no larger than its marker would be
            key, item = items[index]
            out[key], cut = _withhold(item, item_size, excess - saved, depth + 1)
            saved += cut
        if saved >= excess:
            return out, saved
    marker = withheld_marker(value, size)
    return marker, size - _size(marker)


_MARKER_BYTES: Final = _size(withheld_marker(None, 10**12))
"""The size of a marker (with a 13-digit ``bytes``): smaller values are never withheld."""
