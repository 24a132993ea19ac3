"""The JavaScript engine: limits, errors with file and line, the engine staying usable,
promise bookkeeping, async hooks and callbacks, the owner thread."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from llmspell.errors import (
    InvalidValueError,
    OperationCancelledError,
    ScriptError,
    ScriptTimeoutError,
)
from llmspell.hooks import HookPoint
from llmspell.runtime import System
from llmspell.scripting import ScriptHost
from llmspell.scripting.js import JsEngine
from llmspell.scripting.lua import MIB
from llmspell.scripting.protocol import drive

from .conftest import Recorder


def run(engine: JsEngine, source: str, name: str = "t.js",
        time_budget: float | None = None) -> Any:
    fn = engine.compile(source, name)
    try:
        return drive(engine, engine.start(fn, (), time_budget=time_budget),
                     lambda op, args: None)
    finally:
        engine.release(fn)


def test_limits_stop_scripts_and_the_engine_stays_usable() -> None:
    engine = JsEngine(time_budget=0.05, max_memory=4 * MIB)
    with pytest.raises(ScriptTimeoutError) as timeout:
        run(engine, "\nlet n = 0;\nfor (;;) { try { n++ } catch (e) {} }", "loop.js")
    assert timeout.value.script == "loop.js"
    # The other limits get a generous budget: on a loaded machine 50 ms may pass before
    # the memory or stack limit is reached, and the wrong limit would be reported.
    with pytest.raises(ScriptError, match="out of memory"):
        run(engine, "const a = []; for (;;) a.push('x'.repeat(1000) + a.length);",
            time_budget=30)
    with pytest.raises(ScriptError, match=r"stack|Maximum call stack"):
        run(engine, "function f() { return f() + 1 } return f();", time_budget=30)
    assert run(engine, "return 1 + 1", time_budget=30) == 2
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
    for _ in range(1000):  # up to ~10 s: an idle machine needs a round or two
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


async def test_host_call_errors_name_the_scripts_file_and_line(script_system: System,
                                                               script_host: ScriptHost) -> None:
    with pytest.raises(ScriptError) as caught:
        await script_host.run_js_async("const x = 1;\nawait Tool.invoke('nope', {});",
                                       name="e3.js")
    assert caught.value.script == "e3.js" and caught.value.line == 2
    assert str(caught.value).startswith("e3.js:2: ToolNotFoundError")
    assert caught.value.traceback == "    at <anonymous> (e3.js:2)"
    # inside a function, through an alias, in a hook defined by another file
    await script_host.run_js_async(
        "await Hook.register('BeforeToolExecution', async (ctx) => {\n"
        "  if (ctx.component_id.name !== 'backup') return;\n"
        "  await State.get(42);\n"
        "}, {name: 'looker'});", name="hooks.js")
    with pytest.raises(ScriptError) as inner:
        await script_host.run_js_async("\n\nasync function f() {\n  await Tool.execute('nope');\n}"
                                       "\nawait f();", name="f.js")
    assert inner.value.line == 4 and "f.js:4" in (inner.value.traceback or "")
    assert "f.js:6" in (inner.value.traceback or "")
    await script_system.tools.execute("backup", {"n": 1})  # the hook fails open
    failure = next(f for f in script_system.executor.failures() if f.hook == "looker")
    assert "hooks.js:3:" in failure.message
    # arguments that cannot be sent fail where the call was made, and can be caught
    out = await script_host.run_js_async(
        "let seen;\ntry {\n  await Tool.invoke('count', {n: 1n});\n} catch (e) { seen = e; }\n"
        "return [seen.name, seen.message, await Tool.invoke('count', {n: 2})];")
    assert out[0] == "TypeError" and "BigInt" in out[1] and out[2] == 4


async def test_the_time_budget_is_per_call_across_awaited_host_calls(
        script_host: ScriptHost, recorder: Recorder) -> None:
    # every slice between two host calls stays far under the budget; together they do not
    source = """
      for (let i = 0; i < 40; i++) {
        const until = Date.now() + 50;
        while (Date.now() < until) {}
        await Tool.invoke("count", {n: i});
      }
      return "finished";
    """
    with pytest.raises(ScriptTimeoutError, match=r"time budget of 0\.3 s") as caught:
        await script_host.run_js_async(source, name="busy.js", time_budget=0.3)
    assert caught.value.script == "busy.js" and caught.value.line in (3, 4, 5)
    assert len(recorder.counted) < 40
    assert script_host.js.engine.counts()[1:] == [0, 0, 0]  # the call is gone, and its requests
    # a hook gets a fresh budget for each call, and the engine goes on working
    assert await script_host.run_js_async("return 1 + 1") == 2


GUARD = """
await Hook.register("BeforeToolExecution", async (ctx) => {
  if (ctx.component_id.name !== "count") return;
  const seen = await State.get("guard.seen", {default: 0});
  await State.set("guard.seen", seen + 1);
  return {type: "cancel", reason: "denied by the guard"};
}, {name: "guard", priority: "highest"});
"""
# Built-ins the host glue uses. The first group the glue no longer reads at all (it keeps
# the originals); the second it still depends on, so they are put back and the call fails.
REPLACED = {
    "JSON.stringify": "JSON.stringify = () => { throw new Error('poisoned'); };",
    "JSON.stringify junk": "JSON.stringify = () => 'not json';",
    "JSON.parse": "JSON.parse = () => { throw new Error('poisoned'); };",
    "Map methods": "Map.prototype.get = () => undefined; Map.prototype.set = function () "
                   "{ return this; }; Map.prototype.delete = () => false;",
    "Promise": "globalThis.Promise = function () { throw new Error('poisoned'); };",
    "Promise[Symbol.species]": "try { Object.defineProperty(Promise, Symbol.species, "
                               "{get() { throw new Error('p'); }}); } catch (e) {}",
    "Object statics": "for (const k of ['keys', 'freeze', 'defineProperty', 'hasOwn', "
                      "'getOwnPropertyDescriptor']) Object[k] = () => { throw new Error('p'); };",
    "Reflect": "for (const k of Object.getOwnPropertyNames(Reflect)) "
               "Reflect[k] = () => { throw new Error('poisoned'); };",
    "Function.prototype": "Function.prototype.call = Function.prototype.apply = "
                          "Function.prototype.bind = () => { throw new Error('poisoned'); };",
    "Array iteration": "Array.prototype[Symbol.iterator] = function* () {}; "
                       "Array.prototype.push = () => { throw new Error('poisoned'); }; "
                       "Array.prototype.map = () => [];",
    "descriptor getters": "Object.prototype.get = () => 1; Object.prototype.value = 2;",
    "Error and String": "globalThis.Error = function () { throw new Error('p'); }; "
                        "globalThis.String = () => { throw new Error('poisoned'); };",
    "Number.isFinite": "Number.isFinite = () => false;",
    "Object.prototype index setters": "for (const i of ['0', '1', '2', '3']) "
                                      "Object.defineProperty(Object.prototype, i, {set() { "
                                      "throw new Error('poisoned'); }, configurable: true});",
}
RESTORED = {
    "Promise.prototype.then": "Promise.prototype.then = function () { throw new Error('p'); };",
    "Promise.prototype.constructor": "Promise.prototype.constructor = function () {};",
    "Object.prototype.then": "Object.prototype.then = (resolve) => resolve('poisoned');",
    "Object.prototype.toJSON": "Object.prototype.toJSON = () => 'poisoned';",
    "Array.prototype.toJSON": "Array.prototype.toJSON = () => { throw new Error('p'); };",
    "Error.prepareStackTrace": "Error.prepareStackTrace = () => { for (;;) {} };",
    "Array.prototype[0...]": "Object.defineProperty(Array.prototype, '1', {set() { throw new "
                             "Error('poisoned'); }, configurable: true});",
    "the prototype of Array.prototype":
        "Object.setPrototypeOf(Array.prototype, {__proto__: Object.prototype, "
        "then(resolve) { resolve('poisoned'); }});",
}


async def _guard_still_denies(system: System, host: ScriptHost, recorder: Recorder) -> None:
    with pytest.raises(OperationCancelledError, match="denied by the guard"):
        await system.tools.execute("count", {"n": 1})
    assert recorder.counted == []
    assert await system.state.get("guard.seen") == 1
    # later scripts work, host calls and all
    assert await host.run_js_async("""
      await State.set("later", {n: [1, 2]});
      const got = await State.get("later");
      const hooks = await Hook.list("BeforeToolExecution");
      return [await Tool.invoke("backup", {n: got.n[1]}), hooks.length];
    """, name="later.js") == ["backup 2", 1]


@pytest.mark.parametrize("poison", list(REPLACED.values()), ids=list(REPLACED))
async def test_replaced_builtins_do_not_reach_the_host_glue(
        poison: str, script_system: System, script_host: ScriptHost,
        recorder: Recorder) -> None:
    await script_host.run_js_async(GUARD, name="guard.js")
    await script_host.run_js_async(poison + "\nreturn 1;", name="poison.js")
    await _guard_still_denies(script_system, script_host, recorder)
    assert script_host.js.engine.resets == 0


@pytest.mark.parametrize("poison", list(RESTORED.values()), ids=list(RESTORED))
async def test_builtins_the_glue_depends_on_are_put_back(
        poison: str, script_system: System, script_host: ScriptHost,
        recorder: Recorder) -> None:
    await script_host.run_js_async(GUARD, name="guard.js")
    with pytest.raises(ScriptError, match="change was undone") as caught:
        await script_host.run_js_async(poison + "\nreturn 1;", name="poison.js")
    assert caught.value.script == "poison.js"
    await _guard_still_denies(script_system, script_host, recorder)
    assert script_host.js.engine.resets == 0


async def test_a_change_that_cannot_be_put_back_resets_the_engine(
        script_system: System, script_host: ScriptHost) -> None:
    await script_host.run_js_async(GUARD, name="guard.js")
    with pytest.raises(ScriptError, match="engine was reset"):
        await script_host.run_js_async(
            "Object.defineProperty(Object.prototype, 'toJSON', {value: () => 'x'});",
            name="poison.js")
    assert script_host.js.engine.resets == 1
    # the fresh context has the built-ins back; the old context's hooks are gone with it
    assert script_system.registry.list("BeforeToolExecution") == []
    assert await script_host.run_js_async(
        "return [typeof Object.prototype.toJSON, await Tool.invoke('count', {n: 3})]") == \
        ["undefined", 6]


async def test_seed_api_options_from_javascript(script_system: System,
                                                script_host: ScriptHost) -> None:
    """What the Lua side added to the shared globals (Event.publish's ``language`` and
    ``ttl_seconds``, ``version``/``description`` in Hook.register and Hook.list) works the
    same from JavaScript, and JSON.parse/JSON.stringify are the language's own."""
    seen: list[Any] = []
    script_system.bus.subscribe("seed.*", seen.append, mode="inline")
    out = await script_host.run_js_async("""
      await Event.publish("seed.one", {n: 1}, {language: "lua", ttl_seconds: 30});
      await Hook.register("BeforeToolExecution", () => {},
                          {name: "versioned", version: "2.1.0", description: "checks things"});
      const row = (await Hook.list("BeforeToolExecution"))[0];
      let both = null;
      try { await Event.publish("seed.two", {}, {ttl: 1, ttl_seconds: 1}); }
      catch (e) { both = e.message; }
      return {row, both, json: JSON.parse(JSON.stringify({a: [1, "x"]})),
              same: JSON.encode === JSON.stringify && JSON.decode === JSON.parse};
    """, name="seed.js")
    assert [str(e.language) for e in seen] == ["lua"]
    assert seen[0].metadata.ttl == 30
    assert out["row"]["version"] == "2.1.0" and out["row"]["description"] == "checks things"
    assert "not both" in out["both"]
    assert out["json"] == {"a": [1, "x"]} and out["same"] is True


@pytest.mark.parametrize("ending", ["for (;;) {}",
                                    "const a = []; for (;;) a.push('x'.repeat(1e4));",
                                    "throw new Error('boom');"])
async def test_a_call_that_fails_after_changing_builtins_leaves_them_put_back(
        ending: str, script_system: System, recorder: Recorder) -> None:
    host = ScriptHost(script_system, time_budget=0.1, max_memory=8 * MIB)
    try:
        await host.run_js_async(GUARD, name="guard.js")
        with pytest.raises(ScriptError):
            await host.run_js_async("Object.prototype.then = (resolve) => resolve('x');\n"
                                    "Array.prototype.toJSON = () => 'x';\n" + ending,
                                    name="poison.js")
        assert await host.run_js_async("return [typeof ({}).then, typeof [].toJSON]") == \
            ["undefined", "undefined"]
        await _guard_still_denies(script_system, host, recorder)
    finally:
        host.close()
