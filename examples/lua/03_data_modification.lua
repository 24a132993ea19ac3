-- 03 Data modification: hooks that change what a tool call does or returns.
--
-- Results a hook can return (tables):
--   {type = "modified", data = new_ctx_data}  -> the call goes on with the new data
--   {type = "replace",  value = v}            -> the call is answered with v (tool not run)
-- At BeforeToolExecution ctx.data is {tool, params, ...}; at AfterToolExecution it also
-- holds the tool's result.

-- 1) Rewrite parameters: every text sent to text_manipulator gets trimmed first.
local trim = Hook.register("BeforeToolExecution", function(ctx)
  if ctx.component_id.name ~= "text_manipulator" then return nil end
  local data = ctx.data
  local before = data.params.text
  data.params.text = before:match("^%s*(.-)%s*$")
  print(string.format("[modify] text %q -> %q", before, data.params.text))
  return {type = "modified", data = data}
end, "high")

local up = Tool.invoke("text_manipulator", {operation = "uppercase", text = "   hello hooks  "})
print("uppercase result: " .. up.result)
assert(up.result == "HELLO HOOKS", "the hook trimmed the text before the tool ran")
trim:unregister()

-- 2) Modify the result after the tool ran: round the calculator's answer.
local round = Hook.register("AfterToolExecution", function(ctx)
  if ctx.component_id.name ~= "calculator" then return nil end
  local data = ctx.data
  data.result.result = math.floor(data.result.result * 100 + 0.5) / 100
  data.result.rounded = true
  return {type = "modified", data = data}
end)
local third = Tool.invoke("calculator", {expression = "10 / 3"})
print("10 / 3 rounded by the hook: " .. third.result)
assert(third.result == 3.33 and third.rounded == true)
round:unregister()

-- 3) Replace: answer hash requests for a known input without running the tool.
local known = {["secret"] = {digest = "(served from the hook's table)", algorithm = "none"}}
local cache = Hook.register("BeforeToolExecution", function(ctx)
  if ctx.component_id.name == "hash_calculator" and known[ctx.data.params.input] then
    return {type = "replace", value = known[ctx.data.params.input]}
  end
end)
local served = Tool.invoke("hash_calculator", {input = "secret"})
local real = Tool.invoke("hash_calculator", {input = "public"})
print("replaced: " .. served.digest)
print("real sha256: " .. real.digest)
assert(served.algorithm == "none")
assert(real.algorithm == "sha256" and #real.digest == 64)
cache:unregister()

return {trimmed = up.result, rounded = third.result, replaced = served.digest}
