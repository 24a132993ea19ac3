"""The owner-thread rule shared by the script engines.

Script engines are not thread-safe: an engine belongs to the thread that created it (its
*owner*). Work posted from other threads (event callbacks) waits in a bounded queue until
the owner calls :meth:`OwnerThread.pump` (or awaits :meth:`OwnerThread.run_pending`); a full
queue drops the oldest item and counts it, like a bus subscription with DropOldest.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

from llmspell.core.errors import ScriptError

__all__ = ["PENDING_LIMIT", "OwnerThread"]

PENDING_LIMIT = 10_000
"""How many callbacks from other threads may wait for :meth:`OwnerThread.pump`."""


class OwnerThread:
    """The owner thread and the queue of work waiting for it."""

    def __init__(self, log: logging.Logger) -> None:
        self.owner = threading.get_ident()
        self._log = log
        self._pending: collections.deque[Callable[[], None]] = collections.deque()
        self._pending_lock = threading.Lock()
        self.dropped = 0
        """Callbacks dropped because the queue was full."""
        self.callback_errors: collections.deque[Exception] = collections.deque(maxlen=100)
        """The latest errors raised by callbacks (they never reach the publisher)."""

    @property
    def on_owner_thread(self) -> bool:
        """True when the current thread created this engine."""
        return threading.get_ident() == self.owner

    def deliver(self, work: Callable[[], None]) -> None:
        """Run ``work`` now when on the owner thread, else queue it for :meth:`pump`
        (a full queue drops the oldest item and counts it in ``dropped``)."""
        if self.on_owner_thread:
            self._run_callback(work)
            return
        with self._pending_lock:
            if len(self._pending) >= PENDING_LIMIT:
                self._pending.popleft()
                self.dropped += 1
            self._pending.append(work)

    def deliver_call(self, fn: Callable[[Any, Any], None], first: Any, second: Any) -> None:
        """:meth:`deliver` of ``fn(first, second)``, without building a closure when it runs
        now (on the owner thread)."""
        if threading.get_ident() == self.owner:
            try:
                fn(first, second)
            except Exception as exc:
                self.callback_errors.append(exc)
                self._log.warning("a script callback failed: %s", exc)
            return
        self.deliver(functools.partial(fn, first, second))

    def pending(self) -> int:
        """How many queued callbacks wait for :meth:`pump`."""
        return len(self._pending)

    def pump(self, limit: int | None = None) -> int:
        """Run queued callbacks on the owner thread; return how many ran."""
        if not self.on_owner_thread:
            raise ScriptError("pump() must be called on the engine's owner thread",
                              hint="call it from the thread that created the engine")
        ran = 0
        while limit is None or ran < limit:
            with self._pending_lock:
                if not self._pending:
                    break
                work = self._pending.popleft()
            self._run_callback(work)
            ran += 1
        return ran

    async def run_pending(self) -> int:
        """:meth:`pump` for async hosts (yields to the loop first)."""
        await asyncio.sleep(0)
        return self.pump()

    def _run_callback(self, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception as exc:
            self.callback_errors.append(exc)
            self._log.warning("a script callback failed: %s", exc)

