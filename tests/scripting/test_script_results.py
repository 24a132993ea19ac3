"""tests/scripts/results.{lua,js}: every hook result type from each language has its
effect on a real tool call."""

from __future__ import annotations

import pytest

from llmspell.scripting import ScriptHost

from .conftest import Recorder, script


@pytest.mark.parametrize("name", ["results.lua", "results.js"])
async def test_every_result_type_has_its_effect(name: str, script_host: ScriptHost,
                                                recorder: Recorder) -> None:
    out = await script_host.run_file_async(script(name))

    assert out["modified"] == 202  # params changed before the call: count(101)
    assert out["cancel"]["ok"] is False and "not today" in out["cancel"]["error"]
    assert out["cancel_string"]["ok"] is False
    assert "blocked by policy" in out["cancel_string"]["error"]
    assert 2 not in recorder.counted  # cancelled calls never ran
    assert out["redirect"] == "backup 3" and 3 not in recorder.counted
    assert out["replace"] == {"from_hook": True} and 4 not in recorder.counted
    assert out["retry"] == {"value": 10, "tries": 2}
    assert recorder.counted.count(5) == 1  # asked twice, ran once
    assert out["retry_on_error"] == "recovered" and recorder.flaky_calls == 2
    assert out["skipped"] == 12 and out["skipped_table"] == 12
    assert out["fork"] == 14 and 70 in recorder.counted  # the forked call ran too
    assert out["cache"] == [16, 16] and recorder.counted.count(8) == 1
    assert out["modified_after"] == "changed after" and 9 in recorder.counted


_SEED_SHAPES = {
    "lua": """
local calls = 0
local h = Hook.register("BeforeToolExecution", function()
  return {type = "replace", data = {anchored = true}}
end, "high")
local replaced = Tool.invoke("count", {n = 40})
h:unregister()
h = Hook.register("BeforeToolExecution", function()
  calls = calls + 1
  return {note = "no type here"}
end, "high")
local results = {}
for i = 1, 5 do results[i] = Tool.invoke("count", {n = 50 + i}) end
h:unregister()
return {replaced = replaced, calls = calls, results = results}
""",
    "js": """
let calls = 0;
let h = await Hook.register("BeforeToolExecution",
  () => ({type: "replace", data: {anchored: true}}), "high");
const replaced = await Tool.invoke("count", {n: 40});
Hook.unregister(h);
h = Hook.register("BeforeToolExecution", () => { calls++; return {note: "no type here"}; },
  "high");
const results = [];
for (let i = 1; i <= 5; i++) results.push(await Tool.invoke("count", {n: 50 + i}));
Hook.unregister(h);
return {replaced, calls, results};
""",
}


@pytest.mark.parametrize("language", ["lua", "js"])
async def test_seed_result_shapes(language: str, script_host: ScriptHost,
                                  recorder: Recorder) -> None:
    """``{type="replace", data=...}`` replaces with ``data``; a table without ``type``
    continues (no failure, so the breaker never opens)."""
    run = script_host.run_lua_async if language == "lua" else script_host.run_js_async
    out = await run(_SEED_SHAPES[language])

    assert out["replaced"] == {"anchored": True} and 40 not in recorder.counted
    assert out["calls"] == 5  # the hook ran every time: no breaker opened
    assert out["results"] == [102, 104, 106, 108, 110]
