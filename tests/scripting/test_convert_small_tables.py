"""Small Lua tables of string keys are read from Python directly; anything unusual in them
still reaches the encoder's path and converts (or is refused) exactly as before."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmspell.errors import InvalidValueError
from llmspell.scripting import LuaEngine

ENGINE = LuaEngine()
C = ENGINE.convert


def lua(source: str) -> Any:
    return C.from_lua(ENGINE.call_raw(ENGINE.compile(source))[0])


def test_a_hook_result_table_converts_with_ints_and_floats_kept_apart() -> None:
    value = lua('return {type = "modified", data = {n = 1, x = 1.0, ok = true, s = "é"}}')
    assert value == {"type": "modified", "data": {"n": 1, "x": 1.0, "ok": True, "s": "é"}}
    assert type(value["data"]["n"]) is int and type(value["data"]["x"]) is float


@pytest.mark.parametrize(("source", "expected"), [
    ("return {a = {}, b = 1}", {"a": {}, "b": 1}),              # the empty-table rule
    ("return {a = {1, 2}, b = 1}", {"a": [1, 2], "b": 1}),      # a sequence inside
    ("return {}", {}),
])
def test_what_the_fast_read_leaves_converts_as_before(source: str, expected: Any) -> None:
    assert lua(source) == expected


def test_json_null_inside_a_small_table_is_none() -> None:
    # JSON.null is an empty table: left to the encoder, which knows it.
    assert C.from_lua(C.to_lua({"a": None, "b": {"c": None}})) == {"a": None, "b": {"c": None}}


def test_more_values_than_the_fast_read_takes_still_convert() -> None:
    value = lua("local t = {} for i = 1, 200 do t['k' .. i] = {v = i} end return t")
    assert len(value) == 200 and value["k7"] == {"v": 7}


@pytest.mark.parametrize(("source", "match"), [
    ('return {a = {b = 0/0}}', "non-finite"),
    ('return {a = "\\255"}', "UTF-8"),
    ('return {a = {f = print}}', r"value\.a\.f"),
    ('return {a = {[2] = 1}}', r"value\.a"),
])
def test_bad_values_inside_small_tables_are_refused_naming_the_path(source: str,
                                                                   match: str) -> None:
    with pytest.raises(InvalidValueError, match=match):
        lua(source)


keys = st.text(alphabet="abcxyz_", min_size=1, max_size=4)
leaves = (st.booleans() | st.integers(-(2**63), 2**63 - 1)
          | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6))
maps = st.recursive(leaves, lambda inner: st.dictionaries(keys, inner, min_size=1,
                                                          max_size=4), max_leaves=12)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(keys, maps, min_size=1, max_size=4))
def test_small_maps_round_trip_with_types_kept(value: dict[str, Any]) -> None:
    back = C.from_lua(C.to_lua(value))
    assert back == value
    assert _types(back) == _types(value)


def _types(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _types(v) for k, v in value.items()}
    return type(value)


def test_none_inside_a_value_reaches_lua_as_json_null() -> None:
    table = C.to_lua({"source": None, "tags": [None, "x"], "m": {"ttl": None}})
    check = ENGINE.compile("local t, null = ... return rawequal(t.source, null) and "
                           "rawequal(t.tags[1], null) and t.tags[2] == 'x' and "
                           "rawequal(t.m.ttl, null) and #t.tags == 2")
    assert ENGINE.call_raw(check, table, C.null) == (True,)
    with pytest.raises(InvalidValueError, match="64-bit"):
        C.to_lua({"a": None, "b": 2**64})
