"""The state store: scoped, versioned key-value state with hooks and events around it.

:class:`StateStore` (``system.state``) validates every call (a non-empty string key, a
known scope, a ``scope_id`` for every scope but ``global``, a JSON-safe value), runs the
state hook points around reads and writes, resolves version conflicts through
``StateConflict`` hooks, publishes ``state.<scope>.changed`` / ``state.<scope>.deleted``
events (key, scope id and version; never the value, which may be secret) and runs schema
migrations. docs/state-and-sessions.md has the table of what every hook result does.

A point without hooks costs one dictionary lookup. Backend calls run inline for the
in-memory backend and in a worker thread for any other (SQLite may wait for another
process's write lock).

Inside a recorded run, each read (``get``/``entry``, ``keys``, ``snapshot``, ``scopes``, and
the reserved-key reads of sessions, checkpoints and migrations) records what the state
answered with the step it was made in, and an exact replay is served that answer (see
:meth:`StateStore._recorded_read`); outside runs a read tests one empty dict for it.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from llmspell.core.errors import (
    EventTooLargeError,
    OperationCancelled,
    StateConflictError,
    StateError,
)
from llmspell.core.redact import get_logger
from llmspell.core.run_scope import (
    RECORDING_RUNS,
    RUNNING_REPLAYS,
    current_replay,
    state_reads,
)
from llmspell.core.values import check_json_safe
from llmspell.events.event import EventMetadata
from llmspell.hooks.context import ComponentId, ComponentType, HookContext
from llmspell.hooks.points import HookPoint
from llmspell.hooks.result import Cancel, Continue, Modified, Replace, cancelled_error
from llmspell.runtime.state.base import (
    StateBackend,
    StateEntry,
    StateScope,
    check_state_text,
    check_state_value,
)
from llmspell.runtime.state.memory import MemoryStateBackend
from llmspell.runtime.state.overlay import ReplayOverlay
from llmspell.runtime.withheld import publish_withheld

logger = get_logger("llmspell.state")

__all__ = ["RESERVED_PREFIX", "SCHEMA_KEY", "Migration", "StateStore", "parse_scope"]

RESERVED_PREFIX = "__"
"""Keys starting with this are reserved for llmspell (schema version, sessions,
checkpoints); ``keys()`` and ``snapshot()`` hide them unless asked."""

SCHEMA_KEY = "__schema_version__"
"""The reserved key holding a scope's schema version (absent: version 0)."""

CONFLICT_ATTEMPTS = 5
"""How many times a conflict resolved by a hook is retried against a moving version."""

Migration = Callable[[dict[str, Any]], dict[str, Any]]
"""A migration step: takes the scope's values (reserved keys excluded), returns new ones."""

_T = TypeVar("_T")
_SCOPE_NAMES = ", ".join(s.value for s in StateScope)


def parse_scope(scope: StateScope | str) -> StateScope:
    """``scope`` as a :class:`StateScope`; a :class:`StateError` listing the scopes when it
    is none of them."""
    if isinstance(scope, StateScope):
        return scope
    try:
        return StateScope(scope)
    except ValueError:
        raise StateError(f"unknown state scope {scope!r}",
                         hint=f"use one of: {_SCOPE_NAMES}") from None


def _check_key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise StateError(f"a state key must be a non-empty string, got {key!r}",
                         hint="name the value, e.g. 'user.preferences'")
    check_state_text(key)
    return key


def _check_scope_id(scope: StateScope, scope_id: object) -> str:
    if not isinstance(scope_id, str):
        raise StateError(f"scope_id must be a string, got {type(scope_id).__name__}",
                         hint="pass the id of the session, workflow or agent")
    if scope is StateScope.GLOBAL:
        if scope_id:
            raise StateError(f"the global scope takes no scope_id (got {scope_id!r})",
                             hint="leave scope_id empty, or pick another scope")
        return ""
    if not scope_id:
        raise StateError(f"the {scope.value} scope needs a scope_id",
                         hint=f"pass the id of the {scope.value}, e.g. scope_id=session.id")
    check_state_text(scope_id, "scope id")
    return scope_id


class StateStore:
    """Scoped, versioned state for one :class:`~llmspell.runtime.System` (``system.state``).

    Every method is async. ``scope`` is a :class:`StateScope` or its name; ``scope_id``
    names the session, workflow or agent (empty for ``global``). ``parent`` (where taken) is
    a hook context whose correlation id the hooks and events of the call share, e.g. a
    session's :meth:`~llmspell.runtime.sessions.Session.context`.
    """

    def __init__(self, system: Any, backend: StateBackend,
                 *, clock: Callable[[], float] = time.time) -> None:
        self._system = system
        self.backend = backend
        self._clock = clock
        self._inline = isinstance(backend, MemoryStateBackend)
        self._migrations: dict[StateScope | None, dict[int, Migration]] = {}
        # The state of each running replay (see _backend), by its replay session: dropped
        # with the session, or (a session that cannot be weakly referenced) when the next
        # replay's overlay is made after it ended.
        self._overlays: weakref.WeakKeyDictionary[object, ReplayOverlay] = \
            weakref.WeakKeyDictionary()
        self._pinned: dict[int, tuple[object, ReplayOverlay]] = {}
        self._overlays_lock = threading.Lock()

    # -- plumbing --------------------------------------------------------------------------
    def _backend(self) -> StateBackend:
        """The backend the calling task reads and writes: the live one, or inside a replay
        (``current_replay()``) the replay's own overlay over it, so that nothing a replay
        writes ever reaches the live store. Outside replays this costs one test of an empty
        dict."""
        if RUNNING_REPLAYS:
            replay = current_replay()
            if replay is not None:
                return self._overlay(replay)
        return self.backend

    def _overlay(self, replay: object) -> ReplayOverlay:
        """The overlay of ``replay`` (made at its first state call)."""
        with self._overlays_lock:
            try:
                overlay = self._overlays.get(replay)
            except TypeError:  # not weakly referenceable: kept by id while it runs
                pinned = self._pinned.get(id(replay))
                overlay = None if pinned is None or pinned[0] is not replay else pinned[1]
                if overlay is None:
                    running = {id(r) for r in RUNNING_REPLAYS.values()}
                    for key in [k for k in self._pinned if k not in running]:
                        del self._pinned[key]
                    overlay = ReplayOverlay(_Served(self.backend, replay))
                    self._pinned[id(replay)] = (replay, overlay)
                return overlay
            if overlay is None:
                overlay = self._overlays[replay] = ReplayOverlay(_Served(self.backend, replay))
            return overlay

    async def _recorded_read(self, op: str, sc: StateScope, scope_id: str,
                             key: str | None) -> Any:
        """A backend read (``op``: ``get``, ``keys`` with the prefix ``key``, ``items``,
        ``scopes``) made while a recorded run is open somewhere in the process: inside one
        (``state_reads()``), what the backend answered is kept with the calling step, and
        in a replay the recorded answer is served instead when the replay has it (and
        becomes what the replay's own state holds for those keys: its writes go on from
        the versions it was served). A recorded answer that cannot be read back (damaged)
        is read from the state."""
        reads = state_reads()
        if reads is None:
            return await self._backend_read(op, sc, scope_id, key)
        served, stored = reads.served_read(op, sc.value, scope_id, key)
        result: Any = _UNREAD
        if served:
            result = _from_record(op, sc, scope_id, key, stored)
            if result is not _UNREAD and RUNNING_REPLAYS:
                replay = current_replay()
                if replay is not None:
                    self._seed(replay, op, sc, scope_id, key, result)
        if result is _UNREAD:
            result = await self._backend_read(op, sc, scope_id, key)
        reads.note_read(op, sc.value, scope_id, key, result)
        return result

    async def _backend_read(self, op: str, sc: StateScope, scope_id: str,
                            key: str | None) -> Any:
        backend = self._backend()
        if op == "get":
            assert key is not None
            return await self._call(backend.get, sc, scope_id, key)
        if op == "keys":
            return await self._call(backend.keys, sc, scope_id, key or "")
        if op == "items":
            return await self._call(backend.items, sc, scope_id)
        return await self._call(backend.scopes, sc)

    def _seed(self, replay: object, op: str, sc: StateScope, scope_id: str,
              key: str | None, result: Any) -> None:
        """Make the entries a replay was served from its recording the base of its own
        state (under its writes, over the live state)."""
        served = self._overlay(replay).live
        if not isinstance(served, _Served):
            return
        if op == "get" and key is not None:
            served.seed(sc, scope_id, key, result)
        elif op == "items":
            for name, entry in result.items():
                served.seed(sc, scope_id, name, entry)

    async def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self._inline:
            return fn(*args)
        return await asyncio.to_thread(fn, *args)

    def _component(self, scope: StateScope, scope_id: str, key: str) -> ComponentId:
        return ComponentId(type=ComponentType.STATE, name=key,
                           id=f"{scope.value}/{scope_id}" if scope_id else scope.value)

    async def _fire(self, point: HookPoint, scope: StateScope, scope_id: str, key: str,
                    data: dict[str, Any], parent: HookContext | None) -> tuple[Any, dict[str, Any]]:
        """Dispatch ``point``; (the decisive result, the final data). Cancel raises."""
        outcome, ctx = await self._system.dispatch(
            point, self._component(scope, scope_id, key), data, parent=parent)
        result = outcome.result
        # ``type() is Continue`` first: every hook went on (the common case), and an
        # isinstance miss against a Struct class is the slow __instancecheck__ path.
        if type(result) is not Continue and isinstance(result, Cancel):
            raise cancelled_error(point, result, outcome.decided_by)
        return result, (ctx.data if ctx is not None else data)

    def _publish(self, scope: StateScope, what: str, data: dict[str, Any],
                 parent: HookContext | None) -> None:
        bus = self._system.bus
        if bus.closed:
            return
        event_type = f"state.{scope.value}.{what}"
        meta = EventMetadata(correlation_id=parent.correlation_id if parent else None,
                             source="llmspell.state")
        try:
            bus.publish(event_type, data, meta)
        except EventTooLargeError as exc:  # the write has happened: the event goes out
            publish_withheld(bus, exc, event_type, data, meta)

    # -- reads -----------------------------------------------------------------------------
    async def get(self, key: str, *, scope: StateScope | str = StateScope.GLOBAL,
                  scope_id: str = "", default: Any = None,
                  parent: HookContext | None = None) -> Any:
        """The value of ``key`` (``default`` when absent), after the read hooks."""
        entry = await self.entry(key, scope=scope, scope_id=scope_id, parent=parent,
                                 _default=default)
        return default if entry is None else entry.value

    async def entry(self, key: str, *, scope: StateScope | str = StateScope.GLOBAL,
                    scope_id: str = "", parent: HookContext | None = None,
                    _default: Any = None) -> StateEntry | None:
        """The :class:`StateEntry` of ``key`` (value and version) or None, after the read
        hooks: ``BeforeStateRead`` may cancel (:class:`OperationCancelled`) or answer with
        ``Replace(value)``; ``AfterStateRead`` may cancel, or change the value returned with
        ``Modified({"value": ...})`` or ``Replace(value)`` (e.g. to redact it)."""
        key = _check_key(key)
        sc = parse_scope(scope)
        scope_id = _check_scope_id(sc, scope_id)
        chains = self._system.registry.chains
        if HookPoint.BEFORE_STATE_READ in chains:
            result, _ = await self._fire(
                HookPoint.BEFORE_STATE_READ, sc, scope_id, key,
                {"key": key, "scope": sc.value, "scope_id": scope_id, "value": None,
                 "version": None}, parent)
            if type(result) is not Continue and isinstance(result, Replace):
                return StateEntry(key=key, scope=sc, scope_id=scope_id, value=result.value,
                                  version=0, updated_at=self._clock())
        entry: StateEntry | None
        if RECORDING_RUNS:
            entry = await self._recorded_read("get", sc, scope_id, key)
        else:
            entry = await self._call(self._backend().get, sc, scope_id, key)
        if HookPoint.AFTER_STATE_READ in chains:
            value = _default if entry is None else entry.value
            version = None if entry is None else entry.version
            result, data = await self._fire(
                HookPoint.AFTER_STATE_READ, sc, scope_id, key,
                {"key": key, "scope": sc.value, "scope_id": scope_id, "value": value,
                 "version": version}, parent)
            if type(result) is Continue:
                return entry
            if isinstance(result, Replace):
                new = result.value
            elif isinstance(result, Modified):
                new = data.get("value", value)
            else:
                return entry
            return StateEntry(key=key, scope=sc, scope_id=scope_id, value=new,
                              version=0 if entry is None else entry.version,
                              updated_at=self._clock() if entry is None else entry.updated_at)
        return entry

    async def keys(self, scope: StateScope | str = StateScope.GLOBAL, scope_id: str = "",
                   prefix: str = "", *, include_reserved: bool = False) -> list[str]:
        """The keys of a scope starting with ``prefix``, sorted (reserved ``__*`` keys only
        with ``include_reserved``)."""
        sc = parse_scope(scope)
        scope_id = _check_scope_id(sc, scope_id)
        if not isinstance(prefix, str):
            raise StateError(f"a key prefix must be a string, got {type(prefix).__name__}",
                             hint="pass the start of the keys to list, or nothing")
        check_state_text(prefix, "key prefix")
        keys: list[str]
        if RECORDING_RUNS:
            keys = await self._recorded_read("keys", sc, scope_id, prefix)
        else:
            keys = await self._call(self._backend().keys, sc, scope_id, prefix)
        if include_reserved:
            return keys
        return [k for k in keys if not k.startswith(RESERVED_PREFIX)]

    async def snapshot(self, scope: StateScope | str = StateScope.GLOBAL, scope_id: str = "",
                       *, include_reserved: bool = False,
                       parent: HookContext | None = None) -> dict[str, Any]:
        """Every value of a scope as a dict (one consistent read). ``AfterStateRead`` hooks
        run per key, so a redacting hook redacts snapshots too."""
        sc = parse_scope(scope)
        scope_id = _check_scope_id(sc, scope_id)
        items = await self._items_raw(sc, scope_id)
        values = {k: e.value for k, e in items.items()
                  if include_reserved or not k.startswith(RESERVED_PREFIX)}
        if HookPoint.AFTER_STATE_READ in self._system.registry.chains:
            for key in list(values):
                result, data = await self._fire(
                    HookPoint.AFTER_STATE_READ, sc, scope_id, key,
                    {"key": key, "scope": sc.value, "scope_id": scope_id,
                     "value": values[key], "version": items[key].version}, parent)
                if type(result) is Continue:
                    continue
                if isinstance(result, Replace):
                    values[key] = result.value
                elif isinstance(result, Modified):
                    values[key] = data.get("value", values[key])
        return values

    async def scopes(self, scope: StateScope | str) -> list[str]:
        """The ids of the ``scope`` scopes that hold at least one key, sorted."""
        sc = parse_scope(scope)
        if RECORDING_RUNS:
            found: list[str] = await self._recorded_read("scopes", sc, "", None)
            return found
        return await self._call(self._backend().scopes, sc)

    # -- writes ----------------------------------------------------------------------------
    async def set(self, key: str, value: Any, *, scope: StateScope | str = StateScope.GLOBAL,
                  scope_id: str = "", expected_version: int | None = None,
                  parent: HookContext | None = None) -> StateEntry:
        """Write ``value`` (JSON-safe) and return the new entry (version + 1; a key deleted
        and written again continues after its last version, so no version is reused).

        ``expected_version`` makes the write conditional: it happens only when the key is
        at that version (0: the key must not exist). On a mismatch ``StateConflict`` hooks
        may resolve it (``Replace(value)`` or ``Modified({"value": ...})`` writes that
        value on top of the current version); otherwise :class:`StateConflictError`.
        ``BeforeStateWrite`` may cancel (:class:`OperationCancelled`) or change the value
        (``Modified({"value": ...})`` or ``Replace(value)``); ``AfterStateWrite`` is told
        (a ``Cancel`` there is logged and ignored: the value is written and
        ``state.<scope>.changed`` still goes out). A ``Cancel`` at ``StateConflict``
        raises :class:`StateConflictError`.
        """
        key = _check_key(key)
        sc = parse_scope(scope)
        scope_id = _check_scope_id(sc, scope_id)
        if expected_version is not None and (
                not isinstance(expected_version, int) or expected_version < 0):
            raise StateError(f"expected_version must be an int >= 0 or None, got "
                             f"{expected_version!r}",
                             hint="pass the version of the entry you read (0: absent)")
        check_json_safe(value, key)
        chains = self._system.registry.chains
        if HookPoint.BEFORE_STATE_WRITE in chains:
            result, data = await self._fire(
                HookPoint.BEFORE_STATE_WRITE, sc, scope_id, key,
                {"key": key, "scope": sc.value, "scope_id": scope_id, "value": value,
                 "expected_version": expected_version, "operation": "set"}, parent)
            if type(result) is Continue:
                pass
            elif isinstance(result, Replace):
                value = result.value
                check_json_safe(value, key)
            elif isinstance(result, Modified):
                value = data.get("value", value)
                check_json_safe(value, key)
        entry = await self._call(self._backend().put, sc, scope_id, key, value,
                                 expected_version, self._clock())
        if entry is None:
            assert expected_version is not None
            entry = await self._resolve(sc, scope_id, key, value, expected_version, parent)
        try:
            if HookPoint.AFTER_STATE_WRITE in chains:
                await self._tell(sc, scope_id, key,
                                 {"key": key, "scope": sc.value, "scope_id": scope_id,
                                  "value": entry.value, "version": entry.version,
                                  "operation": "set"}, parent)
        finally:
            # The value is written: the event goes out whatever the hooks did.
            self._publish(sc, "changed", {"key": key, "scope_id": scope_id,
                                          "version": entry.version}, parent)
        return entry

    async def _tell(self, scope: StateScope, scope_id: str, key: str, data: dict[str, Any],
                    parent: HookContext | None) -> None:
        """Dispatch ``AfterStateWrite``: the write has happened, so the hooks are told only.
        A ``Cancel`` (a hook's own or a fail-closed failure's) cannot undo it: it is logged
        and ignored. A hook with the ``raise`` policy still raises (after the write)."""
        outcome, _ = await self._system.dispatch(
            HookPoint.AFTER_STATE_WRITE, self._component(scope, scope_id, key), data,
            parent=parent)
        result = outcome.result
        if type(result) is not Continue and isinstance(result, Cancel):
            logger.warning(
                "hook %r returned Cancel at after_state_write for %s key %r (%s); the write "
                "has already happened and stands (AfterStateWrite is told only)",
                outcome.decided_by, scope.value, key, result.reason)

    async def _resolve(self, sc: StateScope, scope_id: str, key: str, value: Any,
                       expected: int, parent: HookContext | None) -> StateEntry:
        """Handle a version mismatch: ask the StateConflict hooks, write their answer on top
        of the current version (retrying while it keeps moving), or raise."""
        for _ in range(CONFLICT_ATTEMPTS):
            current = await self._call(self._backend().get, sc, scope_id, key)
            actual = 0 if current is None else current.version
            if HookPoint.STATE_CONFLICT not in self._system.registry.chains:
                raise StateConflictError(key, sc.value, expected, actual)
            try:
                result, data = await self._fire(
                    HookPoint.STATE_CONFLICT, sc, scope_id, key,
                    {"key": key, "scope": sc.value, "scope_id": scope_id,
                     "expected": expected, "actual": actual, "value": value,
                     "current": None if current is None else current.value}, parent)
            except OperationCancelled as cancelled:
                # A hook refusing to resolve the conflict leaves it a conflict: the caller
                # gets the documented StateConflictError (the hook and reason as its cause).
                raise StateConflictError(key, sc.value, expected, actual) from cancelled
            if isinstance(result, Replace):
                resolved = result.value
            elif isinstance(result, Modified) and "value" in data:
                resolved = data["value"]
            else:
                raise StateConflictError(key, sc.value, expected, actual)
            check_json_safe(resolved, key)
            entry = await self._call(self._backend().put, sc, scope_id, key, resolved, actual,
                                     self._clock())
            if entry is not None:
                return entry
        raise StateConflictError(key, sc.value, expected, actual)

    async def delete(self, key: str, *, scope: StateScope | str = StateScope.GLOBAL,
                     scope_id: str = "", expected_version: int | None = None,
                     parent: HookContext | None = None) -> bool:
        """Delete ``key``: True if it was there, False if absent. ``BeforeStateWrite`` /
        ``AfterStateWrite`` fire with ``operation: "delete"`` (a Cancel at the before point
        vetoes; the after point is told only). A version
        mismatch raises :class:`StateConflictError`."""
        key = _check_key(key)
        sc = parse_scope(scope)
        scope_id = _check_scope_id(sc, scope_id)
        chains = self._system.registry.chains
        base = {"key": key, "scope": sc.value, "scope_id": scope_id, "value": None}
        if HookPoint.BEFORE_STATE_WRITE in chains:
            await self._fire(HookPoint.BEFORE_STATE_WRITE, sc, scope_id, key,
                             {**base, "expected_version": expected_version,
                              "operation": "delete"}, parent)
        done = await self._call(self._backend().delete, sc, scope_id, key, expected_version)
        if done is None:
            current = await self._call(self._backend().get, sc, scope_id, key)
            raise StateConflictError(key, sc.value, expected_version,
                                     0 if current is None else current.version)
        if done:
            try:
                if HookPoint.AFTER_STATE_WRITE in chains:
                    await self._tell(sc, scope_id, key,
                                     {**base, "version": None, "operation": "delete"}, parent)
            finally:
                self._publish(sc, "deleted",
                              {"key": key, "scope_id": scope_id, "version": None}, parent)
        return done

    async def restore(self, scope: StateScope | str, scope_id: str,
                      values: Mapping[str, Any], *, clear: bool = True,
                      parent: HookContext | None = None) -> None:
        """Write every item of ``values`` into the scope (through :meth:`set`, so the write
        hooks run); with ``clear``, delete the (non-reserved) keys not in ``values``. Not one
        transaction: a vetoed write stops the restore part-way."""
        sc = parse_scope(scope)
        scope_id = _check_scope_id(sc, scope_id)
        if not isinstance(values, Mapping):
            raise StateError(f"restore takes a mapping of key -> value, got "
                             f"{type(values).__name__}",
                             hint="pass what system.state.snapshot(...) returned")
        for key in values:
            _check_key(key)
        check_json_safe(dict(values), "values")
        for key, value in values.items():  # before the clear below deletes anything
            check_state_value(value, key)
        if clear:
            for key in await self.keys(sc, scope_id):
                if key not in values:
                    await self.delete(key, scope=sc, scope_id=scope_id, parent=parent)
        for key, value in values.items():
            await self.set(key, value, scope=sc, scope_id=scope_id, parent=parent)

    # -- reserved keys (no state hooks: their own points cover them) -----------------------
    async def _get_raw(self, sc: StateScope, scope_id: str, key: str) -> StateEntry | None:
        if RECORDING_RUNS:
            entry: StateEntry | None = await self._recorded_read("get", sc, scope_id, key)
            return entry
        return await self._call(self._backend().get, sc, scope_id, key)

    async def _put_raw(self, sc: StateScope, scope_id: str, key: str, value: Any) -> StateEntry:
        entry = await self._call(self._backend().put, sc, scope_id, key, value, None,
                                 self._clock())
        assert entry is not None  # an unconditional put cannot conflict
        return entry

    async def _put_raw_if(self, sc: StateScope, scope_id: str, key: str, value: Any,
                          expected_version: int) -> StateEntry | None:
        """Write a reserved key only when it is at ``expected_version`` (0: absent); None
        on a mismatch."""
        entry: StateEntry | None = await self._call(self._backend().put, sc, scope_id, key,
                                                    value, expected_version, self._clock())
        return entry

    async def _items_raw(self, sc: StateScope, scope_id: str) -> dict[str, StateEntry]:
        if RECORDING_RUNS:
            items: dict[str, StateEntry] = await self._recorded_read("items", sc, scope_id,
                                                                     None)
            return items
        return await self._call(self._backend().items, sc, scope_id)

    async def _apply(self, sc: StateScope, scope_id: str, writes: Mapping[str, Any],
                     deletes: Iterable[str], guard: tuple[str, int] | None) -> bool:
        """Write and delete atomically when the backend can (``apply``), else one by one
        (the guard is then checked first, then the writes happen)."""
        apply = getattr(self._backend(), "apply", None)
        if apply is not None:
            done: bool = await self._call(apply, sc, scope_id, writes, list(deletes), guard,
                                          self._clock())
            return done
        if guard is not None:
            current = await self._get_raw(sc, scope_id, guard[0])
            if (0 if current is None else current.version) != guard[1]:
                return False
        for key in deletes:
            await self._call(self._backend().delete, sc, scope_id, key, None)
        for key, value in writes.items():
            await self._put_raw(sc, scope_id, key, value)
        return True

    # -- migrations ------------------------------------------------------------------------
    def register_migration(self, version: int, fn: Migration, *,
                           scope: StateScope | str | None = None) -> None:
        """Register the step that brings a scope to schema ``version`` (>= 1) from the
        version below it. ``scope`` limits it to one scope kind (None: every scope)."""
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise StateError(f"a migration version must be an int >= 1, got {version!r}",
                             hint="number the steps 1, 2, 3, ...")
        if not callable(fn):
            raise StateError(f"a migration must be callable, got {type(fn).__name__}",
                             hint="pass a function taking and returning a dict of values")
        sc = None if scope is None else parse_scope(scope)
        steps = self._migrations.setdefault(sc, {})
        if version in steps:
            where = "every scope" if sc is None else f"the {sc.value} scope"
            raise StateError(f"a migration to version {version} is already registered "
                             f"for {where}", hint="give each step its own version")
        steps[version] = fn

    def _steps(self, sc: StateScope) -> list[tuple[int, Migration]]:
        steps = {**self._migrations.get(None, {}), **self._migrations.get(sc, {})}
        return sorted(steps.items())

    async def schema_version(self, scope: StateScope | str = StateScope.GLOBAL,
                             scope_id: str = "") -> int:
        """The schema version of a scope (0 when never migrated)."""
        sc = parse_scope(scope)
        scope_id = _check_scope_id(sc, scope_id)
        entry = await self._get_raw(sc, scope_id, SCHEMA_KEY)
        return 0 if entry is None else int(entry.value)

    async def migrate(self, scope: StateScope | str = StateScope.GLOBAL,
                      scope_id: str = "", *, parent: HookContext | None = None) -> int:
        """Run the pending migration steps of a scope in order and return its schema version.

        Per step, ``StateMigration`` fires with ``{scope, scope_id, from_version,
        to_version, values}`` (the migrated values): ``Cancel`` stops (raises
        :class:`OperationCancelled`; earlier steps stay applied), ``Modified({"values":
        ...})`` or ``Replace(values)`` replaces the migrated values. Each step is written
        atomically with the new schema version (on backends with ``apply``), guarded by the
        version key, so two processes migrating at once apply each step once.
        """
        sc = parse_scope(scope)
        scope_id = _check_scope_id(sc, scope_id)
        steps = self._steps(sc)
        while True:
            items = await self._items_raw(sc, scope_id)
            schema = items.get(SCHEMA_KEY)
            current = 0 if schema is None else int(schema.value)
            pending = [(v, fn) for v, fn in steps if v > current]
            if not pending:
                return current
            to_version, fn = pending[0]
            values = {k: e.value for k, e in items.items()
                      if not k.startswith(RESERVED_PREFIX)}
            try:
                migrated = fn(dict(values))
            except Exception as exc:
                raise StateError(
                    f"migration of {sc.value} {scope_id!r} to version {to_version} failed: "
                    f"{type(exc).__name__}: {exc}",
                    hint="fix the migration function; the scope stays at version "
                    f"{current}") from exc
            if HookPoint.STATE_MIGRATION in self._system.registry.chains:
                result, data = await self._fire(
                    HookPoint.STATE_MIGRATION, sc, scope_id, SCHEMA_KEY,
                    {"scope": sc.value, "scope_id": scope_id, "from_version": current,
                     "to_version": to_version, "values": migrated}, parent)
                if isinstance(result, Replace):
                    migrated = result.value
                elif isinstance(result, Modified):
                    migrated = data.get("values", migrated)
            if not isinstance(migrated, dict):
                raise StateError(
                    f"migration to version {to_version} returned a "
                    f"{type(migrated).__name__}, not a dict of values",
                    hint="return the complete new dict of key -> value")
            for key in migrated:
                _check_key(key)
            check_json_safe(migrated, "values")
            deletes = [k for k in values if k not in migrated]
            writes = {**migrated, SCHEMA_KEY: to_version}
            guard = (SCHEMA_KEY, 0 if schema is None else schema.version)
            if await self._apply(sc, scope_id, writes, deletes, guard):
                self._publish(sc, "migrated", {"scope_id": scope_id,
                                               "from_version": current,
                                               "to_version": to_version}, parent)
            # else another writer migrated meanwhile: read again and go on from there


_UNREAD: Any = object()


def _entry(sc: StateScope, scope_id: str, key: str, stored: Any) -> StateEntry:
    value, version, updated_at = stored
    if isinstance(value, (dict, list)):
        value = copy.deepcopy(value)  # the caller's to change
    return StateEntry(key=key, scope=sc, scope_id=scope_id, value=value,
                      version=int(version), updated_at=float(updated_at))


def _from_record(op: str, sc: StateScope, scope_id: str, key: str | None,
                 stored: Any) -> Any:
    """A read's result from its stored form (``StateRead.result``), or ``_UNREAD`` when
    it does not have the shape that read answers with (a damaged record)."""
    try:
        if op == "get":
            return None if stored is None or key is None else \
                _entry(sc, scope_id, key, stored)
        if op == "items":
            return {str(k): _entry(sc, scope_id, str(k), v) for k, v in stored.items()}
        if isinstance(stored, list) and all(isinstance(k, str) for k in stored):
            return list(stored)
    except (AttributeError, TypeError, ValueError):
        pass
    return _UNREAD


class _Served:
    """The live backend as a replay sees it under its own writes: the entries (or
    absences) it was served from its recording stand in for the live ones, so a write
    with ``expected_version`` continues from the version the replay read, as the recorded
    run's did. A what-if past its change point (the replay's ``past_change()``) reads the
    live state under its writes, as it is. Never written (a :class:`ReplayOverlay` keeps
    the writes)."""

    def __init__(self, live: StateBackend, replay: object) -> None:
        self.live = live
        self._lock = threading.Lock()
        self._seen: dict[tuple[StateScope, str], dict[str, StateEntry | None]] = {}
        probe = getattr(replay, "past_change", None)
        self._past: Callable[[], Callable[[], bool] | None]
        try:  # weakly: the overlay is kept by its replay, never the other way round
            self._past = weakref.WeakMethod(probe)  # type: ignore[type-var]
        except TypeError:
            self._past = lambda: probe

    def _active(self) -> bool:
        if not self._seen:
            return False
        probe = self._past()
        return probe is None or not probe()

    def seed(self, scope: StateScope, scope_id: str, key: str,
             entry: StateEntry | None) -> None:
        """The replay was served ``entry`` (None: absent) for ``key``."""
        if entry is not None and isinstance(entry.value, (dict, list)):
            entry = StateEntry(key=key, scope=scope, scope_id=scope_id,
                               value=copy.deepcopy(entry.value), version=entry.version,
                               updated_at=entry.updated_at)
        with self._lock:
            self._seen.setdefault((scope, scope_id), {})[key] = entry

    def _seeds(self, scope: StateScope, scope_id: str) -> dict[str, StateEntry | None]:
        if not self._active():
            return {}
        with self._lock:
            return dict(self._seen.get((scope, scope_id), {}))

    def get(self, scope: StateScope, scope_id: str, key: str) -> StateEntry | None:
        seeds = self._seen.get((scope, scope_id))
        if seeds is not None and key in seeds and self._active():
            return seeds[key]
        return self.live.get(scope, scope_id, key)

    def put(self, scope: StateScope, scope_id: str, key: str, value: Any,
            expected_version: int | None, now: float) -> StateEntry | None:
        raise StateError("a replay's state never writes the live store",
                         hint="this is a bug in llmspell: please report it")

    def delete(self, scope: StateScope, scope_id: str, key: str,
               expected_version: int | None) -> bool | None:
        raise StateError("a replay's state never writes the live store",
                         hint="this is a bug in llmspell: please report it")

    def keys(self, scope: StateScope, scope_id: str, prefix: str = "") -> list[str]:
        seeds = self._seeds(scope, scope_id)
        found = {k for k in self.live.keys(scope, scope_id, prefix) if k not in seeds}
        found.update(k for k, e in seeds.items() if e is not None and k.startswith(prefix))
        return sorted(found)

    def items(self, scope: StateScope, scope_id: str) -> dict[str, StateEntry]:
        seeds = self._seeds(scope, scope_id)
        merged = {k: e for k, e in self.live.items(scope, scope_id).items()
                  if k not in seeds}
        merged.update((k, e) for k, e in seeds.items() if e is not None)
        return {k: merged[k] for k in sorted(merged)}

    def scopes(self, scope: StateScope) -> list[str]:
        found = set(self.live.scopes(scope))
        if not self._active():
            return sorted(found)
        with self._lock:
            found.update(scope_id for (sc, scope_id), seeds in self._seen.items()
                         if sc is scope and any(e is not None for e in seeds.values()))
        return sorted(found)

    def close(self) -> None:
        """Nothing to release: the live backend belongs to the system."""
