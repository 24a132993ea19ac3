"""TracingHook: OpenTelemetry GenAI spans of agents, model calls, tools and workflows,
checked with the SDK's in-memory exporter through a real System (ScriptedProvider), and
exported once over OTLP/HTTP to a receiver the test starts on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from http.server import HTTPServer
from typing import Any

import pytest
import pytest_asyncio
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode

from llmspell.builtin.retry import RetryConfig, RetryHook
from llmspell.builtin.tracing import (
    CAPTURE_CONTENT_ENV,
    DECISION_EVENT,
    TracingConfig,
    TracingHook,
    otlp_tracer_provider,
)
from llmspell.errors import AgentError, InvalidValueError, OperationCancelled, ProviderError
from llmspell.hooks import HookPoint
from llmspell.hooks.result import Cancel, Modified
from llmspell.runtime import Sequential, Step, System, SystemConfig, WorkflowFailedError, tool
from llmspell.runtime.providers.base import Message, ToolSpec
from llmspell.runtime.providers.scripted import ScriptedProvider
from tests.builtin.support import receiver

__all__ = ["receiver"]  # fixtures


@tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool()
def shell(command: str) -> str:
    """Pretends to run a command."""
    return f"ran {command}"


@tool()
def explode(why: str) -> str:
    """Always fails."""
    raise RuntimeError(f"boom: {why}")


def no_shell(ctx: Any) -> Cancel | None:
    """Blocks the shell tool."""
    if ctx.component.name == "shell":
        return Cancel(reason="shell is not allowed here")
    return None


class Traced:
    """A System with the three tools, an in-memory exporter and the hook installed."""

    def __init__(self, system: System, exporter: InMemorySpanExporter, hook: TracingHook,
                 provider: TracerProvider) -> None:
        self.system = system
        self.exporter = exporter
        self.hook = hook
        self.provider = provider

    def spans(self) -> list[ReadableSpan]:
        return sorted(self.exporter.get_finished_spans(), key=lambda s: s.start_time or 0)

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        (span,) = self.named(name)
        return span


def tree(spans: list[ReadableSpan]) -> list[Any]:
    """Span names nested as ``[name, [children...]]``, children in start order."""
    ids = {s.context.span_id for s in spans}

    def children(parent_id: int | None) -> list[Any]:
        kids = [s for s in spans
                if (s.parent.span_id if s.parent is not None and s.parent.span_id in ids
                    else None) == parent_id]
        kids.sort(key=lambda s: s.start_time or 0)
        return [[s.name, children(s.context.span_id)] if children(s.context.span_id)
                else s.name for s in kids]

    return children(None)


def make_traced(config: SystemConfig | None = None,
                tracing: TracingConfig | None = None) -> tuple[System, Traced]:
    system = System(config or SystemConfig(store="memory"))
    system.tools.register_all([add, shell, explode])
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    hook = TracingHook(tracing, bus=system.bus, tracer_provider=provider)
    hook.install(system.registry)
    return system, Traced(system, exporter, hook, provider)


@pytest_asyncio.fixture
async def traced() -> AsyncIterator[Traced]:
    system, t = make_traced()
    async with system:
        yield t
    assert t.hook.stats().errors == 0


def three_turns() -> ScriptedProvider:
    """Turn 1: add and shell; turn 2: explode; turn 3: the answer."""
    return ScriptedProvider([
        {"tool_calls": [{"id": "call_add", "name": "add", "arguments": {"a": 2, "b": 3}},
                        {"id": "call_shell", "name": "shell",
                         "arguments": {"command": "rm -rf /"}}]},
        {"tool_calls": [{"id": "call_boom", "name": "explode", "arguments": {"why": "test"}}]},
        "all done: 5",
    ])


# -- the agent run --------------------------------------------------------------------------
async def test_agent_run_span_tree_names_and_attributes(traced: Traced) -> None:
    system = traced.system
    system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, no_shell, name="no_shell")
    agent = system.agents.create("helper", provider=three_turns(),
                                 tools=["add", "shell", "explode"])
    response = await agent.run("add 2 and 3, then clean up")
    assert response.output == "all done: 5"

    spans = traced.spans()
    assert tree(spans) == [["invoke_agent helper", [
        "chat scripted", "execute_tool add", "execute_tool shell", "chat scripted",
        "execute_tool explode", "chat scripted"]]]
    assert len({s.context.trace_id for s in spans}) == 1
    run_id = system.runs.list(limit=1)[0].run_id
    assert all(s.attributes is not None and s.attributes["llmspell.run.id"] == run_id
               for s in spans)
    conversation = response.correlation_id
    assert all(s.attributes is not None and s.attributes["gen_ai.conversation.id"]
               == conversation for s in spans)

    root = traced.one("invoke_agent helper")
    assert root.kind is SpanKind.INTERNAL
    assert root.status.status_code is StatusCode.UNSET
    attrs = dict(root.attributes or {})
    assert attrs["gen_ai.operation.name"] == "invoke_agent"
    assert attrs["gen_ai.agent.name"] == "helper"
    assert attrs["gen_ai.provider.name"] == "scripted"
    assert attrs["gen_ai.request.model"] == "scripted"
    assert attrs["llmspell.agent.stop_reason"] == "final_answer"
    assert attrs["llmspell.agent.turns"] == 3

    chats = traced.named("chat scripted")
    assert [c.attributes["gen_ai.response.finish_reasons"]  # type: ignore[index]
            for c in chats] == [("tool_calls",), ("tool_calls",), ("stop",)]
    for chat in chats:
        a = dict(chat.attributes or {})
        assert chat.kind is SpanKind.CLIENT
        assert a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.provider.name"] == "scripted"
        assert a["gen_ai.request.model"] == "scripted"
        assert a["gen_ai.response.model"] == "scripted"
        assert isinstance(a["gen_ai.usage.input_tokens"], int)
        assert a["gen_ai.usage.output_tokens"] > 0  # type: ignore[operator]
    assert attrs["gen_ai.usage.input_tokens"] == sum(
        c.attributes["gen_ai.usage.input_tokens"] for c in chats)  # type: ignore[index,misc]
    assert attrs["gen_ai.usage.output_tokens"] == sum(
        c.attributes["gen_ai.usage.output_tokens"] for c in chats)  # type: ignore[index,misc]

    added = traced.one("execute_tool add")
    a = dict(added.attributes or {})
    assert (a["gen_ai.operation.name"], a["gen_ai.tool.name"], a["gen_ai.tool.call.id"]) == (
        "execute_tool", "add", "call_add")
    assert added.status.status_code is StatusCode.UNSET
    assert not [e for e in added.events if e.name == DECISION_EVENT]

    blocked = traced.one("execute_tool shell")
    assert blocked.attributes is not None
    assert blocked.attributes["gen_ai.tool.call.id"] == "call_shell"
    assert blocked.status.status_code is StatusCode.ERROR
    assert blocked.attributes["error.type"] == "OperationCancelledError"
    (decision,) = [e for e in blocked.events if e.name == DECISION_EVENT]
    d = dict(decision.attributes or {})
    assert (d["llmspell.hook.name"], d["llmspell.hook.point"], d["llmspell.hook.result"],
            d["llmspell.hook.reason"]) == ("no_shell", "before_tool_execution", "cancel",
                                           "shell is not allowed here")
    assert isinstance(d["llmspell.hook.duration_ms"], float)
    assert d["llmspell.hook.duration_ms"] >= 0

    failed = traced.one("execute_tool explode")
    assert failed.attributes is not None
    assert failed.attributes["gen_ai.tool.call.id"] == "call_boom"
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes["error.type"] == "ToolExecutionError"
    assert "boom: test" in (failed.status.description or "")
    (exc,) = [e for e in failed.events if e.name == "exception"]
    assert "ToolExecutionError" in str((exc.attributes or {})["exception.type"])

    # Content is off by default: no prompt, reply, argument or result on any span.
    content = {"gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions",
               "gen_ai.tool.call.arguments", "gen_ai.tool.call.result"}
    assert not any(content & set(s.attributes or {}) for s in spans)
    stats = traced.hook.stats()
    assert (stats.spans_started, stats.spans_ended, stats.open_spans) == (7, 7, 0)
    assert stats.decisions == 1


async def test_a_failing_agent_ends_with_the_error(traced: Traced) -> None:
    def down(messages: list[Message], tools: list[ToolSpec]) -> str:
        raise ProviderError("scripted", "the model is down", status=503)

    agent = traced.system.agents.create("unlucky", provider=ScriptedProvider(down))
    with pytest.raises(AgentError):
        await agent.run("hello")
    assert tree(traced.spans()) == [["invoke_agent unlucky", ["chat scripted"]]]
    chat, root = traced.one("chat scripted"), traced.one("invoke_agent unlucky")
    for span in (chat, root):
        assert span.status.status_code is StatusCode.ERROR
        assert (span.attributes or {})["error.type"] == "ProviderError"
    assert "the model is down" in (chat.status.description or "")
    assert traced.hook.stats().open_spans == 0


async def test_agent_cancelled_by_a_hook_and_decisions_on_model_calls(traced: Traced) -> None:
    system = traced.system

    def redact(ctx: Any) -> Modified | None:
        params = dict(ctx.data["params"])
        params["temperature"] = 0.0
        return Modified({**ctx.data, "params": params})

    system.registry.register(HookPoint.BEFORE_MODEL_CALL, redact, name="redact")
    agent = system.agents.create("ok", provider=ScriptedProvider(["fine"]))
    assert (await agent.run("hi")).output == "fine"
    (decision,) = [e for e in traced.one("chat scripted").events if e.name == DECISION_EVENT]
    assert (decision.attributes or {})["llmspell.hook.result"] == "modified"
    assert (decision.attributes or {})["llmspell.hook.point"] == "before_model_call"

    system.registry.register(HookPoint.BEFORE_AGENT_EXECUTION,
                             lambda ctx: Cancel(reason="closed today"), name="gate")
    with pytest.raises(OperationCancelled):
        await agent.run("again")
    cancelled = traced.named("invoke_agent ok")[-1]
    assert cancelled.status.status_code is StatusCode.ERROR
    assert (cancelled.attributes or {})["error.type"] == "OperationCancelledError"
    (gate,) = [e for e in cancelled.events if e.name == DECISION_EVENT]
    assert (gate.attributes or {})["llmspell.hook.name"] == "gate"
    assert (gate.attributes or {})["llmspell.hook.result"] == "cancel"
    assert traced.hook.stats().open_spans == 0


async def test_decision_events_are_read_only_where_another_hook_is(traced: Traced) -> None:
    bus, registry = traced.system.bus, traced.system.registry
    assert not bus.has_subscribers("hook.before_tool_execution")
    handle = registry.register(HookPoint.BEFORE_TOOL_EXECUTION, no_shell, name="no_shell")
    assert bus.has_subscribers("hook.before_tool_execution")
    assert bus.has_subscribers("hook.after_tool_execution") is False
    registry.unregister(handle)
    assert not bus.has_subscribers("hook.before_tool_execution")


async def test_a_retried_tool_is_one_span_with_the_failed_attempt(traced: Traced) -> None:
    attempts = {"n": 0}

    @tool()
    def flaky(x: int) -> int:
        """Fails once."""
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise ConnectionError("reset by peer")
        return x

    system = traced.system
    system.tools.register(flaky)
    RetryHook(RetryConfig(max_attempts=3, base_delay=0.0, jitter="none")).install(
        system.registry)
    assert await system.tools.execute("flaky", {"x": 7}) == 7
    span = traced.one("execute_tool flaky")
    assert span.status.status_code is StatusCode.UNSET
    assert (span.attributes or {})["llmspell.attempts"] == 2
    names = [e.name for e in span.events]
    assert names.count("exception") == 1
    retry = [e for e in span.events if e.name == DECISION_EVENT]
    assert [(e.attributes or {})["llmspell.hook.result"] for e in retry] == ["retry"]


# -- workflows ------------------------------------------------------------------------------
async def test_workflow_run_spans_follow_the_steps(traced: Traced) -> None:
    system = traced.system
    system.agents.create("writer", provider=ScriptedProvider(["a poem"]))
    flow = Sequential("pipeline", [
        Step("sum", tool="add", params={"a": 1, "b": 2}),
        Step("write", agent="writer", input="write about ${outputs.sum}"),
        Step("shout", fn=lambda ctx: str(ctx.outputs["write"]).upper()),
    ])
    result = await flow.run(system, None)
    assert result.ok and result.outputs["shout"] == "A POEM"
    assert tree(traced.spans()) == [["invoke_workflow pipeline", [
        ["step sum", ["execute_tool add"]],
        ["step write", [["invoke_agent writer", ["chat scripted"]]]],
        "step shout"]]]
    root = traced.one("invoke_workflow pipeline")
    a = dict(root.attributes or {})
    assert (a["gen_ai.operation.name"], a["gen_ai.workflow.name"]) == ("invoke_workflow",
                                                                       "pipeline")
    assert a["llmspell.workflow.id"] == result.workflow_id
    assert a["llmspell.workflow.status"] == "completed"
    assert a["llmspell.run.id"] == system.runs.list(limit=1)[0].run_id
    step = dict(traced.one("step write").attributes or {})
    assert (step["llmspell.workflow.step.kind"], step["llmspell.workflow.step.target"]) == (
        "agent", "writer")


async def test_a_failing_workflow_step_marks_step_and_workflow(traced: Traced) -> None:
    flow = Sequential("fragile", [
        Step("ok", tool="add", params={"a": 1, "b": 1}),
        Step("bad", tool="explode", params={"why": "step"}),
        Step("never", tool="add", params={"a": 0, "b": 0}),
    ])
    with pytest.raises(WorkflowFailedError):
        await flow.run(traced.system, None)
    assert tree(traced.spans()) == [["invoke_workflow fragile", [
        ["step ok", ["execute_tool add"]], ["step bad", ["execute_tool explode"]]]]]
    for name in ("invoke_workflow fragile", "step bad", "execute_tool explode"):
        assert traced.one(name).status.status_code is StatusCode.ERROR, name
    assert (traced.one("step bad").attributes or {})["error.type"] == "ToolExecutionError"
    assert traced.one("step ok").status.status_code is StatusCode.UNSET
    assert traced.hook.stats().open_spans == 0


# -- content --------------------------------------------------------------------------------
SECRET = "sk-" + "a1b2c3d4" * 4


async def run_with_content(tracing: TracingConfig | None, record_content: str = "masked",
                           ) -> Traced:
    system, t = make_traced(SystemConfig(store="memory", record_content=record_content),
                            tracing)
    async with system:
        agent = system.agents.create("helper", instructions="be brief", provider=ScriptedProvider([
            {"tool_calls": [{"id": "c1", "name": "add", "arguments": {"a": 20, "b": 22}}]},
            "the answer is 42"]), tools=["add"])
        await agent.run(f"add 20 and 22; my key is {SECRET}")
    return t


async def test_content_is_captured_when_enabled_and_masked() -> None:
    t = await run_with_content(TracingConfig(capture_content=True))
    first, second = t.named("chat scripted")
    a = dict(first.attributes or {})
    assert json.loads(str(a["gen_ai.system_instructions"])) == [
        {"type": "text", "content": "be brief"}]
    (user,) = json.loads(str(a["gen_ai.input.messages"]))
    assert user["role"] == "user"
    text = user["parts"][0]["content"]
    assert text.startswith("add 20 and 22; my key is ") and SECRET not in text
    assert "***" in text                                  # record_content="masked"
    (out,) = json.loads(str(a["gen_ai.output.messages"]))
    assert out["finish_reason"] == "tool_calls"
    assert out["parts"] == [{"type": "tool_call", "id": "c1", "name": "add",
                             "arguments": {"a": 20, "b": 22}}]
    b = dict(second.attributes or {})
    (answer,) = json.loads(str(b["gen_ai.output.messages"]))
    assert answer["parts"] == [{"type": "text", "content": "the answer is 42"}]
    (result,) = json.loads(str(b["gen_ai.input.messages"]))
    assert result["parts"][0] == {"type": "tool_call_response", "id": "c1", "response": "42"}
    tool_span = dict(t.one("execute_tool add").attributes or {})
    assert json.loads(str(tool_span["gen_ai.tool.call.arguments"])) == {"a": 20, "b": 22}
    assert json.loads(str(tool_span["gen_ai.tool.call.result"])) == 42


async def test_content_follows_record_content_none() -> None:
    t = await run_with_content(TracingConfig(capture_content=True), record_content="none")
    first = dict(t.named("chat scripted")[0].attributes or {})
    (user,) = json.loads(str(first["gen_ai.input.messages"]))
    assert user["parts"] == [] and user["chars"] > 0  # the length, never the text
    assert "key" not in str(first.get("gen_ai.input.messages"))


async def test_content_off_by_default_and_on_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CAPTURE_CONTENT_ENV, raising=False)
    off = await run_with_content(None)
    assert not any("gen_ai.input.messages" in (s.attributes or {}) for s in off.spans())
    monkeypatch.setenv(CAPTURE_CONTENT_ENV, "true")
    on = await run_with_content(None)
    assert all("gen_ai.input.messages" in (s.attributes or {})
               for s in on.named("chat scripted"))
    explicit = await run_with_content(TracingConfig(capture_content=False))
    assert not any("gen_ai.input.messages" in (s.attributes or {}) for s in explicit.spans())


# -- always ended, parents, runs ------------------------------------------------------------
async def test_a_cancelled_task_leaves_no_span_open(traced: Traced) -> None:
    started = asyncio.Event()

    @tool()
    async def slow(seconds: float) -> str:
        """Sleeps."""
        started.set()
        await asyncio.sleep(seconds)
        return "slept"

    traced.system.tools.register(slow)
    agent = traced.system.agents.create("sleepy", provider=ScriptedProvider([
        {"tool_calls": [{"name": "slow", "arguments": {"seconds": 30}}]}, "done"]),
        tools=["slow"])
    task = asyncio.ensure_future(agent.run("wait"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert traced.hook.stats().open_spans == 0
    slow_span = traced.one("execute_tool slow")
    assert slow_span.status.status_code is StatusCode.ERROR
    assert (slow_span.attributes or {})["error.type"] == "CancelledError"
    # The cancelled tool call publishes its own tool.slow.failed (CancelledError), which
    # ends the span; the run's end closing it is only the fallback.
    assert "llmspell.span.closed_by" not in (slow_span.attributes or {})
    assert tree(traced.spans()) == [["invoke_agent sleepy", ["chat scripted",
                                                             "execute_tool slow"]]]


async def test_spans_nest_under_the_application_span_and_other_runs(traced: Traced) -> None:
    tracer = traced.provider.get_tracer("app")
    with tracer.start_as_current_span("handle request"):
        await traced.system.tools.execute("add", {"a": 1, "b": 1})
    async with traced.system.runs.start("job", "nightly") as run:
        await traced.system.tools.execute("add", {"a": 2, "b": 2})
        run.output = "ok"
    assert tree(traced.spans()) == [["handle request", ["execute_tool add"]],
                                    ["job nightly", ["execute_tool add"]]]
    job = traced.one("job nightly")
    assert (job.attributes or {})["llmspell.run.kind"] == "job"
    assert (job.attributes or {})["llmspell.run.id"] == run.run_id


async def test_no_tracer_provider_installs_nothing() -> None:
    system = System(SystemConfig(store="none"))
    hook = TracingHook(bus=system.bus)  # the API's default provider: no SDK configured
    assert not hook.active
    assert hook.install(system.registry) == []
    assert len(system.registry) == 0
    assert not system.bus.has_subscribers("tool.add.completed")
    assert hook.stats().active is False


async def test_sampled_out_spans_cost_bookkeeping_only() -> None:
    system = System(SystemConfig(store="memory"))
    system.tools.register(add)
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    hook = TracingHook(bus=system.bus, tracer_provider=provider)
    hook.install(system.registry)
    async with system:
        assert await system.tools.execute("add", {"a": 1, "b": 2}) == 3
    assert exporter.get_finished_spans() == ()
    stats = hook.stats()
    assert (stats.spans_started, stats.spans_ended, stats.errors) == (1, 1, 0)


async def test_uninstall_unsubscribes_and_ends_open_spans(traced: Traced) -> None:
    system = traced.system
    traced.hook.uninstall(system.registry)
    assert not system.bus.has_subscribers("tool.add.completed")
    assert not system.registry.has_hooks(HookPoint.BEFORE_TOOL_EXECUTION)
    await system.tools.execute("add", {"a": 1, "b": 2})
    assert traced.spans() == []


def test_config_is_checked() -> None:
    with pytest.raises(InvalidValueError, match="max_open_spans"):
        TracingConfig(max_open_spans=0)
    with pytest.raises(InvalidValueError, match="capture_content"):
        TracingConfig(capture_content="yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="EventBus"):
        TracingHook(bus=object())  # type: ignore[arg-type]


async def test_max_open_spans_ends_the_oldest() -> None:
    system, t = make_traced(tracing=TracingConfig(max_open_spans=2))
    release = asyncio.Event()

    @tool()
    async def wait() -> str:
        """Waits for the test."""
        await release.wait()
        return "ok"

    system.tools.register(wait)
    async with system:
        tasks = [asyncio.ensure_future(system.tools.execute("wait")) for _ in range(3)]
        while t.hook.stats().spans_started < 3:
            await asyncio.sleep(0.001)
        assert t.hook.stats().evicted == 1
        release.set()
        await asyncio.gather(*tasks)
    assert [(s.attributes or {}).get("llmspell.span.closed_by") for s in t.spans()] == [
        "evicted", None, None]
    assert t.hook.stats().open_spans == 0


# -- OTLP/HTTP ------------------------------------------------------------------------------
async def test_spans_export_over_otlp_http(receiver: HTTPServer) -> None:
    port = receiver.server_address[1]
    provider = otlp_tracer_provider(f"http://127.0.0.1:{port}/v1/traces",
                                    service_name="tracing-test", batch=False)
    system = System(SystemConfig(store="memory"))
    system.tools.register(add)
    hook = TracingHook(bus=system.bus, tracer_provider=provider)
    hook.install(system.registry)
    async with system:
        agent = system.agents.create("helper", provider=ScriptedProvider([
            {"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 2}}]}, "3"]),
            tools=["add"])
        await agent.run("1 + 2?")
    provider.force_flush()
    provider.shutdown()
    posts = receiver.posts  # type: ignore[attr-defined]
    assert posts and all(path == "/v1/traces" for path, _, _ in posts)
    assert all(kind == "application/x-protobuf" for _, kind, _ in posts)
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    names: list[str] = []
    services: set[str] = set()
    for _, _, body in posts:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            services |= {a.value.string_value for a in resource_spans.resource.attributes
                         if a.key == "service.name"}
            for scope in resource_spans.scope_spans:
                assert scope.scope.name == "llmspell"
                names.extend(span.name for span in scope.spans)
    assert sorted(names) == sorted(["invoke_agent helper", "chat scripted", "execute_tool add",
                                    "chat scripted"])
    assert services == {"tracing-test"}


# -- more decisions -------------------------------------------------------------------------
async def test_hook_failures_and_agent_decisions_end_agent_spans(traced: Traced) -> None:
    system = traced.system

    def broken(ctx: Any) -> None:
        raise RuntimeError("hook bug")

    system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, broken, name="broken")
    assert await system.tools.execute("add", {"a": 1, "b": 1}) == 2  # fail-open
    (failure,) = [e for e in traced.one("execute_tool add").events if e.name == DECISION_EVENT]
    assert (failure.attributes or {})["llmspell.hook.result"] == "error"
    assert "hook bug" in str((failure.attributes or {})["llmspell.hook.reason"])

    from llmspell.hooks.result import Replace

    agent = system.agents.create("served", provider=ScriptedProvider(["from the model"]))
    handle = system.registry.register(HookPoint.BEFORE_AGENT_EXECUTION,
                                      lambda ctx: Replace({"output": "from a hook"}),
                                      name="serve")
    assert (await agent.run("hi")).output == "from a hook"
    served = traced.named("invoke_agent served")[-1]
    assert served.status.status_code is StatusCode.UNSET
    assert [(e.attributes or {})["llmspell.hook.result"] for e in served.events] == ["replace"]
    system.registry.unregister(handle)

    def tag(ctx: Any) -> Modified:
        return Modified({**ctx.data, "result": {**ctx.data["result"], "output": "tagged"}})

    system.registry.register(HookPoint.AFTER_AGENT_EXECUTION, tag, name="tag")
    assert (await agent.run("hi")).output == "tagged"
    tagged = traced.named("invoke_agent served")[-1]
    assert tree([tagged, *traced.named("chat scripted")]) == [
        ["invoke_agent served", ["chat scripted"]]]
    assert [(e.attributes or {})["llmspell.hook.result"] for e in tagged.events] == [
        "modified"]

    def down(messages: list[Message], tools: list[ToolSpec]) -> str:
        raise ProviderError("scripted", "the model is down", status=503)

    rescued = system.agents.create("rescued", provider=ScriptedProvider(down))
    system.registry.register(HookPoint.AGENT_ERROR,
                             lambda ctx: Replace({"output": "fallback"}), name="fallback")
    assert (await rescued.run("hi")).output == "fallback"
    span = traced.one("invoke_agent rescued")
    assert span.status.status_code is StatusCode.UNSET  # what the caller saw
    assert [e.name for e in span.events] == [DECISION_EVENT, "exception"]
    assert (span.events[1].attributes or {})["exception.type"] == "ProviderError"
    assert traced.hook.stats().open_spans == 0


async def test_a_workflow_cancelled_by_a_hook(traced: Traced) -> None:
    system = traced.system
    system.registry.register(HookPoint.BEFORE_WORKFLOW_STAGE,
                             lambda ctx: Cancel(reason="maintenance")
                             if ctx.data["step"] == "second" else None, name="freeze")
    flow = Sequential("guarded", [Step("first", tool="add", params={"a": 1, "b": 1}),
                                  Step("second", tool="add", params={"a": 2, "b": 2})])
    with pytest.raises(OperationCancelled):
        await flow.run(system, None)
    assert tree(traced.spans()) == [["invoke_workflow guarded", [
        ["step first", ["execute_tool add"]], "step second"]]]
    root, second = traced.one("invoke_workflow guarded"), traced.one("step second")
    for span in (root, second):
        assert span.status.status_code is StatusCode.ERROR
        assert (span.attributes or {})["error.type"] == "OperationCancelledError"
    assert "maintenance" in (root.status.description or "")
    (freeze,) = [e for e in second.events if e.name == DECISION_EVENT]
    assert (freeze.attributes or {})["llmspell.hook.name"] == "freeze"


async def test_a_replayed_run_is_marked(traced: Traced) -> None:
    agent = traced.system.agents.create("again", provider=ScriptedProvider(["once", "twice"]))
    await agent.run("hi")
    original = traced.system.runs.list(limit=1)[0].run_id
    result = await traced.system.runs.replay(original)
    assert result.output == "once"
    first, replayed = traced.named("invoke_agent again")
    assert "llmspell.run.replay_of" not in (first.attributes or {})
    attrs = dict(replayed.attributes or {})
    assert attrs["llmspell.run.replay_of"] == original
    assert attrs["llmspell.run.id"] == result.run_id
    assert attrs["llmspell.run.replay_mode"] == "exact"


# -- framework adapters ---------------------------------------------------------------------
def _example(name: str) -> Any:
    """An adapter example module (examples/integrations/<name>.py), imported, not run."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "integrations" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"tracing_example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def _langchain(system: System) -> tuple[str, str, list[str]]:
    pytest.importorskip("langchain")
    ex = _example("langchain_agent")
    from langchain.agents import create_agent
    from langchain_core.messages import HumanMessage

    from llmspell.integrations.langchain import LlmspellMiddleware

    system.registry.register(ex.company_mail_only)
    agent = create_agent(ex.OfflineModel(), tools=[ex.weather, ex.send_email],
                         name="assistant", middleware=[LlmspellMiddleware(system)])
    await agent.ainvoke({"messages": [HumanMessage("Weather in Lisbon? Mail press@rival.test.")]})
    return "langchain assistant", "invoke_agent assistant", ["weather", "send_email"]


async def _openai_agents(system: System) -> tuple[str, str, list[str]]:
    agents = pytest.importorskip("agents")
    ex = _example("openai_agents_agent")
    from llmspell.integrations.openai_agents import OpenAIAgentsAdapter

    agents.set_trace_processors([])  # nothing goes to api.openai.com
    system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, ex.transfer_guard,
                             name="transfer-guard")
    agent = agents.Agent(name="banker", instructions="Help with accounts.",
                         model=ex.OfflineModel(), tools=[ex.balance, ex.transfer])
    await OpenAIAgentsAdapter(system).run(agent, "Move 800 EUR out of ACC-9.")
    return "openai-agents banker", "invoke_agent banker", ["balance", "transfer"]


async def _pydantic_ai(system: System) -> tuple[str, str, list[str]]:
    pytest.importorskip("pydantic_ai")
    ex = _example("pydantic_ai_agent")
    system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, ex.guard, name="refund-guard")
    await ex.build_agent(system).run("Refund order A-17.")
    return "pydantic-ai support", "invoke_agent support", ["lookup_order", "refund"]


@pytest.mark.parametrize("adapter", [_langchain, _openai_agents, _pydantic_ai],
                         ids=["langchain", "openai-agents", "pydantic-ai"])
async def test_framework_adapter_runs_give_the_same_spans(adapter: Any) -> None:
    system, t = make_traced()
    async with system:
        run_span, agent_span, (first, blocked) = await adapter(system)
    chats = {s.name for s in t.spans() if s.name.startswith("chat ")}
    assert len(chats) == 1  # one model: "chat <model>"
    (chat,) = chats
    assert tree(t.spans()) == [[run_span, [[agent_span, [
        chat, f"execute_tool {first}", chat, f"execute_tool {blocked}", chat]]]]]
    guarded = t.one(f"execute_tool {blocked}")
    assert guarded.status.status_code is StatusCode.ERROR
    assert (guarded.attributes or {})["error.type"] == "OperationCancelledError"
    assert [(e.attributes or {})["llmspell.hook.result"] for e in guarded.events
            if e.name == DECISION_EVENT] == ["cancel"]
    stats = t.hook.stats()
    assert (stats.open_spans, stats.closed_with_parent, stats.errors) == (0, 0, 0)
