-- Every hook result type returned from Lua has its effect on a real tool call.
-- The test registers the tools: count(n) records n and returns n * 2, backup(n) returns
-- "backup <n>", flaky() fails on its first call and returns "recovered" afterwards.
local out = {}

local function with_hook(point, fn, body)
  local handle = Hook.register(point, fn, "high")
  local ok, value = pcall(body)
  handle:unregister()
  return ok, value
end
local function count(n) return function() return Tool.invoke("count", {n = n}) end end

local _, v = with_hook("BeforeToolExecution", function(ctx)
  local data = ctx.data
  data.params.n = data.params.n + 100
  return {type = "modified", data = data}
end, count(1))
out.modified = v

local ok, err = with_hook("BeforeToolExecution", function()
  return {type = "cancel", reason = "not today"}
end, count(2))
out.cancel = {ok = ok, error = err}

ok, err = with_hook("BeforeToolExecution", function() return "blocked by policy" end, count(2))
out.cancel_string = {ok = ok, error = err}

_, v = with_hook("BeforeToolExecution", function(ctx)
  if ctx.component_id.name == "count" then return {type = "redirect", target = "backup"} end
end, count(3))
out.redirect = v

_, v = with_hook("BeforeToolExecution", function()
  return {type = "replace", value = {from_hook = true}}
end, count(4))
out.replace = v

local tries = 0
_, v = with_hook("BeforeToolExecution", function()
  tries = tries + 1
  if tries == 1 then return {type = "retry", delay_ms = 1, max_attempts = 3} end
end, count(5))
out.retry = {value = v, tries = tries}

_, v = with_hook("ToolError", function()
  return {type = "retry", delay_ms = 1, max_attempts = 3}
end, function() return Tool.invoke("flaky", {}) end)
out.retry_on_error = v

_, v = with_hook("BeforeToolExecution", function() return "skip" end, count(6))
out.skipped = v
_, v = with_hook("BeforeToolExecution", function()
  return {type = "skipped", reason = "nothing to do"}
end, count(6))
out.skipped_table = v

_, v = with_hook("BeforeToolExecution", function(ctx)
  if ctx.data.params.n == 7 then
    return {type = "fork", operations = {{type = "tool", target = "count", parameters = {n = 70}}}}
  end
end, count(7))
out.fork = v

_, v = with_hook("BeforeToolExecution", function()
  return {type = "cache", key = "eight", ttl = 60}
end, function() return {Tool.invoke("count", {n = 8}), Tool.invoke("count", {n = 8})} end)
out.cache = v

_, v = with_hook("AfterToolExecution", function(ctx)
  local data = ctx.data
  data.result = "changed after"
  return {type = "modified", data = data}
end, count(9))
out.modified_after = v

return out
