// Pattern: an event consumer written in JavaScript.
//
// Every event on the bus has one JSON form, whichever language published it, so a
// JavaScript consumer can watch what Python, Lua or JavaScript code does. This one counts
// tool calls and their outcomes per tool (a live dashboard in miniature), and uses a
// receive subscription (no callback) as a work queue for failed calls. Run it with:
//
//   llmspell run examples/patterns/12_js_event_consumer.js

const counts = {};
const watcher = await Event.subscribe("tool.*.*", (event) => {
  const [, tool, outcome] = event.type.split(".");
  counts[tool] = counts[tool] || {started: 0, completed: 0, failed: 0};
  if (outcome in counts[tool]) counts[tool][outcome] += 1;
});
const failures = await Event.subscribe("tool.*.failed");   // a queue: receive them later

await Tool.invoke("calculator", {expression: "1 + 1"});
await Tool.invoke("calculator", {expression: "2 * 21"});
try {
  await Tool.invoke("calculator", {expression: "1 / 0"});
} catch (err) {
  console.log(`calculator failed as expected: ${err.message ?? err}`);
}
await Tool.invoke("text_manipulator", {operation: "uppercase", text: "hi"});

const failed = await Event.receive(failures, 100);
console.log("counts:", JSON.stringify(counts));
console.log("first failure to follow up:", failed.data.error);

if (counts.calculator.completed !== 2 || counts.calculator.failed !== 1) {
  throw new Error(`unexpected counts ${JSON.stringify(counts)}`);
}
if (counts.text_manipulator.completed !== 1) throw new Error("text call not seen");
if (!failed.type.startsWith("tool.calculator")) throw new Error(failed.type);
await Event.unsubscribe(watcher);
await Event.unsubscribe(failures);
return counts;
