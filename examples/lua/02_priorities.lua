-- 02 Priorities: several hooks on one point run in priority order.
--
-- Priorities: "highest", "high", "normal" (the default), "low", "lowest", or an integer
-- (lower numbers run first). Hooks with the same priority run in registration order.

local order = {}
local function recorder(label)
  return function(ctx)
    order[#order + 1] = label
  end
end

-- Registered deliberately out of order.
-- The options table names each hook so the listing below is readable.
for _, p in ipairs({"low", "highest", "normal", "lowest", "high"}) do
  Hook.register("BeforeToolExecution", recorder(p), {priority = p, name = "prio." .. p})
end
-- No priority at all means "normal"; it runs after the earlier "normal" hook.
Hook.register("BeforeToolExecution", recorder("normal-2"), {name = "prio.normal-2"})

-- Hook.list shows each hook's priority as a number.
for _, h in ipairs(Hook.list("BeforeToolExecution")) do
  print(string.format("  %-14s priority %d", h.name, h.priority))
end

Tool.invoke("uuid_generator", {})
print("execution order: " .. table.concat(order, " > "))

local expected = {"highest", "high", "normal", "normal-2", "low", "lowest"}
assert(#order == #expected, "every hook ran once")
for i, label in ipairs(expected) do
  assert(order[i] == label, "position " .. i .. ": expected " .. label .. ", got " .. order[i])
end

-- A hook that cancels stops the chain: the hooks after it never run. This one is "high"
-- too, registered after prio.high, so it runs right after it.
order = {}
local gate = Hook.register("BeforeToolExecution", function() return "closed for the demo" end,
                           "high")
local ok = pcall(Tool.invoke, "uuid_generator", {})
assert(not ok, "the cancel stops the tool")
print("with a cancelling high hook: " .. table.concat(order, " > "))
assert(order[#order] == "high", "hooks after the cancelling one did not run")
gate:unregister()

return {order = expected, stopped_after = order[#order]}
