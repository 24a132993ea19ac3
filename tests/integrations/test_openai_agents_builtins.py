"""The production built-ins on OpenAI Agents SDK runs, with no extra code: security blocks a
tool call, cost prices model calls from the SDK's usage and a budget blocks, caching serves
a repeated tool call, rate limiting holds, retry retries a failed model call."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from llmspell.builtin import (
    CachingConfig,
    CachingHook,
    CostConfig,
    CostTrackingHook,
    RateLimitConfig,
    RateLimitHook,
    RetryConfig,
    RetryHook,
    SecurityConfig,
    SecurityRule,
    install_all,
    production,
)
from llmspell.builtin.cost import Budget
from llmspell.builtin.security import Match
from llmspell.errors import ModelCallCancelledError
from llmspell.integrations.openai_agents import OpenAIAgentsAdapter
from llmspell.runtime.system import System

from .conftest_openai_agents import (
    HttpError,
    ScriptModel,
    call,
    no_trace_export,
    outputs,
    say,
    tool_then_answer,
    weather_agent,
)
from .conftest_openai_agents import stored_events as stored

__all__ = ["no_trace_export"]  # fixtures




async def test_production_security_blocks_a_tool_call(system: System) -> None:
    rule = SecurityRule(name="no-forecasts", condition=Match(component="tool:forecast"),
                        points=("BeforeToolExecution",), severity="high", action="block")
    install_all(production(bus=system.bus, security=SecurityConfig(rules=(rule,))),
                system.registry)

    def step(i: Any, items: list[dict[str, Any]], tools: list[str]) -> list[Any]:
        done = outputs(items)
        if not done:
            return [call("forecast", {"city": "Paris", "days": 2}, "c1")]
        return [say("got: " + str(done[-1]["output"]))]

    agent, seen = weather_agent(ScriptModel(step))
    run = await OpenAIAgentsAdapter(system).run(agent, "forecast?")
    assert seen == []
    assert "no-forecasts" in run.final_output
    assert stored(system, "tool.forecast.failed")


async def test_cost_prices_model_calls_from_the_sdk_usage_and_a_budget_blocks(
        system: System) -> None:
    cost = CostTrackingHook(CostConfig(), bus=system.bus)
    cost.install(system.registry)
    agent, _ = weather_agent(ScriptModel(tool_then_answer()))
    await OpenAIAgentsAdapter(system).run(agent, "weather?")
    stats = cost.stats()
    assert stats.calls == 2 and stats.input_tokens == 200 and stats.output_tokens == 40
    assert stats.total_cost > 0 and "weather" in stats.by_agent
    cost.uninstall(system.registry)

    budget = CostTrackingHook(CostConfig(budgets=(Budget(limit=Decimal("0.0000001")),)),
                              bus=system.bus)
    budget.install(system.registry)
    model = ScriptModel(tool_then_answer())
    agent, _ = weather_agent(model)
    with pytest.raises(ModelCallCancelledError, match="budget"):
        await OpenAIAgentsAdapter(system).run(agent, "weather?")
    assert model.calls == []


async def test_caching_serves_a_repeated_tool_call(system: System) -> None:
    # Model calls are not cached on SDK runs: the SDK's model-input filter cannot answer
    # for the model (docs/integrations/openai-agents.md).
    CachingHook(CachingConfig(allow_models=frozenset())).install(system.registry)
    agent, seen = weather_agent(ScriptModel(tool_then_answer()))
    adapter = OpenAIAgentsAdapter(system)
    first = await adapter.run(agent, "weather?")
    second = await adapter.run(agent, "weather, please?")
    assert seen == [("weather", "Paris")]
    assert first.final_output == second.final_output == "answer: sunny in Paris"


async def test_rate_limiting_holds_a_tool_call(system: System) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    RateLimitHook(RateLimitConfig(rate=1.0, burst=1, action="wait", max_wait=5.0),
                  points=("BeforeToolExecution",), sleep=sleep).install(system.registry)

    def twice(i: Any, items: list[dict[str, Any]], tools: list[str]) -> list[Any]:
        done = outputs(items)
        if len(done) < 2:
            return [call("weather", {"city": "Paris"}, f"c{len(done)}")]
        return [say("done")]

    agent, seen = weather_agent(ScriptModel(twice))
    run = await OpenAIAgentsAdapter(system).run(agent, "weather?")
    assert run.final_output == "done" and len(seen) == 2
    assert len(waits) == 1 and 0.5 < waits[0] <= 1.0


async def test_retry_retries_a_failed_model_call(system: System) -> None:
    retry = RetryHook(RetryConfig(base_delay=0.001, jitter="none", max_attempts=3))
    retry.install(system.registry)
    model = ScriptModel(tool_then_answer(), failures=[HttpError(503), HttpError(429)])
    agent, _ = weather_agent(model)
    run = await OpenAIAgentsAdapter(system).run(agent, "weather?")
    assert run.final_output == "answer: sunny in Paris"
    assert len(model.calls) == 4  # two failures, then the two turns
