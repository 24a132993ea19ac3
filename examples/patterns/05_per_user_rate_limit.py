"""Pattern: rate limits per user.

``RateLimitHook`` with ``key="user"`` keeps one token bucket per user. The user comes from
``ctx.metadata["user"]``, which the application sets: here a hook that runs first copies
it from a context variable the request handler set (the way a web app knows who is
calling). It never comes from a tool call's parameters, which the model chooses: a model
could rotate them to escape the limit (``user_from_params=True`` allows it for parameters
only the application sets). Calls with no user share one ``"anonymous"`` bucket. One user
using up their allowance does not slow anyone else down. ``action="cancel"`` refuses the
call with the time to wait (``retry-after``); ``"wait"`` would queue it instead.

Run: ``python examples/patterns/05_per_user_rate_limit.py``
"""

from __future__ import annotations

import asyncio
import contextvars

from llmspell.builtin import RateLimitConfig, RateLimitHook
from llmspell.errors import OperationCancelled
from llmspell.hooks import HookContext, HookPoint
from llmspell.runtime import Agent, System, SystemConfig
from llmspell.runtime.providers import ScriptedProvider

current_user: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "current_user", default=None)


def who_is_calling(ctx: HookContext) -> None:
    """Put the caller the application authenticated into the hook context's metadata."""
    user = current_user.get()
    if user is not None:
        ctx.metadata["user"] = user


async def handle_request(agent: Agent, user: str) -> str:
    """What a request handler does: note who is calling, then run the agent."""
    current_user.set(user)
    await agent.run("hello")
    return "ok"


async def main() -> None:
    async with System(SystemConfig(store="memory")) as system:
        system.registry.register(HookPoint.BEFORE_AGENT_EXECUTION, who_is_calling,
                                 name="who-is-calling", priority="highest")
        # 2 requests at once per user, refilled at one every 10 minutes.
        limiter = RateLimitHook(RateLimitConfig(rate=1 / 600, burst=2, key="user"))
        limiter.install(system.registry)
        agent = system.agents.create("helper", provider=ScriptedProvider(lambda m, t: "ok"))
        outcome: dict[str, list[str]] = {"ann": [], "bob": []}
        for user in ("ann", "ann", "ann", "bob"):
            try:
                # Each request in its own task, as a web server runs them.
                outcome[user].append(await asyncio.create_task(handle_request(agent, user)))
            except OperationCancelled as exc:
                outcome[user].append("limited")
                print(f"{user}: {exc.reason}")
    print(outcome)
    assert outcome == {"ann": ["ok", "ok", "limited"], "bob": ["ok"]}


if __name__ == "__main__":
    asyncio.run(main())
