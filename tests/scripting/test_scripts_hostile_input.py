"""Hostile scripts against the time budget: callbacks a script sets off through its own host
calls (event callbacks, workflow steps) spend from that call's budget instead of starting a
fresh one each, and a callback that sets itself off is stopped at a fixed depth."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from llmspell.errors import ScriptTimeoutError
from llmspell.runtime import System
from llmspell.scripting import ScriptHost
from llmspell.scripting.protocol import MAX_CALLBACK_DEPTH

BUDGET = 0.2
ROUNDS = 25
"""Without the shared budget each round would get BUDGET seconds of its own: the run would
take ROUNDS * BUDGET seconds and then return "done"."""


@pytest_asyncio.fixture
async def tight_host(script_system: System) -> AsyncIterator[ScriptHost]:
    host = ScriptHost(script_system, time_budget=BUDGET)
    yield host
    host.close()


async def test_js_event_callbacks_spend_the_publishing_runs_budget(
        tight_host: ScriptHost) -> None:
    source = f"""
        globalThis.calls = 0;
        await Event.subscribe("spin.*", (e) => {{ calls++; for (;;) {{}} }});
        for (let i = 0; i < {ROUNDS}; i++) await Event.publish("spin.x", {{i}});
        return "done";
    """
    with pytest.raises(ScriptTimeoutError):
        await tight_host.run_js_async(source)
    assert await tight_host.run_js_async("return calls;") < ROUNDS
    assert await tight_host.run_js_async("return 1 + 1;") == 2  # the engine goes on


@pytest.mark.parametrize("language", ["lua", "javascript"])
async def test_workflow_steps_spend_the_executing_runs_budget(tight_host: ScriptHost,
                                                              language: str) -> None:
    if language == "lua":
        source = f"""
            local wf = Workflow.sequential({{name = "spin", steps = {{
                {{name = "s", type = "custom",
                  execute = function(ctx) while true do end end}}}}}})
            for i = 1, {ROUNDS} do
              wf:execute()
              local x = 0
              for j = 1, 2000 do x = x + j end
            end
            return "done"
        """
        run = tight_host.run_lua_async
    else:
        source = f"""
            const wf = await Workflow.sequential({{name: "spin", steps: [
                {{name: "s", type: "custom", execute: (ctx) => {{ for (;;) {{}} }}}}]}});
            for (let i = 0; i < {ROUNDS}; i++) await wf.execute();
            return "done";
        """
        run = tight_host.run_js_async
    with pytest.raises(ScriptTimeoutError):
        await run(source)


async def test_a_callback_that_sets_itself_off_stops_at_a_fixed_depth(
        script_host: ScriptHost) -> None:
    source = """
        globalThis.depth = 0;
        await Event.subscribe("echo.*", async (e) => {
            depth++;
            await Event.publish("echo.again", {});
        });
        await Event.publish("echo.start", {});
        return depth;
    """
    # before: Python's RecursionError, caught somewhere ~100 callbacks deep
    assert await script_host.run_js_async(source) == MAX_CALLBACK_DEPTH - 1
    assert await script_host.run_js_async("return 1 + 1;") == 2


async def test_callbacks_well_within_the_budget_still_run(script_host: ScriptHost) -> None:
    source = """
        let seen = 0;
        Event.subscribe("ok.*", function(e) seen = seen + e.data.n end)
        for i = 1, 20 do Event.publish("ok.x", {n = i}) end
        local wf = Workflow.sequential({name = "ok", steps = {
            {name = "s", type = "custom", execute = function(ctx) return 7 end}}})
        local r
        for i = 1, 5 do r = wf:execute() end
        return {seen, r.success}
    """
    assert await script_host.run_lua_async(source.replace("let seen", "local seen")) == [
        210, True]
    js = """
        let seen = 0;
        await Event.subscribe("ok.*", (e) => { seen += e.data.n; });
        for (let i = 1; i <= 20; i++) await Event.publish("ok.x", {n: i});
        const wf = await Workflow.sequential({name: "ok2", steps: [
            {name: "s", type: "custom", execute: (ctx) => 7}]});
        let r;
        for (let i = 0; i < 5; i++) r = await wf.execute();
        return [seen, r.success];
    """
    assert await script_host.run_js_async(js) == [210, True]
