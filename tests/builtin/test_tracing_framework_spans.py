"""TracingConfig.framework_spans: with ``"decisions"`` a framework adapter's run gives no
invoke_agent/chat/execute_tool spans of llmspell's (the framework's own instrumentation
makes them) while hook decisions still land on a span; with the default, spans as before.
Checked with the SDK's in-memory exporter and the adapters' offline example agents."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from llmspell.builtin.tracing import (
    DECISION_EVENT,
    FRAMEWORK_RUN_KINDS,
    TracingConfig,
)
from llmspell.errors import InvalidValueError
from llmspell.hooks import HookPoint
from llmspell.hooks.result import Modified
from llmspell.runtime import System
from tests.builtin.test_tracing import (
    _example,
    _langchain,
    _openai_agents,
    _pydantic_ai,
    make_traced,
    tree,
)

DECISIONS = TracingConfig(framework_spans="decisions")
OPERATIONS = ("invoke_agent ", "chat ", "execute_tool ")


def decisions(span: ReadableSpan) -> list[dict[str, Any]]:
    """The attributes of the span's hook-decision events."""
    return [dict(e.attributes or {}) for e in span.events if e.name == DECISION_EVENT]


def llmspell_spans(spans: list[ReadableSpan]) -> list[ReadableSpan]:
    """The spans llmspell's tracer made."""
    return [s for s in spans
            if s.instrumentation_scope is not None and s.instrumentation_scope.name == "llmspell"]


def test_the_switch_is_checked_and_defaults_to_every_span() -> None:
    config = TracingConfig()
    assert config.framework_spans == "all"
    assert config.frameworks == FRAMEWORK_RUN_KINDS
    assert TracingConfig(frameworks={"pydantic-ai"}).frameworks == frozenset({"pydantic-ai"})
    for bad in ({"framework_spans": "none"}, {"framework_spans": True},
                {"frameworks": "pydantic-ai"}, {"frameworks": frozenset({""})},
                {"frameworks": [1]}):
        with pytest.raises(InvalidValueError):
            TracingConfig(**bad)


@pytest.mark.parametrize("module", ["langchain", "openai_agents", "pydantic_ai"])
def test_the_run_kinds_are_the_adapters_framework_names(module: str) -> None:
    pytest.importorskip({"openai_agents": "agents"}.get(module, module))
    adapter = importlib.import_module(f"llmspell.integrations.{module}")
    assert adapter.FRAMEWORK in FRAMEWORK_RUN_KINDS


@pytest.mark.parametrize("adapter", [_langchain, _openai_agents, _pydantic_ai],
                         ids=["langchain", "openai-agents", "pydantic-ai"])
async def test_decisions_only_leaves_the_run_span_with_the_decisions(adapter: Any) -> None:
    system, t = make_traced(tracing=DECISIONS)
    async with system:
        run_span, _agent, _tools = await adapter(system)
    assert tree(t.spans()) == [run_span]  # no llmspell invoke_agent, chat or execute_tool
    run = t.one(run_span)
    (cancel,) = decisions(run)
    assert cancel["llmspell.hook.point"] == "before_tool_execution"
    assert cancel["llmspell.hook.result"] == "cancel"
    assert cancel["llmspell.run.id"] == (run.attributes or {})["llmspell.run.id"]
    assert cancel["llmspell.hook.reason"]
    stats = t.hook.stats()
    assert (stats.open_spans, stats.decisions, stats.errors) == (0, 1, 0)


async def _instrumented_pydantic_ai(system: System, provider: Any) -> None:
    """The Pydantic AI example agent with its own OpenTelemetry instrumentation on the
    same tracer provider."""
    pytest.importorskip("pydantic_ai")
    from pydantic_ai.models.instrumented import InstrumentationSettings

    ex = _example("pydantic_ai_agent")
    system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, ex.guard, name="refund-guard")
    agent = ex.build_agent(system)
    agent.instrument = InstrumentationSettings(tracer_provider=provider)
    await agent.run("Refund order A-17.")


async def test_decisions_go_on_pydantic_ai_own_spans_without_duplicates() -> None:
    system, t = make_traced(tracing=DECISIONS)
    async with system:
        await _instrumented_pydantic_ai(system, t.provider)
    spans = t.spans()
    assert [s.name for s in llmspell_spans(spans)] == ["pydantic-ai support"]
    chat = "chat gpt-4o-mini"
    assert tree(spans) == [["invoke_agent support", [
        "pydantic-ai support", chat, "execute_tool lookup_order", chat,
        "execute_tool refund", chat]]]
    # One span per call, the framework's: each operation name once per call.
    assert [s.name for s in spans if s.name.startswith(OPERATIONS[1:])] == [
        chat, "execute_tool lookup_order", chat, "execute_tool refund", chat]
    (cancel,) = decisions(t.one("execute_tool refund"))
    assert (cancel["llmspell.hook.name"], cancel["llmspell.hook.result"]) == (
        "refund-guard", "cancel")
    assert cancel["llmspell.hook.reason"] == "refunds over 100 need a human"
    run = t.one("pydantic-ai support")
    assert cancel["llmspell.run.id"] == (run.attributes or {})["llmspell.run.id"]
    assert not decisions(run)
    assert t.hook.stats().errors == 0


async def test_by_default_llmspell_spans_sit_next_to_the_framework_spans() -> None:
    system, t = make_traced()
    async with system:
        await _instrumented_pydantic_ai(system, t.provider)
    ours = llmspell_spans(t.spans())
    assert [s.name for s in ours] == [
        "pydantic-ai support", "invoke_agent support", "chat gpt-4o-mini",
        "execute_tool lookup_order", "chat gpt-4o-mini", "execute_tool refund",
        "chat gpt-4o-mini"]
    refund = next(s for s in ours if s.name == "execute_tool refund")
    assert refund.status.status_code is StatusCode.ERROR
    assert [d["llmspell.hook.result"] for d in decisions(refund)] == ["cancel"]
    # The framework made its own chat and execute_tool spans too: two per call.
    assert sum(s.name == "execute_tool refund" for s in t.spans()) == 2


async def test_the_switch_applies_to_the_run_kinds_named() -> None:
    system, t = make_traced(tracing=TracingConfig(framework_spans="decisions",
                                                  frameworks=frozenset({"langchain"})))
    async with system:
        run_span, agent_span, (first, blocked) = await _pydantic_ai(system)
    names = [s.name for s in t.spans()]
    assert names[:2] == [run_span, agent_span]
    assert f"execute_tool {first}" in names and f"execute_tool {blocked}" in names


async def test_llmspell_agents_inside_a_framework_run_keep_their_spans() -> None:
    pytest.importorskip("pydantic_ai")
    from pydantic_ai import Agent

    from llmspell.integrations.pydantic_ai import LlmspellCapability
    from llmspell.runtime.providers.scripted import ScriptedProvider
    from tests.integrations.conftest_pydantic_ai import planned

    def cool(ctx: Any) -> Modified:
        return Modified({**ctx.data, "params": {**ctx.data["params"], "temperature": 0.0}})

    system, t = make_traced(tracing=DECISIONS)
    async with system:
        system.registry.register(HookPoint.BEFORE_MODEL_CALL, cool, name="cool")
        helper = system.agents.create("helper", provider=ScriptedProvider(["42"]))
        outer: Agent[None, str] = Agent(planned([[("ask_helper", {"question": "6 x 7?"})]]),
                                        name="boss", capabilities=[LlmspellCapability(system)])

        @outer.tool_plain
        async def ask_helper(question: str) -> str:
            """Ask llmspell's helper agent."""
            return str((await helper.run(question)).output)

        result = await outer.run("What is 6 x 7?")
    assert result.output == "done: ask_helper=42"
    # The framework's own calls have no llmspell span; llmspell's agent keeps its own.
    assert tree(t.spans()) == [["pydantic-ai boss", [["invoke_agent helper",
                                                      ["chat scripted"]]]]]
    # Decisions about llmspell's call on its span; about the framework's on the run span.
    assert [d["llmspell.hook.name"] for d in decisions(t.one("chat scripted"))] == ["cool"]
    assert [d["llmspell.hook.name"] for d in decisions(t.one("pydantic-ai boss"))] == [
        "cool", "cool"]
    assert t.hook.stats().errors == 0


async def test_framework_runs_whose_end_is_never_seen_are_bounded() -> None:
    system, t = make_traced(tracing=TracingConfig(framework_spans="decisions",
                                                  max_open_spans=2))
    async with system:
        import contextvars

        for _ in range(4):  # opened and never closed, each in a context of its own
            contextvars.copy_context().run(system.runs.open, "pydantic-ai", "lost")
        assert len(t.hook._framework_runs) <= 2
    assert t.hook.stats().errors == 0
