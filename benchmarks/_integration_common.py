"""What the three framework benchmarks (``_integration_*.py``) share: the workload's size,
the no-op hooks, timing the three agents on one system, and the rows they report.

Each framework benchmark times one agent run with 3 tool calls three ways: bare (the
baseline), through the llmspell adapter with 5 no-op hooks at each point the adapter fires,
and with the framework's own no-op seams (what any plug-in at those seams costs there).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Row, interleaved_medians

POINTS = ("BeforeAgentExecution", "AfterAgentExecution", "AgentError", "BeforeModelCall",
          "AfterModelCall", "ModelCallError", "BeforeToolExecution", "AfterToolExecution",
          "ToolError")
"""The points all three adapters fire (pydantic-ai's fires ``ToolValidation`` as well)."""
HOOKS_PER_POINT = 5
TOOL_CALLS = 3
EXPECTED = "done"
"""What the offline model answers once its 3 tool calls are done: every timed run must end
with it."""


def add_noop_hooks(system: Any, points: Iterable[str]) -> None:
    """:data:`HOOKS_PER_POINT` hooks that return None at each of ``points``."""
    for point in points:
        for i in range(HOOKS_PER_POINT):
            system.registry.register(point, lambda ctx: None, name=f"noop-{point}-{i}")


def time_runs(system: Any, runs: Sequence[Callable[[], Awaitable[object]]],
              rounds: int) -> list[float]:
    """Median µs per run of each of ``runs`` (bare, adapted, no-op seams), interleaved
    (:func:`_harness.interleaved_medians`) on ``system`` started for the measurement; each
    run must return :data:`EXPECTED`."""

    async def measure() -> list[float]:
        await system.start()
        try:
            return await interleaved_medians(runs, rounds, expect=EXPECTED)
        finally:
            await system.shutdown()

    return asyncio.run(measure())


def overhead_rows(framework: str, seams: str, bare: float, adapted: float,
                  noop: float) -> list[Row]:
    """The three timing rows: the bare run (baseline), the adapter with no-op hooks
    (target: at most 5 % added), the framework's own no-op ``seams`` (reported)."""
    return [
        Row(f"{framework} run ({TOOL_CALLS} tool calls), no adapter", bare, "µs/run", None,
            None, "baseline", True),
        Row(f"{framework} + adapter, {HOOKS_PER_POINT} no-op hooks/point", adapted, "µs/run",
            bare, adapted / bare, "ratio <= 1.05", adapted / bare <= 1.05),
        Row(f"{framework} + its own no-op {seams}", noop, "µs/run", bare, noop / bare,
            "report", True),
    ]


def added_cost_row(seams: str, bare: float, adapted: float, noop: float) -> Row:
    """What the adapter adds to the bare run against what the framework's no-op ``seams``
    add: the adapter's own work may cost at most 3 times the framework's plumbing."""
    added = max(adapted - bare, 0.0)
    noop_added = max(noop - bare, 1.0)
    return Row(f"adapter's added cost vs no-op {seams}'s", added, "µs/run", noop_added,
               added / noop_added, "ratio <= 3", added / noop_added <= 3)


def compared_rows(framework: str, seams: str, system: Any,
                  runs: Sequence[Callable[[], Awaitable[object]]], rounds: int) -> list[Row]:
    """Time ``runs`` (bare, adapted, the framework's no-op ``seams``) on ``system`` and
    return the three timing rows and the added-cost row."""
    bare, adapted, noop = time_runs(system, runs, rounds)
    return [*overhead_rows(framework, seams, bare, adapted, noop),
            added_cost_row(seams, bare, adapted, noop)]
