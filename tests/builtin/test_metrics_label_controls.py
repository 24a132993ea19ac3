"""Control characters in metric label values.

``prometheus_client`` escapes only backslashes, quotes and line feeds in a label value;
a carriage return, NUL, ESC, a vertical tab, NEL or U+2028 goes into the scrape raw. A
reader that splits lines the universal way (the scrape written with ``write_to_textfile``
and read back from a text-mode file, ``str.splitlines``) then cuts the sample in two and
fails the whole scrape, and a quote after the ``\\r`` forges a sample. ``MetricsHook``
labels carry such characters as ``?`` (the same value in stats, Prometheus and
OpenTelemetry); line feeds and tabs stay for the exposition to escape.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import generate_latest, write_to_textfile
from prometheus_client.parser import text_fd_to_metric_families, text_string_to_metric_families

from llmspell.builtin.metrics import (
    ATTR_COMPONENT,
    ATTR_ERROR_TYPE,
    ATTR_MODEL,
    MAX_LABEL_CHARS,
    MetricsHook,
    OpenTelemetryExporter,
    PrometheusExporter,
)
from llmspell.hooks.context import ComponentId, HookContext
from llmspell.hooks.monitor import PerformanceMonitor
from llmspell.hooks.points import HookPoint

CONTROLS = ["\r", "\x00", "\x1b", "\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x7f",
            "\x9b"]


def _feed(hook: MetricsHook, name: str, model: str, error_type: str) -> None:
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


def _label_values(families: Iterable[Any]) -> dict[str, set[str]]:
    values: dict[str, set[str]] = {}
    for family in families:
        for sample in family.samples:
            for label, value in sample.labels.items():
                values.setdefault(label, set()).add(value)
    return values


@pytest.mark.parametrize("char", CONTROLS, ids=[f"U+{ord(c):04X}" for c in CONTROLS])
def test_a_control_character_becomes_a_question_mark_in_every_label(char: str) -> None:
    exporter = PrometheusExporter()
    hook = MetricsHook(exporters=[exporter])
    monitor = PerformanceMonitor()
    monitor.record_hook(1, f"gu{char}ard", "before_tool_execution", 1_000)
    hook.include_monitor(monitor)
    _feed(hook, name=f"a{char}b", model=f"m{char}", error_type=f"Value{char}Error")
    text = generate_latest(exporter.registry).decode()
    assert char not in text
    values = _label_values(text_string_to_metric_families(text))
    assert "a?b" in values["component"] and "m?" in values["model"]
    assert values["error_type"] == {"Value?Error"} and values["hook"] == {"gu?ard"}
    assert "tool:a?b" in hook.stats().calls_by_component  # the same name everywhere


def test_a_carriage_return_cannot_break_a_textfile_scrape_or_forge_a_sample(
        tmp_path: Path) -> None:
    exporter = PrometheusExporter()
    hook = MetricsHook(exporters=[exporter])
    forged = 'x"} 1\rllmspell_forged_total{a="b'
    _feed(hook, name="good", model="m", error_type="E")
    _feed(hook, name=forged, model=forged, error_type=forged)
    path = tmp_path / "llmspell.prom"
    write_to_textfile(str(path), exporter.registry)  # node_exporter's textfile collector
    with path.open() as fd:  # a text-mode file: \r ends a line there
        families = list(text_fd_to_metric_families(fd))  # raised ValueError
    assert not [f for f in families if "forged" in f.name]
    assert forged.replace("\r", "?") in _label_values(families)["component"]


def test_every_line_of_the_scrape_parses_on_its_own() -> None:
    exporter = PrometheusExporter()
    hook = MetricsHook(exporters=[exporter])
    hostile = "".join(CONTROLS)
    _feed(hook, name=hostile, model=hostile, error_type=hostile)
    text = generate_latest(exporter.registry).decode()
    assert text.splitlines() == text.split("\n")[:-1]  # no other line break in it
    for line in text.splitlines():
        list(text_string_to_metric_families(line + "\n"))


def test_line_feeds_and_tabs_are_left_to_the_exposition() -> None:
    exporter = PrometheusExporter()
    hook = MetricsHook(exporters=[exporter])
    _feed(hook, name="a\nb\tc", model="m", error_type="E")
    text = generate_latest(exporter.registry).decode()
    assert "a\nb\tc" in _label_values(text_string_to_metric_families(text))["component"]


def test_opentelemetry_attributes_carry_the_same_values() -> None:
    reader = InMemoryMetricReader()
    exporter = OpenTelemetryExporter(meter_provider=MeterProvider(metric_readers=[reader]))
    hook = MetricsHook(exporters=[exporter])
    _feed(hook, name="a\r\x00b", model="m\u2028", error_type="Value\x1bError")
    seen: dict[str, set[str]] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    for key, value in (point.attributes or {}).items():
                        seen.setdefault(key, set()).add(str(value))
    assert "a??b" in seen[ATTR_COMPONENT] and "m?" in seen[ATTR_MODEL]
    assert seen[ATTR_ERROR_TYPE] == {"Value?Error"}
    assert not [v for vs in seen.values() for v in vs if not v.isprintable()]


def test_the_cut_still_bounds_a_label_of_control_characters() -> None:
    exporter = PrometheusExporter()
    hook = MetricsHook(exporters=[exporter])
    _feed(hook, name="\x1b" * 100_000, model="m", error_type="E")
    text = generate_latest(exporter.registry).decode()
    (long,) = [v for v in _label_values(text_string_to_metric_families(text))["component"]
               if v.startswith("?")]
    assert long.startswith("?" * MAX_LABEL_CHARS) and len(long) <= MAX_LABEL_CHARS + 30
