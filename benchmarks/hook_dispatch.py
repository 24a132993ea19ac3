"""Hook dispatch cost: no hooks, 1/5/10 sync no-op hooks, 1 async hook, breaker and monitor.

Every figure is compared with a bare Python function call (or a bare ``await``) measured in
the same run; ns figures are net of the timing loop's own cost. Hooks return ``None`` or, as
many hooks are written, a new ``Continue()``: both are timed.

Targets (issue 18): 1 sync no-op hook with breaker and monitor (the executor's default)
adds <= 0.6 µs; returning ``Continue()`` costs what returning ``None`` does (within 10 %).
(Issue 2: no hooks <= 3x a bare call; each sync no-op hook adds <= 1 µs; 5 hooks add
<= 5 % to a 100 µs operation.) The runtime's share is in ``runtime_overhead.py``.

    python benchmarks/hook_dispatch.py [--quick] [--json out.json]
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Row, call_overhead_ns, net_ns, parse_args, report, time_async, time_sync

from llmspell.hooks import (
    ComponentId,
    ComponentType,
    Continue,
    HookContext,
    HookExecutor,
    HookPoint,
    HookRegistry,
)

POINT = HookPoint.BEFORE_TOOL_EXECUTION


def noop(ctx: HookContext) -> None:
    return None


async def async_noop(ctx: HookContext) -> None:
    return None


def continues(ctx: HookContext) -> Continue:
    return Continue()


def executor_with(n: int, *, guards: bool, record: bool = False,
                  hook: Callable[[HookContext], object] = noop) -> HookExecutor:
    registry = HookRegistry()
    for i in range(n):
        registry.register(POINT, hook, name=f"noop{i}")
    return HookExecutor(registry, breaker=guards, monitor=guards, record=record)


def calibrate_operation(target_ns: float) -> int:
    """Find a loop count whose pure-Python work takes about ``target_ns``."""
    n = 1000
    while True:
        per = min(time_sync(lambda n=n: sum(range(n)), 10, 1) for _ in range(5))
        if per >= target_ns * 0.5:
            return int(n * target_ns / per)
        n *= 2


def _harness_nothing() -> None:
    """What the timing loop calls to measure its own cost (as ``call_overhead_ns``)."""
    return None


def main() -> int:
    args = parse_args(__doc__ or "")
    number, repeat = (20_000, 3) if args.quick else (200_000, 7)
    ctx = HookContext(point=POINT, component=ComponentId(type=ComponentType.TOOL, name="calc"))
    rows: list[Row] = []

    overhead = call_overhead_ns(number, repeat)
    none = executor_with(0, guards=False)
    # The bare call is a small difference of two timings (a call inside the timed lambda,
    # less the harness's own call): taken as separate bests, drift between them made the
    # baseline swing from 5 to 30 ns. Each round times the harness, the bare call and the
    # no-hook dispatch back to back; the figures are the best of the rounds' nets (best, as
    # every other figure here, so the "added" rows below subtract a like figure).
    bares: list[float] = []
    nones: list[float] = []
    for _ in range(max(repeat, 5)):
        harness = time_sync(_harness_nothing, number, 1)
        bares.append(max(1.0, time_sync(lambda: noop(ctx), number, 1) - harness))
        nones.append(max(1.0, time_sync(lambda: none.execute_sync(ctx), number, 1) - harness))
    bare, t0 = min(bares), min(nones)
    rows.append(Row("bare function call", bare, "ns", None, None, "baseline", True))
    rows.append(Row("no hooks (execute_sync)", t0, "ns", bare, t0 / bare, "ratio <= 3",
                    t0 / bare <= 3))

    # The default executor (breakers and a monitor), one hook returning None, then
    # Continue(): alternated, best of each, so drift hits both alike.
    one_none = executor_with(1, guards=True)
    one_cont = executor_with(1, guards=True, hook=continues)
    ten_none = executor_with(10, guards=True)
    ten_cont = executor_with(10, guards=True, hook=continues)
    runs: dict[str, list[float]] = {"1n": [], "1c": [], "10n": [], "10c": []}
    for _ in range(repeat):
        runs["1n"].append(net_ns(lambda: one_none.execute_sync(ctx), number, 1, overhead))
        runs["1c"].append(net_ns(lambda: one_cont.execute_sync(ctx), number, 1, overhead))
        runs["10n"].append(net_ns(lambda: ten_none.execute_sync(ctx), number // 4, 1,
                                  overhead))
        runs["10c"].append(net_ns(lambda: ten_cont.execute_sync(ctx), number // 4, 1,
                                  overhead))
    added_none = min(runs["1n"]) - t0
    added_cont = min(runs["1c"]) - t0
    rows.append(Row("1 sync hook -> None, breaker+monitor: added", added_none, "ns",
                    bare, added_none / bare, "value <= 600 ns", added_none <= 600))
    rows.append(Row("1 sync hook -> Continue(), breaker+monitor: added", added_cont, "ns",
                    added_none, added_cont / added_none, "ratio <= 1.1 (baseline: None)",
                    added_cont / added_none <= 1.1))
    ten_n, ten_c = min(runs["10n"]) - t0, min(runs["10c"]) - t0
    rows.append(Row("10 sync hooks -> None, breaker+monitor: added", ten_n, "ns", bare,
                    ten_n / bare, "value <= 10000 ns", ten_n <= 10_000))
    rows.append(Row("10 sync hooks -> Continue(), breaker+monitor: added", ten_c, "ns",
                    ten_n, ten_c / ten_n, "ratio <= 1.1 (baseline: None)",
                    ten_c / ten_n <= 1.1))

    for guards in (False, True):
        label = "breaker+monitor" if guards else "plain"
        for n in (1, 5, 10):
            ex = executor_with(n, guards=guards)
            t = net_ns(lambda ex=ex: ex.execute_sync(ctx), number, repeat, overhead)
            added = (t - t0) / n
            rows.append(Row(f"{n} sync no-op hooks, {label}", t, "ns", bare, t / bare,
                            "informational", True))
            rows.append(Row(f"  added per hook ({n}, {label})", added, "ns/hook", bare,
                            added / bare, "value <= 1000 ns", added <= 1000))

    rec = executor_with(5, guards=True, record=True)
    t_rec = net_ns(lambda: rec.execute_sync(ctx), number, repeat, overhead)
    rows.append(Row("5 hooks, breaker+monitor+records", t_rec, "ns", bare, t_rec / bare,
                    "informational", True))

    async def bare_await() -> None:
        await async_noop(ctx)

    async_base = time_async(bare_await, number, repeat)
    rows.append(Row("bare await of an async function", async_base, "ns", None, None,
                    "baseline", True))
    none_async = time_async(lambda: none.execute(ctx), number, repeat)
    rows.append(Row("no hooks (await execute)", none_async, "ns", async_base,
                    none_async / async_base, "ratio <= 3", none_async / async_base <= 3))
    registry = HookRegistry()
    registry.register(POINT, async_noop, name="async_noop")
    one_async = HookExecutor(registry, breaker=False, monitor=False)
    t_async = time_async(lambda: one_async.execute(ctx), number, repeat)
    added_async = t_async - none_async
    rows.append(Row("1 async no-op hook (await execute)", t_async, "ns", async_base,
                    t_async / async_base, "informational", True))
    rows.append(Row("  added by the async hook", added_async, "ns/hook", async_base,
                    added_async / async_base, "value <= 1000 ns", added_async <= 1000))

    # A ~100 µs pure-Python operation, measured alone and with a 5-hook dispatch before it.
    # The primary figure divides the separately measured dispatch cost by the operation's
    # cost (both best-of-repeats, so stable on a shared machine); the combined run is shown
    # too, but a 100 µs body jitters by more than the few µs being measured.
    loops = calibrate_operation(100_000)
    op_number = max(100, number // 200)

    def operation() -> None:
        sum(range(loops))

    fives = {guards: executor_with(5, guards=guards) for guards in (False, True)}

    def with_hooks(guards: bool) -> Callable[[], None]:
        five = fives[guards]

        def run() -> None:
            five.execute_sync(ctx)
            sum(range(loops))

        return run

    # Alone and combined are measured in alternation so drift hits both alike.
    alone: list[float] = []
    combined: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeat * 2):
        alone.append(time_sync(operation, op_number, 1))
        for guards in (False, True):
            combined[guards].append(time_sync(with_hooks(guards), op_number, 1))
    op = min(alone)
    rows.append(Row("~100 µs operation alone", op, "ns", None, None, "baseline", True))
    for guards in (False, True):
        label = "breaker+monitor" if guards else "plain"
        five = fives[guards]
        dispatch = net_ns(lambda five=five: five.execute_sync(ctx), number, repeat, overhead)
        pct = dispatch / op * 100
        rows.append(Row(f"  5 hooks added to it ({label})", pct, "%", None, None,
                        "value <= 5 %", pct <= 5))
        both = min(combined[guards])
        rows.append(Row(f"  operation + 5 hooks, one run ({label})", both, "ns", op,
                        both / op, "informational", True))
    return report("hook dispatch (ns per dispatch; best of repeats)", rows, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
