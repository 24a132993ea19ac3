"""Running an awaitable to completion from synchronous code.

Sync entry points (``HookExecutor.execute_sync``, ``ScriptHost.run_lua``) may meet an
awaitable. Outside a running event loop they run it on one private loop per thread (kept,
so repeated calls do not pay for a new loop, and closed when the thread ends or, for the
main thread, at exit); inside a running loop that is impossible, and the caller's own error
says what to do instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["run_blocking", "settle", "thread_loop"]

_local = threading.local()


class _LoopKeeper:
    """Held in the thread-local data beside the loop: when the thread ends, its
    thread-local data goes and this with it, and the finalizer closes the loop (an unclosed
    loop keeps its selector's descriptors until collected, and warns then)."""

    __slots__ = ("__weakref__",)


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    if not loop.is_closed() and not loop.is_running():
        with contextlib.suppress(RuntimeError):  # started running meanwhile (another thread)
            loop.close()


def thread_loop() -> asyncio.AbstractEventLoop:
    """This thread's private event loop (created on first use, or again once closed); it is
    closed when the thread ends (the main thread's at exit)."""
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        keeper = _LoopKeeper()
        weakref.finalize(keeper, _close_loop, loop)
        _local.loop = loop
        _local.keeper = keeper
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
