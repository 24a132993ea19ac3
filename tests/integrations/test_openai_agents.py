"""The OpenAI Agents SDK adapter with the real SDK and an offline Model: hooks (Python and
Lua) at the agent, model and tool seams, streaming, handoffs, events and the run."""

from __future__ import annotations

import json
import math
from typing import Any

import agents
import pytest
from agents import Agent, ToolInputGuardrailTripwireTriggered, function_tool

from llmspell.errors import (
    ModelCallCancelledError,
    OperationCancelledError,
    UnsupportedFrameworkVersionError,
    UnsupportedHookResultError,
)
from llmspell.hooks import HookPoint
from llmspell.hooks.result import Cancel, Modified, Replace, Retry
from llmspell.integrations import _bridge, openai_agents
from llmspell.integrations.openai_agents import (
    LlmspellTracingProcessor,
    OpenAIAgentsAdapter,
    items_to_messages,
    messages_to_items,
)
from llmspell.runtime.system import System
from llmspell.scripting import ScriptHost

from .conftest_openai_agents import (
    HttpError,
    ScriptModel,
    call,
    no_trace_export,
    outputs,
    say,
    tool_then_answer,
    weather_agent,
)
from .conftest_openai_agents import stored_events as events

__all__ = ["no_trace_export"]  # fixtures




def types(system: System, pattern: str = "**") -> list[str]:
    return [e.event_type for e in events(system, pattern)]


async def test_a_run_publishes_agent_model_and_tool_events_under_one_correlation(
        system: System) -> None:
    model = ScriptModel(tool_then_answer())
    agent, seen = weather_agent(model)
    adapter = OpenAIAgentsAdapter(system)
    run = await adapter.run(agent, "weather in Paris?")
    assert run.final_output == "answer: sunny in Paris"
    assert run.result is not None and run.result.final_output == run.final_output
    assert seen == [("weather", "Paris")]
    kinds = [t for t in types(system) if not t.startswith(("run.", "hook.", "system."))]
    assert kinds == ["agent.weather.started", "model.openai.started",
                     "model.openai.completed", "tool.weather.started",
                     "tool.weather.completed", "model.openai.started",
                     "model.openai.completed", "agent.weather.completed"]
    stored = events(system, "model.openai.completed")
    first = stored[0].data
    assert first["usage"]["input_tokens"] == 100 and first["usage"]["output_tokens"] == 20
    assert first["model"] == "gpt-4o-mini" and first["caller"] == {"type": "agent",
                                                                    "name": "weather"}
    assert first["cost_usd"] is not None and first["cost_usd"] > 0
    tool = events(system, "tool.weather.completed")[0].data
    assert tool["result"] == "sunny in Paris" and tool["agent"] == "weather"
    correlations = {e.metadata.correlation_id for e in events(system)
                    if not e.event_type.startswith(("run.", "system."))}
    assert correlations == {run.correlation_id}
    if getattr(system, "runs", None) is not None:  # the runs API: one run, its events
        assert run.run_id is not None
        assert {e.metadata.run_id for e in events(system, "tool.**")} == {run.run_id}


def test_an_unsupported_sdk_version_is_refused(system: System,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_bridge, "installed_version", lambda name: "0.31.2")
    with pytest.raises(UnsupportedFrameworkVersionError) as caught:
        OpenAIAgentsAdapter(system)
    assert caught.value.supported == openai_agents.SUPPORTED
    assert ">=0.24,<0.25" in str(caught.value)


def test_bad_options_are_typed_errors(system: System) -> None:
    with pytest.raises(ValueError, match="tool_cancel"):
        OpenAIAgentsAdapter(system, tool_cancel="ignore")


# -- tools ------------------------------------------------------------------------------------

async def test_a_python_hook_blocks_a_tool_call_and_the_model_is_told(system: System) -> None:
    system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION,
                             lambda ctx: Cancel("no weather today"), name="guard")
    model = ScriptModel(tool_then_answer())
    agent, seen = weather_agent(model)
    run = await OpenAIAgentsAdapter(system).run(agent, "weather?")
    assert seen == []  # the tool never ran
    assert "no weather today" in run.final_output and "guard" in run.final_output
    assert run.result is not None
    assert run.result.tool_input_guardrail_results[0].output.behavior["type"] == (
        "reject_content")
    failed = events(system, "tool.weather.failed")[0].data
    assert failed["error_type"] == "OperationCancelledError"


async def test_a_blocked_tool_call_can_end_the_run_with_the_sdk_tripwire(
        system: System) -> None:
    system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION,
                             lambda ctx: Cancel("stop"), name="guard")
    agent, seen = weather_agent(ScriptModel(tool_then_answer()))
    with pytest.raises(ToolInputGuardrailTripwireTriggered):
        await OpenAIAgentsAdapter(system, tool_cancel="raise").run(agent, "weather?")
    assert seen == []
    assert "agent.weather.failed" in types(system)


LUA_GUARD = """
Hook.register("BeforeToolExecution", function(ctx)
  if ctx.data.tool == "weather" and ctx.data.params.city == "Paris" then
    return {type = "cancel", reason = "script says no to " .. ctx.data.params.city}
  end
end, "high")
"""
JS_GUARD = """
Hook.register("BeforeToolExecution", function(ctx) {
  if (ctx.data.tool === "weather" && ctx.data.params.city === "Paris") {
    return {type: "cancel", reason: "script says no to " + ctx.data.params.city};
  }
}, "high");
"""


@pytest.mark.parametrize("language", ["lua", "js"])
async def test_a_script_hook_blocks_a_tool_call(system: System, language: str) -> None:
    host = ScriptHost(system, time_budget=5)
    try:
        if language == "lua":
            await host.run_lua_async(LUA_GUARD)
        else:
            await host.run_js_async(JS_GUARD)
        agent, seen = weather_agent(ScriptModel(tool_then_answer()))
        run = await OpenAIAgentsAdapter(system).run(agent, "weather?")
    finally:
        host.close()
    assert seen == []
    assert "script says no to Paris" in run.final_output


async def test_a_cache_result_serves_a_repeated_tool_call(system: System) -> None:
    from llmspell.hooks.result import Cache

    system.registry.register(
        HookPoint.BEFORE_TOOL_EXECUTION,
        lambda ctx: Cache(f"city:{ctx.data['params']['city']}", ttl=60), name="cache")
    agent, seen = weather_agent(ScriptModel(tool_then_answer()))
    adapter = OpenAIAgentsAdapter(system)
    first = await adapter.run(agent, "weather?")
    second = await adapter.run(agent, "weather again?")
    assert seen == [("weather", "Paris")]
    assert first.final_output == second.final_output == "answer: sunny in Paris"
    cached = [e.data["cached"] for e in events(system, "tool.weather.completed")]
    assert cached == [False, True]


async def test_a_fork_runs_another_tool_beside_the_call(system: System) -> None:
    from llmspell.hooks.result import Fork, ForkOperation

    def fork(ctx: Any) -> Any:
        if ctx.data["tool"] != "weather":
            return None
        return Fork((ForkOperation(type="tool", target="forecast",
                                   parameters={"city": "Paris", "days": 1}),))

    system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, fork, name="fork")
    agent, seen = weather_agent(ScriptModel(tool_then_answer()))
    run = await OpenAIAgentsAdapter(system).run(agent, "weather?")
    assert sorted(seen) == [("forecast", "Paris", 1), ("weather", "Paris")]
    assert run.final_output == "answer: sunny in Paris"
    forks = events(system, "tool.weather.completed")[0].data["forks"]
    assert forks == [{"type": "tool", "target": "forecast",
                      "result": "1 days of rain in Paris"}]


async def test_a_hook_rewrites_tool_arguments(system: System) -> None:
    def to_rome(ctx: Any) -> Modified:
        return Modified({**ctx.data, "params": {**ctx.data["params"], "city": "Rome"}})

    system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, to_rome, name="rome")
    agent, seen = weather_agent(ScriptModel(tool_then_answer()))
    run = await OpenAIAgentsAdapter(system).run(agent, "weather?")
    assert seen == [("weather", "Rome")]
    assert run.final_output == "answer: sunny in Rome"
    assert events(system, "tool.weather.started")[0].data["params"] == {"city": "Rome"}


async def test_a_hook_replaces_a_tool_result_after_it_ran(system: System) -> None:
    system.registry.register(HookPoint.AFTER_TOOL_EXECUTION,
                             lambda ctx: Replace(ctx.data["result"].upper()), name="up")
    agent, seen = weather_agent(ScriptModel(tool_then_answer()))
    run = await OpenAIAgentsAdapter(system).run(agent, "weather?")
    assert seen == [("weather", "Paris")]
    assert run.final_output == "answer: SUNNY IN PARIS"


async def test_a_before_hook_answers_for_the_tool(system: System) -> None:
    system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION,
                             lambda ctx: Replace("from the hook"), name="stub")
    agent, seen = weather_agent(ScriptModel(tool_then_answer()))
    run = await OpenAIAgentsAdapter(system).run(agent, "weather?")
    assert seen == []
    assert run.final_output == "answer: from the hook"


async def test_an_after_cancel_discards_the_output_through_the_output_guardrail(
        system: System) -> None:
    system.registry.register(HookPoint.AFTER_TOOL_EXECUTION,
                             lambda ctx: Cancel("leaks data"), name="dlp")
    agent, seen = weather_agent(ScriptModel(tool_then_answer()))
    run = await OpenAIAgentsAdapter(system).run(agent, "weather?")
    assert seen == [("weather", "Paris")]
    assert "leaks data" in run.final_output and "sunny" not in run.final_output
    assert run.result is not None
    assert run.result.tool_output_guardrail_results[0].output.behavior["type"] == (
        "reject_content")


async def test_a_tool_redirect_runs_another_tool_of_the_agent(system: System) -> None:
    from llmspell.hooks.result import Redirect

    seen: list[str] = []

    @function_tool
    def weather(city: str) -> str:
        """The weather."""
        seen.append("weather")
        return "primary"

    @function_tool
    def backup_weather(city: str) -> str:
        """The weather from the backup station."""
        seen.append("backup")
        return f"backup says sunny in {city}"

    system.registry.register(
        HookPoint.BEFORE_TOOL_EXECUTION,
        lambda ctx: Redirect("backup_weather") if ctx.data["tool"] == "weather" else None,
        name="redirect")
    agent = Agent(name="weather", model=ScriptModel(tool_then_answer()),
                  tools=[weather, backup_weather])
    run = await OpenAIAgentsAdapter(system).run(agent, "weather?")
    assert seen == ["backup"]
    assert run.final_output == "answer: backup says sunny in Paris"


def flaky_agent(model: ScriptModel, failures: int) -> tuple[Agent[Any], list[int]]:
    tries: list[int] = []

    @function_tool
    def weather(city: str) -> str:
        """The weather."""
        tries.append(1)
        if len(tries) <= failures:
            raise RuntimeError("station offline")
        return f"sunny in {city}"

    return Agent(name="weather", model=model, tools=[weather]), tries


async def test_a_tool_error_caught_by_the_sdk_is_recovered_by_a_hook(system: System) -> None:
    system.registry.register(HookPoint.TOOL_ERROR,
                             lambda ctx: Replace(f"fallback ({ctx.data['error_type']})"),
                             name="fallback")
    agent, tries = flaky_agent(ScriptModel(tool_then_answer()), failures=5)
    run = await OpenAIAgentsAdapter(system).run(agent, "weather?")
    assert len(tries) == 1
    assert run.final_output == "answer: fallback (RuntimeError)"


async def test_a_failing_tool_is_retried_by_a_hook(system: System) -> None:
    system.registry.register(HookPoint.TOOL_ERROR, lambda ctx: Retry(0, 3), name="again")
    agent, tries = flaky_agent(ScriptModel(tool_then_answer()), failures=2)
    run = await OpenAIAgentsAdapter(system).run(agent, "weather?")
    assert len(tries) == 3
    assert run.final_output == "answer: sunny in Paris"
    assert events(system, "tool.weather.completed")[0].data["attempts"] == 3


async def test_without_a_hook_a_tool_error_keeps_the_sdk_message(system: System) -> None:
    agent, tries = flaky_agent(ScriptModel(tool_then_answer()), failures=5)
    run = await OpenAIAgentsAdapter(system).run(agent, "weather?")
    assert len(tries) == 1 and "error occurred while running the tool" in run.final_output
    assert events(system, "tool.weather.failed")[0].data["error_type"] == "RuntimeError"


async def test_an_unsupported_result_at_tool_error_is_refused(system: System) -> None:
    system.registry.register(HookPoint.TOOL_ERROR, lambda ctx: Modified(ctx.data),
                             name="odd")
    agent, _ = flaky_agent(ScriptModel(tool_then_answer()), failures=5)
    with pytest.raises(UnsupportedHookResultError) as caught:
        await OpenAIAgentsAdapter(system).run(agent, "weather?")
    assert caught.value.hook == "odd" and caught.value.result == "modified"
    assert caught.value.framework == "openai-agents"


# -- model calls ----------------------------------------------------------------------------

async def test_a_hook_cancels_a_model_call(system: System) -> None:
    system.registry.register(HookPoint.BEFORE_MODEL_CALL,
                             lambda ctx: Cancel("over budget"), name="budget")
    model = ScriptModel(tool_then_answer())
    agent, _ = weather_agent(model)
    with pytest.raises(ModelCallCancelledError, match="over budget"):
        await OpenAIAgentsAdapter(system).run(agent, "weather?")
    assert model.calls == []
    assert "agent.weather.failed" in types(system)


async def test_a_hook_rewrites_the_model_input(system: System) -> None:
    def redact(ctx: Any) -> Modified:
        params = ctx.data["params"]
        messages = [{**m, "content": m["content"].replace("1234", "[card]")}
                    if m["role"] == "user" else m for m in params["messages"]]
        return Modified({**ctx.data, "params": {**params, "messages": messages}})

    system.registry.register(HookPoint.BEFORE_MODEL_CALL, redact, name="redact")
    model = ScriptModel(tool_then_answer())
    agent, _ = weather_agent(model)
    run = await OpenAIAgentsAdapter(system).run(agent, "my card is 1234")
    assert model.calls[0]["input"][0]["content"] == "my card is [card]"
    assert model.calls[0]["instructions"] == "Answer about weather."
    # the second call keeps the tool call and its output (unchanged items kept as they were)
    second = model.calls[1]["input"]
    assert [i.get("type") for i in second][-2:] == ["function_call", "function_call_output"]
    assert run.final_output == "answer: sunny in Paris"


async def test_an_after_model_cancel_discards_the_answer_and_ends_the_run(
        system: System) -> None:
    system.registry.register(HookPoint.AFTER_MODEL_CALL,
                             lambda ctx: Cancel("unsafe answer")
                             if ctx.data["result"]["message"]["tool_calls"] else None,
                             name="judge")
    agent, seen = weather_agent(ScriptModel(tool_then_answer()))
    with pytest.raises(ModelCallCancelledError, match="unsafe answer"):
        await OpenAIAgentsAdapter(system).run(agent, "weather?")
    assert seen == []


async def test_an_after_model_replace_is_refused(system: System) -> None:
    system.registry.register(HookPoint.AFTER_MODEL_CALL, lambda ctx: Replace("other"),
                             name="swap")
    agent, _ = weather_agent(ScriptModel(tool_then_answer()))
    with pytest.raises(UnsupportedHookResultError) as caught:
        await OpenAIAgentsAdapter(system).run(agent, "weather?")
    assert caught.value.point == HookPoint.AFTER_MODEL_CALL and caught.value.hook == "swap"


async def test_a_model_redirect_is_refused_with_the_documented_error(system: System) -> None:
    from llmspell.hooks.result import Redirect
    system.registry.register(HookPoint.BEFORE_MODEL_CALL,
                             lambda ctx: Redirect("openai/gpt-4o"), name="router")
    agent, _ = weather_agent(ScriptModel(tool_then_answer()))
    with pytest.raises(UnsupportedHookResultError) as caught:
        await OpenAIAgentsAdapter(system).run(agent, "weather?")
    assert caught.value.point == HookPoint.BEFORE_MODEL_CALL and caught.value.hook == "router"


async def test_a_failed_model_call_is_retried_through_the_sdk_retry_policy(
        system: System) -> None:
    system.registry.register(HookPoint.MODEL_CALL_ERROR,
                             lambda ctx: Retry(0, 3) if ctx.data["status"] == 503 else None,
                             name="retry")
    model = ScriptModel(tool_then_answer(), failures=[HttpError(503)])
    agent, _ = weather_agent(model)
    run = await OpenAIAgentsAdapter(system).run(agent, "weather?")
    assert len(model.calls) == 3  # failed, retried, then the tool turn's call
    assert run.final_output == "answer: sunny in Paris"


async def test_the_agents_own_retry_policy_decides_when_no_hook_does(system: System) -> None:
    from agents import ModelSettings, RunConfig
    from agents.retry import ModelRetrySettings
    asked: list[int] = []

    def own(ctx: Any) -> bool:
        asked.append(ctx.attempt)
        return True

    system.registry.register(HookPoint.MODEL_CALL_ERROR, lambda ctx: None, name="looks")
    model = ScriptModel(tool_then_answer(), failures=[HttpError(503)])
    agent, _ = weather_agent(model, model_settings=ModelSettings(
        retry=ModelRetrySettings(max_retries=1, policy=own)))
    adapter = OpenAIAgentsAdapter(system)
    run = await adapter.run(agent, "weather?")
    assert asked == [1] and len(model.calls) == 3  # the agent's policy retried once
    assert run.final_output == "answer: sunny in Paris"
    # a run's own retry settings override the agent's, as in the SDK: its policy decides
    run_asked: list[int] = []

    def run_level(ctx: Any) -> bool:
        run_asked.append(ctx.attempt)
        return False

    model.failures.append(HttpError(503))
    config = RunConfig(model_settings=ModelSettings(retry=ModelRetrySettings(policy=run_level)))
    with pytest.raises(HttpError):
        await adapter.run(agent, "weather?", run_config=config)
    assert run_asked == [1] and asked == [1]
    assert adapter.run_config().model_settings is None  # nothing merged per model call


async def test_an_agent_error_is_recovered_by_a_hook(system: System) -> None:
    system.registry.register(HookPoint.AGENT_ERROR,
                             lambda ctx: Replace("sorry, try later"), name="fallback")
    model = ScriptModel(tool_then_answer(), failures=[HttpError(400)])
    agent, _ = weather_agent(model)
    run = await OpenAIAgentsAdapter(system).run(agent, "weather?")
    assert run.final_output == "sorry, try later" and run.result is None
    failed = events(system, "model.openai.failed")[0].data
    assert failed["error_type"] == "HttpError"


async def test_an_agent_run_is_cancelled_before_it_starts(system: System) -> None:
    system.registry.register(HookPoint.BEFORE_AGENT_EXECUTION,
                             lambda ctx: Cancel("closed"), name="gate")
    model = ScriptModel(tool_then_answer())
    agent, _ = weather_agent(model)
    with pytest.raises(OperationCancelledError, match="closed"):
        await OpenAIAgentsAdapter(system).run(agent, "weather?")
    assert model.calls == []


async def test_the_agent_input_is_rewritten_before_the_run(system: System) -> None:
    system.registry.register(
        HookPoint.BEFORE_AGENT_EXECUTION,
        lambda ctx: Modified({**ctx.data, "params": {"input": "rewritten"}}), name="rw")
    model = ScriptModel(lambda i, items, t: [say(items[-1]["content"])])
    agent, _ = weather_agent(model)
    run = await OpenAIAgentsAdapter(system).run(agent, "original")
    assert run.final_output == "rewritten"


async def test_an_after_agent_hook_rewrites_the_output(system: System) -> None:
    def polite(ctx: Any) -> Modified:
        result = dict(ctx.data["result"])
        result["output"] = result["output"] + " (checked)"
        return Modified({**ctx.data, "result": result})

    system.registry.register(HookPoint.AFTER_AGENT_EXECUTION, polite, name="polite")
    agent, _ = weather_agent(ScriptModel(tool_then_answer()))
    run = await OpenAIAgentsAdapter(system).run(agent, "weather?")
    assert run.final_output == "answer: sunny in Paris (checked)"
    assert run.result is not None and run.result.final_output == "answer: sunny in Paris"


async def test_an_agent_error_falls_back_to_another_governed_agent(system: System) -> None:
    from llmspell.hooks.result import Redirect

    system.registry.register(HookPoint.AGENT_ERROR,
                             lambda ctx: Redirect("backup") if ctx.data["agent"] == "weather"
                             else None, name="fallback")
    adapter = OpenAIAgentsAdapter(system)
    backup = Agent(name="backup", model=ScriptModel(lambda i, items, t: [say("backup")]))
    adapter.govern(backup)
    agent, _ = weather_agent(ScriptModel(tool_then_answer(), failures=[HttpError(400)]))
    run = await adapter.run(agent, "weather?")
    assert run.final_output == "backup" and run.redirected_to == "backup"


# -- streaming, handoffs, tracing ---------------------------------------------------------

async def test_a_streamed_run_is_governed_and_recorded(system: System) -> None:
    system.registry.register(HookPoint.AFTER_TOOL_EXECUTION,
                             lambda ctx: Replace("hooked"), name="up")
    agent, seen = weather_agent(ScriptModel(tool_then_answer()))
    streamed = OpenAIAgentsAdapter(system).run_streamed(agent, "weather?")
    kinds = [event.type async for event in streamed.stream_events()]
    assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
    assert streamed.final_output == "answer: hooked"
    assert streamed.result is not None and streamed.result.final_output == "answer: hooked"
    assert seen == [("weather", "Paris")]
    completed = events(system, "model.openai.completed")
    assert len(completed) == 2 and completed[0].data["usage"]["total_tokens"] == 120
    assert "agent.weather.completed" in types(system)


async def test_a_handoff_to_a_second_agent_is_governed_in_the_same_run(
        system: System) -> None:
    system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION,
                             lambda ctx: Modified({**ctx.data, "params": {"city": "Oslo"}}),
                             name="oslo")

    def specialist_step(i: Any, items: list[dict[str, Any]], tools: list[str]) -> list[Any]:
        done = outputs(items)
        if len(done) < 2:  # the handoff's own output is the first
            return [call("weather", {"city": "Paris"}, "c2")]
        return [say("specialist: " + str(done[-1]["output"]))]

    specialist, seen = weather_agent(ScriptModel(specialist_step))
    triage_model = ScriptModel(lambda i, items, tools: [
        call("transfer_to_weather", {}, "h1")])
    triage = Agent(name="triage", model=triage_model, handoffs=[specialist])
    run = await OpenAIAgentsAdapter(system).run(triage, "weather?")
    assert run.final_output == "specialist: sunny in Oslo"
    assert seen == [("weather", "Oslo")]
    assert run.result is not None and run.result.last_agent.name == "weather"
    kinds = types(system, "agent.**")
    assert kinds == ["agent.triage.started", "agent.triage.handoff", "agent.triage.completed",
                     "agent.weather.started", "agent.weather.completed"]
    handoff = events(system, "agent.triage.handoff")[0].data
    assert handoff == {"from": "triage", "to": "weather"}


async def test_the_tracing_processor_forwards_sdk_spans(system: System) -> None:
    agents.set_trace_processors([LlmspellTracingProcessor.create(system)])
    agent, _ = weather_agent(ScriptModel(tool_then_answer()))
    run = await OpenAIAgentsAdapter(system).run(agent, "weather?")
    spans = events(system, "openai_agents.span.*")
    kinds = {e.event_type.rsplit(".", 1)[1] for e in spans}
    assert {"agent", "function"} <= kinds
    function = next(e for e in spans if e.event_type.endswith(".function"))
    assert function.data["data"]["name"] == "weather"
    assert function.metadata.correlation_id == run.correlation_id
    assert "openai_agents.trace.completed" in types(system)


def test_items_and_messages_round_trip() -> None:
    items = [{"role": "user", "content": "hi"},
             {"type": "reasoning", "id": "r1", "summary": []},
             {"type": "function_call", "call_id": "c1", "name": "weather",
              "arguments": '{"city": "Paris"}'},
             {"type": "function_call_output", "call_id": "c1", "output": "sunny"}]
    messages, sources = items_to_messages("be brief", items)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool"]
    assert messages[2]["tool_calls"] == [{"id": "c1", "name": "weather",
                                          "arguments": {"city": "Paris"}}]
    changed = [dict(m) for m in messages]
    changed[1]["content"] = "hello"
    instructions, back = messages_to_items(changed, messages, sources, items)
    assert instructions == "be brief"
    assert back[0] == {"role": "user", "content": "hello"}
    assert back[1:] == items[1:]  # the reasoning item and the untouched call kept as is
    with pytest.raises(ValueError, match="role"):
        messages_to_items([{"role": "robot", "content": "x"}], messages, sources, items)


def test_model_items_read_as_their_json_form() -> None:
    """The SDK's pydantic items (model output, fed back as input) give the messages their
    JSON dumps give; their fields are read in place, not dumped."""
    from openai.types.responses import (
        ResponseFunctionToolCall,
        ResponseOutputMessage,
        ResponseOutputText,
        ResponseReasoningItem,
    )
    from openai.types.responses.response_input_param import FunctionCallOutput

    models: list[Any] = [
        ResponseOutputMessage(id="m1", type="message", role="assistant", status="completed",
                              content=[ResponseOutputText(text="let me look", annotations=[],
                                                          type="output_text")]),
        ResponseReasoningItem(id="r1", type="reasoning", summary=[]),
        ResponseFunctionToolCall(id="f1", call_id="c1", type="function_call", name="weather",
                                 arguments='{"city": "Paris", "days": NaN}'),
        FunctionCallOutput(type="function_call_output", call_id="c1", output="sunny"),
        ResponseFunctionToolCall(id="f2", call_id="c2", type="function_call", name="bad",
                                 arguments="not json"),
    ]
    dumped = [m.model_dump(mode="json", exclude_none=True) if hasattr(m, "model_dump")
              else dict(m) for m in models]
    as_models = items_to_messages(None, models)
    as_dicts = items_to_messages(None, dumped)
    assert repr(as_models) == repr(as_dicts)  # repr: NaN != NaN
    messages, sources = as_models
    assert [m["role"] for m in messages] == ["assistant", "assistant", "tool", "assistant"]
    assert messages[0]["content"] == "let me look"
    call = messages[1]["tool_calls"][0]
    assert (call["id"], call["name"], call["arguments"]["city"]) == ("c1", "weather", "Paris")
    assert math.isnan(call["arguments"]["days"])  # what msgspec refuses, json reads
    assert sources[1] == [1, 2]  # the reasoning item travels with the call after it
    assert messages[-1]["tool_calls"][-1]["arguments"] == {"_raw": "not json"}
    assert openai_agents._response_message(models[:1] + models[2:3]) == \
        openai_agents._response_message(dumped[:1] + dumped[2:3])


@pytest.mark.parametrize("depth", [40, 500, 100_000])
def test_tool_arguments_nested_past_any_limit_are_shown_not_raised(depth: int) -> None:
    """Tool arguments a model nested absurdly deep (a hostile or broken provider): the
    adapters' parsing never raises RecursionError, and ``json_value`` (what events carry)
    cuts them short or keeps them as text. (The OpenAI Agents SDK itself then fails on
    such arguments with RecursionError, with or without the adapter.)"""
    from llmspell.core.values import check_json_safe
    from llmspell.integrations.pydantic_ai import _raw_params

    nested = '{"city":' + "[" * depth + "]" * depth + "}"
    for params in (_bridge.json_value(openai_agents._arguments(nested)),
                   _raw_params(nested)):
        check_json_safe({"params": params})  # what hook data may hold
        if depth > 64:
            assert "nested too deep" in str(params) or params == {"_raw": nested}
        else:
            assert params == {"city": json.loads(nested)["city"]}
