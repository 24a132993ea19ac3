// 08 Workflow integration: workflows built from objects, with hooks on workflow points.
//
// Steps: {name, type: "tool"|"agent"|"custom"|"workflow", tool: ..., input: {...}}
// (type is inferred from tool/agent/execute/workflow). Inputs may refer to earlier
// outputs: "{{step:NAME:output}}" or "{{step:NAME:output.key}}"; loops add
// "{{loop:current_item}}". wf.execute() resolves to {success, status, output, outputs, ...}.

// Hooks on workflow points: count the stages each workflow ran.
const stages = {};
await Hook.register("BeforeWorkflowStage", (ctx) => {
  const wf = ctx.data.workflow;
  stages[wf] = (stages[wf] ?? 0) + 1;
});
const completed = [];
await Hook.register("AfterWorkflowComplete", (ctx) => {
  completed.push(`${ctx.data.workflow}:${ctx.data.status}`);
});

// 1) Sequential: calculate, then format the number into text.
const seq = await Workflow.sequential({name: "report", steps: [
  {name: "area", tool: "calculator", input: {expression: "3 * 4"}},
  {name: "label", tool: "text_manipulator",
   input: {operation: "uppercase", text: "area is {{step:area:output.result}}"}},
]});
const r1 = await seq.execute();
console.log(`sequential: ${r1.output.result}`);
if (!r1.success || r1.output.result !== "AREA IS 12") throw new Error("sequential");

// 2) Conditional: the first branch whose condition holds runs.
// A condition is an object ({type: "shared_data_equals", key, value}, ...) or a function.
const cond = await Workflow.conditional({name: "triage", branches: [
  {name: "big", condition: (ctx) => ctx.input.size > 100,
   steps: [{name: "say", execute: (ctx) => "big order"}]},
  {name: "small", condition: {type: "always"},
   steps: [{name: "say", execute: (ctx) => "small order"}]},
]});
const big = await cond.execute({size: 500});
const small = await cond.execute({size: 5});
console.log(`conditional: ${big.output} / ${small.output}`);
if (big.output !== "big order" || small.output !== "small order") throw new Error("conditional");

// 3) Loop over a collection: one tool call per item.
const loop = await Workflow.loop({name: "shout_all",
  iterator: {collection: ["red", "green", "blue"]},
  body: [{name: "up", tool: "text_manipulator",
          input: {operation: "uppercase", text: "{{loop:current_item}}"}}],
});
const r3 = await loop.execute();
const words = r3.output.map((out) => out.up.result);
console.log(`loop: ${words.join(" ")}`);
if (words.join() !== "RED,GREEN,BLUE") throw new Error(`loop ${words}`);

// 4) Parallel: independent branches; output holds every step's output by name.
const par = await Workflow.parallel({name: "fanout", branches: [
  {name: "a", steps: [{name: "hash", tool: "hash_calculator", input: {input: "x"}}]},
  {name: "b", steps: [{name: "id", tool: "uuid_generator", input: {}}]},
  {name: "c", steps: [{name: "sum", tool: "calculator", input: {expression: "1+2+3"}}]},
]});
const r4 = await par.execute();
console.log(`parallel: sum=${r4.output.sum.result}, hash=${r4.output.hash.digest.slice(0, 12)}`);
if (!r4.success || r4.output.sum.result !== 6 || r4.output.id.uuids.length !== 1) {
  throw new Error("parallel");
}

console.log(`stages per workflow: ${JSON.stringify(stages)}`);
console.log(`completed: ${completed.join(", ")}`);
if (stages.report !== 2 || stages.shout_all !== 3) throw new Error("stage hooks");
if (completed.length !== 5) throw new Error("5 runs: report, triage twice, shout_all, fanout");

return {sequential: r1.output.result, conditional: [big.output, small.output], loop: words,
        parallel_sum: r4.output.sum.result};
