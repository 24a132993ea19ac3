"""A what-if replay's hook changes are its own: hooks it removes are left out of its calls
only, hooks it adds run only inside it. Live calls on the same System meanwhile run every
hook as registered (a what-if once disabled a guard for all traffic while it ran)."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

from llmspell.core.run_scope import current_replay
from llmspell.errors import OperationCancelled
from llmspell.hooks import Cancel, HookContext, HookPoint
from llmspell.runtime import System, tool

P = HookPoint


@tool()
def lookup(order: str) -> str:
    """Look an order up."""
    return f"order {order}"


@tool()
def refund(order: str) -> str:
    """Refund an order (a guard refuses it)."""
    return f"refunded {order}"


async def test_live_calls_keep_every_hook_while_a_what_if_replay_runs(
        system: System) -> None:
    system.tools.register_all([lookup, refund])
    guard_saw: list[bool] = []

    def guard(ctx: HookContext) -> Cancel | None:
        guard_saw.append(current_replay() is not None)
        return Cancel("no refunds") if ctx.data["tool"] == "refund" else None

    system.registry.register(P.BEFORE_TOOL_EXECUTION, guard, name="guard")
    async with system.runs.start("job", "support", "A1") as run:
        run.output = await system.tools.execute("lookup", {"order": "A1"})
    guard_saw.clear()

    added_saw: list[bool] = []
    live: list[str] = []

    def added(ctx: HookContext) -> None:
        added_saw.append(current_replay() is not None)

    async def live_refund() -> None:
        try:
            live.append(await system.tools.execute("refund", {"order": "B2"}))
        except OperationCancelled:
            live.append("refused")

    async def op(order: Any) -> Any:
        # Live traffic meanwhile: a task of its own, not part of the replay.
        await asyncio.get_running_loop().create_task(live_refund(),
                                                     context=contextvars.Context())
        return await system.tools.execute("lookup", {"order": order})

    result = await system.runs.replay(run.run_id, mode="what-if", remove_hooks=["guard"],
                                      hooks=[(P.BEFORE_TOOL_EXECUTION, added)],
                                      operation=op)
    assert result.error is None and result.output == "order A1"
    assert live == ["refused"]       # the guard held for the live call
    assert guard_saw == [False]      # ... and ran for it alone (removed in the replay)
    assert added_saw == [True]       # the replay's own hook ran for the replay's call only
    # After the replay the registry is as it was.
    assert [i.name for i in system.registry.list()] == ["guard"]
    assert await system.tools.execute("lookup", {"order": "C3"}) == "order C3"
    assert guard_saw == [False, False] and added_saw == [True]
