-- 04 Error handling: what happens when a hook fails, and how a script sees a cancel.
--
-- * A hook that raises an error does not break the call: hooks are fail-open by default,
--   so the tool still runs. The failure is logged and recorded in the hook dispatch event
--   ("hook.<point>", kinds[i] == "error", details[i] = the message).
-- * A hook that cancels makes Tool.invoke raise an error with the reason: catch it
--   with pcall.

-- Watch the hook dispatch events for BeforeToolExecution (no callback: we receive them).
local inbox = Event.subscribe("hook.before_tool_execution")

local broken = Hook.register("BeforeToolExecution", function(ctx)
  error("this hook has a bug")
end, {name = "errors.buggy"})

local r = Tool.invoke("calculator", {expression = "1 + 1"})
print("the tool still ran: 1 + 1 = " .. r.result)
assert(r.result == 2)

-- Find the failure in the dispatch event.
local event = Event.receive(inbox, 200)
assert(event, "a hook dispatch event was published")
local failure
for i, name in ipairs(event.data.hooks) do
  if name == "errors.buggy" then
    failure = {kind = event.data.kinds[i], detail = event.data.details[i]}
  end
end
print("recorded: " .. failure.kind .. ": " .. failure.detail)
assert(failure.kind == "error" and failure.detail:find("this hook has a bug", 1, true))
broken:unregister()

-- A cancelling hook: return a string (the reason) or {type = "cancel", reason = ...}.
local guard = Hook.register("BeforeToolExecution", function(ctx)
  if ctx.component_id.name == "calculator" and ctx.data.params.expression:find("/ *0") then
    return {type = "cancel", reason = "division by zero is not allowed"}
  end
end, "highest")

local ok, err = pcall(Tool.invoke, "calculator", {expression = "5 / 0"})
print("pcall returned ok=" .. tostring(ok) .. " error=" .. tostring(err))
assert(not ok and err:find("division by zero is not allowed", 1, true))

-- A tool's own error (bad parameters) is caught the same way.
local ok2, err2 = pcall(Tool.invoke, "calculator", {expression = "2 +"})
print("bad expression: " .. tostring(err2))
assert(not ok2)

-- Other calls still work.
assert(Tool.invoke("calculator", {expression = "5 / 2"}).result == 2.5)
guard:unregister()
Event.unsubscribe(inbox)

return {hook_failure = failure.kind, cancelled = not ok, tool_error = not ok2}
