"""The JavaScript converter's unchecked common cases give what the path-naming walks give."""

from __future__ import annotations

import enum
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmspell.errors import InvalidValueError
from llmspell.scripting.convert import JS_SAFE_INT, JsConverter

C = JsConverter()
scalars = (st.none() | st.booleans() | st.integers(-(2**60), 2**60)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=5))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(values)
def test_encode_accepts_and_refuses_as_the_checked_walk_does(value: Any) -> None:
    try:
        C._check(value, "value", 0)
    except InvalidValueError:
        with pytest.raises(InvalidValueError):
            C.encode(value)
        return
    assert C.encode(value) == msgspec.json.encode(value).decode()


@settings(max_examples=300, deadline=None)
@given(values)
def test_decode_restores_as_the_full_walk_does(value: Any) -> None:
    text = msgspec.json.encode(value).decode()  # nan/inf become null, as JSON has them
    decoded = msgspec.json.decode(text.encode())
    if _has_fn(decoded):
        return  # references are covered below
    expected = C._restore(decoded, "value", None)
    got = C.decode(text)
    assert got == expected and _types(got) == _types(expected)


def test_decode_turns_whole_floats_into_ints_and_refuses_function_references() -> None:
    assert C.decode('{"a": 1.0, "b": [2.5, 3.0]}') == {"a": 1, "b": [2.5, 3]}
    assert type(C.decode(f"{JS_SAFE_INT * 4}")) is float
    with pytest.raises(InvalidValueError, match="JavaScript function"):
        C.decode('{"x": {"__fn": 3}}')
    assert C.decode('{"x": {"__fn": 3}}', lambda n, path: f"fn{n}@{path}") == {
        "x": "fn3@value.x"}


def test_subclasses_still_go_through_the_checked_walk() -> None:
    class Level(enum.IntEnum):
        HIGH = 3

    assert C.encode({"level": Level.HIGH}) == '{"level":3}'
    with pytest.raises(InvalidValueError, match=r"value\.a\[1\]"):
        C.encode({"a": [1, float("nan")]})


def _has_fn(value: Any) -> bool:
    if isinstance(value, dict):
        return "__fn" in value or any(_has_fn(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_fn(v) for v in value)
    return False


def _types(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _types(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_types(v) for v in value]
    return type(value)
