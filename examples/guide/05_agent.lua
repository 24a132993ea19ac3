-- Guide step 5 (Lua): the agent of step 4, scripted in Lua.
--
-- The same globals as JavaScript and the same hook points and events as Python: a policy
-- hook refuses large refunds (here: large calculations), a model-call hook redacts e-mail
-- addresses, a subscription counts tool events, and the agent uses a tool. Run it with
--
--   llmspell run examples/guide/05_agent.lua
--
-- (offline: the model is scripted; use model = "openai/gpt-4o-mini" and OPENAI_API_KEY for
-- a real one).

local seen_by_model = {}
local tool_events = 0

Hook.register("BeforeToolExecution", function(ctx)
  local expression = ctx.data.params.expression or ""
  if #expression > 30 then
    return {type = "cancel", reason = "policy: expression too long"}
  end
end, {priority = "high", name = "lua_policy"})

Hook.register("BeforeModelCall", function(ctx)
  local params = ctx.data.params
  for _, message in ipairs(params.messages) do
    if type(message.content) == "string" then   -- a tool-call message's content is JSON.null
      message.content = message.content:gsub("[%w._%%+-]+@[%w.-]+%.%a+", "[email]")
      table.insert(seen_by_model, message.content)
    end
  end
  return {type = "modified", data = {params = params}}
end, {priority = "high", name = "lua_redact"})

Event.subscribe("tool.*.*", function(event) tool_events = tool_events + 1 end)

local agent = Agent.create({
  name = "support", model = "scripted/demo", tools = {"calculator"},
  system_prompt = "Use the calculator for arithmetic.",
  replies = {
    {tool_calls = {{name = "calculator", arguments = {expression = "3 * 14.5"}}}},
    "Three items at 14.50 cost 43.5.",
  },
})

local answer = agent:execute({text = "What do 3 items at 14.50 cost? Mail ann@example.com"})
print("agent: " .. answer.text)
assert(answer.text == "Three items at 14.50 cost 43.5.")
assert(tool_events >= 2, "tool events seen: " .. tool_events)
assert(#seen_by_model > 0, "the redaction hook ran")
for _, text in ipairs(seen_by_model) do
  assert(not text:find("ann@example.com", 1, true), "the model saw an address")
end

local ok, err = pcall(Tool.invoke, "calculator", {expression = string.rep("1+", 20) .. "1"})
assert(not ok and tostring(err):find("too long"))
print("refused: " .. tostring(err))
return {answer = answer.text, tool_events = tool_events}
