from __future__ import annotations

import enum
import math

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmspell.core.values import check_json_safe, is_json_safe, to_json_safe
from llmspell.errors import NotJsonSafeError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_json_values_are_safe_and_round_trip_exactly(value: object) -> None:
    check_json_safe(value)
    assert to_json_safe(value) == value
    assert msgspec.json.decode(msgspec.json.encode(value)) == value


def test_error_names_the_exact_path() -> None:
    with pytest.raises(NotJsonSafeError) as info:
        check_json_safe({"items": [1, {"when": object()}]}, "data")
    assert info.value.path == "data.items[1].when"
    assert "object" in str(info.value)


def test_odd_keys_are_quoted_in_the_path() -> None:
    with pytest.raises(NotJsonSafeError) as info:
        check_json_safe({"a b": {1: "x"}}, "data")
    assert info.value.path == "data['a b'][1]"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_refused(bad: float) -> None:
    assert not is_json_safe({"x": bad})
    with pytest.raises(NotJsonSafeError):
        to_json_safe([bad])


def test_to_json_safe_converts_what_it_can() -> None:
    class Color(enum.Enum):
        RED = "red"

    class Point(msgspec.Struct):
        x: int

    value = {"t": (1, 2), "e": Color.RED, Color.RED: {3, 1}, "s": Point(1)}
    assert to_json_safe(value) == {"t": [1, 2], "e": "red", "red": [1, 3], "s": {"x": 1}}
    mixed = to_json_safe({frozenset({1, "a"})} and {"x": {1, "a"}})
    assert sorted(map(str, mixed["x"])) == ["1", "a"]
    with pytest.raises(NotJsonSafeError) as info:
        to_json_safe({"k": [object()]})
    assert info.value.path == "value.k[0]"
    with pytest.raises(NotJsonSafeError):
        to_json_safe({1: "x"})
