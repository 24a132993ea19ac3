// 07 Tool integration: hooks around Tool.invoke of several tools.
//
// BeforeToolExecution sees {tool, params}; AfterToolExecution also sees the result.
// Here: an audit log of every call with its duration, and a security hook that refuses
// parameters it does not like (a cancel), so the tool never runs.

const audit = [];
const started = {};

await Hook.register("BeforeToolExecution", (ctx) => {
  started[ctx.correlation_id] = Date.now();
}, {name: "audit.before", priority: "low"});

await Hook.register("AfterToolExecution", (ctx) => {
  const ms = Date.now() - (started[ctx.correlation_id] ?? Date.now());
  audit.push({tool: ctx.data.tool, ms});
  console.log(`[audit] ${ctx.data.tool.padEnd(17)} ${ms} ms -> ${JSON.stringify(ctx.data.result)}`);
}, {name: "audit.after"});

// The security hook runs first ("highest") and cancels by returning the reason as a string.
const blocked = [];
await Hook.register("BeforeToolExecution", (ctx) => {
  const params = ctx.data.params;
  if (ctx.component_id.name === "base64_encoder" && params.operation === "decode") {
    blocked.push(ctx.component_id.name);
    return "security policy: decoding is disabled";
  }
}, {name: "security.no_decode", priority: "highest"});

// A few tools from the library.
const sum = await Tool.invoke("calculator", {expression: "(2 + 3) * 4"});
const id = await Tool.invoke("uuid_generator", {version: 4});
const text = await Tool.invoke("text_manipulator", {operation: "snake_case", text: "Hook Demo Run"});
const encoded = await Tool.invoke("base64_encoder", {operation: "encode", input: "llmspell"});
const hash = await Tool.invoke("hash_calculator", {input: "llmspell", algorithm: "md5"});
if (sum.result !== 20) throw new Error(`sum ${sum.result}`);
if (text.result !== "hook_demo_run") throw new Error(`snake_case ${text.result}`);
if (encoded.result !== "bGxtc3BlbGw=") throw new Error(`base64 ${encoded.result}`);
if (hash.digest.length !== 32) throw new Error("md5 digest");
if (id.uuids.length !== 1 || id.uuids[0].length !== 36) throw new Error("uuid");

// The refused call: Tool.invoke rejects, the tool never ran (no audit entry).
let refused = null;
try {
  await Tool.invoke("base64_encoder", {operation: "decode", input: encoded.result});
} catch (err) {
  refused = err.message;
}
console.log(`decode refused: ${refused}`);
if (!refused || !refused.includes("decoding is disabled")) throw new Error("the hook refused");
if (blocked.length !== 1 || audit.length !== 5) throw new Error("5 calls audited, 1 blocked");

// Tool.list() describes every registered tool (name, description, parameters schema).
const names = new Set((await Tool.list()).map((spec) => spec.name));
if (!names.has("calculator") || !names.has("json_processor")) throw new Error("tool list");

return {audited: audit.length, blocked: blocked[0], snake: text.result};
