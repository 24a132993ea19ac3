"""The ``Replay`` global from Lua and JavaScript: a run recorded from Python is listed,
shown, replayed (served from the recording: the tool does not run again) and compared; bad
ids and options are catchable typed errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from llmspell.errors import ScriptError
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.providers.scripted import ScriptedProvider
from llmspell.runtime.workflows import Sequential, Step
from llmspell.scripting import Capabilities, ScriptHost

CALLS: list[str] = []


@tool()
def lookup(city: str) -> dict[str, Any]:
    """The weather in a city."""
    CALLS.append(city)
    return {"city": city, "temp": 21 if city == "Oslo" else 30}


def unreachable(messages: Any, tools: Any) -> Any:
    raise AssertionError("a replay called the model provider")


@pytest_asyncio.fixture
async def system() -> AsyncIterator[System]:
    CALLS.clear()
    sys = System(SystemConfig(store="memory"))
    await sys.start()
    sys.tools.register(lookup)
    yield sys
    await sys.shutdown()


async def weather_run(system: System, city: str) -> str:
    """Run the ``weather`` agent once (it calls ``lookup``); return the run's id."""
    provider = ScriptedProvider([
        {"tool_calls": [{"name": "lookup", "arguments": {"city": city}}]},
        f"Weather in {city} noted."])
    if "weather" in system.agents.names():
        system.agents.get("weather").provider = provider
    else:
        system.agents.create("weather", provider=provider, tools=["lookup"])
    await system.agents.get("weather").run(f"weather in {city}?")
    return system.runs.list(limit=1)[0].run_id


LUA = """
local a, b = ...
local ok, missing = pcall(Replay.show, "nope")
return {
  runs = Replay.list({kind = "agent", limit = 5}),
  shown = Replay.show(a),
  replay = Replay.run(a, {mode = "exact"}),
  diff = Replay.diff(a, b),
  same = Replay.diff(a, a),
  missing = {ok = ok, message = missing},
}
"""
JS = """
const [a, b] = arguments;
let missing;
try { await Replay.show("nope"); missing = {ok: true}; }
catch (e) { missing = {ok: false, name: e.name, message: e.message}; }
return {
  runs: await Replay.list({kind: "agent", limit: 5}),
  shown: await Replay.show(a),
  replay: await Replay.run(a, {mode: "exact"}),
  diff: await Replay.diff(a, b),
  same: await Replay.diff(a, a),
  missing,
};
"""


@pytest.mark.parametrize(("language", "source"), [("lua", LUA), ("javascript", JS)])
async def test_a_script_lists_shows_replays_and_diffs_a_run(system: System, language: str,
                                                           source: str) -> None:
    a = await weather_run(system, "Oslo")
    b = await weather_run(system, "Rome")
    system.agents.get("weather").provider = ScriptedProvider(unreachable)
    CALLS.clear()
    host = ScriptHost(system)
    try:
        out = await host.run_source_async(language, source, args=(a, b), name="replays")
    finally:
        host.close()

    assert [run["run_id"] for run in out["runs"]] == [b, a]
    listed = out["runs"][1]
    assert (listed["kind"], listed["name"], listed["status"]) == ("agent", "weather",
                                                                   "completed")
    assert listed["tool_calls"] == 1 and listed["model_calls"] == 2
    assert "replay_of" not in listed  # unset fields are left out, not null

    shown = out["shown"]
    assert shown["run"]["run_id"] == a
    tool_step = next(step for step in shown["steps"] if step["kind"] == "tool")
    assert tool_step["name"] == "lookup" and tool_step["input"] == {"city": "Oslo"}
    assert tool_step["output"] == {"city": "Oslo", "temp": 21}
    assert [step["index"] for step in shown["steps"]] == [1, 2, 3, 4]

    replay = out["replay"]
    assert CALLS == []  # the tool was served from the recording, not run
    assert replay["status"] == "completed" and replay["replay_of"] == a
    assert replay["output"] == "Weather in Oslo noted."
    assert replay["diverged"] is False and not replay["divergences"]
    assert replay["served"] == {"recording": 3}
    assert system.runs.get(replay["run_id"]).replay_of == a

    diff = out["diff"]
    assert (diff["a"], diff["b"], diff["same"]) == (a, b, False)
    changed = {step["key"]: step for step in diff["steps"]}
    tool_change = changed[tool_step["key"]]["changes"]["output"]
    assert tool_change == [{"city": "Oslo", "temp": 21}, {"city": "Rome", "temp": 30}]
    assert diff["totals"]["status"] == ["completed", "completed"]
    assert out["same"]["same"] is True

    missing = out["missing"]
    assert missing["ok"] is False and "no run 'nope'" in missing["message"]
    assert "Replay.list()" in missing["message"]
    if language == "javascript":
        assert missing["name"] == "RunNotFoundError"


@pytest.mark.parametrize(("language", "source"), [
    ("lua", """
local a = ...
local r = Replay.run(a, {mode = "what-if", after = "simulate", input = {input = "hi"}})
return r
"""),
    ("javascript", """
const [a] = arguments;
return await Replay.run(a, {mode: "what-if", after: "simulate", input: {input: "hi"}});
"""),
])
async def test_a_what_if_reports_its_divergences(system: System, language: str,
                                                 source: str) -> None:
    a = await weather_run(system, "Oslo")
    system.agents.get("weather").provider = ScriptedProvider(unreachable)
    CALLS.clear()
    host = ScriptHost(system)
    try:
        out = await host.run_source_async(language, source, args=(a,))
    finally:
        host.close()
    assert CALLS == [] and out["diverged"] is True and out["mode"] == "what-if"
    first = out["divergences"][0]
    assert first["what"] == "input" and first["text"].startswith(f"step {first['step']} (")
    assert set(first) >= {"step", "key", "kind", "name", "what", "nondeterministic"}


ERRORS_LUA = """
local which, id = ...
local calls = {
  unknown_option = function() return Replay.run(id, {speed = 2}) end,
  bad_mode = function() return Replay.run(id, {mode = "rewind"}) end,
  bad_limit = function() return Replay.list({limit = 0}) end,
  no_id = function() return Replay.show() end,
  workflow = function() return Replay.run(id) end,
}
local ok, message = pcall(calls[which])
return {ok = ok, message = message}
"""
ERRORS_JS = """
const [which, id] = arguments;
const calls = {
  unknown_option: () => Replay.run(id, {speed: 2}),
  bad_mode: () => Replay.run(id, {mode: "rewind"}),
  bad_limit: () => Replay.list({limit: 0}),
  no_id: () => Replay.show(),
  workflow: () => Replay.run(id),
};
try { await calls[which](); return {ok: true}; }
catch (e) { return {ok: false, name: e.name, message: e.message}; }
"""


@pytest.mark.parametrize(("which", "error", "text"), [
    ("unknown_option", "InvalidValueError", "unknown option(s) ['speed']"),
    ("bad_mode", "InvalidValueError", "unknown replay mode 'rewind'"),
    ("bad_limit", "InvalidValueError", "limit must be a whole number"),
    ("no_id", "InvalidValueError", "needs a run id"),
    ("workflow", "ReplayError", "of kind 'workflow'"),
])
@pytest.mark.parametrize(("language", "source"), [("lua", ERRORS_LUA), ("javascript", ERRORS_JS)])
async def test_bad_calls_are_catchable_typed_errors(system: System, language: str, source: str,
                                                    which: str, error: str, text: str) -> None:
    await Sequential("trip", [Step("weather", tool="lookup", params={"city": "Rome"})]).run(
        system, {})
    run_id = system.runs.list(limit=1)[0].run_id
    host = ScriptHost(system)
    try:
        out = await host.run_source_async(language, source, args=(which, run_id))
    finally:
        host.close()
    assert out["ok"] is False and text in out["message"]
    if language == "javascript":
        assert out["name"] == error


async def test_an_uncaught_error_fails_the_script_naming_the_id(system: System) -> None:
    host = ScriptHost(system)
    try:
        with pytest.raises(ScriptError, match="no run 'missing-run'") as lua:
            await host.run_lua_async('local x = 1\nlocal r = Replay.run("missing-run")',
                                     name="r.lua")
        with pytest.raises(ScriptError, match="no run 'missing-run'") as js:
            await host.run_js_async('let x = 1;\nawait Replay.show("missing-run");',
                                    name="r.js")
    finally:
        host.close()
    assert str(lua.value).startswith("r.lua:2: ")
    assert str(js.value).startswith("r.js:2: RunNotFoundError: ")


SCRIPT_RUN = 'local r = Tool.invoke("lookup", {city = "Oslo"}); return r.temp'


async def test_a_script_replays_a_script_run(system: System) -> None:
    recorder = ScriptHost(system)
    assert await recorder.run_lua_async(SCRIPT_RUN, name="weather.lua") == 21
    recorder.close()
    run_id = system.runs.list(limit=1)[0].run_id
    CALLS.clear()
    host = ScriptHost(system)
    try:
        out = await host.run_source_async(
            "javascript", "const [id] = arguments; return await Replay.run(id);",
            args=(run_id,))
    finally:
        host.close()
    assert out["status"] == "completed" and out["output"] == 21 and CALLS == []
    assert out["diverged"] is False


async def test_a_replay_never_grants_capabilities_the_caller_lacks(system: System,
                                                                   tmp_path: Path) -> None:
    (tmp_path / "note.txt").write_text("secret")
    reader = ScriptHost(system, allow=Capabilities(allow_read=(str(tmp_path),)))
    source = f'local f = io.open("{tmp_path}/note.txt"); return f:read("a")'
    assert await reader.run_lua_async(source, name="read.lua") == "secret"
    reader.close()
    run_id = system.runs.list(limit=1)[0].run_id
    call = 'local ok, e = pcall(Replay.run, ...); return {ok = ok, e = e}'

    sandboxed = ScriptHost(system)
    try:
        denied = await sandboxed.run_source_async("lua", call, args=(run_id,))
    finally:
        sandboxed.close()
    assert denied["ok"] is False and f"--allow-read={tmp_path}" in denied["e"]

    granted = ScriptHost(system, allow=Capabilities(allow_read=(str(tmp_path),)))
    try:
        allowed = await granted.run_source_async("lua", call, args=(run_id,))
    finally:
        granted.close()
    assert allowed["ok"] is True and allowed["e"]["output"] == "secret"


async def test_a_replayed_script_cannot_start_another_replay(system: System) -> None:
    a = await weather_run(system, "Oslo")
    system.agents.get("weather").provider = ScriptedProvider(unreachable)
    host = ScriptHost(system)
    try:
        first = await host.run_source_async("lua", "return Replay.run(...).status",
                                            args=(a,), name="outer.lua")
        outer = system.runs.list(limit=1, kind="script")[0].run_id
        # Replaying the outer script replays its Replay.run call: that is refused.
        again = await host.run_source_async(
            "lua", "local r = Replay.run(...); return {r.status, r.error}", args=(outer,))
    finally:
        host.close()
    assert first == "completed"
    status, error = again
    assert status == "failed" and error["type"] == "ScriptError"
    assert "a run that is itself a replay" in error["message"]
