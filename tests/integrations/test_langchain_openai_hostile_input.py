"""The LangChain and OpenAI Agents SDK adapters against a hostile model, a careless
integrator and runs that are cut short: parallel tool calls of one LangChain run, a run
cancelled mid-way (its llmspell run is closed as failed), a tool call whose arguments are
not a JSON object (it fails in the tool as without the adapter, it does not run with
made-up arguments), an agent governed twice, and adapters given the wrong object."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import agents
import pytest
from agents import Agent, function_tool
from langchain.agents import create_agent
from langchain_core.tools import tool
from openai.types.responses import ResponseFunctionToolCall

from llmspell.errors import IntegrationError, InvalidValueError
from llmspell.events import UniversalEvent
from llmspell.hooks import HookContext, HookPoint
from llmspell.hooks.result import Modified
from llmspell.integrations.langchain import LlmspellMiddleware
from llmspell.integrations.openai_agents import OpenAIAgentsAdapter
from llmspell.runtime.system import System

from .conftest_langchain import RAN, ScriptedChatModel, add, call, shout
from .conftest_openai_agents import ScriptModel, outputs, say, tool_then_answer, weather_agent

P = HookPoint
ASK: Any = {"messages": [{"role": "user", "content": "go"}]}


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    """No SDK trace export; the LangChain tools' call log starts empty."""
    agents.set_trace_processors([])
    RAN.clear()
    yield
    agents.set_trace_processors([])


def recorder(system: System) -> list[UniversalEvent]:
    events: list[UniversalEvent] = []
    system.bus.subscribe("**", events.append, mode="inline")
    return events


def types(events: list[UniversalEvent]) -> list[str]:
    return [e.event_type for e in events]


# -- LangChain ---------------------------------------------------------------------------------

def _two_calls_at_once() -> list[Any]:
    return [call("add", "c1", a=1, b=2) + call("shout", "c2", text="hi"), "both done"]


async def test_parallel_tool_calls_of_one_langchain_run_each_run_in_it(
        system: System) -> None:
    """LangChain runs a model answer's tool calls concurrently; each is made part of the
    llmspell run in its own context (they used to undo each other's: a ValueError)."""
    events = recorder(system)
    agent = create_agent(ScriptedChatModel(steps=_two_calls_at_once()), tools=[add, shout],
                         name="calc", middleware=[LlmspellMiddleware(system)])
    out = await agent.ainvoke(ASK)
    assert out["messages"][-1].content == "both done"
    assert sorted(name for name, _ in RAN) == ["add", "shout"]
    run_id = events[0].data["run_id"]
    assert types(events)[-1] == "run.completed"
    tools = [e for e in events if e.event_type.startswith("tool.")]
    assert {e.event_type for e in tools} >= {"tool.add.completed", "tool.shout.completed"}
    assert all(e.metadata.run_id == run_id for e in tools)


def test_parallel_tool_calls_of_a_sync_langchain_run_each_run_in_it(system: System) -> None:
    events = recorder(system)
    agent = create_agent(ScriptedChatModel(steps=_two_calls_at_once()), tools=[add, shout],
                         name="calc", middleware=[LlmspellMiddleware(system)])
    assert agent.invoke(ASK)["messages"][-1].content == "both done"
    assert types(events)[-1] == "run.completed"


async def test_a_langchain_run_cancelled_mid_tool_closes_its_llmspell_run(
        system: System) -> None:
    started = asyncio.Event()

    @tool
    async def slow(x: int) -> int:
        """Takes its time."""
        started.set()
        await asyncio.sleep(60)
        return x

    events = recorder(system)
    middleware = LlmspellMiddleware(system)
    agent = create_agent(ScriptedChatModel(steps=[call("slow", x=1), "done"]), tools=[slow],
                         name="calc", middleware=[middleware])
    task = asyncio.ensure_future(agent.ainvoke(ASK))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    seen = types(events)
    assert "agent.calc.failed" in seen and seen[-1] == "run.failed"
    failed = next(e for e in events if e.event_type == "run.failed")
    assert failed.data["status"] == "cancelled"
    assert failed.metadata.run_id == events[0].data["run_id"]
    assert not middleware._runs  # nothing left open


async def test_concurrent_langchain_runs_on_one_middleware_stay_apart(system: System) -> None:
    events = recorder(system)
    contexts: list[tuple[str, Any]] = []
    system.registry.register(
        P.AFTER_TOOL_EXECUTION,
        lambda ctx: contexts.append((ctx.correlation_id, ctx.data["params"]["text"])),
        name="watch")
    middleware = LlmspellMiddleware(system)
    words = ["one", "two", "three", "four"]
    runs = [create_agent(ScriptedChatModel(steps=[call("shout", text=w), f"said {w}"]),
                         tools=[shout], name="calc", middleware=[middleware])
            for w in words]
    outs = await asyncio.gather(*(a.ainvoke(ASK) for a in runs))
    assert [o["messages"][-1].content for o in outs] == [f"said {w}" for w in words]
    assert len({c for c, _ in contexts}) == 4
    by_run: dict[str | None, list[Any]] = {}
    for e in events:
        if e.event_type == "tool.shout.completed":
            by_run.setdefault(e.metadata.run_id, []).append(e.data["result"])
    assert sorted(v for results in by_run.values() for v in results) == sorted(
        w.upper() for w in words)
    assert all(len(results) == 1 for results in by_run.values()) and len(by_run) == 4
    assert types(events).count("run.completed") == 4


# -- OpenAI Agents SDK -----------------------------------------------------------------------

def _asks(arguments: str) -> Any:
    def step(instructions: str | None, items: list[dict[str, Any]],
             tools: list[str]) -> list[Any]:
        done = outputs(items)
        if not done:
            return [ResponseFunctionToolCall(id="c1", call_id="c1", type="function_call",
                                             name="now", arguments=arguments)]
        return [say("told: " + str(done[-1]["output"]))]
    return step


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", '"text"'])
async def test_arguments_that_are_not_a_json_object_do_not_run_the_tool(
        system: System, arguments: str) -> None:
    """Without the adapter the SDK refuses such a call and tells the model; through it the
    tool used to run with ``{"_raw": ...}`` as its arguments."""
    ran: list[str] = []

    @function_tool
    def now() -> str:
        """The time."""
        ran.append("now")
        return "noon"

    seen: list[Any] = []
    system.registry.register(P.BEFORE_TOOL_EXECUTION,
                             lambda ctx: seen.append(ctx.data["params"]), name="watch")
    bare = await agents.Runner.run(Agent(name="clock", model=ScriptModel(_asks(arguments)),
                                         tools=[now]), "hi")
    run = await OpenAIAgentsAdapter(system).run(
        Agent(name="clock", model=ScriptModel(_asks(arguments)), tools=[now]), "hi")
    assert ran == []
    assert run.final_output == bare.final_output
    assert seen and "_raw" in seen[0]  # the hooks still see what the model sent


async def test_rewritten_arguments_still_reach_the_tool(system: System) -> None:
    def fix(ctx: HookContext) -> Any:
        return Modified({**ctx.data, "params": {"city": "Rome"}})

    system.registry.register(P.BEFORE_TOOL_EXECUTION, fix, name="fix")
    agent, seen = weather_agent(ScriptModel(tool_then_answer(args={"city": "Paris"})))
    run = await OpenAIAgentsAdapter(system).run(agent, "hi")
    assert seen == [("weather", "Rome")] and "Rome" in run.final_output


async def test_an_agent_governed_twice_fires_its_hooks_once(system: System) -> None:
    fired: list[Any] = []
    system.registry.register(P.BEFORE_TOOL_EXECUTION,
                             lambda ctx: fired.append(ctx.data["params"]), name="watch")
    adapter = OpenAIAgentsAdapter(system)
    agent, seen = weather_agent(ScriptModel(tool_then_answer()))
    governed = adapter.govern(agent)
    assert adapter.govern(governed) is governed
    await adapter.run(governed, "hi")
    assert len(fired) == 1 and seen == [("weather", "Paris")]
    with pytest.raises(IntegrationError, match="another OpenAIAgentsAdapter") as info:
        await OpenAIAgentsAdapter(system).run(governed, "hi")
    assert info.value.hint


@pytest.mark.parametrize("wrong", ["an agent", None, 42])
async def test_running_what_is_not_an_agent_is_a_typed_error(system: System,
                                                            wrong: Any) -> None:
    with pytest.raises(InvalidValueError, match=r"agents\.Agent") as info:
        await OpenAIAgentsAdapter(system).run(wrong, "hi")
    assert info.value.hint


@pytest.mark.parametrize("wrong", [None, "system", object()])
def test_an_adapter_given_something_else_than_a_system_is_a_typed_error(wrong: Any) -> None:
    for make in (LlmspellMiddleware, OpenAIAgentsAdapter):
        with pytest.raises(InvalidValueError, match="needs an llmspell System") as info:
            make(wrong)
        assert info.value.hint
