"""Pattern: retry a model call on 429 with exponential backoff.

The built-in ``RetryHook`` answers ``ModelCallError`` with ``Retry`` when the provider's
error is retryable (408, 429, 5xx or ``retryable=True``), waiting ``base_delay *
multiplier ** (n - 1)`` before the n-th retry (capped at ``max_delay``, with optional
jitter); the runtime waits at least the provider's ``Retry-After``. After ``max_attempts``
the error stands. The stand-in provider below refuses twice with a 429, then answers.

Run: ``python examples/patterns/09_retry_on_429.py``
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from llmspell.builtin import RetryConfig, RetryHook
from llmspell.errors import ProviderError
from llmspell.runtime import System, SystemConfig
from llmspell.runtime.providers import ScriptedProvider
from llmspell.runtime.providers.base import Message, ToolSpec

attempts: list[float] = []


def busy_provider(messages: list[Message], tools: list[ToolSpec]) -> Any:
    attempts.append(time.monotonic())
    if len(attempts) <= 2:
        raise ProviderError("scripted", "rate limited", status=429, retryable=True)
    return "Done on attempt 3."


async def main() -> None:
    async with System(SystemConfig(store="memory")) as system:
        retry = RetryHook(RetryConfig(strategy="exponential", base_delay=0.05, multiplier=2,
                                      jitter="none", max_attempts=4))
        retry.install(system.registry)
        agent = system.agents.create("helper", provider=ScriptedProvider(busy_provider))
        answer = await agent.run("hello")
    waits = [round(b - a, 3) for a, b in itertools.pairwise(attempts)]
    print("answer:", answer.output)
    print("waits between attempts (s):", waits)
    assert answer.output == "Done on attempt 3." and len(attempts) == 3
    assert waits[0] >= 0.045 and waits[1] >= 0.095       # 0.05 s, then 0.1 s (timer slack)


if __name__ == "__main__":
    asyncio.run(main())
