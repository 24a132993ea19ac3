local h = Hook.register("before_tool_execution", function(ctx) return "continue" end, "low")
assert(h:hook_point() == "before_tool_execution")
assert(#Hook.list("BeforeToolExecution") == 1)
assert(#Hook.list({language = "lua"}) == 1)
assert(#Hook.list({priority = "low"}) == 1)
assert(h:unregister() == true)
assert(#Hook.list({language = "lua"}) == 0)
return "ok"
