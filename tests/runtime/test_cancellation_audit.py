"""Cancelling the task that runs an agent, a workflow, a tool call or a replay, at a precise
moment (events, never sleeps): the ``CancelledError`` reaches the canceller (a cancelled
``asyncio.timeout``/``wait_for`` gives its caller ``TimeoutError``), every ``started`` has
its end, the agent can run again, the run is recorded as cancelled, and nothing is left
behind (tasks, cache flights): the same call works afterwards and shutdown completes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest

from llmspell.events import UniversalEvent
from llmspell.hooks import Cache, Fork, ForkOperation, HookContext, HookPoint
from llmspell.runtime import AgentState, System, SystemConfig, tool
from llmspell.runtime.providers.base import Completion, Message, StreamDelta, ToolSpec
from llmspell.runtime.providers.scripted import ScriptedProvider
from llmspell.runtime.workflows import Branch, Conditional, Loop, Parallel, Sequential, Step
from tests.runtime.cancel_support import cancel_at, leftover_tasks, settle

GUARD = 30.0  # a hang guard only: every wait below ends on an event


@pytest.fixture
async def system() -> AsyncIterator[System]:
    sys = System(SystemConfig(store="memory", hook_events=True))
    await sys.start()
    yield sys
    await asyncio.wait_for(sys.shutdown(), GUARD)


@pytest.fixture
def events(system: System) -> list[UniversalEvent]:
    seen: list[UniversalEvent] = []
    system.bus.subscribe("**", seen.append)
    return seen


def types(events: Sequence[UniversalEvent], prefix: str) -> list[str]:
    return [e.event_type for e in events if e.event_type.startswith(prefix)]


def blocker() -> tuple[asyncio.Event, asyncio.Event]:
    """(entered, release)."""
    return asyncio.Event(), asyncio.Event()


# -- agents -------------------------------------------------------------------------------

class GatedProvider(ScriptedProvider):
    """A scripted provider whose next call (complete or stream) waits on a gate, and whose
    stream hands out one delta, then waits, then the rest."""

    def __init__(self, replies: list[Any]) -> None:
        super().__init__(replies)
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.gated = True

    async def complete(self, messages: Sequence[Message], **kw: Any) -> Completion:
        if self.gated:
            self.entered.set()
            await self.release.wait()
        return await super().complete(messages, **kw)

    async def stream(self, messages: Sequence[Message], *, tools: Sequence[ToolSpec] = (),
                     model: str | None = None, temperature: float | None = None,
                     max_tokens: int | None = None) -> AsyncIterator[StreamDelta | Completion]:
        completion = await super().complete(messages, tools=tools, model=model,
                                            temperature=temperature, max_tokens=max_tokens)
        yield StreamDelta(text="first ")
        if self.gated:
            self.entered.set()
            await self.release.wait()
        yield StreamDelta(text=completion.message.content or "")
        yield completion


def check_agent_after(system: System, events: list[UniversalEvent], name: str) -> None:
    agent = system.agents.get(name)
    assert agent.state is AgentState.READY
    assert "running" not in [e.data.get("to") for e in events
                             if e.event_type == f"agent.{name}.state_changed"][-1:]
    runs = system.runs.list(kind="agent", name=name)
    assert runs and runs[0].status == "cancelled"
    recording = system.runs.recording(runs[0].run_id)
    assert recording.ended is not None
    assert recording.ended.error is not None
    assert recording.ended.error["type"] == "CancelledError"
    # Each step ended: with an error, or with what its attempt produced.
    assert all(step.error is not None or step.output_from_attempt or step.output is not None
               for step in recording.steps.values())


def ends_paired(events: list[UniversalEvent], prefix: str) -> None:
    """Every ``<prefix>.started`` has a ``.completed``/``.failed``/``.cancelled``."""
    started = len([e for e in events if e.event_type.startswith(prefix)
                   and e.event_type.endswith(".started")])
    ended = len([e for e in events if e.event_type.startswith(prefix)
                 and e.event_type.rsplit(".", 1)[-1] in ("completed", "failed", "cancelled")])
    assert started == ended, types(events, prefix)


async def test_agent_cancelled_while_its_tool_runs(system: System,
                                                   events: list[UniversalEvent]) -> None:
    entered, release = blocker()

    @tool()
    async def slow() -> str:
        """Waits for the test."""
        entered.set()
        await release.wait()
        return "ok"

    system.tools.register(slow)
    provider = ScriptedProvider([{"tool_calls": [{"name": "slow", "arguments": {}}]}, "x",
                                 {"tool_calls": [{"name": "slow", "arguments": {}}]}, "y"])
    agent = system.agents.create("a1", provider=provider, tools=["slow"])
    before = set(asyncio.all_tasks())
    await cancel_at(agent.run("go"), entered)
    await settle()
    assert not leftover_tasks(before)
    ends_paired(events, "tool.")
    ends_paired(events, "model.")
    check_agent_after(system, events, "a1")
    release.set()
    assert (await asyncio.wait_for(agent.run("again"), GUARD)).output == "x"


async def test_agent_cancelled_while_its_model_call_runs(system: System,
                                                         events: list[UniversalEvent]) -> None:
    provider = GatedProvider(["first", "second"])
    agent = system.agents.create("a2", provider=provider)
    before = set(asyncio.all_tasks())
    await cancel_at(agent.run("go"), provider.entered)
    await settle()
    assert not leftover_tasks(before)
    ends_paired(events, "model.")
    assert types(events, "model.")[-1].endswith(".failed")
    check_agent_after(system, events, "a2")
    provider.gated = False
    # (A subscriber to "**" makes the call a stream, which took its reply first.)
    assert (await asyncio.wait_for(agent.run("again"), GUARD)).output in ("first", "second")


async def test_agent_wait_for_timeout_gives_timeout_error(system: System) -> None:
    provider = GatedProvider(["first", "second"])
    agent = system.agents.create("a3", provider=provider)

    async def caller() -> str:
        try:
            async with asyncio.timeout(0):  # expires at the first await that yields
                await agent.run("go")
        except TimeoutError:
            return "timeout"
        return "done"

    assert await asyncio.wait_for(caller(), GUARD) == "timeout"
    assert agent.state is AgentState.READY
    provider.gated = False
    assert (await agent.run("again")).output in ("first", "second")


async def test_agent_stream_consumer_cancelled_mid_deltas(system: System,
                                                          events: list[UniversalEvent]) -> None:
    provider = GatedProvider(["streamed answer", "next"])
    agent = system.agents.create("a4", provider=provider)
    got: list[Any] = []

    async def consume() -> None:
        async for item in agent.stream("go"):
            got.append(item)  # noqa: PERF401 - kept one by one: it is cancelled mid-way

    before = set(asyncio.all_tasks())
    await cancel_at(consume(), provider.entered)
    await settle()
    assert got and not leftover_tasks(before)
    ends_paired(events, "model.")
    check_agent_after(system, events, "a4")
    provider.gated = False
    items = [item async for item in agent.stream("again")]
    assert items[-1].output == "next"


async def test_agent_cancelled_in_an_async_before_hook(system: System,
                                                       events: list[UniversalEvent]) -> None:
    entered, release = blocker()

    async def waits(ctx: HookContext) -> None:
        entered.set()
        await release.wait()

    system.registry.register(HookPoint.BEFORE_AGENT_EXECUTION, waits, name="waits",
                             timeout=3600)
    agent = system.agents.create("a5", provider=ScriptedProvider(["one", "two"]))
    before = set(asyncio.all_tasks())
    await cancel_at(agent.run("go"), entered)
    await settle()
    assert not leftover_tasks(before)
    check_agent_after(system, events, "a5")
    release.set()
    assert (await asyncio.wait_for(agent.run("again"), GUARD)).output == "one"


# -- tools --------------------------------------------------------------------------------

async def test_tool_execute_cancelled(system: System, events: list[UniversalEvent]) -> None:
    entered, release = blocker()

    @tool()
    async def slow(x: int = 0) -> int:
        """Waits for the test."""
        entered.set()
        await release.wait()
        return x

    system.tools.register(slow)
    before = set(asyncio.all_tasks())
    await cancel_at(system.tools.execute("slow", {"x": 1}), entered)
    await settle()
    assert not leftover_tasks(before)
    assert types(events, "tool.slow.") == ["tool.slow.started", "tool.slow.failed"]
    assert events[-1].data["error_type"] == "CancelledError"
    release.set()
    assert await system.tools.execute("slow", {"x": 2}) == 2


async def test_tool_timeout_firing_with_a_cancellation_stays_a_cancellation(
        system: System, events: list[UniversalEvent]) -> None:
    @tool(timeout=0.001)
    async def racing() -> str:
        """Its timeout fires; the caller is cancelled at that moment too."""
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()  # the caller's cancellation, arriving with the timeout's
            raise
        return "never"

    system.tools.register(racing)
    task = asyncio.ensure_future(system.tools.execute("racing", {}))
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, GUARD)
    assert task.cancelled()
    assert types(events, "tool.racing.") == ["tool.racing.started", "tool.racing.failed"]


async def test_tool_wait_for_around_it_gives_timeout_error(system: System) -> None:
    entered, release = blocker()

    @tool()
    async def slow() -> str:
        """Waits for the test."""
        entered.set()
        await release.wait()
        return "ok"

    system.tools.register(slow)

    async def caller() -> str:
        try:
            async with asyncio.timeout(3600) as timer:
                call = asyncio.ensure_future(system.tools.execute("slow", {}))
                await entered.wait()
                timer.reschedule(asyncio.get_running_loop().time())
                await call
        except TimeoutError:
            return "timeout"
        return "done"

    # The timeout cancels the caller, not the call task: cancel that one by hand
    # after. What matters here is the caller sees TimeoutError.
    assert await asyncio.wait_for(caller(), GUARD) == "timeout"
    release.set()


async def test_a_coalesced_waiter_runs_when_the_leader_is_cancelled(
        system: System, events: list[UniversalEvent]) -> None:
    entered = asyncio.Event()
    ran: list[int] = []

    @tool()
    async def costly(x: int) -> int:
        """Slow the first time."""
        ran.append(x)
        if len(ran) == 1:
            entered.set()
            await asyncio.Event().wait()  # the leader never finishes by itself
        return x * 10

    def cache_it(ctx: HookContext) -> Cache:
        return Cache(key=f"costly:{ctx.data['params']['x']}")

    system.tools.register(costly)
    system.tools.cache.coalesce = True
    system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, cache_it, name="cache_it")
    leader = asyncio.ensure_future(system.tools.execute("costly", {"x": 1}))
    await asyncio.wait_for(entered.wait(), GUARD)
    waiters = [asyncio.ensure_future(system.tools.execute("costly", {"x": 1}))
               for _ in range(2)]
    await settle()
    assert system.tools.cache.waiting == 2
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert await asyncio.wait_for(asyncio.gather(*waiters), GUARD) == [10, 10]
    assert system.tools.cache.in_flight == 0 and system.tools.cache.waiting == 0
    assert await system.tools.execute("costly", {"x": 1}) == 10


# -- workflows ----------------------------------------------------------------------------

def wf_events(events: list[UniversalEvent], name: str) -> list[tuple[str, Any]]:
    prefix = f"workflow.{name}."
    return [(e.event_type[len(prefix):], e.data.get("step")) for e in events
            if e.event_type.startswith(prefix)]


def stages_paired(seen: list[tuple[str, Any]]) -> None:
    open_steps: dict[Any, int] = {}
    for kind, step in seen:
        if kind == "stage_started":
            open_steps[step] = open_steps.get(step, 0) + 1
        elif kind in ("stage_completed", "stage_failed", "stage_cancelled"):
            open_steps[step] -= 1
    assert not any(open_steps.values()), seen
    assert seen[0][0] == "started" and seen[-1][0] == "cancelled", seen


def gate_fn(entered: asyncio.Event) -> Callable[[Any], Awaitable[str]]:
    async def fn(ctx: Any) -> str:
        entered.set()
        await asyncio.Event().wait()
        return "never"
    return fn


@pytest.mark.parametrize("pattern", ["sequential", "conditional", "loop", "parallel"])
async def test_workflow_cancelled_mid_step(system: System, events: list[UniversalEvent],
                                           pattern: str) -> None:
    entered = asyncio.Event()
    half_done = asyncio.Event()

    def done_fn(ctx: Any) -> str:
        ctx.state["done"] = True
        half_done.set()
        return "done"

    gate = Step("gate", fn=gate_fn(entered))
    first = Step("first", fn=done_fn)
    wf: Any
    if pattern == "sequential":
        wf = Sequential("w", [first, gate])
    elif pattern == "conditional":
        wf = Conditional("w", branches=[Branch("yes", lambda ctx: True, [first, gate])])
    elif pattern == "loop":
        wf = Loop("w", body=[first, gate], over=[1, 2])
    else:
        wf = Parallel("w", branches=[[first], [gate]], fail_fast=False)
    before = set(asyncio.all_tasks())
    await cancel_at(wf.run(system, None), entered)
    await settle()
    assert half_done.is_set()
    assert not leftover_tasks(before)
    seen = wf_events(events, "w")
    stages_paired(seen)
    assert ("stage_cancelled", "gate") in seen
    # It can run again (the gate now passes).
    again = Sequential("w2", [Step("first", fn=done_fn)])
    assert (await again.run(system)).status == "completed"


async def test_parallel_max_concurrency_cancelled_with_branches_done(
        system: System, events: list[UniversalEvent]) -> None:
    entered = asyncio.Event()
    wf = Parallel("p", branches=[[Step("a", fn=lambda ctx: "A")],
                                 [Step("b", fn=lambda ctx: "B")],
                                 [Step("gate", fn=gate_fn(entered))],
                                 [Step("d", fn=lambda ctx: "D")]],
                  max_concurrency=2)
    before = set(asyncio.all_tasks())
    await cancel_at(wf.run(system), entered)
    await settle()
    assert not leftover_tasks(before)
    stages_paired(wf_events(events, "p"))


# -- replays ------------------------------------------------------------------------------

async def test_replay_cancelled_midway(system: System, events: list[UniversalEvent]) -> None:
    @tool()
    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    system.tools.register(add)
    provider = ScriptedProvider([{"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 2}}]},
                                 "three"])
    agent = system.agents.create("r1", provider=provider, tools=["add"])
    assert (await agent.run("go")).output == "three"
    run_id = system.runs.list(kind="agent", name="r1")[0].run_id
    entered, release = blocker()

    async def waits(ctx: HookContext) -> None:
        entered.set()
        await release.wait()

    before = set(asyncio.all_tasks())
    await cancel_at(system.runs.replay(run_id, mode="what-if",
                                       hooks=[(HookPoint.BEFORE_TOOL_EXECUTION, waits)]),
                    entered)
    await settle()
    assert not leftover_tasks(before)
    replays = [r for r in system.runs.list(kind="agent", name="r1") if r.replay_of]
    assert replays and replays[0].status == "cancelled"
    result = await asyncio.wait_for(system.runs.replay(run_id), GUARD)
    assert result.status == "completed" and result.output == "three"
    assert agent.state is AgentState.READY


async def test_a_call_cancelled_while_its_forks_run_does_not_leave_its_operation_running(
        system: System, events: list[UniversalEvent]) -> None:
    main_entered = asyncio.Event()
    fork_entered = asyncio.Event()
    main_ended: list[str] = []

    @tool()
    async def main_op() -> str:
        """The main operation: runs until cancelled."""
        main_entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            main_ended.append("cancelled")
            raise
        return "never"

    @tool()
    async def shadow() -> str:
        """The forked operation: waits too."""
        fork_entered.set()
        await asyncio.Event().wait()
        return "never"

    def forks(ctx: HookContext) -> Fork | None:
        if ctx.data["tool"] == "main_op":
            return Fork((ForkOperation(type="tool", target="shadow"),))
        return None

    system.tools.register_all([main_op, shadow])
    system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, forks, name="forks")
    before = set(asyncio.all_tasks())
    task = asyncio.ensure_future(system.tools.execute("main_op", {}))
    await asyncio.wait_for(asyncio.gather(main_entered.wait(), fork_entered.wait()), GUARD)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, GUARD)
    await settle()
    assert main_ended == ["cancelled"]  # the main operation was cancelled with its caller
    assert not leftover_tasks(before)
    ends_paired(events, "tool.")


async def test_closing_an_agent_stream_keeps_the_closer_s_own_cancellation(
        system: System) -> None:
    entered, cleanup_started, cleanup_release = asyncio.Event(), asyncio.Event(), asyncio.Event()

    @tool()
    async def careful() -> str:
        """Cleans up (slowly) when cancelled."""
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cleanup_started.set()
            await cleanup_release.wait()
            raise
        return "never"

    system.tools.register(careful)
    provider = ScriptedProvider([{"tool_calls": [{"name": "careful", "arguments": {}}]},
                                 "done", "again"])
    agent = system.agents.create("s1", provider=provider, tools=["careful"])
    after_close: list[bool] = []

    async def consume() -> None:
        stream = agent.stream("go")
        await stream.__anext__()  # the tool call's delta
        await entered.wait()
        await stream.aclose()  # cancels the run; its tool cleans up
        after_close.append(True)

    task = asyncio.ensure_future(consume())
    await asyncio.wait_for(cleanup_started.wait(), GUARD)
    task.cancel()  # the closer is cancelled while it waits for the run to end
    await settle()
    cleanup_release.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, GUARD)
    assert after_close == []
    await settle()
    assert agent.state is AgentState.READY
    assert (await agent.run("go")).output == "done"


async def test_a_cancelled_checkpointed_parallel_resumes_the_branches_not_done(
        system: System) -> None:
    entered = asyncio.Event()
    gated = [True]
    ran: list[str] = []

    async def gate(ctx: Any) -> str:
        ran.append("gate")
        if gated[0]:
            entered.set()
            await asyncio.Event().wait()
        return "G"

    def done(ctx: Any) -> str:
        ran.append("a")
        return "A"

    wf = Parallel("pc", branches=[Branch("left", steps=[Step("a", fn=done)]),
                                  Branch("right", steps=[Step("gate", fn=gate)])],
                  checkpoint="step")
    await cancel_at(wf.run(system, workflow_id="pc-1"), entered)
    gated[0] = False
    result = await asyncio.wait_for(wf.run(system, workflow_id="pc-1", resume=True), GUARD)
    assert result.status == "completed"
    assert ran == ["a", "gate", "gate"]  # the branch done is not run again


async def test_an_agent_step_cancelled_leaves_the_agent_ready(
        system: System, events: list[UniversalEvent]) -> None:
    provider = GatedProvider(["one", "two"])
    system.agents.create("inner", provider=provider)
    wf = Sequential("wa", [Step("ask", agent="inner", input="hi")])
    await cancel_at(wf.run(system), provider.entered)
    await settle()
    stages_paired(wf_events(events, "wa"))
    ends_paired(events, "model.")
    assert system.agents.get("inner").state is AgentState.READY
    provider.gated = False
    assert (await wf.run(system)).status == "completed"
