-- 06 Event patterns: which events a subscription pattern matches.
--
-- An event type is made of dot-separated segments ("tool.calculator.completed").
--   "*"          exactly one segment           "tool.*"      -> tool.x, not tool.x.y
--   "**"         any number of segments (0+)   "tool.**"     -> tool, tool.x, tool.x.y
--   globs        inside one segment            "tool.calc*"  -> tool.calc, tool.calculator
--   "?", "[0-9]" one character, a character class

local patterns = {"app.*", "app.**", "**.error", "app.calc*", "app.v[0-9]", "**"}
local hits = {}
for _, p in ipairs(patterns) do
  hits[p] = {}
  Event.subscribe(p, function(event)
    -- "**" also sees the bus's own events (hooks, tools); keep only ours.
    if event.data and event.data.demo then
      table.insert(hits[p], event.type)
    end
  end)
end

local types = {"app", "app.calc", "app.calculator", "app.calc.error", "app.v2", "app.vx",
               "db.error", "db.pool.error"}
for _, t in ipairs(types) do Event.publish(t, {demo = true}) end

for _, p in ipairs(patterns) do
  print(string.format("  %-12s matched %s", p, table.concat(hits[p], ", ")))
end

local function same(list, expected)
  if #list ~= #expected then return false end
  for i = 1, #list do if list[i] ~= expected[i] then return false end end
  return true
end
assert(same(hits["app.*"], {"app.calc", "app.calculator", "app.v2", "app.vx"}))
assert(same(hits["app.**"], {"app", "app.calc", "app.calculator", "app.calc.error", "app.v2",
                             "app.vx"}))
assert(same(hits["**.error"], {"app.calc.error", "db.error", "db.pool.error"}))
assert(same(hits["app.calc*"], {"app.calc", "app.calculator"}))
assert(same(hits["app.v[0-9]"], {"app.v2"}))
assert(#hits["**"] == #types)

-- The real system publishes tool events: tool.<name>.started / completed / failed.
local tool_events = {}
Event.subscribe("tool.calc*.*", function(event) table.insert(tool_events, event.type) end)
Tool.invoke("calculator", {expression = "2 ** 8"})
print("tool events: " .. table.concat(tool_events, ", "))
assert(same(tool_events, {"tool.calculator.started", "tool.calculator.completed"}))

-- A bad pattern is refused with an explanation.
local ok, err = pcall(Event.subscribe, "app.x**")
print("bad pattern: " .. tostring(err))
assert(not ok)

local counts = {}
for _, p in ipairs(patterns) do counts[p] = #hits[p] end
return counts
