from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmspell.core import Language
from llmspell.errors import InvalidValueError, NotJsonSafeError, SerializationError
from llmspell.hooks import (
    CONTINUE,
    Cache,
    Cancel,
    ComponentId,
    ComponentType,
    Continue,
    Fork,
    ForkOperation,
    HookContext,
    HookPoint,
    Modified,
    OperationContext,
    Redirect,
    Replace,
    Retry,
    Skipped,
)
from llmspell.hooks.result import (
    result_from_dict,
    result_from_json,
    result_to_dict,
    result_to_json,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=12,
)
json_dicts = st.dictionaries(st.text(max_size=6), json_values, max_size=4)
texts = st.text(max_size=20)
names = st.text(min_size=1, max_size=20)  # targets and keys must not be empty
results = st.one_of(
    st.just(CONTINUE),
    st.builds(Modified, json_dicts),
    st.builds(Cancel, texts),
    st.builds(Redirect, names),
    st.builds(Replace, json_values),
    st.builds(Retry, st.floats(min_value=0, max_value=300), st.integers(1, 100)),
    st.builds(
        Fork,
        st.lists(
            st.builds(ForkOperation, type=names, target=names, parameters=json_dicts), max_size=3
        ).map(tuple),
    ),
    st.builds(Cache, names, st.none() | st.floats(min_value=0.001, max_value=1e6),
              st.booleans()),
    st.builds(Skipped, texts),
)


@given(results)
def test_results_round_trip_exactly_through_json_and_dicts(result: object) -> None:
    assert result_from_json(result_to_json(result)) == result  # type: ignore[arg-type]
    assert result_from_dict(result_to_dict(result)) == result  # type: ignore[arg-type]


def test_result_kinds_and_json_tags() -> None:
    assert [r.kind for r in (CONTINUE, Modified({}), Cancel("x"), Redirect("t"), Replace(1),
                             Retry(), Fork(()), Cache("k"), Skipped("s"))] == [
        "continue", "modified", "cancel", "redirect", "replace", "retry", "fork", "cache",
        "skipped"]
    assert result_to_json(Cancel("no")) == b'{"type":"cancel","reason":"no"}'
    assert Continue() == CONTINUE


def test_results_validate_their_fields() -> None:
    with pytest.raises(InvalidValueError):
        Modified([1, 2])  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError):
        Retry(delay=-1)
    with pytest.raises(InvalidValueError):
        Retry(max_attempts=0)
    with pytest.raises(InvalidValueError):
        Cache("k", ttl=0)


def test_bad_result_json_is_a_serialization_error() -> None:
    with pytest.raises(SerializationError, match="type"):
        result_from_json(b'{"type":"explode"}')
    with pytest.raises(SerializationError):
        result_from_dict({"type": "retry", "delay": -5})
    with pytest.raises(NotJsonSafeError, match=r"result\.value"):
        result_to_json(Replace(object()))


@given(json_dicts, st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
       st.sampled_from(list(Language)), json_values)
def test_context_round_trips_exactly(data: dict, metadata: dict, lang: Language,
                                     result: object) -> None:
    root = HookContext(
        point=HookPoint.BEFORE_AGENT_EXECUTION,
        component=ComponentId(type=ComponentType.AGENT, name="a"),
        data=data,
        metadata=metadata,
        language=lang,
        operation=OperationContext(type="tool_call", parameters=data, result=result,
                                   error="boom"),
    )
    child = root.child(HookPoint.custom("x.y"), data={"n": 1})
    decoded = HookContext.from_json(child.to_json())
    assert decoded == child
    assert decoded.hook_point == HookPoint.custom("x.y")
    assert decoded.parent is not None
    assert decoded.parent.point is HookPoint.BEFORE_AGENT_EXECUTION


def test_child_keeps_correlation_and_copy_isolates(make_ctx) -> None:  # type: ignore[no-untyped-def]
    ctx = make_ctx(a=1)
    ctx.metadata["user"] = "u1"
    child = ctx.child(HookPoint.AFTER_TOOL_EXECUTION)
    assert child.correlation_id == ctx.correlation_id
    assert child.parent is ctx
    assert child.metadata == {"user": "u1"}
    assert child.component == ctx.component
    copy = ctx.copy()
    copy.data["a"] = 2
    copy.metadata["user"] = "u2"
    assert ctx.data == {"a": 1} and ctx.metadata == {"user": "u1"}
    other = make_ctx()
    assert other.correlation_id != ctx.correlation_id


def test_context_to_json_names_bad_paths(make_ctx) -> None:  # type: ignore[no-untyped-def]
    ctx = make_ctx(when=object())
    with pytest.raises(NotJsonSafeError) as info:
        ctx.to_json()
    assert info.value.path == "context.data.when"
    ctx = make_ctx()
    ctx.metadata["n"] = 5  # type: ignore[assignment]
    with pytest.raises(InvalidValueError, match="metadata"):
        ctx.to_json()
    with pytest.raises(SerializationError):
        HookContext.from_json(b"{}")


def test_component_id_of() -> None:
    comp = ComponentId.of("tool", "calc")
    assert comp.type is ComponentType.TOOL and comp.id
    with pytest.raises(InvalidValueError, match="agent"):
        ComponentId.of("gizmo", "x")
