"""Pattern: replay an incident against the fixed hook before you ship the fix.

A refund guard let a 1500-dollar refund through because it compared text, not numbers.
The run that did it is recorded. To check the fix, replay that run in ``what-if`` mode with
the buggy guard removed and the fixed one added: the replay serves every model call from
the recording (no provider is called), the refund tool declares a side effect so it is
never executed again, and the divergence report shows the fixed guard cancelling exactly
the step where the money went out.

Run: ``python examples/patterns/18_replay_an_incident.py``
"""

from __future__ import annotations

import asyncio
from typing import Any

from llmspell.hooks import Cancel, HookContext
from llmspell.runtime import SideEffect, System, SystemConfig, tool
from llmspell.runtime.providers.scripted import ScriptedProvider

refunds: list[int] = []


@tool(side_effects=[SideEffect.NETWORK_WRITE])
def refund(order: str, amount: str) -> str:
    """Refund an order (calls the payment provider)."""
    refunds.append(int(amount))
    return f"refunded {amount} on {order}"


def guard_v1(ctx: HookContext) -> Cancel | None:
    """The bug: amounts are text, and "1500" > "200" is False for text."""
    return Cancel("refund over the limit") if ctx.data["params"]["amount"] > "200" else None


def guard_v2(ctx: HookContext) -> Cancel | None:
    """The fix: compare amounts as numbers."""
    if int(ctx.data["params"]["amount"]) > 200:
        return Cancel("refund over the limit")
    return None


def offline(messages: Any, tools: Any) -> Any:
    raise ConnectionError("a replay must not call the model provider")


async def main() -> None:
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(refund)
        system.registry.register("BeforeToolExecution", guard_v1, name="refund_guard",
                                 version="1")
        ask = {"tool_calls": [{"name": "refund",
                               "arguments": {"order": "A-17", "amount": "1500"}}]}
        system.agents.create("support", tools=["refund"],
                             provider=ScriptedProvider([ask, "Your refund is on its way."]))
        await system.agents.get("support").run("I want my 1500 back for order A-17")
        incident = system.runs.list(limit=1)[0]
        print(f"incident {incident.run_id}: refunds made {refunds}")

        system.agents.get("support").provider = ScriptedProvider(offline)
        check = await system.runs.replay(
            incident.run_id, mode="what-if", remove_hooks=["refund_guard"],
            hooks=[("BeforeToolExecution", guard_v2)])
        first = check.first_divergence
        assert first is not None, "the fixed guard should change the run"
        print("replay with the fix:", first.describe())
        assert (first.kind, first.name, first.what) == ("tool", "refund", "decision")
        assert (first.expected, first.got) == ("continue", "cancel by 'guard_v2'")
        assert refunds == [1500]  # the replay did not refund again
        print("refunds after the replay:", refunds)


if __name__ == "__main__":
    asyncio.run(main())
