"""Python <-> JavaScript value conversion, property-tested both ways, and its refusals."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmspell.errors import InvalidValueError, ScriptError
from llmspell.scripting.convert import JS_SAFE_INT, JsConverter
from llmspell.scripting.js import JsEngine
from llmspell.scripting.protocol import drive

ENGINE = JsEngine()
IDENTITY = ENGINE.compile("return arguments[0];", "identity.js")
C = JsConverter()

scalars = (st.none() | st.booleans() | st.integers(-JS_SAFE_INT, JS_SAFE_INT)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text())
json_values = st.recursive(
    scalars,
    # "__fn" is the one key the glue reserves (a TypeError, tested on its own).
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(max_size=5).filter(lambda key: key != "__fn"), inner, max_size=4),
    max_leaves=20,
)


def js_number_rule(value: Any) -> Any:
    """What the JS side gives back: one number type, integral floats come back as ints."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= JS_SAFE_INT:
        return int(value)
    if isinstance(value, list):
        return [js_number_rule(v) for v in value]
    if isinstance(value, dict):
        return {k: js_number_rule(v) for k, v in value.items()}
    return value


def through_js(value: Any) -> Any:
    return drive(ENGINE, ENGINE.start(IDENTITY, (value,)), lambda op, args: None)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_python_values_round_trip_through_javascript(value: Any) -> None:
    assert through_js(value) == js_number_rule(value)


@settings(max_examples=100, deadline=None)
@given(json_values)
def test_javascript_values_come_back_as_the_same_data(value: Any) -> None:
    # a JS literal built from the value's JSON, rebuilt by JS code, read by Python
    literal = C.encode(value)
    fn = ENGINE.compile(f"const v = {literal}; return JSON.parse(JSON.stringify(v));", "lit.js")
    try:
        out = drive(ENGINE, ENGINE.start(fn, ()), lambda op, args: None)
    finally:
        ENGINE.release(fn)
    assert out == js_number_rule(value)


def test_undefined_is_none_and_dropped_from_objects() -> None:
    fn = ENGINE.compile("return [undefined, {a: undefined, b: 1}];", "u.js")
    assert drive(ENGINE, ENGINE.start(fn, ()), lambda op, args: None) == [None, {"b": 1}]


@pytest.mark.parametrize("bad", [2**53 + 1, math.nan, math.inf, {1: "x"}, object(), b"x"])
def test_python_values_javascript_cannot_hold_are_refused(bad: Any) -> None:
    with pytest.raises(InvalidValueError):
        C.encode({"k": [bad]})


@pytest.mark.parametrize("source", ["return NaN;", "return {x: Infinity};", "return 10n;"])
def test_javascript_values_python_cannot_hold_are_refused(source: str) -> None:
    fn = ENGINE.compile(source, "bad.js")
    with pytest.raises(ScriptError, match=r"not finite|BigInt|serialize"):
        drive(ENGINE, ENGINE.start(fn, ()), lambda op, args: None)


def test_functions_are_refused_without_a_host_to_keep_them() -> None:
    with pytest.raises(InvalidValueError, match="JavaScript function"):
        C.decode('{"__fn": 3}')
    assert C.decode('{"__fn": 3}', lambda ref, path: ("fn", ref, path)) == ("fn", 3, "value")
