"""The state contract: scopes, entries and the backend protocol.

State is a key-value store with scopes (``global``, ``session``, ``workflow``, ``agent``;
each scope but ``global`` is qualified by a ``scope_id``) and optimistic versioning: every
entry has a ``version`` that each write increments, and a write may name the
``expected_version`` it was based on (a mismatch is a conflict).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

import msgspec

__all__ = ["StateBackend", "StateEntry", "StateScope"]


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
