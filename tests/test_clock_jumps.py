"""Wall-clock jumps (NTP steps, a laptop waking, a VM restored, an admin setting the date).

Durations, rates and refill times must not follow the wall clock; values that are wall time
on purpose (shared across processes, calendar windows) must survive a jump with bounded
damage. Each test injects a clock whose wall time jumps while its monotonic time runs on.
"""

from __future__ import annotations

import asyncio
import time
import types
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from llmspell.builtin.cost import Budget, CostConfig, CostTrackingHook, TokenPrice
from llmspell.builtin.counters import MemoryCounters
from llmspell.builtin.rate_limit import RateLimitConfig, RateLimitHook
from llmspell.events.event import UniversalEvent
from llmspell.hooks import ComponentId, ComponentType, HookContext, HookPoint
from llmspell.hooks.result import Cancel
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.providers.scripted import ScriptedProvider
from llmspell.runtime.runs import lifecycle
from llmspell.viewer import hub as hub_module

HOUR = 3600.0


class JumpClock:
    """A :class:`~llmspell.core.clock.Clock` whose wall time can jump either way while its
    monotonic time only moves forward with :meth:`advance`."""

    def __init__(self, wall: float = 1_700_000_000.0) -> None:
        self._mono = 0.0
        self._wall = wall

    def monotonic(self) -> float:
        return self._mono

    def now(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        self._mono += seconds
        self._wall += seconds

    def jump(self, seconds: float) -> None:
        self._wall += seconds


async def _run(hook: Any, ctx: HookContext) -> Any:
    out = hook.execute(ctx)
    if asyncio.iscoroutine(out):
        out = await out
    return out


# -- shared rate-limit buckets --------------------------------------------------------------
def _tool_ctx() -> HookContext:
    return HookContext(point=HookPoint.BEFORE_TOOL_EXECUTION,
                       component=ComponentId(type=ComponentType.TOOL, name="search"),
                       data={"params": {}})


@pytest.mark.parametrize("jump", [-HOUR, HOUR])
async def test_a_wall_clock_jump_does_not_stop_a_shared_bucket_refilling_for_its_size(
        jump: float) -> None:
    # Set back: the bucket's stored time is an hour ahead of the clock. Set forward and back
    # again (another writer's clock, or NTP undoing a wrong step): the same. Under steady
    # traffic (each write renews the key's ttl) the old code refilled nothing for an hour.
    clock = JumpClock()
    hook = RateLimitHook(RateLimitConfig(rate=1.0, burst=2), clock=clock,
                         shared=MemoryCounters(clock=clock))
    if jump > 0:
        clock.jump(jump)
    assert await _run(hook, _tool_ctx()) is None
    assert await _run(hook, _tool_ctx()) is None
    assert isinstance(await _run(hook, _tool_ctx()), Cancel)  # empty
    clock.jump(-HOUR if jump > 0 else jump)
    allowed = 0
    for _ in range(40):                                         # 20 s, a call every 0.5 s
        clock.advance(0.5)
        allowed += await _run(hook, _tool_ctx()) is None
    # At most 3.3 s (the bucket's ttl) without refill, then a token per second.
    assert 15 <= allowed <= 21


async def test_a_small_skew_between_processes_still_refills_nothing_backwards() -> None:
    # Within the bucket's ttl a clock behind the last writer's refills nothing (as before):
    # the bound only applies to jumps larger than the time a bucket takes to refill.
    clock = JumpClock()
    hook = RateLimitHook(RateLimitConfig(rate=1.0, burst=1), clock=clock,
                         shared=MemoryCounters(clock=clock))
    assert await _run(hook, _tool_ctx()) is None
    clock.jump(-1.0)
    clock.advance(0.9)
    assert isinstance(await _run(hook, _tool_ctx()), Cancel)


# -- budget windows -------------------------------------------------------------------------
async def test_a_clock_set_back_over_an_hour_boundary_does_not_reset_an_hourly_budget() -> None:
    clock = JumpClock(wall=1000 * HOUR + 60.0)  # a minute into an hour
    prices = {"m": TokenPrice(input=Decimal(100_000), output=Decimal(0))}  # $0.10 a token
    hook = CostTrackingHook(CostConfig(prices=prices, budgets=(
        Budget(limit=Decimal("0.5"), window="hour"),)), clock=clock)
    hook.record({"provider": "p", "model": "m", "input": 5, "output": 0})
    assert hook.budget_status()[0].spent == Decimal("0.5")
    ask = HookContext(point=HookPoint.BEFORE_MODEL_CALL,
                      component=ComponentId(type=ComponentType.MODEL, name="p/m"),
                      data={"provider": "p", "model": "m",
                            "params": {"messages": [], "max_tokens": 0}})
    assert isinstance(await _run(hook, ask), Cancel)
    clock.jump(-120.0)                        # back into the previous hour
    assert hook.budget_status()[0].spent == Decimal("0.5")
    assert isinstance(await _run(hook, ask), Cancel)
    clock.advance(120.0)                      # caught up: the same window, still spent
    assert hook.budget_status()[0].spent == Decimal("0.5")
    clock.advance(HOUR)                       # the next hour starts from zero
    assert hook.budget_status()[0].spent == 0


# -- run durations --------------------------------------------------------------------------
@tool()
def set_clock_back(city: str) -> dict[str, str]:
    """A tool that runs while the wall clock is set back an hour."""
    _WALL["offset"] = -HOUR
    return {"city": city}


_WALL = {"offset": 0.0}


@pytest.fixture
async def system(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[System]:
    _WALL["offset"] = 0.0
    fake = types.SimpleNamespace(time=lambda: time.time() + _WALL["offset"],
                                 perf_counter=time.perf_counter, monotonic=time.monotonic)
    monkeypatch.setattr(lifecycle, "time", fake)
    sys = System(SystemConfig(store="memory"))
    await sys.start()
    sys.tools.register(set_clock_back)
    yield sys
    await sys.shutdown()


async def test_a_run_duration_is_not_wall_time(system: System) -> None:
    ended: list[UniversalEvent] = []
    system.bus.subscribe("run.completed", ended.append, mode="inline")
    system.agents.create("a", tools=["set_clock_back"], provider=ScriptedProvider([
        {"tool_calls": [{"name": "set_clock_back", "arguments": {"city": "Oslo"}}]},
        "Done."]))
    await system.agents.get("a").run("go")
    (event,) = ended
    # The old code measured time.time() - started: about -3 600 000 ms.
    assert 0 <= event.data["duration_ms"] < 60_000


# -- viewer rates and uptime ----------------------------------------------------------------
class _Source:
    def describe(self) -> dict[str, str]:
        return {"kind": "test"}

    def format_id(self, cursor: int) -> str:
        return str(cursor)


def test_viewer_uptime_and_rates_do_not_follow_the_wall_clock(
        monkeypatch: pytest.MonkeyPatch) -> None:
    wall = {"offset": 0.0}
    fake = types.SimpleNamespace(time=lambda: time.time() + wall["offset"],
                                 monotonic=time.monotonic)
    monkeypatch.setattr(hub_module, "time", fake)
    hub = hub_module.Hub(_Source())  # type: ignore[arg-type]
    hub._take([(1, UniversalEvent(event_type="a.b", data={}))])
    wall["offset"] = -HOUR
    stats = hub_module.msgspec.json.decode(hub.stats_json())
    assert 0 <= stats["uptime_s"] < 60
