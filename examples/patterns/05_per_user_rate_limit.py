"""Pattern: rate limits per user.

``RateLimitHook`` with ``key="user"`` keeps one token bucket per user: the user comes from
``ctx.metadata["user"]`` or from the ``user`` key of the call's parameters. One user using
up their allowance does not slow anyone else down. ``action="cancel"`` refuses the call
with the time to wait (``retry-after``); ``"wait"`` would queue it instead.

Run: ``python examples/patterns/05_per_user_rate_limit.py``
"""

from __future__ import annotations

import asyncio

from llmspell.builtin import RateLimitConfig, RateLimitHook
from llmspell.errors import OperationCancelled
from llmspell.runtime import System, SystemConfig
from llmspell.runtime.providers import ScriptedProvider


async def main() -> None:
    async with System(SystemConfig(store="memory")) as system:
        # 2 requests at once per user, refilled at one every 10 minutes.
        limiter = RateLimitHook(RateLimitConfig(rate=1 / 600, burst=2, key="user"))
        limiter.install(system.registry)
        agent = system.agents.create("helper", provider=ScriptedProvider(lambda m, t: "ok"))
        outcome: dict[str, list[str]] = {"ann": [], "bob": []}
        for user in ("ann", "ann", "ann", "bob"):
            try:
                await agent.run({"input": "hello", "user": user})
                outcome[user].append("ok")
            except OperationCancelled as exc:
                outcome[user].append("limited")
                print(f"{user}: {exc.reason}")
    print(outcome)
    assert outcome == {"ann": ["ok", "ok", "limited"], "bob": ["ok"]}


if __name__ == "__main__":
    asyncio.run(main())
