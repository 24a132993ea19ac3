from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from llmspell.errors import InvalidValueError, UnknownFeatureError
from llmspell.hooks import (
    BaseHook,
    Cancel,
    ComponentId,
    ComponentType,
    Continue,
    FeatureInfo,
    HookContext,
    HookExecutor,
    HookMetadata,
    HookPoint,
    HookResult,
    Modified,
    SelectiveHookRegistry,
    SelectiveStats,
)

POINT = HookPoint.BEFORE_TOOL_EXECUTION


def make_ctx(**data: Any) -> HookContext:
    return HookContext(
        point=POINT, component=ComponentId(type=ComponentType.TOOL, name="calc"), data=data
    )


class Counter:
    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def bump(self) -> None:
        with self.lock:
            self.calls += 1


def marking_factory(counter: Counter, key: str) -> Any:
    def factory() -> Any:
        counter.bump()

        def run(ctx: HookContext) -> HookResult:
            return Modified({**ctx.data, key: True})

        return run

    return factory


def test_factory_not_called_until_first_dispatch() -> None:
    sel = SelectiveHookRegistry()
    made = Counter()
    sel.register_factory(POINT, "mark", marking_factory(made, "mark"))
    executor = HookExecutor(sel.registry, breaker=False)
    assert made.calls == 0
    assert len(sel.registry.chain(POINT)) == 1
    assert sel.instances() == []

    result = executor.execute_sync(make_ctx())
    assert made.calls == 1
    assert result.result == Modified({"mark": True})
    assert sel.instances() == ["mark"]

    executor.execute_sync(make_ctx())
    assert made.calls == 1
    stats = sel.stats()
    assert isinstance(stats, SelectiveStats)
    assert (stats.created, stats.hits, stats.instances, stats.factories) == (1, 1, 1, 1)


def test_factory_called_once_when_eight_threads_race() -> None:
    sel = SelectiveHookRegistry()
    made = Counter()
    seen = Counter()

    def factory() -> Any:
        made.bump()
        time.sleep(0.05)  # widen the window in which other threads could also build

        def run(ctx: HookContext) -> None:
            seen.bump()

        return run

    sel.register_factory(POINT, "slow", factory)
    executor = HookExecutor(sel.registry, breaker=False)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def dispatch() -> None:
        try:
            barrier.wait()
            executor.execute_sync(make_ctx())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=dispatch) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert made.calls == 1
    assert seen.calls == 8
    assert sel.stats().created == 1
    assert sel.stats().hits == 7


def test_feature_off_means_not_in_chain_and_not_run() -> None:
    sel = SelectiveHookRegistry()
    made = Counter()
    sel.define_feature("audit")
    sel.register_factory(POINT, "audit", marking_factory(made, "audit"), features=["audit"])
    executor = HookExecutor(sel.registry, breaker=False)

    assert sel.registry.chain(POINT) == ()
    result = executor.execute_sync(make_ctx())
    assert result.hooks_run == 0
    assert made.calls == 0

    sel.enable_feature("audit")
    assert len(sel.registry.chain(POINT)) == 1
    assert executor.execute_sync(make_ctx()).result == Modified({"audit": True})
    assert made.calls == 1

    # Turning the feature off takes the hook out of the chain and drops its instance.
    sel.disable_feature("audit")
    assert sel.registry.chain(POINT) == ()
    assert sel.instances() == []
    assert executor.execute_sync(make_ctx()).hooks_run == 0
    assert made.calls == 1


def test_enabling_a_feature_enables_its_dependencies() -> None:
    sel = SelectiveHookRegistry()
    sel.define_feature("base", description="the basics")
    sel.define_feature("audit", depends_on=["base"])
    sel.define_feature("pii", depends_on=["audit"])
    made = Counter()
    sel.register_factory(POINT, "base-hook", marking_factory(made, "base"), features=["base"])

    assert sel.enable_feature("pii") == ("audit", "base", "pii")
    assert all(sel.is_enabled(n) for n in ("base", "audit", "pii"))
    assert len(sel.registry.chain(POINT)) == 1
    assert sel.enable_feature("pii") == ()
    assert sel.dependencies("pii") == ("audit", "base")
    assert sel.features()[0] == FeatureInfo(
        name="base", enabled=True, depends_on=(), description="the basics"
    )


def test_disabling_a_dependency_disables_dependents() -> None:
    sel = SelectiveHookRegistry()
    sel.define_feature("base", enabled=True)
    sel.define_feature("audit", depends_on=["base"], enabled=True)
    sel.define_feature("pii", depends_on=["audit"], enabled=True)
    sel.define_feature("other", enabled=True)
    made = Counter()
    sel.register_factory(POINT, "pii-hook", marking_factory(made, "pii"), features=["pii"])
    sel.register_factory(POINT, "other-hook", marking_factory(made, "other"), features=["other"])
    assert len(sel.registry.chain(POINT)) == 2

    assert sel.disable_feature("base") == ("audit", "base", "pii")
    assert not any(sel.is_enabled(n) for n in ("base", "audit", "pii"))
    assert sel.is_enabled("other")
    assert [e.name for e in sel.registry.chain(POINT)] == ["other-hook"]
    assert sel.dependents("base") == ("audit", "pii")
    stats = sel.stats()
    assert (stats.features_enabled, stats.features_total) == (1, 4)
    assert (stats.factories, stats.factories_enabled) == (2, 1)


def test_hook_needing_several_features_needs_all_of_them() -> None:
    sel = SelectiveHookRegistry()
    sel.define_feature("a")
    sel.define_feature("b")
    sel.register_factory(POINT, "both", marking_factory(Counter(), "x"), features=["a", "b"])
    sel.enable_feature("a")
    assert sel.registry.chain(POINT) == ()
    sel.enable_feature("b")
    assert len(sel.registry.chain(POINT)) == 1


def test_dependency_cycle_is_rejected() -> None:
    sel = SelectiveHookRegistry()
    with pytest.raises(InvalidValueError, match="depends on itself"):
        sel.define_feature("a", depends_on=["a"])
    sel.define_feature("a")
    sel.define_feature("b", depends_on=["a"])
    sel.define_feature("c", depends_on=["b"])
    with pytest.raises(InvalidValueError, match=r"cycle: a -> c -> b -> a"):
        sel.define_feature("a", depends_on=["c"])
    # The failed redefinition changed nothing.
    assert sel.features()[0].depends_on == ()


def test_unknown_dependency_is_rejected() -> None:
    sel = SelectiveHookRegistry()
    sel.define_feature("logging")
    with pytest.raises(InvalidValueError, match="unknown feature 'loging'") as info:
        sel.define_feature("audit", depends_on=["loging"])
    assert isinstance(info.value, UnknownFeatureError)
    assert "'logging'" in str(info.value)
    assert [f.name for f in sel.features()] == ["logging"]


def test_unknown_feature_lists_close_match() -> None:
    sel = SelectiveHookRegistry()
    sel.define_feature("redaction")
    sel.define_feature("caching")
    with pytest.raises(UnknownFeatureError, match="did you mean 'redaction'"):
        sel.enable_feature("redacton")
    with pytest.raises(UnknownFeatureError, match="'caching'"):
        sel.is_enabled("cachng")
    with pytest.raises(UnknownFeatureError):
        sel.disable_feature("nope")
    with pytest.raises(UnknownFeatureError, match="did you mean 'caching'"):
        sel.register_factory(POINT, "h", lambda: None, features=["cachin"])
    assert len(sel.registry) == 0


def test_bad_arguments() -> None:
    with pytest.raises(InvalidValueError):
        SelectiveHookRegistry(max_instances=0)
    sel = SelectiveHookRegistry()
    with pytest.raises(InvalidValueError, match="one string"):
        sel.define_feature("a", depends_on="b")
    with pytest.raises(InvalidValueError, match="enabled by its features"):
        sel.register_factory(POINT, "h", lambda: None, enabled=True)
    with pytest.raises(InvalidValueError, match="callable"):
        sel.register_factory(POINT, "h", 42)  # type: ignore[arg-type]


def test_lru_eviction_and_recreation() -> None:
    sel = SelectiveHookRegistry(max_instances=2)
    made: dict[str, int] = {}

    def factory_for(name: str) -> Any:
        def factory() -> Any:
            made[name] = made.get(name, 0) + 1
            return lambda ctx: None

        return factory

    points = {
        "a": HookPoint.BEFORE_TOOL_EXECUTION,
        "b": HookPoint.AFTER_TOOL_EXECUTION,
        "c": HookPoint.TOOL_ERROR,
    }
    for name, point in points.items():
        sel.register_factory(point, name, factory_for(name))
    executor = HookExecutor(sel.registry, breaker=False)

    def use(name: str) -> None:
        ctx = make_ctx()
        ctx.point = points[name]
        assert executor.execute_sync(ctx).hooks_run == 1

    use("a")
    use("b")
    use("a")  # a is now the most recently used
    assert sel.instances() == ["b", "a"]
    use("c")  # over the limit: evicts b
    assert sel.instances() == ["a", "c"]
    assert sel.stats().evicted == 1
    assert made == {"a": 1, "b": 1, "c": 1}
    use("b")  # re-created; evicts a
    assert made["b"] == 2
    assert sel.instances() == ["c", "b"]
    stats = sel.stats()
    assert (stats.created, stats.evicted, stats.hits, stats.instances) == (4, 2, 1, 2)


def test_memory_estimate_grows_and_drops_after_eviction() -> None:
    sel = SelectiveHookRegistry(max_instances=1)

    class BigHook(BaseHook):
        def __init__(self) -> None:
            super().__init__(name="big")
            self.table = {i: str(i) * 10 for i in range(5000)}
            self.blob = bytearray(500_000)

        def execute(self, ctx: HookContext) -> None:
            return None

    class Slotted:
        __slots__ = ("__secret", "value")

        def __init__(self) -> None:
            self.value = 1
            self.__secret = [0] * 10

        def __call__(self, ctx: HookContext) -> None:
            return None

    sel.register_factory(HookPoint.BEFORE_TOOL_EXECUTION, "big", BigHook)
    sel.register_factory(HookPoint.AFTER_TOOL_EXECUTION, "small", Slotted)
    executor = HookExecutor(sel.registry, breaker=False)
    assert sel.memory_estimate() == 0

    executor.execute_sync(make_ctx())
    big = sel.memory_estimate()
    assert big > 500_000
    assert sel.stats().memory_bytes == big

    ctx = make_ctx()
    ctx.point = HookPoint.AFTER_TOOL_EXECUTION
    executor.execute_sync(ctx)  # evicts the big hook
    assert sel.instances() == ["small"]
    small = sel.memory_estimate()
    assert 0 < small < 10_000
    assert small < big


def test_memory_estimate_counts_closures_and_shared_objects_once() -> None:
    sel = SelectiveHookRegistry()
    shared = list(range(10_000))

    def factory() -> Any:
        def run(ctx: HookContext) -> None:
            assert shared

        return run

    sel.register_factory(HookPoint.BEFORE_TOOL_EXECUTION, "one", factory)
    sel.register_factory(HookPoint.AFTER_TOOL_EXECUTION, "two", factory)
    executor = HookExecutor(sel.registry, breaker=False)
    executor.execute_sync(make_ctx())
    one = sel.memory_estimate()
    assert one > 80_000  # the closure's list is counted
    ctx = make_ctx()
    ctx.point = HookPoint.AFTER_TOOL_EXECUTION
    executor.execute_sync(ctx)
    both = sel.memory_estimate()
    assert one < both < one + 2_000  # the shared list is not counted twice


async def test_async_hooks_from_factories() -> None:
    sel = SelectiveHookRegistry()
    made = Counter()

    def factory() -> Any:
        made.bump()

        async def run(ctx: HookContext) -> HookResult:
            return Modified({**ctx.data, "async": True})

        return run

    class AsyncObject(BaseHook):
        async def execute(self, ctx: HookContext) -> HookResult:
            return Modified({**ctx.data, "object": True})

    sel.register_factory(POINT, "fn", factory, priority="high")
    sel.register_factory(POINT, "obj", lambda: AsyncObject(name="ignored"), timeout=1.0)
    executor = HookExecutor(sel.registry, breaker=False)
    result = await executor.execute(make_ctx(n=1))
    assert result.result == Modified({"n": 1, "async": True, "object": True})
    result = await executor.execute(make_ctx(n=2))
    assert result.result == Modified({"n": 2, "async": True, "object": True})
    assert made.calls == 1
    assert [e.name for e in sel.registry.chain(POINT)] == ["fn", "obj"]
    assert sel.registry.chain(POINT)[1].timeout == 1.0


def test_factory_error_fail_closed_cancels() -> None:
    sel = SelectiveHookRegistry()
    attempts = Counter()

    def broken() -> Any:
        attempts.bump()
        raise RuntimeError("no config")

    sel.register_factory(POINT, "guard", broken, error_policy="fail_closed")
    executor = HookExecutor(sel.registry, breaker=False)
    result = executor.execute_sync(make_ctx())
    assert isinstance(result.result, Cancel)
    assert "no config" in result.result.reason
    assert result.decided_by == "guard"
    assert result.failures[0].error_type == "RuntimeError"
    # Nothing was cached: the next dispatch tries the factory again.
    executor.execute_sync(make_ctx())
    assert attempts.calls == 2
    assert sel.instances() == []
    assert sel.stats().created == 0


def test_factory_returning_a_non_hook_is_a_hook_failure() -> None:
    sel = SelectiveHookRegistry()
    sel.register_factory(POINT, "bad", lambda: 42)
    executor = HookExecutor(sel.registry, breaker=False)
    result = executor.execute_sync(make_ctx())
    assert result.result == Continue()
    assert "not a hook" in result.failures[0].message


def test_built_hook_predicate_is_honoured() -> None:
    sel = SelectiveHookRegistry()

    class OnlyCalc(BaseHook):
        def should_execute(self, ctx: HookContext) -> bool:
            return ctx.component.name != "calc"

        def execute(self, ctx: HookContext) -> HookResult:
            return Cancel("should not run")

    sel.register_factory(POINT, "only", lambda: OnlyCalc(HookMetadata(name="x")))
    executor = HookExecutor(sel.registry, breaker=False)
    # First use: built inside execute, whose own predicate check skips it.
    assert not isinstance(executor.execute_sync(make_ctx()).result, Cancel)
    # Later uses: the proxy's should_execute delegates to the built hook.
    result = executor.execute_sync(make_ctx())
    assert result.hooks_run == 0


def test_stale_chain_run_after_disable_keeps_no_instance() -> None:
    sel = SelectiveHookRegistry()
    made = Counter()
    sel.define_feature("f", enabled=True)
    sel.register_factory(POINT, "h", marking_factory(made, "h"), features=["f"])
    proxy = sel.hooks()[0]
    sel.disable_feature("f")
    # A dispatcher that took the chain before the feature went off still runs the proxy once.
    assert proxy.execute(make_ctx()) == Modified({"h": True})
    assert made.calls == 1
    assert sel.instances() == []
    assert proxy.instance is None


def test_redefining_a_feature_and_unregistered_proxies() -> None:
    sel = SelectiveHookRegistry()
    sel.define_feature("base")
    sel.define_feature("top", depends_on=["base"], enabled=True)
    assert sel.is_enabled("base")
    handle = sel.register_factory(POINT, "h", marking_factory(Counter(), "h"), features=["top"])
    HookExecutor(sel.registry, breaker=False).execute_sync(make_ctx())
    assert sel.clear_instances() == 1
    assert sel.instances() == []
    # Redefining with enabled=False (the default) turns the feature and its dependents off.
    sel.define_feature("base", description="again")
    assert not sel.is_enabled("top")
    sel.enable_feature("top")
    # Removed from the registry behind our back: forgotten on the next sync.
    sel.registry.unregister(handle)
    sel.disable_feature("top")
    assert sel.hooks() == []
