"""Replay against recent features: a run recorded at the default level (``decisions``) on a
SQLite store replays exactly (no divergence, the same output) when it forks, coalesces
identical calls, carries a value no event can hold, hands the user's context to derived
calls, hits an agent's tool-call limits, rolls a workflow step back, ends a loop at
max_iterations, runs Parallel branches, or is denied by an open circuit breaker; a what-if
change diverges at the step it changes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llmspell.hooks import (
    Cache,
    Cancel,
    Fork,
    ForkOperation,
    HookContext,
    HookPoint,
    Modified,
)
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.providers.scripted import ScriptedProvider
from llmspell.runtime.runs import ReplayResult
from llmspell.runtime.workflows import Loop, Parallel, Sequential, Step

P = HookPoint
CALLS: list[tuple[str, Any]] = []


@tool()
def probe(x: int) -> int:
    """Ten times x."""
    CALLS.append(("probe", x))
    return x * 10


@tool()
async def slow_echo(text: str) -> dict[str, Any]:
    """Echo text after a pause (long enough for an identical call to join it)."""
    CALLS.append(("slow_echo", text))
    for _ in range(5):
        await asyncio.sleep(0)
    return {"echo": text}


@tool()
def big(n: int) -> str:
    """A text of n characters."""
    CALLS.append(("big", n))
    return "x" * n


@tool()
def odd_text(n: int) -> str:
    """A text with a lone surrogate in it (half of a UTF-16 pair)."""
    CALLS.append(("odd_text", n))
    return "caf\udce9 " * n


@tool()
def whoami(note: str) -> str:
    """Echo a note."""
    CALLS.append(("whoami", note))
    return f"note: {note}"


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[System]:
    CALLS.clear()
    sys = System(SystemConfig(data_dir=str(tmp_path)))
    await sys.start()
    sys.tools.register_all([probe, slow_echo, big, odd_text, whoami])
    yield sys
    await sys.shutdown()


def never(messages: Any, tools: Any) -> Any:
    raise AssertionError("a replay called the model provider")


def offline(system: System, name: str) -> None:
    system.agents.get(name).provider = ScriptedProvider(never)


def exact(result: ReplayResult, output: Any) -> None:
    assert result.status != "completed" or result.error is None
    assert not result.diverged, [d.describe() for d in result.divergences]
    assert result.output == output


def newest(system: System) -> str:
    return system.runs.list(limit=1)[0].run_id


# -- forks --------------------------------------------------------------------------------
def fork_every_probe(ctx: HookContext) -> Fork | None:
    if ctx.data.get("tool") != "probe":
        return None
    x = ctx.data["params"]["x"]
    return Fork((ForkOperation(type="tool", target="probe", parameters={"x": x + 1}),
                 ForkOperation(type="tool", target="probe", parameters={"x": x + 2})))


async def test_a_run_whose_forks_do_not_fork_again_replays_exactly(system: System) -> None:
    system.registry.register(P.BEFORE_TOOL_EXECUTION, fork_every_probe, name="fork-all")
    system.agents.create("forker", tools=["probe"], provider=ScriptedProvider([
        {"tool_calls": [{"name": "probe", "arguments": {"x": 1}}]}, "done"]))
    await system.agents.get("forker").run("go")
    assert sorted(CALLS) == [("probe", 1), ("probe", 2), ("probe", 3)]
    run_id = newest(system)
    offline(system, "forker")
    CALLS.clear()
    result = await system.runs.replay(run_id)
    exact(result, "done")
    assert CALLS == [] and result.served == {"recording": 5}
    changed = await system.runs.replay(run_id, mode="what-if", remove_hooks=["fork-all"])
    first = changed.first_divergence
    assert first is not None and first.what == "decision" and first.name == "probe"
    assert first.key == "agent:forker#0|tool:probe#0" and first.step == 3
    assert (first.expected, first.got) == ("fork", "not dispatched")
    assert [d.what for d in changed.divergences] == ["decision"]  # the forks: not missing


# -- coalescing ---------------------------------------------------------------------------
def cache_echo(ctx: HookContext) -> Cache | None:
    if ctx.data.get("tool") != "slow_echo":
        return None
    return Cache(key=f"echo:{ctx.data['params']['text']}")


async def twice(system: System) -> Any:
    async def op(value: Any) -> Any:
        first, second = await asyncio.gather(
            system.tools.execute("slow_echo", {"text": value}),
            system.tools.execute("slow_echo", {"text": value}))
        return [first, second]
    return op


async def test_a_run_with_coalesced_calls_replays_exactly(system: System) -> None:
    system.registry.register(P.BEFORE_TOOL_EXECUTION, cache_echo, name="cache-echo")
    op = await twice(system)
    async with system.runs.start("job", "twice", "hi") as run:
        run.output = await op("hi")
    assert CALLS == [("slow_echo", "hi")] and system.tools.cache.coalesced == 1
    CALLS.clear()
    # As in a fresh process: nothing cached, so the replay leads and joins as the run did.
    system.tools.cache.clear()
    result = await system.runs.replay(run.run_id, operation=op)
    exact(result, [{"echo": "hi"}, {"echo": "hi"}])
    assert CALLS == [] and result.served == {"recording": 1}
    # Removing the cache hook: the second call is no longer served from the first.
    system.tools.cache.clear()
    changed = await system.runs.replay(run.run_id, mode="what-if", after="simulate",
                                       remove_hooks=["cache-echo"], operation=op)
    first = changed.first_divergence
    assert first is not None and first.what == "decision" and first.name == "slow_echo"
    assert first.key == "tool:slow_echo#0"
    assert (first.expected, first.got) == ("cache", "not dispatched")


# -- withheld values ----------------------------------------------------------------------
async def test_a_run_with_a_lone_surrogate_in_a_tool_result_replays_exactly(
        system: System) -> None:
    system.agents.create("odd", tools=["odd_text"], provider=ScriptedProvider([
        {"tool_calls": [{"name": "odd_text", "arguments": {"n": 2}}]}, "read it"]))
    await system.agents.get("odd").run("go")
    run_id = newest(system)
    offline(system, "odd")
    result = await system.runs.replay(run_id)
    exact(result, "read it")


async def test_a_run_with_a_tool_result_too_large_for_the_store_replays(
        system: System) -> None:
    system.agents.create("bulky", tools=["big"], provider=ScriptedProvider([
        {"tool_calls": [{"name": "big", "arguments": {"n": 2_000_000}}]}, "long"]))
    await system.agents.get("bulky").run("go")
    run_id = newest(system)
    recording = system.runs.recording(run_id)
    assert any(s.results_withheld for s in recording.steps.values())
    offline(system, "bulky")
    result = await system.runs.replay(run_id)
    exact(result, "long")


# -- the user's context reaching derived calls -------------------------------------------
def name_the_user(ctx: HookContext) -> None:
    ctx.metadata["user"] = "alice"


def tag_with_user(ctx: HookContext) -> Modified | None:
    user = ctx.metadata.get("user")
    if ctx.data.get("tool") != "whoami" or user is None:
        return None
    return Modified({"params": {"note": f"{ctx.data['params']['note']} for {user}"}})


async def test_a_run_whose_calls_see_the_users_context_replays_exactly(
        system: System) -> None:
    system.registry.register(P.BEFORE_AGENT_EXECUTION, name_the_user, name="user")
    system.registry.register(P.BEFORE_TOOL_EXECUTION, tag_with_user, name="tag")

    @tool()
    async def delegate(task: str) -> str:
        """Ask the helper agent."""
        return (await system.agents.get("helper").run(task)).output

    system.tools.register(delegate)
    system.agents.create("helper", tools=["whoami"], provider=ScriptedProvider([
        {"tool_calls": [{"name": "whoami", "arguments": {"note": "hi"}}]}, "helped"]))
    system.agents.create("boss", tools=["delegate", "whoami"], provider=ScriptedProvider([
        {"tool_calls": [{"name": "delegate", "arguments": {"task": "help"}},
                        {"name": "whoami", "arguments": {"note": "boss"}}]}, "boss done"]))
    await system.agents.get("boss").run("go")
    assert CALLS == [("whoami", "hi for alice"), ("whoami", "boss for alice")]
    run_id = newest(system)
    offline(system, "boss")
    offline(system, "helper")
    CALLS.clear()
    result = await system.runs.replay(run_id)
    exact(result, "boss done")
    assert CALLS == []
    # Without the hook naming the user, the boss's own whoami call is not tagged: the
    # divergence is that call's decision (the delegate's result is served, as recorded).
    changed = await system.runs.replay(run_id, mode="what-if", after="simulate",
                                       remove_hooks=["user"])
    first = changed.first_divergence
    assert first is not None and first.what == "decision" and first.hook == "tag"
    assert first.key == "agent:boss#0|tool:whoami#0" and CALLS == []


# -- agents' limits -----------------------------------------------------------------------
async def test_a_run_at_the_agents_tool_call_limits_replays_exactly(system: System) -> None:
    system.agents.create("limited", tools=["big", "probe"], max_tool_calls=2,
                         max_tool_result_chars=40, max_turns=3, provider=ScriptedProvider([
                             {"tool_calls": [
                                 {"name": "big", "arguments": {"n": 100}},
                                 {"name": "probe", "arguments": "{not json"},
                                 {"name": "probe", "arguments": {"x": 2}}]},
                             {"tool_calls": [{"name": "probe", "arguments": {"x": 3}}]},
                             {"tool_calls": [{"name": "probe", "arguments": {"x": 4}}]}]))
    response = await system.agents.get("limited").run("go")
    assert response.stop_reason == "turn_limit" and len(response.unrun_tool_calls) == 1
    assert sorted(CALLS) == [("big", 100), ("probe", 3)]
    run_id = newest(system)
    offline(system, "limited")
    CALLS.clear()
    result = await system.runs.replay(run_id)
    exact(result, response.output)
    assert CALLS == []
    # An edited tool result changes what the model reads next: the next model call.
    recording = system.runs.recording(run_id)
    big_step = next(s for s in recording.ordered if s.name == "big")
    changed = await system.runs.replay(run_id, mode="what-if", after="simulate",
                                       edits={big_step.index: "y" * 100})
    assert [d.what for d in changed.divergences[:2]] == ["edited", "input"]
    assert changed.divergences[1].kind == "model"
    assert changed.divergences[1].step == big_step.index + 1


# -- workflows ----------------------------------------------------------------------------
async def test_a_workflow_with_a_rolled_back_retried_step_replays_exactly(
        system: System) -> None:
    attempts: list[int] = []

    def flaky(ctx: Any) -> str:
        ctx.state["touched"] = len(attempts)
        attempts.append(1)
        if len(attempts) % 2 == 1:
            raise RuntimeError("first try fails")
        return "ok"

    flow = Sequential("careful", [
        Step("first", tool="probe", params={"x": 1}),
        Step("flaky", fn=flaky, on_error="retry", retries=1, backoff=0),
        Step("last", tool="probe", params={"x": 2})], rollback=True)
    result = await flow.run(system, "in")
    run_id = newest(system)
    CALLS.clear()
    replayed = await system.runs.replay(run_id, operation=flow)
    exact(replayed, result.outputs)
    assert CALLS == []


async def test_a_loop_failing_at_max_iterations_replays_exactly(system: System) -> None:
    flow = Loop("endless", [Step("p", tool="probe", params={"x": "${item}"})],
                over=[1, 2, 3], max_iterations=2, on_max_iterations="fail")
    with pytest.raises(Exception, match="max_iterations"):
        await flow.run(system, None)
    run_id = newest(system)
    assert system.runs.get(run_id).status == "failed"
    CALLS.clear()
    replayed = await system.runs.replay(run_id, operation=flow)
    assert replayed.status == "failed" and "max_iterations" in str(replayed.error)
    assert not replayed.diverged, [d.describe() for d in replayed.divergences]
    assert CALLS == []


async def test_a_parallel_workflow_replays_exactly(system: System) -> None:
    async def pause(ctx: Any) -> str:
        for _ in range(3):
            await asyncio.sleep(0)
        return "paused"

    flow = Parallel("fan", [
        [Step("a1", tool="slow_echo", params={"text": "a"}),
         Step("a2", tool="probe", params={"x": 1})],
        [Step("b1", fn=pause), Step("b2", tool="probe", params={"x": 2})]])
    result = await flow.run(system, None)
    run_id = newest(system)
    CALLS.clear()
    replayed = await system.runs.replay(run_id, operation=flow)
    exact(replayed, result.outputs)
    assert CALLS == []


# -- cancelled calls, open breakers --------------------------------------------------------
async def test_a_run_denied_by_an_open_breaker_replays_exactly(system: System) -> None:
    def outage(ctx: HookContext) -> Cancel | None:
        if ctx.data.get("tool") != "probe":
            return None
        return Cancel("breaker open: the ledger is down", breaker="ledger")

    system.registry.register(P.BEFORE_TOOL_EXECUTION, outage, name="ledger")
    system.agents.create("denied", tools=["probe"], provider=ScriptedProvider([
        {"tool_calls": [{"name": "probe", "arguments": {"x": 1}}]}, "could not"]))
    await system.agents.get("denied").run("go")
    run_id = newest(system)
    offline(system, "denied")
    result = await system.runs.replay(run_id)
    exact(result, "could not")


def cancels_hang(system: System, yields: int) -> Any:
    """An operation that starts the ``hang`` tool, lets the loop run ``yields`` times,
    cancels the call and answers "cancelled" (or "ran", had it finished)."""
    async def op(value: Any) -> Any:
        task = asyncio.ensure_future(system.tools.execute("hang", {"x": 1}))
        for _ in range(yields):
            await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        return "ran"
    return op


async def test_a_run_with_a_cancelled_tool_call_replays_exactly(system: System) -> None:
    started = asyncio.Event()

    @tool()
    async def hang(x: int) -> int:
        """Never ends on its own."""
        started.set()
        await asyncio.Event().wait()
        return x

    system.tools.register(hang)

    op = cancels_hang(system, yields=2)
    async with system.runs.start("job", "cancel", None) as run:
        run.output = await op(None)
    assert run.output == "cancelled"
    result = await system.runs.replay(run.run_id, operation=op)
    exact(result, "cancelled")
