"""MetricsHook and CachingHook, through the real runtime."""

from __future__ import annotations

import hashlib
import sys
import threading
from typing import Any

import msgspec
import pytest

from llmspell.builtin.caching import (
    CACHE_KEY_METADATA,
    CACHING_PRIORITY,
    CachingConfig,
    CachingHook,
    TtlLruCache,
    default_key,
    scoped_key,
)
from llmspell.builtin.metrics import (
    ATTR_COMPONENT,
    ATTR_COMPONENT_TYPE,
    ATTR_ERROR_TYPE,
    ATTR_HOOK,
    ATTR_OUTCOME,
    ATTR_POINT,
    ATTR_QUANTILE,
    METRICS_PRIORITY,
    OTHER_COMPONENT,
    MetricsConfig,
    MetricsExporter,
    MetricsHook,
    OpenTelemetryExporter,
    PrometheusExporter,
)
from llmspell.core import ManualClock
from llmspell.errors import ConfigurationError, InvalidValueError
from llmspell.hooks import ComponentId, ComponentType, HookContext, HookPoint, Modified
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.providers import ScriptedProvider


def make_calls_tool(name: str = "calculator") -> tuple[Any, list[dict[str, Any]]]:
    """A tool that records each call and returns a dict built from its input."""
    calls: list[dict[str, Any]] = []

    @tool(name)
    def counted(expression: str) -> dict[str, Any]:
        """Evaluate (pretend)."""
        calls.append({"expression": expression})
        return {"expression": expression, "value": len(expression)}

    return counted, calls


def sized_tool() -> Any:
    @tool("blob")
    def blob(n: int) -> str:
        """Return n characters."""
        return "x" * n

    return blob


# -- caching --------------------------------------------------------------------------
async def test_cache_hit_skips_the_tool_and_returns_the_same_result() -> None:
    counted, calls = make_calls_tool()
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(counted)
        hook = CachingHook()
        hook.install(system.registry)
        first = await system.tools.execute("calculator", {"expression": "6*7"})
        run = await system.tools.run("calculator", {"expression": "6*7"})
        assert run.result == first == {"expression": "6*7", "value": 3}
        assert run.replaced and len(calls) == 1
        other = await system.tools.execute("calculator", {"expression": "1+1"})
        assert other == {"expression": "1+1", "value": 3}
        assert len(calls) == 2
    stats = hook.stats()
    assert (stats.hits, stats.misses, stats.stores, stats.served) == (1, 2, 2, 1)
    assert stats.size == 2 and stats.bytes > 0 and stats.hit_ratio == pytest.approx(1 / 3)
    assert hook.metadata.priority == CACHING_PRIORITY == -900
    assert hook.metadata.name == "caching"


async def test_a_mutated_result_does_not_change_the_cache() -> None:
    counted, calls = make_calls_tool()
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(counted)
        CachingHook().install(system.registry)
        first = await system.tools.execute("calculator", {"expression": "2+2"})
        first["value"] = 999
        second = await system.tools.execute("calculator", {"expression": "2+2"})
        second["value"] = 1000
        third = await system.tools.execute("calculator", {"expression": "2+2"})
        assert third == {"expression": "2+2", "value": 3}
        assert len(calls) == 1


async def test_ttl_expiry_with_a_manual_clock() -> None:
    counted, calls = make_calls_tool()
    clock = ManualClock()
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(counted)
        hook = CachingHook(CachingConfig(ttl=300), clock=clock)
        hook.install(system.registry)
        params = {"expression": "1"}
        await system.tools.execute("calculator", params)
        clock.advance(299)
        await system.tools.execute("calculator", params)
        assert len(calls) == 1
        clock.advance(2)
        await system.tools.execute("calculator", params)
        assert len(calls) == 2
        await system.tools.execute("calculator", params)
        assert len(calls) == 2
    stats = hook.stats()
    assert stats.expirations == 1 and stats.hits == 2 and stats.size == 1


async def test_lru_eviction_drops_the_least_recently_used() -> None:
    counted, calls = make_calls_tool()
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(counted)
        hook = CachingHook(CachingConfig(max_entries=2))
        hook.install(system.registry)

        async def run(expr: str) -> None:
            await system.tools.execute("calculator", {"expression": expr})

        await run("a")
        await run("b")
        await run("a")          # hit: "a" becomes the most recently used
        await run("c")          # evicts "b"
        assert len(calls) == 3
        await run("a")          # still cached
        assert len(calls) == 3
        await run("b")          # evicted: runs again
        assert len(calls) == 4
    stats = hook.stats()
    assert stats.evictions == 2 and stats.size == 2


async def test_byte_bound_evicts_and_skips_values_that_never_fit() -> None:
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(sized_tool())
        hook = CachingHook(CachingConfig(max_bytes=250))
        hook.install(system.registry)
        for n in (100, 100, 100):  # JSON of each value: n + 2 quotes
            await system.tools.execute("blob", {"n": n})
        await system.tools.execute("blob", {"n": 101})
        await system.tools.execute("blob", {"n": 102})
        stats = hook.stats()
        assert stats.bytes <= 250 and stats.size == 2 and stats.evictions == 1
        await system.tools.execute("blob", {"n": 1000})  # alone larger than max_bytes
        stats = hook.stats()
        assert stats.skipped == 1 and stats.size == 2 and stats.bytes == 104 + 103


async def test_allow_and_deny_lists() -> None:
    calc, calc_calls = make_calls_tool("calculator")
    other, other_calls = make_calls_tool("other")
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(calc)
        system.tools.register(other)
        hook = CachingHook(CachingConfig(allow_tools=("calculator",)))
        hook.install(system.registry)
        for _ in range(3):
            await system.tools.execute("calculator", {"expression": "x"})
            await system.tools.execute("other", {"expression": "x"})
        assert len(calc_calls) == 1 and len(other_calls) == 3
        assert hook.stats().bypassed == 6  # before + after of each "other" call
        hook.uninstall(system.registry)

        deny = CachingHook(CachingConfig(deny_tools=frozenset({"calculator"})))
        deny.install(system.registry)
        for _ in range(2):
            await system.tools.execute("calculator", {"expression": "y"})
            await system.tools.execute("other", {"expression": "y"})
        assert len(calc_calls) == 3 and len(other_calls) == 4


def test_config_is_validated_with_hints() -> None:
    with pytest.raises(ConfigurationError) as conflict:
        CachingConfig(allow_tools=("calculator",), deny_tools=("calculator",))
    assert conflict.value.hint and "calculator" in str(conflict.value)
    with pytest.raises(InvalidValueError) as one_string:
        CachingConfig(allow_tools="calculator")  # type: ignore[arg-type]
    assert "('calculator',)" in (one_string.value.hint or "")
    for bad in ({"ttl": 0}, {"ttl": -1.0}, {"max_entries": 0}, {"max_bytes": 0},
                {"max_entries": True}, {"copy_on_hit": "yes"}, {"deny_agents": None},
                {"allow_agents": ("",)}):
        with pytest.raises(InvalidValueError):
            CachingConfig(**bad)
    config = CachingConfig(allow_agents=["a"], ttl=None, max_bytes=None)
    assert config.allow_agents == frozenset({"a"}) and config.deny_tools == frozenset()
    with pytest.raises(InvalidValueError):
        CachingHook(config={"ttl": 1})  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError):
        CachingHook(key_fn="params")  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError):
        TtlLruCache(0)
    with pytest.raises(InvalidValueError):
        TtlLruCache(10, max_bytes=-5)
    with pytest.raises(InvalidValueError):
        TtlLruCache(10).put("k", 1, ttl=0)


async def test_custom_key_fn() -> None:
    counted, calls = make_calls_tool()

    def by_normalised_expression(ctx: HookContext) -> str | None:
        expression = ctx.data["params"]["expression"]
        if expression.startswith("!"):
            return None  # never cache these
        return "calc:" + expression.replace(" ", "")

    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(counted)
        hook = CachingHook(key_fn=by_normalised_expression)
        hook.install(system.registry)
        await system.tools.execute("calculator", {"expression": "1 + 1"})
        await system.tools.execute("calculator", {"expression": "1+1"})
        assert len(calls) == 1
        key = scoped_key("tool", "calculator", "calc:1+1")
        assert hook.cache.keys() == [key] == ["tool:10:calculator:calc:1+1"]
        await system.tools.execute("calculator", {"expression": "!now"})
        await system.tools.execute("calculator", {"expression": "!now"})
        assert len(calls) == 3 and hook.stats().uncacheable == 2
        assert hook.invalidate(key) and not hook.invalidate(key)
        await system.tools.execute("calculator", {"expression": "1+1"})
        assert len(calls) == 4
        hook.clear()
        assert len(hook.cache) == 0

        hook.uninstall(system.registry)
        bad = CachingHook(key_fn=lambda ctx: 42)  # type: ignore[arg-type,return-value]
        bad.install(system.registry)
        # The hook fails open: the tool still runs, the failure is recorded.
        await system.tools.execute("calculator", {"expression": "9"})
        assert len(calls) == 5 and system.executor.failures()


async def test_default_key_is_stable_and_order_independent() -> None:
    key = default_key("tool", "calculator", {"b": 2, "a": {"y": 1, "x": [1, 2]}})
    same = default_key("tool", "calculator", {"a": {"x": [1, 2], "y": 1}, "b": 2})
    assert key == same
    blob = b'["tool","calculator",{"a":{"x":[1,2],"y":1},"b":2}]'
    assert key == "tool:calculator:" + hashlib.blake2b(blob, digest_size=16).hexdigest()
    assert default_key("agent", "calculator", {"b": 2}) != default_key(
        "tool", "calculator", {"b": 2})
    assert default_key("tool", "x", {"f": object()}) is None

    counted, _ = make_calls_tool()
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(counted)
        hook = CachingHook()
        hook.install(system.registry)
        await system.tools.execute("calculator", {"expression": "7"})
        assert hook.cache.keys() == [default_key("tool", "calculator", {"expression": "7"})]


async def test_a_later_params_rewrite_does_not_split_the_cache() -> None:
    counted, calls = make_calls_tool()
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(counted)
        CachingHook().install(system.registry)
        system.registry.register(
            "BeforeToolExecution",
            lambda c: Modified({**c.data, "params": {"expression": c.data["params"]
                                                     ["expression"].strip()}}),
            name="strip",
        )
        for _ in range(3):
            result = await system.tools.execute("calculator", {"expression": " 5 "})
        assert result == {"expression": "5", "value": 1}
        assert len(calls) == 1


async def test_agent_results_are_cached() -> None:
    async with System(SystemConfig(store="memory")) as system:
        hook = CachingHook()
        hook.install(system.registry)
        agent = system.agents.create("a", provider=ScriptedProvider(["x", "y"]))
        first = await agent.run("q")
        second = await agent.run("q")
        assert first.output == second.output == "x"
        assert second.replaced and not first.replaced
        third = await agent.run("another question")
        assert third.output == "y"
    assert hook.stats().served == 1


async def test_agents_can_be_excluded() -> None:
    async with System(SystemConfig(store="memory")) as system:
        # Model calls are cached too: excluding the agent alone serves its model call.
        CachingHook(CachingConfig(allow_agents=())).install(system.registry)
        agent = system.agents.create("a", provider=ScriptedProvider(["x", "y"]))
        assert (await agent.run("q")).output == "x"
        assert (await agent.run("q")).output == "x"
    async with System(SystemConfig(store="memory")) as system:
        CachingHook(CachingConfig(allow_agents=(), allow_models=())).install(system.registry)
        agent = system.agents.create("a", provider=ScriptedProvider(["x", "y"]))
        assert (await agent.run("q")).output == "x"
        assert (await agent.run("q")).output == "y"


def test_cache_direct_use_and_thread_safety() -> None:
    clock = ManualClock()
    cache = TtlLruCache(max_entries=64, max_bytes=4000, ttl=10, clock=clock)
    assert not cache.put("bad", object()) and cache.stats().skipped == 1
    assert cache.put("forever", [1], ttl=None)
    clock.advance(11)
    assert cache.get("forever") == (True, [1])
    assert cache.put("short", 1, ttl=1)
    clock.advance(2)
    assert cache.purge_expired() == 1 and "short" not in cache

    errors: list[BaseException] = []
    gets = 2000

    def worker(n: int) -> None:
        try:
            for i in range(gets):
                key = f"k{(i * 7 + n) % 100}"
                hit, value = cache.get(key)
                if hit:
                    assert value["key"] == key
                else:
                    cache.put(key, {"key": key, "pad": "p" * (i % 20)})
                if i % 97 == 0:
                    cache.invalidate(key)
        except BaseException as exc:  # pragma: no cover - the failure is the message
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    stats = cache.stats()
    assert stats.hits + stats.misses == 8 * gets + 1
    assert stats.size <= 64 and stats.bytes <= 4000
    live = 0
    keys = cache.keys()
    for key in keys:
        hit, value = cache.get(key)
        assert hit
        live += len(msgspec.json.encode(value))
    assert live == cache.stats().bytes
    cache.clear()
    assert len(cache) == 0 and cache.stats().bytes == 0


def test_after_point_without_a_before_context_computes_its_own_key() -> None:
    hook = CachingHook(points=[HookPoint.AFTER_TOOL_EXECUTION])
    component = ComponentId(type=ComponentType.TOOL, name="calculator", id="calculator")
    ctx = HookContext(point=HookPoint.AFTER_TOOL_EXECUTION, component=component,
                      data={"tool": "calculator", "params": {"e": 1}, "result": 3})
    assert hook.execute(ctx) is None
    assert hook.cache.get(default_key("tool", "calculator", {"e": 1}) or "") == (True, 3)
    assert hook.execute(HookContext(point=HookPoint.TOOL_ERROR, component=component)) is None
    no_result = HookContext(point=HookPoint.AFTER_TOOL_EXECUTION, component=component,
                            data={"params": {"e": 2}})
    assert hook.execute(no_result) is None and len(hook.cache) == 1
    assert CACHE_KEY_METADATA not in ctx.metadata
    never = CachingHook(points=[HookPoint.AFTER_TOOL_EXECUTION], key_fn=lambda ctx: None)
    assert never.execute(ctx) is None
    assert len(never.cache) == 0 and never.stats().uncacheable == 1


# -- metrics --------------------------------------------------------------------------
async def test_metrics_count_points_components_and_time_operations() -> None:
    clock = ManualClock()
    counted, _ = make_calls_tool()

    @tool()
    def slow(n: int) -> int:
        """Takes a quarter of a (manual) second."""
        clock.advance(0.25)
        return n

    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(counted)
        system.tools.register(slow)
        hook = MetricsHook(clock=clock)
        hook.install(system.registry)
        await system.tools.execute("calculator", {"expression": "1"})
        await system.tools.execute("calculator", {"expression": "2"})
        for _ in range(4):
            await system.tools.execute("slow", {"n": 1})
        agent = system.agents.create("a", provider=ScriptedProvider(["x"]))
        await agent.run("q")
    stats = hook.stats()
    assert stats.calls_by_point["before_tool_execution"] == 6
    assert stats.calls_by_point["after_tool_execution"] == 6
    assert stats.calls_by_point["tool_validation"] == 6
    assert stats.calls_by_point["before_agent_execution"] == 1
    assert stats.calls_by_point["after_model_call"] == 1
    assert stats.calls_by_component == {"tool:calculator": 6, "tool:slow": 12, "agent:a": 2,
                                        "model:scripted/scripted": 2}
    assert stats.errors == 0 and stats.open_operations == 0
    assert stats.models["scripted/scripted"].calls == 1
    summary = hook.summary()
    assert set(summary) == {"tool:calculator", "tool:slow", "agent:a",
                            "model:scripted/scripted"}
    slow_stats = summary["tool:slow"]
    assert slow_stats.count == 4 and slow_stats.kind == "tool"
    assert slow_stats.p50_ms == slow_stats.p99_ms == slow_stats.mean_ms == pytest.approx(250)
    assert summary["tool:calculator"].p95_ms == 0
    assert hook.metadata.priority == METRICS_PRIORITY == 1000
    hook.reset()
    assert hook.stats().calls == 0 and hook.summary() == {}


async def test_metrics_count_errors_of_a_failing_tool() -> None:
    @tool()
    def boom(n: int) -> int:
        """Always fails."""
        raise RuntimeError("nope")

    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(boom)
        hook = MetricsHook()
        hook.install(system.registry)
        for _ in range(3):
            with pytest.raises(Exception, match="nope"):
                await system.tools.execute("boom", {"n": 1})
    stats = hook.stats()
    assert stats.errors == 3
    assert stats.errors_by_point == {"tool_error": 3}
    assert stats.errors_by_component == {"tool:boom": 3}
    assert sum(stats.errors_by_type.values()) == 3
    (op,) = stats.operations
    assert op.name == "boom" and op.count == 3 and op.errors == 3


def test_metrics_bound_open_operations_and_components() -> None:
    hook = MetricsHook(MetricsConfig(max_open_operations=2, max_components=2))
    for name in ("a", "b", "c", "d"):
        component = ComponentId(type=ComponentType.TOOL, name=name, id=name)
        hook.execute(HookContext(point=HookPoint.BEFORE_TOOL_EXECUTION, component=component))
    stats = hook.stats()
    assert stats.open_operations == 2 and stats.abandoned_operations == 2
    assert stats.calls_by_component == {"tool:a": 1, "tool:b": 1, f"tool:{OTHER_COMPONENT}": 2}
    no_latency = MetricsHook(MetricsConfig(latency=False))
    component = ComponentId(type=ComponentType.TOOL, name="a", id="a")
    ctx = HookContext(point=HookPoint.BEFORE_TOOL_EXECUTION, component=component)
    no_latency.execute(ctx)
    no_latency.execute(HookContext(point=HookPoint.AFTER_TOOL_EXECUTION, component=component,
                                   correlation_id=ctx.correlation_id))
    assert no_latency.stats().operations == [] and no_latency.stats().open_operations == 0


def test_metrics_config_is_validated() -> None:
    for bad in ({"reservoir_size": 0}, {"max_open_operations": -1},
                {"max_components": True}, {"latency": "yes"}):
        with pytest.raises(InvalidValueError) as info:
            MetricsConfig(**bad)
        assert info.value.hint
    with pytest.raises(InvalidValueError):
        MetricsHook(config={"reservoir_size": 5})  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError):
        MetricsHook().include_monitor(None)
    with pytest.raises(InvalidValueError):
        MetricsHook(exporters=[object()])  # type: ignore[list-item]


async def test_metrics_include_per_hook_stats_from_the_monitor() -> None:
    counted, _ = make_calls_tool()
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(counted)
        caching = CachingHook()
        caching.install(system.registry)
        hook = MetricsHook()
        hook.install(system.registry)
        assert system.executor.monitor is not None
        hook.include_monitor(system.executor.monitor)
        assert hook.monitor is system.executor.monitor
        for _ in range(3):
            await system.tools.execute("calculator", {"expression": "1"})
    stats = hook.stats()
    names = {(s.name, s.point) for s in stats.hooks}
    assert ("caching", "before_tool_execution") in names
    assert ("metrics", "after_tool_execution") in names
    row = hook.summary()["hook:caching@before_tool_execution"]
    assert row.kind == "hook" and row.count == 3 and row.p99_ms > 0
    # Cache hits stop the chain at caching: metrics (last) sees only the first before.
    assert stats.calls_by_point["before_tool_execution"] == 1
    assert stats.calls_by_point["tool_validation"] == 3


async def test_prometheus_export() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    @tool()
    def boom(n: int) -> int:
        """Always fails."""
        raise RuntimeError("nope")

    counted, _ = make_calls_tool()
    registry = CollectorRegistry()
    exporter = PrometheusExporter(registry)
    assert isinstance(exporter, MetricsExporter)
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(counted)
        system.tools.register(boom)
        hook = MetricsHook(exporters=[exporter])
        hook.install(system.registry)
        assert system.executor.monitor is not None
        hook.include_monitor(system.executor.monitor)
        await system.tools.execute("calculator", {"expression": "1"})
        await system.tools.execute("calculator", {"expression": "2"})
        with pytest.raises(Exception, match="nope"):
            await system.tools.execute("boom", {"n": 1})
    value = registry.get_sample_value
    labels = {"point": "before_tool_execution", "component_type": "tool",
              "component": "calculator"}
    assert value("llmspell_point_calls_total", labels) == 2
    error_type = next(iter(hook.stats().errors_by_type))
    assert value("llmspell_errors_total", {"point": "tool_error", "component_type": "tool",
                                           "component": "boom",
                                           "error_type": error_type}) == 1
    assert value("llmspell_operation_duration_seconds_count",
                 {"component_type": "tool", "component": "calculator", "outcome": "ok"}) == 2
    assert value("llmspell_operation_duration_seconds_count",
                 {"component_type": "tool", "component": "boom", "outcome": "error"}) == 1
    assert value("llmspell_hook_calls_total",
                 {"hook": "metrics", "point": "before_tool_execution"}) == 3
    assert value("llmspell_hook_latency_seconds", {"hook": "metrics",
                                                    "point": "tool_error",
                                                    "quantile": "0.99"}) > 0
    text = generate_latest(registry).decode()
    assert "# TYPE llmspell_operation_duration_seconds histogram" in text
    assert 'llmspell_hook_errors_total{hook="metrics",point="tool_error"} 0.0' in text
    # A second exporter in its own registry; a bad namespace or buckets are refused.
    assert PrometheusExporter(namespace="app").registry is not registry
    with pytest.raises(InvalidValueError):
        PrometheusExporter(namespace="bad-name")
    with pytest.raises(InvalidValueError):
        PrometheusExporter(buckets=[0, 1])


def _otel_points(reader: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                out.setdefault(metric.name, []).extend(metric.data.data_points)
    return out


async def test_opentelemetry_export() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    @tool()
    def boom(n: int) -> int:
        """Always fails."""
        raise RuntimeError("nope")

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    exporter = OpenTelemetryExporter(meter_provider=provider)
    counted, _ = make_calls_tool()
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(counted)
        system.tools.register(boom)
        hook = MetricsHook(exporters=[exporter])
        hook.install(system.registry)
        assert system.executor.monitor is not None
        hook.include_monitor(system.executor.monitor)
        for _ in range(2):
            await system.tools.execute("calculator", {"expression": "1"})
        with pytest.raises(Exception, match="nope"):
            await system.tools.execute("boom", {"n": 1})
    points = _otel_points(reader)
    calls = {(p.attributes[ATTR_POINT], p.attributes[ATTR_COMPONENT]): p.value
             for p in points["llmspell.point.calls"]}
    assert calls[("before_tool_execution", "calculator")] == 2
    assert calls[("tool_error", "boom")] == 1
    (error,) = points["llmspell.errors"]
    assert error.value == 1 and error.attributes[ATTR_COMPONENT_TYPE] == "tool"
    assert error.attributes[ATTR_ERROR_TYPE]
    durations = {(p.attributes[ATTR_COMPONENT], p.attributes[ATTR_OUTCOME]): p.count
                 for p in points["llmspell.operation.duration"]}
    assert durations == {("calculator", "ok"): 2, ("boom", "error"): 1}
    hook_calls = {(p.attributes[ATTR_HOOK], p.attributes[ATTR_POINT]): p.value
                  for p in points["llmspell.hook.calls"]}
    assert hook_calls[("metrics", "before_tool_execution")] == 3
    assert {p.attributes[ATTR_QUANTILE] for p in points["llmspell.hook.latency"]} == {
        "0.5", "0.95", "0.99"}
    assert "llmspell.hook.errors" in points
    # Counters are cumulative across collections.
    hook.execute(HookContext(point=HookPoint.BEFORE_TOOL_EXECUTION,
                             component=ComponentId.of("tool", "calculator")))
    again = {(p.attributes[ATTR_POINT], p.attributes[ATTR_COMPONENT]): p.value
             for p in _otel_points(reader)["llmspell.point.calls"]}
    assert again[("before_tool_execution", "calculator")] == 3
    provider.shutdown()


def test_missing_extras_raise_configuration_errors_with_install_hints(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ConfigurationError) as prom:
        PrometheusExporter()
    assert prom.value.hint == "pip install 'llmspell[prometheus]'"
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ConfigurationError) as otel:
        OpenTelemetryExporter()
    assert otel.value.hint == "pip install 'llmspell[otel]'"


def test_an_exporter_added_later_gets_the_monitor() -> None:
    from llmspell.hooks import PerformanceMonitor

    seen: list[Any] = []

    class Recorder:
        def record_call(self, point: str, component_type: str, component: str) -> None:
            seen.append(("call", point, component))

        def record_error(self, point: str, component_type: str, component: str,
                         error_type: str) -> None:
            seen.append(("error", error_type))

        def record_duration(self, component_type: str, component: str, seconds: float,
                            outcome: str) -> None:
            seen.append(("duration", outcome))

        def attach_monitor(self, monitor: PerformanceMonitor) -> None:
            seen.append(("monitor", monitor))

    hook = MetricsHook()
    monitor = PerformanceMonitor()
    hook.include_monitor(monitor)
    recorder = Recorder()
    hook.add_exporter(recorder)
    assert hook.exporters == (recorder,) and seen == [("monitor", monitor)]
    component = ComponentId.of("agent", "helper")
    before = HookContext(point=HookPoint.BEFORE_AGENT_EXECUTION, component=component)
    hook.execute(before)
    hook.execute(HookContext(point=HookPoint.AGENT_ERROR, component=component,
                             correlation_id=before.correlation_id,
                             data={"error_type": "ProviderError"}))
    assert seen[1:] == [("call", "before_agent_execution", "helper"),
                        ("call", "agent_error", "helper"), ("error", "ProviderError"),
                        ("duration", "error")]


async def test_key_fn_keys_are_scoped_to_the_tool_unless_shared() -> None:
    seen: list[str] = []

    @tool("add")
    def add(a: int, b: int) -> int:
        """a + b."""
        seen.append("add")
        return a + b

    @tool("multiply")
    def multiply(a: int, b: int) -> int:
        """a * b."""
        seen.append("multiply")
        return a * b

    def by_params(ctx: HookContext) -> str:  # leaves the tool's name out
        return f"{ctx.data['params']['a']},{ctx.data['params']['b']}"

    async with System(SystemConfig(store="memory")) as system:
        system.tools.register_all([add, multiply])
        hook = CachingHook(key_fn=by_params)
        hook.install(system.registry)
        assert await system.tools.execute("add", {"a": 2, "b": 3}) == 5
        assert await system.tools.execute("multiply", {"a": 2, "b": 3}) == 6
        assert await system.tools.execute("add", {"a": 2, "b": 3}) == 5
        assert seen == ["add", "multiply"]
        hook.uninstall(system.registry)

        shared = CachingHook(CachingConfig(shared_keys=True), key_fn=by_params)
        shared.install(system.registry)
        assert await system.tools.execute("add", {"a": 2, "b": 3}) == 5
        assert await system.tools.execute("multiply", {"a": 2, "b": 3}) == 5  # as asked
        assert shared.cache.keys() == ["2,3"]
    with pytest.raises(InvalidValueError):
        CachingConfig(shared_keys="yes")  # type: ignore[arg-type]
