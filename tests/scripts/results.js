// Every hook result type returned from JavaScript has its effect on a real tool call.
// The test registers the tools: count(n) records n and returns n * 2, backup(n) returns
// "backup <n>", flaky() fails on its first call and returns "recovered" afterwards.
const out = {};

async function withHook(point, fn, body) {
  const handle = await Hook.register(point, fn, "high");
  try {
    return [true, await body()];
  } catch (e) {
    return [false, e.name + ": " + e.message];
  } finally {
    await handle.unregister();
  }
}
const count = (n) => () => Tool.invoke("count", {n});

out.modified = (await withHook("BeforeToolExecution", (ctx) => {
  const data = ctx.data;
  data.params.n += 100;
  return {type: "modified", data};
}, count(1)))[1];

let [ok, err] = await withHook("BeforeToolExecution",
  () => ({type: "cancel", reason: "not today"}), count(2));
out.cancel = {ok, error: err};

[ok, err] = await withHook("BeforeToolExecution", () => "blocked by policy", count(2));
out.cancel_string = {ok, error: err};

out.redirect = (await withHook("BeforeToolExecution", (ctx) => {
  if (ctx.component_id.name === "count") return {type: "redirect", target: "backup"};
}, count(3)))[1];

out.replace = (await withHook("BeforeToolExecution",
  () => ({type: "replace", value: {from_hook: true}}), count(4)))[1];

let tries = 0;
const retried = await withHook("BeforeToolExecution", () => {
  tries += 1;
  if (tries === 1) return {type: "retry", delay_ms: 1, max_attempts: 3};
}, count(5));
out.retry = {value: retried[1], tries};

out.retry_on_error = (await withHook("ToolError",
  () => ({type: "retry", delay_ms: 1, max_attempts: 3}),
  () => Tool.invoke("flaky", {})))[1];

out.skipped = (await withHook("BeforeToolExecution", () => "skip", count(6)))[1];
out.skipped_table = (await withHook("BeforeToolExecution",
  () => ({type: "skipped", reason: "nothing to do"}), count(6)))[1];

out.fork = (await withHook("BeforeToolExecution", (ctx) => {
  if (ctx.data.params.n === 7) {
    return {type: "fork", operations: [{type: "tool", target: "count", parameters: {n: 70}}]};
  }
}, count(7)))[1];

out.cache = (await withHook("BeforeToolExecution",
  () => ({type: "cache", key: "eight", ttl: 60}),
  async () => [await Tool.invoke("count", {n: 8}), await Tool.invoke("count", {n: 8})]))[1];

out.modified_after = (await withHook("AfterToolExecution", (ctx) => {
  const data = ctx.data;
  data.result = "changed after";
  return {type: "modified", data};
}, count(9)))[1];

return out;
