"""What observability sends out of the process, under hostile input.

TracingHook: error messages, stack traces and hook reasons on spans are masked like
llmspell's logs (a key a tool's or a provider's error quotes never reaches the collector),
including a secret that straddles the cut. Metrics: a lone surrogate in a component,
model, error type or hook name cannot fail a Prometheus scrape (every metric lost) or
strip an OpenTelemetry attribute; label values are bounded in length; quotes and line
breaks cannot forge exposition lines; label cardinality stays bounded.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common._internal.metrics_encoder import encode_metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from llmspell.builtin import TracingHook
from llmspell.builtin.metrics import (
    ATTR_COMPONENT,
    MAX_LABEL_CHARS,
    OTHER_COMPONENT,
    MetricsConfig,
    MetricsHook,
    OpenTelemetryExporter,
    PrometheusExporter,
)
from llmspell.builtin.tracing import TracingConfig
from llmspell.errors import AgentError, OperationCancelled, ProviderError, ToolExecutionError
from llmspell.events.event import UniversalEvent
from llmspell.hooks import Cancel
from llmspell.hooks.context import ComponentId, HookContext
from llmspell.hooks.monitor import PerformanceMonitor
from llmspell.hooks.points import HookPoint
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.providers.scripted import ScriptedProvider

KEY = "sk-" + "Q7" * 15
BEARER = "Bearer " + "z9" * 10


@tool()
def leaky(x: int) -> str:
    """Fails quoting credentials, as a client library's error may."""
    raise RuntimeError(f"auth failed with api_key={KEY} and {BEARER}")


def _traced(config: TracingConfig | None = None
            ) -> tuple[System, TracingHook, InMemorySpanExporter]:
    system = System(SystemConfig(store="memory"))
    system.tools.register(leaky)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    hook = TracingHook(config, bus=system.bus, tracer_provider=provider)
    hook.install(system.registry)
    return system, hook, exporter


def _texts(span: ReadableSpan) -> list[str]:
    out = [span.name, span.status.description or ""]
    for attributes in (span.attributes, *(e.attributes for e in span.events)):
        out.extend(str(v) for v in (attributes or {}).values())
    return out


def _leaks(spans: Any, *secrets: str) -> list[str]:
    return [f"{span.name}: {text[:120]}" for span in spans for text in _texts(span)
            if any(secret in text for secret in secrets)]


# -- tracing: masking ----------------------------------------------------------------------
async def test_a_failed_tools_message_and_stack_trace_are_masked_on_its_span() -> None:
    system, hook, exporter = _traced()
    async with system:
        with pytest.raises(ToolExecutionError):
            await system.tools.execute("leaky", {"x": 1})
    (span,) = exporter.get_finished_spans()
    assert _leaks([span], KEY, BEARER) == []
    (event,) = [e for e in span.events if e.name == "exception"]
    attributes = event.attributes or {}
    assert "auth failed with ***" in str(attributes["exception.message"])
    assert "RuntimeError" in str(attributes["exception.stacktrace"])  # still readable
    assert hook.stats().errors == 0


async def test_a_providers_error_is_masked_on_the_chat_and_agent_spans() -> None:
    def model(messages: Any, tools: Any) -> str:
        raise ProviderError("scripted", f"invalid key {KEY}", status=401)

    system, _, exporter = _traced()
    async with system:
        agent = system.agents.create("helper", provider=ScriptedProvider(model))
        with pytest.raises(AgentError):
            await agent.run("hi")
    spans = exporter.get_finished_spans()
    assert {s.name for s in spans} == {"chat scripted", "invoke_agent helper"}
    assert _leaks(spans, KEY) == []
    assert all("invalid key ***" in (s.status.description or "") for s in spans)


async def test_a_cancelling_hooks_reason_is_masked_on_the_decision_and_the_status() -> None:
    system, _, exporter = _traced()
    async with system:
        system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION,
                                 lambda ctx: Cancel(f"refused: token={KEY}"), name="guard")
        with pytest.raises(OperationCancelled):
            await system.tools.execute("leaky", {"x": 1})
    (span,) = exporter.get_finished_spans()
    assert _leaks([span], KEY) == []
    (decision,) = [e for e in span.events if e.name == "llmspell.hook.decision"]
    assert (decision.attributes or {})["llmspell.hook.reason"] == "refused: ***"


async def test_a_secret_straddling_the_cut_is_masked_whole() -> None:
    limit = 60
    system, hook, exporter = _traced(TracingConfig(max_content_chars=limit))
    tool_id = ComponentId(type="tool", name="t")
    async with system:
        hook.execute(HookContext(point=HookPoint.BEFORE_TOOL_EXECUTION, component=tool_id,
                                 data={"params": {}}))
        hook.execute(HookContext(point=HookPoint.TOOL_ERROR, component=tool_id, data={
            "error": "x" * (limit - 10) + KEY + " tail " * 5_000,
            "error_type": "RuntimeError"}))
        hook.uninstall(system.registry)
    (span,) = exporter.get_finished_spans()
    assert _leaks([span], KEY[:8]) == []  # not even the part before the cut
    description = span.status.description or ""
    assert description.startswith("x" * (limit - 10) + "***") and "chars)" in description
    assert len(description) <= limit + 40


class _UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


async def test_an_exception_that_cannot_be_printed_still_ends_its_span_with_its_type() -> None:
    system, hook, exporter = _traced()
    tool_id = ComponentId(type="tool", name="t")
    async with system:
        hook.execute(HookContext(point=HookPoint.BEFORE_TOOL_EXECUTION, component=tool_id,
                                 data={"params": {}}))
        try:
            raise _UnprintableError
        except _UnprintableError:  # the failure event is published while it is handled
            hook._on_tool_failed(UniversalEvent.create(
                "tool.t.failed", {"error": "boom", "error_type": "_UnprintableError"}))
    (span,) = exporter.get_finished_spans()
    (event,) = [e for e in span.events if e.name == "exception"]
    assert "unprintable" in str((event.attributes or {})["exception.message"])
    assert hook.stats().errors == 0


# -- metrics: hostile names ----------------------------------------------------------------
SURROGATE_TOOL = "se\ud800arch"


def _feed(hook: MetricsHook, name: str = SURROGATE_TOOL, model: str = "gpt\udfff",
          error_type: str = "Value\ud800Error") -> None:
    """What an adapter dispatches for a framework's tool and model named with lone
    surrogates (text from bytes that were not UTF-8), failing with a hostile error type."""
    tool_id = ComponentId(type="tool", name=name)
    model_id = ComponentId(type="model", name=f"scripted/{model}")
    for point, component, data in (
            (HookPoint.BEFORE_TOOL_EXECUTION, tool_id, {"params": {}}),
            (HookPoint.TOOL_ERROR, tool_id, {"error": "x", "error_type": error_type}),
            (HookPoint.BEFORE_MODEL_CALL, model_id, {"provider": "scripted", "model": model}),
            (HookPoint.AFTER_MODEL_CALL, model_id, {
                "provider": "scripted", "model": model,
                "result": {"latency_ms": 5, "usage": {"input_tokens": 3}}})):
        hook.execute(HookContext(point=point, component=component, data=data))


def _good_and_hostile(exporter: Any) -> MetricsHook:
    hook = MetricsHook(exporters=[exporter])
    _feed(hook, name="good")
    _feed(hook)
    return hook


def test_a_lone_surrogate_in_a_name_cannot_fail_the_prometheus_scrape() -> None:
    exporter = PrometheusExporter()
    hook = _good_and_hostile(exporter)
    monitor = PerformanceMonitor()
    monitor.record_hook(1, "gu\udc00ard", "before_tool_execution", 1_000)
    hook.include_monitor(monitor)
    text = generate_latest(exporter.registry).decode()  # raised UnicodeEncodeError
    assert 'component="good"' in text                     # the good series are there
    assert 'component="se?arch"' in text and 'model="gpt?"' in text
    assert 'error_type="Value?Error"' in text and 'hook="gu?ard"' in text
    assert "tool:se?arch" in hook.stats().calls_by_component


def test_a_lone_surrogate_in_a_name_keeps_its_opentelemetry_attribute(
        caplog: pytest.LogCaptureFixture) -> None:
    reader = InMemoryMetricReader()
    exporter = OpenTelemetryExporter(meter_provider=MeterProvider(metric_readers=[reader]))
    _good_and_hostile(exporter)
    with caplog.at_level(logging.ERROR):
        request = encode_metrics(reader.get_metrics_data())  # what the OTLP exporter sends
    assert not [r for r in caplog.records if "Failed to encode" in r.getMessage()]
    request.SerializeToString()
    components = set()
    for resource in request.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "llmspell.point.calls":
                    for point in metric.sum.data_points:
                        keys = {a.key: a.value.string_value for a in point.attributes}
                        components.add(keys.get(ATTR_COMPONENT))  # dropped before the fix
    assert components == {"good", "se?arch", "scripted/gpt?"}


def test_a_huge_name_is_cut_in_every_label() -> None:
    exporter = PrometheusExporter()
    hook = MetricsHook(exporters=[exporter])
    _feed(hook, name="t" * 1_000_000, model="m" * 100_000, error_type="E" * 100_000)
    text = generate_latest(exporter.registry).decode()
    assert len(text) < 50_000
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert all(len(v) <= MAX_LABEL_CHARS + 30 for v in sample.labels.values())


def test_quotes_and_line_breaks_in_a_name_cannot_forge_metric_lines() -> None:
    exporter = PrometheusExporter()
    hook = MetricsHook(exporters=[exporter])
    forged = 'x"} 1\nllmspell_forged_total{a="b\\'
    _feed(hook, name=forged, model=forged, error_type=forged)
    families = list(text_string_to_metric_families(generate_latest(exporter.registry)
                                                   .decode()))
    assert not [f for f in families if "forged" in f.name]
    components = {s.labels.get("component") for f in families for s in f.samples}
    assert forged in components  # escaped, and read back as it was


def test_label_cardinality_stays_bounded_whatever_the_names() -> None:
    exporter = PrometheusExporter()
    hook = MetricsHook(MetricsConfig(max_components=10), exporters=[exporter])
    for i in range(2_000):
        _feed(hook, name=f"tool{i}", model=f"model{i}", error_type=f"Error{i}")
    text = generate_latest(exporter.registry).decode()
    values: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for label, value in sample.labels.items():
                values.setdefault(label, set()).add(value)
    assert len(values["component"]) <= 11 + 11  # tools and models, each + _other
    assert OTHER_COMPONENT in values["component"]
    assert len(values["model"]) <= 11 and len(values["error_type"]) <= 11
