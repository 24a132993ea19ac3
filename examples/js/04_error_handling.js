// 04 Error handling: what happens when a hook fails, and how a script sees a cancel.
//
// * A hook that throws does not break the call: hooks are fail-open by default, so the
//   tool still runs. The failure is logged and recorded in the hook dispatch event
//   ("hook.<point>", kinds[i] === "error", details[i] = the message).
// * A hook that cancels makes Tool.invoke reject with the reason: catch it with
//   try/catch.

// Watch the hook dispatch events for BeforeToolExecution (no callback: we receive them).
const inbox = await Event.subscribe("hook.before_tool_execution");

const broken = await Hook.register("BeforeToolExecution", (ctx) => {
  throw new Error("this hook has a bug");
}, {name: "errors.buggy"});

const r = await Tool.invoke("calculator", {expression: "1 + 1"});
console.log(`the tool still ran: 1 + 1 = ${r.result}`);
if (r.result !== 2) throw new Error("the tool ran");

// Find the failure in the dispatch event.
const event = await Event.receive(inbox, 200);
if (!event) throw new Error("a hook dispatch event was published");
const i = event.data.hooks.indexOf("errors.buggy");
const failure = {kind: event.data.kinds[i], detail: event.data.details[i]};
console.log(`recorded: ${failure.kind}: ${failure.detail}`);
if (failure.kind !== "error" || !failure.detail.includes("this hook has a bug")) {
  throw new Error("the failure is recorded");
}
await broken.unregister();

// A cancelling hook: return a string (the reason) or {type: "cancel", reason: ...}.
const guard = await Hook.register("BeforeToolExecution", (ctx) => {
  if (ctx.component_id.name === "calculator" && /\/\s*0/.test(ctx.data.params.expression)) {
    return {type: "cancel", reason: "division by zero is not allowed"};
  }
}, "highest");

let cancelled = null;
try {
  await Tool.invoke("calculator", {expression: "5 / 0"});
} catch (err) {
  cancelled = err;
}
console.log(`caught: ${cancelled}`);
if (!cancelled || !String(cancelled.message).includes("division by zero is not allowed")) {
  throw new Error("the cancel reason reaches the script");
}

// A tool's own error (bad parameters) is caught the same way.
let toolError = null;
try {
  await Tool.invoke("calculator", {expression: "2 +"});
} catch (err) {
  toolError = err;
}
console.log(`bad expression: ${toolError && toolError.message}`);
if (!toolError) throw new Error("a bad expression fails");

// Other calls still work.
if ((await Tool.invoke("calculator", {expression: "5 / 2"})).result !== 2.5) {
  throw new Error("other calls pass");
}
await guard.unregister();
await Event.unsubscribe(inbox);

return {hook_failure: failure.kind, cancelled: true, tool_error: true};
