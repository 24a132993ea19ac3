"""Flow control: overflow strategies, water marks, backpressure notices, a publisher rate limit.

Every queued subscription has a bounded queue. When it is full, its :class:`OverflowStrategy`
decides: ``drop_oldest`` drops the oldest queued event to make room, ``drop_newest`` drops
the event being published, ``block`` makes the publisher wait for room (up to a timeout),
``reject`` raises :class:`~llmspell.errors.QueueFullError` to the publisher.

Water marks turn queue depth into backpressure *episodes*: reaching the high mark starts
one (``started``), the first event an episode drops or rejects raises a ``warning``, and
falling back to the low mark ends it (``relieved``). A :class:`TokenBucket` limits how fast
publishers may publish (off unless configured); a refusal starts a ``rate_limit_exceeded``
episode. Each notice is published as a ``bus.backpressure.<kind>`` event and passed to the
callbacks.
"""

from __future__ import annotations

import threading
from enum import StrEnum

import msgspec

from llmspell.core.clock import SYSTEM_CLOCK, Clock
from llmspell.core.errors import InvalidValueError

__all__ = [
    "BackpressureKind",
    "BackpressureNotice",
    "DeliveryMode",
    "FlowStats",
    "OverflowStrategy",
    "RateLimit",
    "TokenBucket",
]


class DeliveryMode(StrEnum):
    """How a subscription receives events.

    ``inline``: the handler is called in the publisher's flow (cheapest; a slow handler slows
    the publisher). ``queued``: events go to a bounded queue drained by one long-lived worker
    per subscription. ``auto`` (the default): inline for sync handlers, queued for async ones.
    """

    INLINE = "inline"
    QUEUED = "queued"
    AUTO = "auto"


class OverflowStrategy(StrEnum):
    """What a full queue does with one more event (see the module docstring)."""

    DROP_OLDEST = "drop_oldest"
    DROP_NEWEST = "drop_newest"
    BLOCK = "block"
    REJECT = "reject"


class BackpressureKind(StrEnum):
    """The four backpressure notices."""

    STARTED = "started"
    RELIEVED = "relieved"
    RATE_LIMIT_EXCEEDED = "rate_limit_exceeded"
    WARNING = "warning"


class BackpressureNotice(msgspec.Struct, frozen=True, kw_only=True):
    """A backpressure notice: which subscription (or ``"publisher"`` for the rate limit),
    its queue depth and capacity, and the episode's drops and rejections so far."""

    kind: BackpressureKind
    subscription: str
    depth: int
    capacity: int
    dropped: int
    rejected: int
    at: float
    detail: str = ""


class FlowStats(msgspec.Struct, frozen=True, kw_only=True):
    """Per-subscription flow counters. ``queued_bytes``/``max_queue_bytes``: the summed
    sizes of the queued events and their bound."""

    subscription: str
    pattern: str
    mode: DeliveryMode
    capacity: int
    depth: int
    max_depth: int
    delivered: int
    dropped: int
    rejected: int
    expired: int
    errors: int
    backpressure: bool
    episodes: int
    queued_bytes: int = 0
    max_queue_bytes: int = 0


class RateLimit(msgspec.Struct, frozen=True, kw_only=True):
    """A publisher rate limit: ``rate`` events per second with bursts of ``burst``.

    ``on_limit="wait"`` delays the publisher (at most ``max_wait`` seconds, then
    ``RateLimitedError``); ``"reject"`` raises ``RateLimitedError`` at once.
    """

    rate: float
    burst: int = 1
    on_limit: str = "wait"
    max_wait: float = 1.0

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise InvalidValueError(f"rate must be > 0 events per second, got {self.rate!r}")
        if self.burst < 1:
            raise InvalidValueError(f"burst must be >= 1, got {self.burst!r}")
        if self.on_limit not in ("wait", "reject"):
            raise InvalidValueError(
                f"unknown on_limit {self.on_limit!r}", hint="use 'wait' or 'reject'"
            )
        if self.max_wait < 0:
            raise InvalidValueError("max_wait must be >= 0 seconds")


class TokenBucket:
    """A thread-safe token bucket. ``take()`` returns 0.0 if a token was taken, else the
    seconds until one will be available (nothing is taken then)."""

    __slots__ = ("_clock", "_last", "_lock", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, clock: Clock = SYSTEM_CLOCK) -> None:
        if not rate > 0 or burst < 1:
            raise InvalidValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock.monotonic()
        self._lock = threading.Lock()

    def take(self) -> float:
        """Take one token if there is one; else return how long until there is."""
        with self._lock:
            now = self._clock.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return (1.0 - self._tokens) / self.rate
