"""Pattern: a circuit breaker tuned for a slow hook.

An enrichment hook that calls a slow service must not slow every tool call down. Each hook
has a circuit breaker; ``set_breaker_config(point, config)`` tunes the breakers of one
point: here two calls slower than 20 ms open the breaker, and the hook is then skipped (it
is fail-open) for ``open_duration`` seconds, after which one probe call tests it again.
Every state change is published as ``hook.breaker.<state>``.

Run: ``python examples/patterns/14_slow_hook_breaker.py``
"""

from __future__ import annotations

import asyncio
import time

from llmspell.hooks import BreakerConfig, HookContext
from llmspell.runtime import System, SystemConfig, tool

enriched: list[int] = []


@tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def slow_enrichment(ctx: HookContext) -> None:
    """Pretends to call a slow service (60 ms) to annotate each result."""
    time.sleep(0.06)
    enriched.append(ctx.data["result"])


async def main() -> None:
    transitions: list[str] = []
    durations: list[float] = []
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(add)
        system.executor.set_breaker_config("AfterToolExecution", BreakerConfig(
            slow_call_threshold=0.02, slow_call_count=2, failure_window=60,
            open_duration=30, max_open_duration=300))
        system.registry.register("AfterToolExecution", slow_enrichment,
                                 name="slow_enrichment", error_policy="fail_open")
        system.bus.subscribe("hook.breaker.*", lambda e: transitions.append(e.event_type))
        for i in range(5):
            start = time.perf_counter()
            await system.tools.execute("add", {"a": i, "b": 1})
            durations.append((time.perf_counter() - start) * 1000)
        system.bus.flush()
    print("call durations (ms):", [round(d) for d in durations])
    print("breaker changes:", transitions, "- enriched results:", enriched)
    assert transitions == ["hook.breaker.open"]
    assert enriched == [1, 2]                     # the hook ran twice, then was skipped
    assert min(durations[:2]) >= 55                # the slow hook ran on those two calls


if __name__ == "__main__":
    asyncio.run(main())
