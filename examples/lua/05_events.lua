-- 05 Events: publish, subscribe with a callback, subscribe and receive, unsubscribe, stats.
--
-- Events are {type, data} messages on the system's event bus. Python, Lua and JavaScript
-- all share the same bus; an event remembers the language that published it.

-- 1) A callback subscription: the function runs for every matching event.
local greetings = {}
local cb = Event.subscribe("user.greeted", function(event)
  greetings[#greetings + 1] = event.data.name
  print(string.format("[callback] %s from %s: %s", event.type, event.language, event.data.name))
end)

Event.publish("user.greeted", {name = "Ada"})
-- publish returns the event id; options add metadata.
local id = Event.publish("user.greeted", {name = "Grace"},
                         {correlation_id = "demo-05", tags = {"example"}, source = "05_events"})
print("published event " .. id)
assert(#greetings == 2 and greetings[2] == "Grace")

-- 2) A receive subscription (no callback): events wait in a queue until received.
local inbox = Event.subscribe("job.done")
Event.emit("job.done", {job = 1, ok = true})       -- emit is an alias of publish
Event.publish("job.done", {job = 2, ok = false})

local first = Event.receive(inbox, 100)             -- wait up to 100 ms
local second = Event.receive(inbox, 100)
print("received job " .. first.data.job .. " then job " .. second.data.job)
assert(first.data.job == 1 and second.data.job == 2 and second.data.ok == false)

-- Nothing else is queued: receive times out and returns nil.
local none = Event.receive(inbox, 50)
print("third receive after 50 ms: " .. tostring(none))
assert(none == nil)

-- 3) What we are subscribed to.
for _, s in ipairs(Event.list_subscriptions()) do
  print(string.format("  subscription %d: %s (callback=%s, pending=%d)",
                      s.id, s.pattern, tostring(s.callback), s.pending))
end
assert(#Event.list_subscriptions() == 2)
-- Deliveries so far: 2 to the callback, 2 to the receive queue.
local live = Event.get_stats()
print("delivered so far: " .. live.delivered)
assert(live.delivered >= 4)

-- 4) Unsubscribe: later events no longer reach the callback.
assert(Event.unsubscribe(cb) == true)
Event.publish("user.greeted", {name = "Linus"})
assert(#greetings == 2, "the callback is gone")
Event.unsubscribe(inbox)

-- 5) Bus statistics: the totals keep counting what removed subscriptions received.
local stats = Event.get_stats()
print(string.format("bus: published=%d dropped=%d, user.greeted=%d, job.done=%d",
                    stats.published, stats.dropped, stats.by_type["user.greeted"],
                    stats.by_type["job.done"]))
assert(stats.by_type["user.greeted"] == 3 and stats.by_type["job.done"] == 2)
assert(stats.delivered >= live.delivered, "totals never go down")

return {greetings = greetings, received = {first.data.job, second.data.job},
        published = stats.published}
