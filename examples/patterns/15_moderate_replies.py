"""Pattern: moderate a model's reply before anyone sees it.

A hook at ``AfterModelCall`` reads the response (``ctx.data["result"]["message"]``) and,
when it breaks a rule, returns ``Replace`` with a safe answer: the agent, the caller and the
stored events all see the replacement. Here the rule is a list of phrases; a real
moderation hook would call a classifier (an async hook can await it).

Run: ``python examples/patterns/15_moderate_replies.py``
"""

from __future__ import annotations

import asyncio
from typing import Any

from llmspell.hooks import HookContext, Replace
from llmspell.runtime import System, SystemConfig
from llmspell.runtime.providers import ScriptedProvider
from llmspell.runtime.providers.base import Message, ToolSpec

BLOCKED = ("guaranteed returns", "medical diagnosis")
SAFE_ANSWER = "I can't give that kind of advice; please ask a qualified professional."
moderated: list[str] = []


def model(messages: list[Message], tools: list[ToolSpec]) -> Any:
    question = messages[-1].content or ""
    if "invest" in question:
        return "Buy this fund: guaranteed returns of 30% a year!"
    return "Diversify and keep costs low."


def moderate(ctx: HookContext) -> Replace | None:
    text = (ctx.data["result"]["message"].get("content") or "").lower()
    hits = [phrase for phrase in BLOCKED if phrase in text]
    if not hits:
        return None
    moderated.append(", ".join(hits))
    return Replace(SAFE_ANSWER)


async def main() -> None:
    async with System(SystemConfig(store="memory")) as system:
        system.registry.register("AfterModelCall", moderate, name="moderation", priority="high")
        agent = system.agents.create("advisor", provider=ScriptedProvider(model))
        first = await agent.run("Where should I invest my savings?")
        second = await agent.run("Any general advice?")
    print("1:", first.output)
    print("2:", second.output)
    print("moderated:", moderated)
    assert first.output == SAFE_ANSWER and second.output == "Diversify and keep costs low."


if __name__ == "__main__":
    asyncio.run(main())
