"""Counters in Redis, shared by every process: a fleet-wide backend of rate limits and budgets
(the ``redis`` extra: redis-py).

``RedisCounters("redis://host:6379/0")`` keeps each counter as one Redis string under a
prefix (``llmspell:counters:`` by default; ``prefix=`` or ``?prefix=`` to choose another),
so applications sharing a server do not share limits. ``rediss://`` (TLS) and ``unix://``
(a socket path) work too, with redis-py's URL options (``?socket_timeout=``, ``?db=``, TLS
options...). Extra query options: ``prefix``, ``timeout`` (seconds one update may take, 2
by default) and ``max_attempts`` (compare-and-set tries, 64). A user name and password in
the URL are used to log in and never shown: not in :attr:`description`, the repr, errors or
logs.

**Compare-and-set.** An update sends ``WATCH key`` and reads the key in one round trip,
computes the new value, then sends ``MULTI``, ``SET`` (or ``DEL`` when the new value is
None) and ``EXEC`` in a second. When another process wrote the key in between, the server
refuses the transaction (``EXEC`` answers nil); the update reads again and retries, up to
``max_attempts`` times in ``timeout`` seconds, then raises
:class:`~llmspell.errors.SharedCounterError`. Every decision is therefore made on the latest
value, whichever process makes it. Updates of one key by one backend take turns (a lock per
key), so they never conflict among themselves; a backend holds at most 32 connections
(fewer with ``?max_connections=``; an update needs one of its own for its ``WATCH``), and
more updates at once wait for one. If the connection breaks after ``EXEC`` was
sent, the update raises ``SharedCounterError`` rather than retrying (the server may have
applied it).

**Keys that expire** (:meth:`~llmspell.builtin.counters.CounterBackend.update_expiring`,
how rate limits write their buckets): the ``SET`` carries ``PX``, the time to live rounded
up to the millisecond, so Redis forgets the key no sooner than ``ttl`` after the last write;
a write through plain :meth:`~llmspell.builtin.counters.CounterBackend.update` keeps the key
again (a plain ``SET`` clears the expiry).

**Its own connection and loop.** Like :class:`~llmspell.builtin.nats_counters.NatsCounters`,
the backend runs its connections on a private event loop thread, so hooks can use it from
any thread and any event loop (an async hook awaits it; sync code blocks for the round
trip). It connects on first use; when the server cannot be reached (or does not answer in
``timeout`` seconds) an update raises ``SharedCounterError`` with a hint, and for the next
second every update fails at once without trying again, so a hook whose ``error_policy`` is
``fail_open`` is not slowed by an outage. A refused login says so, with a hint naming the
URL's user name and password. Once the server is back the next update reconnects; a server
without persistence that restarted has forgotten every counter (rate limits full, budgets
at zero).

**Values.** Each value is the JSON its counter wrote, at most 64 KiB. A value that is not
JSON (written by hand, or by another program), that is larger, that is not a string (a
hash, a list) or that the counter cannot use makes the read or update of that key raise
``SharedCounterError`` naming the key: delete it (``redis-cli DEL <key>``) and the counter
starts afresh. A key longer than 1024 characters is stored under its first 128 characters,
``=h`` and its SHA-256.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import math
import re
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import msgspec

from llmspell.builtin.counters import Change
from llmspell.builtin.loop_counters import (
    LoopThreadCounters,
    round_trip_settings,
    url_options,
)
from llmspell.core.errors import ConfigurationError, InvalidValueError, SharedCounterError
from llmspell.core.redact import get_logger

__all__ = ["RedisCounterStats", "RedisCounters"]

logger = get_logger("llmspell.builtin.counters")

R = TypeVar("R")

SCHEMES = ("redis://", "rediss://", "unix://")
"""The URL schemes of a Redis server (what :func:`~llmspell.builtin.counters.shared_counters`
hands to this backend)."""

_OWN_KEYS = {"prefix": str, "timeout": float, "max_attempts": int}
_RETRY_CONNECT = 1.0
_MAX_VALUE = 64 * 1024
"""Bytes a stored value may have: counters write a few dozen."""
_MAX_PREFIX = 256
_MAX_CONNECTIONS = 32
"""Connections one backend uses at most (an update holds one, for its WATCH): more updates
at once wait for a free one, within ``timeout``."""
_MAX_KEY = 1024
_KEY_HEAD = 128
_MAX_PX = 100 * 365 * 86400 * 1000
"""A time to live longer than this (milliseconds, a century) keeps the key for ever."""
_encode = msgspec.json.encode
_decode = msgspec.json.decode


class RedisCounterStats(msgspec.Struct, frozen=True, kw_only=True):
    """Updates done, reads, compare-and-set conflicts retried, failures, and whether the last
    round trip reached the server."""

    updates: int
    reads: int
    conflicts: int
    failures: int
    connected: bool


def _redis(module: str) -> Any:
    """A redis-py module (typed Any: redis-py is only partly annotated)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigurationError(
            f"shared counters in Redis need redis-py, which cannot be imported ({exc})",
            hint="pip install 'llmspell[redis]'") from None


def _public_url(parts: urllib.parse.SplitResult) -> str:
    """The URL without user name, password or query: what may be shown."""
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port or 6379
    except ValueError:
        port = 6379
    return f"{parts.scheme}://{host}:{port}{parts.path or '/0'}"


class RedisCounters(LoopThreadCounters):
    """Counters in Redis (see the module docstring). ``prefix``: put before every key;
    ``timeout``: seconds one update or read may take; ``max_attempts``: compare-and-set
    tries before ``SharedCounterError``."""

    thread_name = "llmspell-redis-counters"

    def __init__(self, url: str, *, prefix: str | None = None, timeout: float | None = None,
                 max_attempts: int | None = None) -> None:
        if not isinstance(url, str) or not url.strip().lower().startswith(SCHEMES):
            raise ConfigurationError(
                "a Redis counters URL starts with redis://, rediss:// or unix://",
                hint="e.g. RedisCounters('redis://127.0.0.1:6379/0')")
        parts = urllib.parse.urlsplit(url.strip())
        if parts.scheme.lower() != "unix" \
                and not re.fullmatch(r"/?[0-9]*", urllib.parse.unquote(parts.path)):
            # redis-py would silently use db 0 for a path that is no number.
            raise ConfigurationError(
                f"the database of a Redis counters URL is a number, not "
                f"{parts.path[1:41]!r}", hint="e.g. redis://127.0.0.1:6379/0 (db 0)")
        own, rest = url_options(parts.query, _OWN_KEYS, "e.g. ?prefix=shop:&timeout=2")
        secrets = {raw for key, raw in rest if key in ("password", "username")}
        for secret in (parts.username, parts.password):
            if secret:
                secrets.update({secret, urllib.parse.unquote(secret)})
        self._secrets = tuple(sorted((s for s in secrets if s), key=len, reverse=True))
        self.url = _public_url(parts)
        """The server's URL without credentials or options."""
        self.prefix = own.get("prefix", "llmspell:counters:") if prefix is None else prefix
        self.timeout, self.max_attempts = round_trip_settings(
            timeout, max_attempts, own, "e.g. timeout=2, max_attempts=64")
        if not isinstance(self.prefix, str) or len(self.prefix) > _MAX_PREFIX \
                or not self.prefix.isprintable():
            raise ConfigurationError(
                f"invalid counters prefix {str(self.prefix)[:80]!r}",
                hint=f"up to {_MAX_PREFIX} printable characters, e.g. prefix='shop:counters:'")
        self.description = f"Redis {self.prefix!r} at {self.url}"
        connection = _redis("redis.asyncio.connection")
        retry = _redis("redis.asyncio.retry")
        backoff = _redis("redis.backoff")
        base = url.strip().partition("?")[0].partition("#")[0]
        target = f"{base}?{urllib.parse.urlencode(rest)}" if rest else base
        try:
            # No I/O here. Options of the URL win over these defaults; no retries of its
            # own (this backend decides what a failure means).
            self._pool: Any = connection.ConnectionPool.from_url(
                target, socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
                retry=retry.Retry(backoff.NoBackoff(), 0), client_name="llmspell-counters")
            self._pool.make_connection()  # an unknown option fails here, not at first use
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"invalid Redis counters URL {self.url}: "
                                     f"{self._scrub(str(exc))}",
                                     hint="see redis-py's URL options (e.g. ?db=0, "
                                          "?socket_timeout=2)") from None
        self._exceptions: Any = _redis("redis.exceptions")
        self._start_loop_state()
        self._slots: asyncio.Semaphore | None = None
        self._failed_at = -math.inf
        self._last_error = ""
        self._connected = False
        self._updates = self._reads = self._conflicts = self._failures = 0

    def __repr__(self) -> str:
        return f"RedisCounters({self.description!r})"

    # -- errors ---------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        """``text`` with the URL's user name and password (as whole words) masked."""
        for secret in self._secrets:
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", "***", text)
        return text

    def _error(self, what: str, *, login: bool = False) -> SharedCounterError:
        self._failures += 1
        return SharedCounterError(
            f"shared counters at {self.description}: {self._scrub(what)}",
            hint="check the user name and password in the URL (redis://user:password@host:"
                 "port/db, or ?password=); the hook follows its error policy meanwhile"
            if login else "check that the Redis server runs there and the URL (host, port, "
                          "password, db) is right; the hook follows its error policy meanwhile")

    def _bad_value(self, key: str, what: str) -> SharedCounterError:
        self._failures += 1
        full = self._full_key(key)
        return SharedCounterError(
            f"shared counter {full!r} in {self.description} holds a value this counter "
            f"cannot use: {what}",
            hint=f"it was written by something else than llmspell; delete it (redis-cli DEL "
                 f"'{full}') and the counter starts afresh")

    def _full_key(self, key: str) -> str:
        """The Redis key of ``key``: the prefix and the key, a key longer than ``_MAX_KEY``
        shortened to its head and its SHA-256 (still one distinct key per counter)."""
        if not isinstance(key, str) or not key or key.startswith(".") or key.endswith("."):
            raise InvalidValueError(f"invalid counter key {str(key)[:80]!r}",
                                    hint="build keys with counter_key(...)")
        if len(key) > _MAX_KEY:
            digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
            key = f"{key[:_KEY_HEAD]}=h{digest}"  # counter_key never writes '=h'
        return self.prefix + key

    def _value(self, key: str, exists: Any, raw: Any) -> Any:
        """The decoded value of ``key`` (None when unset); ``SharedCounterError`` when it is
        not JSON or is too large."""
        if not exists:
            return None
        if not isinstance(raw, bytes | bytearray | str):
            raise self._bad_value(key, f"an answer of type {type(raw).__name__}")
        data = raw.encode() if isinstance(raw, str) else bytes(raw)
        if len(data) > _MAX_VALUE:
            raise self._bad_value(key, f"more than {_MAX_VALUE} bytes")
        try:
            return _decode(data)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            raise self._bad_value(key, f"{data[:40]!r} is not JSON") from None

    # -- on the private loop --------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _connection(self, what: str) -> AsyncIterator[Any]:
        """A connection of the pool for one exchange; one whose state is unknown (an
        error, a cancel) is closed before it goes back. Failures to reach the server become
        ``SharedCounterError``, and fail fast for a second."""
        errors = self._exceptions
        if time.monotonic() - self._failed_at < _RETRY_CONNECT:
            if self._last_error.startswith("the server refused the login"):
                raise self._error(self._last_error, login=True)
            raise self._error(f"cannot reach the server ({self._last_error})")
        if self._slots is None:
            limit = getattr(self._pool, "max_connections", None)  # ?max_connections= too
            self._slots = asyncio.Semaphore(min(_MAX_CONNECTIONS, limit or _MAX_CONNECTIONS))
        slots = self._slots
        stage = "waiting"  # for a free connection, then "connecting", then "connected"
        clean = False
        connection: Any = None
        try:
            async with asyncio.timeout(self.timeout):
                await slots.acquire()
                stage = "connecting"
                try:
                    pending = self._pool.get_connection()
                except TypeError:  # redis-py before 5.3 wants a command name
                    pending = self._pool.get_connection("WATCH")
                connection = await pending
                stage = "connected"
                self._connected = True
                yield connection
            clean = True
        except (SharedCounterError, InvalidValueError):
            raise
        except errors.ResponseError as exc:
            raise self._error(f"{what}: the server refused ({exc})") from None
        except (errors.RedisError, OSError) as exc:  # OSError: TimeoutError too
            if stage == "waiting":
                raise self._error(f"{what}: no free connection in {self.timeout:g} s (too "
                                  "many updates at once)") from None
            self._connected = False
            if isinstance(exc, TimeoutError):
                text = f"no answer in {self.timeout:g} s"
            else:
                text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if stage == "connecting":  # fail fast for a while
                self._failed_at = time.monotonic()
                self._last_error = self._scrub(text)
                if isinstance(exc, errors.AuthenticationError):
                    self._last_error = f"the server refused the login ({self._last_error})"
                    raise self._error(self._last_error, login=True) from None
                raise self._error(f"cannot reach the server ({self._last_error})") from None
            raise self._error(f"{what} failed ({text})") from None
        finally:
            try:
                if connection is not None:
                    if not clean:
                        with contextlib.suppress(Exception):
                            await connection.disconnect()
                    await self._pool.release(connection)
            finally:
                if stage != "waiting":
                    slots.release()

    async def _read(self, key: str) -> Any:
        full = self._full_key(key)
        async with self._connection(f"reading {_shown(key)}") as connection:
            exists, raw = await self._fetch(connection, key, ("EXISTS", full),
                                            ("GETRANGE", full, 0, _MAX_VALUE))
        self._reads += 1
        return self._value(key, exists, raw)

    async def _fetch(self, connection: Any, key: str, *commands: tuple[Any, ...]
                     ) -> list[Any]:
        """:func:`_exchange`; a key that holds no string is a bad value."""
        try:
            return await _exchange(connection, *commands)
        except self._exceptions.ResponseError as exc:
            if "WRONGTYPE" in str(exc):
                raise self._bad_value(key, "it is not a string") from None
            raise

    async def _update(self, key: str, change: Change[R], ttl: float | None) -> R:
        full = self._full_key(key)
        async with self._locked(full), \
                self._connection(f"updating {_shown(key)}") as connection:
            return await self._cas(connection, key, full, change, ttl)

    async def _cas(self, connection: Any, key: str, full: str, change: Change[R],
                   ttl: float | None) -> R:
        errors = self._exceptions
        px = None if ttl is None else math.ceil(ttl * 1000)
        for attempt in range(self.max_attempts):
            _, exists, raw = await self._fetch(connection, key, ("WATCH", full),
                                               ("EXISTS", full),
                                               ("GETRANGE", full, 0, _MAX_VALUE))
            value = self._value(key, exists, raw)
            try:
                new, result = change(value)
            except Exception as exc:
                if value is None:
                    raise  # the counter's own failure, not the stored value's
                raise self._bad_value(key, f"{_shown(value)} ({type(exc).__name__}: "
                                      f"{exc})") from None
            if new is None:
                write: tuple[Any, ...] = ("DEL", full)
            else:
                try:
                    data = _encode(new)
                except (TypeError, msgspec.EncodeError) as exc:
                    raise InvalidValueError(f"the new value of counter {_shown(key)} is not "
                                            f"JSON-able ({exc})",
                                            hint="counters hold numbers, strings, lists and "
                                                 "dicts") from None
                if len(data) > _MAX_VALUE:
                    raise InvalidValueError(
                        f"the new value of counter {_shown(key)} has {len(data)} bytes, more "
                        f"than {_MAX_VALUE}", hint="counters hold small values")
                write = ("SET", full, data) if px is None or px > _MAX_PX \
                    else ("SET", full, data, "PX", px)
            try:
                answers = await _exchange(connection, ("MULTI",), write, ("EXEC",))
            except (errors.ConnectionError, errors.TimeoutError, OSError, TimeoutError) as exc:
                raise self._error(
                    f"updating {_shown(key)}: the connection broke while the server applied "
                    f"the update, which may or may not have been applied "
                    f"({type(exc).__name__}: {exc})") from None
            executed = answers[-1]
            if executed is None:  # the key changed after WATCH: the transaction was dropped
                self._conflicts += 1
                if attempt >= 3:  # many writers at once: step aside a little
                    await asyncio.sleep(0.0005 * min(attempt, 20))
                continue
            failed = [a for a in executed if isinstance(a, Exception)] \
                if isinstance(executed, list) else []
            if failed:
                raise errors.ResponseError(str(failed[0]))
            self._updates += 1
            return result
        raise self._error(f"{_shown(key)} kept changing under {self.max_attempts} attempts "
                          "(too many processes updating it at once)")

    # -- reports and closing -----------------------------------------------------------------
    def stats(self) -> RedisCounterStats:
        """Updates, reads, conflicts retried, failures, and whether the last round trip
        reached the server."""
        return RedisCounterStats(updates=self._updates, reads=self._reads,
                                 conflicts=self._conflicts, failures=self._failures,
                                 connected=self._connected)

    async def _shutdown(self) -> None:
        """See :meth:`LoopThreadCounters._shutdown`: the pool's connections."""
        await self._pool.disconnect()


async def _exchange(connection: Any, *commands: tuple[Any, ...]) -> list[Any]:
    """Send ``commands`` in one write and read their answers (one round trip). An error
    answer raises ``ResponseError`` once every answer is read."""
    await connection.send_packed_command(connection.pack_commands(commands))
    answers: list[Any] = []
    error: Exception | None = None
    for _ in commands:
        try:
            answers.append(await connection.read_response())
        except Exception as exc:
            if not isinstance(exc, _response_error()):
                raise
            error = error or exc
            answers.append(exc)
    if error is not None:
        raise error
    return answers


def _response_error() -> type[Exception]:
    error: type[Exception] = importlib.import_module("redis.exceptions").ResponseError
    return error


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:60]}..."
