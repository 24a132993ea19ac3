-- 10 Agents: an agent with a scripted model that calls a tool.
--
-- model = "scripted/<name>" plays back `replies` in order (offline, deterministic).
-- A reply is a final answer (a string) or a request to call tools:
--   {tool_calls = {{name = "calculator", arguments = {expression = "..."}}}}
-- The agent runs the tool (through the same hooks as Tool.invoke), gives the result back
-- to the model, and the model's next reply is the answer.

-- Watch what the agent does.
local tool_calls = {}
Hook.register("BeforeToolExecution", function(ctx)
  tool_calls[#tool_calls + 1] = ctx.data.tool .. " " .. JSON.encode(ctx.data.params)
end)
local agent_runs = 0
Hook.register("BeforeAgentExecution", function(ctx) agent_runs = agent_runs + 1 end)

local agent = Agent.create({
  name = "math_helper",
  model = "scripted/demo",
  system_prompt = "You answer arithmetic questions using the calculator tool.",
  tools = {"calculator"},
  replies = {
    {tool_calls = {{name = "calculator", arguments = {expression = "17 * 23"}}}},
    "17 times 23 is 391.",
    "You are welcome!",
  },
})
print("created agent " .. agent.name .. " on model " .. agent.model)

local answer = agent:execute({text = "What is 17 times 23?"})
print("agent: " .. answer.text)
print("tool calls seen by the hook: " .. table.concat(tool_calls, "; "))
assert(answer.success and answer.text == "17 times 23 is 391.")
assert(#tool_calls == 1 and tool_calls[1]:find("17 * 23", 1, true))

-- The response also lists the tool calls with their results, the turns and token usage
-- (a scripted model fabricates usage by a fixed rule).
local call = answer.tool_calls[1]
print(string.format("%s(%s) returned %d in %d turns, %d tokens", call.tool,
                    call.arguments.expression, call.result.result, answer.turns,
                    answer.usage.total))
assert(call.result.result == 391 and answer.turns == 2)

-- The next reply in the script answers the next request.
local thanks = agent:execute({text = "Thanks!"})
print("agent: " .. thanks.text)
assert(thanks.text == "You are welcome!")
assert(agent_runs == 2)

-- Agents are registered by name; Agent.get returns a handle to an existing one.
local names = Agent.list()
assert(#names >= 1)
assert(Agent.get("math_helper").name == "math_helper")

-- A second agent without tools: a plain scripted reply.
local echo = Agent.create({name = "greeter", model = "scripted/echo", replies = {"Hello!"}})
assert(echo:execute("hi").text == "Hello!")   -- a plain string works as the request too

return {answer = answer.text, tool_calls = #tool_calls, agents = #Agent.list()}
