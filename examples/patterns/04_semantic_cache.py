"""Pattern: cache model answers by a semantic key.

Two prompts that mean the same thing should share an answer. A hook at ``BeforeModelCall``
computes a key from the meaning of the last user message (here: lowercased words without
punctuation and filler words, sorted; a real application would use an embedding bucket)
and returns ``Cache(key)``: the runtime serves a stored response for that key without
calling the provider, or stores the response once the call returns.

Run: ``python examples/patterns/04_semantic_cache.py``
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from llmspell.hooks import Cache, HookContext
from llmspell.runtime import System, SystemConfig
from llmspell.runtime.providers import ScriptedProvider
from llmspell.runtime.providers.base import Message, ToolSpec

FILLER = {"a", "an", "the", "please", "is", "what", "whats", "me", "tell", "of"}
calls: list[str] = []


def model(messages: list[Message], tools: list[ToolSpec]) -> Any:
    calls.append(messages[-1].content or "")
    return "Paris."


def semantic_key(text: str) -> str:
    words = re.findall(r"[a-z]+", text.lower().replace("'", ""))
    return " ".join(sorted({w for w in words if w not in FILLER}))


def cache_by_meaning(ctx: HookContext) -> Cache | None:
    messages = ctx.data["params"]["messages"]
    question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), None)
    if not question:
        return None
    return Cache(f"q:{semantic_key(question)}", ttl=3600)


async def main() -> None:
    async with System(SystemConfig(store="memory")) as system:
        system.registry.register("BeforeModelCall", cache_by_meaning, name="semantic_cache")
        agent = system.agents.create("geo", provider=ScriptedProvider(model))
        for question in ("What is the capital of France?", "capital of france, please",
                         "Tell me: what's the capital of France"):
            print(f"{question!r} -> {(await agent.run(question)).output}")
    print("provider calls:", len(calls))
    assert len(calls) == 1


if __name__ == "__main__":
    asyncio.run(main())
