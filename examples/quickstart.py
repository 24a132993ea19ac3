"""Quick start: hooks that guard, change and observe a tool call.

Run it with ``python examples/quickstart.py``. It registers five hooks around a small
"calculator" operation and dispatches ``BeforeToolExecution``/``AfterToolExecution`` for a
few calls, showing each hook result taking effect: Modified changes the input, Cancel stops
the call, Replace serves a cached answer, a failing hook is recorded (and, after three
failures, its circuit breaker opens), and the monitor reports what every hook cost.
"""

from __future__ import annotations

import asyncio
import operator
from typing import Any

from llmspell.errors import OperationCancelledError
from llmspell.hooks import (
    Cancel,
    ComponentId,
    ComponentType,
    HookContext,
    HookExecutor,
    HookPoint,
    HookRegistry,
    Modified,
    Replace,
    SequentialHook,
)

OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
registry = HookRegistry()
executor = HookExecutor(registry)
calculator = ComponentId(type=ComponentType.TOOL, name="calculator")
answers: dict[str, Any] = {}
audit_log: list[str] = []


@registry.on("BeforeToolExecution", priority="highest", error_policy="fail_closed")
def refuse_division_by_zero(ctx: HookContext) -> Cancel | None:
    """Security first: a division by zero never reaches the tool."""
    if ctx.data["op"] == "/" and ctx.data["b"] == 0:
        return Cancel("division by zero is not allowed")
    return None


def normalise_numbers(ctx: HookContext) -> Modified:
    return Modified({**ctx.data, "a": float(ctx.data["a"]), "b": float(ctx.data["b"])})


def tag_request(ctx: HookContext) -> Modified:
    return Modified({**ctx.data, "key": f"{ctx.data['a']}{ctx.data['op']}{ctx.data['b']}"})


# Two steps grouped into one hook: the second sees the first one's output.
registry.register("before_tool_execution", SequentialHook("prepare", [normalise_numbers,
                                                                      tag_request]))


@registry.on(HookPoint.BEFORE_TOOL_EXECUTION, priority="low")
def serve_cached(ctx: HookContext) -> Replace | None:
    """A cache hit skips the tool and answers directly."""
    key = ctx.data["key"]
    return Replace(answers[key]) if key in answers else None


@registry.on(HookPoint.AFTER_TOOL_EXECUTION)
async def audit(ctx: HookContext) -> None:
    """Async hooks work too; this one records every result."""
    await asyncio.sleep(0)
    audit_log.append(f"{ctx.data['key']} = {ctx.data['result']}")
    answers[ctx.data["key"]] = ctx.data["result"]


@registry.on(HookPoint.AFTER_TOOL_EXECUTION, name="flaky_metrics_exporter")
def flaky_exporter(ctx: HookContext) -> None:
    raise ConnectionError("metrics backend unreachable")


async def calculate(a: float, op: str, b: float) -> Any:
    """Run the calculator through its hook points and honour what the hooks return."""
    before = HookContext(point=HookPoint.BEFORE_TOOL_EXECUTION, component=calculator,
                         data={"a": a, "op": op, "b": b})
    outcome = await executor.execute(before)
    outcome.raise_if_cancelled(before.point)
    if isinstance(outcome.result, Replace):
        return f"{outcome.result.value} (cached, served by {outcome.decided_by})"
    data = before.data  # the final data after every Modified
    result = OPS[data["op"]](data["a"], data["b"])
    after = before.child(HookPoint.AFTER_TOOL_EXECUTION, data={**data, "result": result})
    await executor.execute(after)
    return result


async def main() -> None:
    for a, op, b in [(6, "*", 7), ("1.5", "+", 2), (6, "*", 7), (1, "/", 0), (9, "-", 4)]:
        try:
            print(f"{a} {op} {b} -> {await calculate(a, op, b)}")
        except OperationCancelledError as exc:
            print(f"{a} {op} {b} -> refused: {exc.reason} (by {exc.hook})")
    print("\naudit log:", audit_log)
    print("hook failures recorded:", executor.failure_count,
          "| breaker:", {b.hook: b.state.value for b in executor.breakers()
                         if b.hook == "flaky_metrics_exporter"})
    print("\nper-hook latency (p50 / p99, µs):")
    assert executor.monitor is not None
    for row in executor.monitor.hook_stats():
        print(f"  {row.name:<40} {row.p50_ns / 1000:8.1f} {row.p99_ns / 1000:8.1f}"
              f"  calls={row.count} errors={row.errors}")


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.ERROR)  # the flaky hook's warnings are expected here
    asyncio.run(main())
