"""Pattern: a budget per conversation session.

The built-in ``CostTrackingHook`` prices every model call and attributes it to the run's
``user`` and ``session`` (from the agent run's input dict or metadata); its budgets cover
``global``, ``agent:<name>`` and ``user:<id>`` scopes. A session budget is one small hook on
top: at ``BeforeAgentExecution`` it reads the session's spending from the tracker's report
and refuses the run once the session has spent its allowance. Other sessions go on.

Run: ``python examples/patterns/07_session_budget.py``
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal

from llmspell.builtin import CostConfig, CostTrackingHook
from llmspell.builtin.cost import TokenPrice
from llmspell.errors import OperationCancelled
from llmspell.hooks import Cancel, HookContext
from llmspell.runtime import System, SystemConfig
from llmspell.runtime.providers import ScriptedProvider

SESSION_LIMIT = Decimal("0.01")   # USD per session


def session_budget(tracker: CostTrackingHook) -> Callable[[HookContext], Cancel | None]:
    """A hook refusing runs of a session that has spent SESSION_LIMIT."""

    def check(ctx: HookContext) -> Cancel | None:
        session = ctx.data["params"].get("session")
        if session is None:
            return None
        spent = sum((row.cost or Decimal(0) for row in tracker.report(("session",))
                     if row.group["session"] == session), Decimal(0))
        if spent >= SESSION_LIMIT:
            return Cancel(f"session {session} has spent ${spent} of ${SESSION_LIMIT}")
        return None

    return check


async def main() -> None:
    async with System(SystemConfig(store="memory")) as system:
        # $100 per 1M tokens in and out: a short exchange costs a few tenths of a cent.
        price = TokenPrice(input=Decimal(100), output=Decimal(100))
        tracker = CostTrackingHook(CostConfig(prices={"scripted/scripted": price}),
                                   bus=system.bus)
        tracker.install(system.registry)
        system.registry.register("BeforeAgentExecution", session_budget(tracker),
                                 name="session_budget", priority="high")
        agent = system.agents.create("chat", provider=ScriptedProvider(
            lambda m, t: "A detailed answer " * 5))
        log = []
        for session in ("s-1", "s-1", "s-1", "s-1", "s-2"):
            try:
                await agent.run({"input": "Explain it again " * 10, "session": session})
                log.append((session, "answered"))
            except OperationCancelled as exc:
                log.append((session, "refused"))
                print(exc.reason)
        for row in tracker.report(("session",)):
            print(f"session {row.group['session']}: {row.calls} calls, ${row.cost}")
    print(log)
    assert log == [("s-1", "answered"), ("s-1", "answered"), ("s-1", "refused"),
                   ("s-1", "refused"), ("s-2", "answered")]


if __name__ == "__main__":
    asyncio.run(main())
