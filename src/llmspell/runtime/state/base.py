"""The state contract: scopes, entries and the backend protocol.

State is a key-value store with scopes (``global``, ``session``, ``workflow``, ``agent``;
each scope but ``global`` is qualified by a ``scope_id``) and optimistic versioning: every
entry has a ``version`` that each write increments, and a write may name the
``expected_version`` it was based on (a mismatch is a conflict).

Every backend refuses text that UTF-8 cannot carry (a lone surrogate, half of a UTF-16
pair) the same way, before anything is stored: in a key, scope id or key prefix with a
:class:`~llmspell.errors.StateError` (:func:`check_state_text`), in a value with a
:class:`~llmspell.errors.NotJsonSafeError` naming its path (:func:`check_state_value`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

import msgspec

from llmspell.core.errors import StateError
from llmspell.core.text import is_utf8
from llmspell.core.values import lone_surrogate_error

__all__ = ["StateBackend", "StateEntry", "StateScope", "check_state_text",
           "check_state_value", "check_state_write"]

_ENCODER = msgspec.json.Encoder()


def check_state_text(text: str, what: str = "key") -> None:
    """Raise :class:`StateError` when ``text`` (a state key, scope id or key prefix: say
    which in ``what``) holds a lone surrogate, which no store can keep."""
    if not text.isascii() and not is_utf8(text):
        raise StateError(f"state {what} {text!r} holds a lone surrogate (half of a UTF-16 "
                         "pair), which no store can keep",
                         hint=f"clean the text first, e.g. {'key' if what == 'key' else 'text'}"
                              ".encode('utf-8', 'replace').decode()")


def check_state_value(value: Any, path: str = "value") -> None:
    """Raise :class:`~llmspell.errors.NotJsonSafeError` (naming the path under ``path``)
    when a string in ``value``, or a dict key, holds a lone surrogate. The JSON encoder
    (C) finds one in a JSON-safe value; anything it cannot encode is walked instead."""
    try:
        _ENCODER.encode(value)
    except UnicodeEncodeError:
        raise lone_surrogate_error(value, path) from None
    except (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError):
        if _holds_lone_surrogate(value):
            raise lone_surrogate_error(value, path) from None


def check_state_write(scope_id: str, keys: Iterable[str],
                      values: Mapping[str, Any] | None = None) -> None:
    """What every backend checks before a write: the scope id, the keys and (by key) the
    values."""
    check_state_text(scope_id, "scope id")
    for key in keys:
        check_state_text(key)
    for key, value in (values or {}).items():
        check_state_value(value, key)


def _holds_lone_surrogate(value: Any) -> bool:
    """Whether any string in ``value`` (containers walked without recursion; each container
    once, so a cycle ends) holds a lone surrogate."""
    pending: list[Any] = [value]
    seen: set[int] = set()
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if not item.isascii() and not is_utf8(item):
                return True
        elif isinstance(item, (dict, list, tuple, set, frozenset)):
            if id(item) in seen:
                continue
            seen.add(id(item))
            if isinstance(item, dict):
                pending.extend(item.keys())
                pending.extend(item.values())
            else:
                pending.extend(item)
    return False


class StateScope(StrEnum):
    """Where a key lives."""

    GLOBAL = "global"
    SESSION = "session"
    WORKFLOW = "workflow"
    AGENT = "agent"


class StateEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One stored value and its version (1 for the first write)."""

    key: str
    scope: StateScope
    scope_id: str
    value: Any
    version: int
    updated_at: float


@runtime_checkable
class StateBackend(Protocol):
    """Storage for state entries. Implementations are thread-safe; ``put`` is atomic:
    it writes only when the current version equals ``expected_version`` (None: any) and
    returns the new entry, or returns None on a version mismatch."""

    def get(self, scope: StateScope, scope_id: str, key: str) -> StateEntry | None:
        """The entry, or None."""
        ...

    def put(self, scope: StateScope, scope_id: str, key: str, value: Any,
            expected_version: int | None, now: float) -> StateEntry | None:
        """Write if the version matches; the new entry, or None on conflict."""
        ...

    def delete(self, scope: StateScope, scope_id: str, key: str,
               expected_version: int | None) -> bool | None:
        """Delete if the version matches: True if deleted, False if absent, None on
        conflict."""
        ...

    def keys(self, scope: StateScope, scope_id: str, prefix: str = "") -> list[str]:
        """Keys in a scope, sorted."""
        ...

    def items(self, scope: StateScope, scope_id: str) -> dict[str, StateEntry]:
        """Every entry in a scope."""
        ...

    def scopes(self, scope: StateScope) -> list[str]:
        """The scope ids that hold at least one key, sorted."""
        ...

    def close(self) -> None:
        """Release resources."""
        ...
