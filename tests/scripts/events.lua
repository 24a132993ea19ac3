-- Lua side of the cross-language event test: a callback subscription that keeps what it
-- sees, a receive-style subscription, and a publisher.
received = {}
Event.subscribe("cross.**", function(event)
  if event.language ~= "lua" then table.insert(received, event) end
end)
queue = Event.subscribe("queue.*")

function publish(n)
  return Event.publish("cross.from_lua", {n = n, nested = {list = {1, 2.5, "three"}}},
                       {correlation_id = "corr-lua", source = "events.lua", tags = {"t1"}})
end
return "ready"
