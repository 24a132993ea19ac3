-- Subscribe without a callback, then receive: an event that is there, and a timeout.
local id = Event.subscribe("inbox.*")
Event.publish("inbox.mail", {subject = "hi"})
local first = Event.receive(id, 100)
local none = Event.receive(id, 20)
local subs = #Event.list_subscriptions()
local removed = Event.unsubscribe(id)
return {subject = first.data.subject, type = first.type, timed_out = none == nil,
        subs = subs, removed = removed, again = Event.unsubscribe(id)}
