"""``RateLimitHook``: a token bucket per key in front of tools and agents.

Each call at ``BeforeToolExecution``/``BeforeAgentExecution`` takes one token from the bucket
of its key. The key is chosen by ``RateLimitConfig.key``:

* ``"global"``: one bucket for everything;
* ``"component"``: one per component, ``"<type>:<name>"`` (``"tool:calculator"``);
* ``"user"``: one per user, read from ``ctx.metadata["user"]`` (set by the application, a
  hook of its own or a parent context), else the one shared bucket ``"anonymous"``. The
  call's parameters are *not* read: a model chooses a tool call's parameters, and a new
  ``user`` per call would get a new bucket each time. ``user_from_params=True`` opts in to
  ``ctx.data["params"]["user"]`` as a fallback, for parameters only the application sets
  (an agent run's input); the calls made inside an agent run whose input named the user
  (its tool calls, sharing its correlation id) then count against that user too;
* a template of the fields ``component``, ``type``, ``name``, ``user`` and ``point``, such
  as ``"{component}:{user}"``.

Buckets live in a bounded dict. A bucket that is full again is the same as a new one, so
idle buckets are dropped as new keys come (no limiting is lost); past ``max_keys`` buckets
that are not idle, the least recently used is dropped (it comes back full).

Every decision writes string metadata into ``ctx.metadata`` for later hooks and callers:
``x-ratelimit-limit`` (the burst), ``x-ratelimit-remaining`` (whole tokens left),
``x-ratelimit-reset`` (seconds until the bucket is full again) and, when the call was
refused, ``retry-after`` (seconds until a token is free). Times are in seconds with
millisecond precision.

When a call finds no token, ``action`` decides:

* ``"cancel"``: ``Cancel("rate limit exceeded for '<key>': retry after <s> s")``;
* ``"wait"``: the token is reserved now and the hook sleeps until it is due, if that is at
  most ``max_wait`` seconds away; else it cancels. A caller cancelled while it waits gives
  its reserved token back;
* ``"redirect"``: ``Redirect(redirect_to)`` — run that tool/agent instead. If the target is
  itself limited on the redirected call, that call is cancelled (no redirect loops);
* ``"serve_cached"``: ``Replace(last result)`` of the same key and parameters, which the
  hook remembers at ``AfterToolExecution``/``AfterAgentExecution`` (it installs itself there
  too when this action is configured); with nothing remembered it cancels. The results
  remembered are bounded by ``cache_size`` entries and ``cache_max_bytes`` (their JSON and
  their keys' sizes; a result larger than that is not remembered).

**Model calls.** ``RateLimitConfig.models`` limits requests and tokens per model per minute,
at ``BeforeModelCall`` (the hook is installed at the model points only when it is set).
Keys are ``"provider/model"``, ``"provider/*"`` or ``"*"`` (the most specific wins), values
:class:`ModelLimit` (``requests_per_minute``, ``tokens_per_minute``). Each model has its own
pair of buckets, full at start and refilled continuously (a minute's allowance per minute).
A call takes one request and its estimated tokens (the prompt, counted as characters / 4,
plus its ``max_tokens``); at ``AfterModelCall`` the estimate is corrected with the tokens the
provider reports (``usage.total_tokens``): tokens not used are given back, tokens beyond it
are taken (the bucket may go into debt, which delays the next calls; the debt is at most one
minute's allowance, so a bogus report cannot block the model for longer than about a
minute, and a bucket never holds more than its minute's allowance). When a bucket is short,
``action="wait"`` waits up to ``max_wait`` seconds (reserving the allowance, so waiters are
served in order); ``model_fallback`` (``"provider/model"``) redirects the call to another
model once; anything else cancels with the time to wait (``retry-after`` in the metadata).
A call whose estimate alone is larger than ``tokens_per_minute`` is cancelled at once.

**Fleet-wide limits.** ``RateLimitHook(config, shared=...)`` keeps the buckets (per key and
per model) in a :class:`~llmspell.builtin.counters.CounterBackend` instead of this process:
``shared="nats://host:4222"`` (JetStream KV, see
:class:`~llmspell.builtin.nats_counters.NatsCounters`), ``shared="redis://host:6379/0"``
(:class:`~llmspell.builtin.redis_counters.RedisCounters`) or a backend object. Every hook with
the same backend, ``shared_key`` and bucket key then draws from one bucket, with the same
rule as the local one: three processes limited to 10 calls per second make 10 calls per
second together. Bucket time is wall time there (processes on several machines should keep
their clocks in sync); a bucket whose time is further ahead of a process's clock than its
time to live (below) is taken for a clock that jumped and restarts its time there, so a
clock set back refills nothing for at most that long (not for the size of the jump); each
decision is one compare-and-set round trip, so the hook is async
with a backend. A backend that cannot answer raises
:class:`~llmspell.errors.SharedCounterError`, and the hook's ``error_policy`` decides
(``fail_open``, the default: the call goes ahead; ``fail_closed``: it is cancelled). Without
``shared`` the hook stays on its own in-process path. Shared buckets are written with a time
to live (:meth:`~llmspell.builtin.counters.CounterBackend.update_expiring`): the longest a
bucket takes to refill from its lowest level (``burst / rate + max_wait``; for a model,
``60 + max(60, max_wait)`` seconds), plus a margin of 10 % and at least a second for clocks
that differ a little. So an idle bucket leaves the backend, and one that is gone reads as a
full bucket, which it would be by then: no limiting is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import string
import sys
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal, TypeAlias

import msgspec

from llmspell.builtin.base import (
    MODEL_AFTER,
    MODEL_BEFORE,
    OPERATION_AFTER,
    OPERATION_BEFORE,
    BuiltinHook,
    Tokenizer,
    estimate_prompt_tokens,
    model_key,
)
from llmspell.builtin.counters import CounterBackend, counter_key, shared_counters
from llmspell.core.clock import SYSTEM_CLOCK, Clock
from llmspell.core.errors import InvalidValueError
from llmspell.core.run_scope import RUNNING_REPLAYS, current_replay, replay_serves
from llmspell.hooks.context import HookContext
from llmspell.hooks.hook import HookOutput
from llmspell.hooks.metadata import ErrorPolicy
from llmspell.hooks.points import HookPoint
from llmspell.hooks.result import Cancel, HookResult, Redirect, Replace

__all__ = [
    "ANONYMOUS",
    "DEFAULT_CACHE_MAX_BYTES",
    "KEY_FIELDS",
    "RATE_LIMIT_PRIORITY",
    "KeyStats",
    "KeyedTokenBucket",
    "ModelLimit",
    "ModelRateStats",
    "RateLimitConfig",
    "RateLimitDecision",
    "RateLimitHook",
    "RateLimitStats",
]

RATE_LIMIT_PRIORITY = -800
"""Default priority of :class:`RateLimitHook`: early, after security (-1000)."""

DEFAULT_CACHE_MAX_BYTES = 32 * 1024 * 1024
"""Default ``RateLimitConfig.cache_max_bytes``: 32 MiB of remembered results."""

ANONYMOUS = "anonymous"
_MAX_RUN_USERS = 10_000
"""How many agent runs' users :class:`RateLimitHook` remembers for the calls inside them."""
_AGENT_START = HookPoint.BEFORE_AGENT_EXECUTION
"""The user (and bucket) of a call whose context names none: one bucket for all of them."""

KEY_FIELDS: frozenset[str] = frozenset({"component", "type", "name", "user", "point"})
"""The fields a key template may use."""

LIMIT = "x-ratelimit-limit"
REMAINING = "x-ratelimit-remaining"
RESET = "x-ratelimit-reset"
RETRY_AFTER = "retry-after"
_REDIRECTED = "x-ratelimit-redirected"

LimitAction: TypeAlias = Literal["cancel", "wait", "redirect", "serve_cached"]
_ACTIONS: tuple[str, ...] = ("cancel", "wait", "redirect", "serve_cached")
_MODES: tuple[str, ...] = ("global", "component", "user")
_AFTER = frozenset(str(p) for p in OPERATION_AFTER)
_MODEL_ESTIMATE = "llmspell.ratelimit.model_tokens"
_MODEL_KEY = "llmspell.ratelimit.model"
REMAINING_REQUESTS = "x-ratelimit-remaining-requests"
REMAINING_TOKENS = "x-ratelimit-remaining-tokens"
_ENCODE = msgspec.json.Encoder(order="deterministic").encode
_JSON_ENCODE = msgspec.json.Encoder().encode
_IMMUTABLE = frozenset({str, int, float, bool, type(None)})
_ENTRY_OVERHEAD = 100
"""Bytes counted for a remembered result beyond its JSON (the entry, its time, the copy)."""


class _Frozen:
    """A remembered mutable result, as its JSON (``serve_cached`` decodes a fresh copy)."""

    __slots__ = ("blob",)

    def __init__(self, blob: bytes) -> None:
        self.blob = blob


def _positive(value: object, field: str, *, allow_zero: bool = False) -> None:
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and (value >= 0 if allow_zero else value > 0))
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidValueError(f"RateLimitConfig.{field} must be a finite number {bound}, "
                                f"got {value!r}")


def _escaper(template: str) -> Callable[[str], str]:
    """A function writing the literal characters of key ``template`` (and ``%``) as
    ``%XX`` in a field's value, so values cannot forge the separators between fields."""
    special = set("".join(text for text, _f, _s, _c in string.Formatter().parse(template)))
    special.add("%")
    table = {ord(c): "".join(f"%{b:02X}" for b in c.encode()) for c in special}
    return lambda value: value.translate(table)


def _template_fields(template: str) -> tuple[str, ...]:
    """The fields of a key template; unknown fields raise with the valid ones."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise InvalidValueError(
            f"RateLimitConfig.key: bad template {template!r}: {exc}",
            hint="write fields in braces, e.g. '{component}:{user}'",
        ) from None
    fields = tuple(dict.fromkeys(f for _, f, _, _ in parsed if f is not None))
    unknown = [f for f in fields if f not in KEY_FIELDS]
    if unknown or "" in fields:
        raise InvalidValueError(
            f"RateLimitConfig.key: unknown template field(s) "
            f"{', '.join(repr(f) for f in unknown) or repr('{}')} in {template!r}",
            hint=f"use named fields from: {', '.join(sorted(KEY_FIELDS))}",
        )
    if not fields:
        raise InvalidValueError(
            f"RateLimitConfig.key: {template!r} is neither a mode nor a template",
            hint=f"use one of {', '.join(_MODES)}, or a template like '{{component}}:{{user}}'",
        )
    return fields


class ModelLimit(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Per-minute limits of one model (None: that dimension is not limited)."""

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None

    def __post_init__(self) -> None:
        for field in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(self, field)
            if value is not None:
                _positive(value, f"models[...].{field}")
        if self.requests_per_minute is None and self.tokens_per_minute is None:
            raise InvalidValueError(
                "a ModelLimit needs requests_per_minute or tokens_per_minute",
                hint="e.g. ModelLimit(requests_per_minute=60, tokens_per_minute=90_000)")


class RateLimitConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of :class:`RateLimitHook`.

    ``rate``: tokens added per second. ``burst``: bucket size (calls allowed at once).
    ``key``: ``global``, ``component``, ``user`` or a template (see the module docstring).
    ``user_field``: the metadata key naming the user. ``user_from_params``: also read the
    user from the call's parameters when the metadata has none (off: a model chooses a tool
    call's parameters). ``max_keys``: buckets kept (idle ones dropped first, then the least
    recently used). ``action``: ``cancel``, ``wait``, ``redirect`` or ``serve_cached``.
    ``max_wait``: longest sleep of ``wait`` (seconds). ``redirect_to``: the target of
    ``redirect`` (required then). ``cache_size``, ``cache_max_bytes`` and ``cache_ttl``
    (seconds, None: no expiry): results remembered for ``serve_cached``. ``models``: per-minute
    limits of model calls, keyed ``"provider/model"``, ``"provider/*"`` or ``"*"`` (see the
    module docstring); ``model_fallback``: a ``"provider/model"`` a limited model call is
    redirected to (once) instead of being cancelled.
    """

    rate: float = 10.0
    burst: int = 10
    key: str = "component"
    user_field: str = "user"
    user_from_params: bool = False
    max_keys: int = 10_000
    action: LimitAction = "cancel"
    max_wait: float = 1.0
    redirect_to: str | None = None
    cache_size: int = 1024
    cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES
    cache_ttl: float | None = None
    models: dict[str, ModelLimit] = {}
    model_fallback: str | None = None

    def __post_init__(self) -> None:
        _positive(self.rate, "rate")
        _positive(self.max_wait, "max_wait", allow_zero=True)
        if self.cache_ttl is not None:
            _positive(self.cache_ttl, "cache_ttl")
        for field in ("burst", "max_keys", "cache_size", "cache_max_bytes"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidValueError(f"RateLimitConfig.{field} must be an int >= 1, "
                                        f"got {value!r}")
        if not isinstance(self.key, str) or not self.key:
            raise InvalidValueError("RateLimitConfig.key must be a non-empty string",
                                    hint=f"use one of {', '.join(_MODES)} or a template")
        if self.key not in _MODES:
            _template_fields(self.key)
        if not isinstance(self.user_field, str) or not self.user_field:
            raise InvalidValueError("RateLimitConfig.user_field must be a non-empty string")
        if not isinstance(self.user_from_params, bool):
            raise InvalidValueError(
                f"RateLimitConfig.user_from_params must be True or False, got "
                f"{self.user_from_params!r}",
                hint="leave it False unless only your application sets the parameter")
        if self.action not in _ACTIONS:
            raise InvalidValueError(f"RateLimitConfig.action: unknown action {self.action!r}",
                                    hint=f"use one of: {', '.join(_ACTIONS)}")
        for name, limit in self.models.items():
            if not isinstance(name, str) or not name or (name != "*" and "/" not in name):
                raise InvalidValueError(
                    f"RateLimitConfig.models: bad key {name!r}",
                    hint="key models by 'provider/model', 'provider/*' or '*'")
            if not isinstance(limit, ModelLimit):
                raise InvalidValueError(
                    f"RateLimitConfig.models[{name!r}] must be a ModelLimit, not "
                    f"{type(limit).__name__}",
                    hint="e.g. ModelLimit(requests_per_minute=60)")
        if self.model_fallback is not None and (
                not isinstance(self.model_fallback, str) or "/" not in self.model_fallback):
            raise InvalidValueError(
                f"RateLimitConfig.model_fallback must be 'provider/model', got "
                f"{self.model_fallback!r}", hint="e.g. 'openai/gpt-4o-mini'")
        if self.action == "redirect" and not self.redirect_to:
            raise InvalidValueError(
                "RateLimitConfig.action 'redirect' needs redirect_to",
                hint="name the tool or agent to run instead, e.g. redirect_to='cheap_search'",
            )


class KeyStats(msgspec.Struct, frozen=True, kw_only=True):
    """One key's counters: calls ``allowed`` at once, calls ``limited``, ``tokens`` left."""

    allowed: int
    limited: int
    tokens: float


class RateLimitDecision(msgspec.Struct, frozen=True, kw_only=True):
    """One decision: the key, whether a token was free, what was done (``allow``,
    ``cancel``, ``wait``, ``redirect``, ``serve_cached``), and the metadata written."""

    key: str
    allowed: bool
    action: str
    limit: int
    remaining: int
    reset: float
    retry_after: float
    metadata: dict[str, str]


class RateLimitStats(msgspec.Struct, frozen=True, kw_only=True):
    """What :class:`RateLimitHook` did: calls ``allowed`` at once, calls ``limited`` (no
    token), of those ``waited``, ``cancelled``, ``redirected`` and ``served_cached``;
    ``keys`` tracked now, ``by_key`` (their counters), ``cached_results`` remembered (and
    ``cached_bytes``, their size as counted against ``cache_max_bytes``) and ``last``
    decision."""

    allowed: int
    limited: int
    waited: int
    cancelled: int
    redirected: int
    served_cached: int
    keys: int
    by_key: dict[str, KeyStats]
    cached_results: int
    last: RateLimitDecision | None
    models: dict[str, ModelRateStats] = {}
    cached_bytes: int = 0


class ModelRateStats(msgspec.Struct, frozen=True, kw_only=True):
    """One model's counters: calls ``allowed`` at once, calls ``limited`` (of those
    ``waited``), ``tokens`` the provider reported, and what the buckets hold now
    (``requests_left``, ``tokens_left``; None when that dimension is not limited)."""

    allowed: int
    limited: int
    waited: int
    tokens: int
    requests_left: float | None
    tokens_left: float | None


class _ModelState:
    __slots__ = ("allowed", "last", "limit", "limited", "requests", "tokens", "used",
                 "waited")

    def __init__(self, limit: ModelLimit, now: float) -> None:
        self.limit = limit
        self.requests = limit.requests_per_minute or 0.0
        self.tokens = limit.tokens_per_minute or 0.0
        self.last = now
        self.allowed = self.limited = self.waited = self.used = 0

    def refill(self, now: float) -> None:
        elapsed = now - self.last
        self.last = now
        if elapsed <= 0:
            return
        rpm, tpm = self.limit.requests_per_minute, self.limit.tokens_per_minute
        if rpm is not None:
            self.requests = min(rpm, self.requests + elapsed * rpm / 60.0)
        if tpm is not None:
            self.tokens = min(tpm, self.tokens + elapsed * tpm / 60.0)

    def charge(self, extra: int) -> None:
        """Correct the tokens (refilled already) by ``extra`` reported beyond the estimate
        (negative: given back). The level stays within one minute's allowance either way:
        a bogus report (``total_tokens=10**18``) costs at most a minute's tokens, and a
        give-back never fills the bucket past its size. ``extra`` may be any int."""
        tpm = self.limit.tokens_per_minute
        if tpm is None:
            return
        # Never below -tpm by a correction, but a debt made by waiters is not forgiven.
        floor = min(-tpm, self.tokens)
        # Compared as int against float (exact, no overflow) before any arithmetic.
        if extra >= self.tokens - floor:
            self.tokens = floor
        elif extra <= self.tokens - tpm:
            self.tokens = tpm
        else:
            self.tokens -= extra

    def give_back(self, estimate: int) -> None:
        """Return a reservation (one request, ``estimate`` tokens) that was not used; the
        state is refilled already."""
        rpm, tpm = self.limit.requests_per_minute, self.limit.tokens_per_minute
        if rpm is not None:
            self.requests = min(rpm, self.requests + 1.0)
        if tpm is not None:
            self.charge(-estimate)


def _take_model(st: _ModelState, estimate: int, may_wait: bool, max_wait: float
                ) -> tuple[float, float, bool]:
    """Take one request and ``estimate`` tokens from ``st`` (refilled already) if both are
    there, or reserve them when ``may_wait`` and they come within ``max_wait`` seconds;
    returns ``(wait for requests, wait for tokens, granted)``."""
    rpm, tpm = st.limit.requests_per_minute, st.limit.tokens_per_minute
    wait_requests = 0.0 if rpm is None or st.requests >= 1.0 else (
        (1.0 - st.requests) * 60.0 / rpm)
    wait_tokens = 0.0 if tpm is None or st.tokens >= estimate else (
        (estimate - st.tokens) * 60.0 / tpm)
    wait = max(wait_requests, wait_tokens)
    granted = wait == 0.0 or (may_wait and wait <= max_wait)
    if granted:
        if rpm is not None:
            st.requests -= 1.0
        if tpm is not None:
            st.tokens -= estimate
    return wait_requests, wait_tokens, granted


def shared_bucket_take(state: Any, now: float, rate: float, burst: int, max_wait: float,
                       horizon: float = math.inf
                       ) -> tuple[list[float], tuple[float, float, bool]]:
    """:meth:`KeyedTokenBucket.take` on a shared bucket ``state`` (``[tokens, at]`` with
    ``at`` in wall seconds; None: a full bucket): the new state and ``(wait, tokens,
    granted)``. Time never runs backwards for a bucket: a process whose clock is behind the
    last writer's refills nothing until it catches up, but only by up to ``horizon``
    seconds; a bucket time further ahead than that is a wall clock that jumped (set back,
    or a writer's set forward), and the bucket's time restarts at ``now``, its level
    kept."""
    if state is None:
        tokens, last = float(burst), now
    else:
        tokens, last = float(state[0]), float(state[1])
        if last - now > horizon:
            last = now
        if now > last:
            tokens = min(float(burst), tokens + (now - last) * rate)
            last = now
    if tokens >= 1.0:
        tokens -= 1.0
        return [tokens, last], (0.0, tokens, True)
    wait = (1.0 - tokens) / rate
    if max_wait > 0.0 and wait <= max_wait:
        tokens -= 1.0
        return [tokens, last], (wait, tokens, True)
    return [tokens, last], (wait, tokens, False)


def shared_bucket_give_back(state: Any, now: float, rate: float, burst: int,
                            horizon: float = math.inf) -> tuple[list[float] | None, None]:
    """:meth:`KeyedTokenBucket.give_back` of one token on a shared bucket ``state``
    (``horizon`` as :func:`shared_bucket_take`)."""
    if state is None:
        return None, None
    tokens, last = float(state[0]), float(state[1])
    if last - now > horizon:
        last = now
    if now > last:
        tokens += (now - last) * rate
        last = now
    tokens += 1.0
    # A full bucket is stored as nothing, which reads back as a full bucket.
    return (None if tokens >= burst else [tokens, last]), None


def _shared_model_update(limit: ModelLimit, now: Callable[[], float],
                         change: Callable[[_ModelState], object]
                         ) -> Callable[[Any], tuple[Any, None]]:
    """A shared-counter update that refills a model's stored levels to ``now()`` and applies
    ``change`` to them (a missing entry stays missing: it reads as full)."""

    def update(state: Any) -> tuple[Any, None]:
        if state is None:
            return None, None
        at = now()
        levels = _ModelState(limit, at)
        levels.requests, levels.tokens, levels.last = (float(v) for v in state)
        levels.refill(at)
        change(levels)
        return [levels.requests, levels.tokens, levels.last], None

    return update


def _with_margin(seconds: float) -> float:
    """``seconds`` and a margin for clocks that differ: 10 %, at least one second."""
    return seconds + max(1.0, 0.1 * seconds)


async def _settled(out: HookOutput) -> HookResult | None:
    """``out``, awaited when a decision returned an awaitable (the ``wait`` action)."""
    if inspect.isawaitable(out):
        return await out
    return out


class _KeyState:
    __slots__ = ("allowed", "last", "limited", "tokens")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.last = now
        self.allowed = 0
        self.limited = 0


_EVICT_SCAN = 64
"""How many of the least recently used buckets a full map looks through for an idle one."""


class KeyedTokenBucket:
    """Token buckets by key, with one lock and a bounded set of keys. Thread-safe.

    :meth:`take` takes a token for a key. With ``max_wait > 0`` a call that finds none may
    *reserve* the next one (the bucket goes into debt) if it is due within ``max_wait``
    seconds, so concurrent waiters are served in order and never oversubscribe;
    :meth:`give_back` returns a reservation that was not used.

    A bucket that has refilled to ``burst`` is the same as a new one, so such idle buckets
    are dropped (least recently used first) whenever a new key comes: the map holds the
    keys active within about ``burst / rate`` seconds, not every key ever seen. Past
    ``max_keys`` buckets that are not idle, the least recently used one is dropped (it
    comes back full): keep ``max_keys`` above the number of keys active at once.
    """

    __slots__ = ("_clock", "_lock", "_now", "_states", "burst", "max_keys", "rate")

    def __init__(self, rate: float, burst: int, *, max_keys: int = 10_000,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        if not rate > 0 or burst < 1 or max_keys < 1:
            raise InvalidValueError("a keyed token bucket needs rate > 0, burst >= 1 and "
                                    "max_keys >= 1")
        self.rate = float(rate)
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._now = clock.monotonic
        self._lock = threading.Lock()
        self._states: OrderedDict[str, _KeyState] = OrderedDict()

    def take(self, key: str, max_wait: float = 0.0) -> tuple[float, float, bool]:
        """Take (or reserve) a token for ``key``.

        Returns ``(wait, tokens, granted)``: ``granted`` is True when the call may go
        ahead after ``wait`` seconds (0.0: at once); False means refused, and ``wait`` is
        then the time until a token is free. ``tokens`` is what the bucket holds after.
        """
        with self._lock:
            now = self._now()
            states = self._states
            st = states.get(key)
            if st is None:
                if states:
                    self._drop_idle(now)
                st = states[key] = _KeyState(float(self.burst), now)
                if len(states) > self.max_keys:
                    self._evict(now, key)
                tokens = st.tokens
            else:
                states.move_to_end(key)
                tokens = st.tokens + (now - st.last) * self.rate
                if tokens > self.burst:
                    tokens = float(self.burst)
                st.last = now
            if tokens >= 1.0:
                st.tokens = tokens = tokens - 1.0
                st.allowed += 1
                return 0.0, tokens, True
            st.limited += 1
            wait = (1.0 - tokens) / self.rate
            if max_wait > 0.0 and wait <= max_wait:
                st.tokens = tokens - 1.0
                return wait, st.tokens, True
            st.tokens = tokens
            return wait, tokens, False

    def _full(self, st: _KeyState, now: float) -> bool:
        return st.tokens + (now - st.last) * self.rate >= self.burst

    def _drop_idle(self, now: float) -> None:
        """Drop the least recently used buckets while they are full again (under the lock).

        Amortised O(1): each bucket is dropped once, and the walk stops at the first one
        still refilling."""
        states = self._states
        while states:
            oldest = next(iter(states.values()))
            if not self._full(oldest, now):
                return
            states.popitem(last=False)

    def _evict(self, now: float, new: str) -> None:
        """Make room past ``max_keys`` (under the lock): an idle bucket among the least
        recently used if there is one (no limiting lost), else the least recently used."""
        states = self._states
        for n, (key, st) in enumerate(states.items()):
            if n >= _EVICT_SCAN or key == new:
                break
            if self._full(st, now):
                del states[key]
                return
        states.popitem(last=False)

    def give_back(self, key: str, tokens: float = 1.0) -> None:
        """Return ``tokens`` that :meth:`take` reserved for ``key`` and that were not used
        (a waiter cancelled before its turn). The bucket never holds more than ``burst``;
        a key dropped meanwhile is left alone (it comes back full)."""
        with self._lock:
            st = self._states.get(key)
            if st is None:
                return
            now = self._now()
            if now > st.last:
                st.tokens += (now - st.last) * self.rate
                st.last = now
            st.tokens = min(float(self.burst), st.tokens + tokens)

    def snapshot(self) -> dict[str, KeyStats]:
        """Counters of every key tracked now (tokens as of their last call)."""
        with self._lock:
            return {k: KeyStats(allowed=s.allowed, limited=s.limited, tokens=s.tokens)
                    for k, s in self._states.items()}

    def __len__(self) -> int:
        return len(self._states)


class RateLimitHook(BuiltinHook):
    """Limits how often tools and agents run, per key (see the module docstring).

    ``clock``: where bucket time comes from (a ``ManualClock`` in tests). ``sleep``: how
    the ``wait`` action sleeps (default ``asyncio.sleep``; a test may advance a manual
    clock instead). With ``action="serve_cached"`` and no ``points`` given, the hook is
    also installed at the after points, to remember results; with ``models`` set, also at
    ``BeforeModelCall`` and ``AfterModelCall``. ``tokenizer`` counts a prompt's tokens for
    the estimate (default: characters / 4).
    """

    default_points: tuple[str, ...] = tuple(OPERATION_BEFORE)

    def __init__(
        self,
        config: RateLimitConfig | None = None,
        *,
        points: Iterable[str] | None = None,
        priority: int = RATE_LIMIT_PRIORITY,
        clock: Clock = SYSTEM_CLOCK,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        tokenizer: Tokenizer | None = None,
        shared: CounterBackend | str | None = None,
        shared_key: str = "rate_limit",
        error_policy: ErrorPolicy = ErrorPolicy.FAIL_OPEN,
    ) -> None:
        cfg = config if config is not None else RateLimitConfig()
        backend = shared_counters(shared)
        if not isinstance(shared_key, str) or not shared_key:
            raise InvalidValueError("shared_key must be a non-empty string",
                                    hint="e.g. shared_key='search-api'")
        if points is None and (cfg.action == "serve_cached" or cfg.models):
            chosen: tuple[str, ...] = tuple(self.default_points)
            if cfg.action == "serve_cached":
                chosen += tuple(OPERATION_AFTER)
            if cfg.models:
                chosen += (MODEL_BEFORE, MODEL_AFTER)
            points = chosen
        super().__init__(name="rate_limit", priority=priority, points=points,
                         tags=("builtin", "rate_limit"), error_policy=error_policy,
                         description="token-bucket rate limit per key")
        self.shared = backend
        self.shared_key = shared_key
        # Shared buckets: this process's counters and the levels it last saw, per key.
        self._shared_keys: OrderedDict[str, _KeyState] = OrderedDict()
        self.config = cfg
        self._clock = clock
        self._sleep = sleep
        self._buckets = KeyedTokenBucket(cfg.rate, cfg.burst, max_keys=cfg.max_keys,
                                         clock=clock)
        self._limit = str(cfg.burst)
        self._burst = float(cfg.burst)
        self._rate = float(cfg.rate)
        self._key = self._key_function(cfg)
        self._action = cfg.action
        self._max_wait = cfg.max_wait if cfg.action == "wait" else 0.0
        # Times to live of shared buckets (see the module docstring): a bucket is full
        # again by then, however low it was left.
        self._bucket_ttl = _with_margin(cfg.burst / self._rate + self._max_wait)
        self._model_ttl = _with_margin(60.0 + max(60.0, self._max_wait))
        self._remember = cfg.action == "serve_cached"
        # Remembered results: key -> (when, result, bytes counted), oldest first.
        self._cache: OrderedDict[str, tuple[float, Any, int]] = OrderedDict()
        self._cache_bytes = 0
        self._cache_lock = threading.Lock()
        self._last: tuple[str, bool, str, float, float] | None = None
        self.allowed = 0
        self.limited = 0
        self.waited = 0
        self.cancelled = 0
        self.redirected = 0
        self.served_cached = 0
        self.tokenizer = tokenizer
        self._model_lock = threading.Lock()
        self._models: OrderedDict[str, _ModelState] = OrderedDict()
        self._model_limits: dict[str, ModelLimit | None] = {}
        # Shared give-backs under way (held so a cancelled caller's one is not collected).
        self._refunds: set[asyncio.Future[object]] = set()
        # With user_from_params: the user an agent run's input named, by the run's
        # correlation id, for the calls made inside the run (its tool calls' parameters
        # are the model's and never name the user). Least recently used dropped first.
        self._run_users: OrderedDict[str, str] = OrderedDict()

    # -- keys -----------------------------------------------------------------------------
    def _user(self, ctx: HookContext) -> str:
        field = self.config.user_field
        user = ctx.metadata.get(field)
        if user:
            return user
        # The parameters of a tool call are the model's choice: read only when opted in.
        if self.config.user_from_params:
            params = ctx.data.get("params")
            if isinstance(params, dict):
                value = params.get(field)
                if value is not None and value != "":
                    user = str(value)
                    if ctx.point == _AGENT_START:
                        self._remember_run_user(ctx.correlation_id, user)
                    return user
            # A call inside an agent run whose input named the user (the cost hook charges
            # that run's calls to that user too).
            remembered = self._run_users.get(ctx.correlation_id)
            if remembered is not None:
                return remembered
        return ANONYMOUS

    def _remember_run_user(self, correlation_id: str, user: str) -> None:
        runs = self._run_users
        runs[correlation_id] = user
        runs.move_to_end(correlation_id)
        while len(runs) > _MAX_RUN_USERS:
            try:
                runs.popitem(last=False)
            except KeyError:  # emptied by another thread meanwhile
                break

    def _key_function(self, cfg: RateLimitConfig) -> Callable[[HookContext], str]:
        if cfg.key == "global":
            return lambda ctx: "global"
        if cfg.key == "component":
            return lambda ctx: f"{ctx.component.type}:{ctx.component.name}"
        if cfg.key == "user":
            return self._user
        template = cfg.key
        fields = _template_fields(template)
        # A user id or a name holding the template's separators (user "a:b" in
        # "{user}:{name}") must not forge another (user, name)'s key: those characters, and
        # "%", are written %XX in the values the caller chooses.
        escape = _escaper(template)
        getters: dict[str, Callable[[HookContext], str]] = {
            "component": lambda c: f"{c.component.type}:{escape(c.component.name)}",
            "type": lambda c: f"{c.component.type}",
            "name": lambda c: escape(c.component.name),
            "user": lambda c: escape(str(self._user(c))),
            "point": lambda c: str.__str__(c.point),
        }
        chosen = tuple((f, getters[f]) for f in fields)
        return lambda ctx: template.format_map({f: get(ctx) for f, get in chosen})

    def key_for(self, ctx: HookContext) -> str:
        """The bucket key of ``ctx``."""
        return self._key(ctx)

    # -- the hot path ---------------------------------------------------------------------
    def execute(self, ctx: HookContext) -> HookOutput:
        """Take a token; on none, do what ``action`` says. At after points, remember."""
        point = ctx.point
        if RUNNING_REPLAYS and current_replay() is not None and replay_serves() is not False:
            # What a replay serves from its recording (and the agents and workflows it
            # runs again around its calls) is no live traffic: no token is taken, nothing
            # refused, no result remembered. What it runs live is limited as usual.
            if point == MODEL_BEFORE:
                ctx.metadata.pop(_MODEL_KEY, None)  # a parent call's
                ctx.metadata.pop(_MODEL_ESTIMATE, None)
            return None
        if point == MODEL_BEFORE:
            return self._before_model(ctx)
        if point == MODEL_AFTER:
            return self._after_model(ctx)
        if point in _AFTER:
            if self._remember:
                self._store(ctx)
            return None
        key = self._key(ctx)
        if self.shared is not None:
            return self._take_shared(ctx, key)
        wait, tokens, granted = self._buckets.take(key, self._max_wait)
        if granted and wait == 0.0:
            # The common case inline (the hot path); _decide does the same for the rest.
            meta = ctx.metadata
            meta[LIMIT] = self._limit
            meta[REMAINING] = str(int(tokens)) if tokens >= 1.0 else "0"
            meta[RESET] = f"{(self._burst - tokens) / self._rate:.3f}"
            if RETRY_AFTER in meta:  # inherited from a parent context
                del meta[RETRY_AFTER]
            self.allowed += 1
            self._last = (key, True, "allow", tokens, 0.0)
            return None
        return self._decide(ctx, key, wait, tokens, granted,
                            lambda: self._buckets.give_back(key))

    def _decide(self, ctx: HookContext, key: str, wait: float, tokens: float,
                granted: bool, refund: Callable[[], object]) -> HookOutput:
        """What a take of ``key`` means: metadata, counters, and the action when refused.
        ``refund`` gives a reserved token back (a waiter cancelled before its turn)."""
        meta = ctx.metadata
        meta[LIMIT] = self._limit
        meta[REMAINING] = str(int(tokens)) if tokens >= 1.0 else "0"
        meta[RESET] = f"{(self._burst - tokens) / self._rate:.3f}"
        if granted:
            if RETRY_AFTER in meta:  # inherited from a parent context
                del meta[RETRY_AFTER]
            if wait == 0.0:
                self.allowed += 1
                self._last = (key, True, "allow", tokens, 0.0)
                return None
            self.limited += 1
            self.waited += 1
            self._last = (key, False, "wait", tokens, wait)
            return self._wait(wait, refund)
        self.limited += 1
        retry = f"{wait:.3f}"
        meta[RETRY_AFTER] = retry
        action = self._action
        if action == "redirect" and _REDIRECTED not in meta:
            self.redirected += 1
            meta[_REDIRECTED] = key
            self._last = (key, False, "redirect", tokens, wait)
            return Redirect(self.config.redirect_to or "")
        if action == "serve_cached":
            found, value = self._lookup(key, ctx)
            if found:
                self.served_cached += 1
                self._last = (key, False, "serve_cached", tokens, wait)
                return Replace(value)
        self.cancelled += 1
        self._last = (key, False, "cancel", tokens, wait)
        over = (f" (a wait of {wait:.3f} s is over max_wait {self.config.max_wait:g} s)"
                if action == "wait" else "")
        return Cancel(f"rate limit exceeded for {key!r}: retry after {retry} s{over}")

    async def _wait(self, seconds: float, refund: Callable[[], object]) -> None:
        """Sleep until a reservation is due; a caller cancelled meanwhile gives it back
        (else every cancelled waiter would shrink the capacity of everyone after it)."""
        try:
            await self._sleep(seconds)
        except asyncio.CancelledError:
            out = refund()
            if inspect.isawaitable(out):
                await self._refund_shared(out)
            raise

    async def _refund_shared(self, refund: Awaitable[object]) -> None:
        """Run a shared give-back to its end even if this caller is cancelled again: it is
        one compare-and-set, and a backend that cannot answer keeps the reservation (what
        happened before give-backs existed)."""
        task = asyncio.ensure_future(refund)
        self._refunds.add(task)
        task.add_done_callback(self._refund_done)
        with contextlib.suppress(Exception):
            await asyncio.shield(task)

    def _refund_done(self, task: asyncio.Future[object]) -> None:
        self._refunds.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a failed give-back is not an unhandled error

    # -- shared buckets ---------------------------------------------------------------------
    async def _take_shared(self, ctx: HookContext, key: str) -> HookResult | None:
        """Take a token of ``key``'s bucket in the shared backend, then decide as the local
        path does. A backend failure raises ``SharedCounterError`` (the error policy)."""
        backend = self.shared
        assert backend is not None
        now = self._clock.now
        rate, burst, max_wait = self._rate, self.config.burst, self._max_wait
        horizon = self._bucket_ttl

        def take(state: Any) -> tuple[list[float], tuple[float, float, bool]]:
            return shared_bucket_take(state, now(), rate, burst, max_wait, horizon)

        wait, tokens, granted = await backend.update_expiring(
            counter_key(self.shared_key, "key", key), take, self._bucket_ttl)
        self._count_shared(key, tokens, granted and wait == 0.0)
        out = self._decide(ctx, key, wait, tokens, granted,
                           lambda: self._give_back_shared(key))
        return await _settled(out)

    async def _give_back_shared(self, key: str) -> None:
        backend = self.shared
        assert backend is not None
        now = self._clock.now
        rate, burst, horizon = self._rate, self.config.burst, self._bucket_ttl

        def give(state: Any) -> tuple[list[float] | None, None]:
            return shared_bucket_give_back(state, now(), rate, burst, horizon)

        await backend.update_expiring(counter_key(self.shared_key, "key", key), give,
                                      self._bucket_ttl)

    def _count_shared(self, key: str, tokens: float, allowed: bool) -> None:
        with self._cache_lock:
            keys = self._shared_keys
            st = keys.get(key)
            if st is None:
                st = keys[key] = _KeyState(tokens, 0.0)
                if len(keys) > self.config.max_keys:
                    keys.popitem(last=False)
            else:
                keys.move_to_end(key)
            st.tokens = tokens
            if allowed:
                st.allowed += 1
            else:
                st.limited += 1

    # -- model calls ----------------------------------------------------------------------
    def model_limit(self, key: str) -> ModelLimit | None:
        """The limit of the model ``key`` (``"provider/model"``): its own, its provider's
        (``"provider/*"``) or the default (``"*"``); None when it is not limited."""
        limits = self._model_limits
        if key in limits:
            return limits[key]
        models = self.config.models
        provider = key.partition("/")[0]
        found = models.get(key) or models.get(f"{provider}/*") or models.get("*")
        if len(limits) >= 4096:
            limits.clear()
        limits[key] = found
        return found

    def _before_model(self, ctx: HookContext) -> HookOutput:
        data = ctx.data
        key = model_key(data)
        limit = self.model_limit(key)
        meta = ctx.metadata
        if limit is None:
            meta.pop(_MODEL_KEY, None)  # inherited from a call this one shadows
            meta.pop(_MODEL_ESTIMATE, None)
            return None
        tpm = limit.tokens_per_minute
        estimate = 0
        if tpm is not None:
            params = data.get("params")
            estimate = estimate_prompt_tokens(params, self.tokenizer)
            cap = params.get("max_tokens") if isinstance(params, dict) else None
            if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0:
                estimate += cap
            if estimate > tpm:
                self.limited += 1
                self.cancelled += 1
                return Cancel(
                    f"model call to {key!r} is estimated at {estimate} tokens, more than "
                    f"its limit of {tpm:g} tokens per minute")
        if self.shared is not None:
            return self._before_model_shared(ctx, key, limit, estimate)
        with self._model_lock:
            st = self._model_state(key, limit, self._clock.monotonic())
            wait_requests, wait_tokens, granted = _take_model(
                st, estimate, self._action == "wait", self._max_wait)
            self._count_model(st, st, max(wait_requests, wait_tokens), granted)
        self._model_metadata(meta, limit, st.requests, st.tokens)
        return self._model_outcome(ctx, key, wait_requests, wait_tokens, granted, estimate,
                                   lambda: self._model_give_back(key, estimate))

    def _model_give_back(self, key: str, estimate: int) -> None:
        with self._model_lock:
            st = self._models.get(key)
            if st is not None:
                st.refill(self._clock.monotonic())
                st.give_back(estimate)

    def _model_state(self, key: str, limit: ModelLimit, now: float) -> _ModelState:
        """The local state of model ``key``, refilled to ``now`` (under the model lock)."""
        st = self._models.get(key)
        if st is None:
            st = self._models[key] = _ModelState(limit, now)
            if len(self._models) > self.config.max_keys:
                self._models.popitem(last=False)
        else:
            self._models.move_to_end(key)
            st.refill(now)
        return st

    @staticmethod
    def _count_model(st: _ModelState, levels: _ModelState, wait: float, granted: bool
                     ) -> None:
        if granted and wait == 0.0:
            st.allowed += 1
        else:
            st.limited += 1
            st.waited += granted
        st.requests, st.tokens = levels.requests, levels.tokens

    @staticmethod
    def _model_metadata(meta: dict[str, str], limit: ModelLimit, requests: float,
                        tokens: float) -> None:
        if limit.requests_per_minute is not None:
            meta[REMAINING_REQUESTS] = str(max(0, int(requests)))
        if limit.tokens_per_minute is not None:
            meta[REMAINING_TOKENS] = str(max(0, int(tokens)))

    async def _before_model_shared(self, ctx: HookContext, key: str, limit: ModelLimit,
                                   estimate: int) -> HookResult | None:
        backend = self.shared
        assert backend is not None
        now = self._clock.now
        may_wait, max_wait = self._action == "wait", self._max_wait

        def take(state: Any) -> tuple[list[float], tuple[float, float, float, float, bool]]:
            at = now()
            st = _ModelState(limit, at)
            if state is not None:
                st.requests, st.tokens, st.last = (float(v) for v in state)
                st.refill(at)
            waits = _take_model(st, estimate, may_wait, max_wait)
            return [st.requests, st.tokens, st.last], (st.requests, st.tokens, *waits)

        requests, tokens, wait_requests, wait_tokens, granted = await backend.update_expiring(
            counter_key(self.shared_key, "model", key), take, self._model_ttl)
        levels = _ModelState(limit, 0.0)
        levels.requests, levels.tokens = requests, tokens
        with self._model_lock:
            st = self._model_state(key, limit, self._clock.monotonic())
            self._count_model(st, levels, max(wait_requests, wait_tokens), granted)
        self._model_metadata(ctx.metadata, limit, requests, tokens)
        out = self._model_outcome(ctx, key, wait_requests, wait_tokens, granted, estimate,
                                  lambda: self._model_give_back_shared(key, limit, estimate))
        return await _settled(out)

    async def _model_give_back_shared(self, key: str, limit: ModelLimit, estimate: int
                                      ) -> None:
        backend = self.shared
        assert backend is not None
        await backend.update_expiring(
            counter_key(self.shared_key, "model", key), _shared_model_update(
                limit, self._clock.now, lambda levels: levels.give_back(estimate)),
            self._model_ttl)

    def _model_outcome(self, ctx: HookContext, key: str, wait_requests: float,
                       wait_tokens: float, granted: bool, estimate: int,
                       refund: Callable[[], object]) -> HookOutput:
        """What a take for model ``key`` means (metadata, counters, the action); ``refund``
        gives a reservation back (a waiter cancelled before its turn)."""
        meta = ctx.metadata
        wait = max(wait_requests, wait_tokens)
        if granted:
            meta[_MODEL_KEY] = key
            meta[_MODEL_ESTIMATE] = str(estimate)
            meta.pop(RETRY_AFTER, None)
            if wait == 0.0:
                self.allowed += 1
                return None
            self.limited += 1
            self.waited += 1
            return self._wait(wait, refund)
        self.limited += 1
        meta[RETRY_AFTER] = f"{wait:.3f}"
        short = "requests" if wait_requests >= wait_tokens else "tokens"
        fallback = self.config.model_fallback
        if fallback is not None and fallback != key and _REDIRECTED not in meta:
            self.redirected += 1
            meta[_REDIRECTED] = key
            return Redirect(fallback)
        self.cancelled += 1
        over = (f"; a wait of {wait:.3f} s is over max_wait {self.config.max_wait:g} s"
                if self._action == "wait" else "")
        return Cancel(f"rate limit exceeded for model {key!r} ({short} per minute): retry "
                      f"after {wait:.3f} s{over}")

    def _after_model(self, ctx: HookContext) -> Awaitable[None] | None:
        """Correct the tokens taken before the call with the tokens it really used."""
        source = ctx.parent if ctx.parent is not None and _MODEL_KEY in ctx.parent.metadata \
            else ctx
        key = source.metadata.get(_MODEL_KEY)
        if key is None:
            return None
        # Popped from the before context: a retried call corrects its estimate once.
        estimate = source.metadata.pop(_MODEL_ESTIMATE, None)
        result = ctx.data.get("result")
        usage = result.get("usage") if isinstance(result, dict) else None
        total = usage.get("total_tokens") if isinstance(usage, dict) else None
        if not isinstance(total, int) or isinstance(total, bool) or total < 0:
            return None
        if self.shared is not None:
            return self._after_model_shared(key, total, int(estimate or 0))
        with self._model_lock:
            st = self._models.get(key)
            if st is None:
                return None
            st.used += total
            if st.limit.tokens_per_minute is not None:
                st.refill(self._clock.monotonic())
                st.charge(total - (int(estimate) if estimate is not None else 0))
        return None

    async def _after_model_shared(self, key: str, total: int, estimate: int) -> None:
        limit = self.model_limit(key)
        with self._model_lock:
            st = self._models.get(key)
            if st is not None:
                st.used += total
        if limit is None or limit.tokens_per_minute is None or total == estimate:
            return
        backend = self.shared
        assert backend is not None
        await backend.update_expiring(
            counter_key(self.shared_key, "model", key), _shared_model_update(
                limit, self._clock.now, lambda levels: levels.charge(total - estimate)),
            self._model_ttl)

    def model_stats(self) -> dict[str, ModelRateStats]:
        """Counters and bucket levels of every model tracked now."""
        with self._model_lock:
            return {k: ModelRateStats(
                allowed=s.allowed, limited=s.limited, waited=s.waited, tokens=s.used,
                requests_left=s.requests if s.limit.requests_per_minute is not None else None,
                tokens_left=s.tokens if s.limit.tokens_per_minute is not None else None)
                for k, s in self._models.items()}

    # -- serve_cached -----------------------------------------------------------------------
    def _cache_key(self, key: str, ctx: HookContext) -> str | None:
        try:
            return key + "\x00" + _ENCODE(ctx.data.get("params")).decode()
        except (TypeError, msgspec.EncodeError):
            return None

    def _store(self, ctx: HookContext) -> None:
        if "result" not in ctx.data:
            return
        ckey = self._cache_key(self._key(ctx), ctx)
        if ckey is None:
            return
        result = ctx.data["result"]
        if type(result) not in _IMMUTABLE:
            # Kept as JSON and decoded afresh for each caller it is served to: the caller
            # that got the result (or one served it) changing it cannot change the cache.
            try:
                result = _Frozen(_JSON_ENCODE(result))
            except (TypeError, ValueError, msgspec.EncodeError):
                return
            size = len(result.blob) + _ENTRY_OVERHEAD
        else:
            size = sys.getsizeof(result)  # a str or int may be large too
        size += sys.getsizeof(ckey)  # the key holds the parameters' JSON
        limit = self.config.cache_max_bytes
        cache = self._cache
        with self._cache_lock:
            old = cache.pop(ckey, None)
            if old is not None:
                self._cache_bytes -= old[2]
            if size > limit:
                # Not remembered, and the older result of these parameters is gone too:
                # what is served is always the last result.
                return
            cache[ckey] = (self._clock.monotonic(), result, size)
            self._cache_bytes += size
            while len(cache) > self.config.cache_size or self._cache_bytes > limit:
                self._cache_bytes -= cache.popitem(last=False)[1][2]

    def _lookup(self, key: str, ctx: HookContext) -> tuple[bool, Any]:
        ckey = self._cache_key(key, ctx)
        if ckey is None:
            return False, None
        with self._cache_lock:
            entry = self._cache.get(ckey)
            if entry is None:
                return False, None
            stored, value, size = entry
            ttl = self.config.cache_ttl
            if ttl is not None and self._clock.monotonic() - stored > ttl:
                del self._cache[ckey]
                self._cache_bytes -= size
                return False, None
        if isinstance(value, _Frozen):
            return True, msgspec.json.decode(value.blob)
        return True, value

    # -- reports ----------------------------------------------------------------------------
    @property
    def last_decision(self) -> RateLimitDecision | None:
        """The most recent decision at a before point (None before the first call)."""
        last = self._last
        if last is None:
            return None
        key, allowed, action, tokens, wait = last
        reset = (self.config.burst - tokens) / self.config.rate
        remaining = int(tokens) if tokens >= 1.0 else 0
        metadata = {LIMIT: self._limit, REMAINING: str(remaining), RESET: f"{reset:.3f}"}
        if not allowed and action != "wait":
            metadata[RETRY_AFTER] = f"{wait:.3f}"
        return RateLimitDecision(key=key, allowed=allowed, action=action,
                                 limit=self.config.burst, remaining=remaining, reset=reset,
                                 retry_after=wait, metadata=metadata)

    def stats(self) -> RateLimitStats:
        """Counters since the hook was made, per-key counters and the last decision."""
        if self.shared is not None:
            with self._cache_lock:
                by_key = {k: KeyStats(allowed=s.allowed, limited=s.limited, tokens=s.tokens)
                          for k, s in self._shared_keys.items()}
        else:
            by_key = self._buckets.snapshot()
        return RateLimitStats(
            allowed=self.allowed, limited=self.limited, waited=self.waited,
            cancelled=self.cancelled, redirected=self.redirected,
            served_cached=self.served_cached, keys=len(by_key), by_key=by_key,
            cached_results=len(self._cache), last=self.last_decision,
            models=self.model_stats(), cached_bytes=self._cache_bytes,
        )
