"""Soak regressions: what a long-lived process does again and again gives back what it took.

Each test repeats an operation N times (a few dozen to a few hundred) and checks that the
registries, maps, subscriptions, tasks and descriptors it touches do not grow with N.
"""

from __future__ import annotations

import asyncio
import gc
import os
import weakref
from pathlib import Path
from typing import Any

from llmspell.events.bus import EventBus
from llmspell.hooks import HookContext, HookPoint, HookRegistry
from llmspell.hooks import executor as executor_module
from llmspell.hooks.context import ComponentId, ComponentType
from llmspell.hooks.executor import ChainResult, HookExecutor
from llmspell.runtime import System, SystemConfig, tool
from llmspell.scripting import ScriptHost

P = HookPoint.BEFORE_TOOL_EXECUTION
# How many unregistered hooks' final breaker snapshots the executor reports.
RETIRED_BREAKERS: int = getattr(executor_module, "RETIRED_BREAKERS", 64)


def _ctx() -> HookContext:
    return HookContext(point=P, component=ComponentId(type=ComponentType.TOOL, name="t"),
                       data={})


def _fail(ctx: HookContext) -> None:
    raise RuntimeError("down")


# -- hooks registered and unregistered -------------------------------------------------------
def test_unregistered_hooks_leave_no_breaker_series_or_plan() -> None:
    registry = HookRegistry()
    executor = HookExecutor(registry)
    n = 200
    for i in range(n):
        handle = registry.register(P, lambda ctx: None, name=f"h{i}")
        executor.execute_sync(_ctx())
        registry.unregister(handle)
    assert executor.monitor is not None
    assert executor.monitor.hook_stats() == []
    assert executor._breakers == {} and executor._plans == {}
    # breakers() keeps the last few unregistered hooks' final snapshots, no more.
    assert len(executor.breakers()) == RETIRED_BREAKERS < n
    assert executor.breakers()[-1].hook == f"h{n - 1}"


def test_disabled_hook_keeps_its_breaker_and_series() -> None:
    registry = HookRegistry()
    executor = HookExecutor(registry)
    handle = registry.register(P, lambda ctx: None, name="kept")
    executor.execute_sync(_ctx())
    registry.disable(handle)
    registry.register(P, lambda ctx: None, name="other")
    registry.enable(handle)
    executor.execute_sync(_ctx())
    assert executor.breaker_for(handle.id) is not None
    assert executor.monitor is not None
    stats = executor.monitor.stats_for("kept")
    assert stats is not None and stats.count == 2


def test_an_open_breaker_of_an_unregistered_hook_no_longer_slows_every_dispatch() -> None:
    registry = HookRegistry()
    executor = HookExecutor(registry)
    bad = registry.register(P, _fail, name="flaky")
    for _ in range(5):  # fail-open failures trip its breaker
        executor.execute_sync(_ctx())
    assert any(b.state == "open" for b in executor.breakers())
    registry.unregister(bad)
    registry.register(P, lambda ctx: None, name="healthy")
    chain = registry.chain(P)
    started = executor.start_chain(chain, _ctx())
    if not isinstance(started, ChainResult):  # the old code: the guarded, async loop
        started.close()
    # Every remaining breaker is closed: the chain runs on the synchronous fast path.
    assert isinstance(started, ChainResult)
    snapshot = next(b for b in executor.breakers() if b.hook == "flaky")
    assert snapshot.state == "open"  # its final state is still reported


def test_executors_of_many_systems_over_one_registry_are_not_kept_by_it() -> None:
    registry = HookRegistry()
    for _ in range(50):
        HookExecutor(registry)
    gc.collect()
    registry.register(P, lambda ctx: None, name="x")  # a change prunes dead listeners
    assert len(registry._listeners) <= 1


async def test_script_hosts_created_and_closed_do_not_grow_the_executor() -> None:
    @tool()
    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    async with System(SystemConfig(store="none")) as system:
        system.tools.register(add)
        for _ in range(30):
            host = ScriptHost(system)
            host.run_lua('Hook.register("BeforeToolExecution", function(ctx) return nil end)')
            assert await system.tools.execute("add", {"a": 1, "b": 2}) == 3
            host.close()
        assert len(system.registry) == 0
        assert system.executor.monitor is not None
        assert system.executor.monitor.hook_stats() == []
        assert system.executor._breakers == {}


# -- streams ----------------------------------------------------------------------------------
async def test_streams_dropped_without_aclose_are_unsubscribed() -> None:
    bus = EventBus()
    try:
        for _ in range(100):
            stream = bus.stream("x.**")
            bus.publish("x.y", {})
            async for _event in stream:
                break  # a reader that stops early and never calls aclose()
            del stream
        await asyncio.sleep(0)  # the unsubscribes run on the loop
        assert bus.subscriptions() == []
        assert not bus.has_subscribers("x.y")
        assert bus.stats().dropped == 0  # each stream took its one event
    finally:
        await bus.close()


async def test_closed_and_live_streams_are_left_alone() -> None:
    bus = EventBus()
    try:
        kept = bus.stream("x.**", name="kept")
        for _ in range(50):
            stream = bus.stream("x.**")
            await stream.aclose()
            del stream
        await asyncio.sleep(0)
        assert [s.subscription for s in bus.subscriptions()] == ["kept"]
        bus.publish("x.y", {"n": 1})
        event = await kept.__anext__()
        assert event.data == {"n": 1}
        await kept.aclose()
        assert bus.subscriptions() == []
    finally:
        await bus.close()


def test_a_stream_dropped_after_its_loop_closed_is_reaped_by_the_next_stream() -> None:
    bus = EventBus()

    async def open_and_forget() -> Any:
        return bus.stream("x.**", name="forgotten")

    loop = asyncio.new_event_loop()
    try:
        stream = loop.run_until_complete(open_and_forget())
    finally:
        loop.close()
    del stream
    gc.collect()
    assert [s.subscription for s in bus.subscriptions()] == ["forgotten"]

    async def next_stream() -> None:
        stream = bus.stream("y.**", name="next")  # the bus binds to this loop now
        assert [s.subscription for s in bus.subscriptions()] == ["next"]
        await stream.aclose()

    asyncio.run(next_stream())
    assert bus.subscriptions() == []


def test_unsubscribe_does_not_keep_its_callers_locals_alive() -> None:
    class Big:
        pass

    bus = EventBus()

    def caller() -> Any:
        handle = bus.subscribe("x.**", lambda event: None)
        bus.publish("x.y", {})  # a route to retire: unsubscribe looks for publishes on it
        bus.unsubscribe(handle)
        big = Big()
        return weakref.ref(big)

    was_enabled = gc.isenabled()
    gc.disable()  # only reference counting: what a cycle would keep stays
    try:
        ref = caller()
        assert ref() is None
    finally:
        if was_enabled:
            gc.enable()
        bus.close_sync()


# -- systems opened and closed -------------------------------------------------------------
async def test_sqlite_systems_opened_and_closed_give_back_descriptors_and_tasks(
        tmp_path: Path) -> None:
    async def cycle() -> None:
        async with System(SystemConfig(store="sqlite", data_dir=tmp_path)) as system:
            await system.bus.publish_async("x.y", {"n": 1})
            await system.state.set("k", 1)

    await cycle()
    fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0
    tasks = len(asyncio.all_tasks())
    for _ in range(10):
        await cycle()
    if fds:
        assert len(os.listdir("/proc/self/fd")) == fds
    assert len(asyncio.all_tasks()) == tasks
