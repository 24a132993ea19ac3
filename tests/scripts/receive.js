// Subscribe without a callback, then receive: an event that is there, and a timeout.
const id = await Event.subscribe("inbox.*");
await Event.publish("inbox.mail", {subject: "hi"});
const first = await Event.receive(id, 100);
const none = await Event.receive(id, 20);
const subs = (await Event.list_subscriptions()).length;
const removed = await Event.unsubscribe(id);
return {subject: first.data.subject, type: first.type, timed_out: none === null,
        subs, removed, again: await Event.unsubscribe(id)};
