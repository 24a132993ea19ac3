// 03 Data modification: hooks that change what a tool call does or returns.
//
// Results a hook can return (objects):
//   {type: "modified", data: newCtxData}  -> the call goes on with the new data
//   {type: "replace",  value: v}          -> the call is answered with v (tool not run)
// At BeforeToolExecution ctx.data is {tool, params, ...}; at AfterToolExecution it also
// holds the tool's result.

// 1) Rewrite parameters: every text sent to text_manipulator gets trimmed first.
const trim = await Hook.register("BeforeToolExecution", (ctx) => {
  if (ctx.component_id.name !== "text_manipulator") return;
  const data = ctx.data;
  const before = data.params.text;
  data.params.text = before.trim();
  console.log(`[modify] text ${JSON.stringify(before)} -> ${JSON.stringify(data.params.text)}`);
  return {type: "modified", data};
}, "high");

const up = await Tool.invoke("text_manipulator", {operation: "uppercase", text: "   hello hooks  "});
console.log(`uppercase result: ${up.result}`);
if (up.result !== "HELLO HOOKS") throw new Error("the hook trimmed the text before the tool ran");
await trim.unregister();

// 2) Modify the result after the tool ran: round the calculator's answer.
const round = await Hook.register("AfterToolExecution", (ctx) => {
  if (ctx.component_id.name !== "calculator") return;
  const data = ctx.data;
  data.result.result = Math.round(data.result.result * 100) / 100;
  data.result.rounded = true;
  return {type: "modified", data};
});
const third = await Tool.invoke("calculator", {expression: "10 / 3"});
console.log(`10 / 3 rounded by the hook: ${third.result}`);
if (third.result !== 3.33 || third.rounded !== true) throw new Error(`got ${third.result}`);
await round.unregister();

// 3) Replace: answer hash requests for a known input without running the tool.
const known = {secret: {digest: "(served from the hook's table)", algorithm: "none"}};
const cache = await Hook.register("BeforeToolExecution", (ctx) => {
  if (ctx.component_id.name === "hash_calculator" && known[ctx.data.params.input]) {
    return {type: "replace", value: known[ctx.data.params.input]};
  }
});
const served = await Tool.invoke("hash_calculator", {input: "secret"});
const real = await Tool.invoke("hash_calculator", {input: "public"});
console.log(`replaced: ${served.digest}`);
console.log(`real sha256: ${real.digest}`);
if (served.algorithm !== "none") throw new Error("the hook answered");
if (real.algorithm !== "sha256" || real.digest.length !== 64) throw new Error("the tool ran");
await cache.unregister();

return {trimmed: up.result, rounded: third.result, replaced: served.digest};
