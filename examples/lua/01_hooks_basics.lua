-- 01 Hooks basics: register a hook, see it run, list hooks, unregister.
--
-- A hook is a function the system calls at a named point (here BeforeToolExecution,
-- right before any tool runs). It receives a context table:
--   ctx.point, ctx.component_id = {type, name}, ctx.language, ctx.metadata, ctx.data
-- and returns nil (carry on) or a result (see 03_data_modification.lua).

local seen = {}

-- Hook.register(point, fn, priority_or_options) returns a handle.
-- The point may be written PascalCase ("BeforeToolExecution") or snake_case.
local handle = Hook.register("BeforeToolExecution", function(ctx)
  seen[#seen + 1] = ctx.component_id.name
  print("[hook] about to run tool " .. ctx.component_id.name)
  -- returning nothing means "continue"
end, {name = "basics.watch_tools", priority = "normal", tags = {"demo"}})

print("registered hook id=" .. handle:id() .. " at " .. handle:hook_point()
      .. " named " .. handle:name())

-- Run a tool: the hook sees it.
local r = Tool.invoke("calculator", {expression = "6 * 7"})
print("calculator says " .. r.result)
assert(r.result == 42)
assert(#seen == 1 and seen[1] == "calculator")

-- Hook.list() lists every hook; filter by point name, or by a table.
local at_point = Hook.list("BeforeToolExecution")
local mine = Hook.list({language = "lua", tag = "demo"})
print("hooks at before_tool_execution: " .. #at_point .. ", tagged demo: " .. #mine)
assert(#mine == 1 and mine[1].name == "basics.watch_tools")
assert(mine[1].hook_point == "before_tool_execution")

-- Unregister (handle:unregister() does the same). A second call returns false.
assert(Hook.unregister(handle) == true)
assert(handle:unregister() == false)
assert(#Hook.list({tag = "demo"}) == 0)

-- The hook is gone: another tool call is not seen.
Tool.invoke("text_manipulator", {operation = "uppercase", text = "quiet"})
assert(#seen == 1, "the unregistered hook must not run")
print("after unregister the hook saw " .. #seen .. " call(s) in total")

return {registered = mine[1].name, calls_seen = #seen, result = r.result}
