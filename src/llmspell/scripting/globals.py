"""The shared globals bound for Lua: ``Hook``, ``Event``, ``Agent``, ``Tool``, ``Workflow``,
``State``, ``Session``, ``Replay``, ``JSON`` and ``Logger``.

The globals are a thin Lua layer over :class:`~llmspell.scripting.host.HostAPI`:
synchronous operations are direct calls into Python; asynchronous ones (running a tool,
an agent or a workflow, state, sessions, ``Event.receive`` with a wait) yield the call's
coroutine to the host driver, so they read as plain blocking calls in Lua. See
``docs/scripting.md`` for the script-facing API.
"""

from __future__ import annotations

from typing import Any

import msgspec

from llmspell.core.errors import InvalidValueError
from llmspell.core.language import Language
from llmspell.scripting.host import SYNC_OPS, HostAPI
from llmspell.scripting.lua import LuaEngine
from llmspell.scripting.protocol import CALLBACK_OPS, ScriptFunction
from llmspell.scripting.runtime_ops import ProviderFactory

__all__ = ["LuaBindings"]


_PRELUDE = r"""
local sync, host, encode, decode, null = ...
local setmetatable, type = setmetatable, type

local Handle = {}
Handle.__index = {
  id = function(self) return self._id end,
  hook_point = function(self) return self._point end,
  name = function(self) return self._name end,
  unregister = function(self) return sync("hook.unregister", self._id) end,
}
local function handle_id(h)
  if type(h) == "table" then return h._id end
  return h
end
Hook = {
  register = function(point, fn, options)
    local info = sync("hook.register", point, fn, options)
    return setmetatable({_id = info.id, _point = info.point, _name = info.name}, Handle)
  end,
  unregister = function(h) return sync("hook.unregister", handle_id(h)) end,
  list = function(filter) return sync("hook.list", filter) end,
}

local receive = host("event.receive")
local function publish(event_type, data, options)
  return sync("event.publish", event_type, data, options)
end
Event = {
  publish = publish, emit = publish,
  subscribe = function(pattern, callback) return sync("event.subscribe", pattern, callback) end,
  receive = function(id, timeout_ms) return receive(id, timeout_ms) end,
  unsubscribe = function(id) return sync("event.unsubscribe", id) end,
  list_subscriptions = function() return sync("event.list_subscriptions") end,
  get_stats = function() return sync("event.stats") end,
}

local invoke = host("tool.invoke")
Tool = {
  invoke = function(name, params) return invoke(name, params) end,
  list = function() return sync("tool.list") end,
}
Tool.execute = Tool.invoke

local agent_execute = host("agent.execute")
local AgentObject = {}
AgentObject.__index = {
  execute = function(self, input) return agent_execute(self.name, input) end,
}
AgentObject.__index.invoke = AgentObject.__index.execute
Agent = {
  create = function(spec)
    local info = sync("agent.create", spec)
    return setmetatable({name = info.name, model = info.model}, AgentObject)
  end,
  get = function(name) return setmetatable({name = name}, AgentObject) end,
  list = function() return sync("agent.list") end,
}

local workflow_execute = host("workflow.execute")
local WorkflowObject = {}
WorkflowObject.__index = {
  execute = function(self, input) return workflow_execute(self.id, input) end,
}
WorkflowObject.__index.run = WorkflowObject.__index.execute
local function builder(kind)
  return function(spec)
    local info = sync("workflow.create", kind, spec)
    return setmetatable({id = info.id, name = info.name, kind = info.kind}, WorkflowObject)
  end
end
Workflow = {
  sequential = builder("sequential"), conditional = builder("conditional"),
  loop = builder("loop"), parallel = builder("parallel"),
}

State = {
  get = host("state.get"), set = host("state.set"), delete = host("state.delete"),
  list = host("state.list"),
}
State.save, State.load = State.set, State.get

Session = {
  start = host("session.start"), save = host("session.save"),
  checkpoint = host("session.checkpoint"), restore = host("session.restore"),
  ["end"] = host("session.end"), get = host("session.get"), list = host("session.list"),
  delete = host("session.delete"), purge = host("session.purge"),
}
Session.create, Session.complete = Session.start, Session["end"]

Replay = {
  list = host("replay.list"), show = host("replay.show"), run = host("replay.run"),
  diff = host("replay.diff"),
}

JSON = {encode = encode, decode = decode, stringify = encode, parse = decode, null = null}
Logger = {
  debug = function(m, f) sync("log", "debug", m, f) end,
  info = function(m, f) sync("log", "info", m, f) end,
  warn = function(m, f) sync("log", "warn", m, f) end,
  error = function(m, f) sync("log", "error", m, f) end,
}
"""


class LuaBindings:
    """Installs the globals into a :class:`LuaEngine` for ``system``; :meth:`close` removes
    the hooks and subscriptions the scripts made."""

    def __init__(self, engine: LuaEngine, system: Any, *,
                 providers: ProviderFactory | None = None) -> None:
        self.engine = engine
        self.system = system
        self.api = HostAPI(system, Language.LUA, engine, providers=providers)
        self.api.runtime.replay.caller = engine.allow
        engine.function_wrapper = self._script_function
        e = engine
        prelude = e.compile(_PRELUDE, "<globals>")
        e.call_raw(prelude, e.function(self._sync), e.host_function_factory(),
                   e.function(self._json_encode), e.function(self._json_decode),
                   e.convert.null)

    @property
    def hooks(self) -> dict[int, Any]:
        """The hooks the scripts registered, by id."""
        return self.api.hooks

    @property
    def subscriptions(self) -> dict[int, Any]:
        """The scripts' event subscriptions, by id."""
        return self.api.subscriptions

    def _script_function(self, fn: Any, path: str) -> ScriptFunction:
        return ScriptFunction(self.engine, fn, self.api.perform, f"lua function ({path})")

    def _sync(self, op: Any, *args: Any) -> Any:
        name = str(op)
        if name not in SYNC_OPS:
            raise InvalidValueError(f"{name} is not a synchronous operation")
        convert = self.engine.convert
        adopt = self.engine.adopt_function if name in CALLBACK_OPS else None
        values = [convert.from_lua(a, f"{name} argument {i}", adopt)
                  for i, a in enumerate(args, 1)]
        return convert.to_lua(self.api.perform(name, tuple(values)), "result")

    def _json_encode(self, value: Any) -> str:
        return msgspec.json.encode(self.engine.convert.from_lua(value)).decode()

    def _json_decode(self, text: Any) -> Any:
        try:
            value = msgspec.json.decode(str(text).encode())
        except msgspec.DecodeError as exc:
            raise InvalidValueError(f"JSON.decode: {exc}") from None
        return self.engine.convert.to_lua(value, "json")

    def close(self) -> None:
        """Unregister every hook and subscription the scripts made."""
        self.api.close()
