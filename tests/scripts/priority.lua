-- A Lua hook at "high": it runs before the Python hook ("normal") and the JS hook ("low")
-- and each later hook sees the trail the earlier ones built.
Hook.register("BeforeToolExecution", function(ctx)
  if ctx.component_id.name ~= "echo" then return nil end
  local data = ctx.data
  table.insert(data.params.trail, "lua")
  return {type = "modified", data = data}
end, "high")
return "registered"
