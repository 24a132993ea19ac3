"""The runtime's ``Cache`` result under hostile use: an after point's alias never serves
one caller's result to another, an error point's fallback is never cached as the
operation's answer, and :class:`ResultCache` is bounded in bytes (a value too large is
simply not cached)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from llmspell.errors import InvalidValueError, ProviderError
from llmspell.hooks import (
    Cache,
    ComponentId,
    ComponentType,
    HookContext,
    HookPoint,
    Replace,
)
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.calls import ResultCache, current_context

ORDERS = {"ann": ["ann-1"], "bob": ["bob-1"]}


def caller(user: str | None, session: str | None = None) -> HookContext:
    metadata = {} if user is None else {"user": user}
    if session is not None:
        metadata["session"] = session
    return HookContext(point=HookPoint.SESSION_START,
                       component=ComponentId(type=ComponentType.TOOL, name="app"),
                       metadata=metadata)


def orders_system(runs: list[str]) -> System:
    @tool("get_my_orders")
    def get_my_orders() -> list[str]:
        """The orders of the caller."""
        ctx = current_context()
        user = ctx.metadata.get("user", "nobody") if ctx is not None else "nobody"
        runs.append(user)
        return ORDERS.get(user, [])

    system = System(SystemConfig(store="memory"))
    system.tools.register(get_my_orders)
    system.registry.register(
        HookPoint.AFTER_TOOL_EXECUTION,
        lambda ctx: Cache(f"orders:{ctx.metadata.get('user')}", ttl=60), name="cache")
    return system


# -- 1. the after point's alias is per caller -------------------------------------------
async def test_an_after_point_alias_never_serves_another_users_result() -> None:
    runs: list[str] = []
    async with orders_system(runs) as system:
        execute = system.tools.execute
        assert await execute("get_my_orders", {}, parent=caller("ann")) == ["ann-1"]
        assert await execute("get_my_orders", {}, parent=caller("bob")) == ["bob-1"]
        served = await system.tools.run("get_my_orders", {}, parent=caller("ann"))
        assert served.result == ["ann-1"] and served.cached  # her own alias still serves
        assert await execute("get_my_orders", {}) == []  # no user: not ann's either
    assert runs == ["ann", "bob", "nobody"]


async def test_an_after_point_alias_is_per_session_too() -> None:
    runs: list[str] = []
    async with orders_system(runs) as system:
        for session in ("s1", "s2", "s1"):
            await system.tools.execute("get_my_orders", {},
                                       parent=caller("ann", session))
    assert runs == ["ann", "ann"]  # s2 ran; s1's second call was served


async def test_a_tool_run_from_a_tool_keeps_its_callers_alias() -> None:
    # The inner call has no parent: its caller comes from the operation it runs in.
    runs: list[str] = []
    async with orders_system(runs) as system:
        @tool("outer")
        async def outer() -> Any:
            """Runs get_my_orders."""
            return await system.tools.execute("get_my_orders", {})

        system.tools.register(outer)
        assert await system.tools.execute("outer", {}, parent=caller("ann")) == ["ann-1"]
        assert await system.tools.execute("outer", {}, parent=caller("bob")) == ["bob-1"]
    assert runs == ["ann", "bob"]


# -- 2. an error point's fallback is not cached -----------------------------------------
async def test_an_error_fallback_is_not_cached_by_a_before_cache() -> None:
    state = {"down": True, "runs": 0}

    @tool("flaky")
    def flaky(q: str) -> str:
        """Fails while the service is down."""
        state["runs"] += 1
        if state["down"]:
            raise RuntimeError("service down")
        return f"answer to {q}"

    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(flaky)
        system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION,
                                 lambda ctx: Cache("k", ttl=600), name="cache")
        system.registry.register(HookPoint.TOOL_ERROR,
                                 lambda ctx: Replace("fallback: try later"), name="fallback")
        first = await system.tools.run("flaky", {"q": "x"})
        assert first.result == "fallback: try later" and not first.cached
        state["down"] = False
        second = await system.tools.run("flaky", {"q": "x"})
        assert second.result == "answer to x" and not second.cached  # ran: service back
        third = await system.tools.run("flaky", {"q": "x"})
        assert third.result == "answer to x" and third.cached  # the real answer is cached
    assert state["runs"] == 2


async def test_an_agent_error_fallback_is_not_cached() -> None:
    from llmspell.runtime.providers import ScriptedProvider

    state = {"down": True}

    def reply(messages: Any, tools: Any) -> str:
        if state["down"]:
            raise ProviderError("provider down", hint="try later")
        return "real"

    async with System(SystemConfig(store="memory")) as system:
        system.registry.register(HookPoint.BEFORE_AGENT_EXECUTION,
                                 lambda ctx: Cache("q", ttl=600), name="cache")
        system.registry.register(HookPoint.AGENT_ERROR, lambda ctx: Replace("fallback"),
                                 name="fallback")
        agent = system.agents.create("helper", provider=ScriptedProvider(reply))
        first = await agent.run("q")
        state["down"] = False
        second = await agent.run("q")
    assert "fallback" in str(first.output) and second.output == "real"


# -- 3. the byte bound -------------------------------------------------------------------
def test_a_value_over_the_entry_bound_is_not_cached(caplog: pytest.LogCaptureFixture) -> None:
    cache = ResultCache(max_entry_bytes=1000, max_bytes=10_000)
    with caplog.at_level(logging.WARNING, logger="llmspell.cache"):
        cache.put("big", "x" * 5000, None)  # never raises: simply not cached
        cache.put("big2", ["x" * 5000], None)
    assert cache.get("big") == (False, None) and cache.get("big2") == (False, None)
    assert cache.refused == 2 and cache.stored_bytes == 0 and len(cache) == 0
    assert len([r for r in caplog.records if r.name == "llmspell.cache"]) == 1  # once
    cache.put("small", "x" * 100, None)
    assert cache.get("small") == (True, "x" * 100)
    assert 100 < cache.stored_bytes < 200


def test_a_too_large_value_drops_the_stale_entry_it_replaces() -> None:
    cache = ResultCache(max_entry_bytes=1000)
    cache.put("k", "old", None)
    cache.put("k", "y" * 5000, None)
    assert cache.get("k") == (False, None) and cache.stored_bytes == 0


def test_the_total_bound_evicts_least_recently_used() -> None:
    cache = ResultCache(max_entry_bytes=1000, max_bytes=2500)
    for key in ("a", "b"):
        cache.put(key, "x" * 900, None)
    assert cache.get("a")[0]  # a is now the most recently used
    cache.put("c", "x" * 900, None)
    assert [k for k in "abc" if cache.get(k)[0]] == ["a", "c"]
    assert cache.stored_bytes <= 2500 and cache.refused == 0


def test_deep_and_cyclic_values_are_measured_and_bounded() -> None:
    cache = ResultCache(max_entry_bytes=10_000)
    deep: list[Any] = []
    node = deep
    for _ in range(50_000):  # deeper than the recursion limit: measured by a walk
        node.append([])
        node = node[0]
    cache.put("deep", deep, None)
    assert cache.get("deep") == (False, None) and cache.refused == 1  # 100 KB of brackets
    cyclic: dict[str, Any] = {"a": "x" * 10}
    cyclic["self"] = cyclic
    cache.put("cyclic", cyclic, None)
    got = cache.get("cyclic")[1]
    assert got["self"] is got and 0 < cache.stored_bytes < 100


def test_one_huge_value_is_not_kept_by_default() -> None:
    from llmspell.runtime.calls import RESULT_CACHE_MAX_BYTES, RESULT_CACHE_MAX_ENTRY_BYTES

    cache = ResultCache()
    huge = "z" * (RESULT_CACHE_MAX_ENTRY_BYTES + 1)
    cache.put("k", huge, 60)
    assert cache.get("k") == (False, None) and cache.refused == 1
    assert RESULT_CACHE_MAX_ENTRY_BYTES <= RESULT_CACHE_MAX_BYTES


async def test_a_huge_tool_result_is_returned_and_not_cached() -> None:
    runs: list[int] = []

    @tool("dump")
    def dump() -> str:
        """A very large result."""
        runs.append(1)
        return "z" * 3000

    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(dump)
        system.tools.cache.max_entry_bytes = 1000
        system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION,
                                 lambda ctx: Cache("dump", ttl=60), name="cache")
        for _ in range(2):
            assert len(await system.tools.execute("dump", {})) == 3000
        assert system.tools.cache.refused == 2
    assert runs == [1, 1]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "1"])
def test_bad_byte_bounds_are_refused_with_a_typed_error(bad: Any) -> None:
    with pytest.raises(InvalidValueError, match="max_bytes"):
        ResultCache(max_bytes=bad)
    with pytest.raises(InvalidValueError, match="max_entry_bytes"):
        ResultCache(max_entry_bytes=bad)
    assert ResultCache(max_bytes=None, max_entry_bytes=None).max_bytes is None
