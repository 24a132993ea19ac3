"""One way to run an operation with hooks around it, for tools and agents alike.

Every :class:`~llmspell.hooks.HookResult` has one meaning here (docs/runtime.md has the
table):

* **before** the operation: ``Cancel`` raises :class:`~llmspell.errors.OperationCancelled`;
  ``Modified`` replaces the parameters (the hook returns ``{"params": {...}}``); ``Replace``
  returns its value without running the operation; ``Redirect`` runs the named tool/agent
  instead; ``Retry`` waits and asks the before hooks again (up to ``max_attempts``);
  ``Fork`` runs the listed operations concurrently with this one and attaches their
  results; ``Cache`` serves a cached result for the key, or caches this one under it.
* **on error**: ``Replace`` recovers with its value; ``Retry`` re-runs the operation after
  the delay (up to ``max_attempts``); ``Redirect`` falls back to the named tool/agent;
  ``Cancel`` raises ``OperationCancelled`` (chained to the error); anything else re-raises.
* **after**: ``Modified`` replaces the result (``{"result": ...}``); ``Replace`` replaces it
  with its value; ``Cancel`` discards it and raises ``OperationCancelled``; ``Retry`` re-runs
  the operation; ``Redirect`` runs the named tool/agent and returns its result; ``Fork`` runs
  the operations and attaches their results; ``Cache`` caches the result for the key, and
  a later call of the same component with the same parameters is served from it.
* ``Skipped`` and ``Continue`` change nothing.

``Cache`` keys are scoped to the component (its type and name): two tools returning the
same key name two entries. ``Cache(key, shared=True)`` opts out (one entry for every
component that uses the key).
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from llmspell.core.clock import SYSTEM_CLOCK, Clock
from llmspell.core.errors import OperationCancelled
from llmspell.core.text import error_text
from llmspell.hooks.context import ComponentId, HookContext
from llmspell.hooks.executor import NO_HOOKS
from llmspell.hooks.result import (
    MAX_RETRY_DELAY,
    Cache,
    Cancel,
    ForkOperation,
    Modified,
    Redirect,
    Replace,
    Retry,
)
from llmspell.runtime.runs.scope import ActiveRun, enter_step, exit_step

__all__ = ["CallOutcome", "CallPoints", "ResultCache", "cache_key", "run_hooked"]

Invoke = Callable[[dict[str, Any], int], Awaitable[Any]]
RedirectTo = Callable[[str, dict[str, Any], "HookContext | None"], Awaitable[Any]]
ForkTo = Callable[[ForkOperation, "HookContext | None"], Awaitable[Any]]


class CallPoints(msgspec.Struct, frozen=True):
    """The three points around an operation."""

    before: str
    after: str
    error: str


class CallOutcome(msgspec.Struct, kw_only=True):
    """What a hooked call produced, and how: attempts made, served from cache, replaced by a
    hook, redirected, and the results of forked operations."""

    result: Any
    attempts: int = 1
    cached: bool = False
    replaced: bool = False
    redirected_to: str | None = None
    forks: list[dict[str, Any]] = []
    correlation_id: str | None = None
    rewritten: bool = False
    """An after hook returned ``Modified``: the result is what the hook made of it."""


_FINGERPRINT = msgspec.json.Encoder(order="sorted")


def cache_key(component: ComponentId, cache: Cache) -> str:
    """The key ``cache`` stores under for ``component``: ``"<type>:<len>:<name>:<key>"``
    (the name's length keeps names with ``:`` apart), or ``cache.key`` as is when
    ``cache.shared``."""
    if cache.shared:
        return cache.key
    name = component.name
    return f"{component.type.value}:{len(name)}:{name}:{cache.key}"


def _fingerprint(component: ComponentId, params: dict[str, Any]) -> bytes | None:
    """What identifies a call (component and parameters), or None if not JSON-encodable."""
    try:
        return _FINGERPRINT.encode((component.type.value, component.name, params))
    except (TypeError, ValueError, msgspec.EncodeError):
        return None


class ResultCache:
    """A TTL + LRU cache for the ``Cache`` result. Thread-safe.

    Besides keyed entries it keeps *aliases*: a call's fingerprint (component and
    parameters) -> the key its result was cached under by an after point, so the next
    identical call is served before it runs (both bounded by ``max_entries``)."""

    def __init__(self, max_entries: int = 1024, clock: Clock = SYSTEM_CLOCK) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._data: OrderedDict[str, tuple[float | None, Any]] = OrderedDict()
        self._aliases: OrderedDict[bytes, str] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.generation = 0
        """Bumped by :meth:`clear`: a result computed by a call that started before the
        clear is not stored (``put(..., since=)``), or the clear would be undone."""

    @property
    def aliased(self) -> bool:
        """True when some call's result was cached by an after point."""
        return bool(self._aliases)

    def alias(self, fingerprint: bytes, key: str) -> None:
        """Remember that the call ``fingerprint`` is answered by the entry ``key``."""
        with self._lock:
            self._aliases[fingerprint] = key
            self._aliases.move_to_end(fingerprint)
            while len(self._aliases) > self.max_entries:
                self._aliases.popitem(last=False)

    def get_aliased(self, fingerprint: bytes) -> tuple[bool, Any]:
        """(True, value) when ``fingerprint`` has an alias to a live entry."""
        key = self._aliases.get(fingerprint)
        if key is None:
            return False, None
        hit, value = self.get(key)
        if not hit:
            with self._lock:
                self._aliases.pop(fingerprint, None)
        return hit, value

    def get(self, key: str) -> tuple[bool, Any]:
        """(True, value) for a live entry, else (False, None)."""
        with self._lock:
            entry = self._data.get(key)
            if entry is not None:
                expires, value = entry
                if expires is None or expires > self._clock.monotonic():
                    self._data.move_to_end(key)
                    self.hits += 1
                    return True, value
                del self._data[key]
            self.misses += 1
            return False, None

    def put(self, key: str, value: Any, ttl: float | None, *,
            since: int | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (None: until evicted); not when
        the cache was cleared after ``since`` (the :attr:`generation` the call began in)."""
        with self._lock:
            if since is not None and since != self.generation:
                return
            expires = None if ttl is None else self._clock.monotonic() + ttl
            self._data[key] = (expires, value)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._data.clear()
            self._aliases.clear()
            self.generation += 1

    def __len__(self) -> int:
        return len(self._data)


def _retry_delay(delay: float, exc: BaseException) -> float:
    """The hook's delay, or the error's ``retry_after`` when that is longer (capped)."""
    asked = getattr(exc, "retry_after", None)
    if isinstance(asked, int | float) and asked > delay:
        return float(min(asked, MAX_RETRY_DELAY))
    return delay


async def _run_forks(
    operations: tuple[ForkOperation, ...], fork: ForkTo, ctx: HookContext | None
) -> list[dict[str, Any]]:
    async def one(op: ForkOperation) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": op.type, "target": op.target}
        try:
            entry["result"] = await fork(op, ctx)
        except Exception as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"
        return entry

    return list(await asyncio.gather(*(one(op) for op in operations)))


async def run_hooked(
    system: Any,
    *,
    points: CallPoints,
    component: ComponentId,
    base: dict[str, Any],
    params: dict[str, Any],
    invoke: Invoke,
    redirect: RedirectTo,
    fork: ForkTo,
    cache: ResultCache,
    parent: HookContext | None = None,
    correlation_id: str | None = None,
    error_data: Callable[[BaseException, dict[str, Any]], dict[str, Any]] | None = None,
    step_input: Any = None,
    step_digest: Callable[[ActiveRun], str] | None = None,
) -> CallOutcome:
    """Run ``invoke(params, attempt)`` with ``points`` dispatched around it (see the module
    docstring for what each result does). ``base`` is merged into every context's data;
    ``error_data(exc, data)`` adds keys to the error point's ``data`` (which holds the
    failed attempt's ``params``). A ``Retry`` at the error point
    waits at least the ``retry_after`` the error carries (a provider's ``Retry-After``),
    capped at :data:`~llmspell.hooks.result.MAX_RETRY_DELAY`.

    Inside a recorded run the call is one step of it (:mod:`llmspell.runtime.runs`): what
    ``invoke`` produced and every hook decision are recorded, and a replay serves a tool's or
    model's result from the recording instead of calling ``invoke``. ``step_input`` is what
    the step's input digest is taken from when it is not ``params`` (a model call digests
    its request in one canonical form, hooked or not); ``step_digest(run)``, when given,
    takes that digest (a model call continues its conversation's)."""
    opened = enter_step(component.type.value, component.name,
                        params if step_input is None else step_input, step_digest)
    if opened is None:
        return await _run_hooked(system, points, component, base, params, invoke, redirect,
                                 fork, cache, parent, correlation_id, error_data)
    try:
        outcome = await _run_hooked(system, points, component, base, params,
                                    opened[0].calls(invoke),
                                    redirect, fork, cache, parent, correlation_id, error_data)
    except BaseException as exc:
        exit_step(opened, None, exc)
        raise
    exit_step(opened, outcome.result, None)
    return outcome


async def _run_hooked(
    system: Any,
    points: CallPoints,
    component: ComponentId,
    base: dict[str, Any],
    params: dict[str, Any],
    invoke: Invoke,
    redirect: RedirectTo,
    fork: ForkTo,
    cache: ResultCache,
    parent: HookContext | None,
    correlation_id: str | None,
    error_data: Callable[[BaseException, dict[str, Any]], dict[str, Any]] | None,
) -> CallOutcome:
    dispatch = system.dispatch
    # A point without hooks is skipped with one dict lookup: no coroutine, no context.
    chains = system.registry.chains
    attempt = 1
    retry_limit = 1
    rewritten = False
    forks: list[dict[str, Any]] = []
    correlation = parent.correlation_id if parent is not None else correlation_id

    # -- before -----------------------------------------------------------------------
    while True:
        if points.before in chains:
            outcome, ctx = await dispatch(points.before, component,
                                          {**base, "params": params, "attempt": attempt},
                                          parent=parent, correlation_id=correlation)
        else:
            outcome, ctx = NO_HOOKS, None
        if ctx is not None:
            correlation = ctx.correlation_id
        result = outcome.result
        if isinstance(result, Cancel):
            raise OperationCancelled(points.before, result.reason, outcome.decided_by)
        if isinstance(result, Modified) and ctx is not None:
            params = dict(ctx.data.get("params", params))
        if isinstance(result, Retry) and attempt < result.max_attempts:
            await asyncio.sleep(result.delay)
            attempt += 1
            continue
        break
    if isinstance(result, Replace):
        return CallOutcome(result=result.value, replaced=True, correlation_id=correlation)
    if isinstance(result, Redirect):
        value = await redirect(result.target, params, ctx)
        return CallOutcome(result=value, redirected_to=result.target,
                           correlation_id=correlation)
    before_key: tuple[str, float | None] | None = None
    if outcome.cache is not None:
        before_key = (cache_key(component, outcome.cache), outcome.cache.ttl)
        hit, value = cache.get(before_key[0])
        if hit:
            return CallOutcome(result=value, cached=True, correlation_id=correlation)
    if cache.aliased:  # an after point cached an earlier call: is it this one?
        fingerprint = _fingerprint(component, params)
        if fingerprint is not None:
            hit, value = cache.get_aliased(fingerprint)
            if hit:
                return CallOutcome(result=value, cached=True, correlation_id=correlation)
    pending_forks: tuple[ForkOperation, ...] = tuple(
        op for f in outcome.forks for op in f.operations
    )
    before_ctx = ctx
    generation = cache.generation  # a clear() while the call runs: its result is stale

    # -- the operation, with errors and retries ------------------------------------------
    attempt = 1
    while True:
        try:
            if pending_forks:
                main = asyncio.ensure_future(invoke(params, attempt))
                forks.extend(await _run_forks(pending_forks, fork, before_ctx))
                pending_forks = ()
                value = await main
            else:
                value = await invoke(params, attempt)
        except OperationCancelled:
            raise
        except Exception as exc:
            if points.error not in chains:
                raise
            err_data = {**base, "params": params, "attempt": attempt,
                        "error": error_text(exc), "error_type": type(exc).__name__}
            if error_data is not None:
                err_data.update(error_data(exc, err_data))
            err_outcome, err_ctx = await dispatch(
                points.error, component, err_data,
                parent=before_ctx or parent, correlation_id=correlation,
            )
            verdict = err_outcome.result
            if isinstance(verdict, Retry):
                retry_limit = max(retry_limit, verdict.max_attempts)
                if attempt < retry_limit:
                    await asyncio.sleep(_retry_delay(verdict.delay, exc))
                    attempt += 1
                    continue
                raise
            if isinstance(verdict, Replace):
                value = verdict.value
                break
            if isinstance(verdict, Redirect):
                value = await redirect(verdict.target, params, err_ctx)
                return CallOutcome(result=value, attempts=attempt,
                                   redirected_to=verdict.target, forks=forks,
                                   correlation_id=correlation)
            if isinstance(verdict, Cancel):
                raise OperationCancelled(points.error, verdict.reason,
                                         err_outcome.decided_by) from exc
            raise

        # -- after ------------------------------------------------------------------------
        if points.after not in chains:
            break
        out, after_ctx = await dispatch(
            points.after, component,
            {**base, "params": params, "attempt": attempt, "result": value},
            parent=before_ctx or parent, correlation_id=correlation,
        )
        verdict = out.result
        if isinstance(verdict, Retry):
            retry_limit = max(retry_limit, verdict.max_attempts)
            if attempt < retry_limit:
                await asyncio.sleep(verdict.delay)
                attempt += 1
                continue
        if isinstance(verdict, Cancel):
            raise OperationCancelled(points.after, verdict.reason, out.decided_by)
        if isinstance(verdict, Modified) and after_ctx is not None:
            value = after_ctx.data.get("result", value)
            rewritten = True
        elif isinstance(verdict, Replace):
            value = verdict.value
        elif isinstance(verdict, Redirect):
            value = await redirect(verdict.target, params, after_ctx)
            return CallOutcome(result=value, attempts=attempt, redirected_to=verdict.target,
                               forks=forks, correlation_id=correlation)
        if out.forks:
            forks.extend(await _run_forks(
                tuple(op for f in out.forks for op in f.operations), fork, after_ctx))
        if out.cache is not None:
            key = cache_key(component, out.cache)
            cache.put(key, value, out.cache.ttl, since=generation)
            fingerprint = _fingerprint(component, params)
            if fingerprint is not None and generation == cache.generation:
                cache.alias(fingerprint, key)
        break

    if before_key is not None:
        cache.put(before_key[0], value, before_key[1], since=generation)
    return CallOutcome(result=value, attempts=attempt, forks=forks, correlation_id=correlation,
                       rewritten=rewritten)

