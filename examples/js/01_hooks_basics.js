// 01 Hooks basics: register a hook, see it run, list hooks, unregister.
//
// A hook is a function the system calls at a named point (here BeforeToolExecution,
// right before any tool runs). It receives a context object:
//   ctx.point, ctx.component_id = {type, name}, ctx.language, ctx.metadata, ctx.data
// and returns undefined (carry on) or a result (see 03_data_modification.js).
// Every host call returns a Promise; the script body is async, so `await` them.

const seen = [];

// Hook.register(point, fn, priorityOrOptions) resolves to a handle.
// The point may be written PascalCase ("BeforeToolExecution") or snake_case.
const handle = await Hook.register("BeforeToolExecution", (ctx) => {
  seen.push(ctx.component_id.name);
  console.log(`[hook] about to run tool ${ctx.component_id.name}`);
  // returning nothing means "continue"
}, {name: "basics.watch_tools", priority: "normal", tags: ["demo"]});

console.log(`registered hook id=${handle.id()} at ${handle.hookPoint()} named ${handle.name()}`);

// Run a tool: the hook sees it.
const r = await Tool.invoke("calculator", {expression: "6 * 7"});
console.log(`calculator says ${r.result}`);
if (r.result !== 42) throw new Error(`expected 42, got ${r.result}`);
if (seen.length !== 1 || seen[0] !== "calculator") throw new Error("the hook saw the call");

// Hook.list() lists every hook; filter by point name, or by an object.
const atPoint = await Hook.list("BeforeToolExecution");
const mine = await Hook.list({language: "javascript", tag: "demo"});
console.log(`hooks at before_tool_execution: ${atPoint.length}, tagged demo: ${mine.length}`);
if (mine.length !== 1 || mine[0].name !== "basics.watch_tools") throw new Error("listing");
if (mine[0].hook_point !== "before_tool_execution") throw new Error("point name");

// Unregister (handle.unregister() does the same). A second call resolves to false.
if ((await Hook.unregister(handle)) !== true) throw new Error("unregister");
if ((await handle.unregister()) !== false) throw new Error("already gone");
if ((await Hook.list({tag: "demo"})).length !== 0) throw new Error("still listed");

// The hook is gone: another tool call is not seen.
await Tool.invoke("text_manipulator", {operation: "uppercase", text: "quiet"});
if (seen.length !== 1) throw new Error("the unregistered hook must not run");
console.log(`after unregister the hook saw ${seen.length} call(s) in total`);

return {registered: mine[0].name, calls_seen: seen.length, result: r.result};
