"""Running an awaitable to completion from synchronous code.

Sync entry points (``HookExecutor.execute_sync``, ``ScriptHost.run_lua``) may meet an
awaitable. Outside a running event loop they run it on one private loop per thread (kept,
so repeated calls do not pay for a new loop); inside a running loop that is impossible, and
the caller's own error says what to do instead.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["run_blocking", "settle", "thread_loop"]

_local = threading.local()


def thread_loop() -> asyncio.AbstractEventLoop:
    """This thread's private event loop (created on first use, or again once closed)."""
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _local.loop = loop
    return loop


async def settle(value: Any, timeout: float | None = None) -> Any:
    """``value`` awaited if it is awaitable (within ``timeout`` seconds), else as it is."""
    if not inspect.isawaitable(value):
        return value
    if timeout is None:
        return await value
    async with asyncio.timeout(timeout):
        return await value


def run_blocking(awaitable: Awaitable[Any], refusal: Callable[[], Exception],
                 timeout: float | None = None) -> Any:
    """The result of ``awaitable``, run on :func:`thread_loop`. Inside a running event loop
    the awaitable is closed and ``refusal()`` is raised."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return thread_loop().run_until_complete(settle(awaitable, timeout))
    if inspect.iscoroutine(awaitable):
        awaitable.close()
    raise refusal()
