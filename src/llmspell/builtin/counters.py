"""Counter backends: where a rate limit or a budget keeps the counters it shares.

By default :class:`~llmspell.builtin.rate_limit.RateLimitHook` and
:class:`~llmspell.builtin.cost.CostTrackingHook` keep their counters in the process (their
own fast, lock-protected structures: unchanged by anything here). Given ``shared=`` a
:class:`CounterBackend`, they keep them there instead, so every process using the same
backend and keys shares one limit: three workers with a limit of 10 calls per second make
10 calls per second together.

The interface is one atomic operation: :meth:`CounterBackend.update` reads a key's value,
hands it to a pure function ``change(value) -> (new value, result)`` and stores the new value
only if nobody changed the key meanwhile (compare-and-set), calling ``change`` again on the
fresh value when someone did. Values are small JSON-able data (numbers, strings, lists,
dicts); a key that was never written reads as None. ``change`` must be pure: it may run more
than once per update.

* :class:`MemoryCounters`: in this process (a dict and a lock), for sharing a limit between
  several hooks or systems of one process, and for tests.
* :class:`~llmspell.builtin.nats_counters.NatsCounters`: NATS JetStream KV, shared by every
  process (the ``nats`` extra); ``shared="nats://host:4222"`` makes one.
* :class:`~llmspell.builtin.redis_counters.RedisCounters`: Redis, shared by every process
  (the ``redis`` extra); ``shared="redis://host:6379/0"`` makes one.

**Keys that expire.** :meth:`CounterBackend.update_expiring` is :meth:`~CounterBackend.update`
with a time to live: the backend may forget the key once ``ttl`` seconds have passed since
that write without another write (it then reads as None), never sooner. A rate limit writes
its buckets so, with the time a bucket takes to refill plus a margin: an idle bucket
disappears, and a bucket that is gone reads as a full one, so no limiting is lost. A
backend that cannot expire keys keeps them (the default implementation), as before.

Keys are built with :func:`counter_key`, which keeps them valid for every backend.
"""

from __future__ import annotations

import abc
import math
import string
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from llmspell.core.clock import SYSTEM_CLOCK, Clock
from llmspell.core.errors import InvalidValueError

__all__ = [
    "Change",
    "CounterBackend",
    "MemoryCounters",
    "check_ttl",
    "counter_key",
    "shared_counters",
]

R = TypeVar("R")

Change = Callable[[Any], tuple[Any, R]]
"""``change(value) -> (new value, result)``: a pure function of a key's current value (None
when unset)."""

_KEEP = frozenset(string.ascii_letters + string.digits + "-_")


def counter_key(*parts: str) -> str:
    """A backend key from ``parts``, joined by ``.``: letters, digits, ``-`` and ``_`` are
    kept, any other character becomes ``=XX`` (its UTF-8 bytes in hex), so any user id or
    component name makes a valid, distinct key (``counter_key("rl", "tool:calc")`` is
    ``rl.tool=3Acalc``)."""
    out = []
    for part in parts:
        if not part:
            out.append("=")
            continue
        out.append("".join(c if c in _KEEP else "".join(f"={b:02X}" for b in c.encode())
                           for c in part))
    return ".".join(out)


class CounterBackend(abc.ABC):
    """Where shared counters live (see the module docstring). ``description`` names it
    (without credentials). Implementations are safe to use from any thread and loop."""

    description: str = "counters"

    @abc.abstractmethod
    async def update(self, key: str, change: Change[R]) -> R:
        """Apply ``change`` to ``key``'s value atomically (compare-and-set, retried on a
        conflict); return its result. Raises
        :class:`~llmspell.errors.SharedCounterError` when the backend cannot do it."""

    @abc.abstractmethod
    async def read(self, key: str) -> Any:
        """``key``'s value (None when unset)."""

    @abc.abstractmethod
    def update_sync(self, key: str, change: Change[R]) -> R:
        """:meth:`update` for sync code (it blocks the calling thread for the round trip)."""

    @abc.abstractmethod
    def read_sync(self, key: str) -> Any:
        """:meth:`read` for sync code."""

    async def update_expiring(self, key: str, change: Change[R], ttl: float) -> R:
        """:meth:`update`, after which the backend may forget ``key`` once ``ttl`` seconds
        pass without another write (see the module docstring). A write through plain
        :meth:`update` keeps the key again. This default keeps the key (a backend that
        cannot expire keys); :class:`MemoryCounters` and
        :class:`~llmspell.builtin.nats_counters.NatsCounters` expire it."""
        check_ttl(ttl)
        return await self.update(key, change)

    def update_expiring_sync(self, key: str, change: Change[R], ttl: float) -> R:
        """:meth:`update_expiring` for sync code."""
        check_ttl(ttl)
        return self.update_sync(key, change)

    async def delete(self, key: str) -> None:
        """Forget ``key`` (its next read is None)."""
        await self.update(key, _forget)

    def close(self) -> None:  # noqa: B027 - nothing to release by default
        """Release connections and threads. Idempotent."""


def _forget(value: Any) -> tuple[Any, None]:
    return None, None


def check_ttl(ttl: object) -> None:
    """Raise :class:`InvalidValueError` unless ``ttl`` is a finite number of seconds > 0."""
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl) \
            or ttl <= 0:
        raise InvalidValueError(f"a counter's ttl must be a finite number of seconds > 0, "
                                f"got {ttl!r}", hint="e.g. ttl=60.0; use update() to keep "
                                                     "the key")


_SWEEP_MIN = 1024
"""MemoryCounters sweeps expired keys out once it holds this many keys, then at twice the
keys left after the last sweep: amortised O(1) per write, and expired keys never make
up more than about half of the dict."""


class MemoryCounters(CounterBackend):
    """Counters in this process: a dict under a lock. ``update`` runs ``change`` once.
    Keys written by :meth:`update_expiring` expire on ``clock`` (monotonic time): an
    expired key reads as None at once and leaves the dict at the next sweep."""

    description = "memory"

    def __init__(self, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._values: dict[str, Any] = {}
        # The deadline (clock.monotonic()) of every key written with a ttl.
        self._deadlines: dict[str, float] = {}
        self._sweep_at = _SWEEP_MIN
        self._clock = clock
        self._lock = threading.Lock()

    def update_sync(self, key: str, change: Change[R]) -> R:
        """See :meth:`CounterBackend.update_sync`."""
        return self._write(key, change, None)

    def update_expiring_sync(self, key: str, change: Change[R], ttl: float) -> R:
        """See :meth:`CounterBackend.update_expiring_sync`."""
        check_ttl(ttl)
        return self._write(key, change, ttl)

    def _write(self, key: str, change: Change[R], ttl: float | None) -> R:
        _check_key(key)
        values, deadlines = self._values, self._deadlines
        with self._lock:
            now = self._clock.monotonic()
            new, result = change(self._current(key, now))
            if new is None:
                values.pop(key, None)
                deadlines.pop(key, None)
            else:
                values[key] = new
                if ttl is None:
                    deadlines.pop(key, None)
                else:
                    deadlines[key] = now + ttl
                if len(values) >= self._sweep_at:
                    self._sweep(now)
            return result

    def _current(self, key: str, now: float) -> Any:
        """``key``'s value, None once it expired (lock held)."""
        deadline = self._deadlines.get(key)
        if deadline is not None and deadline <= now:
            del self._deadlines[key]
            self._values.pop(key, None)
            return None
        return self._values.get(key)

    def _sweep(self, now: float) -> None:
        """Drop every expired key (lock held)."""
        values = self._values
        expired = [k for k, deadline in self._deadlines.items() if deadline <= now]
        for key in expired:
            del self._deadlines[key]
            values.pop(key, None)
        self._sweep_at = max(_SWEEP_MIN, 2 * len(values))

    def read_sync(self, key: str) -> Any:
        """See :meth:`CounterBackend.read_sync`."""
        with self._lock:
            return self._current(key, self._clock.monotonic())

    async def update(self, key: str, change: Change[R]) -> R:
        """See :meth:`CounterBackend.update`."""
        return self.update_sync(key, change)

    async def update_expiring(self, key: str, change: Change[R], ttl: float) -> R:
        """See :meth:`CounterBackend.update_expiring`."""
        return self.update_expiring_sync(key, change, ttl)

    async def read(self, key: str) -> Any:
        """See :meth:`CounterBackend.read`."""
        return self.read_sync(key)

    def list_keys(self) -> list[str]:
        """The keys set now (not expired)."""
        with self._lock:
            now = self._clock.monotonic()
            deadlines = self._deadlines
            return [k for k in self._values if k not in deadlines or deadlines[k] > now]


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not key or key.startswith(".") or key.endswith("."):
        raise InvalidValueError(f"invalid counter key {key!r}",
                                hint="build keys with counter_key(...)")


_shared: dict[str, CounterBackend] = {}
_shared_lock = threading.Lock()


def shared_counters(shared: CounterBackend | str | None) -> CounterBackend | None:
    """The backend ``shared`` names: a :class:`CounterBackend` as is; a NATS URL
    (``nats://``, ``tls://``, ``ws://``, ``wss://``; see
    :class:`~llmspell.builtin.nats_counters.NatsCounters`) or a Redis URL (``redis://``,
    ``rediss://``, ``unix://``; see :class:`~llmspell.builtin.redis_counters.RedisCounters`)
    as one backend per URL in this process; None for none. Raises ``InvalidValueError`` for
    anything else."""
    if shared is None or isinstance(shared, CounterBackend):
        return shared
    redis = ("redis://", "rediss://", "unix://")
    if not isinstance(shared, str) or not shared.strip().lower().startswith(
            ("nats://", "tls://", "ws://", "wss://", *redis)):
        # Shown without what could be a password (``user:password@``).
        shown = repr(shared) if not isinstance(shared, str) or "@" not in shared \
            else repr(f"...@{shared.rpartition('@')[2]}")
        raise InvalidValueError(
            f"shared must be a CounterBackend, a NATS URL or a Redis URL, not {shown}",
            hint="e.g. shared='nats://127.0.0.1:4222', shared='redis://127.0.0.1:6379/0', or "
                 "shared=MemoryCounters()")
    url = shared.strip()
    with _shared_lock:
        backend = _shared.get(url)
        if backend is None:
            if url.lower().startswith(redis):
                from llmspell.builtin.redis_counters import RedisCounters  # noqa: PLC0415 - redis is optional

                backend = _shared[url] = RedisCounters(url)
            else:
                from llmspell.builtin.nats_counters import NatsCounters  # noqa: PLC0415 - nats is optional

                backend = _shared[url] = NatsCounters(url)
        return backend

