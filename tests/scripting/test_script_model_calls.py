"""The model-call points from Lua and JavaScript: a script hook reads and rewrites the
prompt (redaction) and the answer, like a Python hook."""

from __future__ import annotations

from typing import Any

import pytest

from llmspell.runtime import System, SystemConfig
from llmspell.scripting import ScriptHost

LUA = """
Hook.register("BeforeModelCall", function(ctx)
  local params = ctx.data.params
  for _, m in ipairs(params.messages) do
    if m.content then m.content = string.gsub(m.content, "%d%d%d%-%d%d%-%d%d%d%d", "[ssn]") end
  end
  return {type = "modified", data = {params = params}}
end, "high")
Hook.register("AfterModelCall", function(ctx)
  local result = ctx.data.result
  result.message.content = result.message.content .. " (checked by " .. ctx.data.provider .. ")"
  return {type = "modified", data = {result = result}}
end)
local agent = Agent.create({name = "echo", model = "scripted/echo", replies = {"ok"}})
return Agent.get("echo"):execute({text = "my ssn is 123-45-6789"})
"""

JS = """
await Hook.register("BeforeModelCall", (ctx) => {
  const params = ctx.data.params;
  params.messages = params.messages.map(
    (m) => ({...m, content: m.content && m.content.replace(/\\d{3}-\\d{2}-\\d{4}/g, "[ssn]")}));
  return {type: "modified", data: {params}};
}, "high");
await Hook.register("AfterModelCall", (ctx) => {
  const result = ctx.data.result;
  result.message.content += " (checked by " + ctx.data.provider + ")";
  return {type: "modified", data: {result}};
});
await Agent.create({name: "echo", model: "scripted/echo", replies: ["ok"]});
const agent = await Agent.get("echo");
return await agent.execute({text: "my ssn is 123-45-6789"});
"""


@pytest.mark.parametrize("language", ["lua", "js"])
async def test_a_script_hook_redacts_the_prompt_and_marks_the_answer(language: str) -> None:
    system = System(SystemConfig(store="memory"))
    await system.start()
    prompts: list[Any] = []
    # a Python hook after the script's sees what the provider will be sent
    system.registry.register("BeforeModelCall",
                             lambda c: prompts.append(c.data["params"]["messages"][-1]),
                             name="see", priority="lowest")
    host = ScriptHost(system, time_budget=5)
    try:
        if language == "lua":
            result = await host.run_lua_async(LUA)
        else:
            result = await host.run_js_async(JS)
    finally:
        host.close()
        await system.shutdown()
    assert prompts[0]["content"] == "my ssn is [ssn]"
    assert result["text"] == "ok (checked by scripted)"


STREAM_LUA = """
local pieces, order = {}, {}
Event.subscribe("model.*.delta", function(e)
  pieces[#pieces + 1] = e.data.text
  order[#order + 1] = "delta"
end)
Agent.create({name = "p", model = "scripted/p", replies = {string.rep("word ", 200)}})
local r = Agent.get("p"):execute({text = "go"})
order[#order + 1] = "done"
return {streamed = table.concat(pieces), text = r.text, order = order}
"""

STREAM_JS = """
const pieces = [], order = [];
await Event.subscribe("model.*.delta", (e) => { pieces.push(e.data.text); order.push("delta"); });
await Agent.create({name: "p", model: "scripted/p", replies: ["word ".repeat(200)]});
const r = await (await Agent.get("p")).execute({text: "go"});
order.push("done");
return {streamed: pieces.join(""), text: r.text, order};
"""


@pytest.mark.parametrize("language", ["lua", "js"])
async def test_scripts_stream_an_answer_through_delta_events(language: str) -> None:
    system = System(SystemConfig(store="memory"))
    await system.start()
    host = ScriptHost(system, time_budget=5)
    try:
        if language == "lua":
            result = await host.run_lua_async(STREAM_LUA)
        else:
            result = await host.run_js_async(STREAM_JS)
    finally:
        host.close()
        await system.shutdown()
    assert result["streamed"] == result["text"] == "word " * 200
    order = result["order"]
    assert order[-1] == "done" and order.count("delta") >= 2  # pieces came while it ran
