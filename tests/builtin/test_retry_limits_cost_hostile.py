"""Hostile and correctness checks of the retry, rate-limit and cost built-ins: side effects
under retries, retry storms, shared counters raced by several hooks, bucket keys forged by
user ids, and token usage a framework got wrong."""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal
from typing import Any

import pytest

from llmspell.builtin.cost import Budget, CostConfig, CostTrackingHook, TokenPrice
from llmspell.builtin.counters import MemoryCounters
from llmspell.builtin.nats_counters import NatsCounters
from llmspell.builtin.rate_limit import RateLimitConfig, RateLimitHook
from llmspell.builtin.retry import RetryConfig, RetryHook
from llmspell.core.clock import ManualClock
from llmspell.errors import AgentError, InvalidValueError, ProviderError
from llmspell.hooks import Cancel, ComponentId, ComponentType, HookContext, HookPoint
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.providers.scripted import ScriptedProvider
from tests.builtin.support import kv_url
from tests.events.nats_support import nats_url

__all__ = ["kv_url", "nats_url"]  # fixtures

MODEL = ComponentId(type=ComponentType.MODEL, name="openai/gpt-4o", id="openai/gpt-4o")
FAST = RetryConfig(base_delay=0.001, max_delay=0.001, jitter="none", max_attempts=3)


async def _run(hook: Any, ctx: HookContext) -> Any:
    out = hook.execute(ctx)
    if asyncio.iscoroutine(out):
        out = await out
    return out


# -- retry: side effects ------------------------------------------------------------------------
async def _emails_tried(*, retry_side_effects: bool) -> int:
    """How many times an agent's ``send_email`` ran when it timed out (perhaps after the
    mail went out) and the run then failed with a retryable error the retry hook decides
    at ``AgentError`` (here: the hook watches no model point)."""
    attempts: list[str] = []

    @tool(side_effects=["email"])
    def send_email(to: str) -> str:
        """Send an e-mail (the server times out after accepting it)."""
        attempts.append(to)
        raise TimeoutError("smtp timed out after DATA")

    def script(messages: Any, tools: Any) -> Any:
        if not any(m.role == "tool" for m in messages):
            return {"tool_calls": [{"name": "send_email", "arguments": {"to": "ceo"}}]}
        raise ProviderError("scripted", "overloaded", status=503)

    hook = RetryHook(RetryConfig(base_delay=0.001, max_delay=0.001, max_attempts=3,
                                 retry_side_effects=retry_side_effects),
                     points=("ToolError", "AgentError"), rng=random.Random(1))
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(send_email)
        hook.install(system.registry)
        agent = system.agents.create("mailer", provider=ScriptedProvider(script),
                                     tools=["send_email"])
        with pytest.raises(AgentError):
            await agent.run("mail the ceo")
    return len(attempts)


async def test_an_agent_run_whose_side_effecting_tool_failed_is_not_run_again() -> None:
    # Running the agent again would call send_email again: one attempt in all.
    assert await _emails_tried(retry_side_effects=False) == 1
    # Told it may: the tool is retried, and so is the run (3 runs x 3 attempts).
    assert await _emails_tried(retry_side_effects=True) == 9


def test_an_agent_error_naming_side_effects_is_not_retried() -> None:
    hook = RetryHook(FAST)
    agent = ComponentId(type=ComponentType.AGENT, name="mailer")

    def error(**data: Any) -> HookContext:
        return HookContext(point=HookPoint.AGENT_ERROR, component=agent,
                           data={"agent": "mailer", "attempt": 1,
                                 "error": "agent 'mailer' failed: TimeoutError: timed out",
                                 "error_type": "AgentError", **data})

    assert hook.execute(error(side_effects=["email"])) is None
    assert hook.execute(error(side_effects=[])) is not None
    assert RetryHook(RetryConfig(retry_side_effects=True)).execute(
        error(side_effects=["email"])) is not None


# -- retry: storms ------------------------------------------------------------------------------
def _model_error(correlation: str, retry_after: Any = None, attempt: int = 1) -> HookContext:
    return HookContext(point=HookPoint.MODEL_CALL_ERROR, component=MODEL,
                       correlation_id=correlation,
                       data={"provider": "openai", "model": "gpt-4o", "attempt": attempt,
                             "error": "openai returned HTTP 503", "error_type": "ProviderError",
                             "status": 503, "retryable": True, "retry_after": retry_after})


@pytest.mark.parametrize("retry_after", [86_400.0, float("inf")])
def test_a_retry_after_longer_than_the_runtime_waits_gives_up(retry_after: float) -> None:
    """The runtime waits at most MAX_RETRY_DELAY: retrying then would come before the
    provider said it may, so the hook gives up (even with no max_total_time)."""
    hook = RetryHook(RetryConfig(max_total_time=None))
    assert hook.execute(_model_error("c1", retry_after)) is None
    assert hook.stats().gave_up == 1


@pytest.mark.parametrize("retry_after", [-5.0, float("nan"), "Wed, 21 Oct 2015 07:28:00 GMT",
                                         None, True])
def test_a_bogus_retry_after_is_ignored(retry_after: Any) -> None:
    hook = RetryHook(RetryConfig(jitter="none", base_delay=0.5), rng=random.Random(1))
    result = hook.execute(_model_error("c1", retry_after))
    assert result is not None and result.delay == 0.5


def test_a_retry_budget_bounds_the_retries_of_many_callers_at_once() -> None:
    """100 calls fail at once against a provider that is down: with a budget of 10 retries
    per component per minute, 10 retries are scheduled in all, not 100 x 2."""
    clock = ManualClock()
    hook = RetryHook(RetryConfig(retry_budget=10, retry_budget_window=60.0), clock=clock,
                     rng=random.Random(1))
    results = [hook.execute(_model_error(f"c{n}")) for n in range(100)]
    assert sum(r is not None for r in results) == 10
    stats = hook.stats()
    assert stats.retries_scheduled == 10 and stats.budget_spent == 90
    clock.advance(60.0)  # the window moved on: retries again
    assert hook.execute(_model_error("later")) is not None
    # No budget (the default): every caller retries.
    free = RetryHook(RetryConfig(), rng=random.Random(1))
    assert all(free.execute(_model_error(f"c{n}")) is not None for n in range(100))


@pytest.mark.parametrize("value", [-1, 1.5, True, "10"])
def test_a_bad_retry_budget_is_refused(value: Any) -> None:
    with pytest.raises(InvalidValueError, match="retry_budget"):
        RetryConfig(retry_budget=value)
    with pytest.raises(InvalidValueError, match="retry_budget_window"):
        RetryConfig(retry_budget_window=0.0)


# -- rate limit: shared counters ----------------------------------------------------------------
def _tool_ctx(name: str, user: str) -> HookContext:
    return HookContext(point=HookPoint.BEFORE_TOOL_EXECUTION,
                       component=ComponentId(type=ComponentType.TOOL, name=name),
                       data={"params": {}}, metadata={"user": user})


def test_a_user_id_holding_the_separator_does_not_share_another_users_bucket() -> None:
    """``{user}:{name}``: user "ann:web" calling "search" and user "ann" calling
    "web:search" used to share the bucket "ann:web:search" (one could drain the other's)."""
    hook = RateLimitHook(RateLimitConfig(key="{user}:{name}", rate=0.001, burst=1))
    assert hook.key_for(_tool_ctx("search", "ann:web")) != \
        hook.key_for(_tool_ctx("web:search", "ann"))
    assert hook.execute(_tool_ctx("search", "ann:web")) is None
    assert hook.execute(_tool_ctx("web:search", "ann")) is None       # a bucket of its own
    assert isinstance(hook.execute(_tool_ctx("search", "ann:web")), Cancel)
    # Keys without those characters read as before.
    assert hook.key_for(_tool_ctx("search", "ann")) == "ann:search"
    assert RateLimitHook(RateLimitConfig(key="{user}/{name}")).key_for(
        _tool_ctx("a", "x%2Fy")) != RateLimitHook(RateLimitConfig(key="{user}/{name}")
                                                  ).key_for(_tool_ctx("a", "x/y"))


async def test_two_hooks_racing_on_one_nats_bucket_never_exceed_it(kv_url: str) -> None:
    """Two hooks (two systems, two connections) take from one shared bucket at once: the
    compare-and-set lets exactly ``burst`` calls through, not one burst each."""
    backends = [NatsCounters(kv_url) for _ in range(2)]
    try:
        hooks = [RateLimitHook(RateLimitConfig(rate=0.001, burst=5, key="user",
                                               max_wait=0.0), shared=b) for b in backends]
        results = await asyncio.gather(*(_run(hooks[n % 2], _tool_ctx("search", "ann"))
                                         for n in range(30)))
    finally:
        for backend in backends:
            backend.close()
    assert sum(r is None for r in results) == 5


# -- cost: usage a framework got wrong ----------------------------------------------------------
PRICES = {"gpt-4o": TokenPrice(input=Decimal(1), output=Decimal(1))}


def _before(md: dict[str, Any]) -> HookContext:
    return HookContext(point=HookPoint.BEFORE_MODEL_CALL, component=MODEL, metadata=md,
                       data={"provider": "openai", "model": "gpt-4o", "attempt": 1,
                             "caller": {"type": "agent", "name": "a"},
                             "params": {"messages": [{"role": "user", "content": "hi"}],
                                        "max_tokens": 1000}})


def _after(md: dict[str, Any], usage: Any) -> HookContext:
    result: dict[str, Any] = {"message": {"role": "assistant", "content": "x"},
                              "model": "gpt-4o"}
    if usage is not _MISSING:
        result["usage"] = usage
    return HookContext(point=HookPoint.AFTER_MODEL_CALL, component=MODEL, metadata=md,
                       data={"provider": "openai", "model": "gpt-4o", "attempt": 1,
                             "caller": {"type": "agent", "name": "a"}, "result": result})


_MISSING = object()


async def _calls_allowed(usage: Any, shared: Any = None) -> tuple[int, Decimal]:
    hook = CostTrackingHook(CostConfig(prices=PRICES, use_genai_prices=False,
                                       budgets=(Budget(limit=Decimal("0.01")),)),
                            shared=shared)
    allowed = 0
    for _ in range(100):
        md: dict[str, Any] = {}
        if await _run(hook, _before(md)) is not None:
            break
        allowed += 1
        await _run(hook, _after(md, usage))
    (status,) = hook.budget_status()
    return allowed, Decimal(status.spent)


@pytest.mark.parametrize("usage", [
    _MISSING, None, {}, {"input_tokens": None, "output_tokens": None},
    {"input_tokens": float("nan"), "output_tokens": float("nan")},
    {"input_tokens": -10**9, "output_tokens": -10**9},
    {"input_tokens": "lots", "output_tokens": [1]},
], ids=["missing", "none", "empty", "nulls", "nan", "negative", "garbage"])
@pytest.mark.parametrize("shared", [False, True], ids=["local", "shared"])
async def test_unusable_usage_is_charged_its_estimate_not_zero(usage: Any,
                                                               shared: bool) -> None:
    """A call whose usage is missing or unusable used to cost 0: a blocking budget let
    every call through. It is charged the estimate its BeforeModelCall reserved (about
    0.001 here), so a $0.01 budget stops after about ten calls; a negative count never
    gives money back."""
    allowed, spent = await _calls_allowed(usage, MemoryCounters() if shared else None)
    assert allowed < 12
    assert Decimal("0.008") < spent <= Decimal("0.011")


@pytest.mark.parametrize("usage", [
    {"input_tokens": "3000", "output_tokens": "3000"},
    {"input_tokens": 3000.0, "output_tokens": 3000.0},
], ids=["digit-strings", "integral-floats"])
async def test_token_counts_as_strings_or_floats_are_counted(usage: Any) -> None:
    allowed, spent = await _calls_allowed(usage)
    assert allowed == 2 and spent == Decimal("0.012")  # 6000 tokens at $1/M, twice


async def test_huge_usage_blocks_without_overflowing() -> None:
    allowed, spent = await _calls_allowed({"input_tokens": 10**40, "output_tokens": 10**40})
    assert allowed == 1 and spent > Decimal(10**30)


# -- cost: models nobody prices -----------------------------------------------------------------
def _unpriced_before() -> HookContext:
    return HookContext(point=HookPoint.BEFORE_MODEL_CALL,
                       component=ComponentId(type=ComponentType.MODEL, name="acme/secret-9"),
                       data={"provider": "acme", "model": "secret-9", "attempt": 1,
                             "params": {"messages": [{"role": "user", "content": "hi"}]}})


def test_an_unpriced_model_passes_a_budget_unless_block_unpriced() -> None:
    budget = (Budget(limit=Decimal("0.01")),)
    lenient = CostTrackingHook(CostConfig(use_genai_prices=False, budgets=budget))
    assert lenient.execute(_unpriced_before()) is None  # documented: unknown cost, let through
    strict = CostTrackingHook(CostConfig(use_genai_prices=False, budgets=budget,
                                         block_unpriced=True))
    refused = strict.execute(_unpriced_before())
    assert isinstance(refused, Cancel) and "acme/secret-9" in refused.reason
    assert "CostConfig.prices" in refused.reason
    # Priced, it goes through again; and without a blocking budget nothing is blocked.
    priced = CostTrackingHook(CostConfig(use_genai_prices=False, budgets=budget,
                                         block_unpriced=True,
                                         prices={"secret-9": PRICES["gpt-4o"]}))
    assert priced.execute(_unpriced_before()) is None
    assert CostTrackingHook(CostConfig(use_genai_prices=False, block_unpriced=True)
                            ).execute(_unpriced_before()) is None
    with pytest.raises(InvalidValueError, match="block_unpriced"):
        CostConfig(block_unpriced="yes")  # type: ignore[arg-type]
