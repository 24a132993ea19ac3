"""Agents: lifecycle, conversation with tools, points, events and every result's effect."""

from __future__ import annotations

import asyncio

import pytest

from llmspell.errors import AgentError, AgentStateError, InvalidValueError, OperationCancelled
from llmspell.hooks import (
    Cache,
    Cancel,
    Fork,
    ForkOperation,
    HookContext,
    HookPoint,
    Modified,
    Redirect,
    Replace,
    Retry,
    Skipped,
)
from llmspell.runtime import MODEL_CALL, PAUSE, RECOVER, RESUME, AgentState, System
from llmspell.runtime.providers.scripted import ScriptedProvider

P = HookPoint


def calculator_script() -> ScriptedProvider:
    """Asks for add(2, 3) when it sees a question, answers once it sees the tool result."""

    def reply(messages, tools):  # type: ignore[no-untyped-def]
        last = messages[-1]
        if last.role == "tool":
            return f"The answer is {last.content}."
        return {"tool_calls": [{"name": "add", "arguments": {"a": 2, "b": 3}}]}

    return ScriptedProvider(reply)


def on(system: System, point: str, fn, **kw) -> None:  # type: ignore[no-untyped-def]
    system.registry.register(point, fn, **kw)


async def test_conversation_with_tool_calls_and_token_usage(system, events) -> None:  # type: ignore[no-untyped-def]
    usage_seen: list[dict] = []  # type: ignore[type-arg]
    on(system, P.AFTER_MODEL_CALL,
       lambda c: usage_seen.append({**c.data["result"]["usage"],
                                    "provider": c.data["provider"]}), name="cost")
    agent = system.agents.create("helper", provider=calculator_script(), tools=["add"],
                                 instructions="Use tools.")
    response = await agent.run("What is 2 + 3?")
    assert response.output == "The answer is 5."
    assert response.stop_reason == "final_answer" and response.turns == 2
    assert response.tool_calls == [{"tool": "add", "arguments": {"a": 2, "b": 3},
                                    "result": 5}]
    assert len(usage_seen) == 2 and usage_seen[0]["provider"] == "scripted"
    assert response.token_usage["total"] == sum(u["total_tokens"] for u in usage_seen)
    assert response.token_usage["calls"] == 2
    assert agent.state is AgentState.READY
    by_type = [e.event_type for e in events]
    assert by_type.count("agent.helper.model_call") == 2
    assert "tool.add.completed" in by_type
    correlated = {e.correlation_id for e in events
                  if e.event_type.startswith(("tool.add", "agent.helper.model_call"))}
    assert correlated == {response.correlation_id}
    transitions = [(e.data["from"], e.data["to"]) for e in events
                   if e.event_type == "agent.helper.state_changed"]
    assert transitions == [("uninitialized", "initializing"), ("initializing", "ready"),
                           ("ready", "running"), ("running", "ready")]


async def test_turn_limit(system) -> None:  # type: ignore[no-untyped-def]
    always_tools = ScriptedProvider(lambda m, t: {"tool_calls": [
        {"name": "add", "arguments": {"a": 1, "b": 1}}]})
    agent = system.agents.create("looper", provider=always_tools, tools=["add"], max_turns=3)
    response = await agent.run("loop")
    assert response.stop_reason == "turn_limit" and response.turns == 3
    # The calls of the last answer are not run: the model could never read their results.
    assert len(response.tool_calls) == 2
    assert [(c["tool"], c["arguments"]) for c in response.unrun_tool_calls] == \
        [("add", {"a": 1, "b": 1})]


async def test_tool_errors_are_fed_back_to_the_model(system) -> None:  # type: ignore[no-untyped-def]
    def reply(messages, tools):  # type: ignore[no-untyped-def]
        if messages[-1].role == "tool":
            return f"tool said: {messages[-1].content}"
        return {"tool_calls": [{"name": "fail", "arguments": {"message": "disk full"}}]}

    agent = system.agents.create("robust", provider=ScriptedProvider(reply), tools=["fail"])
    response = await agent.run("go")
    assert "disk full" in response.output and "error" in response.tool_calls[0]


async def test_every_agent_point_fires_with_component_and_correlation(system, events) -> None:  # type: ignore[no-untyped-def]
    seen: dict[str, list[HookContext]] = {}

    def record(ctx: HookContext) -> None:
        seen.setdefault(str(ctx.point), []).append(ctx)

    points = [P.BEFORE_AGENT_INIT, P.AFTER_AGENT_INIT, P.BEFORE_AGENT_EXECUTION,
              P.AFTER_AGENT_EXECUTION, P.AGENT_ERROR, P.BEFORE_AGENT_SHUTDOWN,
              P.AFTER_AGENT_SHUTDOWN, PAUSE, RESUME, RECOVER, MODEL_CALL]
    for point in points:
        on(system, point, record, name=f"rec-{point}")
    one_reply = ScriptedProvider(["first answer"])  # the second run finds the script empty
    agent = system.agents.create("a1", provider=one_reply)
    response = await agent.run("hello")
    await agent.pause()
    await agent.resume()
    with pytest.raises(AgentError):
        await agent.run("again")  # the script ran out: an error the hooks see
    assert agent.state is AgentState.ERROR
    await agent.recover()
    await agent.shutdown()
    table = [
        (P.BEFORE_AGENT_INIT, {"from": "uninitialized", "to": "initializing"}),
        (P.AFTER_AGENT_INIT, {"from": "initializing", "to": "ready"}),
        (P.BEFORE_AGENT_EXECUTION, {"agent": "a1", "params": {"input": "hello"}}),
        (P.AFTER_AGENT_EXECUTION, {"agent": "a1", "attempt": 1}),
        (P.AGENT_ERROR, {"agent": "a1", "error_type": "ProviderError"}),
        (PAUSE, {"from": "ready", "to": "paused"}),
        (RESUME, {"from": "paused", "to": "ready"}),
        (RECOVER, {"from": "error", "to": "recovering"}),
        (P.BEFORE_AGENT_SHUTDOWN, {"from": "ready", "to": "terminating"}),
        (P.AFTER_AGENT_SHUTDOWN, {"from": "terminating", "to": "terminated"}),
    ]
    for point, expected in table:
        ctx = seen[str(point)][0]
        assert ctx.component.type == "agent" and ctx.component.name == "a1", point
        for key, value in expected.items():
            assert ctx.data[key] == value, (point, key)
    assert seen[str(P.AFTER_AGENT_EXECUTION)][0].data["result"]["output"] == "first answer"
    assert seen[str(P.BEFORE_AGENT_EXECUTION)][0].correlation_id == response.correlation_id
    assert seen[str(MODEL_CALL)][0].correlation_id == response.correlation_id
    hook_events = {e.event_type for e in events if e.event_type.startswith("hook.")}
    for point in points[:7]:
        assert f"hook.{point}" in hook_events
    assert "hook.custom.agent_pause" in hook_events
    assert agent.state is AgentState.TERMINATED


async def test_illegal_transitions_raise_a_typed_error(system) -> None:  # type: ignore[no-untyped-def]
    agent = system.agents.create("a2", provider=ScriptedProvider(["x"]))
    with pytest.raises(AgentStateError) as info:
        await agent.resume()
    assert info.value.current == "uninitialized" and "initializing" in str(info.value)
    await agent.initialize()
    await agent.pause()
    with pytest.raises(AgentStateError, match="paused"):
        await agent.run("x")
    await agent.shutdown()
    await agent.shutdown()  # idempotent
    with pytest.raises(AgentStateError):
        await agent.initialize()
    with pytest.raises(InvalidValueError):
        await agent.run(42)  # type: ignore[arg-type]


# -- one test per (result, agent) pair ---------------------------------------------------------

async def test_cancel_blocks_the_transition(system) -> None:  # type: ignore[no-untyped-def]
    agent = system.agents.create("a3", provider=ScriptedProvider(["x", "y"]))
    on(system, P.BEFORE_AGENT_INIT, lambda c: Cancel("not configured"), name="gate")
    with pytest.raises(OperationCancelled, match="not configured"):
        await agent.initialize()
    assert agent.state is AgentState.UNINITIALIZED
    system.registry.clear()
    on(system, P.AFTER_AGENT_INIT, lambda c: Cancel("health check failed"), name="after")
    with pytest.raises(OperationCancelled):
        await agent.initialize()
    assert agent.state is AgentState.ERROR  # the after-init hook blocked Ready
    system.registry.clear()
    await agent.recover()
    on(system, P.BEFORE_AGENT_EXECUTION, lambda c: Cancel("budget"), name="budget")
    with pytest.raises(OperationCancelled) as info:
        await agent.run("x")
    assert info.value.hook == "budget" and agent.state is AgentState.READY
    system.registry.clear()
    on(system, P.BEFORE_AGENT_SHUTDOWN, lambda c: Cancel("busy"), name="busy")
    with pytest.raises(OperationCancelled):
        await agent.shutdown()
    assert agent.state is AgentState.READY


async def test_modified_replaces_input_and_output(system) -> None:  # type: ignore[no-untyped-def]
    echo = ScriptedProvider(lambda m, t: f"echo: {m[-1].content}")
    agent = system.agents.create("a4", provider=echo)
    on(system, P.BEFORE_AGENT_EXECUTION,
       lambda c: Modified({**c.data, "params": {"input": c.data["params"]["input"].upper()}}),
       name="upper")
    on(system, P.AFTER_AGENT_EXECUTION,
       lambda c: Modified({**c.data, "result": {**c.data["result"],
                                                "output": c.data["result"]["output"] + "!"}}),
       name="bang")
    assert (await agent.run("hi")).output == "echo: HI!"


async def test_replace_skips_the_model(system) -> None:  # type: ignore[no-untyped-def]
    provider = ScriptedProvider(["never used"])
    agent = system.agents.create("a5", provider=provider)
    on(system, P.BEFORE_AGENT_EXECUTION, lambda c: Replace("canned answer"), name="canned")
    response = await agent.run("q")
    assert response.output == "canned answer" and response.replaced
    assert provider.calls == []


async def test_redirect_runs_another_agent(system) -> None:  # type: ignore[no-untyped-def]
    system.agents.create("expert", provider=ScriptedProvider(["expert answer"]))
    novice = system.agents.create("novice", provider=ScriptedProvider(["novice answer"]))
    on(system, P.BEFORE_AGENT_EXECUTION,
       lambda c: Redirect("expert") if c.data["agent"] == "novice" else None, name="route")
    response = await novice.run("hard question")
    assert response.output == "expert answer" and response.redirected_to == "expert"


async def test_retry_reruns_after_an_error(system) -> None:  # type: ignore[no-untyped-def]
    attempts = {"n": 0}

    def flaky(messages, tools):  # type: ignore[no-untyped-def]
        attempts["n"] += 1
        if attempts["n"] < 3:
            raise ConnectionError("rate limited")
        return "finally"

    agent = system.agents.create("a6", provider=ScriptedProvider(flaky))
    on(system, P.AGENT_ERROR, lambda c: Retry(0.001, 5), name="retry")
    response = await agent.run("q")
    assert response.output == "finally" and response.attempts == 3
    assert agent.state is AgentState.READY


async def test_fork_runs_other_agents_and_tools_concurrently(system) -> None:  # type: ignore[no-untyped-def]
    system.agents.create("critic", provider=ScriptedProvider(["looks fine"]))
    writer = system.agents.create("writer", provider=ScriptedProvider(["a draft"]))
    fork = Fork((ForkOperation(type="agent", target="critic", parameters={"input": "review"}),
                 ForkOperation(type="tool", target="add", parameters={"a": 1, "b": 2})))
    on(system, P.BEFORE_AGENT_EXECUTION,
       lambda c: fork if c.data["agent"] == "writer" else None, name="fork")
    response = await writer.run("write")
    assert response.output == "a draft"
    assert response.forks == [
        {"type": "agent", "target": "critic", "result": "looks fine"},
        {"type": "tool", "target": "add", "result": 3},
    ]


async def test_cache_serves_identical_runs(system) -> None:  # type: ignore[no-untyped-def]
    provider = ScriptedProvider(lambda m, t: f"computed for {m[-1].content}")
    agent = system.agents.create("a7", provider=provider)
    on(system, P.BEFORE_AGENT_EXECUTION,
       lambda c: Cache("q:" + c.data["params"]["input"], ttl=60), name="cache")
    first = await agent.run("same")
    second = await agent.run("same")
    assert first.output == second.output == "computed for same"
    assert second.cached and len(provider.calls) == 1


async def test_skipped_is_ignored_and_error_replace_recovers(system) -> None:  # type: ignore[no-untyped-def]
    def broken(messages, tools):  # type: ignore[no-untyped-def]
        raise RuntimeError("provider exploded")

    agent = system.agents.create("a8", provider=ScriptedProvider(broken))
    on(system, P.BEFORE_AGENT_EXECUTION, lambda c: Skipped("n/a"), name="skip")
    on(system, P.AGENT_ERROR, lambda c: Replace("sorry, try later"), name="fallback")
    response = await agent.run("q")
    assert response.output == "sorry, try later"
    assert agent.state is AgentState.READY  # recovered


async def test_after_cancel_and_after_redirect(system) -> None:  # type: ignore[no-untyped-def]
    system.agents.create("safe", provider=ScriptedProvider(["safe answer"]))
    agent = system.agents.create("a9", provider=ScriptedProvider(["secret 123", "secret 456"]))
    on(system, P.AFTER_AGENT_EXECUTION,
       lambda c: Cancel("leak") if "secret" in str(c.data["result"]) else None, name="dlp")
    with pytest.raises(OperationCancelled, match="leak"):
        await agent.run("q")
    system.registry.clear()
    on(system, P.AFTER_AGENT_EXECUTION,
       lambda c: Redirect("safe") if c.data["agent"] == "a9" else None, name="swap")
    assert (await agent.run("q")).output == "safe answer"


async def test_hooks_that_fail_hang_or_trip_never_break_the_agent(system) -> None:  # type: ignore[no-untyped-def]
    def broken(ctx: HookContext) -> None:
        raise RuntimeError("hook bug")

    async def hangs(ctx: HookContext) -> None:
        await asyncio.sleep(10)

    for point in (P.BEFORE_AGENT_EXECUTION, P.AFTER_AGENT_EXECUTION, MODEL_CALL):
        on(system, point, broken, name=f"broken-{point}")
        on(system, point, hangs, name=f"hangs-{point}", timeout=0.02)
    agent = system.agents.create("tough", provider=ScriptedProvider(lambda m, t: "ok"))
    for _ in range(4):
        assert (await agent.run("q")).output == "ok"
    assert any(b.state == "open" for b in system.executor.breakers())


async def test_unknown_agents_and_bad_settings(system) -> None:  # type: ignore[no-untyped-def]
    system.agents.create("alpha", provider=ScriptedProvider(["x"]))
    with pytest.raises(AgentError, match="did you mean 'alpha'"):
        system.agents.get("alpah")
    with pytest.raises(InvalidValueError, match="already exists"):
        system.agents.create("alpha", provider=ScriptedProvider(["x"]))
    with pytest.raises(InvalidValueError):
        system.agents.create("bad", provider=ScriptedProvider(["x"]), max_turns=0)
    with pytest.raises(InvalidValueError, match="whole number"):
        system.agents.create("bad", provider=ScriptedProvider(["x"]), max_turns="3")
    with pytest.raises(InvalidValueError, match="provider must be a model provider") as info:
        system.agents.create("bad", provider="openai")
    assert info.value.hint
    with pytest.raises(InvalidValueError, match="list of tool names"):
        system.agents.create("bad", provider=ScriptedProvider(["x"]), tools="calculator")
    with pytest.raises(InvalidValueError, match="list of tool names"):
        system.agents.create("bad", provider=ScriptedProvider(["x"]), tools=[3])
    assert "bad" not in system.agents
    from_generator = system.agents.create("gen", provider=ScriptedProvider(["x"]),
                                          tools=(name for name in ["add"]))
    assert from_generator.tool_names == ["add"]
    agent = system.agents.create("needs-tool", provider=ScriptedProvider(["x"]),
                                 tools=["missing"])
    with pytest.raises(Exception, match="missing"):
        await agent.initialize()
    assert agent.state is AgentState.ERROR
