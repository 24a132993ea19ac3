"""Sandbox escape audit of the Lua and JavaScript engines: what got through (each fixed,
each test failing on the code before the fix), and a compact list of attempts the sandbox
already refuses, kept so they stay refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llmspell.errors import InvalidValueError, ScriptError, ScriptTimeoutError
from llmspell.runtime import System, SystemConfig
from llmspell.scripting import Capabilities, LuaEngine, ScriptHost
from tests.scripting.child import run_in_child

# One 1 MiB Lua string held in 200 places: 1 MiB of the script's heap, 200 MiB as Python
# strs. Before the fix every place became its own Python str, so a script under a 32 MiB
# limit could make the host allocate without bound (1M places of an 8 MiB string).
_SHARED = "local s = ('x'):rep(1024 * 1024) local t = {} for i = 1, 200 do t[i] = s end "


@pytest.fixture
def host() -> Iterator[ScriptHost]:
    system = System(SystemConfig(store="memory"))
    h = ScriptHost(system, time_budget=2.0)
    yield h
    h.close()


def test_a_repeated_string_in_callback_arguments_is_not_copied_past_the_limit(
        host: ScriptHost) -> None:
    # a function first makes the JSON encoder give up; the entry-by-entry walk then
    # copied every place of the string into Python
    source = _SHARED + ("table.insert(t, 1, function() end) "
                        "return Hook.register('BeforeToolExecution', function() end, "
                        "{priority = t})")
    with pytest.raises(ScriptError, match="bytes of strings"):
        host.run_lua(source)


def test_a_repeated_string_as_many_host_arguments_is_refused(host: ScriptHost) -> None:
    with pytest.raises(ScriptError, match=r"state\.get: passing 200 values at once"):
        host.run_lua(_SHARED + "return State.get(table.unpack(t))")
    # caught in the script like any failed call
    assert host.run_lua(_SHARED + "return (pcall(State.get, table.unpack(t)))") is False


def test_a_repeated_string_as_many_results_is_refused() -> None:
    engine = LuaEngine()
    with pytest.raises(ScriptError, match="returned 201 values at once"):
        engine.run(_SHARED + "return 1, table.unpack(t)")
    with pytest.raises(ScriptError, match=r"strings of .* bytes at once"):
        engine.run("local s = ('x'):rep(4 * 1024 * 1024) "
                   "return s, s, s, s, s, s, s, s, s, s, s, s")
    assert engine.run("return 1, 2, 3") == 1


def test_a_small_table_of_one_repeated_string_is_not_multiplied() -> None:
    engine = LuaEngine(max_memory=8 * 1024 * 1024)
    # 64 keys of one 2 MiB string: 128 MiB of Python strs from 2 MiB of heap before the fix;
    # now the encoder (bounded by the heap) handles it and runs out of memory
    with pytest.raises(ScriptError, match="out of memory"):
        engine.run("local s = ('x'):rep(2 * 1024 * 1024) local t = {} "
                   "for i = 1, 64 do t['k' .. i] = s end return t")
    assert engine.convert.from_lua(engine.run("return nil")) is None


def test_values_within_the_limits_still_cross(host: ScriptHost) -> None:
    assert host.run_lua("local s = ('x'):rep(1000) return {a = s, b = s, c = {s, s}}") == {
        "a": "x" * 1000, "b": "x" * 1000, "c": ["x" * 1000] * 2}
    assert LuaEngine().run("return ('y'):rep(1024 * 1024)") == "y" * 1024 * 1024


def test_the_walk_counts_string_bytes() -> None:
    engine = LuaEngine(max_memory=4 * 1024 * 1024)
    table = engine.compile("local s = ('z'):rep(1024 * 1024) "
                           "return {function() end, s, s, s, s, s}")
    value = engine.call_raw(table)[0]
    with pytest.raises(InvalidValueError, match="bytes of strings"):
        engine.convert.from_lua(value, "value", lambda fn, path: None)


# -- JavaScript: generic array methods whose C loop never polls the time limit ---------------
# Each ran in C for minutes past a 0.2 s budget before the fix: a length no memory backs
# (an array-like, a sparse array, a getter or a Proxy answering small then huge).
_HUGE = "{length: 2 ** 40}"
_JS_LOOPS = {
    "join": f"Array.prototype.join.call({_HUGE}, '')",
    "join-sparse": "Array(2 ** 31).join('')",
    "toString": "Array(2 ** 31).toString()",
    "toLocaleString": f"Array.prototype.toLocaleString.call({_HUGE})",
    "reverse": f"Array.prototype.reverse.call({_HUGE})",
    "copyWithin": f"Array.prototype.copyWithin.call({_HUGE}, 1, 0)",
    "splice": f"Array.prototype.splice.call({_HUGE}, 0, 1)",
    "shift": f"Array.prototype.shift.call({_HUGE})",
    "unshift": f"Array.prototype.unshift.call({_HUGE}, 1)",
    "sort": f"Array.prototype.sort.call({_HUGE})",
    "slice": "Array(2 ** 31).slice()",
    "concat": "[].concat(Array(2 ** 31))",
    "concat-spreadable": f"[].concat({{...{_HUGE}, [Symbol.isConcatSpreadable]: true}})",
    "flat": "[Array(2 ** 31)].flat()",
    "flatMap": "[1].flatMap(() => Array(2 ** 31))",
    "String.raw": "String.raw({raw: {length: 2 ** 31}})",
    "getter-length": ("Array.prototype.reverse.call({get length() { return 2 ** 40; }})"),
    "proxy-length": ("Array.prototype.reverse.call(new Proxy([], {get: (t, k) => "
                     "k === 'length' ? 2 ** 40 : t[k]}))"),
    "revocable-proxy": ("Array.prototype.reverse.call(Proxy.revocable([], {get: (t, k) => "
                        "k === 'length' ? 2 ** 40 : t[k]}).proxy)"),
    # not hostile to the code before the fix (its native loop reads the length once), but
    # to a check that reads it before the native method: small first, huge afterwards
    "length-changing-getter": ("let n = 0; Array.prototype.reverse.call("
                               "{get length() { return n++ ? 2 ** 40 : 3; }})"),
    "length-changing-proxy": ("let n = 0; Array.prototype.reverse.call(new Proxy([], "
                              "{get: (t, k) => k === 'length' ? (n++ ? 2 ** 40 : 3) : t[k]}))"),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", list(_JS_LOOPS))
def test_a_js_builtin_loop_over_a_huge_length_is_stopped(name: str) -> None:
    run_in_child(_loop_child, _JS_LOOPS[name], seconds=10,
                 failure=f"{name} ran past its budget for more than 10 s")


def _loop_child(source: str) -> None:
    system = System(SystemConfig(store="memory"))
    host = ScriptHost(system, time_budget=0.2)
    # refused up front (RangeError: over the length limit), stopped by the budget, or (a
    # getter or Proxy answering small first) run over the length read first
    try:
        host.run_js(source + "; return 1")
    except ScriptError as exc:
        assert "over the sandbox's limit" in str(exc) or "time budget" in str(exc)
    assert host.run_js("return [2, 1].sort().join('-')") == "1-2"


def test_js_array_methods_still_work_on_ordinary_arrays_and_array_likes(
        host: ScriptHost) -> None:
    assert host.run_js("""
        const like = {length: 3, 0: 'c', 1: 'a', 2: 'b'};
        let reads = 0;
        const counted = {get length() { reads++; return 2; }, 0: 'x', 1: 'y'};
        class Mine extends Array {}
        return [[3, 1, 2].sort().join('-'), [1, 2, 3, 4].splice(1, 2),
                [1, 2, 3].map((x) => x * 2), Array.prototype.sort.call(like) === like,
                Array.prototype.join.call(like, ''), Array.prototype.slice.call(like, 1),
                Array.prototype.join.call(counted, '+'), reads,
                [1, [2, [3, [4]]]].flat(Infinity), [1, 2].flatMap((x) => [x, x * 10]),
                [1].concat(2, [3, [4]], {length: 1, 0: 5, [Symbol.isConcatSpreadable]: true}),
                Mine.from([1]).concat([2]) instanceof Mine, String.raw`a${1}\\n${2}`,
                Array.prototype.join.call('abc', '.'), Array.prototype.reverse.call(
                    new Proxy([1, 2, 3], {})), Array(5).join('-')]
    """) == ["1-2-3", [2, 3], [2, 4, 6], True, "abc", ["b", "c"], "x+y", 1, [1, 2, 3, 4],
             [1, 10, 2, 20], [1, 2, 3, [4], 5], True, "a1\\n2", "a.b.c", [3, 2, 1], "----"]


def test_js_array_methods_keep_their_name_and_length(host: ScriptHost) -> None:
    names = ["join", "toLocaleString", "reverse", "copyWithin", "splice", "shift", "unshift",
             "sort", "slice", "concat", "flat", "flatMap"]
    expected = [["Array.prototype." + n, n, length, False] for n, length in zip(
        names, [1, 0, 0, 2, 2, 0, 1, 1, 2, 1, 0, 1], strict=True)]
    script = ("return " + repr(names) + ".map((n) => ['Array.prototype.' + n, "
              "Array.prototype[n].name, Array.prototype[n].length, "
              "Object.getOwnPropertyDescriptor(Array.prototype, n).enumerable])"
              ".concat([['String.raw', String.raw.name, String.raw.length, false], "
              "['Proxy', Proxy.name, Proxy.length, typeof Proxy.prototype !== 'undefined']])")
    assert host.run_js(script) == [*expected, ["String.raw", "raw", 1, False],
                                   ["Proxy", "Proxy", 2, False]]


# -- attempts the sandbox refuses ------------------------------------------------------------
_LUA_BLOCKED = [
    # (source, what the error says)
    ("return load(string.char(27) .. 'LuaT', 'x', 'b')", None),
    ("return string.dump", None),
    ("return package", None),
    ("return debug.getregistry()", "not available"),
    ("return debug.sethook()", "not available"),
    ("return collectgarbage('stop')", "not available"),
    ("return collectgarbage('generational')", "not available"),
    ("return getmetatable('').__index", "attempt to index"),
    ("return python", None),
    ("return rawget(_G, 'python')", None),
    ("return (function() local t = setmetatable({}, {__gc = print}) end)()", "__gc"),
    ("local s = ('x'):rep(1e9)", r"string\.rep"),
    ("return require('os')", "not available"),
    ("return os.exit()", "not available"),
    ("return io.open('/etc/hostname')", "--allow-read"),
]


@pytest.mark.parametrize(("source", "needle"), _LUA_BLOCKED)
def test_lua_attempts_are_refused(source: str, needle: str | None) -> None:
    engine = LuaEngine(time_budget=0.5)
    if needle is None:
        assert engine.run(source) is None
    else:
        with pytest.raises(ScriptError, match=needle):
            engine.run(source)


@pytest.mark.parametrize("source", [
    # a pcall loop swallowing the budget; an xpcall whose handler loops; an error object
    # whose __tostring loops (the host's message handler calls it)
    "while true do pcall(error, {}) end",
    "xpcall(function() while true do end end, function() while true do end end)",
    "error(setmetatable({}, {__tostring = function() while true do end end}))",
    "local co = coroutine.wrap(function() while true do coroutine.yield() end end) "
    "while true do co() end",
    "local t = setmetatable({}, {__index = function(t, k) return k end}) "
    "return table.concat(t, '', 1, 1e9)",
])
def test_lua_budget_escapes_are_stopped(source: str) -> None:
    engine = LuaEngine(time_budget=0.1)
    with pytest.raises(ScriptTimeoutError):
        engine.run(source)
    assert engine.run("return 2") == 2


@pytest.mark.parametrize(("source", "needle"), [
    ("return typeof std + typeof os + typeof Deno + typeof globalThis.python", "undefined" * 4),
    ("return Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5000)",
     "cannot block"),
    ("return /(a+)+$/.test('a'.repeat(40) + 'b')", "time budget"),
    ("for (;;) { try { for (;;) {} } catch (e) {} }", "time budget"),
    ("return Array.prototype.indexOf.call({length: 2 ** 40}, 1)", "time budget"),
    ("return 10n ** 100000n", "BigInt"),
    ("let a = []; for (let i = 0; i < 1e5; i++) a = [a]; return a", "."),
    ("return await import('os')", "."),
])
def test_js_attempts_are_refused(host: ScriptHost, source: str, needle: str) -> None:
    if needle.startswith("undefined"):
        assert host.run_js(source) == needle
        return
    with pytest.raises((ScriptError, InvalidValueError), match=needle):
        _tight_js(source)


def _tight_js(source: str) -> None:
    h = ScriptHost(System(SystemConfig(store="memory")), time_budget=0.3)
    try:
        h.run_js(source)
    finally:
        h.close()


def test_paths_outside_the_read_root_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret").write_text("s")
    (root / "link").symlink_to(tmp_path)
    host = ScriptHost(System(SystemConfig(store="memory")),
                      allow=Capabilities(allow_read=(str(root),)))
    try:
        for path in (f"{root}/../secret", f"{root}/link/secret", f"{root}/link/root/../secret",
                     f"{str(root).upper()}/x", f"{root}-x/secret", f"{root}/./../secret"):
            with pytest.raises(ScriptError, match=r"not allowed|No such file"):
                host.run_lua(f"return io.open({path!r}):read('a')")
    finally:
        host.close()
