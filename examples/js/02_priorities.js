// 02 Priorities: several hooks on one point run in priority order.
//
// Priorities: "highest", "high", "normal" (the default), "low", "lowest", or an integer
// (lower numbers run first). Hooks with the same priority run in registration order.

let order = [];
const recorder = (label) => (ctx) => { order.push(label); };

// Registered deliberately out of order. The options object names each hook so the
// listing below is readable.
for (const p of ["low", "highest", "normal", "lowest", "high"]) {
  await Hook.register("BeforeToolExecution", recorder(p), {priority: p, name: `prio.${p}`});
}
// No priority at all means "normal"; it runs after the earlier "normal" hook.
await Hook.register("BeforeToolExecution", recorder("normal-2"), {name: "prio.normal-2"});

// Hook.list shows each hook's priority as a number.
for (const h of await Hook.list("BeforeToolExecution")) {
  console.log(`  ${h.name.padEnd(14)} priority ${h.priority}`);
}

await Tool.invoke("uuid_generator", {});
console.log(`execution order: ${order.join(" > ")}`);

const expected = ["highest", "high", "normal", "normal-2", "low", "lowest"];
if (order.join() !== expected.join()) throw new Error(`unexpected order ${order}`);

// A hook that cancels stops the chain: the hooks after it never run. This one is "high"
// too, registered after prio.high, so it runs right after it.
order = [];
const gate = await Hook.register("BeforeToolExecution", () => "closed for the demo", "high");
let stopped = false;
try {
  await Tool.invoke("uuid_generator", {});
} catch (err) {
  stopped = true;
}
if (!stopped) throw new Error("the cancel stops the tool");
console.log(`with a cancelling high hook: ${order.join(" > ")}`);
if (order[order.length - 1] !== "high") throw new Error("hooks after the cancel did not run");
await gate.unregister();

return {order: expected, stopped_after: order[order.length - 1]};
