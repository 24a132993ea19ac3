"""Python <-> Lua value conversion: round trips, the empty-table rule, refusals."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmspell.errors import InvalidValueError
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
    with pytest.raises(InvalidValueError, match="deeper"):
        C.from_lua(ENGINE.call_raw(ENGINE.compile("local t = {} t.t = t return t"))[0])
    with pytest.raises(InvalidValueError):
        C.to_lua({"x": object()})
    with pytest.raises(InvalidValueError, match="64-bit"):
        C.to_lua(2**64)
