"""The engines build a hook context's and an event's view on fast paths (Lua from the fields,
JavaScript encoding only what the caller supplied, a sync call answered in its entry): what
the script sees and every error must be what the checked conversion of the view gives."""

from __future__ import annotations

from typing import Any

import pytest

from llmspell.errors import InvalidValueError
from llmspell.events import UniversalEvent
from llmspell.hooks import ComponentId, ComponentType, HookContext, HookPoint, Modified
from llmspell.runtime import System, SystemConfig
from llmspell.scripting import ScriptHost
from llmspell.scripting.host import event_view, hook_context_view
from llmspell.scripting.js import JsEngine
from llmspell.scripting.lua import LuaEngine
from llmspell.scripting.protocol import Finished, Outcome

POINT = HookPoint.BEFORE_TOOL_EXECUTION


def ctx_with(data: dict[str, Any], metadata: dict[str, str] | None = None) -> HookContext:
    return HookContext(point=POINT, component=ComponentId(type=ComponentType.TOOL, name="calc"),
                       data=data, metadata=metadata or {})


CONTEXTS = [
    ctx_with({}),
    ctx_with({"n": 1, "tag": "x", "f": 1.5, "ok": True}),
    ctx_with({"none": None, "list": [1, None, {"deep": None}], "empty": []}, {"a": "b"}),
    HookContext(point=POINT, component=ComponentId(type=ComponentType.TOOL, name="kalkül😀"),
                data={"x": "ü", "big": 2**40}, correlation_id="é"),
]
EVENTS = [
    UniversalEvent.create("t.plain", {"i": 1}),
    UniversalEvent.create("t.none"),
    UniversalEvent.create("t.scalar", 5, correlation_id="c", source="s", target="t",
                          tags=["x", "y"], priority=3),
    UniversalEvent.create("t.nulls", {"a": None, "b": [None, 2.5]}, tags=["only"]),
]


def finished(outcome: Outcome) -> Any:
    assert isinstance(outcome, Finished)
    return outcome.value


@pytest.mark.parametrize("ctx", CONTEXTS)
def test_a_lua_hook_view_is_the_checked_conversions(ctx: HookContext) -> None:
    engine = LuaEngine()
    echo = engine.compile("return function(v) return v end")
    fn = engine.call_raw(echo)[0]
    assert finished(engine.start_hook(fn, ctx)) == \
        finished(engine.start(fn, (hook_context_view(ctx),)))


@pytest.mark.parametrize("event", EVENTS)
def test_a_lua_event_view_is_the_checked_conversions(event: UniversalEvent) -> None:
    engine = LuaEngine()
    fn = engine.call_raw(engine.compile("return function(v) return v end"))[0]
    assert finished(engine.start_event(fn, event)) == \
        finished(engine.start(fn, (event_view(event),)))


def test_lua_view_tables_are_fresh_and_nulls_are_json_null() -> None:
    host = ScriptHost(System(SystemConfig(store="none")))
    try:
        host.run_lua("""
seen = {}
Event.subscribe("v.*", function(e)
  e.tags[1] = "changed"
  seen[#seen + 1] = {e.metadata.tags[1], e.correlation_id == JSON.null, e.data.x == JSON.null}
end)""")
        for _ in range(2):
            host.system.bus.publish(UniversalEvent.create("v.a", {"x": None}, tags=["t"]))
        assert host.run_lua("return seen") == [["t", True, True], ["t", True, True]]
    finally:
        host.close()


@pytest.mark.parametrize("data", [{"big": 2**64}, {"bad": {1, 2}}, {"nan": float("nan")}])
def test_lua_bad_values_get_the_checked_paths_errors(data: dict[str, Any]) -> None:
    engine = LuaEngine()
    fn = engine.call_raw(engine.compile("return function(v) return v end"))[0]
    ctx = ctx_with(data)
    with pytest.raises(InvalidValueError) as fast:
        engine.start_hook(fn, ctx)
    with pytest.raises(InvalidValueError) as checked:
        engine.start(fn, (hook_context_view(ctx),))
    assert str(fast.value) == str(checked.value) and "argument 1.data" in str(fast.value)
    if "big" not in data:
        return  # an event's data is JSON-safe: only a big int can reach the engine
    event = UniversalEvent(event_type="e", data=data)
    with pytest.raises(InvalidValueError) as fast_event:
        engine.start_event(fn, event)
    with pytest.raises(InvalidValueError) as checked_event:
        engine.start(fn, (event_view(event),))
    assert str(fast_event.value) == str(checked_event.value)


@pytest.mark.parametrize("ctx", CONTEXTS)
def test_a_js_hook_view_is_the_checked_conversions(ctx: HookContext) -> None:
    engine = JsEngine()
    echo = engine.with_host("(function (host) { return host.store((v) => v); })", "<t>")
    assert finished(engine.start_hook(echo, ctx)) == \
        finished(engine.start(echo, (hook_context_view(ctx),)))


@pytest.mark.parametrize("event", EVENTS)
def test_a_js_event_view_is_the_checked_conversions(event: UniversalEvent) -> None:
    engine = JsEngine()
    echo = engine.with_host("(function (host) { return host.store((v) => v); })", "<t>")
    assert finished(engine.start_event(echo, event)) == \
        finished(engine.start(echo, (event_view(event),)))


def test_js_bad_values_get_the_checked_paths_errors() -> None:
    engine = JsEngine()
    echo = engine.with_host("(function (host) { return host.store((v) => v); })", "<t>")
    ctx = ctx_with({"big": 2**60})
    with pytest.raises(InvalidValueError) as fast:
        engine.start_hook(echo, ctx)
    with pytest.raises(InvalidValueError) as checked:
        engine.start(echo, (hook_context_view(ctx),))
    assert str(fast.value) == str(checked.value) and "2**53" in str(fast.value)


def test_js_answers_restore_big_numbers_and_functions_only_when_present() -> None:
    engine = JsEngine()
    engine.function_wrapper = lambda ref, path: ("fn", int(ref), path)
    sync = engine.with_host(
        "(function (host) { return host.store(() => ({big: 2 ** 60, small: 3, "
        "f: () => 1})); })", "<t>")
    value = finished(engine.start(sync, ()))
    assert value["big"] == float(2**60) and type(value["big"]) is float
    assert value["small"] == 3 and value["f"][0] == "fn" and value["f"][2] == "value[1].f"
    plain = engine.with_host("(function (host) { return host.store(() => [1, 'a', 2.5]); })",
                             "<t>")
    assert finished(engine.start(plain, ())) == [1, "a", 2.5]


def test_a_sync_js_hook_whose_jobs_change_its_result_is_answered_after_the_jobs() -> None:
    system = System(SystemConfig(store="none"))
    host = ScriptHost(system)
    try:
        host.run_js("""
await Hook.register("BeforeToolExecution", (ctx) => {
  const data = {n: ctx.data.n + 1};
  Promise.resolve().then(() => { data.n = 100; });
  return {type: "modified", data};
});""")
        result = system.executor.execute_sync(ctx_with({"n": 1}))
        assert isinstance(result.result, Modified) and result.result.data == {"n": 100}
        assert host.js.engine.counts()[1] == 0  # no call left behind
    finally:
        host.close()


def test_a_sync_js_hook_is_answered_in_its_entry_and_leaves_nothing_behind() -> None:
    system = System(SystemConfig(store="none"))
    host = ScriptHost(system)
    try:
        host.run_js('await Hook.register("BeforeToolExecution", '
                    '(ctx) => ({type: "modified", data: {n: ctx.data.n + 1}}));')
        ctx = ctx_with({"n": 1})
        for _ in range(3):
            system.executor.execute_sync(ctx)
        assert ctx.data == {"n": 4}
        assert host.js.engine.counts()[1:] == [0, 0, 0]
    finally:
        host.close()
