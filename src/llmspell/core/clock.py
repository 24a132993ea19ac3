"""Clocks. Components that measure time take a :class:`Clock` so tests can inject one."""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "ManualClock", "SystemClock", "SYSTEM_CLOCK"]


@runtime_checkable
class Clock(Protocol):
    """A source of time: monotonic seconds for intervals, wall-clock seconds for timestamps."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes backwards."""
        ...

    def now(self) -> float:
        """Wall-clock seconds since the Unix epoch."""
        ...


class SystemClock:
    """The real clock (``time.monotonic`` and ``time.time``)."""

    __slots__ = ()

    def monotonic(self) -> float:
        """Return ``time.monotonic()``."""
        return time.monotonic()

    def now(self) -> float:
        """Return ``time.time()``."""
        return time.time()


SYSTEM_CLOCK = SystemClock()


class ManualClock:
    """A clock that moves only when told to; for deterministic tests of time-based logic."""

    __slots__ = ("_mono", "_wall")

    def __init__(self, start: float = 0.0, wall_start: float = 1_700_000_000.0) -> None:
        self._mono = start
        self._wall = wall_start

    def monotonic(self) -> float:
        """Return the current manual monotonic time."""
        return self._mono

    def now(self) -> float:
        """Return the current manual wall time."""
        return self._wall

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds`` (must not be negative)."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards; pass seconds >= 0")
        self._mono += seconds
        self._wall += seconds
