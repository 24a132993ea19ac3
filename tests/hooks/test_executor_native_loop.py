"""The executor's fast path in C (``_speedups.run_hooks``) against its Python loops: for
generated chains (hooks going on, deciding, failing, returning bad values, interrupting)
under every timing setting, the results, records, failures, monitor counts and breaker
states are the same."""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmspell.core.speedups import native
from llmspell.hooks import (
    BreakerConfig,
    Cancel,
    ComponentId,
    ComponentType,
    Continue,
    HookContext,
    HookExecutor,
    HookPoint,
    HookRegistry,
    Modified,
)
from llmspell.hooks import executor as executor_module

pytestmark = pytest.mark.skipif(native is None, reason="the native speedups are not built")

P = HookPoint.BEFORE_TOOL_EXECUTION


class MyContinue(Continue, frozen=True):
    """A Continue subclass: the fast path hands it to the full loop."""


def _hook(behaviour: str) -> Any:
    def hook(ctx: HookContext) -> object:
        if behaviour == "none":
            return None
        if behaviour == "continue":
            return Continue()
        if behaviour == "continue_subclass":
            return MyContinue()
        if behaviour == "modified":
            return Modified({"n": ctx.data.get("n", 0) + 1})
        if behaviour == "cancel":
            return Cancel("no")
        if behaviour == "bad":
            return 42
        if behaviour == "raise":
            raise ValueError("boom")
        if behaviour == "exit":
            raise SystemExit(3)
        if behaviour == "cancelled":
            raise asyncio.CancelledError
        raise KeyboardInterrupt

    return hook


BEHAVIOURS = ["none", "continue", "continue_subclass", "modified", "cancel", "bad", "raise",
              "exit", "cancelled", "interrupt"]
COMMON = ["none", "continue"]
chains = st.lists(st.tuples(st.sampled_from(COMMON * 4 + BEHAVIOURS), st.booleans()),
                  min_size=1, max_size=6)
BREAKERS: dict[str, BreakerConfig | bool] = {
    "off": False,
    "default": True,
    # Every call is slow (over 1 ns): the slow-call path runs on every hook, and trips.
    "every call slow": BreakerConfig(slow_call_threshold=1e-9, slow_call_count=3),
}


def _observe(chain: list[tuple[str, bool]], breaker: str, monitor: bool, record: bool,
             mode: str, dispatches: int) -> list[Any]:
    registry = HookRegistry()
    for index, (behaviour, timeout) in enumerate(chain):
        registry.register(P, _hook(behaviour), name=f"h{index}",
                          timeout=1e-9 if timeout else None)
    executor = HookExecutor(registry, breaker=BREAKERS[breaker], monitor=monitor,
                            record=record)
    seen: list[Any] = []
    for n in range(dispatches):
        ctx = HookContext(point=P, component=ComponentId(type=ComponentType.TOOL, name="t"),
                          data={"n": n})
        try:
            if mode == "sync":
                outcome = executor.execute_sync(ctx)
            else:
                outcome = asyncio.run(executor.execute(ctx))
        except BaseException as exc:  # what escapes is part of the answer
            seen.append(("raised", type(exc).__name__))
            continue
        seen.append((outcome.kind, outcome.hooks_run, outcome.decided_by,
                     [(r.hook, r.kind, r.detail) for r in outcome.records],
                     [(f.hook, f.error_type, f.policy) for f in outcome.failures],
                     ctx.data))
    seen.append([(f.hook, f.error_type) for f in executor.failures()])
    if executor.monitor is not None:
        seen.append(sorted((s.name, s.count, s.errors, s.overruns)  # (ordered by latency)
                           for s in executor.monitor.hook_stats()))
        point_series = executor.monitor.point_series(P)
        seen.append((next(copy.copy(point_series.calls)), len(point_series.samples),
                     len(point_series.side)))
        seen.append([(row.point, row.dispatches) for row in executor.monitor.overhead_report()])
    seen.append([(b.hook, b.state, b.recent_failures, b.recent_slow_calls, b.trips)
                 for b in executor.breakers()])
    return seen


@settings(max_examples=150, deadline=None)
@given(chain=chains, breaker=st.sampled_from(sorted(BREAKERS)), monitor=st.booleans(),
       record=st.booleans(), mode=st.sampled_from(["sync", "async"]))
def test_the_native_loop_gives_what_the_python_loops_give(
        chain: list[tuple[str, bool]], breaker: str, monitor: bool, record: bool,
        mode: str) -> None:
    native_seen = _observe(chain, breaker, monitor, record, mode, dispatches=4)
    saved = executor_module._run_hooks
    executor_module._run_hooks = None
    try:
        python_seen = _observe(chain, breaker, monitor, record, mode, dispatches=4)
    finally:
        executor_module._run_hooks = saved
    assert native_seen == python_seen


def test_a_failure_keeps_its_traceback() -> None:
    registry = HookRegistry()

    def failing(ctx: HookContext) -> None:
        raise ValueError("from the hook")

    registry.register(P, failing, name="failing")
    failures: list[Any] = []
    executor = HookExecutor(registry, on_error=failures.append)
    ctx = HookContext(point=P, component=ComponentId(type=ComponentType.TOOL, name="t"),
                      data={})
    resume = executor._run_fast(executor._plan_for(P, registry.chains[P]), ctx, 0)
    assert type(resume) is tuple
    raised = resume[3]
    assert isinstance(raised, ValueError) and raised.__traceback__ is not None
    frames = []
    tb = raised.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    assert "failing" in frames


def _native_run(fast: object, clock: object = None, durations: object = None,
                point: object = None, results: object = ("none", "one")) -> Any:
    assert native is not None
    return native.run_hooks(fast, None, 0 if clock is None else time.perf_counter_ns(),
                            clock, Continue, (Exception,), print, durations, point, results,
                            lambda n: f"made {n}")


def test_bad_arguments_are_type_errors() -> None:
    assert native is not None
    with pytest.raises(TypeError, match="11 arguments"):
        native.run_hooks((), None, 0)
    with pytest.raises(TypeError, match="tuples"):
        _native_run([])
    with pytest.raises(TypeError, match="tuples"):
        _native_run((), results=[])
    with pytest.raises(TypeError, match="list or None"):
        _native_run((), durations=())
    with pytest.raises(TypeError, match="step"):
        _native_run(((print,),))
    step = (lambda ctx: None, None, None, 0)
    with pytest.raises(TypeError, match="side, samples, calls"):
        _native_run((step,), clock=time.perf_counter_ns, point=([], []))


def test_results_past_the_shared_ones_are_made() -> None:
    step = (lambda ctx: None, None, None, 1 << 62)
    assert _native_run(()) == "none"
    assert _native_run((step,)) == "one"
    assert _native_run((step, step)) == "made 2"


def test_huge_limits_and_exhausted_counters() -> None:
    """A limit past 64 bits is 'never'; an exhausted counter is an error, not a crash."""
    samples: list[int] = []
    durations: list[int] = []
    step = (lambda ctx: None, samples, iter(range(1)), 1 << 80)
    point = ([], [], iter(range(1)))
    assert _native_run((step,), time.perf_counter_ns, durations, point) == "one"
    assert samples == durations and len(samples) == 1 and samples[0] >= 0
    assert len(point[0]) == len(point[1]) == 1 and point[1][0] >= point[0][0]
    with pytest.raises(RuntimeError, match="a hook's call counter ran out"):
        _native_run((step,), time.perf_counter_ns)
    fresh = (lambda ctx: None, [], iter(range(1)), 1 << 80)
    with pytest.raises(RuntimeError, match="a point's call counter ran out"):
        _native_run((fresh,), time.perf_counter_ns, point=point)
