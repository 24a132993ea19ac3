// JS side of the cross-language event test.
globalThis.received = [];
await Event.subscribe("cross.**", (event) => {
  if (event.language !== "javascript") received.push(event);
});
globalThis.queue = await Event.subscribe("queue.*");
globalThis.publish = (n) => Event.publish("cross.from_js",
  {n, nested: {list: [1, 2.5, "three"]}},
  {correlation_id: "corr-js", source: "events.js", tags: ["t1"]});
return "ready";
