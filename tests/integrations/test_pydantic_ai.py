"""The pydantic-ai adapter: llmspell's points and results at the agent's own seams, with
offline FunctionModel agents (streamed and not), Python and Lua hooks, events and the
store."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic_ai import Agent
from pydantic_ai.exceptions import ModelHTTPError
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    SystemPromptPart,
    TextPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel

from llmspell.errors import (
    InvalidValueError,
    ModelCallCancelledError,
    OperationCancelledError,
    UnsupportedFrameworkVersionError,
    UnsupportedHookResultError,
)
from llmspell.events.store.base import EventQuery
from llmspell.hooks import HookContext, HookPoint
from llmspell.hooks.result import (
    Cache,
    Cancel,
    Fork,
    ForkOperation,
    Modified,
    Redirect,
    Replace,
    Retry,
)
from llmspell.integrations import _bridge
from llmspell.integrations.pydantic_ai import HONOURED, SUPPORTED, LlmspellCapability
from llmspell.runtime.system import System
from llmspell.scripting import ScriptHost
from tests.integrations.conftest_pydantic_ai import Calls, calc_agent, capture, planned, types

P = HookPoint
ADD = [[("add", {"a": 2, "b": 3})]]


def hook(system: System, point: str, fn: Any, name: str = "test-hook") -> None:
    system.registry.register(point, fn, name=name)


async def run(agent: Agent[None, str], prompt: str = "go", *, stream: bool = False) -> str:
    if stream:
        async with agent.run_stream(prompt) as result:
            pieces = [piece async for piece in result.stream_text(delta=True)]
            output = await result.get_output()
        assert pieces  # the answer came in pieces
        return output
    return (await agent.run(prompt)).output


# -- tools ----------------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
async def test_a_python_hook_blocks_a_tool_call(system: System, stream: bool) -> None:
    calls = Calls()
    seen: list[dict[str, Any]] = []

    def guard(ctx: HookContext) -> Any:
        seen.append(dict(ctx.data))
        return Cancel("no adding today") if ctx.data["tool"] == "add" else None

    hook(system, P.BEFORE_TOOL_EXECUTION, guard, "guard")
    events = capture(system, "tool.**")
    output = await run(calc_agent(system, ADD, calls=calls), stream=stream)
    assert calls.count("add") == 0  # the tool never ran
    assert "no adding today" in output and "guard" in output  # the model was told
    assert seen[0]["params"] == {"a": 2, "b": 3} and seen[0]["attempt"] == 1
    await system.bus.drain()
    assert types(events) == ["tool.add.failed"]
    assert events[0].data["error_type"] == "OperationCancelledError"


async def test_a_lua_hook_blocks_a_tool_call(system: System) -> None:
    calls = Calls()
    host = ScriptHost(system, time_budget=5)
    try:
        await host.run_lua_async("""
            Hook.register("BeforeToolExecution", function(ctx)
              if ctx.data.tool == "add" and ctx.data.params.a > 1 then
                return {type = "cancel", reason = "lua says a is too big"}
              end
            end, "high")
        """)
        output = await run(calc_agent(system, ADD, calls=calls))
    finally:
        host.close()
    assert calls.count("add") == 0
    assert "lua says a is too big" in output


async def test_a_javascript_hook_replaces_a_tool_result(system: System) -> None:
    calls = Calls()
    host = ScriptHost(system, time_budget=5)
    try:
        await host.run_js_async("""
await Hook.register("AfterToolExecution", (ctx) =>
  ctx.data.tool === "shout" ? {type: "replace", value: "quiet (js)"} : undefined);
""")
        output = await run(calc_agent(system, [[("shout", {"text": "hey"})]], calls=calls))
    finally:
        host.close()
    assert calls.log == [("shout", {"text": "hey"})]
    assert output == "done: shout=quiet (js)"


async def test_tool_cancel_raise_ends_the_run(system: System) -> None:
    hook(system, P.BEFORE_TOOL_EXECUTION, lambda ctx: Cancel("stop"))
    with pytest.raises(OperationCancelledError, match="stop"):
        await run(calc_agent(system, ADD, tool_cancel="raise"))


@pytest.mark.parametrize("stream", [False, True])
async def test_a_hook_rewrites_tool_arguments(system: System, stream: bool) -> None:
    calls = Calls()
    hook(system, P.BEFORE_TOOL_EXECUTION,
         lambda ctx: Modified({**ctx.data, "params": {"a": 40, "b": 2}}))
    output = await run(calc_agent(system, ADD, calls=calls), stream=stream)
    assert calls.log == [("add", {"a": 40, "b": 2})]
    assert output == "done: add=42"


async def test_rewritten_arguments_are_validated_by_the_tool(system: System) -> None:
    hook(system, P.BEFORE_TOOL_EXECUTION,
         lambda ctx: Modified({**ctx.data, "params": {"a": "seven", "b": 2}}))
    calls = Calls()
    output = await run(calc_agent(system, ADD, calls=calls))
    assert calls.count("add") == 0
    assert "valid integer" in output  # the model was shown the validation error


@pytest.mark.parametrize("result", [Replace("forty-two"),
                                    Modified({"result": "forty-two"})])
async def test_a_hook_replaces_a_tool_result(system: System, result: Any) -> None:
    calls = Calls()
    hook(system, P.AFTER_TOOL_EXECUTION,
         lambda ctx: (Modified({**ctx.data, "result": "forty-two"})
                      if isinstance(result, Modified) else result))
    output = await run(calc_agent(system, ADD, calls=calls))
    assert calls.count("add") == 1
    assert output == "done: add=forty-two"


async def test_replace_before_a_tool_skips_it(system: System) -> None:
    calls = Calls()
    hook(system, P.BEFORE_TOOL_EXECUTION, lambda ctx: Replace(99))
    assert await run(calc_agent(system, ADD, calls=calls)) == "done: add=99"
    assert calls.count("add") == 0


async def test_tool_redirect_runs_an_llmspell_tool(system: System) -> None:
    def multiply(a: int, b: int) -> int:
        """Multiply."""
        return a * b

    system.tools.register(multiply)
    calls = Calls()
    hook(system, P.BEFORE_TOOL_EXECUTION,
         lambda ctx: Redirect("multiply") if ctx.data["tool"] == "add" else None)
    assert await run(calc_agent(system, ADD, calls=calls)) == "done: add=6"
    assert calls.count("add") == 0


async def test_tool_error_recovered_and_retried(system: System) -> None:
    failures = {"n": 0}
    agent = calc_agent(system, [[("flaky", {"x": 1})]])

    @agent.tool_plain
    def flaky(x: int) -> str:
        failures["n"] += 1
        if failures["n"] < 3:
            raise ConnectionError("try later")
        return f"ok after {failures['n']}"

    hook(system, P.TOOL_ERROR, lambda ctx: Retry(0, 5) if ctx.data["attempt"] < 5 else None)
    assert await run(agent) == "done: flaky=ok after 3"

    failures["n"] = -100
    system.registry.clear()
    hook(system, P.TOOL_ERROR, lambda ctx: Replace(f"fallback for {ctx.data['error_type']}"))
    assert await run(agent) == "done: flaky=fallback for ConnectionError"


async def test_tool_validation_repairs_and_refuses(system: System) -> None:
    calls = Calls()
    seen: list[dict[str, Any]] = []

    def repair(ctx: HookContext) -> Any:
        seen.append(dict(ctx.data))
        if not ctx.data["valid"]:
            return Modified({**ctx.data, "params": {"a": 1, "b": 1}})
        return None

    hook(system, P.TOOL_VALIDATION, repair)
    output = await run(calc_agent(system, [[("add", {"a": "x", "b": 1})]], calls=calls))
    assert output == "done: add=2"
    assert seen[0]["valid"] is False and "a" in seen[0]["error"]
    system.registry.clear()
    hook(system, P.TOOL_VALIDATION, lambda ctx: Cancel("validation refused"))
    output = await run(calc_agent(system, ADD, calls=calls))
    assert "validation refused" in output and calls.count("add") == 1


async def test_tool_cache_serves_a_repeated_call(system: System) -> None:
    calls = Calls()
    hook(system, P.AFTER_TOOL_EXECUTION, lambda ctx: Cache("sum", ttl=60))
    plan = [[("add", {"a": 2, "b": 3})], [("add", {"a": 2, "b": 3})]]
    await run(calc_agent(system, plan, calls=calls))
    assert calls.count("add") == 1  # the second identical call was served from the cache


async def test_tool_fork_runs_llmspell_operations(system: System) -> None:
    ran: list[Any] = []

    def audit(note: str) -> str:
        """Record a note."""
        ran.append(note)
        return "noted"

    system.tools.register(audit)
    hook(system, P.BEFORE_TOOL_EXECUTION, lambda ctx: Fork((ForkOperation(
        type="tool", target="audit", parameters={"note": ctx.data["tool"]}),))
         if ctx.data["tool"] == "add" else None)
    assert await run(calc_agent(system, ADD)) == "done: add=5"
    assert ran == ["add"]


# -- model calls ----------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
async def test_a_model_call_is_cancelled(system: System, stream: bool) -> None:
    hook(system, P.BEFORE_MODEL_CALL, lambda ctx: Cancel("no model calls"), "gate")
    events = capture(system, "**")
    with pytest.raises(ModelCallCancelledError, match="no model calls") as info:
        await run(calc_agent(system, ADD), stream=stream)
    assert info.value.hook == "gate" and info.value.model == "function/gpt-4o"
    await system.bus.drain()
    assert "agent.calc.failed" in types(events)


async def test_an_agent_error_hook_recovers_a_cancelled_model_call(system: System) -> None:
    hook(system, P.BEFORE_MODEL_CALL, lambda ctx: Cancel("over budget"))
    hook(system, P.AGENT_ERROR, lambda ctx: Replace(f"sorry: {ctx.data['error_type']}"))
    assert await run(calc_agent(system, ADD)) == "sorry: ModelCallCancelledError"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_model_call_is_redirected(system: System, stream: bool) -> None:
    backup = planned([], model_name="backup-model")
    hook(system, P.BEFORE_MODEL_CALL,
         lambda ctx: Redirect("backup") if ctx.data["turn"] == 2 else None)
    events = capture(system, "model.**")
    agent = calc_agent(system, ADD, models={"backup": backup})
    assert await run(agent, stream=stream) == "done: add=5"
    await system.bus.drain()
    done = [e for e in events if e.event_type.endswith(".completed")]
    assert [e.data["answered_by"] for e in done] == ["gpt-4o", "backup-model"]
    assert done[1].data["redirected_to"] == "backup"


async def test_redirect_to_a_model_pydantic_ai_infers(system: System) -> None:
    hook(system, P.BEFORE_MODEL_CALL, lambda ctx: Redirect("test"))
    output = await run(calc_agent(system, []))
    assert output  # TestModel answered (it calls every tool, then summarises)


@pytest.mark.parametrize("stream", [False, True])
async def test_replace_before_a_model_call_skips_it(system: System, stream: bool) -> None:
    asked: list[list[ModelMessage]] = []
    hook(system, P.BEFORE_MODEL_CALL, lambda ctx: Replace("canned answer"))
    assert await run(calc_agent(system, ADD, seen=asked), stream=stream) == "canned answer"
    assert asked == []  # the model was never called


async def test_model_response_rewritten_after_the_call(system: System) -> None:
    def rewrite(ctx: HookContext) -> Any:
        result = ctx.data["result"]
        if result["message"]["content"]:
            result = {**result, "message": {**result["message"],
                                            "content": result["message"]["content"] + "!"}}
            return Modified({**ctx.data, "result": result})
        return None

    hook(system, P.AFTER_MODEL_CALL, rewrite)
    assert await run(calc_agent(system, ADD)) == "done: add=5!"


async def test_model_request_rewritten_before_the_call(system: System) -> None:
    asked: list[list[ModelMessage]] = []

    def mask(ctx: HookContext) -> Any:
        params = ctx.data["params"]
        messages = [{**m, "content": m["content"].replace("1234", "****")}
                    if m["role"] == "user" and m["content"] else m
                    for m in params["messages"]]
        return Modified({**ctx.data, "params": {**params, "messages": messages,
                                                "temperature": 0.1}})

    hook(system, P.BEFORE_MODEL_CALL, mask)
    agent = calc_agent(system, ADD, seen=asked)
    result = await agent.run("my pin is 1234")
    assert result.output == "done: add=5"
    first = asked[0][0]
    assert isinstance(first, ModelRequest)
    assert [p.content for p in first.parts if isinstance(p, UserPromptPart)] == \
        ["my pin is ****"]
    # request-only: the run's history keeps what the user typed
    history = result.all_messages()[0]
    assert isinstance(history, ModelRequest)
    assert any(isinstance(p, UserPromptPart) and p.content == "my pin is 1234"
               for p in history.parts)


async def test_instructions_and_tools_offered_can_be_changed(system: System) -> None:
    offered: list[list[str]] = []
    instructions: list[str | None] = []

    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        offered.append([t.name for t in info.function_tools])
        instructions.append(info.instructions)
        return ModelResponse(parts=[TextPart("ok")])

    agent: Agent[None, str] = Agent(
        FunctionModel(answer), instructions="be brief", system_prompt="you are a calculator",
        capabilities=[LlmspellCapability(system)])

    @agent.tool_plain
    def add(a: int, b: int) -> int:
        return a + b

    @agent.tool_plain
    def rm(path: str) -> str:
        return path

    seen: list[list[dict[str, Any]]] = []

    def narrow(ctx: HookContext) -> Any:
        params = ctx.data["params"]
        seen.append(params["messages"])
        messages = [{**params["messages"][0], "content": "be very brief"},
                    *params["messages"][1:]]
        return Modified({**ctx.data, "params": {
            **params, "messages": messages,
            "tools": [t for t in params["tools"] if t["name"] != "rm"]}})

    hook(system, P.BEFORE_MODEL_CALL, narrow)
    await agent.run("hi")
    assert [m["role"] for m in seen[0]] == ["system", "system", "user"]
    assert seen[0][0]["content"] == "be brief"
    assert seen[0][1]["content"] == "you are a calculator"
    assert offered == [["add"]]
    assert instructions == ["be very brief"]


async def test_a_malformed_rewrite_is_a_typed_error(system: System) -> None:
    hook(system, P.BEFORE_MODEL_CALL, lambda ctx: Modified(
        {**ctx.data, "params": {**ctx.data["params"], "messages": [{"role": "robot"}]}}))
    with pytest.raises(InvalidValueError, match="role"):
        await run(calc_agent(system, ADD))


async def test_model_error_recovered_retried_and_redirected(system: System) -> None:
    down = ModelHTTPError(503, "gpt-4o", "overloaded")
    errors: list[dict[str, Any]] = []

    def on_error(ctx: HookContext) -> Any:
        errors.append(dict(ctx.data))
        return Retry(0, 3)

    hook(system, P.MODEL_CALL_ERROR, on_error)
    agent = calc_agent(system, ADD, fail=lambda n: down if n in (1, 2) else None)
    assert await run(agent) == "done: add=5"
    assert [e["attempt"] for e in errors] == [1, 2]
    assert errors[0]["status"] == 503 and errors[0]["retryable"] is True

    system.registry.clear()
    hook(system, P.MODEL_CALL_ERROR, lambda ctx: Replace("the model is down"))
    agent = calc_agent(system, ADD, fail=lambda n: down)
    assert await run(agent) == "the model is down"

    system.registry.clear()
    hook(system, P.MODEL_CALL_ERROR, lambda ctx: Redirect("backup"))
    agent = calc_agent(system, ADD, fail=lambda n: down,
                       models={"backup": planned([], model_name="backup")})
    assert await run(agent) == "done: "

    system.registry.clear()
    hook(system, P.MODEL_CALL_ERROR, lambda ctx: Cancel("give up"))
    with pytest.raises(ModelCallCancelledError, match="give up"):
        await run(calc_agent(system, ADD, fail=lambda n: down))


async def test_after_model_retry_asks_again(system: System) -> None:
    asked: list[Any] = []
    hook(system, P.AFTER_MODEL_CALL,
         lambda ctx: Retry(0, 2) if ctx.data["attempt"] == 1 else None)
    assert await run(calc_agent(system, [], seen=asked)) == "done: "
    assert len(asked) == 2


async def test_model_cache_serves_a_repeated_call(system: System) -> None:
    asked: list[Any] = []
    hook(system, P.BEFORE_MODEL_CALL, lambda ctx: Cache("hello", ttl=60))
    agent = calc_agent(system, [], seen=asked)
    assert await run(agent, "hello") == "done: "
    assert await run(agent, "hello") == "done: "
    assert len(asked) == 1


async def test_model_shadow_fork(system: System) -> None:
    shadow = planned([], model_name="shadow-model")
    hook(system, P.AFTER_MODEL_CALL, lambda ctx: Fork((ForkOperation(
        type="model", target="shadow"),)))
    events = capture(system, "model.**")
    agent = calc_agent(system, [], models={"shadow": shadow})
    assert await run(agent) == "done: "
    await system.bus.drain()
    shadows = [e for e in events if e.event_type.endswith(".shadow")]
    assert [e.data["model"] for e in shadows] == ["shadow-model"]
    assert shadows[0].data["shadowing"] == "function/gpt-4o"


# -- the run --------------------------------------------------------------------------------

async def test_the_run_points(system: System) -> None:
    seen: dict[str, dict[str, Any]] = {}

    def look(ctx: HookContext) -> None:
        seen[str(ctx.point)] = dict(ctx.data)

    for point in (P.BEFORE_AGENT_EXECUTION, P.AFTER_AGENT_EXECUTION):
        hook(system, point, look, f"look-{point}")
    assert await run(calc_agent(system, ADD), "add them") == "done: add=5"
    assert seen["before_agent_execution"]["params"] == {"input": "add them"}
    assert seen["after_agent_execution"]["result"] == "done: add=5"
    assert seen["after_agent_execution"]["agent"] == "calc"


async def test_the_run_cancelled_replaced_and_rewritten(system: System) -> None:
    asked: list[list[ModelMessage]] = []
    hook(system, P.BEFORE_AGENT_EXECUTION, lambda ctx: Cancel("closed"))
    with pytest.raises(OperationCancelledError, match="closed"):
        await run(calc_agent(system, ADD))
    system.registry.clear()
    hook(system, P.BEFORE_AGENT_EXECUTION, lambda ctx: Replace("from a hook"))
    assert await run(calc_agent(system, ADD, seen=asked)) == "from a hook"
    assert asked == []
    system.registry.clear()
    hook(system, P.BEFORE_AGENT_EXECUTION,
         lambda ctx: Modified({**ctx.data, "params": {"input": "rewritten prompt"}}))
    result = await calc_agent(system, [], seen=asked).run("original prompt")
    first = asked[0][0]
    assert isinstance(first, ModelRequest)
    assert [p.content for p in first.parts if isinstance(p, UserPromptPart)] == \
        ["rewritten prompt"]
    assert "original prompt" not in str(result.all_messages())
    system.registry.clear()
    hook(system, P.AFTER_AGENT_EXECUTION, lambda ctx: Modified({**ctx.data, "result": "X"}))
    assert await run(calc_agent(system, ADD)) == "X"


async def test_the_run_retried_and_redirected(system: System) -> None:
    asked: list[Any] = []
    hook(system, P.AGENT_ERROR, lambda ctx: Retry(0, 2))
    down = ModelHTTPError(500, "gpt-4o", "boom")
    agent = calc_agent(system, [], seen=asked, fail=lambda n: down if n == 1 else None)
    events = capture(system, "agent.**")
    assert await run(agent) == "done: "
    assert len(asked) == 2
    await system.bus.drain()
    assert types(events) == ["agent.calc.started", "agent.calc.completed"]  # one run

    system.registry.clear()
    helper: Agent[None, str] = Agent(TestModel(custom_output_text="helper here"),
                                     name="helper")
    hook(system, P.BEFORE_AGENT_EXECUTION, lambda ctx: Redirect("helper")
         if ctx.data["agent"] == "calc" else None)
    assert await run(calc_agent(system, ADD, agents={"helper": helper})) == "helper here"


async def test_run_cache(system: System) -> None:
    asked: list[Any] = []
    hook(system, P.BEFORE_AGENT_EXECUTION, lambda ctx: Cache("same", ttl=60))
    agent = calc_agent(system, ADD, seen=asked)
    assert await run(agent) == await run(agent) == "done: add=5"
    assert len(asked) == 2  # one run's two requests; the second run was served


# -- results a seam cannot honour, bad input, versions ----------------------------------------

async def test_a_result_a_seam_cannot_honour(system: System) -> None:
    hook(system, P.TOOL_VALIDATION, lambda ctx: Replace(1), "replacer")
    with pytest.raises(UnsupportedHookResultError) as info:
        await run(calc_agent(system, ADD))
    assert (info.value.framework, info.value.point, info.value.result, info.value.hook) == \
        ("pydantic-ai", "tool_validation", "replace", "replacer")
    assert "replace" not in HONOURED[P.TOOL_VALIDATION]


@pytest.mark.parametrize("result", [Retry(0, 2), Redirect("other")])
async def test_retry_or_redirect_of_a_streamed_answer_is_refused(system: System,
                                                                 result: Any) -> None:
    hook(system, P.AFTER_MODEL_CALL, lambda ctx: result, "late")
    with pytest.raises(UnsupportedHookResultError, match="streamed") as info:
        await run(calc_agent(system, []), stream=True)
    assert info.value.result == result.kind


async def test_an_error_point_cannot_modify(system: System) -> None:
    hook(system, P.TOOL_ERROR, lambda ctx: Modified({**ctx.data, "x": 1}))
    agent = calc_agent(system, [[("boom", {})]])

    @agent.tool_plain
    def boom() -> str:
        raise RuntimeError("bang")

    with pytest.raises(UnsupportedHookResultError, match="modified"):
        await run(agent)


def test_an_unsupported_version_is_refused(system: System,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_bridge, "installed_version", lambda dist: "3.1.0")
    with pytest.raises(UnsupportedFrameworkVersionError) as info:
        LlmspellCapability(system)
    assert info.value.supported == SUPPORTED == ">=2.60,<3"
    assert "pydantic-ai-slim 3.1.0" in str(info.value)
    monkeypatch.setattr(_bridge, "installed_version", lambda dist: "2.59.0")
    with pytest.raises(UnsupportedFrameworkVersionError):
        LlmspellCapability(system)


@pytest.mark.parametrize(("args", "match"), [
    ({"system": object()}, "System"),
    ({"tool_cancel": "explode"}, "tool_cancel"),
    ({"name": ""}, "name"),
])
def test_bad_arguments(system: System, args: dict[str, Any], match: str) -> None:
    target = args.pop("system", system)
    with pytest.raises(InvalidValueError, match=match):
        LlmspellCapability(target, **args)


async def test_an_unknown_redirect_target_names_what_to_do(system: System) -> None:
    hook(system, P.BEFORE_AGENT_EXECUTION, lambda ctx: Redirect("nobody"))
    with pytest.raises(Exception, match="agents="):
        await run(calc_agent(system, ADD))


# -- events, the store, sub-agents ---------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
async def test_events_of_a_run(system: System, stream: bool) -> None:
    hook(system, P.BEFORE_TOOL_EXECUTION, lambda ctx: None)
    events = capture(system, "**")
    await run(calc_agent(system, [[("add", {"a": 1, "b": 2}), ("shout", {"text": "hi"})]]),
              stream=stream)
    await system.bus.drain()
    kinds = [t for t in types(events) if not t.startswith(("run.", "hook."))]
    assert kinds[0] == "agent.calc.started" and kinds[-1] == "agent.calc.completed"
    assert kinds.count("model.function.completed") == 2
    assert {"tool.add.completed", "tool.shout.completed"} <= set(kinds)
    completed = next(e for e in events if e.event_type == "model.function.completed")
    assert completed.data["usage"]["input_tokens"] > 0
    assert completed.data["request"]["tools"] == ["add", "shout"]
    assert completed.data["response"]["tool_calls"][0]["name"] == "add"
    agent_done = events[[e.event_type for e in events].index("agent.calc.completed")]
    assert agent_done.data["output"] == "done: add=3; shout=HI"
    assert agent_done.data["usage"]["requests"] == 2
    correlations = {e.metadata.correlation_id for e in events
                    if e.event_type.startswith(("agent.", "model.", "tool."))}
    assert len(correlations) == 1
    assert "hook.before_tool_execution" in types(events)


async def test_the_run_is_in_the_store(system: System) -> None:
    await run(calc_agent(system, ADD))
    await system.bus.drain()
    assert system.store is not None
    system.store.flush()
    stored = system.store.query(EventQuery(pattern="agent.calc.*"))
    assert [e.event_type for e in stored] == ["agent.calc.started", "agent.calc.completed"]
    correlation = stored[0].metadata.correlation_id
    assert correlation
    everything = system.store.query(EventQuery(correlation_id=correlation))
    assert {"model.function.completed", "tool.add.completed"} <= \
        {e.event_type for e in everything}
    if getattr(system, "runs", None) is not None:  # the run API: one llmspell run
        run_id = stored[0].metadata.run_id
        assert run_id
        mine = system.store.query(EventQuery(run_id=run_id))
        assert {"run.started", "run.completed", "tool.add.completed"} <= \
            {e.event_type for e in mine}


async def test_a_sub_agent_is_a_child_run(system: System) -> None:
    inner = calc_agent(system, [[("shout", {"text": "deep"})]], name="inner")
    outer = calc_agent(system, [[("delegate", {"task": "x"})]], name="outer")

    @outer.tool_plain
    async def delegate(task: str) -> str:
        return (await inner.run(task)).output

    events = capture(system, "**")
    assert await run(outer) == "done: delegate=done: shout=DEEP"
    await system.bus.drain()
    kinds = types(events, "agent.")
    assert kinds == ["agent.outer.started", "agent.inner.started", "agent.inner.completed",
                     "agent.outer.completed"]
    by_type = {e.event_type: e for e in events}
    outer_id = by_type["agent.outer.started"].metadata.correlation_id
    inner_id = by_type["agent.inner.started"].metadata.correlation_id
    assert outer_id != inner_id
    assert by_type["tool.shout.completed"].metadata.correlation_id == inner_id
    assert by_type["tool.delegate.completed"].metadata.correlation_id == outer_id
    if getattr(system, "runs", None) is not None:
        runs = [e for e in events if e.event_type == "run.started"]
        assert len(runs) == 2
        assert runs[1].data["parent_run_id"] == runs[0].data["run_id"]
        assert runs[0].data["kind"] == "pydantic-ai"


async def test_system_prompt_parts_are_system_messages(system: System) -> None:
    seen: list[list[dict[str, Any]]] = []
    hook(system, P.BEFORE_MODEL_CALL, lambda ctx: seen.append(ctx.data["params"]["messages"]))
    agent: Agent[None, str] = Agent(planned([]), system_prompt="be kind",
                                    capabilities=[LlmspellCapability(system)])
    await agent.run("hi")
    assert [(m["role"], m["content"]) for m in seen[0]] == [("system", "be kind"),
                                                           ("user", "hi")]
    assert SystemPromptPart  # the part pydantic-ai keeps it in


async def test_pydantic_ai_control_flow_passes_through(system: System) -> None:
    from pydantic_ai.capabilities import AbstractCapability
    from pydantic_ai.exceptions import SkipToolExecution

    class Skipper(AbstractCapability[Any]):
        async def before_tool_execute(self, ctx: Any, *, call: Any, tool_def: Any,
                                      args: Any) -> Any:
            raise SkipToolExecution("skipped by another capability")

    errors: list[Any] = []
    hook(system, P.TOOL_ERROR, lambda ctx: errors.append(ctx.data))
    calls = Calls()
    agent = calc_agent(system, ADD, calls=calls)
    result = await agent.run("go", capabilities=[Skipper()])
    assert result.output == "done: add=skipped by another capability"
    assert calls.count("add") == 0 and errors == []  # not a tool error


async def test_a_model_error_point_cannot_modify(system: System) -> None:
    hook(system, P.MODEL_CALL_ERROR, lambda ctx: Modified({**ctx.data, "x": 1}), "mod")
    down = ModelHTTPError(500, "gpt-4o", "boom")
    with pytest.raises(UnsupportedHookResultError) as info:
        await run(calc_agent(system, ADD, fail=lambda n: down))
    assert (info.value.point, info.value.result, info.value.hook) == \
        ("model_call_error", "modified", "mod")


class _FakeRuns:
    """``system.runs`` as the run contract describes it (start(kind, name, input) -> an
    async context manager yielding the run; nesting through a context variable)."""

    def __init__(self) -> None:
        import contextvars

        self.current: contextvars.ContextVar[Any] = contextvars.ContextVar("fake_run",
                                                                          default=None)
        self.opened: list[Any] = []

    def start(self, *, kind: str, name: str, input: Any) -> Any:
        import contextlib
        import types as pytypes

        runs = self

        @contextlib.asynccontextmanager
        async def scope() -> Any:
            parent = runs.current.get()
            run = pytypes.SimpleNamespace(
                run_id=f"run-{len(runs.opened) + 1}", kind=kind, name=name, input=input,
                parent_run_id=parent.run_id if parent is not None else None, output=None,
                closed=False)
            runs.opened.append(run)
            token = runs.current.set(run)
            try:
                yield run
            finally:
                runs.current.reset(token)
                run.closed = True

        return scope()


async def test_each_run_opens_an_llmspell_run(system: System) -> None:
    fake = _FakeRuns()
    system.runs = fake  # type: ignore[attr-defined]
    inner = calc_agent(system, [[("shout", {"text": "deep"})]], name="inner")
    outer = calc_agent(system, [[("delegate", {"task": "x"})]], name="outer")
    seen_in_tool: list[Any] = []

    @outer.tool_plain
    async def delegate(task: str) -> str:
        seen_in_tool.append(fake.current.get())
        return (await inner.run(task)).output

    assert await run(outer, "the task") == "done: delegate=done: shout=DEEP"
    first, second = fake.opened
    assert (first.kind, first.name, first.input) == ("pydantic-ai", "outer",
                                                    {"prompt": "the task"})
    assert (second.name, second.parent_run_id) == ("inner", first.run_id)
    assert seen_in_tool == [first]  # the run is current inside the agent's tools
    assert first.output == {"output": "done: delegate=done: shout=DEEP"}
    assert first.closed and second.closed
