"""Agents against hostile models and callers: tool calls the agent must not run, malformed
or too many calls, colliding ids, cancellation, pause/resume/shutdown during a run, and a
recovery a hook blocks. The agent never runs what it was not given and is never left in a
state it cannot leave."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from llmspell.errors import AgentError, AgentStateError, InvalidValueError, OperationCancelled
from llmspell.hooks import Cancel, HookContext, HookPoint
from llmspell.runtime import RECOVER, AgentState, System, tool
from llmspell.runtime.providers.base import Completion, Message, ToolCall
from llmspell.runtime.providers.scripted import ScriptedProvider

P = HookPoint


def calls_then(calls: list[ToolCall], final: str = "done") -> list[Any]:
    """A script: one answer asking for ``calls`` (exactly as given), then ``final``."""
    return [Completion(message=Message(role="assistant", tool_calls=tuple(calls)),
                       finish_reason="tool_calls", model="scripted"), final]


def spy_tool(system: System) -> list[dict[str, Any]]:
    """Registers ``spy``, which records each run."""
    ran: list[dict[str, Any]] = []

    @tool()
    def spy(a: int = 0, b: int = 0) -> str:
        """Records that it ran."""
        ran.append({"a": a, "b": b})
        return "spied"

    system.tools.register(spy)
    return ran


async def settle() -> None:
    """Let every task that can move do so (no wall-clock wait)."""
    for _ in range(50):
        await asyncio.sleep(0)


# -- what the model asks for --------------------------------------------------------------

@pytest.mark.parametrize("given", [["add"], []])
async def test_a_tool_the_agent_was_not_given_is_never_run(system: System,
                                                           given: list[str]) -> None:
    ran = spy_tool(system)
    provider = ScriptedProvider(calls_then([ToolCall(id="c1", name="spy", arguments={})]))
    agent = system.agents.create("limited", provider=provider, tools=given)
    response = await agent.run("go")
    assert ran == []
    assert response.output == "done" and response.stop_reason == "final_answer"
    error = response.tool_calls[0]["error"]
    assert "not one of this agent's tools" in error and "spy" in error
    fed_back = provider.calls[-1][0][-1]
    assert fed_back.role == "tool" and fed_back.tool_call_id == "c1"
    assert "not one of this agent's tools" in (fed_back.content or "")
    assert agent.state is AgentState.READY


async def test_malformed_tool_calls_are_answered_and_never_coerced(system: System) -> None:
    ran = spy_tool(system)
    bad: list[Any] = ["{not json", [["a", 1], ["b", 2]], [1, 2], None]
    calls = [ToolCall(id=f"c{i}", name="spy", arguments=args) for i, args in enumerate(bad)]
    calls.append(ToolCall(id="nameless", name="", arguments={}))
    provider = ScriptedProvider(calls_then(calls))
    agent = system.agents.create("strict", provider=provider, tools=["spy"])
    response = await agent.run("go")
    assert ran == []  # a list of pairs is not turned into an object
    assert response.output == "done"
    errors = [c["error"] for c in response.tool_calls]
    assert all("must be a JSON object" in e for e in errors[:4])
    assert "names no tool" in errors[4]
    answers = [m for m in provider.calls[-1][0] if m.role == "tool"]
    assert [m.tool_call_id for m in answers] == ["c0", "c1", "c2", "c3", "nameless"]
    assert agent.state is AgentState.READY


async def test_tool_calls_per_answer_are_bounded(system: System) -> None:
    ran = spy_tool(system)
    calls = [ToolCall(id=f"c{i}", name="spy", arguments={"a": i}) for i in range(100)]
    provider = ScriptedProvider(calls_then(calls))
    agent = system.agents.create("bounded", provider=provider, tools=["spy"],
                                 max_tool_calls=5)
    response = await agent.run("go")
    assert [r["a"] for r in ran] == [0, 1, 2, 3, 4]
    assert len(response.tool_calls) == 100
    assert all("at most 5 tool calls" in c["error"] for c in response.tool_calls[5:])
    # Every call is answered, so the conversation stays well formed for the provider.
    answered = [m.tool_call_id for m in provider.calls[-1][0] if m.role == "tool"]
    assert answered == [f"c{i}" for i in range(100)]
    with pytest.raises(InvalidValueError, match="max_tool_calls") as info:
        system.agents.create("bad", provider=ScriptedProvider(["x"]), max_tool_calls=0)
    assert info.value.hint
    with pytest.raises(InvalidValueError, match="max_tool_calls"):
        system.agents.create("bad", provider=ScriptedProvider(["x"]), max_tool_calls=True)
    assert system.agents.create("default", provider=ScriptedProvider(["x"])).max_tool_calls \
        == 32


async def test_empty_and_repeated_tool_call_ids_are_made_unique(system: System) -> None:
    def answer(ids: list[str]) -> Completion:
        return Completion(message=Message(role="assistant", tool_calls=tuple(
            ToolCall(id=i, name="add", arguments={"a": 1, "b": 1}) for i in ids)),
            finish_reason="tool_calls", model="scripted")

    provider = ScriptedProvider([answer(["", "x", "x"]), answer(["x", "y"]), "done"])
    agent = system.agents.create("ids", provider=provider, tools=["add"])
    response = await agent.run("go")
    assert response.output == "done" and len(response.tool_calls) == 5
    conversation = provider.calls[-1][0]
    asked = [c.id for m in conversation if m.role == "assistant" for c in m.tool_calls]
    answered = [m.tool_call_id for m in conversation if m.role == "tool"]
    assert asked == answered  # each result answers its own call
    assert len(set(asked)) == 5 and all(asked)
    assert asked[1] == "x" and asked[4] == "y"  # good ids are kept


# -- cancellation ---------------------------------------------------------------------------

async def test_a_run_cancelled_mid_tool_leaves_the_agent_ready(system: System) -> None:
    entered = asyncio.Event()

    @tool()
    async def slow() -> str:
        """Waits forever."""
        entered.set()
        await asyncio.Event().wait()
        return "never"

    system.tools.register(slow)
    provider = ScriptedProvider([{"tool_calls": [{"name": "slow", "arguments": {}}]},
                                 "unused", "again"])
    agent = system.agents.create("cancelled", provider=provider, tools=["slow"])
    task = asyncio.ensure_future(agent.run("go"))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert agent.state is AgentState.READY
    assert (await agent.run("go again")).output == "unused"


async def test_a_cancelled_initialization_does_not_leave_the_agent_initializing(
        system: System) -> None:
    entered = asyncio.Event()

    async def stalls(ctx: HookContext) -> None:
        entered.set()
        await asyncio.Event().wait()

    system.registry.register(P.AFTER_AGENT_INIT, stalls, name="stalls", timeout=3600)
    agent = system.agents.create("init", provider=ScriptedProvider(["hello"]))
    task = asyncio.ensure_future(agent.run("go"))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert agent.state is AgentState.ERROR
    system.registry.clear()
    assert (await agent.run("go")).output == "hello"  # it recovers on the next run
    assert agent.state is AgentState.READY


# -- pause, resume, shutdown, recover -------------------------------------------------------

async def test_a_refused_pause_or_resume_never_strands_the_agent(system: System) -> None:
    agent = system.agents.create("p", provider=ScriptedProvider(lambda m, t: "ok"))
    await agent.initialize()
    with pytest.raises(AgentStateError):
        await agent.resume()  # not paused: refused, nothing changes
    assert agent.state is AgentState.READY
    await agent.pause()
    with pytest.raises(AgentStateError):
        await agent.pause()  # already paused: refused
    await agent.resume()
    assert agent.state is AgentState.READY
    assert (await agent.run("q")).output == "ok"


class Gate:
    """A model that waits at each call until released (and can fail when released)."""

    def __init__(self, replies: list[Any]) -> None:
        self.replies = replies
        self.asked = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, messages: list[Message], tools: list[Any]) -> Any:
        self.asked.set()
        await self.release.wait()
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


async def test_pausing_a_run_holds_it_before_its_next_step(system: System) -> None:
    ran = spy_tool(system)
    gate = Gate([{"tool_calls": [{"name": "spy", "arguments": {}}]}, "finished"])
    agent = system.agents.create("held", provider=ScriptedProvider(gate), tools=["spy"])
    task = asyncio.ensure_future(agent.run("go"))
    await gate.asked.wait()
    await agent.pause()
    gate.release.set()
    await settle()
    assert ran == [] and not task.done()  # the tool waits for the resume
    assert agent.state is AgentState.PAUSED
    await agent.resume()
    response = await task
    assert response.output == "finished" and len(ran) == 1
    assert agent.state is AgentState.READY
    with pytest.raises(AgentStateError):
        await agent.resume()  # the run is over: nothing to resume, nothing changes
    assert agent.state is AgentState.READY


async def test_a_run_that_fails_while_paused_keeps_its_error(system: System) -> None:
    gate = Gate([RuntimeError("provider exploded"), "later"])
    agent = system.agents.create("fails", provider=ScriptedProvider(gate))
    task = asyncio.ensure_future(agent.run("go"))
    await gate.asked.wait()
    await agent.pause()
    gate.release.set()
    with pytest.raises(AgentError) as info:
        await task
    assert not isinstance(info.value, AgentStateError)
    assert "provider exploded" in str(info.value)
    assert agent.state is AgentState.PAUSED
    await agent.resume()
    assert agent.state is AgentState.READY
    assert (await agent.run("again")).output == "later"


async def test_shutting_down_during_a_run_stops_it(system: System) -> None:
    ran = spy_tool(system)
    gate = Gate([{"tool_calls": [{"name": "spy", "arguments": {}}]}, "never"])
    agent = system.agents.create("stopped", provider=ScriptedProvider(gate), tools=["spy"])
    task = asyncio.ensure_future(agent.run("go"))
    await gate.asked.wait()
    await agent.shutdown()
    gate.release.set()
    with pytest.raises(AgentError, match="shut down during its run"):
        await task
    assert ran == [] and agent.state is AgentState.TERMINATED


async def test_shutting_down_a_paused_run_wakes_and_stops_it(system: System) -> None:
    gate = Gate([{"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 2}}]}, "never"])
    agent = system.agents.create("parked", provider=ScriptedProvider(gate), tools=["add"])
    task = asyncio.ensure_future(agent.run("go"))
    await gate.asked.wait()
    await agent.pause()
    gate.release.set()
    await settle()
    await agent.shutdown()
    with pytest.raises(AgentError, match="shut down during its run"):
        await task
    assert agent.state is AgentState.TERMINATED


async def test_a_blocked_recovery_goes_back_to_error(system: System) -> None:
    agent = system.agents.create("r", provider=ScriptedProvider([]))
    with pytest.raises(AgentError):
        await agent.run("go")  # the script is empty: the run fails
    assert agent.state is AgentState.ERROR
    system.registry.register(
        RECOVER, lambda c: Cancel("not yet") if c.data["from"] == "recovering" else None,
        name="gate")
    with pytest.raises(OperationCancelled):
        await agent.recover()
    assert agent.state is AgentState.ERROR  # not stuck in recovering
    system.registry.clear()
    await agent.recover()
    assert agent.state is AgentState.READY
    await agent.shutdown()
    assert agent.state is AgentState.TERMINATED


async def test_concurrent_runs_of_one_agent_keep_their_conversations_apart(
        system: System) -> None:
    async def echo(messages: list[Message], tools: list[Any]) -> str:
        await asyncio.sleep(0)
        return f"{len(messages)}:{messages[-1].content}"

    agent = system.agents.create("shared", provider=ScriptedProvider(echo),
                                 instructions="be brief")
    responses = await asyncio.gather(*(agent.run(f"q{i}") for i in range(5)))
    assert [r.output for r in responses] == [f"2:q{i}" for i in range(5)]
    assert agent.state is AgentState.READY


@pytest.mark.parametrize("name", ["a" * 300, "bad name\n", "x..y", ".lead", "", None])
async def test_an_agent_name_that_cannot_name_its_events_is_refused_at_create(
        system: System, name: Any) -> None:
    # It was accepted, then failed at the first run with an event-type error, leaving the
    # agent half-initialized (and a lifecycle warning at shutdown), quoting it whole.
    with pytest.raises(InvalidValueError) as refused:
        system.agents.create(name, provider=ScriptedProvider(["hi"]))
    assert refused.value.hint and len(str(refused.value)) < 400
    assert system.agents.names() == []


async def test_a_dotted_agent_name_still_works(system: System) -> None:
    agent = system.agents.create("team.helper", provider=ScriptedProvider(["hi"]))
    assert (await agent.run("x")).output == "hi"
