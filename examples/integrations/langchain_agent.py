"""A LangChain v1 agent governed by llmspell: hooks, the production built-ins, events, a run.

Run it with ``python examples/integrations/langchain_agent.py`` (needs
``pip install 'llmspell[langchain]'``). It is offline: a small scripted chat model stands in
for a provider (swap in ``ChatOpenAI(...)`` or ``init_chat_model(...)`` for a real one; the
adapter does not change).

What it shows: an existing ``create_agent`` agent with two tools gets one extra line,
``middleware=[LlmspellMiddleware(system)]``. Then

* a guard hook (plain Python, at ``BeforeToolExecution``) refuses e-mails to addresses
  outside the company; the model reads why and says so;
* the production built-ins govern the same run: security checks every tool call and
  prompt, cost tracking prices each model call from LangChain's usage numbers, logging and
  metrics watch every point;
* every step is an event on llmspell's bus, stored under the run's id, and the run itself
  (``run.started``/``run.completed``) is in the store.
"""

from __future__ import annotations

import asyncio
import tempfile
from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool

from llmspell.builtin import CostConfig, install_all, production
from llmspell.events import UniversalEvent
from llmspell.hooks import Cancel, HookContext, hook
from llmspell.integrations.langchain import LlmspellMiddleware
from llmspell.runtime import System, SystemConfig


class OfflineModel(BaseChatModel):
    """A stand-in for a provider: checks the weather, tries to mail it outside the company,
    then answers with what the tools said."""

    @property
    def _llm_type(self) -> str:
        return "offline"

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self

    def _get_ls_params(self, stop: Any = None, **kwargs: Any) -> Any:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "openai"  # priced as this model
        params["ls_model_name"] = "gpt-4o-mini"
        return params

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        done = [m for m in messages if isinstance(m, ToolMessage)]
        usage = {"input_tokens": 40 * len(messages), "output_tokens": 12,
                 "total_tokens": 40 * len(messages) + 12}
        if not done:
            calls = [{"name": "weather", "args": {"city": "Lisbon"}, "id": "w1"}]
        elif len(done) == 1:
            calls = [{"name": "send_email", "id": "e1",
                      "args": {"to": "press@rival.test", "body": f"Lisbon: {done[0].content}"}}]
        else:
            answer = f"Lisbon is {done[0].content}. I did not send the e-mail: {done[1].content}"
            return _result(AIMessage(content=answer, usage_metadata=usage))
        return _result(AIMessage(content="", tool_calls=calls, usage_metadata=usage))


def _result(message: AIMessage) -> ChatResult:
    return ChatResult(generations=[ChatGeneration(message=message)])


@tool
def weather(city: str) -> str:
    """Today's weather in a city."""
    return "sunny, 24 C"


@tool
def send_email(to: str, body: str) -> str:
    """Send an e-mail."""
    return f"sent to {to}"


@hook("BeforeToolExecution", name="company-mail-only")
def company_mail_only(ctx: HookContext) -> Cancel | None:
    """The guard: e-mail goes to company addresses only."""
    to = str(ctx.data["params"].get("to", ""))
    if ctx.data["tool"] == "send_email" and not to.endswith("@example.com"):
        return Cancel(f"{to} is outside the company")
    return None


async def main() -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        async with System(SystemConfig(data_dir=data_dir, store="sqlite")) as system:
            hooks = production(bus=system.bus, cost=CostConfig())
            install_all(hooks, system.registry)
            system.registry.register(company_mail_only)

            def show(event: UniversalEvent) -> None:
                if event.event_type.split(".")[0] in ("run", "agent", "tool", "model"):
                    print(f"[event] {event.event_type}")

            system.bus.subscribe("**", show, mode="inline")

            agent = create_agent(OfflineModel(), tools=[weather, send_email], name="assistant",
                                 middleware=[LlmspellMiddleware(system)])
            out = await agent.ainvoke({"messages": [HumanMessage(
                "What's the weather in Lisbon? Mail it to press@rival.test.")]})
            print(f"\nassistant: {out['messages'][-1].content}")

            cost = next(h for h in hooks if h.metadata.name == "cost_tracking")
            for row in cost.report():  # type: ignore[attr-defined]
                print(f"cost: {row.group['provider']}/{row.group['model']} {row.calls} calls, "
                      f"{row.input_tokens}+{row.output_tokens} tokens, {row.cost} {row.currency}")

            assert system.store is not None
            system.store.flush()
            run = system.store.query(pattern="run.started")[-1]
            stored = system.store.query(run_id=run.data["run_id"])
            tools = sorted({e.event_type for e in stored if e.event_type.startswith("tool.")})
            print(f"run {run.data['run_id']} ({run.data['kind']} {run.data['name']!r}): "
                  f"{len(stored)} events stored, tools: {', '.join(tools)}")


if __name__ == "__main__":
    asyncio.run(main())
