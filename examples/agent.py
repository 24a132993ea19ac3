"""The main job: an agent that uses tools, with hooks watching and changing what happens.

Run it with ``python examples/agent.py``. By default the agent talks to a scripted provider
(deterministic, offline). Point it at a real OpenAI-compatible endpoint with::

    LLMSPELL_PROVIDER=openai LLMSPELL_MODEL=gpt-4o-mini OPENAI_API_KEY=... \\
        python examples/agent.py
    # or a local server: LLMSPELL_PROVIDER=openai LLMSPELL_BASE_URL=http://127.0.0.1:11434/v1
    #                    LLMSPELL_MODEL=llama3.1 python examples/agent.py

What it shows: the agent asks the calculator tool for help; hooks print what they see at
the tool, agent and model-call points, one hook rewrites the agent's input, one redacts
e-mail addresses from every prompt before it reaches the model, one refuses a dangerous
expression, one caches answers; a subscriber prints the event stream; everything is stored
in SQLite (in a temporary folder here) and the run's events are counted back from the store.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
from typing import Any

from llmspell.events import UniversalEvent
from llmspell.hooks import Cache, Cancel, HookContext, Modified
from llmspell.runtime import System, SystemConfig
from llmspell.runtime.providers import ScriptedProvider, provider_from_env
from llmspell.runtime.providers.base import Message, ToolSpec
from llmspell.runtime.tools.library.calculator import CalculatorTool

EMAIL = re.compile(r"[\w.+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){1,8}")


def scripted_model(messages: list[Message], tools: list[ToolSpec]) -> Any:
    """A stand-in model: asks the calculator for the numbers in the question, then answers
    with the tool's result."""
    last = messages[-1]
    if last.role == "tool":
        reply = json.loads(last.content or "{}")
        if "error" in reply:
            return f"I could not compute that: {reply['error']}"
        return f"The result is {reply['result']}."
    expression = re.sub(r"[^0-9+\-*/(). ]", "", last.content or "").strip() or "0"
    return {"tool_calls": [{"name": "calculator", "arguments": {"expression": expression}}]}


def show_event(event: UniversalEvent) -> None:
    data = event.data if isinstance(event.data, dict) else {}
    detail = ", ".join(f"{k}={v}" for k, v in data.items()
                       if k in ("from", "to", "result", "params", "error", "cached"))
    print(f"  [event] {event.event_type:<36} {detail}")


def install_hooks(system: System) -> None:
    @system.registry.on("BeforeToolExecution", name="no_huge_powers", priority="highest",
                        error_policy="fail_closed")
    def no_huge_powers(ctx: HookContext) -> Cancel | None:
        expression = str(ctx.data["params"].get("expression", ""))
        if "**" in expression:
            return Cancel("exponentiation is not allowed in this demo")
        return None

    @system.registry.on("BeforeToolExecution", name="cache_calculations")
    def cache_calculations(ctx: HookContext) -> Cache:
        return Cache(f"calc:{ctx.data['params'].get('expression')}", ttl=300)

    @system.registry.on("AfterToolExecution", name="print_tool_result")
    def print_tool_result(ctx: HookContext) -> None:
        print(f"  [hook]  {ctx.data['tool']} returned {ctx.data['result']}")

    @system.registry.on("BeforeAgentExecution", name="polite_input")
    def polite_input(ctx: HookContext) -> Modified:
        text = ctx.data["params"]["input"].strip()
        return Modified({**ctx.data, "params": {"input": text.rstrip("?") + "?"}})

    @system.registry.on("BeforeModelCall", name="redact_emails", priority="high")
    def redact_emails(ctx: HookContext) -> Modified | None:
        params = ctx.data["params"]
        found = 0
        messages = []
        for message in params["messages"]:
            text, n = EMAIL.subn("[email]", message["content"] or "")
            found += n
            messages.append({**message, "content": text if message["content"] else None})
        if not found:
            return None
        print(f"  [hook]  model call: redacted {found} e-mail address(es) from the prompt")
        return Modified({**ctx.data, "params": {**params, "messages": messages}})

    @system.registry.on("AfterModelCall", name="count_tokens")
    def count_tokens(ctx: HookContext) -> None:
        usage = ctx.data["result"]["usage"] or {}
        print(f"  [hook]  model call: {usage.get('total_tokens', 0)} tokens on "
              f"{ctx.data['provider']}/{ctx.data['model']}")


async def main(data_dir: str) -> None:
    provider = provider_from_env() or ScriptedProvider(scripted_model)
    config = SystemConfig(data_dir=data_dir, store="sqlite")
    async with System(config) as system:
        system.tools.register(CalculatorTool())
        install_hooks(system)
        system.bus.subscribe("agent.**", show_event)
        system.bus.subscribe("tool.**", show_event)

        agent = system.agents.create(
            "math-helper", provider=provider, tools=["calculator"],
            instructions="Use the calculator tool for arithmetic; answer briefly.")
        questions = ["What is 12 * (3 + 4)", "What is 12 * (3 + 4)", "What is 2 ** 64",
                     "What is 6 * 7, for ada@example.com"]
        for question in questions:
            print(f"\nuser: {question}")
            response = await agent.run(question)
            print(f"agent: {response.output}   (turns={response.turns}, "
                  f"tokens={response.token_usage.get('total', 0)})")

        system.bus.flush()
        stored = system.store.count() if system.store is not None else 0
        print(f"\n{stored} events stored in {os.path.join(data_dir, 'events.db')}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(tmp))
