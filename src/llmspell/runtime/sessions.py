"""Sessions: a named run whose id is the correlation id of everything done in it, with its
own state scope, checkpoints and a record that survives the process.

``system.sessions`` is the :class:`SessionManager`. :meth:`SessionManager.start` fires
``SessionStart`` (a ``Cancel`` vetoes) and returns a :class:`Session`; pass
``session.context()`` as ``parent=`` to tools and agents so their hooks and events carry the
session's correlation id. The session's state lives in the ``session`` scope under its id;
its record (``__session__``) and checkpoints (``__checkpoint__:<label>``) are reserved keys
there, so a new process finds them (:meth:`SessionManager.list`, :meth:`SessionManager.load`).

Sessions are kept until deleted: :meth:`SessionManager.delete` removes one session and its
whole scope (record, checkpoints, state), :meth:`SessionManager.purge` every ended session
that ended longer ago than a duration. Both fire ``SessionDelete`` before each deletion (a
``Cancel`` keeps the session). With ``SystemConfig.session_retention`` set, the system
purges by that age when it starts and then every :func:`retention_interval` seconds.
Timestamps come from ``system.sessions.clock``.

What goes into a record, its events and its hook data is bounded and checked before
anything is written (a :class:`~llmspell.errors.SessionError` otherwise): a name has at most
:data:`MAX_SESSION_NAME` characters, a checkpoint label at most :data:`MAX_CHECKPOINT_LABEL`,
and the metadata at most :data:`MAX_SESSION_METADATA_BYTES` bytes as JSON. Larger data
belongs in the session's state (:meth:`Session.set`). A session keeps at most
``SystemConfig.session_max_checkpoints`` checkpoints, and a state byte quota
(:class:`~llmspell.runtime.state.quota.QuotaStateBackend`) is checked before the hooks too.
A write through an object of a session deleted by another process (a shared SQLite store)
reads the record first and is refused; one racing the delete is undone.
"""

from __future__ import annotations

import asyncio
import copy
import math
import weakref
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any, Generic, TypeVar, overload

import msgspec

from llmspell.core.clock import SYSTEM_CLOCK, Clock
from llmspell.core.errors import EventTooLargeError, SessionConflictError, SessionError
from llmspell.core.ids import new_id
from llmspell.core.redact import get_logger
from llmspell.core.run_scope import RUNNING_REPLAYS, current_replay
from llmspell.core.text import is_utf8
from llmspell.core.values import check_json_safe, lone_surrogate_error
from llmspell.events.event import EventMetadata, UniversalEvent
from llmspell.events.store.base import EventQuery, EventStore
from llmspell.hooks.context import ComponentId, ComponentType, HookContext
from llmspell.hooks.points import HookPoint
from llmspell.hooks.result import Cancel, Continue, Modified, Replace, cancelled_error
from llmspell.runtime.state.base import StateEntry, StateScope, check_state_text
from llmspell.runtime.state.quota import QuotaStateBackend
from llmspell.runtime.state.store import RESERVED_PREFIX
from llmspell.runtime.withheld import publish_withheld

__all__ = ["CHECKPOINT_PREFIX", "MAX_CHECKPOINT_LABEL", "MAX_SESSION_METADATA_BYTES",
           "MAX_SESSION_NAME", "RETENTION_MAX_INTERVAL", "RETENTION_MIN_INTERVAL",
           "SESSION_KEY", "Session", "SessionManager", "retention_interval"]

logger = get_logger("llmspell.sessions")

SESSION_KEY = "__session__"
"""The reserved key holding a session's record in its scope."""

CHECKPOINT_PREFIX = "__checkpoint__:"
"""The reserved key prefix of a session's checkpoints (``__checkpoint__:<label>``)."""

MAX_SESSION_NAME = 256
"""The most characters a session name may have."""

MAX_CHECKPOINT_LABEL = 256
"""The most characters a checkpoint label may have."""

MAX_SESSION_METADATA_BYTES = 64 * 1024
"""The most bytes a session's metadata may take as JSON (it is rewritten with the record on
every save, and read back by every :meth:`SessionManager.list`)."""

RETENTION_MAX_INTERVAL = 3600.0
"""The longest wait between two retention purges (seconds): an hour."""

RETENTION_MIN_INTERVAL = 1.0
"""The shortest wait between two retention purges (seconds), however short the retention."""


def retention_interval(retention: float) -> float:
    """How long the system waits between two purges for ``SystemConfig.session_retention``
    = ``retention`` seconds: the retention itself, but at most
    :data:`RETENTION_MAX_INTERVAL` and at least :data:`RETENTION_MIN_INTERVAL`. An ended
    session is thus deleted at most about one interval after it became old enough."""
    return max(RETENTION_MIN_INTERVAL, min(float(retention), RETENTION_MAX_INTERVAL))


_SCOPE = StateScope.SESSION
_ENCODER = msgspec.json.Encoder()
_EventList = list[UniversalEvent]  # `list` is shadowed by SessionManager.list below
_SessionList = list["Session"]
_T = TypeVar("_T")


def _weak(obj: object) -> Callable[[], object | None]:
    """A weak reference to ``obj``, or (not weakly referenceable) a strong one."""
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj


class _Field(Generic[_T]):
    """A :class:`Session` field that a replay sees and changes in a copy of its own (see
    :meth:`Session._fields`): a replay never changes what a live handle says."""

    __slots__ = ("_name",)

    def __init__(self) -> None:
        self._name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _Field[_T]: ...
    @overload
    def __get__(self, obj: Session, owner: type | None = None) -> _T: ...
    def __get__(self, obj: Session | None, owner: type | None = None) -> _T | _Field[_T]:
        if obj is None:
            return self
        value: _T = obj._fields()[self._name]
        return value

    def __set__(self, obj: Session, value: _T) -> None:
        obj._fields()[self._name] = value


class Session:
    """One session. ``id`` is also its ``correlation_id``; ``status`` is ``"active"`` or
    ``"ended"``. Create with :meth:`SessionManager.start` or :meth:`SessionManager.load`.

    A replay (``system.runs.replay``) that uses a session object made outside it (a live
    session an ``operation=`` captured) sees and changes a copy of its own of the object's
    fields (``name``, ``status``, ``updated_at``, ``ended_at``, ``metadata``, whether it was
    deleted), made when the replay first touches them: what the replay does (``end()``,
    ``save()``, a delete) never changes what the object says outside the replay, as its
    state writes never reach the live store. A session started or loaded inside a replay
    is the replay's own: it behaves as usual inside it, and refuses writes outside it (after
    it ended, say: :class:`SessionError`; load the session again)."""

    name = _Field[str | None]()
    status = _Field[str]()
    updated_at = _Field[float]()
    ended_at = _Field[float | None]()
    metadata = _Field[dict[str, Any]]()
    _ending = _Field[bool]()  # end() is between its check and its write
    _deleted = _Field[bool]()  # SessionManager.delete removed it (through this handle or not)
    _version = _Field[int]()  # the version of the record this object last read or wrote

    def __init__(self, manager: SessionManager, *, id: str, name: str | None,
                 status: str = "active", created_at: float, updated_at: float | None = None,
                 ended_at: float | None = None,
                 metadata: dict[str, Any] | None = None, version: int = 0) -> None:
        self._manager = manager
        self.id = id
        self.created_at = created_at
        # The replay this object was made in (it is that replay's own), or None.
        replay = current_replay() if RUNNING_REPLAYS else None
        self._owner: Callable[[], object | None] | None = \
            None if replay is None else _weak(replay)
        # The fields outside replays (and inside the replay that owns the object) ...
        self._live: dict[str, Any] = {
            "name": name, "status": status,
            "updated_at": updated_at if updated_at is not None else created_at,
            "ended_at": ended_at, "metadata": dict(metadata or {}),
            "_ending": False, "_deleted": False, "_version": version}
        # ... and each other running replay's copy of them, by the id of its session.
        self._views: dict[int, tuple[Callable[[], object | None], dict[str, Any]]] = {}
        # A live delete of the session (in this process) happened or is under way: the
        # object learns it at its next write, which is refused (see SessionManager._mark).
        self._gone = False
        manager._handles.add(self)

    def _fields(self) -> dict[str, Any]:
        """The fields the calling task sees: the object's own, or inside a replay that did
        not make the object, that replay's copy of them. Outside replays this costs one
        test of an empty dict."""
        if RUNNING_REPLAYS:
            replay = current_replay()
            if replay is not None and (self._owner is None or self._owner() is not replay):
                return self._replay_fields(replay)
        return self._live

    def _replay_fields(self, replay: object) -> dict[str, Any]:
        """``replay``'s copy of the fields, made at its first use (the copies of replays
        that have ended are dropped then)."""
        view = self._views.get(id(replay))
        if view is not None and view[0]() is replay:
            return view[1]
        running = {id(r) for r in RUNNING_REPLAYS.values()}
        for key in [k for k, (ref, _) in self._views.items()
                    if k not in running or ref() is None]:
            self._views.pop(key, None)
        fields = dict(self._live, metadata=copy.deepcopy(self._live["metadata"]),
                      _ending=False)  # a live end() in progress is not the replay's
        self._views[id(replay)] = (_weak(replay), fields)
        return fields

    def _check_replay_owner(self, action: str) -> None:
        """Refuse a write through a session object that a replay made, from outside that
        replay (after it, say): its fields are the replay's, and its writes would reach the
        live store."""
        if self._owner is None:
            return
        owner = self._owner()
        if owner is not None and owner is current_replay():
            return
        raise SessionError(
            f"cannot {action}: this object of session {self.id!r} was made inside a replay "
            "and belongs to it (its writes stay in the replay)",
            hint="outside that replay, load the session again (system.sessions.load())")

    @property
    def correlation_id(self) -> str:
        """The correlation id of everything run in the session (its id)."""
        return self.id

    @property
    def active(self) -> bool:
        """True until :meth:`end` (or until the session is deleted)."""
        return self.status == "active" and not self._deleted

    def __repr__(self) -> str:
        return f"Session(id={self.id!r}, name={self.name!r}, status={self.status!r})"

    @property
    def component(self) -> ComponentId:
        """The component id hooks see for this session."""
        return ComponentId(type=ComponentType.SESSION, name=self.name or self.id, id=self.id)

    def context(self) -> HookContext:
        """A root hook context for the session (point ``SessionStart``, correlation id the
        session id). Pass it as ``parent=`` to ``system.tools.execute`` or ``agent.run``."""
        return HookContext(point=HookPoint.SESSION_START, component=self.component,
                           data={"session_id": self.id}, correlation_id=self.id)

    def to_dict(self) -> dict[str, Any]:
        """The session record as stored (JSON-safe)."""
        return {"id": self.id, "name": self.name, "status": self.status,
                "created_at": self.created_at, "updated_at": self.updated_at,
                "ended_at": self.ended_at, "metadata": dict(self.metadata)}

    @classmethod
    def _from_dict(cls, manager: SessionManager, record: dict[str, Any],
                   session_id: str | None = None, version: int = 0) -> Session:
        """The session of a stored ``record`` (of the scope of ``session_id``). A field of
        the wrong type (a record damaged, or written with ``system.state.set`` on the
        reserved key) is read as its default instead of failing every listing; the id is
        the scope's, where the session's state is."""
        ident = record.get("id") if session_id is None else session_id
        name = record.get("name")
        status = record.get("status")
        metadata = record.get("metadata")
        return cls(manager, id=ident if isinstance(ident, str) else "",
                   name=name if isinstance(name, str) else None,
                   status=status if status in ("active", "ended") else "active",
                   created_at=_number(record.get("created_at")) or 0.0,
                   updated_at=_number(record.get("updated_at")),
                   ended_at=_number(record.get("ended_at")),
                   metadata=metadata if isinstance(metadata, dict) else {}, version=version)

    def _deleted_error(self, action: str, when: str = "") -> SessionError:
        """Mark this object's session deleted and return the error refusing ``action``
        (``when``: how the delete met the action, e.g. " while the write ran")."""
        self._deleted = True
        return SessionError(f"cannot {action}: session {self.id!r} was deleted{when}",
                            hint="start a new session (system.sessions.start())")

    def _require_active(self, action: str) -> None:
        self._check_replay_owner(action)
        if self._gone or self._deleted:
            raise self._deleted_error(action)
        if not self.active:
            raise SessionError(f"cannot {action}: session {self.id!r} has ended",
                               hint="start a new session (system.sessions.start())")

    async def _record_gone(self) -> bool:
        """Whether the session's record is gone from the live store: another process deleted
        the session (one in this process is known at once, see :meth:`SessionManager._mark`).
        False inside a replay, whose writes never reach the live store. One read, not
        recorded in a run (a replay never makes it)."""
        if RUNNING_REPLAYS and current_replay() is not None:
            return False
        state = self._manager.system.state
        entry = await state._call(state.backend.get, _SCOPE, self.id, SESSION_KEY)
        return entry is None

    async def _require_stored(self, action: str) -> None:
        """Refuse a write (before its hooks) when the session was deleted elsewhere."""
        if await self._record_gone():
            raise self._deleted_error(action)

    async def _written_after_delete(self, action: str) -> None:
        """A write of this object landed while the session was being deleted (in this
        process): remove what may have outlived the delete's own sweep (nothing while the
        record is there: the delete sweeps after removing it) and refuse the write."""
        await self._manager._sweep(self.id)
        raise self._deleted_error(action, " while the write ran")

    async def _fire(self, point: HookPoint, data: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        system = self._manager.system
        outcome, ctx = await system.dispatch(point, self.component, data,
                                             parent=self.context())
        result = outcome.result
        # ``type() is Continue`` first: every hook went on (the common case), and an
        # isinstance miss against a Struct class is the slow __instancecheck__ path.
        if type(result) is not Continue and isinstance(result, Cancel):
            raise cancelled_error(point, result, outcome.decided_by)
        return result, (ctx.data if ctx is not None else data)

    def _publish(self, event_type: str, data: dict[str, Any]) -> None:
        bus = self._manager.system.bus
        if not bus.closed:
            payload = {"session_id": self.id, **data}
            metadata = EventMetadata(correlation_id=self.id, source="llmspell.sessions")
            try:
                bus.publish(event_type, payload, metadata)
            except EventTooLargeError as exc:  # a huge name or label: already written
                publish_withheld(bus, exc, event_type, payload, metadata)

    # -- state -----------------------------------------------------------------------------
    async def set(self, key: str, value: Any, *,
                  expected_version: int | None = None) -> StateEntry:
        """Write ``key`` in the session's state (see :meth:`StateStore.set`). Keys starting
        with ``__`` are the session's own (its record, its checkpoints) and are refused."""
        self._require_active("write state")
        _check_own_key(key, "write")
        await self._require_stored("write state")
        state = self._manager.system.state
        entry: StateEntry = await state.set(key, value, scope=_SCOPE, scope_id=self.id,
                                            expected_version=expected_version,
                                            parent=self.context())
        if self._gone or await self._record_gone():
            await self._written_after_delete("write state")
        return entry

    async def get(self, key: str, default: Any = None) -> Any:
        """Read ``key`` from the session's state (``default`` when absent)."""
        return await self._manager.system.state.get(key, scope=_SCOPE, scope_id=self.id,
                                                    default=default, parent=self.context())

    async def delete(self, key: str) -> bool:
        """Delete ``key`` from the session's state (keys starting with ``__`` are refused,
        as in :meth:`set`)."""
        self._require_active("delete state")
        _check_own_key(key, "delete")
        await self._require_stored("delete state")
        deleted: bool = await self._manager.system.state.delete(
            key, scope=_SCOPE, scope_id=self.id, parent=self.context())
        return deleted

    async def keys(self, prefix: str = "") -> list[str]:
        """The session's state keys (reserved keys hidden)."""
        keys: list[str] = await self._manager.system.state.keys(_SCOPE, self.id, prefix)
        return keys

    async def snapshot(self) -> dict[str, Any]:
        """The session's state as a dict (reserved keys hidden)."""
        values: dict[str, Any] = await self._manager.system.state.snapshot(
            _SCOPE, self.id, parent=self.context())
        return values

    async def events(self, *, include_replays: bool = False) -> _EventList:
        """The stored events of the session (see :meth:`SessionManager.events`): what
        happened to it, without what replays did with it unless ``include_replays``."""
        return await self._manager.events(self, include_replays=include_replays)

    # -- lifecycle -------------------------------------------------------------------------
    async def save(self) -> None:
        """Fire ``SessionSave`` (a ``Cancel`` vetoes; ``Modified({"metadata": ...})``
        changes the metadata saved) and persist the session record. A ``name`` or
        ``metadata`` over the limits (see the module documentation) or that no store can
        keep raises first, before the hooks run.

        Saving is optimistic: the record is written only if it is still the one this object
        last read or wrote. When another object of the session saved or ended it since
        (in this process or another), :class:`SessionError` says so and nothing is written
        (load the session again, reapply the change and save)."""
        self._check_replay_owner("save")
        _check_record(self.name, self.metadata)
        await self._manager._check_stored(self, "save")
        _check_quota(self._manager.system.state, self.id, {SESSION_KEY: self.to_dict()})
        _, data = await self._fire(HookPoint.SESSION_SAVE,
                                   {"session_id": self.id, "name": self.name,
                                    "status": self.status, "metadata": dict(self.metadata)})
        metadata = data.get("metadata", self.metadata)
        if isinstance(metadata, dict):
            check_json_safe(metadata, "metadata")
            _check_metadata(metadata, "the SessionSave hooks returned ")
            self.metadata = dict(metadata)
        await self._manager._persist(self, "save")
        self._publish("session.saved", {})

    async def checkpoint(self, label: str | None = None) -> str:
        """Fire ``SessionCheckpoint`` (a ``Cancel`` vetoes) and store a snapshot of the
        session's state under ``label`` (default: a new id; at most
        :data:`MAX_CHECKPOINT_LABEL` characters). Returns the label. A new label past
        ``SystemConfig.session_max_checkpoints`` checkpoints raises :class:`SessionError`
        before the hooks (an existing label is replaced)."""
        self._require_active("checkpoint")
        label = label if label is not None else new_id()
        if not isinstance(label, str) or not label:
            raise SessionError(f"a checkpoint label must be a non-empty string, got {label!r}",
                               hint="pass a name such as 'before-step-3', or nothing")
        _check_label(label, "pass a short label such as 'before-step-3', or nothing for a "
                            "new id")
        check_state_text(CHECKPOINT_PREFIX + label)  # what the store refuses, before the hooks
        store = self._manager.system.state
        key = CHECKPOINT_PREFIX + label
        items = await store._items_raw(_SCOPE, self.id)
        live = not (RUNNING_REPLAYS and current_replay() is not None)
        record = items.get(SESSION_KEY)
        if live and record is None:  # deleted by another process
            raise self._deleted_error("checkpoint")
        limit: int = self._manager.system.config.session_max_checkpoints
        if key not in items and sum(k.startswith(CHECKPOINT_PREFIX) for k in items) >= limit:
            raise SessionError(
                f"cannot checkpoint: session {self.id!r} has {limit} checkpoints, the most "
                f"one session keeps (SystemConfig.session_max_checkpoints={limit})",
                hint="reuse a label (a checkpoint with an existing label replaces it), start "
                     "a new session, or raise session_max_checkpoints in the configuration")
        values = {k: e.value for k, e in items.items() if not k.startswith("__")}
        _check_quota(store, self.id, {key: {"label": label, "created_at": 0.0,
                                            "values": values}})
        result, data = await self._fire(HookPoint.SESSION_CHECKPOINT,
                                        {"session_id": self.id, "label": label,
                                         "values": values})
        if (type(result) is not Continue and isinstance(result, Modified)
                and isinstance(data.get("values"), dict)):
            values = data["values"]
            check_json_safe(values, "values")
        now = self._manager.clock.now()
        stored = {"label": label, "created_at": now, "values": values}
        if not live or record is None:
            await store._put_raw(_SCOPE, self.id, key, stored)
        else:  # written only while the record is there (not deleted meanwhile elsewhere)
            version = record.version
            while not await store._apply(_SCOPE, self.id, {key: stored}, (),
                                         (SESSION_KEY, version)):
                current = await store._call(store.backend.get, _SCOPE, self.id, SESSION_KEY)
                if current is None:
                    raise self._deleted_error("checkpoint", " while the checkpoint was taken")
                version = current.version  # saved meanwhile: still there
        if self._gone:
            await self._written_after_delete("checkpoint")
        self._publish("session.checkpointed", {"label": label})
        return label

    async def checkpoints(self) -> list[str]:
        """The labels of the session's checkpoints, oldest first."""
        store = self._manager.system.state
        items = await store._items_raw(_SCOPE, self.id)
        found = [(_number(e.value.get("created_at")) or 0.0, e.version,
                  k[len(CHECKPOINT_PREFIX):])
                 for k, e in items.items()
                 if k.startswith(CHECKPOINT_PREFIX) and isinstance(e.value, dict)]
        return [label for _, _, label in sorted(found)]

    async def restore(self, label: str | None = None) -> dict[str, Any]:
        """Fire ``SessionRestore`` (a ``Cancel`` vetoes; ``Modified({"values": ...})`` or
        ``Replace(values)`` changes what is restored) and put the session's state back as it
        was at checkpoint ``label`` (default: the latest). Returns the values restored."""
        self._require_active("restore")
        await self._require_stored("restore")
        if label is None:
            labels = await self.checkpoints()
            if not labels:
                raise SessionError(f"session {self.id!r} has no checkpoint to restore",
                                   hint="call session.checkpoint() first")
            label = labels[-1]
        elif not isinstance(label, str) or not label:
            raise SessionError(f"a checkpoint label must be a non-empty string, got {label!r}",
                               hint="see session.checkpoints() for the labels, or pass nothing "
                                    "for the latest")
        else:  # no checkpoint can have it: say why instead of looking it up
            _check_label(label, "see session.checkpoints() for the labels, or pass nothing "
                                "for the latest")
        store = self._manager.system.state
        entry = await store._get_raw(_SCOPE, self.id, CHECKPOINT_PREFIX + label)
        if entry is None or not isinstance(entry.value, dict):
            raise SessionError(f"session {self.id!r} has no checkpoint {label!r}",
                               hint="see session.checkpoints() for the labels")
        stored = entry.value.get("values", {})
        if not isinstance(stored, dict):
            raise SessionError(f"checkpoint {label!r} of session {self.id!r} is damaged: its "
                               f"values are a {type(stored).__name__}, not a dict",
                               hint="restore another checkpoint (session.checkpoints())")
        values: dict[str, Any] = dict(stored)
        quota = _quota_of(store)
        if quota is not None:
            current = await store._call(quota.keys, _SCOPE, self.id)
            quota.check(_SCOPE, self.id, values,
                        [k for k in current
                         if not k.startswith(RESERVED_PREFIX) and k not in values])
        result, data = await self._fire(HookPoint.SESSION_RESTORE,
                                        {"session_id": self.id, "label": label,
                                         "values": values})
        if type(result) is Continue:
            pass
        elif isinstance(result, Replace) and isinstance(result.value, dict):
            values = result.value
        elif isinstance(result, Modified) and isinstance(data.get("values"), dict):
            values = data["values"]
        await store.restore(_SCOPE, self.id, values, clear=True, parent=self.context())
        if self._gone or await self._record_gone():
            await self._written_after_delete("restore")
        self._publish("session.restored", {"label": label})
        return values

    async def end(self) -> None:
        """Fire ``SessionEnd`` (a ``Cancel`` vetoes), mark the session ended, persist its
        record and publish ``session.ended``. A ``name`` or ``metadata`` over the limits
        (see the module documentation) or that no store can keep raises first, and so does
        a record saved or ended through another object since this one read it (as in
        :meth:`save`: nothing is written and the session stays active)."""
        self._require_active("end the session")
        _check_record(self.name, self.metadata)
        if self._ending:
            # Another task is ending it (its SessionEnd hooks are running): ending it twice
            # would fire SessionEnd and publish session.ended twice.
            raise SessionError(f"cannot end the session: session {self.id!r} is already "
                               "being ended by another task",
                               hint="end a session once; await that call instead")
        self._ending = True
        try:
            await self._manager._check_stored(self, "end the session")
            _check_quota(self._manager.system.state, self.id, {SESSION_KEY: self.to_dict()})
            await self._fire(HookPoint.SESSION_END, {"session_id": self.id, "name": self.name,
                                                     "metadata": dict(self.metadata)})
            await self._manager._persist(self, "end the session", ending=True)
        finally:
            self._ending = False
        self._publish("session.ended", {"name": self.name})


class SessionManager:
    """Starts, finds, loads and deletes sessions (``system.sessions``).

    ``clock`` (its ``now()``) stamps ``created_at``, ``updated_at``, ``ended_at`` and the
    checkpoints, and is what :meth:`purge` measures ages against; assign
    ``system.sessions.clock`` (e.g. a :class:`~llmspell.core.clock.ManualClock` in tests)
    before starting sessions. ``sleep`` is how the system's retention task waits between
    two purges (``asyncio.sleep``; assign ``system.sessions.sleep`` before the system starts
    to drive it from a test)."""

    def __init__(self, system: Any, *, clock: Clock = SYSTEM_CLOCK,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        self.system = system
        self.clock = clock
        self.sleep = sleep
        # Whether a stored run is a replay's (a replay, or a run inside one), by run id:
        # what events() leaves out. A run's start record never changes, so the answer is
        # kept (at most _REPLAY_RUNS_KEPT of them).
        self._replay_runs: dict[str, bool] = {}
        # Every Session object of this manager alive (weakly), so a delete can tell them.
        self._handles: weakref.WeakSet[Session] = weakref.WeakSet()

    async def start(self, name: str | None = None,
                    metadata: dict[str, Any] | None = None) -> Session:
        """Start a session: fire ``SessionStart`` (a ``Cancel`` vetoes with
        :class:`OperationCancelled`; ``Modified`` may change ``name`` and ``metadata``),
        persist its record and publish ``session.started``. A name of more than
        :data:`MAX_SESSION_NAME` characters, or metadata of more than
        :data:`MAX_SESSION_METADATA_BYTES` bytes as JSON, raises :class:`SessionError`
        before anything happens (from the hooks' answer: before the record is written)."""
        if name is not None and not isinstance(name, str):
            raise SessionError(f"a session name must be a string, got {type(name).__name__}",
                               hint="pass a name such as 'support-chat', or nothing")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise SessionError(f"session metadata must be a dict, got {type(metadata).__name__}",
                               hint="pass metadata={'user': 'ada'}, or nothing")
        metadata = dict(metadata or {})
        _check_record(name, metadata)
        session_id = new_id()
        session = Session(self, id=session_id, name=name, created_at=self.clock.now(),
                          metadata=metadata)
        _check_quota(self.system.state, session_id, {SESSION_KEY: session.to_dict()})
        outcome, ctx = await self.system.dispatch(
            HookPoint.SESSION_START, session.component,
            {"session_id": session_id, "name": name, "metadata": dict(metadata)},
            correlation_id=session_id)
        result = outcome.result
        if type(result) is Continue:  # every hook went on: the common case, no tests
            pass
        elif isinstance(result, Cancel):
            raise cancelled_error(HookPoint.SESSION_START, result, outcome.decided_by)
        elif isinstance(result, Modified) and ctx is not None:
            new_name = ctx.data.get("name", name)
            if isinstance(new_name, str):
                _check_name(new_name, "the SessionStart hooks returned ")
            session.name = new_name if isinstance(new_name, str) else name
            new_meta = ctx.data.get("metadata", metadata)
            if isinstance(new_meta, dict):
                check_json_safe(new_meta, "metadata")
                _check_metadata(new_meta, "the SessionStart hooks returned ")
                session.metadata = dict(new_meta)
        await self._persist(session, "start the session", creating=True)
        session._publish("session.started", {"name": session.name})
        return session

    async def _check_stored(self, session: Session, action: str) -> None:
        """Raise :class:`SessionError` when ``session``'s record cannot be written now: it
        was deleted, or another object (task or process) ended it and this object does not
        know it (writing would bring the session back to life), or saved or ended it since
        this object last read or wrote it (writing would lose that change). The object
        learns that it was deleted or ended."""
        current = await self.system.state._get_raw(_SCOPE, session.id, SESSION_KEY)
        if current is None:
            session._deleted = True
            raise SessionError(f"cannot {action}: session {session.id!r} was deleted",
                               hint="start a new session (system.sessions.start())")
        if current.version == session._version:
            return
        record = current.value
        if (session.status != "ended" and isinstance(record, dict)
                and record.get("status") == "ended"):
            session.status = "ended"
            session.ended_at = _number(record.get("ended_at"))
            raise SessionError(
                f"cannot {action}: session {session.id!r} was ended elsewhere",
                hint="load it again (system.sessions.load()) or start a new session")
        raise SessionConflictError(
            f"cannot {action}: session {session.id!r} was saved through another object "
            f"since this one read it (its record is at version {current.version}, this "
            f"object has version {session._version}); nothing was written",
            hint="load it again (system.sessions.load()), reapply the change to that object "
                 "and save it")

    async def _persist(self, session: Session, action: str, *, creating: bool = False,
                       ending: bool = False) -> None:
        """Write the session's record (``ending``: as ended), compare-and-set on the
        version this object last read or wrote (0 when ``creating``): when the stored
        record is another (deleted, ended or saved through another object meanwhile, see
        :meth:`_check_stored`) that raises :class:`SessionError` and nothing is written.
        The object's fields change only once the record is written."""
        state = self.system.state
        while True:
            now = self.clock.now()
            record = session.to_dict()
            record["updated_at"] = now
            if ending:
                record["status"], record["ended_at"] = "ended", now
            written = await state._put_raw_if(_SCOPE, session.id, SESSION_KEY, record,
                                              0 if creating else session._version)
            if written is not None:
                session.updated_at = now
                if ending:
                    session.status, session.ended_at = "ended", now
                session._version = written.version
                return
            if creating:  # an id taken already: never a new session's (ids are unique)
                raise SessionError(f"cannot {action}: a session {session.id!r} exists",
                                   hint="start it again (system.sessions.start())")
            await self._check_stored(session, action)  # raises unless it is back as read

    async def load(self, session_id: str) -> Session:
        """The saved session ``session_id`` (also from another process on the same data
        directory). Raises :class:`SessionError` when there is none."""
        if not isinstance(session_id, str) or not session_id:
            raise SessionError(f"a session id must be a non-empty string, got {session_id!r}",
                               hint="use the id of a session from system.sessions.list()")
        entry = await self.system.state._get_raw(_SCOPE, session_id, SESSION_KEY)
        if entry is None or not isinstance(entry.value, dict):
            raise _no_session(session_id)
        return Session._from_dict(self, entry.value, session_id, entry.version)

    async def list(self, *, status: str | None = None) -> list[Session]:
        """Every saved session (oldest first), optionally only those with ``status``
        (``"active"`` or ``"ended"``)."""
        if status is not None and status not in ("active", "ended"):
            raise SessionError(f"status must be 'active', 'ended' or None, got {status!r}",
                               hint="list(status='active') or list(status='ended'), or "
                                    "list() for every session")
        state = self.system.state
        found: list[Session] = []
        for session_id in await state.scopes(_SCOPE):
            entry = await state._get_raw(_SCOPE, session_id, SESSION_KEY)
            if entry is None or not isinstance(entry.value, dict):
                continue
            session = Session._from_dict(self, entry.value, session_id, entry.version)
            if status is None or session.status == status:
                found.append(session)
        found.sort(key=lambda s: (s.created_at, s.id))
        return found

    async def delete(self, session: Session | str, *, force: bool = False) -> None:
        """Delete session ``session`` (a :class:`Session` or its id) and everything kept
        under it: its record, its checkpoints and its state (the whole ``session`` scope of
        its id; no other scope is touched). Fires ``SessionDelete`` first (a ``Cancel`` keeps
        the session and raises :class:`OperationCancelled`), then publishes
        ``session.deleted``.

        An active session is refused with :class:`SessionError` unless ``force`` is True:
        end it first, or force it (``SessionEnd`` then does not fire). No saved session
        ``session`` raises :class:`SessionError` too; neither fires ``SessionDelete``. The
        events of the session stay in the event store (its retention governs them). A handle
        of the deleted session that writes its record afterwards (``save()``, ``end()``)
        raises :class:`SessionError`, and so does every write through a handle of it in
        this process (one under way is undone); ``session`` itself, when a
        :class:`Session`, refuses every write from now on."""
        session_id = _session_id(session, "delete()")
        if not isinstance(force, bool):
            raise SessionError(f"force must be True or False, got {force!r}",
                               hint="pass force=True to delete an active session")
        current = await self.system.state._get_raw(_SCOPE, session_id, SESSION_KEY)
        if current is None or not isinstance(current.value, dict):
            raise _no_session(session_id)
        if current.value.get("status") != "ended" and not force:
            raise _still_active(session_id)
        cancel, hook = await self._fire_delete(current.value, session_id, force=force,
                                               purged=False)
        if cancel is not None:
            raise cancelled_error(HookPoint.SESSION_DELETE, cancel, hook)
        record = await self._remove(session_id, force=force)
        if record is None:
            raise _no_session(session_id)
        if isinstance(session, Session):
            session._deleted = True
        self._publish_deleted(record, session_id, purged=False)

    async def purge(self, older_than: float | timedelta) -> int:
        """Delete every ended session that ended ``older_than`` (seconds, or a
        :class:`~datetime.timedelta`) ago or earlier, as measured by :attr:`clock`, with
        everything kept under it (see :meth:`delete`); active sessions are never purged.
        Fires ``SessionDelete`` (``purged: True``) before each deletion: a ``Cancel`` keeps
        that session (a warning is logged, nothing raises) and the purge goes on with the
        others. Publishes ``session.deleted`` (with ``purged: True``) for each session
        deleted. Returns how many were deleted."""
        seconds = older_than.total_seconds() if isinstance(older_than, timedelta) \
            else older_than
        if (isinstance(seconds, bool) or not isinstance(seconds, int | float)
                or not math.isfinite(seconds) or seconds < 0):
            raise SessionError(
                f"older_than must be a duration of 0 or more seconds, got {older_than!r}",
                hint="pass seconds (86400 for a day) or a datetime.timedelta")
        cutoff = self.clock.now() - seconds
        removed = 0
        for found in await self.list(status="ended"):
            if _ended_at(found.to_dict()) > cutoff:
                continue
            cancel, hook = await self._fire_delete(found.to_dict(), found.id, force=False,
                                                   purged=True)
            if cancel is not None:
                logger.warning("purge kept session %r: SessionDelete hook %r cancelled its "
                               "deletion (%s)", found.id, hook, cancel.reason)
                continue
            record = await self._remove(found.id, force=False, cutoff=cutoff)
            if record is not None:
                removed += 1
                self._publish_deleted(record, found.id, purged=True)
        return removed

    async def _remove(self, session_id: str, *, force: bool,
                      cutoff: float | None = None) -> dict[str, Any] | None:
        """Delete the scope of session ``session_id`` if its record allows it (ended, or
        ``force``; with ``cutoff``, ended at ``cutoff`` or earlier). Returns the record
        deleted; None when there is no record, or (with ``cutoff``) it no longer qualifies.
        Raises :class:`SessionError` for an active session without ``force``.

        The session's objects in this process are told first (a write through one of them
        that lands meanwhile is undone by that write, see :meth:`Session.set`); they are
        told again that it is there when it is kept after all."""
        state = self.system.state
        told = self._mark(session_id)
        while True:
            current = await state._get_raw(_SCOPE, session_id, SESSION_KEY)
            if current is None or not isinstance(current.value, dict):
                return None
            record: dict[str, Any] = current.value
            ended = record.get("status") == "ended"
            if cutoff is not None and (not ended or _ended_at(record) > cutoff):
                self._unmark(told)
                return None
            if not ended and not force:
                self._unmark(told)
                raise _still_active(session_id)
            keys = await state.keys(_SCOPE, session_id, include_reserved=True)
            # The record goes last: a backend without an atomic apply that stops part-way
            # leaves a session that is still listed, so deleting it again finishes the job.
            deletes = [k for k in keys if k != SESSION_KEY] + [SESSION_KEY]
            if await state._apply(_SCOPE, session_id, {}, deletes,
                                  (SESSION_KEY, current.version)):
                break
            # The record changed (saved or ended meanwhile): decide again on the new one.
        # Keys a handle of the session wrote between the listing and the delete belong to
        # the deleted session too.
        await self._sweep(session_id)
        return record

    async def _sweep(self, session_id: str) -> None:
        """Delete every key left in the scope of session ``session_id`` if its record is
        absent (a deleted session's; guarded on the record being absent)."""
        state = self.system.state
        left = await state.keys(_SCOPE, session_id, include_reserved=True)
        if left:
            await state._apply(_SCOPE, session_id, {}, left, (SESSION_KEY, 0))

    def _mark(self, session_id: str) -> _SessionList:
        """Tell this process's live objects of session ``session_id`` that it is being
        deleted (not inside a replay, whose deletes never reach the live session); returns
        those told, for :meth:`_unmark`."""
        if RUNNING_REPLAYS and current_replay() is not None:
            return []
        told = [h for h in tuple(self._handles)
                if h.id == session_id and h._owner is None and not h._gone]
        for handle in told:
            handle._gone = True
        return told

    @staticmethod
    def _unmark(told: _SessionList) -> None:
        for handle in told:
            handle._gone = False

    async def _fire_delete(self, record: dict[str, Any], session_id: str, *, force: bool,
                           purged: bool) -> tuple[Cancel | None, str | None]:
        """Fire ``SessionDelete`` for session ``session_id`` of ``record``; returns the
        ``Cancel`` a hook answered (and that hook's name), or ``(None, None)``."""
        session = Session._from_dict(self, record, session_id)
        outcome, _ = await self.system.dispatch(
            HookPoint.SESSION_DELETE, session.component,
            {"session_id": session.id, "name": session.name, "status": session.status,
             "purged": purged, "force": force},
            parent=session.context())
        result = outcome.result
        if type(result) is not Continue and isinstance(result, Cancel):
            return result, outcome.decided_by
        return None, None

    async def _purge_retained(self, retention: float) -> int | None:
        """One retention purge (``SystemConfig.session_retention``): the number deleted, or
        None when it failed (logged; the next one tries again)."""
        try:
            removed = await self.purge(retention)
        except Exception:
            logger.exception("the session retention purge (older than %s s) failed; "
                             "retrying in %s s", retention, retention_interval(retention))
            return None
        if removed:
            logger.info("session retention: purged %d ended session(s) older than %s s",
                        removed, retention)
        return removed

    async def _retention_loop(self, retention: float) -> None:
        """Purge by ``retention`` every :func:`retention_interval` seconds, until
        cancelled (the system's retention task; a failed purge is logged, not raised)."""
        interval = retention_interval(retention)
        while True:
            await self.sleep(interval)
            await self._purge_retained(retention)

    def _publish_deleted(self, record: dict[str, Any], session_id: str, *,
                         purged: bool) -> None:
        Session._from_dict(self, record, session_id)._publish(
            "session.deleted", {"name": record.get("name"),
                                "status": record.get("status", "active"), "purged": purged})

    async def events(self, session: Session | str, *,
                     include_replays: bool = False) -> _EventList:
        """The stored events of a session (by its correlation id), oldest first; empty when
        the system has no event store.

        These are what happened to the session. What a replay (``system.runs.replay``) did
        with it (a replayed ``end()``, its state writes, which never reached the session)
        carries the session's correlation id too, but belongs to the replay: its events
        are left out (those of a run whose start record says ``replay_of``, and of the runs
        inside it), unless ``include_replays`` is True. Find them as the replay's own, by
        its run id (``system.runs.show(run_id)``, the store's events of that ``run_id``).
        Inside a replay, the events of that replay are listed too (it sees its own writes
        over the live ones, as with state)."""
        store = self.system.store
        if store is None:
            return []
        session_id = _session_id(session, "events()")
        if not isinstance(include_replays, bool):
            raise SessionError(f"include_replays must be True or False, got "
                               f"{include_replays!r}",
                               hint="pass include_replays=True to list what replays did too")
        if include_replays:
            everything: _EventList = await asyncio.to_thread(
                store.query, correlation_id=session_id)
            return everything
        own = current_replay() if RUNNING_REPLAYS else None
        running = dict(RUNNING_REPLAYS)  # empty outside replays

        def read() -> _EventList:
            found: _EventList = store.query(correlation_id=session_id)
            kept: _EventList = []
            for event in found:
                run_id = event.metadata.run_id
                if run_id is not None:
                    replay = running.get(run_id)
                    if replay is not None:
                        if replay is not own:
                            continue  # a replay running now, not the caller's
                    elif self._is_replay_run(store, run_id):
                        continue
                kept.append(event)
            return kept

        events: _EventList = await asyncio.to_thread(read)
        return events

    def _is_replay_run(self, store: EventStore, run_id: str) -> bool:
        """Whether stored run ``run_id`` is a replay or runs inside one (its start record,
        or its root run's, says ``replay_of``). A run without a start record in the store
        (recorded with ``off``, or removed by retention) counts as live."""
        known = self._replay_runs.get(run_id)
        if known is not None:
            return known
        started = _run_started(store, run_id)
        if started is None:
            return False
        replay = started.get("replay_of") is not None
        root = started.get("root_run_id")
        if not replay and isinstance(root, str) and root and root != run_id:
            root_started = _run_started(store, root)
            if root_started is None:
                return False
            replay = root_started.get("replay_of") is not None
        if len(self._replay_runs) >= _REPLAY_RUNS_KEPT:
            self._replay_runs.clear()
        self._replay_runs[run_id] = replay
        return replay


_REPLAY_RUNS_KEPT = 4096
"""How many runs :meth:`SessionManager.events` remembers whether they are replays'."""


def _run_started(store: EventStore, run_id: str) -> dict[str, Any] | None:
    """The data of run ``run_id``'s ``run.started`` event in ``store``, or None."""
    found = store.query(EventQuery(pattern="run.started", run_id=run_id, limit=1))
    data = found[0].data if found else None
    return data if isinstance(data, dict) else None


def _session_id(session: Session | str, call: str) -> str:
    session_id = session.id if isinstance(session, Session) else session
    if not isinstance(session_id, str) or not session_id:
        raise SessionError(f"{call} takes a Session or a session id, got {session!r}",
                           hint="pass the session, or its id from system.sessions.list()")
    return session_id


def _no_session(session_id: str) -> SessionError:
    return SessionError(f"no saved session {session_id!r}",
                        hint="see system.sessions.list() for the saved sessions")


def _still_active(session_id: str) -> SessionError:
    return SessionError(f"cannot delete session {session_id!r}: it is still active",
                        hint="end it first (session.end()), or delete it anyway with "
                             "force=True")


def _check_name(name: str | None, source: str = "") -> None:
    """Raise :class:`SessionError` when ``name`` is longer than :data:`MAX_SESSION_NAME`
    (``source`` starts the message when the name did not come from the caller)."""
    if isinstance(name, str) and len(name) > MAX_SESSION_NAME:
        raise SessionError(
            f"session name too long: {source}{len(name)} characters (at most "
            f"{MAX_SESSION_NAME})",
            hint="use a short name such as 'support-chat' and keep longer text in the "
                 "session's state (session.set(key, value))")
    if isinstance(name, str) and not name.isascii() and not is_utf8(name):
        # what the store would refuse in the record (the same error), before any hook
        raise lone_surrogate_error(name, f"{SESSION_KEY}.name")


def _check_metadata(metadata: Mapping[str, Any], source: str = "") -> None:
    """Raise :class:`SessionError` when ``metadata`` (JSON-safe) takes more than
    :data:`MAX_SESSION_METADATA_BYTES` bytes as JSON (``source`` starts the message when it
    did not come from the caller)."""
    try:
        size = len(_ENCODER.encode(metadata))
    except UnicodeEncodeError:  # what the store would refuse in the record (the same error)
        raise lone_surrogate_error(metadata, f"{SESSION_KEY}.metadata") from None
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
        return  # not storable at all: the state store refuses it with its own error
    if size > MAX_SESSION_METADATA_BYTES:
        raise SessionError(
            f"session metadata too large: {source}{size} bytes as JSON (at most "
            f"{MAX_SESSION_METADATA_BYTES})",
            hint="keep only small facts (ids, tags) in metadata and larger data in the "
                 "session's state (session.set(key, value))")


def _check_record(name: str | None, metadata: Mapping[str, Any]) -> None:
    """The checks of a session record's name and metadata (as :meth:`SessionManager.start`
    takes them, or as a caller set them on a :class:`Session`), before any hook runs."""
    if name is not None and not isinstance(name, str):
        raise SessionError(f"a session name must be a string, got {type(name).__name__}",
                           hint="set session.name = 'support-chat', or None for no name")
    _check_name(name)
    if not isinstance(metadata, dict):
        raise SessionError(f"session metadata must be a dict, got {type(metadata).__name__}",
                           hint="set session.metadata = {'user': 'ada'}")
    check_json_safe(metadata, "metadata")
    _check_metadata(metadata)


def _quota_of(state: Any) -> QuotaStateBackend | None:
    """The byte quota the live state backend enforces (``scripting.max_state_bytes`` in
    ``llmspell run``), or None; None inside a replay, whose writes go to its own overlay."""
    if RUNNING_REPLAYS and current_replay() is not None:
        return None
    backend = state.backend
    return backend if isinstance(backend, QuotaStateBackend) else None


def _check_quota(state: Any, session_id: str, writes: Mapping[str, Any]) -> None:
    """Raise :class:`~llmspell.errors.StateQuotaExceededError` when the state quota would
    refuse ``writes`` in session ``session_id``'s scope now: before the hooks run (they
    would see an operation refused afterwards). The write itself is checked again."""
    quota = _quota_of(state)
    if quota is not None:
        quota.check(_SCOPE, session_id, writes)


def _check_label(label: str, hint: str) -> None:
    """Raise :class:`SessionError` (with ``hint``) when a checkpoint ``label`` is longer
    than :data:`MAX_CHECKPOINT_LABEL`."""
    if len(label) > MAX_CHECKPOINT_LABEL:
        raise SessionError(
            f"checkpoint label too long: {len(label)} characters (at most "
            f"{MAX_CHECKPOINT_LABEL})", hint=hint)


def _number(value: object) -> float | None:
    """``value`` as a float when it is a number (not a bool), else None."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _check_own_key(key: object, action: str) -> None:
    """Refuse a session state ``key`` reserved for the session itself (``__*``: its record,
    its checkpoints): writing it through the session would damage them."""
    if isinstance(key, str) and key.startswith(RESERVED_PREFIX):
        raise SessionError(
            f"cannot {action} {key!r}: keys starting with {RESERVED_PREFIX!r} are the "
            "session's own (its record, its checkpoints)",
            hint="name the value without the leading '__', e.g. 'step'; use "
                 "session.save() and session.checkpoint() for the record and checkpoints")


def _ended_at(record: dict[str, Any]) -> float:
    """When an ended session's record says it ended (its last update, or its creation,
    for a record without ``ended_at``)."""
    for field in ("ended_at", "updated_at", "created_at"):
        value = record.get(field)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return 0.0
