"""Script hosts created and closed again and again keep nothing: counted in live objects
(the collector's), not in RSS, which the allocator moves by a few kilobytes either way."""

from __future__ import annotations

import abc
import asyncio
import collections
import gc
import weakref
from collections.abc import Callable
from typing import Any

from llmspell.runtime import System, SystemConfig
from llmspell.scripting import ScriptHost

CYCLES = 150
WARM_UP = 30
SLACK = 15
"""Objects the process may gain over :data:`CYCLES` cycles once warm. A leak of one object
per cycle is ten times this."""

_LUA = """
Event.subscribe("x.*", function(e) end)
local id = Event.subscribe("y.*")
Hook.register("BeforeToolExecution", function(ctx) return nil end)
Event.publish("x.a", {n = 1})
Event.publish("y.a", {n = 2})
return Event.receive(id, 1)
"""
_JS = """
Event.subscribe("x.*", (e) => {});
Hook.register("BeforeToolExecution", (ctx) => null);
Event.publish("x.a", {n: 1});
return 1;
"""
_WATCHED = ("ScriptHost", "LuaEngine", "JsEngine", "HostAPI", "LuaBindings", "JsBindings",
            "LuaRuntime", "Context", "_Subscription", "ScriptHook")


def _census() -> tuple[int, collections.Counter[str]]:
    """Live objects: how many, and how many of the script machinery's types. The caches
    of ``isinstance`` checks against ABCs (weak references, emptied whenever a class is
    registered with any ABC, then filled again) are cleared first: they come and go."""
    gc.collect()
    for cls in [o for o in gc.get_objects() if isinstance(o, abc.ABCMeta)]:
        cls._abc_caches_clear()  # type: ignore[attr-defined]
    gc.collect()
    objects = gc.get_objects()
    watched = collections.Counter(type(o).__name__ for o in objects
                                  if type(o).__name__ in _WATCHED)
    return len(objects), watched


def _repeat(cycle: Callable[[], Any]) -> None:
    """Run ``cycle`` (returning the objects it made) to warm up, then :data:`CYCLES` times
    twice: over the second round the live objects must come back to their count (the
    first round fills what fills once: type caches of ``isinstance`` checks, say), and
    what one more cycle makes must be collected."""
    for _ in range(WARM_UP):
        cycle()
    for _ in range(CYCLES):
        cycle()
    total, watched = _census()
    for _ in range(CYCLES):
        cycle()
    after_total, after_watched = _census()
    assert after_watched == watched, f"script objects left: {after_watched - watched}"
    assert after_total - total < SLACK, (
        f"{after_total - total} objects gained over {CYCLES} create/close cycles")
    refs = [weakref.ref(o) for o in cycle()]
    gc.collect()
    assert [r() for r in refs if r() is not None] == []


def _made(host: ScriptHost) -> list[Any]:
    return [host, host.engine, host.bindings.api, host.js, host.js.engine, host.js.api]


def test_hosts_running_lua_and_js_from_sync_code_leave_no_objects() -> None:
    system = System(SystemConfig(store="none"))

    def cycle() -> list[Any]:
        host = ScriptHost(system)
        try:
            assert host.run_lua(_LUA) is not None
            assert host.run_js(_JS) == 1
        finally:
            host.close()
        return _made(host)

    _repeat(cycle)
    assert system.bus.subscriptions() == [] and len(system.registry) == 0


def test_hosts_whose_scripts_fail_leave_no_objects() -> None:
    system = System(SystemConfig(store="none"))

    def cycle() -> list[Any]:
        host = ScriptHost(system)
        try:
            for run in (lambda: host.run_lua('Event.subscribe("x.*", function(e) end) '
                                             'error("fails")'),
                        lambda: host.run_js('Event.subscribe("x.*", (e) => {}); '
                                            'throw new Error("fails");')):
                try:
                    run()
                except Exception as exc:
                    assert "fails" in str(exc)
        finally:
            host.close()
        return _made(host)

    _repeat(cycle)
    assert system.bus.subscriptions() == [] and len(system.registry) == 0


def test_hosts_never_used_and_never_closed_leave_no_objects() -> None:
    system = System(SystemConfig(store="none"))

    def cycle() -> list[Any]:
        host = ScriptHost(system)
        return _made(host)  # no close(): it registered nothing, so nothing holds it

    _repeat(cycle)


def test_hosts_running_from_async_code_leave_no_objects() -> None:
    async def main() -> None:
        async with System(SystemConfig(store="none")) as system:
            made: list[list[Any]] = []

            async def run_one() -> None:
                host = ScriptHost(system)
                try:
                    await host.run_lua_async(_LUA)
                    await host.run_js_async(_JS)
                finally:
                    host.close()
                made.append(_made(host))

            for _ in range(WARM_UP + CYCLES):
                await run_one()
            made.clear()
            total, watched = _census()
            for _ in range(CYCLES):
                await run_one()
            refs = [weakref.ref(o) for o in made.pop()]
            made.clear()
            for _ in range(3):  # callbacks the last cycle scheduled
                await asyncio.sleep(0)
            after_total, after_watched = _census()
            assert after_watched == watched, f"script objects left: {after_watched - watched}"
            assert after_total - total < SLACK
            assert [r for r in refs if r() is not None] == []
            assert system.bus.subscriptions() == [] and len(system.registry) == 0

    asyncio.run(main())
