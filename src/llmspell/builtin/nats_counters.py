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
is cut off, updates fail fast with ``SharedCounterError``. Connecting (and finding the
bucket) takes at most ``timeout`` seconds, a server that never answers included; a refused
login says so, with a hint naming the URL's credentials. A server that lost the bucket (it
restarted without its JetStream store) gets it made again at the next update or read, and
the counters start afresh: rate limits full, budgets at zero. An update that timed out may
still be applied when the server answers later.

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

**Keys that expire** (:meth:`~llmspell.builtin.counters.CounterBackend.update_expiring`,
how rate limits write their buckets). The process that wrote such a key last removes it
once its time to live has passed (a sweep about every second while it has such keys, or
:meth:`NatsCounters.sweep`): it purges the key's subject from the bucket's stream up to the
revision it wrote, so a newer write by any process is kept (and that process removes it in
its turn). It works with any JetStream server (no per-message TTL needed), and needs the
permission to purge the bucket's stream (``$JS.API.STREAM.PURGE.KV_<bucket>``); without it
the keys stay, as before, and the failure is logged. A key whose last writer stopped before
its time to live passed stays until it is written again.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
import urllib.parse
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from llmspell.builtin.counters import Change
from llmspell.builtin.loop_counters import (
    LoopThreadCounters,
    round_trip_settings,
    url_options,
)
from llmspell.core.clock import SYSTEM_CLOCK, Clock
from llmspell.core.errors import ConfigurationError, InvalidValueError, SharedCounterError
from llmspell.core.redact import get_logger
from llmspell.events.transport.nats import NatsConfig

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.js.kv import KeyValue

__all__ = ["NatsCounters"]

logger = get_logger("llmspell.builtin.counters")

R = TypeVar("R")

_OWN_KEYS = {"bucket": str, "timeout": float, "max_attempts": int}
_RETRY_CONNECT = 1.0
_SWEEP_EVERY = 1.0
"""Seconds between sweeps of expired keys, while this process has keys that expire."""
_CACHE = 4096
_MAX_BUCKET = 64
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
    expired: int = 0
    """Keys this process removed because their time to live had passed."""


class NatsCounters(LoopThreadCounters):
    """Counters in a JetStream KV bucket (see the module docstring). ``clock``: the
    monotonic time keys' times to live are measured on."""

    def __init__(self, url: str, *, bucket: str | None = None, timeout: float | None = None,
                 max_attempts: int | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        base, _, query = url.strip().partition("?")
        own, rest = url_options(query, _OWN_KEYS, "e.g. bucket=llmspell-counters&timeout=2")
        self.config = NatsConfig.from_url(
            f"{base}?{urllib.parse.urlencode(rest)}" if rest else base)
        self.bucket = bucket or own.get("bucket") or "llmspell-counters"
        self.timeout, self.max_attempts = round_trip_settings(
            timeout, max_attempts, own, "e.g. timeout=2&max_attempts=64")
        if len(self.bucket) > _MAX_BUCKET or not self.bucket.isascii() \
                or not all(char.isalnum() or char in "-_" for char in self.bucket):
            raise ConfigurationError(f"invalid KV bucket name {self.bucket[:80]!r}",
                                     hint=f"use 1 to {_MAX_BUCKET} letters, digits, '-' and "
                                          "'_'")
        self.prefix = f"{self.config.namespace}."
        self.description = f"NATS KV {self.bucket!r} at {self.config.description}"
        self._start_loop_state()
        self._nc: NatsClient | None = None
        self._kv: KeyValue | None = None
        self._connecting: asyncio.Lock | None = None
        self._failed_at = 0.0
        self._last_error = ""
        self._refused = False
        self._known: OrderedDict[str, tuple[int, Any]] = OrderedDict()
        # Keys this process wrote last with a time to live: full key -> (deadline on
        # clock.monotonic(), the revision written).
        self._expiring: dict[str, tuple[float, int]] = {}
        self._clock = clock
        self._sweep_timer: asyncio.TimerHandle | None = None
        self._sweep_task: asyncio.Task[int] | None = None
        self._updates = self._reads = self._conflicts = self._failures = self._connects = 0
        self._expired = 0

    async def sweep(self) -> int:
        """Remove now the keys this process wrote last whose time to live has passed (it
        also happens by itself, about every second); returns how many."""
        return await asyncio.wrap_future(self._submit(self._sweep()))

    # -- on the private loop --------------------------------------------------------------
    def _error(self, what: str, *, login: bool = False) -> SharedCounterError:
        self._failures += 1
        return SharedCounterError(
            f"shared counters at {self.description}: {what}",
            hint="check the credentials in the URL (nats://user:password@host:port, or "
                 "nats://token@host:port); the hook follows its error policy meanwhile"
            if login else "check that the NATS server (with JetStream) runs there; the hook "
                          "follows its error policy meanwhile")

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
                raise self._error(self._last_error, login=self._refused)
            self._refused = False
            try:
                # Bounded by timeout: a server that accepts the connection but never answers
                # (stopped, overloaded) fails this update, and the next second's, at once.
                async with asyncio.timeout(self.timeout):
                    self._kv = await self._connect()
            except (SharedCounterError, ConfigurationError):
                raise
            except Exception as exc:
                self._failed_at = time.monotonic()
                text = f"no answer in {self.timeout:g} s" \
                    if isinstance(exc, TimeoutError) and not str(exc) \
                    else f"{type(exc).__name__}: {exc}"
                self._last_error = "the server refused the login (Authorization Violation)" \
                    if self._refused else f"cannot reach the server ({text})"
                raise self._error(self._last_error, login=self._refused) from None
            return self._kv

    async def _connect_error(self, exc: Exception) -> None:
        """The client's error callback: notes a refused login (which the client reports
        as "no servers available" once it gives up)."""
        import nats.errors  # noqa: PLC0415 - optional dependency

        if isinstance(exc, nats.errors.AuthorizationError) \
                or "authorization violation" in str(exc).lower():
            self._refused = True
        await _log_error(exc)

    def _lost_bucket(self, exc: Exception) -> bool:
        """Whether ``exc`` says the bucket's stream is gone (a server restarted without its
        store, a bucket deleted by hand). Forgets the bucket and what was known of it, so the
        next use finds or creates it again: the counters start afresh."""
        import nats.errors  # noqa: PLC0415 - optional dependency
        import nats.js.errors as js_errors  # noqa: PLC0415 - optional dependency

        if not isinstance(exc, js_errors.NoStreamResponseError | nats.errors.NoRespondersError):
            return False
        if self._kv is not None:
            logger.warning("the KV bucket of %s is gone (the server lost its store?); it is "
                           "made again and its counters start afresh", self.description)
        self._kv = None
        self._known.clear()
        self._expiring.clear()
        return True

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
                error_cb=self._connect_error)
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
        for again in (True, False):
            kv = await self._bucket()
            try:
                entry = await kv.get(full)
            except js_errors.KeyNotFoundError:
                self._reads += 1
                return None
            except Exception as exc:
                if again and self._lost_bucket(exc):
                    continue
                raise self._error(f"reading {_shown(key)} failed ({type(exc).__name__}: "
                                  f"{exc})") from None
            self._reads += 1
            return self._value(key, entry.value)
        raise AssertionError("unreachable")

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

    async def _update(self, key: str, change: Change[R], ttl: float | None) -> R:
        full = self._full_key(key)
        async with self._locked(full):
            return await self._cas(key, full, change, ttl)

    def _written(self, full: str, revision: int, ttl: float | None) -> None:
        """Note who removes ``full`` and when: this process, ``ttl`` seconds after the
        revision it wrote (None: nobody)."""
        if ttl is None:
            self._expiring.pop(full, None)
            return
        self._expiring[full] = (self._clock.monotonic() + ttl, revision)
        if self._sweep_timer is None and self._sweep_task is None:
            self._sweep_timer = asyncio.get_running_loop().call_later(
                _SWEEP_EVERY, self._start_sweep)

    def _start_sweep(self) -> None:
        self._sweep_timer = None
        if self._sweep_task is None and self._expiring and not self._closed:
            self._sweep_task = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> int:
        """Purge every key whose time to live has passed since this process wrote it, up to
        the revision written (a later write, by any process, stays)."""
        running = self._sweep_task
        if running is not None and running is not asyncio.current_task():
            return await asyncio.shield(running)  # one sweep at a time
        removed = 0
        try:
            removed = await self._purge_expired()
        finally:
            if running is not None:
                self._sweep_task = None
            if self._expiring and self._sweep_timer is None and not self._closed:
                self._sweep_timer = asyncio.get_running_loop().call_later(
                    _SWEEP_EVERY, self._start_sweep)
        return removed

    async def _purge_expired(self) -> int:
        now = self._clock.monotonic()
        due = [full for full, (deadline, _) in self._expiring.items() if deadline <= now]
        if not due:
            return 0
        try:
            await self._bucket()
        except SharedCounterError:
            return 0  # not connected: the next sweep tries again
        nc = self._nc
        if nc is None:
            return 0
        js = nc.jetstream(timeout=self.timeout)
        stream, subjects = f"KV_{self.bucket}", f"$KV.{self.bucket}."
        removed = 0
        for full in due:
            async with self._locked(full):
                entry = self._expiring.get(full)
                if entry is None or entry[0] > self._clock.monotonic():
                    continue  # written again meanwhile
                try:
                    # Purges the subject's messages before revision + 1: this process's
                    # write, not one made since (the purge is its own compare-and-set).
                    await js.purge_stream(stream, subject=subjects + full, seq=entry[1] + 1)
                except Exception as exc:
                    logger.warning("removing the expired counter %r from %s failed (%s: %s); "
                                   "it stays", full, self.description, type(exc).__name__, exc)
                    return removed
                del self._expiring[full]
                self._known.pop(full, None)
                removed += 1
                self._expired += 1
        return removed

    async def _cas(self, key: str, full: str, change: Change[R], ttl: float | None) -> R:
        import nats.js.errors as js_errors  # noqa: PLC0415 - optional dependency

        kv = await self._bucket()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        known = self._known.get(full)
        lost = False
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
                if not lost and self._lost_bucket(exc):
                    lost = True  # made again once, then this update goes on
                    kv, known = await self._bucket(), None
                    continue
                raise self._error(f"updating {_shown(key)} failed ({type(exc).__name__}: {exc})") \
                    from None
            self._updates += 1
            self._written(full, written, ttl)
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
                                connected=nc is not None and nc.is_connected,
                                expired=self._expired)

    async def delete_bucket(self) -> bool:
        """Delete the whole bucket (every counter of every namespace in it). For tests and
        tear-down; False if there was none."""

        async def drop() -> bool:
            import nats.js.errors as js_errors  # noqa: PLC0415 - optional dependency

            await self._bucket()
            assert self._nc is not None
            self._kv = None
            self._known.clear()
            self._expiring.clear()
            try:
                return bool(await self._nc.jetstream().delete_key_value(self.bucket))
            except js_errors.NotFoundError:
                return False

        return await asyncio.wrap_future(self._submit(drop()))

    async def _shutdown(self) -> None:
        """See :meth:`LoopThreadCounters._shutdown`: the sweep timer and the connection."""
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None
        nc, self._nc, self._kv = self._nc, None, None
        if nc is not None and not nc.is_closed:
            await nc.close()


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:60]}..."


async def _log_error(exc: Exception) -> None:
    logger.debug("nats (counters): %s: %s", type(exc).__name__, exc)
