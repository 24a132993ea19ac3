"""Counters in NATS JetStream KV, shared by every process: the fleet-wide backend of rate
limits and budgets (the ``nats`` extra).

``NatsCounters("nats://host:4222?namespace=shop")`` keeps each counter as one key of the KV
bucket ``llmspell-counters`` (``?bucket=`` to choose another), under the prefix of the URL's
namespace, so applications sharing a server do not share limits. Any bus URL works (its
stream options are ignored). Extra query options: ``bucket``, ``timeout`` (seconds one
update may take, 2 by default) and ``max_attempts`` (compare-and-set tries, 64).

**Compare-and-set.** An update reads the key (or uses the value and revision this process
wrote last), computes the new value and writes it only if the key's revision is still the
one read (``kv.update(key, value, last=revision)``, or ``kv.create`` for a new key). When
another process wrote first, the server refuses; the update reads again and retries, up to
``max_attempts`` times in ``timeout`` seconds, then raises
:class:`~llmspell.errors.SharedCounterError`. Every decision is therefore made on the latest
value, whichever process makes it.

**Its own connection and loop.** The backend runs its NATS connection on a private event
loop thread, so hooks can use it from any thread and any event loop (an async hook awaits
it; sync code blocks for the round trip). It connects on first use; when the server cannot
be reached an update raises ``SharedCounterError`` at once, and the next one (after a
second) tries again. Once connected, the client reconnects for as long as it takes; while it
is cut off, updates fail fast with ``SharedCounterError``.

**Keys.** A key is dot-separated tokens of ASCII letters, digits, ``-``, ``_``, ``/`` and
``=`` (what :func:`~llmspell.builtin.counters.counter_key` makes of any text); anything else
(a space, ``*``, ``>``, an empty token) raises :class:`~llmspell.errors.InvalidValueError`.
A key longer than 1024 characters (a user id of thousands of characters) is stored under
its first 128 characters, ``=h`` and its SHA-256: the NATS server closes a connection that
sends a longer protocol line than it accepts (4 KB by default). A connection the server
closed is replaced at the next update.

**Values.** Each value is the JSON its counter wrote. A value that is not (written by
hand, or by another program), or that the counter cannot use, makes the read or update of
that key raise ``SharedCounterError`` naming the key: delete it (``nats kv del <bucket>
<key>``) and the counter starts afresh.

The bucket keeps one revision per key (history 1) in file storage, and is created by the
first process that needs it. Counters of past windows (an hourly budget's past hours) stay
until deleted; they are one small value each.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import math
import re
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from llmspell.builtin.counters import Change, CounterBackend
from llmspell.core.errors import ConfigurationError, InvalidValueError, SharedCounterError
from llmspell.events.transport.nats import NatsConfig

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.js.kv import KeyValue

__all__ = ["NatsCounters"]

logger = logging.getLogger("llmspell.builtin.counters")

R = TypeVar("R")

_OWN_KEYS = {"bucket": str, "timeout": float, "max_attempts": int}
_RETRY_CONNECT = 1.0
_CACHE = 4096
_MAX_BUCKET = 64
_MAX_TIMEOUT = 3600.0
# A NATS server refuses a protocol line longer than max_control_line (4096 bytes by default)
# and closes the connection: the subject of a key must stay well under it. Longer keys (a
# user id of thousands of characters) are stored under a digest of themselves.
_MAX_KEY = 1024
_KEY_HEAD = 128
_KEY_CHARS = re.compile(r"[-/_=a-zA-Z0-9]+(?:\.[-/_=a-zA-Z0-9]+)*")
_encode = msgspec.json.encode
_decode = msgspec.json.decode


class NatsCounterStats(msgspec.Struct, frozen=True, kw_only=True):
    """Updates done, compare-and-set conflicts retried, failures, connects."""

    updates: int
    reads: int
    conflicts: int
    failures: int
    connects: int
    connected: bool


class NatsCounters(CounterBackend):
    """Counters in a JetStream KV bucket (see the module docstring)."""

    def __init__(self, url: str, *, bucket: str | None = None, timeout: float | None = None,
                 max_attempts: int | None = None) -> None:
        base, _, query = url.strip().partition("?")
        rest: list[tuple[str, str]] = []
        own: dict[str, Any] = {}
        for key, raw in urllib.parse.parse_qsl(query, keep_blank_values=True):
            kind = _OWN_KEYS.get(key)
            if kind is None:
                rest.append((key, raw))
                continue
            try:
                own[key] = kind(raw)
            except ValueError:
                raise ConfigurationError(
                    f"option {key}={raw!r} in the counters URL is not a valid "
                    f"{kind.__name__}", hint="e.g. bucket=llmspell-counters&timeout=2") from None
        self.config = NatsConfig.from_url(
            f"{base}?{urllib.parse.urlencode(rest)}" if rest else base)
        self.bucket = bucket or own.get("bucket") or "llmspell-counters"
        self.timeout = float(timeout or own.get("timeout") or 2.0)
        self.max_attempts = int(max_attempts or own.get("max_attempts") or 64)
        if not (math.isfinite(self.timeout) and 0 < self.timeout <= _MAX_TIMEOUT) \
                or self.max_attempts < 1:
            raise ConfigurationError(
                f"timeout must be > 0 and at most {_MAX_TIMEOUT:g} seconds and max_attempts "
                f">= 1, got timeout={self.timeout!r}, max_attempts={self.max_attempts!r}",
                hint="e.g. timeout=2&max_attempts=64")
        if len(self.bucket) > _MAX_BUCKET or not self.bucket.isascii() \
                or not all(char.isalnum() or char in "-_" for char in self.bucket):
            raise ConfigurationError(f"invalid KV bucket name {self.bucket[:80]!r}",
                                     hint=f"use 1 to {_MAX_BUCKET} letters, digits, '-' and "
                                          "'_'")
        self.prefix = f"{self.config.namespace}."
        self.description = f"NATS KV {self.bucket!r} at {self.config.description}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._nc: NatsClient | None = None
        self._kv: KeyValue | None = None
        self._connecting: asyncio.Lock | None = None
        self._failed_at = 0.0
        self._last_error = ""
        self._known: OrderedDict[str, tuple[int, Any]] = OrderedDict()
        self._key_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._closed = False
        self._updates = self._reads = self._conflicts = self._failures = self._connects = 0

    # -- the private loop ---------------------------------------------------------------------
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

                self._thread = threading.Thread(target=run, name="llmspell-counters",
                                                daemon=True)
                self._thread.start()
                ready.wait()
            return loop

    def _submit(self, coro: Coroutine[Any, Any, R]) -> concurrent.futures.Future[R]:
        if threading.current_thread() is self._thread:
            coro.close()
            raise SharedCounterError("the counters were called from their own loop thread",
                                     hint="call them from your code's thread or loop")
        return asyncio.run_coroutine_threadsafe(coro, self._run_loop())

    def _wait(self, future: concurrent.futures.Future[R]) -> R:
        try:
            return future.result(self.timeout + 1.0)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise self._error("no answer in time") from None

    async def update(self, key: str, change: Change[R]) -> R:
        """See :meth:`CounterBackend.update`."""
        future = self._submit(self._update(key, change))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout + 1.0)
        except TimeoutError:
            raise self._error("no answer in time") from None

    def update_sync(self, key: str, change: Change[R]) -> R:
        """See :meth:`CounterBackend.update_sync`."""
        return self._wait(self._submit(self._update(key, change)))

    async def read(self, key: str) -> Any:
        """See :meth:`CounterBackend.read`."""
        future = self._submit(self._read(key))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout + 1.0)
        except TimeoutError:
            raise self._error("no answer in time") from None

    def read_sync(self, key: str) -> Any:
        """See :meth:`CounterBackend.read_sync`."""
        return self._wait(self._submit(self._read(key)))

    # -- on the private loop --------------------------------------------------------------
    def _error(self, what: str) -> SharedCounterError:
        self._failures += 1
        return SharedCounterError(
            f"shared counters at {self.description}: {what}",
            hint="check that the NATS server (with JetStream) runs there; the hook follows "
                 "its error policy meanwhile")

    async def _bucket(self) -> KeyValue:
        kv = self._kv
        nc = self._nc
        if nc is not None and nc.is_closed:
            # The client gave up for good (the server closed the connection with a protocol
            # error): connect afresh rather than report "reconnecting" forever.
            self._nc = self._kv = None
            self._known.clear()
            kv = nc = None
        if kv is not None and nc is not None:
            if not nc.is_connected:
                raise self._error("cut off from the server (reconnecting)")
            return kv
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._kv is not None:
                return self._kv
            if time.monotonic() - self._failed_at < _RETRY_CONNECT:
                raise self._error(f"cannot reach the server ({self._last_error})")
            try:
                self._kv = await self._connect()
            except (SharedCounterError, ConfigurationError):
                raise
            except Exception as exc:
                self._failed_at = time.monotonic()
                self._last_error = f"{type(exc).__name__}: {exc}"
                raise self._error(f"cannot reach the server ({self._last_error})") from None
            return self._kv

    async def _connect(self) -> KeyValue:
        try:
            import nats  # noqa: PLC0415 - optional dependency
            import nats.js.errors as js_errors  # noqa: PLC0415 - optional dependency
        except ImportError as exc:
            raise ConfigurationError(
                f"shared counters over NATS need nats-py, which cannot be imported ({exc})",
                hint="pip install 'llmspell[nats]'") from None
        config = self.config
        nc = self._nc
        if nc is None:
            nc = await nats.connect(
                servers=list(config.servers), name=config.name or "llmspell-counters",
                connect_timeout=config.connect_timeout, allow_reconnect=True,
                max_reconnect_attempts=1, reconnect_time_wait=0.5,
                error_cb=_log_error)
            nc.options["max_reconnect_attempts"] = -1
            self._nc = nc
            self._connects += 1
        js = nc.jetstream(timeout=self.timeout)
        try:
            return await js.key_value(self.bucket)
        except js_errors.BucketNotFoundError:
            pass
        try:
            return await js.create_key_value(bucket=self.bucket, history=1,
                                             replicas=config.replicas,
                                             description="llmspell shared counters")
        except js_errors.APIError:  # created by another process meanwhile
            return await js.key_value(self.bucket)

    async def _read(self, key: str) -> Any:
        import nats.js.errors as js_errors  # noqa: PLC0415 - optional dependency

        full = self._full_key(key)
        kv = await self._bucket()
        self._reads += 1
        try:
            entry = await kv.get(full)
        except js_errors.KeyNotFoundError:
            return None
        except Exception as exc:
            raise self._error(f"reading {_shown(key)} failed ({type(exc).__name__}: {exc})") \
                from None
        return self._value(key, entry.value)

    def _full_key(self, key: str) -> str:
        """The KV key of ``key``: the namespace prefix and the key, a key longer than
        ``_MAX_KEY`` shortened to its head and its SHA-256 (still one distinct key per
        counter). ``InvalidValueError`` for a key NATS cannot hold."""
        if not isinstance(key, str) or not key.isascii() or not _KEY_CHARS.fullmatch(key):
            raise InvalidValueError(
                f"invalid counter key {str(key)[:80]!r}: NATS KV keys are dot-separated "
                "tokens of letters, digits, '-', '_', '/' and '='",
                hint="build keys with counter_key(...), which encodes any text")
        if len(key) > _MAX_KEY:
            digest = hashlib.sha256(key.encode()).hexdigest()
            key = f"{key[:_KEY_HEAD]}=h{digest}"  # counter_key never writes '=h'
        return self.prefix + key

    def _value(self, key: str, raw: bytes | None) -> Any:
        """The decoded value of ``key`` (None when empty); ``SharedCounterError`` when it is
        not JSON."""
        if not raw:
            return None
        try:
            return _decode(raw)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            raise self._bad_value(key, f"{bytes(raw[:40])!r} is not JSON") from None

    def _bad_value(self, key: str, what: str) -> SharedCounterError:
        self._failures += 1
        full = self._full_key(key)
        return SharedCounterError(
            f"shared counter {full!r} in {self.description} holds a value this "
            f"counter cannot use: {what}",
            hint=f"it was written by something else than llmspell; delete it (nats kv del "
                 f"{self.bucket} {full}) and the counter starts afresh")

    async def _update(self, key: str, change: Change[R]) -> R:
        # One update per key at a time in this process: its own updates never conflict.
        full = self._full_key(key)
        lock, users = self._key_locks.get(full) or (asyncio.Lock(), 0)
        self._key_locks[full] = (lock, users + 1)
        try:
            async with lock:
                return await self._cas(key, full, change)
        finally:
            lock, users = self._key_locks[full]
            if users == 1:
                del self._key_locks[full]
            else:
                self._key_locks[full] = (lock, users - 1)

    async def _cas(self, key: str, full: str, change: Change[R]) -> R:
        import nats.js.errors as js_errors  # noqa: PLC0415 - optional dependency

        kv = await self._bucket()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        known = self._known.get(full)
        for attempt in range(self.max_attempts):
            try:
                if known is None:
                    try:
                        entry = await kv.get(full)
                        known = (entry.revision or 0, self._value(key, entry.value))
                    except js_errors.KeyNotFoundError:
                        known = (0, None)
                revision, value = known
                try:
                    new, result = change(value)
                except Exception as exc:
                    if value is None:
                        raise  # the counter's own failure, not the stored value's
                    raise self._bad_value(key, f"{_shown(value)} ({type(exc).__name__}: "
                                          f"{exc})") from None
                data = _encode(new)
                if revision:
                    written = await kv.update(full, data, last=revision)
                else:
                    written = await kv.create(full, data)
            except js_errors.KeyWrongLastSequenceError:
                self._conflicts += 1
                known = None
                if loop.time() > deadline:
                    break
                if attempt >= 3:  # many writers at once: step aside a little
                    await asyncio.sleep(0.0005 * min(attempt, 20))
                continue
            except SharedCounterError:
                raise
            except Exception as exc:
                self._known.pop(full, None)
                raise self._error(f"updating {_shown(key)} failed ({type(exc).__name__}: {exc})") \
                    from None
            self._updates += 1
            self._known[full] = (written, new)
            self._known.move_to_end(full)
            if len(self._known) > _CACHE:
                self._known.popitem(last=False)
            return result
        self._known.pop(full, None)
        raise self._error(f"{_shown(key)} kept changing under {self.max_attempts} attempts "
                          "(too many processes updating it at once)")

    # -- reports and closing -----------------------------------------------------------------
    def stats(self) -> NatsCounterStats:
        """Updates, reads, conflicts retried, failures, connects, and the connection."""
        nc = self._nc
        return NatsCounterStats(updates=self._updates, reads=self._reads,
                                conflicts=self._conflicts, failures=self._failures,
                                connects=self._connects,
                                connected=nc is not None and nc.is_connected)

    async def delete_bucket(self) -> bool:
        """Delete the whole bucket (every counter of every namespace in it). For tests and
        tear-down; False if there was none."""

        async def drop() -> bool:
            import nats.js.errors as js_errors  # noqa: PLC0415 - optional dependency

            await self._bucket()
            assert self._nc is not None
            self._kv = None
            self._known.clear()
            try:
                return bool(await self._nc.jetstream().delete_key_value(self.bucket))
            except js_errors.NotFoundError:
                return False

        return await asyncio.wrap_future(self._submit(drop()))

    def close(self) -> None:
        """Close the connection and stop the loop thread. Idempotent."""
        with self._start_lock:
            if self._closed:
                return
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shut() -> None:
            nc, self._nc, self._kv = self._nc, None, None
            if nc is not None and not nc.is_closed:
                await nc.close()

        if threading.current_thread() is not thread:
            try:
                asyncio.run_coroutine_threadsafe(shut(), loop).result(5.0)
            except Exception as exc:
                logger.debug("closing the counters' connection failed: %s", exc)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5.0)
        if not thread.is_alive():
            loop.close()


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:60]}..."


async def _log_error(exc: Exception) -> None:
    logger.debug("nats (counters): %s: %s", type(exc).__name__, exc)
