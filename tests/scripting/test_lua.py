"""The Lua engine: sandbox, limits, and the Hook/Event/JSON/Logger globals on a real system."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llmspell.errors import OperationCancelled, ScriptError, ScriptTimeoutError
from llmspell.events import UniversalEvent
from llmspell.hooks import HookContext, Modified
from llmspell.runtime import ScriptingConfig, System, SystemConfig, tool
from llmspell.scripting import Capabilities, LuaEngine, ScriptHost
from llmspell.scripting import host as scripting_host

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
calls: list[dict[str, int]] = []


@tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    calls.append({"a": a, "b": b})
    return a + b


@tool()
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


@tool()
def flaky(a: int) -> int:
    """Fails on its first call."""
    calls.append({"a": a})
    if len(calls) == 1:
        raise RuntimeError("first call fails")
    return a


@pytest.fixture
async def system() -> AsyncIterator[System]:
    calls.clear()
    sys = System(SystemConfig(store="memory"))
    await sys.start()
    sys.tools.register_all([add, multiply, flaky])
    yield sys
    await sys.shutdown()


@pytest.fixture
def host(system: System) -> ScriptHost:
    return ScriptHost(system, time_budget=0.3)


# -- sandbox and limits ---------------------------------------------------------------------
@pytest.mark.parametrize("script", [SCRIPTS / "hooks.lua", SCRIPTS / "sandbox.lua"],
                         ids=lambda p: p.name)
def test_lua_scripts(script: Path, host: ScriptHost) -> None:
    assert host.run_lua_file(script) == "ok"


def test_allow_env_makes_getenv_available(system: System) -> None:
    host = ScriptHost(system, allow=Capabilities(allow_env=True))
    assert host.run_lua("return os.getenv('PATH') ~= nil") is True


@pytest.mark.parametrize("source", [
    "while true do end",
    "while true do pcall(function() while true do end end) end",
    "while true do xpcall(function() while true do end end, function(e) return e end) end",
    "local co = coroutine.create(function() while true do end end)\n"
    "while true do coroutine.resume(co) end",
    "coroutine.wrap(function() while true do end end)()",
])
def test_runaway_loops_time_out_and_the_engine_stays_usable(source: str) -> None:
    engine = LuaEngine(time_budget=0.1)
    with pytest.raises(ScriptTimeoutError, match="time budget") as info:
        engine.run(source, "loop.lua")
    assert info.value.script == "loop.lua" and info.value.line is not None
    assert engine.run("return 1 + 1") == 2


def test_memory_bomb_is_stopped_and_the_engine_stays_usable() -> None:
    engine = LuaEngine(max_memory=8 * 1024 * 1024)
    with pytest.raises(ScriptError, match="out of memory"):
        engine.run("local s = ('x'):rep(1000000) local t = {} "
                   "for i = 1, 1e9 do t[i] = s .. i end")
    with pytest.raises(ScriptError, match=r"string\.rep"):
        engine.run("return ('x'):rep(1e12)")
    with pytest.raises(ScriptError, match=r"string\.rep"):
        engine.run("return (''):rep(1e12)")
    assert engine.run("return 'still here'") == "still here"


def test_errors_carry_script_line_and_traceback(host: ScriptHost) -> None:
    with pytest.raises(ScriptError) as info:
        host.run_lua("local x = 1\nlocal y = nil\nreturn y.z", name="bad.lua")
    assert (info.value.script, info.value.line) == ("bad.lua", 3)
    assert info.value.traceback and "stack traceback" in info.value.traceback
    with pytest.raises(ScriptError, match="syntax error"):
        host.run_lua("return +", name="syntax.lua")


def test_gc_metamethods_and_binary_chunks_are_refused() -> None:
    engine = LuaEngine()
    with pytest.raises(ScriptError, match="__gc"):
        engine.run("setmetatable({}, {__gc = function() end})")
    assert engine.run("return load('return 1', 'x', 'b')()") == 1  # forced to text mode


# -- hooks on real tool calls ---------------------------------------------------------------
@pytest.mark.parametrize(("body", "expected"), [
    ("return {type='modified', data={tool=ctx.data.tool, params={a=10, b=ctx.data.params.b}}}",
     13),
    ("return {type='replace', value=99}", 99),
    ("if ctx.data.tool == 'add' then return {type='redirect', target='multiply'} end", 6),
    ("return {type='skipped', reason='no'}", 5),
    ("return 'skip'", 5),
    ("return nil", 5),
])
async def test_before_results_from_lua_have_their_effect(
    system: System, host: ScriptHost, body: str, expected: int
) -> None:
    host.run_lua(f"Hook.register('BeforeToolExecution', function(ctx) {body} end)")
    assert await system.tools.execute("add", {"a": 2, "b": 3}) == expected


async def test_cancel_from_lua(system: System, host: ScriptHost) -> None:
    host.run_lua("Hook.register('before_tool_execution', function(ctx) return 'not today' end)")
    with pytest.raises(OperationCancelled, match="not today"):
        await system.tools.execute("add", {"a": 1, "b": 1})
    host.run_lua("Hook.register('before_tool_execution', function() "
                 "return {type='cancel', reason='nope'} end, {name='c2', priority='highest'})")
    with pytest.raises(OperationCancelled, match="nope"):
        await system.tools.execute("add", {"a": 1, "b": 1})


async def test_retry_from_lua_on_tool_error(system: System, host: ScriptHost) -> None:
    host.run_lua("Hook.register('ToolError', function(ctx) "
                 "return {type='retry', delay_ms=1, max_attempts=3} end)")
    assert await system.tools.execute("flaky", {"a": 7}) == 7
    assert len(calls) == 2


async def test_cache_from_lua(system: System, host: ScriptHost) -> None:
    host.run_lua("Hook.register('BeforeToolExecution', function(ctx) "
                 "return {type='cache', key='add:' .. ctx.data.params.a, ttl=60} end)")
    assert await system.tools.execute("add", {"a": 1, "b": 1}) == 2
    assert await system.tools.execute("add", {"a": 1, "b": 1}) == 2
    assert len(calls) == 1


async def test_lua_and_python_hooks_run_in_priority_order(system: System,
                                                          host: ScriptHost) -> None:
    seen: list[int] = []

    def py_hook(ctx: HookContext) -> Modified:
        seen.append(ctx.data["params"]["a"])
        return Modified({**ctx.data, "params": {**ctx.data["params"], "a": 100}})

    system.registry.register("BeforeToolExecution", py_hook, priority="normal")
    host.run_lua("""
      Hook.register('BeforeToolExecution', function(ctx)
        local d = ctx.data d.params.a = d.params.a + 1
        return {type='modified', data=d}
      end, 'high')
      Hook.register('BeforeToolExecution', function(ctx)
        local d = ctx.data d.params.b = ctx.data.params.a
        return {type='modified', data=d}
      end, 'low')
    """)
    assert await system.tools.execute("add", {"a": 1, "b": 0}) == 200
    assert seen == [2]


@pytest.mark.parametrize("body", ["error('broken hook')", "while true do end"])
async def test_failing_lua_hook_is_isolated_and_trips_the_breaker(
    system: System, host: ScriptHost, body: str
) -> None:
    host.run_lua(f"Hook.register('BeforeToolExecution', function() {body} end)")
    for _ in range(4):
        assert await system.tools.execute("add", {"a": 1, "b": 2}) == 3
    failures = system.executor.failures()
    assert failures and failures[0].hook.startswith("lua:")
    assert any(b.state == "open" for b in system.executor.breakers())
    assert len(failures) == 3  # the 4th call was skipped by the open breaker


# -- events -----------------------------------------------------------------------------------
def test_lua_publish_reaches_python_with_language_lua(system: System, host: ScriptHost) -> None:
    got: list[UniversalEvent] = []
    system.bus.subscribe("user.*", got.append, mode="inline")
    event_id = host.run_lua("return Event.publish('user.saved', {n = 1}, {source = 'lua'})")
    host.run_lua("Event.emit('user.other', {1, 2})")
    assert [e.event_type for e in got] == ["user.saved", "user.other"]
    assert got[0].language == "lua" and got[0].data == {"n": 1} and got[0].id == event_id


def test_python_publish_reaches_lua_callback_and_receive(system: System,
                                                         host: ScriptHost) -> None:
    host.run_lua("""
      seen = {}
      cb = Event.subscribe('job.*', function(e) seen[#seen + 1] = e.type .. ':' .. e.data.n end)
      inbox = Event.subscribe('job.done')
    """)
    system.bus.publish("job.done", {"n": 1})
    assert host.run_lua("return seen") == ["job.done:1"]
    assert host.run_lua("local e = Event.receive(inbox, 10) return e.data.n") == 1
    assert host.run_lua("return Event.receive(inbox, 50)") is None  # nothing came: nil
    # from another thread: queued until the owner pumps
    worker = threading.Thread(target=system.bus.publish, args=("job.late", {"n": 2}))
    worker.start()
    worker.join()
    assert host.run_lua("return #seen") == 1
    assert host.engine.pump() == 1
    assert host.run_lua("return seen[2]") == "job.late:2"
    assert len(host.run_lua("return Event.list_subscriptions()")) == 2
    assert host.run_lua("return Event.unsubscribe(cb)") is True
    system.bus.publish("job.done", {"n": 3})
    assert host.run_lua("return #seen") == 2
    assert host.run_lua("return #Event.list_subscriptions()") == 1
    assert not system.bus.has_subscribers("job.late")


def test_receive_waits_at_most_the_cap(system: System,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []

    class RecordingAsyncio:
        """The host module's asyncio, recording how long each wait may last."""

        def __getattr__(self, name: str) -> object:
            return getattr(asyncio, name)

        async def wait_for(self, awaitable: Any, timeout: float | None) -> Any:
            assert timeout is not None
            waits.append(timeout)
            return await asyncio.wait_for(awaitable, timeout)

    monkeypatch.setattr(scripting_host, "RECEIVE_CAP_MS", 50)
    monkeypatch.setattr(scripting_host, "asyncio", RecordingAsyncio())
    host = ScriptHost(system, time_budget=0.2)
    assert host.run_lua("local id = Event.subscribe('x.y') return Event.receive(id, 1e9)") \
        is None
    # one wait, for at most the 50 ms cap (not 1e9 ms), that ended in nil
    assert len(waits) == 1 and 0 < waits[0] <= 0.05


def test_json_and_logger(host: ScriptHost, caplog: pytest.LogCaptureFixture) -> None:
    assert host.run_lua("return JSON.decode(JSON.encode({a = {1, 2}, b = JSON.null}))") == \
        {"a": [1, 2], "b": None}
    with caplog.at_level(logging.INFO, logger="llmspell.scripts.lua"):
        host.run_lua("Logger.info('hello', {n = 1}) print('printed', 2)")
    assert "hello" in caplog.text and "printed\t2" in caplog.text
    with pytest.raises(ScriptError, match=r"JSON\.decode"):
        host.run_lua("return JSON.decode('{')")


async def test_close_removes_hooks_and_subscriptions(system: System,
                                                     host: ScriptHost) -> None:
    host.run_lua("Hook.register('BeforeToolExecution', function() return 'x' end) "
                 "Event.subscribe('a.b')")
    host.close()
    assert system.registry.list(language="lua") == []
    assert not system.bus.has_subscribers("a.b")


async def test_bad_calls_fail_with_clear_errors(system: System, host: ScriptHost) -> None:
    for source, needle in [
        ("Hook.register(1, function() end)", "needs a point name"),
        ("Hook.register('BeforeToolExecution', 1)", "must be a function"),
        ("Hook.register('BeforeToolExecuton', function() end)", "did you mean"),
        ("Event.receive(12345)", "no receivable subscription"),
        ("Event.publish('bad type!', {})", "invalid event type"),
        ("Event.publish('a.b', {}, {colour = 1})", "unknown option"),
    ]:
        with pytest.raises(ScriptError, match=needle):
            host.run_lua(source)
    with pytest.raises(ScriptError, match="cannot read"):
        host.run_lua_file(SCRIPTS / "missing.lua")
    host.run_lua("Hook.register('BeforeToolExecution', function() "
                 "return {type='error', message='reported'} end)")
    assert await system.tools.execute("add", {"a": 1, "b": 1}) == 2
    assert "reported" in system.executor.failures()[-1].message


def test_engine_arguments_and_owner_thread_are_checked() -> None:
    with pytest.raises(ValueError, match="max_memory"):
        LuaEngine(max_memory=10)
    with pytest.raises(ValueError, match="time_budget"):
        LuaEngine(time_budget=0)
    engine = LuaEngine()
    errors: list[Exception] = []

    def pump() -> None:
        try:
            engine.pump()
        except ScriptError as exc:
            errors.append(exc)

    worker = threading.Thread(target=pump)
    worker.start()
    worker.join()
    assert errors and "owner thread" in str(errors[0])


def test_callbacks_survive_their_calls_and_close_cleanly(system: System) -> None:
    # a function handed over inside a call outlives the call's coroutine: lupa must not be
    # left holding it (that crashed when the coroutine was collected)
    for _ in range(3):
        host = ScriptHost(system)
        host.run_lua("got = 0\nEvent.subscribe('x', function(e) got = got + 1 end)\n"
                     "Hook.register('BeforeToolExecution', function() end)")
        for _ in range(50):
            system.bus.publish("x", {})
        host.run_lua("local t = {} for i = 1, 5000 do t[i] = {i} end")
        gc.collect()
        host.engine._rt.gccollect()
        assert host.run_lua("return got") == 50
        host.close()
        gc.collect()


def test_nested_callbacks_run_inside_a_running_script(system: System) -> None:
    host = ScriptHost(system)
    out = host.run_lua("""
        seen = {}
        Event.subscribe("ping", function(e)
          table.insert(seen, {n = e.data.n, deep = {1, {x = "y"}}})
          Event.publish("pong", {n = e.data.n})
        end)
        Event.subscribe("pong", function(e) table.insert(seen, {pong = e.data.n}) end)
        Event.publish("ping", {n = 1})
        return seen
    """)
    assert out == [{"n": 1, "deep": [1, {"x": "y"}]}, {"pong": 1}]
    assert not host.engine.callback_errors


def test_a_timeout_is_always_a_script_timeout_error(system: System) -> None:
    host = ScriptHost(system, time_budget=0.05)
    for _ in range(5):
        with pytest.raises(ScriptTimeoutError):
            host.run_lua("local n = 0\nwhile true do n = n + 1 end")
    assert host.run_lua("return 2") == 2


def test_the_host_takes_capabilities_and_limits_from_the_config() -> None:
    config = SystemConfig(store="memory", scripting=ScriptingConfig(
        allow_env=True, time_budget=0.05, max_memory_mb=4))
    host = ScriptHost(System(config))
    assert host.run_lua("return os.getenv('PATH') ~= nil") is True
    assert host.time_budget == 0.05 and host.max_memory == 4 * 1024 * 1024
    with pytest.raises(ScriptTimeoutError):
        host.run_lua("while true do end")
    assert ScriptHost(System(SystemConfig(store="memory"))).time_budget == 0.5


# -- the seed's API additions (both languages where the API is shared) -----------------------
_SEED_EXTRAS = {
    "lua": """
local text = JSON.stringify({a = {1, 2}})
local back = JSON.parse(text)
Hook.register("BeforeToolExecution", function() end,
              {name = "described", version = "2.1.0", description = "audits calls"})
Event.publish("seed.ttl", {n = 1}, {ttl_seconds = 30, language = "javascript"})
local rows = Hook.list("BeforeToolExecution")
return {back = back, same = JSON.stringify == JSON.encode and JSON.parse == JSON.decode,
        row = rows[1]}
""",
    "js": """
const text = JSON.stringify({a: [1, 2]});
const back = JSON.parse(text);
await Hook.register("BeforeToolExecution", () => undefined,
                    {name: "described", version: "2.1.0", description: "audits calls"});
await Event.publish("seed.ttl", {n: 1}, {ttl_seconds: 30, language: "javascript"});
const rows = await Hook.list("BeforeToolExecution");
return {back, same: JSON.encode === JSON.stringify && JSON.decode === JSON.parse,
        row: rows[0]};
""",
}


@pytest.mark.parametrize("language", ["lua", "js"])
def test_seed_api_extras(system: System, host: ScriptHost, language: str) -> None:
    got: list[UniversalEvent] = []
    system.bus.subscribe("seed.*", got.append, mode="inline")
    run = host.run_lua if language == "lua" else host.run_js
    out = run(_SEED_EXTRAS[language])

    assert out["back"] == {"a": [1, 2]} and out["same"] is True
    assert out["row"]["name"] == "described"
    assert (out["row"]["version"], out["row"]["description"]) == ("2.1.0", "audits calls")
    event = got[0]
    assert event.metadata.ttl == 30 and event.language == "javascript"
    assert not event.expired(event.timestamp + 29) and event.expired(event.timestamp + 31)


@pytest.mark.parametrize(("options", "needle"), [
    ("{ttl = 1, ttl_seconds = 1}", "not both"),
    ("{language = 'cobol'}", "cobol"),
    ("{language = 3}", "language option"),
    ("{ttl_seconds = -1}", "ttl must be > 0"),
])
def test_publish_option_errors(host: ScriptHost, options: str, needle: str) -> None:
    with pytest.raises(ScriptError, match=needle):
        host.run_lua(f"Event.publish('a.b', {{}}, {options})")


# -- a script can always be stopped ------------------------------------------------------------
_FILL = "local t = {}\nlocal function fill() while true do t[#t + 1] = {} end end\n"


def test_running_out_of_memory_cannot_be_caught() -> None:
    """pcall cannot catch the memory limit, so a heap left full cannot starve the budget
    check (the red team's `fill the heap, then while true do pcall(fill) end`)."""
    engine = LuaEngine(max_memory=4 * 1024 * 1024, time_budget=30)
    for source in [_FILL + "pcall(fill)\nreturn 'caught'",
                   _FILL + "while true do pcall(fill) end",
                   _FILL + "while true do xpcall(fill, function(e) return e end) end",
                   _FILL + "while true do coroutine.resume(coroutine.create(fill)) end",
                   _FILL + "while true do pcall(coroutine.wrap(fill)) end"]:
        with pytest.raises(ScriptError, match="out of memory"):
            engine.run(source, "fill.lua")
        assert engine.run("return 'usable'") == "usable"


def test_close_metamethods_are_refused() -> None:
    # an error in __close replaces the error being unwound (it could mask the budget's)
    with pytest.raises(ScriptError, match="__close"):
        LuaEngine().run("setmetatable({}, {__close = function() error('masked') end})")


@pytest.mark.parametrize("source", [
    "while true do end",
    "while true do pcall(function() while true do end end) end",
])
def test_ctrl_c_stops_a_running_script(source: str) -> None:
    """SIGINT (what Ctrl-C sends) stops the script with KeyboardInterrupt.

    The handler raises KeyboardInterrupt like Python's default one, but only while the
    test is armed, and Ctrl-C is "pressed" every 0.2 s until the script stops: one that
    lands in the host's own bookkeeping before the script's loop starts may be lost (a user
    presses again), and a late one must not hit the test runner."""
    engine = LuaEngine(time_budget=20)
    armed = threading.Event()
    armed.set()
    done = threading.Event()

    def on_sigint(signum: int, frame: object) -> None:
        if armed.is_set():
            raise KeyboardInterrupt

    def press() -> None:
        while not done.wait(0.2):
            os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGINT, on_sigint)
    presser = threading.Thread(target=press, daemon=True)
    presser.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            engine.run(source)
        armed.clear()
    finally:
        armed.clear()
        done.set()
        presser.join(5)
        signal.signal(signal.SIGINT, previous)
    assert engine.run("return 'usable'") == "usable"


async def test_a_hook_timeout_bounds_its_script_time(system: System) -> None:
    host = ScriptHost(system, time_budget=30)
    host.run_lua("Hook.register('BeforeToolExecution', function() while true do end end, "
                 "{timeout = 0.05})")
    assert await system.tools.execute("add", {"a": 1, "b": 2}) == 3  # fail-open
    failures = system.executor.failures()
    assert failures and "time budget of 0.05 s" in failures[0].message
    with pytest.raises(ScriptError, match="timeout must be"):
        host.run_lua("Hook.register('BeforeToolExecution', function() end, {timeout = -1})")


# -- the host's coroutines are out of the scripts' reach ----------------------------------------
async def test_a_script_cannot_resume_the_hosts_coroutines(system: System) -> None:
    """The red team's forgery: capture the call's coroutine, then resume it from a hook
    while it waits for a tool, feeding it a forged result."""
    host = ScriptHost(system)
    out = await host.run_lua_async("""
      local main, is_main = coroutine.running()
      local seen = {}
      local h = Hook.register("BeforeToolExecution", function()
        local ok, a = coroutine.resume(main, true, "forged")
        seen[#seen + 1] = {ok = ok, a = tostring(a), yieldable = coroutine.isyieldable()}
      end)
      local real = Tool.invoke("add", {a = 1, b = 2})
      Hook.unregister(h)
      return {real = real, seen = seen, is_main = is_main}
    """)
    assert out["real"] == 3 and out["is_main"] is True
    assert out["seen"][0]["ok"] is False and out["seen"][0]["yieldable"] is False
    assert "table:" not in out["seen"][0]["a"]  # no host marker


async def test_a_coroutine_waiting_for_the_host_cannot_be_resumed_by_the_script(
        system: System) -> None:
    host = ScriptHost(system)
    out = await host.run_lua_async("""
      local worker
      local h = Hook.register("BeforeToolExecution", function()
        local ok, err = coroutine.resume(worker, true, "forged")
        forged = {ok = ok, err = err}
      end)
      worker = coroutine.create(function() return Tool.invoke("add", {a = 2, b = 2}) end)
      local ok, value = coroutine.resume(worker)
      Hook.unregister(h)
      return {ok = ok, value = value, forged = forged}
    """)
    assert out["ok"] is True and out["value"] == 4
    assert out["forged"]["ok"] is False
    assert "waiting for a host operation" in out["forged"]["err"]


# -- errors point at the script, in the script's language ---------------------------------------
@pytest.mark.parametrize(("source", "line"), [
    ("local h = Hook.register('BeforeToolExecution', function() end)\n\nh.unregister()", 3),
    ("\n\nHook.register(1, function() end)", 3),
    ("\nlocal a = Agent.create(5)", 2),
    ("\nEvent.publish('a.b', {}, {colour = 1})", 2),
])
def test_errors_in_the_globals_point_at_the_scripts_line(host: ScriptHost, source: str,
                                                         line: int) -> None:
    with pytest.raises(ScriptError) as info:
        host.run_lua(source, name="user.lua")
    assert (info.value.script, info.value.line) == ("user.lua", line)
    assert "<globals>" not in str(info.value) and "<python>" not in str(info.value)
    assert "<globals>" not in (info.value.traceback or "")


@pytest.mark.parametrize("source", [
    "local t = {}\n\nwhile true do pcall(function() end) end",
    "local t = {}\n\nwhile true do local ok = pcall(error, 'x') end",
    "local t = {}\n\nwhile true do coroutine.wrap(function() end)() end",
])
def test_a_timeout_in_host_glue_points_at_the_scripts_line(source: str) -> None:
    engine = LuaEngine(time_budget=0.1)
    with pytest.raises(ScriptTimeoutError) as info:
        engine.run(source, "loop.lua")
    assert (info.value.script, info.value.line) == ("loop.lua", 3)


@pytest.mark.parametrize("language", ["lua", "js"])
async def test_hints_are_in_the_scripts_language(system: System, language: str) -> None:
    host = ScriptHost(system)
    if language == "lua":
        run, tool, session = host.run_lua_async, "Tool.invoke('add', {a = 'x', b = 1})", \
            "Session.restore('no-such-session')"
    else:
        run, tool, session = host.run_js_async, "await Tool.invoke('add', {a: 'x', b: 1})", \
            "await Session.restore('no-such-session')"
    with pytest.raises(ScriptError) as info:
        await run(tool)
    listing = "Tool.list()" if language == "lua" else "await Tool.list()"
    assert listing in str(info.value) and "tools.get" not in str(info.value)
    with pytest.raises(ScriptError) as info:
        await run(session)
    listing = "Session.list()" if language == "lua" else "await Session.list()"
    assert listing in str(info.value) and "system.sessions" not in str(info.value)


# -- pattern matching stays under the budget ---------------------------------------------------
@pytest.mark.parametrize("call", [
    "string.find(s, '.-.-.-b')",
    "s:find('a*a*a*b')",
    "string.match(s, '(.-)(.-)(.-)b')",
    "s:match('^(a*)(a*)(a*)b')",
    "(function() for x in s:gmatch('a-a-a-b') do end end)()",
    "string.gsub(s, '(a*)(a*)b', '%2%1')",
    "s:gsub('a*a*b', {})",
    "string.gsub(s, 'a-a-b', function() end)",
])
def test_pathological_patterns_are_stopped_by_the_budget(call: str) -> None:
    """Backtracking patterns can run for minutes inside one C call, where the budget's
    hook cannot fire; such calls run on the interruptible Lua matcher instead."""
    engine = LuaEngine(time_budget=0.1)
    with pytest.raises(ScriptTimeoutError) as info:
        engine.run(f"local s = ('a'):rep(3000)\n\nlocal r = {{{call}}}\nreturn r", "pattern.lua")
    assert (info.value.script, info.value.line) == ("pattern.lua", 3)
    assert engine.run("return ('key = value'):match('^(%w+)%s*=%s*(.-)%s*$')") == "key"


_SUBJECTS = ["", "a", "hello world", "key = value", "  padded  ", "aaa", "(foo(bar))baz",
             "x=1, y=22, z=333", "abcabcabc", "a,b,,c", "[x]", "THE (quick) fox"]
_PATTERNS = ["a*", "a-", "a?", "^a", "a$", ".-", "(a*)", "()a()", "(%w+)=(%w+)",
             "^(%w+)%s*=%s*(.-)%s*$", "^%s*(.-)%s*$", "%b()", "%f[%w]%w+", "[%a_][%w_]*",
             "[^,]*", "(.)%1", "[%]x]+", "x?y?", "(%a)%a*", "(.-)%s", "^(a-)$", ".-b",
             "(h)(e)(l)", "((a)b)", "[]]", "a*(", "%", "a*[b", "(()", "%1", "a)x*"]
_REPLACEMENTS = ['"<%0>"', '"%1"', '"%%"', '"%2"', '"%"', '{a = "A", hello = "HI"}',
                 "function(x) return x and x:upper() end", "function() return false end",
                 "function() return {} end", "7"]


def _outcome(engine: LuaEngine, source: str) -> tuple[str, str]:
    try:
        return "ok", repr(engine.run(source))
    except ScriptError as exc:
        return "error", exc.message.split(":")[-1].strip()


def test_the_lua_matcher_agrees_with_lua(monkeypatch: pytest.MonkeyPatch) -> None:
    """The interruptible matcher gives what C Lua gives: results, captures, positions,
    replacements and errors (every call below goes to it when the cap is 1)."""
    from llmspell.scripting import lua as lua_module

    c_engine = LuaEngine()
    monkeypatch.setattr(lua_module, "PATTERN_CAP", 1.0)
    lua_engine = LuaEngine()
    for s in _SUBJECTS:
        for p in _PATTERNS:
            sl, pl = repr(s), repr(p)
            sources = [f"return {{string.find({sl}, {pl})}}",
                       f"return {{string.find({sl}, {pl}, -3)}}",
                       f"return {{({sl}):match({pl}, 2)}}",
                       f"local o = {{}} for a, b in string.gmatch({sl}, {pl}) do "
                       f"o[#o + 1] = {{a, b}} end return o"]
            sources += [f"return {{string.gsub({sl}, {pl}, {r}, {n})}}"
                        for r in _REPLACEMENTS for n in ("nil", "1")]
            for source in sources:
                assert _outcome(lua_engine, source) == _outcome(c_engine, source), source


def test_a_long_table_move_is_stopped_by_the_budget() -> None:
    engine = LuaEngine(time_budget=0.1)
    with pytest.raises(ScriptTimeoutError):  # 1e12 C iterations, no memory used
        engine.run("table.move({}, 1, 1e12, 1)\nreturn 1")
    assert engine.run("return 1") == 1  # the engine goes on
    # The moves still move (a generous budget: a loaded machine must not time them out).
    out = LuaEngine(time_budget=30).run("""
      local t = {} for i = 1, 100000 do t[i] = i end
      local up = table.move(t, 1, #t, 3)            -- overlapping: copies backwards
      local u = {} for i = 1, 100000 do u[i] = i end
      local down = table.move(u, 3, #u, 1)
      local other = table.move(u, 1, 70000, 1, {})
      return {up[1], up[3], up[100002], #up, down[1], down[99998], #other}
    """)
    assert out == [1, 1, 100000, 100002, 3, 100000, 70000]


@pytest.mark.parametrize(("call", "message"), [
    ("string.gmatch('abc', {})", "bad argument #2 to 'gmatch'"),
    ("string.find({}, 'a')", "bad argument #1 to 'find'"),
    ("string.gsub('abc', 'a*b', true)", "bad argument #3 to 'gsub'"),
])
def test_pattern_argument_errors_name_the_lua_function(call: str, message: str) -> None:
    with pytest.raises(ScriptError, match=message) as info:
        LuaEngine().run(f"\nlocal r = {{{call}}}\nreturn r", "args.lua")
    assert (info.value.script, info.value.line) == ("args.lua", 2)


def test_functions_are_kept_only_where_the_host_takes_callbacks(system: System) -> None:
    """A function inside an argument of an operation that takes none is refused at the
    call (catchably) instead of being kept by the host for nothing."""
    host = ScriptHost(system)
    out = host.run_lua("""
      local results = {}
      for i = 1, 3 do
        results[#results + 1] = {pcall(State.set, "k", {f = function() end})}
        results[#results + 1] = {pcall(Event.publish, "a.b", {f = print})}
      end
      return results
    """)
    for ok, message in out:
        assert ok is False and "is a Lua function, which cannot be passed" in message
    assert "ScriptFunction" not in str(out)
    assert host.engine._fn.keep(print) == 1  # the first function the host keeps


async def test_a_hook_that_fills_the_heap_and_loops_on_pcall_is_stopped(system: System) -> None:
    """The red team's hook: fill the heap, then `while true do pcall(fill) end`."""
    host = ScriptHost(system, time_budget=30, max_memory=4 * 1024 * 1024)
    host.run_lua("""
      local t = {}
      local function fill() while true do t[#t + 1] = {} end end
      Hook.register('BeforeToolExecution', function() while true do pcall(fill) end end,
                    {timeout = 0.2})
    """)
    for _ in range(2):  # the heap stays full (the hook holds `t`): it fails fast again
        assert await system.tools.execute("add", {"a": 1, "b": 2}) == 3  # fail-open
    failures = system.executor.failures()
    assert len(failures) == 2 and all("out of memory" in f.message for f in failures)
