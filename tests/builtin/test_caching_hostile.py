"""The caching paths under hostile input: a child context never stores under its parent's
key, served values are copies, invalidation ends coalescing, and odd keys, parameters,
values and settings are refused or handled (never a wrong answer)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from llmspell.builtin.caching import (
    CACHE_KEY_METADATA,
    MAX_KEY_CHARS,
    CachingConfig,
    CachingHook,
    TtlLruCache,
    bounded_key,
    default_key,
    scoped_key,
)
from llmspell.core.clock import ManualClock
from llmspell.errors import HookExecutionError, InvalidValueError, OperationCancelled
from llmspell.hooks import (
    Cache,
    Cancel,
    ComponentId,
    ComponentType,
    Fork,
    ForkOperation,
    HookContext,
    HookPoint,
    Modified,
    Redirect,
)
from llmspell.runtime import ResultCache, System, SystemConfig, calls, tool
from tests.builtin.test_cache_coalescing import until

P = HookPoint


def two_tools(config: CachingConfig | None = None,
              key_fn: Callable[[HookContext], str | None] | None = None
              ) -> tuple[System, CachingHook, dict[str, int]]:
    """Tools ``a`` and ``b`` (each answers with its name) behind a CachingHook."""
    system = System(SystemConfig(store="none"))
    runs = {"a": 0, "b": 0}

    @tool("a")
    def a(q: str) -> dict[str, Any]:
        """Answer as a."""
        runs["a"] += 1
        return {"from": "a", "q": q}

    @tool("b")
    def b(q: str) -> dict[str, Any]:
        """Answer as b."""
        runs["b"] += 1
        return {"from": "b", "q": q}

    system.tools.register_all([a, b])
    hook = CachingHook(config or CachingConfig(ttl=60), key_fn=key_fn)
    hook.install(system.registry)
    return system, hook, runs


def b_key_fails(ctx: HookContext) -> str:
    if ctx.component.name == "b":
        raise RuntimeError("no key for b")
    return "k"


# -- 1. a child context never stores under its parent's key ----------------------------------
@pytest.mark.parametrize("key_fn", [None, b_key_fails], ids=["default", "key_fn-raises-for-b"])
@pytest.mark.parametrize("config", [CachingConfig(ttl=60, deny_tools=frozenset({"b"})),
                                    CachingConfig(ttl=60, allow_tools=frozenset({"a"})),
                                    CachingConfig(ttl=60)], ids=["deny", "allow", "all"])
async def test_a_redirect_target_never_stores_under_the_callers_key(
        config: CachingConfig, key_fn: Callable[[HookContext], str | None] | None) -> None:
    system, _hook, runs = two_tools(config, key_fn)
    redirecting = {"on": True}
    # After the caching hook (priority 0 > -900): a's key is on the context when it redirects.
    system.registry.register(
        P.BEFORE_TOOL_EXECUTION, name="to-b", priority=0,
        hook=lambda c: Redirect("b") if c.data["tool"] == "a" and redirecting["on"] else None)
    assert (await system.tools.execute("a", {"q": "x"}))["from"] == "b"
    redirecting["on"] = False
    assert await system.tools.execute("a", {"q": "x"}) == {"from": "a", "q": "x"}
    assert runs == {"a": 1, "b": 1}


async def test_an_error_fallback_never_stores_under_the_failed_calls_key() -> None:
    system, _hook, _runs = two_tools(key_fn=b_key_fails)
    failing = {"on": True}

    @tool("c")
    def c(q: str) -> dict[str, Any]:
        """Fail while told to."""
        if failing["on"]:
            raise RuntimeError("down")
        return {"from": "c", "q": q}

    system.tools.register(c)
    system.registry.register(P.TOOL_ERROR, lambda ctx: Redirect("b"), name="fallback")
    assert (await system.tools.execute("c", {"q": "x"}))["from"] == "b"
    failing["on"] = False
    assert (await system.tools.execute("c", {"q": "x"}))["from"] == "c"


async def test_a_forked_call_never_stores_under_the_forking_calls_key() -> None:
    system, hook, _runs = two_tools(key_fn=b_key_fails)
    system.registry.register(
        P.BEFORE_TOOL_EXECUTION, name="fork-b", priority=0,
        hook=lambda c: Fork((ForkOperation(type="tool", target="b", parameters={"q": "y"}),))
        if c.data["tool"] == "a" else None)
    run = await system.tools.run("a", {"q": "x"})
    assert run.result == {"from": "a", "q": "x"} and run.forks[0]["result"]["from"] == "b"
    stored = hook.cache.keys()
    assert [hook.cache.get(k)[1]["from"] for k in stored] == ["a"]


BEFORE_OF = {ComponentType.TOOL: P.BEFORE_TOOL_EXECUTION,
             ComponentType.AGENT: P.BEFORE_AGENT_EXECUTION,
             ComponentType.MODEL: P.BEFORE_MODEL_CALL}
AFTER_OF = {ComponentType.TOOL: P.AFTER_TOOL_EXECUTION,
            ComponentType.AGENT: P.AFTER_AGENT_EXECUTION,
            ComponentType.MODEL: P.AFTER_MODEL_CALL}


def parent_context(kind: ComponentType) -> HookContext:
    return HookContext(point=BEFORE_OF[kind], component=ComponentId(type=kind, name="outer"),
                       data={"params": {"q": "x"}})


def child_contexts(parent: HookContext, kind: ComponentType, data: dict[str, Any]
                   ) -> tuple[HookContext, Callable[[], HookContext]]:
    """A child's before context (built as the runtime builds it: from the parent) and a
    maker of its after context (built from the before one once its hooks ran)."""
    inner = ComponentId(type=kind, name="inner")
    child = parent.child(BEFORE_OF[kind], inner, {**data, "params": {"q": "y"}})
    return child, lambda: child.child(
        AFTER_OF[kind], inner, {**data, "params": {"q": "y"}, "result": {"from": "inner"}})


CHILDREN = [
    (ComponentType.TOOL, ComponentType.TOOL, {}),
    (ComponentType.AGENT, ComponentType.AGENT, {}),
    (ComponentType.AGENT, ComponentType.MODEL, {"provider": "p", "model": "m"}),
    (ComponentType.AGENT, ComponentType.TOOL, {}),
]


@pytest.mark.parametrize(("parent_type", "child_type", "data"), CHILDREN)
def test_a_child_whose_before_point_the_hook_missed_stores_nothing_under_the_parents_key(
        parent_type: ComponentType, child_type: ComponentType, data: dict[str, Any]) -> None:
    """The hook did not run at the child's before point (not installed there, circuit
    open, an earlier hook timed out...): the key there is the parent's."""
    hook = CachingHook(CachingConfig(ttl=60))
    parent = parent_context(parent_type)
    assert hook.execute(parent) is None  # a miss: the parent's key is on its context
    parent_key = parent.metadata[CACHE_KEY_METADATA]
    child, after = child_contexts(parent, child_type, data)
    assert child.metadata[CACHE_KEY_METADATA] == parent_key  # copied into the child
    assert hook.execute(after()) is None
    assert hook.cache.get(parent_key) == (False, None) and len(hook.cache) == 0


@pytest.mark.parametrize(("parent_type", "child_type", "data"), CHILDREN)
def test_a_child_excluded_or_without_a_key_stores_nothing_under_the_parents_key(
        parent_type: ComponentType, child_type: ComponentType, data: dict[str, Any]) -> None:
    for hook in (CachingHook(CachingConfig(ttl=60, deny_tools=frozenset({"inner"}),
                                           deny_agents=frozenset({"inner"}),
                                           deny_models=frozenset({"p/m"}))),
                 CachingHook(key_fn=lambda c: None if c.component.name == "inner" else "k"),
                 CachingHook(key_fn=b_key_fails_for("inner"))):
        parent = parent_context(parent_type)
        hook.execute(parent)
        child, after = child_contexts(parent, child_type, data)
        with contextlib.suppress(HookExecutionError):  # a failing key_fn fails open
            hook.execute(child)
        assert CACHE_KEY_METADATA not in child.metadata
        assert CACHE_KEY_METADATA in parent.metadata
        assert hook.execute(after()) is None and len(hook.cache) == 0


def b_key_fails_for(name: str) -> Callable[[HookContext], str]:
    def key_fn(ctx: HookContext) -> str:
        if ctx.component.name == name:
            raise RuntimeError("no key")
        return "k"
    return key_fn


@pytest.mark.parametrize(("parent_type", "child_type", "data"), CHILDREN)
def test_the_childs_own_key_is_still_stored(
        parent_type: ComponentType, child_type: ComponentType, data: dict[str, Any]) -> None:
    hook = CachingHook(CachingConfig(ttl=60))
    parent = parent_context(parent_type)
    hook.execute(parent)
    child, after = child_contexts(parent, child_type, data)
    assert hook.execute(child) is None
    own = child.metadata[CACHE_KEY_METADATA]
    assert own != parent.metadata[CACHE_KEY_METADATA]
    assert hook.execute(after()) is None
    assert hook.cache.keys() == [own] and hook.cache.get(own) == (True, {"from": "inner"})


# -- 2. the Cache result's cache serves copies -------------------------------------------------
def test_result_cache_serves_and_stores_copies_of_dicts_and_lists() -> None:
    cache = ResultCache()
    stored: dict[str, Any] = {"items": [1, {"deep": [2]}], "n": 1}
    cache.put("k", stored, None)
    stored["items"].append("changed by the caller that stored it")
    first = cache.get("k")[1]
    first["items"][1]["deep"].append("changed by a caller it was served to")
    first["n"] = 99
    assert cache.get("k") == (True, {"items": [1, {"deep": [2]}], "n": 1})
    assert cache.get("k")[1] is not cache.get("k")[1]
    cache.put("l", [[1], [2]], None)
    served = cache.get("l")[1]
    served[0].append(3)
    assert cache.get("l")[1] == [[1], [2]]


def test_result_cache_copies_deep_shared_and_cyclic_values() -> None:
    cache = ResultCache()
    deep: list[Any] = []
    node = deep
    for _ in range(50_000):  # deeper than the recursion limit
        node.append([])
        node = node[0]
    shared = {"x": 1}
    cyclic: dict[str, Any] = {"a": shared, "b": shared}
    cyclic["self"] = cyclic
    cache.put("deep", deep, None)
    cache.put("cyclic", cyclic, None)
    got = cache.get("cyclic")[1]
    assert got["self"] is got and got["a"] is got["b"] and got["a"] is not shared
    node = cache.get("deep")[1]
    for _ in range(50_000):
        node = node[0]
    assert node == []


def test_result_cache_shares_values_that_are_not_dicts_or_lists() -> None:
    cache = ResultCache()
    value = ("tuple", 1)
    cache.put("k", value, None)
    assert cache.get("k")[1] is value  # immutable; other objects are shared as documented


async def test_coalesced_waiters_of_a_cache_result_get_their_own_copies() -> None:
    gate = asyncio.Event()
    runs: list[int] = []

    @tool("lookup")
    async def lookup(q: str) -> dict[str, Any]:
        """Slow."""
        runs.append(1)
        await gate.wait()
        return {"q": q, "items": [1]}

    system = System(SystemConfig(store="none"))
    system.tools.register(lookup)
    system.registry.register(P.BEFORE_TOOL_EXECUTION,
                             lambda ctx: Cache(ctx.data["params"]["q"], ttl=60), name="keyed")
    cache = system.tools.cache
    leader = asyncio.ensure_future(system.tools.execute("lookup", {"q": "s"}))
    await until(lambda: cache.in_flight == 1, "the leader is in flight")
    waiters = [asyncio.ensure_future(system.tools.execute("lookup", {"q": "s"}))
               for _ in range(3)]
    await until(lambda: cache.waiting == 3, "the waiters wait")
    gate.set()
    results = await asyncio.gather(leader, *waiters)
    assert runs == [1] and len({id(r) for r in results}) == 4
    assert len({id(r["items"]) for r in results}) == 4
    results[0]["items"].append("leader's")
    results[1]["items"].append("waiter's")
    assert results[2]["items"] == [1]
    assert await system.tools.execute("lookup", {"q": "s"}) == {"q": "s", "items": [1]}


# -- 3. invalidate/clear end the coalescing of flights -------------------------------------------
def gated_lookup(held: int) -> tuple[System, CachingHook, asyncio.Event, list[int]]:
    gate = asyncio.Event()
    runs: list[int] = []

    @tool("lookup")
    async def lookup(q: str) -> dict[str, Any]:
        """Slow for the first ``held`` calls."""
        runs.append(1)
        n = len(runs)
        if n <= held:
            await gate.wait()
        return {"q": q, "n": n}

    system = System(SystemConfig(store="none"))
    system.tools.register(lookup)
    hook = CachingHook(CachingConfig(ttl=60))
    hook.install(system.registry)
    return system, hook, gate, runs


@pytest.mark.parametrize("how", ["invalidate", "clear"])
async def test_a_call_after_an_invalidation_does_not_wait_for_the_old_flight(how: str) -> None:
    system, hook, gate, _runs = gated_lookup(held=1)
    cache = system.tools.cache
    leader = asyncio.ensure_future(system.tools.execute("lookup", {"q": "s"}))
    await until(lambda: cache.in_flight == 1, "the leader is in flight")
    waiter = asyncio.ensure_future(system.tools.execute("lookup", {"q": "s"}))
    await until(lambda: cache.waiting == 1, "a waiter waits")
    if how == "clear":
        hook.clear()
    else:
        assert hook.invalidate(default_key("tool", "lookup", {"q": "s"}) or "") is False
    fresh = asyncio.ensure_future(system.tools.execute("lookup", {"q": "s"}))
    try:
        await until(fresh.done, "the call after the invalidation runs now")
        assert fresh.result() == {"q": "s", "n": 2} and not leader.done()
    finally:
        gate.set()
        first, waited = await asyncio.gather(leader, waiter)
    assert first["n"] == 1 and waited["n"] != 1  # the stale result was never stored


async def test_after_an_invalidation_new_calls_coalesce_on_a_new_flight() -> None:
    system, hook, gate, runs = gated_lookup(held=2)
    cache = system.tools.cache
    leader = asyncio.ensure_future(system.tools.execute("lookup", {"q": "s"}))
    await until(lambda: cache.in_flight == 1, "the leader is in flight")
    hook.invalidate(default_key("tool", "lookup", {"q": "s"}) or "")
    second = asyncio.ensure_future(system.tools.execute("lookup", {"q": "s"}))
    await until(lambda: len(runs) == 2, "the call after the invalidation runs")
    third = asyncio.ensure_future(system.tools.execute("lookup", {"q": "s"}))
    await until(lambda: cache.waiting == 1, "an identical call waits for the new flight")
    assert len(runs) == 2
    gate.set()
    assert [r["n"] for r in await asyncio.gather(leader, second, third)] == [1, 2, 2]


async def test_invalidating_one_key_leaves_other_flights_coalescing() -> None:
    system, hook, gate, runs = gated_lookup(held=2)
    cache = system.tools.cache
    a = asyncio.ensure_future(system.tools.execute("lookup", {"q": "a"}))
    b = asyncio.ensure_future(system.tools.execute("lookup", {"q": "b"}))
    await until(lambda: cache.in_flight == 2, "both are in flight")
    hook.invalidate(default_key("tool", "lookup", {"q": "a"}) or "")
    b2 = asyncio.ensure_future(system.tools.execute("lookup", {"q": "b"}))
    await until(lambda: cache.waiting == 1, "the call of b still waits")
    gate.set()
    results = await asyncio.gather(a, b, b2)
    # b's result is stored (only a was invalidated) and served to the call that waited.
    assert results[1] == results[2] and len(runs) == 2


# -- 4. hostile keys, parameters, values and settings ----------------------------------------------
@pytest.mark.parametrize("odd", [math.nan, math.inf, -math.inf, b"aGk=", (1, 2), {1, 2}])
def test_parameters_json_would_confuse_with_others_are_not_cached(odd: Any) -> None:
    assert default_key("tool", "t", {"x": odd}) is None
    component = ComponentId(type=ComponentType.TOOL, name="t")
    assert calls._fingerprint(component, {"x": odd}) is None


def test_plain_parameters_keep_their_documented_key() -> None:
    assert default_key("tool", "t", {"x": None, "y": [1.5, "s"]}) is not None
    assert default_key("tool", "t", {"x": None}) != default_key("tool", "t", {"x": "null"})


def test_a_direct_before_point_with_nan_parameters_is_not_cached() -> None:
    hook = CachingHook()
    component = ComponentId(type=ComponentType.TOOL, name="echo")
    for x in (math.nan, None):
        ctx = HookContext(point=P.BEFORE_TOOL_EXECUTION, component=component,
                          data={"params": {"x": x}})
        assert hook.execute(ctx) is None
        after = ctx.child(P.AFTER_TOOL_EXECUTION, component,
                          {"params": {"x": x}, "result": repr(x)})
        hook.execute(after)
    assert hook.cache.keys() == [default_key("tool", "echo", {"x": None})]
    assert hook.stats().uncacheable == 1


def test_fingerprints_of_huge_parameters_are_small() -> None:
    component = ComponentId(type=ComponentType.TOOL, name="t")
    print_ = calls._fingerprint(component, {"blob": "x" * 1_000_000})
    assert print_ is not None and len(print_) == 16
    assert print_ != calls._fingerprint(component, {"blob": "x" * 999_999})


async def test_huge_key_fn_keys_are_bounded_everywhere() -> None:
    system, hook, runs = two_tools(key_fn=lambda ctx: "k" * 1_000_000 + ctx.data["params"]["q"])
    seen: list[str] = []
    system.registry.register(P.BEFORE_TOOL_EXECUTION, priority=0, name="look",
                             hook=lambda ctx: seen.append(ctx.metadata[CACHE_KEY_METADATA]))
    await system.tools.execute("a", {"q": "x"})
    await system.tools.execute("a", {"q": "y"})
    assert await system.tools.execute("a", {"q": "x"}) == {"from": "a", "q": "x"}
    assert runs["a"] == 2 and len(hook.cache) == 2
    assert all(len(k) <= MAX_KEY_CHARS for k in [*hook.cache.keys(), *seen])
    raw = "tool:1:a:" + "k" * 1_000_000 + "x"
    assert hook.invalidate(raw) is True and len(hook.cache) == 1
    assert bounded_key(raw) != bounded_key(raw[:-1] + "y")
    assert bounded_key("short") == "short"


async def test_a_key_fn_that_raises_fails_open_with_a_typed_error() -> None:
    def broken(ctx: HookContext) -> str:
        raise KeyError("tenant")

    system, hook, runs = two_tools(key_fn=broken)
    for _ in range(2):
        assert await system.tools.execute("a", {"q": "x"}) == {"from": "a", "q": "x"}
    assert runs["a"] == 2 and len(hook.cache) == 0
    failure = system.executor.failures()[-1]
    assert "key_fn raised KeyError" in str(failure)
    ctx = HookContext(point=P.BEFORE_TOOL_EXECUTION,
                      component=ComponentId(type=ComponentType.TOOL, name="a"),
                      data={"params": {}})
    with pytest.raises(HookExecutionError, match="key_fn raised KeyError") as info:
        hook.key_for(ctx)
    assert info.value.hint and isinstance(info.value.__cause__, KeyError)
    with pytest.raises(InvalidValueError, match="key_fn returned int"):
        CachingHook(key_fn=lambda ctx: 7).key_for(ctx)  # type: ignore[arg-type,return-value]


def test_cache_keys_must_be_strings() -> None:
    cache = TtlLruCache()
    for bad in (7, None, b"k", ("k",)):
        with pytest.raises(InvalidValueError, match="cache keys are str"):
            cache.put(bad, 1)  # type: ignore[arg-type]
        with pytest.raises(InvalidValueError, match="cache keys are str"):
            cache.get(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidValueError, match="cache keys are str"):
            cache.invalidate(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("ttl", [0, -1, math.nan, "60", True])
def test_bad_ttls_are_refused(ttl: Any) -> None:
    with pytest.raises(InvalidValueError, match="ttl"):
        CachingConfig(ttl=ttl)
    with pytest.raises(InvalidValueError, match="ttl"):
        TtlLruCache(ttl=ttl)
    with pytest.raises(InvalidValueError, match="ttl"):
        TtlLruCache().put("k", 1, ttl)


def test_an_infinite_ttl_never_expires() -> None:
    clock = ManualClock()
    cache = TtlLruCache(ttl=math.inf, clock=clock)
    cache.put("k", {"v": 1})
    clock.advance(1e300)
    assert cache.get("k") == (True, {"v": 1})


@pytest.mark.parametrize("entries", [0, -1, 1.5, True, None])
def test_caches_need_at_least_one_entry(entries: Any) -> None:
    with pytest.raises(InvalidValueError, match="max_entries"):
        CachingConfig(max_entries=entries)
    with pytest.raises(InvalidValueError, match="max_entries"):
        TtlLruCache(max_entries=entries)
    with pytest.raises(InvalidValueError, match="max_entries") as info:
        ResultCache(max_entries=entries)
    assert info.value.hint


def test_a_result_that_is_not_json_safe_is_not_cached() -> None:
    hook = CachingHook()
    component = ComponentId(type=ComponentType.AGENT, name="odd")
    for result in ({"o": object()}, {"f": math.nan}, {"b": b"\xff"}):
        ctx = HookContext(point=P.BEFORE_AGENT_EXECUTION, component=component,
                          data={"params": {"q": 1}})
        assert hook.execute(ctx) is None
        hook.execute(ctx.child(P.AFTER_AGENT_EXECUTION, component,
                               {"params": {"q": 1}, "result": result}))
    assert len(hook.cache) == 0 and hook.stats().skipped >= 2


def test_clear_racing_puts_keeps_the_byte_count_exact() -> None:
    cache = TtlLruCache(max_entries=64, max_bytes=10_000, ttl=None)
    stop = threading.Event()

    def clearing() -> None:
        while not stop.is_set():
            cache.clear()

    def putting(tag: int) -> None:
        for i in range(3000):
            since = cache.generation
            cache.put(f"{tag}:{i % 100}", {"i": i, "pad": "x" * (i % 50)}, since=since)

    clearer = threading.Thread(target=clearing)
    putters = [threading.Thread(target=putting, args=(t,)) for t in range(3)]
    clearer.start()
    for t in putters:
        t.start()
    for t in putters:
        t.join()
    stop.set()
    clearer.join()
    stats = cache.stats()
    keys = cache.keys()
    held = [cache.get(k)[1] for k in keys]
    assert stats.bytes == sum(len(msgspec.json.encode(v)) for v in held)
    assert stats.size == len(held) <= 64 and stats.bytes <= 10_000
    cache.clear()
    assert cache.stats().bytes == 0 and len(cache) == 0


# -- whose entries: CachingConfig.scope -------------------------------------------------------

def caller(user: str | None = None, session: str | None = None) -> HookContext:
    metadata = {k: v for k, v in (("user", user), ("session", session)) if v is not None}
    return HookContext(point=HookPoint.SESSION_START,
                       component=ComponentId(type=ComponentType.TOOL, name="app"),
                       metadata=metadata)


def orders_system(config: CachingConfig | None = None) -> tuple[System, list[str]]:
    system = System(SystemConfig(store="none"))
    runs: list[str] = []

    @tool("get_my_orders")
    def get_my_orders() -> list[str]:
        """The caller's orders."""
        ctx = calls.current_context()
        who = ctx.metadata.get("user", "nobody") if ctx is not None else "nobody"
        runs.append(who)
        return [f"{who}-order"]

    system.tools.register(get_my_orders)
    CachingHook(config or CachingConfig(ttl=60)).install(system.registry)
    return system, runs


async def test_one_users_cached_result_is_never_served_to_another() -> None:
    system, runs = orders_system()
    async with system:
        execute = system.tools.execute
        assert await execute("get_my_orders", {}, parent=caller("ann")) == ["ann-order"]
        assert await execute("get_my_orders", {}, parent=caller("bob")) == ["bob-order"]
        assert await execute("get_my_orders", {}, parent=caller("ann")) == ["ann-order"]
        assert await execute("get_my_orders", {}) == ["nobody-order"]
    assert runs == ["ann", "bob", "nobody"]  # ann's second call was a hit on her own entry


async def test_scope_session_and_global() -> None:
    system, runs = orders_system(CachingConfig(ttl=60, scope="session"))
    async with system:
        for session in ("s1", "s2", "s1"):
            await system.tools.execute("get_my_orders", {}, parent=caller("ann", session))
    assert runs == ["ann", "ann"]
    system, runs = orders_system(CachingConfig(ttl=60, scope="global"))
    async with system:
        await system.tools.execute("get_my_orders", {}, parent=caller("ann"))
        assert await system.tools.execute("get_my_orders", {},
                                          parent=caller("bob")) == ["ann-order"]
    assert runs == ["ann"]


def test_caller_scoped_keys_never_meet_unscoped_ones() -> None:
    assert default_key("tool", "t", {}) != default_key("tool", "t", {}, user="ann")
    assert default_key("tool", "t", {}, user="ann") != default_key("tool", "t", {},
                                                                    session="ann")
    assert scoped_key("tool", "t", "k", user="a") != scoped_key("tool", "t", "k")
    # user "a:b" with no session vs user "a" and session "b": apart
    assert (scoped_key("tool", "t", "k", user="a", session="b")
            != scoped_key("tool", "t", "k", user="a:b"))
    with pytest.raises(InvalidValueError, match="scope"):
        CachingConfig(scope="tenant")


async def test_shared_keys_stay_per_user_and_cannot_spell_another_entry() -> None:
    long = "q" * (MAX_KEY_CHARS + 10)
    system, hook, runs = two_tools(CachingConfig(ttl=60, shared_keys=True),
                                   key_fn=lambda ctx: ctx.data["params"]["q"])
    async with system:
        await system.tools.execute("a", {"q": long}, parent=caller("ann"))
        forged = bounded_key(hook.key_for(HookContext(
            point=HookPoint.BEFORE_TOOL_EXECUTION, component=ComponentId(
                type=ComponentType.TOOL, name="a"), data={"params": {"q": long}},
            metadata={"user": "ann"})))
        assert forged.startswith("@")  # ann's entry; an anonymous "@..." key is escaped
        assert await system.tools.execute("a", {"q": forged}) == {"from": "a", "q": forged}
        unscoped_long = "r" * (MAX_KEY_CHARS + 10)
        await system.tools.execute("a", {"q": unscoped_long})
        spelled = bounded_key(unscoped_long)
        assert await system.tools.execute("a", {"q": spelled}) == {"from": "a", "q": spelled}
    assert runs["a"] == 4


# -- what is stored is what the after hooks let through ---------------------------------------

def secret_system() -> tuple[System, list[int]]:
    system = System(SystemConfig(store="none"))
    runs: list[int] = []

    @tool("secret")
    def secret(q: str) -> dict[str, Any]:
        """A card number."""
        runs.append(1)
        return {"card": "4111-1111", "q": q}

    system.tools.register(secret)
    CachingHook(CachingConfig(ttl=60)).install(system.registry)
    return system, runs


async def test_a_hit_serves_what_a_later_after_hook_made_of_the_result() -> None:
    system, runs = secret_system()

    def mask(ctx: HookContext) -> Modified:  # default priority 0, after caching's -900
        return Modified({**ctx.data, "result": {**ctx.data["result"], "card": "****"}})

    system.registry.register("AfterToolExecution", mask, name="mask")
    async with system:
        for _ in range(2):
            assert await system.tools.execute("secret", {"q": "a"}) == {"card": "****",
                                                                          "q": "a"}
    assert len(runs) == 1


async def test_a_result_a_later_after_hook_refused_is_never_served() -> None:
    system, runs = secret_system()
    system.registry.register("AfterToolExecution", lambda ctx: Cancel("refused"),
                             name="refuse")
    async with system:
        for _ in range(2):
            with pytest.raises(OperationCancelled, match="refused"):
                await system.tools.execute("secret", {"q": "b"})
    assert len(runs) == 2
