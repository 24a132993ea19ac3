-- 07 Tool integration: hooks around Tool.invoke of several tools.
--
-- BeforeToolExecution sees {tool, params}; AfterToolExecution also sees the result.
-- Here: an audit log of every call with its duration, and a security hook that refuses
-- parameters it does not like (a cancel), so the tool never runs.

local audit = {}
local started = {}   -- correlation id -> os.clock() (CPU seconds: enough for a demo)

Hook.register("BeforeToolExecution", function(ctx)
  started[ctx.correlation_id] = os.clock()
end, {name = "audit.before", priority = "low"})

Hook.register("AfterToolExecution", function(ctx)
  local t0 = started[ctx.correlation_id] or os.clock()
  audit[#audit + 1] = {tool = ctx.data.tool, ms = (os.clock() - t0) * 1000}
  print(string.format("[audit] %-17s %.2f ms -> %s", ctx.data.tool, audit[#audit].ms,
                      JSON.encode(ctx.data.result)))
end, {name = "audit.after"})

-- The security hook runs first ("highest") and cancels by returning the reason as a string.
local blocked = {}
Hook.register("BeforeToolExecution", function(ctx)
  local params = ctx.data.params
  if ctx.component_id.name == "base64_encoder" and params.operation == "decode" then
    blocked[#blocked + 1] = ctx.component_id.name
    return "security policy: decoding is disabled"
  end
end, {name = "security.no_decode", priority = "highest"})

-- A few tools from the library.
local sum = Tool.invoke("calculator", {expression = "(2 + 3) * 4"})
local id = Tool.invoke("uuid_generator", {version = 4})
local text = Tool.invoke("text_manipulator", {operation = "snake_case", text = "Hook Demo Run"})
local encoded = Tool.invoke("base64_encoder", {operation = "encode", input = "llmspell"})
local hash = Tool.invoke("hash_calculator", {input = "llmspell", algorithm = "md5"})
assert(sum.result == 20)
assert(text.result == "hook_demo_run", text.result)
assert(encoded.result == "bGxtc3BlbGw=", encoded.result)
assert(#hash.digest == 32)
assert(#id.uuids == 1 and #id.uuids[1] == 36)

-- The refused call: Tool.invoke raises, the tool never ran (no audit entry).
local ok, err = pcall(Tool.invoke, "base64_encoder", {operation = "decode", input = encoded.result})
print("decode refused: " .. tostring(err))
assert(not ok and err:find("decoding is disabled", 1, true))
assert(#blocked == 1 and #audit == 5, "5 calls audited, the blocked one not")

-- Tool.list() describes every registered tool (name, description, parameters schema).
local names = {}
for _, spec in ipairs(Tool.list()) do names[spec.name] = true end
assert(names.calculator and names.json_processor)

return {audited = #audit, blocked = blocked[1], snake = text.result}
