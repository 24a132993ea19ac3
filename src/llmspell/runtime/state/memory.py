"""The in-memory state backend: a dict per (scope, scope id), one lock, atomic puts."""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from llmspell.runtime.state.base import (
    StateEntry,
    StateScope,
    check_state_text,
    check_state_write,
)

__all__ = ["MemoryStateBackend"]


class MemoryStateBackend:
    """State kept in this process only (lost when it exits). Thread-safe: every operation
    runs under one lock, so a ``put`` with ``expected_version`` is an atomic
    compare-and-set. Values are deep-copied in and out, so callers cannot change a stored
    value by mutating what they passed or got back. Text no other backend can keep (a
    lone surrogate in a key, scope id or value) is refused as by every backend (see
    :mod:`llmspell.runtime.state.base`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[tuple[StateScope, str], dict[str, StateEntry]] = {}

    def get(self, scope: StateScope, scope_id: str, key: str) -> StateEntry | None:
        """The entry, or None."""
        check_state_write(scope_id, (key,))
        with self._lock:
            entry = self._data.get((scope, scope_id), {}).get(key)
            return None if entry is None else _copied(entry)

    def put(self, scope: StateScope, scope_id: str, key: str, value: Any,
            expected_version: int | None, now: float) -> StateEntry | None:
        """Write if the version matches (absent counts as version 0); the new entry, or
        None on conflict."""
        check_state_write(scope_id, (key,), {key: value})
        stored = copy.deepcopy(value)
        with self._lock:
            bucket = self._data.setdefault((scope, scope_id), {})
            current = bucket.get(key)
            version = 0 if current is None else current.version
            if expected_version is not None and expected_version != version:
                if not bucket:
                    del self._data[(scope, scope_id)]
                return None
            entry = StateEntry(key=key, scope=scope, scope_id=scope_id, value=stored,
                               version=version + 1, updated_at=now)
            bucket[key] = entry
            return _copied(entry)

    def delete(self, scope: StateScope, scope_id: str, key: str,
               expected_version: int | None) -> bool | None:
        """Delete if the version matches: True if deleted, False if absent, None on
        conflict."""
        check_state_write(scope_id, (key,))
        with self._lock:
            bucket = self._data.get((scope, scope_id))
            current = None if bucket is None else bucket.get(key)
            if current is None:
                return None if expected_version not in (None, 0) else False
            if expected_version is not None and expected_version != current.version:
                return None
            assert bucket is not None
            del bucket[key]
            if not bucket:
                del self._data[(scope, scope_id)]
            return True

    def apply(self, scope: StateScope, scope_id: str, writes: Mapping[str, Any],
              deletes: Iterable[str], guard: tuple[str, int] | None,
              now: float) -> bool:
        """Atomically write ``writes`` and delete ``deletes`` in one scope, only when the
        ``guard`` key is at its expected version (0: absent). False when it is not."""
        deletes = list(deletes)
        check_state_write(scope_id, [*writes, *deletes, *(guard[:1] if guard else ())],
                          writes)
        stored = copy.deepcopy(dict(writes))
        with self._lock:
            bucket = self._data.setdefault((scope, scope_id), {})
            if guard is not None:
                current = bucket.get(guard[0])
                if (0 if current is None else current.version) != guard[1]:
                    if not bucket:
                        del self._data[(scope, scope_id)]
                    return False
            for key in deletes:
                bucket.pop(key, None)
            for key, value in stored.items():
                old = bucket.get(key)
                bucket[key] = StateEntry(key=key, scope=scope, scope_id=scope_id,
                                         value=value,
                                         version=1 if old is None else old.version + 1,
                                         updated_at=now)
            if not bucket:
                del self._data[(scope, scope_id)]
            return True

    def keys(self, scope: StateScope, scope_id: str, prefix: str = "") -> list[str]:
        """Keys in a scope, sorted."""
        check_state_write(scope_id, ())
        check_state_text(prefix, "key prefix")
        with self._lock:
            bucket = self._data.get((scope, scope_id), {})
            return sorted(k for k in bucket if k.startswith(prefix))

    def items(self, scope: StateScope, scope_id: str) -> dict[str, StateEntry]:
        """Every entry in a scope (copies), in key order."""
        check_state_write(scope_id, ())
        with self._lock:
            bucket = self._data.get((scope, scope_id), {})
            return {k: _copied(bucket[k]) for k in sorted(bucket)}

    def scopes(self, scope: StateScope) -> list[str]:
        """The scope ids that hold at least one key, sorted."""
        with self._lock:
            return sorted(sid for (s, sid), bucket in self._data.items()
                          if s == scope and bucket)

    def close(self) -> None:
        """Nothing to release; the data stays readable."""


def _copied(entry: StateEntry) -> StateEntry:
    value = entry.value
    if isinstance(value, (dict, list)):
        return StateEntry(key=entry.key, scope=entry.scope, scope_id=entry.scope_id,
                          value=copy.deepcopy(value), version=entry.version,
                          updated_at=entry.updated_at)
    return entry
