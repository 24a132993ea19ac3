// The JS version of isolation.lua: raise, loop forever, allocate without bound.
const kind = arguments[0];
await Hook.register("BeforeToolExecution", (ctx) => {
  if (ctx.component_id.name !== "count") return;
  if (kind === "error") throw new Error("hook exploded");
  if (kind === "loop") for (;;) {}
  const hog = [];
  for (let i = 0; ; i++) hog.push("x".repeat(1024) + i);
}, {priority: "high", name: "bad-" + kind});
return "registered";
