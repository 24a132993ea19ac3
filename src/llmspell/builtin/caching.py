"""``CachingHook``: serve repeated tool, agent and model calls from a TTL + LRU cache.

At a before point (``before_tool_execution``, ``before_agent_execution``) a hit returns
``Replace(cached_value)``: the runtime returns the value and the tool or agent does not
run. A miss returns ``None`` and remembers the key on the context; at the after point
(``after_tool_execution``, ``after_agent_execution``) the hook stores ``data["result"]``
under that key, so the cache fills from the operations' own results. The key is the one
computed from the parameters *as the before point saw them* (a later hook that rewrites the
parameters does not split the cache); without a before context the after point computes it
from its own parameters.

Model calls (``BeforeModelCall``/``AfterModelCall``) are cached the same way: a hit is
served with ``Replace(response)``, so the provider is not called, and the hooks after this
one at ``BeforeModelCall`` (rate limit, cost tracking) do not count a call that costs
nothing. The key (see :func:`model_key_params`) covers the provider and model (the
component, ``"provider/model"``) and every field of the request (``params``) but
``stream`` (a streamed and a plain call get the same answer): the messages, the tools
offered, ``temperature``, ``max_tokens`` and, from the framework adapters, ``settings``
(the request's other settings and its output: output tools or type, response format, tool
choice, ``top_p``, ``seed``...), so two requests that differ in any of them never share
an entry. The adapters leave out of ``settings`` what cannot change the answer and would
make every call a miss (timeouts, retry policies, extra headers, request metadata).

The default key is ``"<type>:<name>:<blake2b-128 hex>"``, the hash over the msgspec JSON
(keys sorted) of ``[component type, component name, params]``: stable across processes and
runs. ``key_fn(ctx) -> str | None`` replaces it; ``None`` means do not cache this call. A
``key_fn`` key is scoped to the component, stored as ``"<type>:<len(name)>:<name>:<key>"``
(see :func:`scoped_key`), so a key function that ignores the tool's name cannot serve one
tool's result for another; ``CachingConfig(shared_keys=True)`` stores its keys as they are.
Parameters whose JSON does not read back as them (NaN or infinities, which JSON writes as
``null`` like ``None``; bytes, dates, sets, tuples) get no default key: the call is not
cached rather than answered with another call's result. A ``key_fn`` that raises fails
open (``HookExecutionError``; the call runs uncached). Keys longer than
:data:`MAX_KEY_CHARS` are stored hashed (:func:`bounded_key`).

**Whose entries** (``CachingConfig.scope``, default ``"user"``): the key includes the
caller, ``ctx.metadata["user"]`` (and with ``"session"`` ``ctx.metadata["session"]``), so
one user's result is never served to another; ``"global"`` shares entries between callers.
The hook stores at its after points last (``store_priority``, default
:data:`CACHE_STORE_PRIORITY`): a result a later after hook masked is stored masked, one it
refused, replaced or redirected is not stored.

The key a before point leaves for its after point is the call's own: contexts of nested
calls (a ``Redirect`` target, a ``Fork``, a model call of an agent) start with a copy of
their parent's metadata, and a key inherited that way is never stored under, whether the
child is excluded by the allow/deny lists, its ``key_fn`` failed or the hook did not run
at its before point.

**Request coalescing** (``CachingConfig.coalesce``, on by default). On a miss the hook
leaves the key under ``"llmspell.coalesce"`` in the context's metadata (the runtime's
``COALESCE_METADATA``): while that call runs, an identical call (same component, same
parameters) waits for it instead of running, then passes the before point like any call
and is served from the cache as a fresh copy: a *hit* in :meth:`CachingHook.stats` (its
only lookup is the one after the wait; ``ResultCache.coalesced`` of the registry's cache,
e.g. ``system.tools.cache``, counts the waits). So 100 identical concurrent misses run the
tool, agent or model call once: 1 miss and 99 hits. The wait is the runtime's, before the
waiter's before hooks (a waiter is not counted by rate limiting or cost tracking until it
runs, and the hook's own latency and circuit breaker do not include the wait). Only a
result this cache stored is shared: when the first call fails, is refused, replaced or
redirected by a later hook, or returns a value the cache does not keep (not JSON-safe,
larger than ``max_bytes``, computed across an :meth:`~CachingHook.invalidate` of its key
or a :meth:`~CachingHook.clear`), every waiter runs its own call; when its task is
cancelled, one waiter runs in its place and the others wait for that one; a cancelled
waiter just stops waiting. A waiter served after an ``invalidate``/``clear`` gets nothing
stale: it is served only what the cache holds when it asks. ``invalidate(key)`` and
``clear()`` also end the coalescing of the calls of those keys in flight: a call that
starts afterwards does not wait for them (it runs, and identical calls wait for it).
Coalescing needs the runtime's async path (``system.tools``, ``system.models``, agents
and the framework adapters, which all run calls through ``run_hooked``;
``ToolRegistry.execute_sync`` runs that path on a loop of its own, so sync callers on
several threads coalesce too); a before point dispatched by hand
(``executor.execute_sync``) is not coalesced. ``CachingConfig(coalesce=False)`` turns
it off.

Why a hand-written cache: ``cachetools.TTLCache.get`` measured 2.0 µs, is not thread-safe
and keeps no statistics; this ``OrderedDict`` + lock cache measured 0.3-0.8 µs per
operation, is thread-safe, bounds both entries and (approximate) bytes, and counts hits,
misses, evictions and expirations. Sizes are estimated with the length of the value's JSON;
values that are not JSON-safe are not cached, nor (with ``copy_on_hit``) dicts and lists
whose JSON does not read back as them (NaN would be served as ``None``). Mutable values
(dicts, lists) are handed out as fresh copies decoded from that JSON (``copy_on_hit``), so
a caller changing a result cannot change the cache.
"""

from __future__ import annotations

import hashlib
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Final

import msgspec

from llmspell.builtin.base import (
    MODEL_AFTER,
    MODEL_BEFORE,
    OPERATION_AFTER,
    OPERATION_BEFORE,
    BuiltinHook,
    model_key,
)
from llmspell.core.clock import SYSTEM_CLOCK, Clock
from llmspell.core.errors import ConfigurationError, HookExecutionError, InvalidValueError
from llmspell.core.ids import new_id
from llmspell.core.operation_scope import on_operation_end
from llmspell.core.run_scope import current_replay
from llmspell.hooks.context import HookContext
from llmspell.hooks.hook import HookOutput
from llmspell.hooks.points import HookPoint
from llmspell.hooks.registry import HookHandle, HookRegistry
from llmspell.hooks.result import Replace

__all__ = [
    "CACHE_KEY_METADATA",
    "CACHE_SCOPES",
    "CACHE_STORE_PRIORITY",
    "CACHING_PRIORITY",
    "CacheStats",
    "CachingConfig",
    "CachingHook",
    "CachingStats",
    "KeyFunction",
    "MAX_KEY_CHARS",
    "TtlLruCache",
    "bounded_key",
    "default_key",
    "model_key_params",
    "scoped_key",
]

CACHING_PRIORITY = -900
"""Default priority of :class:`CachingHook`: early, so a hit skips the other before hooks
and the operation; after security hooks (-1000), before rate limiting (-800)."""

CACHE_STORE_PRIORITY = 1_000_000
"""Default priority of :class:`CachingHook` at its *after* points: last, so what it stores
is the result every other after hook let through (a mask applied, a refusal or redirect
stored nothing); a hit at the before point skips those hooks, so it must be their output."""

CACHE_SCOPES: Final = ("user", "session", "global")
"""Values of ``CachingConfig.scope``: whose calls share entries (see :func:`default_key`)."""

CACHE_KEY_METADATA = "llmspell.cache_key"
"""Metadata key under which the before point leaves the cache key for the after point."""
# The cache's invalidation generation when the before point missed: a result whose call
# overlapped an invalidate() or clear() is not stored (it may predate the invalidation).
_GENERATION_METADATA = "llmspell.cache_generation"
# A token unique to the before dispatch that left the key. Metadata is copied into child
# contexts (a redirect target, a fork, a nested call): the after point stores only under a
# key its own call's before point left, never one the call inherited from its parent.
_STAMP_METADATA = "llmspell.cache_stamp"
# The runtime's contract (llmspell.runtime.calls.COALESCE_METADATA, by its documented name:
# built-in hooks never import the runtime): set on a miss, identical calls wait for this one;
# removed by invalidate()/clear() while the call runs, later calls no longer wait for it.
_COALESCE_METADATA = "llmspell.coalesce"
_INHERITABLE = (CACHE_KEY_METADATA, _GENERATION_METADATA, _STAMP_METADATA)

MAX_KEY_CHARS: Final = 256
"""Keys longer than this (a ``key_fn``'s, a tool's long name) are stored as their first 64
characters, ``"#"`` and the blake2b-128 hex of the whole key (see :func:`bounded_key`)."""

KeyFunction = Callable[[HookContext], "str | None"]
"""Computes the cache key of a context; ``None`` means do not cache this call."""

_KEY_ENCODER = msgspec.json.Encoder(order="sorted")
_BOUNDED_FORM = re.compile(r".{64}#[0-9a-f]{32}", re.DOTALL)
_VALUE_ENCODER = msgspec.json.Encoder()
_decode = msgspec.json.decode
_IMMUTABLE: Final = frozenset({str, int, float, bool, type(None)})
_UNSET: Final[Any] = object()

_TOOL, _AGENT, _MODEL = "tool", "agent", "model"
_FAMILY: dict[str, tuple[str, bool]] = {
    str(HookPoint.BEFORE_TOOL_EXECUTION): (_TOOL, True),
    str(HookPoint.AFTER_TOOL_EXECUTION): (_TOOL, False),
    str(HookPoint.BEFORE_AGENT_EXECUTION): (_AGENT, True),
    str(HookPoint.AFTER_AGENT_EXECUTION): (_AGENT, False),
    str(MODEL_BEFORE): (_MODEL, True),
    str(MODEL_AFTER): (_MODEL, False),
}
_MODEL_KEY_SKIPPED: Final = frozenset({"stream"})
"""Fields of a model request left out of its cache key: how the answer is delivered, not
what it is."""


def model_key_params(params: Any) -> Any:
    """The part of a model request that decides its answer (what a model call's cache
    key is computed from): every field of ``params`` but ``stream``. The runtime's
    requests carry ``messages``, ``tools``, ``temperature`` and ``max_tokens``; the
    framework adapters' also ``settings`` (the other settings and the output the request
    asks for: output tools or type, response format, tool choice...). A field a hook adds
    is covered too: a request the key cannot tell apart is never served another's
    answer."""
    if not isinstance(params, dict):
        return params
    return {k: v for k, v in params.items() if k not in _MODEL_KEY_SKIPPED}


def default_key(component_type: str, name: str, params: Any, *, user: str | None = None,
                session: str | None = None) -> str | None:
    """The default cache key: ``"<type>:<name>:<hash>"`` where the hash is blake2b (16
    bytes, hex) of the sorted-key JSON of ``[type, name, params]``, or of
    ``[type, name, params, user, session]`` for a call made for a ``user`` or ``session``
    (how ``CachingConfig.scope`` keeps callers apart; bounded by :func:`bounded_key`).
    ``None`` (do not cache) when ``params`` is not JSON-encodable or its JSON does not
    read back as ``params``: NaN and infinities (JSON ``null``, like ``None``), bytes,
    dates, sets, tuples would share a key with other parameters."""
    material: tuple[Any, ...] = (component_type, name, params)
    if user is not None or session is not None:
        material = (*material, user, session)
    try:
        blob = _KEY_ENCODER.encode(material)
        if _decode(blob)[2] != params:
            return None
    except (TypeError, ValueError, RecursionError, msgspec.EncodeError, msgspec.DecodeError):
        return None
    return bounded_key(
        f"{component_type}:{name}:{hashlib.blake2b(blob, digest_size=16).hexdigest()}")


def bounded_key(key: str) -> str:
    """``key`` itself when at most :data:`MAX_KEY_CHARS` long, else its first 64
    characters, ``"#"`` and the blake2b-128 hex of the whole key: what the cache stores a
    key as (so huge keys cost neither memory nor copies of the context's metadata)."""
    if len(key) <= MAX_KEY_CHARS:
        return key
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16)
    return f"{key[:64]}#{digest.hexdigest()}"


def scoped_key(component_type: str, name: str, key: str, *, user: str | None = None,
               session: str | None = None) -> str:
    """``key`` scoped to one component: ``"<type>:<len(name)>:<name>:<key>"`` (the name's
    length keeps names that contain ``:`` apart); for a call made for a ``user`` or
    ``session``, ``"<type>:<len(name)>:<name>@<user><session>:<key>"``, each of user and
    session ``-`` (none) or ``<len>:<text>`` (``@`` where an unscoped key has ``:``, so no
    key of one caller is another's)."""
    if user is None and session is None:
        return f"{component_type}:{len(name)}:{name}:{key}"
    return f"{component_type}:{len(name)}:{name}@{_caller_tag(user, session)}:{key}"


def _caller_tag(user: str | None, session: str | None) -> str:
    """``user`` then ``session``, each ``-`` (none) or ``<len>:<text>``: read back one way
    only, whatever the text holds."""
    return "".join("-" if v is None else f"{len(v)}:{v}" for v in (user, session))


def _shared_key(key: str, user: str | None, session: str | None) -> str:
    """A ``shared_keys`` key: as it is for a call made for nobody (one starting with ``@``,
    or spelling out another key's :func:`bounded_key` form, escaped as ``"@--:<key>"``),
    else ``"@<user><session>:<key>"`` (each ``-`` or ``<len>:<text>``)."""
    if user is None and session is None:
        plain = not key.startswith("@") and (len(key) > MAX_KEY_CHARS
                                             or not _BOUNDED_FORM.fullmatch(key))
        return key if plain else f"@--:{key}"
    return f"@{_caller_tag(user, session)}:{key}"


class CacheStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counters of a :class:`TtlLruCache`: lookups that ``hits``/``misses``; values
    ``stored``; entries dropped by the LRU/byte bound (``evictions``), by their TTL
    (``expirations``) or by ``invalidate`` (``invalidations``); values ``skipped`` because
    they were not JSON-safe or larger than ``max_bytes``; current ``size`` (entries) and
    ``bytes`` (JSON length of the values)."""

    hits: int
    misses: int
    stores: int
    evictions: int
    expirations: int
    invalidations: int
    skipped: int
    size: int
    bytes: int
    max_entries: int
    max_bytes: int | None

    @property
    def hit_ratio(self) -> float:
        """hits / (hits + misses), 0 before the first lookup."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


class CachingStats(CacheStats, frozen=True, kw_only=True):
    """:class:`CacheStats` plus what the hook decided: ``served`` (hits returned as
    ``Replace``), ``bypassed`` (calls the allow/deny lists exclude) and ``uncacheable``
    (calls whose key was ``None``)."""

    served: int
    bypassed: int
    uncacheable: int


def _check_positive(field: str, value: object, *, allow_none: bool, hint: str) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    if not ok:
        what = "> 0 or None" if allow_none else "> 0"
        raise InvalidValueError(f"{field} must be {what}, got {value!r}", hint=hint)


def _stored_key(key: str) -> str:
    """The form ``key`` is stored under; a typed error for a key that is not a str."""
    if not isinstance(key, str):
        raise InvalidValueError(f"cache keys are str, got {type(key).__name__}",
                                hint="compute keys with default_key, scoped_key or key_fn")
    return key if len(key) <= MAX_KEY_CHARS else bounded_key(key)


class TtlLruCache:
    """A thread-safe cache bounded by entries and approximate bytes, with per-entry TTL.

    ``get`` moves a live entry to the most recently used end; ``put`` evicts from the least
    recently used end until both bounds hold. Expired entries are dropped when looked up
    (or by :meth:`purge_expired`). Values must be JSON-safe (their JSON length is their
    size); with ``copy_on_hit`` dicts and lists are returned as fresh copies. Keys longer
    than :data:`MAX_KEY_CHARS` are stored as their :func:`bounded_key` (``get``, ``put``
    and ``invalidate`` accept either form).
    """

    def __init__(self, max_entries: int = 1024, max_bytes: int | None = 16 * 1024 * 1024,
                 *, ttl: float | None = 300.0, clock: Clock = SYSTEM_CLOCK,
                 copy_on_hit: bool = True) -> None:
        if not isinstance(max_entries, int) or isinstance(max_entries, bool) or max_entries < 1:
            raise InvalidValueError(f"max_entries must be an int >= 1, got {max_entries!r}",
                                    hint="1024 entries is the default")
        if max_bytes is not None and (not isinstance(max_bytes, int)
                                      or isinstance(max_bytes, bool) or max_bytes < 1):
            raise InvalidValueError(f"max_bytes must be an int >= 1 or None, got {max_bytes!r}",
                                    hint="None bounds the cache by entries only")
        _check_positive("ttl", ttl, allow_none=True, hint="seconds; None never expires")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.copy_on_hit = copy_on_hit
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (expires at (monotonic) or None, value, JSON or None, size in bytes)
        self._data: OrderedDict[str, tuple[float | None, Any, bytes | None, int]] = (
            OrderedDict())
        self._bytes = 0
        self._generation = 0  # bumped by invalidate() and clear()
        self._cleared_at = 0  # the generation of the last clear()
        # key -> the generation of its last invalidate() (bounded; a record dropped raises
        # _forgotten, so a put of any key started before it is refused: never a stale one)
        self._invalidated: OrderedDict[str, int] = OrderedDict()
        self._forgotten = 0
        self._hits = self._misses = self._stores = 0
        self._evictions = self._expirations = self._invalidations = self._skipped = 0

    def get(self, key: str) -> tuple[bool, Any]:
        """``(True, value)`` for a live entry, else ``(False, None)``."""
        key = _stored_key(key)
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                self._misses += 1
                return False, None
            expires = entry[0]
            if expires is not None and expires <= self._clock.monotonic():
                del self._data[key]
                self._bytes -= entry[3]
                self._expirations += 1
                self._misses += 1
                return False, None
            self._data.move_to_end(key)
            self._hits += 1
        blob = entry[2]
        return True, (entry[1] if blob is None else _decode(blob))

    @property
    def generation(self) -> int:
        """A number :meth:`invalidate` and :meth:`clear` increase: pass the one read before
        computing a value as ``put(..., since=)`` so a value computed across an
        invalidation of its key (or a clear) is not stored. Invalidating one key does not
        make the values of other keys computed meanwhile stale."""
        return self._generation

    def _stale(self, key: str, since: int) -> bool:
        """A value of ``key`` computed since generation ``since`` predates a :meth:`clear`
        or an :meth:`invalidate` of ``key`` (or ``since`` is not a generation)."""
        if since > self._generation or since < self._cleared_at:
            return True
        invalidated = self._invalidated.get(key)
        return (invalidated if invalidated is not None else self._forgotten) > since

    def put(self, key: str, value: Any, ttl: float | None = _UNSET, *,
            since: int | None = None) -> bool:
        """Store ``value`` under ``key`` for ``ttl`` seconds (default: the cache's ttl;
        None: until evicted). Returns False (and counts a skip) when the value is not
        JSON-safe (with ``copy_on_hit``: when its JSON does not read back as it, as with
        NaN, tuples or bytes inside a dict or list) or alone larger than ``max_bytes``, or
        when ``since`` (a
        :attr:`generation`) is given and ``key`` was invalidated (or the cache cleared)
        after it."""
        key = _stored_key(key)
        if ttl is _UNSET:
            ttl = self.ttl
        else:
            _check_positive("ttl", ttl, allow_none=True, hint="seconds; None never expires")
        copied = self.copy_on_hit and type(value) not in _IMMUTABLE
        try:
            blob = _VALUE_ENCODER.encode(value)
            # Served as decoded from its JSON: only if that reads back as the value (NaN
            # would come back as None, a tuple as a list, bytes as base64 text).
            if copied and _decode(blob) != value:
                raise ValueError("the value's JSON does not read back as the value")
        except (TypeError, ValueError, RecursionError, msgspec.EncodeError,
                msgspec.DecodeError):
            with self._lock:
                self._skipped += 1
            return False
        size = len(blob)
        max_bytes = self.max_bytes
        keep = blob if copied else None
        with self._lock:
            if since is not None and self._stale(key, since):
                self._skipped += 1
                return False
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old[3]
            if max_bytes is not None and size > max_bytes:
                self._skipped += 1
                return False
            expires = None if ttl is None else self._clock.monotonic() + ttl
            self._data[key] = (expires, value, keep, size)
            self._bytes += size
            self._stores += 1
            data = self._data
            while len(data) > self.max_entries or (
                    max_bytes is not None and self._bytes > max_bytes):
                _, evicted = data.popitem(last=False)
                self._bytes -= evicted[3]
                self._evictions += 1
        return True

    def invalidate(self, key: str) -> bool:
        """Drop ``key``; True when it was there."""
        key = _stored_key(key)
        with self._lock:
            self._generation += 1  # even when absent: a call in flight may fill it
            invalidated = self._invalidated
            invalidated[key] = self._generation
            invalidated.move_to_end(key)
            if len(invalidated) > max(self.max_entries, 1024):
                self._forgotten = invalidated.popitem(last=False)[1]
            entry = self._data.pop(key, None)
            if entry is None:
                return False
            self._bytes -= entry[3]
            self._invalidations += 1
            return True

    def purge_expired(self) -> int:
        """Drop every expired entry now; returns how many."""
        now = self._clock.monotonic()
        with self._lock:
            dead = [k for k, e in self._data.items() if e[0] is not None and e[0] <= now]
            for key in dead:
                self._bytes -= self._data.pop(key)[3]
            self._expirations += len(dead)
        return len(dead)

    def clear(self) -> None:
        """Drop every entry (the counters stay)."""
        with self._lock:
            self._generation += 1
            self._cleared_at = self._generation
            self._invalidated.clear()
            self._forgotten = 0
            self._data.clear()
            self._bytes = 0

    def keys(self) -> list[str]:
        """The keys, least recently used first (expired ones included until dropped)."""
        with self._lock:
            return list(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def _counters(self) -> dict[str, Any]:
        with self._lock:
            return {
                "hits": self._hits, "misses": self._misses, "stores": self._stores,
                "evictions": self._evictions, "expirations": self._expirations,
                "invalidations": self._invalidations, "skipped": self._skipped,
                "size": len(self._data), "bytes": self._bytes,
                "max_entries": self.max_entries, "max_bytes": self.max_bytes,
            }

    def stats(self) -> CacheStats:
        """The counters and current size."""
        return CacheStats(**self._counters())


def _names(field: str, value: object, *, allow_none: bool) -> frozenset[str] | None:
    if value is None:
        if allow_none:
            return None
        raise InvalidValueError(f"CachingConfig.{field} must be a collection of names, "
                                "not None", hint="use () for none")
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise InvalidValueError(
            f"CachingConfig.{field} must be a collection of names, got {value!r}",
            hint=f"write {field}=({value!r},)" if isinstance(value, str) else
                 f"for example {field}=('calculator',)",
        )
    names = frozenset(value)
    bad = [n for n in names if not isinstance(n, str) or not n]
    if bad:
        raise InvalidValueError(f"CachingConfig.{field} must hold non-empty names, "
                                f"got {bad!r}")
    return names


class CachingConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of :class:`CachingHook`.

    ``ttl``: seconds an entry lives (None: until evicted). ``max_entries`` and
    ``max_bytes`` (approximate: JSON length of the values; None: no byte bound) bound the
    cache, least recently used out first. ``allow_tools``/``allow_agents``/
    ``allow_models``: only these names are cached (None: all; models are named
    ``"provider/model"``); ``deny_tools``/``deny_agents``/``deny_models``: never these.
    ``copy_on_hit``: hand out dicts and lists as fresh copies. ``shared_keys``: use the
    keys of a ``key_fn`` as they are, shared by every tool and agent (default: scoped to
    the component, see :func:`scoped_key`). ``coalesce``: while a call that missed runs,
    identical calls wait for it and are served its cached result instead of running too
    (request coalescing, see the module docstring); False runs each of them. ``scope``:
    whose calls share entries: ``"user"`` (default: the calls of one
    ``ctx.metadata["user"]``; calls that name no user share theirs), ``"session"`` (of one
    user and ``ctx.metadata["session"]``) or ``"global"`` (every caller's).
    """

    ttl: float | None = 300.0
    max_entries: int = 1024
    max_bytes: int | None = 16 * 1024 * 1024
    allow_tools: frozenset[str] | None = None
    deny_tools: frozenset[str] = frozenset()
    allow_agents: frozenset[str] | None = None
    deny_agents: frozenset[str] = frozenset()
    allow_models: frozenset[str] | None = None
    deny_models: frozenset[str] = frozenset()
    copy_on_hit: bool = True
    shared_keys: bool = False
    coalesce: bool = True
    scope: str = "user"

    def __post_init__(self) -> None:
        if self.scope not in CACHE_SCOPES:
            raise InvalidValueError(
                f"CachingConfig.scope must be one of {', '.join(CACHE_SCOPES)}, got "
                f"{self.scope!r}",
                hint="'user' keeps each user's results apart (the default); 'global' shares "
                     "them between users")
        _check_positive("CachingConfig.ttl", self.ttl, allow_none=True,
                        hint="seconds an entry lives; None keeps it until evicted")
        if (not isinstance(self.max_entries, int) or isinstance(self.max_entries, bool)
                or self.max_entries < 1):
            raise InvalidValueError(
                f"CachingConfig.max_entries must be an int >= 1, got {self.max_entries!r}",
                hint="1024 is the default")
        if self.max_bytes is not None and (
                not isinstance(self.max_bytes, int) or isinstance(self.max_bytes, bool)
                or self.max_bytes < 1):
            raise InvalidValueError(
                f"CachingConfig.max_bytes must be an int >= 1 or None, got "
                f"{self.max_bytes!r}", hint="None bounds the cache by entries only")
        for flag in ("copy_on_hit", "shared_keys", "coalesce"):
            if not isinstance(getattr(self, flag), bool):
                raise InvalidValueError(
                    f"CachingConfig.{flag} must be a bool, got {getattr(self, flag)!r}")
        force = msgspec.structs.force_setattr
        for kind in ("tools", "agents", "models"):
            allow = _names(f"allow_{kind}", getattr(self, f"allow_{kind}"), allow_none=True)
            deny = _names(f"deny_{kind}", getattr(self, f"deny_{kind}"), allow_none=False)
            assert deny is not None
            both = sorted(allow & deny) if allow is not None else []
            if both:
                raise ConfigurationError(
                    f"CachingConfig: {', '.join(both)} both allowed and denied in "
                    f"allow_{kind}/deny_{kind}",
                    hint=f"remove them from one list; deny_{kind} is for excluding names "
                         f"when allow_{kind} is None (all)",
                )
            force(self, f"allow_{kind}", allow)
            force(self, f"deny_{kind}", deny)


def _own(before: HookContext) -> bool:
    """The cache key in ``before``'s metadata was left by its own dispatch (its stamp is
    not the one copied from its parent)."""
    stamp = before.metadata.get(_STAMP_METADATA)
    if stamp is None:
        return False
    parent = before.parent
    return parent is None or parent.metadata.get(_STAMP_METADATA) != stamp


class CachingHook(BuiltinHook):
    """Serves repeated tool/agent/model calls from a :class:`TtlLruCache` (``.cache``).

    Installed by default at ``before_tool_execution``, ``before_agent_execution``,
    ``before_model_call`` (serve hits with ``Replace``) and ``after_tool_execution``,
    ``after_agent_execution``, ``after_model_call`` (store results).
    """

    default_points: tuple[str, ...] = (*OPERATION_BEFORE, MODEL_BEFORE, *OPERATION_AFTER,
                                       MODEL_AFTER)

    def __init__(
        self,
        config: CachingConfig | None = None,
        *,
        points: Iterable[str] | None = None,
        priority: int = CACHING_PRIORITY,
        key_fn: KeyFunction | None = None,
        clock: Clock = SYSTEM_CLOCK,
        store_priority: int = CACHE_STORE_PRIORITY,
    ) -> None:
        """``key_fn(ctx)`` replaces :func:`default_key` (None: do not cache the call);
        ``clock`` drives the TTLs (a ``ManualClock`` in tests). ``priority`` is the hook's
        at its before points; ``store_priority`` at its after points (last by default)."""
        super().__init__(name="caching", priority=priority, points=points,
                         description="serves repeated tool/agent/model calls from a TTL+LRU cache")
        self.config = config if config is not None else CachingConfig()
        if not isinstance(self.config, CachingConfig):
            raise InvalidValueError(
                f"config must be a CachingConfig, got {type(self.config).__name__}",
                hint="CachingHook(CachingConfig(ttl=60))")
        if key_fn is not None and not callable(key_fn):
            raise InvalidValueError(f"key_fn must be callable, got {key_fn!r}",
                                    hint="key_fn=lambda ctx: ... returning a str or None")
        if not isinstance(store_priority, int) or isinstance(store_priority, bool):
            raise InvalidValueError(f"store_priority must be an int, got {store_priority!r}",
                                    hint="the default runs the store after every other hook")
        self.key_fn = key_fn
        self.store_priority = store_priority
        cfg = self.config
        self.cache = TtlLruCache(cfg.max_entries, cfg.max_bytes, ttl=cfg.ttl, clock=clock,
                                 copy_on_hit=cfg.copy_on_hit)
        self._rules: dict[str, tuple[frozenset[str] | None, frozenset[str]]] = {
            _TOOL: (cfg.allow_tools, cfg.deny_tools),
            _AGENT: (cfg.allow_agents, cfg.deny_agents),
            _MODEL: (cfg.allow_models, cfg.deny_models),
        }
        self._at_before = any(str(p) in _FAMILY and _FAMILY[str(p)][1] for p in self.points)
        # The families whose misses are coalesced: those whose results this hook stores.
        self._coalesced: frozenset[str] = frozenset(
            _FAMILY[str(p)][0] for p in self.points
            if str(p) in _FAMILY and not _FAMILY[str(p)][1]) if cfg.coalesce else frozenset()
        self._lock = threading.Lock()
        self._served = self._bypassed = self._uncacheable = 0
        # A replay's own entries (its session -> a cache like .cache): a replay never reads
        # a live entry nor leaves one (an edited or recorded value served to live callers).
        self._replays: weakref.WeakKeyDictionary[object, TtlLruCache] = (
            weakref.WeakKeyDictionary())
        self._clock = clock
        # key -> the metadata of the before contexts of the calls in flight with that key
        self._flying: dict[str, list[dict[str, str]]] = {}

    def install(self, registry: HookRegistry) -> list[HookHandle]:
        """Register at each point: before points at ``priority``, after points at
        ``store_priority`` (so the value stored is the one the other after hooks passed)."""
        items: list[tuple[str, object] | tuple[str, object, dict[str, Any]]] = [
            (p, self) if not (str(p) in _FAMILY and not _FAMILY[str(p)][1])
            else (p, self, {"priority": self.store_priority}) for p in self.points]
        self._handles = registry.register_many(items)
        return list(self._handles)

    def _caller(self, ctx: HookContext) -> tuple[str | None, str | None]:
        """The user and session the call's entries belong to (see ``CachingConfig.scope``)."""
        scope = self.config.scope
        if scope == "global":
            return None, None
        metadata = ctx.metadata
        user = metadata.get("user") if metadata else None
        session = metadata.get("session") if metadata and scope == "session" else None
        return (None if user is None else str(user),
                None if session is None else str(session))

    def _allowed(self, family: str, name: str) -> bool:
        allow, deny = self._rules[family]
        return name not in deny and (allow is None or name in allow)

    def key_for(self, ctx: HookContext) -> str | None:
        """The cache key of ``ctx``: ``key_fn``'s key scoped to the component (as it is with
        ``shared_keys``), or :func:`default_key` of its params; bounded by
        :func:`bounded_key`. A ``key_fn`` that raises raises ``HookExecutionError`` (the
        hook fails open: the call runs uncached)."""
        component = ctx.component
        if self.key_fn is not None:
            try:
                key = self.key_fn(ctx)
            except Exception as exc:
                raise HookExecutionError(
                    self.metadata.name, ctx.point,
                    f"key_fn raised {type(exc).__name__}: {exc}",
                    hint="the call is not cached; make key_fn return a str, or None to "
                         "skip caching a call") from exc
            if key is None:
                return None
            if not isinstance(key, str):
                raise InvalidValueError(
                    f"key_fn returned {type(key).__name__}, not a str or None",
                    hint="return a string key, or None to skip caching this call")
            user, session = self._caller(ctx)
            if self.config.shared_keys:
                return bounded_key(_shared_key(key, user, session))
            return bounded_key(scoped_key(component.type.value, component.name, key,
                                          user=user, session=session))
        data = ctx.data
        user, session = self._caller(ctx)
        if component.type.value == _MODEL and "provider" in data:
            return default_key(_MODEL, model_key(data), model_key_params(data.get("params")),
                               user=user, session=session)
        return default_key(component.type.value, component.name, data.get("params"),
                           user=user, session=session)

    def execute(self, ctx: HookContext) -> HookOutput:
        """Before: ``Replace`` on a hit, else remember the key. After: store the result."""
        family_before = _FAMILY.get(ctx.point)
        if family_before is None:
            return None
        family, before = family_before
        name = model_key(ctx.data) if family == _MODEL else ctx.component.name
        metadata = ctx.metadata
        if before and metadata:
            # What a parent's before point left (copied into this child context) is not
            # this call's: a bypassed, uncacheable or failing lookup leaves nothing.
            for inherited in _INHERITABLE:
                metadata.pop(inherited, None)
        if not self._allowed(family, name):
            with self._lock:
                self._bypassed += 1
            return None
        replay = current_replay()
        cache = self.cache if replay is None else self._replay_cache(replay)
        if before:
            key = self.key_for(ctx)
            if key is None:
                with self._lock:
                    self._uncacheable += 1
                return None
            hit, value = cache.get(key)
            if hit:
                with self._lock:
                    self._served += 1
                return Replace(value)
            metadata[CACHE_KEY_METADATA] = key
            metadata[_GENERATION_METADATA] = str(cache.generation)
            metadata[_STAMP_METADATA] = new_id()
            if family in self._coalesced and replay is None:  # never with live calls
                self._take_off(key, metadata)
            return None
        data = ctx.data
        if "result" not in data:
            return None
        parent = ctx.parent
        since: int | None = None
        if (self._at_before and parent is not None and parent.component == ctx.component
                and _FAMILY.get(parent.point) == (family, True)):
            key = parent.metadata.get(CACHE_KEY_METADATA)
            if key is None or not _own(parent):
                # The before point decided not to cache (or hit) this call, or did not run
                # for it: a key there is its parent's.
                return None
            generation = parent.metadata.get(_GENERATION_METADATA)
            since = (int(generation) if generation is not None and generation.isdigit()
                     else None)
        else:
            key = self.key_for(ctx)
            if key is None:
                with self._lock:
                    self._uncacheable += 1
                return None
        cache.put(key, data["result"], since=since)
        return None

    def _replay_cache(self, replay: object) -> TtlLruCache:
        """The entries of replay ``replay`` (made empty on its first call): a replay starts
        from no entries, so a call the recorded run was served from this cache (an entry
        made before that run) runs again in the replay, and the replay reports that
        decision as a divergence."""
        with self._lock:
            cache = self._replays.get(replay)
            if cache is None:
                cfg = self.config
                cache = self._replays[replay] = TtlLruCache(
                    cfg.max_entries, cfg.max_bytes, ttl=cfg.ttl, clock=self._clock,
                    copy_on_hit=cfg.copy_on_hit)
            return cache

    def _take_off(self, key: str, metadata: dict[str, str]) -> None:
        """Ask the runtime to coalesce identical calls with this one (the metadata of its
        before context) until it is over, or until :meth:`invalidate`/:meth:`clear`."""
        if not on_operation_end(lambda: self._land(key, metadata)):
            return  # dispatched without an operation scope: nobody coalesces it
        with self._lock:
            self._flying.setdefault(key, []).append(metadata)
        metadata[_COALESCE_METADATA] = key

    def _land(self, key: str, metadata: dict[str, str]) -> None:
        with self._lock:
            flying = self._flying.get(key)
            if flying is None:
                return
            for i, held in enumerate(flying):
                if held is metadata:
                    del flying[i]
                    break
            if not flying:
                del self._flying[key]

    def _ground(self, flying: list[dict[str, str]], key: str) -> None:
        """End the coalescing of these calls: a call that starts now does not wait."""
        for metadata in flying:
            if metadata.get(_COALESCE_METADATA) == key:
                metadata.pop(_COALESCE_METADATA, None)

    def invalidate(self, key: str) -> bool:
        """Drop one entry (a key from :meth:`key_for`, :func:`default_key` or ``key_fn``).
        Calls of that key in flight no longer coalesce: a call that starts now runs (or is
        served) on its own instead of waiting for a result that will not be stored."""
        key = _stored_key(key)
        dropped = self.cache.invalidate(key)
        with self._lock:
            flying = self._flying.pop(key, [])
        self._ground(flying, key)
        return dropped

    def clear(self) -> None:
        """Drop every entry, and end the coalescing of every call in flight (see
        :meth:`invalidate`)."""
        self.cache.clear()
        with self._lock:
            flights, self._flying = self._flying, {}
        for key, flying in flights.items():
            self._ground(flying, key)

    def stats(self) -> CachingStats:
        """The cache's counters plus ``served``, ``bypassed`` and ``uncacheable``."""
        with self._lock:
            mine = {"served": self._served, "bypassed": self._bypassed,
                    "uncacheable": self._uncacheable}
        return CachingStats(**self.cache._counters(), **mine)
