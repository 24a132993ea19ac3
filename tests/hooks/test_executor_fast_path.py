"""The executor's plain-function path: new Continue() instances stay on it, the hand-over
to the full loop keeps every count, and the monitor stays exact through both."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from llmspell.hooks import (
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

P = HookPoint.BEFORE_TOOL_EXECUTION


def ctx() -> HookContext:
    return HookContext(point=P, component=ComponentId(type=ComponentType.TOOL, name="t"),
                       data={"n": 0})


def test_new_continue_instances_go_on_and_are_counted_on_both_apis() -> None:
    registry = HookRegistry()
    seen: list[int] = []
    def going_on(index: int) -> Callable[[HookContext], Continue]:
        def hook(c: HookContext) -> Continue:
            seen.append(index)
            return Continue()
        return hook

    for i in range(3):
        registry.register(P, going_on(i), name=f"c{i}")
    executor = HookExecutor(registry)
    sync = executor.execute_sync(ctx())
    later = asyncio.run(executor.execute(ctx()))
    assert sync.kind == later.kind == "continue"
    assert sync.hooks_run == later.hooks_run == 3
    assert seen == [0, 1, 2, 0, 1, 2]
    monitor = executor.monitor
    assert monitor is not None
    assert [row.count for row in monitor.point_stats()] == [2]
    assert sorted(row.count for row in monitor.hook_stats(P)) == [2, 2, 2]


def test_a_modified_after_continues_is_folded_by_the_full_loop_on_both_apis() -> None:
    registry = HookRegistry()
    registry.register(P, lambda c: Continue(), name="first")
    registry.register(P, lambda c: Modified({"n": c.data["n"] + 1}), name="second")
    registry.register(P, lambda c: None, name="third")
    executor = HookExecutor(registry)
    for run in (executor.execute_sync, lambda c: asyncio.run(executor.execute(c))):
        context = ctx()
        result = run(context)
        assert isinstance(result.result, Modified)
        assert result.decided_by == "second" and result.hooks_run == 3
        assert context.data == {"n": 1}
    monitor = executor.monitor
    assert monitor is not None
    assert sorted(row.count for row in monitor.hook_stats(P)) == [2, 2, 2]
    (point,) = monitor.point_stats()
    assert point.count == 2 and point.errors == 0


def test_a_raising_hook_after_continues_counts_once_as_an_error() -> None:
    registry = HookRegistry()
    registry.register(P, lambda c: Continue(), name="ok")

    def boom(c: HookContext) -> None:
        raise RuntimeError("boom")

    registry.register(P, boom, name="boom")
    executor = HookExecutor(registry)
    result = executor.execute_sync(ctx())
    assert result.hooks_run == 2 and [f.hook for f in result.failures] == ["boom"]
    monitor = executor.monitor
    assert monitor is not None
    boom_row = monitor.stats_for("boom")
    assert boom_row is not None and boom_row.count == 1 and boom_row.errors == 1
    (point,) = monitor.point_stats()
    assert point.count == 1 and point.errors == 1


def test_recording_lists_every_hook_on_the_plain_function_path() -> None:
    registry = HookRegistry()
    registry.register(P, lambda c: Continue(), name="a")
    registry.register(P, lambda c: None, name="b")
    executor = HookExecutor(registry)
    result = asyncio.run(executor.execute(ctx(), record=True))
    assert [(r.hook, r.kind) for r in result.records] == [("a", "continue"),
                                                          ("b", "continue")]
    plain = asyncio.run(executor.execute(ctx()))
    assert plain.records == ()

    assert all(r.duration_ns >= 0 for r in result.records)
    # A chain of sync hooks that all go on is done without a coroutine, records and all.
    started = executor.start_chain(registry.chains[P], ctx(), True)
    assert [(r.hook, r.kind) for r in started.records] == [  # type: ignore[union-attr]
        ("a", "continue"), ("b", "continue")]


def _stops_third(kind: str) -> HookRegistry:
    registry = HookRegistry()
    registry.register(P, lambda c: None, name="a")
    registry.register(P, lambda c: Continue(), name="b")
    if kind == "cancel":
        registry.register(P, lambda c: Cancel("no"), name="c")
    elif kind == "modified":
        registry.register(P, lambda c: Modified({"n": 5}), name="c")
    else:
        def boom(c: HookContext) -> None:
            raise RuntimeError("boom")
        registry.register(P, boom, name="c")
    registry.register(P, lambda c: None, name="d")
    return registry


@pytest.mark.parametrize("kind", ["cancel", "modified", "failed"])
def test_recorded_hand_over_to_the_full_loop_keeps_the_records_before_it(kind: str) -> None:
    """Records from the plain-function path and the full loop's, in chain order, each hook
    once, the same on both APIs and as a recording executor gives them."""
    expected = {"cancel": [("a", "continue"), ("b", "continue"), ("c", "cancel")],
                "modified": [("a", "continue"), ("b", "continue"), ("c", "modified"),
                             ("d", "continue")],
                "failed": [("a", "continue"), ("b", "continue"), ("c", "error"),
                           ("d", "continue")]}[kind]
    for recording in (False, True):
        executor = HookExecutor(_stops_third(kind), record=recording)
        outcomes = [asyncio.run(executor.execute(ctx(), record=True))]
        if recording:
            outcomes.append(executor.execute_sync(ctx()))
        for outcome in outcomes:
            assert [(r.hook, r.kind) for r in outcome.records] == expected
            assert outcome.hooks_run == len(expected)
        monitor = executor.monitor
        assert monitor is not None
        counts = {row.name: row.count for row in monitor.hook_stats(P)}
        assert {hook: counts[hook] for hook, _ in expected} == dict.fromkeys(
            (hook for hook, _ in expected), len(outcomes))
