"""The ``Cache`` result through the runtime: keys are scoped to the component (unless
``shared``), and a result cached at an after point is served to the next identical call."""

from __future__ import annotations

from typing import Any

from llmspell.hooks import Cache, ComponentId, ComponentType, HookContext, HookPoint
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.calls import ResultCache, cache_key

RUNS: list[str] = []


@tool("add")
def add(a: int, b: int) -> int:
    """a + b."""
    RUNS.append("add")
    return a + b


@tool("multiply")
def multiply(a: int, b: int) -> int:
    """a * b."""
    RUNS.append("multiply")
    return a * b


def params_key(ctx: HookContext) -> Cache:
    # Like the docs' example: the key leaves out the tool's name.
    params = ctx.data["params"]
    return Cache(f"{params['a']},{params['b']}", ttl=60)


async def test_cache_keys_are_scoped_to_the_tool() -> None:
    RUNS.clear()
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register_all([add, multiply])
        system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, params_key, name="cache")
        assert await system.tools.execute("add", {"a": 2, "b": 3}) == 5
        assert await system.tools.execute("multiply", {"a": 2, "b": 3}) == 6
        assert await system.tools.execute("add", {"a": 2, "b": 3}) == 5  # served
        assert RUNS == ["add", "multiply"]


async def test_a_shared_key_serves_every_tool() -> None:
    RUNS.clear()
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register_all([add, multiply])
        system.registry.register(
            HookPoint.BEFORE_TOOL_EXECUTION,
            lambda ctx: Cache("answer", shared=True), name="cache")
        assert await system.tools.execute("add", {"a": 2, "b": 3}) == 5
        run = await system.tools.run("multiply", {"a": 4, "b": 4})
        assert run.result == 5 and run.cached  # the hook said: one entry for all
        assert RUNS == ["add"]


async def test_cache_at_the_after_point_is_served_next_time() -> None:
    RUNS.clear()
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register_all([add, multiply])
        system.registry.register(HookPoint.AFTER_TOOL_EXECUTION, params_key, name="cache")
        assert await system.tools.execute("add", {"a": 2, "b": 3}) == 5
        second = await system.tools.run("add", {"a": 2, "b": 3})
        assert second.result == 5 and second.cached
        assert await system.tools.execute("add", {"a": 2, "b": 4}) == 6  # other params
        assert await system.tools.execute("multiply", {"a": 2, "b": 3}) == 6  # other tool
        assert RUNS == ["add", "add", "multiply"]


def test_cache_key_format_keeps_names_apart() -> None:
    def component(name: str) -> ComponentId:
        return ComponentId(type=ComponentType.TOOL, name=name)

    assert cache_key(component("a:b"), Cache("c")) != cache_key(component("a"), Cache("b:c"))
    assert cache_key(component("a"), Cache("k", shared=True)) == "k"


def test_result_cache_aliases_expire_with_their_entry() -> None:
    from llmspell.core import ManualClock

    clock = ManualClock()
    cache = ResultCache(max_entries=2, clock=clock)
    cache.put("k", 1, ttl=10)
    cache.alias(b"call", "k")
    assert cache.get_aliased(b"call") == (True, 1)
    clock.advance(10)
    assert cache.get_aliased(b"call") == (False, None)
    assert not cache.aliased
    for i in range(5):
        cache.alias(bytes([i]), "k")
    assert len(cache._aliases) == 2  # bounded like the entries
    cache.clear()
    assert not cache.aliased


async def test_agent_after_point_cache_is_served(tmp_path: Any) -> None:
    from llmspell.runtime.providers import ScriptedProvider

    async with System(SystemConfig(store="memory")) as system:
        system.registry.register(HookPoint.AFTER_AGENT_EXECUTION,
                                 lambda ctx: Cache("same-question", ttl=60), name="cache")
        agent = system.agents.create("helper", provider=ScriptedProvider(["x", "y"]))
        assert (await agent.run("q")).output == "x"
        assert (await agent.run("q")).output == "x"  # served, the provider not asked
