"""The OpenAI Agents SDK adapter's lifecycle: a cancelled run (streamed or not, mid model
call or mid tool call) ends in the run store and publishes the agent's ``failed`` event,
and the adapter's per-agent maps let agents die with the caller's last reference."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from agents import Agent, ModelSettings, function_tool

from llmspell.hooks import HookPoint
from llmspell.hooks.result import Cancel, Fork, ForkOperation
from llmspell.integrations import openai_agents
from llmspell.integrations.openai_agents import OpenAIAgentsAdapter
from llmspell.runtime.system import System

from .conftest_openai_agents import (
    ScriptModel,
    no_trace_export,
    say,
    tool_then_answer,
    weather_agent,
)
from .conftest_openai_agents import stored_events as events

__all__ = ["no_trace_export"]  # fixtures




class HangingModel(ScriptModel):
    """A model whose call never answers; ``entered`` is set once a call is waiting."""

    def __init__(self) -> None:
        super().__init__(lambda *_: [say("never")])
        self.entered = asyncio.Event()
        self.cancelled = 0

    async def _hang(self) -> None:
        self.entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def get_response(self, *args: Any, **kwargs: Any) -> Any:
        await self._hang()

    async def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        await self._hang()
        yield None  # pragma: no cover - never reached


def hanging_tool_agent() -> tuple[Agent[Any], asyncio.Event, list[str]]:
    """An agent whose model calls ``slow`` (a tool that never returns), the event set when
    the tool is running, and a list the tool appends ``"cancelled"`` to when cancelled."""
    entered = asyncio.Event()
    seen: list[str] = []

    @function_tool
    async def slow(city: str) -> str:
        """Never answers."""
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        return city  # pragma: no cover - never reached

    agent = Agent(name="slowpoke", model=ScriptModel(tool_then_answer("slow")), tools=[slow])
    return agent, entered, seen


async def consume(adapter: OpenAIAgentsAdapter, agent: Agent[Any], streamed: bool) -> Any:
    if not streamed:
        return await adapter.run(agent, "go")
    run = adapter.run_streamed(agent, "go")
    async for _ in run.stream_events():
        pass
    return run


async def settle(done: Callable[[], bool]) -> None:
    """Give other tasks loop turns (a bounded number, not time) until ``done()``."""
    for _ in range(100):
        if done():
            return
        await asyncio.sleep(0)


def assert_cancelled_run_ended(system: System, agent_name: str) -> None:
    """The agent's failed event (CancelledError) and a cancelled, closed run record."""
    started = events(system, f"agent.{agent_name}.started")
    failed = events(system, f"agent.{agent_name}.failed")
    assert len(failed) == 1, [e.event_type for e in events(system)]
    assert failed[0].data["error_type"] == "CancelledError"
    assert failed[0].metadata.correlation_id == started[0].metadata.correlation_id
    assert not events(system, f"agent.{agent_name}.completed")
    runs = system.runs.list()
    assert [r.status for r in runs] == ["cancelled"]
    assert runs[0].error is not None and runs[0].error["type"] == "CancelledError"
    assert failed[0].metadata.run_id == runs[0].run_id


# -- a cancelled run --------------------------------------------------------------------------

@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_streamed"])
async def test_a_run_cancelled_mid_model_call_ends_and_publishes_failed(
        system: System, streamed: bool) -> None:
    model = HangingModel()
    agent = Agent(name="hangs", model=model)
    task = asyncio.ensure_future(consume(OpenAIAgentsAdapter(system), agent, streamed))
    await model.entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert_cancelled_run_ended(system, "hangs")
    assert not events(system, "model.openai.completed")


@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_streamed"])
async def test_a_run_cancelled_mid_tool_call_ends_and_publishes_failed(
        system: System, streamed: bool) -> None:
    agent, entered, seen = hanging_tool_agent()
    task = asyncio.ensure_future(consume(OpenAIAgentsAdapter(system), agent, streamed))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert_cancelled_run_ended(system, "slowpoke")
    await settle(lambda: bool(seen))  # the SDK's tool task unwinds on its own
    assert seen == ["cancelled"]
    assert not events(system, "tool.slow.completed")


@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_streamed"])
async def test_a_run_a_timeout_gives_up_on_ends_failed(system: System,
                                                        streamed: bool) -> None:
    model = HangingModel()
    agent = Agent(name="hangs", model=model)

    async def expire(timeout: asyncio.Timeout) -> None:
        await model.entered.wait()  # the deadline falls mid model call, not by the clock
        timeout.reschedule(asyncio.get_running_loop().time())

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(None) as timeout:  # what wait_for does since 3.12
            expiry = asyncio.ensure_future(expire(timeout))
            await consume(OpenAIAgentsAdapter(system), agent, streamed)
    await expiry
    assert model.cancelled == 1
    assert_cancelled_run_ended(system, "hangs")


async def test_a_stream_closed_early_ends_its_run_before_aclose_returns(
        system: System) -> None:
    agent, entered, _ = hanging_tool_agent()
    run = OpenAIAgentsAdapter(system).run_streamed(agent, "go")
    stream = run.stream_events()
    await stream.__anext__()  # the first event: the run is under way
    await entered.wait()
    await stream.aclose()  # the caller stops reading (what ``break`` leads to)
    assert_cancelled_run_ended(system, "slowpoke")


async def test_an_adapter_runs_again_after_a_cancelled_run(system: System) -> None:
    adapter = OpenAIAgentsAdapter(system)
    model = HangingModel()
    task = asyncio.ensure_future(adapter.run(Agent(name="hangs", model=model), "go"))
    await model.entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    agent, seen = weather_agent(ScriptModel(tool_then_answer()))
    done = await adapter.run(agent, "weather?")
    assert done.final_output == "answer: sunny in Paris" and seen == [("weather", "Paris")]
    assert sorted(r.status for r in system.runs.list()) == ["cancelled", "completed"]


async def test_forks_beside_a_cancelled_tool_call_are_cancelled_with_it(
        system: System) -> None:
    fork_entered = asyncio.Event()
    fork_seen: list[str] = []

    @function_tool
    async def side(city: str) -> str:
        """A forked call that never answers."""
        fork_entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            fork_seen.append("cancelled")
            raise
        return city  # pragma: no cover - never reached

    agent, entered, seen = hanging_tool_agent()
    agent.tools.append(side)
    system.registry.register(
        HookPoint.BEFORE_TOOL_EXECUTION,
        lambda ctx: Fork((ForkOperation(type="tool", target="side",
                                        parameters={"city": "Rome"}),))
        if ctx.data["tool"] == "slow" else None, name="fork")
    task = asyncio.ensure_future(OpenAIAgentsAdapter(system).run(agent, "go"))
    await entered.wait()
    await fork_entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The SDK cancels the tool's invoker task without waiting for it: give it loop turns.
    await settle(lambda: bool(fork_seen))
    assert seen == ["cancelled"] and fork_seen == ["cancelled"]
    assert_cancelled_run_ended(system, "slowpoke")


# -- per-agent maps: weak on the agents -----------------------------------------------------

def map_sizes(adapter: OpenAIAgentsAdapter) -> tuple[int, int, int]:
    return len(adapter._governed), len(adapter._originals), len(adapter._by_name)


async def test_governed_agents_die_with_the_callers_last_reference(system: System) -> None:
    adapter = OpenAIAgentsAdapter(system)
    before = len(openai_agents._CLONES)
    template, _ = weather_agent(ScriptModel(tool_then_answer()))
    refs: list[weakref.ref[Any]] = []
    for i in range(500):  # an Agent built per request, as a server does
        agent = Agent(name=f"request-{i}", model=template.model, tools=list(template.tools))
        governed = adapter.govern(agent)
        assert adapter.govern(agent) is governed
        refs += [weakref.ref(agent), weakref.ref(governed)]
    del agent, governed
    gc.collect()
    assert sum(1 for r in refs if r() is not None) == 0
    assert map_sizes(adapter) == (0, 0, 0)
    assert len(openai_agents._CLONES) <= before


async def test_agents_that_ran_and_handoff_cycles_die_too(system: System) -> None:
    adapter = OpenAIAgentsAdapter(system)
    refs: list[weakref.ref[Any]] = []
    for _ in range(3):
        agent, _ = weather_agent(ScriptModel(tool_then_answer()))
        run = await adapter.run(agent, "weather?")
        assert run.final_output == "answer: sunny in Paris"
        refs += [weakref.ref(agent), weakref.ref(adapter.govern(agent))]
        first = Agent(name="first", model=ScriptModel(lambda *_: [say("one")]))
        second = Agent(name="second", model=ScriptModel(lambda *_: [say("two")]),
                       handoffs=[first])
        first.handoffs = [second]
        refs += [weakref.ref(first), weakref.ref(second), weakref.ref(adapter.govern(first))]
    del agent, run, first, second
    gc.collect()  # the originals' cycle; their entries go, which frees the clones' cycle
    gc.collect()
    assert sum(1 for r in refs if r() is not None) == 0
    assert map_sizes(adapter) == (0, 0, 0)


async def test_a_clone_lives_as_long_as_its_original(system: System) -> None:
    adapter = OpenAIAgentsAdapter(system)
    agent, _ = weather_agent(ScriptModel(tool_then_answer()))
    clone = weakref.ref(adapter.govern(agent))
    gc.collect()
    assert clone() is not None and adapter.govern(agent) is clone()  # one clone per agent
    del agent
    gc.collect()
    assert clone() is None


async def test_a_governed_temporary_agent_runs_with_its_hooks(system: System) -> None:
    fired: list[Any] = []

    def guard(ctx: Any) -> Any:
        fired.append(ctx.data["params"])
        return Cancel("not today")

    system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, guard, name="guard")
    adapter = OpenAIAgentsAdapter(system)
    seen: list[str] = []

    @function_tool
    def weather(city: str) -> str:
        """The weather."""
        seen.append(city)
        return "sunny"

    # The documented pattern: the original Agent is a temporary, only its clone is held.
    run = await adapter.run(adapter.govern(Agent(
        name="temp", model=ScriptModel(tool_then_answer()), tools=[weather],
        model_settings=ModelSettings())), "weather?")
    assert seen == [] and fired == [{"city": "Paris"}]
    assert "not today" in run.final_output

    kept = adapter.govern(Agent(name="kept", model=ScriptModel(tool_then_answer()),
                                tools=[weather]))
    gc.collect()  # its original is gone; the clone is still this adapter's
    assert adapter.govern(kept) is kept
    again = await adapter.run(kept, "weather?")
    assert "not today" in again.final_output and len(fired) == 2 and seen == []
