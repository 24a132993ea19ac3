-- Pattern: a policy hook written in Lua.
--
-- Policies often belong to the people who operate a system, not to the application code:
-- this Lua hook (sandboxed, with time and memory limits) decides which tools may run and
-- with what. It runs at BeforeToolExecution in the same priority order as Python hooks,
-- for calls from any language. Run it with:
--
--   llmspell run examples/patterns/11_lua_policy_hook.lua
--
-- The policy: only the listed tools may run, and the calculator gets no expression longer
-- than 40 characters.

local POLICY = {
  allowed = {calculator = true, text_manipulator = true, hash_calculator = true},
  max_expression = 40,
}

local decisions = {}

local policy = Hook.register("BeforeToolExecution", function(ctx)
  local tool = ctx.data.tool
  if not POLICY.allowed[tool] then
    table.insert(decisions, tool .. ": denied")
    return {type = "cancel", reason = "policy: tool '" .. tool .. "' is not allowed"}
  end
  local expression = ctx.data.params.expression
  if tool == "calculator" and expression and #expression > POLICY.max_expression then
    table.insert(decisions, tool .. ": too long")
    return {type = "cancel", reason = "policy: expression longer than "
                                      .. POLICY.max_expression .. " characters"}
  end
  table.insert(decisions, tool .. ": allowed")
  return nil
end, {priority = "highest", name = "lua_tool_policy"})

local ok = Tool.invoke("calculator", {expression = "6 * 7"})
print("calculator ->", ok.result)

local refused, err = pcall(Tool.invoke, "uuid_generator", {})
print("uuid_generator refused:", not refused, tostring(err))

local long, long_err = pcall(Tool.invoke, "calculator",
                             {expression = string.rep("1 + ", 20) .. "1"})
print("long expression refused:", not long, tostring(long_err))

assert(ok.result == 42)
assert(not refused and tostring(err):find("not allowed"))
assert(not long and tostring(long_err):find("longer than"))
assert(#decisions == 3)
policy:unregister()
return {decisions = decisions}
