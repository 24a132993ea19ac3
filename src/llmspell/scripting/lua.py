"""The sandboxed Lua 5.4 engine (on lupa).

What a script can reach: the base functions that cannot escape (``assert``, ``error``,
``ipairs``, ``pairs``, ``next``, ``select``, ``type``, ``tostring``, ``tonumber``, ``raw*``,
``getmetatable``, ``setmetatable`` without ``__gc``, ``pcall``/``xpcall``, text-only
``load``, ``print`` to the log), the ``string``, ``table``, ``math``, ``utf8`` and
``coroutine`` libraries, ``os.time``/``os.clock``/``os.date``/``os.difftime``, and
``collectgarbage`` with the options ``"collect"``, ``"count"``, ``"step"`` and
``"isrunning"`` only (the others stop or tune the collector). Nothing
else: no ``io``, ``os.execute``, ``require``, ``dofile``, ``loadfile``, ``debug``,
``string.dump``, binary chunks, and no path to Python (there is no
``python`` global and every Python attribute access is refused). Denied functions exist as
stubs whose error names the flag that would allow them (``--allow-read=PATH`` ...).

The :class:`Capabilities` flags replace the stubs with real functions (``io.open`` and file
objects, ``io.lines``, ``dofile``/``loadfile``, ``os.remove``/``os.rename``/``os.tmpname``,
``os.execute``/``io.popen``, ``fetch``): Lua closures over the checked operations of
:class:`~llmspell.scripting.io_ops.IoOps`. A file object is a Lua table holding a handle
number; no Python object is reachable. See ``docs/scripting-capabilities.md``.

Limits:

* **Time**: every call from Python into Lua runs under a wall-clock budget, checked by a
  ``debug.sethook`` count hook installed from the host on the main state and on every
  coroutine the script creates. ``pcall``, ``xpcall``, ``load``,
  ``coroutine.resume``/``wrap``/``close`` re-raise the budget error instead of swallowing
  it and the hook keeps raising it, so a runaway loop ends in
  :class:`~llmspell.errors.ScriptTimeoutError`. The budget's clock is a Python function, so
  Ctrl-C (a pending ``KeyboardInterrupt``) stops a script the same way and reaches the
  caller as ``KeyboardInterrupt``. Long C calls the script controls are kept
  interruptible: pattern calls whose worst case is over :data:`PATTERN_CAP` run on a Lua
  port of the matcher (``_PATTERNS``), a long ``table.move`` runs as a Lua loop, and
  ``string.rep`` is capped. Residual limits: sorting a huge table (bounded by the memory
  limit), and a blocking Python call made by a binding (bindings cap their own waits to the
  budget left).
* **Memory**: the Lua allocator refuses to go past ``max_memory``; the script fails with
  :class:`~llmspell.errors.ScriptError` ("out of memory") and the engine stays usable.
  Running out cannot be caught (the protected-call functions re-raise it), so a full heap
  cannot starve the budget check. What crosses into Python is bounded too (a repeated string
  is copied once per place there): at most 16 host-call arguments or call results, their
  top-level strings within ``max_memory`` bytes, and a converted table's strings within it.

The host's worker coroutines are never handed to scripts (``coroutine.running()`` answers
the main thread there) and a script coroutine waiting for a host operation cannot be
resumed by the script.

An engine belongs to the thread that created it (its *owner*). Work posted from other
threads (event callbacks) waits in a bounded queue until the owner calls :meth:`pump`
(or awaits :meth:`run_pending`).
"""

from __future__ import annotations

import re
import threading
import time
import types
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lupa import lua54  # type: ignore[import-untyped]

from llmspell.core.errors import (
    InvalidValueError,
    LlmspellError,
    ScriptError,
    ScriptTimeoutError,
)
from llmspell.core.redact import get_logger
from llmspell.events.event import UniversalEvent
from llmspell.hooks.context import HookContext
from llmspell.scripting.convert import LuaConverter
from llmspell.scripting.io_ops import IoOps
from llmspell.scripting.owner import OwnerThread
from llmspell.scripting.protocol import (
    CALLBACK_OPS,
    Finished,
    Outcome,
    Pending,
    Reply,
    Request,
    failed_reply,
)
from llmspell.scripting.views import event_view, hook_context_view

__all__ = ["MIB", "Capabilities", "LuaEngine", "LuaFunction"]

MIB = 1024 * 1024
HOOK_COUNT = 1000
"""Instructions between two checks of the time budget."""
PATTERN_CAP = 2e7
"""A pattern call whose C worst case (subject length ** the pattern's backtracking items, + 1
unanchored) is over this runs on the interruptible Lua matcher instead (see _PATTERNS)."""
BUDGET_MESSAGE = "script time budget exceeded"

logger = get_logger("llmspell.scripts.lua")


@dataclass(frozen=True)
class Capabilities:
    """What a script may do beyond the sandbox (Deno-style; nothing unless granted).

    * ``allow_env``: ``os.getenv`` (Lua), ``process.env`` (JavaScript).
    * ``allow_read``: path roots a script may read under (files, directories, stat; Lua
      ``io.open``/``io.lines``/``dofile``/``loadfile``, JavaScript ``fs.readTextFile``...).
    * ``allow_write``: path roots a script may create, write, remove and rename under.
    * ``allow_exec``: run commands (Lua ``os.execute``/``io.popen`` through ``/bin/sh -c``;
      JavaScript ``exec(cmd, args)`` without a shell).
    * ``allow_net``: ``fetch`` (HTTP/HTTPS, any address).
    * ``allow_all``: every flag, with reads and writes anywhere.

    Paths are resolved (symlinks, ``..``) before they are checked against the roots. The
    checks and limits are in :mod:`llmspell.scripting.io_ops` and
    ``docs/scripting-capabilities.md``. Note that ``allow_exec`` lets a script do anything
    the user can, whatever the other flags say."""

    allow_env: bool = False
    allow_read: tuple[str, ...] = ()
    allow_write: tuple[str, ...] = ()
    allow_exec: bool = False
    allow_net: bool = False
    allow_all: bool = False

    @property
    def env(self) -> bool:
        """True when ``os.getenv`` is available."""
        return self.allow_env or self.allow_all


_READ = "--allow-read=PATH"
_WRITE = "--allow-write=PATH"
_EXEC = "--allow-exec"
_ENV = "--allow-env"
_NET = "--allow-net"

# name -> the flag that allows it (None: nothing allows it).
_DENIED: dict[str, str | None] = {
    "io.open": _READ, "io.lines": _READ, "io.input": _READ, "io.read": _READ,
    "io.write": _WRITE, "io.output": _WRITE, "io.tmpfile": _WRITE, "io.close": _READ,
    "io.popen": _EXEC, "os.execute": _EXEC, "os.getenv": _ENV,
    "os.remove": _WRITE, "os.rename": _WRITE, "os.tmpname": _WRITE,
    "os.exit": None, "os.setlocale": None,
    "dofile": _READ, "loadfile": _READ, "fetch": _NET,
    "require": None,
}


def _denied_message(name: str, flag: str | None, caps: Capabilities) -> str:
    if flag is None:
        return f"{name} is not available in the script sandbox (no flag enables it)"
    if name == "io.open":
        return f"{name} is not available: run with {_READ} (or {_WRITE} to write)"
    return f"{name} is not available: run with {flag}" + _not_wired(caps, flag)


def _not_wired(caps: Capabilities, flag: str) -> str:
    """Every flag-gated function is real once its flag is given, so a stub is only ever
    reached without the flag; this says so should a stub and a flag ever meet."""
    given = {_READ: bool(caps.allow_read), _WRITE: bool(caps.allow_write),
             _EXEC: caps.allow_exec}.get(flag, False) or caps.allow_all
    return " (the flag is given, but this function is not provided)" if given else ""


def _deny_attributes(obj: object, name: object, is_setting: bool) -> object:
    raise AttributeError("Python attributes are not accessible from scripts")


_SETUP = r"""
local now, denied, env_allowed, rep_cap, hook_count, log, BUDGET, patterns, pattern_cap,
  text_cap = ...
local sethook, getinfo, traceback = debug.sethook, debug.getinfo, debug.traceback
local raw_pcall, raw_xpcall, raw_error, raw_load = pcall, xpcall, error, load
local raw_setmetatable, raw_getmetatable, rawget = setmetatable, getmetatable, rawget
local co_create, co_resume, co_close = coroutine.create, coroutine.resume, coroutine.close
local pack, unpack, huge, tostring, type = table.pack, table.unpack, math.huge, tostring, type
local getenv = os.getenv

local deadline, expired, where = huge, false, nil
-- Lua's own out-of-memory message (short strings are interned: comparing is allocation-free)
local MEMERR = "not enough memory"
-- Once the heap has run out (oom) or Ctrl-C arrived (interrupted), like once the budget
-- has run out, every pcall/xpcall/resume re-raises and the hook keeps raising: nothing the
-- script does can catch it, so the call always ends.
local oom, interrupted = false, false
-- The host's own Lua chunks (lupa's execute names them "<python>"; the globals prelude):
-- error places and tracebacks skip them, to point at the script's line.
local host_source = {["<python>"] = true, ["=<globals>"] = true}
-- The first frame of script code from `level` up (levels as seen by the caller).
local function script_frame(level)
  while true do
    local info = getinfo(level + 1, "Sl")
    if not info then return nil end
    if info.what ~= "C" and not host_source[info.source] and info.currentline > 0 then
      return info
    end
    level = level + 1
  end
end
-- How many script calls are running: the budget applies only to them, never to the
-- host's own bookkeeping functions below (P.reset runs while `expired` is still true).
local active = 0
-- The host's bookkeeping functions (P.go, P.step ...; filled in below): the hook never
-- raises in them (it would escape the protected call into Python); it raises again as
-- soon as script code runs.
local bookkeeping = {}
local function in_bookkeeping()
  local info = getinfo(3, "f")
  return info ~= nil and bookkeeping[info.func] ~= nil
end
local function hook()
  if active == 0 or deadline == huge then return end
  if expired or oom then
    if in_bookkeeping() then return end
    raw_error(expired and BUDGET or MEMERR, 0)
  end
  -- `now` is a Python function: a pending Ctrl-C (KeyboardInterrupt) is raised in it
  local ok, t = raw_pcall(now)
  if ok and t <= deadline then return end
  if not ok then
    if t == MEMERR then oom = true; raw_error(MEMERR, 0) end
    interrupted = true
  end
  expired = true
  local info = script_frame(2)
  if info then where = {info.short_src, info.currentline} end
  if in_bookkeeping() then return end
  raw_error(BUDGET, 0)
end
-- What stopped a call for good: "budget", "interrupt", "memory" or false.
local function stopped()
  if expired then return interrupted and "interrupt" or "budget" end
  return oom and "memory" or false
end
local function clear()
  active, deadline, expired, where, oom, interrupted = 0, huge, false, nil, false, false
end
sethook(hook, "", hook_count)

local function rethrow(ok, ...)
  if not ok then
    if expired then raw_error(BUDGET, 0) end
    if oom or ... == MEMERR then oom = true; raw_error(MEMERR, 0) end
  end
  return ok, ...
end

local function copy(t)
  local out = {}
  for k, v in pairs(t) do out[k] = v end
  return out
end

local function deny(name)
  local message = denied[name]
  return function() raw_error(message, 2) end
end

-- the real string table is the strings' metatable __index: harden it in place
local raw_rep = string.rep
string.rep = function(s, n, sep)
  n = math.tointeger(n) or n
  local size = #tostring(s) * n
  if sep ~= nil and n > 1 then size = size + #tostring(sep) * (n - 1) end
  -- the count matters too: ("").rep(1e12) builds nothing but loops 1e12 times in C
  if type(n) == "number" and n > rep_cap then
    raw_error("string.rep: " .. n .. " repetitions are over the limit of " .. rep_cap, 2)
  end
  if size > rep_cap then
    raw_error("string.rep: a result of " .. math.floor(size) .. " bytes is over the limit of "
              .. rep_cap .. " bytes", 2)
  end
  return raw_rep(s, n, sep)
end
string.dump = nil
local string_mt = raw_getmetatable("")
raw_getmetatable("").__metatable = false
-- find/match/gmatch/gsub whose C worst case could outrun the budget run interruptibly (see
-- _PATTERNS), for scripts and for method calls on strings; the host's own Lua keeps the
-- raw functions through the string table.
local bounded = raw_load(patterns, "<python>", "t")(raw_pcall, raw_error, function(e)
  if expired then raw_error(BUDGET, 0) end
  if oom or e == MEMERR then oom = true; raw_error(MEMERR, 0) end
end, pattern_cap)
local methods = copy(string)
for k, f in pairs(bounded) do methods[k] = f end
string_mt.__index = methods

local ENV = {}
for _, k in ipairs({"assert", "error", "ipairs", "next", "pairs", "rawequal", "rawget",
                    "rawlen", "rawset", "select", "tonumber", "tostring", "type",
                    "getmetatable", "_VERSION"}) do
  ENV[k] = _G[k]
end
ENV._G = ENV
ENV.string, ENV.table, ENV.math, ENV.utf8 = copy(methods), copy(table), copy(math), copy(utf8)
-- table.move's loop is in C and its count is the script's choice (table.move({}, 1, 1e12, 1)
-- runs for hours without touching memory): a long move runs as a Lua loop the hook can stop.
local raw_move, tointeger = table.move, math.tointeger
ENV.table.move = function(a1, f, e, t, a2)
  local fi, ei, ti = tointeger(f), tointeger(e), tointeger(t)
  if not (fi and ei and ti) or ei - fi < 65536 or type(a1) ~= "table"
      or (a2 ~= nil and type(a2) ~= "table") or fi <= 0 or ti <= 0 then
    return raw_move(a1, f, e, t, a2)
  end
  a2 = a2 == nil and a1 or a2
  if ti > ei or ti <= fi or not rawequal(a1, a2) then
    for i = 0, ei - fi do a2[ti + i] = a1[fi + i] end
  else
    for i = ei - fi, 0, -1 do a2[ti + i] = a1[fi + i] end
  end
  return a2
end

ENV.pcall = function(f, ...) return rethrow(raw_pcall(f, ...)) end
ENV.xpcall = function(f, handler, ...)
  return rethrow(raw_xpcall(f, function(e)
    if expired or oom or e == MEMERR then return e end
    return handler(e)
  end, ...))
end
ENV.load = function(chunk, name, mode, env)
  return rethrow(raw_load(chunk, name, "t", env or ENV))
end
ENV.setmetatable = function(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    raw_error("__gc metamethods are not available in the script sandbox", 2)
  end
  -- an error in __close replaces the error being unwound: it could mask the budget's
  if type(mt) == "table" and rawget(mt, "__close") ~= nil then
    raw_error("__close metamethods are not available in the script sandbox", 2)
  end
  return raw_setmetatable(t, mt)
end
ENV.print = function(...)
  local parts = pack(...)
  for i = 1, parts.n do parts[i] = tostring(parts[i]) end
  log(table.concat(parts, "\t", 1, parts.n))
end

local function create(f)
  local co = co_create(f)
  sethook(co, hook, "", hook_count)
  return co
end
-- A host request (see P.host) yielded inside a script's own coroutine is relayed up to
-- the host driver, and the answer passed back down, so host calls work at any depth.
local HOST = {}
local co_yield, co_status, co_running = coroutine.yield, coroutine.status, coroutine.running
local co_isyieldable = coroutine.isyieldable
-- The host's coroutines (the workers calls run on, see P.start) are never handed to a
-- script: coroutine.running() there answers the main thread, as at a script's top level.
-- A script coroutine suspended in a host request cannot be resumed or closed by the
-- script (that would feed it a forged answer) until the host answers.
local MAIN = co_running()
local hosts = raw_setmetatable({}, {__mode = "k"})
local waiting = raw_setmetatable({}, {__mode = "k"})
local BUSY = "cannot resume a coroutine that is waiting for a host operation"
local function busy(co) return hosts[co] or waiting[co] end
local function relay(co, r)
  while r[1] and r[2] == HOST and co_status(co) == "suspended" do
    waiting[co] = true
    local answer = pack(co_yield(HOST, r[3], r[4]))
    waiting[co] = nil
    r = pack(co_resume(co, unpack(answer, 1, answer.n)))
  end
  return r
end
ENV.coroutine = {
  create = create,
  resume = function(co, ...)
    if busy(co) then return false, BUSY end
    local r = relay(co, pack(co_resume(co, ...)))
    return rethrow(unpack(r, 1, r.n))
  end,
  close = function(co)
    if busy(co) then
      return false, "cannot close a coroutine that is waiting for a host operation"
    end
    return rethrow(co_close(co))
  end,
  wrap = function(f)
    local co = create(f)
    return function(...)
      if busy(co) then raw_error(BUSY, 2) end
      local r = relay(co, pack(co_resume(co, ...)))
      if r[1] then return unpack(r, 2, r.n) end
      rethrow(false, r[2])
      raw_error(r[2], 0)
    end
  end,
  status = function(co)
    if hosts[co] then return co_running() == co and "running" or "normal" end
    return co_status(co)
  end,
  running = function()
    local co, main = co_running()
    if hosts[co] then return MAIN, true end
    return co, main
  end,
  yield = coroutine.yield,
  isyieldable = function(co)
    co = co or co_running()
    if hosts[co] then return false end
    return co_isyieldable(co)
  end,
}
local raw_collect = collectgarbage
local gc_allowed = {collect = true, count = true, step = true, isrunning = true}
ENV.collectgarbage = function(opt, arg)
  if opt == nil then opt = "collect" end
  if not gc_allowed[opt] then
    raw_error("collectgarbage(\"" .. tostring(opt) .. "\") is not available in the script "
              .. "sandbox; the options are \"collect\", \"count\", \"step\" and \"isrunning\"", 2)
  end
  if opt == "step" then return raw_collect("step", math.tointeger(arg) or 0) end
  return raw_collect(opt)
end
ENV.os = {time = os.time, clock = os.clock, date = os.date, difftime = os.difftime}
ENV.io = {}
for name in pairs(denied) do
  local lib, fn = name:match("^(%a+)%.(%a+)$")
  if lib then ENV[lib][fn] = deny(name) else ENV[name] = deny(name) end
end
if env_allowed then ENV.os.getenv = getenv end
ENV.debug = raw_setmetatable({}, {
  __index = function(_, k)
    return function()
      raw_error("debug." .. tostring(k) .. " is not available in the script sandbox", 2)
    end
  end,
  __newindex = function() raw_error("debug is read-only", 2) end,
})

local NULL = raw_setmetatable({}, {
  __tostring = function() return "null" end,
  __newindex = function() raw_error("JSON.null is read-only", 2) end,
  __metatable = false,
})

local last
local function handler(e)
  if expired or oom or e == MEMERR then return e end
  local msg = type(e) == "string" and e or ("(error object) " .. tostring(e))
  local src = msg:match("^(%[string \"<python>\"%]):%d+: ") or msg:match("^(<globals>):%d+: ")
  if src then  -- raised in the host's Lua: say where the script called it
    local info = script_frame(2)
    local rest = msg:sub(#msg:match("^[^\n]-:%d+: ") + 1)
    msg = info and (info.short_src .. ":" .. info.currentline .. ": " .. rest) or rest
  end
  last = {msg, traceback(msg, 2)}
  return e
end

local P = {}
P.env, P.null = ENV, NULL
-- Values leaving Lua for Python are copied there: a Lua string is one object however many
-- places hold it, a Python str is one per place. So what crosses at once (a host request's
-- arguments, a call's results) may hold at most MAX_CROSSING values and `text_cap` bytes
-- of top-level strings (the heap limit: more is only possible by repeating one string).
local MAX_CROSSING = 16
local function crossing(t, i, j)
  if j - i + 1 > MAX_CROSSING then
    return (j - i + 1) .. " values at once (the most is " .. MAX_CROSSING .. ")"
  end
  local size = 0
  for k = i, j do
    if type(t[k]) == "string" then size = size + #t[k] end
  end
  if size > text_cap then
    return "strings of " .. size .. " bytes at once (over the memory limit of " .. text_cap
           .. " bytes; a repeated string is copied once per place in Python)"
  end
  return nil
end
-- ok, results... | false, error, expired, where (source, line), message, traceback
function P.invoke(f, ...)
  last = nil
  active = active + 1
  local r = pack(raw_xpcall(f, handler, ...))
  active = active - 1
  if r[1] then
    local over = crossing(r, 2, r.n)
    if over == nil then return unpack(r, 1, r.n) end
    return false, "the call returned " .. over, false
  end
  local src, line, msg, tb
  if where then src, line = where[1], where[2] end
  if last then msg, tb = last[1], last[2] end
  return false, r[2], stopped(), src, line, msg, tb
end
-- A host request that returns ok, value-or-message instead of raising (see _IO).
function P.request(op, ...)
  local args = pack(...)
  local over = crossing(args, 1, args.n)
  if over ~= nil then return false, op .. ": passing " .. over end
  local r = pack(co_yield(HOST, op, args))
  return r[1], r[2]
end
-- Host operations: the call's coroutine yields the request to the driver (P.step).
function P.host(op)
  return function(...)
    local args = pack(...)
    local over = crossing(args, 1, args.n)
    if over ~= nil then raw_error(op .. ": passing " .. over, 2) end
    local r = pack(co_yield(HOST, op, args))
    if r[1] then return r[2] end
    raw_error(r[2], 2)
  end
end
-- Calls in flight, by id (lupa cannot hand a Lua thread to Python and back).
local calls, next_call = {}, 0
-- Functions the host holds (hooks, callbacks, steps), by number: see adopt_function.
local kept, next_kept = {}, 0
function P.keep(f)
  next_kept = next_kept + 1
  kept[next_kept] = f
  return next_kept
end
function P.release(id) kept[id] = nil end
-- Calls run on worker coroutines that are reused: creating a coroutine (and setting its
-- budget hook) is most of the cost of a short call. A worker runs one function, yields
-- DONE with its outcome (ok, first result), and waits for the next function. The loop is
-- two tail calls passing varargs (no tables per call); `work`'s frame, holding the function
-- and its arguments, is gone before the worker waits.
local DONE, idle, idle_count, first = {}, {}, 0, {}
local work
local function loop(ok, value)
  return work(co_yield(DONE, ok, value))
end
work = function(f, ...)
  last = nil
  return loop(raw_xpcall(f, handler, ...))
end
function P.start(f)
  if math.type(f) == "integer" then
    local found = kept[f]
    if found == nil then raw_error("this script function was released", 0) end
    f = found
  end
  local co
  if idle_count > 0 then
    co = idle[idle_count]
    idle[idle_count] = nil
    idle_count = idle_count - 1
  else
    co = create(work)
    hosts[co] = true
  end
  next_call = next_call + 1
  calls[next_call] = co
  first[next_call] = f
  return next_call
end
-- "done", ok, value-or-error | "call", op, n, args... | "yield" | "error", message
local function stepped(id, co, ok, tag, a, b)
  active = active - 1
  if not ok then calls[id] = nil; return "error", tag end
  if tag == DONE then
    calls[id] = nil
    if idle_count < 16 then
      idle_count = idle_count + 1
      idle[idle_count] = co
    end
    return "done", a, b
  end
  if tag == HOST then return "call", a, b.n, unpack(b, 1, b.n) end
  calls[id] = nil
  return "yield"
end
function P.step(id, ...)
  local co = calls[id]
  local f = first[id]
  active = active + 1
  if f ~= nil then
    first[id] = nil
    return stepped(id, co, co_resume(co, f, ...))
  end
  return stepped(id, co, co_resume(co, ...))
end
-- One host round trip per step (each call from Python into Lua costs ~0.4 us):
-- start the call when `f` is given, set the budget, resume, report, restore the budget.
-- Errors carry what the host needs (timeout place, message, traceback), read before the
-- budget state is reset.
local function report(id, kind, ok, value)
  if ok then return kind, id, true, value end
  local src, line, msg, tb
  if where then src, line = where[1], where[2] end
  if last then msg, tb = last[1], last[2] end
  return kind, id, false, value, stopped(), src, line, msg, tb
end
local function outcome(id, kind, a, b, ...)
  if kind == "done" then return report(id, "done", a, b) end
  if kind == "error" then return report(id, "error", false, a) end
  if kind == "call" then return "call", id, deadline - now(), a, b, ... end
  return kind, id
end
-- the budget state back as it was (after the outcome, which reads it, is computed)
local function settled(outer, previous, ...)
  if outer then clear()
  else deadline = previous end
  return ...
end
local function went(id, outer, previous, kind, a, b, ...)
  if kind == "done" and a then
    if outer then clear()
    else deadline = previous end
    return "done", id, true, b
  end
  return settled(outer, previous, outcome(id, kind, a, b, ...))
end
function P.go(id, f, d, outer, ...)
  if f ~= nil then id = P.start(f) end
  local previous = deadline
  if outer or d < deadline then deadline = d end
  return went(id, outer, previous, P.step(id, ...))
end
-- P.go with the script's view of a hook context or an event built here from its fields
-- (LuaConverter.hook_fields/event_fields): cheaper than building the tables from Python.
local function hook_view(point, correlation, ctype, cname, language, metadata, data)
  return {point = point, correlation_id = correlation,
          component_id = {type = ctype, name = cname}, language = language,
          metadata = metadata or {}, data = data or {}}
end
local function event_view(id, etype, data, language, timestamp, sequence, correlation,
                          source, target, priority, tags)
  local copy = {}
  if tags == nil then tags = {}
  else for i = 1, #tags do copy[i] = tags[i] end end
  return {id = id, type = etype, event_type = etype, data = data, language = language,
          timestamp = timestamp, sequence = sequence, correlation_id = correlation,
          source = source, target = target, tags = tags, priority = priority,
          metadata = {source_language = language, timestamp = timestamp,
                      correlation_id = correlation, tags = copy}}
end
function P.go_hook(id, f, d, outer, ...) return P.go(id, f, d, outer, hook_view(...)) end
function P.go_event(id, f, d, outer, ...) return P.go(id, f, d, outer, event_view(...)) end
function P.begin(d) if d < deadline then deadline = d end end
function P.restore(d) deadline = d end
function P.deadline() return deadline end
P.reset = clear
-- Host work that runs script-sized loops (converting a script's tables) under a budget:
-- f(...) with deadline d (or the running call's, if sooner). Returns what stopped it
-- ("budget", "interrupt", "memory" or false), then pcall's results.
function P.guard(d, f, ...)
  local outer, previous = active == 0, deadline
  active = active + 1
  if d < deadline then deadline = d end
  local r = pack(raw_pcall(f, ...))
  local stop = stopped()
  if not r[1] and r[2] == MEMERR then stop = "memory" end
  active, deadline = active - 1, previous
  if outer then clear() end
  return stop, unpack(r, 1, r.n)
end
function P.compile(source, name)
  local f, e = raw_load(source, "=" .. name, "t", ENV)
  return f or false, e or false
end
-- A Python binding returns ok, value-or-message; this turns that into a Lua error.
function P.wrap(pyf)
  return function(...)
    local r = pack(pyf(...))
    if r[1] then return unpack(r, 2, r.n) end
    raw_error(r[2], 2)
  end
end
for _, f in ipairs({P.invoke, P.start, P.step, report, outcome, P.go, P.guard, stopped,
                    clear, hook_view, event_view, P.go_hook, P.go_event, stepped, settled,
                    went}) do
  bookkeeping[f] = true
end
return P
"""

# The capability functions, installed into the sandbox by LuaEngine when a flag grants
# them (the stubs stay otherwise). `py` holds Python functions returning ok, value; files
# are tables whose handle numbers live in a private weak table.
_IO = r"""
local P, caps, py = ...
local ENV = P.env
local raw_error, raw_load, raw_pcall, type, select = error, load, pcall, type, select
local tostring, tonumber, setmt, pack, unpack = tostring, tonumber, setmetatable, table.pack,
  table.unpack
local utf8len, sbyte, ssub, format, mtype = utf8.len, string.byte, string.sub, string.format,
  math.type
local io, os, print = ENV.io, ENV.os, ENV.print

-- Errors are positioned at the script's line: the first caller outside this chunk.
local getinfo = debug.getinfo
local SOURCE = getinfo(1, "S").source
local function fail(message)
  local level = 2
  while true do
    local info = getinfo(level + 1, "S")
    if not info or info.source ~= SOURCE then break end
    level = level + 1
  end
  raw_error(message, level + 1)
end
local function call(f, ...)
  local ok, v = f(...)
  if ok then return v end
  fail(v)
end
local function host(op, ...)
  local ok, v = P.request(op, ...)
  if ok then return v end
  fail(v)
end
local function text(s, fname, n)
  if mtype(s) then s = tostring(s) end
  if type(s) ~= "string" then
    fail(format("bad argument #%d to '%s' (string expected, got %s)", n, fname,
                     type(s)))
  end
  if not utf8len(s) then
    fail(format("bad argument #%d to '%s' (not valid UTF-8)", n, fname))
  end
  return s
end
local function oserror(r)
  local n, msg = r:match("^(%d+)\t(.*)$")
  return nil, msg, tonumber(n)
end

local ids = setmt({}, {__mode = "k"})    -- file -> handle number (nil once closed)
local files = setmt({}, {__mode = "k"})  -- every file object
local File = {}
local FileMT = {
  __index = File, __name = "FILE*", __metatable = false,
  __tostring = function(f)
    local id = ids[f]
    return id and format("file (0x%08x)", id) or "file (closed)"
  end,
  __close = function(f) if ids[f] then File.close(f) end end,
}
-- No __gc (a finalizer calling Python while Python tears a runtime down crashes): files
-- whose tables were collected are closed by sweep() before the next open.
local by_id = setmt({}, {__mode = "v"})  -- handle number -> file (weak)
local live, live_count = {}, 0           -- open handle numbers
local function sweep()
  for id in next, live do
    if by_id[id] == nil then
      live[id], live_count = nil, live_count - 1
      raw_pcall(py.close, id)
    end
  end
end
local function before_open()
  sweep()
  if live_count >= 32 then collectgarbage(); sweep() end
end
local function new_file(id)
  local f = setmt({}, FileMT)
  ids[f], files[f], by_id[id] = id, true, f
  live[id], live_count = true, live_count + 1
  return f
end
local function forget(id)
  if live[id] then live[id], live_count = nil, live_count - 1 end
end
local function handle(f, fname)
  if not files[f] then
    fail(format("bad argument #1 to '%s' (FILE* expected, got %s)", fname, type(f)))
  end
  local id = ids[f]
  if not id then fail("attempt to use a closed file") end
  return id
end

local function read_one(id, fmt, n)
  if mtype(fmt) then
    return call(py.read, id, math.tointeger(fmt) or fail(
      format("bad argument #%d to 'read' (number has no integer representation)", n)))
  end
  local c = type(fmt) == "string" and ssub(fmt, fmt:sub(1, 1) == "*" and 2 or 1,
                                           fmt:sub(1, 1) == "*" and 2 or 1)
  if c == "n" then
    local token = call(py.read, id, "n")
    return token and tonumber(token)
  end
  if c == "a" or c == "l" or c == "L" then return call(py.read, id, c) end
  fail(format("bad argument #%d to 'read' (invalid format)", n))
end
local function read(id, ...)
  local n = select("#", ...)
  if n == 0 then return read_one(id, "l", 1) end
  local out = {}
  for i = 1, n do
    local v = read_one(id, (select(i, ...)), i)
    out[i] = v
    if v == nil then return unpack(out, 1, i) end
  end
  return unpack(out, 1, n)
end
function File.read(f, ...) return read(handle(f, "read"), ...) end
function File.lines(f, ...)
  handle(f, "lines")
  local formats = pack(...)
  return function()
    local id = ids[f]
    if not id then fail("file is already closed") end
    return read(id, unpack(formats, 1, formats.n))
  end
end
function File.write(f, ...)
  local id = handle(f, "write")
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    local kind = mtype(v)
    if kind == "integer" then v = format("%d", v)
    elseif kind == "float" then v = format("%.14g", v)
    elseif type(v) ~= "string" then
      fail(format("bad argument #%d to 'write' (string expected, got %s)", i, type(v)))
    end
    if utf8len(v) then
      call(py.write, id, v)
    else  -- bytes that are not UTF-8 cross as numbers (a string would not)
      for j = 1, #v, 4096 do call(py.write, id, sbyte(v, j, j + 4095)) end
    end
  end
  return f
end
function File.seek(f, whence, offset)
  local id = handle(f, "seek")
  return call(py.seek, id, whence or "cur", offset or 0)
end
function File.flush(f) call(py.flush, handle(f, "flush")); return f end
function File.setvbuf(f) handle(f, "setvbuf"); return true end
function File.close(f)
  local id = handle(f, "close")
  ids[f] = nil
  forget(id)
  local status = call(py.close, id)
  if status ~= "" then
    local kind, code = status:match("^(%a+)\t(%d+)$")
    code = tonumber(code)
    if kind == "exit" and code == 0 then return true, kind, code end
    return nil, kind, code
  end
  return true
end

local function open(path, mode)
  path = text(path, "open", 1)
  mode = mode == nil and "r" or text(mode, "open", 2)
  if not mode:match("^[rwa]%+?b*$") then
    fail("bad argument #2 to 'open' (invalid mode)")
  end
  before_open()
  local r = call(py.open, path, mode)
  if type(r) == "string" then return oserror(r) end
  return new_file(r)
end
local default_in, default_out
local function lines(path, ...)
  local f
  if path == nil then
    f = default_in
    if not f then fail("io.lines: there is no standard input in the sandbox; pass a "
                            .. "file name or set one with io.input(path)") end
    return File.lines(f, ...)
  end
  local msg
  f, msg = open(path, "r")
  if not f then fail(msg) end
  local formats = pack(...)
  return function()
    local id = ids[f]
    if not id then fail("file is already closed") end
    local r = pack(read(id, unpack(formats, 1, formats.n)))
    if r[1] == nil then File.close(f) end
    return unpack(r, 1, r.n)
  end, nil, nil, f
end
local function default_file(file, mode, fname)
  if type(file) == "string" then
    local f, msg = open(file, mode)
    if not f then fail(msg) end
    return f
  end
  handle(file, fname)
  return file
end

io.type = function(x)
  if files[x] then return ids[x] and "file" or "closed file" end
  return nil
end
if caps.read or caps.write then
  io.open = function(path, mode) return open(path, mode) end
  io.close = function(f)
    f = f or default_out
    if not f then fail("io.close: there is no default output file") end
    return File.close(f)
  end
end
if caps.read then
  io.lines = lines
  io.input = function(file)
    if file ~= nil then default_in = default_file(file, "r", "input") end
    return default_in
  end
  io.read = function(...)
    if not default_in then
      fail("io.read: there is no standard input in the sandbox; set an input file "
                .. "with io.input(path)")
    end
    return File.read(default_in, ...)
  end
  ENV.loadfile = function(path, mode, env)
    if path == nil then
      fail("loadfile: there is no standard input in the sandbox; pass a file name")
    end
    path = text(path, "loadfile", 1)
    local r = call(py.chunk, path)
    if ssub(r, 1, 1) == "0" then
      local _, msg = oserror(ssub(r, 2))
      return nil, "cannot open " .. msg
    end
    local source = ssub(r, 2)
    if ssub(source, 1, 1) == "#" then source = "--" .. source end  -- a "#!" line
    return raw_load(source, "@" .. path, "t", env == nil and ENV or env)
  end
  local loadfile = ENV.loadfile
  ENV.dofile = function(path)
    local f, msg = loadfile(path)
    if not f then fail(msg) end
    return f()
  end
end
if caps.write then
  io.output = function(file)
    if file ~= nil then default_out = default_file(file, "w", "output") end
    return default_out
  end
  io.write = function(...)
    if not default_out then
      fail("io.write: there is no standard output in the sandbox; use print, or set "
                .. "an output file with io.output(path)")
    end
    return File.write(default_out, ...)
  end
  io.tmpfile = function() before_open(); return new_file(call(py.tmpfile)) end
  os.remove = function(path)
    local r = call(py.remove, text(path, "remove", 1))
    if r ~= "" then return oserror(r) end
    return true
  end
  os.rename = function(old, new)
    local r = call(py.rename, text(old, "rename", 1), text(new, "rename", 2))
    if r ~= "" then return oserror(r) end
    return true
  end
  os.tmpname = function() return call(py.tmpname) end
end
if caps.exec then
  local function show(out)
    if out ~= "" then print((out:gsub("\n$", ""))) end
  end
  os.execute = function(command, options)
    if command == nil then return true end
    local r = host("proc.shell", text(command, "execute", 1), options)
    show(r.stdout); show(r.stderr)
    if r.signal then return nil, "signal", r.signal end
    if r.code == 0 then return true, "exit", 0 end
    return nil, "exit", r.code
  end
  io.popen = function(command, mode, options)
    command = text(command, "popen", 1)
    if mode ~= nil and mode ~= "r" and mode ~= "rb" then
      fail("io.popen: only mode \"r\" is available in the sandbox (the command runs "
                .. "to completion, then its output is read)")
    end
    local r = host("proc.shell", command, options)
    show(r.stderr)
    before_open()
    local status = r.signal and ("signal\t" .. r.signal) or ("exit\t" .. r.code)
    return new_file(call(py.buffer, r.stdout, status))
  end
end
if caps.net then
  ENV.fetch = function(url, options)
    return host("net.fetch", text(url, "fetch", 1), options)
  end
end
"""

_PATTERNS = r"""
-- Lua's pattern functions, bounded: a call whose worst case (backtracking) could run long
-- in C, where the budget's hook cannot stop it, runs on a Lua port of the matcher instead
-- (lstrlib.c's), which the hook interrupts like any script code.
local raw_pcall, raw_error, settle, cap = ...
local byte, sub, char, concat = string.byte, string.sub, string.char, table.concat
local raw_find, raw_gsub = string.find, string.gsub
-- called as fields, so that argument errors name them as C Lua does ('find', not 'raw_find')
local C = {find = string.find, match = string.match, gmatch = string.gmatch,
           gsub = string.gsub}
local type, tostring, tonumber, tointeger, log = type, tostring, tonumber, math.tointeger,
  math.log
local unpack = table.unpack

local ESC, LB, RB, LP, RP, DOT, DOLLAR, CARET = 37, 91, 93, 40, 41, 46, 36, 94
local STAR, PLUS, MINUS, QUEST = 42, 43, 45, 63
local CAP_UNFINISHED, CAP_POSITION, MAXCAPTURES, MAXCCALLS = -1, -2, 32, 200

-- %a %c %d %g %l %p %s %u %w %x, by byte (C locale, as the C matcher sees it)
local classes = {}
for letter in ("acdglpsuwx"):gmatch(".") do
  local t = {}
  for b = 0, 255 do t[b] = raw_find(char(b), "%" .. letter) ~= nil end
  classes[byte(letter)] = t
  local upper = {}
  for b = 0, 255 do upper[b] = not t[b] end
  classes[byte(letter:upper())] = upper
end

-- A marker for the matcher's own errors (re-raised at the script's call).
local PATTERN = {}
local function fail(message) raw_error({PATTERN, message}, 0) end

local function new(s, p)
  local slen, plen = #s, #p
  local level, depth = 0, 0
  local cinit, clen = {}, {}

  local function class_end(pi)
    local c = byte(p, pi)
    pi = pi + 1
    if c == ESC then
      if pi > plen then fail("malformed pattern (ends with '%')") end
      return pi + 1
    elseif c == LB then
      if byte(p, pi) == CARET then pi = pi + 1 end
      repeat
        if pi > plen then fail("malformed pattern (missing ']')") end
        local cc = byte(p, pi)
        pi = pi + 1
        if cc == ESC and pi <= plen then pi = pi + 1 end
      until byte(p, pi) == RB
      return pi + 1
    end
    return pi
  end

  local function match_class(c, cl)
    local t = classes[cl]
    if t then return t[c] end
    return cl == c
  end

  local function bracket(c, pi, ec)  -- pi at '[', ec at ']'
    local sig = true
    pi = pi + 1
    if byte(p, pi) == CARET then sig = false; pi = pi + 1 end
    while pi < ec do
      local pc = byte(p, pi)
      if pc == ESC then
        pi = pi + 1
        if match_class(c, byte(p, pi)) then return sig end
      elseif byte(p, pi + 1) == MINUS and pi + 2 < ec then
        if pc <= c and c <= byte(p, pi + 2) then return sig end
        pi = pi + 2
      elseif pc == c then
        return sig
      end
      pi = pi + 1
    end
    return not sig
  end

  local function single(si, pi, ep)
    if si > slen then return false end
    local c, pc = byte(s, si), byte(p, pi)
    if pc == DOT then return true end
    if pc == ESC then return match_class(c, byte(p, pi + 1)) end
    if pc == LB then return bracket(c, pi, ep - 1) end
    return pc == c
  end

  local do_match

  local function max_expand(si, pi, ep)
    local i = 0
    while single(si + i, pi, ep) do i = i + 1 end
    while i >= 0 do
      local res = do_match(si + i, ep + 1)
      if res then return res end
      i = i - 1
    end
    return nil
  end

  local function min_expand(si, pi, ep)
    while true do
      local res = do_match(si, ep + 1)
      if res then return res end
      if single(si, pi, ep) then si = si + 1 else return nil end
    end
  end

  local function start_capture(si, pi, what)
    if level >= MAXCAPTURES then fail("too many captures") end
    level = level + 1
    cinit[level], clen[level] = si, what
    local res = do_match(si, pi)
    if res == nil then level = level - 1 end
    return res
  end

  local function end_capture(si, pi)
    local l = level
    while l > 0 and clen[l] ~= CAP_UNFINISHED do l = l - 1 end
    if l == 0 then fail("invalid pattern capture") end
    clen[l] = si - cinit[l]
    local res = do_match(si, pi)
    if res == nil then clen[l] = CAP_UNFINISHED end
    return res
  end

  local function balance(si, pi)
    if pi + 1 > plen then fail("malformed pattern (missing arguments to '%b')") end
    if si > slen or byte(s, si) ~= byte(p, pi) then return nil end
    local b, e, cont = byte(p, pi), byte(p, pi + 1), 1
    for i = si + 1, slen do
      local c = byte(s, i)
      if c == e then
        cont = cont - 1
        if cont == 0 then return i + 1 end
      elseif c == b then
        cont = cont + 1
      end
    end
    return nil
  end

  local function back_reference(si, l)
    l = l - 48  -- '1' -> 1
    if l < 1 or l > level or clen[l] == CAP_UNFINISHED then
      fail("invalid capture index %" .. l)
    end
    local len = clen[l]
    if len >= 0 and slen - si + 1 >= len
        and sub(s, cinit[l], cinit[l] + len - 1) == sub(s, si, si + len - 1) then
      return si + len
    end
    return nil
  end

  do_match = function(si, pi)
    depth = depth + 1
    if depth > MAXCCALLS then fail("pattern too complex") end
    local res
    while true do
      if pi > plen then res = si; break end
      local pc = byte(p, pi)
      local nx = byte(p, pi + 1)
      if pc == LP then
        if nx == RP then res = start_capture(si, pi + 2, CAP_POSITION)
        else res = start_capture(si, pi + 1, CAP_UNFINISHED) end
        break
      elseif pc == RP then
        res = end_capture(si, pi + 1)
        break
      elseif pc == DOLLAR and pi == plen then
        res = (si == slen + 1) and si or nil
        break
      elseif pc == ESC and nx == 98 then  -- %b
        si = balance(si, pi + 2)
        if si == nil then break end
        pi = pi + 4
      elseif pc == ESC and nx == 102 then  -- %f
        pi = pi + 2
        if byte(p, pi) ~= LB then fail("missing '[' after '%f' in pattern") end
        local ep = class_end(pi)
        local prev = si == 1 and 0 or byte(s, si - 1)
        local cur = si <= slen and byte(s, si) or 0
        if bracket(prev, pi, ep - 1) or not bracket(cur, pi, ep - 1) then break end
        pi = ep
      elseif pc == ESC and nx and nx >= 48 and nx <= 57 then  -- %0-%9
        si = back_reference(si, nx)
        if si == nil then break end
        pi = pi + 2
      else
        local ep = class_end(pi)
        local q = byte(p, ep)
        if not single(si, pi, ep) then
          if q == STAR or q == QUEST or q == MINUS then pi = ep + 1 else break end
        elseif q == QUEST then
          local r = do_match(si + 1, ep + 1)
          if r then res = r; break end
          pi = ep + 1
        elseif q == PLUS then res = max_expand(si + 1, pi, ep); break
        elseif q == STAR then res = max_expand(si, pi, ep); break
        elseif q == MINUS then res = min_expand(si, pi, ep); break
        else si, pi = si + 1, ep end
      end
    end
    depth = depth - 1
    return res
  end

  local function capture(i, si, e)  -- i: 1-based
    if i > level then
      if i ~= 1 then fail("invalid capture index %" .. i) end
      return sub(s, si, e - 1)
    end
    local l = clen[i]
    if l == CAP_UNFINISHED then fail("unfinished capture") end
    if l == CAP_POSITION then return cinit[i] end
    return sub(s, cinit[i], cinit[i] + l - 1)
  end

  local function captures(si, e, whole)
    local n = (level == 0 and whole) and 1 or level
    local out = {}
    for i = 1, n do out[i] = capture(i, si, e) end
    return unpack(out, 1, n)
  end

  local function try(si, pi)
    level, depth = 0, 0
    return do_match(si, pi)
  end

  return {try = try, captures = captures, capture = capture, slen = slen}
end

local function start_at(init, len)
  init = init or 1
  if init > 0 then return init end
  if init == 0 or init < -len then return 1 end
  return len + init + 1
end

local function lua_find(s, p, init, find)
  local m = new(s, p)
  init = start_at(init, m.slen)
  if init > m.slen + 1 then return nil end
  local anchor = byte(p, 1) == CARET
  local pi = anchor and 2 or 1
  local si = init
  repeat
    local e = m.try(si, pi)
    if e then
      if find then return si, e - 1, m.captures(si, e, false) end
      return m.captures(si, e, true)
    end
    si = si + 1
  until si > m.slen + 1 or anchor
  return nil
end

local function lua_gmatch(s, p, init)
  local m = new(s, p)
  local si, last = start_at(init, m.slen), nil
  if si > m.slen + 1 then si = m.slen + 1 end
  return function()
    for src = si, m.slen + 1 do
      local e = m.try(src, 1)
      if e and e ~= last then
        si, last = e, e
        return m.captures(src, e, true)
      end
    end
    si = m.slen + 2
    return nil
  end
end

local function lua_gsub(s, p, repl, max_n)
  local m = new(s, p)
  local kind = type(repl)
  if kind == "number" then repl, kind = tostring(repl), "string" end
  local anchor = byte(p, 1) == CARET
  local pi = anchor and 2 or 1
  max_n = max_n == nil and m.slen + 1 or max_n
  local si, from, n, last, out = 1, 1, 0, nil, {}
  local function value(src, e)
    local whole = sub(s, src, e - 1)
    local v
    if kind == "string" then
      return (raw_gsub(repl, "%%(.?)", function(c)
        if c == "%" then return "%" end
        local d = tointeger(tonumber(c))
        if c ~= "" and d then
          if d == 0 then return whole end
          return tostring(m.capture(d, src, e))
        end
        fail("invalid use of '%' in replacement string")
      end))
    elseif kind == "table" then
      v = repl[m.capture(1, src, e)]
    else
      v = repl(m.captures(src, e, true))
    end
    if v == nil or v == false then return whole end
    local t = type(v)
    if t ~= "string" and t ~= "number" then fail("invalid replacement value (a " .. t .. ")") end
    return tostring(v)
  end
  while n < max_n do
    local e = m.try(si, pi)
    if e and e ~= last then
      n = n + 1
      out[#out + 1] = sub(s, from, si - 1)
      out[#out + 1] = value(si, e)
      si, last, from = e, e, e
    elseif si <= m.slen then
      si = si + 1
    else
      break
    end
    if anchor then break end
  end
  out[#out + 1] = sub(s, from)
  return concat(out), n
end

-- How the C matcher's worst case grows: subject length ^ (items that can backtrack, + 1
-- when the search is not anchored). A quantified item backtracks only when more pattern
-- follows it; %b scans. Cached by pattern.
local SPECIALS = "[%^%$%*%+%?%.%(%)%[%]%%%-]"
local cache, cached = {}, 0
local function growth(p)
  local g = cache[p]
  if g then return g end
  local n, k, i = #p, 0, 1
  local anchored = byte(p, 1) == CARET
  if anchored then i = 2 end
  if not raw_find(p, SPECIALS) then k = -1 end
  while k >= 0 and i <= n do
    local c = byte(p, i)
    if c == LP or c == RP then
      i = i + 1
    elseif c == ESC and byte(p, i + 1) == 98 then
      k, i = k + 1, i + 4
    elseif c == ESC and byte(p, i + 1) == 102 then
      i = i + 2
    else
      local ep = i + 1
      if c == ESC then ep = i + 2
      elseif c == LB then
        ep = i + 1
        if byte(p, ep) == CARET then ep = ep + 1 end
        repeat
          local cc = byte(p, ep)
          ep = ep + 1
          if cc == ESC then ep = ep + 1 end
        until ep > n or byte(p, ep) == RB
        ep = ep + 1
      end
      local q = byte(p, ep)
      if q == STAR or q == PLUS or q == MINUS or q == QUEST then
        local j = ep + 1
        while byte(p, j) == RP do j = j + 1 end
        if j <= n and not (j == n and byte(p, j) == DOLLAR) then k = k + 1 end
        ep = ep + 1
      end
      i = ep
    end
  end
  g = k <= 0 and 0 or k + (anchored and 0 or 1)
  if cached >= 512 then cache, cached = {}, 0 end
  cache[p], cached = g, cached + 1
  return g
end
local limit = log(cap)
local function risky(s, p, g)
  local n = #s
  return g > 0 and n > 1 and g * log(n) > limit
end

-- Errors from the Lua matcher are raised at the script's call, as the C ones are.
local function finish(ok, ...)
  if ok then return ... end
  local e = ...
  settle(e)
  -- callers tail-call finish: level 2 is the script's call
  if type(e) == "table" and e[1] == PATTERN then raw_error(e[2], 2) end
  raw_error(e, 0)
end

local out = {}
function out.find(s, p, init, plain)
  if type(s) == "number" then s = tostring(s) end
  if type(p) == "number" then p = tostring(p) end
  if type(s) ~= "string" or type(p) ~= "string" or plain or (init ~= nil and not tointeger(init))
      or not risky(s, p, growth(p)) then
    return C.find(s, p, init, plain)
  end
  return finish(raw_pcall(lua_find, s, p, tointeger(init), true))
end
function out.match(s, p, init)
  if type(s) == "number" then s = tostring(s) end
  if type(p) == "number" then p = tostring(p) end
  if type(s) ~= "string" or type(p) ~= "string" or (init ~= nil and not tointeger(init))
      or not risky(s, p, growth(p)) then
    return C.match(s, p, init)
  end
  return finish(raw_pcall(lua_find, s, p, tointeger(init), false))
end
function out.gmatch(s, p, init)
  if type(s) == "number" then s = tostring(s) end
  if type(p) == "number" then p = tostring(p) end
  local g = type(p) == "string" and growth(p) or 0
  if g > 0 and byte(p, 1) == CARET then g = g + 1 end  -- '^' is literal in gmatch
  if type(s) ~= "string" or type(p) ~= "string" or (init ~= nil and not tointeger(init))
      or not risky(s, p, g) then
    return C.gmatch(s, p, init)
  end
  local ok, nxt = raw_pcall(lua_gmatch, s, p, tointeger(init))
  if not ok then return finish(false, nxt) end
  return function() return finish(raw_pcall(nxt)) end
end
function out.gsub(s, p, repl, n)
  if type(s) == "number" then s = tostring(s) end
  if type(p) == "number" then p = tostring(p) end
  local kind = type(repl)
  if type(s) ~= "string" or type(p) ~= "string" or (n ~= nil and not tointeger(n))
      or (kind ~= "string" and kind ~= "number" and kind ~= "table" and kind ~= "function")
      or not risky(s, p, growth(p)) then
    return C.gsub(s, p, repl, n)
  end
  return finish(raw_pcall(lua_gsub, s, p, repl, tointeger(n)))
end
return out
"""

_LOCATION = re.compile(r"^([^\n:]+):(\d+): ")


_P_FUNCTIONS = ("begin", "compile", "deadline", "go", "go_event", "go_hook", "guard", "host",
                "invoke", "keep", "release", "reset", "restore", "wrap")


class LuaFunction(int):
    """A Lua function the engine keeps for the host, by number."""


class LuaEngine(OwnerThread):
    """A sandboxed Lua 5.4 state. See the module docstring for the sandbox and limits.

    ``max_memory``: bytes the Lua state may allocate. ``time_budget``: seconds each call
    from Python into Lua may run (calls made from inside a call share its deadline).
    ``allow``: the :class:`Capabilities` granted.
    """

    def __init__(self, *, max_memory: int = 32 * MIB, time_budget: float = 0.5,
                 allow: Capabilities | None = None) -> None:
        if max_memory < MIB:
            raise InvalidValueError(f"max_memory must be at least 1 MiB, got {max_memory!r}")
        if not time_budget > 0:
            raise InvalidValueError(f"time_budget must be > 0 seconds, got {time_budget!r}")
        self.max_memory = max_memory
        self.time_budget = time_budget
        self.allow = allow if allow is not None else Capabilities()
        OwnerThread.__init__(self, logger)
        self._lock = threading.RLock()
        self._depth = 0
        self._rt = lua54.LuaRuntime(
            register_eval=False, register_builtins=False, unpack_returned_tuples=True,
            attribute_filter=_deny_attributes, max_memory=max_memory,
        )
        denied = self._rt.table()
        for name, flag in _DENIED.items():
            denied[name] = _denied_message(name, flag, self.allow)
        rep_cap = max(1024, max_memory // 4)
        self._p = self._rt.execute(_SETUP, _now, denied, self.allow.env, rep_cap,
                                   HOOK_COUNT, self._print, BUDGET_MESSAGE, _PATTERNS,
                                   PATTERN_CAP, max_memory)
        self.env = self._p.env
        # Read every P function once, here: lupa misreads table fields looked up from
        # Python while a script's coroutine is running (nested calls), returning stack junk.
        self._fn = types.SimpleNamespace(**{name: self._p[name] for name in _P_FUNCTIONS})
        self.io = IoOps(self.allow)
        """The file, process and network operations the flags grant (see io_ops.py)."""
        weakref.finalize(self, self.io.close_all)
        caps = self._rt.table_from({
            "read": self.io.can_read, "write": self.io.can_write,
            "exec": self.io.exec_allowed, "net": self.io.net_allowed})
        py = self._rt.table_from({name: self._safe(fn)
                                  for name, fn in self.io.lua_functions().items()})
        self._rt.execute(_IO, self._p, caps, py)
        self.convert = LuaConverter(self._rt, self._p.null, guard=self._fn.guard,
                                    budget=lambda: self.time_budget, max_text=max_memory)
        self.function_wrapper: Callable[[Any, str], Any] | None = None
        """Turns Lua functions in host-request arguments into host callables."""
        self._rt.gccollect()

    language = "lua"

    def adopt_function(self, fn: Any, path: str) -> Any:
        """A host callable for the Lua function ``fn`` (via ``function_wrapper``)."""
        if self.function_wrapper is None:
            raise InvalidValueError(f"value at {path} is a Lua function, which cannot be "
                                    "passed to Python here")
        # lupa ties a Lua object to the Lua thread it was read on. A function handed over
        # inside a call was read on that call's coroutine, which is collected when the call
        # ends; using or releasing the object later would touch a dead thread (a crash).
        # So the host never keeps Lua function objects: Lua keeps them, by number.
        return self.function_wrapper(LuaFunction(self._fn.keep(fn)), path)

    def release(self, fn: Any) -> None:
        """Forget a function kept by :meth:`adopt_function` (an unregistered hook)."""
        if isinstance(fn, LuaFunction):
            with self._lock:
                self._fn.release(int(fn))

    # -- bindings ----------------------------------------------------------------------
    @staticmethod
    def _print(text: object) -> None:
        logger.info("%s", text)

    def function(self, fn: Callable[..., Any]) -> Any:
        """A Lua function that calls ``fn`` with the raw Lua arguments. An exception from
        ``fn`` becomes a Lua error carrying its message (never a Python object)."""
        return self._fn.wrap(self._safe(fn))

    @staticmethod
    def _safe(fn: Callable[..., Any]) -> Callable[..., tuple[Any, ...]]:
        """``fn`` returning ``(True, value)``, or ``(False, message)`` on an exception."""

        def safe(*args: Any) -> tuple[Any, ...]:
            try:
                out = fn(*args)
            except LlmspellError as exc:
                return (False, str(exc))
            except Exception as exc:
                return (False, f"{type(exc).__name__}: {exc}")
            return (True, out)

        return safe

    def compile(self, source: str, name: str = "<script>") -> Any:
        """Compile ``source`` (text only) into a function running in the sandbox."""
        with self._lock:
            fn, err = self._fn.compile(source, name)
        if fn is False:
            script, line, message = _split_location(str(err))
            raise ScriptError(f"syntax error: {message}", script=_script(script, name), line=line,
                              hint="fix the Lua syntax at that line")
        return fn

    def run(self, source: str, name: str = "<script>", *,
            time_budget: float | None = None) -> Any:
        """Compile and run ``source``; return its first result as Python data."""
        return self.call(self.compile(source, name), time_budget=time_budget, name=name)

    def call(self, fn: Any, *args: Any, time_budget: float | None = None,
             name: str | None = None) -> Any:
        """Call the Lua function ``fn`` with ``args`` (JSON-safe data, converted) under the
        time budget; return its first result converted to Python data."""
        lua_args = [self.convert.to_lua(a, f"argument {i}") for i, a in enumerate(args, 1)]
        results = self.call_raw(fn, *lua_args, time_budget=time_budget, name=name)
        first = results[0] if results else None
        return self.convert.from_lua(first, "return value")

    def call_raw(self, fn: Any, *args: Any, time_budget: float | None = None,
                 name: str | None = None) -> tuple[Any, ...]:
        """Call ``fn`` with Lua values ``args``; return its raw Lua results. Raises
        :class:`ScriptTimeoutError` past the budget and :class:`ScriptError` on an error."""
        budget = self.time_budget if time_budget is None else time_budget
        with self._lock:
            outer = self._depth == 0
            previous = self._fn.deadline()
            self._fn.begin(time.monotonic() + budget)
            self._depth += 1
            try:
                out = self._fn.invoke(fn, *args)
                if not isinstance(out, tuple):
                    out = (out,)
                if out[0]:
                    return tuple(out[1:])
                raise self._error(out[1:], name, budget)
            except lua54.LuaMemoryError:
                raise self._out_of_memory(name) from None
            except lua54.LuaError as exc:
                raise self._host_failure(exc, name, budget) from None
            finally:
                self._depth -= 1
                if outer:
                    self._fn.reset()
                else:
                    self._fn.restore(previous)

    # -- calls that may stop at host requests (see protocol.py) -------------------------
    def start(self, fn: Any, args: tuple[Any, ...], *, name: str | None = None,
              time_budget: float | None = None) -> Outcome:
        """Call ``fn`` with ``args`` (Python data) as a resumable call under the budget."""
        budget = self.time_budget if time_budget is None else time_budget
        lua_args = [self.convert.to_lua(a, f"argument {i}") for i, a in enumerate(args, 1)]
        target = int(fn) if isinstance(fn, LuaFunction) else fn
        return self._step(0, target, lua_args, budget, budget, name)

    def start_hook(self, fn: Any, ctx: HookContext, *, name: str | None = None,
                   time_budget: float | None = None) -> Outcome:
        """:meth:`start` with the script's view of the hook context ``ctx`` as the one
        argument (the Lua side builds the tables from the fields)."""
        fields = self.convert.hook_fields(ctx)
        if fields is None:  # the checked conversion names what it refuses
            return self.start(fn, (hook_context_view(ctx),), name=name,
                              time_budget=time_budget)
        budget = self.time_budget if time_budget is None else time_budget
        target = int(fn) if isinstance(fn, LuaFunction) else fn
        return self._step(0, target, fields, budget, budget, name, self._fn.go_hook)

    def start_event(self, fn: Any, event: UniversalEvent, *, name: str | None = None,
                    time_budget: float | None = None) -> Outcome:
        """:meth:`start` with the script's view of ``event`` as the one argument."""
        fields = self.convert.event_fields(event)
        if fields is None:
            return self.start(fn, (event_view(event),), name=name, time_budget=time_budget)
        budget = self.time_budget if time_budget is None else time_budget
        target = int(fn) if isinstance(fn, LuaFunction) else fn
        return self._step(0, target, fields, budget, budget, name, self._fn.go_event)

    def resume(self, pending: Pending, replies: list[Reply]) -> Outcome:
        """Continue the call with the reply to its one request (the budget left is kept)."""
        call, left, budget, name = pending.state
        reply = replies[0]
        if reply.ok:
            try:
                value = self.convert.to_lua(reply.value, "reply")
            except InvalidValueError as exc:
                # A value no script can hold (a lone surrogate, say): the call raises in the
                # script, which may catch it, as if the operation had failed.
                reply = failed_reply(reply.id, exc)
        if not reply.ok:
            value = str(reply.value)
        return self._step(call, None, [reply.ok, value], left, budget, name)

    def time_left(self, pending: Pending) -> float:
        """Seconds of script time the call stopped at ``pending`` has left."""
        return float(pending.state[1])

    def charge(self, pending: Pending, seconds: float) -> None:
        """Spend ``seconds`` of that call's budget (its callbacks' script time)."""
        call, left, budget, name = pending.state
        pending.state = (call, left - seconds, budget, name)

    def _step(self, call: int, fn: Any, args: Sequence[Any], left: float, budget: float,
              name: str | None, go: Any = None) -> Outcome:
        with self._lock:
            outer = self._depth == 0
            self._depth += 1
            try:
                out = (go or self._fn.go)(call, fn, time.monotonic() + left, outer, *args)
            except lua54.LuaMemoryError:
                if outer:
                    self._fn.reset()
                raise self._out_of_memory(name) from None
            except lua54.LuaError as exc:
                if outer:
                    self._fn.reset()
                raise self._host_failure(exc, name, budget) from None
            finally:
                self._depth -= 1
        kind, call = out[0], int(out[1])
        if kind == "done" and out[2]:
            return Finished(self.convert.from_lua(out[3], "return value"))
        if kind == "call":
            remaining = max(0.0, float(out[2]))
            op, count = str(out[3]), int(out[4])
            values = list(out[5:5 + count]) + [None] * (count - len(out[5:]))
            adopt = self.adopt_function if op in CALLBACK_OPS else None
            try:
                converted = tuple(self.convert.from_lua(v, f"{op} argument {i}", adopt)
                                  for i, v in enumerate(values, 1))
            except InvalidValueError as exc:  # a bad argument fails the call, catchably
                return self._step(call, None, [False, str(exc)], remaining, budget, name)
            return Pending([Request(0, op, converted)], (call, remaining, budget, name))
        if kind == "yield":
            raise ScriptError("coroutine.yield() called outside a coroutine",
                              script=name, hint="yield only inside coroutine.create/wrap")
        raise self._error(out[3:], name, budget)

    def host_function_factory(self) -> Any:
        """The Lua function ``host(op)``: it makes a Lua function that asks the host for
        operation ``op`` by yielding the call's coroutine (see protocol.py)."""
        return self._fn.host

    def _error(self, info: tuple[Any, ...], name: str | None,
               budget: float) -> ScriptError | KeyboardInterrupt:
        """``info``: the error value, then whether the budget ran out and where, then the
        message and traceback the error handler kept (see ``report`` in the setup)."""
        err, stopped, src, line, message_text, tb = (tuple(info) + (None,) * 6)[:6]
        if stopped == "memory":
            return self._out_of_memory(name)
        if stopped == "interrupt":
            return KeyboardInterrupt()
        if stopped:
            return ScriptTimeoutError(
                f"the script ran past its time budget of {budget:g} s and was stopped",
                script=_script(None if src is None else str(src), name),
                line=None if line is None else int(line),
                hint="look for an endless loop, or raise the time budget",
            )
        if message_text is None:
            text = str(err)
            if "not enough memory" in text:
                return self._out_of_memory(name)
            script, at, message = _split_location(text)
            return ScriptError(message, script=_script(script, name), line=at)
        script, at, message = _split_location(str(message_text))
        return ScriptError(message, script=_script(script, name), line=at,
                           traceback=_traceback(str(tb), script, name))

    @staticmethod
    def _host_failure(exc: Exception, name: str | None, budget: float) -> ScriptError:
        """An error that escaped the host's own Lua (the budget is never raised there, see
        ``bookkeeping``; this keeps the error typed should it ever happen)."""
        if BUDGET_MESSAGE in str(exc):
            return ScriptTimeoutError(
                f"the script ran past its time budget of {budget:g} s and was stopped",
                script=name, hint="look for an endless loop, or raise the time budget")
        return ScriptError(f"the script engine failed: {str(exc).splitlines()[0]}",
                           script=name)

    def _out_of_memory(self, name: str | None) -> ScriptError:
        self._rt.gccollect()
        return ScriptError(
            "out of memory", script=name,
            hint=f"the script went past its memory limit of {self.max_memory // MIB} MiB",
        )

    def memory_used(self) -> int:
        """Bytes the Lua state holds now."""
        return int(self._rt.get_memory_used())


def _now() -> float:
    """The budget's clock. A Python function, not ``time.monotonic`` itself: calling
    Python code is what lets a pending Ctrl-C (KeyboardInterrupt) surface while Lua runs."""
    return time.monotonic()


def _script(found: str | None, name: str | None) -> str | None:
    """The script to name in an error: the one Lua reports, unless Lua cut it short
    (it keeps the first 59 characters of a chunk name) and the caller knows the whole."""
    if found and name and len(found) < len(name) and name.startswith(found):
        return name
    return found or name


def _traceback(text: str, found: str | None, name: str | None) -> str:
    """The script's own frames: no frames of the host's Lua plumbing, whole names."""
    whole = _script(found, name)
    lines = [line for line in text.split("\n")
             if '[string "<python>"]' not in line and "in function 'xpcall'" not in line
             and not line.lstrip().startswith("<globals>:")]
    out = "\n".join(lines)
    if found and whole and whole != found:
        out = out.replace(found + ":", whole + ":")
    return out


def _split_location(text: str) -> tuple[str | None, int | None, str]:
    """``"name:12: message"`` -> ``("name", 12, "message")``."""
    first = text.split("\nstack traceback:", 1)[0]
    match = _LOCATION.match(first)
    if match is None:
        return None, None, first
    return match.group(1), int(match.group(2)), first[match.end():]
