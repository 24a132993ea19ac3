"""JSON-safe values: the only kind of data that crosses a language or process boundary.

A JSON-safe value is ``None``, ``bool``, an ``int`` of at most 1024 bits (:data:`MIN_INT`
to :data:`MAX_INT`; keep ints within 64 bits if scripts in other languages read them), a
finite ``float``, ``str``, a ``list`` of JSON-safe values, or a ``dict`` with ``str`` keys
and JSON-safe values, nested at most :data:`MAX_DEPTH` containers deep (so a value that
contains itself is refused too). Subclasses of ``str``, ``int`` and ``float``
(``StrEnum``/``IntEnum`` members, a custom hook point) are JSON-safe as the plain value
they stand for: :func:`normalize_json_safe` turns them into the plain type, which is what
every encoder and other language receives. Checks walk the value once and name the exact
path of the first bad value (``data.items[2].when``); every refusal is a
:class:`~llmspell.errors.NotJsonSafeError`, never a ``RecursionError`` or ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import Enum
from typing import Any, TypeAlias

import msgspec

from llmspell.core.errors import NotJsonSafeError
from llmspell.core.speedups import native
from llmspell.core.text import is_utf8

__all__ = [
    "MAX_DEPTH",
    "MAX_INT",
    "MAX_INT64",
    "MIN_INT",
    "MIN_INT64",
    "JsonDict",
    "JsonValue",
    "check_json_safe",
    "is_json_safe",
    "is_plain_json_safe",
    "lone_surrogate_error",
    "normalize_json_safe",
    "to_json_safe",
    "to_json_safe_encoded",
]

JsonValue: TypeAlias = "bool | int | float | str | list[JsonValue] | dict[str, JsonValue] | None"
JsonDict: TypeAlias = dict[str, Any]

MAX_DEPTH = 64
"""How many containers (lists and dicts) a JSON-safe value may nest."""
MIN_INT = -(2**1024 - 1)
"""The smallest JSON-safe int. Larger magnitudes are refused up front: the JSON encoder
(and ``str(int)``) give up on very long integers, and no other language reads them exactly."""
MAX_INT = 2**1024 - 1
"""The largest JSON-safe int."""
MIN_INT64 = -(2**63)
"""The smallest integer a store column or a stream sequence holds (SQLite's INTEGER)."""
MAX_INT64 = 2**63 - 1
"""The largest integer a store column or a stream sequence holds (SQLite's INTEGER)."""

_SCALARS = (str, int, bool, type(None))


def _key_path(path: str, key: str) -> str:
    return f"{path}.{key}" if key.isidentifier() else f"{path}[{key!r}]"


_NONE = type(None)
_SMALL = 1 << 62
"""Ints strictly inside +-2**62 need no comparison with the 1024-bit bounds (a cheap
compare of small ints first)."""


def _python_is_plain_json_safe(value: Any, depth: int = 0) -> bool:
    """True when ``value`` is JSON-safe with plain types only (no subclasses), so it needs
    no normalising. Exact type checks and no path strings: this runs on every event built,
    so the precise (slow) walk is only done to explain a failure or to normalise
    subclasses. False says "not plain", not "not JSON-safe": ask
    :func:`normalize_json_safe` or :func:`check_json_safe` then."""
    kind = type(value)
    if kind is dict:
        if depth >= MAX_DEPTH:
            return False
        for key, item in value.items():
            if type(key) is not str:
                return False
            item_kind = type(item)
            if item_kind is str or item_kind is bool or item_kind is _NONE:
                continue
            if item_kind is int:
                if -_SMALL < item < _SMALL or MIN_INT <= item <= MAX_INT:
                    continue
                return False
            if item_kind is float:
                if item - item == 0.0:  # False for inf and nan
                    continue
                return False
            if not _python_is_plain_json_safe(item, depth + 1):
                return False
        return True
    if kind is str or kind is bool or kind is _NONE:
        return True
    if kind is int:
        return bool(MIN_INT <= value <= MAX_INT)
    if kind is float:
        return bool(value - value == 0.0)
    if kind is list:
        if depth >= MAX_DEPTH:
            return False
        for item in value:
            item_kind = type(item)
            if item_kind is str or item_kind is bool or item_kind is _NONE:
                continue
            if item_kind is int:
                if -_SMALL < item < _SMALL or MIN_INT <= item <= MAX_INT:
                    continue
                return False
            if item_kind is float:
                if item - item == 0.0:
                    continue
                return False
            if not _python_is_plain_json_safe(item, depth + 1):
                return False
        return True
    return False


is_plain_json_safe: Callable[..., bool] = (
    _python_is_plain_json_safe if native is None else native.is_plain_json_safe)
"""``is_plain_json_safe(value, depth=0)``: True when ``value`` is JSON-safe with plain
types only (no subclasses), so it needs no normalising. False says "not plain", not "not
JSON-safe": ask :func:`normalize_json_safe` or :func:`check_json_safe` then. Runs in C
when the native speedups are in use (:mod:`llmspell.core.speedups`), with the same
answers."""


def check_json_safe(value: object, path: str = "value") -> None:
    """Raise :class:`NotJsonSafeError` naming the first path in ``value`` that is not JSON-safe."""
    if is_plain_json_safe(value):
        return
    _walk(value, path, [], normalize=False)


def normalize_json_safe(value: Any, path: str = "value") -> Any:
    """``value`` itself when it is JSON-safe with plain types only (the common, fast case),
    else a copy in which ``str``/``int``/``float`` subclasses (enum members included) are
    their plain values. Raises :class:`NotJsonSafeError` for anything not JSON-safe."""
    if is_plain_json_safe(value):
        return value
    return _walk(value, path, [], normalize=True)


def _scalar(value: object, path: str) -> Any:
    """The plain value of a scalar (subclasses included), or raise if it is out of range."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        plain = int(value)
        if not MIN_INT <= plain <= MAX_INT:
            raise NotJsonSafeError(path, f"integer outside the 1024-bit range "
                                         f"({plain.bit_length()} bits)")
        return plain
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, float):
        plain_float = float(value)
        if not math.isfinite(plain_float):
            raise NotJsonSafeError(path, f"non-finite float ({plain_float!r})")
        return plain_float
    raise NotJsonSafeError(path, type(value).__name__)


def _walk(value: object, path: str, parents: list[int], *, normalize: bool) -> Any:
    """The slow walk: explain the first problem, or build the normalised copy."""
    if isinstance(value, (list, dict)):
        if id(value) in parents:
            raise NotJsonSafeError(path, f"{type(value).__name__} that contains itself (a cycle)")
        if len(parents) >= MAX_DEPTH:
            raise NotJsonSafeError(
                path, f"{type(value).__name__} nested deeper than {MAX_DEPTH} containers")
        parents.append(id(value))
        try:
            if isinstance(value, list):
                return [_walk(item, f"{path}[{index}]", parents, normalize=normalize)
                        for index, item in enumerate(value)]
            out: dict[str, Any] = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    raise NotJsonSafeError(f"{path}[{key!r}]", f"{type(key).__name__} key")
                plain_key = str.__str__(key)
                out[plain_key] = _walk(item, _key_path(path, plain_key), parents,
                                       normalize=normalize)
            return out
        finally:
            parents.pop()
    return _scalar(value, path)


def is_json_safe(value: object) -> bool:
    """Return True when ``value`` is JSON-safe (see :func:`check_json_safe`)."""
    try:
        check_json_safe(value)
    except NotJsonSafeError:
        return False
    return True


def to_json_safe(value: object, path: str = "value") -> Any:
    """Convert ``value`` into a JSON-safe value, or raise naming the path that cannot be.

    Tuples become lists, enums their value, msgspec Structs their dict form, sets sorted
    lists, ``str``/``int``/``float`` subclasses their plain type. Anything else that is not
    JSON-safe (cycles, too deep, ints past :data:`MAX_INT` included) is refused rather
    than guessed at. A dict or list comes back as a new one (a deep copy) even when it
    already was JSON-safe; one made of plain types only is copied by a JSON round trip in
    C (4-5 times quicker than the item-by-item conversion: tool results take this path).
    """
    kind = type(value)
    # A plain scalar is its own JSON-safe form (many tool results are one).
    if kind is str or kind is bool or kind is _NONE or (
            kind is int and -_SMALL < value < _SMALL) or (  # type: ignore[operator]
            kind is float and value - value == 0.0):  # type: ignore[operator]
        return value
    if (kind is dict or kind is list) and is_plain_json_safe(value):
        try:
            return _PLAIN_COPY_DECODER.decode(_PLAIN_COPY_ENCODER.encode(value))
        except (msgspec.MsgspecError, UnicodeError):  # a lone surrogate in a text
            pass
    return _convert(value, path, [])


_PLAIN_COPY_ENCODER = msgspec.json.Encoder()
_PLAIN_COPY_DECODER = msgspec.json.Decoder()


def to_json_safe_encoded(value: object, path: str = "value") -> tuple[Any, bytes | None]:
    """:func:`to_json_safe` of ``value`` (the same answer, the same refusals), with the
    JSON encoding of that answer when the plain round trip made it (a dict or list of plain
    types: the common case), else None. For a producer that goes on to encode the copy
    anyway (to mask or publish it): it reuses these bytes instead of encoding again, and
    may trust they are plain JSON (checked by :func:`is_plain_json_safe`)."""
    kind = type(value)
    if (kind is dict or kind is list) and is_plain_json_safe(value):
        try:
            raw = _PLAIN_COPY_ENCODER.encode(value)
            return _PLAIN_COPY_DECODER.decode(raw), raw
        except (msgspec.MsgspecError, UnicodeError):  # a lone surrogate in a text
            pass
    return to_json_safe(value, path), None


def _plain_subclass(value: object) -> object:
    """``enc_hook`` for :func:`msgspec.to_builtins`: the plain value of a str/int/float
    subclass that is not an enum (which msgspec handles itself)."""
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON-safe")


def _convert(value: object, path: str, parents: list[int]) -> Any:
    if isinstance(value, Enum):
        return _convert(value.value, path, parents)
    if isinstance(value, (*_SCALARS, float)):
        return _scalar(value, path)
    if isinstance(value, msgspec.Struct):
        try:
            return _convert(msgspec.to_builtins(value, enc_hook=_plain_subclass), path,
                            parents)
        except (TypeError, ValueError, RecursionError) as exc:
            raise NotJsonSafeError(path, f"{type(value).__name__} ({exc})") from None
    if not isinstance(value, (dict, list, tuple, set, frozenset)):
        raise NotJsonSafeError(path, type(value).__name__)
    if id(value) in parents:
        raise NotJsonSafeError(path, f"{type(value).__name__} that contains itself (a cycle)")
    if len(parents) >= MAX_DEPTH:
        raise NotJsonSafeError(
            path, f"{type(value).__name__} nested deeper than {MAX_DEPTH} containers")
    parents.append(id(value))
    try:
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for raw_key, item in value.items():
                key = raw_key.value if isinstance(raw_key, Enum) else raw_key
                if not isinstance(key, str):
                    raise NotJsonSafeError(f"{path}[{key!r}]", f"{type(key).__name__} key")
                key = str.__str__(key)
                out[key] = _convert(item, _key_path(path, key), parents)
            return out
        if isinstance(value, (list, tuple)):
            return [_convert(item, f"{path}[{i}]", parents) for i, item in enumerate(value)]
        items = [_convert(item, f"{path}[{i}]", parents) for i, item in enumerate(value)]
        try:
            return sorted(items)
        except TypeError:
            return items
    finally:
        parents.pop()


def lone_surrogate_error(value: Any, path: str = "value") -> NotJsonSafeError:
    """The refusal of ``value`` when encoding it as UTF-8 JSON failed with a
    ``UnicodeEncodeError``: a string (or key) in it holds a lone surrogate, half of a
    UTF-16 pair (text decoded with ``errors="surrogateescape"``, or cut from a JavaScript
    string), which UTF-8, and so JSON and every other language, cannot carry. Names the
    first such string's path. Encoders catch the error and raise this instead, so the
    check costs nothing on the values that encode."""
    found = _surrogate_path(value, path, 0)
    return NotJsonSafeError(
        found or path, "string holding a lone surrogate (half of a UTF-16 pair)",
        hint="UTF-8 cannot carry it: clean the text first, e.g. "
             "text.encode('utf-8', 'replace').decode()")


def _surrogate_path(value: Any, path: str, depth: int) -> str | None:
    if isinstance(value, str):
        return None if is_utf8(value) else path
    if depth >= MAX_DEPTH:
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                if not is_utf8(key):
                    return f"{path} (a key)"
                found = _surrogate_path(item, _key_path(path, key), depth + 1)
                if found is not None:
                    return found
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = _surrogate_path(item, f"{path}[{i}]", depth + 1)
            if found is not None:
                return found
    return None
