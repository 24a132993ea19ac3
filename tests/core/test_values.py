from __future__ import annotations

import enum
import math

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmspell.core.values import (
    MAX_DEPTH,
    MAX_INT,
    MIN_INT,
    check_json_safe,
    is_json_safe,
    normalize_json_safe,
    to_json_safe,
)
from llmspell.errors import NotJsonSafeError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(MIN_INT, MAX_INT)
    | st.floats(allow_nan=False, allow_infinity=False)
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


@given(json_values)
def test_to_json_safe_copies_containers_as_the_item_walk_does(value: object) -> None:
    from llmspell.core.values import _convert

    got = to_json_safe(value)
    walked = _convert(value, "value", [])
    assert got == walked and type(got) is type(walked)
    assert msgspec.json.encode(got) == msgspec.json.encode(walked)  # same float spelling
    if isinstance(value, dict | list):
        assert got is not value


def test_to_json_safe_keeps_texts_the_round_trip_cannot_carry() -> None:
    value = {"text": "lone \ud800 surrogate", "items": ["\udfff", 1, 2.5, None, True]}
    copy = to_json_safe(value)
    assert copy == value and copy is not value and copy["items"] is not value["items"]
    assert to_json_safe([2**1000, -(2**1000)]) == [2**1000, -(2**1000)]


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


def _nested(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_cycles_depth_and_huge_ints_are_typed_refusals() -> None:
    looped: dict[str, object] = {"a": [1]}
    looped["a"].append(looped)  # type: ignore[attr-defined]
    self_list: list[object] = []
    self_list.append(self_list)
    cases = [
        (looped, "contains itself", "data.a[1]"),
        (self_list, "contains itself", "data[0]"),
        (_nested(MAX_DEPTH + 1), "nested deeper", None),
        (_nested(5000), "nested deeper", None),
        ({"n": 10**5000}, "1024-bit range", "data.n"),
        ([MAX_INT + 1], "1024-bit range", "data[0]"),
        ({"n": MIN_INT - 1}, "1024-bit range", "data.n"),
    ]
    for value, why, path in cases:
        assert not is_json_safe(value)
        for check in (check_json_safe, to_json_safe, normalize_json_safe):
            with pytest.raises(NotJsonSafeError, match=why) as info:
                check(value, "data")
            if path is not None:
                assert info.value.path == path
    check_json_safe(_nested(MAX_DEPTH))
    check_json_safe([MIN_INT, MAX_INT])
    shared = [1, 2]
    check_json_safe({"a": shared, "b": shared})  # shared, not cyclic


class _Name(str):
    pass


class _Level(enum.IntEnum):
    HIGH = 2


class _Mode(enum.StrEnum):
    FAST = "fast"


def test_scalar_subclasses_are_normalised_to_what_any_encoder_takes() -> None:
    value = {"name": _Name("custom:x"), "level": _Level.HIGH, "mode": _Mode.FAST,
             "list": [_Name("y"), 1.5], _Name("key"): None}
    check_json_safe(value)
    plain = normalize_json_safe(value)
    assert plain == value
    assert [type(v) for v in (plain["name"], plain["level"], plain["mode"], plain["list"][0])] \
        == [str, int, str, str]
    assert all(type(k) is str for k in plain)
    assert msgspec.json.decode(msgspec.json.encode(plain)) == value
    assert type(to_json_safe(_Name("z"))) is str
    plain_value = {"a": [1, "b"]}
    assert normalize_json_safe(plain_value) is plain_value  # no copy when nothing to do


def test_a_lone_surrogate_is_named_where_it_is() -> None:
    from llmspell.core.values import lone_surrogate_error

    cases = [("a\ud800", "value"), ({"k": ["ok", {"x": "\udfff!"}]}, "value.k[1].x"),
             ({"we ird": "\ud83d"}, "value['we ird']"), ({"\ud800": 1}, "value (a key)"),
             (("t", "\udc00"), "value[1]")]
    for bad, path in cases:
        error = lone_surrogate_error(bad)
        assert error.path == path and "lone surrogate" in str(error)
        assert "replace" in (error.hint or "")
    assert lone_surrogate_error({"fine": "é"}, "data").path == "data"  # nothing to point at
