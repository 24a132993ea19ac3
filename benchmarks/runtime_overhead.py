"""What hooks add to tools and agents (the seed's scenarios), from one run.

* 10 000 tool executions through the pipeline (validation, events, timeouts), with no hooks
  registered vs 5 no-op hooks at each tool point (ToolValidation, BeforeToolExecution,
  AfterToolExecution: 3 points per call), with ``hook.*`` events on and off.
* 1 000 agent state transitions (pause/resume), no hooks vs 5 no-op hooks per point.
* The cost of the pipeline's hook checks when no hooks are registered, against the pipeline
  minus hooks (the same run with the checks taken out: a lookup that always misses).

Targets (issue 4): <= 5 µs added per hooked point with 5 hooks; with no hooks, <= 1 % over
the same pipeline minus hooks. The ``hook.*`` event rows are reported three ways: a
subscriber listening (the event is built and published), nobody listening and no store
(the system skips building it), and switched off.

    python benchmarks/runtime_overhead.py [--quick] [--json out.json]
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Row, parse_args, report, time_sync

from llmspell.hooks import HookPoint
from llmspell.runtime import PAUSE, RESUME, System, SystemConfig, tool
from llmspell.runtime.providers.scripted import ScriptedProvider

TOOL_POINTS = (HookPoint.TOOL_VALIDATION, HookPoint.BEFORE_TOOL_EXECUTION,
               HookPoint.AFTER_TOOL_EXECUTION)


@tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def noop(ctx: object) -> None:
    return None


class _NeverHooks(dict):  # type: ignore[type-arg]
    """A chains mapping that never has hooks: the pipeline minus its hook dispatch."""

    def __contains__(self, key: object) -> bool:
        return False


def make_system(hooks_per_point: int, points: tuple[str, ...], *, hook_events: bool = True,
                listener: bool = False) -> System:
    system = System(SystemConfig(store="none", hook_events=hook_events))
    if listener:  # someone subscribes to hook.*: the events are really built and published
        system.bus.subscribe("hook.**", lambda event: None)
    system.tools.register(add)
    for point in points:
        for i in range(hooks_per_point):
            system.registry.register(point, noop, name=f"noop{i}")
    return system


async def per_call_ns(system: System, calls: int, repeat: int) -> float:
    execute = system.tools.execute
    params = {"a": 1, "b": 2}
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter_ns()
        for _ in range(calls):
            await execute("add", params)
        best = min(best, (time.perf_counter_ns() - start) / calls)
    return best


async def transitions_ns(system: System, count: int, repeat: int) -> float:
    agent = system.agents.create(f"bench{id(system)}", provider=ScriptedProvider(["ok"]))
    await agent.initialize()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter_ns()
        for _ in range(count // 2):
            await agent.pause()
            await agent.resume()
        best = min(best, (time.perf_counter_ns() - start) / count)
    return best


async def measure(quick: bool) -> list[Row]:
    calls = 1_000 if quick else 10_000
    transitions = 200 if quick else 1_000
    repeat = 3 if quick else 5
    rows: list[Row] = []

    direct = time_sync(lambda: add.fn(1, 2), calls * 10, repeat)
    rows.append(Row("tool function called directly", direct, "ns/call", None, None,
                    "baseline", True))

    bare = make_system(0, ())
    minus = make_system(0, ())
    # The same pipeline, its hook lookups always missing: the pipeline minus hooks.
    minus.registry._chains = _NeverHooks()
    # Interleave so drift on a shared machine hits both alike.
    no_hooks_runs, minus_runs = [], []
    for _ in range(repeat):
        no_hooks_runs.append(await per_call_ns(bare, calls, 1))
        minus_runs.append(await per_call_ns(minus, calls, 1))
    no_hooks, minus_hooks = min(no_hooks_runs), min(minus_runs)
    rows.append(Row("tool pipeline minus hooks", minus_hooks, "ns/call", direct,
                    minus_hooks / direct, "baseline", True))
    overhead = (no_hooks - minus_hooks) / minus_hooks * 100
    rows.append(Row("tool pipeline, no hooks registered", no_hooks, "ns/call", minus_hooks,
                    no_hooks / minus_hooks, "informational", True))
    rows.append(Row("  hook checks with no hooks (3 points)", overhead, "%", None, None,
                    "value <= 1 %", overhead <= 1))

    settings = [("hook events on, subscribed", True, True),
                ("hook events on, nobody listening", True, False),
                ("hook events off", False, False)]
    for label, events_on, listener in settings:
        hooked = make_system(5, TOOL_POINTS, hook_events=events_on, listener=listener)
        with_hooks = await per_call_ns(hooked, calls, repeat)
        added = (with_hooks - no_hooks) / len(TOOL_POINTS)
        rows.append(Row(f"tool pipeline, 5 no-op hooks x 3 points, {label}", with_hooks,
                        "ns/call", no_hooks, with_hooks / no_hooks, "informational", True))
        rows.append(Row(f"  added per hooked point ({label})", added, "ns/point", None, None,
                        "value <= 5000 ns", added <= 5000))

    plain_agents = make_system(0, ())
    t0 = await transitions_ns(plain_agents, transitions, repeat)
    rows.append(Row("agent state transition, no hooks", t0, "ns", None, None, "baseline",
                    True))
    for label, events_on, listener in settings:
        hooked_agents = make_system(5, (PAUSE, RESUME), hook_events=events_on,
                                    listener=listener)
        t5 = await transitions_ns(hooked_agents, transitions, repeat)
        rows.append(Row(f"agent state transition, 5 no-op hooks, {label}", t5, "ns", t0,
                        t5 / t0, "informational", True))
        rows.append(Row(f"  added per hooked transition ({label})", t5 - t0, "ns/point",
                        None, None, "value <= 5000 ns", t5 - t0 <= 5000))
    return rows


def main() -> int:
    args = parse_args(__doc__ or "")
    rows = asyncio.run(measure(args.quick))
    return report("runtime overhead (best of repeats)", rows, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
