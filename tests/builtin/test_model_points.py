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
from llmspell.builtin.debugging import DebuggingHook
from llmspell.builtin.logging_hook import LoggingConfig, LoggingHook
from llmspell.builtin.metrics import (
    ATTR_MODEL,
    ATTR_OUTCOME,
    ATTR_PROVIDER,
    ATTR_TOKEN_TYPE,
    MetricsHook,
    OpenTelemetryExporter,
    PrometheusExporter,
)
from llmspell.builtin.rate_limit import ModelLimit, RateLimitConfig, RateLimitHook
from llmspell.builtin.retry import RetryConfig, RetryHook
from llmspell.builtin.security import (
    API_KEY_PATTERN,
    EMAIL_PATTERN,
    MESSAGE_CONTENT,
    REPLY_CONTENT,
    SecurityConfig,
    SecurityHook,
    SecurityRule,
    redact_rule,
)
from llmspell.core.clock import ManualClock
from llmspell.errors import (
    AgentError,
    InvalidValueError,
    ModelCallCancelledError,
    ProviderError,
)
from llmspell.events import UniversalEvent
from llmspell.hooks import ComponentId, ComponentType, HookContext, HookPoint
from llmspell.hooks.points import parse_point
from llmspell.hooks.result import Cancel, Modified, Retry
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.providers.scripted import ScriptedProvider
from tests.ci import require_module

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


async def test_a_limited_model_call_can_wait_for_its_turn(system: System) -> None:
    clock = ManualClock()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)

    hook = RateLimitHook(RateLimitConfig(
        models={"*": ModelLimit(requests_per_minute=6)}, action="wait", max_wait=15),
        clock=clock, sleep=sleep)
    hook.install(system.registry)
    provider = looping()
    agent = system.agents.create("patient", provider=provider, tools=["lookup"], max_turns=8)
    response = await agent.run("go")
    assert response.stop_reason == "turn_limit" and len(provider.calls) == 8
    assert slept == [10.0, 10.0]  # 6 at once, then one every 10 s
    stats = hook.stats().models["scripted/scripted"]
    assert (stats.allowed, stats.waited) == (6, 2)
    # A wait longer than max_wait cancels instead.
    strict = RateLimitHook(RateLimitConfig(models={"*": ModelLimit(requests_per_minute=1)},
                                           action="wait", max_wait=5), clock=clock)
    assert strict.execute(model_ctx(P.BEFORE_MODEL_CALL)) is None
    refused = strict.execute(model_ctx(P.BEFORE_MODEL_CALL))
    assert isinstance(refused, Cancel) and "over max_wait 5 s" in refused.reason


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


# -- retry -----------------------------------------------------------------------------------
FAST = RetryConfig(strategy="exponential", base_delay=0.01, max_delay=0.05, jitter="none",
                   max_attempts=3)


def failing(*errors: Exception) -> ScriptedProvider:
    """Raises ``errors`` one per call, then answers ``"ok"``."""
    queue = list(errors)

    def reply(messages: Any, tools: Any) -> str:
        if queue:
            raise queue.pop(0)
        return "ok"

    return ScriptedProvider(reply)


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The runtime's retry waits, recorded instead of slept."""
    from llmspell.runtime import calls

    waited: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waited.append(seconds)

    monkeypatch.setattr(calls.asyncio, "sleep", fake_sleep)
    return waited


@pytest.mark.parametrize("status", [408, 429, 500, 503, 529])
async def test_provider_statuses_are_retried_at_model_call_error(
        system: System, waits: list[float], status: int) -> None:
    hook = RetryHook(FAST)
    hook.install(system.registry)
    provider = failing(ProviderError("scripted", "try later", status=status),
                       ProviderError("scripted", "try later", status=status))
    agent = system.agents.create("a", provider=provider)
    response = await agent.run("q")
    assert response.output == "ok" and response.attempts == 1  # the run was not re-run
    assert hook.stats().by_component["model:scripted/scripted"].retries_scheduled == 2
    assert waits == [0.01, 0.02]  # the hook's own backoff


async def test_retryable_flag_and_retry_after_are_honoured(
        system: System, waits: list[float]) -> None:
    hook = RetryHook(FAST)
    hook.install(system.registry)
    cut = ProviderError("scripted", "stream cut", retryable=True)  # no status
    limited = ProviderError("scripted", "slow down", status=429, retryable=True,
                            retry_after=2.5)
    agent = system.agents.create("a", provider=failing(cut, limited))
    assert (await agent.run("q")).output == "ok"
    # The second wait is the provider's Retry-After, longer than the hook's 0.02 s.
    assert waits == [0.01, 2.5]


async def test_a_model_call_given_up_is_not_retried_again_as_the_agent_run(
        system: System, waits: list[float]) -> None:
    hook = RetryHook(FAST)
    hook.install(system.registry)
    # The message alone would make the AgentError retryable (HTTP 503, "temporarily").
    down = [ProviderError("scripted", "temporarily unavailable (HTTP 503)", status=503)
            for _ in range(10)]
    provider = failing(*down)
    agent = system.agents.create("a", provider=provider)
    with pytest.raises(AgentError, match="unavailable"):
        await agent.run("q")
    assert len(provider.calls) == 3  # three model attempts, not three agent runs of three
    stats = hook.stats()
    assert stats.by_component["model:scripted/scripted"].gave_up == 1
    assert stats.by_component["agent:a"].retries_scheduled == 0


async def test_non_retryable_provider_errors_and_long_retry_after_are_not_retried(
        system: System, waits: list[float]) -> None:
    hook = RetryHook(RetryConfig(base_delay=0.01, max_delay=0.05, jitter="none",
                                 max_total_time=1.0))
    hook.install(system.registry)
    refused = [ProviderError("scripted", "bad key", status=401),
               ProviderError("scripted", "come back in a minute", status=429,
                             retryable=True, retry_after=60)]
    provider = failing(*refused)
    agent = system.agents.create("a", provider=provider)
    with pytest.raises(AgentError, match="bad key"):
        await agent.run("q")
    with pytest.raises(AgentError, match="come back in a minute"):
        await agent.run("q")
    assert len(provider.calls) == 2 and waits == []
    stats = hook.stats().by_component["model:scripted/scripted"]
    assert stats.non_retryable == 1 and stats.gave_up == 1


def test_retry_decision_from_a_model_error_context() -> None:
    hook = RetryHook(FAST)
    ctx = model_ctx(P.MODEL_CALL_ERROR, error="boom", error_type="ProviderError",
                    status=None, retryable=True, retry_after=None)
    assert isinstance(hook.execute(ctx), Retry)
    assert hook.is_retryable("ProviderError", "boom", None, retryable=False) is False
    assert hook.is_retryable("ModelCallCancelledError", "rate limit exceeded") is False


# -- security --------------------------------------------------------------------------------
def echo() -> ScriptedProvider:
    """Answers with every message the provider was sent, joined."""
    return ScriptedProvider(lambda messages, tools: " | ".join(
        str(m.content) for m in messages))


async def test_mask_rules_redact_the_prompt_before_it_leaves(system: System) -> None:
    hook = SecurityHook(SecurityConfig(rules=(
        redact_rule("emails", EMAIL_PATTERN),
        redact_rule("api-keys", API_KEY_PATTERN, replacement="[KEY]"),
    )), bus=system.bus)
    hook.install(system.registry)
    provider = echo()
    agent = system.agents.create("a", provider=provider,
                                 instructions="Reply to bob@example.com politely.")
    response = await agent.run("my key is sk-proj-abcdefghijklmnopqrstuv, mail me at "
                               "ann.lee@corp.example.org or bob@example.com")
    sent = [m.content for m in provider.calls[0][0]]
    assert sent == ["Reply to [REDACTED] politely.",
                    "my key is [KEY], mail me at [REDACTED] or [REDACTED]"]
    assert "example" not in response.output and "sk-proj" not in response.output
    masks = hook.audit(action="mask")
    assert [e.rule for e in masks] == ["emails", "api-keys"]
    assert masks[0].message.endswith("(3 replaced)")
    # The audit keeps the masked data only.
    assert "bob@example.com" not in repr([e.data for e in hook.audit()])
    assert hook.stats().masked == 2 and hook.stats().blocked == 0


async def test_a_block_rule_on_message_content_cancels_the_call(system: System) -> None:
    hook = SecurityHook(SecurityConfig(rules=(SecurityRule(
        name="no-ssn", action="block", severity="high", points=("BeforeModelCall",),
        description="a social security number in a prompt",
        condition={"path": MESSAGE_CONTENT, "matches": r"\b\d{3}-\d{2}-\d{4}\b"}),)))
    hook.install(system.registry)
    provider = echo()
    agent = system.agents.create("a", provider=provider)
    with pytest.raises(AgentError) as info:
        await agent.run("my number is 123-45-6789")
    cause = info.value.__cause__
    assert isinstance(cause, ModelCallCancelledError) and cause.hook == "security"
    assert "security rule 'no-ssn'" in cause.reason and provider.calls == []
    assert (await agent.run("no numbers here")).output == "no numbers here"


async def test_a_mask_rule_on_the_reply(system: System) -> None:
    hook = SecurityHook(SecurityConfig(rules=(redact_rule(
        "reply-emails", EMAIL_PATTERN, path=REPLY_CONTENT, points=("AfterModelCall",)),)))
    hook.install(system.registry)
    agent = system.agents.create("a", provider=ScriptedProvider(
        ["write to help@vendor.example"]))
    assert (await agent.run("who?")).output == "write to [REDACTED]"


def test_mask_rules_are_checked_and_copy_only_what_they_change() -> None:
    with pytest.raises(InvalidValueError, match="'mask' rule needs a Match"):
        SecurityRule(name="m", action="mask", condition={"path": MESSAGE_CONTENT,
                                                         "contains": "x"})
    with pytest.raises(InvalidValueError, match="'mask' rule needs a Match"):
        SecurityRule(name="m", action="mask", condition=lambda ctx: True)
    hook = SecurityHook(SecurityConfig(rules=(redact_rule("digits", r"\d+"),)))
    ctx = model_ctx(P.BEFORE_MODEL_CALL)
    ctx.data["params"]["messages"] = [{"role": "system", "content": None},
                                      {"role": "user", "content": "call 555 or 556"}]
    original = ctx.data["params"]["messages"]
    out = hook.execute(ctx)
    assert isinstance(out, Modified)
    assert out.data["params"]["messages"][1]["content"] == "call [REDACTED] or [REDACTED]"
    assert original[1]["content"] == "call 555 or 556"  # the input is not changed
    assert out.data["params"]["messages"][0] is original[0]
    assert hook.execute(model_ctx(P.BEFORE_MODEL_CALL)) is None  # nothing to mask
    # A rule at another point does not run here.
    assert hook.execute(model_ctx(P.AFTER_MODEL_CALL, result={"message": {
        "role": "assistant", "content": "42"}})) is None


# -- metrics, logging, debugging ------------------------------------------------------------
def asks_then_answers() -> ScriptedProvider:
    """Turn 1 asks the lookup tool, turn 2 answers: two model calls per run."""
    def reply(messages: Any, tools: Any) -> Any:
        if messages[-1].role == "tool":
            return "the answer"
        return {"tool_calls": [{"name": "lookup", "arguments": {"q": "secret prompt"}}]}
    return ScriptedProvider(reply)


async def test_metrics_per_model_tokens_latency_and_errors(
        system: System, waits: list[float]) -> None:
    prometheus = require_module("prometheus_client")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    registry = prometheus.CollectorRegistry()
    reader = InMemoryMetricReader()
    hook = MetricsHook(exporters=[
        PrometheusExporter(registry),
        OpenTelemetryExporter(meter_provider=MeterProvider(metric_readers=[reader]))])
    hook.install(system.registry)
    RetryHook(FAST).install(system.registry)
    agent = system.agents.create("a", provider=asks_then_answers(), tools=["lookup"])
    response = await agent.run("q")
    flaky = system.agents.create("b", provider=failing(
        ProviderError("scripted", "busy", status=503)))
    await flaky.run("q")
    stats = hook.stats()
    model = stats.models["scripted/scripted"]
    assert (model.provider, model.model, model.calls, model.errors) == (
        "scripted", "scripted", 3, 1)
    usage = response.token_usage
    assert model.tokens["input"] >= usage["input"] > 0 and model.tokens["output"] > 0
    assert model.latency.count == 3 and model.latency.kind == "model"
    assert stats.calls_by_component["model:scripted/scripted"] == 3 + 3 + 1
    assert stats.errors_by_point["model_call_error"] == 1
    value = registry.get_sample_value
    labels = {"provider": "scripted", "model": "scripted"}
    assert value("llmspell_model_calls_total", {**labels, "outcome": "ok"}) == 3
    assert value("llmspell_model_calls_total", {**labels, "outcome": "error"}) == 1
    assert value("llmspell_model_tokens_total", {**labels, "type": "input"}) == \
        model.tokens["input"]
    assert value("llmspell_model_latency_seconds_count", labels) == 3
    points: dict[str, list[Any]] = {}
    for resource in reader.get_metrics_data().resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    calls = {p.attributes[ATTR_OUTCOME]: p.value for p in points["llmspell.model.calls"]}
    assert calls == {"ok": 3, "error": 1}
    tokens = {p.attributes[ATTR_TOKEN_TYPE]: p.value for p in points["llmspell.model.tokens"]}
    assert tokens["output"] == model.tokens["output"]
    (duration,) = points["llmspell.model.duration"]
    assert duration.count == 3 and dict(duration.attributes) == {
        ATTR_PROVIDER: "scripted", ATTR_MODEL: "scripted"}


async def test_logging_per_model_without_the_prompt_by_default(
        system: System, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llmspell.hooks.log")
    quiet = LoggingHook()
    quiet.install(system.registry)
    agent = system.agents.create("a", provider=asks_then_answers(), tools=["lookup"],
                                 instructions="keep the secret prompt")
    await agent.run("q")
    records = [r for r in caplog.records if getattr(r, "llmspell_point", "")
               .endswith("model_call")]
    assert [r.llmspell_point for r in records] == [  # type: ignore[attr-defined]
        "before_model_call", "after_model_call"] * 2
    after = records[1]
    assert after.llmspell_provider == "scripted"  # type: ignore[attr-defined]
    assert after.llmspell_model == "scripted"  # type: ignore[attr-defined]
    assert after.llmspell_usage["input_tokens"] > 0  # type: ignore[attr-defined]
    assert after.llmspell_latency_ms >= 0  # type: ignore[attr-defined]
    data = after.llmspell_data  # type: ignore[attr-defined]
    assert data["params"]["messages"] == 2 and data["params"]["tools"] == ["lookup"]
    assert data["result"]["tool_calls"] == ["lookup"] and data["caller"]["name"] == "a"
    assert "secret prompt" not in " ".join(r.getMessage() for r in records)
    # Token counts are not secrets, although their names hold "token".
    assert after.llmspell_usage["cached_tokens"] == 0  # type: ignore[attr-defined]
    assert data["result"]["usage"]["reasoning_tokens"] == 0
    caplog.clear()
    quiet.uninstall(system.registry)
    verbose = LoggingHook(LoggingConfig(model_content=True))
    verbose.install(system.registry)
    await agent.run("q")
    assert "keep the secret prompt" in caplog.text


def test_logging_model_call_error_at_the_error_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llmspell.hooks.log")
    LoggingHook().execute(model_ctx(P.MODEL_CALL_ERROR, error="busy", error_type="ProviderError",
                                    status=503, retryable=True, retry_after=1.5))
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert record.llmspell_data["status"] == 503  # type: ignore[attr-defined]
    assert record.llmspell_data["retry_after"] == 1.5  # type: ignore[attr-defined]


async def test_debugging_traces_model_calls(system: System) -> None:
    hook = DebuggingHook()
    hook.install(system.registry)
    agent = system.agents.create("a", provider=asks_then_answers(), tools=["lookup"])
    await agent.run("q")
    after = hook.traces(point="AfterModelCall")
    assert len(after) == 2 and hook.traces(component="model:scripted/scripted")
    first = after[0]
    assert (first.provider, first.model) == ("scripted", "scripted")
    assert first.usage is not None and first.usage["total_tokens"] > 0
    assert first.latency_ms is not None and first.duration_ms is not None
    assert first.data is not None and "secret prompt" not in repr(first.data)
    before = hook.traces(point="before_model_call")[0]
    assert before.latency_ms is None and before.usage is None and before.model == "scripted"


# -- the production set ----------------------------------------------------------------------
async def test_production_set_governs_model_calls(system: System, waits: list[float]) -> None:
    hooks = production(
        bus=system.bus,
        security=SecurityConfig(rules=(redact_rule("emails", EMAIL_PATTERN),)),
        cost=CostConfig(prices=PRICES, use_genai_prices=False,
                        budgets=(Budget(limit=Decimal("0.02")),), default_max_tokens=5),
        rate_limit=RateLimitConfig(models={"*": ModelLimit(requests_per_minute=100)}),
        caching=CachingConfig(allow_agents=()),
    )
    for hook in hooks:
        hook.install(system.registry)
    by_name = {h.metadata.name: h for h in hooks}
    for name in ("security", "cost_tracking", "retry", "metrics", "logging", "caching",
                 "rate_limit"):
        assert any(str(p).endswith("model_call") or p == P.MODEL_CALL_ERROR
                   for p in by_name[name].points), name
    provider = failing(ProviderError("scripted", "busy", status=429, retryable=True,
                                     retry_after=0.5))
    agent = system.agents.create("a", provider=provider)
    assert (await agent.run("mail ann@example.com")).output == "ok"
    assert provider.calls[-1][0][0].content == "mail [REDACTED]"  # masked, then retried
    assert waits == [0.5]
    assert (await agent.run("mail ann@example.com")).output == "ok"  # served from cache
    assert len(provider.calls) == 2
    metrics = by_name["metrics"].stats()  # type: ignore[attr-defined]
    assert metrics.models["scripted/scripted"].calls == 1
    assert metrics.models["scripted/scripted"].errors == 1
    cost = by_name["cost_tracking"].stats()  # type: ignore[attr-defined]
    assert cost.calls == 1 and cost.total_cost > 0
    # A long prompt would cross the budget: refused before the provider sees it.
    with pytest.raises(AgentError, match="would be exceeded"):
        await agent.run("x" * 2000)
    assert len(provider.calls) == 2


# -- the old custom point --------------------------------------------------------------------
async def test_the_old_agent_model_call_point_is_an_alias_of_after_model_call(
        system: System) -> None:
    from llmspell.builtin.base import MODEL_CALL as BUILTIN_MODEL_CALL
    from llmspell.runtime import MODEL_CALL

    for name in ("custom:agent_model_call", "agent_model_call", "AgentModelCall",
                 HookPoint.custom("agent_model_call")):
        assert parse_point(name) is P.AFTER_MODEL_CALL, name
    assert MODEL_CALL is BUILTIN_MODEL_CALL is P.AFTER_MODEL_CALL
    seen: list[dict[str, Any]] = []
    system.registry.register("custom:agent_model_call",
                             lambda ctx: seen.append(ctx.data["result"]["usage"]), name="old")
    agent = system.agents.create("a", provider=ScriptedProvider(["hi"]))
    response = await agent.run("hello")
    assert len(seen) == 1 and seen[0]["total_tokens"] == response.token_usage["total"]
    assert [h.name for h in system.registry.list(P.AFTER_MODEL_CALL)] == ["old"]
