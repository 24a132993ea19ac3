"""The host side of the script globals, the same for every language.

:class:`HostAPI` implements every operation a script can ask for (``hook.register``,
``event.publish``, ``tool.invoke``, ...) on plain Python data. A language binding only
converts values and routes calls here: Lua calls the synchronous operations directly and
yields for the asynchronous ones; JavaScript queues both in its outbox. Script functions
(hook bodies, event callbacks, workflow steps) arrive as
:class:`~llmspell.scripting.protocol.ScriptFunction`.

The operations and what they return are documented in ``docs/scripting.md``.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from llmspell.core.errors import (
    HookExecutionError,
    HookTimeoutError,
    InvalidValueError,
    PermissionDeniedError,
    ScriptError,
    ScriptTimeoutError,
)
from llmspell.core.language import Language
from llmspell.core.loops import settle
from llmspell.core.redact import get_logger
from llmspell.events.event import UniversalEvent
from llmspell.events.subscription import SubscriptionHandle
from llmspell.hooks.context import HookContext
from llmspell.hooks.metadata import HookMetadata, Priority
from llmspell.hooks.points import parse_point
from llmspell.hooks.registry import HookHandle
from llmspell.hooks.replay import DictHookAdapter
from llmspell.hooks.result import CONTINUE, Cancel, HookResult, Modified, Skipped
from llmspell.scripting.io_ops import IoOps
from llmspell.scripting.protocol import ScriptFunction, drive_blocking
from llmspell.scripting.runtime_ops import RuntimeOps
from llmspell.scripting.views import event_view, hook_context_view

__all__ = ["RECEIVE_CAP_MS", "SYNC_OPS", "HostAPI", "ScriptHook", "event_view",
           "hook_context_view", "result_from_script"]

RECEIVE_CAP_MS = 5_000
"""The longest ``Event.receive`` waits."""
RECEIVE_QUEUE = 1_000
"""Events a receive-style subscription buffers (the oldest are dropped past this)."""
PUBLISH_OPTIONS = frozenset({"correlation_id", "source", "target", "tags", "priority", "ttl",
                             "ttl_seconds", "language"})

_ADAPTER = DictHookAdapter()
_DATA = frozenset({type(None), bool, int, float, str, list, dict})
"""What a finished script call returns (converted data): never awaitable."""
_PRIORITY_NAMES = {int(p): p.name.lower() for p in Priority}
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
           "error": logging.ERROR}

SYNC_OPS = frozenset({
    "hook.register", "hook.unregister", "hook.list",
    "event.publish", "event.subscribe", "event.unsubscribe", "event.list_subscriptions",
    "event.stats", "tool.list", "agent.create", "agent.list", "workflow.create", "log",
    "fs.read_text", "fs.read_dir", "fs.stat", "fs.write_text", "fs.remove", "fs.rename",
    "fs.mkdir", "fs.tmpname",
})
"""Operations that complete synchronously (Lua calls them directly)."""


def result_from_script(value: Any, name: str, point: str) -> HookResult:
    """nil/"continue" -> Continue, "skip" -> Skipped, another string -> Cancel(string),
    a table -> :class:`DictHookAdapter` (``{type="modified", data=...}`` ...).

    As in the seed, a table without a ``type`` continues (it is not a failure), and
    ``replace`` takes its value from ``value`` or, when that is absent, ``data``."""
    if value is None:
        return CONTINUE
    if type(value) is list or (type(value) is dict and "type" not in value):
        return CONTINUE
    if isinstance(value, str):
        low = value.lower()
        if low == "continue":
            return CONTINUE
        if low in ("skip", "skipped"):
            return Skipped("skipped by hook")
        return Cancel(value)
    if type(value) is dict and value.get("type") == "modified" and len(value) == 2 \
            and type(value.get("data")) is dict:
        return Modified(value["data"])  # the common case; converted data is JSON-safe
    error = _ADAPTER.extract_error(value)
    if error is not None:
        raise HookExecutionError(name, point, str(error))
    if isinstance(value, dict) and value.get("type") == "cancel" and "reason" not in value:
        value = {**value, "reason": "cancelled by hook"}
    if isinstance(value, dict) and str(value.get("type")).lower() == "replace" \
            and "value" not in value:
        value = {**value, "value": value.get("data")}
    return _ADAPTER.adapt_result(value)


class ScriptHook:
    """A script function registered as a hook (with the script's language): a script
    error or timeout becomes a :class:`HookExecutionError`/:class:`HookTimeoutError`, so
    the executor's error policy and circuit breaker apply. A hook that needs asynchronous
    host operations returns an awaitable; one that does not stays synchronous. It has no
    ``should_execute`` (a script hook always applies), so the executor takes its fast path."""

    def __init__(self, fn: ScriptFunction, metadata: HookMetadata) -> None:
        self.fn = fn
        self.metadata = metadata

    def execute(self, ctx: HookContext) -> Any:
        """Call the script function with the context view; convert what it returns (a
        ``metadata`` table in it is merged into the context's metadata first: see
        :func:`take_metadata`)."""
        try:
            value = self.fn.call_hook(ctx)
        except (ScriptError, InvalidValueError) as exc:
            raise _hook_error(exc, self.metadata.name, str(ctx.point)) from exc
        if type(value) not in _DATA and inspect.isawaitable(value):
            return self._later(value, ctx, self.metadata.name, str(ctx.point))
        if type(value) is dict and "metadata" in value:
            value = take_metadata(value, ctx, self.metadata.name, str(ctx.point))
        return result_from_script(value, self.metadata.name, str(ctx.point))

    async def _later(self, value: Any, ctx: HookContext, name: str, point: str
                     ) -> HookResult:
        try:
            done = await value
        except (ScriptError, InvalidValueError) as exc:
            raise _hook_error(exc, name, point) from exc
        if type(done) is dict and "metadata" in done:
            done = take_metadata(done, ctx, name, point)
        return result_from_script(done, name, point)


MAX_SCRIPT_METADATA = 64
"""The most metadata entries one script hook result may set."""

MAX_SCRIPT_METADATA_TEXT = 4096
"""The longest key or value (characters) a script hook may set in the metadata."""


def take_metadata(value: dict[str, Any], ctx: HookContext, name: str, point: str
                  ) -> dict[str, Any]:
    """Merge the ``metadata`` table of a script hook's result into ``ctx.metadata`` (what
    a Python hook does by changing ``ctx.metadata``: the operation's later hooks and every
    call made on its behalf see it, e.g. the ``user`` per-user budgets and rate limits
    key on) and return the result without it. Text keys to text values only, at most
    :data:`MAX_SCRIPT_METADATA` entries of :data:`MAX_SCRIPT_METADATA_TEXT` characters;
    keys starting ``llmspell.`` are the runtime's own (a script may hand them back as they
    are, not change them). Anything else raises
    :class:`HookExecutionError` (the hook's error policy applies)."""
    given = value["metadata"]
    if type(given) is list and not given:
        given = {}  # an empty table reaches Python as a list
    problem: str | None = None
    if type(given) is not dict:
        problem = ("metadata must be a table of text keys to text values, got a "
                   f"{type(given).__name__}")
    elif len(given) > MAX_SCRIPT_METADATA:
        problem = f"metadata has {len(given)} entries (at most {MAX_SCRIPT_METADATA})"
    else:
        for key, item in given.items():
            # a key is quoted cut short: it can be megabytes, and the message is logged
            shown = repr(key[:40] if type(key) is str else key)[:60]
            if type(key) is not str or type(item) is not str:
                problem = (f"metadata entry {shown} is not text to text "
                           f"({type(item).__name__})")
            elif key.startswith("llmspell.") and ctx.metadata.get(key) != item:
                problem = f"metadata key {shown} is reserved for the runtime"
            elif len(key) > MAX_SCRIPT_METADATA_TEXT or len(item) > MAX_SCRIPT_METADATA_TEXT:
                problem = (f"metadata entry {shown} is longer than "
                           f"{MAX_SCRIPT_METADATA_TEXT} characters")
            if problem is not None:
                break
    if problem is not None:
        raise HookExecutionError(name, point, problem, hint=_METADATA_HINT)
    ctx.metadata.update(given)
    return {key: item for key, item in value.items() if key != "metadata"}


_METADATA_HINT = ('return metadata = {user = "ada"}: text keys (not starting "llmspell.") '
                  "to text values")


def _hook_error(exc: ScriptError | InvalidValueError, name: str, point: str) -> Exception:
    """The hook's failure, named by hook and point, for the executor's error policy. An
    :class:`InvalidValueError` is a result the converter refused (a Lua table with a key
    that is neither text nor part of a 1..n sequence, such as ``metadata = {[1] = "x",
    user = "a"}`` or a table as a key; a cycle): its message says where and which key."""
    if isinstance(exc, ScriptTimeoutError):
        return HookTimeoutError(name, point, exc.message, hint=exc.hint)
    if isinstance(exc, InvalidValueError):
        hint = _METADATA_HINT if " at return value.metadata" in exc.message else exc.hint
        return HookExecutionError(name, point, exc.message, hint=hint)
    return HookExecutionError(name, point, str(exc))


class HostEngine(Protocol):
    """What the host API needs of an engine: its owner-thread queue and its I/O grants."""

    io: IoOps
    callback_errors: collections.deque[Exception]

    def deliver(self, work: Callable[[], None]) -> None:
        """Run ``work`` on the engine's owner thread (now, or queued)."""
        ...

    def deliver_call(self, fn: Callable[[Any, Any], None], first: Any, second: Any) -> None:
        """Run ``fn(first, second)`` on the engine's owner thread (now, or queued)."""
        ...


class _Subscription:
    def __init__(self, handle: SubscriptionHandle, pattern: str,
                 callback: ScriptFunction | None) -> None:
        self.handle = handle
        self.pattern = pattern
        self.fn = callback
        self.callback = callback is not None
        self.queue: collections.deque[UniversalEvent] = collections.deque(maxlen=RECEIVE_QUEUE)
        self.ready = threading.Condition()
        self.waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []


class HostAPI:
    """Every script operation for one engine and one :class:`~llmspell.runtime.System`.

    ``language``: what hooks and events from these scripts are marked with. ``engine``:
    the owner-thread queue event callbacks are delivered through. ``providers``: builds
    agents' model providers (see :class:`~llmspell.scripting.runtime_ops.RuntimeOps`).
    """

    def __init__(self, system: Any, language: Language, engine: HostEngine, *,
                 providers: Callable[..., Any] | None = None) -> None:
        self.system = system
        self.language = language
        self.engine = engine
        self.hooks: dict[int, HookHandle] = {}
        self._hook_functions: dict[int, ScriptFunction] = {}
        self.subscriptions: dict[int, _Subscription] = {}
        self.runtime = RuntimeOps(system, str(language), providers=providers,
                                  allow_net=bool(engine.io.net_allowed))
        self._count = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ops: dict[str, Callable[..., Any]] = {
            "hook.register": self.hook_register, "hook.unregister": self.hook_unregister,
            "hook.list": self.hook_list,
            "event.publish": self.event_publish, "event.subscribe": self.event_subscribe,
            "event.receive": self.event_receive, "event.unsubscribe": self.event_unsubscribe,
            "event.list_subscriptions": self.event_list_subscriptions,
            "event.stats": self.event_stats, "log": self.log,
            **self.runtime.operations(),
            **engine.io.operations(),
        }

    def perform(self, op: str, args: tuple[Any, ...]) -> Any:
        """Run operation ``op`` with ``args``: its value, or an awaitable of it."""
        fn = self._ops.get(op)
        if fn is None:
            raise InvalidValueError(f"unknown host operation {op!r}",
                                    hint="see docs/scripting.md for the globals")
        try:
            return fn(*args)
        except TypeError as exc:
            # Raised by the call itself (no frame of ``fn`` in the traceback): the script
            # passed more (or fewer) arguments than the operation takes. Python's message
            # names the host's methods, not the script's API.
            tb = exc.__traceback__
            if tb is None or tb.tb_next is not None:
                raise
            raise InvalidValueError(
                f"{op}: wrong number of arguments ({len(args)} given)",
                hint="see docs/scripting.md for what each call takes") from None

    # -- Hook ---------------------------------------------------------------------------
    def hook_register(self, point: Any, fn: Any, options: Any = None) -> dict[str, Any]:
        """Register ``fn`` at ``point``; options: a priority, or ``{priority, name, tags,
        version, description, timeout}`` (``timeout`` in seconds also bounds the script
        time of each call)."""
        if not isinstance(point, str):
            raise InvalidValueError("Hook.register(point, fn, priority?) needs a point name",
                                    hint='e.g. Hook.register("BeforeToolExecution", fn)')
        if not isinstance(fn, ScriptFunction):
            raise InvalidValueError("Hook.register: the second argument must be a function")
        opts = options if isinstance(options, dict) else (
            {"priority": options} if options is not None else {})
        parsed = parse_point(point)
        self._count += 1
        name = str(opts.get("name") or f"{self.language}:{parsed}#{self._count}")
        fn.name = name
        timeout = opts.get("timeout")
        if timeout is not None:
            if not isinstance(timeout, int | float) or not timeout > 0:
                raise InvalidValueError(
                    f"Hook.register: timeout must be a number of seconds > 0, got {timeout!r}")
            # the hook's script time is bounded by its timeout too: a synchronous script
            # cannot be preempted by the executor, only by the engine's budget
            budget = getattr(fn.engine, "time_budget", None)
            fn.time_budget = float(timeout) if budget is None else min(float(timeout), budget)
        meta = HookMetadata(name=name, priority=opts.get("priority", 0),
                            language=self.language, tags=frozenset(opts.get("tags") or ()),
                            version=str(opts.get("version") or "1.0.0"),
                            description=str(opts.get("description") or ""),
                            timeout=None if timeout is None else float(timeout))
        handle = self.system.registry.register(parsed, ScriptHook(fn, meta), name=name)
        self.hooks[handle.id] = handle
        self._hook_functions[handle.id] = fn
        return {"id": handle.id, "point": handle.point, "name": name}

    def hook_unregister(self, hook_id: Any) -> bool:
        """Remove a hook these scripts registered; False when there is none."""
        if isinstance(hook_id, dict):
            hook_id = hook_id.get("id", hook_id.get("_id"))
        if not isinstance(hook_id, int):
            return False
        stored = self.hooks.pop(hook_id, None)
        if stored is None:
            return False
        removed = bool(self.system.registry.unregister(stored))
        _release(self._hook_functions.pop(hook_id, None))
        return removed

    def hook_list(self, flt: Any = None) -> list[dict[str, Any]]:
        """Hooks (of every language): all, at one point, or filtered by a table."""
        value = {"hook_point": flt} if isinstance(flt, str) else (flt or {})
        if not isinstance(value, dict):
            raise InvalidValueError("Hook.list(filter?): the filter is a point name or a table",
                                    hint="{hook_point=..., language=..., priority=..., tag=...}")
        infos = self.system.registry.list(
            value.get("hook_point"), language=value.get("language"),
            priority=value.get("priority"), tag=value.get("tag"))
        rows = [{"id": i.handle.id, "name": i.name, "hook_point": i.point,
                 "priority": i.priority, "language": str(i.language),
                 "tags": sorted(i.tags), "enabled": i.enabled, "version": i.version,
                 "description": i.description} for i in infos]
        for row in rows:  # "high" beside -100, for the named levels only
            if row["priority"] in _PRIORITY_NAMES:
                row["priority_name"] = _PRIORITY_NAMES[row["priority"]]
        return rows

    # -- Event --------------------------------------------------------------------------
    def event_publish(self, event_type: Any, data: Any = None, options: Any = None) -> str:
        """Publish an event marked with the script's language; returns its id."""
        if not options and type(event_type) is str and event_type[:3] != "run":
            # no options, not a reserved type (the common case): straight to the bus
            event = UniversalEvent.create(event_type, data, language=self.language)
            self.system.bus.publish(event)
            return event.id
        opts = options or {}
        if not isinstance(event_type, str):
            raise InvalidValueError("Event.publish(type, data, options?) needs a type string",
                                    hint='e.g. Event.publish("user.action", {id = 1})')
        if not isinstance(opts, dict):
            raise InvalidValueError("Event.publish: options must be a table")
        if event_type == "run" or event_type.startswith("run."):
            # run.* events are the runs' recordings: a script forging them could list
            # runs that never happened or change what its own replay serves.
            raise PermissionDeniedError(
                f"Event.publish: {event_type!r} is reserved for the runtime's run records",
                hint="choose another event type, e.g. 'app.run.started'")
        unknown = set(opts) - PUBLISH_OPTIONS
        if unknown:
            raise InvalidValueError(f"Event.publish: unknown option(s) {sorted(unknown)}",
                                    hint="use " + ", ".join(sorted(PUBLISH_OPTIONS)))
        opts = dict(opts)
        if "ttl_seconds" in opts:  # the seed's name for ttl
            if "ttl" in opts:
                raise InvalidValueError("Event.publish: give ttl or ttl_seconds, not both")
            opts["ttl"] = opts.pop("ttl_seconds")
        language: Language | str = self.language
        if "language" in opts:
            name = opts.pop("language")
            if not isinstance(name, str):
                raise InvalidValueError("Event.publish: the language option is a name",
                                        hint="e.g. language = \"lua\"")
            language = Language.parse(name)
        event = UniversalEvent.create(event_type, data, language=language, **opts)
        self.system.bus.publish(event)
        return event.id

    def event_subscribe(self, pattern: Any, callback: Any = None) -> int:
        """Subscribe: with a callback, events are pushed to it (on the engine's owner
        thread); without, they are buffered for :meth:`event_receive`."""
        if not isinstance(pattern, str):
            raise InvalidValueError("Event.subscribe(pattern, callback?) needs a pattern",
                                    hint='e.g. Event.subscribe("user.*")')
        name = f"{self.language}:{pattern}"
        if callback is not None:
            if not isinstance(callback, ScriptFunction):
                raise InvalidValueError("Event.subscribe: the callback must be a function")

            def handler(event: UniversalEvent) -> None:
                self.engine.deliver_call(self._run_callback, callback, event)

            handle = self.system.bus.subscribe(pattern, handler, mode="inline", name=name)
            self.subscriptions[handle.id] = _Subscription(handle, pattern, callback)
            return int(handle.id)
        sub: _Subscription | None = None

        def enqueue(event: UniversalEvent) -> None:
            assert sub is not None
            with sub.ready:
                sub.queue.append(event)
                sub.ready.notify_all()
                waiters, sub.waiters = sub.waiters, []
            for loop, future in waiters:
                loop.call_soon_threadsafe(_wake, future)

        handle = self.system.bus.subscribe(pattern, enqueue, mode="inline", name=name)
        sub = _Subscription(handle, pattern, None)
        self.subscriptions[handle.id] = sub
        return int(handle.id)

    def _run_callback(self, callback: ScriptFunction, event: UniversalEvent) -> None:
        value = callback.call_event(event)
        if type(value) in _DATA or not inspect.isawaitable(value):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            drive_blocking(value, f"the event callback for {event.event_type!r}")
            return
        task = loop.create_task(settle(value))
        self._tasks.add(task)
        task.add_done_callback(self._callback_done)

    def _callback_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            assert isinstance(exc, Exception)
            self.engine.callback_errors.append(exc)

    def event_receive(self, sub_id: Any, timeout_ms: Any = None) -> Any:
        """The next buffered event of a receive-style subscription, waiting up to
        ``timeout_ms`` (capped at :data:`RECEIVE_CAP_MS`); None on timeout."""
        sub = self.subscriptions.get(sub_id) if isinstance(sub_id, int) else None
        if sub is None or sub.callback:
            raise InvalidValueError(f"Event.receive: no receivable subscription {sub_id!r}",
                                    hint="subscribe without a callback to receive events")
        if timeout_ms is not None and not isinstance(timeout_ms, int | float):
            raise InvalidValueError("Event.receive(id, timeout_ms?): timeout_ms is a number")
        with sub.ready:
            if sub.queue:
                return event_view(sub.queue.popleft())
        wait = min(max(0.0, float(timeout_ms or 0)), RECEIVE_CAP_MS) / 1000
        if wait <= 0:
            return None
        return self._receive_later(sub, wait)

    async def _receive_later(self, sub: _Subscription, wait: float) -> Any:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + wait
        while True:
            future: asyncio.Future[None] = loop.create_future()
            with sub.ready:
                if sub.queue:
                    return event_view(sub.queue.popleft())
                sub.waiters.append((loop, future))
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                await asyncio.wait_for(future, left)
            except TimeoutError:
                with sub.ready:
                    if sub.queue:
                        return event_view(sub.queue.popleft())
                return None

    def event_unsubscribe(self, sub_id: Any) -> bool:
        """Remove a subscription (the bus subscription goes too)."""
        sub = self.subscriptions.pop(sub_id, None) if isinstance(sub_id, int) else None
        if sub is None:
            return False
        removed = bool(self.system.bus.unsubscribe(sub.handle))
        _release(sub.fn)
        return removed

    def event_list_subscriptions(self) -> list[dict[str, Any]]:
        """These scripts' subscriptions: id, pattern, callback or not, events waiting."""
        return [{"id": s.handle.id, "pattern": s.pattern, "callback": s.callback,
                 "pending": len(s.queue)} for s in self.subscriptions.values()]

    def event_stats(self) -> dict[str, Any]:
        """The bus statistics (counts, rates, drops, errors) as data."""
        stats = msgspec.to_builtins(self.system.bus.stats())
        assert isinstance(stats, dict)
        stats["script_subscriptions"] = len(self.subscriptions)
        # the seed's shape, so its scripts run unchanged
        stats["event_bus_stats"] = {k: stats[k] for k in (
            "published", "delivered", "dropped", "rejected", "expired", "handler_errors")}
        stats["bridge_stats"] = {"language": str(self.language),
                                 "subscriptions": len(self.subscriptions),
                                 "hooks": len(self.hooks)}
        return stats

    # -- Logger -------------------------------------------------------------------------
    def log(self, level: Any, message: Any, fields: Any = None) -> None:
        """Log ``message`` (with JSON ``fields``) to ``llmspell.scripts.<language>``."""
        log = get_logger(f"llmspell.scripts.{self.language}")
        number = _LEVELS.get(str(level), logging.INFO)
        if fields:
            log.log(number, "%s %s", message, msgspec.json.encode(fields).decode())
        else:
            log.log(number, "%s", message)

    # -- lifecycle ----------------------------------------------------------------------
    def close(self) -> None:
        """Unregister every hook and subscription these scripts made, and forget the agents
        and workflows they created."""
        self.runtime.release_agents()
        self.runtime.release_workflows()
        for handle in list(self.hooks.values()):
            self.system.registry.unregister(handle)
        self.hooks.clear()
        for fn in self._hook_functions.values():
            _release(fn)
        self._hook_functions.clear()
        for sub in list(self.subscriptions.values()):
            self.system.bus.unsubscribe(sub.handle)
            _release(sub.fn)
        self.subscriptions.clear()


def _release(fn: ScriptFunction | None) -> None:
    """Let the engine forget a function the host no longer calls."""
    if fn is not None:
        fn.engine.release(fn.ref)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)

