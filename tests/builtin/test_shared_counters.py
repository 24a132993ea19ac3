"""Shared counters: the backend interface, rate limits and budgets kept in a backend.

In one process with :class:`MemoryCounters` (decisions exactly those of the local path,
several hooks sharing one limit, a failing backend under each error policy), and against
the real NATS server with :class:`NatsCounters` (concurrent compare-and-set updates from
several connections add up exactly; namespaces keep counters apart; an unreachable server is
a ``SharedCounterError`` at once). The fleet across processes is in test_fleet_limits.py.
"""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal
from typing import Any

import pytest

from llmspell.builtin import (
    CostConfig,
    CostTrackingHook,
    ModelLimit,
    RateLimitConfig,
    RateLimitHook,
)
from llmspell.builtin.cost import Budget, BudgetAlert, TokenPrice
from llmspell.builtin.counters import (
    Change,
    CounterBackend,
    MemoryCounters,
    counter_key,
    shared_counters,
)
from llmspell.builtin.nats_counters import NatsCounters
from llmspell.core.clock import ManualClock
from llmspell.errors import ConfigurationError, InvalidValueError, SharedCounterError
from llmspell.hooks import Cancel, HookExecutor, HookRegistry
from llmspell.hooks.context import ComponentId, HookContext
from llmspell.hooks.metadata import ErrorPolicy
from llmspell.hooks.points import HookPoint
from tests.builtin.support import kv_url
from tests.events.nats_support import nats_url

__all__ = ["kv_url", "nats_url"]  # fixtures

MODEL = ComponentId(type="model", name="p/m")
AGENT = ComponentId(type="agent", name="a")
PRICES = {"m": TokenPrice(input=Decimal(100_000), output=Decimal(0))}  # $0.10 per token


def _tool(name: str = "search", user: str = "ann",
          point: HookPoint = HookPoint.BEFORE_TOOL_EXECUTION, **data: Any) -> HookContext:
    return HookContext(point=point, component=ComponentId(type="tool", name=name),
                       data={"params": {"q": 1}, **data}, metadata={"user": user})


async def _run(hook: Any, ctx: HookContext) -> Any:
    out = hook.execute(ctx)
    if asyncio.iscoroutine(out):
        out = await out
    return out


# -- the interface ------------------------------------------------------------------------------
def test_counter_keys_are_valid_for_every_backend_and_distinct() -> None:
    assert counter_key("rl", "tool:calc") == "rl.tool=3Acalc"
    assert counter_key("cost", "user:é x", "day", "20000") == \
        "cost.user=3A=C3=A9=20x.day.20000"
    assert counter_key("a", "") == "a.="
    assert counter_key("a.b") != counter_key("a", "b")
    assert len({counter_key("k", s) for s in ("a:b", "a.b", "a b", "a=b", "a=3Ab")}) == 5


async def test_memory_counters_update_atomically_and_forget() -> None:
    counters = MemoryCounters()

    def add(value: Any) -> tuple[int, int]:
        new = (value or 0) + 1
        return new, new

    threads = [threading.Thread(target=lambda: [counters.update_sync("n", add)
                                                for _ in range(500)]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert await counters.read("n") == 2000
    assert await counters.update("n", add) == 2001
    await counters.delete("n")
    assert counters.read_sync("n") is None and counters.list_keys() == []
    with pytest.raises(InvalidValueError, match="invalid counter key"):
        counters.update_sync(".bad", add)


def test_shared_accepts_a_backend_a_nats_url_or_nothing() -> None:
    mine = MemoryCounters()
    assert shared_counters(mine) is mine and shared_counters(None) is None
    one = shared_counters("nats://127.0.0.1:4999?namespace=a")
    assert isinstance(one, NatsCounters)
    assert shared_counters("nats://127.0.0.1:4999?namespace=a") is one  # one per URL
    with pytest.raises(InvalidValueError, match="CounterBackend, a NATS URL or a Redis URL"):
        shared_counters("memcached://x")
    with pytest.raises(ConfigurationError, match="unknown option"):
        NatsCounters("nats://127.0.0.1:4999?colour=red")
    with pytest.raises(ConfigurationError, match="not a valid float"):
        NatsCounters("nats://127.0.0.1:4999?timeout=soon")


# -- rate limits ------------------------------------------------------------------------------
@pytest.mark.parametrize("action", ["cancel", "wait", "redirect", "serve_cached"])
async def test_a_shared_bucket_decides_exactly_as_the_local_one(action: str) -> None:
    config = RateLimitConfig(rate=2.0, burst=3, action=action, max_wait=0.4,  # type: ignore[arg-type]
                             redirect_to="cheap" if action == "redirect" else None)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    # Wall time near 0 like monotonic time: equal float rounding on both paths.
    local_clock, shared_clock = ManualClock(), ManualClock(wall_start=0.0)
    local = RateLimitHook(config, clock=local_clock, sleep=sleep)
    shared = RateLimitHook(config, clock=shared_clock, sleep=sleep, shared=MemoryCounters())
    for hook in (local, shared):
        if action == "serve_cached":
            await _run(hook, _tool(point=HookPoint.AFTER_TOOL_EXECUTION, result={"r": 1}))
    outcomes: dict[int, list[Any]] = {id(local): [], id(shared): []}
    for step in (0, 0, 0, 0, 0.1, 0.3, 0, 0, 1.0, 0, 0, 0, 0):
        for hook, clock in ((local, local_clock), (shared, shared_clock)):
            clock.advance(step)
            ctx = _tool()
            out = await _run(hook, ctx)
            outcomes[id(hook)].append((out, dict(ctx.metadata)))
    assert outcomes[id(local)] == outcomes[id(shared)]
    assert local.stats().allowed == shared.stats().allowed > 0
    assert local.stats().limited == shared.stats().limited > 0
    kinds = {type(o).__name__ for o, _ in outcomes[id(shared)]}
    expected = {"cancel": "Cancel", "wait": "Cancel", "redirect": "Redirect",
                "serve_cached": "Replace"}[action]
    assert expected in kinds
    if action == "wait":
        assert waits and all(w <= 0.4 for w in waits)
    assert shared.stats().by_key["tool:search"].allowed == shared.stats().allowed


async def test_hooks_with_one_backend_share_one_limit() -> None:
    counters = MemoryCounters()
    clock = ManualClock()
    hooks = [RateLimitHook(RateLimitConfig(rate=1.0, burst=4, key="user"), clock=clock,
                           shared=counters) for _ in range(3)]
    results = [await _run(hooks[n % 3], _tool()) for n in range(9)]
    assert [r is None for r in results] == [True] * 4 + [False] * 5
    assert isinstance(results[-1], Cancel)
    assert counter_key("rate_limit", "key", "ann") in counters.list_keys()
    # Another user has a bucket of their own; another shared_key, another limit.
    assert await _run(hooks[0], _tool(user="bob")) is None
    other = RateLimitHook(RateLimitConfig(rate=1.0, burst=4, key="user"), clock=clock,
                          shared=counters, shared_key="other-api")
    assert await _run(other, _tool()) is None
    clock.advance(1.0)
    assert await _run(hooks[2], _tool()) is None              # refilled, for everyone


async def test_model_limits_are_shared_and_corrected_by_reported_usage() -> None:
    counters = MemoryCounters()
    clock = ManualClock()
    config = RateLimitConfig(models={"p/m": ModelLimit(requests_per_minute=3,
                                                       tokens_per_minute=1000)})
    a, b = (RateLimitHook(config, clock=clock, shared=counters) for _ in range(2))

    def before() -> HookContext:
        return HookContext(point=HookPoint.BEFORE_MODEL_CALL, component=MODEL,
                           data={"provider": "p", "model": "m",
                                 "params": {"messages": [{"role": "user", "content": "hi"}],
                                            "max_tokens": 100}})

    first = before()
    assert await _run(a, first) is None
    after = HookContext(point=HookPoint.AFTER_MODEL_CALL, component=MODEL, parent=first,
                        data={"provider": "p", "model": "m",
                              "result": {"usage": {"total_tokens": 900}}})
    await _run(a, after)                           # 900 used, not the estimate of 105
    state = await counters.read(counter_key("rate_limit", "model", "p/m"))
    assert state[0] == 2.0 and state[1] == pytest.approx(100.0)
    second = await _run(b, before())               # the other hook sees the same buckets
    assert isinstance(second, Cancel) and "tokens per minute" in second.reason
    clock.advance(60)                              # a minute's allowance later
    assert await _run(b, before()) is None
    assert a.model_stats()["p/m"].tokens == 900


class _Broken(CounterBackend):
    description = "broken"

    async def update(self, key: str, change: Change[Any]) -> Any:
        raise SharedCounterError("shared counters at broken: no answer in time")

    async def read(self, key: str) -> Any:
        raise SharedCounterError("shared counters at broken: no answer in time")

    def update_sync(self, key: str, change: Change[Any]) -> Any:
        raise SharedCounterError("shared counters at broken: no answer in time")

    def read_sync(self, key: str) -> Any:
        raise SharedCounterError("shared counters at broken: no answer in time")


@pytest.mark.parametrize("policy", [ErrorPolicy.FAIL_OPEN, ErrorPolicy.FAIL_CLOSED])
async def test_a_backend_that_fails_follows_the_hook_error_policy(policy: ErrorPolicy) -> None:
    registry = HookRegistry()
    RateLimitHook(RateLimitConfig(), shared=_Broken(), error_policy=policy).install(registry)
    CostTrackingHook(CostConfig(prices=PRICES, budgets=(Budget(limit=Decimal(1)),)),
                     shared=_Broken(), error_policy=policy).install(registry)
    executor = HookExecutor(registry)
    tool = await executor.execute(_tool())
    model = await executor.execute(HookContext(
        point=HookPoint.BEFORE_MODEL_CALL, component=MODEL,
        data={"provider": "p", "model": "m", "params": {"messages": []}}))
    for outcome in (tool, model):
        if policy is ErrorPolicy.FAIL_OPEN:
            assert not isinstance(outcome.result, Cancel)
        else:
            assert isinstance(outcome.result, Cancel)
        assert outcome.failures[0].error_type == "SharedCounterError"


# -- budgets ----------------------------------------------------------------------------------
def _usage(tokens: int, user: str = "ann") -> HookContext:
    return HookContext(point=HookPoint.AFTER_MODEL_CALL, component=MODEL, metadata={"user": user},
                       data={"provider": "p", "model": "m",
                             "result": {"usage": {"input_tokens": tokens,
                                                  "output_tokens": 0}}})


def _ask() -> HookContext:
    return HookContext(point=HookPoint.BEFORE_MODEL_CALL, component=MODEL,
                       data={"provider": "p", "model": "m",
                             "params": {"messages": [], "max_tokens": 0}})


async def test_budgets_are_spent_together_and_alert_once() -> None:
    counters = MemoryCounters()
    alerts: list[BudgetAlert] = []
    config = CostConfig(prices=PRICES, budgets=(Budget(limit=Decimal("1.00")),))
    a, b = (CostTrackingHook(config, shared=counters, on_budget=alerts.append)
            for _ in range(2))
    for n in range(6):                          # $0.20 a call, alternating hooks
        await _run((a, b)[n % 2], _usage(2))
    assert [x.level for x in alerts] == ["info", "warning", "critical"]
    assert [x.spent for x in alerts] == ["0.6", "0.8", "1.0"]
    for hook in (a, b):
        status = hook.budget_status()[0]
        assert status.spent == Decimal("1.2") and status.blocking
        assert isinstance(await _run(hook, _ask()), Cancel)
    c = CostTrackingHook(config, shared=counters)   # a new process sees it at once
    assert isinstance(await _run(c, _ask()), Cancel)
    assert c.stats().total_cost == 0                 # its own records only
    record = c.record({"provider": "p", "model": "m", "input": 1, "output": 0})  # sync
    assert record.cost == "0.1" and c.budget_status()[0].spent == Decimal("1.3")


async def test_scoped_and_windowed_budgets_use_their_own_counters() -> None:
    counters = MemoryCounters()
    clock = ManualClock(wall_start=3600 * 1000)
    config = CostConfig(prices=PRICES, budgets=(
        Budget(scope="user:ann", limit=Decimal("0.5"), window="hour"),))
    hook = CostTrackingHook(config, shared=counters, clock=clock)
    await _run(hook, _usage(5))
    assert isinstance(await _run(hook, HookContext(
        point=HookPoint.BEFORE_AGENT_EXECUTION, component=AGENT, metadata={"user": "ann"},
        data={"agent": "a", "params": {}})), Cancel)
    await _run(hook, _usage(5, user="bob"))          # out of scope: not charged
    assert await counters.read(counter_key("cost", "budget", "user:ann", "hour", "1000")) \
        == "0.5"
    clock.advance(3600)                              # a new hour, a new counter
    assert hook.budget_status()[0].spent == 0
    assert await _run(hook, HookContext(
        point=HookPoint.BEFORE_AGENT_EXECUTION, component=AGENT, metadata={"user": "ann"},
        data={"agent": "a", "params": {}})) is None


@pytest.mark.parametrize("stored", ["abc", "NaN", "-1", {"spent": 1}, [1], True, 1.5])
@pytest.mark.parametrize("policy", [ErrorPolicy.FAIL_OPEN, ErrorPolicy.FAIL_CLOSED])
async def test_a_spending_written_by_something_else_is_a_typed_error(
        stored: Any, policy: ErrorPolicy) -> None:
    counters = MemoryCounters()
    config = CostConfig(prices=PRICES, budgets=(Budget(limit=Decimal("1.00")),))
    hook = CostTrackingHook(config, shared=counters, error_policy=policy)
    await _run(hook, _usage(2))
    (key,) = counters.list_keys()
    counters.update_sync(key, lambda _old: (stored, None))
    registry = HookRegistry()
    hook.install(registry)
    executor = HookExecutor(registry)
    for ctx in (_ask(), _usage(2)):                  # the read path, then the charge path
        outcome = await executor.execute(ctx)
        failure = outcome.failures[0]
        assert failure.error_type == "SharedCounterError"
        assert "not an amount of money" in failure.message
        assert isinstance(outcome.result, Cancel) == (policy is ErrorPolicy.FAIL_CLOSED)
    assert counters.read_sync(key) == stored         # left as it was for its owner to see
    with pytest.raises(SharedCounterError, match="delete that key"):
        hook.record({"provider": "p", "model": "m", "input": 1, "output": 0})


# -- NATS JetStream KV --------------------------------------------------------------------------
def test_compare_and_set_updates_from_several_connections_add_up(kv_url: str) -> None:
    backends = [NatsCounters(kv_url) for _ in range(3)]

    def add(value: Any) -> tuple[int, int]:
        new = (value or 0) + 1
        return new, new

    def work(backend: NatsCounters) -> None:
        for _ in range(100):
            backend.update_sync("hits", add)

    try:
        threads = [threading.Thread(target=work, args=(b,)) for b in backends * 2]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert backends[0].read_sync("hits") == 600
        stats = [b.stats() for b in backends]
        assert sum(s.updates for s in stats) == 600 and all(s.connected for s in stats)
        assert sum(s.conflicts for s in stats) > 0       # they did race
        other = NatsCounters(kv_url.replace("namespace=t", "namespace=u"))
        try:
            assert other.read_sync("hits") is None       # another namespace, other keys
        finally:
            other.close()
    finally:
        for backend in backends:
            backend.close()


async def test_a_rate_limit_and_a_budget_in_nats_kv(kv_url: str) -> None:
    counters = NatsCounters(kv_url)
    try:
        hooks = [RateLimitHook(RateLimitConfig(rate=0.001, burst=3, key="global"),
                               shared=counters) for _ in range(2)]
        results = await asyncio.gather(*(_run(hooks[n % 2], _tool()) for n in range(5)))
        assert sum(r is None for r in results) == 3
        config = CostConfig(prices=PRICES, budgets=(Budget(limit=Decimal("0.3")),))
        cost = CostTrackingHook(config, shared=kv_url)
        await asyncio.gather(*(_run(cost, _usage(1)) for _ in range(3)))
        assert cost.budget_status()[0].spent == Decimal("0.3")
        assert isinstance(await _run(cost, _ask()), Cancel)
    finally:
        counters.close()


async def test_an_unreachable_server_is_a_shared_counter_error_at_once() -> None:
    counters = NatsCounters("nats://127.0.0.1:1?connect_timeout=1")
    try:
        with pytest.raises(SharedCounterError, match="cannot reach the server") as error:
            await counters.update("x", lambda v: (1, 1))
        assert error.value.hint and "JetStream" in error.value.hint
        with pytest.raises(SharedCounterError, match="cannot reach"):  # fails fast now
            counters.read_sync("x")
        hook = RateLimitHook(shared=counters, error_policy=ErrorPolicy.FAIL_CLOSED)
        with pytest.raises(SharedCounterError):
            await _run(hook, _tool())
    finally:
        counters.close()

