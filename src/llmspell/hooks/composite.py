"""Composite hooks: group child hooks and register the group like any single hook.

A composite is a hook object (``metadata``, async ``execute``, ``should_execute``), so
:meth:`HookRegistry.register` accepts it, the executor runs it (with the composite's own
timeout and breaker) and a composite can be the child of another composite. A child is
anything the registry accepts: a callable ``(ctx) -> HookResult | None`` (sync or async, or
returning an awaitable) or a hook object. Every child is run through :func:`invoke`.

The rules, shared by all four patterns:

* :func:`invoke` skips a hook object whose ``should_execute(ctx)`` is False (the result is
  ``Skipped("not applicable")``), awaits awaitables (with the child's own
  ``metadata.timeout`` for hook objects), maps ``None`` to :data:`CONTINUE` and raises
  :class:`~llmspell.errors.InvalidHookResultError` for any other non-result.
* A child's exception leaves the composite as a
  :class:`~llmspell.errors.HookExecutionError` naming the child (``raise ... from exc``;
  one that already is a ``HookExecutionError``, e.g. from a nested composite, passes
  unchanged). The executor then applies the *composite's* error policy: with
  ``error_policy="fail_closed"`` a failing child cancels the operation.
* A dispatch loop's :class:`~llmspell.errors.OperationDepthError` (a child dispatching the
  point its composite runs at, directly or through other points) passes unwrapped, so the
  loop's outermost dispatch handles it, once (see :mod:`llmspell.hooks.executor`).
  :class:`ParallelHook` and :class:`VotingHook` run each child in a new task, where a loop
  never reaches Python's recursion limit: nested 32 deep through their children's
  dispatches (``MAX_COMPOSITE_DEPTH``), or with 1024 of their runs in progress under the
  outermost (``MAX_COMPOSITE_RUNS``), they raise that error instead of running children.
* Children are named ``child.metadata.name`` (hook objects) or ``__qualname__``.

The patterns:

* :class:`SequentialHook` runs children in order on the caller's context. ``Modified``
  installs its data on ``ctx.data`` (the next child sees it); ``Continue``/``Skipped`` go on;
  any other result (Cancel, Replace, Redirect, Retry, Fork, Cache) is returned at once. At
  the end: ``Modified(final data)`` if any child modified, else ``Continue``.
* :class:`ParallelHook` runs children concurrently, each on ``ctx.copy()``, optionally with a
  concurrency limit and an overall timeout (stragglers are cancelled and
  :class:`~llmspell.errors.HookTimeoutError` is raised). If a child raised, the first error
  in child order is raised once all have finished. Otherwise the result is chosen by
  precedence ``Cancel > Replace > Redirect > Retry > Modified > Fork > Cache >
  Continue/Skipped``, ties going to the earliest child; when nothing outranks
  Continue/Skipped the result is ``Continue``. The caller's context is untouched except that
  a winning ``Modified`` sets ``ctx.data``.
* :class:`FirstMatchHook` runs children in order on the caller's context and returns the
  first result that is not ``Continue``/``Skipped`` (``Modified`` is a match); else
  ``Continue``.
* :class:`VotingHook` runs children concurrently on copies. Each child's result kind is a
  vote; ``Skipped`` abstains and so does a child that raised (its error is logged). A
  non-continue kind wins when ``votes / counted votes >= threshold``. If several kinds reach
  the threshold (which includes an exact tie), the :class:`TieBreaker` decides: ``FIRST``
  takes the kind of the earliest child among them, ``STRICTEST`` the highest by the
  precedence above, ``CONTINUE`` returns ``Continue``. The result is the first child's
  result of the winning kind (a winning ``Modified`` also sets ``ctx.data``); no winner
  gives ``Continue``. If every child raised, the first error is raised.

Concurrency is cooperative: a *sync* child runs to completion on the event loop when its
turn comes, so only async children actually overlap. Composites keep no per-run state, so
one instance may run in many dispatches at once.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import Any, ClassVar, TypeAlias, cast

from llmspell.core.errors import (
    HookExecutionError,
    HookTimeoutError,
    InvalidHookResultError,
    InvalidValueError,
    OperationDepthError,
)
from llmspell.core.redact import get_logger
from llmspell.hooks.context import HookContext
from llmspell.hooks.executor import (
    COMPOSITE_NESTING,
    MAX_COMPOSITE_DEPTH,
    MAX_COMPOSITE_RUNS,
    CompositeNesting,
    Spawners,
    composite_loop,
    is_dispatch_loop,
)
from llmspell.hooks.hook import (
    BaseHook,
    Hook,
    HookCallable,
    cancel_requested,
    check_predicate,
)
from llmspell.hooks.metadata import HookMetadata, metadata_fields
from llmspell.hooks.result import (
    CONTINUE,
    RESULT_TYPES,
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
)

__all__ = [
    "CompositeHook",
    "FirstMatchHook",
    "HookLike",
    "ParallelHook",
    "SequentialHook",
    "TieBreaker",
    "VotingHook",
    "invoke",
]

logger = get_logger("llmspell.hooks")

HookLike: TypeAlias = Hook | HookCallable
"""A child of a composite: a hook object or a hook callable."""

# Lower is stronger. Continue and Skipped share the weakest rank.
_RANK: dict[str, int] = {
    Cancel.kind: 0,
    Replace.kind: 1,
    Redirect.kind: 2,
    Retry.kind: 3,
    Modified.kind: 4,
    Fork.kind: 5,
    Cache.kind: 6,
    Continue.kind: 7,
    Skipped.kind: 7,
}
_WEAKEST = _RANK[Continue.kind]


class TieBreaker(StrEnum):
    """How :class:`VotingHook` picks among several kinds that reach the threshold."""

    FIRST = "first"
    """The kind voted for by the earliest child (in list order) among the tied kinds."""
    STRICTEST = "strictest"
    """The strongest kind by precedence (Cancel > Replace > ... > Cache)."""
    CONTINUE = "continue"
    """No decision: return ``Continue``."""


# -- invoking one child ------------------------------------------------------------------


def _is_hook_object(hook: object) -> bool:
    return callable(getattr(hook, "execute", None)) and isinstance(
        getattr(hook, "metadata", None), HookMetadata
    )


def _name_of(hook: object) -> str:
    """The name a child is reported under: its metadata name, else its ``__qualname__``."""
    metadata = getattr(hook, "metadata", None)
    if isinstance(metadata, HookMetadata) and callable(getattr(hook, "execute", None)):
        return metadata.name
    name = getattr(hook, "__qualname__", None)
    return name if isinstance(name, str) and name else type(hook).__name__


async def invoke(hook: HookLike, ctx: HookContext) -> HookResult:
    """Run one child hook on ``ctx`` and return its result.

    Hook objects whose ``should_execute(ctx)`` is False give ``Skipped("not applicable")``.
    Awaitables are awaited (a hook object's ``metadata.timeout`` bounds the wait; running
    past it raises :class:`HookTimeoutError`). ``None`` becomes :data:`CONTINUE`; any other
    non-result raises :class:`InvalidHookResultError`. Other exceptions are raised as
    :class:`HookExecutionError` naming the child, with the original as ``__cause__``
    (``HookExecutionError`` itself passes unchanged).
    """
    name = _name_of(hook)
    timeout: float | None = None
    try:
        if _is_hook_object(hook):
            obj = cast(Hook, hook)
            should = getattr(obj, "should_execute", None)
            if callable(should) and not should(ctx):
                return Skipped("not applicable")
            timeout = obj.metadata.timeout
            out: object = obj.execute(ctx)
        else:
            out = cast(HookCallable, hook)(ctx)
        if inspect.isawaitable(out):
            out = await _await(out, timeout, name, ctx.point)
    except HookExecutionError:
        raise
    except (Exception, SystemExit) as exc:  # sys.exit() in a child is its failure too
        if is_dispatch_loop(exc):  # the loop's, not this child's: its outermost dispatch decides
            raise
        raise HookExecutionError(name, ctx.point, f"{type(exc).__name__}: {exc}") from exc
    except asyncio.CancelledError as exc:
        # The composite's own cancellation (its timeout, the dispatch's) propagates; one no
        # one asked for (an await inside the child was cancelled) is the child's failure.
        if cancel_requested():
            raise
        raise HookExecutionError(
            name, ctx.point,
            "CancelledError, though the composite was not cancelled (an await inside the "
            "child was cancelled)") from exc
    if out is None:
        return CONTINUE
    if not isinstance(out, RESULT_TYPES):
        raise InvalidHookResultError(
            name,
            ctx.point,
            f"returned {type(out).__name__}, not a HookResult or None",
            hint="return Continue(), Modified(data), Cancel(reason), ... or None",
        )
    return cast(HookResult, out)


async def _await(awaitable: Any, timeout: float | None, name: str, point: str) -> object:
    if timeout is None:
        return await awaitable
    scope = asyncio.timeout(timeout)
    try:
        async with scope:
            return await awaitable
    except TimeoutError as exc:
        if not scope.expired():  # the child's own TimeoutError: its failure, not a timeout
            raise
        raise HookTimeoutError(
            name, point, f"timed out after {timeout:g} s",
            hint="make the hook faster or raise its timeout",
        ) from exc


async def _cancel_all(tasks: Iterable[asyncio.Task[Any]]) -> None:
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)


async def _run_concurrently(
    owner: str,
    hooks: Sequence[HookLike],
    ctx: HookContext,
    *,
    timeout: float | None = None,
    limit: int | None = None,
) -> list[HookResult | HookExecutionError]:
    """Run every child on its own ``ctx.copy()``; return results or errors in child order.

    Each child runs in a new task, on a fresh stack, so a dispatch loop through here never
    reaches the recursion limit: the runs nested through the children's dispatches are
    counted instead (:data:`~llmspell.hooks.executor.COMPOSITE_NESTING`, copied into the
    children's tasks), and past :data:`~llmspell.hooks.executor.MAX_COMPOSITE_DEPTH` (or
    :data:`~llmspell.hooks.executor.MAX_COMPOSITE_RUNS` in progress) this raises the loop's
    :class:`OperationDepthError` before starting any child. A child that raised a loop's
    error makes this raise it once every child finished."""
    if not hooks:
        return []
    nesting = COMPOSITE_NESTING.get()
    spawners: Spawners
    if nesting is None:
        shared, spawners = CompositeNesting(), ()
    else:
        shared, spawners = nesting
        if len(spawners) >= MAX_COMPOSITE_DEPTH or shared.live >= MAX_COMPOSITE_RUNS:
            raise composite_loop(len(spawners) + 1, shared.live + 1)
    semaphore = asyncio.Semaphore(limit) if limit is not None else None

    async def one(child: HookLike, child_ctx: HookContext
                  ) -> HookResult | HookExecutionError | OperationDepthError:
        try:
            if semaphore is None:
                return await invoke(child, child_ctx)
            async with semaphore:
                return await invoke(child, child_ctx)
        except (HookExecutionError, OperationDepthError) as exc:  # invoke: a loop's only
            return exc

    copies = [ctx.copy() for _ in hooks]  # before any task: a copy that fails leaks none
    shared.live += 1
    try:
        token = COMPOSITE_NESTING.set((shared, (*spawners, asyncio.current_task())))
        try:  # the tasks copy the context as it is now
            tasks = [asyncio.create_task(one(child, child_ctx))
                     for child, child_ctx in zip(hooks, copies, strict=True)]
        finally:
            COMPOSITE_NESTING.reset(token)
        try:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
        except BaseException:
            # Cancelled from outside (e.g. the executor's timeout for this composite).
            await _cancel_all(tasks)
            raise
    finally:
        shared.live -= 1
    if pending:
        await _cancel_all(pending)
        raise HookTimeoutError(
            owner,
            ctx.point,
            f"{len(pending)} of {len(tasks)} child hooks still running after {timeout:g} s "
            "were cancelled",
            hint="make the child hooks faster or raise the composite's timeout",
        )
    outcomes = [task.result() for task in tasks]
    for outcome in outcomes:
        if isinstance(outcome, OperationDepthError):
            raise outcome.with_traceback(None) from None  # the loop's, as the child had it
    return cast(list[HookResult | HookExecutionError], outcomes)


# -- construction helpers ----------------------------------------------------------------


def _build_metadata(name: str, fields: dict[str, Any]) -> HookMetadata:
    """Validate and normalise metadata keywords (strings become enums, names priorities)."""
    if "name" in fields:
        raise InvalidValueError(
            f"composite hook {name!r}: pass the name as the first argument, not as metadata"
        )
    try:
        return HookMetadata(**metadata_fields(name=name, **fields))
    except InvalidValueError as exc:
        raise InvalidValueError(
            f"composite hook {name!r}: {exc.message}", hint=exc.hint
        ) from None


def _check_children(name: str, hooks: Iterable[HookLike]) -> tuple[HookLike, ...]:
    if isinstance(hooks, (str, bytes)) or not isinstance(hooks, Iterable):
        raise InvalidValueError(f"composite hook {name!r}: hooks must be an iterable of hooks")
    children = tuple(hooks)
    for i, child in enumerate(children):
        if not (_is_hook_object(child) or callable(child)):
            raise InvalidValueError(
                f"composite hook {name!r}: child {i} ({type(child).__name__}) is not a hook",
                hint="pass callables (ctx) -> HookResult | None, or objects with "
                "execute(ctx), metadata and should_execute(ctx)",
            )
        should = getattr(child, "should_execute", None)
        if _is_hook_object(child) and callable(should):
            check_predicate(child, should)
    return children


def _check_timeout(name: str, timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise InvalidValueError(
            f"composite hook {name!r}: timeout must be a number > 0 seconds or None, "
            f"got {timeout!r}"
        )
    return float(timeout)


def _strongest(results: Sequence[HookResult]) -> HookResult:
    """The highest-precedence result; the earliest wins ties; Continue if none outranks it."""
    best: HookResult = CONTINUE
    best_rank = _WEAKEST
    for result in results:
        rank = _RANK[result.kind]
        if rank < best_rank:
            best, best_rank = result, rank
    return best


# -- the composites ----------------------------------------------------------------------


class CompositeHook(BaseHook):
    """Base of the composite hooks: a named group of child hooks, itself a hook object.

    ``metadata`` keywords (``priority``, ``error_policy``, ``tags``, ``timeout``, ...) go to
    :class:`HookMetadata`; strings are parsed (``priority="high"``,
    ``error_policy="fail_closed"``). ``hooks`` is the tuple of children, ``kind`` names the
    pattern.
    """

    kind: ClassVar[str] = "composite"
    hooks: tuple[HookLike, ...]

    def __init__(self, name: str, hooks: Iterable[HookLike], **metadata: Any) -> None:
        super().__init__(_build_metadata(name, metadata))
        self.hooks = _check_children(name, hooks)

    @property
    def name(self) -> str:
        """The composite's name (``metadata.name``)."""
        return self.metadata.name

    async def execute(self, ctx: HookContext) -> HookResult:
        """Run the children according to the pattern and return the combined result."""
        raise NotImplementedError

    def __repr__(self) -> str:
        names = ", ".join(_name_of(h) for h in self.hooks)
        return f"<{type(self).__name__} {self.name!r} [{names}]>"


class SequentialHook(CompositeHook):
    """Run children in order; ``Modified`` chains, any decisive result stops the run.

    ``Modified`` installs its data on ``ctx.data`` for the next child; ``Continue`` and
    ``Skipped`` go on; Cancel, Replace, Redirect, Retry, Fork or Cache is returned at once.
    The end result is ``Modified(final data)`` if any child modified, else ``Continue``.
    """

    kind: ClassVar[str] = "sequential"

    async def execute(self, ctx: HookContext) -> HookResult:
        """Run the children one after another on ``ctx``."""
        modified = False
        original = ctx.data
        try:
            for child in self.hooks:
                result = await invoke(child, ctx)
                if type(result) is Continue:  # the common case: no isinstance misses
                    continue
                if isinstance(result, Modified):
                    ctx.data = result.data
                    modified = True
                elif not isinstance(result, (Continue, Skipped)):
                    return result
        except BaseException:
            # A failed (or timed-out, or cancelled) group changes nothing: its policy
            # decides as if it had not run, so its earlier children's data must not stay.
            ctx.data = original
            raise
        return Modified(ctx.data) if modified else CONTINUE


class ParallelHook(CompositeHook):
    """Run children concurrently on copies of the context; the strongest result wins.

    ``timeout`` (seconds) bounds the whole group: on expiry the unfinished children are
    cancelled and :class:`HookTimeoutError` is raised. It is separate from
    ``metadata.timeout`` (which the executor enforces on the composite itself, and which can
    still be set at registration). ``max_concurrency`` limits how many children run at once.
    Precedence: Cancel > Replace > Redirect > Retry > Modified > Fork > Cache >
    Continue/Skipped; ties go to the earliest child. If any child raised, the first error in
    child order is raised after all children finished. Only a winning ``Modified`` touches
    the caller's context (its data becomes ``ctx.data``).
    """

    kind: ClassVar[str] = "parallel"

    def __init__(
        self,
        name: str,
        hooks: Iterable[HookLike],
        *,
        timeout: float | None = None,
        max_concurrency: int | None = None,
        **metadata: Any,
    ) -> None:
        super().__init__(name, hooks, **metadata)
        self.timeout = _check_timeout(name, timeout)
        if max_concurrency is not None and (
            isinstance(max_concurrency, bool)
            or not isinstance(max_concurrency, int)
            or max_concurrency < 1
        ):
            raise InvalidValueError(
                f"composite hook {name!r}: max_concurrency must be an int >= 1 or None, "
                f"got {max_concurrency!r}"
            )
        self.max_concurrency = max_concurrency

    async def execute(self, ctx: HookContext) -> HookResult:
        """Run all children concurrently and combine their results by precedence."""
        outcomes = await _run_concurrently(
            self.name, self.hooks, ctx, timeout=self.timeout, limit=self.max_concurrency
        )
        results: list[HookResult] = []
        for outcome in outcomes:
            if isinstance(outcome, HookExecutionError):
                raise outcome
            results.append(outcome)
        best = _strongest(results)
        if type(best) is not Continue and isinstance(best, Modified):
            ctx.data = best.data
        return best


class FirstMatchHook(CompositeHook):
    """Run children in order; return the first result that is not ``Continue``/``Skipped``.

    ``Modified`` counts as a match (it is returned, not chained). No match: ``Continue``.
    """

    kind: ClassVar[str] = "first_match"

    async def execute(self, ctx: HookContext) -> HookResult:
        """Run children until one returns a decisive result."""
        for child in self.hooks:
            result = await invoke(child, ctx)
            if not isinstance(result, (Continue, Skipped)):
                return result
        return CONTINUE


class VotingHook(CompositeHook):
    """Run children concurrently on copies; each result kind is a vote.

    ``Skipped`` abstains, and so does a child that raised (its error is logged; if *every*
    child raised, the first error is raised). A kind other than ``continue`` wins when its
    votes divided by the counted (non-abstaining) votes is at least ``threshold``, a number
    in ``(0, 1]``. When several kinds reach it, ``tie_breaker`` decides (see
    :class:`TieBreaker`). The result is the first child's result of the winning kind; a
    winning ``Modified`` also sets ``ctx.data``. No winner: ``Continue``.
    """

    kind: ClassVar[str] = "voting"

    def __init__(
        self,
        name: str,
        hooks: Iterable[HookLike],
        *,
        threshold: float = 0.5,
        tie_breaker: TieBreaker | str = TieBreaker.FIRST,
        **metadata: Any,
    ) -> None:
        super().__init__(name, hooks, **metadata)
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, (int, float))
            or not 0 < threshold <= 1  # also rejects NaN
        ):
            raise InvalidValueError(
                f"voting hook {name!r}: threshold must be a number in (0, 1], "
                f"got {threshold!r}"
            )
        try:
            breaker = TieBreaker(tie_breaker)
        except ValueError:
            valid = ", ".join(t.value for t in TieBreaker)
            raise InvalidValueError(
                f"voting hook {name!r}: unknown tie breaker {tie_breaker!r}",
                hint=f"use one of: {valid}",
            ) from None
        self.threshold = float(threshold)
        self.tie_breaker = breaker

    async def execute(self, ctx: HookContext) -> HookResult:
        """Collect every child's vote and return the winning result (or ``Continue``)."""
        outcomes = await _run_concurrently(self.name, self.hooks, ctx)
        errors = [o for o in outcomes if isinstance(o, HookExecutionError)]
        if errors and len(errors) == len(outcomes):
            raise errors[0]
        for error in errors:
            logger.warning("voting hook %r: a child failed and abstains: %s", self.name, error)

        counted = 0
        votes: dict[str, int] = {}
        first: dict[str, tuple[int, HookResult]] = {}
        for index, outcome in enumerate(outcomes):
            if type(outcome) is not Continue and isinstance(outcome,
                                                            (HookExecutionError, Skipped)):
                continue
            counted += 1
            votes[outcome.kind] = votes.get(outcome.kind, 0) + 1
            first.setdefault(outcome.kind, (index, outcome))
        if not counted:
            return CONTINUE

        winners = [
            kind for kind, n in votes.items()
            if kind != Continue.kind and n / counted >= self.threshold
        ]
        if not winners:
            return CONTINUE
        if len(winners) > 1:
            if self.tie_breaker is TieBreaker.CONTINUE:
                return CONTINUE
            if self.tie_breaker is TieBreaker.STRICTEST:
                winners.sort(key=lambda kind: _RANK[kind])
            else:
                winners.sort(key=lambda kind: first[kind][0])
        result = first[winners[0]][1]
        if isinstance(result, Modified):
            ctx.data = result.data
        return result
