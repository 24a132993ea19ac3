"""Bounds of what the observability hooks remember, whatever the traffic.

MetricsHook: the errors series (component x error type) is capped at
``MetricsConfig.max_error_series`` pairs in ``stats()`` and in both exporters, further pairs
folding into (``_other``, ``_other``) of their component type, every total still adding up.
TracingHook: replays whose end event never comes (a crashed replay, an event dropped under
overflow) are forgotten oldest first past ``TracingConfig.max_open_spans``.
"""

from __future__ import annotations

import contextvars
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from llmspell.builtin.metrics import (
    ATTR_COMPONENT,
    ATTR_COMPONENT_TYPE,
    ATTR_ERROR_TYPE,
    OTHER_COMPONENT,
    MetricsConfig,
    MetricsHook,
    OpenTelemetryExporter,
    PrometheusExporter,
)
from llmspell.builtin.tracing import TracingConfig, TracingHook
from llmspell.errors import InvalidValueError
from llmspell.hooks import ComponentId, ComponentType, HookContext, HookPoint
from llmspell.runtime import System, SystemConfig
from llmspell.runtime.providers import ScriptedProvider
from llmspell.runtime.runs.lifecycle import _begin


# -- MetricsHook: the errors series -----------------------------------------------------
def _error(hook: MetricsHook, ctype: ComponentType, name: str, error_type: str) -> None:
    point = HookPoint.TOOL_ERROR if ctype is ComponentType.TOOL else HookPoint.AGENT_ERROR
    component = ComponentId(type=ctype, name=name, id=name)
    hook.execute(HookContext(point=point, component=component,
                             data={"error_type": error_type}))


def _prometheus_errors(registry: CollectorRegistry) -> dict[tuple[str, str, str], float]:
    out: dict[tuple[str, str, str], float] = {}
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == "llmspell_errors_total":
                labels = sample.labels
                out[(labels["component_type"], labels["component"],
                     labels["error_type"])] = sample.value
    return out


def _otel_errors(reader: InMemoryMetricReader) -> dict[tuple[str, str, str], float]:
    out: dict[tuple[str, str, str], float] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != "llmspell.errors":
                    continue
                for point in metric.data.data_points:  # type: ignore[union-attr]
                    attrs: Any = point.attributes
                    out[(attrs[ATTR_COMPONENT_TYPE], attrs[ATTR_COMPONENT],
                         attrs[ATTR_ERROR_TYPE])] = point.value  # type: ignore[union-attr]
    return out


def test_the_errors_series_stay_within_max_error_series_and_add_up() -> None:
    cap = 50
    registry = CollectorRegistry()
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    hook = MetricsHook(MetricsConfig(max_error_series=cap), exporters=[
        PrometheusExporter(registry), OpenTelemetryExporter(meter_provider=provider)])
    # 2000 distinct (component, error type) pairs: 40 tools x 50 error types, all within
    # max_components (1000) for components and for error types alike.
    for c in range(40):
        for e in range(50):
            _error(hook, ComponentType.TOOL, f"tool{c}", f"Error{e}")
    for e in range(20):  # and 20 more of agents
        _error(hook, ComponentType.AGENT, "helper", f"AgentError{e}")
    # A pair counted before the cap keeps its own series after it (the normal path).
    _error(hook, ComponentType.TOOL, "tool0", "Error0")
    total = 2000 + 20 + 1

    stats = hook.stats()
    assert stats.errors == total
    pairs = {(component, error_type): n
             for component, by_type in stats.errors_by_component_and_type.items()
             for error_type, n in by_type.items()}
    # the cap, plus one (_other, _other) series per component type that went past it
    assert len(pairs) <= cap + 2
    assert sum(pairs.values()) == total
    assert pairs[("tool:tool0", "Error0")] == 2
    assert pairs[(f"tool:{OTHER_COMPONENT}", OTHER_COMPONENT)] == 2000 - cap
    assert pairs[(f"agent:{OTHER_COMPONENT}", OTHER_COMPONENT)] == 20
    # the other views are not folded by the pair cap, and add up too
    assert stats.errors_by_component["tool:tool39"] == 50
    assert sum(stats.errors_by_component.values()) == total
    assert sum(stats.errors_by_type.values()) == total
    assert sum(stats.errors_by_point.values()) == total

    for exported in (_prometheus_errors(registry), _otel_errors(reader)):
        assert len(exported) <= cap + 2
        assert sum(exported.values()) == total
        assert exported[("tool", "tool0", "Error0")] == 2
        assert exported[("tool", OTHER_COMPONENT, OTHER_COMPONENT)] == 2000 - cap
        assert exported[("agent", OTHER_COMPONENT, OTHER_COMPONENT)] == 20
    provider.shutdown()

    hook.reset()
    assert hook.stats().errors_by_component_and_type == {}
    _error(hook, ComponentType.TOOL, "tool39", "Error49")  # counted again after a reset
    assert hook.stats().errors_by_component_and_type == {"tool:tool39": {"Error49": 1}}


def test_the_default_bound_of_the_errors_series_and_its_validation() -> None:
    hook = MetricsHook()
    assert hook.config.max_error_series == 10_000
    for c in range(120):
        for e in range(100):  # 12,000 pairs: past the default bound
            _error(hook, ComponentType.TOOL, f"t{c}", f"E{e}")
    stats = hook.stats()
    pairs = sum(len(by_type) for by_type in stats.errors_by_component_and_type.values())
    assert pairs == 10_000 + 1
    assert sum(n for by_type in stats.errors_by_component_and_type.values()
               for n in by_type.values()) == stats.errors == 12_000
    for bad in (0, -1, True, 1.5, "10"):
        with pytest.raises(InvalidValueError) as info:
            MetricsConfig(max_error_series=bad)  # type: ignore[arg-type]
        assert info.value.hint


# -- TracingHook: replays whose end is never seen ----------------------------------------
async def test_replays_whose_end_is_never_seen_are_bounded() -> None:
    system = System(SystemConfig(store="memory"))
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    hook = TracingHook(TracingConfig(max_open_spans=100), bus=system.bus,
                       tracer_provider=provider)
    hook.install(system.registry)
    async with system:
        agent = system.agents.create("again", provider=ScriptedProvider(["once", "twice"]))
        await agent.run("hi")
        original = system.runs.list(limit=1)[0].run_id
        # 10,000 replays that publish run.started and never end (each in a context of
        # its own, as a replay that crashed in its task would leave them).
        for _ in range(10_000):
            contextvars.copy_context().run(
                _begin, system, "agent", "again", None, level=None, target=None,
                replay=None, replay_of=original, mode="exact", top_level=True)
        assert len(hook._replays) <= 100
        # the bound forgets the oldest: a replay that starts now is still marked
        result = await system.runs.replay(original)
        assert result.output == "once"
        assert len(hook._replays) <= 100
    (_, replayed) = [s for s in exporter.get_finished_spans() if s.name == "invoke_agent again"]
    attrs = dict(replayed.attributes or {})
    assert attrs["llmspell.run.replay_of"] == original
    assert attrs["llmspell.run.id"] == result.run_id
    assert result.run_id not in hook._replays  # it ended: forgotten at once
    assert hook.stats().errors == 0
    provider.shutdown()
