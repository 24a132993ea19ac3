-- Written the way the seed's (rs-llmspell v0.4.0) scripts use the API: PascalCase points,
-- string priorities, {type=...} results, Event.publish/subscribe/receive, Agent.create with
-- a "provider/model", agent:execute({text=...}), Workflow.sequential with a custom step,
-- wf:execute(), State.get/set, Tool.invoke. It must run unchanged.
local handles = {}
handles.before = Hook.register("BeforeToolExecution", function(context)
  if context.component_id.name == "count" and context.data.params.n == 13 then
    return {type = "cancel", reason = "unlucky number"}
  end
  return "continue"
end, "high")
handles.after = Hook.register("AfterToolExecution", function(context) return "continue" end,
                              "low")

local sub = Event.subscribe("user.*")
local published = Event.publish("user.login", {user_id = "user123", login_time = os.time()})
assert(published, "publish returns something truthy")
local event = Event.receive(sub, 1000)
assert(event and event.event_type == "user.login")
assert(event.metadata.source_language == "lua")
local stats = Event.get_stats()
assert(stats.event_bus_stats ~= nil and stats.bridge_stats ~= nil)
Event.unsubscribe(sub)

local agent = Agent.create({name = "seed_agent", model = "openai/gpt-4o-mini",
                            system_prompt = "You are helpful.", temperature = 0.7,
                            max_tokens = 100})
local answer = agent:execute({text = "hello"})
assert(answer.success and answer.text == "hi from the configured provider")

local workflow = Workflow.sequential({
  name = "seed_workflow", description = "as the seed wrote them",
  steps = {
    {name = "count_it", type = "tool", tool = "count", input = {n = 4}},
    {name = "custom", type = "custom", execute = function(ctx)
      return {success = true, output = "custom done"}
    end},
  },
})
local result = workflow:execute()
assert(result.success and result.output == "custom done")

State.set("seed_key", {value = 1})
assert(State.get("seed_key").value == 1)

local ok, err = pcall(Tool.invoke, "count", {n = 13})
assert(not ok and string.find(err, "unlucky number", 1, true))
assert(Tool.invoke("count", {n = 2}) == 4)

for _, handle in pairs(handles) do Hook.unregister(handle) end
assert(#Hook.list() == 0)
return "ok"
