"""Hook events built from the executor's fast path (every hook went on): the same data as
from the full loop, plain JSON, the run's id in the metadata, in pure Python too."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from llmspell.events import UniversalEvent
from llmspell.hooks import ComponentId, ComponentType, HookContext, HookPoint, Modified
from llmspell.hooks.executor import ContinuedRecords
from llmspell.runtime import System, SystemConfig


def _plain(value: object) -> bool:
    if isinstance(value, dict):
        return type(value) is dict and all(type(k) is str and _plain(v)
                                           for k, v in value.items())
    if isinstance(value, list):
        return type(value) is list and all(_plain(v) for v in value)
    return type(value) in (str, int, float, bool, type(None))


async def test_a_fast_path_dispatch_publishes_every_hooks_columns() -> None:
    async with System(SystemConfig(store="memory")) as system:
        seen: list[UniversalEvent] = []
        system.bus.subscribe("hook.**", seen.append)
        for name in ("a", "b", "c"):
            system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, lambda c: None,
                                     name=name)
        component = ComponentId(type=ComponentType.TOOL, name="t")
        outcome, _ = await system.dispatch(HookPoint.BEFORE_TOOL_EXECUTION, component,
                                           {"x": 1})
        # The fast path kept the record in columns: the event has it, the outcome does not.
        assert outcome.records == () and outcome.hooks_run == 3
        (event,) = seen
        data = event.data
        assert _plain(data)
        assert data["hooks"] == ["a", "b", "c"]
        assert data["kinds"] == ["continue"] * 3
        assert data["details"] == [None] * 3
        assert len(data["durations_ns"]) == 3
        assert all(type(d) is int and d >= 0 for d in data["durations_ns"])
        assert (data["point"], data["component_type"], data["component"], data["result"]) \
            == ("before_tool_execution", "tool", "t", "continue")
        assert event.metadata.source == "llmspell.hooks"
        assert event.metadata.run_id is None  # outside a run
        # Every event has lists of its own: what a subscriber does to one changes no other.
        for key in ("hooks", "kinds", "durations_ns", "details"):
            data[key].clear()
        await system.dispatch(HookPoint.BEFORE_TOOL_EXECUTION, component, {"x": 2})
        second = seen[1].data
        assert second["hooks"] == ["a", "b", "c"] and second["kinds"] == ["continue"] * 3
        assert len(second["durations_ns"]) == 3 and second["details"] == [None] * 3


async def test_a_recorded_executor_still_gives_records_from_the_fast_path() -> None:
    async with System(SystemConfig(store="memory")) as system:
        system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, lambda c: None, name="a")
        system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, lambda c: None, name="b")
        ctx = HookContext(point=HookPoint.BEFORE_TOOL_EXECUTION,
                          component=ComponentId(type=ComponentType.TOOL, name="t"), data={})
        outcome = await system.executor.execute(ctx, record=True)
        assert type(outcome.records) is ContinuedRecords
        assert [(r.hook, r.kind) for r in outcome.records] == [("a", "continue"),
                                                                ("b", "continue")]
        assert outcome.records.durations_ns == [r.duration_ns for r in outcome.records]


async def test_the_full_loop_and_the_fast_path_publish_the_same_shape() -> None:
    async with System(SystemConfig(store="memory")) as system:
        seen: list[UniversalEvent] = []
        system.bus.subscribe("hook.**", seen.append)
        system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, lambda c: None, name="a")
        system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION,
                                 lambda c: Modified({"x": 2}), name="m")
        outcome, _ = await system.dispatch(
            HookPoint.BEFORE_TOOL_EXECUTION, ComponentId(type=ComponentType.TOOL, name="t"),
            {"x": 1})
        assert type(outcome.records) is not ContinuedRecords
        (event,) = seen
        assert _plain(event.data)
        assert event.data["hooks"] == ["a", "m"]
        assert event.data["kinds"] == ["continue", "modified"]
        assert event.data["details"] == [None, None]


async def test_a_hook_event_inside_a_run_carries_the_runs_id() -> None:
    async with System(SystemConfig(store="memory")) as system:
        seen: list[UniversalEvent] = []
        system.bus.subscribe("hook.**", seen.append)
        system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, lambda c: None, name="a")
        async with system.runs.start("job", "j", {}) as run:
            await system.dispatch(HookPoint.BEFORE_TOOL_EXECUTION,
                                  ComponentId(type=ComponentType.TOOL, name="t"), {})
        (event,) = seen
        assert event.metadata.run_id == run.run_id


def test_hook_event_data_is_plain_in_pure_python_mode() -> None:
    script = textwrap.dedent("""
        import asyncio
        from llmspell.core import speedups
        from llmspell.hooks import ComponentId, ComponentType, HookPoint
        from llmspell.runtime import System, SystemConfig

        async def main():
            assert not speedups.ENABLED
            async with System(SystemConfig(store="memory")) as system:
                seen = []
                system.bus.subscribe("hook.**", seen.append)
                system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, lambda c: None,
                                         name="a")
                await system.dispatch(HookPoint.BEFORE_TOOL_EXECUTION,
                                      ComponentId(type=ComponentType.TOOL, name="t"), {})
                (event,) = seen
                assert type(event.data) is dict, type(event.data)
                assert event.data["hooks"] == ["a"] and event.data["kinds"] == ["continue"]
            print("ok")

        asyncio.run(main())
    """)
    env = {**os.environ, "LLMSPELL_PURE_PYTHON": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
