// 05 Events: publish, subscribe with a callback, subscribe and receive, unsubscribe, stats.
//
// Events are {type, data} messages on the system's event bus. Python, Lua and JavaScript
// all share the same bus; an event remembers the language that published it.

// 1) A callback subscription: the function runs for every matching event.
const greetings = [];
const cb = await Event.subscribe("user.greeted", (event) => {
  greetings.push(event.data.name);
  console.log(`[callback] ${event.type} from ${event.language}: ${event.data.name}`);
});

await Event.publish("user.greeted", {name: "Ada"});
// publish resolves to the event id; options add metadata.
const id = await Event.publish("user.greeted", {name: "Grace"},
                               {correlation_id: "demo-05", tags: ["example"], source: "05_events"});
console.log(`published event ${id}`);
if (greetings.length !== 2 || greetings[1] !== "Grace") throw new Error(`got ${greetings}`);

// 2) A receive subscription (no callback): events wait in a queue until received.
const inbox = await Event.subscribe("job.done");
await Event.emit("job.done", {job: 1, ok: true});     // emit is an alias of publish
await Event.publish("job.done", {job: 2, ok: false});

const first = await Event.receive(inbox, 100);        // wait up to 100 ms
const second = await Event.receive(inbox, 100);
console.log(`received job ${first.data.job} then job ${second.data.job}`);
if (first.data.job !== 1 || second.data.job !== 2 || second.data.ok !== false) {
  throw new Error("events arrive in order with their data");
}

// Nothing else is queued: receive times out and resolves to null.
const none = await Event.receive(inbox, 50);
console.log(`third receive after 50 ms: ${none}`);
if (none !== null) throw new Error("expected a timeout");

// 3) What we are subscribed to.
const subs = await Event.list_subscriptions();
for (const s of subs) {
  console.log(`  subscription ${s.id}: ${s.pattern} (callback=${s.callback}, pending=${s.pending})`);
}
if (subs.length !== 2) throw new Error("two subscriptions");
// Deliveries so far: 2 to the callback, 2 to the receive queue.
const live = await Event.get_stats();
console.log(`delivered so far: ${live.delivered}`);
if (live.delivered < 4) throw new Error("deliveries counted");

// 4) Unsubscribe: later events no longer reach the callback.
if ((await Event.unsubscribe(cb)) !== true) throw new Error("unsubscribe");
await Event.publish("user.greeted", {name: "Linus"});
if (greetings.length !== 2) throw new Error("the callback is gone");
await Event.unsubscribe(inbox);

// 5) Bus statistics: the totals keep counting what removed subscriptions received.
const stats = await Event.get_stats();
console.log(`bus: published=${stats.published} dropped=${stats.dropped}, ` +
            `user.greeted=${stats.by_type["user.greeted"]}, job.done=${stats.by_type["job.done"]}`);
if (stats.by_type["user.greeted"] !== 3 || stats.by_type["job.done"] !== 2) {
  throw new Error("counts by type");
}
if (stats.delivered < live.delivered) throw new Error("totals never go down");

return {greetings, received: [first.data.job, second.data.job], published: stats.published};
