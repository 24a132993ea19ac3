"""Pattern: a human approves a tool call before it runs.

An async hook at ``BeforeToolExecution`` sends sensitive calls to a reviewer and waits for
the verdict; the tool runs only when approved. The hook is registered fail-closed with a
timeout, so a reviewer who never answers means "no": the timeout is a failure, and a
failing fail-closed hook refuses the call. Here the reviewer is a task reading a queue; in
an application it would be a chat message, a ticket or a web form.

Run: ``python examples/patterns/06_human_approval.py``
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from llmspell.errors import OperationCancelled
from llmspell.hooks import Cancel, HookContext
from llmspell.runtime import System, SystemConfig, tool

SENSITIVE = {"transfer_money"}


@tool()
def transfer_money(to: str, amount: int) -> str:
    """Move money (this demo only says so)."""
    return f"sent {amount} to {to}"


@dataclass
class Request:
    tool: str
    params: dict[str, object]
    verdict: asyncio.Future[bool] = field(default_factory=lambda: asyncio.get_running_loop()
                                          .create_future())


class ApprovalGate:
    """The hook: queue the request for a human, wait for the verdict."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[Request] = asyncio.Queue()

    async def __call__(self, ctx: HookContext) -> Cancel | None:
        if ctx.data["tool"] not in SENSITIVE:
            return None
        request = Request(ctx.data["tool"], dict(ctx.data["params"]))
        await self.inbox.put(request)
        if await request.verdict:
            return None
        return Cancel(f"{request.tool} rejected by the reviewer")


async def reviewer(gate: ApprovalGate) -> None:
    """A stand-in for a person: approves transfers up to 100, rejects larger ones, and
    ignores transfers to 'nobody' (so the gate's timeout decides)."""
    while True:
        request = await gate.inbox.get()
        print(f"  reviewer sees {request.tool}({request.params})")
        if request.params["to"] == "nobody":
            continue
        request.verdict.set_result(int(str(request.params["amount"])) <= 100)


async def main() -> None:
    results = []
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(transfer_money)
        gate = ApprovalGate()
        system.registry.register("BeforeToolExecution", gate, name="approval",
                                 error_policy="fail_closed", timeout=0.5)
        review = asyncio.create_task(reviewer(gate))
        for to, amount in (("ann", 50), ("bob", 5000), ("nobody", 10)):
            try:
                results.append(await system.tools.execute("transfer_money",
                                                          {"to": to, "amount": amount}))
            except OperationCancelled as exc:
                results.append(f"refused: {exc.reason}")
            print(results[-1])
        review.cancel()
    assert results[0] == "sent 50 to ann"
    assert results[1] == "refused: transfer_money rejected by the reviewer"
    assert results[2].startswith("refused:")


if __name__ == "__main__":
    asyncio.run(main())
