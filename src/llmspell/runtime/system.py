"""The system: one hook registry, executor, event bus and store, wired together.

The hook engine and the event bus do not know each other; this is where they meet:

* every dispatch that ran hooks can publish one ``hook.<point>`` event (the point, the
  component, and per hook its result kind and duration) — switchable (``hook_events``);
* every circuit-breaker state change is published as ``hook.breaker.<state>``;
* a failing event handler fires the ``EventHandlerError`` point;
* :meth:`System.emit` runs ``BeforeEventEmit``/``AfterEventEmit`` around a publish.

A point with no hooks costs one dictionary lookup: no context is built for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import resource
import sys
import time
from collections.abc import Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any, cast

import msgspec

from llmspell.core import speedups
from llmspell.core.errors import (
    ConfigurationError,
    EventTooLargeError,
    NotJsonSafeError,
    ShutdownError,
)
from llmspell.core.redact import get_logger
from llmspell.core.run_scope import current_replay, current_run_id
from llmspell.core.values import to_json_safe
from llmspell.events.bus import HandlerFailure
from llmspell.events.distributed import DistributedBus, make_bus
from llmspell.events.event import EventMetadata, PlainJson, UniversalEvent
from llmspell.events.store.base import EventStore
from llmspell.events.store.memory import MemoryStore
from llmspell.events.store.sqlite import SQLiteStore
from llmspell.hooks.breaker import BreakerConfig, BreakerTransition
from llmspell.hooks.context import ComponentId, ComponentType, HookContext, OperationContext
from llmspell.hooks.executor import NO_HOOKS, ChainResult, ContinuedRecords, HookExecutor
from llmspell.hooks.points import HookPoint, parse_point
from llmspell.hooks.registry import HookRegistry
from llmspell.hooks.result import (
    Cancel,
    Continue,
    ForkOperation,
    Modified,
    Redirect,
    cancelled_error,
)
from llmspell.runtime.agents.registry import AgentRegistry
from llmspell.runtime.config import SystemConfig, load_config
from llmspell.runtime.models import ModelCalls
from llmspell.runtime.runs.manager import RunManager
from llmspell.runtime.runs.recorder import note_dispatch, snapshot_context
from llmspell.runtime.runs.scope import StepFrame, current_frame, current_run
from llmspell.runtime.sessions import SessionManager
from llmspell.runtime.state.base import StateBackend
from llmspell.runtime.state.memory import MemoryStateBackend
from llmspell.runtime.state.sqlite import SQLiteStateBackend
from llmspell.runtime.state.store import StateStore
from llmspell.runtime.tools.registry import ToolRegistry
from llmspell.runtime.withheld import publish_withheld

__all__ = ["System"]

logger = get_logger("llmspell.runtime")

_BREAKERS = {
    "default": BreakerConfig.default,
    "production": BreakerConfig.production,
    "conservative": BreakerConfig.conservative,
}

SYSTEM = ComponentId(type=ComponentType.SYSTEM, name="llmspell", id="system")


class System:
    """The runtime's hub. Create one per application (``async with System() as system``).

    ``config``: a :class:`SystemConfig` (default: :func:`load_config`, i.e. environment over
    defaults). ``store``: an explicit event store (overrides ``config.store``).
    ``state_backend``: an explicit state backend (default: SQLite ``state.db`` in the data
    directory when ``config.store`` is ``"sqlite"``, else in memory); ``system.state`` is the
    :class:`StateStore` over it and ``system.sessions`` the :class:`SessionManager`.
    """

    def __init__(
        self,
        config: SystemConfig | None = None,
        *,
        store: EventStore | None = None,
        registry: HookRegistry | None = None,
        state_backend: StateBackend | None = None,
    ) -> None:
        self.config = config if config is not None else load_config()
        self.registry = registry if registry is not None else HookRegistry()
        self.store = store if store is not None else self._make_store(self.config)
        self._own_store = store is None
        try:
            self._build(state_backend)
        except BaseException:
            # Nobody gets this system to shut down: close what it opened (the event store's
            # connections, the state backend's) before raising, e.g. when state.db cannot
            # be opened.
            closers = [self.store.close] if self._own_store and self.store is not None else []
            if state_backend is None and hasattr(self, "state"):
                closers.append(self.state.backend.close)
            for close in closers:
                with contextlib.suppress(Exception):  # the first failure is the one to see
                    close()
            raise

    def _build(self, state_backend: StateBackend | None) -> None:
        """Everything after the event store (see :meth:`__init__`)."""
        self.bus = make_bus(self.config.bus, store=self.store,
                            queue_size=self.config.queue_size,
                            on_handler_error=self._handler_failed)
        breaker: BreakerConfig | bool = (
            False if self.config.breaker == "off" else _BREAKERS[self.config.breaker]()
        )
        self.executor = HookExecutor(
            self.registry,
            breaker=breaker,
            monitor=self.config.monitor,
            record=False,  # decided per dispatch: see _hook_event_type
            on_breaker_change=self._breaker_changed,
        )
        self._chains = self.registry.chains
        # What-if replays' hook changes (hook id -> its replay; replay -> names left out):
        # empty outside replays, so dispatch pays two tests of empty dicts.
        self._replay_hooks: dict[int, object] = {}
        self._replay_removed: dict[object, frozenset[str]] = {}
        self.started = False
        self._last_sample = (time.monotonic(), time.process_time())
        # Per point: (the bus's subscription generation, the hook event type or None),
        # decided once per subscription change instead of once per dispatch.
        self._hook_event_types: dict[str, tuple[int, str | None]] = {}
        # The last hook event's metadata: the points of one call share it (frozen).
        self._hook_event_meta = EventMetadata(source="llmspell.hooks")
        self.tools = ToolRegistry(self)
        self.agents = AgentRegistry(self)
        self.models = ModelCalls(self)
        self._own_state = state_backend is None
        self.state = StateStore(self, state_backend if state_backend is not None
                                else self._make_state_backend(self.config))
        self.sessions = SessionManager(self)
        self.runs = RunManager(self)
        self._retention_task: asyncio.Task[None] | None = None

    @staticmethod
    def _make_store(config: SystemConfig) -> EventStore | None:
        if config.store == "none":
            return None
        if config.store == "memory":
            return MemoryStore()
        return SQLiteStore(_data_dir(config) / "events.db")

    @staticmethod
    def _make_state_backend(config: SystemConfig) -> StateBackend:
        if config.store != "sqlite":
            return MemoryStateBackend()
        return SQLiteStateBackend(_data_dir(config) / "state.db")

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Fire ``SystemStartup`` and publish ``system.started``. With
        ``config.session_retention`` set, purge the ended sessions older than that before
        returning, then start the retention task (it purges again every
        :func:`~llmspell.runtime.sessions.retention_interval` seconds until
        :meth:`shutdown`; a failed purge is logged). Idempotent."""
        if self.started:
            return
        if isinstance(self.bus, DistributedBus):
            await self.bus.connect()
        self.started = True
        await self.dispatch(HookPoint.SYSTEM_STARTUP, SYSTEM,
                            {"config": msgspec.to_builtins(self.config)})
        await self.bus.publish_async("system.started", {"pid": _pid()})
        await self._start_retention()

    async def _start_retention(self) -> None:
        """The first retention purge, then the task that repeats it (none without
        ``session_retention``)."""
        retention = self.config.session_retention
        if retention is None or self._retention_task is not None:
            return
        await self.sessions._purge_retained(retention)
        # A context of its own: the task must not run inside the caller's run or scope.
        self._retention_task = asyncio.get_running_loop().create_task(
            self.sessions._retention_loop(retention), name="llmspell-session-retention",
            context=contextvars.Context())

    async def _stop_retention(self) -> None:
        """Cancel the retention task and wait until it is gone."""
        task, self._retention_task = self._retention_task, None
        if task is None:
            return
        if not task.done():
            task.cancel()
            await asyncio.wait([task])  # not `await task`: a cancelled shutdown stays cancelled
        if not task.cancelled() and task.exception() is not None:
            logger.error("the session retention task had stopped",
                         exc_info=task.exception())

    async def shutdown(self) -> None:
        """Fire ``SystemShutdown``, publish ``system.stopped``, close agents, the bus, the
        event store (flushing it) and the state backend. Every step runs even if an earlier
        one failed; failures are raised together as :class:`ShutdownError`. Idempotent, and
        retryable: a second call retries what failed (e.g. writing the store's events).
        The session retention task is cancelled first."""
        await self._close(announce=True)

    async def _close(self, *, announce: bool) -> None:
        """:meth:`shutdown`; without ``announce``, no ``SystemShutdown`` hooks and no
        ``system.stopped`` event (for a system that never started)."""
        errors: list[BaseException] = []
        await self._stop_retention()
        if not self.bus.closed:
            steps = (
                (lambda: self.dispatch(HookPoint.SYSTEM_SHUTDOWN, SYSTEM, {}),
                 self.agents.shutdown_all,
                 lambda: self.bus.publish_async("system.stopped", {"pid": _pid()}),
                 self.bus.close)
                if announce else (self.agents.shutdown_all, self.bus.close))
            for step in steps:
                try:
                    await step()
                except Exception as exc:
                    errors.append(exc)
        closers = []
        if self.store is not None and self._own_store:
            closers.append(self.store.close)
        if self._own_state:
            closers.append(self.state.backend.close)
        for close in closers:
            try:
                await asyncio.to_thread(close)
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise ShutdownError(errors)

    async def __aenter__(self) -> System:
        try:
            await self.start()
        except BaseException as exc:
            # `async with` calls no __aexit__ when entering fails: close what the system
            # opened (the store's and state's connections, the bus) here, or every failed
            # attempt (a bus it cannot reach, a start cancelled by a timeout) keeps them.
            try:
                await self._close(announce=self.started)
            except Exception as error:
                exc.add_note(f"closing the system after the failed start failed too: {error}")
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    # -- hooks ------------------------------------------------------------------------------
    def has_hooks(self, point: str) -> bool:
        """True when any enabled hook is registered at ``point`` (one dict lookup)."""
        return point in self._chains

    async def dispatch(
        self,
        point: str,
        component: ComponentId,
        data: dict[str, Any],
        *,
        parent: HookContext | None = None,
        correlation_id: str | None = None,
        operation: OperationContext | None = None,
    ) -> tuple[ChainResult, HookContext | None]:
        """Run the hooks at ``point``. Returns the outcome and the context (None when the
        point has no hooks: then nothing was built and the data is unchanged)."""
        chain = self._chains.get(point)
        if chain is None:
            return NO_HOOKS, None
        if self._replay_hooks or self._replay_removed:  # a what-if changed hooks: its own
            chain = self._scoped_chain(chain)
            if not chain:
                return NO_HOOKS, None
        if parent is not None:
            ctx = parent.child(point, component, data, operation=operation)
        elif correlation_id is not None:  # no id made only to be replaced
            ctx = HookContext(point=point, component=component, data=data,
                              operation=operation, correlation_id=correlation_id)
        else:
            ctx = HookContext(point=point, component=component, data=data,
                              operation=operation)
        run = current_run()  # outside a run: one context-variable read
        if run is not None and (run.level != "off" or run.replay is not None):
            # (run.recording, inlined: a run that records nothing, e.g. with no store, costs
            # no frame lookup per dispatch)
            frame = current_frame()
            if frame is not None and frame.run.recording:
                return await self._dispatch_recorded(frame, chain, ctx)
        event_type = self._hook_event_type(point) if self.config.hook_events else None
        if event_type is None:
            started = self.executor.start_chain(chain, ctx, False)
            # A chain of sync hooks that all went on is done already: no coroutine to await.
            # (type(), not isinstance: a miss against a Struct class is slow)
            return (started if type(started) is ChainResult else await cast(
                "Coroutine[Any, Any, ChainResult]", started)), ctx
        # The hook event's record: in columns when every hook went on (no HookRecords).
        durations: list[int] = []
        started = self.executor.start_chain(chain, ctx, True, durations)
        outcome = started if type(started) is ChainResult else await cast(
            "Coroutine[Any, Any, ChainResult]", started)
        if outcome.records:
            self._publish_hook_event(event_type, ctx, outcome)
        elif durations:
            count = len(durations)
            self._send_hook_event(event_type, ctx, "continue", None, None, None,
                                  list(self.executor.hook_names(point, chain)),
                                  ["continue"] * count, durations, [None] * count)
        return outcome, ctx

    async def _dispatch_recorded(self, frame: StepFrame, chain: Any, ctx: HookContext
                                 ) -> tuple[ChainResult, HookContext]:
        """A dispatch inside a recorded run: the decision goes into the step's record."""
        full = frame.run.level == "full"
        seen = snapshot_context(ctx.data) if full else None
        event_type = self._hook_event_type(ctx.point) if self.config.hook_events else None
        outcome = await self.executor.execute_chain(chain, ctx,
                                                    full or event_type is not None)
        if event_type is not None and outcome.records:
            self._publish_hook_event(event_type, ctx, outcome)
        note_dispatch(frame, chain, ctx, outcome, seen)
        return outcome, ctx

    def _scoped_chain(self, chain: tuple[Any, ...]) -> tuple[Any, ...]:
        """``chain`` as the calling task sees it while what-if replays run: the hooks a
        replay added run only inside that replay, and the hooks it removed are left out
        only there (live calls meanwhile run the registry as it is)."""
        replay = current_replay()
        added, removed = self._replay_hooks, self._replay_removed.get(replay, ())
        scoped = tuple(entry for entry in chain
                       if added.get(entry.id, replay) is replay and entry.name not in removed)
        # The chain itself when nothing was left out: the executor keeps its plan for it.
        return chain if len(scoped) == len(chain) else scoped

    def scope_hooks_to_replay(self, replay: object, added: Iterable[int],
                              removed: Iterable[str]) -> None:
        """Make the hooks registered with ids ``added`` run only in replay ``replay`` (its
        session) and leave the hooks named ``removed`` out of its calls only; see
        :meth:`unscope_hooks`."""
        for hook_id in added:
            self._replay_hooks[hook_id] = replay
        names = frozenset(removed)
        if names:
            self._replay_removed[replay] = names

    def unscope_hooks(self, replay: object) -> None:
        """Forget what :meth:`scope_hooks_to_replay` set up for ``replay``."""
        for hook_id in [i for i, owner in self._replay_hooks.items() if owner is replay]:
            del self._replay_hooks[hook_id]
        self._replay_removed.pop(replay, None)

    def _hook_event_type(self, point: str) -> str | None:
        """The ``hook.<point>`` event type, or None when nobody would see it and nothing
        would store it (then per-hook records are not even collected). Hook events are
        stored only with ``persist_hook_events``: one per dispatch is a lot of rows."""
        bus = self.bus
        decided = self._hook_event_types.get(point)
        if decided is not None and decided[0] == bus.subscription_generation:
            return decided[1]
        generation = bus.subscription_generation  # first: a change meanwhile asks again
        event_type = f"hook.{_event_segment(point)}"
        stored = self.store is not None and self.config.persist_hook_events
        wanted = event_type if stored or bus.has_subscribers(event_type) else None
        self._hook_event_types[point] = (generation, wanted)
        return wanted

    def _publish_hook_event(self, event_type: str, ctx: HookContext,
                            outcome: ChainResult) -> None:
        records = outcome.records
        decisive = outcome.result
        kind = decisive.kind
        # What the decisive result said: a Cancel's reason, a Redirect's target. (Tested by
        # kind first: isinstance against a msgspec Struct class that does not match is slow.)
        reason = target = None
        if kind == "cancel" and isinstance(decisive, Cancel):
            reason = _plain_text(decisive.reason)
        elif kind == "redirect" and isinstance(decisive, Redirect):
            target = _plain_text(decisive.target)
        # Plain JSON by construction: every text is made a plain str (hook names are, by
        # HookMetadata), durations are perf_counter_ns differences, details the executor's
        # own f-strings. With the native speedups the event checks a plain dict in C for
        # less than a PlainJson costs (a copy made in Python). The event is built here, not
        # by publish(type, data, metadata). Per hook, parallel lists: cheaper to build than
        # a dict per hook.
        details: list[str | None]
        if type(records) is ContinuedRecords:  # the fast path's: columns kept already
            count = len(records)
            hooks, kinds = list(records.names), ["continue"] * count
            durations, details = records.durations_ns, [None] * count
        else:
            hooks, kinds = [r.hook for r in records], [r.kind for r in records]
            durations = [r.duration_ns for r in records]
            details = [r.detail for r in records]
        self._send_hook_event(event_type, ctx, kind, outcome.decided_by, reason, target,
                              hooks, kinds, durations, details)

    def _send_hook_event(self, event_type: str, ctx: HookContext, kind: str,
                         decided_by: str | None, reason: str | None, target: str | None,
                         hooks: list[str], kinds: list[str], durations: list[int],
                         details: list[str | None]) -> None:
        """Build and publish the ``hook.<point>`` event of one dispatch (per hook, the
        parallel lists: its name, result kind, duration and detail)."""
        component = ctx.component
        component_type = component.type
        data: dict[str, Any] = {
            "point": _POINT_TEXTS.get(ctx.point) or str(ctx.point),
            "component_type": _COMPONENT_TYPES.get(component_type) or component_type.value,
            "component": name if type(name := component.name) is str else _plain_text(name),
            "result": kind, "decided_by": decided_by,
            "reason": reason, "target": target,
            "hooks": hooks, "kinds": kinds, "durations_ns": durations, "details": details,
        }
        if not speedups.ENABLED:  # the event would walk it in Python: mark it checked
            data = PlainJson(data)
        meta = self._hook_event_meta
        correlation_id, run_id = ctx.correlation_id, current_run_id()
        if meta.correlation_id != correlation_id or meta.run_id != run_id:
            meta = self._hook_event_meta = EventMetadata(
                correlation_id=correlation_id, source="llmspell.hooks", run_id=run_id)
        persist = self.config.persist_hook_events
        try:
            self.bus.publish(UniversalEvent(event_type=event_type, data=data, metadata=meta),
                             None, None, persist)
        except (EventTooLargeError, NotJsonSafeError) as exc:
            # A huge Cancel reason, or one holding a lone surrogate: the dispatch goes on.
            publish_withheld(self.bus, exc, event_type, data, meta, persist)

    def _breaker_changed(self, transition: BreakerTransition) -> None:
        self.bus.publish(
            f"hook.breaker.{transition.new.value}",
            to_json_safe(transition),  # a custom point is a str subclass: made plain
            EventMetadata(source="llmspell.hooks"),
        )

    def _handler_failed(self, failure: HandlerFailure) -> None:
        chain = self._chains.get(HookPoint.EVENT_HANDLER_ERROR)
        if chain is None:
            return
        if self._replay_hooks or self._replay_removed:  # as in dispatch: a what-if's own
            chain = self._scoped_chain(chain)
            if not chain:
                return
        ctx = HookContext(point=HookPoint.EVENT_HANDLER_ERROR,
                          component=ComponentId(type=ComponentType.EVENT,
                                                name=failure.subscription),
                          data=msgspec.to_builtins(failure))
        try:
            self.executor.execute_sync(ctx, chain)
        except Exception:  # a hook about a failure must not fail the publisher
            logger.exception("EventHandlerError hooks failed")

    # -- events -----------------------------------------------------------------------------
    async def emit(self, event_type: str, data: Any = None,
                   metadata: EventMetadata | Mapping[str, Any] | None = None) -> UniversalEvent:
        """Publish an event with ``BeforeEventEmit``/``AfterEventEmit`` around it: a before
        hook may change the data (``Modified`` with a ``data`` key) or cancel the emit."""
        component = ComponentId(type=ComponentType.EVENT, name=event_type, id=event_type)
        outcome, ctx = await self.dispatch(HookPoint.BEFORE_EVENT_EMIT, component,
                                           {"event_type": event_type, "data": data})
        result = outcome.result  # (Continue, the common case, first: a miss is slow)
        if type(result) is not Continue and isinstance(result, Cancel):
            raise cancelled_error(HookPoint.BEFORE_EVENT_EMIT, result, outcome.decided_by)
        if type(result) is not Continue and isinstance(result, Modified) and ctx is not None:
            data = ctx.data.get("data", data)
        meta = dict(metadata) if isinstance(metadata, Mapping) else metadata
        event = await self.bus.publish_async(event_type, data, meta)
        await self.dispatch(HookPoint.AFTER_EVENT_EMIT, component,
                            {"event_type": event_type, "event_id": event.id})
        return event

    async def run_operation(self, operation: ForkOperation, parent: HookContext | None) -> Any:
        """Run one forked operation: ``type`` ``tool`` or ``agent``, ``target`` its name."""
        if operation.type == "tool":
            return await self.tools.execute(operation.target, dict(operation.parameters),
                                            parent=parent)
        if operation.type == "agent":
            agent = self.agents.get(operation.target)
            response = await agent.run(dict(operation.parameters), parent=parent)
            return response.output
        raise ConfigurationError(
            f"cannot fork an operation of type {operation.type!r}",
            hint="a ForkOperation's type is 'tool' or 'agent'",
        )

    # -- configuration and health points ----------------------------------------------------
    async def update_config(self, **changes: Any) -> SystemConfig:
        """Change settings that can change at run time (``hook_events``); fires
        ``ConfigurationChange`` first, whose hooks may cancel or modify the change (within
        those settings). Values are checked and converted as :class:`SystemConfig`'s."""
        allowed = {"hook_events"}
        unknown = sorted(set(changes) - allowed)
        if unknown:
            raise ConfigurationError(
                f"cannot change {', '.join(unknown)} at run time",
                hint=f"these can change at run time: {', '.join(sorted(allowed))}",
            )
        outcome, ctx = await self.dispatch(HookPoint.CONFIGURATION_CHANGE, SYSTEM,
                                           {"changes": dict(changes)})
        if isinstance(outcome.result, Cancel):
            raise cancelled_error(HookPoint.CONFIGURATION_CHANGE, outcome.result,
                                  outcome.decided_by)
        if isinstance(outcome.result, Modified) and ctx is not None:
            modified = ctx.data.get("changes", changes)
            # The hook's changes are held to the same rule as the caller's: a setting fixed
            # at construction (the store, the bus...) changed here would only make the
            # config lie about the running system.
            widened = (sorted(str(key) for key in set(modified) - allowed)
                       if isinstance(modified, Mapping) else None)
            if widened is None or widened:
                what = (f"changed {', '.join(widened)}, which cannot change at run time"
                        if widened else f"gave changes that are a {type(modified).__name__}, "
                                        "not a mapping")
                raise ConfigurationError(
                    f"ConfigurationChange hook {outcome.decided_by!r} {what}",
                    hint=f"a hook may change only: {', '.join(sorted(allowed))}, given as "
                         "Modified({'changes': {...}})")
            changes = dict(modified)
        self.config = msgspec.structs.replace(self.config, **changes)
        await self.bus.publish_async("system.config_changed", {"changes": changes})
        return self.config

    async def report(self, point: HookPoint | str, component: ComponentId,
                     details: dict[str, Any]) -> ChainResult:
        """Fire a health point (``ResourceLimitExceeded``, ``SecurityViolation``,
        ``PerformanceThresholdExceeded``, ``MemoryUsageHigh``, ``CpuUsageHigh``; any
        spelling the registry accepts) and publish ``system.<point>``."""
        health = {
            HookPoint.RESOURCE_LIMIT_EXCEEDED, HookPoint.SECURITY_VIOLATION,
            HookPoint.PERFORMANCE_THRESHOLD_EXCEEDED, HookPoint.MEMORY_USAGE_HIGH,
            HookPoint.CPU_USAGE_HIGH,
        }
        parsed = parse_point(point)
        if not isinstance(parsed, HookPoint) or parsed not in health:
            raise ConfigurationError(
                f"{point} is not a health point",
                hint="use one of: " + ", ".join(sorted(p.pascal_name for p in health)))
        point = parsed
        outcome, _ = await self.dispatch(point, component, dict(details))
        await self.bus.publish_async(
            f"system.{point.value}",
            {"component": {"type": component.type.value, "name": component.name}, **details},
        )
        return outcome

    async def check_resources(self, *, max_rss_mb: float | None = None,
                              max_cpu_percent: float | None = None) -> list[str]:
        """Sample this process's peak resident memory and its CPU use since the last check
        (stdlib ``resource`` and ``time.process_time``); fire ``MemoryUsageHigh`` /
        ``CpuUsageHigh`` when over the limits. Returns the points fired. Call it from a
        periodic task at the rate you want."""
        fired: list[str] = []
        now_wall, now_cpu = time.monotonic(), time.process_time()
        last_wall, last_cpu = self._last_sample
        self._last_sample = (now_wall, now_cpu)
        component = ComponentId(type=ComponentType.SYSTEM, name="process", id=str(_pid()))
        if max_rss_mb is not None:
            rss_mb = _peak_rss_mb()
            if rss_mb > max_rss_mb:
                await self.report(HookPoint.MEMORY_USAGE_HIGH, component,
                                  {"rss_mb": rss_mb, "limit_mb": max_rss_mb})
                fired.append(HookPoint.MEMORY_USAGE_HIGH.value)
        if max_cpu_percent is not None and now_wall > last_wall:
            percent = (now_cpu - last_cpu) / (now_wall - last_wall) * 100
            if percent > max_cpu_percent:
                await self.report(HookPoint.CPU_USAGE_HIGH, component,
                                  {"cpu_percent": percent, "limit_percent": max_cpu_percent})
                fired.append(HookPoint.CPU_USAGE_HIGH.value)
        return fired

    async def check_performance(self, threshold_ms: float) -> int:
        """Fire ``PerformanceThresholdExceeded`` for every hook whose p99 latency is over
        ``threshold_ms``; returns how many did."""
        monitor = self.executor.monitor
        if monitor is None:
            return 0
        slow = [row for row in monitor.hook_stats() if row.p99_ns > threshold_ms * 1e6]
        for row in slow:
            await self.report(
                HookPoint.PERFORMANCE_THRESHOLD_EXCEEDED,
                ComponentId(type=ComponentType.HOOK, name=row.name),
                {"hook": row.name, "point": row.point, "p99_ms": row.p99_ns / 1e6,
                 "threshold_ms": threshold_ms},
            )
        return len(slow)


def _data_dir(config: SystemConfig) -> Path:
    """The data directory, created if needed."""
    data_dir = config.resolved_data_dir
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot create the data directory {data_dir}: {exc}",
            hint="set LLMSPELL_DATA_DIR or data_dir to a writable folder",
        ) from None
    return Path(data_dir)


def _event_segment(point: str) -> str:
    return str(point).replace(":", ".")


def _pid() -> int:
    return os.getpid()


def _peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


_COMPONENT_TYPES = {member: member.value for member in ComponentType}
_POINT_TEXTS: dict[str, str] = {member: str(member) for member in HookPoint}
"""Each built-in point's text (``str()`` of an enum member runs Python code)."""
"""Each component type's text (an enum member's ``.value`` is a descriptor call)."""


def _plain_text(text: object) -> str:
    """``text`` as a plain ``str``: a str subclass's own characters (an enum member's value,
    not its ``Name.MEMBER`` form), anything else its ``str()``."""
    if type(text) is str:
        return text
    return str.__str__(text) if isinstance(text, str) else str(text)
