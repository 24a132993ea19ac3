// 10 Agents: an agent with a scripted model that calls a tool.
//
// model: "scripted/<name>" plays back `replies` in order (offline, deterministic).
// A reply is a final answer (a string) or a request to call tools:
//   {tool_calls: [{name: "calculator", arguments: {expression: "..."}}]}
// The agent runs the tool (through the same hooks as Tool.invoke), gives the result back
// to the model, and the model's next reply is the answer.

// Watch what the agent does.
const toolCalls = [];
await Hook.register("BeforeToolExecution", (ctx) => {
  toolCalls.push(`${ctx.data.tool} ${JSON.stringify(ctx.data.params)}`);
});
let agentRuns = 0;
await Hook.register("BeforeAgentExecution", (ctx) => { agentRuns += 1; });

const agent = await Agent.create({
  name: "math_helper",
  model: "scripted/demo",
  system_prompt: "You answer arithmetic questions using the calculator tool.",
  tools: ["calculator"],
  replies: [
    {tool_calls: [{name: "calculator", arguments: {expression: "17 * 23"}}]},
    "17 times 23 is 391.",
    "You are welcome!",
  ],
});
console.log(`created agent ${agent.name} on model ${agent.model}`);

const answer = await agent.execute({text: "What is 17 times 23?"});
console.log(`agent: ${answer.text}`);
console.log(`tool calls seen by the hook: ${toolCalls.join("; ")}`);
if (!answer.success || answer.text !== "17 times 23 is 391.") throw new Error(answer.text);
if (toolCalls.length !== 1 || !toolCalls[0].includes("17 * 23")) throw new Error("tool call");

// The response also lists the tool calls with their results, the turns and token usage
// (a scripted model fabricates usage by a fixed rule).
const call = answer.tool_calls[0];
console.log(`${call.tool}(${call.arguments.expression}) returned ${call.result.result} ` +
            `in ${answer.turns} turns, ${answer.usage.total} tokens`);
if (call.result.result !== 391 || answer.turns !== 2) throw new Error("tool result");

// The next reply in the script answers the next request.
const thanks = await agent.execute({text: "Thanks!"});
console.log(`agent: ${thanks.text}`);
if (thanks.text !== "You are welcome!") throw new Error(thanks.text);
if (agentRuns !== 2) throw new Error(`agent hook ran ${agentRuns} times`);

// Agents are registered by name; Agent.get returns a handle to an existing one.
if ((await Agent.list()).length < 1) throw new Error("agent list");
if (Agent.get("math_helper").name !== "math_helper") throw new Error("Agent.get");

// A second agent without tools: a plain scripted reply.
const echo = await Agent.create({name: "greeter", model: "scripted/echo", replies: ["Hello!"]});
// a plain string works as the request too
if ((await echo.execute("hi")).text !== "Hello!") throw new Error("greeter");

return {answer: answer.text, tool_calls: toolCalls.length, agents: (await Agent.list()).length};
