"""A worker process of the fleet-wide limit tests (tests/builtin/test_fleet_limits.py).

``ratelimit URL START DURATION OUT``: a RateLimitHook (10 per second, burst 2, one global
bucket) sharing its counters at URL; from wall time START for DURATION seconds it asks for
a token every few milliseconds and writes ``{"allowed": [wall times], "asked": [wall
times], "limited": n, "errors": n}`` to OUT (``asked``: when each decision came back).

``budget URL START CALLS OUT``: a CostTrackingHook with a global budget of $1.00 shared at
URL; from START it records CALLS model calls of $0.10 each, waits until all
:data:`PROCESSES` workers have (a ``.spent`` file each beside OUT), then writes
``{"alerts": [levels], "blocked": bool}`` to OUT (``blocked``: its next model call was
cancelled).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from llmspell.builtin import CostConfig, CostTrackingHook, RateLimitConfig, RateLimitHook
from llmspell.builtin.cost import Budget, BudgetAlert, TokenPrice
from llmspell.errors import SharedCounterError
from llmspell.hooks import Cancel
from llmspell.hooks.context import ComponentId, HookContext
from llmspell.hooks.points import HookPoint

PROCESSES = 3  # as tests/builtin/test_fleet_limits.py starts
TOOL = ComponentId(type="tool", name="search")
MODEL = ComponentId(type="model", name="p/m")


async def _run(hook: Any, ctx: HookContext) -> Any:
    out = hook.execute(ctx)
    if asyncio.iscoroutine(out):
        out = await out
    return out


async def _until(start: float) -> None:
    await asyncio.sleep(max(0.0, start - time.time()))


async def ratelimit(url: str, start: float, duration: float, out: str) -> None:
    hook = RateLimitHook(RateLimitConfig(rate=10, burst=2, key="global"), shared=url)
    assert hook.shared is not None
    await hook.shared.read("warm-up")                # connected before the start
    allowed: list[float] = []
    asked: list[float] = []
    limited = errors = 0
    await _until(start)
    while time.time() < start + duration:
        try:
            decision = await _run(hook, HookContext(point=HookPoint.BEFORE_TOOL_EXECUTION,
                                                    component=TOOL, data={"params": {}}))
        except SharedCounterError:
            errors += 1
        else:
            asked.append(time.time())
            if decision is None:
                allowed.append(time.time())
            else:
                limited += 1
        await asyncio.sleep(0.003)
    with open(out, "w", encoding="utf-8") as file:
        json.dump({"allowed": allowed, "asked": asked, "limited": limited, "errors": errors},
                  file)


async def budget(url: str, start: float, calls: int, out: str) -> None:
    alerts: list[BudgetAlert] = []
    hook = CostTrackingHook(
        CostConfig(prices={"m": TokenPrice(input=Decimal(100_000), output=Decimal(0))},
                   budgets=(Budget(limit=Decimal("1.00")),)),
        shared=url, on_budget=alerts.append)
    assert hook.shared is not None
    await hook.shared.read("warm-up")
    await _until(start)
    for _ in range(calls):
        await _run(hook, HookContext(
            point=HookPoint.AFTER_MODEL_CALL, component=MODEL,
            data={"provider": "p", "model": "m",
                  "result": {"usage": {"input_tokens": 1, "output_tokens": 0}}}))
    # Every worker's calls are in before any asks again (a worker the machine's load
    # started late would otherwise still be spending).
    spent = Path(out).with_suffix(".spent")
    spent.write_text("", encoding="utf-8")
    deadline = time.time() + 90
    while len(list(spent.parent.glob("*.spent"))) < PROCESSES and time.time() < deadline:
        await asyncio.sleep(0.05)
    asked = await _run(hook, HookContext(point=HookPoint.BEFORE_MODEL_CALL, component=MODEL,
                                         data={"provider": "p", "model": "m",
                                               "params": {"messages": [], "max_tokens": 0}}))
    with open(out, "w", encoding="utf-8") as file:
        json.dump({"alerts": [a.level for a in alerts], "blocked": isinstance(asked, Cancel)},
                  file)


def main(argv: list[str]) -> int:
    role, url, start, amount, out = argv
    if role == "ratelimit":
        asyncio.run(ratelimit(url, float(start), float(amount), out))
    elif role == "budget":
        asyncio.run(budget(url, float(start), int(amount), out))
    else:
        raise SystemExit(f"unknown role {role!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
