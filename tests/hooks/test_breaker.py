"""Breaker transitions, driven by an injected clock (no sleeps)."""

from __future__ import annotations

import pytest

from llmspell.core import ManualClock
from llmspell.errors import InvalidValueError
from llmspell.hooks import (
    BreakerConfig,
    BreakerState,
    BreakerTransition,
    CircuitBreaker,
    HookExecutor,
    HookPoint,
    HookRegistry,
    Modified,
    Skipped,
)

MS = 1_000_000  # ns


def make(config: BreakerConfig | None = None):  # type: ignore[no-untyped-def]
    clock = ManualClock()
    seen: list[BreakerTransition] = []
    breaker = CircuitBreaker("h", "p", config or BreakerConfig.default(), clock=clock,
                             listener=seen.append)
    return breaker, clock, seen


def test_opens_after_n_failures_within_the_window() -> None:
    b, clock, seen = make()
    b.record_failure()
    clock.advance(10)
    b.record_failure()
    assert b.state is BreakerState.CLOSED
    clock.advance(10)
    b.record_failure()
    assert b.state is BreakerState.OPEN and not b.allow()
    assert [(t.old, t.new) for t in seen] == [(BreakerState.CLOSED, BreakerState.OPEN)]
    assert "3 failures" in seen[0].reason


def test_failures_outside_the_window_are_not_counted() -> None:
    b, clock, _ = make()
    b.record_failure()
    b.record_failure()
    clock.advance(61)  # past the 60 s window
    b.record_failure()
    assert b.state is BreakerState.CLOSED
    assert b.snapshot().recent_failures == 1


def test_opens_on_slow_calls() -> None:
    b, clock, seen = make()
    b.record_success(10 * MS)
    b.record_success(51 * MS)
    assert b.state is BreakerState.CLOSED
    clock.advance(1)
    b.record_success(80 * MS)
    assert b.state is BreakerState.OPEN and "slower than 50 ms" in seen[-1].reason


def test_slow_calls_outside_the_window_are_not_counted() -> None:
    b, clock, _ = make()
    b.record_success(60 * MS)
    clock.advance(61)
    b.record_success(60 * MS)
    assert b.state is BreakerState.CLOSED


def test_half_open_after_the_open_time_then_closed_after_successes() -> None:
    b, clock, seen = make()
    for _ in range(3):
        b.record_failure()
    clock.advance(14.9)
    assert not b.allow() and b.state is BreakerState.OPEN
    clock.advance(0.2)
    assert b.allow() and b.state is BreakerState.HALF_OPEN
    b.record_success(1 * MS)
    assert b.state is BreakerState.HALF_OPEN
    b.record_success(1 * MS)
    assert b.state is BreakerState.CLOSED
    assert [t.new for t in seen] == [BreakerState.OPEN, BreakerState.HALF_OPEN,
                                     BreakerState.CLOSED]
    assert b.snapshot().open_duration == 15.0


def test_failed_probe_reopens_with_doubled_open_time_up_to_the_cap() -> None:
    config = BreakerConfig(open_duration=10, max_open_duration=35)
    b, clock, seen = make(config)
    for _ in range(3):
        b.record_failure()
    expected = [10.0, 20.0, 35.0, 35.0]
    for i, duration in enumerate(expected):
        assert seen[-1].open_duration == duration
        clock.advance(duration - 0.01)
        assert not b.allow()
        clock.advance(0.02)
        assert b.allow() and b.state is BreakerState.HALF_OPEN
        if i < len(expected) - 1:
            b.record_failure()
            assert b.state is BreakerState.OPEN
    assert b.trips == 4


def test_slow_probe_reopens_too() -> None:
    b, clock, _ = make()
    for _ in range(3):
        b.record_failure()
    clock.advance(15)
    assert b.allow()
    b.record_success(100 * MS)
    assert b.state is BreakerState.OPEN and b.snapshot().open_duration == 30.0


def test_closing_resets_the_open_time() -> None:
    b, clock, _ = make(BreakerConfig(success_threshold=1))
    for _ in range(3):
        b.record_failure()
    clock.advance(15)
    b.allow()
    b.record_failure()  # open, 30 s
    clock.advance(30)
    b.allow()
    b.record_success()
    assert b.state is BreakerState.CLOSED and b.snapshot().open_duration == 15.0


def test_reset_and_presets() -> None:
    b, _, seen = make()
    for _ in range(3):
        b.record_failure()
    b.reset()
    assert b.state is BreakerState.CLOSED and seen[-1].reason == "reset"
    b.reset()
    assert len(seen) == 2
    d, p, c = BreakerConfig.default(), BreakerConfig.production(), BreakerConfig.conservative()
    assert (d.failure_threshold, d.success_threshold, d.open_duration, d.slow_call_threshold,
            d.slow_call_count) == (3, 2, 15.0, 0.050, 2)
    assert p.failure_threshold > d.failure_threshold > c.failure_threshold
    assert c.open_duration > d.open_duration


@pytest.mark.parametrize(
    "fields",
    [{"failure_threshold": 0}, {"open_duration": 0}, {"max_open_duration": 1},
     {"backoff_multiplier": 0.5}, {"slow_call_threshold": -1}],
)
def test_config_validation(fields: dict[str, float]) -> None:
    with pytest.raises(InvalidValueError):
        BreakerConfig(**fields)  # type: ignore[arg-type]


def test_executor_skips_an_open_hook_and_reports_transitions(make_ctx) -> None:  # type: ignore[no-untyped-def]
    clock = ManualClock()
    transitions: list[BreakerTransition] = []
    reg = HookRegistry()
    calls = {"n": 0, "fail": True}

    def flaky(ctx):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["fail"]:
            raise RuntimeError("down")
        return Modified({"ok": True})

    handle = reg.register(HookPoint.BEFORE_TOOL_EXECUTION, flaky, name="flaky")
    ex = HookExecutor(reg, clock=clock, on_breaker_change=transitions.append, record=True)
    for _ in range(3):
        ex.execute_sync(make_ctx())
    r = ex.execute_sync(make_ctx())
    assert calls["n"] == 3
    assert r.records[0].kind == "skipped" and r.failures == ()
    assert r.records[0].detail == "circuit open: flaky"
    assert transitions[-1].new is BreakerState.OPEN and transitions[-1].hook == "flaky"
    calls["fail"] = False
    clock.advance(15)
    assert ex.execute_sync(make_ctx()).result == Modified({"ok": True})
    ex.execute_sync(make_ctx())
    assert ex.breaker_for(handle.id).state is BreakerState.CLOSED  # type: ignore[union-attr]
    assert [t.new for t in transitions] == ["open", "half_open", "closed"]


def test_thresholds_per_point(make_ctx) -> None:  # type: ignore[no-untyped-def]
    reg = HookRegistry()

    def boom(ctx):  # type: ignore[no-untyped-def]
        raise RuntimeError("x")

    reg.register(HookPoint.BEFORE_TOOL_EXECUTION, boom, name="a")
    reg.register(HookPoint.AFTER_TOOL_EXECUTION, boom, name="b")
    ex = HookExecutor(reg, breaker_overrides={
        "AfterToolExecution": BreakerConfig(failure_threshold=1)})
    ex.execute_sync(make_ctx(HookPoint.AFTER_TOOL_EXECUTION))
    ex.execute_sync(make_ctx(HookPoint.BEFORE_TOOL_EXECUTION))
    states = {s.hook: s.state for s in ex.breakers()}
    assert states == {"a": "closed", "b": "open"}
    ex.set_breaker_config("BeforeToolExecution", BreakerConfig(failure_threshold=1))
    ex.execute_sync(make_ctx(HookPoint.BEFORE_TOOL_EXECUTION))
    assert {s.hook: s.state for s in ex.breakers()}["a"] == "open"


def test_breaker_off_never_skips(make_ctx) -> None:  # type: ignore[no-untyped-def]
    reg = HookRegistry()

    def boom(ctx):  # type: ignore[no-untyped-def]
        raise RuntimeError("x")

    reg.register(HookPoint.BEFORE_TOOL_EXECUTION, boom, name="a")
    ex = HookExecutor(reg, breaker=False, monitor=False)
    for _ in range(10):
        r = ex.execute_sync(make_ctx())
        assert len(r.failures) == 1 and not isinstance(r.result, Skipped)
    assert ex.breakers() == []
