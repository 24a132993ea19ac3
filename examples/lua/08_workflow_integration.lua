-- 08 Workflow integration: workflows built from tables, with hooks on workflow points.
--
-- Steps: {name, type = "tool"|"agent"|"custom"|"workflow", tool = ..., input = {...}}
-- (type is inferred from tool/agent/execute/workflow). Inputs may refer to earlier
-- outputs: "{{step:NAME:output}}" or "{{step:NAME:output.key}}"; loops add
-- "{{loop:current_item}}". wf:execute() returns {success, status, output, outputs, ...}.

-- Hooks on workflow points: count the stages each workflow ran.
local stages = {}
Hook.register("BeforeWorkflowStage", function(ctx)
  local wf = ctx.data.workflow
  stages[wf] = (stages[wf] or 0) + 1
end)
local completed = {}
Hook.register("AfterWorkflowComplete", function(ctx)
  completed[#completed + 1] = ctx.data.workflow .. ":" .. ctx.data.status
end)

-- 1) Sequential: calculate, then format the number into text.
local seq = Workflow.sequential({name = "report", steps = {
  {name = "area", tool = "calculator", input = {expression = "3 * 4"}},
  {name = "label", tool = "text_manipulator",
   input = {operation = "uppercase", text = "area is {{step:area:output.result}}"}},
}})
local r1 = seq:execute()
print("sequential: " .. r1.output.result)
assert(r1.success and r1.output.result == "AREA IS 12")

-- 2) Conditional: the first branch whose condition holds runs.
-- A condition is a table ({type = "shared_data_equals", key, value}, ...) or a function.
local cond = Workflow.conditional({name = "triage", branches = {
  {name = "big", condition = function(ctx) return ctx.input.size > 100 end,
   steps = {{name = "say", execute = function(ctx) return "big order" end}}},
  {name = "small", condition = {type = "always"},
   steps = {{name = "say", execute = function(ctx) return "small order" end}}},
}})
local big, small = cond:execute({size = 500}), cond:execute({size = 5})
print("conditional: " .. big.output .. " / " .. small.output)
assert(big.output == "big order" and small.output == "small order")

-- 3) Loop over a collection: one tool call per item.
local loop = Workflow.loop({name = "shout_all",
  iterator = {collection = {"red", "green", "blue"}},
  body = {{name = "up", tool = "text_manipulator",
           input = {operation = "uppercase", text = "{{loop:current_item}}"}}},
})
local r3 = loop:execute()
local words = {}
for i, out in ipairs(r3.output) do words[i] = out.up.result end
print("loop: " .. table.concat(words, " "))
assert(#words == 3 and words[3] == "BLUE")

-- 4) Parallel: independent branches; output holds every step's output by name.
local par = Workflow.parallel({name = "fanout", branches = {
  {name = "a", steps = {{name = "hash", tool = "hash_calculator", input = {input = "x"}}}},
  {name = "b", steps = {{name = "id", tool = "uuid_generator", input = {}}}},
  {name = "c", steps = {{name = "sum", tool = "calculator", input = {expression = "1+2+3"}}}},
}})
local r4 = par:execute()
print("parallel: sum=" .. r4.output.sum.result .. ", hash=" .. r4.output.hash.digest:sub(1, 12))
assert(r4.success and r4.output.sum.result == 6 and #r4.output.id.uuids == 1)

print("stages per workflow: " .. JSON.encode(stages))
print("completed: " .. table.concat(completed, ", "))
assert(stages.report == 2 and stages.shout_all == 3)
assert(#completed == 5, "5 runs: report, triage twice, shout_all, fanout")

return {sequential = r1.output.result, conditional = {big.output, small.output},
        loop = words, parallel_sum = r4.output.sum.result}
