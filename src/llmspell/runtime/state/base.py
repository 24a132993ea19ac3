"""The state contract: scopes, entries and the backend protocol.

State is a key-value store with scopes (``global``, ``session``, ``workflow``, ``agent``;
each scope but ``global`` is qualified by a ``scope_id``) and optimistic versioning: every
entry has a ``version`` that each write increments, and a write may name the
``expected_version`` it was based on (a mismatch is a conflict).

A version is never reused for a key within a store, so a compare-and-set based on a value
that has since been deleted can never succeed against the key written again (the ABA
problem): a key's first write is version 1, and a key deleted and written again continues
after its last version. What a backend remembers of deleted keys, none of which any read,
listing or scope count shows, is bounded in three tiers:

* a delete leaves a *tombstone* (scope, scope id, key, last version); at most
  ``max_tombstones`` (:data:`MAX_TOMBSTONES` by default) are kept, and past that the oldest
  fold into the *floor* of their scope (one per scope and scope id: the highest version
  dropped there);
* at most ``max_floors`` (:data:`MAX_FLOORS` by default) scope floors are kept, and past that
  the oldest fold into one store-wide *global floor*;
* an atomic batch (``apply``) whose deletes leave their scope empty (what deleting a
  session does) leaves one floor for the scope instead of tombstones, taking in the
  scope's earlier tombstones too, whenever that replaces two or more of them.

The rule: a key written while absent continues after its tombstone when it has one, else
after the higher of its scope's floor and the global floor (0 when there is neither). Every
version a key ever had is at most its tombstone or, once that is folded, at most the floor
it folded into (its scope's, then the global one), so no version comes back. The price of
folding is precision, never safety: a new key in a scope with a floor (or in any scope,
once the global floor is above 0) starts after that floor instead of at 1. The cost is
about one key's size plus a few dozen bytes per tombstone, up to ``max_tombstones``, plus a
scope id and a few dozen bytes per scope floor, up to ``max_floors``, plus one global
floor: bounded whatever the number of keys and scopes (sessions) ever deleted (with the
defaults and ids and keys of a few dozen characters, a few megabytes at most).

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

__all__ = ["MAX_FLOORS", "MAX_TOMBSTONES", "StateBackend", "StateEntry", "StateScope",
           "check_max_floors", "check_max_tombstones", "check_state_text", "check_state_value",
           "check_state_write"]

_ENCODER = msgspec.json.Encoder()

MAX_TOMBSTONES = 10_000
"""How many tombstones (last versions of deleted keys) a backend keeps by default before it
folds the oldest into their scope's version floor (see the module documentation)."""


MAX_FLOORS = 10_000
"""How many scope version floors a backend keeps by default before it folds the oldest into
the store-wide global floor (see the module documentation)."""


def check_max_tombstones(value: object) -> int:
    """``value`` as a tombstone bound (an int >= 0); a :class:`StateError` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StateError(f"max_tombstones must be an int >= 0, got {value!r}",
                         hint=f"pass a bound such as {MAX_TOMBSTONES} (the default), or 0 to "
                              "keep only version floors")
    return value


def check_max_floors(value: object) -> int:
    """``value`` as a scope floor bound (an int >= 0); a :class:`StateError` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StateError(f"max_floors must be an int >= 0, got {value!r}",
                         hint=f"pass a bound such as {MAX_FLOORS} (the default), or 0 to "
                              "fold every scope floor into the global floor at once")
    return value


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
    """One stored value and its version (1 for the first write of a key, +1 per write; a
    key deleted and written again continues after its last version)."""

    key: str
    scope: StateScope
    scope_id: str
    value: Any
    version: int
    updated_at: float


@runtime_checkable
class StateBackend(Protocol):
    """Storage for state entries. Implementations are thread-safe; ``put`` is atomic:
    it writes only when the current version equals ``expected_version`` (None: any; an
    absent key counts as 0, deleted or not) and returns the new entry, or returns None on a
    version mismatch. A version is never reused for a key: ``delete`` keeps the key's last
    version as a tombstone that ``put`` continues from (see the module documentation)."""

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
