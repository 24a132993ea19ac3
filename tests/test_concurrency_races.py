"""Races when many tasks share one System: budgets, caches and sessions under asyncio.

The interleavings are made deterministic with Events: a provider, tool or hook waits on a
gate, so every task is inside the critical section before any leaves it.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from llmspell.builtin.caching import CachingConfig, CachingHook, TtlLruCache
from llmspell.builtin.cost import Budget, CostConfig, CostTrackingHook, TokenPrice
from llmspell.errors import SessionError
from llmspell.hooks import HookContext, HookPoint
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.providers import ScriptedProvider


async def _until(predicate: Any, rounds: int = 200) -> None:
    """Yield to the loop until ``predicate()`` holds (no wall clock involved)."""
    for _ in range(rounds):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("the tasks never reached the gate")


# -- cost budgets ---------------------------------------------------------------------------
def _budget_hook() -> CostTrackingHook:
    # Every call is estimated at exactly 1 (one output token at 1,000,000 per 1M); the
    # budget blocks at 10 spent + reserved.
    return CostTrackingHook(
        CostConfig(prices={"m": TokenPrice(input=Decimal(0), output=Decimal(1_000_000))},
                   budgets=(Budget(limit=Decimal(10)),), default_max_tokens=1),
        tokenizer=lambda text: 0)


class _Gated:
    """Providers (model ``m``) whose answers all wait for ``gate``; ``inside`` counts the
    calls that reached it."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.inside = 0

    async def _answer(self, messages: Any, tools: Any) -> str:
        self.inside += 1
        await self.gate.wait()
        return "ok"

    def provider(self) -> ScriptedProvider:
        return ScriptedProvider(self._answer, model="m", name="p")


async def test_concurrent_calls_never_reserve_past_the_budget() -> None:
    gated = _Gated()
    hook = _budget_hook()
    async with System(SystemConfig(store="memory")) as system:
        hook.install(system.registry)
        agents = [system.agents.create(f"a{i}", provider=gated.provider())
                  for i in range(100)]
        tasks = [asyncio.create_task(agent.run("hi")) for agent in agents]
        await _until(lambda: sum(t.done() for t in tasks) == 90 and gated.inside == 10)
        assert hook.stats().reserved == 10  # all ten in flight hold their estimate
        gated.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in results) == 10
    assert hook.stats().reserved == 0


async def test_a_call_cancelled_in_flight_gives_its_reservation_back() -> None:
    gated = _Gated()
    hook = _budget_hook()
    async with System(SystemConfig(store="memory")) as system:
        hook.install(system.registry)
        tasks = [asyncio.create_task(system.agents.create(
            f"a{i}", provider=gated.provider()).run("hi")) for i in range(10)]
        await _until(lambda: gated.inside == 10)
        assert hook.stats().reserved == 10  # the budget is now fully reserved
        for task in tasks:  # e.g. the clients of a web server went away
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)  # the tasks' done-callbacks run
        assert hook.stats().reserved == 0
        gated.gate.set()
        # The budget is usable again (before the fix: blocked until reservation_ttl).
        agent = system.agents.create("after", provider=gated.provider())
        await agent.run("hi")
    assert hook.stats().reserved == 0


# -- caching --------------------------------------------------------------------------------
def test_a_value_computed_across_an_invalidation_is_not_stored() -> None:
    cache = TtlLruCache()
    since = cache.generation
    cache.invalidate("k")  # the data behind "k" changed while the call ran
    assert cache.put("k", "stale", since=since) is False
    assert cache.get("k") == (False, None)
    since = cache.generation
    assert cache.put("k", "fresh", since=since) is True
    cache.clear()
    assert cache.put("k", "stale", since=since) is False
    assert cache.get("k") == (False, None)


async def test_caching_hook_does_not_store_a_result_computed_before_invalidate() -> None:
    started = asyncio.Event()
    gate = asyncio.Event()
    version = {"n": 1}
    runs = 0

    @tool("read")
    async def read(key: str) -> int:
        """Read the current value."""
        nonlocal runs
        runs += 1
        seen = version["n"]
        started.set()
        await gate.wait()
        return seen

    hook = CachingHook()
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(read)
        hook.install(system.registry)
        slow = asyncio.create_task(system.tools.execute("read", {"key": "k"}))
        await started.wait()
        # The data changes and its owner invalidates the cache, while the call is running.
        version["n"] = 2
        hook.clear()
        gate.set()
        assert await slow == 1
        # Before the fix the stale 1 was cached after the clear and served from now on.
        assert await system.tools.execute("read", {"key": "k"}) == 2
        assert await system.tools.execute("read", {"key": "k"}) == 2
        assert runs == 2  # the fresh value was cached


async def test_a_failing_call_is_not_cached_for_the_callers_waiting_with_it() -> None:
    gate = asyncio.Event()
    calls = 0

    @tool("flaky")
    async def flaky(x: int) -> int:
        """Fail the first wave, then answer."""
        nonlocal calls
        calls += 1
        if not gate.is_set():
            await gate.wait()
            raise RuntimeError("boom")
        return x

    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(flaky)
        # Every call runs (coalesced waiters: tests/builtin/test_cache_coalescing.py).
        CachingHook(CachingConfig(coalesce=False)).install(system.registry)
        tasks = [asyncio.create_task(system.tools.execute("flaky", {"x": 1}))
                 for _ in range(50)]
        await _until(lambda: calls == 50)
        gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, BaseException) for r in results)
        assert await system.tools.execute("flaky", {"x": 1}) == 1


# -- sessions -------------------------------------------------------------------------------
async def test_two_tasks_ending_one_session_fire_session_end_once() -> None:
    gate = asyncio.Event()
    ends: list[str] = []

    async def slow_end(ctx: HookContext) -> None:
        ends.append(ctx.data["session_id"])
        await gate.wait()

    async with System(SystemConfig(store="memory")) as system:
        system.registry.register(HookPoint.SESSION_END, slow_end, name="slow-end")
        ended: list[str] = []
        system.bus.subscribe("session.ended", lambda e: ended.append(e.event_type))
        session = await system.sessions.start("chat")
        first = asyncio.create_task(session.end())
        await _until(lambda: len(ends) == 1)
        with pytest.raises(SessionError, match="already being ended"):
            await session.end()
        gate.set()
        await first
        assert ends == [session.id] and not session.active
        with pytest.raises(SessionError, match="has ended"):
            await session.end()
    assert ended == ["session.ended"]


async def test_a_stale_session_object_cannot_bring_an_ended_session_back() -> None:
    async with System(SystemConfig(store="memory")) as system:
        session = await system.sessions.start("chat")
        other = await system.sessions.load(session.id)  # another request's handle
        await session.end()
        with pytest.raises(SessionError, match="ended elsewhere"):
            await other.save()
        assert not other.active  # the handle learnt it ended
        assert (await system.sessions.load(session.id)).status == "ended"
        assert [s.id for s in await system.sessions.list(status="active")] == []


async def test_concurrent_saves_and_state_writes_of_many_sessions_all_land() -> None:
    async with System(SystemConfig(store="memory")) as system:
        sessions = await asyncio.gather(*(system.sessions.start(f"s{i}") for i in range(50)))
        await asyncio.gather(*(s.set("n", i) for i, s in enumerate(sessions)),
                             *(s.save() for s in sessions))
        assert sorted(await asyncio.gather(*(s.get("n") for s in sessions))) == list(range(50))
        assert len(await system.sessions.list(status="active")) == 50
