"""A replay's own state: an overlay over the live backend that keeps the replay's writes.

A replay (``system.runs.replay``) runs the recorded agent, workflow or script again, and
that code may write state (``State.set`` in a script, a workflow checkpoint, a session's
``set``, ``checkpoint``, ``end``). Those writes must never reach the live store: an exact
replay would overwrite what live runs wrote since with old values, and a what-if replay
would store made-up values (its edits) as if they were real. So
:class:`~llmspell.runtime.state.store.StateStore` sends every backend call made inside a
replay (``llmspell.core.run_scope.current_replay()``) to a :class:`ReplayOverlay` of that
replay instead of the live backend.

The overlay keeps the replay's writes and deletes in memory; a read sees them first and
otherwise reads the live backend *as it is when the read happens* (the live state is not
recorded with a run, like a database outside llmspell: the overlay cannot know what a key
held when the recorded run read it). Listings (``keys``, ``items``, ``scopes``) merge the
two. Versions continue from the version the replay sees (a key written over a live entry
gets the live version + 1), so compare-and-set works inside the replay as it does live.
The overlay is dropped with its replay; nothing in it ever reaches the live backend.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from llmspell.runtime.state.base import (
    StateBackend,
    StateEntry,
    StateScope,
    check_state_text,
    check_state_write,
)

__all__ = ["ReplayOverlay"]


class _Gone:
    """A key the replay deleted (it hides the live entry); ``version`` is its last one."""

    __slots__ = ("version",)

    def __init__(self, version: int) -> None:
        self.version = version


_Own = StateEntry | _Gone


class ReplayOverlay:
    """The state one replay sees: its own writes over the ``live`` backend, which it
    never writes. Implements the :class:`~llmspell.runtime.state.base.StateBackend`
    protocol and ``apply``; thread-safe (one lock: a compare-and-set reads and writes
    under it)."""

    def __init__(self, live: StateBackend) -> None:
        self.live = live
        self._lock = threading.RLock()
        self._own: dict[tuple[StateScope, str], dict[str, _Own]] = {}

    # -- helpers (lock held) ------------------------------------------------------------
    def _view(self, scope: StateScope, scope_id: str, key: str) -> tuple[StateEntry | None, int]:
        """The entry the replay sees (or None) and the version a new write continues
        from."""
        own = self._own.get((scope, scope_id), {}).get(key)
        if isinstance(own, _Gone):
            return None, own.version
        if own is not None:
            return own, own.version
        entry = self.live.get(scope, scope_id, key)
        return entry, 0 if entry is None else entry.version

    def _write(self, scope: StateScope, scope_id: str, key: str, value: Any,
               version: int, now: float) -> StateEntry:
        entry = StateEntry(key=key, scope=scope, scope_id=scope_id,
                           value=copy.deepcopy(value), version=version, updated_at=now)
        self._own.setdefault((scope, scope_id), {})[key] = entry
        return _copied(entry)

    def _bury(self, scope: StateScope, scope_id: str, key: str, version: int) -> None:
        self._own.setdefault((scope, scope_id), {})[key] = _Gone(version)

    # -- the backend protocol -----------------------------------------------------------
    def get(self, scope: StateScope, scope_id: str, key: str) -> StateEntry | None:
        """The replay's entry, else the live one (None when absent or deleted here)."""
        check_state_write(scope_id, (key,))
        with self._lock:
            entry, _ = self._view(scope, scope_id, key)
            return None if entry is None else _copied(entry)

    def put(self, scope: StateScope, scope_id: str, key: str, value: Any,
            expected_version: int | None, now: float) -> StateEntry | None:
        """Write into the overlay if the version the replay sees matches (absent: 0)."""
        check_state_write(scope_id, (key,), {key: value})
        with self._lock:
            entry, last = self._view(scope, scope_id, key)
            version = 0 if entry is None else entry.version
            if expected_version is not None and expected_version != version:
                return None
            return self._write(scope, scope_id, key, value, last + 1, now)

    def delete(self, scope: StateScope, scope_id: str, key: str,
               expected_version: int | None) -> bool | None:
        """Hide the key from the replay (the live entry stays): True if it was there,
        False if absent, None on a version mismatch."""
        check_state_write(scope_id, (key,))
        with self._lock:
            entry, _ = self._view(scope, scope_id, key)
            if entry is None:
                return None if expected_version not in (None, 0) else False
            if expected_version is not None and expected_version != entry.version:
                return None
            self._bury(scope, scope_id, key, entry.version)
            return True

    def apply(self, scope: StateScope, scope_id: str, writes: Mapping[str, Any],
              deletes: Iterable[str], guard: tuple[str, int] | None, now: float) -> bool:
        """Write and delete in the overlay at once, only when the ``guard`` key is at its
        expected version (0: absent) as the replay sees it."""
        deletes = list(deletes)
        check_state_write(scope_id, [*writes, *deletes, *(guard[:1] if guard else ())],
                          writes)
        with self._lock:
            if guard is not None:
                current, _ = self._view(scope, scope_id, guard[0])
                if (0 if current is None else current.version) != guard[1]:
                    return False
            for key in deletes:
                entry, _ = self._view(scope, scope_id, key)
                if entry is not None:
                    self._bury(scope, scope_id, key, entry.version)
            for key, value in writes.items():
                _, last = self._view(scope, scope_id, key)
                self._write(scope, scope_id, key, value, last + 1, now)
            return True

    def keys(self, scope: StateScope, scope_id: str, prefix: str = "") -> list[str]:
        """The keys the replay sees in a scope, sorted."""
        check_state_write(scope_id, ())
        check_state_text(prefix, "key prefix")
        with self._lock:
            own = self._own.get((scope, scope_id), {})
            found = {k for k in self.live.keys(scope, scope_id, prefix) if k not in own}
            found.update(k for k, v in own.items()
                         if isinstance(v, StateEntry) and k.startswith(prefix))
            return sorted(found)

    def items(self, scope: StateScope, scope_id: str) -> dict[str, StateEntry]:
        """Every entry the replay sees in a scope (copies), in key order."""
        check_state_write(scope_id, ())
        with self._lock:
            own = self._own.get((scope, scope_id), {})
            merged = {k: e for k, e in self.live.items(scope, scope_id).items()
                      if k not in own}
            merged.update((k, _copied(v)) for k, v in own.items()
                          if isinstance(v, StateEntry))
            return {k: merged[k] for k in sorted(merged)}

    def scopes(self, scope: StateScope) -> list[str]:
        """The scope ids that hold at least one key as the replay sees them, sorted."""
        with self._lock:
            found = set(self.live.scopes(scope))
            for (sc, scope_id), own in self._own.items():
                if sc is not scope:
                    continue
                if any(isinstance(v, StateEntry) for v in own.values()):
                    found.add(scope_id)
                elif scope_id in found and not self.keys(scope, scope_id):
                    found.discard(scope_id)  # the replay deleted every key it had
            return sorted(found)

    def close(self) -> None:
        """Nothing to release: the live backend belongs to the system."""


def _copied(entry: StateEntry) -> StateEntry:
    if isinstance(entry.value, (dict, list)):
        return StateEntry(key=entry.key, scope=entry.scope, scope_id=entry.scope_id,
                          value=copy.deepcopy(entry.value), version=entry.version,
                          updated_at=entry.updated_at)
    return entry
