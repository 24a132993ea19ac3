-- Three misbehaving hooks: one raises, one never ends, one allocates without bound. Each
-- is isolated: the failure is recorded, the breaker opens, the tool call goes on.
local kind = ...
Hook.register("BeforeToolExecution", function(ctx)
  if ctx.component_id.name ~= "count" then return nil end
  if kind == "error" then error("hook exploded") end
  if kind == "loop" then while true do end end
  local hog = {}
  for i = 1, 1e9 do hog[i] = string.rep("x", 1024) .. i end
end, {priority = "high", name = "bad-" .. kind})
return "registered"
