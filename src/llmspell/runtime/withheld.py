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

The same publishers catch :class:`~llmspell.errors.NotJsonSafeError` too: a value no
event can carry (a string holding a lone surrogate, half of a UTF-16 pair, as text decoded
with ``errors="surrogateescape"`` or cut from a JavaScript string has; containers nested
deeper than :data:`~llmspell.core.values.MAX_DEPTH`; a cycle, a non-finite float) in a
tool's result or parameters, a model's answer or a step's output. :func:`publish_withheld`
then publishes the event with those values made safe (:func:`json_safe_copy`): lone
surrogates become U+FFFD (in keys too), and each value that cannot be made safe becomes
one marker (:func:`unsafe_marker`)::

    {"withheld": "not JSON-safe", "reason": "list nested deeper than 64 containers",
     "digest": "5dd4f79226c06ead"}

The operation's own result is never changed: only its event.

An event a caller publishes itself (``bus.publish``, ``system.emit``, a script's
``Event.publish``) is the caller's own: one too large still raises ``EventTooLargeError``,
one not JSON-safe ``NotJsonSafeError``.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from typing import Any, Final

import msgspec

from llmspell.core.errors import EventTooLargeError, NotJsonSafeError
from llmspell.core.redact import get_logger
from llmspell.core.text import is_utf8
from llmspell.core.values import MAX_DEPTH, MAX_INT, MIN_INT
from llmspell.events.event import EventMetadata, PlainJson, UniversalEvent
from llmspell.runtime.runs.records import digest

__all__ = ["WITHHELD_NOT_JSON_SAFE", "WITHHELD_TOO_LARGE", "is_withheld", "json_safe_copy",
           "publish_withheld", "publish_withheld_async", "unsafe_marker", "withhold_largest",
           "withheld_marker"]

logger = get_logger("llmspell.events")

WITHHELD_TOO_LARGE: Final = "too large"
"""The ``withheld`` field of a marker that stands for a value too large for the bus."""

WITHHELD_NOT_JSON_SAFE: Final = "not JSON-safe"
"""The ``withheld`` field of a marker that stands for a value no event can carry."""

_MARKER_KEYS: Final = frozenset({"withheld", "bytes", "digest"})
_UNSAFE_KEYS: Final = frozenset({"withheld", "reason", "digest"})
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


def unsafe_marker(value: Any, reason: str) -> dict[str, Any]:
    """The marker standing for ``value``, which no event can carry, in an event:
    ``{"withheld": "not JSON-safe", "reason": <why>, "digest": <its run-recording
    digest>}``."""
    return {"withheld": WITHHELD_NOT_JSON_SAFE, "reason": reason, "digest": digest(value)}


def is_withheld(value: Any) -> bool:
    """True when ``value`` is a marker made by :func:`withheld_marker` or
    :func:`unsafe_marker`."""
    if type(value) is not dict:
        return False
    keys = value.keys()
    return ((keys == _MARKER_KEYS and value["withheld"] == WITHHELD_TOO_LARGE)
            or (keys == _UNSAFE_KEYS and value["withheld"] == WITHHELD_NOT_JSON_SAFE))


def json_safe_copy(data: Any) -> Any:
    """A copy of ``data`` that any event can carry as its data: every string (and key)
    holding a lone surrogate has U+FFFD in its place (a full UTF-16 pair becomes its
    character), tuples are lists, ``str``/``int``/``float`` subclasses their plain values,
    a key that is not a string its ``repr``, and each value that cannot be made safe (a
    container whose contents nest deeper than :data:`~llmspell.core.values.MAX_DEPTH` from
    ``data``, one that contains itself, a non-finite float, an int past the 1024-bit
    range, an object of another type) an :func:`unsafe_marker`. ``data`` is not
    changed."""
    return _safe(data, [])


def withhold_largest(data: Any, excess: int) -> Any:
    """``data`` with its largest values replaced by markers until it is at least
    ``excess`` bytes smaller as JSON. Containers are copied, never changed in place; a
    dict or list is entered (its largest items first) so that what fits beside a huge
    value is kept, and is withheld whole only when its items cannot give enough."""
    return _withhold(data, _size(data), excess, 0)[0]


def publish_withheld(bus: Any, error: EventTooLargeError | NotJsonSafeError,
                     event_type: str, data: Any, metadata: Metadata = None,
                     persist: bool = True) -> UniversalEvent | None:
    """Publish ``event_type`` again after ``bus.publish`` refused it with ``error``: its
    values made safe (:func:`json_safe_copy`) when the error is ``NotJsonSafeError``, its
    largest values withheld when it is (or then becomes) ``EventTooLargeError`` (see the
    module). Returns the published event, or None when even the event with all of its data
    withheld could not be published (logged). Other errors of the bus (a closed bus, a full
    store or queue) propagate as they would from ``bus.publish``."""
    attempts = _attempts(event_type, error, data, metadata)
    candidate = next(attempts)
    while True:
        try:
            return bus.publish(event_type, *candidate, persist)  # type: ignore[no-any-return]
        except (EventTooLargeError, NotJsonSafeError) as refused:
            following = _next_attempt(attempts, refused)
            if following is None:
                return None
            candidate = following


async def publish_withheld_async(bus: Any, error: EventTooLargeError | NotJsonSafeError,
                                 event_type: str, data: Any, metadata: Metadata = None,
                                 persist: bool = True) -> UniversalEvent | None:
    """:func:`publish_withheld` for async code (``bus.publish_async``)."""
    attempts = _attempts(event_type, error, data, metadata)
    candidate = next(attempts)
    while True:
        try:
            return await bus.publish_async(  # type: ignore[no-any-return]
                event_type, *candidate, persist)
        except (EventTooLargeError, NotJsonSafeError) as refused:
            following = _next_attempt(attempts, refused)
            if following is None:
                return None
            candidate = following


_Attempts = Generator[tuple[Any, Metadata], EventTooLargeError | NotJsonSafeError, None]


def _attempts(event_type: str, error: EventTooLargeError | NotJsonSafeError, data: Any,
              metadata: Metadata) -> _Attempts:
    """The (data, metadata) to publish in turn after ``error``, each sent the error that
    refused the one before; ends when nothing more can be tried (logged). One sequence for
    the sync and the async publisher: made safe once when ``error`` is
    ``NotJsonSafeError``, then reduced up to :data:`_TRIES` times, then withheld whole. A
    refusal the current stage cannot act on (``NotJsonSafeError`` of a reduced event,
    which holds only what was published before) is raised as it is."""
    if isinstance(error, NotJsonSafeError):
        data, metadata = _made_safe(event_type, error, data, metadata)
        error = yield data, metadata
        if isinstance(error, NotJsonSafeError):
            _dropped(event_type, error)
            return
    original = data
    for _ in range(_TRIES):
        if not isinstance(error, EventTooLargeError):
            raise error
        data = _reduced(event_type, data, error)
        error = yield data, metadata
    if not isinstance(error, EventTooLargeError):
        raise error
    error = yield withheld_marker(original), metadata
    if not isinstance(error, EventTooLargeError):
        raise error
    _dropped(event_type, error)


def _next_attempt(attempts: _Attempts, refused: EventTooLargeError | NotJsonSafeError
                  ) -> tuple[Any, Metadata] | None:
    """The next (data, metadata) of ``attempts`` after ``refused``; None when there is
    none."""
    try:
        return attempts.send(refused)
    except StopIteration:
        return None


def _reduced(event_type: str, data: Any, error: EventTooLargeError) -> Any:
    logger.warning("event %s is %d bytes, over the limit of %d: published with its largest "
                   "values withheld", event_type, error.size, error.limit)
    reduced = withhold_largest(data, max(error.size - error.limit, 1))
    # A marker is plain JSON: data the producer vouched for stays so.
    return PlainJson(reduced) if isinstance(data, PlainJson) else reduced


def _dropped(event_type: str, exc: EventTooLargeError | NotJsonSafeError) -> None:
    what = "too large" if isinstance(exc, EventTooLargeError) else "not JSON-safe"
    logger.warning("event %s not published: %s even with its data withheld (%s)",
                   event_type, what, exc)


def _made_safe(event_type: str, error: NotJsonSafeError, data: Any, metadata: Metadata
               ) -> tuple[Any, Metadata]:
    """(``data``, ``metadata``) made safe for the event, after ``error`` refused them."""
    logger.warning("event %s holds a value that is not JSON-safe (%s): published with its "
                   "values made safe", event_type, error.message)
    safe = json_safe_copy(data)
    if isinstance(data, PlainJson) and type(safe) is dict:
        safe = PlainJson(safe)  # still plain JSON: the bus may skip its walk
    if isinstance(metadata, EventMetadata):
        metadata = msgspec.structs.replace(
            metadata, tags=tuple(_text(t) for t in metadata.tags),
            **{field: _text(value) for field in ("correlation_id", "source", "target",
                                                 "run_id")
               if isinstance(value := getattr(metadata, field), str)})
    elif isinstance(metadata, dict):
        metadata = json_safe_copy(metadata)
    return safe, metadata


def _text(text: str) -> str:
    """``text`` as a plain ``str`` that UTF-8 can carry: each lone surrogate is U+FFFD
    (a pair of them that makes up one UTF-16 character becomes that character)."""
    plain = str.__str__(text)
    if is_utf8(plain):
        return plain
    return plain.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _safe(value: Any, parents: list[int]) -> Any:
    """See :func:`json_safe_copy`; ``parents`` are the ids of the enclosing containers."""
    if isinstance(value, str):
        return _text(value)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        plain = int(value)
        if MIN_INT <= plain <= MAX_INT:
            return plain
        return unsafe_marker(value, "integer outside the 1024-bit range")
    if isinstance(value, float):
        number = float(value)
        return number if math.isfinite(number) else unsafe_marker(value, "non-finite float")
    if not isinstance(value, (dict, list, tuple)):
        return unsafe_marker(value, f"{type(value).__name__} object")
    kind = type(value).__name__
    if id(value) in parents:
        return unsafe_marker(value, f"{kind} that contains itself (a cycle)")
    items = value.values() if isinstance(value, dict) else value
    if len(parents) >= MAX_DEPTH - 1 and any(isinstance(item, (dict, list, tuple))
                                             for item in items):
        # The marker takes this container's place: one level deeper it would be too deep.
        return unsafe_marker(value, f"{kind} nested deeper than {MAX_DEPTH} containers")
    parents.append(id(value))
    try:
        if not isinstance(value, dict):
            return [_safe(item, parents) for item in value]
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = _text(key) if isinstance(key, str) else _key_text(key)
            if name in out:  # two keys that differed only in their lone surrogates
                name = _unused(out, name)
            out[name] = _safe(item, parents)
        return out
    finally:
        parents.pop()


def _key_text(key: object) -> str:
    """A key that is not a string, as one: its ``repr``."""
    try:
        return _text(repr(key))
    except Exception:  # a repr that raises: the event is never lost for it
        return f"<{type(key).__name__} key>"


def _unused(out: dict[str, Any], name: str) -> str:
    """``name`` with the first suffix `` (2)``, `` (3)``, ... that no key of ``out`` has."""
    number = 2
    while f"{name} ({number})" in out:
        number += 1
    return f"{name} ({number})"


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
