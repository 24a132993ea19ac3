"""The hook executor: runs a point's chain and folds the results.

The fold rules live in one place, :meth:`HookExecutor._fold`, readable top to bottom:

* ``None`` and ``Continue``: go on.
* ``Modified(data)``: ``ctx.data = data``; the next hook sees it; the chain's result is
  ``Modified(final data)`` unless something decisive follows.
* ``Cancel``, ``Replace``, ``Redirect``: stop the chain; that result is the chain's result.
* ``Retry``: the first one is the chain's result unless a later hook stops the chain.
* ``Fork``: collected (all of them) in ``ChainResult.forks``.
* ``Cache``: the first one is kept in ``ChainResult.cache``.
* ``Skipped``: go on.
* A failure (exception, ``SystemExit``, timeout, bad return value) is recorded, then
  follows the hook's error policy: ``fail_open`` goes on, ``fail_closed`` becomes
  ``Cancel``, ``raise`` raises :class:`~llmspell.errors.HookExecutionError`.
  ``KeyboardInterrupt`` and task cancellation propagate.
* A hook whose circuit breaker refuses the call: a fail-open hook is skipped, a
  fail-closed one becomes ``Cancel("breaker open: ...", breaker=<hook>)``, which callers
  raise as :class:`~llmspell.errors.CircuitOpenError`.
* A hook that dispatches the point it runs at (directly, through ``emit`` or a state write,
  or two hooks ping-ponging between points) recurses until Python's recursion limit; that
  ``RecursionError`` is reported as what it is, an
  :class:`~llmspell.errors.OperationDepthError` naming the points, handed out of every
  dispatch of the loop but the outermost, where the policy of the hook that started the
  loop decides, once (see :func:`_looped`). Nothing on the hot path counts depth.

The common case, every hook in the chain sync with no predicate, every breaker closed and
nothing to record, runs as a plain function (:meth:`HookExecutor._run_fast`): no coroutine is
built. It hands the chain to the full loop at the first hook that returns anything but
``None`` or a ``Continue`` (a new ``Continue()`` is as fast as ``None``), or raises. The full
loop serves both the async API (:meth:`execute`) and the sync one (:meth:`execute_sync`): it
is a coroutine that, in blocking mode, never suspends (an awaitable a hook returns is run to
completion on a per-thread loop instead of awaited), so the sync facade drives it with a
single ``send(None)``.

Timing (breakers and the monitor need it): on the fast path one clock read per hook, the
end of one hook being the start of the next, so a hook's duration includes the executor's
step between two hooks (tens of ns; for the first, the chain's plan lookup); the dispatch
is timed from before the chain's plan is looked up to after the last hook. Every call is
timed (a breaker must see every slow call); counts are exact and percentiles are over the
most recent samples (see :mod:`llmspell.hooks.monitor`).

Replays (``system.runs.replay``) keep to themselves: a dispatch made for a replay
(:func:`~llmspell.core.run_scope.current_replay` is set) runs on an executor of that replay's
own (:meth:`HookExecutor.for_replay`), with breakers that start closed, a monitor and a
failure log of its own, and no listeners: a replay's failing or slow hook never opens a live
breaker (a fail-open guard skipped for live calls afterwards) nor shows in live stats, and an
open live breaker never makes a replay skip a hook that ran in the recording. Outside
replays this costs one test of an empty dict per dispatch.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
import threading
import types
import weakref
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from contextvars import ContextVar
from functools import partial
from itertools import repeat
from time import perf_counter_ns
from typing import Any, TypeAlias, cast

import msgspec

from llmspell.core.clock import SYSTEM_CLOCK, Clock
from llmspell.core.errors import (
    HookExecutionError,
    HookTimeoutError,
    InvalidHookResultError,
    OperationDepthError,
    SyncDispatchError,
)
from llmspell.core.loops import run_blocking
from llmspell.core.redact import get_logger
from llmspell.core.run_scope import RUNNING_REPLAYS, current_replay
from llmspell.core.speedups import native
from llmspell.hooks.breaker import (
    BreakerConfig,
    BreakerListener,
    BreakerSnapshot,
    BreakerState,
    BreakerTransition,
    CircuitBreaker,
)
from llmspell.hooks.context import HookContext
from llmspell.hooks.hook import cancel_requested
from llmspell.hooks.metadata import ErrorPolicy
from llmspell.hooks.monitor import LatencySeries, PerformanceMonitor
from llmspell.hooks.points import parse_point
from llmspell.hooks.registry import HookRegistry, RegisteredHook
from llmspell.hooks.result import (
    CONTINUE,
    Cache,
    Cancel,
    Continue,
    Fork,
    HookResult,
    Modified,
    Redirect,
    Replace,
    Retry,
    Skipped,
    cancelled_error,
)

__all__ = ["ChainResult", "ContinuedRecords", "HookExecutor", "HookFailure", "HookRecord",
           "NO_HOOKS"]

logger = get_logger("llmspell.hooks")

# Result type -> fold action. A dict lookup on type() is cheaper than an isinstance chain.
_GO_ON, _MODIFY, _STOP, _RETRY, _FORK, _CACHE = range(6)
_ACTION: dict[type, int] = {
    Continue: _GO_ON,
    Skipped: _GO_ON,
    Modified: _MODIFY,
    Cancel: _STOP,
    Replace: _STOP,
    Redirect: _STOP,
    Retry: _RETRY,
    Fork: _FORK,
    Cache: _CACHE,
}


class HookRecord(msgspec.Struct, frozen=True, gc=False):
    """One hook's part in a dispatch: its name, result kind, duration and, for a hook that was
    skipped or failed, why (``"circuit open: <hook>"``, the error message)."""

    hook: str
    kind: str
    duration_ns: int
    detail: str | None = None


class ContinuedRecords(tuple[HookRecord, ...]):
    """The records of a dispatch whose hooks all went on, run by the fast path (each kind
    ``continue``, no detail), that also keeps the hooks' ``names`` and ``durations_ns`` as
    columns: a hook event takes those as they are instead of reading every record."""

    names: tuple[str, ...]
    durations_ns: list[int]


class HookFailure(msgspec.Struct, frozen=True, kw_only=True):
    """A hook that raised, timed out or returned a bad value, and what the policy made of it."""

    hook: str
    point: str
    error_type: str
    message: str
    policy: ErrorPolicy
    correlation_id: str
    at: float


class ChainResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a dispatch produced.

    ``result`` is the decisive result: ``Cancel``/``Replace``/``Redirect`` if a hook stopped
    the chain, else the first ``Retry``, else ``Modified(final data)`` if data changed, else
    ``Continue``. ``ctx.data`` always holds the final data. ``decided_by`` names the hook that
    produced ``result`` (None for a plain Continue).
    """

    result: HookResult = CONTINUE
    decided_by: str | None = None
    forks: tuple[Fork, ...] = ()
    cache: Cache | None = None
    records: tuple[HookRecord, ...] = ()
    failures: tuple[HookFailure, ...] = ()
    hooks_run: int = 0

    @property
    def kind(self) -> str:
        """The decisive result's kind (``"continue"``, ``"cancel"``, ...)."""
        return self.result.kind

    @property
    def stopped(self) -> bool:
        """True when a hook returned Cancel, Replace or Redirect."""
        result = self.result  # (Continue, the common case, first: a miss is slow)
        return type(result) is not Continue and isinstance(result, (Cancel, Replace, Redirect))

    @property
    def cancelled(self) -> bool:
        """True when a hook cancelled the operation."""
        result = self.result
        return type(result) is not Continue and isinstance(result, Cancel)

    @property
    def circuit_open(self) -> bool:
        """True when the operation was denied because a circuit breaker is open (the
        decisive ``Cancel`` has ``breaker`` set), not by a hook's own decision."""
        result = self.result
        return type(result) is not Continue and isinstance(result, Cancel) \
            and result.breaker is not None

    def raise_if_cancelled(self, point: str) -> None:
        """Raise :class:`OperationCancelledError` (naming hook and reason) if cancelled:
        :class:`CircuitOpenError`, its subclass, when a circuit breaker denied."""
        result = self.result
        if type(result) is not Continue and isinstance(result, Cancel):
            raise cancelled_error(point, result, self.decided_by)


NO_HOOKS = ChainResult()
"""The shared result of a dispatch where nothing happened (no hooks, or all continued)."""


RETIRED_BREAKERS = 64
"""How many unregistered hooks' breakers :meth:`HookExecutor.breakers` still reports (their
final snapshots, the most recently unregistered)."""

_NEVER = 1 << 62
"""A duration (ns) no call reaches: the slow-call limit of a hook with nothing to check."""


class _Plan:
    """A chain with, per hook, what the fold reads on every call looked up once: the callable,
    the predicate, the breaker, the latency series and the duration past which the call needs
    a second look (slow for its breaker, or over its timeout). ``fast``: per hook its callable,
    series' samples and counter, and limit, when no hook has a predicate and none is async
    (the chain can take the fold's fast path), else None. ``fast_async``: the same with each
    hook's timeout, when no hook has a predicate and some are async (the async fast path),
    else None."""

    __slots__ = ("chain", "fast", "fast_async", "names", "on_slow", "point_parts",
                 "point_series", "steps")

    def __init__(
        self,
        chain: tuple[RegisteredHook, ...],
        steps: tuple[_Step, ...],
        point_series: LatencySeries | None,
    ) -> None:
        self.chain = chain
        self.steps = steps
        self.point_series = point_series
        unconditional = all(step[2] is None for step in steps)
        self.fast: tuple[_Fast, ...] | None = (
            tuple((step[1], step[5], step[6], step[7]) for step in steps)
            if unconditional and not any(step[0].is_async for step in steps) else None
        )
        self.fast_async: tuple[_FastAsync, ...] | None = (
            tuple((step[1], step[5], step[6], step[7], step[0].timeout) for step in steps)
            if unconditional and self.fast is None else None
        )
        self.names = tuple(step[0].name for step in steps)
        # What the native fast path calls for a hook past its limit: (index, elapsed ns).
        self.on_slow: Callable[[int, int], None] = partial(_slow_step, steps)
        # What the native fast path accounts a dispatch in: the point series' parts.
        self.point_parts = (None if point_series is None else
                            (point_series.side, point_series.samples, point_series.calls))


_Step = tuple[
    RegisteredHook,
    Callable[[HookContext], object],  # the hook's call
    Callable[[HookContext], bool] | None,  # its predicate
    CircuitBreaker | None,
    LatencySeries | None,
    "deque[int] | None",  # the series' samples
    Any,  # the series' call counter (an itertools.count)
    int,  # past this duration (ns) a call needs a second look
]
_Fast = tuple[Callable[[HookContext], object], "deque[int] | None", Any, int]
# A step of a chain with async hooks on its fast path: a _Fast and the hook's timeout.
_FastAsync = tuple[Callable[[HookContext], object], "deque[int] | None", Any, int,
                   "float | None"]
_COROUTINE = types.CoroutineType
# Where the fast path stopped: (hooks run before, the stopping hook's start, what it
# returned, what it raised, ns inside hooks so far, the dispatch's start, the records of
# the hooks run before when the dispatch records).
_Resume = tuple[int, int, object, "BaseException | None", int, int, "list[HookRecord] | None"]
_CLOSED = BreakerState.CLOSED
# What counts as a hook's failure (and follows its error policy). ``SystemExit`` is one: a
# hook calling sys.exit() must not end the process. KeyboardInterrupt and task cancellation
# (asyncio.CancelledError) are not: they propagate. (A CancelledError no one asked for is
# the hook's failure: see _fold.)
_HOOK_FAILURES = (Exception, SystemExit)
# What the fast path hands to the full loop when a hook raises it: a hook's failure, or an
# asyncio.CancelledError, which the full loop tells apart (see _stray_cancel).
_HANDED_OVER = (Exception, SystemExit, asyncio.CancelledError)
_PLAIN = tuple(ChainResult(hooks_run=n) for n in range(64))


_run_hooks: Callable[..., object] | None = native.run_hooks if native is not None else None
"""The fast path's loop in C (``llmspell.core._speedups.run_hooks``): the same calls, timing,
counting and hand-over as the Python loops of :meth:`HookExecutor._run_fast` and
:meth:`HookExecutor._run_fast_recorded`, without the interpreter's cost per hook."""
_CONTINUE_KINDS = repeat("continue")


def _continued_records(names: tuple[str, ...], durations: list[int]) -> list[HookRecord]:
    """The records of the hooks that went on, from their names and durations (a type mapped
    over the columns: no bytecode per record)."""
    return list(map(HookRecord, names, _CONTINUE_KINDS, durations))


def _slow_step(steps: tuple[_Step, ...], index: int, elapsed: int) -> None:
    """A fast-path call of hook ``index`` that ran past its step's limit (see _Plan)."""
    entry, _, _, breaker, series, _, _, _ = steps[index]
    HookExecutor._after_call(entry, breaker, series, elapsed)


def _plain(hooks_run: int) -> ChainResult:
    """A shared 'everyone continued' result (immutable, so safe to share)."""
    return _PLAIN[hooks_run] if hooks_run < 64 else ChainResult(hooks_run=hooks_run)


def _stray_cancel(entry: RegisteredHook) -> HookExecutionError:
    return HookExecutionError(
        entry.name, entry.point,
        "CancelledError, though its dispatch was not cancelled (an await inside the hook "
        "was cancelled)",
        hint="catch the cancellation of what the hook awaits inside the hook, or let the "
             "hook's error policy decide",
    )


def _continued(records: list[HookRecord], names: tuple[str, ...],
               durations: list[int]) -> ChainResult:
    """The result of a fast path that recorded every hook going on (its columns kept for
    the hook event)."""
    done = ContinuedRecords(records)
    done.names = names
    done.durations_ns = durations
    return ChainResult(records=done, hooks_run=len(records))


def _invalid_result(entry: RegisteredHook, result: object) -> InvalidHookResultError:
    """The error for a hook that returned (or whose coroutine returned) ``result``, which is
    neither a HookResult nor None."""
    return InvalidHookResultError(
        entry.name,
        entry.point,
        f"returned {type(result).__name__}, not a HookResult or None",
        hint="return Continue(), Modified(data), Cancel(reason), ... or None",
    )


def _run_blocking(awaitable: Awaitable[Any], timeout: float | None, name: str, point: str) -> Any:
    return run_blocking(awaitable, lambda: SyncDispatchError(
        f"hook {name!r} at {str.__str__(point)!r} is async but was dispatched with "
        "execute_sync() from inside a running event loop",
        hint="use `await executor.execute(ctx)` in async code",
    ), timeout)


async def _bounded(awaitable: Awaitable[Any], entry: RegisteredHook) -> Any:
    """``awaitable`` awaited within the hook's timeout: running past it raises
    :class:`HookTimeoutError`; a ``TimeoutError`` the hook raised itself passes unchanged."""
    scope = asyncio.timeout(entry.timeout)
    try:
        async with scope:
            return await awaitable
    except TimeoutError as exc:
        if not scope.expired():
            raise
        raise HookTimeoutError(
            entry.name, entry.point, f"timed out after {entry.timeout:g} s",
            hint="make the hook faster or raise its timeout",
        ) from exc


class HookExecutor:
    """Runs hooks registered in a :class:`HookRegistry`, with breakers and a monitor.

    ``breaker``: a :class:`BreakerConfig` (or True for the default, False to turn breakers
    off); ``breaker_overrides`` maps points to their own config. ``monitor``: a
    :class:`PerformanceMonitor`, True for a new one, False for none. ``record``: put a
    :class:`HookRecord` per hook in every :class:`ChainResult` (for ``hook.*`` events).

    A hook's breaker and latency series live as long as the hook is registered: once it is
    unregistered they are dropped (its breaker's final snapshot stays among the last
    :data:`RETIRED_BREAKERS` in :meth:`breakers`), so registering and unregistering hooks
    for the life of a process does not grow the executor.

    A dispatch made for a replay runs on the replay's own executor (:meth:`for_replay`):
    ``breakers()``, ``failures()``, ``failure_count``, ``monitor``, ``on_error`` and
    ``on_breaker_change`` here are live traffic's only.
    """

    def __init__(
        self,
        registry: HookRegistry,
        *,
        breaker: BreakerConfig | bool = True,
        breaker_overrides: Mapping[str, BreakerConfig] | None = None,
        monitor: PerformanceMonitor | bool = True,
        clock: Clock = SYSTEM_CLOCK,
        record: bool = False,
        on_error: Callable[[HookFailure], None] | None = None,
        on_breaker_change: BreakerListener | None = None,
        failure_log_size: int = 256,
    ) -> None:
        self.registry = registry
        self._chains = registry.chains
        self._clock = clock
        if breaker is True:
            breaker = BreakerConfig.default()
        self._breaker_config: BreakerConfig | None = breaker or None
        self._breaker_overrides = {
            str(parse_point(p)): c for p, c in (breaker_overrides or {}).items()
        }
        self._breakers: dict[int, CircuitBreaker] = {}
        self._plans: dict[str, _Plan] = {}
        self._limits: dict[int, int] = {}
        self._breakers_lock = threading.Lock()
        self._all_closed = True  # every breaker closed: see _breaker_changed
        if monitor is True:
            monitor = PerformanceMonitor()
        self.monitor: PerformanceMonitor | None = monitor or None
        self.record = record
        self._timed = self.monitor is not None or self._breaker_config is not None or record
        self.on_error = on_error
        self.on_breaker_change = on_breaker_change
        self._failures: deque[HookFailure] = deque(maxlen=failure_log_size)
        self.failure_count = 0
        self._retired: deque[BreakerSnapshot] = deque(maxlen=RETIRED_BREAKERS)
        # Ids of the hooks this executor made a plan with (their breakers, series).
        self._planned: set[int] = set()
        # The executors of the replays running (see for_replay); None in one of those.
        self._replays: weakref.WeakKeyDictionary[object, HookExecutor] | None = (
            weakref.WeakKeyDictionary())
        self._scope_note = ""  # " in a replay" in a replay's executor: for the log
        registry.add_change_listener(self._registry_changed, weak=True)

    # -- public API ---------------------------------------------------------------------
    async def execute(self, ctx: HookContext, record: bool | None = None) -> ChainResult:
        """Run the hooks at ``ctx.point`` (awaiting async hooks, with their timeouts).

        ``record`` overrides the executor's ``record`` setting for this dispatch."""
        chain = self._chains.get(ctx.point)
        if chain is None:
            return NO_HOOKS
        if RUNNING_REPLAYS and self._replays is not None:
            scoped = self._replay_executor()
            if scoped is not None:  # a replay's dispatch: on the replay's own executor
                return await scoped.execute(ctx, record)
        # start_chain() inlined (one call less on the hot path); an async chain's fold is the
        # only coroutine below.
        start = perf_counter_ns()
        plan = self._plans.get(ctx.point)
        if plan is None or plan.chain is not chain:
            plan = self._plan_for(ctx.point, chain)
        if plan.fast is not None and self._all_closed:
            if self.record if record is None else record:
                done = self._run_fast_recorded(plan, ctx, start)
            else:
                done = self._run_fast(plan, ctx, start)
            if type(done) is ChainResult:
                return done
            return await self._fold(chain, ctx, record, False, done)  # type: ignore[arg-type]
        if plan.fast_async is not None and self._all_closed:
            return await self._run_fast_async(plan, ctx, record, start)
        return await self._fold(chain, ctx, record)

    async def execute_chain(self, chain: tuple[RegisteredHook, ...], ctx: HookContext,
                            record: bool | None = None) -> ChainResult:
        """:meth:`execute` for a caller that already looked up ``chain``, the registry's chain
        at ``ctx.point``."""
        started = self.start_chain(chain, ctx, record)
        # (type(), not isinstance: a miss against a Struct class is slow)
        return started if type(started) is ChainResult else await cast(
            "Coroutine[Any, Any, ChainResult]", started)

    def start_chain(self, chain: tuple[RegisteredHook, ...], ctx: HookContext,
                    record: bool | None = None, durations: list[int] | None = None
                    ) -> ChainResult | Coroutine[Any, Any, ChainResult]:
        """:meth:`execute_chain` without a coroutine when it can: the chain's result when
        every hook ran to a "go on" synchronously on the fast path, else a coroutine to
        await for it. ``type(x) is ChainResult`` tells them apart. The runtime's own
        dispatch uses this so a chain of sync hooks costs no coroutine.

        ``durations`` (with ``record=True``) takes the record in columns where that is
        cheaper: when every hook goes on synchronously on the fast path, each hook's
        duration is appended to it (in chain order; their names are :meth:`hook_names`)
        and the result has no records. Otherwise the result has its records as usual
        (read those first: ``durations`` may then hold the first hooks' times)."""
        if RUNNING_REPLAYS and self._replays is not None:
            scoped = self._replay_executor()
            if scoped is not None:  # a replay's dispatch: on the replay's own executor
                return scoped.start_chain(chain, ctx, record, durations)
        start = perf_counter_ns()
        plan = self._plans.get(ctx.point)
        if plan is None or plan.chain is not chain:
            plan = self._plan_for(ctx.point, chain)
        if plan.fast is not None and self._all_closed:
            if durations is not None and record:
                done = self._run_fast_into(plan, ctx, start, durations)
            elif self.record if record is None else record:
                done = self._run_fast_recorded(plan, ctx, start)
            else:
                done = self._run_fast(plan, ctx, start)
            if type(done) is ChainResult:
                return done
            return self._fold(chain, ctx, record, False, done)  # type: ignore[arg-type]
        if plan.fast_async is not None and self._all_closed:
            return self._run_fast_async(plan, ctx, record, start)
        return self._fold(chain, ctx, record)

    def hook_names(self, point: str, chain: tuple[RegisteredHook, ...]) -> tuple[str, ...]:
        """The names of ``chain``'s hooks (the chain at ``point``), in order."""
        plan = self._plans.get(point)
        if plan is not None and plan.chain is chain:
            return plan.names
        return tuple(entry.name for entry in chain)

    def execute_sync(self, ctx: HookContext,
                     chain: tuple[RegisteredHook, ...] | None = None) -> ChainResult:
        """Run the hooks at ``ctx.point`` from sync code (``chain``: the hooks to run
        instead of the registry's chain at that point, e.g. as a replay sees it).

        Async hooks are run to completion on a per-thread event loop; called from inside a
        running loop that is impossible and raises :class:`SyncDispatchError`.
        """
        if chain is None:
            chain = self._chains.get(ctx.point)
            if chain is None:
                return NO_HOOKS
        elif not chain:
            return NO_HOOKS
        if RUNNING_REPLAYS and self._replays is not None:
            scoped = self._replay_executor()
            if scoped is not None:  # a replay's dispatch: on the replay's own executor
                return scoped.execute_sync(ctx, chain)
        start = perf_counter_ns()
        plan = self._plans.get(ctx.point)
        if plan is None or plan.chain is not chain:
            plan = self._plan_for(ctx.point, chain)
        resume: _Resume | None = None
        if plan.fast is not None and self._all_closed:
            done = (self._run_fast_recorded(plan, ctx, start) if self.record
                    else self._run_fast(plan, ctx, start))
            if type(done) is ChainResult:
                return done
            resume = done  # type: ignore[assignment]
        coro = self._fold(chain, ctx, None, True, resume)
        try:
            coro.send(None)
        except StopIteration as stopped:
            result: ChainResult = stopped.value
            return result
        coro.close()  # pragma: no cover - the blocking loop never suspends
        raise AssertionError("blocking hook chain suspended")  # pragma: no cover

    def for_replay(self, replay: object) -> HookExecutor:
        """The executor that runs the dispatches of replay ``replay`` (its session, what
        :func:`~llmspell.core.run_scope.current_replay` gives), made at its first use and
        dropped with the session: the same registry, breaker configs, clock and recording
        setting, but breakers of its own that start closed, a monitor and a failure log of
        its own, and no ``on_error``/``on_breaker_change`` listeners. So nothing a replay's
        hooks do reaches live state, and live breaker state never changes what a replay's
        hooks do."""
        scopes = self._replays
        if scopes is None:  # already a replay's own
            return self
        found = scopes.get(replay)
        if found is None:
            with self._breakers_lock:
                found = scopes.get(replay)
                if found is None:
                    found = scopes[replay] = self._replay_copy()
        return found

    def _replay_executor(self) -> HookExecutor | None:
        """The executor of the replay the calling task works for, or None outside one."""
        replay = current_replay()
        return None if replay is None else self.for_replay(replay)

    def _replay_copy(self) -> HookExecutor:
        monitor = self.monitor
        copy = HookExecutor(
            self.registry,
            breaker=self._breaker_config or False,
            monitor=PerformanceMonitor(monitor.sample_size) if monitor is not None else False,
            clock=self._clock,
            record=self.record,
            failure_log_size=self._failures.maxlen or 256,
        )
        copy._breaker_overrides = dict(self._breaker_overrides)
        copy._replays = None
        copy._scope_note = " in a replay"
        return copy

    def set_breaker_config(self, point: str, config: BreakerConfig) -> None:
        """Use ``config`` for breakers of hooks at ``point`` (existing breakers are replaced)."""
        key = str(parse_point(point))
        with self._breakers_lock:
            self._breaker_overrides[key] = config
            for hook_id, breaker in list(self._breakers.items()):
                if breaker.point == key:
                    del self._breakers[hook_id]
            self._plans.clear()
            self._recount_breakers()

    def breaker_for(self, hook_id: int) -> CircuitBreaker | None:
        """The breaker of a registered hook (by ``HookHandle.id``), if one was created."""
        return self._breakers.get(hook_id)

    def breakers(self, *, retired: bool = True) -> list[BreakerSnapshot]:
        """Snapshots of the breakers of registered hooks, after (unless ``retired`` is
        False) the final snapshots of the breakers of the last :data:`RETIRED_BREAKERS`
        hooks unregistered."""
        live = [b.snapshot() for b in list(self._breakers.values())]
        return [*self._retired, *live] if retired else live

    def _registry_changed(self) -> None:
        """Forget what belongs to hooks no longer registered: their breakers, latency
        series, and the plans of chains that changed (which hold the old hooks)."""
        registered = self.registry.is_registered
        gone = [hook_id for hook_id in list(self._planned) if not registered(hook_id)]
        with self._breakers_lock:
            for hook_id in gone:
                self._planned.discard(hook_id)
                breaker = self._breakers.pop(hook_id, None)
                if breaker is not None:
                    self._retired.append(breaker.snapshot())
            if gone:
                # An open breaker of a removed hook must not keep every dispatch off the
                # fast path.
                self._recount_breakers()
            chains = self._chains
            for point, plan in list(self._plans.items()):
                if chains.get(point) is not plan.chain:
                    self._plans.pop(point, None)
        if gone and self.monitor is not None:
            self.monitor.forget_hooks(gone)

    def failures(self) -> list[HookFailure]:
        """The most recent hook failures (bounded), oldest first."""
        return list(self._failures)

    # -- the fold loop ------------------------------------------------------------------
    def _plan_for(self, point: str, chain: tuple[RegisteredHook, ...]) -> _Plan:
        """The chain with each hook's breaker and latency series resolved (cached per chain)."""
        plan = self._plans.get(point)
        if plan is not None and plan.chain is chain:
            return plan
        monitor = self.monitor
        registered = self.registry.is_registered
        steps: list[_Step] = []
        for entry in chain:
            self._planned.add(entry.id)
            breaker = self._breaker(entry) if self._breaker_config is not None else None
            series = monitor.hook_series(entry.id, entry.name, entry.point) if monitor else None
            if series is not None and not registered(entry.id):
                # A chain a hook changed while it ran (it unregistered a later hook): the
                # removed hook still runs in this dispatch, but its figures must not come
                # back to life in the monitor after _registry_changed dropped them.
                assert monitor is not None
                monitor.forget_hooks([entry.id])
                self._planned.discard(entry.id)
                series = None
            limit = _NEVER
            if breaker is not None:
                limit = breaker.slow_threshold_ns
            if series is not None and entry.timeout is not None:
                timeout_ns = entry.timeout * 1e9  # a float: inf or 1e300 must not overflow
                if timeout_ns < limit:
                    limit = int(timeout_ns)
            # Equal limits share one int: a dispatch touches less memory.
            limit = self._limits.setdefault(limit, limit)
            steps.append((entry, entry.call, entry.should_execute, breaker, series,
                          series.samples if series is not None else None,
                          series.calls if series is not None else None, limit))
        plan = _Plan(chain, tuple(steps),
                     monitor.point_series(chain[0].point) if monitor else None)
        if self._chains.get(point) is chain:  # a stale chain's plan is for this dispatch only
            self._plans[point] = plan
        return plan

    def _run_fast(self, plan: _Plan, ctx: HookContext, dispatch_start: int
                  ) -> ChainResult | _Resume:
        """The fast path, a plain function: no predicate to ask, no breaker to consult (all
        closed), nothing to record. Runs hooks while each says "go on" (``None`` or a
        ``Continue``) and returns the chain's result; at the first hook that returns
        anything else, or raises, returns what the full loop needs to take over."""
        fast = plan.fast
        assert fast is not None
        point_series = plan.point_series
        if _run_hooks is not None:  # (the point's series accounted there too)
            return cast("ChainResult | _Resume", _run_hooks(
                fast, ctx, dispatch_start, perf_counter_ns if self._timed else None,
                Continue, _HANDED_OVER, plan.on_slow, None, plan.point_parts, _PLAIN,
                _plain))
        index = 0
        if self._timed:
            # Each hook starts when the one before ended, so the time in hooks so far is
            # ``start - dispatch_start``: no running sum.
            start = dispatch_start  # the first hook's time includes the plan lookup
            for call, samples, counter, limit in fast:
                try:
                    out = call(ctx)
                except _HANDED_OVER as exc:
                    return (index, start, None, exc, start - dispatch_start, dispatch_start,
                            None)
                if out is not None and type(out) is not Continue:
                    return (index, start, out, None, start - dispatch_start, dispatch_start,
                            None)
                end = perf_counter_ns()
                elapsed = end - start
                if samples is not None:  # LatencySeries.record, inlined
                    samples.append(elapsed)
                    next(counter)
                if elapsed > limit:
                    plan.on_slow(index, elapsed)
                start = end
                index += 1
            if point_series is not None:  # as at the end of the full loop
                point_series.side.append(start - dispatch_start)
                point_series.samples.append(perf_counter_ns() - dispatch_start)
                next(point_series.calls)
        else:
            for call, _, _, _ in fast:
                try:
                    out = call(ctx)
                except _HANDED_OVER as exc:
                    return (index, 0, None, exc, 0, dispatch_start, None)
                if out is not None and type(out) is not Continue:
                    return (index, 0, out, None, 0, dispatch_start, None)
                index += 1
        return _PLAIN[index] if index < 64 else _plain(index)

    def _run_fast_recorded(self, plan: _Plan, ctx: HookContext, dispatch_start: int
                           ) -> ChainResult | _Resume:
        """:meth:`_run_fast` for a dispatch that records each hook's part (the
        :class:`HookRecord` that hook events and run recordings carry): the hooks run by
        :meth:`_run_fast_into`, and their records are made from the durations it kept."""
        durations: list[int] = []
        done = self._run_fast_into(plan, ctx, dispatch_start, durations)
        if type(done) is not ChainResult:
            return done
        names = plan.names
        return _continued(_continued_records(names, durations), names, durations)

    def _run_fast_into(self, plan: _Plan, ctx: HookContext, dispatch_start: int,
                       durations: list[int]) -> ChainResult | _Resume:
        """:meth:`_run_fast` with every hook timed and its duration appended to
        ``durations`` (in chain order). All going on, it returns the plain result (no
        records: the durations and the plan's names are the record); at a hook that does
        not go on, the resume carries the records of the hooks before it, as the full loop
        needs them. A copy of the timed loop rather than a flag in it: the dispatch that
        records nothing (the common one) pays no test per hook for it."""
        fast = plan.fast
        assert fast is not None
        point_series = plan.point_series
        if _run_hooks is not None:  # (the point's series accounted there too)
            done = _run_hooks(fast, ctx, dispatch_start, perf_counter_ns, Continue,
                              _HANDED_OVER, plan.on_slow, durations, plan.point_parts,
                              _PLAIN, _plain)
            if type(done) is tuple:
                index, start, out, exc, in_hooks, _, _ = cast("_Resume", done)
                return (index, start, out, exc, in_hooks, dispatch_start,
                        _continued_records(plan.names, durations))
            return cast(ChainResult, done)
        end = dispatch_start  # the first hook's time includes the plan lookup
        for index, (call, samples, counter, limit) in enumerate(fast):
            try:
                out = call(ctx)
            except _HANDED_OVER as exc:
                return (index, end, None, exc, end - dispatch_start, dispatch_start,
                        _continued_records(plan.names, durations))
            if out is not None and type(out) is not Continue:
                return (index, end, out, None, end - dispatch_start, dispatch_start,
                        _continued_records(plan.names, durations))
            start = end
            end = perf_counter_ns()
            elapsed = end - start
            if samples is not None:  # LatencySeries.record, inlined
                samples.append(elapsed)
                next(counter)
            if elapsed > limit:
                plan.on_slow(index, elapsed)
            durations.append(elapsed)
        if point_series is not None:  # as at the end of the full loop
            point_series.side.append(end - dispatch_start)
            point_series.samples.append(perf_counter_ns() - dispatch_start)
            next(point_series.calls)
        count = len(fast)
        return _PLAIN[count] if count < 64 else _plain(count)

    async def _run_fast_async(self, plan: _Plan, ctx: HookContext, record: bool | None,
                              dispatch_start: int) -> ChainResult:
        """The fast path of a chain with async hooks (none has a predicate, every breaker
        is closed): one coroutine, this one, rather than the full loop's and one per
        awaited hook result. A hook's coroutine is awaited here, within its timeout; hooks
        run while each says "go on" (``None`` or a ``Continue``), timed and recorded as the
        full loop would. At the first hook that returns anything else (or an awaitable
        that is not a coroutine: the full loop settles it), or raises, the full loop takes
        over from that hook, as after :meth:`_run_fast`."""
        fast = plan.fast_async
        assert fast is not None
        records: list[HookRecord] | None = (
            [] if (self.record if record is None else record) else None)
        durations: list[int] | None = [] if records is not None else None
        timed = self._timed or records is not None
        names = plan.names
        start = dispatch_start  # the first hook's time includes the plan lookup
        for index, (call, samples, counter, limit, timeout) in enumerate(fast):
            try:
                out = call(ctx)
                if type(out) is _COROUTINE:
                    out = await (out if timeout is None
                                 else _bounded(out, plan.steps[index][0]))
                    if out is not None and type(out) not in _ACTION:
                        raise _invalid_result(plan.steps[index][0], out)
            except _HANDED_OVER as exc:
                resume: _Resume = (index, start, None, exc,
                                   start - dispatch_start if timed else 0, dispatch_start,
                                   records)
                break
            if out is not None and type(out) is not Continue:
                resume = (index, start, out, None, start - dispatch_start if timed else 0,
                          dispatch_start, records)
                break
            if timed:
                end = perf_counter_ns()
                elapsed = end - start
                if samples is not None:  # LatencySeries.record, inlined
                    samples.append(elapsed)
                    next(counter)
                if elapsed > limit:
                    plan.on_slow(index, elapsed)
                if records is not None:
                    records.append(HookRecord(names[index], "continue", elapsed))
                    durations.append(elapsed)  # type: ignore[union-attr]
                start = end
        else:
            index = len(fast)
            point_series = plan.point_series
            if point_series is not None:  # as at the end of the full loop
                point_series.side.append(start - dispatch_start)
                point_series.samples.append(perf_counter_ns() - dispatch_start)
                next(point_series.calls)
            if records is None:
                return _PLAIN[index] if index < 64 else _plain(index)
            return _continued(records, names[:index], durations)  # type: ignore[arg-type]
        handover = self._fold(plan.chain, ctx, record, False, resume)
        # While the full loop runs the rest, this frame must not count as a second dispatch
        # of the point (the loop checks see one frame per dispatch: _DISPATCHING).
        del ctx
        return await handover

    async def _fold(
        self, chain: tuple[RegisteredHook, ...], ctx: HookContext, record: bool | None = None,
        blocking: bool = False, resume: _Resume | None = None,
    ) -> ChainResult:
        """The full loop: every fold rule. ``resume``: where :meth:`_run_fast` stopped."""
        plan = self._plans.get(ctx.point)
        if plan is None or plan.chain is not chain:
            plan = self._plan_for(ctx.point, chain)
        point_series = plan.point_series
        if record is None:
            record = self.record
        # A hook the fast path called whose outcome it leaves to this loop:
        # (start, returned value, raised exception).
        pending: tuple[int, object, BaseException | None] | None = None
        # The records of the hooks the fast path ran, when it recorded.
        done: list[HookRecord] | None = None
        if resume is not None:
            hooks_run, start0, out0, raised0, in_hooks_ns, dispatch_start, done = resume
            pending = (start0, out0, raised0)
            steps = plan.steps[hooks_run:]
        else:
            dispatch_start = perf_counter_ns() if point_series is not None else 0
            hooks_run = 0
            in_hooks_ns = 0
            steps = plan.steps

        timed = self._timed or record
        guarded = not self._all_closed
        records: list[HookRecord] | None = done if done is not None else [] if record else None
        failures: list[HookFailure] | None = None
        forks: list[Fork] | None = None
        cache: Cache | None = None
        retry: tuple[Retry, str] | None = None
        modified_by: str | None = None
        stop: tuple[HookResult, str] | None = None
        # The full loop: every fold rule.
        for entry, call, predicate, breaker, series, samples, counter, limit in steps:
            # Predicate first: a hook that does not apply costs no breaker or timing work.
            if predicate is not None:
                try:
                    applies = predicate(ctx)
                except _HOOK_FAILURES as exc:
                    if isinstance(exc, _LOOP_SIGNS):  # a failure's path only
                        exc = _looped(exc)  # raises to hand a loop out of its inner dispatches
                    failures = self._fail(entry, ctx, exc, failures, None, series, 0,
                                          records)
                    if entry.error_policy is ErrorPolicy.FAIL_CLOSED:
                        stop = (self._closed_cancel(entry, exc), entry.name)
                        break
                    continue
                if not applies:
                    continue
            probe = None  # the breaker that admitted this call as a half-open probe
            if (guarded and breaker is not None and breaker.state is not _CLOSED
                    and pending is None):
                if breaker.allow():
                    probe = breaker
                elif entry.error_policy is ErrorPolicy.FAIL_CLOSED:
                    # A guard that cannot run denies: an open breaker must never turn a
                    # fail-closed hook into a fail-open one.
                    denied = self._breaker_cancel(entry)
                    if records is not None:
                        records.append(HookRecord(entry.name, "cancel", 0, denied.reason))
                    stop = (denied, entry.name)
                    break
                else:
                    if records is not None:
                        records.append(
                            HookRecord(entry.name, "skipped", 0, f"circuit open: {entry.name}")
                        )
                    continue

            hooks_run += 1
            try:
                try:
                    if pending is None:
                        start = perf_counter_ns() if timed else 0
                        out = call(ctx)
                    else:  # called on the fast path
                        start, out, raised = pending
                        pending = None
                        if raised is not None:
                            raise raised
                    if out is None:
                        result: HookResult = CONTINUE
                    elif type(out) in _ACTION:
                        result = cast(HookResult, out)
                    else:
                        result = await self._settle(entry, out, blocking)
                except asyncio.CancelledError as cancelled:
                    # The dispatching task's cancellation propagates; a CancelledError no
                    # one asked for (an await inside the hook was cancelled) is its failure.
                    if not blocking and cancel_requested():
                        raise
                    raise _stray_cancel(entry) from cancelled
                except SyncDispatchError as refused:
                    # Blocking, it is this dispatch's own refusal (the caller must await);
                    # awaited, only the hook can have raised it (a nested execute_sync):
                    # its failure, which its policy decides.
                    if blocking:
                        raise
                    raise HookExecutionError(entry.name, entry.point,
                                             f"SyncDispatchError: {refused}") from refused
            except SyncDispatchError:
                if probe is not None:
                    probe.release()
                raise
            except _HOOK_FAILURES as exc:
                if isinstance(exc, _LOOP_SIGNS):  # a failure's path only
                    try:
                        exc = _looped(exc)
                    except OperationDepthError:  # handed out of this inner dispatch of a loop
                        if probe is not None:
                            probe.release()
                        raise
                elapsed = perf_counter_ns() - start if timed else 0
                in_hooks_ns += elapsed
                # A timeout of this executor's is already a HookTimeoutError (_bounded); a
                # TimeoutError the hook raised itself (a socket's) is its plain failure.
                failures = self._fail(entry, ctx, exc, failures, breaker, series, elapsed,
                                      records)
                if entry.error_policy is ErrorPolicy.FAIL_CLOSED:
                    stop = (self._closed_cancel(entry, exc), entry.name)
                    break
                continue
            except BaseException:
                # KeyboardInterrupt or the task's cancellation: not the hook's failure, and
                # it propagates; a half-open probe slot it held is freed.
                if probe is not None:
                    probe.release()
                raise

            if timed:
                elapsed = perf_counter_ns() - start
                in_hooks_ns += elapsed
                if samples is not None:  # LatencySeries.record, inlined
                    samples.append(elapsed)
                    next(counter)
                # A fast call on a closed breaker changes nothing in it, and a fast call
                # is no overrun: both need a look only past the plan's limit.
                if elapsed > limit or guarded:
                    self._after_call(entry, breaker, series, elapsed)
                if records is not None:
                    records.append(HookRecord(entry.name, result.kind, elapsed))

            if result is CONTINUE:
                continue
            action = _ACTION[type(result)]
            if action == _GO_ON:
                continue
            if action == _MODIFY:
                ctx.data = result.data  # type: ignore[union-attr]
                modified_by = entry.name
            elif action == _STOP:
                stop = (result, entry.name)
                break
            elif action == _RETRY:
                if retry is None:
                    retry = (result, entry.name)  # type: ignore[assignment]
            elif action == _FORK:
                if forks is None:
                    forks = []
                forks.append(result)  # type: ignore[arg-type]
            elif cache is None:
                cache = result  # type: ignore[assignment]

        if point_series is not None:
            point_series.side.append(in_hooks_ns)
            if failures:
                point_series.record(perf_counter_ns() - dispatch_start, error=True)
            else:  # LatencySeries.record, inlined
                point_series.samples.append(perf_counter_ns() - dispatch_start)
                next(point_series.calls)
        if stop is not None:
            final, decided_by = stop
        elif retry is not None:
            final, decided_by = retry
        elif modified_by is not None:
            final, decided_by = Modified(ctx.data), modified_by
        else:
            if not (records or failures or forks or cache):
                return _PLAIN[hooks_run] if hooks_run < 64 else _plain(hooks_run)
            final, decided_by = CONTINUE, None
        return ChainResult(
            result=final,
            decided_by=decided_by,
            forks=tuple(forks) if forks else (),
            cache=cache,
            records=tuple(records) if records else (),
            failures=tuple(failures) if failures else (),
            hooks_run=hooks_run,
        )

    @staticmethod
    def _after_call(entry: RegisteredHook, breaker: CircuitBreaker | None,
                    series: LatencySeries | None, elapsed: int) -> None:
        """A call that was slow, overran its timeout, or ran while a breaker was not closed."""
        if breaker is not None and (
            elapsed > breaker.slow_threshold_ns or breaker.state is not _CLOSED
        ):
            breaker.record_success(elapsed)
        if series is not None and entry.timeout is not None and elapsed > entry.timeout * 1e9:
            series.record_overrun()

    # -- helpers ------------------------------------------------------------------------
    @staticmethod
    async def _settle(entry: RegisteredHook, result: object, blocking: bool) -> HookResult:
        """Await (or, blocking, run) an awaitable a hook returned; check the result's type."""
        if inspect.isawaitable(result):
            if entry.timeout is None:
                result = (_run_blocking(result, None, entry.name, entry.point) if blocking
                          else await result)
            elif blocking:
                bounded = _bounded(result, entry)
                try:
                    result = _run_blocking(bounded, None, entry.name, entry.point)
                except SyncDispatchError:
                    if inspect.iscoroutine(result):  # never started: close it too
                        result.close()
                    raise
            else:
                result = await _bounded(result, entry)
            if result is None:
                return CONTINUE
        if type(result) not in _ACTION:
            raise _invalid_result(entry, result)
        return result  # type: ignore[return-value]

    def _breaker(self, entry: RegisteredHook) -> CircuitBreaker:
        with self._breakers_lock:
            breaker = self._breakers.get(entry.id)
            if breaker is None:
                config = self._breaker_overrides.get(entry.point, self._breaker_config)
                breaker = CircuitBreaker(
                    entry.name, entry.point, config, clock=self._clock,
                    listener=self._breaker_changed,
                )
                if self.registry.is_registered(entry.id):  # not one removed meanwhile
                    self._breakers[entry.id] = breaker
            return breaker

    def _recount_breakers(self) -> None:
        """Recompute whether every breaker is closed (called with the lock held)."""
        self._all_closed = all(b.state is _CLOSED for b in self._breakers.values())

    def _breaker_changed(self, transition: BreakerTransition) -> None:
        # The breaker's state is already set: recounting under the lock leaves the flag
        # right whatever order concurrent transitions arrive in.
        with self._breakers_lock:
            self._recount_breakers()
        level = logging.WARNING if transition.new == "open" else logging.INFO
        logger.log(level, "circuit breaker for hook %r at %s%s: %s -> %s (%s)",
                   transition.hook, transition.point, self._scope_note, transition.old,
                   transition.new, transition.reason)
        listener = self.on_breaker_change
        if listener is not None:
            try:
                listener(transition)
            except Exception:
                logger.exception("breaker listener failed for hook %r", transition.hook)

    @staticmethod
    def _breaker_cancel(entry: RegisteredHook) -> Cancel:
        return Cancel(f"breaker open: hook {entry.name!r} is fail-closed and its circuit "
                      "breaker is open, so the operation is denied until a probe succeeds",
                      breaker=entry.name)

    @staticmethod
    def _closed_cancel(entry: RegisteredHook, exc: BaseException) -> Cancel:
        return Cancel(f"hook {entry.name!r} failed and is fail-closed: {exc}")

    def _fail(
        self,
        entry: RegisteredHook,
        ctx: HookContext,
        exc: BaseException,
        failures: list[HookFailure] | None,
        breaker: CircuitBreaker | None,
        series: LatencySeries | None,
        elapsed: int,
        records: list[HookRecord] | None,
    ) -> list[HookFailure]:
        failure = HookFailure(
            hook=entry.name,
            point=str(entry.point),
            error_type=type(exc).__name__,
            message=str(exc),
            policy=entry.error_policy,
            correlation_id=ctx.correlation_id,
            at=self._clock.now(),
        )
        self._failures.append(failure)
        self.failure_count += 1
        if breaker is not None:
            breaker.record_failure()
        if series is not None:
            series.record(elapsed, error=True)
        if records is not None:
            records.append(
                HookRecord(entry.name, "error", elapsed, f"{type(exc).__name__}: {exc}")
            )
        logger.warning(
            "hook %r at %s%s failed (%s, policy %s): %s",
            entry.name, entry.point, self._scope_note, type(exc).__name__,
            entry.error_policy.value, exc,
            # A loop's error names the loop: its thousand frames would say nothing more.
            exc_info=None if isinstance(exc, HookExecutionError) or exc in _LOOPS else exc,
        )
        if self.on_error is not None:
            try:
                self.on_error(failure)
            except Exception:
                logger.exception("on_error listener failed for hook %r", entry.name)
        if entry.error_policy is ErrorPolicy.RAISE:
            if isinstance(exc, HookExecutionError):
                raise exc
            raise HookExecutionError(
                entry.name, entry.point, f"{type(exc).__name__}: {exc}",
                hint=exc.hint if isinstance(exc, OperationDepthError) else None,
            ) from exc
        if failures is None:
            failures = []
        failures.append(failure)
        return failures


# -- dispatch loops -------------------------------------------------------------------------
# The frames a dispatch runs its hooks from: while a hook runs, exactly one of them is on the
# stack for its dispatch (a sync fast path returns before the full loop takes over; the async
# one lets go of its ctx first).
_DISPATCHING = frozenset({HookExecutor._run_fast.__code__,
                          HookExecutor._run_fast_into.__code__,
                          HookExecutor._run_fast_async.__code__,
                          HookExecutor._fold.__code__})
_LOOP_SIGNS = (RecursionError, OperationDepthError)
# The errors made for dispatch loops, with the points that repeat in each.
_LOOPS: weakref.WeakKeyDictionary[BaseException, frozenset[str]] = weakref.WeakKeyDictionary()
_LOOP_HINT = ("a hook must not dispatch the point it is registered on (directly, through "
              "emit, a state write or a tool, or through a hook at another point that "
              "dispatches it back): guard the re-entry (a flag in ctx.metadata) or dispatch "
              "another point")


def _dispatch_point(frame: Any) -> str | None:
    """The point ``frame`` dispatches, when it is a dispatch's frame (None otherwise)."""
    if frame.f_code in _DISPATCHING:
        ctx = frame.f_locals.get("ctx")
        if isinstance(ctx, HookContext):
            return str(ctx.point)
    return None


def _dispatch_points(frame: Any) -> list[str]:
    """The points of the dispatches in progress on ``frame``'s stack, innermost first."""
    points: list[str] = []
    try:
        while frame is not None:
            point = _dispatch_point(frame)
            if point is not None:
                points.append(point)
            frame = frame.f_back
    finally:
        frame = None
    return points


def _repeated_points(points: list[str]) -> list[str]:
    """The points that occur more than once in ``points`` (in order of first occurrence)."""
    return [p for p, n in Counter(points).items() if n > 1]


def _loop_path(points: list[str]) -> str:
    """``points`` as an error shows a loop's path: ``'a' -> 'b' -> ...``, the middle of a
    long path left out."""
    shown = points if len(points) <= 7 else [*points[:4], "...", *points[-3:]]
    return " -> ".join(p if p == "..." else repr(p) for p in shown)


def _dispatch_loop(exc: RecursionError) -> OperationDepthError | None:
    """The error a hook's :class:`RecursionError` is reported as when dispatches of one
    point nested in each other used the stack up (a dispatch loop); None for a recursion
    of the hook's own (its frames fill the stack below this dispatch) or a library's own
    depth limit (raised far below the interpreter's).

    Bounding the nesting up front would cost every dispatch a context-variable round trip
    for a bug that already ends here, as :mod:`llmspell.events.bus` reasons for publishes."""
    below = 0  # frames from the failing hook's dispatch to where the error was raised
    tb = exc.__traceback__
    while tb is not None:
        below += 1
        tb = tb.tb_next
    depth = 0
    frame: Any = sys._getframe(1)
    try:
        while frame is not None:
            depth += 1
            frame = frame.f_back
    finally:
        frame = None
    if below >= depth or depth + below < sys.getrecursionlimit() // 2:
        return None
    points = _dispatch_points(sys._getframe(1))
    points.reverse()  # outermost first
    repeated = _repeated_points(points)
    if not repeated:
        return None
    points = points[points.index(repeated[0]):]  # from the loop's first dispatch
    error = OperationDepthError(
        f"hook dispatch looped: {' and '.join(map(repr, repeated))} dispatched again from "
        f"inside {'its' if len(repeated) == 1 else 'their'} own dispatch, nested "
        f"{len(points)} deep until Python's recursion limit: " + _loop_path(points),
        hint=_LOOP_HINT)
    _LOOPS[error] = frozenset(repeated)
    return error


def _in_outer_dispatch(points: frozenset[str]) -> bool:
    """True when a dispatch of one of ``points`` is in progress outside the one that runs
    the calling failure handler: in this task, or in a task a composite hook ran this one
    from (see :func:`composite_loop`)."""
    outer = _dispatch_points(sys._getframe(2))
    if any(point in points for point in outer[1:]):  # [0]: this failure's dispatch
        return True
    nesting = COMPOSITE_NESTING.get()
    return nesting is not None and any(point in points for point in _spawner_points(nesting))


def _looped(exc: Exception) -> Exception:
    """A hook's failure, as its dispatch should report it: a :class:`RecursionError` from a
    dispatch loop becomes the loop's :class:`OperationDepthError`. That error is raised
    out of every dispatch of the loop but the outermost (the hooks that called them are
    the loop, not a failure each: a fail-open one going on would only run the loop again,
    once more for each later hook at the point, which never ends), and returned there,
    so the policy of the hook that started the loop decides, once. Any other failure
    (the runtime's nesting bound, a hook's own recursion) is returned unchanged."""
    if isinstance(exc, RecursionError):
        loop: Exception | None = _dispatch_loop(exc)
        if loop is None:
            return exc
    else:
        loop = exc
    points = _LOOPS.get(loop) if loop in _LOOPS else None  # `in`: never a TypeError
    if points is None:
        return exc
    if _in_outer_dispatch(points):
        raise loop.with_traceback(None) from None  # each dispatch's frames only
    loop.__context__ = None  # the recursion's thousand frames: nothing to keep them for
    return loop


# -- dispatch loops through composite hooks --------------------------------------------------
# ParallelHook and VotingHook run each child in a new task, on a fresh stack: a loop through
# them never reaches the recursion limit. They alone count (composite.py, _run_concurrently).
MAX_COMPOSITE_DEPTH = 32
"""How many composite hooks that run their children in new tasks (``ParallelHook``,
``VotingHook``) may be nested, through the dispatches their children make, before the
innermost raises :class:`OperationDepthError` instead of running its children."""
MAX_COMPOSITE_RUNS = 1024
"""How many such composite runs may be in progress at once under the outermost one: a loop
whose composites each re-dispatch from several children would otherwise run ``children **
depth`` of them (breadth first: every level before the next) before reaching the depth."""


class CompositeNesting:
    """The composite runs in progress under one outermost composite run (it is shared by
    every task that composite's children, and theirs, run in)."""

    __slots__ = ("live",)

    def __init__(self) -> None:
        self.live = 0


Spawners: TypeAlias = tuple["asyncio.Task[Any] | None", ...]
COMPOSITE_NESTING: ContextVar[tuple[CompositeNesting, Spawners] | None] = ContextVar(
    "llmspell_composite_nesting", default=None)
"""Set (by ``_run_concurrently`` in :mod:`llmspell.hooks.composite`) while it creates its
children's tasks, which copy it: the outermost run's :class:`CompositeNesting` and the tasks
the composites enclosing this task ran in, outermost first."""


def _suspended_points(task: asyncio.Task[Any]) -> list[str]:
    """The points of the dispatches in progress in a suspended task, outermost first (its
    coroutines, each awaiting the next)."""
    frames: list[Any] = []
    awaited: Any = task.get_coro()
    while awaited is not None and not getattr(awaited, "cr_running", False):
        frame = getattr(awaited, "cr_frame", None)
        if frame is None:
            break
        frames.append(frame)
        awaited = getattr(awaited, "cr_await", None)
    return [point for frame in frames if (point := _dispatch_point(frame)) is not None]


def _spawner_points(nesting: tuple[CompositeNesting, Spawners]) -> list[str]:
    """The points of the dispatches in progress in the tasks that composites ran this one
    from, outermost first."""
    return [point for task in nesting[1] if task is not None
            for point in _suspended_points(task)]


def composite_loop(depth: int, live: int) -> OperationDepthError:
    """The error a composite hook raises instead of running its children when composites
    are nested ``depth`` deep (:data:`MAX_COMPOSITE_DEPTH`) or ``live`` runs are in progress
    under the outermost (:data:`MAX_COMPOSITE_RUNS`). It is a dispatch loop's error (see
    :func:`_looped`): handed out of every dispatch of the loop but the outermost, where the
    policy of the hook that started it decides, once; composites pass it on unwrapped."""
    nesting = COMPOSITE_NESTING.get()
    points = _spawner_points(nesting) if nesting is not None else []
    inner = _dispatch_points(sys._getframe(1))
    inner.reverse()
    points.extend(inner)
    if depth > MAX_COMPOSITE_DEPTH:
        why = (f"nested {depth} deep (ParallelHook and VotingHook run each child in a new "
               f"task; the limit is {MAX_COMPOSITE_DEPTH})")
    else:
        why = (f"{live} of them running at once under the outermost (ParallelHook and "
               f"VotingHook run each child in a new task; the limit is {MAX_COMPOSITE_RUNS})")
    repeated = _repeated_points(points)
    if repeated:
        points = points[points.index(repeated[0]):]  # from the loop's first dispatch
        head = (f"hook dispatch looped: {' and '.join(map(repr, repeated))} dispatched again "
                f"from inside {'its' if len(repeated) == 1 else 'their'} own dispatch, "
                f"through composite hooks, {why}")
        hint = _LOOP_HINT
    else:
        head = f"hook dispatches nested through composite hooks, {why}"
        hint = ("a composite hook's child must not dispatch points whose hooks dispatch "
                "further this deep: dispatch from the operation instead of from hooks")
    error = OperationDepthError(f"{head}: " + _loop_path(points), hint=hint)
    _LOOPS[error] = frozenset(repeated or points)
    return error


def is_dispatch_loop(exc: BaseException) -> bool:
    """True for the :class:`OperationDepthError` of a dispatch loop, which a composite hook
    passes on as it is (not as its child's :class:`HookExecutionError`), so the loop's
    outermost dispatch handles it."""
    return isinstance(exc, OperationDepthError) and exc in _LOOPS
