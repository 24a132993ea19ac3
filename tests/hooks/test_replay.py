from __future__ import annotations

import asyncio

import pytest
from hypothesis import given

from llmspell.errors import InvalidValueError, NotJsonSafeError, SerializationError
from llmspell.hooks import (
    CONTINUE,
    BaseHook,
    Cache,
    Cancel,
    Fork,
    ForkOperation,
    HookExecutor,
    HookPoint,
    HookRegistry,
    Modified,
    Redirect,
    Replace,
    Retry,
    Skipped,
)
from llmspell.hooks.replay import DictHookAdapter, HookAdapter, Replayable, ReplayableHook
from tests.hooks.test_context_results import results


def test_replayable_wraps_a_function_and_replays_a_stored_call(make_ctx) -> None:  # type: ignore[no-untyped-def]
    def double(ctx):  # type: ignore[no-untyped-def]
        return Modified({"n": ctx.data["n"] * 2})

    hook = Replayable(double, name="double", version="1.2.0")
    assert isinstance(hook, ReplayableHook)
    assert hook.replay_id == "double:1.2.0"
    stored = hook.serialize_context(make_ctx(n=21))
    assert hook.replay(stored) == Modified({"n": 42})
    assert hook.deserialize_result(hook.serialize_result(Modified({"n": 42}))) == Modified(
        {"n": 42})
    assert hook.deserialize_context(stored).data == {"n": 21}


def test_replayable_registers_like_any_hook_and_keeps_object_metadata(make_ctx) -> None:  # type: ignore[no-untyped-def]
    class Guard(BaseHook):
        def execute(self, ctx):  # type: ignore[no-untyped-def]
            return Cancel("blocked")

        def should_execute(self, ctx):  # type: ignore[no-untyped-def]
            return ctx.data.get("risky", False)

    hook = Replayable(Guard(name="guard", version="3.0"))
    assert hook.replay_id == "guard:3.0"
    reg = HookRegistry()
    reg.register(HookPoint.BEFORE_TOOL_EXECUTION, hook)
    ex = HookExecutor(reg)
    assert ex.execute_sync(make_ctx(risky=True)).cancelled
    assert not ex.execute_sync(make_ctx()).cancelled
    assert not hook.should_execute(make_ctx())


def test_async_hooks_replay_both_ways(make_ctx) -> None:  # type: ignore[no-untyped-def]
    async def later(ctx):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0)

    hook = Replayable(later)
    stored = hook.serialize_context(make_ctx())
    assert hook.replay(stored) is CONTINUE
    assert asyncio.run(hook.replay_async(stored)) is CONTINUE


def test_replay_errors_are_clear(make_ctx) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidValueError):
        Replayable(42)
    hook = Replayable(lambda c: "nope", name="bad")
    with pytest.raises(InvalidValueError, match="bad"):
        hook.replay(hook.serialize_context(make_ctx()))
    with pytest.raises(NotJsonSafeError):
        hook.serialize_context(make_ctx(x=object()))
    with pytest.raises(SerializationError):
        hook.deserialize_context(b"not json")


@given(results)
def test_dict_adapter_round_trips_every_result(result) -> None:  # type: ignore[no-untyped-def]
    adapter = DictHookAdapter()
    assert adapter.adapt_result(adapter.result_to_value(result)) == result


def test_dict_adapter_reads_the_seed_script_forms(make_ctx) -> None:  # type: ignore[no-untyped-def]
    adapter = DictHookAdapter()
    assert isinstance(adapter, HookAdapter)
    assert adapter.adapt_result(None) is CONTINUE
    assert adapter.adapt_result("continue") is CONTINUE
    assert adapter.adapt_result({"type": "modified", "data": {"a": 1}}) == Modified({"a": 1})
    assert adapter.adapt_result({"type": "cancel"}) == Cancel("cancelled by hook")
    assert adapter.adapt_result({"type": "Redirect", "target": "t"}) == Redirect("t")
    assert adapter.adapt_result({"type": "replace", "value": [1]}) == Replace([1])
    assert adapter.adapt_result({"type": "retry", "delay_ms": 250}) == Retry(0.25, 3)
    assert adapter.adapt_result({"type": "cache", "key": "k", "ttl": 5}) == Cache("k", 5.0)
    assert adapter.adapt_result({"type": "skipped"}) == Skipped("skipped by hook")
    assert adapter.adapt_result(
        {"type": "fork", "operations": [{"type": "tool", "target": "x"}]}
    ) == Fork((ForkOperation(type="tool", target="x"),))
    ctx_value = adapter.adapt_context(make_ctx(q="hi"))
    assert ctx_value["point"] == "before_tool_execution" and ctx_value["data"] == {"q": "hi"}


@pytest.mark.parametrize(
    "value",
    ["maybe", 42, {"type": "explode"}, {"type": "modified"}, {"type": "redirect"},
     {"type": "retry", "delay": -1}],
)
def test_dict_adapter_refuses_bad_values_with_a_hint(value: object) -> None:
    with pytest.raises((SerializationError, InvalidValueError)):
        DictHookAdapter().adapt_result(value)


def test_dict_adapter_extracts_errors() -> None:
    adapter = DictHookAdapter()
    err = adapter.extract_error({"type": "error", "message": "lua blew up"})
    assert err is not None and "lua blew up" in str(err)
    assert adapter.extract_error({"type": "continue"}) is None
    assert adapter.extract_error("x") is None
