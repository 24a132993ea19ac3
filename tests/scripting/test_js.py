"""The JavaScript engine: limits, errors with file and line, the engine staying usable,
promise bookkeeping, async hooks and callbacks, the owner thread."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from llmspell.errors import InvalidValueError, ScriptError, ScriptTimeoutError
from llmspell.hooks import HookPoint
from llmspell.runtime import System
from llmspell.scripting import ScriptHost
from llmspell.scripting.js import JsEngine
from llmspell.scripting.lua import MIB
from llmspell.scripting.protocol import drive

from .conftest import Recorder


def run(engine: JsEngine, source: str, name: str = "t.js") -> Any:
    fn = engine.compile(source, name)
    try:
        return drive(engine, engine.start(fn, ()), lambda op, args: None)
    finally:
        engine.release(fn)


def test_limits_stop_scripts_and_the_engine_stays_usable() -> None:
    engine = JsEngine(time_budget=0.05, max_memory=4 * MIB)
    with pytest.raises(ScriptTimeoutError) as timeout:
        run(engine, "\nlet n = 0;\nfor (;;) { try { n++ } catch (e) {} }", "loop.js")
    assert timeout.value.script == "loop.js"
    with pytest.raises(ScriptError, match="out of memory"):
        run(engine, "const a = []; for (;;) a.push('x'.repeat(1000) + a.length);")
    with pytest.raises(ScriptError, match=r"stack|Maximum call stack"):
        run(engine, "function f() { return f() + 1 } return f();")
    assert run(engine, "return 1 + 1") == 2
    assert engine.counts()[1:] == [0, 0, 0]  # no call, promise or request left behind
    assert engine.memory_used() > 0


async def test_a_promise_chain_that_never_ends_resets_the_engine(
        script_system: System) -> None:
    host = ScriptHost(script_system, time_budget=0.05)
    await host.run_js_async("await Hook.register('BeforeToolExecution', () => {});"
                            "globalThis.kept = 1;")
    assert len(script_system.registry.list("BeforeToolExecution")) == 1
    with pytest.raises(ScriptTimeoutError, match="engine was reset"):
        await host.run_js_async("const spin = () => Promise.resolve().then(spin); spin(); "
                                "await new Promise(() => {});", name="spin.js")
    assert host.js.engine.resets == 1
    # the old context is gone with its hooks; the globals are back and the engine works
    assert script_system.registry.list("BeforeToolExecution") == []
    assert await host.run_js_async("return [typeof kept, typeof Hook.register, 1 + 1]") == \
        ["undefined", "function", 2]
    host.close()


def test_errors_name_the_file_line_and_stack() -> None:
    engine = JsEngine()
    with pytest.raises(ScriptError) as caught:
        run(engine, "\n\nfunction inner() { null.x }\ninner();", "boom.js")
    assert caught.value.script == "boom.js" and caught.value.line == 3
    assert "TypeError" in str(caught.value)
    assert caught.value.traceback and "boom.js:3" in caught.value.traceback
    with pytest.raises(ScriptError, match="syntax error") as syntax:
        engine.compile("\nlet = = 1", "bad.js")
    assert syntax.value.line == 2
    with pytest.raises(ScriptError, match=r"never|nothing will settle"):
        run(engine, "await new Promise(() => {});")
    with pytest.raises(ScriptError, match="thrown string"):
        run(engine, "throw 'thrown string'")


def test_engine_arguments_are_checked() -> None:
    with pytest.raises(InvalidValueError, match="max_memory"):
        JsEngine(max_memory=1024)
    with pytest.raises(InvalidValueError, match="time_budget"):
        JsEngine(time_budget=0)


def test_the_sandbox_has_no_way_out(script_host: ScriptHost) -> None:
    out = script_host.run_js("""
      const failures = {};
      for (const [name, f] of [["require", () => require("fs")], ["fetch", () => fetch("x")],
                               ["env", () => process.env.HOME], ["exit", () => process.exit(1)]]) {
        try { await f(); failures[name] = "allowed"; } catch (e) { failures[name] = e.message; }
      }
      return {failures, std: typeof std, os: typeof os, Deno: typeof Deno};
    """)
    assert "no flag enables it" in out["failures"]["require"]
    assert "--allow-net" in out["failures"]["fetch"]
    assert "--allow-env" in out["failures"]["env"]
    assert out["std"] == out["os"] == out["Deno"] == "undefined"


async def test_async_hooks_and_callbacks_may_use_the_host(script_system: System,
                                                          script_host: ScriptHost,
                                                          recorder: Recorder) -> None:
    await script_host.run_js_async("""
      await Hook.register("BeforeToolExecution", async (ctx) => {
        if (ctx.component_id.name !== "backup") return;
        const looked = await State.get("bonus", {default: 1});
        const data = ctx.data;
        data.params.n += looked;
        return {type: "modified", data};
      });
      globalThis.noted = [];
      await Event.subscribe("note.*", async (event) => {
        noted.push(await Tool.invoke("count", {n: event.data.n}));
      });
    """)
    await script_system.state.set("bonus", 10)
    assert await script_system.tools.execute("backup", {"n": 1}) == "backup 11"
    script_system.bus.publish("note.one", {"n": 4})
    for _ in range(50):
        if recorder.counted:
            break
        await script_host.js.engine.run_pending()
        import asyncio
        await asyncio.sleep(0.01)
    assert recorder.counted == [4]
    assert await script_host.run_js_async("return noted") == [8]


def test_callbacks_from_other_threads_wait_for_the_owner(script_system: System,
                                                         script_host: ScriptHost) -> None:
    script_host.run_js("""
      globalThis.got = [];
      await Event.subscribe("far.*", (event) => { got.push(event.data.n); });
    """)
    worker = threading.Thread(target=lambda: script_system.bus.publish("far.away", {"n": 1}))
    worker.start()
    worker.join()
    assert script_host.run_js("return got") == []
    assert script_host.pump() == 1
    assert script_host.run_js("return got") == [1]


def test_hook_handles_and_listing_from_javascript(script_system: System,
                                                  script_host: ScriptHost) -> None:
    out = script_host.run_js("""
      const h = await Hook.register("after_tool_execution", () => {}, "lowest");
      return {id: h.id(), point: h.hookPoint(), name: h.name(),
              listed: (await Hook.list("AfterToolExecution")).map((r) => r.name)};
    """)
    assert out["point"] == "after_tool_execution" and out["listed"] == [out["name"]]
    info = script_system.registry.list(HookPoint.AFTER_TOOL_EXECUTION)
    assert [str(i.language) for i in info] == ["javascript"]
    script_host.close()
    assert script_system.registry.list(HookPoint.AFTER_TOOL_EXECUTION) == []


def test_unregistered_hooks_and_subscriptions_are_forgotten(script_host: ScriptHost) -> None:
    engine = script_host.js.engine
    before = engine.counts()[0]
    script_host.run_js("""
      globalThis.h = await Hook.register("BeforeToolExecution", () => {});
      globalThis.s = await Event.subscribe("a.*", () => {});
    """)
    assert engine.counts()[0] == before + 2
    script_host.run_js("await h.unregister(); await Event.unsubscribe(s);")
    assert engine.counts()[0] == before


def test_events_published_by_a_failing_call_still_go_out(script_system: System,
                                                         recorder: Recorder) -> None:
    host = ScriptHost(script_system, time_budget=0.05)
    seen: list[Any] = []
    script_system.bus.subscribe("done.*", lambda event: seen.append(event.data),
                                mode="inline")
    with pytest.raises(ScriptTimeoutError):
        host.run_js("Event.publish('done.before_loop', {n: 1}); Tool.invoke('count', {n: 5});"
                    "for (;;) {}")
    with pytest.raises(ScriptError, match="boom"):
        host.run_js("Event.publish('done.before_throw', {n: 2}); throw new Error('boom');")
    assert seen == [{"n": 1}, {"n": 2}]
    assert recorder.counted == []  # a tool call the failed script can never see is dropped
    assert host.js.engine.counts()[3] == 0  # nothing left in the outbox
    host.close()
