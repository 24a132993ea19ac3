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

Keys are built with :func:`counter_key`, which keeps them valid for every backend.
"""

from __future__ import annotations

import abc
import string
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from llmspell.core.errors import InvalidValueError

__all__ = [
    "Change",
    "CounterBackend",
    "MemoryCounters",
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

    async def delete(self, key: str) -> None:
        """Forget ``key`` (its next read is None)."""
        await self.update(key, _forget)

    def close(self) -> None:  # noqa: B027 - nothing to release by default
        """Release connections and threads. Idempotent."""


def _forget(value: Any) -> tuple[Any, None]:
    return None, None


class MemoryCounters(CounterBackend):
    """Counters in this process: a dict under a lock. ``update`` runs ``change`` once."""

    description = "memory"

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}
        self._lock = threading.Lock()

    def update_sync(self, key: str, change: Change[R]) -> R:
        """See :meth:`CounterBackend.update_sync`."""
        _check_key(key)
        with self._lock:
            new, result = change(self._values.get(key))
            if new is None:
                self._values.pop(key, None)
            else:
                self._values[key] = new
            return result

    def read_sync(self, key: str) -> Any:
        """See :meth:`CounterBackend.read_sync`."""
        with self._lock:
            return self._values.get(key)

    async def update(self, key: str, change: Change[R]) -> R:
        """See :meth:`CounterBackend.update`."""
        return self.update_sync(key, change)

    async def read(self, key: str) -> Any:
        """See :meth:`CounterBackend.read`."""
        return self.read_sync(key)

    def list_keys(self) -> list[str]:
        """The keys set now."""
        with self._lock:
            return list(self._values)


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not key or key.startswith(".") or key.endswith("."):
        raise InvalidValueError(f"invalid counter key {key!r}",
                                hint="build keys with counter_key(...)")


_shared: dict[str, CounterBackend] = {}
_shared_lock = threading.Lock()


def shared_counters(shared: CounterBackend | str | None) -> CounterBackend | None:
    """The backend ``shared`` names: a :class:`CounterBackend` as is; a NATS URL
    (``nats://``, ``tls://``, ``ws://``, ``wss://``; see
    :class:`~llmspell.builtin.nats_counters.NatsCounters`) as one backend per URL in this
    process; None for none. Raises ``InvalidValueError`` for anything else."""
    if shared is None or isinstance(shared, CounterBackend):
        return shared
    if not isinstance(shared, str) or not shared.strip().lower().startswith(
            ("nats://", "tls://", "ws://", "wss://")):
        raise InvalidValueError(
            f"shared must be a CounterBackend or a NATS URL, not {shared!r}",
            hint="e.g. shared='nats://127.0.0.1:4222', or shared=MemoryCounters()")
    url = shared.strip()
    with _shared_lock:
        backend = _shared.get(url)
        if backend is None:
            from llmspell.builtin.nats_counters import NatsCounters  # noqa: PLC0415 - nats is optional

            backend = _shared[url] = NatsCounters(url)
        return backend

