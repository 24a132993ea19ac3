"""The in-memory state backend: a dict per (scope, scope id), one lock, atomic puts."""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from llmspell.runtime.state.base import (
    MAX_FLOORS,
    MAX_TOMBSTONES,
    StateEntry,
    StateScope,
    check_max_floors,
    check_max_tombstones,
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
    :mod:`llmspell.runtime.state.base`).

    A deleted key's last version is kept as a tombstone, so the key written again continues
    after it (versions are never reused); at most ``max_tombstones`` are kept, the oldest
    beyond that folded into their scope's version floor, and at most ``max_floors`` scope
    floors, the oldest beyond that folded into one global floor (see
    :mod:`llmspell.runtime.state.base`)."""

    def __init__(self, *, max_tombstones: int = MAX_TOMBSTONES,
                 max_floors: int = MAX_FLOORS) -> None:
        self.max_tombstones = check_max_tombstones(max_tombstones)
        self.max_floors = check_max_floors(max_floors)
        self._lock = threading.Lock()
        self._data: dict[tuple[StateScope, str], dict[str, StateEntry]] = {}
        # Order is age: the first item is the oldest tombstone (floor).
        self._tombstones: OrderedDict[tuple[StateScope, str, str], int] = OrderedDict()
        self._buried: dict[tuple[StateScope, str], set[str]] = {}  # tombstoned keys by scope
        self._floors: OrderedDict[tuple[StateScope, str], int] = OrderedDict()
        self._global_floor = 0

    def _last(self, scope: StateScope, scope_id: str, key: str) -> int:
        """The version an absent key continues from (its tombstone, else the higher of its
        scope's floor and the global floor), forgetting the tombstone: the caller is writing
        the key. Lock held."""
        where = (scope, scope_id)
        last = self._tombstones.pop((scope, scope_id, key), None)
        if last is None:
            return max(self._floors.get(where, 0), self._global_floor)
        self._unlist(where, key)
        return last

    def _unlist(self, where: tuple[StateScope, str], key: str) -> None:
        """Forget that ``key`` of scope ``where`` has a tombstone. Lock held."""
        keys = self._buried[where]
        keys.discard(key)
        if not keys:
            del self._buried[where]

    def _bury(self, scope: StateScope, scope_id: str, key: str, version: int) -> None:
        """Keep ``version`` as the deleted key's tombstone, folding the oldest tombstones
        past the bound into their scope's floor. Lock held."""
        where = (scope, scope_id)
        tomb = (scope, scope_id, key)
        self._tombstones[tomb] = max(self._tombstones.get(tomb, 0), version)
        self._buried.setdefault(where, set()).add(key)
        while len(self._tombstones) > self.max_tombstones:
            oldest, old = self._tombstones.popitem(last=False)
            self._unlist(oldest[:2], oldest[2])
            self._raise_floor(oldest[:2], old)

    def _raise_floor(self, where: tuple[StateScope, str], version: int) -> None:
        """Raise the floor of scope ``where`` to ``version``, folding the oldest floors past
        ``max_floors`` into the global floor. Lock held."""
        self._floors[where] = max(self._floors.get(where, 0), version)
        while len(self._floors) > self.max_floors:
            _, old = self._floors.popitem(last=False)
            self._global_floor = max(self._global_floor, old)

    def _seal(self, where: tuple[StateScope, str], buried: list[tuple[str, int]]) -> None:
        """Remember the keys just deleted from scope ``where``, which they left empty: as
        one floor for the scope (taking in the scope's tombstones too) when that replaces
        two or more tombstones, else as tombstones. Lock held."""
        if len(buried) + len(self._buried.get(where, ())) < 2:
            for key, version in buried:
                self._bury(*where, key, version)
            return
        top = max(version for _, version in buried)
        for key in self._buried.pop(where, ()):
            top = max(top, self._tombstones.pop((*where, key)))
        self._raise_floor(where, top)

    def get(self, scope: StateScope, scope_id: str, key: str) -> StateEntry | None:
        """The entry, or None."""
        check_state_write(scope_id, (key,))
        with self._lock:
            entry = self._data.get((scope, scope_id), {}).get(key)
            return None if entry is None else _copied(entry)

    def put(self, scope: StateScope, scope_id: str, key: str, value: Any,
            expected_version: int | None, now: float) -> StateEntry | None:
        """Write if the version matches (absent counts as version 0); the new entry (a key
        written again after a delete continues after its last version), or None on
        conflict."""
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
            if current is None:
                version = self._last(scope, scope_id, key)
            entry = StateEntry(key=key, scope=scope, scope_id=scope_id, value=stored,
                               version=version + 1, updated_at=now)
            bucket[key] = entry
            return _copied(entry)

    def delete(self, scope: StateScope, scope_id: str, key: str,
               expected_version: int | None) -> bool | None:
        """Delete if the version matches (keeping the last version as a tombstone): True if
        deleted, False if absent, None on conflict."""
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
            self._bury(scope, scope_id, key, current.version)
            if not bucket:
                del self._data[(scope, scope_id)]
            return True

    def apply(self, scope: StateScope, scope_id: str, writes: Mapping[str, Any],
              deletes: Iterable[str], guard: tuple[str, int] | None,
              now: float) -> bool:
        """Atomically write ``writes`` and delete ``deletes`` in one scope, only when the
        ``guard`` key is at its expected version (0: absent). False when it is not. A batch
        that empties the scope may leave one version floor for it instead of tombstones
        (see :mod:`llmspell.runtime.state.base`)."""
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
            buried: list[tuple[str, int]] = []
            for key in deletes:
                gone = bucket.pop(key, None)
                if gone is not None:
                    buried.append((key, gone.version))
            if buried and not bucket and not stored:  # the batch empties the scope
                self._seal((scope, scope_id), buried)
            else:
                for key, version in buried:
                    self._bury(scope, scope_id, key, version)
            for key, value in stored.items():
                old = bucket.get(key)
                last = self._last(scope, scope_id, key) if old is None else old.version
                bucket[key] = StateEntry(key=key, scope=scope, scope_id=scope_id,
                                         value=value, version=last + 1, updated_at=now)
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
