"""The built-in hooks on the model points (BeforeModelCall, AfterModelCall, ModelCallError):
through a real System with agents on ScriptedProvider, and with hand-made contexts."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio

from llmspell.builtin import production
from llmspell.builtin.base import estimate_prompt_tokens
from llmspell.builtin.caching import CachingConfig, CachingHook
from llmspell.builtin.cost import Budget, CostConfig, CostTrackingHook, TokenPrice
from llmspell.builtin.rate_limit import ModelLimit, RateLimitConfig, RateLimitHook
from llmspell.core.clock import ManualClock
from llmspell.errors import (
    AgentError,
    InvalidValueError,
    ModelCallCancelledError,
    ProviderError,
)
from llmspell.events import UniversalEvent
from llmspell.hooks import ComponentId, ComponentType, HookContext, HookPoint
from llmspell.hooks.result import Cancel
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.providers.scripted import ScriptedProvider

P = HookPoint
MODEL = ComponentId(type=ComponentType.MODEL, name="openai/gpt-4o", id="openai/gpt-4o")
# 100 USD per 1M tokens: one token costs 0.0001 USD, so the sums below are readable.
PRICES = {"scripted/scripted": TokenPrice(input=Decimal(100), output=Decimal(100))}


@tool(name="lookup")
def lookup(q: str) -> str:
    """Returns a fixed fact."""
    return "fact about " + q


@pytest_asyncio.fixture
async def system() -> AsyncIterator[System]:
    sys = System(SystemConfig(store="memory"))
    await sys.start()
    sys.tools.register(lookup)
    yield sys
    await sys.shutdown()


def looping() -> ScriptedProvider:
    """Never answers: asks the lookup tool on every turn (an agent that keeps spending)."""
    return ScriptedProvider(lambda messages, tools: {
        "tool_calls": [{"name": "lookup", "arguments": {"q": "x" * 40}}]})


def model_ctx(point: str, **data: Any) -> HookContext:
    base: dict[str, Any] = {"provider": "openai", "model": "gpt-4o",
                            "caller": {"type": "agent", "name": "a"}, "turn": 1, "attempt": 1,
                            "params": {"messages": [{"role": "user", "content": "hi " * 40}],
                                       "tools": [], "temperature": None, "max_tokens": 100,
                                       "stream": False}}
    base.update(data)
    return HookContext(point=point, component=MODEL, data=base)


def usage(input_tokens: int, output_tokens: int, **extra: int) -> dict[str, int]:
    return {"input_tokens": input_tokens, "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens, "cached_tokens": 0,
            "reasoning_tokens": 0, **extra}


# -- cost ------------------------------------------------------------------------------------
async def test_budget_stops_a_multi_turn_run_at_the_call_that_would_cross_it(
        system: System) -> None:
    limit = Decimal("0.05")
    hook = CostTrackingHook(CostConfig(prices=PRICES, use_genai_prices=False,
                                       budgets=(Budget(limit=limit),),
                                       default_max_tokens=10),
                            bus=system.bus)
    hook.install(system.registry)
    provider = looping()
    agent = system.agents.create("spender", provider=provider, tools=["lookup"], max_turns=20)
    with pytest.raises(AgentError) as info:
        await agent.run("find facts")
    cause = info.value.__cause__
    assert isinstance(cause, ModelCallCancelledError)
    assert cause.hook == "cost_tracking" and cause.point == P.BEFORE_MODEL_CALL
    assert "budget global (total) would be exceeded" in cause.reason
    assert "budget global (total)" in str(info.value)
    stats = hook.stats()
    # Every call the provider answered was priced; the one that would cross was not made.
    assert stats.calls == len(provider.calls) >= 2
    assert stats.blocked_calls == 1
    assert stats.total_cost <= limit
    # The refused call's estimate really would have crossed.
    estimate = re.search(r"estimated ([0-9.]+)", cause.reason)
    assert estimate is not None and stats.total_cost + Decimal(estimate.group(1)) > limit
    assert stats.reserved == 0  # every reservation was released


async def test_before_model_call_estimate_uses_chars_or_a_tokenizer() -> None:
    params = {"messages": [{"role": "system", "content": "x" * 40},
                           {"role": "user", "content": "y" * 41}],
              "tools": [], "max_tokens": 5}
    assert estimate_prompt_tokens(params) == 10 + 11 + 8
    assert estimate_prompt_tokens(params, tokenizer=lambda text: 1) == 2 + 8
    hook = CostTrackingHook(CostConfig(prices={"openai/gpt-4o": TokenPrice(
        input=Decimal(1_000_000), output=Decimal(2_000_000))}, use_genai_prices=False))
    # 29 prompt tokens at 1 USD + 5 output tokens at 2 USD.
    assert hook.estimate("openai", "gpt-4o", params) == Decimal(39)
    no_cap = {**params, "max_tokens": None}
    assert hook.estimate("openai", "gpt-4o", no_cap) == Decimal(29 + 2 * 1024)
    assert hook.estimate("openai", "unknown-model", params) is None


def test_after_model_call_prices_the_usage_of_the_answering_model() -> None:
    hook = CostTrackingHook(CostConfig(prices={
        "openai/gpt-4o-2024-08-06": TokenPrice(input=Decimal(2), output=Decimal(8)),
        "openai/gpt-4o": TokenPrice(input=Decimal(100), output=Decimal(100))},
        use_genai_prices=False))
    ctx = model_ctx(P.AFTER_MODEL_CALL, result={
        "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop",
        "model": "gpt-4o-2024-08-06", "latency_ms": 3.0, "cost_usd": None,
        "usage": usage(1_000_000, 500_000, cached_tokens=200, reasoning_tokens=7)})
    assert hook.execute(ctx) is None
    [record] = hook.history()
    assert record.model == "gpt-4o-2024-08-06" and record.agent == "a"
    assert Decimal(record.cost or "") == Decimal(2 + 4)
    assert record.cached_tokens == 200 and record.reasoning_tokens == 7 and record.turn == 1
    # A dated name no price source knows is priced as the model asked for.
    hook.execute(model_ctx(P.AFTER_MODEL_CALL, result={
        "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop",
        "model": "gpt-4o-2099-01-01", "latency_ms": 1.0, "usage": usage(10_000, 0)}))
    assert hook.history()[-1].model == "gpt-4o" and hook.history()[-1].cost == "1"
    # No usage: nothing to price.
    hook.execute(model_ctx(P.AFTER_MODEL_CALL, result={
        "message": {"role": "assistant", "content": "ok"}, "usage": None}))
    assert len(hook.history()) == 2


def test_reservations_count_calls_in_flight_and_are_released() -> None:
    clock = ManualClock(start=1_700_000_000.0)
    hook = CostTrackingHook(CostConfig(
        prices={"openai/gpt-4o": TokenPrice(input=Decimal(0), output=Decimal(1_000_000))},
        use_genai_prices=False, budgets=(Budget(limit=Decimal(250)),),
        reservation_ttl=30), clock=clock)
    first, second, third = (model_ctx(P.BEFORE_MODEL_CALL) for _ in range(3))
    assert hook.execute(first) is None and hook.execute(second) is None  # 100 each
    refused = hook.execute(third)  # 200 reserved + 100 > 250
    assert isinstance(refused, Cancel) and "reserved by calls in flight" in refused.reason
    assert hook.stats().reserved == 200
    # The first call fails: its reservation goes; the third now fits.
    error = first.child(P.MODEL_CALL_ERROR, MODEL, {**first.data, "error": "boom"})
    hook.execute(error)
    assert hook.stats().reserved == 100
    assert hook.execute(model_ctx(P.BEFORE_MODEL_CALL)) is None
    # Reservations nobody released expire.
    clock.advance(31)
    assert hook.execute(model_ctx(P.BEFORE_MODEL_CALL)) is None
    assert hook.stats().reserved == 100


def test_an_unpriced_model_is_not_refused_by_the_estimate() -> None:
    hook = CostTrackingHook(CostConfig(use_genai_prices=False, use_fallback=False,
                                       budgets=(Budget(limit=Decimal("0.01")),)))
    assert hook.execute(model_ctx(P.BEFORE_MODEL_CALL)) is None


# -- rate limit ------------------------------------------------------------------------------
async def test_requests_per_minute_per_model_through_an_agent(system: System) -> None:
    clock = ManualClock()
    hook = RateLimitHook(RateLimitConfig(models={
        "scripted/*": ModelLimit(requests_per_minute=2)}), clock=clock)
    hook.install(system.registry)
    assert P.BEFORE_MODEL_CALL in hook.points and P.AFTER_MODEL_CALL in hook.points
    provider = looping()
    agent = system.agents.create("busy", provider=provider, tools=["lookup"], max_turns=5)
    with pytest.raises(AgentError) as info:
        await agent.run("go")
    cause = info.value.__cause__
    assert isinstance(cause, ModelCallCancelledError) and cause.hook == "rate_limit"
    assert "rate limit exceeded for model 'scripted/scripted' (requests per minute)" \
        in cause.reason and "retry after 30.000 s" in cause.reason
    assert len(provider.calls) == 2  # the third call never reached the provider
    stats = hook.stats().models["scripted/scripted"]
    assert (stats.allowed, stats.limited) == (2, 1) and stats.tokens > 0
    clock.advance(30)  # half a minute: one request back
    other = system.agents.create("calm", provider=ScriptedProvider(["done"]))
    assert (await other.run("hi")).output == "done"


def test_tokens_are_estimated_before_and_corrected_after() -> None:
    clock = ManualClock()
    hook = RateLimitHook(RateLimitConfig(models={
        "openai/gpt-4o": ModelLimit(tokens_per_minute=300)}), clock=clock)
    before = model_ctx(P.BEFORE_MODEL_CALL)  # 120 chars + 4: 34 tokens, max_tokens 100
    assert hook.execute(before) is None
    assert before.metadata["x-ratelimit-remaining-tokens"] == str(300 - 134)
    after = before.child(P.AFTER_MODEL_CALL, MODEL, {**before.data, "result": {
        "message": {"role": "assistant", "content": "ok"}, "usage": usage(30, 4)}})
    hook.execute(after)
    assert hook.stats().models["openai/gpt-4o"].tokens_left == 300 - 34
    # 234 tokens fit only because the first call's unused 100 were given back.
    bigger = model_ctx(P.BEFORE_MODEL_CALL)
    bigger.data["params"]["max_tokens"] = 200
    assert hook.execute(bigger) is None
    refused = hook.execute(model_ctx(P.BEFORE_MODEL_CALL))
    assert isinstance(refused, Cancel) and "(tokens per minute)" in refused.reason
    assert "retry after" in refused.reason and refused.reason.endswith(" s")
    # A call bigger than the whole minute's allowance is refused at once.
    huge = model_ctx(P.BEFORE_MODEL_CALL)
    huge.data["params"]["max_tokens"] = 1000
    too_big = hook.execute(huge)
    assert isinstance(too_big, Cancel) and "more than its limit of 300" in too_big.reason
    # A model without a limit is not counted.
    other = model_ctx(P.BEFORE_MODEL_CALL, model="gpt-4o-mini")
    assert hook.execute(other) is None and "openai/gpt-4o-mini" not in hook.stats().models


async def test_a_limited_model_call_falls_back_to_another_model(system: System) -> None:
    fallback = ScriptedProvider(["from the fallback"] * 3, name="fallback", model="f")
    system.models.register(fallback)
    hook = RateLimitHook(RateLimitConfig(
        models={"scripted/scripted": ModelLimit(requests_per_minute=1)},
        model_fallback="fallback/f"), clock=ManualClock())
    hook.install(system.registry)
    agent = system.agents.create("a", provider=ScriptedProvider(["main"] * 3))
    assert (await agent.run("one")).output == "main"
    assert (await agent.run("two")).output == "from the fallback"
    assert hook.stats().redirected == 1


def test_model_limit_config_is_checked() -> None:
    with pytest.raises(InvalidValueError, match="bad key 'gpt-4o'"):
        RateLimitConfig(models={"gpt-4o": ModelLimit(requests_per_minute=1)})
    with pytest.raises(InvalidValueError, match="needs requests_per_minute"):
        ModelLimit()
    with pytest.raises(InvalidValueError, match="tokens_per_minute"):
        ModelLimit(tokens_per_minute=0)
    with pytest.raises(InvalidValueError, match="model_fallback"):
        RateLimitConfig(model_fallback="gpt-4o")


# -- caching ---------------------------------------------------------------------------------
async def test_a_cached_model_response_is_served_without_calling_the_provider(
        system: System) -> None:
    seen: list[UniversalEvent] = []
    system.bus.subscribe("model.scripted.completed", seen.append)
    hook = CachingHook(CachingConfig(ttl=60))
    hook.install(system.registry)
    cost = CostTrackingHook(CostConfig(prices=PRICES, use_genai_prices=False))
    cost.install(system.registry)
    provider = ScriptedProvider(lambda messages, tools: f"answer {len(provider.calls)}")
    first = system.agents.create("first", provider=provider, instructions="Be brief.")
    second = system.agents.create("second", provider=provider, instructions="Be brief.")
    assert (await first.run("hello")).output == "answer 1"
    # Another agent, the same request to the same model: served from the cache (the agent
    # run itself is not cached: it is another agent).
    assert (await second.run("hello")).output == "answer 1"
    assert len(provider.calls) == 1
    assert seen[-1].data["replaced"] is True and seen[0].data["replaced"] is False
    assert cost.stats().calls == 1  # a cached answer costs nothing
    # Other messages or parameters are other entries.
    assert (await second.run("hello again")).output == "answer 2"
    cool = system.agents.create("cool", provider=provider, instructions="Be brief.",
                                temperature=0.0)
    assert (await cool.run("hello")).output == "answer 3"
    stats = hook.stats()
    assert stats.served == 1 and len(provider.calls) == 3


def test_model_cache_key_covers_the_request_not_the_call() -> None:
    hook = CachingHook()
    key = hook.key_for(model_ctx(P.BEFORE_MODEL_CALL))
    assert key is not None and key.startswith("model:openai/gpt-4o:")
    streamed = model_ctx(P.BEFORE_MODEL_CALL, attempt=2, turn=7,
                         caller={"type": "agent", "name": "other"})
    streamed.data["params"]["stream"] = True
    assert hook.key_for(streamed) == key
    for change in ({"temperature": 0.5}, {"max_tokens": 5}, {"tools": [{"name": "t"}]},
                   {"messages": [{"role": "user", "content": "other"}]}):
        ctx = model_ctx(P.BEFORE_MODEL_CALL)
        ctx.data["params"].update(change)
        assert hook.key_for(ctx) != key, change
    assert hook.key_for(model_ctx(P.BEFORE_MODEL_CALL, model="gpt-4o-mini")) != key
    denied = CachingHook(CachingConfig(deny_models=frozenset({"openai/gpt-4o"})))
    assert denied.execute(model_ctx(P.BEFORE_MODEL_CALL)) is None
    assert denied.stats().bypassed == 1
