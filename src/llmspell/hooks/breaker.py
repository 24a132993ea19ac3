"""Circuit breakers: stop calling a hook that keeps failing or is too slow.

One breaker per registered hook. States:

* ``closed``: calls go through. ``failure_threshold`` failures within ``failure_window``
  seconds, or ``slow_call_count`` calls slower than ``slow_call_threshold`` within the same
  window, open it.
* ``open``: calls are refused until ``open_duration`` has passed, then the breaker goes
  half-open. The executor skips a refused fail-open hook and turns a refused fail-closed
  hook into ``Cancel("breaker open: ...")`` (an open breaker never makes a guard fail open).
* ``half_open``: at most ``half_open_max_calls`` calls at a time go through as probes; the
  others are refused as if the breaker were open. ``success_threshold`` successes in a row
  close it (and reset the open time); a failed or slow probe re-opens it with the open time
  multiplied by ``backoff_multiplier``, capped at ``max_open_duration``.

All timing comes from an injected :class:`~llmspell.core.clock.Clock`, so transitions are
tested without sleeping. Every state change is reported to a listener as a
:class:`BreakerTransition`.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable
from enum import StrEnum

import msgspec

from llmspell.core.clock import SYSTEM_CLOCK, Clock
from llmspell.core.errors import InvalidValueError

__all__ = [
    "BreakerConfig",
    "BreakerListener",
    "BreakerSnapshot",
    "BreakerState",
    "BreakerTransition",
    "CircuitBreaker",
]


class BreakerState(StrEnum):
    """The three states of a circuit breaker."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Thresholds of a breaker. Times are seconds. See the module docstring."""

    failure_threshold: int = 3
    failure_window: float = 60.0
    success_threshold: int = 2
    open_duration: float = 15.0
    max_open_duration: float = 300.0
    backoff_multiplier: float = 2.0
    slow_call_threshold: float = 0.050
    slow_call_count: int = 2
    half_open_max_calls: int = 1

    def __post_init__(self) -> None:
        for field in ("failure_threshold", "success_threshold", "slow_call_count",
                      "half_open_max_calls"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidValueError(f"BreakerConfig.{field} must be an int >= 1, "
                                        f"got {value!r}")
        for field in ("failure_window", "open_duration", "slow_call_threshold",
                      "max_open_duration", "backoff_multiplier"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
                raise InvalidValueError(f"BreakerConfig.{field} must be a number, got {value!r}",
                                        hint="pass seconds (or a factor) as an int or float")
        for field in ("failure_window", "open_duration", "slow_call_threshold"):
            if not getattr(self, field) > 0:
                raise InvalidValueError(f"BreakerConfig.{field} must be > 0 seconds")
        if self.max_open_duration < self.open_duration:
            raise InvalidValueError("BreakerConfig.max_open_duration must be >= open_duration")
        if self.backoff_multiplier < 1:
            raise InvalidValueError("BreakerConfig.backoff_multiplier must be >= 1")

    @classmethod
    def default(cls) -> BreakerConfig:
        """3 failures, 2 successes, 15 s open, 50 ms slow x 2."""
        return cls()

    @classmethod
    def production(cls) -> BreakerConfig:
        """Tolerant of the odd failure: 5 failures, 3 successes, 30 s open, 100 ms slow x 5."""
        return cls(
            failure_threshold=5,
            success_threshold=3,
            open_duration=30.0,
            max_open_duration=600.0,
            slow_call_threshold=0.100,
            slow_call_count=5,
        )

    @classmethod
    def conservative(cls) -> BreakerConfig:
        """Trips early, recovers slowly: 2 failures, 5 successes, 60 s open, 20 ms slow x 2."""
        return cls(
            failure_threshold=2,
            success_threshold=5,
            open_duration=60.0,
            max_open_duration=900.0,
            slow_call_threshold=0.020,
            slow_call_count=2,
        )


class BreakerTransition(msgspec.Struct, frozen=True, kw_only=True):
    """A breaker changed state: which hook, from what, to what, why, and the open time."""

    hook: str
    point: str
    old: BreakerState
    new: BreakerState
    reason: str
    open_duration: float
    at: float


class BreakerSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """The state of one breaker, for stats and dashboards."""

    hook: str
    point: str
    state: BreakerState
    recent_failures: int
    recent_slow_calls: int
    open_duration: float
    trips: int


BreakerListener = Callable[[BreakerTransition], None]

_NEVER_NS = 1 << 62
"""A duration (ns) no call reaches: the slow-call limit of an unbounded threshold."""


class CircuitBreaker:
    """A breaker for one hook. Thread-safe; the closed-and-fast path takes no lock."""

    __slots__ = (
        "_clock",
        "_current_open",
        "_failures",
        "_listener",
        "_lock",
        "_open_until",
        "_probe_at",
        "_probes",
        "_slow",
        "_successes",
        "config",
        "hook",
        "point",
        "slow_threshold_ns",
        "state",
        "trips",
    )

    def __init__(
        self,
        hook: str,
        point: str,
        config: BreakerConfig | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        listener: BreakerListener | None = None,
    ) -> None:
        self.hook = hook
        self.point = point
        self.config = config or BreakerConfig()
        self.state = BreakerState.CLOSED
        self.trips = 0
        self._clock = clock
        self._listener = listener
        self._lock = threading.Lock()
        self._failures: deque[float] = deque()
        self._slow: deque[float] = deque()
        self._successes = 0
        self._probes = 0  # probes admitted in half-open that have not reported back
        self._probe_at = 0.0  # when the last probe was admitted (monotonic)
        self._current_open = self.config.open_duration
        self._open_until = 0.0
        # A float first: an infinite (or astronomically large) threshold means "never slow"
        # and must not overflow int().
        slow_ns = self.config.slow_call_threshold * 1e9
        self.slow_threshold_ns = int(slow_ns) if slow_ns < _NEVER_NS else _NEVER_NS

    def allow(self) -> bool:
        """True when a call may go through now (moves open -> half-open when its time is up).

        In half-open at most ``half_open_max_calls`` admitted probes are outstanding at a
        time; a probe reports back through :meth:`record_success`, :meth:`record_failure`
        or (ended without an outcome) :meth:`release`. Probes that have not reported within
        the current open time are presumed lost and their slots reused."""
        if self.state is BreakerState.CLOSED:
            return True
        with self._lock:
            if self.state is BreakerState.OPEN:
                if self._clock.monotonic() < self._open_until:
                    return False
                self._successes = 0
                self._probes = 1
                self._probe_at = self._clock.monotonic()
                transition = self._move(BreakerState.HALF_OPEN, "open time elapsed; probing")
            elif self.state is BreakerState.HALF_OPEN:
                now = self._clock.monotonic()
                if self._probes >= self.config.half_open_max_calls:
                    if now - self._probe_at < self._current_open:
                        return False
                    # No probe reported within a whole open time: presume them lost (a
                    # caller that asked allow() and never reported) rather than refuse
                    # every call for ever.
                    self._probes = 0
                self._probes += 1
                self._probe_at = now
                return True
            else:
                return True
        self._notify(transition)
        return True

    def release(self) -> None:
        """A probe admitted by :meth:`allow` ended without success or failure (it was
        cancelled): free its slot so another call may probe."""
        with self._lock:
            if self.state is BreakerState.HALF_OPEN and self._probes > 0:
                self._probes -= 1

    def record_success(self, duration_ns: int = 0) -> None:
        """Record a call that returned; a call slower than the threshold counts as slow."""
        slow = duration_ns > self.slow_threshold_ns
        if self.state is BreakerState.CLOSED and not slow:
            return
        transition = None
        with self._lock:
            if self.state is BreakerState.HALF_OPEN:
                if self._probes > 0:
                    self._probes -= 1
                if slow:
                    transition = self._trip("slow probe", backoff=True)
                else:
                    self._successes += 1
                    if self._successes >= self.config.success_threshold:
                        self._failures.clear()
                        self._slow.clear()
                        self._current_open = self.config.open_duration
                        transition = self._move(
                            BreakerState.CLOSED, f"{self._successes} successful probes"
                        )
            elif self.state is BreakerState.CLOSED and slow:
                now = self._clock.monotonic()
                self._slow.append(now)
                self._prune(self._slow, now)
                if len(self._slow) >= self.config.slow_call_count:
                    transition = self._trip(
                        f"{len(self._slow)} calls slower than "
                        f"{self.config.slow_call_threshold * 1000:g} ms",
                        backoff=False,
                    )
        self._notify(transition)

    def record_failure(self) -> None:
        """Record a call that raised, timed out or returned a bad value."""
        transition = None
        with self._lock:
            if self.state is BreakerState.HALF_OPEN:
                transition = self._trip("probe failed", backoff=True)
            elif self.state is BreakerState.CLOSED:
                now = self._clock.monotonic()
                self._failures.append(now)
                self._prune(self._failures, now)
                if len(self._failures) >= self.config.failure_threshold:
                    transition = self._trip(
                        f"{len(self._failures)} failures within "
                        f"{self.config.failure_window:g} s",
                        backoff=False,
                    )
        self._notify(transition)

    def reset(self) -> None:
        """Close the breaker and forget its history."""
        with self._lock:
            self._failures.clear()
            self._slow.clear()
            self._successes = 0
            self._probes = 0
            self._current_open = self.config.open_duration
            transition = (
                self._move(BreakerState.CLOSED, "reset")
                if self.state is not BreakerState.CLOSED
                else None
            )
        self._notify(transition)

    def snapshot(self) -> BreakerSnapshot:
        """The breaker's state and recent counts."""
        with self._lock:
            now = self._clock.monotonic()
            self._prune(self._failures, now)
            self._prune(self._slow, now)
            return BreakerSnapshot(
                hook=self.hook,
                point=self.point,
                state=self.state,
                recent_failures=len(self._failures),
                recent_slow_calls=len(self._slow),
                open_duration=self._current_open,
                trips=self.trips,
            )

    # -- internals (called with the lock held) -------------------------------------------
    def _prune(self, times: deque[float], now: float) -> None:
        horizon = now - self.config.failure_window
        while times and times[0] <= horizon:
            times.popleft()

    def _trip(self, reason: str, *, backoff: bool) -> BreakerTransition:
        if backoff:
            self._current_open = min(
                self._current_open * self.config.backoff_multiplier,
                self.config.max_open_duration,
            )
        self._open_until = self._clock.monotonic() + self._current_open
        self._failures.clear()
        self._slow.clear()
        self._successes = 0
        self._probes = 0
        self.trips += 1
        return self._move(BreakerState.OPEN, reason)

    def _move(self, new: BreakerState, reason: str) -> BreakerTransition:
        old = self.state
        self.state = new
        return BreakerTransition(
            hook=self.hook,
            point=self.point,
            old=old,
            new=new,
            reason=reason,
            open_duration=self._current_open,
            at=self._clock.now(),
        )

    def _notify(self, transition: BreakerTransition | None) -> None:
        if transition is not None and self._listener is not None:
            self._listener(transition)
