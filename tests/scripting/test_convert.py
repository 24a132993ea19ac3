"""Python <-> Lua value conversion: round trips, the empty-table rule, refusals."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmspell.errors import InvalidValueError, ScriptError, ScriptTimeoutError
from llmspell.scripting import LuaEngine

ENGINE = LuaEngine()
C = ENGINE.convert

scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text())
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, min_size=1, max_size=4)
    | st.dictionaries(st.text(max_size=5), inner, min_size=1, max_size=4),
    max_leaves=20,
)


def same(a: Any, b: Any) -> bool:
    """Equal, with ints and floats kept apart."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_python_values_round_trip(value: Any) -> None:
    assert same(C.from_lua(C.to_lua(value)), value)


@settings(max_examples=100, deadline=None)
@given(json_values)
def test_lua_values_round_trip_through_lua_code(value: Any) -> None:
    echo = ENGINE.compile("return ...")
    assert same(ENGINE.call(echo, value), value)


def test_empty_table_becomes_a_dict_and_ints_stay_ints() -> None:
    assert C.from_lua(C.to_lua([])) == {}
    assert ENGINE.run("return {1, 2.0, {}, {n = 3}}") == [1, 2.0, {}, {"n": 3}]
    assert type(ENGINE.run("return 2.0")) is float


def test_lists_are_copied_not_shared() -> None:
    items = [1, 2]
    ENGINE.call(ENGINE.compile("local t = ... t[1] = 99 table.insert(t, 3)"), items)
    assert items == [1, 2]


@pytest.mark.parametrize(("source", "path"), [
    ("return {f = print}", "value.f"),
    ("return {1, {coroutine.create(print)}}", "value[2][1]"),
    ("return {[5] = 1}", "value"),
    ("return {[setmetatable({}, {__tostring = function() while true do end end})] = 1}",
     "value"),
    ("return 0/0", "value"),
])
def test_non_json_values_are_refused_naming_the_path(source: str, path: str) -> None:
    with pytest.raises(InvalidValueError, match=path.replace("[", r"\[")):
        C.from_lua(ENGINE.call_raw(ENGINE.compile(source))[0])


def test_cycles_and_bad_python_values_are_refused() -> None:
    with pytest.raises(InvalidValueError, match="contains itself"):
        C.from_lua(ENGINE.call_raw(ENGINE.compile("local t = {} t.t = t return t"))[0])
    with pytest.raises(InvalidValueError, match="deeper"):
        ENGINE.run("local t = {} for i = 1, 150 do t = {t} end return t")
    with pytest.raises(InvalidValueError):
        C.to_lua({"x": object()})
    with pytest.raises(InvalidValueError, match="64-bit"):
        C.to_lua(2**64)


_DAG = "local t = {{v = 1}}\nfor i = 1, {n} do t = {{a = t, b = t}} end\n"


@pytest.mark.parametrize("depth", [20, 40])
def test_shared_tables_are_bounded(depth: int) -> None:
    """A table shared along many paths is converted once per path: 40 levels of sharing
    would be 2**40 values; the conversion stops at MAX_NODES with a typed error."""
    engine = LuaEngine(time_budget=60)
    with pytest.raises(InvalidValueError, match="more than 1000000 values"):
        engine.run(_DAG.format(n=depth) + "return t")
    # the same through the entry-by-entry path (a function, last, stops the fast path)
    with pytest.raises(InvalidValueError, match="more than 1000000 values"):
        engine.run(f"local t = {{1}}\nfor i = 1, {depth} do t = {{t, t}} end\n"
                   "t[3] = print\nreturn t")
    assert engine.run(_DAG.format(n=3) + "return t")["a"]["b"]["a"] == {"v": 1}


def test_shared_tables_passed_to_the_host_are_bounded() -> None:
    from llmspell.runtime import System, SystemConfig
    from llmspell.scripting import ScriptHost

    host = ScriptHost(System(SystemConfig(store="memory")), time_budget=60)
    with pytest.raises(ScriptError, match="more than 1000000 values"):
        host.run_lua(_DAG.format(n=40) + "State.set('dag', t)")
    # a refused argument is an error at the call, which the script can catch
    assert host.run_lua(_DAG.format(n=40) + "return (pcall(State.set, 'dag', t))") is False
    with pytest.raises(ScriptError, match="more than 1000000 values"):
        host.run_lua(_DAG.format(n=40) + "return JSON.encode(t)")


@pytest.mark.parametrize("source", [
    "local t = {} t.a = t t.b = t return t",
    "local t = {} t[1] = t t[2] = t return t",
    "local t = {} t[1] = t t[2] = print return t",
])
def test_cycles_are_refused(source: str) -> None:
    with pytest.raises(InvalidValueError, match="contains itself"):
        LuaEngine().run(source)


def test_converting_a_value_too_big_for_memory_is_a_typed_error() -> None:
    engine = LuaEngine(max_memory=2 * 1024 * 1024)
    with pytest.raises(ScriptError, match="out of memory"):
        engine.run("local s = ('x'):rep(200000) local t = {} "
                   "for i = 1, 4 do t[i] = s end return t")
    assert engine.run("return {1, 2}") == [1, 2]


def test_conversion_runs_under_the_budget() -> None:
    engine = LuaEngine(time_budget=0.05, max_memory=256 * 1024 * 1024)
    with pytest.raises(ScriptTimeoutError, match="converting the value"):
        engine.run("local t = {} for i = 1, 300000 do t[i] = {i, 'x'} end return t",
                   time_budget=10)
