"""A pydantic-ai agent governed by llmspell: hooks, the production built-ins, events, a run.

Run it with ``python examples/integrations/pydantic_ai_agent.py`` (needs
``pip install 'llmspell[pydantic-ai]'``). It is offline: a ``FunctionModel`` stands in for
a provider (use ``Agent("openai:gpt-4o-mini", ...)`` for a real one; the adapter does not
change).

What it shows: an existing pydantic-ai agent with two tools gets one extra argument,
``capabilities=[LlmspellCapability(system)]``. Then

* a guard hook (plain Python, at ``BeforeToolExecution``) refuses refunds over 100; the
  model is told why (a failed tool call) and says so;
* the production built-ins govern the same run: security checks every tool call and
  prompt, cost tracking prices each model call from pydantic-ai's usage numbers, retry,
  logging and metrics watch every point;
* every step is an event on llmspell's bus and in the SQLite store, and the run itself is
  an llmspell run when the System has runs.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from decimal import Decimal
from typing import Any

from pydantic_ai import Agent
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from llmspell.builtin import CostConfig, CostTrackingHook, install_all, production
from llmspell.builtin.cost import TokenPrice
from llmspell.events import UniversalEvent
from llmspell.events.store.base import EventQuery
from llmspell.hooks import Cancel, HookContext, HookPoint
from llmspell.integrations.pydantic_ai import LlmspellCapability
from llmspell.runtime import System, SystemConfig

REFUND_LIMIT = 100


def offline_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """A stand-in for a provider: looks the order up, asks for a refund of its total, then
    answers with what the tools said."""
    answers = sum(isinstance(m, ModelResponse) for m in messages)
    if answers == 0:
        return ModelResponse(parts=[ToolCallPart("lookup_order", {"order_id": "A-17"})])
    if answers == 1:
        return ModelResponse(parts=[ToolCallPart("refund",
                                                 {"order_id": "A-17", "amount": 240})])
    last = messages[-1]
    said = [p.model_response_str() if isinstance(p, ToolReturnPart) else p.model_response()
            for p in (last.parts if isinstance(last, ModelRequest) else ())
            if hasattr(p, "tool_name")]
    return ModelResponse(parts=[TextPart("I could not refund order A-17: " + " ".join(said))])


def build_agent(system: System) -> Agent[None, str]:
    """The application's agent, as it was, plus the llmspell capability."""
    agent: Agent[None, str] = Agent(
        FunctionModel(offline_model, model_name="gpt-4o-mini"), name="support",
        instructions="Help customers with their orders.",
        capabilities=[LlmspellCapability(system)])

    @agent.tool_plain
    def lookup_order(order_id: str) -> dict[str, Any]:
        """Find an order by its id."""
        return {"order_id": order_id, "total": 240, "status": "delivered"}

    @agent.tool_plain
    def refund(order_id: str, amount: float) -> str:
        """Refund an amount of an order."""
        return f"refunded {amount} on {order_id}"

    return agent


def guard(ctx: HookContext) -> Cancel | None:
    """Refunds over the limit need a human."""
    if ctx.data["tool"] == "refund" and ctx.data["params"]["amount"] > REFUND_LIMIT:
        return Cancel(f"refunds over {REFUND_LIMIT} need a human")
    return None


async def main() -> dict[str, Any]:
    folder = tempfile.mkdtemp(prefix="llmspell-pydantic-ai-")
    async with System(SystemConfig(data_dir=folder)) as system:
        price = TokenPrice(input=Decimal("0.15"), output=Decimal("0.60"))  # USD per 1M
        hooks = production(bus=system.bus, cost=CostConfig(prices={"gpt-4o-mini": price}))
        install_all(hooks, system.registry)
        system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, guard, name="refund-guard")

        def show(event: UniversalEvent) -> None:
            print(f"  event {event.event_type}")

        system.bus.subscribe("agent.**", show)
        system.bus.subscribe("tool.**", show)

        result = await build_agent(system).run("Please refund my order A-17.")
        print("answer:", result.output)
        tracker = next(h for h in hooks if isinstance(h, CostTrackingHook))
        cost = tracker.stats()
        print(f"cost: {cost.total_cost} USD for {cost.priced_calls} model calls")
        await system.bus.drain()
        assert system.store is not None
        system.store.flush()
        stored = system.store.query(EventQuery(pattern="agent.support.started"))
        correlation = stored[0].metadata.correlation_id
        kinds = Counter(e.event_type for e in system.store.query(
            EventQuery(correlation_id=correlation)))
        print("stored for this run:", dict(sorted(kinds.items())))
        return {"output": result.output, "cost": str(cost.total_cost),
                "events": dict(kinds)}


if __name__ == "__main__":
    asyncio.run(main())
