"""A tool ``Fork`` in the OpenAI Agents SDK adapter is a governed call of its own, as in the
llmspell runtime: the tool hooks see it (``data["fork"]`` true) and their results apply to
it, a fork never forks again, its failure never fails the call it forks from, it runs in a
tool context and adapter state of its own, and its ``tool.<name>.*`` events are published.
(Forks used to call the tool with no hook at all, so a hook that refuses a dangerous call
did not see a forked one.)"""

from __future__ import annotations

import asyncio
from typing import Any

from agents import Agent, ToolGuardrailFunctionOutput, function_tool, tool_input_guardrail
from agents.tool_context import ToolContext

from llmspell.hooks import HookContext, HookPoint
from llmspell.hooks.result import Cancel, Fork, ForkOperation, Replace
from llmspell.integrations.openai_agents import OpenAIAgentsAdapter
from llmspell.runtime.system import System

from .conftest_openai_agents import (
    ScriptModel,
    no_trace_export,
    tool_then_answer,
    weather_agent,
)
from .conftest_openai_agents import stored_events as events

__all__ = ["no_trace_export"]  # fixtures

ANSWER = "answer: sunny in Paris"




def fork_of(target: str, **parameters: Any) -> Fork:
    return Fork((ForkOperation(type="tool", target=target, parameters=parameters),))


def fork_beside_weather(system: System, target: str, **parameters: Any) -> None:
    """A hook forking ``target`` beside every ``weather`` call."""
    system.registry.register(
        HookPoint.BEFORE_TOOL_EXECUTION,
        lambda ctx: fork_of(target, **parameters) if ctx.data["tool"] == "weather" else None,
        name="fork")


def agent_with(*extra: Any) -> tuple[Agent[Any], list[Any]]:
    """An agent whose model calls ``weather`` once, then answers with its output; ``wipe``,
    ``forecast`` and ``extra`` tools beside it. ``seen`` gets every call of a tool body."""
    return weather_agent(ScriptModel(tool_then_answer()), dangerous=True, tools=list(extra))


async def test_a_before_hook_sees_the_fork_and_can_cancel_it(system: System) -> None:
    fork_beside_weather(system, "wipe", path="/")
    guard_saw: list[tuple[str, bool, str | None]] = []

    def guard(ctx: HookContext) -> Cancel | None:
        parent = ctx.parent.data.get("tool") if ctx.parent is not None else None
        guard_saw.append((ctx.data["tool"], ctx.data.get("fork", False), parent))
        return Cancel("no wiping") if ctx.data["tool"] == "wipe" else None

    system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, guard, name="guard")
    agent, seen = agent_with()
    run = await OpenAIAgentsAdapter(system).run(agent, "weather?")
    assert seen == [("weather", "Paris")]  # the forked wipe never ran
    assert run.final_output == ANSWER
    # The fork is marked, and its context's parent is the point that forked it.
    assert guard_saw == [("weather", False, None), ("wipe", True, "weather")]
    [entry] = events(system, "tool.weather.completed")[0].data["forks"]
    assert entry["target"] == "wipe" and "result" not in entry
    assert entry["error"].startswith("OperationCancelledError") and "no wiping" in entry["error"]
    [failed] = events(system, "tool.wipe.failed")
    assert failed.data["fork"] is True and failed.data["error_type"] == "OperationCancelledError"


async def test_an_after_hook_sees_the_forks_result_and_its_result_applies(
        system: System) -> None:
    fork_beside_weather(system, "forecast", city="Paris", days=2)
    after_saw: list[tuple[str, Any, bool]] = []

    def after(ctx: HookContext) -> Replace | None:
        after_saw.append((ctx.data["tool"], ctx.data["result"], ctx.data.get("fork", False)))
        return Replace("redacted") if ctx.data.get("fork") else None

    system.registry.register(HookPoint.AFTER_TOOL_EXECUTION, after, name="after")
    agent, seen = agent_with()
    run = await OpenAIAgentsAdapter(system).run(agent, "weather?")
    assert sorted(seen) == [("forecast", "Paris", 2), ("weather", "Paris")]
    assert sorted(after_saw) == [("forecast", "2 days of rain in Paris", True),
                                 ("weather", "sunny in Paris", False)]
    assert run.final_output == ANSWER  # the main call's result is its own
    assert events(system, "tool.weather.completed")[0].data["forks"] == [
        {"type": "tool", "target": "forecast", "result": "redacted"}]


async def test_a_fork_that_raises_fails_neither_the_run_nor_the_call(system: System) -> None:
    fork_failed = asyncio.Event()

    @function_tool
    async def flaky(city: str) -> str:
        """Fails (the SDK's default failure handler turns it into a message)."""
        fork_failed.set()
        raise ValueError("boom")

    @function_tool
    async def weather(city: str) -> str:
        """Answers once the fork has failed."""
        await fork_failed.wait()
        for _ in range(5):
            await asyncio.sleep(0)
        return f"sunny in {city}"

    errors: list[tuple[str, bool]] = []
    system.registry.register(HookPoint.TOOL_ERROR, lambda ctx: errors.append(
        (ctx.data["tool"], ctx.data.get("fork", False))), name="errors")
    fork_beside_weather(system, "flaky", city="Rome")
    agent = Agent(name="weather", model=ScriptModel(tool_then_answer()),
                  tools=[weather, flaky])
    run = await OpenAIAgentsAdapter(system).run(agent, "weather?")
    assert run.final_output == ANSWER
    # The fork's failure is the fork's: never taken for the call it forked from.
    assert errors == [("flaky", True)]
    assert events(system, "tool.weather.failed") == []
    [completed] = events(system, "tool.weather.completed")
    assert completed.data["result"] == "sunny in Paris"
    assert completed.data["forks"] == [
        {"type": "tool", "target": "flaky", "error": "ValueError: boom"}]
    assert [e.data["fork"] for e in events(system, "tool.flaky.failed")] == [True]


async def test_a_fork_does_not_fork_again(system: System) -> None:
    forked_at: list[tuple[str, bool]] = []

    def fork_everything(ctx: HookContext) -> Fork:  # matches the fork too
        forked_at.append((ctx.data["tool"], ctx.data.get("fork", False)))
        return Fork((ForkOperation(type="tool", target="forecast",
                                   parameters={"city": "Paris", "days": 1}),
                     ForkOperation(type="tool", target="forecast",
                                   parameters={"city": "Oslo", "days": 1})))

    system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, fork_everything, name="fork")
    agent, seen = agent_with()
    run = await asyncio.wait_for(OpenAIAgentsAdapter(system).run(agent, "weather?"), 30)
    assert run.final_output == ANSWER
    assert sorted(seen) == [("forecast", "Oslo", 1), ("forecast", "Paris", 1),
                            ("weather", "Paris")]
    assert sorted(forked_at) == [("forecast", True), ("forecast", True), ("weather", False)]
    # What a fork's own hook asked for is not run, and says so in the fork's event.
    for done in events(system, "tool.forecast.completed"):
        assert [f["error"].split(":")[0] for f in done.data["forks"]] == [
            "UnsupportedHookResultError"] * 2
        assert done.data["forks"][0]["error"].endswith(
            "a forked operation does not fork again (at before_tool_execution)")


async def test_fork_events_are_in_the_store(system: System) -> None:
    fork_beside_weather(system, "forecast", city="Paris", days=3)
    agent, _ = agent_with()
    await OpenAIAgentsAdapter(system).run(agent, "weather?")
    tool_events = [e for e in events(system, "tool.**")]
    kinds = [e.event_type for e in tool_events]
    assert kinds.index("tool.forecast.completed") < kinds.index("tool.weather.completed")
    started = next(e for e in tool_events if e.event_type == "tool.forecast.started")
    completed = next(e for e in tool_events if e.event_type == "tool.forecast.completed")
    main = next(e for e in tool_events if e.event_type == "tool.weather.completed")
    assert started.data["params"] == {"city": "Paris", "days": 3}
    for event in (started, completed):
        assert event.data["fork"] is True and event.data["agent"] == "weather"
        assert event.data["call_id"].startswith("c1:fork:")
        assert event.metadata.correlation_id == main.metadata.correlation_id
    assert completed.data["result"] == "3 days of rain in Paris"
    assert "fork" not in main.data


async def test_a_fork_runs_in_a_tool_context_of_its_own(system: System) -> None:
    contexts: list[Any] = []

    @function_tool
    async def probe(ctx: ToolContext[Any], city: str) -> str:
        """Records the context it ran with."""
        contexts.append(ctx)
        return city

    fork_beside_weather(system, "probe", city="Rome")
    agent, _ = agent_with(probe)
    run = await OpenAIAgentsAdapter(system).run(agent, "weather?", context={"user": "u1"})
    assert run.final_output == ANSWER
    [ctx] = contexts
    assert ctx.tool_call_id.startswith("c1:fork:") and ctx.tool_name == "probe"
    assert ctx.context == {"user": "u1"}  # the user's own context object
    assert ctx.usage is not run.result.context_wrapper.usage  # type: ignore[union-attr]


async def test_a_fork_goes_through_the_tools_own_guardrails_and_approval(
        system: System) -> None:
    ran: list[str] = []

    @tool_input_guardrail
    def short_only(data: Any) -> ToolGuardrailFunctionOutput:
        if '"days": 30' in data.context.tool_arguments:
            return ToolGuardrailFunctionOutput.reject_content("too far ahead")
        return ToolGuardrailFunctionOutput.allow()

    @function_tool(tool_input_guardrails=[short_only])
    def outlook(city: str, days: int) -> str:
        """A long-range outlook."""
        ran.append("outlook")
        return "?"

    @function_tool(needs_approval=True)
    def evacuate(city: str) -> str:
        """Needs a human's approval."""
        ran.append("evacuate")
        return "gone"

    system.registry.register(
        HookPoint.BEFORE_TOOL_EXECUTION, lambda ctx: Fork((
            ForkOperation(type="tool", target="outlook",
                          parameters={"city": "Paris", "days": 30}),
            ForkOperation(type="tool", target="evacuate", parameters={"city": "Paris"}),
        )) if ctx.data["tool"] == "weather" else None, name="fork")
    agent, _ = agent_with(outlook, evacuate)
    run = await OpenAIAgentsAdapter(system).run(agent, "weather?")
    assert run.final_output == ANSWER
    assert ran == []
    outlook_fork, evacuate_fork = events(system, "tool.weather.completed")[0].data["forks"]
    assert "'short_only' refused the forked call: too far ahead" in outlook_fork["error"]
    assert "needs approval" in evacuate_fork["error"]


async def test_a_tool_disabled_for_the_run_cannot_be_forked(system: System) -> None:
    ran: list[str] = []

    @function_tool(is_enabled=False)
    def switched_off(city: str) -> str:
        """Never offered to the model."""
        ran.append("switched_off")
        return "?"

    async def only_for_admins(context: Any, agent: Any) -> bool:
        return bool((context.context or {}).get("admin"))

    @function_tool(is_enabled=only_for_admins)
    def admin_only(city: str) -> str:
        """Offered to admins' runs only."""
        ran.append("admin_only")
        return "done"

    system.registry.register(
        HookPoint.BEFORE_TOOL_EXECUTION, lambda ctx: Fork((
            ForkOperation(type="tool", target="switched_off", parameters={"city": "Oslo"}),
            ForkOperation(type="tool", target="admin_only", parameters={"city": "Oslo"}),
        )) if ctx.data["tool"] == "weather" else None, name="fork")
    agent, _ = agent_with(switched_off, admin_only)
    run = await OpenAIAgentsAdapter(system).run(agent, "weather?", context={"admin": False})
    assert run.final_output == ANSWER and ran == []
    off, admin = events(system, "tool.weather.completed")[0].data["forks"]
    assert "is disabled for this run" in off["error"]
    assert "is disabled for this run" in admin["error"]
    # An admin's run may fork it.
    run = await OpenAIAgentsAdapter(system).run(agent, "weather?", context={"admin": True})
    assert ran == ["admin_only"]
