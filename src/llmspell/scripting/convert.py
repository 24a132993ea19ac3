"""The one place where values cross between Python and a script language.

JavaScript (:class:`JsConverter`) exchanges JSON text with the engine:

* ``None`` <-> ``null``; ``undefined`` becomes ``None`` at the top level and in arrays and
  is left out of objects (JSON's own rule). ``bool``, ``str``, lists and dicts (string keys)
  map one to one.
* JavaScript has one number type: ints within +-2**53 go across exactly (larger ones are
  refused, they would silently lose digits), a float with no fraction within that range
  comes back as an ``int`` (``1.0`` -> ``1``) and a number beyond it as a ``float``. NaN
  and infinities are refused both ways.
* Functions become ``{"__fn": n}`` references on the way out (the host turns them into
  callables); every other non-JSON value is refused with the path or key that held it.

Lua (:class:`LuaConverter`), both directions JSON-shaped:

* ``None`` <-> ``nil`` at the top level. Inside a list or dict, ``None`` becomes the
  ``JSON.null`` sentinel (Lua tables cannot hold ``nil``), and ``JSON.null`` becomes ``None``
  again, so positions in lists and keys in dicts survive the round trip.
* ``bool``, ``str``, ``int`` and ``float`` map to Lua booleans, strings, integers and floats;
  Lua 5.4 keeps integers and floats apart, so ``1`` stays an ``int`` and ``1.0`` a ``float``.
  Ints outside Lua's 64-bit range and non-finite floats are refused.
* A ``dict`` (string keys) becomes a table; a ``list`` or ``tuple`` becomes a sequence table
  with keys ``1..n``. Lists are always *copied*: Lua never holds a reference to a Python list.
* A Lua table whose keys are exactly ``1..n`` becomes a ``list``; any other table with string
  keys becomes a ``dict``.
* **The empty-table rule**: an empty Lua table is ambiguous and becomes ``{}`` (an empty
  dict), so ``[]`` sent to Lua comes back as ``{}``. Code that needs a list should treat an
  empty dict as an empty list.
* Functions, coroutines, userdata (including Python objects), tables with non-string keys
  that are not sequences, tables nested deeper than :data:`MAX_DEPTH` and tables that
  contain themselves (cycles) are refused with :class:`~llmspell.errors.InvalidValueError`
  naming the path (``value.a[2]``, with Lua's 1-based indices).
* A table reachable along several paths (shared) is converted once per path, so sharing
  can multiply the size of the result: a conversion stops with ``InvalidValueError`` past
  :data:`MAX_NODES` values. It runs under the engine's time budget
  (:class:`~llmspell.errors.ScriptTimeoutError`) and memory limit
  (:class:`~llmspell.errors.ScriptError`, "out of memory").
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
from lupa import lua54  # type: ignore[import-untyped]

from llmspell.core.errors import InvalidValueError, ScriptError, ScriptTimeoutError
from llmspell.core.values import lone_surrogate_error

__all__ = ["JS_SAFE_INT", "MAX_DEPTH", "MAX_NODES", "JsConverter", "LuaConverter"]

MAX_DEPTH = 100
"""How deep a Lua table may nest before it is refused."""
MAX_NODES = 1_000_000
"""How many values (tables and scalars, a shared table once per path) one conversion from
Lua may produce."""
SMALL_NODES = 10_000
"""Values up to this size are converted without setting up the time budget (bounded work)."""

_LUA_MIN = -(2**63)
_LUA_MAX = 2**63 - 1

# Classifies one table in a single call: "null", or "seq"/"map"/"bad" with details.
# It runs outside the time budget, so it must not run script code: raw `next`, and no
# tostring() of anything but numbers (a key's __tostring could loop forever).
_INSPECT = """
local null = ...
local format = string.format
local function name(k) return math.type(k) and tostring(k) or "(" .. type(k) .. ")" end
local function classify(t)
  local n, maxk = 0, 0
  for k in next, t do
    n = n + 1
    if math.type(k) == "integer" and k > 0 then
      if k > maxk then maxk = k end
    elseif type(k) ~= "string" then
      return "bad", name(k)
    end
  end
  if n > 0 and maxk == n then return "seq", n end
  if maxk > 0 then
    for k in next, t do
      if type(k) ~= "string" then return "bad", name(k) end
    end
  end
  return "map", n
end
-- shape, detail, and the table's address (its identity: "%p" ignores __tostring)
return function(t)
  if rawequal(t, null) then return "null", 0, "" end
  local shape, detail = classify(t)
  return shape, detail, format("%p", t)
end
"""

# The fast way out of Lua for plain tables: one call encodes the whole tree as JSON text,
# which msgspec decodes (about half the cost of reading it entry by entry through lupa).
# It gives up (nil) on anything unusual: functions, userdata, non-string keys, holes,
# invalid UTF-8, non-finite numbers, deep nesting; the entry-by-entry path then produces
# the exact value or the error that names the path. Floats always carry a "." or an
# exponent, so they come back as floats. It returns nil and a reason when it finds a cycle
# ("cycle") or more than `limit` values ("size"). Small values are encoded directly; past
# SMALL_NODES values the host runs it again through `guard`, under the budget.
_ENCODE = r"""
local null, guard = ...
local concat, format, gsub, find, mtype, utf8len = table.concat, string.format, string.gsub,
  string.find, math.type, utf8.len
local escapes = {['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f',
                 ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t'}
local function escape(c) return escapes[c] or format('\\u%04x', c:byte()) end
local huge = math.huge
local function str(s)
  if not find(s, '[%c"\\\128-\255]') then return '"' .. s .. '"' end
  if not utf8len(s) then return nil end
  return '"' .. gsub(s, '[%c"\\]', escape) .. '"'
end
local count, limit, onpath, reason = 0, 0, {}, nil
local encode
encode = function(v, depth)
  local t = type(v)
  if t == "string" then return str(v) end
  if t == "number" then
    if mtype(v) == "integer" then return format("%d", v) end
    if v ~= v or v == huge or v == -huge then return nil end
    local text = format("%.17g", v)
    if not find(text, "[%.eE]") then text = text .. ".0" end
    return text
  end
  if t == "boolean" then return v and "true" or "false" end
  if t ~= "table" or depth > 100 then return nil end
  if rawequal(v, null) then return "null" end
  if onpath[v] then reason = "cycle"; return nil end
  local n, maxk = 0, 0
  for k in next, v do
    n = n + 1
    if mtype(k) == "integer" and k > 0 then
      if k > maxk then maxk = k end
    elseif type(k) ~= "string" then
      return nil
    end
  end
  count = count + n + 1
  if count > limit then reason = "size"; return nil end
  onpath[v] = true
  local parts = {}
  if n > 0 and maxk == n then
    for i = 1, n do
      local item = encode(v[i], depth + 1)
      if item == nil then return nil end
      parts[i] = item
    end
    onpath[v] = nil
    return "[" .. concat(parts, ",") .. "]"
  end
  if maxk > 0 then return nil end
  local i = 0
  for k, item in next, v do
    local key, value = str(k), encode(item, depth + 1)
    if key == nil or value == nil then return nil end
    i = i + 1
    parts[i] = key .. ":" .. value
  end
  onpath[v] = nil
  return "{" .. concat(parts, ",") .. "}"
end
local function top(v, most)
  count, limit, reason = 0, most, nil
  local text = encode(v, 0)
  -- a finished encoding leaves `onpath` empty; one that gave up may leave entries
  if text == nil then onpath = {}; return nil, reason end
  return text
end
if guard == nil then  -- a converter without an engine: no budget
  local pcall = pcall
  guard = function(d, f, ...) return false, pcall(f, ...) end
end
return top, function(v, d, most) return guard(d, top, v, most) end
"""


def _plain(value: Any, depth: int) -> bool:
    """True when the dict or list ``value`` converts the same way through lupa's
    ``table_from``: only strings, booleans, ints in Lua's range, finite floats, str-keyed
    dicts and lists, and no ``None`` anywhere (``table_from`` would turn it into a hole).
    Scalars are checked inline: this runs for every hook call."""
    if depth >= MAX_DEPTH:
        return False
    if type(value) is dict:
        for key in value:
            if type(key) is not str:
                return False
        items = value.values()
    else:
        items = value
    for item in items:
        kind = type(item)
        if kind is str or kind is bool:
            continue
        if kind is int:
            if not _LUA_MIN <= item <= _LUA_MAX:
                return False
        elif kind is float:
            if not math.isfinite(item):
                return False
        elif kind is dict or kind is list:
            if not _plain(item, depth + 1):
                return False
        else:
            return False
    return True


_BAD = object()


def _with_nulls(value: Any, depth: int, null: Any) -> Any:
    """A copy of the dict or list ``value`` with every ``None`` replaced by ``null``, when
    everything else in it is what :func:`_plain` accepts; None otherwise (the checked
    path then converts it, or names what it refuses)."""
    if depth >= MAX_DEPTH:
        return None
    if type(value) is dict:
        out: dict[str, Any] = {}
        for key, item in value.items():
            if type(key) is not str:
                return None
            converted = _null_item(item, depth, null)
            if converted is _BAD:
                return None
            out[key] = converted
        return out
    items = []
    for item in value:
        converted = _null_item(item, depth, null)
        if converted is _BAD:
            return None
        items.append(converted)
    return items


def _null_item(item: Any, depth: int, null: Any) -> Any:
    kind = type(item)
    if item is None:
        return null
    if kind is str or kind is bool:
        return item
    if kind is int:
        return item if _LUA_MIN <= item <= _LUA_MAX else _BAD
    if kind is float:
        return item if math.isfinite(item) else _BAD
    if kind is dict or kind is list:
        nested = _with_nulls(item, depth + 1, null)
        return _BAD if nested is None else nested
    return _BAD


_FAST_NODES = 64
"""The most values :func:`_small_map` reads before leaving a table to the encoder."""
_FAST_DEPTH = 8
_FAST_TEXT = 1024 * 1024
"""The most string bytes :func:`_small_map` copies (a string held under many keys is
copied once per key; the encoder, bounded by the Lua heap, decides past this)."""


def _small_map(table: Any, depth: int, seen: list[int]) -> dict[str, Any] | None:
    """A small Lua table of string keys read entry by entry from Python (cheaper than
    encoding it in Lua for the tables hooks usually return), or None as soon as anything
    is not plainly a JSON object: a key that is not a str (sequences, invalid UTF-8), an
    empty table (ambiguous, and ``JSON.null`` is one), a value other than a str, an int, a
    finite float, a bool or such a table, more than :data:`_FAST_NODES` values or
    :data:`_FAST_DEPTH` levels. The encoder then decides, exactly as before."""
    out: dict[str, Any] = {}
    for key, item in table.items():
        seen[0] += 1
        if type(key) is not str or seen[0] > _FAST_NODES:
            return None
        kind = type(item)
        if kind is str:
            seen[1] += len(item)
            if seen[1] > _FAST_TEXT:
                return None
            out[key] = item
        elif kind is bool or kind is int:
            out[key] = item
        elif kind is float:
            if item - item != 0.0:  # NaN or an infinity
                return None
            out[key] = item
        elif depth < _FAST_DEPTH and lua54.lua_type(item) == "table":
            nested = _small_map(item, depth + 1, seen)
            if nested is None:
                return None
            out[key] = nested
        else:
            return None
    return out or None


def _stopped(reason: str, path: str) -> BaseException:
    """The error for a conversion the guard or a limit stopped (``reason``: "budget",
    "interrupt", "memory", "cycle", "size", or a Lua error message)."""
    if reason == "budget":
        return ScriptTimeoutError(
            f"converting the value at {path} to Python ran past the script time budget",
            hint="return or pass smaller values (shared tables are copied once per path)")
    if reason == "interrupt":
        return KeyboardInterrupt()
    if reason == "memory":
        return ScriptError(
            f"out of memory converting the value at {path} to Python",
            hint="return or pass smaller values (shared tables are copied once per path)")
    if reason == "cycle":
        return InvalidValueError(
            f"value at {path} contains itself (a cycle), which cannot be converted",
            hint="pass a tree of tables: JSON has no references")
    if reason == "size":
        return InvalidValueError(
            f"value at {path} has more than {MAX_NODES} values (a table shared along many "
            "paths counts once per path)",
            hint="return or pass smaller values")
    return ScriptError(f"converting the value at {path} to Python failed: {reason}")


def _bad(path: str, what: str) -> InvalidValueError:
    return InvalidValueError(
        f"value at {path} is a Lua {what}, which cannot be passed to Python",
        hint="pass only nil, booleans, numbers, strings and tables of them (JSON-safe data)",
    )


class _Walk:
    """The state of one entry-by-entry conversion: values so far, tables on the current
    path (by address), the deadline."""

    __slots__ = ("count", "deadline", "on_path", "text")

    def __init__(self, deadline: float) -> None:
        self.count = 0
        self.text = 0
        self.deadline = deadline
        self.on_path: set[str] = set()


class LuaConverter:
    """Converts values for one Lua runtime. ``null`` is that runtime's ``JSON.null``.

    ``guard`` (the engine's ``P.guard``) runs the Lua side of a conversion under a
    deadline; ``budget()`` gives the seconds a conversion may take (None: no limit)."""

    def __init__(self, runtime: Any, null: Any, *, guard: Any = None,
                 budget: Callable[[], float] | None = None,
                 max_text: float = math.inf) -> None:
        self._rt = runtime
        self._max_text = max_text
        self.null = null
        self._budget = budget
        self._inspect = runtime.execute(_INSPECT, null)
        self._encode, self._encode_guarded = runtime.execute(_ENCODE, null, guard)

    # -- Python -> Lua -------------------------------------------------------------------
    def to_lua(self, value: object, path: str = "value") -> Any:
        """A Lua value for JSON-safe ``value`` (lists copied into new tables)."""
        try:
            return self._to_lua_fast(value, path)
        except UnicodeEncodeError:  # lupa encodes strings as UTF-8
            raise lone_surrogate_error(value, path) from None

    def _to_lua_fast(self, value: object, path: str) -> Any:
        if type(value) is str:
            if not value.isascii():
                value.encode()  # a lone surrogate fails here, not in the engine
            return value
        if type(value) in (dict, list):
            if _plain(value, 0):
                # lupa builds the whole tree in C: about half the cost of the checked path
                return self._rt.table_from(value, recursive=True)
            # Plain but for None values (an event's unset metadata): the same, with the
            # JSON.null sentinel put in their place first.
            swapped = _with_nulls(value, 0, self.null)
            if swapped is not None:
                return self._rt.table_from(swapped, recursive=True)
        return self._to_lua(value, path, top=True)

    def _field(self, value: Any) -> Any:
        """One field of a view (one level down in it) as :meth:`to_lua` converts it there,
        or ``_BAD`` when the checked path has to decide (and name what it refuses)."""
        kind = type(value)
        if kind is str or kind is bool:
            return value
        if value is None:
            return self.null
        if kind is int:
            return value if _LUA_MIN <= value <= _LUA_MAX else _BAD
        if kind is float:
            return value if value - value == 0.0 else _BAD
        if kind is dict or kind is list:
            if _plain(value, 1):
                return self._rt.table_from(value, recursive=True)
            swapped = _with_nulls(value, 1, self.null)
            if swapped is not None:
                return self._rt.table_from(swapped, recursive=True)
        return _BAD

    def hook_fields(self, ctx: Any) -> tuple[Any, ...] | None:
        """The fields of ``hook_context_view(ctx)`` for the engine's table builder
        (``point, correlation_id, component type, component name, language, metadata,
        data``; an empty metadata or data is None: the builder makes the empty table), or
        None when a value needs the checked conversion of the whole view."""
        component = ctx.component
        name = component.name
        correlation = ctx.correlation_id
        if type(name) is not str or type(correlation) is not str:
            return None
        metadata = ctx.metadata
        data = ctx.data
        meta = None
        if metadata:
            meta = self._field(dict(metadata))
            if meta is _BAD:
                return None
        if type(data) is not dict:
            return None
        lua_data = None
        if data:
            lua_data = self._field(data)
            if lua_data is _BAD:
                return None
        return (str(ctx.point), correlation, str(component.type), name, str(ctx.language),
                meta, lua_data)

    def event_fields(self, event: Any) -> tuple[Any, ...] | None:
        """The fields of ``event_view(event)`` for the engine's table builder (``id, type,
        data, language, timestamp, sequence, correlation_id, source, target, priority,
        tags``; no tags is None: the builder makes the two empty tables), or None when a
        value needs the checked conversion of the whole view."""
        m = event.metadata
        tags = None
        if m.tags:
            tags = self._field(list(m.tags))
            if tags is _BAD:
                return None
        fields: tuple[Any, ...] = (event.id, event.event_type, event.data, str(event.language),
                  event.timestamp, event.sequence, m.correlation_id, m.source, m.target,
                  m.priority)
        out = []
        null = self.null
        for value in fields:  # the common scalars inline (what _field answers for them)
            kind = type(value)
            if kind is str:
                out.append(value)
            elif value is None:
                out.append(null)
            elif (kind is int and _LUA_MIN <= value <= _LUA_MAX) or \
                    (kind is float and value - value == 0.0):
                out.append(value)
            else:
                converted = self._field(value)
                if converted is _BAD:
                    return None
                out.append(converted)
        out.append(tags)
        return tuple(out)

    def _to_lua(self, value: object, path: str, *, top: bool = False) -> Any:
        if value is None:
            return None if top else self.null
        if isinstance(value, bool | str):
            return value
        if isinstance(value, int):
            if not _LUA_MIN <= value <= _LUA_MAX:
                raise InvalidValueError(
                    f"value at {path} is an int outside Lua's 64-bit range",
                    hint="pass it as a string or a float",
                )
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidValueError(f"value at {path} is a non-finite float ({value!r})")
            return value
        table = self._rt.table()
        if isinstance(value, list | tuple):
            for i, item in enumerate(value, 1):
                table[i] = self._to_lua(item, f"{path}[{i}]")
            return table
        if isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise InvalidValueError(f"key {key!r} at {path} is not a string")
                table[key] = self._to_lua(item, f"{path}.{key}")
            return table
        raise InvalidValueError(
            f"value at {path} is a {type(value).__name__}, which cannot be passed to Lua",
            hint="use dict (str keys), list, str, int, float, bool or None",
        )

    # -- Lua -> Python -------------------------------------------------------------------
    def from_lua(self, value: object, path: str = "value",
                 on_function: Callable[[Any, str], Any] | None = None) -> Any:
        """The JSON-safe Python value of a Lua value (see the module docstring).

        ``on_function(fn, path)``, when given, converts Lua functions (the host uses it
        for callbacks such as a workflow step's ``execute``); without it they are refused.
        """
        if lua54.lua_type(value) != "table":
            return self._from_lua(value, path, 0, on_function, _Walk(math.inf))
        try:
            small = _small_map(value, 0, [0, 0])
        except (lua54.LuaError, UnicodeDecodeError):  # the encoder's path says what failed
            small = None
        if small is not None:
            return small
        try:
            text = self._encode(value, SMALL_NODES)
            if type(text) is str:
                return msgspec.json.decode(text)
            deadline = math.inf if self._budget is None else time.monotonic() + self._budget()
            reason = text[1] if type(text) is tuple else None
            if reason == "size":  # a big one: again, under the budget
                stop, ok, text, reason = (*self._encode_guarded(value, deadline, MAX_NODES),
                                          None, None)[:4]
                if stop or not ok:
                    raise _stopped(str(stop) if stop else str(text), path)
                if type(text) is str:
                    return msgspec.json.decode(text)
        except lua54.LuaMemoryError:
            raise _stopped("memory", path) from None
        if reason is not None:
            raise _stopped(str(reason), path)
        return self._from_lua(value, path, 0, on_function, _Walk(deadline))

    def _from_lua(self, value: object, path: str, depth: int,
                  on_function: Callable[[Any, str], Any] | None, walk: _Walk) -> Any:
        if isinstance(value, str | bytes):
            # one Lua string held in many places becomes one Python str per place: the
            # copies together may not outgrow the engine's heap limit
            walk.text += len(value)
            if walk.text > self._max_text:
                raise InvalidValueError(
                    f"value at {path} holds more than {self._max_text:.0f} bytes of strings "
                    "(a string held in several places is copied once per place)",
                    hint="return or pass smaller values")
        if value is None or isinstance(value, bool | int | str):
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidValueError(
                    f"value at {path} is a non-finite number ({value!r})",
                    hint="JSON has no NaN or infinity; use nil or a string",
                )
            return value
        if isinstance(value, bytes):
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidValueError(
                    f"value at {path} is a string that is not valid UTF-8",
                    hint="pass text, or encode binary data (e.g. as hex)",
                ) from None
        kind = lua54.lua_type(value)
        if kind == "function" and on_function is not None:
            return on_function(value, path)
        if kind != "table":
            raise _bad(path, kind or f"userdata ({type(value).__name__})")
        if depth >= MAX_DEPTH:
            raise InvalidValueError(f"value at {path} nests deeper than {MAX_DEPTH} tables")
        if time.monotonic() > walk.deadline:
            raise _stopped("budget", path)
        shape, detail, address = self._inspect(value)
        if shape == "null":
            return None

        if shape == "bad":
            raise InvalidValueError(
                f"table at {path} has the key {detail}, which is neither a string nor part "
                "of a 1..n sequence",
                hint="use string keys, or a list without holes",
            )
        if address in walk.on_path:
            raise _stopped("cycle", path)
        walk.count += int(detail) + 1
        if walk.count > MAX_NODES:
            raise _stopped("size", path)
        walk.on_path.add(address)
        if shape == "seq":
            table: Any = value
            items: Any = [self._from_lua(table[i], f"{path}[{i}]", depth + 1, on_function, walk)
                          for i in range(1, int(detail) + 1)]
        else:
            items = {key: self._from_lua(item, f"{path}.{key}", depth + 1, on_function, walk)
                     for key, item in self._items(value, path)}
        walk.on_path.discard(address)
        return items

    @staticmethod
    def _items(table: Any, path: str) -> list[tuple[str, Any]]:
        try:
            return [(k.decode("utf-8") if isinstance(k, bytes) else k, v)
                    for k, v in table.items()]
        except UnicodeDecodeError:
            raise InvalidValueError(f"table at {path} has a key that is not valid UTF-8") \
                from None


JS_SAFE_INT = 2**53
"""Integers beyond +-this cannot cross into JavaScript without losing digits."""


def _js_plain(value: Any, depth: int) -> bool:
    """True when ``value`` passes :meth:`JsConverter._check` (exact types, no paths)."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(-JS_SAFE_INT <= value <= JS_SAFE_INT)
    if kind is float:
        return bool(value - value == 0.0)
    if depth >= MAX_DEPTH:
        return False
    if kind is dict:
        for key in value:
            if type(key) is not str:
                return False
        items: Any = value.values()
    elif kind is list or kind is tuple:
        items = value
    else:
        return False
    for item in items:  # scalars inline (what the call for each would answer)
        kind = type(item)
        if kind is str or kind is bool or item is None:
            continue
        if kind is int:
            if not -JS_SAFE_INT <= item <= JS_SAFE_INT:
                return False
        elif kind is float:
            if item - item != 0.0:
                return False
        elif not _js_plain(item, depth + 1):
            return False
    return True


def _js_restorable(value: Any, depth: int) -> bool:
    """True when decoded JSON holds something :meth:`JsConverter._restore` changes: a
    float, an int beyond 2**53, or a ``{"__fn": n}`` reference (or nests too deep to say)."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return False
    if kind is int:
        return bool(abs(value) > JS_SAFE_INT)
    if kind is float or depth >= MAX_DEPTH:
        return True
    if kind is dict:
        if "__fn" in value:
            return True
        return any(_js_restorable(item, depth + 1) for item in value.values())
    if kind is list:
        return any(_js_restorable(item, depth + 1) for item in value)
    return True


class JsConverter:
    """Encodes Python data as JSON for the JavaScript engine and decodes what it sends."""

    def encode(self, value: object, path: str = "value") -> str:
        """JSON text for ``value`` (checked: see the module docstring)."""
        if not _js_plain(value, 0):  # the walk that names the bad value's path
            self._check(value, path, 0)
        try:
            return msgspec.json.encode(value).decode()
        except UnicodeEncodeError:
            raise lone_surrogate_error(value, path) from None

    def _check(self, value: object, path: str, depth: int) -> None:
        if value is None or isinstance(value, bool | str):
            return
        if isinstance(value, int):
            if not -JS_SAFE_INT <= value <= JS_SAFE_INT:
                raise InvalidValueError(
                    f"value at {path} is an int beyond JavaScript's exact range (2**53)",
                    hint="pass it as a string")
            return
        if isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidValueError(f"value at {path} is a non-finite float ({value!r})")
            return
        if depth >= MAX_DEPTH:
            raise InvalidValueError(f"value at {path} nests deeper than {MAX_DEPTH} levels")
        if isinstance(value, list | tuple):
            for i, item in enumerate(value):
                self._check(item, f"{path}[{i}]", depth + 1)
            return
        if isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise InvalidValueError(f"key {key!r} at {path} is not a string")
                self._check(item, f"{path}.{key}", depth + 1)
            return
        raise InvalidValueError(
            f"value at {path} is a {type(value).__name__}, which cannot be passed to JavaScript",
            hint="use dict (str keys), list, str, int, float, bool or None",
        )

    def encode_view(self, view: dict[str, Any]) -> str:
        """:meth:`encode` of ``[view]`` (the arguments of a call with a hook context's or an
        event's view): only the values a view takes from the caller are walked, the rest are
        strings by construction; anything else takes the checked path."""
        for value in view.values():  # (the view is at depth 1 of the arguments)
            if type(value) is not str and not _js_plain(value, 2):
                return self.encode([view], "arguments")
        try:
            return msgspec.json.encode([view]).decode()
        except UnicodeEncodeError:
            raise lone_surrogate_error([view], "arguments") from None

    def hook_fields(self, ctx: Any) -> tuple[str, ...] | None:
        """The fields of ``hook_context_view(ctx)`` for the engine's builder: the strings
        as they are (ASCII only: the binding passes nothing else exactly), metadata and
        data as JSON ("" when empty); None when the checked encoding of the whole view has
        to decide."""
        component = ctx.component
        name = component.name
        correlation = ctx.correlation_id
        if type(name) is not str or type(correlation) is not str or not name.isascii() \
                or not correlation.isascii():
            return None
        metadata = ctx.metadata
        data = ctx.data
        meta = ""
        try:
            if metadata:
                if not _js_plain(metadata, 2):
                    return None
                meta = msgspec.json.encode(metadata).decode()
            if type(data) is not dict:
                return None
            text = ""
            if data:
                if not _js_plain(data, 2):
                    return None
                text = msgspec.json.encode(data).decode()
        except UnicodeEncodeError:
            return None  # the checked encoding of the whole view names it
        point, kind, language = str(ctx.point), str(component.type), str(ctx.language)
        if not (point.isascii() and kind.isascii() and language.isascii()):
            return None
        return (point, correlation, kind, name, language, meta, text)

    def restore(self, value: Any, on_function: Callable[[Any, str], Any] | None) -> Any:
        """Decoded JSON with the engine's numbers and ``{"__fn": n}`` references restored
        (what :meth:`decode` does after decoding)."""
        if not _js_restorable(value, 0):
            return value
        return self._restore(value, "value", on_function)

    def decode(self, text: str, on_function: Callable[[Any, str], Any] | None = None) -> Any:
        """The Python value of JSON ``text`` from the engine; ``{"__fn": n}`` references
        go through ``on_function(n, path)`` (without it they are refused)."""
        value = msgspec.json.decode(text.encode())
        if not _js_restorable(value, 0):
            return value  # nothing to restore: the common case, no paths built
        return self._restore(value, "value", on_function)

    def _restore(self, value: Any, path: str,
                 on_function: Callable[[Any, str], Any] | None) -> Any:
        if isinstance(value, float) and value.is_integer() and abs(value) <= JS_SAFE_INT:
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > JS_SAFE_INT:
            return float(value)  # JS printed a large double without an exponent
        if isinstance(value, list):
            return [self._restore(v, f"{path}[{i}]", on_function) for i, v in enumerate(value)]
        if isinstance(value, dict):
            if len(value) == 1 and "__fn" in value and isinstance(value["__fn"], int):
                if on_function is None:
                    raise InvalidValueError(
                        f"value at {path} is a JavaScript function, which cannot be passed "
                        "to Python here", hint="pass only JSON-safe data")
                return on_function(value["__fn"], path)
            return {k: self._restore(v, f"{path}.{k}", on_function) for k, v in value.items()}
        return value
