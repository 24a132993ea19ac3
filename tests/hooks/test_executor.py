"""One test per fold rule and per error policy (docs/hooks.md, 'How results fold')."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from llmspell.errors import (
    HookExecutionError,
    InvalidHookResultError,
    OperationCancelledError,
    SyncDispatchError,
)
from llmspell.hooks import (
    CONTINUE,
    NO_HOOKS,
    BaseHook,
    Cache,
    Cancel,
    Continue,
    Fork,
    ForkOperation,
    HookExecutor,
    HookFailure,
    HookPoint,
    HookRegistry,
    Modified,
    Redirect,
    Replace,
    Retry,
    Skipped,
)

P = HookPoint.BEFORE_TOOL_EXECUTION


def setup(*hooks, **executor_options):  # type: ignore[no-untyped-def]
    reg = HookRegistry()
    for i, fn in enumerate(hooks):
        reg.register(P, fn, name=f"h{i}")
    return reg, HookExecutor(reg, **executor_options)


def both_ways(executor: HookExecutor, make):  # type: ignore[no-untyped-def]
    """Run a fresh context through the async and the sync API; return both results."""
    ctx_a, ctx_s = make(), make()
    return asyncio.run(executor.execute(ctx_a)), ctx_a, executor.execute_sync(ctx_s), ctx_s


def test_no_hooks_returns_the_shared_continue(make_ctx) -> None:  # type: ignore[no-untyped-def]
    _, ex = setup()
    assert ex.execute_sync(make_ctx()) is NO_HOOKS
    assert asyncio.run(ex.execute(make_ctx())) is NO_HOOKS
    assert NO_HOOKS.result is CONTINUE and not NO_HOOKS.stopped


def test_none_and_continue_go_on(make_ctx) -> None:  # type: ignore[no-untyped-def]
    seen: list[str] = []
    _, ex = setup(lambda c: seen.append("a"), lambda c: Continue(),
                  lambda c: seen.append("c") or CONTINUE)
    r = ex.execute_sync(make_ctx())
    assert r.kind == "continue" and r.hooks_run == 3 and seen == ["a", "c"]


def test_modified_feeds_the_next_hook_and_returns_final_data(make_ctx) -> None:  # type: ignore[no-untyped-def]
    def double(ctx):  # type: ignore[no-untyped-def]
        return Modified({"n": ctx.data["n"] * 2})

    async def plus_one(ctx):  # type: ignore[no-untyped-def]
        return Modified({"n": ctx.data["n"] + 1})

    _, ex = setup(double, plus_one, double)
    ra, ca, rs, cs = both_ways(ex, lambda: make_ctx(n=1))
    for r, c in ((ra, ca), (rs, cs)):
        assert r.result == Modified({"n": 6}) and c.data == {"n": 6}
        assert r.decided_by == "h2"


@pytest.mark.parametrize("stopper", [Cancel("no"), Replace({"v": 1}), Redirect("other_tool")])
def test_cancel_replace_redirect_stop_the_chain(make_ctx, stopper) -> None:  # type: ignore[no-untyped-def]
    after: list[int] = []
    _, ex = setup(lambda c: Modified({"x": 1}), lambda c: stopper, lambda c: after.append(1))
    ra, ca, rs, _ = both_ways(ex, make_ctx)
    for r in (ra, rs):
        assert r.result == stopper and r.stopped and r.decided_by == "h1"
    assert after == [] and ca.data == {"x": 1}


def test_cancel_raises_a_typed_error_naming_hook_and_reason(make_ctx) -> None:  # type: ignore[no-untyped-def]
    _, ex = setup(lambda c: Cancel("over budget"))
    r = ex.execute_sync(make_ctx())
    assert r.cancelled
    with pytest.raises(OperationCancelledError) as info:
        r.raise_if_cancelled(P)
    assert info.value.hook == "h0" and info.value.reason == "over budget"
    assert "before_tool_execution" in str(info.value)
    _, quiet = setup(lambda c: None)
    quiet.execute_sync(make_ctx()).raise_if_cancelled(P)


def test_skipped_passes(make_ctx) -> None:  # type: ignore[no-untyped-def]
    _, ex = setup(lambda c: Skipped("n/a"), lambda c: Modified({"ok": True}))
    r = ex.execute_sync(make_ctx())
    assert r.result == Modified({"ok": True})


def test_retry_is_returned_but_does_not_stop_the_chain(make_ctx) -> None:  # type: ignore[no-untyped-def]
    ran: list[str] = []
    _, ex = setup(lambda c: Retry(0.5, 4), lambda c: Retry(9, 9),
                  lambda c: ran.append("x") or Modified({"m": 1}))
    r = ex.execute_sync(make_ctx())
    assert r.result == Retry(0.5, 4) and r.decided_by == "h0" and ran == ["x"]


def test_a_stop_beats_an_earlier_retry(make_ctx) -> None:  # type: ignore[no-untyped-def]
    _, ex = setup(lambda c: Retry(), lambda c: Cancel("stop"))
    assert ex.execute_sync(make_ctx()).result == Cancel("stop")


def test_forks_are_all_collected_and_cache_keeps_the_first(make_ctx) -> None:  # type: ignore[no-untyped-def]
    f1 = Fork((ForkOperation(type="tool", target="a"),))
    f2 = Fork((ForkOperation(type="agent", target="b", parameters={"q": 1}),))
    _, ex = setup(lambda c: f1, lambda c: Cache("k1", 10), lambda c: f2, lambda c: Cache("k2"))
    r = ex.execute_sync(make_ctx())
    assert r.forks == (f1, f2) and r.cache == Cache("k1", 10) and r.result is CONTINUE


def test_fail_open_records_and_goes_on(make_ctx, caplog) -> None:  # type: ignore[no-untyped-def]
    seen: list[HookFailure] = []

    def boom(ctx):  # type: ignore[no-untyped-def]
        raise RuntimeError("kaput")

    _, ex = setup(boom, lambda c: Modified({"after": True}), on_error=seen.append)
    with caplog.at_level(logging.WARNING, logger="llmspell.hooks"):
        r = ex.execute_sync(make_ctx())
    assert r.result == Modified({"after": True})
    assert [f.message for f in r.failures] == ["kaput"]
    assert seen[0].error_type == "RuntimeError" and seen[0].policy == "fail_open"
    assert ex.failures()[-1] == seen[0] and ex.failure_count == 1
    assert "kaput" in caplog.text


def test_fail_closed_turns_an_error_into_cancel(make_ctx) -> None:  # type: ignore[no-untyped-def]
    reg = HookRegistry()

    def guard(ctx):  # type: ignore[no-untyped-def]
        raise ValueError("rules unreadable")

    reg.register(P, guard, name="security", error_policy="fail_closed")
    reg.register(P, lambda c: Modified({"ran": True}), name="later")
    r = HookExecutor(reg).execute_sync(make_ctx())
    assert r.cancelled and r.decided_by == "security"
    assert "rules unreadable" in r.result.reason  # type: ignore[union-attr]


def test_raise_policy_raises_hook_execution_error(make_ctx) -> None:  # type: ignore[no-untyped-def]
    reg = HookRegistry()

    def strict(ctx):  # type: ignore[no-untyped-def]
        raise KeyError("missing")

    reg.register(P, strict, name="strict", error_policy="raise")
    ex = HookExecutor(reg)
    with pytest.raises(HookExecutionError) as info:
        ex.execute_sync(make_ctx())
    assert info.value.hook == "strict" and isinstance(info.value.__cause__, KeyError)
    assert ex.failure_count == 1


def test_bad_return_value_is_a_failure_under_the_policy(make_ctx) -> None:  # type: ignore[no-untyped-def]
    _, ex = setup(lambda c: "yes")
    r = ex.execute_sync(make_ctx())
    assert r.failures[0].error_type == InvalidHookResultError.__name__
    assert "not a HookResult" in r.failures[0].message

    async def bad_async(ctx):  # type: ignore[no-untyped-def]
        return 42

    _, ex = setup(bad_async)
    assert asyncio.run(ex.execute(make_ctx())).failures[0].error_type == "InvalidHookResultError"


def test_async_timeout_cancels_the_hook_and_counts_a_failure(make_ctx) -> None:  # type: ignore[no-untyped-def]
    cancelled = asyncio.Event()

    async def sleepy(ctx):  # type: ignore[no-untyped-def]
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    reg = HookRegistry()
    reg.register(P, sleepy, name="sleepy", timeout=0.02)
    reg.register(P, lambda c: Modified({"after": 1}), name="after")
    ex = HookExecutor(reg)

    async def go():  # type: ignore[no-untyped-def]
        return await ex.execute(make_ctx())

    r = asyncio.run(go())
    assert cancelled.is_set()
    assert r.failures[0].error_type == "HookTimeoutError" and r.result == Modified({"after": 1})
    stats = ex.monitor.stats_for("sleepy")  # type: ignore[union-attr]
    assert stats is not None and stats.errors == 1


def test_sync_dispatch_runs_async_hooks_with_their_timeout(make_ctx) -> None:  # type: ignore[no-untyped-def]
    async def slow(ctx):  # type: ignore[no-untyped-def]
        await asyncio.sleep(5)

    async def quick(ctx):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0)
        return Modified({"q": 1})

    reg = HookRegistry()
    reg.register(P, slow, name="slow", timeout=0.02)
    reg.register(P, quick, name="quick")
    r = HookExecutor(reg).execute_sync(make_ctx())
    assert r.failures[0].error_type == "HookTimeoutError" and r.result == Modified({"q": 1})


def test_sync_dispatch_inside_a_running_loop_with_async_hooks_is_refused(make_ctx) -> None:  # type: ignore[no-untyped-def]
    async def a(ctx):  # type: ignore[no-untyped-def]
        return None

    _, ex = setup(a)

    async def go() -> None:
        with pytest.raises(SyncDispatchError, match=r"await executor\.execute"):
            ex.execute_sync(make_ctx())

    asyncio.run(go())


def test_sync_hooks_are_measured_against_their_timeout(make_ctx) -> None:  # type: ignore[no-untyped-def]
    reg = HookRegistry()
    reg.register(P, lambda c: time.sleep(0.02), name="sleeper", timeout=0.001)
    ex = HookExecutor(reg, breaker=False)
    r = ex.execute_sync(make_ctx())
    assert r.failures == ()
    stats = ex.monitor.stats_for("sleeper")  # type: ignore[union-attr]
    assert stats is not None and stats.overruns == 1 and stats.p50_ns >= 20_000_000


def test_should_execute_false_skips_and_errors_follow_policy(make_ctx) -> None:  # type: ignore[no-untyped-def]
    class OnlyCalc(BaseHook):
        def execute(self, ctx):  # type: ignore[no-untyped-def]
            return Cancel("calc only")

        def should_execute(self, ctx):  # type: ignore[no-untyped-def]
            return ctx.data.get("tool") == "calc"

    class BrokenPredicate(BaseHook):
        def execute(self, ctx):  # type: ignore[no-untyped-def]
            return None

        def should_execute(self, ctx):  # type: ignore[no-untyped-def]
            raise RuntimeError("bad predicate")

    reg = HookRegistry()
    reg.register(P, OnlyCalc(name="only_calc"))
    reg.register(P, BrokenPredicate(name="broken"))
    ex = HookExecutor(reg)
    assert not ex.execute_sync(make_ctx(tool="web")).cancelled
    assert ex.execute_sync(make_ctx(tool="calc")).cancelled
    r = ex.execute_sync(make_ctx(tool="web"))
    assert r.failures[0].hook == "broken"
    reg.unregister("broken")
    reg.register(P, BrokenPredicate(name="broken", error_policy="fail_closed"))
    assert ex.execute_sync(make_ctx(tool="web")).cancelled


def test_records_list_each_hook_kind_and_duration(make_ctx) -> None:  # type: ignore[no-untyped-def]
    def boom(ctx):  # type: ignore[no-untyped-def]
        raise RuntimeError("x")

    _, ex = setup(lambda c: None, lambda c: Modified({}), boom, record=True)
    r = ex.execute_sync(make_ctx())
    assert [(rec.hook, rec.kind) for rec in r.records] == [
        ("h0", "continue"), ("h1", "modified"), ("h2", "error")]
    assert all(rec.duration_ns >= 0 for rec in r.records)
    assert r.records[2].detail == "RuntimeError: x" and r.records[0].detail is None
    _, quiet = setup(lambda c: None, record=True)
    assert quiet.execute_sync(make_ctx()).records[0].kind == "continue"


def test_awaitable_from_a_sync_callable_is_awaited(make_ctx) -> None:  # type: ignore[no-untyped-def]
    async def inner() -> Modified:
        return Modified({"late": True})

    _, ex = setup(lambda c: inner())
    assert asyncio.run(ex.execute(make_ctx())).result == Modified({"late": True})
    assert ex.execute_sync(make_ctx()).result == Modified({"late": True})


def test_listener_failures_never_break_dispatch(make_ctx) -> None:  # type: ignore[no-untyped-def]
    def bad_listener(_):  # type: ignore[no-untyped-def]
        raise RuntimeError("listener down")

    def boom(ctx):  # type: ignore[no-untyped-def]
        raise RuntimeError("x")

    _, ex = setup(boom, on_error=bad_listener, on_breaker_change=bad_listener)
    for _ in range(5):
        ex.execute_sync(make_ctx())
    assert ex.failure_count == 3  # the breaker opened after 3 and skipped the rest
    assert ex.breakers()[0].state == "open"


def test_monitor_reports_per_point_and_overhead(make_ctx) -> None:  # type: ignore[no-untyped-def]
    _, ex = setup(lambda c: None, lambda c: None)
    for _ in range(10):
        ex.execute_sync(make_ctx())
    monitor = ex.monitor
    assert monitor is not None
    (point_row,) = monitor.point_stats()
    assert point_row.count == 10 and point_row.p99_ns >= point_row.p50_ns > 0
    (over,) = monitor.overhead_report()
    assert over.dispatches == 10 and 0 <= over.overhead_fraction <= 1
    assert over.mean_dispatch_ns >= over.mean_in_hooks_ns
    assert len(monitor.hook_stats(P)) == 2
    monitor.reset()
    assert monitor.point_stats() == [] and monitor.stats_for("h0") is None


# -- the fast path (no predicates, breakers closed, no records) and its hand-over ---------
@pytest.mark.parametrize("position", [0, 2, 4])
def test_a_decisive_hook_after_plain_ones_is_folded_in_full(make_ctx, position) -> None:  # type: ignore[no-untyped-def]
    calls: list[int] = []

    def plain(i):  # type: ignore[no-untyped-def]
        return lambda ctx: calls.append(i)

    hooks = [plain(i) for i in range(5)]
    hooks[position] = lambda ctx: (calls.append(position), Modified({"x": 2}))[1]
    _, ex = setup(*hooks)
    r, ctx_a, r_sync, ctx_s = both_ways(ex, lambda: make_ctx(x=1))
    for result, ctx in ((r, ctx_a), (r_sync, ctx_s)):
        assert isinstance(result.result, Modified) and result.decided_by == f"h{position}"
        assert ctx.data == {"x": 2} and result.hooks_run == 5
    assert calls == [0, 1, 2, 3, 4] * 2
    monitor = ex.monitor
    assert monitor is not None
    assert sorted(row.count for row in monitor.hook_stats(P)) == [2] * 5
    (point_row,) = monitor.point_stats()
    assert point_row.count == 2


def test_a_raising_hook_after_plain_ones_follows_its_policy(make_ctx) -> None:  # type: ignore[no-untyped-def]
    def boom(ctx):  # type: ignore[no-untyped-def]
        raise ValueError("bad")

    seen: list[str] = []
    _, ex = setup(lambda c: None, lambda c: CONTINUE, boom, lambda c: seen.append("after"))
    r = ex.execute_sync(make_ctx())
    assert r.hooks_run == 4 and seen == ["after"]
    assert [f.hook for f in r.failures] == ["h2"] and r.failures[0].error_type == "ValueError"
    monitor = ex.monitor
    assert monitor is not None
    stats = {row.name: row for row in monitor.hook_stats(P)}
    assert stats["h2"].errors == 1 and all(stats[f"h{i}"].count == 1 for i in range(4))


@pytest.mark.parametrize("wrapped", [False, True])
def test_an_async_hook_after_plain_ones_is_awaited(make_ctx, wrapped) -> None:  # type: ignore[no-untyped-def]
    async def later(ctx):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0)
        return Replace(7)

    # wrapped: a sync callable returning a coroutine (the fast path hands it over)
    hook = (lambda c: later(c)) if wrapped else later
    _, ex = setup(lambda c: None, hook, lambda c: pytest.fail("the chain stopped"))
    r = asyncio.run(ex.execute(make_ctx()))
    assert isinstance(r.result, Replace) and r.result.value == 7 and r.hooks_run == 2


def test_fast_path_results_match_without_monitor_or_breakers(make_ctx) -> None:  # type: ignore[no-untyped-def]
    _, ex = setup(lambda c: None, lambda c: Cancel("no"), breaker=False, monitor=False)
    r, _, r_sync, _ = both_ways(ex, make_ctx)
    assert r.cancelled and r_sync.cancelled and r.decided_by == "h1" and r.hooks_run == 2
    _, plain = setup(lambda c: None, lambda c: None, breaker=False, monitor=False)
    assert plain.execute_sync(make_ctx()).hooks_run == 2


def test_breakers_are_consulted_again_once_one_opens_and_not_after_reset(make_ctx) -> None:  # type: ignore[no-untyped-def]
    def boom(ctx):  # type: ignore[no-untyped-def]
        raise RuntimeError("x")

    _, ex = setup(lambda c: None, boom)
    assert ex._all_closed
    for _ in range(3):
        ex.execute_sync(make_ctx())
    assert not ex._all_closed  # h1's breaker opened: the executor heard it
    r = ex.execute_sync(make_ctx())
    assert r.hooks_run == 1 and ex.failure_count == 3  # h1 skipped while open
    next(b for b in ex._breakers.values() if b.hook == "h1").reset()
    assert ex._all_closed
    assert ex.execute_sync(make_ctx()).hooks_run == 2


def test_a_slow_hook_on_the_fast_path_reaches_its_breaker_and_overruns(make_ctx) -> None:  # type: ignore[no-untyped-def]
    from llmspell.hooks import BreakerConfig

    reg = HookRegistry()
    reg.register(P, lambda c: time.sleep(0.003), name="slow", timeout=0.001)
    ex = HookExecutor(reg, breaker=BreakerConfig(slow_call_threshold=0.002, slow_call_count=2))
    for _ in range(2):
        ex.execute_sync(make_ctx())
    (snapshot,) = ex.breakers()
    assert snapshot.state == "open"
    monitor = ex.monitor
    assert monitor is not None
    stats = monitor.stats_for("slow")
    assert stats is not None and stats.overruns == 2 and stats.count == 2


def test_execute_chain_is_execute_for_a_known_chain(make_ctx) -> None:  # type: ignore[no-untyped-def]
    reg, ex = setup(lambda c: Modified({"y": 1}))
    ctx = make_ctx()
    r = asyncio.run(ex.execute_chain(reg.chains[P], ctx, True))
    assert isinstance(r.result, Modified) and ctx.data == {"y": 1}
    assert [rec.kind for rec in r.records] == ["modified"]
