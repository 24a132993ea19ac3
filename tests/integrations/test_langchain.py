"""The LangChain v1 adapter with the real framework and an offline chat model: the
middleware on ``create_agent`` agents (hooks in Python and Lua, the nine results at the
model and tool seams, errors, streaming, a sub-agent, the production built-ins, events and
the run in the store) and the callback handlers on chains."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, AIMessageChunk, ToolMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.tools import tool

from llmspell.builtin import (
    CachingConfig,
    CostConfig,
    RateLimitConfig,
    RetryConfig,
    SecurityConfig,
    SecurityRule,
    install_all,
    production,
)
from llmspell.builtin.cost import Budget
from llmspell.errors import (
    ModelCallCancelledError,
    OperationCancelled,
    UnsupportedFrameworkVersionError,
    UnsupportedHookResultError,
)
from llmspell.events import UniversalEvent
from llmspell.hooks import HookContext
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
from llmspell.integrations.langchain import (
    AsyncLlmspellCallbackHandler,
    LlmspellCallbackHandler,
    LlmspellMiddleware,
    llmspell_callbacks,
)
from llmspell.runtime import tool as llm_tool
from llmspell.runtime.system import System
from llmspell.scripting import ScriptHost

from .conftest_langchain import RAN, ScriptedChatModel, add, call, shout

ASK: Any = {"messages": [{"role": "user", "content": "please compute"}]}


@pytest.fixture(autouse=True)
def _clear_ran() -> None:
    RAN.clear()


def recorder(system: System, pattern: str = "**") -> list[UniversalEvent]:
    events: list[UniversalEvent] = []
    system.bus.subscribe(pattern, events.append, mode="inline")
    return events


def types(events: list[UniversalEvent]) -> list[str]:
    return [e.event_type for e in events]


def agent_for(system: System, steps: list[Any], *, name: str = "calc",
              **options: Any) -> tuple[Any, ScriptedChatModel]:
    model = ScriptedChatModel(steps=steps)
    agent = create_agent(model, tools=[add, shout], name=name,
                         middleware=[LlmspellMiddleware(system, **options)])
    return agent, model


def hook(system: System, point: str, fn: Callable[[HookContext], Any], **kw: Any) -> None:
    system.registry.register(point, fn, **kw)


def note(into: list[Any], value: Any) -> None:
    """Record ``value`` (a hook that only watches)."""
    into.append(value)


def final(out: dict[str, Any]) -> str:
    return str(out["messages"][-1].content)


def tool_messages(out: dict[str, Any]) -> list[ToolMessage]:
    return [m for m in out["messages"] if isinstance(m, ToolMessage)]


# -- installation ------------------------------------------------------------------------------

def test_an_unsupported_langchain_version_is_refused_at_install(
        system: System, monkeypatch: pytest.MonkeyPatch) -> None:
    real = _bridge.installed_version
    monkeypatch.setattr(_bridge, "installed_version",
                        lambda dist: "0.3.27" if dist == "langchain" else real(dist))
    with pytest.raises(UnsupportedFrameworkVersionError, match=r">=1\.2,<2") as info:
        LlmspellMiddleware(system)
    assert info.value.installed == "0.3.27"
    with pytest.raises(UnsupportedFrameworkVersionError):
        LlmspellCallbackHandler(system)
    monkeypatch.setattr(_bridge, "installed_version",
                        lambda dist: "2.0.0" if dist == "langchain-core" else real(dist))
    with pytest.raises(UnsupportedFrameworkVersionError, match="langchain-core"):
        AsyncLlmspellCallbackHandler(system)


def test_tool_cancel_option_is_checked(system: System) -> None:
    with pytest.raises(ValueError, match="tool_cancel"):
        LlmspellMiddleware(system, tool_cancel="ignore")


# -- a run: events, the store, the run ------------------------------------------------------

async def test_a_run_publishes_agent_model_and_tool_events_into_the_store_under_its_run(
        system: System) -> None:
    agent, _ = agent_for(system, [call("add", a=2, b=3), call("shout", "c2", text="ok"),
                                  "five and OK"])
    events = recorder(system)
    out = await agent.ainvoke(ASK)
    assert final(out) == "five and OK"
    assert RAN == [("add", {"a": 2, "b": 3}), ("shout", {"text": "ok"})]
    seen = types(events)
    assert seen[0] == "run.started" and seen[-1] == "run.completed"
    for expected in ("agent.calc.started", "model.openai.started", "model.openai.completed",
                     "tool.add.started", "tool.add.completed", "tool.shout.completed",
                     "agent.calc.completed"):
        assert expected in seen, expected
    assert seen.count("model.openai.completed") == 3
    started = events[0]
    run_id = started.data["run_id"]
    assert started.data["kind"] == "langchain" and started.data["name"] == "calc"
    assert all(e.metadata.run_id == run_id for e in events)
    completed = next(e for e in events if e.event_type == "model.openai.completed")
    assert completed.data["usage"]["input_tokens"] > 0
    assert completed.data["cost_usd"] and completed.data["cost_usd"] > 0
    assert completed.data["caller"] == {"type": "agent", "name": "calc"}
    tool_done = next(e for e in events if e.event_type == "tool.add.completed")
    assert tool_done.data["result"] == "5"
    agent_done = next(e for e in events if e.event_type == "agent.calc.completed")
    assert agent_done.data["output"] == "five and OK" and agent_done.data["turns"] == 3
    assert agent_done.data["token_usage"]["calls"] == 3
    assert system.store is not None
    system.store.flush()
    stored = system.store.query(run_id=run_id)
    assert {"run.started", "agent.calc.completed", "tool.shout.completed",
            "run.completed"} <= set(types(stored))
    ended = next(e for e in stored if e.event_type == "run.completed")
    assert ended.data["status"] == "completed"


def test_a_sync_run_fires_the_same_points(system: System) -> None:
    points: list[str] = []
    for point in ("BeforeAgentExecution", "AfterAgentExecution", "BeforeModelCall",
                  "AfterModelCall", "BeforeToolExecution", "AfterToolExecution"):
        hook(system, point, lambda ctx: note(points, str(ctx.point)))
    agent, _ = agent_for(system, [call("add", a=1, b=1), "two"])
    assert final(agent.invoke(ASK)) == "two"
    assert points == ["before_agent_execution", "before_model_call", "after_model_call",
                      "before_tool_execution", "after_tool_execution", "before_model_call",
                      "after_model_call", "after_agent_execution"]


# -- tools: block, rewrite, replace, recover -----------------------------------------------------

def test_a_python_hook_blocks_a_tool_call(system: System) -> None:
    def no_shouting(ctx: HookContext) -> Cancel | None:
        return Cancel("no shouting here") if ctx.data["tool"] == "shout" else None

    hook(system, "BeforeToolExecution", no_shouting)
    events = recorder(system, "tool.**")
    agent, model = agent_for(system, [call("shout", text="hi"), "I was not allowed"])
    out = agent.invoke(ASK)
    assert RAN == []
    [refused] = tool_messages(out)
    assert refused.status == "error" and "no shouting here" in str(refused.content)
    assert "no shouting here" in str(model.seen[-1][-1].content)  # the model read why
    assert final(out) == "I was not allowed"
    assert types(events) == ["tool.shout.failed"]


async def test_a_lua_hook_blocks_a_tool_call(system: System) -> None:
    host = ScriptHost(system)
    try:
        host.run_lua("""
Hook.register("BeforeToolExecution", function(ctx)
  if ctx.data.tool == "add" and ctx.data.params.b == 0 then
    return {type = "cancel", reason = "adding zero is pointless (lua)"}
  end
end, {name = "lua-guard"})
""")
        agent, _ = agent_for(system, [call("add", a=4, b=0), call("add", "c2", a=4, b=1),
                                      "five"])
        out = await agent.ainvoke(ASK)
        refused, allowed = tool_messages(out)
        assert "adding zero is pointless (lua)" in str(refused.content)
        assert "lua-guard" in str(refused.content)
        assert allowed.content == "5" and RAN == [("add", {"a": 4, "b": 1})]
    finally:
        host.close()


async def test_a_javascript_hook_rewrites_a_tool_result(system: System) -> None:
    host = ScriptHost(system)
    try:
        await host.run_js_async("""
await Hook.register("AfterToolExecution", (ctx) =>
  ctx.data.tool === "shout" ? {type: "replace", value: "quiet, please (js)"} : undefined);
""")
        agent, _ = agent_for(system, [call("shout", text="hey"), "ok"])
        out = await agent.ainvoke(ASK)
        assert tool_messages(out)[0].content == "quiet, please (js)"
        assert RAN == [("shout", {"text": "hey"})]
    finally:
        host.close()


def test_a_hook_rewrites_tool_arguments(system: System) -> None:
    def double_b(ctx: HookContext) -> Modified:
        params = dict(ctx.data["params"])
        params["b"] = params["b"] * 2
        return Modified({**ctx.data, "params": params})

    hook(system, "BeforeToolExecution", double_b)
    agent, _ = agent_for(system, [call("add", a=1, b=10), "done"])
    out = agent.invoke(ASK)
    assert RAN == [("add", {"a": 1, "b": 20})]
    assert tool_messages(out)[0].content == "21"


async def test_a_hook_replaces_a_tool_result_and_another_skips_the_tool(
        system: System) -> None:
    hook(system, "AfterToolExecution",
         lambda ctx: Replace("forty-two") if ctx.data["tool"] == "add" else None)
    hook(system, "BeforeToolExecution",
         lambda ctx: Replace({"loud": True}) if ctx.data["tool"] == "shout" else None)
    agent, model = agent_for(system, [call("add", a=40, b=2), call("shout", "c2", text="x"),
                                      "ok"])
    out = await agent.ainvoke(ASK)
    added, shouted = tool_messages(out)
    assert added.content == "forty-two" and shouted.content == '{"loud": true}'
    assert RAN == [("add", {"a": 40, "b": 2})]  # shout never ran
    assert any(m.content == "forty-two" for m in model.seen[1])


async def test_a_tool_error_is_recovered_by_a_tool_error_hook(system: System) -> None:
    @tool
    def fragile(x: int) -> int:
        """Always fails."""
        raise RuntimeError("disk on fire")

    seen: list[dict[str, Any]] = []

    def recover(ctx: HookContext) -> Replace:
        seen.append(dict(ctx.data))
        return Replace("recovered value")

    hook(system, "ToolError", recover)
    model = ScriptedChatModel(steps=[call("fragile", x=1), "fine"])
    agent = create_agent(model, tools=[fragile], middleware=[LlmspellMiddleware(system)])
    out = await agent.ainvoke(ASK)
    assert tool_messages(out)[0].content == "recovered value"
    assert seen[0]["error_type"] == "RuntimeError" and "disk on fire" in seen[0]["error"]
    assert final(out) == "fine"


async def test_a_retry_hook_runs_a_failing_tool_again(system: System) -> None:
    calls: list[int] = []

    @tool
    def flaky(x: int) -> str:
        """Fails on its first call."""
        calls.append(x)
        if len(calls) == 1:
            raise TimeoutError("slow")
        return "second time lucky"

    hook(system, "ToolError", lambda ctx: Retry(0.0, 3))
    model = ScriptedChatModel(steps=[call("flaky", x=7), "ok"])
    agent = create_agent(model, tools=[flaky], middleware=[LlmspellMiddleware(system)])
    out = await agent.ainvoke(ASK)
    assert calls == [7, 7] and tool_messages(out)[0].content == "second time lucky"


async def test_an_unrecovered_tool_error_fails_the_run_after_agent_error(
        system: System) -> None:
    @tool
    def broken() -> str:
        """Fails."""
        raise ValueError("broken tool")

    errors: list[str] = []
    hook(system, "AgentError", lambda ctx: note(errors, ctx.data["error"]))
    events = recorder(system)
    model = ScriptedChatModel(steps=[call("broken"), "never"])
    agent = create_agent(model, tools=[broken], name="fails",
                         middleware=[LlmspellMiddleware(system)])
    with pytest.raises(ValueError, match="broken tool"):
        await agent.ainvoke(ASK)
    assert errors == ["broken tool"]
    seen = types(events)
    assert "tool.broken.failed" in seen and "agent.fails.failed" in seen
    assert seen[-1] == "run.failed"


async def test_an_agent_error_hook_answers_for_a_failing_tool(system: System) -> None:
    @tool
    def broken() -> str:
        """Fails."""
        raise ValueError("broken tool")

    hook(system, "AgentError", lambda ctx: Replace("the service is down, sorry"))
    model = ScriptedChatModel(steps=[call("broken"), "never asked"])
    agent = create_agent(model, tools=[broken], middleware=[LlmspellMiddleware(system)])
    out = await agent.ainvoke(ASK)
    assert final(out) == "the service is down, sorry"
    assert len(model.seen) == 1  # the model was not asked again


# -- model calls: cancel, redirect, rewrite, retry -------------------------------------------

async def test_a_cancelled_model_call_fails_the_run(system: System) -> None:
    hook(system, "BeforeModelCall", lambda ctx: Cancel("no model calls today"))
    events = recorder(system)
    agent, model = agent_for(system, ["never"])
    with pytest.raises(ModelCallCancelledError, match="no model calls today"):
        await agent.ainvoke(ASK)
    assert model.seen == []
    assert "model.openai.failed" in types(events) and "agent.calc.failed" in types(events)
    failed = next(e for e in events if e.event_type == "run.failed")
    assert "no model calls today" in failed.data["error"]["message"]


def test_an_agent_error_hook_recovers_a_cancelled_model_call(system: System) -> None:
    hook(system, "BeforeModelCall", lambda ctx: Cancel("over budget"))
    hook(system, "AgentError", lambda ctx: Replace("fallback answer")
         if ctx.data["error_type"] == "ModelCallCancelledError" else None)
    agent, _ = agent_for(system, ["never"])
    assert final(agent.invoke(ASK)) == "fallback answer"


async def test_a_model_call_is_redirected_to_another_model(system: System) -> None:
    backup = ScriptedChatModel(steps=["answer from the backup"], model="gpt-4o-mini")
    hook(system, "BeforeModelCall",
         lambda ctx: Redirect("backup") if ctx.data["model"] == "gpt-4o" else None)
    events = recorder(system, "model.**")
    agent, primary = agent_for(system, ["from the primary"], models={"backup": backup})
    out = await agent.ainvoke(ASK)
    assert final(out) == "answer from the backup"
    assert primary.seen == [] and len(backup.seen) == 1
    done = [e for e in events if e.event_type == "model.openai.completed"]
    assert [e.data["model"] for e in done] == ["gpt-4o-mini", "gpt-4o"]
    assert done[-1].data["redirected_to"] == "backup"


async def test_a_hook_rewrites_the_model_answer_and_the_request(system: System) -> None:
    def rewrite_answer(ctx: HookContext) -> Modified:
        result = dict(ctx.data["result"])
        message = dict(result["message"])
        message["content"] = message["content"].replace("cat", "dog")
        result["message"] = message
        return Modified({**ctx.data, "result": result})

    def only_add_and_cooler(ctx: HookContext) -> Modified:
        params = dict(ctx.data["params"])
        params["tools"] = [t for t in params["tools"] if t["name"] == "add"]
        params["temperature"] = 0.1
        params["messages"] = [*params["messages"],
                              {"role": "user", "content": "be brief", "tool_calls": [],
                               "tool_call_id": None, "name": None}]
        return Modified({**ctx.data, "params": params})

    hook(system, "AfterModelCall", rewrite_answer)
    hook(system, "BeforeModelCall", only_add_and_cooler)
    agent, model = agent_for(system, ["a cat sat"])
    out = await agent.ainvoke(ASK)
    assert final(out) == "a dog sat"
    assert model.seen_tools == [["add"]]
    assert model.seen_kwargs[0]["temperature"] == 0.1
    assert model.seen[0][-1].content == "be brief"


async def test_a_model_error_is_retried(system: System) -> None:
    class UnavailableError(Exception):
        status_code = 503

    attempts: list[int] = []

    def flaky(messages: list[Any]) -> str:
        attempts.append(len(attempts))
        if len(attempts) == 1:
            raise UnavailableError("try again")
        return "back online"

    hook(system, "ModelCallError",
         lambda ctx: Retry(0.0, 2) if ctx.data["retryable"] else None)
    agent, _ = agent_for(system, [flaky])
    assert final(await agent.ainvoke(ASK)) == "back online"
    assert len(attempts) == 2


# -- agent points ------------------------------------------------------------------------------

async def test_before_agent_rewrites_the_input_or_answers_instead(system: System) -> None:
    hook(system, "BeforeAgentExecution", lambda ctx: Modified(
        {**ctx.data, "params": {"input": ctx.data["params"]["input"].upper()}}))
    agent, model = agent_for(system, ["ok"])
    await agent.ainvoke(ASK)
    assert model.seen[0][-1].content == "PLEASE COMPUTE"

    system.registry.clear()
    hook(system, "BeforeAgentExecution", lambda ctx: Replace("answered by policy"))
    events = recorder(system, "agent.**")
    agent, model = agent_for(system, ["never"])
    out = await agent.ainvoke(ASK)
    assert final(out) == "answered by policy" and model.seen == []
    assert events[-1].data.get("replaced") is True


async def test_after_agent_rewrites_the_output_and_cancel_fails(system: System) -> None:
    hook(system, "AfterAgentExecution", lambda ctx: Replace(
        ctx.data["result"]["output"] + " (reviewed)"))
    agent, _ = agent_for(system, ["draft"])
    assert final(await agent.ainvoke(ASK)) == "draft (reviewed)"
    system.registry.clear()
    hook(system, "AfterAgentExecution", lambda ctx: Cancel("output rejected"))
    agent, _ = agent_for(system, ["draft"])
    with pytest.raises(OperationCancelled, match="output rejected"):
        await agent.ainvoke(ASK)


# -- streaming ---------------------------------------------------------------------------------

def test_a_streamed_sync_run_goes_through_the_hooks(system: System) -> None:
    answers: list[str] = []
    hook(system, "AfterModelCall",
         lambda ctx: note(answers, ctx.data["result"]["message"]["content"]))
    agent, _ = agent_for(system, [call("add", a=1, b=2), "three is the answer"])
    tokens = [str(chunk.content) for chunk, _meta in agent.stream(ASK, stream_mode="messages")
              if isinstance(chunk, AIMessageChunk) and chunk.content]
    assert "".join(tokens) == "three is the answer" and len(tokens) == 4
    assert answers == ["", "three is the answer"] and RAN == [("add", {"a": 1, "b": 2})]


async def test_a_streamed_async_run_goes_through_the_hooks(system: System) -> None:
    hook(system, "BeforeToolExecution", lambda ctx: Cancel("streams may not add"))
    events = recorder(system, "**")
    agent, _ = agent_for(system, [call("add", a=1, b=2), "could not add"])
    tokens = [str(chunk.content) async for chunk, _meta in agent.astream(ASK,
                                                                    stream_mode="messages")
              if isinstance(chunk, AIMessageChunk) and chunk.content]
    assert "".join(tokens) == "could not add" and RAN == []
    assert types(events)[-1] == "run.completed"


# -- a sub-agent -------------------------------------------------------------------------------

async def test_an_agent_called_from_a_tool_is_a_child_run(system: System) -> None:
    inner_model = ScriptedChatModel(steps=[call("add", a=20, b=22), "inner says 42"])
    inner = create_agent(inner_model, tools=[add], name="inner",
                         middleware=[LlmspellMiddleware(system)])

    @tool
    def ask_inner(question: str) -> str:
        """Ask the inner agent."""
        return final(inner.invoke({"messages": [{"role": "user", "content": question}]}))

    outer_model = ScriptedChatModel(steps=[call("ask_inner", question="what is 20+22?"),
                                           "the inner agent said 42"])
    outer = create_agent(outer_model, tools=[ask_inner], name="outer",
                         middleware=[LlmspellMiddleware(system)])
    events = recorder(system)
    out = await outer.ainvoke(ASK)
    assert final(out) == "the inner agent said 42"
    starts = {e.data["name"]: e.data for e in events if e.event_type == "run.started"}
    assert starts["inner"]["parent_run_id"] == starts["outer"]["run_id"]
    inner_events = [e for e in events if e.metadata.run_id == starts["inner"]["run_id"]]
    assert {"agent.inner.completed", "tool.add.completed"} <= set(types(inner_events))
    outer_tool = next(e for e in events if e.event_type == "tool.ask_inner.completed")
    assert outer_tool.metadata.run_id == starts["outer"]["run_id"]


# -- the production built-ins ------------------------------------------------------------------

def test_the_security_built_in_blocks_a_tool_call(system: System) -> None:
    rule = SecurityRule(name="no-secrets", points=("before_tool_execution",),
                        condition={"path": "params.text", "contains": "password"},
                        severity="critical", action="block")
    install_all(production(bus=system.bus, security=SecurityConfig(rules=(rule,))),
                system.registry)
    agent, _ = agent_for(system, [call("shout", text="my password is x"), "refused"])
    out = agent.invoke(ASK)
    assert RAN == [] and "no-secrets" in str(tool_messages(out)[0].content)


async def test_cost_tracking_prices_framework_calls_and_a_budget_blocks(
        system: System) -> None:
    hooks = production(bus=system.bus, cost=CostConfig(
        default_max_tokens=10, budgets=(Budget(limit=Decimal("0.001"), scope="agent:calc"),)))
    install_all(hooks, system.registry)
    costs = recorder(system, "cost.**")
    agent, _ = agent_for(system, ["first answer"])
    assert final(await agent.ainvoke(ASK)) == "first answer"
    recorded = [e for e in costs if e.event_type == "cost.recorded"]
    assert recorded and recorded[0].data["model"] == "gpt-4o"
    assert Decimal(str(recorded[0].data["cost"])) > 0
    with pytest.raises(ModelCallCancelledError, match="budget"):
        for _ in range(50):  # spend until the budget blocks the next call
            await agent.ainvoke(ASK)


async def test_caching_serves_a_repeated_tool_call(system: System) -> None:
    install_all(production(bus=system.bus, caching=CachingConfig(
        allow_agents=frozenset(), allow_models=frozenset())), system.registry)
    events = recorder(system, "tool.add.completed")
    for _ in range(2):
        agent, _ = agent_for(system, [call("add", a=5, b=5), "ten"])
        out = await agent.ainvoke(ASK)
        assert tool_messages(out)[0].content == "10"
    assert RAN == [("add", {"a": 5, "b": 5})]  # the second call was served
    assert [e.data["replaced"] for e in events] == [False, True]


async def test_rate_limiting_holds_tool_calls(system: System) -> None:
    install_all(production(bus=system.bus, rate_limit=RateLimitConfig(rate=0.01, burst=1)),
                system.registry)
    agent, _ = agent_for(system, [call("add", a=1, b=1), call("add", "c2", a=2, b=2), "done"])
    out = await agent.ainvoke(ASK)
    first, second = tool_messages(out)
    assert first.content == "2" and second.status == "error"
    assert "rate_limit" in str(second.content) and RAN == [("add", {"a": 1, "b": 1})]


async def test_rate_limiting_makes_tool_calls_wait_their_turn(system: System) -> None:
    hooks = production(bus=system.bus, rate_limit=RateLimitConfig(
        rate=10.0, burst=1, action="wait", max_wait=2.0))
    install_all(hooks, system.registry)
    agent, _ = agent_for(system, [call("add", a=1, b=1), call("add", "c2", a=2, b=2),
                                  call("add", "c3", a=3, b=3), "done"])
    out = await agent.ainvoke(ASK)
    assert [m.content for m in tool_messages(out)] == ["2", "4", "6"]
    limiter = next(h for h in hooks if h.metadata.name == "rate_limit")
    assert limiter.stats().waited >= 1


async def test_the_retry_built_in_retries_a_failing_model_call(system: System) -> None:
    class OverloadedError(Exception):
        status_code = 529

    failures = [OverloadedError("overloaded")]

    def answer(messages: list[Any]) -> str:
        if failures:
            raise failures.pop()
        return "answered after a retry"

    install_all(production(bus=system.bus, retry=RetryConfig(base_delay=0.001, jitter="none")),
                system.registry)
    agent, _ = agent_for(system, [answer])
    assert final(await agent.ainvoke(ASK)) == "answered after a retry"


# -- callbacks: chains and graphs --------------------------------------------------------------

def chain_with(model: ScriptedChatModel) -> Any:
    return ChatPromptTemplate.from_messages([("user", "{question}")]) | model


def test_the_callback_handler_observes_a_chain(system: System) -> None:
    points: list[str] = []
    for point in ("BeforeAgentExecution", "BeforeModelCall", "AfterModelCall",
                  "AfterAgentExecution"):
        hook(system, point, lambda ctx: note(points, str(ctx.point)))
    events = recorder(system)
    chain = chain_with(ScriptedChatModel(steps=["a short answer"]))
    out = chain.invoke({"question": "why?"},
                       config={"callbacks": [LlmspellCallbackHandler(system)]})
    assert isinstance(out, AIMessage) and out.content == "a short answer"
    assert points == ["before_agent_execution", "before_model_call", "after_model_call",
                      "after_agent_execution"]
    seen = types(events)
    assert seen[0] == "run.started" and seen[-1] == "run.completed"
    assert "model.openai.completed" in seen
    run_id = events[0].data["run_id"]
    assert all(e.metadata.run_id == run_id for e in events)


def test_callback_cancel_stops_and_unsupported_results_raise(system: System) -> None:
    hook(system, "BeforeModelCall", lambda ctx: Cancel("not this chain"))
    chain = chain_with(ScriptedChatModel(steps=["never"]))
    handler = LlmspellCallbackHandler(system)
    with pytest.raises(OperationCancelled, match="not this chain"):
        chain.invoke({"question": "x"}, config={"callbacks": [handler]})
    system.registry.clear()
    hook(system, "AfterModelCall", lambda ctx: Replace("cannot"), name="replacer")
    with pytest.raises(UnsupportedHookResultError, match="replace") as info:
        chain.invoke({"question": "x"}, config={"callbacks": [handler]})
    assert info.value.hook == "replacer" and info.value.framework == "langchain"


async def test_the_async_handler_observes_tools_and_graph_runs(system: System) -> None:
    events = recorder(system)
    tool_points: list[dict[str, Any]] = []
    hook(system, "BeforeToolExecution", lambda ctx: note(tool_points, ctx.data))
    agent = create_agent(ScriptedChatModel(steps=[call("add", a=3, b=4), "seven"]),
                         tools=[add], name="plain")
    out = await agent.ainvoke(ASK, config={"callbacks": [AsyncLlmspellCallbackHandler(system)]})
    assert final(out) == "seven"
    assert tool_points[0]["tool"] == "add" and tool_points[0]["params"] == {"a": 3, "b": 4}
    seen = types(events)
    assert {"tool.add.started", "tool.add.completed", "model.openai.completed",
            "run.completed"} <= set(seen)


async def test_llmspell_callbacks_installs_a_handler_for_every_run_in_the_context(
        system: System) -> None:
    events = recorder(system, "model.**")
    chain = chain_with(ScriptedChatModel(steps=["hello"]))
    with llmspell_callbacks(system):
        await asyncio.to_thread(chain.invoke, {"question": "one"})
    with llmspell_callbacks(system, asynchronous=True):
        await chain.ainvoke({"question": "two"})
    inside = len(events)
    chain.invoke({"question": "three"})  # outside: not observed
    assert inside == len(events) == 4
    assert types(events).count("model.openai.completed") == 2


# -- more results at the seams -------------------------------------------------------------------

async def test_cache_results_serve_repeated_tool_and_model_calls(system: System) -> None:
    hook(system, "AfterToolExecution", lambda ctx: Cache("sum", ttl=60))
    hook(system, "BeforeModelCall", lambda ctx: Cache(f"turn-{ctx.data['turn']}", ttl=60))
    for _ in range(2):
        agent, model = agent_for(system, [call("add", a=1, b=2), "three"])
        out = await agent.ainvoke(ASK)
        assert final(out) == "three"
    assert RAN == [("add", {"a": 1, "b": 2})]  # the second run's tool call was served
    assert len(model.seen) == 0  # and the second run's model calls too


async def test_fork_runs_llmspell_operations_and_shadow_models(system: System) -> None:
    audited: list[dict[str, Any]] = []

    @llm_tool()
    def audit(note: str) -> str:
        """Record a note."""
        audited.append({"note": note})
        return "noted"

    system.tools.register(audit)
    shadow = ScriptedChatModel(steps=["shadow answer"], model="gpt-4o-mini")
    hook(system, "BeforeToolExecution", lambda ctx: Fork(
        (ForkOperation(type="tool", target="audit", parameters={"note": ctx.data["tool"]}),))
        if ctx.data["tool"] == "add" else None)
    hook(system, "BeforeModelCall", lambda ctx: Fork(
        (ForkOperation(type="model", target="shadow"),)) if ctx.data["turn"] == 1 else None)
    events = recorder(system, "model.**")
    agent, _ = agent_for(system, [call("add", a=1, b=1), "two"], models={"shadow": shadow})
    assert final(await agent.ainvoke(ASK)) == "two"
    assert audited == [{"note": "add"}] and len(shadow.seen) == 1
    assert "model.openai.shadow" in types(events)


async def test_after_agent_retry_runs_the_agent_again_and_redirect_uses_another(
        system: System) -> None:
    attempts: list[int] = []

    def retry_once(ctx: HookContext) -> Retry | None:
        attempts.append(ctx.data["attempt"])
        return Retry(0.0, 2) if ctx.data["attempt"] == 1 else None

    hook(system, "AfterAgentExecution", retry_once)
    answers = iter(["first try", "second try"])
    agent, model = agent_for(system, [lambda messages: next(answers)])
    out = await agent.ainvoke(ASK)
    assert final(out) == "second try" and attempts == [1, 2] and len(model.seen) == 2
    assert [m.content for m in out["messages"]] == ["please compute", "second try"]

    system.registry.clear()
    # A redirect target runs its own LlmspellMiddleware (an ungoverned one is refused), so
    # its own BeforeAgentExecution runs too: the hook leaves the expert's run alone.
    expert = create_agent(ScriptedChatModel(steps=["the expert's answer"]), tools=[],
                          name="expert", middleware=[LlmspellMiddleware(system)])
    hook(system, "BeforeAgentExecution",
         lambda ctx: Redirect("expert") if ctx.data["agent"] != "expert" else None)
    agent, model = agent_for(system, ["never"], agents={"expert": expert})
    assert final(await agent.ainvoke(ASK)) == "the expert's answer" and model.seen == []


def test_a_tool_cancel_can_fail_the_run_instead(system: System) -> None:
    hook(system, "BeforeToolExecution", lambda ctx: Cancel("strict mode"))
    agent, _ = agent_for(system, [call("add", a=1, b=1), "never"], tool_cancel="raise")
    with pytest.raises(OperationCancelled, match="strict mode"):
        agent.invoke(ASK)


def test_a_sync_sub_agent_with_lua_hooks_is_a_child_run(system: System) -> None:
    host = ScriptHost(system)
    try:
        host.run_lua("""
Hook.register("BeforeToolExecution", function(ctx)
  if ctx.data.tool == "shout" then return {type = "cancel", reason = "lua says no"} end
end)
""")
        inner = create_agent(ScriptedChatModel(steps=[call("shout", text="x"), "inner done"]),
                             tools=[shout], name="inner", middleware=[LlmspellMiddleware(system)])

        @tool
        def delegate(task: str) -> str:
            """Hand the task to the inner agent."""
            return final(inner.invoke({"messages": [{"role": "user", "content": task}]}))

        outer = create_agent(ScriptedChatModel(steps=[call("delegate", task="t"), "outer done"]),
                             tools=[delegate], name="outer",
                             middleware=[LlmspellMiddleware(system)])
        events = recorder(system, "run.started")
        assert final(outer.invoke(ASK)) == "outer done"
        assert RAN == []
        starts = {e.data["name"]: e.data for e in events}
        assert starts["inner"]["parent_run_id"] == starts["outer"]["run_id"]
    finally:
        host.close()


def test_the_sync_handler_observes_tool_errors(system: System) -> None:
    @tool
    def broken() -> str:
        """Fails."""
        raise ValueError("nope")

    errors: list[str] = []
    hook(system, "ToolError", lambda ctx: note(errors, ctx.data["error"]))
    with pytest.raises(ValueError, match="nope"):
        broken.invoke({}, config={"callbacks": [LlmspellCallbackHandler(system)]})
    assert errors == ["nope"]


# -- the example -------------------------------------------------------------------------------

def test_the_example_runs_offline() -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, str(root / "examples" / "integrations" /
                                               "langchain_agent.py")],
                          capture_output=True, text=True, timeout=120, cwd=root)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "press@rival.test is outside the company" in out
    assert "[event] tool.send_email.failed" in out and "[event] run.completed" in out
    assert "cost: openai/gpt-4o-mini 3 calls" in out
    assert "(langchain 'assistant')" in out


async def test_an_interrupt_passes_through_and_the_resumed_run_continues(
        system: System) -> None:
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.types import Command, interrupt

    @tool
    def approve(amount: int) -> str:
        """Ask a human to approve a payment."""
        answer = interrupt({"amount": amount})
        return f"payment {answer}"

    errors: list[str] = []
    hook(system, "ToolError", lambda ctx: note(errors, ctx.data["error_type"]))
    hook(system, "AgentError", lambda ctx: note(errors, ctx.data["error_type"]))
    events = recorder(system, "run.*")

    def lifecycle() -> list[str]:
        return [t for t in types(events) if t != "run.steps"]

    model = ScriptedChatModel(steps=[call("approve", amount=10), "paid"])
    agent = create_agent(model, tools=[approve], checkpointer=InMemorySaver(),
                         middleware=[LlmspellMiddleware(system)])
    thread: Any = {"configurable": {"thread_id": "t1"}}
    paused = await agent.ainvoke(ASK, thread)
    assert paused["__interrupt__"][0].value == {"amount": 10}
    assert errors == [] and lifecycle() == ["run.started"]  # no error: the run waits
    done = await agent.ainvoke(Command(resume="approved"), thread)
    assert tool_messages(done)[0].content == "payment approved" and final(done) == "paid"
    assert lifecycle() == ["run.started", "run.completed"]  # one run, resumed
