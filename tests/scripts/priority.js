// A JS hook at "low": it runs last and sees what the Lua and Python hooks added.
await Hook.register("BeforeToolExecution", (ctx) => {
  if (ctx.component_id.name !== "echo") return;
  const data = ctx.data;
  data.params.trail.push("js:" + data.params.trail.join(","));
  return {type: "modified", data};
}, "low");
return "registered";
