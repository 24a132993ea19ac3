"""The pydantic-ai adapter under hostile use: forks (model shadows never reach a stream,
agent forks are governed child runs and cannot loop), redirects (a tool redirect runs the
target's hooks and ends, an agent redirect loop ends), caching (a redirected answer never
lands under the redirecting call's key, JSON-unsafe params are not aliased), and runs that
end badly (arguments pydantic-ai rejects, hooks raising at every point, a run cancelled
mid-tool, output validators, usage limits, concurrent runs of one agent)."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic_ai import Agent, ModelRetry
from pydantic_ai.exceptions import ModelHTTPError, UnexpectedModelBehavior, UsageLimitExceeded
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import UsageLimits

from llmspell.errors import AgentCycleError, HookExecutionError, ToolExecutionError
from llmspell.hooks import HookContext, HookPoint
from llmspell.hooks.result import (
    Cache,
    Fork,
    ForkOperation,
    Modified,
    Redirect,
    Replace,
    Retry,
)
from llmspell.integrations.pydantic_ai import LlmspellCapability
from llmspell.runtime.system import System
from tests.integrations.conftest_pydantic_ai import Calls, calc_agent, capture, types

P = HookPoint
ADD = [[("add", {"a": 2, "b": 3})]]


def hook(system: System, point: str, fn: Any, name: str = "test-hook", **options: Any) -> None:
    system.registry.register(point, fn, name=name, **options)


def saying(text: str, name: str, asked: list[str] | None = None) -> FunctionModel:
    """A model that answers ``text`` (streamed word by word); ``asked`` collects the user
    prompts it was sent."""

    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if asked is not None:
            asked.extend(str(p.content) for m in messages if isinstance(m, ModelRequest)
                         for p in m.parts if isinstance(p, UserPromptPart))
        return ModelResponse(parts=[TextPart(text)])

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        for word in text.split(" "):
            yield word + " "

    return FunctionModel(answer, stream_function=stream, model_name=name)


async def finished(awaitable: Any) -> Any:
    """``awaitable``'s result; a guard so a loop the adapter failed to bound fails the test
    instead of hanging it."""
    return await asyncio.wait_for(awaitable, 60)


# -- (a) a model Fork (shadow) never reaches the consumer's stream ------------------------------

async def test_a_model_shadow_never_reaches_any_stream(system: System) -> None:
    for point in (P.BEFORE_MODEL_CALL, P.AFTER_MODEL_CALL):
        hook(system, point, lambda ctx: Fork((ForkOperation(type="model", target="shadow"),)),
             name=f"shadow-{point}")
    shadow = saying("SHADOW TOKENS", "shadow-model")
    agent: Agent[None, str] = Agent(saying("main answer", "main"), name="a", capabilities=[
        LlmspellCapability(system, models={"shadow": shadow})])
    events = capture(system, "model.**")

    async with agent.run_stream("hi") as result:
        pieces = [p async for p in result.stream_text(delta=True)]
    assert "SHADOW" not in "".join(pieces) and "main" in "".join(pieces)

    async with agent.run_stream_events("hi") as stream:
        shown = [repr(e) async for e in stream]
    assert not any("SHADOW" in s for s in shown) and any("main" in s for s in shown)

    async with agent.iter("hi") as run:
        async for node in run:
            if Agent.is_model_request_node(node):
                async with node.stream(run.ctx) as parts:
                    assert not [e async for e in parts if "SHADOW" in repr(e)]
    assert run.result is not None and run.result.output == "main answer "
    await system.bus.drain()
    assert types(events, "model.function.shadow").count("model.function.shadow") == 6


# -- (b) agent Forks: governed child runs, isolated, bounded ------------------------------------

async def test_an_agent_fork_of_an_ungoverned_agent_is_a_governed_child_run(
        system: System) -> None:
    seen: list[tuple[str, Any]] = []

    def fork(ctx: HookContext) -> Any:
        seen.append((ctx.data["agent"], ctx.data["params"]["input"]))
        return Fork((ForkOperation(type="agent", target="side"),)) \
            if ctx.data["agent"] == "main" else None

    hook(system, P.BEFORE_AGENT_EXECUTION, fork)
    side: Agent[None, str] = Agent(saying("side answer", "side"), name="side")  # no capability
    asked: list[str] = []
    main: Agent[None, str] = Agent(saying("main answer", "main", asked), name="main",
                                   capabilities=[LlmspellCapability(system,
                                                                    agents={"side": side})])
    events = capture(system, "agent.**")
    assert (await finished(main.run("the prompt"))).output == "main answer"
    await system.bus.drain()
    # The fork ran through the adapter: its agent point (with the run's prompt), its events
    assert sorted(seen) == [("main", "the prompt"), ("side", "the prompt")]
    assert sorted(types(events)) == ["agent.main.completed", "agent.main.started",
                                     "agent.side.completed", "agent.side.started"]
    runs = system.runs.list(include_children=True)
    by_name = {r.name: r for r in runs}
    assert by_name["side"].parent_run_id == by_name["main"].run_id
    assert by_name["side"].status == by_name["main"].status == "completed"
    assert asked == ["the prompt"]  # the parent was not disturbed


async def test_an_agent_fork_from_inside_a_tool_step_has_its_own_state(system: System) -> None:
    turns: list[tuple[str, int]] = []

    def at_model(ctx: HookContext) -> Any:
        turns.append((ctx.data["caller"]["name"], ctx.data["turn"]))
        return None

    hook(system, P.BEFORE_MODEL_CALL, at_model, name="turns")
    hook(system, P.BEFORE_TOOL_EXECUTION, lambda ctx: Fork((ForkOperation(
        type="agent", target="side", parameters={"input": "side work"}),)), name="fork")
    side = calc_agent(system, ADD, name="side")
    main = calc_agent(system, ADD, name="main", agents={"side": side})
    assert (await finished(main.run("go"))).output == "done: add=5"
    # Each run counts its own turns: the fork did not continue the main run's
    assert sorted(t for t in turns if t[0] == "main") == [("main", 1), ("main", 2)]
    assert sorted(t for t in turns if t[0] == "side") == [("side", 1), ("side", 2)]


async def test_an_agent_forking_itself_is_bounded(system: System) -> None:
    runs: list[str] = []

    def fork(ctx: HookContext) -> Any:
        runs.append(ctx.data["agent"])
        # (stops by itself after 8, so an unbounded adapter fails the test, not hangs it)
        return Fork((ForkOperation(type="agent", target="me"),)) if len(runs) < 8 else None

    hook(system, P.BEFORE_AGENT_EXECUTION, fork)
    capability = LlmspellCapability(system)
    agent: Agent[None, str] = Agent(saying("answer", "m"), name="loop",
                                    capabilities=[capability])
    capability.agents["me"] = agent
    assert (await finished(agent.run("go"))).output == "answer"
    await system.bus.drain()
    assert runs == ["loop", "loop"]  # the run, its fork; the fork's own fork is refused


async def test_an_agent_redirect_loop_ends_with_agent_cycle_error(system: System) -> None:
    redirects: list[str] = []

    def redirect(ctx: HookContext) -> Any:
        redirects.append(ctx.data["agent"])  # (gives up after 8: see the test above)
        return Redirect("me") if len(redirects) < 8 else None

    hook(system, P.BEFORE_AGENT_EXECUTION, redirect)
    capability = LlmspellCapability(system)
    agent: Agent[None, str] = Agent(saying("answer", "m"), name="loop",
                                    capabilities=[capability])
    capability.agents["me"] = agent
    with pytest.raises(AgentCycleError, match="'me'"):
        await finished(agent.run("go"))
    assert len(redirects) == 2


# -- (c) tool Redirect: the target's own hooks, a bounded loop ---------------------------------

def _tools(system: System) -> None:
    def echo(text: str = "") -> str:
        """Echo."""
        return f"echo:{text}"

    def echo2(text: str = "") -> str:
        """Echo again."""
        return f"echo2:{text}"

    system.tools.register(echo)
    system.tools.register(echo2)


async def test_a_redirected_tool_call_runs_the_targets_hooks(system: System) -> None:
    _tools(system)
    seen: list[str] = []

    def before(ctx: HookContext) -> Any:
        seen.append(ctx.data["tool"])
        if ctx.data["tool"] == "shout":
            return Redirect("echo")
        return Modified({"params": {"text": "rewritten"}}) if ctx.data["tool"] == "echo" \
            else None

    hook(system, P.BEFORE_TOOL_EXECUTION, before)
    hook(system, P.AFTER_TOOL_EXECUTION, lambda ctx: Replace(ctx.data["result"] + "+after")
         if ctx.data["tool"] == "echo" else None, name="after")
    calls = Calls()
    agent = calc_agent(system, [[("shout", {"text": "hi"})]], calls=calls)
    assert (await finished(agent.run("go"))).output == "done: shout=echo:rewritten+after"
    assert seen == ["shout", "echo"] and calls.count("shout") == 0


async def test_a_tool_redirect_loop_ends_the_run_once(system: System) -> None:
    _tools(system)
    hops = {"shout": "echo", "echo": "echo2", "echo2": "echo"}
    hook(system, P.BEFORE_TOOL_EXECUTION, lambda ctx: Redirect(hops[ctx.data["tool"]]))
    events = capture(system)
    with pytest.raises(ToolExecutionError, match="redirects went"):
        await finished(calc_agent(system, [[("shout", {"text": "hi"})]]).run("go"))
    await system.bus.drain()
    assert types(events, "agent.") == ["agent.calc.started", "agent.calc.failed"]
    assert types(events, "run.").count("run.failed") == 1


# -- (d) caching: no parent keys, JSON-unsafe params --------------------------------------------

@pytest.mark.parametrize("where", ["before", "after", "error"])
async def test_a_redirected_model_answer_is_not_cached_as_the_requests(
        system: System, where: str) -> None:
    state = {"redirect": True}
    backup = saying("backup answer", "backup")
    asked: list[Any] = []
    down = ModelHTTPError(500, "gpt-4o", "down")
    fail = (lambda n: down if n == 1 else None) if where == "error" else None
    agent = calc_agent(system, [], seen=asked, fail=fail, models={"backup": backup})
    hook(system, P.BEFORE_MODEL_CALL, lambda ctx: Cache("same", ttl=60)
         if ctx.data["model"] == "gpt-4o" else None, name="cache")
    point = {"before": P.BEFORE_MODEL_CALL, "after": P.AFTER_MODEL_CALL,
             "error": P.MODEL_CALL_ERROR}[where]
    hook(system, point, lambda ctx: Redirect("backup")
         if state["redirect"] and ctx.data["model"] == "gpt-4o" else None, name="redirect")
    assert (await finished(agent.run("go"))).output == "backup answer"
    state["redirect"] = False
    # The backup's answer was not stored as gpt-4o's: gpt-4o answers this time
    assert (await finished(agent.run("go"))).output == "done: "


async def test_a_redirected_run_is_not_cached_as_the_runs_output(system: System) -> None:
    state = {"first": True}
    helper: Agent[None, str] = Agent(saying("helper answer", "helper"), name="helper")
    down = ModelHTTPError(500, "gpt-4o", "down")
    agent = calc_agent(system, [], agents={"helper": helper},
                       fail=lambda n: down if state["first"] else None)
    hook(system, P.BEFORE_AGENT_EXECUTION, lambda ctx: Cache("run", ttl=60), name="cache")
    hook(system, P.AGENT_ERROR, lambda ctx: Redirect("helper"), name="fallback")
    assert (await finished(agent.run("go"))).output == "helper answer"
    state["first"] = False
    assert (await finished(agent.run("go"))).output == "done: "


@pytest.mark.parametrize(("odd", "plain"), [
    (datetime.date(2024, 1, 1), "2024-01-01"),
    (b"ab", "b'ab'"),
    ({1}, "{1}"),
    ((1, 2), [1, 2]),
    (float("nan"), "NaN"),
], ids=["date", "bytes", "set", "tuple", "nan"])
async def test_json_unsafe_params_never_share_a_cached_answer(
        system: System, odd: Any, plain: Any) -> None:
    tags = [odd, plain]
    asked: list[Any] = []

    def tag(ctx: HookContext) -> Any:
        return Modified({"params": {**ctx.data["params"], "tag": tags.pop(0)}})

    hook(system, P.BEFORE_MODEL_CALL, tag, name="tag")
    hook(system, P.AFTER_MODEL_CALL, lambda ctx: Cache("answer", ttl=60), name="cache")
    agent = calc_agent(system, [], seen=asked)
    await finished(agent.run("go"))
    await finished(agent.run("go"))
    assert len(asked) == 2  # the second request (other params) was not served the first's


# -- tool arguments pydantic-ai rejects: bounded ---------------------------------------------

async def test_arguments_pydantic_ai_rejects_are_retried_a_bounded_number_of_times(
        system: System) -> None:
    validations: list[bool] = []

    def repair(ctx: HookContext) -> Any:
        validations.append(ctx.data["valid"])
        return Modified({"params": {"a": "still", "b": "bad"}})  # a repair that fails too

    hook(system, P.TOOL_VALIDATION, repair)
    calls = Calls()
    requests: list[Any] = []
    agent = calc_agent(system, [[("add", {"a": "x", "b": 1})]] * 10, calls=calls,
                       seen=requests)
    events = capture(system)
    with pytest.raises(UnexpectedModelBehavior, match="max retries"):
        await finished(agent.run("go"))
    await system.bus.drain()
    assert calls.count("add") == 0
    assert validations == [False] * len(validations) and 1 < len(validations) <= 3
    assert len(requests) == len(validations)
    assert types(events, "agent.") == ["agent.calc.started", "agent.calc.failed"]
    assert types(events, "run.").count("run.failed") == 1


async def test_a_tool_asking_for_a_retry_forever_is_bounded(system: System) -> None:
    agent = calc_agent(system, [[("stubborn", {})]] * 10)
    tries = {"n": 0}

    @agent.tool_plain
    def stubborn() -> str:
        """Never happy."""
        tries["n"] += 1
        raise ModelRetry("try again")

    hook(system, P.TOOL_ERROR, lambda ctx: Retry(0, 2), name="retry")
    with pytest.raises(UnexpectedModelBehavior, match="max retries"):
        await finished(agent.run("go"))
    assert 2 <= tries["n"] <= 2 * 3  # pydantic-ai's retries times the hook's attempts


# -- hooks raising at every point ---------------------------------------------------------------

_POINTS = [P.BEFORE_AGENT_EXECUTION, P.AFTER_AGENT_EXECUTION, P.AGENT_ERROR,
           P.BEFORE_MODEL_CALL, P.AFTER_MODEL_CALL, P.MODEL_CALL_ERROR, P.TOOL_VALIDATION,
           P.BEFORE_TOOL_EXECUTION, P.AFTER_TOOL_EXECUTION, P.TOOL_ERROR]


@pytest.mark.parametrize("stream", [False, True], ids=["run", "stream"])
@pytest.mark.parametrize("point", _POINTS)
async def test_a_hook_raising_at_any_point_ends_the_run_once(
        system: System, point: str, stream: bool) -> None:
    def boom(ctx: HookContext) -> Any:
        raise ValueError("boom")

    hook(system, point, boom, name="boom", error_policy="raise")
    plan: Any = [[("broken", {})]] if point == P.TOOL_ERROR else ADD
    down = RuntimeError("model down")
    fail = None
    if point == P.MODEL_CALL_ERROR:
        def fail(n: int) -> Exception | None:
            return down if n == 1 else None
    elif point == P.AGENT_ERROR:
        def fail(n: int) -> Exception | None:
            return down
    agent = calc_agent(system, plan, fail=fail)

    @agent.tool_plain
    def broken() -> int:
        """Always fails."""
        raise RuntimeError("broken tool")

    events = capture(system)
    with pytest.raises(HookExecutionError, match="boom"):
        if stream:
            async with agent.run_stream("go") as result:
                await finished(result.get_output())
        else:
            await finished(agent.run("go"))
    await system.bus.drain()
    assert types(events, "agent.") == ["agent.calc.started", "agent.calc.failed"]
    assert types(events, "run.") == ["run.started", "run.steps", "run.failed"]


# -- a run cancelled mid-tool -------------------------------------------------------------------

async def test_a_run_cancelled_mid_tool_ends_once_as_failed(system: System) -> None:
    started = asyncio.Event()
    agent = calc_agent(system, [[("slow", {})]])

    @agent.tool_plain
    async def slow() -> str:
        """Takes forever."""
        started.set()
        await asyncio.Event().wait()
        return "never"

    hook(system, P.BEFORE_TOOL_EXECUTION, lambda ctx: None)
    events = capture(system)
    task = asyncio.ensure_future(agent.run("go"))
    await finished(started.wait())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await system.bus.drain()
    assert types(events, "agent.") == ["agent.calc.started", "agent.calc.failed"]
    assert types(events, "tool.") == ["tool.slow.started", "tool.slow.failed"]
    [failed] = [e for e in events if e.event_type == "tool.slow.failed"]
    assert failed.data["error_type"] == "CancelledError"
    assert types(events, "run.").count("run.failed") == 1
    assert "run.completed" not in types(events)
    [summary] = system.runs.list()
    assert summary.status == "cancelled"


@pytest.mark.parametrize("stream", [False, True], ids=["run", "stream"])
async def test_a_run_cancelled_mid_model_request_ends_its_events(
        system: System, stream: bool) -> None:
    started = asyncio.Event()

    async def stuck(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("never answers")

    async def stuck_stream(messages: list[ModelMessage],
                           info: AgentInfo) -> AsyncIterator[str]:
        started.set()
        await asyncio.Event().wait()
        yield "never"

    agent: Agent[None, str] = Agent(FunctionModel(stuck, stream_function=stuck_stream),
                                    name="m", capabilities=[LlmspellCapability(system)])
    events = capture(system)

    async def go() -> Any:
        if stream:
            async with agent.run_stream("go") as result:
                return await result.get_output()
        return await agent.run("go")

    task = asyncio.ensure_future(go())
    await finished(started.wait())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await system.bus.drain()
    assert types(events, "model.") == ["model.function.started", "model.function.failed"]
    assert types(events, "agent.") == ["agent.m.started", "agent.m.failed"]
    assert types(events, "run.").count("run.failed") == 1


# -- output validators ---------------------------------------------------------------------

async def test_an_output_validator_asking_again_is_seen_by_the_model_points(
        system: System) -> None:
    answers: list[str] = []
    hook(system, P.AFTER_MODEL_CALL,
         lambda ctx: answers.append(ctx.data["result"]["message"]["content"]))
    texts = iter(["bad", "good"])

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[TextPart(next(texts))])

    agent: Agent[None, str] = Agent(FunctionModel(model), name="v",
                                    capabilities=[LlmspellCapability(system)])

    @agent.output_validator
    def only_good(output: str) -> str:
        if output != "good":
            raise ModelRetry("say good")
        return output

    events = capture(system, "agent.**")
    assert (await finished(agent.run("go"))).output == "good"
    await system.bus.drain()
    assert answers == ["bad", "good"]
    assert types(events) == ["agent.v.started", "agent.v.completed"]


async def test_an_output_validator_that_never_passes_is_recovered_at_agent_error(
        system: System) -> None:
    errors: list[str] = []

    def recover(ctx: HookContext) -> Any:
        errors.append(ctx.data["error_type"])
        return Replace("fallback")

    hook(system, P.AGENT_ERROR, recover)
    agent: Agent[None, str] = Agent(saying("bad", "m"), name="v", retries=1,
                                    capabilities=[LlmspellCapability(system)])

    @agent.output_validator
    def never(output: str) -> str:
        raise ModelRetry("no")

    events = capture(system, "agent.**")
    assert (await finished(agent.run("go"))).output == "fallback"
    await system.bus.drain()
    assert errors == ["UnexpectedModelBehavior"]
    assert types(events) == ["agent.v.started", "agent.v.completed"]


# -- usage limits ---------------------------------------------------------------------------

async def test_a_usage_limit_exceeded_ends_the_run_once_with_no_dangling_call(
        system: System) -> None:
    hook(system, P.BEFORE_TOOL_EXECUTION, lambda ctx: None)
    errors: list[str] = []
    hook(system, P.AGENT_ERROR, lambda ctx: errors.append(ctx.data["error_type"]),
         name="errors")
    events = capture(system)
    agent = calc_agent(system, ADD * 10)
    with pytest.raises(UsageLimitExceeded):
        await finished(agent.run("go", usage_limits=UsageLimits(request_limit=2)))
    await system.bus.drain()
    assert types(events, "model.").count("model.function.started") == 2
    assert types(events, "model.").count("model.function.completed") == 2
    assert types(events, "agent.") == ["agent.calc.started", "agent.calc.failed"]
    assert types(events, "run.").count("run.failed") == 1
    assert errors == ["UsageLimitExceeded"]


async def test_a_retried_run_keeps_the_runs_usage_limits(system: System) -> None:
    asked: list[Any] = []
    hook(system, P.AFTER_AGENT_EXECUTION, lambda ctx: Retry(0, 5))
    agent = calc_agent(system, [], seen=asked)
    with pytest.raises(UsageLimitExceeded):
        await finished(agent.run("go", usage_limits=UsageLimits(request_limit=2)))
    assert len(asked) == 2  # the limit bounds the run, retries included


# -- concurrent runs of one agent ------------------------------------------------------------

async def test_concurrent_runs_of_one_agent_keep_their_own_state(system: System) -> None:
    hook(system, P.BEFORE_AGENT_EXECUTION, lambda ctx: Modified(
        {"params": {"input": ctx.data["params"]["input"] + "!"}}), name="rewrite")
    seen: dict[str, list[Any]] = {}

    def at_tool(ctx: HookContext) -> Any:
        seen.setdefault(ctx.correlation_id, []).append(("tool", ctx.data["params"]))
        return None

    def at_model(ctx: HookContext) -> Any:
        seen.setdefault(ctx.correlation_id, []).append(("model", ctx.data["turn"]))
        return None

    hook(system, P.BEFORE_TOOL_EXECUTION, at_tool, name="tools")
    hook(system, P.BEFORE_MODEL_CALL, at_model, name="models")

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        prompt = next(str(p.content) for p in messages[0].parts
                      if isinstance(p, UserPromptPart))
        if len(messages) == 1:
            return ModelResponse(parts=[ToolCallPart("echo", {"text": prompt})])
        said = getattr(messages[-1].parts[0], "content", None)
        return ModelResponse(parts=[TextPart(f"{prompt} -> {said}")])

    agent: Agent[None, str] = Agent(FunctionModel(model), name="c",
                                    capabilities=[LlmspellCapability(system)])

    @agent.tool_plain
    async def echo(text: str) -> str:
        """Echo, slowly, so the runs interleave."""
        for _ in range(3):
            await asyncio.sleep(0)
        return text.upper()

    prompts = [f"p{i}" for i in range(6)]
    results = await finished(asyncio.gather(*(agent.run(p) for p in prompts)))
    assert [r.output for r in results] == [f"{p}! -> {p.upper()}!" for p in prompts]
    assert len(seen) == len(prompts)  # one correlation per run
    for steps in seen.values():
        assert [s[0] for s in steps] == ["model", "tool", "model"]
        assert steps[0][1] == 1 and steps[2][1] == 2

