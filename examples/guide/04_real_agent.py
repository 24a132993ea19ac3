"""Guide step 4: a real agent with tools, the production built-ins and the SQLite store.

An order-support agent that can look orders up and do arithmetic. Around it:

* ``production()``: security (a rule refusing refunds above a limit, e-mail addresses
  redacted from every prompt), retry (a provider's 429 is retried after its Retry-After),
  cost tracking with a budget, metrics and logging; plus a per-user rate limit;
* the SQLite event store in a data directory: every tool call, model call and agent run is
  kept in ``<data_dir>/events.db`` and can be queried afterwards.

Offline it runs on a scripted model that behaves like a tool-calling LLM. With
``LLMSPELL_PROVIDER`` set (e.g. ``LLMSPELL_PROVIDER=openai LLMSPELL_MODEL=gpt-4o-mini
OPENAI_API_KEY=...``) the same program talks to a real model.

Run: ``python examples/guide/04_real_agent.py [DATA_DIR]`` (default: a temporary folder)
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import tempfile
from collections import Counter
from decimal import Decimal
from typing import Any

from llmspell.builtin import (
    CostConfig,
    RateLimitConfig,
    RetryConfig,
    SecurityConfig,
    SecurityRule,
    install_all,
    production,
)
from llmspell.builtin.cost import Budget, TokenPrice
from llmspell.builtin.metrics import MetricsHook
from llmspell.builtin.security import EMAIL_PATTERN, redact_rule
from llmspell.errors import AgentError, ProviderError
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.providers import ScriptedProvider, provider_from_env
from llmspell.runtime.providers.base import Message, ToolSpec
from llmspell.runtime.tools.library.calculator import CalculatorTool

ORDERS = {"A-100": {"status": "shipped", "total": 42.5}, "A-200": {"status": "lost", "total": 980}}


@tool()
def lookup_order(order_id: str) -> dict[str, Any]:
    """Look an order up by its id (A-100, A-200, ...)."""
    if order_id not in ORDERS:
        raise ValueError(f"no order {order_id}")
    return {"order_id": order_id, **ORDERS[order_id]}


@tool()
def refund(order_id: str, amount: float) -> str:
    """Refund an amount on an order."""
    return f"refunded {amount} on {order_id}"


class OfflineModel:
    """Behaves like a tool-calling model: looks the order up, refunds lost orders, then
    answers from the tool results. The very first request gets a 429, like a busy API."""

    def __init__(self) -> None:
        self.requests = 0

    def __call__(self, messages: list[Message], tools: list[ToolSpec]) -> Any:
        self.requests += 1
        if self.requests == 1:
            raise ProviderError("scripted", "rate limited", status=429, retryable=True,
                                retry_after=0.01)
        last = messages[-1]
        if last.role == "tool":
            result = json.loads(last.content or "{}")
            if isinstance(result, dict) and result.get("status") == "lost":
                return {"tool_calls": [{"name": "refund", "arguments": {
                    "order_id": result["order_id"], "amount": result["total"]}}]}
            if isinstance(result, dict) and "error" in result:
                return f"I could not do that: {result['error']}"
            return f"Done: {result}"
        order = next((w.strip("?.,") for w in (last.content or "").split()
                      if w.startswith("A-")), "A-100")
        return {"tool_calls": [{"name": "lookup_order", "arguments": {"order_id": order}}]}


async def main(data_dir: str) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    provider = provider_from_env() or ScriptedProvider(OfflineModel())
    config = SystemConfig(data_dir=data_dir, store="sqlite")
    async with System(config) as system:
        system.tools.register_all([CalculatorTool(), lookup_order, refund])
        no_big_refunds = SecurityRule(
            name="refund-limit", points=("before_tool_execution",),
            condition=lambda ctx: ctx.data["tool"] == "refund"
            and float(ctx.data["params"].get("amount", 0)) > 500,
            severity="high", action="block")
        hooks = production(
            bus=system.bus,
            security=SecurityConfig(rules=(no_big_refunds, redact_rule("emails", EMAIL_PATTERN))),
            retry=RetryConfig(base_delay=0.01, max_delay=0.1),
            # The user is in the input this application builds for each run (never in a
            # tool call's parameters, which the model chooses): it may be read from there.
            cost=CostConfig(prices={"scripted/scripted": TokenPrice(input=Decimal(3),
                                                                    output=Decimal(15))},
                            budgets=(Budget(limit=Decimal("5.00"), window="day"),),
                            user_from_params=True),
            rate_limit=RateLimitConfig(rate=1.0, burst=5, key="user", user_from_params=True),
        )
        install_all(hooks, system.registry)

        agent = system.agents.create(
            "support", provider=provider, tools=["lookup_order", "refund", "calculator"],
            instructions="Help with orders. Use the tools; refund lost orders.")
        answers = {}
        for user, question in (("ann", "Where is order A-100? Reply to ann@example.com"),
                               ("bob", "Order A-200 never arrived.")):
            try:
                answer = await agent.run({"input": question, "user": user})
                answers[user] = answer.output
                print(f"{user}: {question}\n  -> {answer.output}")
            except AgentError as exc:
                print(f"{user}: {question}\n  -> refused: {exc.__cause__ or exc}")

        metrics = next(h for h in hooks if isinstance(h, MetricsHook)).stats()
        cost = next(h for h in hooks if hasattr(h, "report")).stats()
        print(f"model calls: {sum(m.calls for m in metrics.models.values())}, "
              f"errors: {metrics.errors}, cost today: ${cost.total_cost}")
        system.bus.flush()
        assert system.store is not None
        if isinstance(provider, ScriptedProvider):   # offline: the outcome is known
            assert "shipped" in answers["ann"] and "refund-limit" in answers["bob"]
            assert cost.total_cost > 0 and metrics.errors == 1
        kinds = Counter(f"{e.event_type.split('.')[0]}.{e.event_type.split('.')[-1]}"
                        for e in system.store.query())
        print(f"{sum(kinds.values())} events in {data_dir}/events.db, e.g. "
              f"{dict(kinds.most_common(5))}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        asyncio.run(main(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(main(tmp))
