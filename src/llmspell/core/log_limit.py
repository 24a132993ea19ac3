"""Log lines that anyone on the network can cause, kept to a bounded rate.

A hook server logs every call it refuses (bad signature, replayed, too large ...): useful
when a client is misconfigured, and a way to fill a disk when someone sends junk on purpose.
:class:`ThrottledLog` writes at most ``burst`` lines per key (a refusal code, a hook name)
per ``window`` seconds; the rest are counted, and the first line of the key's next window
says how many were left out. Counters (``HookServer.stats()``) still count every one.

Written here rather than taken from a library: the standard ``logging`` module has no rate
limit, and the few lines needed do not justify a dependency.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["ThrottledLog"]

_MAX_KEYS = 1024
"""Keys remembered at once: past this, the oldest windows are forgotten (a key's count
restarts), so hostile keys cannot grow the table."""


class ThrottledLog:
    """At most ``burst`` lines per key per ``window`` seconds to ``logger``.

    ``clock`` (monotonic seconds) is injectable for tests."""

    def __init__(self, logger: logging.Logger, *, burst: int = 10, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.burst = burst
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        # key -> [window start, lines written in it, lines left out in it]
        self._keys: dict[str, list[float]] = {}
        self.suppressed = 0
        """Lines left out since this log was made."""

    def warning_for(self, key: str, message: str, *args: object) -> None:
        """``logger.warning(message, *args)`` unless ``key`` used up its lines in this
        window."""
        now = self._clock()
        with self._lock:
            state = self._keys.get(key)
            left_out = 0
            if state is None or now - state[0] >= self.window:
                if state is not None:
                    left_out = int(state[2])
                if state is None and len(self._keys) >= _MAX_KEYS:
                    self._keys.pop(next(iter(self._keys)))
                state = self._keys[key] = [now, 0, 0]
            if state[1] >= self.burst:
                state[2] += 1
                self.suppressed += 1
                return
            state[1] += 1
        if left_out:
            self.logger.warning("%d more such line(s) (%s) were left out in the last %g s",
                                left_out, key, self.window)
        self.logger.warning(message, *args)
