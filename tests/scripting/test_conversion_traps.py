"""Script code that runs while a value crosses into Python: JavaScript getters, ``toJSON``
and Proxy traps (``JSON.stringify`` runs them in the engine, under the time budget), and Lua
metamethods (never run: the converter reads tables raw). What got through is fixed (each
test failing on the code before the fix); the attempts already handled are kept compact.
Hostile cases run in a child process with a kill timer, so a regression cannot hang the
suite."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from llmspell.errors import ScriptError, ScriptTimeoutError
from llmspell.runtime import System, SystemConfig
from llmspell.scripting import ScriptHost
from tests.scripting.child import run_in_child


@pytest.fixture
def host() -> Iterator[ScriptHost]:
    h = ScriptHost(System(SystemConfig(store="memory")), time_budget=2.0)
    yield h
    h.close()


# -- fixed: what a conversion of a call's answer did landed in the NEXT call ---------------
# Requests made while the answer was encoded stayed in the outbox after the call finished
# and were performed by whichever call came next (or never); a built-in changed there made
# the next, innocent call fail (or reset the engine, removing every script's hooks).
@pytest.mark.parametrize("answer", [
    "{get a() { State.set('done', 1); Event.publish('trap.hit', {}); return 1; }}",
    "{toJSON() { State.set('done', 1); Event.publish('trap.hit', {}); return {a: 1}; }}",
    "new Proxy({a: 1}, {get(t, k) { if (k === 'a') { State.set('done', 1); "
    "Event.publish('trap.hit', {}); } return t[k]; }})",
])
def test_requests_made_while_the_answer_is_encoded_belong_to_the_call(answer: str) -> None:
    system = System(SystemConfig(store="memory"))
    seen: list[Any] = []
    system.bus.subscribe("trap.*", seen.append)
    host = ScriptHost(system, time_budget=2.0)
    try:
        assert host.run_js(f"return {answer}") == {"a": 1}
        # performed by this call, before it answered
        assert asyncio.run(system.state.get("done")) == 1
        assert len(seen) == 1
        assert host.js.engine.counts()[1:] == [0, 0, 0]
        assert host.run_js("return 2") == 2
        assert len(seen) == 1
    finally:
        host.close()


def test_requests_made_while_a_hook_result_is_encoded_belong_to_the_hook() -> None:
    async def scenario() -> None:
        system = System(SystemConfig(store="memory"))
        await system.start()
        host = ScriptHost(system, time_budget=2.0)
        try:
            await host.run_js_async(
                "await Hook.register('BeforeToolExecution', (ctx) => ({get type() { "
                "State.set('hooked', ctx.component_id.name); return 'continue'; }}))")
            from llmspell.runtime import tool

            @tool()
            def noop() -> str:
                """Nothing."""
                return "ok"

            system.tools.register(noop)
            assert await system.tools.execute("noop", {}) == "ok"
            assert await system.state.get("hooked") == "noop"
        finally:
            host.close()
            await system.shutdown()

    asyncio.run(scenario())


@pytest.mark.parametrize("change", [
    "Object.prototype.toJSON = () => 9",
    "Object.defineProperty(Object.prototype, 'then', {value: 1})",
])
def test_a_built_in_changed_while_the_answer_is_encoded_fails_this_call(
        host: ScriptHost, change: str) -> None:
    with pytest.raises(ScriptError, match=r"the script changed Object\.prototype"):
        host.run_js(f"return {{get a() {{ {change}; return 1; }}}}")
    assert host.run_js("return 2") == 2  # not the next call


# -- handled: loops and errors during conversion (JavaScript) --------------------------------
_JS_LOOPS = {
    "answer-getter": "return {get a() { for (;;) {} }}",
    "answer-toJSON": "return {toJSON() { for (;;) {} }}",
    "answer-proxy-get": "return new Proxy({a: 1}, {get() { for (;;) {} }})",
    "answer-proxy-ownKeys": "return new Proxy({a: 1}, {ownKeys() { for (;;) {} }})",
    "answer-proxy-descriptor": ("return new Proxy({a: 1}, "
                                "{getOwnPropertyDescriptor() { for (;;) {} }})"),
    "answer-growing-getter": ("const o = {}; let i = 0; const g = {enumerable: true, "
                              "get() { Object.defineProperty(o, 'k' + i++, g); for (;;) {} }}; "
                              "Object.defineProperty(o, 'a', g); return o"),
    "tool-argument": "return await Tool.invoke('count', {get n() { for (;;) {} }})",
    "publish-data": "await Event.publish('x.y', {toJSON() { for (;;) {} }}); return 1",
    "state-value": "await State.set('k', new Proxy({}, {ownKeys() { for (;;) {} }})); return 1",
    "hook-result": "",  # see _loop_child
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(_JS_LOOPS))
def test_a_js_loop_during_conversion_is_stopped_by_the_budget(name: str) -> None:
    run_in_child(_loop_child, name, seconds=20,
                 failure=f"{name} ran past its budget for more than 20 s")


def _loop_child(name: str) -> None:
    from llmspell.errors import HookTimeoutError
    from llmspell.runtime import tool

    async def scenario() -> None:
        system = System(SystemConfig(store="memory"))
        await system.start()

        @tool()
        def count(n: int) -> int:
            """Double n."""
            return n * 2

        system.tools.register(count)
        host = ScriptHost(system, time_budget=0.2)
        if name == "hook-result":
            await host.run_js_async("await Hook.register('BeforeToolExecution', "
                                    "() => ({get type() { for (;;) {} }}))")
            # stopped: the hook's error policy decides whether the tool still runs
            with contextlib.suppress(HookTimeoutError):
                await system.tools.execute("count", {"n": 1})
        else:
            try:
                await host.run_js_async(_JS_LOOPS[name])
            except ScriptTimeoutError:
                pass
            else:
                raise AssertionError("not stopped")
        assert await host.run_js_async("return 1 + 1") == 2
        host.close()
        await system.shutdown()

    asyncio.run(scenario())


@pytest.mark.parametrize(("source", "needle"), [
    ("return {get a() { throw new Error('boom'); }}", "Error: boom"),
    ("return {toJSON() { throw new TypeError('tj'); }}", "TypeError: tj"),
    ("return new Proxy({a: 1}, {ownKeys() { throw new Error('keys'); }})", "Error: keys"),
])
def test_a_js_error_during_conversion_is_a_script_error(host: ScriptHost, source: str,
                                                        needle: str) -> None:
    with pytest.raises(ScriptError, match=needle):
        host.run_js(source)
    assert host.run_js("return 2") == 2


def test_a_request_argument_that_throws_fails_that_request(host: ScriptHost) -> None:
    assert host.run_js("""
        const out = [];
        for (const arg of [{get n() { throw new Error('x'); }},
                           new Proxy({n: 1}, {ownKeys() { throw new Error('y'); }})]) {
          try { await State.set('k', arg); } catch (e) { out.push(e.message); }
        }
        return out""") == ["x", "y"]
    assert host.run_js("return await State.get('k')") is None


def test_a_getter_that_reenters_the_host_from_a_request_argument(host: ScriptHost) -> None:
    # the inner request goes out with the next batch of the same call
    assert host.run_js("""
        await State.set('outer', {get v() { State.set('inner', 1); return 2; }});
        return [await State.get('outer'), await State.get('inner')]""") == [{"v": 2}, 1]


def test_a_value_that_changes_shape_while_read_is_read_once(host: ScriptHost) -> None:
    assert host.run_js("""
        const o = {}; let i = 0;
        Object.defineProperty(o, 'a', {enumerable: true, get() { o['k' + i++] = 1; return 1; }});
        const a = [1];
        Object.defineProperty(a, 0, {enumerable: true, get() { a.push(2); return 1; }});
        return [o, a]""") == [{"a": 1}, [1]]


# -- handled: Lua metamethods never run during conversion (raw access) -----------------------
_MM = {"loop": "function() while true do end end", "error": "function() error('mm') end",
       "yield": "function() coroutine.yield() end",
       "reenter": "function() State.set('lua', 1) Event.publish('trap.lua', {}) return 1 end"}


@pytest.mark.timeout(60)
def test_lua_metamethods_do_not_run_during_conversion() -> None:
    run_in_child(_lua_child, seconds=30,
                 failure="a Lua metamethod ran during conversion")


def _lua_child() -> None:
    system = System(SystemConfig(store="memory"))
    seen: list[Any] = []
    system.bus.subscribe("trap.*", seen.append)
    host = ScriptHost(system, time_budget=0.2)
    expected = {"{a = 1, b = {c = 2}}": {"a": 1, "b": {"c": 2}}, "{1, 2, 3}": [1, 2, 3],
                "{}": {}}
    for event in ("__index", "__pairs", "__len", "__tostring", "__eq", "__call"):
        for body in _MM.values():
            for shape, value in expected.items():
                meta = f"setmetatable({shape}, {{{event} = {body}}})"
                assert host.run_lua(f"return {meta}") == value
                assert host.run_lua(f"return {{x = {meta}}}") == {"x": value}
    assert host.run_lua("return Event.publish('trap.x', setmetatable({a = 1}, "
                        f"{{__pairs = {_MM['loop']}, __index = {_MM['loop']}}}))")
    assert host.run_lua("return State.get('lua')") is None
    assert len(seen) == 1  # the publish itself, no metamethod's
