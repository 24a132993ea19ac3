"""Composite hooks: sequential, parallel, first-match and voting groups of hooks."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from llmspell.errors import (
    HookExecutionError,
    HookTimeoutError,
    InvalidHookResultError,
    InvalidValueError,
)
from llmspell.hooks import (
    CONTINUE,
    BaseHook,
    Cache,
    Cancel,
    ComponentId,
    ComponentType,
    CompositeHook,
    Continue,
    ErrorPolicy,
    FirstMatchHook,
    Fork,
    ForkOperation,
    HookContext,
    HookExecutor,
    HookPoint,
    HookRegistry,
    HookResult,
    Modified,
    ParallelHook,
    Priority,
    Redirect,
    Replace,
    Retry,
    SequentialHook,
    Skipped,
    TieBreaker,
    VotingHook,
    invoke,
)

POINT = HookPoint.BEFORE_TOOL_EXECUTION
# Strongest first; Continue is the weakest.
PRECEDENCE: list[HookResult] = [
    Cancel("stop"),
    Replace(42),
    Redirect("other-tool"),
    Retry(delay=0.0),
    Modified({"winner": True}),
    Fork((ForkOperation(type="tool", target="audit"),)),
    Cache("key"),
    CONTINUE,
]


def make_ctx(**data: Any) -> HookContext:
    return HookContext(
        point=POINT,
        component=ComponentId(type=ComponentType.TOOL, name="calc"),
        data=data or {"x": 1},
    )


def returns(result: HookResult | None, calls: list[str] | None = None, name: str = "h"
            ) -> Callable[[HookContext], HookResult | None]:
    """A sync hook returning ``result``, recording its name in ``calls``."""

    def fn(ctx: HookContext) -> HookResult | None:
        if calls is not None:
            calls.append(name)
        return result

    fn.__qualname__ = name
    return fn


def fails(message: str = "boom", name: str = "bad") -> Callable[[HookContext], HookResult]:
    def fn(ctx: HookContext) -> HookResult:
        raise RuntimeError(message)

    fn.__qualname__ = name
    return fn


def add(key: str, amount: int) -> Callable[[HookContext], Awaitable[HookResult]]:
    """An async hook returning Modified with ``data[key] += amount``."""

    async def fn(ctx: HookContext) -> HookResult:
        await asyncio.sleep(0)
        return Modified({**ctx.data, key: ctx.data.get(key, 0) + amount})

    return fn


class Gate(BaseHook):
    """A hook object that applies only when ``data['go']`` is true."""

    def __init__(self, result: HookResult) -> None:
        super().__init__(name="gate")
        self.result = result

    def execute(self, ctx: HookContext) -> HookResult:
        return self.result

    def should_execute(self, ctx: HookContext) -> bool:
        return bool(ctx.data.get("go"))


# -- invoke -----------------------------------------------------------------------------


async def test_invoke_maps_none_to_continue_and_awaits() -> None:
    async def async_hook(ctx: HookContext) -> HookResult:
        return Cancel("async")

    def returns_awaitable(ctx: HookContext) -> Awaitable[HookResult | None]:
        return async_hook(ctx)

    ctx = make_ctx()
    assert await invoke(returns(None), ctx) is CONTINUE
    assert await invoke(async_hook, ctx) == Cancel("async")
    assert await invoke(returns_awaitable, ctx) == Cancel("async")


async def test_invoke_respects_should_execute() -> None:
    gate = Gate(Cancel("gated"))
    assert await invoke(gate, make_ctx(go=False)) == Skipped("not applicable")
    assert await invoke(gate, make_ctx(go=True)) == Cancel("gated")


async def test_invoke_rejects_a_non_result() -> None:
    def bad(ctx: HookContext) -> Any:
        return "nope"

    with pytest.raises(InvalidHookResultError) as info:
        await invoke(bad, make_ctx())
    assert info.value.hook.endswith("bad")
    assert info.value.point == str(POINT)


async def test_invoke_wraps_child_exceptions_with_the_child_name() -> None:
    with pytest.raises(HookExecutionError) as info:
        await invoke(fails("kaput", name="crashy"), make_ctx())
    assert info.value.hook == "crashy"
    assert info.value.point == str(POINT)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "kaput" in str(info.value)


async def test_invoke_enforces_a_hook_objects_own_timeout() -> None:
    class Slow(BaseHook):
        async def execute(self, ctx: HookContext) -> HookResult:
            await asyncio.Event().wait()
            return CONTINUE

    with pytest.raises(HookTimeoutError) as info:
        await invoke(Slow(name="slow", timeout=0.01), make_ctx())
    assert info.value.hook == "slow"


# -- construction -----------------------------------------------------------------------


def test_metadata_fields_are_parsed_and_exposed() -> None:
    children = (returns(None), returns(None))
    seq = SequentialHook("seq", children, priority="high", error_policy="fail_closed",
                         tags=["security"], language="py", timeout=2)
    assert seq.metadata.name == "seq" == seq.name
    assert seq.metadata.priority == Priority.HIGH
    assert seq.metadata.error_policy is ErrorPolicy.FAIL_CLOSED
    assert seq.metadata.tags == frozenset({"security"})
    assert seq.metadata.timeout == 2.0
    assert seq.hooks == children
    assert isinstance(seq, CompositeHook)
    assert [cls.kind for cls in (SequentialHook, ParallelHook, FirstMatchHook, VotingHook)] == [
        "sequential", "parallel", "first_match", "voting"]
    assert "seq" in repr(seq)


@pytest.mark.parametrize(
    "kwargs",
    [{"bogus": 1}, {"error_policy": "explode"}, {"priority": "soonish"}, {"timeout": -1},
     {"tags": "one-string"}],
)
def test_bad_metadata_raises(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidValueError):
        SequentialHook("seq", [], **kwargs)


def test_a_non_hook_child_is_rejected() -> None:
    with pytest.raises(InvalidValueError, match="child 1"):
        FirstMatchHook("fm", [returns(None), 42])  # type: ignore[list-item]


@pytest.mark.parametrize("kwargs", [{"timeout": 0}, {"max_concurrency": 0},
                                    {"max_concurrency": True}, {"timeout": float("inf")}])
def test_bad_parallel_options_raise(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidValueError):
        ParallelHook("par", [], **kwargs)


# -- SequentialHook ---------------------------------------------------------------------


async def test_sequential_chains_modified_data() -> None:
    seen: list[int] = []

    def spy(ctx: HookContext) -> None:
        seen.append(ctx.data["x"])

    ctx = make_ctx(x=1)
    seq = SequentialHook("seq", [add("x", 1), spy, returns(Skipped("n/a")), add("x", 10)])
    result = await seq.execute(ctx)
    assert seen == [2]
    assert result == Modified({"x": 12})
    assert ctx.data == {"x": 12}


async def test_sequential_stops_at_cancel() -> None:
    calls: list[str] = []
    ctx = make_ctx(x=1)
    seq = SequentialHook("seq", [add("x", 1), returns(Cancel("no"), calls, "a"),
                                 returns(None, calls, "b")])
    assert await seq.execute(ctx) == Cancel("no")
    assert calls == ["a"]
    assert ctx.data == {"x": 2}  # the modification before the stop stays, as in the executor


@pytest.mark.parametrize(
    "decisive", [r for r in PRECEDENCE[1:-1] if not isinstance(r, Modified)],
    ids=lambda r: r.kind,
)
async def test_sequential_returns_any_other_result_at_once(decisive: HookResult) -> None:
    calls: list[str] = []
    seq = SequentialHook("seq", [returns(decisive, calls, "a"), returns(Cancel("x"), calls, "b")])
    assert await seq.execute(make_ctx()) == decisive
    assert calls == ["a"]


async def test_sequential_without_changes_continues() -> None:
    seq = SequentialHook("seq", [returns(None), returns(Skipped("n/a")), Gate(Cancel("g"))])
    assert await seq.execute(make_ctx(go=False)) is CONTINUE
    assert await SequentialHook("empty", []).execute(make_ctx()) is CONTINUE


# -- ParallelHook -----------------------------------------------------------------------


@pytest.mark.parametrize("index", range(len(PRECEDENCE)), ids=[r.kind for r in PRECEDENCE])
async def test_parallel_precedence(index: int) -> None:
    # The expected winner plus every weaker result, weakest first, plus a Skipped.
    results = [Skipped("n/a"), *reversed(PRECEDENCE[index:])]
    par = ParallelHook("par", [returns(r) for r in results])
    assert await par.execute(make_ctx()) == PRECEDENCE[index]


async def test_parallel_only_skips_gives_continue() -> None:
    par = ParallelHook("par", [returns(Skipped("a")), returns(None)])
    assert await par.execute(make_ctx()) is CONTINUE
    assert await ParallelHook("empty", []).execute(make_ctx()) is CONTINUE


async def test_parallel_tie_goes_to_the_earliest_child_not_the_fastest() -> None:
    second_done = asyncio.Event()

    async def first(ctx: HookContext) -> HookResult:
        await second_done.wait()  # finishes after the second child
        return Cancel("first")

    async def second(ctx: HookContext) -> HookResult:
        second_done.set()
        return Cancel("second")

    par = ParallelHook("par", [first, second])
    assert await par.execute(make_ctx()) == Cancel("first")


async def test_parallel_runs_children_concurrently() -> None:
    barrier = asyncio.Barrier(3)

    async def meet(ctx: HookContext) -> None:
        # Run one at a time, no child would get past the barrier.
        async with asyncio.timeout(5):
            await barrier.wait()

    par = ParallelHook("par", [meet, meet, meet])
    assert await par.execute(make_ctx()) is CONTINUE


async def test_parallel_honours_max_concurrency() -> None:
    in_flight = 0
    peak = 0

    async def work(ctx: HookContext) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        for _ in range(5):
            await asyncio.sleep(0)
        in_flight -= 1

    await ParallelHook("par", [work] * 7, max_concurrency=2).execute(make_ctx())
    assert peak == 2
    await ParallelHook("par", [work] * 7).execute(make_ctx())
    assert peak == 7


async def test_parallel_timeout_raises_and_cancels_stragglers() -> None:
    cancelled: list[str] = []
    finished: list[str] = []

    async def fast(ctx: HookContext) -> None:
        finished.append("fast")

    async def stuck(ctx: HookContext) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append("stuck")
            raise

    par = ParallelHook("par", [fast, stuck], timeout=0.02)
    with pytest.raises(HookTimeoutError) as info:
        await par.execute(make_ctx())
    assert info.value.hook == "par"
    assert info.value.point == str(POINT)
    assert finished == ["fast"]
    assert cancelled == ["stuck"]


async def test_parallel_does_not_leak_copies_into_the_caller_context() -> None:
    def scribble(ctx: HookContext) -> Continue:
        ctx.data["scribbled"] = True
        ctx.metadata["scribbled"] = "yes"
        ctx.data = {"replaced": True}
        return CONTINUE

    seen_ids: list[int] = []

    def record(ctx: HookContext) -> None:
        seen_ids.append(id(ctx))

    ctx = make_ctx(x=1)
    par = ParallelHook("par", [scribble, record, record])
    assert await par.execute(ctx) is CONTINUE
    assert ctx.data == {"x": 1}
    assert ctx.metadata == {}
    assert len(set(seen_ids)) == 2 and id(ctx) not in seen_ids


async def test_parallel_winning_modified_sets_caller_data() -> None:
    ctx = make_ctx(x=1)
    par = ParallelHook("par", [add("x", 1), add("x", 5)])
    assert await par.execute(ctx) == Modified({"x": 2})  # both saw x=1; earliest wins
    assert ctx.data == {"x": 2}


async def test_parallel_raises_the_first_error_in_child_order_after_all_finish() -> None:
    order: list[str] = []
    late_may_fail = asyncio.Event()

    async def late_failure(ctx: HookContext) -> None:
        await late_may_fail.wait()
        order.append("first child fails")
        raise ValueError("first")

    async def early_failure(ctx: HookContext) -> None:
        order.append("second child fails")
        late_may_fail.set()
        raise ValueError("second")

    async def slow_ok(ctx: HookContext) -> HookResult:
        for _ in range(10):
            await asyncio.sleep(0)
        order.append("ok")
        return Cancel("ignored")

    par = ParallelHook("par", [late_failure, early_failure, slow_ok])
    with pytest.raises(HookExecutionError) as info:
        await par.execute(make_ctx())
    assert info.value.hook.endswith("late_failure")
    assert isinstance(info.value.__cause__, ValueError)
    assert sorted(order) == ["first child fails", "ok", "second child fails"]


# -- FirstMatchHook ---------------------------------------------------------------------


async def test_first_match_returns_the_first_decisive_result() -> None:
    calls: list[str] = []
    fm = FirstMatchHook("fm", [
        returns(None, calls, "a"),
        returns(Skipped("n/a"), calls, "b"),
        returns(Modified({"y": 2}), calls, "c"),
        returns(Cancel("late"), calls, "d"),
    ])
    assert await fm.execute(make_ctx()) == Modified({"y": 2})
    assert calls == ["a", "b", "c"]


async def test_first_match_without_a_match_continues() -> None:
    fm = FirstMatchHook("fm", [returns(None), Gate(Cancel("g"))])
    assert await fm.execute(make_ctx(go=False)) is CONTINUE
    assert await fm.execute(make_ctx(go=True)) == Cancel("g")


# -- VotingHook -------------------------------------------------------------------------


async def test_voting_threshold_met() -> None:
    vote = VotingHook("vote", [returns(Cancel("a")), returns(None), returns(Cancel("b"))])
    assert await vote.execute(make_ctx()) == Cancel("a")


async def test_voting_threshold_not_met() -> None:
    vote = VotingHook("vote", [returns(Cancel("a")), returns(None), returns(None)])
    assert await vote.execute(make_ctx()) is CONTINUE
    unanimous = VotingHook("u", [returns(Cancel("a")), returns(Cancel("b")), returns(None)],
                           threshold=1.0)
    assert await unanimous.execute(make_ctx()) is CONTINUE


async def test_voting_threshold_boundary_is_inclusive() -> None:
    children = [returns(Cancel("a"))] * 7 + [returns(None)] * 3
    assert await VotingHook("v", children, threshold=0.7).execute(make_ctx()) == Cancel("a")
    assert await VotingHook("v", children, threshold=0.71).execute(make_ctx()) is CONTINUE


async def test_voting_skipped_abstains() -> None:
    vote = VotingHook("vote", [returns(Skipped("n/a")), returns(Skipped("n/a")),
                               returns(None), returns(Replace(1))])
    assert await vote.execute(make_ctx()) == Replace(1)  # 1 of 2 counted votes
    all_skip = VotingHook("skip", [returns(Skipped("n/a")), Gate(Cancel("g"))])
    assert await all_skip.execute(make_ctx()) is CONTINUE


async def test_voting_errors_abstain(caplog: pytest.LogCaptureFixture) -> None:
    vote = VotingHook("vote", [fails(), fails(), returns(Cancel("a")), returns(None)])
    assert await vote.execute(make_ctx()) == Cancel("a")
    assert "abstains" in caplog.text


async def test_voting_when_every_child_fails_raises_the_first_error() -> None:
    vote = VotingHook("vote", [fails("one", "first"), fails("two", "second")])
    with pytest.raises(HookExecutionError) as info:
        await vote.execute(make_ctx())
    assert info.value.hook == "first"
    assert "one" in str(info.value)


@pytest.mark.parametrize(
    ("tie_breaker", "expected"),
    [(TieBreaker.FIRST, Redirect("r")), (TieBreaker.STRICTEST, Cancel("c")),
     (TieBreaker.CONTINUE, CONTINUE), ("strictest", Cancel("c"))],
)
async def test_voting_tie_breakers(tie_breaker: TieBreaker | str, expected: HookResult) -> None:
    # Redirect and Cancel both have 2 of 4 votes: a tie at the default threshold.
    children = [returns(Redirect("r")), returns(Cancel("c")), returns(Cancel("c2")),
                returns(Redirect("r2"))]
    vote = VotingHook("vote", children, tie_breaker=tie_breaker)
    assert await vote.execute(make_ctx()) == expected


async def test_voting_tie_breaker_applies_to_every_kind_reaching_the_threshold() -> None:
    children = [returns(Cache("k")), returns(Cancel("c")), returns(Cancel("c")),
                returns(Cancel("c")), returns(None)]
    first = VotingHook("v", children, threshold=0.2)
    strict = VotingHook("v", children, threshold=0.2, tie_breaker=TieBreaker.STRICTEST)
    assert await first.execute(make_ctx()) == Cache("k")
    assert await strict.execute(make_ctx()) == Cancel("c")


async def test_voting_modified_winner_sets_data_and_children_use_copies() -> None:
    ctx = make_ctx(x=1)
    vote = VotingHook("vote", [add("x", 1), add("x", 2), returns(None)])
    assert await vote.execute(ctx) == Modified({"x": 2})
    assert ctx.data == {"x": 2}


@pytest.mark.parametrize("threshold", [0, -0.5, 1.01, float("nan"), True, "0.5"])
def test_voting_rejects_a_bad_threshold(threshold: Any) -> None:
    with pytest.raises(InvalidValueError, match="threshold"):
        VotingHook("vote", [], threshold=threshold)


def test_voting_rejects_an_unknown_tie_breaker() -> None:
    with pytest.raises(InvalidValueError, match="tie breaker"):
        VotingHook("vote", [], tie_breaker="coin-flip")


# -- nesting ----------------------------------------------------------------------------


async def test_composites_nest() -> None:
    inner_parallel = ParallelHook("inner-par", [add("x", 1), returns(None)])
    inner_vote = VotingHook("inner-vote", [returns(Cancel("veto")), returns(None)])
    outer = SequentialHook("outer", [
        inner_parallel,
        FirstMatchHook("inner-fm", [returns(None), add("x", 10)]),
        Gate(Cancel("never")),
        inner_vote,
        returns(Replace("unreached")),
    ])
    ctx = make_ctx(x=1, go=False)
    assert await outer.execute(ctx) == Cancel("veto")
    assert ctx.data == {"x": 12, "go": False}
    assert outer.hooks[0] is inner_parallel


async def test_a_nested_childs_error_names_the_innermost_child() -> None:
    outer = SequentialHook("outer", [ParallelHook("inner", [fails(name="deep")])])
    with pytest.raises(HookExecutionError) as info:
        await invoke(outer, make_ctx())
    assert info.value.hook == "deep"


# -- registry and executor --------------------------------------------------------------


def registered(*hooks: object) -> HookExecutor:
    registry = HookRegistry()
    for hook in hooks:
        registry.register(POINT, hook)
    return HookExecutor(registry)


async def test_a_registered_composite_runs_via_the_executor() -> None:
    seq = SequentialHook("seq", [add("x", 1), ParallelHook("par", [add("x", 1), returns(None)])])
    executor = registered(seq)
    ctx = make_ctx(x=1)
    chain = await executor.execute(ctx)
    assert chain.result == Modified({"x": 3})
    assert chain.decided_by == "seq"
    assert ctx.data == {"x": 3}


def test_a_registered_composite_runs_via_execute_sync() -> None:
    vote = VotingHook("vote", [returns(Cancel("no")), add("x", 1), returns(Cancel("no!"))])
    executor = registered(vote, FirstMatchHook("fm", [returns(None)]))
    chain = executor.execute_sync(make_ctx(x=1))
    assert chain.cancelled
    assert chain.result == Cancel("no")
    assert chain.decided_by == "vote"


async def test_a_failing_child_of_a_fail_closed_composite_cancels() -> None:
    seq = SequentialHook("guard", [returns(None), fails("kaput", "checker")],
                         error_policy="fail_closed")
    executor = registered(seq)
    chain = await executor.execute(make_ctx())
    assert isinstance(chain.result, Cancel)
    assert "guard" in chain.result.reason and "checker" in chain.result.reason
    assert chain.decided_by == "guard"
    assert [f.hook for f in chain.failures] == ["guard"]


def test_a_failing_child_of_a_fail_closed_composite_cancels_sync() -> None:
    guard = ParallelHook("guard", [returns(None), fails()], error_policy=ErrorPolicy.FAIL_CLOSED)
    chain = registered(guard).execute_sync(make_ctx())
    assert chain.cancelled
    assert chain.decided_by == "guard"


async def test_a_failing_child_of_a_fail_open_composite_continues() -> None:
    executor = registered(FirstMatchHook("fm", [fails()]), returns(Replace(7), name="after"))
    chain = await executor.execute(make_ctx())
    assert chain.result == Replace(7)
    assert [f.hook for f in chain.failures] == ["fm"]


async def test_the_executor_timeout_on_a_composite_cancels_its_children() -> None:
    cancelled: list[str] = []

    async def stuck(ctx: HookContext) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append("stuck")
            raise

    executor = registered(VotingHook("vote", [stuck, returns(Cancel("c"))], timeout=0.02))
    chain = await executor.execute(make_ctx())
    assert chain.result is CONTINUE  # fail_open by default
    assert [f.error_type for f in chain.failures] == ["HookTimeoutError"]
    assert cancelled == ["stuck"]
