"""The shared globals, bound for Lua: ``Hook``, ``Event``, ``JSON`` and ``Logger``.

See ``docs/scripting.md`` for the script-facing API.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

import msgspec
from lupa.lua54 import lua_type  # type: ignore[import-untyped]

from llmspell.core.errors import (
    HookExecutionError,
    HookTimeoutError,
    InvalidValueError,
    ScriptError,
    ScriptTimeoutError,
)
from llmspell.core.language import Language
from llmspell.events.event import UniversalEvent
from llmspell.events.subscription import SubscriptionHandle
from llmspell.hooks.context import HookContext
from llmspell.hooks.metadata import HookMetadata
from llmspell.hooks.points import parse_point
from llmspell.hooks.registry import HookHandle
from llmspell.hooks.replay import DictHookAdapter
from llmspell.hooks.result import CONTINUE, Cancel, HookResult, Skipped
from llmspell.scripting.lua import LuaEngine

__all__ = ["RECEIVE_CAP_MS", "LuaBindings", "LuaHook"]

RECEIVE_CAP_MS = 5_000
"""The longest ``Event.receive`` waits (also capped by the call's remaining budget)."""
RECEIVE_QUEUE = 1_000

script_logger = logging.getLogger("llmspell.scripts.lua")
_ADAPTER = DictHookAdapter()


class LuaHook:
    """A Lua function registered as a hook (``language="lua"``): it runs inside the engine
    under the time budget; a script error or timeout becomes a :class:`HookExecutionError`
    (so the executor's error policy and circuit breaker apply)."""

    def __init__(self, engine: LuaEngine, fn: Any, metadata: HookMetadata) -> None:
        self.engine = engine
        self.fn = fn
        self.metadata = metadata

    def should_execute(self, ctx: HookContext) -> bool:
        """Lua hooks always apply."""
        return True

    def execute(self, ctx: HookContext) -> HookResult:
        """Call the Lua function with the context table; convert what it returns."""
        view = {
            "point": str(ctx.point),
            "correlation_id": ctx.correlation_id,
            "component_id": {"type": str(ctx.component.type), "name": ctx.component.name},
            "language": str(ctx.language),
            "metadata": dict(ctx.metadata),
            "data": ctx.data,
        }
        name, point = self.metadata.name, str(ctx.point)
        try:
            value = self.engine.call(self.fn, view, name=name)
        except ScriptTimeoutError as exc:
            raise HookTimeoutError(name, point, str(exc), hint=exc.hint) from exc
        except ScriptError as exc:
            raise HookExecutionError(name, point, str(exc)) from exc
        return result_from_script(value, name, point)


def result_from_script(value: Any, name: str, point: str) -> HookResult:
    """nil/"continue" -> Continue, "skip" -> Skipped, another string -> Cancel(string),
    a table -> :class:`DictHookAdapter` (``{type="modified", data=...}`` ...)."""
    if value is None:
        return CONTINUE
    if isinstance(value, str):
        low = value.lower()
        if low == "continue":
            return CONTINUE
        if low in ("skip", "skipped"):
            return Skipped("skipped by hook")
        return Cancel(value)
    error = _ADAPTER.extract_error(value)
    if error is not None:
        raise HookExecutionError(name, point, str(error))
    if isinstance(value, dict) and value.get("type") == "cancel" and "reason" not in value:
        value = {**value, "reason": "cancelled by hook"}
    return _ADAPTER.adapt_result(value)


class _Subscription:
    def __init__(self, handle: SubscriptionHandle, pattern: str, callback: bool) -> None:
        self.handle = handle
        self.pattern = pattern
        self.callback = callback
        self.queue: collections.deque[UniversalEvent] = collections.deque(maxlen=RECEIVE_QUEUE)
        self.ready = threading.Condition()


class LuaBindings:
    """Installs ``Hook``, ``Event``, ``JSON`` and ``Logger`` into an engine for ``system``
    and remembers what the scripts registered (:meth:`close` removes it all)."""

    def __init__(self, engine: LuaEngine, system: Any) -> None:
        self.engine = engine
        self.system = system
        self.hooks: dict[int, HookHandle] = {}
        self.subscriptions: dict[int, _Subscription] = {}
        self._count = 0
        e = engine
        f = e.function
        e.set_global("Hook", e.table([
            ("register", f(self._hook_register)), ("unregister", f(self._hook_unregister)),
            ("list", f(self._hook_list)),
        ]))
        publish = f(self._publish)
        e.set_global("Event", e.table([
            ("publish", publish), ("emit", publish), ("subscribe", f(self._subscribe)),
            ("receive", f(self._receive)), ("unsubscribe", f(self._unsubscribe)),
            ("list_subscriptions", f(self._list_subscriptions)),
        ]))
        e.set_global("JSON", e.table([
            ("encode", f(lambda v: msgspec.json.encode(e.convert.from_lua(v)).decode())),
            ("decode", f(self._json_decode)), ("null", e.convert.null),
        ]))
        levels = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
                  "error": logging.ERROR}
        e.set_global("Logger", e.table([(k, f(self._logger(v))) for k, v in levels.items()]))
        self._make_handle = e.compile("""
            local id, point, name = ...
            local Hook = Hook
            return setmetatable({_id = id, _point = point, _name = name}, {__index = {
              id = function(self) return self._id end,
              hook_point = function(self) return self._point end,
              unregister = function(self) return Hook.unregister(self) end,
            }})
        """, "<bindings>")

    # -- Hook ---------------------------------------------------------------------------
    def _hook_register(self, point: Any, fn: Any, options: Any = None) -> Any:
        if not isinstance(point, str):
            raise InvalidValueError("Hook.register(point, fn, priority?) needs a point name")
        if lua_type(fn) != "function":
            raise InvalidValueError("Hook.register: the second argument must be a function")
        opts = self.engine.convert.from_lua(options, "options")
        if not isinstance(opts, dict):
            opts = {"priority": opts} if opts is not None else {}
        parsed = parse_point(point)
        self._count += 1
        name = str(opts.get("name") or f"lua:{parsed}#{self._count}")
        meta = HookMetadata(name=name, priority=opts.get("priority", 0), language=Language.LUA,
                            tags=frozenset(opts.get("tags") or ()))
        handle = self.system.registry.register(parsed, LuaHook(self.engine, fn, meta),
                                               name=name)
        self.hooks[handle.id] = handle
        return self.engine.call_raw(self._make_handle, handle.id, handle.point, name)[0]

    def _hook_unregister(self, handle: Any) -> bool:
        hook_id = handle["_id"] if self._is_table(handle) else handle
        stored = self.hooks.pop(int(hook_id), None) if hook_id is not None else None
        if stored is None:
            return False
        return bool(self.system.registry.unregister(stored))

    def _hook_list(self, flt: Any = None) -> Any:
        value = self.engine.convert.from_lua(flt, "filter")
        if isinstance(value, str):
            value = {"hook_point": value}
        value = value or {}
        infos = self.system.registry.list(
            value.get("hook_point"), language=value.get("language"),
            priority=value.get("priority"), tag=value.get("tag"))
        rows = [{"id": i.handle.id, "name": i.name, "hook_point": i.point,
                 "priority": i.priority, "language": str(i.language),
                 "tags": sorted(i.tags), "enabled": i.enabled} for i in infos]
        return self.engine.convert.to_lua(rows)

    # -- Event --------------------------------------------------------------------------
    def _publish(self, event_type: Any, data: Any = None, opts: Any = None) -> str:
        options = self.engine.convert.from_lua(opts, "options") or {}
        allowed = {"correlation_id", "source", "target", "tags", "priority", "ttl"}
        unknown = set(options) - allowed
        if unknown:
            raise InvalidValueError(f"Event.publish: unknown option(s) {sorted(unknown)}",
                                    hint="use " + ", ".join(sorted(allowed)))
        event = UniversalEvent.create(str(event_type), self.engine.convert.from_lua(data, "data"),
                                      language="lua", **options)
        self.system.bus.publish(event)
        return event.id

    def _event_view(self, event: UniversalEvent) -> Any:
        m = event.metadata
        return self.engine.convert.to_lua({
            "id": event.id, "type": event.event_type, "data": event.data,
            "language": str(event.language), "timestamp": event.timestamp,
            "correlation_id": m.correlation_id, "source": m.source, "target": m.target,
            "tags": list(m.tags),
        })

    def _subscribe(self, pattern: Any, callback: Any = None) -> int:
        engine = self.engine
        if callback is not None:
            def handler(event: UniversalEvent) -> None:
                def run() -> None:
                    engine.call_raw(callback, self._event_view(event),
                                    name=f"Event callback {pattern}")
                engine.deliver(run)
            handle = self.system.bus.subscribe(str(pattern), handler, mode="inline",
                                               name=f"lua:{pattern}")
            self.subscriptions[handle.id] = _Subscription(handle, str(pattern), True)
            return int(handle.id)
        sub: _Subscription | None = None

        def enqueue(event: UniversalEvent) -> None:
            assert sub is not None
            with sub.ready:
                sub.queue.append(event)
                sub.ready.notify()

        handle = self.system.bus.subscribe(str(pattern), enqueue, mode="inline",
                                           name=f"lua:{pattern}")
        sub = _Subscription(handle, str(pattern), False)
        self.subscriptions[handle.id] = sub
        return int(handle.id)

    def _receive(self, sub_id: Any, timeout_ms: Any = None) -> Any:
        sub = self.subscriptions.get(int(sub_id))
        if sub is None or sub.callback:
            raise InvalidValueError(f"Event.receive: no receivable subscription {sub_id!r}",
                                    hint="subscribe without a callback to receive events")
        wait_ms = min(float(timeout_ms or 0), RECEIVE_CAP_MS, self.engine.remaining() * 1000)
        deadline = time.monotonic() + max(0.0, wait_ms) / 1000
        with sub.ready:
            while not sub.queue:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                sub.ready.wait(left)
            event = sub.queue.popleft()
        return self._event_view(event)

    def _unsubscribe(self, sub_id: Any) -> bool:
        sub = self.subscriptions.pop(int(sub_id), None)
        return sub is not None and bool(self.system.bus.unsubscribe(sub.handle))

    def _list_subscriptions(self) -> Any:
        return self.engine.convert.to_lua([
            {"id": s.handle.id, "pattern": s.pattern, "callback": s.callback,
             "pending": len(s.queue)} for s in self.subscriptions.values()])

    # -- JSON, Logger -------------------------------------------------------------------
    def _json_decode(self, text: Any) -> Any:
        try:
            value = msgspec.json.decode(str(text).encode())
        except msgspec.DecodeError as exc:
            raise InvalidValueError(f"JSON.decode: {exc}") from None
        return self.engine.convert.to_lua(value, "json")

    def _logger(self, level: int) -> Any:
        def log(message: Any, fields: Any = None) -> None:
            extra = self.engine.convert.from_lua(fields, "fields")
            if extra:
                script_logger.log(level, "%s %s", message, msgspec.json.encode(extra).decode())
            else:
                script_logger.log(level, "%s", message)
        return log

    @staticmethod
    def _is_table(value: Any) -> bool:
        return bool(lua_type(value) == "table")

    def close(self) -> None:
        """Unregister every hook and subscription the scripts made."""
        for handle in list(self.hooks.values()):
            self.system.registry.unregister(handle)
        self.hooks.clear()
        for sub in list(self.subscriptions.values()):
            self.system.bus.unsubscribe(sub.handle)
        self.subscriptions.clear()
