"""A byte quota over any state backend: bounds what one holder (a script run) may store.

:class:`QuotaStateBackend` wraps a :class:`~llmspell.runtime.state.base.StateBackend` and
refuses a write that would take the bytes written through it over ``max_bytes`` (a value's
size is the length of its JSON encoding plus its key). It counts what was written through
the wrapper only: entries already in a persistent backend from earlier runs are not
counted, so the quota bounds what one run adds, not the file's size. Overwriting a key
replaces its size; deleting it gives the bytes back.

The tombstone a delete leaves behind (the key's last version, so the key written again
never reuses a version; see :mod:`llmspell.runtime.state.base`) is not counted: the
backend bounds tombstones itself (``max_tombstones``, folding the oldest into one version
floor per scope, and ``max_floors``, folding the oldest floors into one global floor), so a
run that writes and deletes keys in a loop keeps its whole quota.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from llmspell.core.errors import StateQuotaExceededError
from llmspell.runtime.state.base import StateBackend, StateEntry, StateScope

__all__ = ["QuotaStateBackend", "encoded_size"]

_encoder = msgspec.json.Encoder()


def encoded_size(key: str, value: Any) -> int:
    """The bytes ``value`` counts for under ``key``: its JSON encoding plus the key."""
    size = len(key.encode(errors="surrogatepass"))  # the store refuses such a key itself
    try:
        return len(_encoder.encode(value)) + size
    except (TypeError, msgspec.EncodeError, OverflowError, UnicodeEncodeError):
        return size  # the store refuses such a value itself, with its own error


class QuotaStateBackend:
    """``inner`` with at most ``max_bytes`` written through this wrapper at a time.

    A write past the quota raises :class:`StateQuotaExceededError` (nothing is written);
    every other operation is the inner backend's. Thread-safe.
    """

    def __init__(self, inner: StateBackend, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        self.inner = inner
        self.max_bytes = max_bytes
        self._sizes: dict[tuple[StateScope, str, str], int] = {}
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        """Bytes currently counted against the quota."""
        return self._used

    def _reserve(self, changes: Mapping[tuple[StateScope, str, str], int | None]) -> int:
        """The new total if ``changes`` (key -> new size, None: deleted) were applied;
        raise when it exceeds the quota. Caller holds the lock."""
        total = self._used
        for where, size in changes.items():
            total += (size or 0) - self._sizes.get(where, 0)
        if total > self.max_bytes:
            biggest = max((s or 0 for s in changes.values()), default=0)
            raise StateQuotaExceededError(
                f"state quota exceeded: this write needs {total - self._used} more bytes "
                f"({biggest} for the value), {self._used} of {self.max_bytes} are used",
                hint="store less (delete keys you no longer need), or raise the limit "
                     "(scripting.max_state_bytes in the configuration)")
        return total

    def _commit(self, changes: Mapping[tuple[StateScope, str, str], int | None],
                total: int) -> None:
        for where, size in changes.items():
            if size is None:
                self._sizes.pop(where, None)
            else:
                self._sizes[where] = size
        self._used = total

    def check(self, scope: StateScope, scope_id: str, writes: Mapping[str, Any],
              deletes: Iterable[str] = ()) -> None:
        """Raise :class:`StateQuotaExceededError` when writing ``writes`` and deleting
        ``deletes`` in one scope would go over the quota now; nothing is reserved (the write
        itself is checked again). For a caller that refuses before its hooks run."""
        changes: dict[tuple[StateScope, str, str], int | None] = {
            (scope, scope_id, key): None for key in deletes}
        changes.update({(scope, scope_id, key): encoded_size(key, value)
                        for key, value in writes.items()})
        with self._lock:
            self._reserve(changes)

    def get(self, scope: StateScope, scope_id: str, key: str) -> StateEntry | None:
        """The entry, or None."""
        return self.inner.get(scope, scope_id, key)

    def put(self, scope: StateScope, scope_id: str, key: str, value: Any,
            expected_version: int | None, now: float) -> StateEntry | None:
        """Write within the quota (see :class:`QuotaStateBackend`)."""
        changes = {(scope, scope_id, key): encoded_size(key, value)}
        with self._lock:
            total = self._reserve(changes)
            entry = self.inner.put(scope, scope_id, key, value, expected_version, now)
            if entry is not None:
                self._commit(changes, total)
            return entry

    def delete(self, scope: StateScope, scope_id: str, key: str,
               expected_version: int | None) -> bool | None:
        """Delete (gives the key's bytes back)."""
        with self._lock:
            done = self.inner.delete(scope, scope_id, key, expected_version)
            if done:
                where = (scope, scope_id, key)
                self._used -= self._sizes.pop(where, 0)
            return done

    def apply(self, scope: StateScope, scope_id: str, writes: Mapping[str, Any],
              deletes: Iterable[str], guard: tuple[str, int] | None, now: float) -> bool:
        """The inner backend's atomic ``apply``, within the quota."""
        deleted = list(deletes)
        changes: dict[tuple[StateScope, str, str], int | None] = {
            (scope, scope_id, key): None for key in deleted}
        changes.update({(scope, scope_id, key): encoded_size(key, value)
                        for key, value in writes.items()})
        inner_apply = getattr(self.inner, "apply", None)
        with self._lock:
            total = self._reserve(changes)
            if inner_apply is not None:
                done = bool(inner_apply(scope, scope_id, writes, deleted, guard, now))
            else:  # one by one, as StateStore does for a backend without apply
                done = _apply_one_by_one(self.inner, scope, scope_id, writes, deleted,
                                         guard, now)
            if done:
                self._commit(changes, total)
            return done

    def keys(self, scope: StateScope, scope_id: str, prefix: str = "") -> list[str]:
        """Keys in a scope, sorted."""
        return self.inner.keys(scope, scope_id, prefix)

    def items(self, scope: StateScope, scope_id: str) -> dict[str, StateEntry]:
        """Every entry in a scope."""
        return self.inner.items(scope, scope_id)

    def scopes(self, scope: StateScope) -> list[str]:
        """The scope ids that hold at least one key."""
        return self.inner.scopes(scope)

    def close(self) -> None:
        """Close the inner backend."""
        self.inner.close()


def _apply_one_by_one(inner: StateBackend, scope: StateScope, scope_id: str,
                      writes: Mapping[str, Any], deletes: list[str],
                      guard: tuple[str, int] | None, now: float) -> bool:
    if guard is not None:
        current = inner.get(scope, scope_id, guard[0])
        if (0 if current is None else current.version) != guard[1]:
            return False
    for key in deletes:
        inner.delete(scope, scope_id, key, None)
    for key, value in writes.items():
        inner.put(scope, scope_id, key, value, None, now)
    return True
