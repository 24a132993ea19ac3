"""The production built-in hooks govern pydantic-ai runs through the adapter with no extra
code: security blocks a tool call, cost tracking prices model calls from pydantic-ai's
usage and enforces a budget, caching serves repeated tool and model calls, rate limiting
holds calls back, retry retries failed tools and model requests."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pydantic_ai.exceptions import ModelHTTPError
from pydantic_ai.messages import ModelMessage

from llmspell.builtin import (
    CachingConfig,
    CostConfig,
    CostTrackingHook,
    RateLimitConfig,
    RateLimitHook,
    RetryConfig,
    RetryHook,
    SecurityConfig,
    SecurityHook,
    SecurityRule,
    install_all,
    production,
)
from llmspell.builtin.cost import Budget, TokenPrice
from llmspell.builtin.security import Match
from llmspell.core.clock import ManualClock
from llmspell.errors import ModelCallCancelledError
from llmspell.runtime.system import System
from tests.integrations.conftest_pydantic_ai import Calls, calc_agent, capture

FAST_RETRY = RetryConfig(base_delay=0.001, max_delay=0.002, max_attempts=4)
NO_SHOUTING = SecurityConfig(rules=(SecurityRule(
    name="no-shouting", condition=Match(component="tool:shout"),
    points=("before_tool_execution",), severity="high", action="block",
    description="shouting is not allowed"),))


def hook_of(hooks: list[Any], kind: type) -> Any:
    return next(h for h in hooks if isinstance(h, kind))


async def test_security_blocks_a_tool_call(system: System) -> None:
    hooks = production(bus=system.bus, security=NO_SHOUTING, retry=FAST_RETRY)
    install_all(hooks, system.registry)
    calls = Calls()
    agent = calc_agent(system, [[("shout", {"text": "hi"}), ("add", {"a": 1, "b": 1})]],
                       calls=calls)
    output = (await agent.run("go")).output
    assert calls.log == [("add", {"a": 1, "b": 1})]  # shout was blocked, add ran
    assert "shouting is not allowed" in output and "add=2" in output
    assert hook_of(hooks, SecurityHook).stats().blocked == 1


async def test_cost_prices_model_calls_from_pydantic_ai_usage(system: System) -> None:
    price = TokenPrice(input=Decimal(1000), output=Decimal(2000))  # USD per 1M tokens
    hooks = production(bus=system.bus, retry=FAST_RETRY,
                       cost=CostConfig(prices={"gpt-4o": price}, use_genai_prices=False))
    install_all(hooks, system.registry)
    result = await calc_agent(system, [[("add", {"a": 1, "b": 2})]]).run("go")
    tracker = hook_of(hooks, CostTrackingHook)
    stats = tracker.stats()
    usage = result.usage
    assert stats.priced_calls == stats.calls == 2
    assert stats.input_tokens == usage.input_tokens
    assert stats.output_tokens == usage.output_tokens
    expected = (Decimal(usage.input_tokens) * 1000 + Decimal(usage.output_tokens) * 2000) \
        / Decimal(1_000_000)
    assert stats.total_cost == expected
    assert stats.by_agent == {"calc": expected}


async def test_a_budget_blocks_model_calls(system: System) -> None:
    price = TokenPrice(input=Decimal(1000), output=Decimal(1000))
    budget = Budget(limit=Decimal("0.25"))
    hooks = production(bus=system.bus, retry=FAST_RETRY,
                       cost=CostConfig(prices={"gpt-4o": price}, use_genai_prices=False,
                                       budgets=(budget,), default_max_tokens=1))
    install_all(hooks, system.registry)
    asked: list[list[ModelMessage]] = []
    plan = [[("add", {"a": 1, "b": 2})]] * 5
    with pytest.raises(ModelCallCancelledError, match="budget"):
        await calc_agent(system, plan, seen=asked).run("go")
    tracker = hook_of(hooks, CostTrackingHook)
    assert 1 <= len(asked) < 6  # stopped before the plan was done
    spent = tracker.stats().total_cost
    assert Decimal(0) < spent <= budget.limit  # priced from usage, never past the limit


async def test_caching_serves_repeated_tool_and_model_calls(system: System) -> None:
    hooks = production(bus=system.bus, retry=FAST_RETRY,
                       caching=CachingConfig(ttl=60, deny_agents=frozenset({"calc"})))
    install_all(hooks, system.registry)
    calls = Calls()
    asked: list[list[ModelMessage]] = []
    events = capture(system, "model.**")
    agent = calc_agent(system, [[("add", {"a": 4, "b": 5})]], calls=calls, seen=asked)
    first = (await agent.run("same question")).output
    second = (await agent.run("same question")).output
    assert first == second == "done: add=9"
    assert len(asked) == 2  # the second run's model calls were served from the cache
    await system.bus.drain()
    served = [e.data["replaced"] for e in events if e.event_type.endswith(".completed")]
    assert served == [False, False, True, True]  # the caching hook's Replace, as the runtime
    assert calls.count("add") == 1  # ... and so was its tool call

    system.registry.clear()
    install_all(production(bus=system.bus, caching=CachingConfig(ttl=60)), system.registry)
    again = calc_agent(system, [[("add", {"a": 4, "b": 5})]], calls=calls, seen=asked)
    assert (await again.run("whole run")).output == "done: add=9"
    assert (await again.run("whole run")).output == "done: add=9"
    assert len(asked) == 4  # the second run was served whole (BeforeAgentExecution)


async def test_rate_limiting_holds_tool_calls(system: System) -> None:
    # A manual clock: the three concurrent calls meet an empty bucket however slowly the
    # machine runs (on a loaded one, real time refilled it between them).
    clock = ManualClock()
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.advance(seconds)

    limiter = RateLimitHook(RateLimitConfig(rate=1000, burst=1, action="wait", max_wait=5),
                            sleep=sleep, clock=clock)
    install_all([limiter], system.registry)
    calls = Calls()
    plan = [[("add", {"a": 1, "b": 1}), ("add", {"a": 2, "b": 2}), ("add", {"a": 3, "b": 3})]]
    output = (await calc_agent(system, plan, calls=calls).run("go")).output
    assert calls.count("add") == 3 and output == "done: add=2; add=4; add=6"
    stats = limiter.stats()
    assert stats.waited >= 1 and waits  # later calls waited for their turn


async def test_rate_limiting_refuses_past_its_limit(system: System) -> None:
    install_all([RateLimitHook(RateLimitConfig(rate=0.001, burst=1, action="cancel"))],
                system.registry)
    calls = Calls()
    plan = [[("add", {"a": 1, "b": 1}), ("add", {"a": 2, "b": 2})]]
    output = (await calc_agent(system, plan, calls=calls).run("go")).output
    assert calls.count("add") == 1
    assert "rate limit exceeded" in output  # the model was told the second call failed


async def test_retry_retries_a_failing_tool_and_model_request(system: System) -> None:
    hooks = production(bus=system.bus, retry=FAST_RETRY)
    install_all(hooks, system.registry)
    failures = {"tool": 0}
    agent = calc_agent(system, [[("fetch", {"url": "x"})]],
                       fail=lambda n: ModelHTTPError(503, "gpt-4o", "busy") if n == 1 else None)

    @agent.tool_plain
    def fetch(url: str) -> str:
        failures["tool"] += 1
        if failures["tool"] < 3:
            raise ConnectionResetError("peer reset")
        return "page"

    assert (await agent.run("go")).output == "done: fetch=page"
    assert failures["tool"] == 3
    stats = hook_of(hooks, RetryHook).stats()
    assert stats.retries_scheduled == 3  # one for the model request, two for the tool
