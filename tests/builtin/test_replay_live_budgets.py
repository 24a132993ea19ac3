"""Replays and the built-ins that keep live state: what a replay serves from its recording
(no provider called, nothing spent) charges no budget, takes no rate-limit token and is
not counted as live traffic; what a what-if replay runs live after its change is charged,
limited and counted as usual."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from llmspell.builtin.cost import Budget, CostConfig, CostTrackingHook, TokenPrice
from llmspell.builtin.metrics import MetricsHook
from llmspell.builtin.rate_limit import ModelLimit, RateLimitConfig, RateLimitHook
from llmspell.core.run_scope import replay_serves
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.providers import ScriptedProvider
from llmspell.runtime.providers.base import Message

# Output only, $1 a token: a call's estimate is its max_tokens (10) and its real cost its
# 10 output tokens. A budget of 25 holds two calls, not three.
PER_TOKEN = TokenPrice(input=Decimal(0), output=Decimal(1_000_000))
ASKED: list[str] = []
REAL: list[str] = []


def answer(messages: Any, tools: Any) -> str:
    ASKED.append(str(messages[-1].content))
    return "a" * 40  # 10 output tokens


@tool()
def quote(symbol: str) -> dict[str, Any]:
    """The price of a symbol."""
    REAL.append(symbol)
    return {"symbol": symbol, "price": 100}


@pytest.fixture
async def system() -> AsyncIterator[System]:
    ASKED.clear()
    REAL.clear()
    sys = System(SystemConfig(store="memory"))
    await sys.start()
    sys.tools.register(quote)
    yield sys
    await sys.shutdown()


def asking(system: System) -> Any:
    provider = ScriptedProvider(answer, model="gpt-4o-mini", name="openai")

    async def op(question: Any) -> Any:
        done = await system.models.call(provider, [Message(role="user", content=question)],
                                        max_tokens=10)
        await system.tools.execute("quote", {"symbol": "ACME"})
        return done.completion.message.content
    return op


async def recorded(system: System, question: str = "hi") -> str:
    async with system.runs.start("job", "ask", question) as run:
        run.output = await asking(system)(question)
    return run.run_id


def budget(limit: str = "25") -> CostTrackingHook:
    return CostTrackingHook(CostConfig(
        prices={"gpt-4o-mini": PER_TOKEN}, use_genai_prices=False,
        budgets=(Budget(limit=Decimal(limit)),), default_max_tokens=10))


def spent(hook: CostTrackingHook) -> Decimal:
    return hook.budget_status()[0].spent


async def test_an_exact_replay_charges_no_budget(system: System) -> None:
    hook = budget()
    hook.install(system.registry)
    run_id = await recorded(system)
    assert spent(hook) == Decimal(10) and len(ASKED) == 1
    for _ in range(3):  # served: free, however often (the budget holds two live calls)
        result = await system.runs.replay(run_id, operation=asking(system))
        assert result.error is None and not result.diverged, [
            d.describe() for d in result.divergences]
        assert result.served == {"recording": 2}
    assert spent(hook) == Decimal(10) and len(ASKED) == 1
    stats = hook.stats()
    assert stats.calls == 1 and len(hook.history()) == 1 and stats.replayed_calls == 3
    assert stats.reserved == 0
    # The user's live calls still have what is left of the budget.
    await asking(system)("live")
    assert spent(hook) == Decimal(20) and len(ASKED) == 2


async def test_a_spent_budget_does_not_refuse_a_replay(system: System) -> None:
    hook = budget()
    hook.install(system.registry)
    run_id = await recorded(system)
    await asking(system)("again")
    assert spent(hook) == Decimal(20)  # a third live call would cross 25
    result = await system.runs.replay(run_id, operation=asking(system))
    assert result.error is None and not result.diverged, [
        d.describe() for d in result.divergences]
    assert spent(hook) == Decimal(20) and len(ASKED) == 2


async def test_a_what_if_replay_pays_for_what_it_runs_live(system: System) -> None:
    hook = budget()
    hook.install(system.registry)
    run_id = await recorded(system)
    result = await system.runs.replay(run_id, mode="what-if", input="changed",
                                      operation=asking(system))
    assert result.served == {"live": 1, "recording": 1}  # the tool's input is the same
    assert ASKED == ["hi", "changed"]
    assert spent(hook) == Decimal(20)  # the live call is real spending
    # ... and is refused by the live budget like any live call.
    refused = await system.runs.replay(run_id, mode="what-if", input="once more",
                                       operation=asking(system))
    assert refused.error is not None and "budget" in refused.error["message"]
    assert ASKED == ["hi", "changed"] and spent(hook) == Decimal(20)


async def test_replays_take_no_rate_limit_tokens(system: System) -> None:
    limiter = RateLimitHook(RateLimitConfig(
        rate=0.001, burst=2, key="component",
        models={"openai/*": ModelLimit(requests_per_minute=2)}))
    limiter.install(system.registry)
    run_id = await recorded(system)  # one of the two tokens of each bucket
    for _ in range(5):
        result = await system.runs.replay(run_id, operation=asking(system))
        assert result.error is None and not result.diverged, [
            d.describe() for d in result.divergences]
    assert limiter.allowed == 2 and limiter.limited == 0  # the recorded run's two
    await asking(system)("live")  # the second token of each: still there
    assert limiter.allowed == 4 and limiter.limited == 0
    assert len(ASKED) == 2 and REAL == ["ACME", "ACME"]


async def test_a_what_if_replays_live_calls_are_rate_limited(system: System) -> None:
    limiter = RateLimitHook(RateLimitConfig(
        rate=0.001, burst=10, models={"openai/*": ModelLimit(requests_per_minute=1)}))
    limiter.install(system.registry)
    run_id = await recorded(system)  # the model's one request this minute
    result = await system.runs.replay(run_id, mode="what-if", input="changed",
                                      operation=asking(system))
    assert result.error is not None and "rate limit" in result.error["message"]
    assert ASKED == ["hi"]


async def test_metrics_count_served_calls_apart(system: System) -> None:
    metrics = MetricsHook()
    metrics.install(system.registry)
    run_id = await recorded(system)
    live = metrics.stats()
    result = await system.runs.replay(run_id, operation=asking(system))
    assert not result.diverged
    after = metrics.stats()
    assert after.calls == live.calls and after.calls_by_point == live.calls_by_point
    assert after.models == live.models
    assert after.replayed_by_point == {
        "before_model_call": 1, "after_model_call": 1,
        "tool_validation": 1, "before_tool_execution": 1, "after_tool_execution": 1}
    # A what-if's live model call is live traffic; its served tool call is not.
    await system.runs.replay(run_id, mode="what-if", input="changed",
                             operation=asking(system))
    what_if = metrics.stats()
    assert what_if.models["openai/gpt-4o-mini"].calls == 2
    assert what_if.calls_by_point["after_model_call"] == 2
    assert what_if.calls_by_point["after_tool_execution"] == 1
    assert what_if.replayed_by_point["after_tool_execution"] == 2


async def test_outside_replays_nothing_is_served(system: System) -> None:
    seen: list[bool | None] = []
    async with system.runs.start("job", "plain", None):
        seen.append(replay_serves())
    assert seen == [None] and replay_serves() is None
