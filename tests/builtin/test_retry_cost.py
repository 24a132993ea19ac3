"""The retry and cost-tracking built-in hooks, through the real runtime."""

from __future__ import annotations

import random
import time
from decimal import Decimal
from typing import Any

import pytest

from llmspell.builtin.cost import (
    FALLBACK_AS_OF,
    Budget,
    BudgetAlert,
    CostConfig,
    CostTrackingHook,
    TokenPrice,
)
from llmspell.builtin.retry import RetryConfig, RetryHook
from llmspell.core.clock import ManualClock
from llmspell.errors import (
    ConfigurationError,
    InvalidValueError,
    OperationCancelled,
    ToolExecutionError,
)
from llmspell.hooks import (
    BreakerConfig,
    CircuitBreaker,
    HookContext,
    HookHandle,
    HookPoint,
    Retry,
)
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.providers import ScriptedProvider
from tests.ci import require_module, unavailable

FAST = RetryConfig(strategy="exponential", base_delay=0.001, max_delay=0.005, jitter="none",
                   max_attempts=5)


def flaky_tool(failures: int, error: type[Exception] = ConnectionError) -> tuple[Any, list[int]]:
    """A tool that raises ``error`` ``failures`` times, then answers; and its call log."""
    calls: list[int] = []

    @tool(name="flaky")
    def flaky(x: int) -> int:
        """Fails a few times, then doubles x."""
        calls.append(x)
        if len(calls) <= failures:
            raise error("connection reset by peer")
        return x * 2

    return flaky, calls


# -- retry ----------------------------------------------------------------------------------
async def test_flaky_tool_is_retried_until_it_succeeds() -> None:
    flaky, calls = flaky_tool(2)
    hook = RetryHook(FAST)
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(flaky)
        hook.install(system.registry)
        run = await system.tools.run("flaky", {"x": 21})
    assert run.result == 42
    assert run.attempts == 3 and len(calls) == 3
    stats = hook.stats()
    assert stats.retries_scheduled == 2 and stats.gave_up == 0
    assert stats.by_component["tool:flaky"].retries_scheduled == 2


async def test_non_retryable_error_is_not_retried() -> None:
    flaky, calls = flaky_tool(5, ValueError)
    hook = RetryHook(FAST)
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(flaky)
        hook.install(system.registry)
        with pytest.raises(ToolExecutionError, match="ValueError"):
            await system.tools.run("flaky", {"x": 1})
    assert len(calls) == 1
    assert hook.stats().non_retryable == 1 and hook.stats().retries_scheduled == 0


async def test_max_attempts_is_respected() -> None:
    flaky, calls = flaky_tool(100)
    hook = RetryHook(RetryConfig(base_delay=0.001, max_delay=0.002, max_attempts=3))
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(flaky)
        hook.install(system.registry)
        with pytest.raises(ToolExecutionError):
            await system.tools.run("flaky", {"x": 1})
    assert len(calls) == 3
    assert hook.stats().gave_up == 1 and hook.stats().retries_scheduled == 2


async def test_max_total_time_is_respected() -> None:
    # Time is a ManualClock: each failed call "takes" 25 ms. The delays asked for are what
    # the hook returned, so the test is the same on an idle or a loaded machine.
    clock = ManualClock()
    asked: list[float] = []

    class RecordingRetry(RetryHook):
        def execute(self, ctx: HookContext) -> Retry | None:
            verdict = super().execute(ctx)
            if verdict is not None:
                asked.append(verdict.delay)
            return verdict

    @tool(name="flaky")
    def flaky(x: int) -> int:
        """Always fails, 25 ms after it was called."""
        clock.advance(0.025)
        raise ConnectionError("connection reset by peer")

    hook = RecordingRetry(RetryConfig(strategy="fixed", base_delay=0.02, max_delay=0.02,
                                      jitter="none", max_attempts=100, max_total_time=0.06),
                          clock=clock)
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(flaky)
        hook.install(system.registry)
        with pytest.raises(ToolExecutionError):
            await system.tools.run("flaky", {"x": 1})
    # failures at 25, 50, 75 and 100 ms; the budget counts from the first failure: 0.06 s
    # left, then 0.035, then 0.01 (the last delay shortened to fit), then none: give up.
    assert asked == [pytest.approx(0.02), pytest.approx(0.02), pytest.approx(0.01)]
    assert clock.monotonic() == pytest.approx(0.1)  # four calls in all
    stats = hook.stats()
    assert stats.retries_scheduled == 3 and stats.gave_up == 1


async def test_open_breaker_state_stops_retries() -> None:
    flaky, calls = flaky_tool(1)
    states = {"flaky": "open"}
    hook = RetryHook(FAST, breaker_state=states.get)
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(flaky)
        hook.install(system.registry)
        with pytest.raises(ToolExecutionError):
            await system.tools.run("flaky", {"x": 1})
        assert len(calls) == 1 and hook.stats().breaker_open == 1
        states["flaky"] = "closed"
        assert (await system.tools.run("flaky", {"x": 1})).result == 2


async def test_circuit_breaker_objects_are_consulted() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("flaky", "tool", BreakerConfig(failure_threshold=2), clock=clock)
    flaky, calls = flaky_tool(2)
    hook = RetryHook(FAST, breakers=[breaker])
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(flaky)
        hook.install(system.registry)
        breaker.record_failure()
        breaker.record_failure()  # the owner saw two failures: open
        with pytest.raises(ToolExecutionError):
            await system.tools.run("flaky", {"x": 1})
        assert len(calls) == 1 and hook.stats().breaker_open == 1
        clock.advance(60)  # open time elapsed: half-open lets a retry probe through
        run = await system.tools.run("flaky", {"x": 1})
    assert run.attempts == 2 and run.result == 2
    assert hook.stats().retries_scheduled == 1


def switched_backend(once: bool = False) -> tuple[Any, list[bool], list[int]]:
    """A tool ``backend`` that raises ConnectionError while its switch is on (``once``: and
    turns it off); the switch and the call log."""
    fail = [False]
    calls: list[int] = []

    @tool(name="backend")
    def backend(x: int) -> int:
        """Fails while told to."""
        calls.append(x)
        if fail[0]:
            fail[0] = not once
            raise ConnectionError("connection refused")
        return x

    return backend, fail, calls


def broken_guard(ctx: Any) -> None:
    raise RuntimeError("the backend's health check failed")


async def trip_the_guard(system: System, backend: Any) -> tuple[RetryHook, HookHandle]:
    """Registers ``backend``, a broken guard hook named like it and a RetryHook consulting
    the executor's breakers, then runs ``backend`` three times: the guard fails open each
    time and its breaker opens. The retry hook and the guard's handle."""
    system.tools.register(backend)
    handle = system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, broken_guard,
                                      name="backend")
    hook = RetryHook(FAST, breakers=system.executor)
    hook.install(system.registry)
    for _ in range(3):
        await system.tools.run("backend", {"x": 1})
    return hook, handle


async def test_breakers_of_the_executor_are_consulted() -> None:
    """A guard hook named like the tool trips its executor breaker; no retry goes into it."""
    backend, fail, calls = switched_backend()
    async with System(SystemConfig(store="memory")) as system:
        hook, _ = await trip_the_guard(system, backend)
        assert [s.state for s in system.executor.breakers() if s.hook == "backend"] == ["open"]
        fail[0] = True
        with pytest.raises(ToolExecutionError):
            await system.tools.run("backend", {"x": 1})
    assert len(calls) == 4
    assert hook.stats().breaker_open == 1 and hook.stats().retries_scheduled == 0


async def test_a_removed_hooks_open_breaker_does_not_block_retries() -> None:
    """The guard named like the tool is removed, and registered again healthy: the final
    snapshot of its old, open breaker must not keep the tool from being retried."""
    backend, fail, _ = switched_backend(once=True)
    async with System(SystemConfig(store="memory")) as system:
        hook, handle = await trip_the_guard(system, backend)
        system.registry.unregister(handle)
        system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, lambda ctx: None,
                                 name="backend")
        assert any(s.hook == "backend" and s.state == "open"
                   for s in system.executor.breakers())  # the retired snapshot
        fail[0] = True
        run = await system.tools.run("backend", {"x": 2})
    assert run.result == 2 and run.attempts == 2
    assert hook.stats().breaker_open == 0


async def test_agent_error_is_retried() -> None:
    replies: Any = iter([ConnectionError("connection reset"), "fine"])

    def model(messages: Any, tools: Any) -> str:
        reply = next(replies)
        if isinstance(reply, Exception):
            raise reply
        return str(reply)

    # Only at AgentError: by default the model call itself is retried at ModelCallError
    # (tests/builtin/test_model_points.py) and the run needs no second attempt.
    hook = RetryHook(FAST, points=[HookPoint.AGENT_ERROR])
    async with System(SystemConfig(store="memory")) as system:
        hook.install(system.registry)
        agent = system.agents.create("a", provider=ScriptedProvider(model))
        response = await agent.run("q")
    assert response.output == "fine" and response.attempts == 2
    assert hook.stats().by_component["agent:a"].retries_scheduled == 1


def test_strategies_and_jitter() -> None:
    def delays(strategy: str, jitter: str = "none", seed: int = 0) -> list[float]:
        hook = RetryHook(RetryConfig(strategy=strategy, jitter=jitter,  # type: ignore[arg-type]
                                     base_delay=1.0, max_delay=20.0), rng=random.Random(seed))
        return [hook.delay_for(n) for n in range(1, 9)]

    assert delays("fixed") == [1.0] * 8
    assert delays("linear") == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    assert delays("exponential") == [1.0, 2.0, 4.0, 8.0, 16.0, 20.0, 20.0, 20.0]
    assert delays("fibonacci") == [1.0, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0]
    full = delays("exponential", "full")
    assert full == delays("exponential", "full")  # deterministic with a seeded Random
    assert all(0 <= d <= cap for d, cap in zip(full, delays("exponential"), strict=True))
    equal = delays("exponential", "equal")
    assert all(cap / 2 <= d <= cap for d, cap in zip(equal, delays("exponential"), strict=True))
    hook = RetryHook(RetryConfig(jitter="decorrelated", base_delay=1.0, max_delay=20.0),
                     rng=random.Random(1))
    previous = 1.0
    for n in range(1, 10):
        d = hook.delay_for(n, previous)
        assert 1.0 <= d <= min(20.0, previous * 3)
        previous = d


def test_retryable_detection() -> None:
    hook = RetryHook(RetryConfig(retry_on_messages=(r"flaky backend",)))
    assert hook.is_retryable("ToolExecutionError", "tool 'x' failed: ConnectionError: boom")
    assert not hook.is_retryable("ToolExecutionError", "tool 'x' failed: KeyError: 'k'")
    assert hook.is_retryable("ProviderError", "openai returned HTTP 503: busy")
    assert hook.is_retryable("ProviderError", "openai returned HTTP 429: slow down")
    assert not hook.is_retryable("ProviderError", "openai returned HTTP 401: bad key")
    assert hook.is_retryable("RuntimeError", "oops", status=502)
    assert not hook.is_retryable("RuntimeError", "took 500 ms")
    assert hook.is_retryable("RuntimeError", "the flaky backend hiccuped")
    assert not hook.is_retryable("ValueError", "HTTP 503")  # the deny list wins
    allow = RetryHook(RetryConfig(retry_on=("MyError",), retry_on_messages=()))
    assert allow.is_retryable("MyError", "x") and not allow.is_retryable("Other", "timed out")


def test_retry_config_is_validated() -> None:
    with pytest.raises(InvalidValueError, match="strategy"):
        RetryConfig(strategy="random")  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="max_delay"):
        RetryConfig(base_delay=5, max_delay=1)
    with pytest.raises(InvalidValueError, match="max_attempts"):
        RetryConfig(max_attempts=0)
    with pytest.raises(ConfigurationError, match="pattern"):
        RetryConfig(retry_on_messages=("(",))
    with pytest.raises(ConfigurationError):
        RetryHook({"max_attempts": 3})  # type: ignore[arg-type]
    assert RetryHook(points=["ToolError"]).points == (HookPoint.TOOL_ERROR,)


def test_tracked_operations_are_bounded() -> None:
    from llmspell.hooks import ComponentId, ComponentType, HookContext

    hook = RetryHook(RetryConfig(max_tracked=10, base_delay=0.0, max_delay=0.0))
    component = ComponentId(type=ComponentType.TOOL, name="t")
    for _ in range(50):
        ctx = HookContext(point=HookPoint.TOOL_ERROR, component=component,
                          data={"attempt": 1, "error": "timed out", "error_type": "X"})
        assert hook.execute(ctx) is not None
    assert hook.stats().tracked_operations == 10


# -- cost -----------------------------------------------------------------------------------
QUESTION = "q" * 400   # ScriptedProvider: 100 input tokens
ANSWER = "a" * 40      # 10 output tokens


def answer(messages: Any, tools: Any) -> str:
    return ANSWER


def provider(model: str = "gpt-4o-mini", name: str = "openai") -> ScriptedProvider:
    return ScriptedProvider(answer, model=model, name=name)


async def test_cost_from_a_user_override_is_exact_decimal() -> None:
    hook = CostTrackingHook(CostConfig(prices={
        "openai/gpt-4o-mini": TokenPrice(input=Decimal("2.50"), output=Decimal("10"))}))
    async with System(SystemConfig(store="memory")) as system:
        hook.install(system.registry)
        agent = system.agents.create("a", provider=provider())
        await agent.run(QUESTION)
    (record,) = hook.history()
    assert (record.input_tokens, record.output_tokens) == (100, 10)
    expected = (Decimal(100) * Decimal("2.50") + Decimal(10) * Decimal("10")) / 1_000_000
    assert Decimal(record.cost or "x") == expected == Decimal("0.00035")
    assert (record.source, record.version, record.unpriced) == ("override", "config", False)
    assert record.agent == "a" and record.provider == "openai" and record.correlation_id
    assert hook.stats().total_cost == expected


async def test_genai_prices_is_used_for_a_model_it_knows(
        monkeypatch: pytest.MonkeyPatch) -> None:
    genai_prices = require_module("genai_prices", install="genai-prices (llmspell[prices])")
    try:
        reference = genai_prices.calc_price(
            genai_prices.Usage(input_tokens=100, output_tokens=10), "gpt-4o",
            provider_id="openai")
    except LookupError:  # pragma: no cover - only if its data lacks the model
        unavailable("this genai-prices does not know openai/gpt-4o; upgrade genai-prices")
    hook = CostTrackingHook()
    async with System(SystemConfig(store="memory")) as system:
        hook.install(system.registry)
        looked_up: list[str] = []
        real = genai_prices.calc_price

        def counting(*args: Any, **kwargs: Any) -> Any:
            looked_up.append(args[1])
            return real(*args, **kwargs)

        monkeypatch.setattr(genai_prices, "calc_price", counting)
        agent = system.agents.create("a", provider=provider("gpt-4o"))
        await agent.run(QUESTION)
        after_first = list(looked_up)
        await agent.run(QUESTION)
    # Once per (provider, model, day), then cached: by the hook, and (unless an earlier
    # test priced it today) by the runtime's list price; the second run looks up nothing.
    assert after_first in (["gpt-4o"], ["gpt-4o", "gpt-4o"])
    assert looked_up == after_first
    first, second = hook.history()
    assert first.source == "genai-prices" and first.version == genai_prices.__version__
    assert Decimal(first.cost or "x") == reference.total_price
    assert second.cost == first.cost
    assert hook.stats().price_cache_size == 1
    assert hook.price_of("openai", "gpt-4o") == (
        "genai-prices", genai_prices.__version__, reference.model_price.input_mtok,
        reference.model_price.output_mtok)


async def test_bundled_fallback_when_genai_prices_is_off() -> None:
    hook = CostTrackingHook(CostConfig(use_genai_prices=False))
    async with System(SystemConfig(store="memory")) as system:
        hook.install(system.registry)
        await system.agents.create("a", provider=provider("gpt-4o-mini")).run(QUESTION)
    (record,) = hook.history()
    assert (record.source, record.version) == ("bundled", FALLBACK_AS_OF)
    assert Decimal(record.cost or "x") == (100 * Decimal("0.15") + 10 * Decimal("0.6")) / 10**6


async def test_unknown_model_is_unpriced_not_zero() -> None:
    hook = CostTrackingHook()
    async with System(SystemConfig(store="memory")) as system:
        hook.install(system.registry)
        await system.agents.create("a", provider=ScriptedProvider(answer)).run(QUESTION)
    (record,) = hook.history()
    assert record.unpriced and record.cost is None and record.source is None
    stats = hook.stats()
    assert stats.unpriced_calls == 1 and stats.priced_calls == 0
    assert stats.unpriced_by_model == {"scripted/scripted": 1}
    (row,) = hook.report()
    assert row.unpriced_calls == 1 and row.calls == 1 and row.cost is None


async def test_records_are_published_for_a_store() -> None:
    hook = CostTrackingHook()
    async with System(SystemConfig(store="memory")) as system:
        hook.bus = system.bus
        seen: list[Any] = []
        system.bus.subscribe("cost.recorded", seen.append)
        hook.install(system.registry)
        response = await system.agents.create("a", provider=provider()).run(QUESTION)
    (event,) = seen
    assert event.data["model"] == "gpt-4o-mini" and isinstance(event.data["cost"], str)
    assert event.data["correlation_id"] == response.correlation_id
    assert event.data["source"] in ("genai-prices", "bundled")


async def test_budget_breach_blocks_the_next_agent_call() -> None:
    alerts: list[BudgetAlert] = []
    hook = CostTrackingHook(
        CostConfig(
            prices={"gpt-4o-mini": TokenPrice(input=Decimal("2.50"), output=Decimal("10"))},
            budgets=(Budget(limit=Decimal("0.0005")),
                     Budget(scope="agent:other", limit=Decimal("0.0001"), window="day")),
            default_max_tokens=1,
        ),
        on_budget=alerts.append,
        # Undercounts the prompt, so the estimate before the second call lets it through
        # and its real cost crosses the budget (test_model_points has the estimate's stop).
        tokenizer=lambda text: 0,
    )
    async with System(SystemConfig(store="memory")) as system:
        hook.bus = system.bus
        events: list[str] = []
        system.bus.subscribe("cost.budget.*", lambda e: events.append(e.event_type))
        hook.install(system.registry)
        agent = system.agents.create("a", provider=provider())
        await agent.run(QUESTION)            # 0.00035: info (50 %)
        assert events == ["cost.budget.info"]
        await agent.run(QUESTION)            # 0.00070: warning and critical
        assert events == ["cost.budget.info", "cost.budget.warning", "cost.budget.critical"]
        with pytest.raises(OperationCancelled, match="budget global"):
            await agent.run(QUESTION)
        assert agent.state.value == "ready"
    assert [a.level for a in alerts] == ["info", "warning", "critical"]
    assert alerts[-1].blocking and alerts[-1].spent == "0.00070"
    stats = hook.stats()
    assert stats.blocked_calls == 1 and len(hook.history()) == 2
    assert stats.budgets[0].levels_crossed == ("info", "warning", "critical")


async def test_day_budget_resets_in_the_next_window() -> None:
    clock = ManualClock(wall_start=1_700_000_000.0)
    hook = CostTrackingHook(CostConfig(
        prices={"gpt-4o-mini": TokenPrice(input=Decimal("2.50"), output=Decimal("10"))},
        budgets=(Budget(scope="user:alice", limit=Decimal("0.0003"), window="day"),),
        default_max_tokens=1, user_from_params=True),  # the test builds the run's input
        clock=clock, tokenizer=lambda text: 0)  # undercounts: the call is let through
    async with System(SystemConfig(store="memory")) as system:
        hook.install(system.registry)
        agent = system.agents.create("a", provider=provider())
        await agent.run({"input": QUESTION, "user": "bob"})
        await agent.run({"input": QUESTION, "user": "alice"})  # alice: over her limit
        await agent.run({"input": QUESTION, "user": "bob"})    # bob is not limited
        with pytest.raises(OperationCancelled, match="user:alice"):
            await agent.run({"input": QUESTION, "user": "alice"})
        clock.advance(86_400)
        await agent.run({"input": QUESTION, "user": "alice"})  # a new day
    assert hook.stats().by_user == {"bob": Decimal("0.00070"), "alice": Decimal("0.00070")}


async def test_report_groups_and_converts_currency() -> None:
    hook = CostTrackingHook(CostConfig(
        currency="EUR", rates={"EUR": Decimal("0.9"), "GBP": Decimal("0.8")},
        prices={"gpt-4o-mini": TokenPrice(input=Decimal("2.50"), output=Decimal("10")),
                "gpt-4o": TokenPrice(input=Decimal("5"), output=Decimal("20"))},
        user_from_params=True))
    async with System(SystemConfig(store="memory")) as system:
        hook.install(system.registry)
        small = system.agents.create("small", provider=provider("gpt-4o-mini"))
        big = system.agents.create("big", provider=provider("gpt-4o"))
        await small.run({"input": QUESTION, "user": "alice", "session": "s1"})
        await small.run({"input": QUESTION, "user": "bob", "session": "s2"})
        await big.run({"input": QUESTION, "user": "alice", "session": "s1"})
    eur_small = Decimal("0.00035") * Decimal("0.9")
    eur_big = Decimal("0.00070") * Decimal("0.9")
    by_model = {r.group["model"]: r for r in hook.report()}
    assert by_model["gpt-4o-mini"].cost == 2 * eur_small and by_model["gpt-4o-mini"].calls == 2
    assert by_model["gpt-4o"].cost == eur_big and by_model["gpt-4o"].currency == "EUR"
    by_user = {r.group["user"]: r.cost for r in hook.report(group_by=("user",))}
    assert by_user == {"alice": eur_small + eur_big, "bob": eur_small}
    by_session = {r.group["session"]: r.calls for r in hook.report(group_by="session")}
    assert by_session == {"s1": 2, "s2": 1}
    (day,) = hook.report(group_by=("day", "provider"))
    assert day.group["provider"] == "openai" and day.calls == 3
    (usd,) = hook.report(group_by=(), currency="USD")
    assert usd.cost == Decimal("0.00035") * 2 + Decimal("0.00070") and usd.currency == "USD"
    (gbp,) = hook.report(group_by=(), currency="GBP")
    assert gbp.cost == usd.cost * Decimal("0.8")
    assert hook.report(since=time.time() + 7200) == []
    assert hook.history()[0].currency == "EUR"
    with pytest.raises(ConfigurationError):
        hook.report(currency="JPY")
    with pytest.raises(InvalidValueError):
        hook.report(group_by=("colour",))


def test_cost_config_is_validated() -> None:
    with pytest.raises(ConfigurationError, match="rate"):
        CostConfig(currency="EUR")
    with pytest.raises(InvalidValueError, match="Decimal"):
        TokenPrice(input=0.15, output=Decimal(1))  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="scope"):
        Budget(scope="team:x", limit=Decimal(1))
    with pytest.raises(InvalidValueError, match="block_at"):
        Budget(limit=Decimal(1), levels={"warning": 0.8})
    with pytest.raises(InvalidValueError, match="limit"):
        Budget(limit=Decimal(0))
    assert Budget(limit="2.5").limit == Decimal("2.5")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        CostTrackingHook({"currency": "USD"})  # type: ignore[arg-type]
