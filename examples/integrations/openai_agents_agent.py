"""An OpenAI Agents SDK agent governed by llmspell: a guard hook, the production built-ins,
events in the store, one llmspell run per SDK run.

Run it with ``python examples/integrations/openai_agents_agent.py`` (needs
``pip install 'llmspell[openai-agents]'``). It runs offline: a small ``Model`` written here
plays the provider (give the agent ``model="gpt-4o-mini"`` for the real one; nothing else
changes). The SDK's own trace export is switched off (its default processor would send
spans to api.openai.com); llmspell's tracing processor gets the spans instead.

The application keeps its agent and its tools as they are and calls
``adapter.run(agent, input)`` where it called ``Runner.run(agent, input)``. Then

* a guard hook (plain Python, at ``BeforeToolExecution``) refuses a transfer above 500:
  the SDK's tool input guardrail rejects the call and the model is told why;
* the production built-ins govern the same run: security checks tool calls and prompts,
  cost tracking prices each model call from the SDK's usage, retry, logging and metrics
  watch every point;
* every step is an event on llmspell's bus and in the SQLite store (with the run's id when
  the System has runs), the SDK's spans too.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import agents
from agents import Agent, ModelResponse, ModelSettings, Usage, function_tool
from agents.models.interface import Model, ModelTracing
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)

from llmspell.builtin import CostConfig, CostTrackingHook, install_all, production
from llmspell.events.store.base import EventQuery
from llmspell.hooks import Cancel, HookContext, HookPoint
from llmspell.integrations.openai_agents import LlmspellTracingProcessor, OpenAIAgentsAdapter
from llmspell.runtime import System, SystemConfig

TRANSFER_LIMIT = 500


class OfflineModel(Model):
    """Stands in for a provider: checks the balance, asks for a transfer of 800, then
    answers with what the tools said."""

    model = "gpt-4o-mini"

    def _answer(self, items: list[Any]) -> list[Any]:
        said = [i["output"] for i in items
                if isinstance(i, dict) and i.get("type") == "function_call_output"]
        if not said:
            return [_call("balance", {"account": "ACC-9"}, "call-1")]
        if len(said) == 1:
            return [_call("transfer", {"account": "ACC-9", "amount": 800}, "call-2")]
        return [_text("I checked ACC-9: " + " / ".join(str(s) for s in said))]

    async def get_response(self, system_instructions: str | None, input: Any,
                           model_settings: ModelSettings, tools: list[Any],
                           output_schema: Any, handoffs: list[Any], tracing: ModelTracing,
                           *, previous_response_id: str | None, conversation_id: str | None,
                           prompt: Any) -> ModelResponse:
        items = [input] if isinstance(input, str) else list(input)
        return ModelResponse(output=self._answer(items),
                             usage=Usage(requests=1, input_tokens=250, output_tokens=40,
                                         total_tokens=290), response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        raise NotImplementedError("this example does not stream")


def _call(name: str, arguments: dict[str, Any], call_id: str) -> ResponseFunctionToolCall:
    return ResponseFunctionToolCall(id=call_id, call_id=call_id, type="function_call",
                                    name=name, arguments=json.dumps(arguments))


def _text(text: str) -> ResponseOutputMessage:
    return ResponseOutputMessage(id="msg", type="message", role="assistant",
                                 status="completed",
                                 content=[ResponseOutputText(text=text, type="output_text",
                                                             annotations=[], logprobs=[])])


@function_tool
def balance(account: str) -> str:
    """The balance of an account."""
    return f"{account} holds 1200 EUR"


@function_tool
def transfer(account: str, amount: float) -> str:
    """Transfer an amount out of an account."""
    return f"sent {amount} EUR from {account}"


def transfer_guard(ctx: HookContext) -> Cancel | None:
    """Refuse transfers above the limit (llmspell hook at BeforeToolExecution)."""
    if ctx.data["tool"] == "transfer" and ctx.data["params"].get("amount", 0) > TRANSFER_LIMIT:
        return Cancel(f"transfers above {TRANSFER_LIMIT} EUR need a second approval")
    return None


async def main() -> None:
    agents.set_trace_processors([])  # no export to api.openai.com from this offline example
    with tempfile.TemporaryDirectory() as data_dir:
        async with System(SystemConfig(data_dir=data_dir, store="sqlite")) as system:
            agents.set_trace_processors([LlmspellTracingProcessor.create(system)])
            system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, transfer_guard,
                                     name="transfer-guard")
            built_ins = production(bus=system.bus, cost=CostConfig())
            install_all(built_ins, system.registry)
            cost = next(h for h in built_ins if isinstance(h, CostTrackingHook))

            agent = Agent(name="banker", instructions="Help with accounts.",
                          model=OfflineModel(), tools=[balance, transfer])
            adapter = OpenAIAgentsAdapter(system)
            run = await adapter.run(agent, "Move 800 EUR out of ACC-9.")
            print("answer:", run.final_output)

            assert system.store is not None
            system.store.flush()
            for event in system.store.query(EventQuery(pattern="tool.**")):
                print("event", event.event_type, event.data.get("error") or "")
            stats = cost.stats()
            print(f"cost: {stats.total_cost} USD for {stats.calls} model calls")
            counts = Counter(e.event_type for e in system.store.query(EventQuery(pattern="**"))
                             if not e.event_type.startswith("hook."))
            print("events:", dict(sorted(counts.items())))
            print("run:", run.run_id or "(this System has no runs)")
    agents.set_trace_processors([])


if __name__ == "__main__":
    asyncio.run(main())
