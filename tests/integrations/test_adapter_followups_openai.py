"""OpenAI Agents SDK adapter: an agent ``Fork`` at a tool point finds the agents the adapter
governs, as one at an agent point does (a governed child run), falling back to llmspell's
agents; an agent ``Redirect`` target is an llmspell run of its own, a child of the run that
redirected, as in the pydantic-ai and LangChain adapters."""

from __future__ import annotations

from typing import Any

from agents import Agent

from llmspell.events import UniversalEvent
from llmspell.hooks import HookContext, HookPoint
from llmspell.hooks.result import Fork, ForkOperation, Redirect
from llmspell.integrations.openai_agents import OpenAIAgentsAdapter
from llmspell.runtime.providers.scripted import ScriptedProvider
from llmspell.runtime.system import System

from .conftest_openai_agents import (
    ScriptModel,
    no_trace_export,
    say,
    tool_then_answer,
    weather_agent,
)

__all__ = ["no_trace_export"]  # fixtures


def answering(text: str) -> ScriptModel:
    return ScriptModel(lambda instructions, items, tools: [say(text)])


def recorder(system: System) -> list[UniversalEvent]:
    events: list[UniversalEvent] = []
    system.bus.subscribe("**", events.append, mode="inline")
    return events


def started_runs(events: list[UniversalEvent]) -> dict[str, UniversalEvent]:
    return {e.data["name"]: e for e in events if e.event_type == "run.started"}


def alice_runs_weather(system: System) -> None:
    system.registry.register(
        HookPoint.BEFORE_AGENT_EXECUTION,
        lambda ctx: ctx.metadata.update(user="alice") if ctx.data["agent"] == "weather"
        else None, name="who", priority="highest")


def fork_at_weather(system: System, target: str, **parameters: Any) -> None:
    def fork(ctx: HookContext) -> Fork | None:
        if ctx.data["tool"] != "weather":
            return None
        return Fork((ForkOperation(type="agent", target=target, parameters=parameters),))

    system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, fork, name="fork-agent")


def tool_forks(events: list[UniversalEvent]) -> list[dict[str, Any]]:
    (done,) = [e for e in events if e.event_type == "tool.weather.completed"]
    forks: list[dict[str, Any]] = done.data["forks"]
    return forks


async def test_a_tool_point_agent_fork_runs_a_governed_agent_as_a_child_run(
        system: System) -> None:
    events = recorder(system)
    adapter = OpenAIAgentsAdapter(system)
    shadow_model = answering("shadow says")
    shadow = adapter.govern(Agent(name="shadow", model=shadow_model))
    alice_runs_weather(system)
    fork_at_weather(system, "shadow", input="shadow question")
    seen: list[tuple[str, Any, str]] = []
    system.registry.register(
        HookPoint.BEFORE_AGENT_EXECUTION,
        lambda ctx: seen.append((ctx.data["agent"], ctx.metadata.get("user"),
                                 ctx.correlation_id)), name="watch", priority="lowest")
    agent, calls = weather_agent(ScriptModel(tool_then_answer()))
    run = await adapter.run(agent, "weather?")
    assert run.final_output == "answer: sunny in Paris" and calls == [("weather", "Paris")]
    assert shadow is not None and len(shadow_model.calls) == 1
    # The fork's answer goes along with the call it forked from (no "no agent" error).
    assert tool_forks(events) == [
        {"type": "agent", "target": "shadow", "result": "shadow says"}]
    # Its agent points ran (a guard on it holds), as children of the forking hook.
    assert seen == [("weather", "alice", run.correlation_id),
                    ("shadow", "alice", run.correlation_id)]
    # ...and it is a run of its own, a child of the run it forked from.
    started = started_runs(events)
    assert started["shadow"].data["parent_run_id"] == run.run_id
    assert started["shadow"].metadata.run_id not in (None, run.run_id)


async def test_a_tool_point_agent_fork_defaults_to_the_runs_input(system: System) -> None:
    adapter = OpenAIAgentsAdapter(system)
    heard: list[Any] = []
    shadow = adapter.govern(Agent(name="shadow", model=ScriptModel(
        lambda instructions, items, tools: heard.append(items) or [say("ok")])))
    fork_at_weather(system, "shadow")
    agent, _ = weather_agent(ScriptModel(tool_then_answer()))
    await adapter.run(agent, "what is the weather?")
    assert shadow is not None and len(heard) == 1
    assert "what is the weather?" in str(heard[0])


async def test_a_tool_point_agent_fork_falls_back_to_llmspells_agents(
        system: System) -> None:
    events = recorder(system)
    provider = ScriptedProvider(lambda messages, tools: "llmspell says")
    system.agents.create("helper", provider=provider)
    fork_at_weather(system, "helper", input="help")
    agent, _ = weather_agent(ScriptModel(tool_then_answer()))
    await OpenAIAgentsAdapter(system).run(agent, "weather?")
    (fork,) = tool_forks(events)
    assert fork["target"] == "helper" and "error" not in fork
    assert len(provider.calls) == 1


async def test_an_agent_redirect_target_is_a_child_run(system: System) -> None:
    events = recorder(system)
    adapter = OpenAIAgentsAdapter(system)
    admin = adapter.govern(Agent(name="admin", model=answering("admin says")))
    system.registry.register(HookPoint.BEFORE_AGENT_EXECUTION, lambda ctx: Redirect(
        "admin") if ctx.data["agent"] == "main" else None, name="route")
    run = await adapter.run(Agent(name="main", model=answering("main says")), "hello")
    assert run.final_output == "admin says" and run.redirected_to == "admin"
    assert admin is not None
    started = started_runs(events)
    assert started["main"].data.get("parent_run_id") is None
    assert started["admin"].data["parent_run_id"] == run.run_id
    child = started["admin"].metadata.run_id
    assert child not in (None, run.run_id)
    # The target's model call is a step of the child run, which records its answer.
    (model_started,) = [e for e in events if e.event_type.startswith("model.")
                        and e.event_type.endswith(".started")]
    assert model_started.metadata.run_id == child
    (child_done,) = [e for e in events if e.event_type == "run.completed"
                     and e.metadata.run_id == child]
    assert child_done.data["status"] == "completed"
