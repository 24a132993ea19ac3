"""Whether a dispatch publishes a hook event is decided once per subscription change (the
bus's ``subscription_generation``), not per dispatch: a subscription made or dropped
between two dispatches changes what the next one does, and hook events of calls with
different correlation or run ids each carry their own (the metadata is reused only for the
same ones)."""

from __future__ import annotations

from llmspell.events import UniversalEvent
from llmspell.hooks import ComponentId, ComponentType, HookPoint
from llmspell.runtime import System, SystemConfig

POINT = HookPoint.BEFORE_TOOL_EXECUTION
TOOL = ComponentId(type=ComponentType.TOOL, name="t")


async def test_subscribing_and_unsubscribing_between_dispatches_is_seen_at_once() -> None:
    async with System(SystemConfig(store="none")) as system:
        system.registry.register(POINT, lambda c: None, name="a")
        quiet, _ = await system.dispatch(POINT, TOOL, {})
        assert quiet.records == ()  # nobody listens: no records collected
        generation = system.bus.subscription_generation
        seen: list[UniversalEvent] = []
        elsewhere = system.bus.subscribe("tool.**", seen.append)
        assert system.bus.subscription_generation > generation
        again, _ = await system.dispatch(POINT, TOOL, {})
        assert again.records == () and seen == []  # a pattern hook events do not match
        handle = system.bus.subscribe("hook.before_tool_execution", seen.append)
        await system.dispatch(POINT, TOOL, {})
        assert [e.event_type for e in seen] == ["hook.before_tool_execution"]
        assert seen[0].data["hooks"] == ["a"]
        assert system.bus.unsubscribe(handle)
        gone, _ = await system.dispatch(POINT, TOOL, {})
        assert gone.records == () and len(seen) == 1
        system.bus.unsubscribe(elsewhere)


async def test_a_stored_system_publishes_hook_events_with_nobody_listening() -> None:
    config = SystemConfig(store="memory", persist_hook_events=True)
    async with System(config) as system:
        system.registry.register(POINT, lambda c: None, name="a")
        await system.dispatch(POINT, TOOL, {})
        assert system.store is not None
        stored = system.store.query(pattern="hook.**")
        assert [e.event_type for e in stored] == ["hook.before_tool_execution"]
        assert stored[0].data["hooks"] == ["a"]


async def test_each_hook_event_carries_its_own_calls_correlation_id() -> None:
    async with System(SystemConfig(store="none")) as system:
        seen: list[UniversalEvent] = []
        system.bus.subscribe("hook.**", seen.append)
        system.registry.register(POINT, lambda c: None, name="a")
        for correlation in ("one", "one", "two", "one"):
            await system.dispatch(POINT, TOOL, {}, correlation_id=correlation)
        assert [e.metadata.correlation_id for e in seen] == ["one", "one", "two", "one"]
        assert all(e.metadata.source == "llmspell.hooks" for e in seen)


async def test_hook_events_inside_a_run_carry_the_runs_id_and_outside_none() -> None:
    async with System(SystemConfig(store="memory")) as system:
        seen: list[UniversalEvent] = []
        system.bus.subscribe("hook.**", seen.append)
        system.registry.register(POINT, lambda c: None, name="a")
        await system.dispatch(POINT, TOOL, {}, correlation_id="c")
        async with system.runs.start("job", "j") as run:
            await system.dispatch(POINT, TOOL, {}, correlation_id="c")
        await system.dispatch(POINT, TOOL, {}, correlation_id="c")
        assert [e.metadata.run_id for e in seen] == [None, run.run_id, None]
