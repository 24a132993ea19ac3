"""The part every networked counter backend shares: its connections on a loop of its own.

A hook calls its counter backend from wherever it runs: a sync hook from any thread, an
async hook from whichever event loop dispatched it. A network client (nats-py, redis-py's
asyncio client) belongs to one event loop. :class:`LoopThreadCounters` therefore runs the
backend's client on a private event loop in a daemon thread, started on first use, and hands
every operation to it: the async API awaits the answer, the sync API blocks for it, each
bounded by the backend's ``timeout``. Subclasses write the operations as coroutines that run
on that loop (:meth:`~LoopThreadCounters._update`, :meth:`~LoopThreadCounters._read`) and
say what an error and a shutdown are.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import contextlib
import math
import threading
import urllib.parse
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any, TypeVar

from llmspell.builtin.counters import Change, CounterBackend, check_ttl
from llmspell.core.errors import ConfigurationError, SharedCounterError
from llmspell.core.redact import get_logger

__all__ = ["MAX_TIMEOUT", "LoopThreadCounters", "chosen_setting", "round_trip_settings",
           "url_options"]

logger = get_logger("llmspell.builtin.counters")

R = TypeVar("R")


MAX_TIMEOUT = 3600.0
"""The longest ``timeout`` a shared counter backend accepts, in seconds."""


def url_options(query: str, own_keys: Mapping[str, Callable[[str], Any]], hint: str
                ) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Split a counters URL's ``query`` into the backend's own options (``own_keys``: name
    -> conversion), converted, and the rest in order (for the client library). A value the
    conversion refuses is a :class:`ConfigurationError` (``hint``: an example)."""
    own: dict[str, Any] = {}
    rest: list[tuple[str, str]] = []
    for key, raw in urllib.parse.parse_qsl(query, keep_blank_values=True):
        kind = own_keys.get(key)
        if kind is None:
            rest.append((key, raw))
            continue
        try:
            own[key] = kind(raw)
        except ValueError:
            raise ConfigurationError(
                f"option {key}={raw[:40]!r} in the counters URL is not a valid "
                f"{getattr(kind, '__name__', 'value')}", hint=hint) from None
    return own, rest


def chosen_setting(name: str, given: object, from_url: object, default: float) -> float:
    """A backend's numeric setting: the argument when given (0 included: the caller's check
    refuses it, it is not taken for "unset"), else the URL's option, else ``default``; a
    value that is not a number is a :class:`ConfigurationError` naming the setting."""
    value = given if given is not None else from_url if from_url is not None else default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be a number, got {value!r}",
                                 hint=f"e.g. {name}={default:g}")
    return float(value)


def round_trip_settings(timeout: object, max_attempts: object, own: Mapping[str, Any],
                        hint: str) -> tuple[float, int]:
    """``(timeout, max_attempts)`` of a backend: each the argument, else the URL's option,
    else the default (2 s, 64), checked: a timeout above 0 and at most
    :data:`MAX_TIMEOUT`, a whole number of attempts >= 1 (:class:`ConfigurationError`)."""
    seconds = chosen_setting("timeout", timeout, own.get("timeout"), 2.0)
    attempts = chosen_setting("max_attempts", max_attempts, own.get("max_attempts"), 64)
    whole = int(attempts) if math.isfinite(attempts) and attempts == int(attempts) else 0
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_TIMEOUT) or whole < 1:
        raise ConfigurationError(
            f"timeout must be > 0 and at most {MAX_TIMEOUT:g} seconds and max_attempts "
            f">= 1, got timeout={seconds!r}, max_attempts={whole!r}", hint=hint)
    return seconds, whole


class LoopThreadCounters(CounterBackend):
    """A :class:`~llmspell.builtin.counters.CounterBackend` whose client runs on a private
    event loop thread (see the module docstring). A subclass sets :attr:`timeout` and
    :attr:`description` and calls :meth:`_start_loop_state` in its ``__init__``."""

    thread_name = "llmspell-counters"
    """The name of the loop thread (what a thread dump shows)."""
    timeout: float
    """Seconds one operation may take; the caller waits one second more for its answer."""

    def _start_loop_state(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False
        self._key_locks: dict[str, tuple[asyncio.Lock, int]] = {}

    # -- what a subclass provides ---------------------------------------------------------
    @abc.abstractmethod
    async def _update(self, key: str, change: Change[R], ttl: float | None) -> R:
        """On the loop: one compare-and-set update (``ttl``: None keeps the key)."""

    @abc.abstractmethod
    async def _read(self, key: str) -> Any:
        """On the loop: the key's value (None when unset)."""

    @abc.abstractmethod
    def _error(self, what: str) -> SharedCounterError:
        """The error for a failure described by ``what`` (counted by the subclass)."""

    async def _shutdown(self) -> None:
        """On the loop, at :meth:`close`: release the client's connections."""

    def _scrub(self, text: str) -> str:
        """``text`` as it may be logged (a subclass removes credentials from it)."""
        return text

    # -- the private loop -----------------------------------------------------------------
    def _run_loop(self) -> asyncio.AbstractEventLoop:
        with self._start_lock:
            if self._closed:
                raise SharedCounterError(f"the counters at {self.description} were closed",
                                         hint="make a new backend")
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self._thread = threading.Thread(target=run, name=self.thread_name,
                                                daemon=True)
                self._thread.start()
                ready.wait()
            return loop

    def _submit(self, coro: Coroutine[Any, Any, R]) -> concurrent.futures.Future[R]:
        if threading.current_thread() is self._thread:
            coro.close()
            raise SharedCounterError("the counters were called from their own loop thread",
                                     hint="call them from your code's thread or loop")
        try:
            loop = self._run_loop()
        except BaseException:
            coro.close()  # never awaited: closed, so no "never awaited" warning
            raise
        return asyncio.run_coroutine_threadsafe(coro, loop)

    def _wait(self, future: concurrent.futures.Future[R]) -> R:
        try:
            return future.result(self.timeout + 1.0)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise self._error("no answer in time") from None

    async def _answer(self, future: concurrent.futures.Future[R]) -> R:
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout + 1.0)
        except TimeoutError:
            raise self._error("no answer in time") from None

    @contextlib.asynccontextmanager
    async def _locked(self, full: str) -> AsyncIterator[None]:
        """On the loop: hold ``full``'s lock, so one update (or sweep) per key runs at a
        time in this backend and its own updates never conflict. A key's lock is dropped
        when nobody holds or waits for it."""
        lock, users = self._key_locks.get(full) or (asyncio.Lock(), 0)
        self._key_locks[full] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._key_locks[full]
            if users == 1:
                del self._key_locks[full]
            else:
                self._key_locks[full] = (lock, users - 1)

    # -- the public API -------------------------------------------------------------------
    async def update(self, key: str, change: Change[R]) -> R:
        """See :meth:`CounterBackend.update`."""
        return await self._answer(self._submit(self._update(key, change, None)))

    def update_sync(self, key: str, change: Change[R]) -> R:
        """See :meth:`CounterBackend.update_sync`."""
        return self._wait(self._submit(self._update(key, change, None)))

    async def update_expiring(self, key: str, change: Change[R], ttl: float) -> R:
        """See :meth:`CounterBackend.update_expiring`."""
        check_ttl(ttl)
        return await self._answer(self._submit(self._update(key, change, float(ttl))))

    def update_expiring_sync(self, key: str, change: Change[R], ttl: float) -> R:
        """See :meth:`CounterBackend.update_expiring_sync`."""
        check_ttl(ttl)
        return self._wait(self._submit(self._update(key, change, float(ttl))))

    async def read(self, key: str) -> Any:
        """See :meth:`CounterBackend.read`."""
        return await self._answer(self._submit(self._read(key)))

    def read_sync(self, key: str) -> Any:
        """See :meth:`CounterBackend.read_sync`."""
        return self._wait(self._submit(self._read(key)))

    def close(self) -> None:
        """Release the connections and stop the loop thread. Idempotent."""
        with self._start_lock:
            if self._closed:
                return
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if threading.current_thread() is not thread:
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(5.0)
            except Exception as exc:
                logger.debug("closing the counters' connections failed: %s",
                             self._scrub(str(exc)))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5.0)
        if not thread.is_alive():
            loop.close()
