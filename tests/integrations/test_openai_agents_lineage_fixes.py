"""OpenAI Agents SDK adapter: an operation the adapter derives from a hook's result keeps
the lineage of the operation it came from. An agent ``Fork`` is a child of the hook that
forked it (the parent run's correlation id and user, as the pydantic-ai and LangChain
adapters' forks are); a tool ``Redirect`` to an llmspell tool counts against the same
redirect bound as the redirects before it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from agents import Agent

from llmspell.errors import AgentCycleError, OperationCancelledError, ToolExecutionError
from llmspell.events import UniversalEvent
from llmspell.hooks import HookContext, HookPoint
from llmspell.hooks.result import Cancel, Fork, ForkOperation, Redirect
from llmspell.integrations.openai_agents import OpenAIAgentsAdapter
from llmspell.runtime.system import System
from llmspell.runtime.tools.base import tool

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


def recorder(system: System, pattern: str = "**") -> list[UniversalEvent]:
    events: list[UniversalEvent] = []
    system.bus.subscribe(pattern, events.append, mode="inline")
    return events


def seen_at(system: System, point: str, priority: str = "lowest") -> list[dict[str, Any]]:
    """What each dispatch of ``point`` saw: agent or caller, user, correlation."""
    seen: list[dict[str, Any]] = []

    def record(ctx: HookContext) -> None:
        who = ctx.data.get("agent") or (ctx.data.get("caller") or {}).get("name")
        seen.append({"who": who, "user": ctx.metadata.get("user"),
                     "correlation": ctx.correlation_id})

    system.registry.register(point, record, name=f"watch-{point}", priority=priority)
    return seen


async def test_an_agent_fork_carries_the_forking_runs_correlation_and_user(
        system: System) -> None:
    events = recorder(system)
    adapter = OpenAIAgentsAdapter(system)
    shadow = adapter.govern(Agent(name="shadow", model=answering("shadow says")))

    def main_only(ctx: HookContext) -> Fork | None:
        if ctx.data["agent"] != "main":
            return None
        ctx.metadata.update(user="alice")  # who runs main: the fork inherits it
        return Fork((ForkOperation(type="agent", target="shadow",
                                   parameters={"input": "shadow question"}),))

    system.registry.register(HookPoint.BEFORE_AGENT_EXECUTION, main_only, name="fork",
                             priority="highest")
    agents = seen_at(system, HookPoint.BEFORE_AGENT_EXECUTION)
    models = seen_at(system, HookPoint.BEFORE_MODEL_CALL)
    run = await adapter.run(Agent(name="main", model=answering("main says")), "hello")
    assert run.forks == [{"type": "agent", "target": "shadow", "result": "shadow says"}]
    assert shadow is not None
    # Every point of the fork carries the forking run's correlation id and its user.
    assert {(s["who"], s["user"], s["correlation"]) for s in agents} == {
        ("main", "alice", run.correlation_id), ("shadow", "alice", run.correlation_id)}
    assert {(s["who"], s["user"], s["correlation"]) for s in models} == {
        ("main", "alice", run.correlation_id), ("shadow", "alice", run.correlation_id)}
    # ...and so do its events, with a run of its own, a child of the forking run.
    (shadow_started,) = [e for e in events if e.event_type == "agent.shadow.started"]
    assert shadow_started.metadata.correlation_id == run.correlation_id
    started = {e.data["name"]: e for e in events if e.event_type == "run.started"}
    assert started["shadow"].data["parent_run_id"] == run.run_id
    assert started["shadow"].metadata.run_id not in (None, run.run_id)
    shadow_events = [e for e in events if e.metadata.run_id
                     == started["shadow"].metadata.run_id
                     and e.event_type.startswith(("agent.", "model."))]
    assert shadow_events and {e.metadata.correlation_id for e in shadow_events} == {
        run.correlation_id}


async def test_a_redirect_cycle_through_an_llmspell_tool_is_bounded_by_one_count(
        system: System) -> None:
    """``weather`` (the agent's tool) -> ``backup`` (an llmspell tool) -> ``weather`` (an
    llmspell tool of that name too) -> ...: five redirects in a row end the call with the
    redirect-loop error, however the chain crosses from the agent's tools to llmspell's."""
    ran: list[str] = []

    @system.tools.register
    def backup(city: str) -> str:
        """The backup station."""
        ran.append("backup")
        return "backup"

    @tool(name="weather")
    def weather_llmspell(city: str) -> str:
        """The llmspell weather tool."""
        ran.append("weather")
        return "weather"

    system.tools.register(weather_llmspell)
    hops: list[str] = []

    def loop(ctx: HookContext) -> Redirect:
        hops.append(ctx.data["tool"])
        return Redirect("backup" if ctx.data["tool"] == "weather" else "weather")

    system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, loop, name="loop")
    agent, seen = weather_agent(ScriptModel(tool_then_answer()))
    with pytest.raises(ToolExecutionError) as info:
        await OpenAIAgentsAdapter(system).run(agent, "weather?")
    assert "redirects went 5 deep" in str(info.value)
    assert "Redirect" in (info.value.hint or "")
    assert ran == [] and seen == []
    assert hops == ["weather", "backup", "weather", "backup", "weather"]


def main_is_alices(system: System) -> None:
    """The application says who runs ``main`` (what its derived operations inherit)."""
    system.registry.register(
        HookPoint.BEFORE_AGENT_EXECUTION,
        lambda ctx: ctx.metadata.update(user="alice") if ctx.data["agent"] == "main"
        else None, name="who", priority="highest")


async def test_an_agent_redirect_runs_the_targets_own_agent_points(system: System) -> None:
    """A Redirect at an agent point runs the target as an operation of its own, as the
    runtime's agents do: a hook guarding the target holds, and its points are children of
    the hook that redirected (the run's user and correlation)."""
    adapter = OpenAIAgentsAdapter(system)
    admin_model = answering("admin says")
    admin = adapter.govern(Agent(name="admin", model=admin_model))

    main_is_alices(system)
    system.registry.register(HookPoint.BEFORE_AGENT_EXECUTION, lambda ctx: Redirect(
        "admin") if ctx.data["agent"] == "main" else None, name="route")
    agents = seen_at(system, HookPoint.BEFORE_AGENT_EXECUTION, "high")
    system.registry.register(
        HookPoint.BEFORE_AGENT_EXECUTION,
        lambda ctx: Cancel("admin is not for this user")
        if ctx.data["agent"] == "admin" and ctx.metadata.get("user") == "alice" else None,
        name="guard")
    with pytest.raises(OperationCancelledError, match="admin is not for this user"):
        await adapter.run(Agent(name="main", model=answering("main says")), "hello")
    assert admin_model.calls == [] and admin is not None  # the guard held
    assert [(s["who"], s["user"]) for s in agents] == [("main", "alice"), ("admin", "alice")]


async def test_an_agent_redirect_keeps_the_runs_lineage_and_answers(system: System) -> None:
    adapter = OpenAIAgentsAdapter(system)
    admin = adapter.govern(Agent(name="admin", model=answering("admin says")))

    main_is_alices(system)
    system.registry.register(HookPoint.BEFORE_AGENT_EXECUTION, lambda ctx: Redirect(
        "admin") if ctx.data["agent"] == "main" else None, name="route")
    agents = seen_at(system, HookPoint.BEFORE_AGENT_EXECUTION, "high")
    models = seen_at(system, HookPoint.BEFORE_MODEL_CALL)
    run = await adapter.run(Agent(name="main", model=answering("main says")), "hello")
    assert run.final_output == "admin says" and run.redirected_to == "admin"
    assert run.result is not None and run.result.last_agent is admin
    assert [(s["who"], s["user"], s["correlation"]) for s in agents] == [
        ("main", "alice", run.correlation_id), ("admin", "alice", run.correlation_id)]
    assert [(s["who"], s["user"], s["correlation"]) for s in models] == [
        ("admin", "alice", run.correlation_id)]


async def test_an_agent_redirect_loop_is_refused(system: System) -> None:
    adapter = OpenAIAgentsAdapter(system)
    one = adapter.govern(Agent(name="one", model=answering("one says")))
    two = adapter.govern(Agent(name="two", model=answering("two says")))
    system.registry.register(
        HookPoint.BEFORE_AGENT_EXECUTION,
        lambda ctx: Redirect("two" if ctx.data["agent"] == "one" else "one"), name="loop")
    with pytest.raises(AgentCycleError):
        await asyncio.wait_for(adapter.run(one, "hello"), 30)
    assert one.model.calls == [] and two.model.calls == []
