"""Agents, workflows, state and sessions from scripts: the seed's table shapes, references,
conditions, error strategies, and the errors bad tables get."""

from __future__ import annotations

from typing import Any

import pytest

from llmspell.errors import ScriptError
from llmspell.runtime import System
from llmspell.runtime.providers.scripted import ScriptedProvider
from llmspell.scripting import ScriptHost

from .conftest import Recorder


async def test_conditions_of_every_kind(script_host: ScriptHost) -> None:
    out = await script_host.run_lua_async("""
      local function pick(condition, state)
        local wf = Workflow.conditional({name = "pick", branches = {
          {name = "yes", condition = condition, steps = {
            {name = "y", type = "custom", execute = function() return "yes" end}}},
        }, default_branch = {steps = {{name = "n", execute = function() return "no" end}}}})
        local seed = Workflow.sequential({name = "seed", steps = {
          {name = "init", execute = function() return {success = true, output = "hello world",
                                                       state = state} end},
          {name = "run", type = "workflow", workflow = wf},
        }})
        return seed:execute().outputs.run
      end
      local eq = {type = "shared_data_equals", key = "mode", value = "fast"}
      local gt = {type = "shared_data_greater_than", key = "n", value = 3}
      local lt = {type = "shared_data_less_than", key = "n", value = 3}
      return {
        always = pick({type = "always"}, {}),
        never = pick({type = "never"}, {}),
        equals = pick(eq, {mode = "fast"}),
        not_equals = pick(eq, {mode = "slow"}),
        greater = pick(gt, {n = 5}),
        less = pick(lt, {n = 5}),
        both = pick({type = "and", conditions = {eq, gt}}, {mode = "fast", n = 5}),
        either = pick({type = "or", conditions = {eq, lt}}, {mode = "slow", n = 1}),
        negated = pick({type = "not", condition = eq}, {mode = "slow"}),
        custom = pick({type = "custom", evaluate = function(ctx) return ctx.state.n == 2 end},
                      {n = 2}),
        fn = pick(function(ctx) return ctx.state.n == 9 end, {n = 8}),
      }
    """)
    assert {k: v.get("y", v.get("n")) for k, v in out.items()} == {
        "always": "yes", "never": "no", "equals": "yes", "not_equals": "no", "greater": "yes",
        "less": "no", "both": "yes", "either": "yes", "negated": "yes", "custom": "yes",
        "fn": "no"}


async def test_loops_parallel_references_and_nested_workflows(
        script_host: ScriptHost, recorder: Recorder) -> None:
    out = await script_host.run_js_async("""
      const items = await Workflow.loop({name: "items", iterator: {collection: [3, 4]},
        body: [{name: "double", type: "tool", tool: "count", input: {n: "{{loop:current_item}}"}},
               {name: "where", execute: (ctx) => ctx.index}]});
      const counter = await Workflow.loop({name: "counter", max_iterations: 10, state: {i: 0},
        iterator: {while_condition: {type: "shared_data_less_than", key: "i", value: 3}},
        body: [{name: "inc", execute: (ctx) => ({success: true, output: (ctx.state.i || 0) + 1,
                                                 state: {i: (ctx.state.i || 0) + 1}})}]});
      const early = await Workflow.loop({name: "early", iterator: {range: {start: 0, end: 100}},
        break_condition: (ctx) => ctx.outputs.step_1 >= 2,
        body: [{execute: (ctx) => ctx.item}]});
      const fan = await Workflow.parallel({name: "fan", max_concurrency: 2, branches: [
        {name: "a", steps: [{name: "a1", type: "tool", tool: "count", input: {n: 10}}]},
        {name: "b", steps: [{name: "b1", type: "tool", tool: "backup", input: {n: 11}}]}]});
      const outer = await Workflow.sequential({name: "outer", state: {greeting: "hi"}, steps: [
        {name: "inner", type: "workflow", workflow: items},
        {name: "text", type: "tool", tool: "backup",
         input: {n: "{{step:inner:output.double}}"}},
        {name: "echo", type: "tool", tool: "echo",
         input: {trail: ["{{input}}", "{{step:text:output}}", "{{state:greeting}}!"]}}]});
      const broken = await Workflow.sequential({name: "broken", steps: [
        {name: "e", type: "tool", tool: "echo", input: {trail: ["{{state:nothing}}"]}}]});
      return {items: await items.execute(), counter: await counter.execute(),
              early: await early.execute(), fan: await fan.execute(),
              outer: await outer.execute("go"), broken: await broken.execute()};
    """)
    assert out["items"]["output"] == [{"double": 6, "where": 0}, {"double": 8, "where": 1}]
    assert out["counter"]["state"] == {"i": 3}
    assert [row["step_1"] for row in out["early"]["output"]] == [0, 1, 2]
    assert out["fan"]["output"] == {"a1": 20, "b1": "backup 11"}
    assert out["outer"]["outputs"]["echo"] == ["go", "backup 8", "hi!"]
    assert "{{state:nothing}}: no 'nothing'" in out["broken"]["error"]
    assert recorder.counted[:4] == [3, 4, 10, 3] or sorted(recorder.counted) == [3, 3, 4, 4, 10]


async def test_error_strategies_and_failures(script_host: ScriptHost,
                                             recorder: Recorder) -> None:
    out = await script_host.run_lua_async("""
      local failing = {name = "bad", execute = function()
        return {success = false, error = "it broke"} end}
      local fail = Workflow.sequential({name = "fail", steps = {failing,
        {name = "after", execute = function() return 1 end}}})
      local go_on = Workflow.sequential({name = "go_on", error_strategy = "continue",
        steps = {failing, {name = "after", execute = function() return 1 end}}})
      local retried = Workflow.sequential({name = "retried", steps = {
        {name = "flaky", type = "tool", tool = "flaky",
         on_error = {type = "retry", max_attempts = 3, backoff_ms = 1}}}})
      local timed = Workflow.sequential({name = "timed", timeout_ms = 5000, steps = {
        {name = "quick", type = "tool", tool = "count", input = {n = 1}, timeout_ms = 1000}}})
      return {fail = fail:execute(), go_on = go_on:execute(), retried = retried:execute(),
              timed = timed:execute()}
    """)
    assert out["fail"]["success"] is False and "it broke" in out["fail"]["error"]
    assert "after" not in out["fail"]["outputs"]
    assert out["go_on"]["status"] == "completed_with_errors"
    assert out["go_on"]["outputs"]["after"] == 1
    assert out["retried"]["output"] == "recovered" and recorder.flaky_calls == 2
    assert out["timed"]["output"] == 2


@pytest.mark.parametrize(("source", "message"), [
    ("Workflow.sequential({name = 'x', steps = {{name = 's', type = 'rocket'}}})",
     "unknown type"),
    ("Workflow.sequential({name = 'x', steps = 'nope'})", "must be a list of steps"),
    ("Workflow.sequential({name = 'x', steps = {42}})", "a step is a table"),
    ("Workflow.sequential({name = 'x', steps = {{name = 's', type = 'custom'}}})",
     "needs an execute function"),
    ("Workflow.sequential({name = 'x', steps = {{name = 's', type = 'tool'}}})",
     "needs the tool"),
    ("Workflow.sequential({name = 'x', steps = {{name = 's', type = 'workflow', "
     "workflow = {id = 'nope'}}}})", "names no workflow"),
    ("Workflow.sequential({name = 'x', steps = {{name = 's', execute = function() end, "
     "on_error = 'explode'}}})", "unknown error strategy"),
    ("Workflow.conditional({name = 'x', branches = {{name = 'b', condition = 5, steps = {}}}})",
     "a condition is a function or a table"),
    ("Workflow.conditional({name = 'x', branches = {{name = 'b', condition = {type = 'maybe'},"
     " steps = {}}}})", "unknown condition type"),
    ("Workflow.conditional({name = 'x', branches = {{name = 'b', condition = "
     "{type = 'shared_data_equals'}, steps = {}}}})", "needs a key"),
    ("Workflow.sequential({name = 'x', steps = {{name = 's', type = 'tool', tool = 'count', "
     "input = {n = '{{nonsense}}'}}}})", "unknown reference"),
    ("Workflow.sequential({name = 'x', steps = {{name = 's', type = 'tool', tool = 'count', "
     "input = {n = '{{step:a:result}}'}}}})", "bad reference"),
    ("Workflow.sequential(5)", "takes a table"),
    ("Agent.create({model = 'x'})", "needs a table with a name"),
    ("Agent.create({name = 'a', colour = 'red'})", "unknown field"),
    ("Agent.create({name = 'a', model = 'scripted/x'})", "needs its replies"),
    ("Agent.create({name = 'a', model = 'scripted/x', replies = 5})",
     "needs a list of replies"),
    ("Tool.invoke(5)", "needs a tool name"),
    ("Tool.invoke('count', 'n=1')", "params must be a table"),
    ("State.get('')", "non-empty string"),
    ("State.set('k', 1, 5)", "State options"),
    ("Session.save(5)", "not a session"),
])
async def test_bad_tables_get_clear_errors(source: str, message: str,
                                           script_host: ScriptHost) -> None:
    with pytest.raises(ScriptError, match=message):
        await script_host.run_lua_async(source)


async def test_a_model_without_a_provider_says_how_to_configure_one(
        script_host: ScriptHost, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMSPELL_PROVIDER", raising=False)
    with pytest.raises(ScriptError, match="no provider for model"):
        await script_host.run_lua_async("Agent.create({name = 'a', model = 'gpt-4o'})")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("LLMSPELL_API_KEY", raising=False)
    with pytest.raises(ScriptError, match="needs an API key"):
        await script_host.run_lua_async("Agent.create({name = 'b', model = 'openai/gpt-4o'})")


async def test_a_provider_factory_decides_and_agents_run_in_workflows(
        script_system: System) -> None:
    asked: list[tuple[str, str]] = []

    def providers(kind: str, model: str, spec: dict[str, Any]) -> ScriptedProvider | None:
        asked.append((kind, model))
        return ScriptedProvider([f"reply {i}" for i in range(3)], model=model) \
            if kind == "house" else None

    host = ScriptHost(script_system, providers=providers)
    out = await host.run_js_async("""
      const agent = await Agent.create({name: "writer", model: "house/one",
                                        system_prompt: "Write.", tools: ["count"]});
      const direct = await agent.execute("first");
      const again = Agent.get("writer");
      const wf = await Workflow.sequential({name: "ask", steps: [
        {name: "q", type: "agent", agent: again, input: {prompt: "second"}}]});
      return {direct: direct.text, model: agent.model, wf: (await wf.execute()).output,
              list: await Agent.list()};
    """)
    host.close()
    assert out == {"direct": "reply 0", "model": "one", "wf": "reply 1", "list": ["writer"]}
    assert asked == [("house", "one")]


async def test_state_scopes_versions_and_sessions(script_host: ScriptHost) -> None:
    out = await script_host.run_lua_async("""
      local v1 = State.set("k", {a = 1})
      local v2 = State.set("k", {a = 2}, {expected_version = v1})
      local stale_ok, stale = pcall(State.set, "k", 3, {expected_version = v1})
      local s = Session.start({name = "chat", metadata = {user = 7}})
      State.set("note", "hi", {scope = "session", scope_id = s.id})
      local scoped = State.list({scope = "session", scope_id = s.id})
      Session.checkpoint(s, "one")
      State.set("note", "changed", {scope = "session", scope_id = s.id})
      local restored = Session.restore(s, "one")
      local note = Session.get(s, "note")
      Session.save(s)
      local listed = #Session.list({status = "active"})
      local ended = Session["end"](s)
      return {v1 = v1, v2 = v2, stale_ok = stale_ok, stale = stale, scoped = scoped,
              restored = restored, note = note, listed = listed, status = ended.status,
              keys = State.list({prefix = "k"}), gone = State.delete("k"),
              missing = State.get("k", {default = "none"}), record = Session.get(s.id).name}
    """)
    assert (out["v1"], out["v2"], out["stale_ok"]) == (1, 2, False)
    assert "conflict" in out["stale"].lower() or "version" in out["stale"].lower()
    assert out["scoped"] == ["note"] and out["restored"] == {"note": "hi"}
    assert out["note"] == "hi" and out["listed"] == 1 and out["status"] == "ended"
    assert out["keys"] == ["k"] and out["gone"] is True and out["missing"] == "none"
    assert out["record"] == "chat"
