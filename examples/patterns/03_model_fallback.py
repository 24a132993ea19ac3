"""Pattern: fall back to another model when the first one fails.

A hook at ``ModelCallError`` returns ``Redirect("backup/small")`` for errors the provider
calls retryable (overload, timeouts): the same request goes to the backup model and its
answer is the call's answer. The backup provider is registered with ``system.models`` so
the name resolves; with real providers the target is e.g. ``"anthropic/claude-3-5-haiku"``.

Run: ``python examples/patterns/03_model_fallback.py``
"""

from __future__ import annotations

import asyncio
from typing import Any

from llmspell.errors import ProviderError
from llmspell.hooks import HookContext, Redirect
from llmspell.runtime import System, SystemConfig
from llmspell.runtime.providers import ScriptedProvider
from llmspell.runtime.providers.base import Message, ToolSpec


def overloaded(messages: list[Message], tools: list[ToolSpec]) -> Any:
    raise ProviderError("primary", "overloaded", status=529, retryable=True)


def fall_back(ctx: HookContext) -> Redirect | None:
    """Send a retryable failure of the primary model to the backup model (once)."""
    if ctx.data["retryable"] and ctx.data["provider"] == "primary":
        print(f"{ctx.data['provider']}/{ctx.data['model']} failed "
              f"({ctx.data['status']}): falling back to backup/small")
        return Redirect("backup/small")
    return None


async def main() -> None:
    async with System(SystemConfig(store="memory")) as system:
        system.models.register(ScriptedProvider(["Answer from the backup model."],
                                                name="backup", model="small"))
        system.registry.register("ModelCallError", fall_back, name="fall_back")
        agent = system.agents.create(
            "helper", provider=ScriptedProvider(overloaded, name="primary", model="large"))
        answer = await agent.run("Summarise the incident.")
    print("answer:", answer.output)
    assert answer.output == "Answer from the backup model."


if __name__ == "__main__":
    asyncio.run(main())
