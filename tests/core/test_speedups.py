"""The native speedups give exactly the pure-Python answers, and are used when built."""

from __future__ import annotations

import enum
import gc
import math
import os
import re
import subprocess
import sys
import textwrap
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmspell.core import ids, speedups, values
from llmspell.core.values import MAX_DEPTH, MAX_INT, MIN_INT
from llmspell.errors import InvalidValueError, NotJsonSafeError
from llmspell.events.event import PlainJson, UniversalEvent
from llmspell.hooks import context as context_module
from llmspell.hooks.context import ComponentId, ComponentType, HookContext, OperationContext
from llmspell.hooks.points import HookPoint

native = speedups.native
needs_native = pytest.mark.skipif(native is None, reason="the native speedups are not built")


class Colour(enum.IntEnum):
    RED = 1


class Mode(enum.StrEnum):
    FAST = "fast"


class Ratio(float):
    pass


class Text(str):
    pass


scalars = (
    st.none() | st.booleans() | st.text(max_size=6)
    | st.integers(MIN_INT - 3, MIN_INT + 3) | st.integers(MAX_INT - 3, MAX_INT + 3)
    | st.integers(-(2**70), 2**70) | st.integers(-5, 5)
    | st.floats() | st.sampled_from([math.inf, -math.inf, math.nan, -0.0, 1e308])
    | st.sampled_from([Colour.RED, Mode.FAST, Ratio(1.5), Text("t"), b"x", (1,), {1}, object()])
)
keys = st.text(max_size=4) | st.integers(0, 3) | st.just(Text("k")) | st.just(Mode.FAST)
any_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(keys, children, max_size=4)
    | st.tuples(children),
    max_leaves=25,
)


def nested(depth: int, leaf: Any, kind: type = list) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value] if kind is list else {"k": value}
    return value


@needs_native
@settings(max_examples=400)
@given(any_values, st.integers(0, MAX_DEPTH + 2))
def test_native_check_answers_as_the_python_walk(value: Any, depth: int) -> None:
    assert native is not None
    expected = values._python_is_plain_json_safe(value, depth)
    assert native.is_plain_json_safe(value, depth) is expected
    if depth == 0:
        assert native.is_plain_json_safe(value) is expected


@needs_native
@pytest.mark.parametrize("kind", [list, dict])
def test_native_check_stops_at_the_nesting_bound(kind: type) -> None:
    assert native is not None
    for depth in (MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 100_000):
        value = nested(depth, 1, kind)
        expected = values._python_is_plain_json_safe(value) if depth < 1000 else False
        assert native.is_plain_json_safe(value) is expected
    looped: list[Any] = []
    looped.append(looped)
    assert native.is_plain_json_safe(looped) is False


@needs_native
def test_native_check_refuses_bad_arguments_with_type_errors() -> None:
    assert native is not None
    with pytest.raises(TypeError):
        native.is_plain_json_safe()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        native.is_plain_json_safe(1, "deep")
    assert native.is_plain_json_safe([[1]], -5) is True  # a negative depth counts as 0


@needs_native
def test_native_ids_have_the_python_form_and_order() -> None:
    assert native is not None
    made = [ids.new_id() for _ in range(5000)]
    assert len(set(made)) == len(made) and made == sorted(made)
    pattern = re.compile(re.escape(ids.id_prefix()) + r"-[0-9a-f]{12}")
    assert all(pattern.fullmatch(value) for value in made)
    counters = [int(value[-12:], 16) for value in made]
    assert counters == list(range(counters[0], counters[0] + len(made)))


@needs_native
@pytest.mark.parametrize("prefix", ["short", "0" * 23 + "G", "0" * 23 + "A", 12, "0" * 25,
                                    "\ud800" * 24])
def test_native_id_seed_refuses_anything_but_24_lowercase_hex(prefix: Any) -> None:
    assert native is not None
    before = ids.new_id()
    with pytest.raises(ValueError, match="hex"):
        native.seed_ids(prefix)
    after = ids.new_id()
    assert after[:24] == before[:24] and after > before  # the sequence went on unchanged


@needs_native
def test_event_post_init_is_native_and_checks_like_the_python_one() -> None:
    assert "builtin" in type(UniversalEvent.__dict__["__post_init__"]).__name__
    plain = {"tool": "calc", "n": 3, "ok": True, "items": [1.5, None, "x"]}
    event = UniversalEvent(event_type="a.b", data=plain)
    assert event.data is plain
    normalised = UniversalEvent(event_type="a.b", data={"c": Colour.RED, "m": [Mode.FAST]})
    assert normalised.data == {"c": 1, "m": ["fast"]}
    assert type(normalised.data["c"]) is int and type(normalised.data["m"][0]) is str
    decoded = UniversalEvent(event_type="a.b", data=PlainJson({"x": 1}))
    assert type(decoded.data) is dict and decoded.data == {"x": 1}
    with pytest.raises(NotJsonSafeError, match=r"event\.data\.items\[1\]"):
        UniversalEvent(event_type="a.b", data={"items": [1, math.nan]})
    with pytest.raises(NotJsonSafeError):
        UniversalEvent(event_type="a.b", data={1: "not a str key"})


@needs_native
def test_native_calls_keep_no_references() -> None:
    assert native is not None
    data = {"tool": "calc", "n": 3, "big": 2**1000, "nested": [{"x": 1.5}]}
    bad = {"items": [object()]}
    baseline = sys.getrefcount(data), sys.getrefcount(bad)
    for _ in range(2000):
        native.is_plain_json_safe(data)
        UniversalEvent(event_type="a.b", data=data)
        with pytest.raises(NotJsonSafeError):
            UniversalEvent(event_type="a.b", data=bad)
    gc.collect()
    assert (sys.getrefcount(data), sys.getrefcount(bad)) == baseline


class Sub(HookContext, kw_only=True):
    pass


_COMPONENT = ComponentId(type=ComponentType.TOOL, name="t")
_FIELD_VALUES: dict[str, list[Any]] = {
    "point": [HookPoint.BEFORE_TOOL_EXECUTION, "custom:x", Text("sub:point"), 3, None],
    "component": [_COMPONENT, "tool", None],
    "data": [{}, {"a": 1}, {1: "x"}, [1], None],
    "metadata": [{}, {"k": "v"}, {"k": Text("v")}, {Text("k"): "v"}, {"k": 1}, {2: "v"},
                 "k=v"],
    "correlation_id": ["c-1", Text("c"), 5],
    "parent": [None, HookContext(point="p", component=_COMPONENT),
               Sub(point="p", component=_COMPONENT), "parent"],
    "operation": [None, OperationContext(type="op"), {"type": "op"}],
}


def _outcome(action: Any) -> tuple[str, str] | None:
    try:
        action()
    except Exception as exc:
        return type(exc).__name__, str(exc)
    return None


@needs_native
def test_hook_context_post_init_is_native() -> None:
    assert "builtin" in type(HookContext.__dict__["__post_init__"]).__name__


@needs_native
@settings(max_examples=300)
@given(st.fixed_dictionaries({name: st.sampled_from(pool)
                              for name, pool in _FIELD_VALUES.items()}),
       st.booleans())
def test_native_hook_context_checks_answer_as_the_python_check(fields: dict[str, Any],
                                                                 subclass: bool) -> None:
    # The Python __post_init__ gives exactly _validate's answer (its exact-type expression
    # only lets a context skip the isinstance checks it would pass), so _validate of the
    # same fields is what the native checks must give: the same error, or none.
    expected = _outcome(lambda: context_module._validate(SimpleNamespace(**fields)))  # type: ignore[arg-type]
    made = Sub if subclass else HookContext
    assert _outcome(lambda: made(**fields)) == expected


@needs_native
def test_native_hook_context_checks_keep_no_references() -> None:
    data = {"a": [1, 2]}
    metadata = {"k": "v"}
    parent = HookContext(point="p", component=_COMPONENT)
    baseline = sys.getrefcount(data), sys.getrefcount(metadata), sys.getrefcount(parent)
    for _ in range(2000):
        HookContext(point="p", component=_COMPONENT, data=data, metadata=metadata,
                    parent=parent)
        Sub(point="p", component=_COMPONENT, data=data, metadata=metadata, parent=parent)
        with pytest.raises(InvalidValueError):
            HookContext(point="p", component=_COMPONENT, data=data, metadata={"k": 1})
    gc.collect()
    assert (sys.getrefcount(data), sys.getrefcount(metadata),
            sys.getrefcount(parent)) == baseline


@needs_native
def test_native_exact_post_init_refuses_bad_specs_with_type_errors() -> None:
    assert native is not None
    with pytest.raises(TypeError):
        native.exact_post_init([("a", (int,), 0)], print)
    with pytest.raises(TypeError):
        native.exact_post_init((("a", (int,), 0),), "not callable")
    with pytest.raises(TypeError):
        native.exact_post_init((("a", (1,), 0),), print)
    with pytest.raises(TypeError):
        native.exact_post_init((("a", (int,)),), print)
    with pytest.raises(ValueError):
        native.exact_post_init((("a", (int,), 7),), print)


def test_speedups_are_built_in_ci() -> None:
    # CI installs with a C compiler: the native path is what its tests must exercise.
    if os.environ.get("CI") == "true" and os.environ.get(speedups.PURE_PYTHON_VARIABLE) is None:
        assert speedups.ENABLED, "llmspell.core._speedups was not built"
    assert speedups.ENABLED is (speedups.native is not None)


@pytest.mark.parametrize("setting", ["1", "yes"])
def test_pure_python_variable_turns_the_speedups_off(setting: str) -> None:
    script = textwrap.dedent("""
        import math, enum
        from llmspell.core import ids, speedups, values
        from llmspell.events.event import UniversalEvent
        from llmspell.errors import NotJsonSafeError
        assert not speedups.ENABLED and speedups.native is None
        assert ids.new_id is ids._python_new_id
        assert values.is_plain_json_safe is values._python_is_plain_json_safe
        class C(enum.IntEnum):
            A = 1
        assert UniversalEvent(event_type="a", data={"c": C.A}).data == {"c": 1}
        assert UniversalEvent(event_type="a", data={"x": [1, "y"]}).data == {"x": [1, "y"]}
        try:
            UniversalEvent(event_type="a", data={"x": math.inf})
        except NotJsonSafeError as exc:
            assert "event.data.x" in str(exc)
        else:
            raise AssertionError("inf accepted")
        print("pure ok")
    """)
    env = {**os.environ, speedups.PURE_PYTHON_VARIABLE: setting}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "pure ok"


def test_pure_python_variable_set_to_zero_keeps_the_speedups() -> None:
    script = "from llmspell.core import speedups; print(speedups.ENABLED)"
    env = {**os.environ, speedups.PURE_PYTHON_VARIABLE: "0"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.stdout.strip() == str(speedups.ENABLED)
