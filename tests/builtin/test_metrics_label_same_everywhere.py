"""One label value in every view of the metrics.

``MetricsHook`` labels a component, model, provider or error type once when it creates
the series, and each exporter labels what it is given. A long value was cut twice: the
note said ``...(+744 chars)`` in ``stats()`` but ``...(+15 chars)`` in the Prometheus
scrape and the OpenTelemetry attributes, a count of the note's own characters. The label
is now cut once, its note counts the original value, and stats, Prometheus and
OpenTelemetry show the same text.
"""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from llmspell.builtin.metrics import (
    ATTR_COMPONENT,
    ATTR_ERROR_TYPE,
    ATTR_MODEL,
    ATTR_PROVIDER,
    MAX_LABEL_CHARS,
    MetricsHook,
    OpenTelemetryExporter,
    PrometheusExporter,
)
from llmspell.hooks.context import ComponentId, HookContext
from llmspell.hooks.points import HookPoint

MODEL_COMPONENT = "the-model"
LONG = "n" * 1_000
# control characters and a lone surrogate, long enough to be cut
HOSTILE = "a\r\x00\x1b\u2028\x85b\ud800c" + "x" * 600


def _expected(value: str) -> str:
    """The label of ``value``: the first MAX_LABEL_CHARS characters, controls and
    surrogates as '?', and a note counting the characters of the original."""
    shown = "".join("?" if c in "\r\x00\x1b\u2028\x85\ud800" else c
                    for c in value[:MAX_LABEL_CHARS])
    if len(value) <= MAX_LABEL_CHARS:
        return shown
    return f"{shown}...(+{len(value) - MAX_LABEL_CHARS} chars)"


def _setup() -> tuple[MetricsHook, PrometheusExporter, InMemoryMetricReader]:
    prom = PrometheusExporter()
    reader = InMemoryMetricReader()
    otel = OpenTelemetryExporter(meter_provider=MeterProvider(metric_readers=[reader]))
    return MetricsHook(exporters=[prom, otel]), prom, reader


def _feed(hook: MetricsHook, name: str, provider: str, model: str, error_type: str) -> None:
    tool_id = ComponentId(type="tool", name=name)
    model_id = ComponentId(type="model", name=MODEL_COMPONENT)
    for point, component, data in (
            (HookPoint.BEFORE_TOOL_EXECUTION, tool_id, {"params": {}}),
            (HookPoint.TOOL_ERROR, tool_id, {"error": "x", "error_type": error_type}),
            (HookPoint.BEFORE_MODEL_CALL, model_id, {"provider": provider, "model": model}),
            (HookPoint.AFTER_MODEL_CALL, model_id, {
                "provider": provider, "model": model,
                "result": {"latency_ms": 5, "usage": {"input_tokens": 3}}})):
        hook.execute(HookContext(point=point, component=component, data=data,
                                 correlation_id="run-1"))


def _prometheus(exporter: PrometheusExporter) -> dict[str, set[str]]:
    text = generate_latest(exporter.registry).decode()  # fails on a lone surrogate
    values: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for label, value in sample.labels.items():
                if value != MODEL_COMPONENT:
                    values.setdefault(label, set()).add(value)
    return values


def _otlp(reader: InMemoryMetricReader) -> dict[str, set[str]]:
    data = reader.get_metrics_data()
    assert data is not None
    seen: dict[str, set[str]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    for key, value in (point.attributes or {}).items():
                        if value != MODEL_COMPONENT:
                            seen.setdefault(key, set()).add(str(value))
    return seen


def _views(hook: MetricsHook, prom: PrometheusExporter,
           reader: InMemoryMetricReader) -> dict[str, Any]:
    stats = hook.stats()
    (tool_key,) = [k for k in stats.calls_by_component if k.startswith("tool:")]
    (model_key,) = stats.models
    provider, _, model = model_key.partition("/")
    prom_values, otel_values = _prometheus(prom), _otlp(reader)
    return {
        "component": ({tool_key.removeprefix("tool:")},
                      prom_values["component"], otel_values[ATTR_COMPONENT]),
        "error_type": (set(stats.errors_by_type), prom_values["error_type"],
                       otel_values[ATTR_ERROR_TYPE]),
        "provider": ({provider}, prom_values["provider"], otel_values[ATTR_PROVIDER]),
        "model": ({model}, prom_values["model"], otel_values[ATTR_MODEL]),
        "operation": {s.name for s in stats.operations if s.kind == "tool"},
    }


@pytest.mark.parametrize("value", [LONG, HOSTILE], ids=["long", "controls-surrogate"])
def test_a_component_name_is_the_same_in_stats_prometheus_and_otlp(value: str) -> None:
    hook, prom, reader = _setup()
    _feed(hook, name=value, provider="p", model="m", error_type="E")
    views = _views(hook, prom, reader)
    label = _expected(value)
    assert views["operation"] == {label}
    stats_view, prom_view, otel_view = views["component"]
    assert stats_view == prom_view == otel_view == {label}
    assert label.endswith(f"...(+{len(value) - MAX_LABEL_CHARS} chars)")


@pytest.mark.parametrize("value", [LONG, HOSTILE], ids=["long", "controls-surrogate"])
def test_an_error_type_is_the_same_in_stats_prometheus_and_otlp(value: str) -> None:
    hook, prom, reader = _setup()
    _feed(hook, name="tool", provider="p", model="m", error_type=value)
    stats_view, prom_view, otel_view = _views(hook, prom, reader)["error_type"]
    assert stats_view == prom_view == otel_view == {_expected(value)}


@pytest.mark.parametrize("value", [LONG, HOSTILE], ids=["long", "controls-surrogate"])
def test_a_model_and_provider_are_the_same_in_stats_prometheus_and_otlp(value: str) -> None:
    hook, prom, reader = _setup()
    provider = "q" * 900
    _feed(hook, name="tool", provider=provider, model=value, error_type="E")
    views = _views(hook, prom, reader)
    for field, expected in (("model", _expected(value)), ("provider", _expected(provider))):
        stats_view, prom_view, otel_view = views[field]
        assert stats_view == prom_view == otel_view == {expected}, field


def test_an_exporter_fed_the_raw_value_or_the_hooks_label_shows_the_same() -> None:
    # Exporters stay bounded for values that did not pass through the hook, and a value
    # the hook already labelled is not cut a second time.
    raw, labelled = PrometheusExporter(), PrometheusExporter()
    raw_reader, labelled_reader = InMemoryMetricReader(), InMemoryMetricReader()
    raw_otel = OpenTelemetryExporter(meter_provider=MeterProvider(metric_readers=[raw_reader]))
    labelled_otel = OpenTelemetryExporter(
        meter_provider=MeterProvider(metric_readers=[labelled_reader]))
    label = _expected(HOSTILE)
    for exporter in (raw, raw_otel):
        exporter.record_call("after_tool_execution", "tool", HOSTILE)
    for exporter in (labelled, labelled_otel):
        exporter.record_call("after_tool_execution", "tool", label)
    assert _prometheus(raw)["component"] == _prometheus(labelled)["component"] == {label}
    assert (_otlp(raw_reader)[ATTR_COMPONENT] == _otlp(labelled_reader)[ATTR_COMPONENT]
            == {label})


async def test_a_hook_name_is_labelled_in_stats_as_in_the_exporters() -> None:
    from llmspell.runtime import System, SystemConfig, tool

    @tool("add")
    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(add)
        system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, lambda ctx: None,
                                 name=HOSTILE)
        hook, prom, _ = _setup()
        assert system.executor.monitor is not None
        hook.include_monitor(system.executor.monitor)
        await system.tools.execute("add", {"a": 1, "b": 2})
    rows = [row for row in hook.stats().hooks if row.point == "before_tool_execution"]
    assert [row.name for row in rows] == [_expected(HOSTILE)]
    scraped = {sample.labels.get("hook") for family in text_string_to_metric_families(
        generate_latest(prom.registry).decode()) for sample in family.samples}
    assert _expected(HOSTILE) in scraped
