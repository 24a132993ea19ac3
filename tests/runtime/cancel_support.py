"""What the cancellation tests share: letting the loop run, the tasks a test left behind,
and cancelling a coroutine once it reached a point."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import pytest

GUARD = 30.0  # a hang guard only: every wait ends on an event


async def settle() -> None:
    """Let the loop run the callbacks and tasks already scheduled."""
    for _ in range(20):
        await asyncio.sleep(0)


def leftover_tasks(before: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    """The unfinished tasks made since ``before`` (the calling task aside)."""
    return {t for t in asyncio.all_tasks() - before
            if t is not asyncio.current_task() and not t.done()}


async def cancel_at(coro: Awaitable[Any], reached: asyncio.Event) -> None:
    """Run ``coro`` in a task, cancel it once ``reached`` is set and check the
    ``CancelledError`` reaches the canceller."""
    task = asyncio.ensure_future(coro)
    await asyncio.wait_for(reached.wait(), GUARD)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, GUARD)
    assert task.cancelled()
