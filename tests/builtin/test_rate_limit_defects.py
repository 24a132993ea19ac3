"""RateLimitHook defects from a review: the limiting identity, unbounded token debt, a
cancelled waiter's reservation, the serve_cached store's memory and the bucket map's size.

Each test drives the hook with a ``ManualClock`` (and, for ``wait``, a sleep that blocks
until cancelled), so nothing depends on wall-clock time.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from llmspell.builtin.counters import MemoryCounters, counter_key
from llmspell.builtin.rate_limit import (
    DEFAULT_CACHE_MAX_BYTES,
    KeyedTokenBucket,
    ModelLimit,
    RateLimitConfig,
    RateLimitHook,
)
from llmspell.core.clock import ManualClock
from llmspell.errors import InvalidValueError, OperationCancelled
from llmspell.hooks import ComponentId, ComponentType, HookContext, HookPoint
from llmspell.hooks.result import Cancel, Replace
from llmspell.runtime import System, SystemConfig, tool

TOOL = ComponentId(type=ComponentType.TOOL, name="search")
MODEL = ComponentId(type=ComponentType.MODEL, name="p/m")


def _tool_ctx(params: dict[str, Any] | None = None, *, user: str | None = None,
              point: HookPoint = HookPoint.BEFORE_TOOL_EXECUTION,
              **data: Any) -> HookContext:
    return HookContext(point=point, component=TOOL,
                       data={"params": params if params is not None else {}, **data},
                       metadata={"user": user} if user is not None else {})


def _model_ctx(max_tokens: int = 100) -> HookContext:
    return HookContext(point=HookPoint.BEFORE_MODEL_CALL, component=MODEL,
                       data={"provider": "p", "model": "m",
                             "params": {"messages": [], "max_tokens": max_tokens}})


def _usage(before: HookContext, total: int) -> HookContext:
    return HookContext(point=HookPoint.AFTER_MODEL_CALL, component=MODEL, parent=before,
                       data={"provider": "p", "model": "m",
                             "result": {"usage": {"total_tokens": total}}})


async def _run(hook: RateLimitHook, ctx: HookContext) -> Any:
    out = hook.execute(ctx)
    if asyncio.iscoroutine(out):
        out = await out
    return out


# -- 1. the limiting identity comes from trusted context only ---------------------------------
@tool()
def lookup(query: str, user: str = "") -> str:
    """A tool whose parameters (chosen by a model) happen to include a `user`."""
    return f"found {query}"


async def test_a_user_chosen_in_tool_params_does_not_get_a_fresh_bucket() -> None:
    clock = ManualClock()
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(lookup)
        hook = RateLimitHook(RateLimitConfig(rate=1.0, burst=1, key="user"), clock=clock)
        hook.install(system.registry)
        assert await system.tools.execute("lookup", {"query": "a", "user": "u0"}) == "found a"
        # A prompt-injected model rotating `user` values: every call shares one bucket.
        for n in range(1, 20):
            with pytest.raises(OperationCancelled, match="'anonymous'"):
                await system.tools.execute("lookup", {"query": "a", "user": f"u{n}"})
        stats = hook.stats()
        assert set(stats.by_key) == {"anonymous"}
        assert (stats.allowed, stats.limited) == (1, 19)


async def test_the_user_in_a_parent_context_still_has_a_bucket_of_their_own() -> None:
    clock = ManualClock()
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(lookup)
        hook = RateLimitHook(RateLimitConfig(rate=1.0, burst=1, key="{component}:{user}"),
                             clock=clock)
        hook.install(system.registry)

        def as_user(name: str) -> HookContext:
            return HookContext(point=HookPoint.SESSION_START, component=TOOL,
                               metadata={"user": name})

        assert await system.tools.execute("lookup", {"query": "a", "user": "x"},
                                          parent=as_user("ann")) == "found a"
        assert await system.tools.execute("lookup", {"query": "a", "user": "ann"},
                                          parent=as_user("bob")) == "found a"
        with pytest.raises(OperationCancelled, match="'tool:lookup:ann'"):
            await system.tools.execute("lookup", {"query": "a", "user": "new"},
                                       parent=as_user("ann"))
        assert set(hook.stats().by_key) == {"tool:lookup:ann", "tool:lookup:bob"}


def test_reading_the_user_from_params_is_an_explicit_opt_in() -> None:
    params = {"user": 7}
    default = RateLimitHook(RateLimitConfig(key="{name}/{user}"))
    assert default.key_for(_tool_ctx(params)) == "search/anonymous"
    assert default.key_for(_tool_ctx(params, user="ann")) == "search/ann"
    opted = RateLimitHook(RateLimitConfig(key="{name}/{user}", user_from_params=True))
    assert opted.key_for(_tool_ctx(params)) == "search/7"
    assert opted.key_for(_tool_ctx(params, user="ann")) == "search/ann"  # metadata first
    assert opted.key_for(_tool_ctx({"user": ""})) == "search/anonymous"
    with pytest.raises(InvalidValueError, match="user_from_params") as info:
        RateLimitConfig(user_from_params="yes")  # type: ignore[arg-type]
    assert info.value.hint


# -- 2. token debt from a reported usage is bounded -------------------------------------------
@pytest.mark.parametrize("reported", [10**18, 10**400], ids=["1e18", "1e400"])
async def test_a_bogus_usage_report_blocks_a_model_for_about_a_minute_at_most(
        reported: int) -> None:
    clock = ManualClock()
    hook = RateLimitHook(RateLimitConfig(models={"p/m": ModelLimit(tokens_per_minute=1000)}),
                         clock=clock)
    first = _model_ctx()
    assert await _run(hook, first) is None
    assert await _run(hook, _usage(first, reported)) is None
    assert hook.model_stats()["p/m"].tokens_left == -1000  # one minute's allowance of debt
    assert isinstance(await _run(hook, _model_ctx()), Cancel)
    clock.advance(66.0)  # the debt and the next call's 100 tokens
    assert await _run(hook, _model_ctx()) is None


async def test_a_bogus_usage_report_is_bounded_in_shared_buckets_too() -> None:
    clock = ManualClock()
    counters = MemoryCounters()
    hook = RateLimitHook(RateLimitConfig(models={"p/m": ModelLimit(tokens_per_minute=1000)}),
                         clock=clock, shared=counters)
    first = _model_ctx()
    assert await _run(hook, first) is None
    await _run(hook, _usage(first, 10**400))
    state = await counters.read(counter_key("rate_limit", "model", "p/m"))
    assert state[1] == -1000
    clock.advance(66.0)
    assert await _run(hook, _model_ctx()) is None


async def test_tokens_given_back_never_overfill_the_bucket() -> None:
    clock = ManualClock()
    hook = RateLimitHook(RateLimitConfig(models={"p/m": ModelLimit(tokens_per_minute=1000)}),
                         clock=clock)
    first = _model_ctx(max_tokens=400)
    assert await _run(hook, first) is None
    clock.advance(60.0)  # full again while the call ran
    await _run(hook, _usage(first, 0))  # the 400 estimated come back
    assert hook.model_stats()["p/m"].tokens_left == 1000


async def test_a_debt_made_by_waiters_is_not_forgiven_by_a_correction() -> None:
    clock = ManualClock()
    hook = RateLimitHook(RateLimitConfig(models={"p/m": ModelLimit(tokens_per_minute=1000)},
                                         action="wait", max_wait=600.0),
                         clock=clock, sleep=lambda s: asyncio.sleep(0))
    first = _model_ctx(max_tokens=900)
    for ctx in (first, _model_ctx(max_tokens=900), _model_ctx(max_tokens=900)):
        await _run(hook, ctx)  # 100, -800, -1700 left: reserved by two waiters
    await _run(hook, _usage(first, 1000))
    left = hook.model_stats()["p/m"].tokens_left
    assert left is not None and left <= -1700


# -- 3. a waiter cancelled while it waits gives its reservation back --------------------------
class _BlockingSleep:
    """A ``sleep`` that blocks until cancelled and says when a caller is in it; once
    ``blocking`` is False it records the wait and returns at once instead."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.blocking = True
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        if not self.blocking:
            self.waits.append(seconds)
            return
        self.entered.set()
        await asyncio.Event().wait()


async def _cancel_while_waiting(hook: RateLimitHook, sleep: _BlockingSleep,
                                ctx: HookContext) -> None:
    task = asyncio.ensure_future(_run(hook, ctx))
    await asyncio.wait_for(sleep.entered.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    sleep.blocking = False


async def test_a_cancelled_waiter_gives_its_token_back() -> None:
    clock, sleep = ManualClock(), _BlockingSleep()
    hook = RateLimitHook(RateLimitConfig(rate=1.0, burst=1, action="wait", max_wait=10.0),
                         clock=clock, sleep=sleep)
    assert hook.execute(_tool_ctx()) is None            # the only token
    await _cancel_while_waiting(hook, sleep, _tool_ctx())
    assert hook.stats().by_key["tool:search"].tokens == 0.0
    clock.advance(1.0)
    # As if the cancelled caller had never come: a token at once, no wait.
    assert hook.execute(_tool_ctx()) is None
    assert sleep.waits == []


async def test_cancelled_waiters_do_not_shrink_the_capacity_for_everyone() -> None:
    clock, sleep = ManualClock(), _BlockingSleep()
    hook = RateLimitHook(RateLimitConfig(rate=1.0, burst=1, action="wait", max_wait=60.0),
                         clock=clock, sleep=sleep)
    assert hook.execute(_tool_ctx()) is None
    for _ in range(20):
        sleep.entered.clear()
        sleep.blocking = True
        await _cancel_while_waiting(hook, sleep, _tool_ctx())
    clock.advance(1.0)
    assert hook.execute(_tool_ctx()) is None
    assert sleep.waits == []


async def test_a_cancelled_waiter_gives_its_token_back_to_a_shared_bucket() -> None:
    clock, sleep = ManualClock(), _BlockingSleep()
    counters = MemoryCounters()
    hook = RateLimitHook(RateLimitConfig(rate=1.0, burst=1, action="wait", max_wait=10.0),
                         clock=clock, sleep=sleep, shared=counters)
    assert await _run(hook, _tool_ctx()) is None
    await _cancel_while_waiting(hook, sleep, _tool_ctx())
    state = await counters.read(counter_key("rate_limit", "key", "tool:search"))
    assert state[0] == 0.0
    clock.advance(1.0)
    assert await _run(hook, _tool_ctx()) is None
    assert sleep.waits == []


@pytest.mark.parametrize("shared", [False, True])
async def test_a_cancelled_model_call_waiter_gives_its_request_and_tokens_back(
        shared: bool) -> None:
    clock, sleep = ManualClock(), _BlockingSleep()
    hook = RateLimitHook(
        RateLimitConfig(models={"p/m": ModelLimit(requests_per_minute=1,
                                                  tokens_per_minute=1000)},
                        action="wait", max_wait=120.0),
        clock=clock, sleep=sleep, shared=MemoryCounters() if shared else None)
    assert await _run(hook, _model_ctx(max_tokens=500)) is None
    await _cancel_while_waiting(hook, sleep, _model_ctx(max_tokens=500))
    clock.advance(60.0)
    assert await _run(hook, _model_ctx(max_tokens=500)) is None
    assert sleep.waits == []  # no wait: nothing was lost


# -- 4. the serve_cached store is bounded in bytes --------------------------------------------
def _remember(hook: RateLimitHook, params: dict[str, Any], result: Any) -> None:
    hook.execute(_tool_ctx(params, point=HookPoint.AFTER_TOOL_EXECUTION, result=result))


def test_the_cached_results_stay_within_the_default_byte_bound() -> None:
    hook = RateLimitHook(RateLimitConfig(rate=1.0, burst=1, action="serve_cached"),
                         clock=ManualClock())
    mib = ["x" * (1024 * 1024)]
    for n in range(40):
        _remember(hook, {"n": n}, mib)
    stats = hook.stats()
    assert stats.cached_results < 40
    assert 0 < stats.cached_bytes <= DEFAULT_CACHE_MAX_BYTES
    assert hook.execute(_tool_ctx({"n": 39})) is None    # takes the token
    newest = hook.execute(_tool_ctx({"n": 39}))
    assert isinstance(newest, Replace) and newest.value == mib
    assert isinstance(hook.execute(_tool_ctx({"n": 0})), Cancel)  # the oldest went first


def test_the_byte_bound_counts_results_keys_and_strings() -> None:
    clock = ManualClock()
    hook = RateLimitHook(RateLimitConfig(rate=1.0, burst=1, action="serve_cached",
                                         cache_max_bytes=10_000, cache_ttl=5.0), clock=clock)
    _remember(hook, {"q": "a"}, "s" * 4000)           # a plain string
    _remember(hook, {"q": "b" * 4000}, 1)             # large parameters, a small result
    _remember(hook, {"q": "c"}, {"r": "d" * 4000})    # a dict, kept as JSON
    stats = hook.stats()
    assert stats.cached_results == 2 and stats.cached_bytes <= 10_000
    _remember(hook, {"q": "c"}, ["e" * 20_000])       # too large to remember at all
    assert hook.stats().cached_results == 1
    assert hook.execute(_tool_ctx({"q": "c"})) is None
    # Not the older result of the same parameters: only ever the last one.
    assert isinstance(hook.execute(_tool_ctx({"q": "c"})), Cancel)
    clock.advance(6.0)                                 # expired entries give bytes back
    assert hook.execute(_tool_ctx({"q": "b" * 4000})) is None
    assert isinstance(hook.execute(_tool_ctx({"q": "b" * 4000})), Cancel)
    assert hook.stats().cached_bytes == 0
    with pytest.raises(InvalidValueError, match="cache_max_bytes"):
        RateLimitConfig(cache_max_bytes=0)


# -- 5. the bucket map ------------------------------------------------------------------------
def test_idle_buckets_do_not_pile_up_over_many_users() -> None:
    clock = ManualClock()
    hook = RateLimitHook(RateLimitConfig(rate=1.0, burst=1, key="user"), clock=clock)
    for n in range(2000):
        assert hook.execute(_tool_ctx(user=f"user-{n}")) is None
        clock.advance(1.0)  # each bucket is full again by the next user's call
    assert hook.stats().keys <= 2


def test_a_bucket_still_refilling_is_kept_and_an_idle_one_goes_first() -> None:
    clock = ManualClock()
    bucket = KeyedTokenBucket(1.0, 2, max_keys=2, clock=clock)
    assert bucket.take("a")[2] and bucket.take("a")[2]  # a: empty
    assert bucket.take("b")[2]                          # b: one of two left
    clock.advance(1.0)                                  # a: 1 of 2; b: full (idle)
    assert bucket.take("c")[2]                          # past max_keys: b goes, not a
    assert set(bucket.snapshot()) == {"a", "c"}
    assert bucket.take("a")[2]
    assert not bucket.take("a")[2]                      # a kept its level: no fresh burst
    bucket.give_back("gone")                            # a key not tracked: nothing


def test_past_max_keys_of_busy_buckets_the_least_recently_used_goes() -> None:
    clock = ManualClock()
    bucket = KeyedTokenBucket(1.0, 1, max_keys=2, clock=clock)
    for key in ("a", "b", "c"):
        assert bucket.take(key)[2]
    assert set(bucket.snapshot()) == {"b", "c"} and len(bucket) == 2
