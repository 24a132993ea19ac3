"""Request coalescing ("single flight") of the caching hook and of the ``Cache`` result:
identical concurrent misses run the operation once; failures never spread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from llmspell.builtin import caching
from llmspell.builtin.caching import CachingConfig, CachingHook
from llmspell.errors import InvalidValueError, OperationCancelled, ToolExecutionError
from llmspell.hooks import Cache, Cancel, Fork, ForkOperation, HookContext, HookPoint
from llmspell.runtime import ResultCache, System, SystemConfig, calls, tool
from llmspell.runtime.providers.base import Message
from llmspell.runtime.providers.scripted import ScriptedProvider

N = 100


async def until(condition: Callable[[], bool], what: str) -> None:
    """Let the other tasks run until ``condition`` holds (a bounded number of turns)."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


class Gated:
    """A tool whose first ``held`` calls wait for ``gate``; counts its calls."""

    def __init__(self, held: int = 1, fail_first: bool = False, big: bool = False) -> None:
        self.gate = asyncio.Event()
        self.calls = 0
        self.held = held
        self.fail_first = fail_first
        self.big = big

        @tool("lookup")
        async def lookup(q: str) -> dict[str, Any]:
            """Look q up (slowly)."""
            self.calls += 1
            n = self.calls
            if n <= self.held:
                await self.gate.wait()
            if self.fail_first and n == 1:
                raise RuntimeError("backend down")
            return {"q": q, "n": n, "items": [n], "pad": "x" * (4096 if self.big else 0)}

        self.tool = lookup


def system_with(gated: Gated, config: CachingConfig | None = None
                ) -> tuple[System, CachingHook]:
    system = System(SystemConfig(store="none"))
    system.tools.register(gated.tool)
    hook = CachingHook(config or CachingConfig(ttl=60))
    hook.install(system.registry)
    return system, hook


async def herd(system: System, count: int, q: str = "same"
               ) -> tuple[asyncio.Task[Any], list[asyncio.Task[Any]]]:
    """One leader in flight, then ``count - 1`` identical calls waiting for it."""
    cache = system.tools.cache
    leader = asyncio.ensure_future(system.tools.execute("lookup", {"q": q}))
    await until(lambda: cache.in_flight == 1, "the leader is in flight")
    waiters = [asyncio.ensure_future(system.tools.execute("lookup", {"q": q}))
               for _ in range(count - 1)]
    await until(lambda: cache.waiting == count - 1, "every waiter waits")
    return leader, waiters


# -- the herd runs the operation once -------------------------------------------------------
async def test_identical_concurrent_tool_misses_run_the_tool_once() -> None:
    gated = Gated()
    system, hook = system_with(gated)
    leader, waiters = await herd(system, N)
    assert gated.calls == 1
    gated.gate.set()
    results = await asyncio.gather(leader, *waiters)
    assert gated.calls == 1
    assert all(r == {"q": "same", "n": 1, "items": [1], "pad": ""} for r in results)
    # Each caller has its own copy: changing one changes no other, nor the cache.
    assert len({id(r) for r in results}) == N
    results[1]["items"].append("mine")
    assert results[2]["items"] == [1] and results[0]["items"] == [1]
    assert (await system.tools.execute("lookup", {"q": "same"}))["items"] == [1]
    stats = hook.stats()
    assert (stats.misses, stats.hits, stats.served) == (1, N, N)  # N - 1 waiters + 1 above
    assert system.tools.cache.coalesced == N - 1
    assert system.tools.cache.in_flight == 0 and system.tools.cache.waiting == 0


async def test_identical_concurrent_model_calls_call_the_provider_once() -> None:
    gate = asyncio.Event()

    async def reply(messages: Any, tools: Any) -> str:
        await gate.wait()
        return f"answer {len(provider.calls)}"

    provider = ScriptedProvider(reply)
    system = System(SystemConfig(store="none"))
    hook = CachingHook(CachingConfig(ttl=60))
    hook.install(system.registry)
    cache = system.models.cache
    ask = [Message(role="user", content="hello")]
    leader = asyncio.ensure_future(system.models.call(provider, ask))
    await until(lambda: cache.in_flight == 1, "the leader is in flight")
    waiters = [asyncio.ensure_future(system.models.call(provider, ask)) for _ in range(N - 1)]
    await until(lambda: cache.waiting == N - 1, "every waiter waits")
    gate.set()
    results = await asyncio.gather(leader, *waiters)
    assert len(provider.calls) == 1
    assert {r.completion.message.content for r in results} == {"answer 1"}
    assert not results[0].replaced and all(r.replaced for r in results[1:])
    assert (hook.stats().misses, hook.stats().hits) == (1, N - 1)
    assert cache.coalesced == N - 1


async def test_the_cache_result_coalesces_too() -> None:
    gated = Gated()
    system = System(SystemConfig(store="none"))
    system.tools.register(gated.tool)
    system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION,
                             lambda ctx: Cache(ctx.data["params"]["q"], ttl=60), name="keyed")
    leader, waiters = await herd(system, 10)
    gated.gate.set()
    runs = await asyncio.gather(leader, *waiters)
    assert gated.calls == 1 and {r["n"] for r in runs} == {1}
    assert system.tools.cache.coalesced == 9 and system.tools.cache.hits == 9


# -- failures never spread --------------------------------------------------------------------
async def test_a_failing_leader_does_not_fail_its_waiters() -> None:
    gated = Gated(fail_first=True)
    system, _hook = system_with(gated)
    leader, waiters = await herd(system, 5)
    gated.gate.set()
    with pytest.raises(ToolExecutionError, match="backend down"):
        await leader
    results = await asyncio.gather(*waiters)
    # No waiter got the leader's error: each asked again, the first ran and the others were
    # served its result (this tool answers without suspending, so the first was done when
    # the next asked).
    assert [r["n"] for r in results] == [2] * 4
    assert gated.calls == 2 and system.tools.cache.in_flight == 0


async def test_a_leader_an_after_hook_cancels_shares_nothing() -> None:
    gated = Gated()
    system, _hook = system_with(gated)
    refused: list[int] = []

    def refuse_first(ctx: HookContext) -> Cancel | None:
        if ctx.data["result"]["n"] == 1:  # before the cache stores it (priority -950)
            refused.append(1)
            return Cancel("not this one")
        return None

    system.registry.register(HookPoint.AFTER_TOOL_EXECUTION, refuse_first, priority=-950)
    leader, waiters = await herd(system, 5)
    gated.gate.set()
    with pytest.raises(OperationCancelled, match="not this one"):
        await leader
    results = await asyncio.gather(*waiters)
    assert refused == [1] and gated.calls == 2
    assert [r["n"] for r in results] == [2] * 4


async def test_a_result_the_cache_does_not_keep_lets_every_waiter_run() -> None:
    gated = Gated(big=True)
    system, hook = system_with(gated, CachingConfig(ttl=60, max_bytes=1024))
    leader, waiters = await herd(system, 5)
    gated.gate.set()
    results = await asyncio.gather(leader, *waiters)
    assert sorted(r["n"] for r in results) == [1, 2, 3, 4, 5]
    assert hook.stats().skipped == 5 and hook.stats().hits == 0


async def test_a_cancelled_leader_hands_over_to_one_waiter() -> None:
    gated = Gated(held=2)
    system, hook = system_with(gated)
    leader, waiters = await herd(system, 10)
    leader.cancel()
    await until(lambda: gated.calls == 2 and system.tools.cache.waiting == 8,
                "one waiter runs in the leader's place, the others wait for it")
    assert not any(w.done() for w in waiters)
    gated.gate.set()
    results = await asyncio.gather(*waiters)
    assert leader.cancelled()
    assert gated.calls == 2 and {r["n"] for r in results} == {2}
    assert (hook.stats().misses, hook.stats().hits) == (2, 8)


async def test_a_cancelled_waiter_stops_waiting_and_nobody_else_notices() -> None:
    gated = Gated()
    system, _hook = system_with(gated)
    leader, waiters = await herd(system, 5)
    waiters[0].cancel()
    await until(lambda: system.tools.cache.waiting == 3, "the cancelled waiter left")
    gated.gate.set()
    results = await asyncio.gather(leader, *waiters[1:])
    assert waiters[0].cancelled()
    assert gated.calls == 1 and {r["n"] for r in results} == {1}


# -- invalidation during the flight ---------------------------------------------------------
async def test_a_clear_during_the_flight_caches_and_serves_nothing_stale() -> None:
    gated = Gated()
    system, hook = system_with(gated)
    leader, waiters = await herd(system, 4)
    hook.clear()
    # A call after the clear gets a result computed after it: its own, without waiting
    # for the flight the clear ended (like after ResultCache.clear).
    after = await system.tools.execute("lookup", {"q": "same"})
    assert after["n"] == 2 and not leader.done()
    gated.gate.set()
    first = await leader
    assert first["n"] == 1
    results = [*await asyncio.gather(*waiters), after]
    assert all(r["n"] != 1 for r in results)  # the leader's value was never stored
    assert (await system.tools.execute("lookup", {"q": "same"}))["n"] != 1


async def test_a_call_after_a_result_cache_clear_does_not_wait_for_the_old_flight() -> None:
    gated = Gated()
    system = System(SystemConfig(store="none"))
    system.tools.register(gated.tool)
    system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION,
                             lambda ctx: Cache(ctx.data["params"]["q"], ttl=60), name="keyed")
    leader, waiters = await herd(system, 3)
    system.tools.cache.clear()
    fresh = await system.tools.execute("lookup", {"q": "same"})  # runs now, waits for nobody
    assert fresh["n"] == 2 and not leader.done()
    gated.gate.set()
    assert (await leader)["n"] == 1
    assert all(r["n"] != 1 for r in await asyncio.gather(*waiters))


# -- what does not wait -----------------------------------------------------------------------
async def test_different_keys_never_wait_for_each_other() -> None:
    gated = Gated()
    system, _hook = system_with(gated)
    blocked = asyncio.ensure_future(system.tools.execute("lookup", {"q": "a"}))
    await until(lambda: system.tools.cache.in_flight == 1, "a is in flight")
    other = await system.tools.execute("lookup", {"q": "b"})
    assert other["q"] == "b" and not blocked.done()
    gated.gate.set()
    assert (await blocked)["q"] == "a"


@pytest.mark.parametrize("off", ["hook", "result_cache"])
async def test_coalescing_can_be_turned_off(off: str) -> None:
    gated = Gated(held=5)
    system, hook = system_with(
        gated, CachingConfig(ttl=60, coalesce=False) if off == "hook" else None)
    if off == "result_cache":
        system.tools.cache.coalesce = False
    calls_ = [asyncio.ensure_future(system.tools.execute("lookup", {"q": "same"}))
              for _ in range(5)]
    await until(lambda: gated.calls == 5, "every call runs")
    gated.gate.set()
    await asyncio.gather(*calls_)
    assert system.tools.cache.coalesced == 0 and hook.stats().misses == 5


async def test_a_call_the_leader_makes_itself_does_not_wait_for_it() -> None:
    """A before hook forks the very same call: waiting for the leader would never end."""
    gated = Gated(held=0)
    system, _hook = system_with(gated)
    forked: list[int] = []

    def fork_once(ctx: HookContext) -> Fork | None:
        if forked or ctx.parent is not None:
            return None
        forked.append(1)
        return Fork(operations=(ForkOperation(type="tool", target="lookup",
                                              parameters={"q": "same"}),))

    system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, fork_once, priority=0)
    run = await asyncio.wait_for(system.tools.run("lookup", {"q": "same"}), 30)
    assert run.result["q"] == "same" and run.forks[0]["result"]["q"] == "same"


def test_threads_using_execute_sync_coalesce() -> None:
    """Two threads, each with its own event loop: the second waits for the first."""
    release = threading.Event()
    started = threading.Event()
    runs: list[int] = []

    @tool("lookup")
    def lookup(q: str) -> dict[str, Any]:
        """Look q up (blocking the caller's loop)."""
        runs.append(1)
        started.set()
        release.wait(30)
        return {"q": q, "n": len(runs)}

    system = System(SystemConfig(store="none"))
    system.tools.register(lookup)
    CachingHook(CachingConfig(ttl=60)).install(system.registry)
    results: list[Any] = []
    first = threading.Thread(
        target=lambda: results.append(system.tools.execute_sync("lookup", {"q": "x"})))
    second = threading.Thread(
        target=lambda: results.append(system.tools.execute_sync("lookup", {"q": "x"})))
    first.start()
    assert started.wait(30)
    second.start()
    for _ in range(3000):
        if system.tools.cache.waiting == 1:
            break
        time.sleep(0.01)
    assert system.tools.cache.waiting == 1
    release.set()
    first.join(30)
    second.join(30)
    assert runs == [1] and results == [{"q": "x", "n": 1}] * 2


# -- settings and contract ----------------------------------------------------------------------
def test_settings_are_validated() -> None:
    with pytest.raises(InvalidValueError, match="coalesce must be a bool"):
        CachingConfig(coalesce="yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="coalesce must be a bool"):
        ResultCache(coalesce=1)  # type: ignore[arg-type]
    assert CachingConfig().coalesce is True and ResultCache().coalesce is True


def test_the_hook_uses_the_runtimes_metadata_name() -> None:
    assert caching._COALESCE_METADATA == calls.COALESCE_METADATA


async def test_a_before_point_cancel_leaves_nothing_in_flight() -> None:
    gated = Gated(held=0)
    system, _hook = system_with(gated)
    system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION,
                             lambda ctx: Cancel("no"), priority=0)
    with pytest.raises(OperationCancelled):
        await system.tools.execute("lookup", {"q": "same"})
    assert system.tools.cache.in_flight == 0 and gated.calls == 0




async def test_after_a_failure_the_waiters_run_side_by_side_not_one_by_one() -> None:
    """A backend that is down must not make the 5th caller wait for 4 failures in turn."""
    first, rest = asyncio.Event(), asyncio.Event()
    calls: list[int] = []

    @tool("lookup")
    async def lookup(q: str) -> str:
        """Fail, slowly."""
        calls.append(1)
        await (first if len(calls) == 1 else rest).wait()
        raise RuntimeError("backend down")

    system = System(SystemConfig(store="none"))
    system.tools.register(lookup)
    CachingHook(CachingConfig(ttl=60)).install(system.registry)
    leader, waiters = await herd(system, 5)
    first.set()
    await until(lambda: len(calls) == 5, "the four waiters all run at once")
    rest.set()
    for call in (leader, *waiters):
        with pytest.raises(ToolExecutionError, match="backend down"):
            await call
