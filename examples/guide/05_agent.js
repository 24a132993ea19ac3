// Guide step 5 (JavaScript): the agent of step 4, scripted in JavaScript.
//
// The same program as 05_agent.lua: a policy hook, a model-call hook redacting e-mail
// addresses, a subscription counting tool events, an agent using a tool. Every host call
// returns a promise in JavaScript (await it). Run it with
//
//   llmspell run examples/guide/05_agent.js

const seenByModel = [];
let toolEvents = 0;

await Hook.register("BeforeToolExecution", (ctx) => {
  const expression = ctx.data.params.expression || "";
  if (expression.length > 30) return {type: "cancel", reason: "policy: expression too long"};
}, {priority: "high", name: "js_policy"});

await Hook.register("BeforeModelCall", (ctx) => {
  const params = ctx.data.params;
  for (const message of params.messages) {
    if (typeof message.content === "string") {
      message.content = message.content.replace(/[\w.+-]+@[\w-]+(\.[\w-]+)+/g, "[email]");
      seenByModel.push(message.content);
    }
  }
  return {type: "modified", data: {params}};
}, {priority: "high", name: "js_redact"});

await Event.subscribe("tool.*.*", () => { toolEvents += 1; });

const agent = await Agent.create({
  name: "support", model: "scripted/demo", tools: ["calculator"],
  system_prompt: "Use the calculator for arithmetic.",
  replies: [
    {tool_calls: [{name: "calculator", arguments: {expression: "3 * 14.5"}}]},
    "Three items at 14.50 cost 43.5.",
  ],
});

const answer = await agent.execute({text: "What do 3 items at 14.50 cost? Mail ann@example.com"});
console.log(`agent: ${answer.text}`);
if (answer.text !== "Three items at 14.50 cost 43.5.") throw new Error(answer.text);
if (toolEvents < 2) throw new Error(`tool events seen: ${toolEvents}`);
if (seenByModel.length === 0) throw new Error("the redaction hook did not run");
if (seenByModel.some((text) => text.includes("ann@example.com"))) {
  throw new Error("the model saw an address");
}

try {
  await Tool.invoke("calculator", {expression: "1+".repeat(20) + "1"});
  throw new Error("the policy should have refused");
} catch (err) {
  if (!String(err.message ?? err).includes("too long")) throw err;
  console.log(`refused: ${err.message ?? err}`);
}
return {answer: answer.text, tool_events: toolEvents};
