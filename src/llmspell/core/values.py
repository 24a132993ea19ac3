"""JSON-safe values: the only kind of data that crosses a language or process boundary.

A JSON-safe value is ``None``, ``bool``, ``int``, a finite ``float``, ``str``, a ``list`` of
JSON-safe values, or a ``dict`` with ``str`` keys and JSON-safe values. Checks walk the value
once and name the exact path of the first bad value (``data.items[2].when``).
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any, TypeAlias

import msgspec

from llmspell.core.errors import NotJsonSafeError

__all__ = ["JsonValue", "JsonDict", "check_json_safe", "to_json_safe", "is_json_safe"]

JsonValue: TypeAlias = "bool | int | float | str | list[JsonValue] | dict[str, JsonValue] | None"
JsonDict: TypeAlias = dict[str, Any]

_SCALARS = (str, int, bool, type(None))
_EXACT_SCALARS = frozenset({str, int, bool, type(None)})


def _key_path(path: str, key: str) -> str:
    return f"{path}.{key}" if key.isidentifier() else f"{path}[{key!r}]"


def _fast_ok(value: Any) -> bool:
    """True when ``value`` is JSON-safe. Exact type checks and no path strings: this runs on
    every event built, so the precise (slow) walk is only done to explain a failure."""
    kind = type(value)
    if kind in _EXACT_SCALARS:
        return True
    if kind is float:
        return bool(value - value == 0.0)  # False for inf and nan
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                return False
            item_kind = type(item)
            if item_kind in _EXACT_SCALARS:
                continue
            if item_kind is float:
                if item - item != 0.0:
                    return False
                continue
            if not _fast_ok(item):
                return False
        return True
    if kind is list:
        for item in value:
            item_kind = type(item)
            if item_kind in _EXACT_SCALARS:
                continue
            if item_kind is float:
                if item - item != 0.0:
                    return False
                continue
            if not _fast_ok(item):
                return False
        return True
    return False


def check_json_safe(value: object, path: str = "value") -> None:
    """Raise :class:`NotJsonSafeError` naming the first path in ``value`` that is not JSON-safe."""
    if _fast_ok(value):
        return
    _explain(value, path)


def _explain(value: object, path: str) -> None:
    if isinstance(value, _SCALARS):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotJsonSafeError(path, f"non-finite float ({value!r})")
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            _explain(item, f"{path}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise NotJsonSafeError(f"{path}[{key!r}]", f"{type(key).__name__} key")
            _explain(item, _key_path(path, key))
        return
    raise NotJsonSafeError(path, type(value).__name__)


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
    lists. Anything else that is not JSON-safe is refused rather than guessed at.
    """
    if isinstance(value, Enum):
        return to_json_safe(value.value, path)
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotJsonSafeError(path, f"non-finite float ({value!r})")
        return value
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for raw_key, item in value.items():
            key = raw_key.value if isinstance(raw_key, Enum) else raw_key
            if not isinstance(key, str):
                raise NotJsonSafeError(f"{path}[{key!r}]", f"{type(key).__name__} key")
            out[key] = to_json_safe(item, _key_path(path, key))
        return out
    if isinstance(value, (list, tuple)):
        return [to_json_safe(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        items = [to_json_safe(item, f"{path}[{i}]") for i, item in enumerate(value)]
        try:
            return sorted(items)
        except TypeError:
            return items
    if isinstance(value, msgspec.Struct):
        return to_json_safe(msgspec.to_builtins(value), path)
    raise NotJsonSafeError(path, type(value).__name__)
