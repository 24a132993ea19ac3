"""``MetricsHook``: counts, errors and operation latency of every hook point it watches.

What it measures, at each point it is installed at (by default every runtime point):

* **calls** per point and per component (``tool:calculator``, ``agent:helper``);
* **errors** at the error points (``tool_error``, ``agent_error``), per point, per component,
  per ``error_type`` and per (component, ``error_type``) pair (at most
  ``max_error_series`` pairs: the exporters' errors series);
* **operation latency**: a before point (``before_tool_execution``) opens an operation keyed
  by ``(correlation_id, component type, component id)``; the matching after or error point
  closes it and records the duration (outcome ``ok`` or ``error``). Operations that never
  close (a later hook replaced or cancelled the call, the runtime served it from its cache)
  are forgotten once ``max_open_operations`` are open, oldest first, and counted as
  ``abandoned``. An error point closes its operation: if a hook then retries it, the retry's
  after point finds nothing open and is counted but not timed.

Model calls (installed at ``before_model_call``, ``after_model_call``, ``model_call_error``
by default) are also measured per model (``provider`` and ``model``, the model asked for):
calls, errors, tokens (input, output, cached, reasoning, from ``result.usage``) and the
provider's latency (``result.latency_ms``), in ``stats().models`` and, for exporters that
have it, ``record_model_call`` (Prometheus: ``llmspell_model_calls_total``,
``llmspell_model_tokens_total``, ``llmspell_model_latency_seconds``; OpenTelemetry:
``llmspell.model.calls``, ``llmspell.model.tokens``, ``llmspell.model.duration``).

The in-process summary needs no dependency and is always there: ``stats()`` (everything)
and ``summary()`` (latency per operation and, after :meth:`MetricsHook.include_monitor`, per
hook from the executor's :class:`~llmspell.hooks.monitor.PerformanceMonitor`). Counts and
means of operations cover the whole run; percentiles and max cover the most recent
``reservoir_size`` samples of each series (a sliding window, like the performance monitor).

Exporters receive every measurement as it happens: :class:`PrometheusExporter`
(``prometheus_client``; ``pip install 'llmspell[prometheus]'``) and
:class:`OpenTelemetryExporter` (``opentelemetry-api``; ``pip install 'llmspell[otel]'``).
Both import their library only when created, cache their labelled children / attribute
sets, and create their instruments once. The OpenTelemetry attribute names are this
module's own constants (``llmspell.point``, ``llmspell.component``, ...), not semconv.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import msgspec

from llmspell.builtin.base import (
    ALL_RUNTIME_POINTS,
    MODEL_AFTER,
    MODEL_BEFORE,
    MODEL_ERROR,
    OPERATION_AFTER,
    OPERATION_BEFORE,
    OPERATION_ERROR,
    BuiltinHook,
)
from llmspell.core.clock import Clock
from llmspell.core.errors import ConfigurationError, InvalidValueError
from llmspell.core.run_scope import RUNNING_REPLAYS, current_replay, replay_serves
from llmspell.core.stats import percentile
from llmspell.core.text import encodable
from llmspell.hooks.context import ComponentType, HookContext
from llmspell.hooks.hook import HookOutput
from llmspell.hooks.monitor import LatencyStats, PerformanceMonitor

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.metrics_core import Metric

__all__ = [
    "ATTR_COMPONENT",
    "ATTR_COMPONENT_TYPE",
    "ATTR_ERROR_TYPE",
    "ATTR_HOOK",
    "ATTR_MODEL",
    "ATTR_OUTCOME",
    "ATTR_PROVIDER",
    "ATTR_TOKEN_TYPE",
    "ATTR_POINT",
    "ATTR_QUANTILE",
    "DEFAULT_BUCKETS",
    "METRICS_PRIORITY",
    "OTHER_COMPONENT",
    "MAX_LABEL_CHARS",
    "LatencySummary",
    "MetricsConfig",
    "MetricsExporter",
    "MetricsHook",
    "MetricsStats",
    "ModelMetrics",
    "TOKEN_TYPES",
    "OpenTelemetryExporter",
    "PrometheusExporter",
]

METRICS_PRIORITY = 1000
"""Default priority of :class:`MetricsHook`: last, so it measures what the other hooks let
through (a call an earlier hook replaced, cancelled or served from cache never reaches it
at the before point)."""

OTHER_COMPONENT = "_other"
"""The component name that components beyond ``max_components`` are counted under."""

DEFAULT_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0,
)
"""Default Prometheus histogram buckets of operation durations, in seconds."""

# OpenTelemetry attribute names: ours, kept stable here (no semconv dependency).
ATTR_POINT = "llmspell.point"
"""OpenTelemetry attribute: the hook point (``before_tool_execution``, ``custom:...``)."""
ATTR_COMPONENT = "llmspell.component"
"""OpenTelemetry attribute: the component's name (``calculator``)."""
ATTR_COMPONENT_TYPE = "llmspell.component.type"
"""OpenTelemetry attribute: the component's type (``tool``, ``agent``)."""
ATTR_OUTCOME = "llmspell.outcome"
"""OpenTelemetry attribute: how an operation ended (``ok`` or ``error``)."""
ATTR_ERROR_TYPE = "llmspell.error.type"
"""OpenTelemetry attribute: the exception class name seen at an error point."""
ATTR_HOOK = "llmspell.hook"
"""OpenTelemetry attribute: a hook's name (per-hook latency from the monitor)."""
ATTR_QUANTILE = "llmspell.quantile"
"""OpenTelemetry attribute: which quantile a hook latency gauge reports (``0.5``, ...)."""
ATTR_PROVIDER = "llmspell.provider"
"""OpenTelemetry attribute: a model call's provider (``openai``)."""
ATTR_MODEL = "llmspell.model"
"""OpenTelemetry attribute: a model call's model, as asked for (``gpt-4o-mini``)."""
ATTR_TOKEN_TYPE = "llmspell.token.type"
"""OpenTelemetry attribute: which tokens a count is (one of :data:`TOKEN_TYPES`)."""

TOKEN_TYPES: tuple[str, ...] = ("input", "output", "cached", "reasoning")
"""The token counts kept per model (``cached`` and ``reasoning`` are parts of ``input`` and
``output``, as the providers report them)."""

_BEFORE, _AFTER, _ERROR, _OTHER = 1, 2, 3, 0
_ROLES: dict[str, int] = {
    **{str(p): _BEFORE for p in OPERATION_BEFORE},
    **{str(p): _AFTER for p in OPERATION_AFTER},
    **{str(p): _ERROR for p in OPERATION_ERROR},
    str(MODEL_BEFORE): _BEFORE, str(MODEL_AFTER): _AFTER, str(MODEL_ERROR): _ERROR,
}
_MODEL_ERROR = str(MODEL_ERROR)
_MODEL_ENDS = frozenset({str(MODEL_AFTER), _MODEL_ERROR})
_TYPE_NAMES: dict[str, str] = {t: t.value for t in ComponentType}
_QUANTILES: tuple[tuple[str, str], ...] = (
    ("0.5", "p50_ns"), ("0.95", "p95_ns"), ("0.99", "p99_ns"),
)


MAX_LABEL_CHARS = 256
"""The longest label value (attribute value) the exporters send: a longer component,
model, provider, error type or hook name is cut, with a note of how much."""


# Control characters but the line feed and the tab (C0, DEL, C1) and the line and
# paragraph separators: a reader that splits lines the universal way (a text-mode file, as
# node_exporter's textfile collector scrapes are read back; ``str.splitlines``) breaks a
# sample at ``\r``, ``\x0b``, ``\x0c``, ``\x1c``-``\x1e``, ``\x85``, U+2028, U+2029;
# ESC and CSI act on the terminal a scrape is printed on.
_LABEL_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
# The note :func:`~llmspell.core.text.encodable` ends a cut label with, right after the
# first MAX_LABEL_CHARS characters: such a value is already a label (at most 19 digits, so
# a raw value of that shape is still bounded).
_CUT_NOTE = re.compile(r"\.\.\.\(\+[1-9][0-9]{0,18} chars\)")


def _label(value: object) -> str:
    """``value`` fit for a label (:func:`~llmspell.core.text.encodable`): at most
    :data:`MAX_LABEL_CHARS` characters and no lone surrogate. ``prometheus_client`` encodes
    a whole scrape at once and fails it, every metric lost, on one surrogate; the OTLP
    encoder drops the attribute and logs a traceback at every export. Control characters
    (``\\r``, NUL, ESC, ``\\x85``...) and U+2028/U+2029 become ``?`` too: the exposition
    writes them raw, and a line-splitting reader cuts the sample there. Quotes, backslashes
    and line feeds are the exposition's to escape (``prometheus_client`` does). The same
    value goes to every exporter; one character for one, so the cut holds.

    Idempotent: the hook labels a series when it creates it and each exporter labels what
    it is given (an exporter may be fed by other code), so a value this function already
    cut (``MAX_LABEL_CHARS`` characters and the note) is not cut again; its note keeps
    counting the original value's characters and every view shows the same text."""
    text = value if isinstance(value, str) else str(value)
    limit = MAX_LABEL_CHARS
    if len(text) > limit and _CUT_NOTE.fullmatch(text, limit):
        limit = len(text)  # already cut: the surrogate and control rules still apply
    text = encodable(text, limit)
    if not text.isprintable():  # plain text: one C-speed scan
        text = _LABEL_CONTROLS.sub("?", text)
    return text


def _labels(values: Iterable[object]) -> tuple[str, ...]:
    return tuple(_label(v) for v in values)


def _positive_int(owner: str, field: str, value: object, hint: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidValueError(f"{owner}.{field} must be an int >= 1, got {value!r}", hint=hint)


class MetricsConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of :class:`MetricsHook`.

    ``reservoir_size``: recent latency samples kept per series for percentiles.
    ``max_open_operations``: before points waiting for their after/error point; beyond it
    the oldest is dropped (counted as abandoned). ``max_components``: distinct components
    tracked; later ones are counted as :data:`OTHER_COMPONENT` (keeps label cardinality
    bounded); the same bound holds for the models and for the error types.
    ``max_error_series``: distinct (component, error type) pairs counted (``stats().
    errors_by_component_and_type``, the exporters' errors series); an error of a further
    pair is counted under (:data:`OTHER_COMPONENT`, :data:`OTHER_COMPONENT`) of its
    component type, so at most one more series per component type. ``latency``: pair
    before and after points to time operations.
    """

    reservoir_size: int = 1024
    max_open_operations: int = 10_000
    max_components: int = 1000
    max_error_series: int = 10_000
    latency: bool = True

    def __post_init__(self) -> None:
        _positive_int("MetricsConfig", "reservoir_size", self.reservoir_size,
                      "1024 recent samples give stable p99s")
        _positive_int("MetricsConfig", "max_open_operations", self.max_open_operations,
                      "allow at least as many operations as run concurrently")
        _positive_int("MetricsConfig", "max_components", self.max_components,
                      "1000 is plenty for tools and agents; it bounds label cardinality")
        _positive_int("MetricsConfig", "max_error_series", self.max_error_series,
                      "10000 (component, error type) pairs; it bounds the errors series")
        if not isinstance(self.latency, bool):
            raise InvalidValueError(
                f"MetricsConfig.latency must be a bool, got {self.latency!r}",
                hint="True times operations, False only counts",
            )


class LatencySummary(msgspec.Struct, frozen=True, kw_only=True):
    """Latency of one operation series (``kind`` ``tool``/``agent``) or hook (``hook``).

    ``count`` and ``errors`` cover the whole run; ``mean_ms`` too for operations (for hooks
    it is the monitor's mean over recent calls); percentiles and ``max_ms`` cover the recent
    samples. ``point`` is the hook's point (empty for operations).
    """

    name: str
    kind: str
    point: str
    count: int
    errors: int
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


class ModelMetrics(msgspec.Struct, frozen=True, kw_only=True):
    """One model's calls (answered), ``errors``, tokens by type (:data:`TOKEN_TYPES`) and
    the provider's latency (``latency``: a :class:`LatencySummary` of ``result.latency_ms``,
    kind ``model``)."""

    provider: str
    model: str
    calls: int
    errors: int
    tokens: dict[str, int]
    latency: LatencySummary


class MetricsStats(msgspec.Struct, frozen=True, kw_only=True):
    """Everything :class:`MetricsHook` counted. Components are keyed ``type:name``;
    ``operations`` are timed tool/agent/model calls, ``hooks`` come from an included
    monitor, ``models`` are per model (key ``provider/model``)."""

    calls: int
    errors: int
    calls_by_point: dict[str, int]
    calls_by_component: dict[str, int]
    errors_by_point: dict[str, int]
    errors_by_component: dict[str, int]
    errors_by_type: dict[str, int]
    operations: list[LatencySummary]
    hooks: list[LatencySummary]
    open_operations: int
    abandoned_operations: int
    models: dict[str, ModelMetrics] = {}
    errors_by_component_and_type: dict[str, dict[str, int]] = {}
    """Errors per component (``type:name``) and error type: at most
    ``MetricsConfig.max_error_series`` pairs, then (``type:_other``, ``_other``), like the
    exporters' errors series."""
    replayed_by_point: dict[str, int] = {}
    """Calls at each point that replays served from their recordings (and the agents and
    workflows replays ran again): not counted above, not exported. A what-if replay's
    live calls are counted above, as live traffic."""


@runtime_checkable
class MetricsExporter(Protocol):
    """What :class:`MetricsHook` feeds on every call. Methods must be cheap and thread-safe."""

    def record_call(self, point: str, component_type: str, component: str) -> None:
        """One dispatch of ``point`` for a component."""
        ...

    def record_error(self, point: str, component_type: str, component: str,
                     error_type: str) -> None:
        """One error seen at an error point."""
        ...

    def record_duration(self, component_type: str, component: str, seconds: float,
                        outcome: str) -> None:
        """One finished operation (``outcome``: ``ok`` or ``error``)."""
        ...

    def attach_monitor(self, monitor: PerformanceMonitor) -> None:
        """Export per-hook latency from ``monitor`` (read when metrics are collected)."""
        ...

    # Optional (looked up with getattr, so exporters written before it keep working):
    # record_model_call(provider, model, seconds | None, tokens: Mapping[str, int],
    #                   outcome) -- one answered ("ok") or failed ("error") model call.


class _ModelSeries:
    """One model's counts, tokens and latency samples (seconds)."""

    __slots__ = ("calls", "errors", "lat_count", "lat_sum", "model", "provider", "samples",
                 "tokens")

    def __init__(self, provider: str, model: str, size: int) -> None:
        self.provider = provider
        self.model = model
        self.calls = 0
        self.errors = 0
        self.lat_count = 0
        self.lat_sum = 0.0
        self.tokens = dict.fromkeys(TOKEN_TYPES, 0)
        self.samples: deque[float] = deque(maxlen=size)

    def snapshot(self) -> ModelMetrics:
        ordered = sorted(self.samples)
        latency = LatencySummary(
            name=f"{self.provider}/{self.model}", kind="model", point="",
            count=self.lat_count, errors=self.errors,
            mean_ms=self.lat_sum / self.lat_count * 1e3 if self.lat_count else 0.0,
            p50_ms=percentile(ordered, 50) * 1e3, p95_ms=percentile(ordered, 95) * 1e3,
            p99_ms=percentile(ordered, 99) * 1e3,
            max_ms=ordered[-1] * 1e3 if ordered else 0.0)
        return ModelMetrics(provider=self.provider, model=self.model, calls=self.calls,
                            errors=self.errors, tokens=dict(self.tokens), latency=latency)


def _tokens_of(usage: object) -> dict[str, int]:
    if not isinstance(usage, dict):
        return {}
    out: dict[str, int] = {}
    for kind in TOKEN_TYPES:
        value = usage.get(f"{kind}_tokens")
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            out[kind] = value
    return out


class _Series:
    """Counts and recent latency samples (seconds) of one component."""

    __slots__ = ("calls", "error_types", "errors", "key", "lat_count", "lat_errors",
                 "lat_sum", "name", "samples", "type")

    def __init__(self, type_: str, name: str, size: int) -> None:
        self.type = type_
        self.name = name
        self.key = f"{type_}:{name}"
        self.calls = 0
        self.errors = 0
        # errors by error type: this component's pairs of the errors series
        self.error_types: dict[str, int] = {}
        self.lat_count = 0
        self.lat_errors = 0
        self.lat_sum = 0.0
        self.samples: deque[float] = deque(maxlen=size)

    def summary(self) -> LatencySummary:
        ordered = sorted(self.samples)
        return LatencySummary(
            name=self.name, kind=self.type, point="", count=self.lat_count,
            errors=self.lat_errors,
            mean_ms=self.lat_sum / self.lat_count * 1e3 if self.lat_count else 0.0,
            p50_ms=percentile(ordered, 50) * 1e3, p95_ms=percentile(ordered, 95) * 1e3,
            p99_ms=percentile(ordered, 99) * 1e3,
            max_ms=ordered[-1] * 1e3 if ordered else 0.0,
        )


def _hook_rows(monitor: PerformanceMonitor | None) -> list[LatencyStats]:
    return [] if monitor is None else monitor.hook_stats()


def _hook_summaries(monitor: PerformanceMonitor | None) -> list[LatencySummary]:
    return [
        LatencySummary(
            # Labelled as the exporters label them, so every view shows one name.
            name=_label(row.name), kind="hook", point=_label(str.__str__(row.point)),
            count=row.count,
            errors=row.errors, mean_ms=row.mean_ns / 1e6, p50_ms=row.p50_ns / 1e6,
            p95_ms=row.p95_ns / 1e6, p99_ms=row.p99_ns / 1e6, max_ms=row.max_ns / 1e6,
        )
        for row in sorted(_hook_rows(monitor), key=lambda r: (r.name, str(r.point)))
    ]


class MetricsHook(BuiltinHook):
    """Counts calls and errors and times operations at the points it is installed at.

    Only observes (always returns ``None``). Thread-safe: one short lock guards the
    counters; exporters are fed outside it.
    """

    default_points: tuple[str, ...] = tuple(ALL_RUNTIME_POINTS)

    def __init__(
        self,
        config: MetricsConfig | None = None,
        *,
        points: Iterable[str] | None = None,
        priority: int = METRICS_PRIORITY,
        exporters: Iterable[MetricsExporter] = (),
        clock: Clock | None = None,
    ) -> None:
        """``exporters`` are fed on every call; ``clock`` (its ``monotonic``) times
        operations instead of ``time.perf_counter`` (for tests)."""
        super().__init__(name="metrics", priority=priority, points=points,
                         description="counts calls and errors, times operations")
        self.config = config if config is not None else MetricsConfig()
        if not isinstance(self.config, MetricsConfig):
            raise InvalidValueError(
                f"config must be a MetricsConfig, got {type(self.config).__name__}",
                hint="MetricsHook(MetricsConfig(reservoir_size=...))",
            )
        self._now: Callable[[], float] = (clock.monotonic if clock is not None
                                          else time.perf_counter)
        self._latency = self.config.latency
        self._max_open = self.config.max_open_operations
        self._lock = threading.Lock()
        self._exporters: tuple[MetricsExporter, ...] = ()
        self._monitor: PerformanceMonitor | None = None
        self._calls = 0
        self._errors = 0
        self._by_point: dict[str, int] = {}
        self._errors_by_point: dict[str, int] = {}
        self._errors_by_type: dict[str, int] = {}
        # The errors series: (component, error type) pairs, kept in each component's
        # series (``error_types``), at most max_error_series of them; the errors of further
        # pairs, by component type (counted as (_other, _other)).
        self._error_pairs = 0
        self._error_overflow: dict[str, int] = {}
        self._series: dict[tuple[str, str], _Series] = {}
        self._open: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        self._abandoned = 0
        self._models: dict[tuple[str, str], _ModelSeries] = {}
        self._point_infos: dict[str, tuple[str, int]] = {}
        self._replayed: dict[str, int] = {}
        for exporter in exporters:
            self.add_exporter(exporter)

    # -- wiring -------------------------------------------------------------------------
    def add_exporter(self, exporter: MetricsExporter) -> None:
        """Feed ``exporter`` from now on (and give it the monitor, if one is included)."""
        for method in ("record_call", "record_error", "record_duration", "attach_monitor"):
            if not callable(getattr(exporter, method, None)):
                raise InvalidValueError(
                    f"{type(exporter).__name__} is not a metrics exporter (no {method})",
                    hint="use PrometheusExporter, OpenTelemetryExporter or implement "
                         "MetricsExporter",
                )
        if self._monitor is not None:
            exporter.attach_monitor(self._monitor)
        self._exporters = (*self._exporters, exporter)

    @property
    def exporters(self) -> tuple[MetricsExporter, ...]:
        """The exporters fed by this hook."""
        return self._exporters

    @property
    def monitor(self) -> PerformanceMonitor | None:
        """The monitor given to :meth:`include_monitor`, if any."""
        return self._monitor

    def include_monitor(self, monitor: PerformanceMonitor | None) -> None:
        """Add per-hook latency from ``monitor`` (e.g. ``system.executor.monitor``) to
        :meth:`stats`, :meth:`summary` and every exporter."""
        if not isinstance(monitor, PerformanceMonitor):
            raise InvalidValueError(
                f"include_monitor needs a PerformanceMonitor, got {type(monitor).__name__}",
                hint="pass system.executor.monitor; it is None when the system runs with "
                     "monitor=False",
            )
        self._monitor = monitor
        for exporter in self._exporters:
            exporter.attach_monitor(monitor)

    # -- the hot path -------------------------------------------------------------------
    def _point_info(self, point: str) -> tuple[str, int]:
        info = self._point_infos.get(point)
        if info is None:
            plain = str.__str__(point)
            info = self._point_infos[point] = (plain, _ROLES.get(plain, _OTHER))
        return info

    def _series_for(self, ctype: str, name: str) -> _Series:
        """The series of a component (called under the lock)."""
        series = self._series.get((ctype, name))
        if series is None:
            if len(self._series) >= self.config.max_components:
                name = OTHER_COMPONENT
                series = self._series.get((ctype, name))
                if series is not None:
                    return series
            series = _Series(_label(ctype), _label(name), self.config.reservoir_size)
            self._series[(ctype, name)] = series
        return series

    def execute(self, ctx: HookContext) -> HookOutput:
        """Count the call; open, close and time operations; feed the exporters."""
        point, role = self._point_info(ctx.point)
        component = ctx.component
        ctype = _TYPE_NAMES.get(component.type) or str(component.type)
        if RUNNING_REPLAYS and current_replay() is not None and replay_serves() is not False:
            # A replay serving a call from its recording (or running its agents and
            # workflows again) is no live traffic: counted apart, never exported.
            with self._lock:
                self._replayed[point] = self._replayed.get(point, 0) + 1
            return None
        duration = -1.0
        error_type = error_name = ""
        with self._lock:
            self._calls += 1
            self._by_point[point] = self._by_point.get(point, 0) + 1
            series = self._series_for(ctype, component.name)
            series.calls += 1
            if role == _BEFORE:
                if self._latency:
                    op = (ctx.correlation_id, ctype, component.id)
                    opened = self._open
                    opened[op] = self._now()
                    if len(opened) > self._max_open:
                        opened.popitem(last=False)
                        self._abandoned += 1
            elif role:
                if role == _ERROR:
                    error_type = _label(ctx.data.get("error_type") or "unknown")
                    if (error_type not in self._errors_by_type
                            and len(self._errors_by_type) >= self.config.max_components):
                        error_type = OTHER_COMPONENT  # bounded, like the components
                    self._errors += 1
                    series.errors += 1
                    self._errors_by_point[point] = self._errors_by_point.get(point, 0) + 1
                    self._errors_by_type[error_type] = (
                        self._errors_by_type.get(error_type, 0) + 1)
                    by_type = series.error_types
                    count = by_type.get(error_type)
                    error_name = series.name
                    if count is not None:
                        by_type[error_type] = count + 1
                    elif self._error_pairs < self.config.max_error_series:
                        by_type[error_type] = 1
                        self._error_pairs += 1
                    else:  # bounded: (_other, _other) of the component type
                        overflow = self._error_overflow
                        overflow[series.type] = overflow.get(series.type, 0) + 1
                        error_name = error_type = OTHER_COMPONENT
                if self._latency:
                    started = self._open.pop((ctx.correlation_id, ctype, component.id), None)
                    if started is not None:
                        duration = max(0.0, self._now() - started)
                        series.samples.append(duration)
                        series.lat_count += 1
                        series.lat_sum += duration
                        if role == _ERROR:
                            series.lat_errors += 1
            ctype, name = series.type, series.name
        model_call = (self._model_call(ctx.data, point == _MODEL_ERROR)
                      if point in _MODEL_ENDS else None)
        for exporter in self._exporters:
            exporter.record_call(point, ctype, name)
            if error_type:
                exporter.record_error(point, ctype, error_name, error_type)
            if duration >= 0:
                exporter.record_duration(ctype, name, duration,
                                         "error" if role == _ERROR else "ok")
            if model_call is not None:
                record = getattr(exporter, "record_model_call", None)
                if record is not None:
                    record(*model_call)
        return None

    def _model_call(self, data: dict[str, object], failed: bool
                    ) -> tuple[str, str, float | None, dict[str, int], str]:
        """Count one answered (or failed) model call; what the exporters get of it."""
        provider = str(data.get("provider") or "")
        model = str(data.get("model") or "")
        seconds: float | None = None
        tokens: dict[str, int] = {}
        if not failed:
            result = data.get("result")
            if isinstance(result, dict):
                latency = result.get("latency_ms")
                if isinstance(latency, int | float) and not isinstance(latency, bool):
                    seconds = max(0.0, float(latency)) / 1e3
                tokens = _tokens_of(result.get("usage"))
        with self._lock:
            series = self._models.get((provider, model))
            if series is None:
                if len(self._models) >= self.config.max_components:
                    provider, model = OTHER_COMPONENT, OTHER_COMPONENT
                    series = self._models.get((provider, model))
                if series is None:
                    series = self._models[(provider, model)] = _ModelSeries(
                        _label(provider), _label(model), self.config.reservoir_size)
            if failed:
                series.errors += 1
            else:
                series.calls += 1
                for kind, count in tokens.items():
                    series.tokens[kind] += count
                if seconds is not None:
                    series.samples.append(seconds)
                    series.lat_count += 1
                    series.lat_sum += seconds
        return (series.provider, series.model, seconds, tokens,
                "error" if failed else "ok")

    # -- reading ------------------------------------------------------------------------
    def stats(self) -> MetricsStats:
        """Counts, errors, operation latency and (with a monitor) per-hook latency."""
        with self._lock:
            all_series = list(self._series.values())
            calls, errors = self._calls, self._errors
            by_point = dict(self._by_point)
            errors_by_point = dict(self._errors_by_point)
            errors_by_type = dict(self._errors_by_type)
            by_pair = {s.key: dict(s.error_types) for s in all_series if s.error_types}
            for ptype, count in self._error_overflow.items():
                by_other = by_pair.setdefault(f"{ptype}:{OTHER_COMPONENT}", {})
                by_other[OTHER_COMPONENT] = by_other.get(OTHER_COMPONENT, 0) + count
            open_operations, abandoned = len(self._open), self._abandoned
            calls_by_component = {s.key: s.calls for s in all_series}
            errors_by_component = {s.key: s.errors for s in all_series if s.errors}
            operations = [s.summary() for s in all_series if s.lat_count]
            models = {f"{m.provider}/{m.model}": m.snapshot() for m in self._models.values()}
            replayed = dict(self._replayed)
        return MetricsStats(
            calls=calls, errors=errors, calls_by_point=by_point,
            calls_by_component=calls_by_component, errors_by_point=errors_by_point,
            errors_by_component=errors_by_component, errors_by_type=errors_by_type,
            operations=sorted(operations, key=lambda s: (s.kind, s.name)),
            hooks=_hook_summaries(self._monitor),
            open_operations=open_operations, abandoned_operations=abandoned,
            models=models, errors_by_component_and_type=by_pair,
            replayed_by_point=replayed,
        )

    def summary(self) -> dict[str, LatencySummary]:
        """Latency per operation (key ``tool:calculator``) and, with a monitor, per hook
        (key ``hook:<name>@<point>``)."""
        stats = self.stats()
        out = {f"{s.kind}:{s.name}": s for s in stats.operations}
        out.update({f"hook:{s.name}@{s.point}": s for s in stats.hooks})
        return out

    def reset(self) -> None:
        """Forget every count, sample and open operation (exporters keep theirs)."""
        with self._lock:
            self._calls = self._errors = self._abandoned = 0
            self._by_point.clear()
            self._errors_by_point.clear()
            self._errors_by_type.clear()
            self._error_pairs = 0
            self._error_overflow.clear()
            self._series.clear()
            self._models.clear()
            self._open.clear()
            self._replayed.clear()


# -- Prometheus -------------------------------------------------------------------------
class _MonitorCollector:
    """Reads per-hook stats from a monitor when Prometheus scrapes."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.monitor: PerformanceMonitor | None = None

    def describe(self) -> Iterator[Metric]:
        """Nothing to pre-declare: the series depend on which hooks ran."""
        return iter(())

    def collect(self) -> Iterator[Metric]:
        """Hook calls and errors (counters) and latency quantiles (gauges, seconds)."""
        from prometheus_client.core import (  # noqa: PLC0415 - optional dependency
            CounterMetricFamily,
            GaugeMetricFamily,
        )

        ns = self.namespace
        calls = CounterMetricFamily(f"{ns}_hook_calls", "Calls of each hook (executor "
                                    "monitor)", labels=["hook", "point"])
        errors = CounterMetricFamily(f"{ns}_hook_errors", "Failures of each hook "
                                     "(executor monitor)", labels=["hook", "point"])
        latency = GaugeMetricFamily(f"{ns}_hook_latency_seconds", "Hook latency quantiles "
                                    "over recent calls (executor monitor)",
                                    labels=["hook", "point", "quantile"])
        for row in _hook_rows(self.monitor):
            hook, point = _label(row.name), _label(str.__str__(row.point))
            calls.add_metric([hook, point], row.count)
            errors.add_metric([hook, point], row.errors)
            for quantile, field in _QUANTILES:
                latency.add_metric([hook, point, quantile], getattr(row, field) / 1e9)
        yield calls
        yield errors
        yield latency


class PrometheusExporter:
    """Feeds ``prometheus_client`` metrics in ``registry`` (a new ``CollectorRegistry``
    unless one is given; see ``.registry``).

    Metrics (``namespace`` defaults to ``llmspell``): ``llmspell_point_calls_total``
    {point, component_type, component}, ``llmspell_errors_total`` {point, component_type,
    component, error_type}, ``llmspell_operation_duration_seconds`` (histogram)
    {component_type, component, outcome}; with a monitor, ``llmspell_hook_calls_total``,
    ``llmspell_hook_errors_total`` {hook, point} and ``llmspell_hook_latency_seconds``
    {hook, point, quantile}, read at scrape time; per model, ``llmspell_model_calls_total``
    {provider, model, outcome}, ``llmspell_model_tokens_total`` {provider, model, type} and
    ``llmspell_model_latency_seconds`` (histogram of the provider's latency) {provider,
    model}. Labelled children are cached per label set (``.labels()`` costs about twice an
    ``observe``).
    """

    def __init__(self, registry: CollectorRegistry | None = None, *,
                 namespace: str = "llmspell",
                 buckets: Iterable[float] = DEFAULT_BUCKETS) -> None:
        try:
            import prometheus_client  # noqa: PLC0415 - optional dependency
        except ImportError as exc:
            raise ConfigurationError(
                "PrometheusExporter needs the prometheus_client package",
                hint="pip install 'llmspell[prometheus]'",
            ) from exc
        if (not isinstance(namespace, str) or not namespace
                or not namespace.replace("_", "a").isalnum() or namespace[0].isdigit()):
            raise InvalidValueError(
                f"PrometheusExporter namespace must be letters, digits and '_', "
                f"got {namespace!r}", hint="for example 'llmspell' or 'myapp_llm'",
            )
        bucket_list = sorted(float(b) for b in buckets)
        if not bucket_list or bucket_list[0] <= 0:
            raise InvalidValueError("PrometheusExporter buckets must be positive seconds",
                                    hint=f"for example {DEFAULT_BUCKETS[:4]}")
        self.registry: CollectorRegistry = (registry if registry is not None
                                            else prometheus_client.CollectorRegistry())
        self.namespace = namespace
        self._calls = prometheus_client.Counter(
            f"{namespace}_point_calls", "Hook point dispatches seen by the metrics hook",
            ["point", "component_type", "component"], registry=self.registry)
        self._errors = prometheus_client.Counter(
            f"{namespace}_errors", "Errors seen at error points",
            ["point", "component_type", "component", "error_type"], registry=self.registry)
        self._duration = prometheus_client.Histogram(
            f"{namespace}_operation_duration_seconds",
            "Duration of tool and agent operations (before point to after/error point)",
            ["component_type", "component", "outcome"], registry=self.registry,
            buckets=bucket_list)
        self._model_calls = prometheus_client.Counter(
            f"{namespace}_model_calls", "Model calls, answered (ok) or failed (error)",
            ["provider", "model", "outcome"], registry=self.registry)
        self._model_tokens = prometheus_client.Counter(
            f"{namespace}_model_tokens", "Tokens of model calls by type (input, output, "
            "cached, reasoning)", ["provider", "model", "type"], registry=self.registry)
        self._model_latency = prometheus_client.Histogram(
            f"{namespace}_model_latency_seconds", "Provider latency of answered model calls",
            ["provider", "model"], registry=self.registry, buckets=bucket_list)
        self._call_children: dict[tuple[str, str, str], Counter] = {}
        self._error_children: dict[tuple[str, str, str, str], Counter] = {}
        self._duration_children: dict[tuple[str, str, str], Histogram] = {}
        self._model_counters: dict[tuple[str, ...], Counter] = {}
        self._model_histograms: dict[tuple[str, str], Histogram] = {}
        self._collector: _MonitorCollector | None = None

    def record_call(self, point: str, component_type: str, component: str) -> None:
        """Increment ``<namespace>_point_calls_total``."""
        key = (point, component_type, component)
        child = self._call_children.get(key)
        if child is None:
            child = self._call_children[key] = self._calls.labels(*_labels(key))
        child.inc()

    def record_error(self, point: str, component_type: str, component: str,
                     error_type: str) -> None:
        """Increment ``<namespace>_errors_total``."""
        key = (point, component_type, component, error_type)
        child = self._error_children.get(key)
        if child is None:
            child = self._error_children[key] = self._errors.labels(*_labels(key))
        child.inc()

    def record_duration(self, component_type: str, component: str, seconds: float,
                        outcome: str) -> None:
        """Observe one operation in ``<namespace>_operation_duration_seconds``."""
        key = (component_type, component, outcome)
        child = self._duration_children.get(key)
        if child is None:
            child = self._duration_children[key] = self._duration.labels(*_labels(key))
        child.observe(seconds)

    def record_model_call(self, provider: str, model: str, seconds: float | None,
                          tokens: Mapping[str, int], outcome: str) -> None:
        """Count one model call, its tokens and (answered) its latency."""
        counters = self._model_counters
        key: tuple[str, ...] = ("calls", provider, model, outcome)
        calls = counters.get(key)
        if calls is None:
            calls = counters[key] = self._model_calls.labels(
                *_labels((provider, model, outcome)))
        calls.inc()
        for kind, count in tokens.items():
            key = ("tokens", provider, model, kind)
            counter = counters.get(key)
            if counter is None:
                counter = counters[key] = self._model_tokens.labels(
                    *_labels((provider, model, kind)))
            counter.inc(count)
        if seconds is not None:
            histogram = self._model_histograms.get((provider, model))
            if histogram is None:
                histogram = self._model_histograms[(provider, model)] = \
                    self._model_latency.labels(*_labels((provider, model)))
            histogram.observe(seconds)

    def attach_monitor(self, monitor: PerformanceMonitor) -> None:
        """Export the per-hook stats of ``monitor``, read at scrape time."""
        if self._collector is None:
            self._collector = _MonitorCollector(self.namespace)
            self.registry.register(self._collector)
        self._collector.monitor = monitor


# -- OpenTelemetry ----------------------------------------------------------------------
class OpenTelemetryExporter:
    """Feeds OpenTelemetry instruments of ``meter`` (default: the ``llmspell`` meter of
    ``meter_provider``, or of the global provider).

    Instruments, all created once:

    * ``llmspell.point.calls`` and ``llmspell.errors``: observable counters. The hook adds
      to in-process cumulative counts (about 0.1 µs) and the SDK reads them when it
      collects: a synchronous ``Counter.add`` of the SDK costs about 6-7 µs a call;
    * ``llmspell.operation.duration``: histogram (seconds), one ``record`` per finished
      operation (OpenTelemetry has no observable histogram);
    * ``llmspell.hook.calls``/``llmspell.hook.errors`` (observable counters) and
      ``llmspell.hook.latency`` (observable gauge, seconds, one point per quantile) report
      the included monitor, if any;
    * per model: ``llmspell.model.calls`` and ``llmspell.model.tokens`` (observable
      counters; attributes ``llmspell.provider``, ``llmspell.model`` and
      ``llmspell.outcome`` or ``llmspell.token.type``) and ``llmspell.model.duration``
      (histogram, seconds, the provider's latency).

    Attribute names are the ``ATTR_*`` constants of this module; attribute sets are cached
    per label set.
    """

    def __init__(self, meter: Meter | None = None, *,
                 meter_provider: MeterProvider | None = None) -> None:
        try:
            from opentelemetry import metrics  # noqa: PLC0415 - optional dependency
        except ImportError as exc:
            raise ConfigurationError(
                "OpenTelemetryExporter needs the opentelemetry-api package",
                hint="pip install 'llmspell[otel]'",
            ) from exc
        if meter is None:
            meter = metrics.get_meter("llmspell", meter_provider=meter_provider)
        self.meter = meter
        self._observation = metrics.Observation
        self._lock = threading.Lock()
        self._call_counts: dict[tuple[str, str, str], int] = {}
        self._error_counts: dict[tuple[str, str, str, str], int] = {}
        self._model_call_counts: dict[tuple[str, str, str], int] = {}
        self._model_token_counts: dict[tuple[str, str, str], int] = {}
        self._attrs: dict[tuple[str, ...], Mapping[str, str]] = {}
        self._monitor: PerformanceMonitor | None = None
        meter.create_observable_counter(
            "llmspell.point.calls", callbacks=[self._observe_point_calls], unit="{call}",
            description="Hook point dispatches seen by the metrics hook")
        meter.create_observable_counter(
            "llmspell.errors", callbacks=[self._observe_point_errors], unit="{error}",
            description="Errors seen at error points")
        self._duration = meter.create_histogram(
            "llmspell.operation.duration", unit="s",
            description="Duration of tool and agent operations")
        meter.create_observable_counter(
            "llmspell.hook.calls", callbacks=[self._observe_hook_calls], unit="{call}",
            description="Calls of each hook (executor monitor)")
        meter.create_observable_counter(
            "llmspell.hook.errors", callbacks=[self._observe_hook_errors], unit="{error}",
            description="Failures of each hook (executor monitor)")
        meter.create_observable_gauge(
            "llmspell.hook.latency", callbacks=[self._observe_hook_latency], unit="s",
            description="Hook latency quantiles over recent calls (executor monitor)")
        meter.create_observable_counter(
            "llmspell.model.calls", callbacks=[self._observe_model_calls], unit="{call}",
            description="Model calls, answered (ok) or failed (error)")
        meter.create_observable_counter(
            "llmspell.model.tokens", callbacks=[self._observe_model_tokens], unit="{token}",
            description="Tokens of model calls by type")
        self._model_duration = meter.create_histogram(
            "llmspell.model.duration", unit="s",
            description="Provider latency of answered model calls")

    def _attributes(self, key: tuple[str, ...], names: tuple[str, ...]) -> Mapping[str, str]:
        attrs = self._attrs.get(key)
        if attrs is None:
            attrs = self._attrs[key] = dict(zip(names, _labels(key), strict=True))
        return attrs

    def record_call(self, point: str, component_type: str, component: str) -> None:
        """Count one dispatch for ``llmspell.point.calls``."""
        key = (point, component_type, component)
        with self._lock:
            self._call_counts[key] = self._call_counts.get(key, 0) + 1

    def record_error(self, point: str, component_type: str, component: str,
                     error_type: str) -> None:
        """Count one error for ``llmspell.errors``."""
        key = (point, component_type, component, error_type)
        with self._lock:
            self._error_counts[key] = self._error_counts.get(key, 0) + 1

    def record_duration(self, component_type: str, component: str, seconds: float,
                        outcome: str) -> None:
        """Record one operation in ``llmspell.operation.duration``."""
        key = (component_type, component, outcome)
        attrs = self._attrs.get(key)
        if attrs is None:
            attrs = self._attributes(key, (ATTR_COMPONENT_TYPE, ATTR_COMPONENT, ATTR_OUTCOME))
        self._duration.record(seconds, attrs)

    def record_model_call(self, provider: str, model: str, seconds: float | None,
                          tokens: Mapping[str, int], outcome: str) -> None:
        """Count one model call and its tokens; record its latency when it answered."""
        with self._lock:
            key = (provider, model, outcome)
            self._model_call_counts[key] = self._model_call_counts.get(key, 0) + 1
            for kind, count in tokens.items():
                tkey = (provider, model, kind)
                self._model_token_counts[tkey] = self._model_token_counts.get(tkey, 0) + count
        if seconds is not None:
            self._model_duration.record(seconds, self._tagged(
                "model", (provider, model), (ATTR_PROVIDER, ATTR_MODEL)))

    def _tagged(self, tag: str, values: tuple[str, ...],
                names: tuple[str, ...]) -> Mapping[str, str]:
        """Attributes cached under a ``tag`` (so model keys never meet the point keys)."""
        key = (tag, *values)
        attrs = self._attrs.get(key)
        if attrs is None:
            attrs = self._attrs[key] = dict(zip(names, _labels(values), strict=True))
        return attrs

    def _observe_model_calls(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            counts = list(self._model_call_counts.items())
        names = (ATTR_PROVIDER, ATTR_MODEL, ATTR_OUTCOME)
        return [self._observation(n, self._tagged("calls", k, names)) for k, n in counts]

    def _observe_model_tokens(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            counts = list(self._model_token_counts.items())
        names = (ATTR_PROVIDER, ATTR_MODEL, ATTR_TOKEN_TYPE)
        return [self._observation(n, self._tagged("tokens", k, names)) for k, n in counts]

    def attach_monitor(self, monitor: PerformanceMonitor) -> None:
        """Report the per-hook stats of ``monitor`` through the observable instruments."""
        self._monitor = monitor

    def _observe_point_calls(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            counts = list(self._call_counts.items())
        names = (ATTR_POINT, ATTR_COMPONENT_TYPE, ATTR_COMPONENT)
        return [self._observation(n, self._attributes(k, names)) for k, n in counts]

    def _observe_point_errors(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            counts = list(self._error_counts.items())
        names = (ATTR_POINT, ATTR_COMPONENT_TYPE, ATTR_COMPONENT, ATTR_ERROR_TYPE)
        return [self._observation(n, self._attributes(k, names)) for k, n in counts]

    def _rows(self) -> list[tuple[dict[str, str], LatencyStats]]:
        return [({ATTR_HOOK: _label(row.name), ATTR_POINT: _label(str.__str__(row.point))}, row)
                for row in _hook_rows(self._monitor)]

    def _observe_hook_calls(self, options: CallbackOptions) -> Iterable[Observation]:
        return [self._observation(row.count, attrs) for attrs, row in self._rows()]

    def _observe_hook_errors(self, options: CallbackOptions) -> Iterable[Observation]:
        return [self._observation(row.errors, attrs) for attrs, row in self._rows()]

    def _observe_hook_latency(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            self._observation(getattr(row, field) / 1e9, {**attrs, ATTR_QUANTILE: quantile})
            for attrs, row in self._rows()
            for quantile, field in _QUANTILES
        ]
