"""The four patterns: :class:`Sequential`, :class:`Conditional`, :class:`Loop`,
:class:`Parallel`. Each is a :class:`~llmspell.runtime.workflows.Workflow` with a name, and
each can be a step of another (``Step("inner", workflow=...)``; it shares the state)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

from llmspell.core.errors import OperationCancelled, WorkflowError
from llmspell.core.text import error_text
from llmspell.hooks.points import HookPoint
from llmspell.hooks.result import Modified, Redirect
from llmspell.runtime.workflows.engine import (
    Workflow,
    _error_info,
    _Jump,
    _Run,
    call_condition,
)
from llmspell.runtime.workflows.steps import Branch, Step, WorkflowContext, resolve

__all__ = [
    "BRANCH_SELECTED",
    "CONDITION_EVALUATED",
    "LOOP_ITERATION_COMPLETE",
    "LOOP_ITERATION_START",
    "LOOP_TERMINATED",
    "PARALLEL_FORK",
    "PARALLEL_JOIN",
    "Conditional",
    "Loop",
    "Parallel",
    "Sequential",
]

CONDITION_EVALUATED = HookPoint.custom("workflow_condition_evaluated")
BRANCH_SELECTED = HookPoint.custom("workflow_branch_selected")
LOOP_ITERATION_START = HookPoint.custom("workflow_loop_iteration_start")
LOOP_ITERATION_COMPLETE = HookPoint.custom("workflow_loop_iteration_complete")
LOOP_TERMINATED = HookPoint.custom("workflow_loop_terminated")
PARALLEL_FORK = HookPoint.custom("workflow_parallel_fork")
PARALLEL_JOIN = HookPoint.custom("workflow_parallel_join")

Checkpoint = Literal["step", "none"]
OnMaxIterations = Literal["complete", "fail"]
_ON_MAX_ITERATIONS = ("complete", "fail")


def _steps(name: str, steps: Iterable[Step], what: str) -> list[Step]:
    out = list(steps)
    seen: set[str] = set()
    for step in out:
        if not isinstance(step, Step):
            raise WorkflowError(name, f"{what} holds {step!r}, not a Step",
                                hint="build steps with Step(name, tool=/agent=/fn=/workflow=)")
        if step.name in seen:
            raise WorkflowError(name, f"two steps of {what} are called {step.name!r}",
                                step=step.name, hint="step names must be unique: outputs are "
                                "keyed by them")
        seen.add(step.name)
    return out


class Sequential(Workflow):
    """Run ``steps`` one after another. Checkpoint position: the next step's index."""

    kind = "sequential"

    def __init__(self, name: str, steps: Sequence[Step], *, timeout: float | None = None,
                 checkpoint: Checkpoint = "none", rollback: bool = False) -> None:
        super().__init__(name, timeout=timeout, checkpoint=checkpoint, rollback=rollback)
        self.steps = _steps(name, steps, f"workflow {name!r}")

    async def _body(self, run: _Run, ctx: WorkflowContext, start: Any) -> None:
        first = start.get("index", 0) if isinstance(start, dict) else 0
        await run.sequence(self.steps, ctx, first, lambda i: {"index": i})


class Conditional(Workflow):
    """Run the steps of the first branch whose ``condition(ctx)`` is true, else ``default``.

    Fires ``custom:workflow_condition_evaluated`` per condition and
    ``custom:workflow_branch_selected`` (``Redirect(name)`` or ``Modified`` with
    ``data["branch"]`` picks another branch; ``Cancel`` raises). The selected branch name is
    recorded in ``outputs["<name>.branch"]`` (``"default"``, or None when nothing ran).
    """

    kind = "conditional"

    def __init__(self, name: str, branches: Sequence[Branch],
                 default: Sequence[Step] | None = None, *, timeout: float | None = None,
                 checkpoint: Checkpoint = "none", rollback: bool = False) -> None:
        super().__init__(name, timeout=timeout, checkpoint=checkpoint, rollback=rollback)
        self.branches: dict[str, list[Step]] = {}
        self.conditions: list[tuple[str, Callable[[WorkflowContext], Any]]] = []
        for branch in branches:
            if branch.condition is None:
                raise WorkflowError(name, f"branch {branch.name!r} has no condition",
                                    hint="Branch(name, condition=lambda ctx: ..., steps=[...])")
            if branch.name in self.branches or branch.name == "default":
                raise WorkflowError(name, f"branch name {branch.name!r} is taken",
                                    hint="branch names are unique and 'default' is reserved")
            self.branches[branch.name] = _steps(name, branch.steps, f"branch {branch.name!r}")
            self.conditions.append((branch.name, branch.condition))
        if default is not None:
            self.branches["default"] = _steps(name, default, "the default branch")

    def _check(self, run: _Run, name: Any, source: str | None) -> str:
        if not isinstance(name, str) or name not in self.branches:
            raise WorkflowError(self.name, f"no branch {name!r} to select", step=source,
                                hint=f"branches: {', '.join(self.branches) or 'none'}")
        return name

    async def _body(self, run: _Run, ctx: WorkflowContext, start: Any) -> None:
        selected: str | None
        index = 0
        if isinstance(start, dict) and "branch" in start:
            selected, index = start["branch"], int(start.get("index", 0))
        else:
            selected = "default" if "default" in self.branches else None
            for name, condition in self.conditions:
                value = await call_condition(condition, ctx, f"the condition of branch {name!r}")
                await run.custom(CONDITION_EVALUATED, "condition_evaluated",
                                 {"branch": name, "result": value})
                if value:
                    selected = name
                    break
            outcome, hctx = await run.custom(BRANCH_SELECTED, "branch_selected",
                                             {"branch": selected,
                                              "branches": list(self.branches)})
            if isinstance(outcome.result, Redirect):
                selected = self._check(run, outcome.result.target, None)
            elif isinstance(outcome.result, Modified) and hctx is not None:
                changed = hctx.data.get("branch", selected)
                selected = None if changed is None else self._check(run, changed, None)
        while selected is not None:
            run.outputs[f"{self.name}.branch"] = selected
            try:
                await run.sequence(self.branches[selected], ctx, index,
                                   _position(selected))
                return
            except _Jump as jump:
                if jump.target not in self.branches:
                    raise
                run.redirects += 1
                if run.redirects > 100:
                    raise WorkflowError(self.name, "redirects went over 100", step=jump.source,
                                        hint="check the hooks that return Redirect") from None
                selected, index = jump.target, 0
                run.publish("branch_selected", {"branch": selected, "redirected_from":
                                                jump.source})
        run.outputs[f"{self.name}.branch"] = None


def _position(branch: str) -> Callable[[int], dict[str, Any]]:
    return lambda i: {"branch": branch, "index": i}


class Loop(Workflow):
    """Run ``body`` repeatedly: over the items of ``over`` (an iterable, a callable
    ``(ctx) -> iterable`` or a ``"${...}"`` reference), over ``range=(start, stop, step)``,
    or while ``while_(ctx)`` is true (checked before each iteration); at most
    ``max_iterations``; ``break_if(ctx)`` (after each iteration) stops early.

    Body steps see ``ctx.item`` and ``ctx.index``. Per-iteration outputs (``{step: output}``)
    are in ``outputs["<name>.iterations"]``; the body's step names hold the last iteration's.
    Why the loop ended is in ``outputs["<name>.terminated"]``: ``exhausted`` (no items
    left), ``condition`` (``while_`` turned false), ``break`` (``break_if``) or
    ``max_iterations`` (stopped with more to do: items left, or ``while_`` still true).
    ``on_max_iterations``: ``"complete"`` (default: the loop completes) or ``"fail"`` (the
    workflow fails with :class:`~llmspell.runtime.workflows.WorkflowFailedError` naming the
    loop). Fires ``custom:workflow_loop_iteration_start``/``_complete`` and
    ``custom:workflow_loop_terminated`` (data ``reason``, as above). Checkpoint position: the
    next iteration's index.
    """

    kind = "loop"

    def __init__(self, name: str, body: Sequence[Step], *, over: Any = None,
                 range: tuple[int, ...] | None = None,
                 while_: Callable[[WorkflowContext], Any] | None = None,
                 max_iterations: int = 100,
                 break_if: Callable[[WorkflowContext], Any] | None = None,
                 on_max_iterations: OnMaxIterations = "complete",
                 timeout: float | None = None, checkpoint: Checkpoint = "none",
                 rollback: bool = False) -> None:
        super().__init__(name, timeout=timeout, checkpoint=checkpoint, rollback=rollback)
        if sum(x is not None for x in (over, range, while_)) > 1:
            raise WorkflowError(name, "give at most one of over, range, while_",
                                hint="Loop(name, body, over=[...]) or range=(0, 10) or while_=fn")
        if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) \
                or max_iterations < 0:
            raise WorkflowError(name, f"max_iterations must be a whole number >= 0, got "
                                f"{max_iterations!r}", hint="max_iterations=100")
        if not isinstance(on_max_iterations, str) or on_max_iterations not in _ON_MAX_ITERATIONS:
            raise WorkflowError(name, f"on_max_iterations must be 'complete' or 'fail', got "
                                f"{on_max_iterations!r}",
                                hint="on_max_iterations='fail' fails the workflow when the "
                                     "loop stops at max_iterations with more to do; "
                                     "'complete' (the default) completes it")
        if range is not None and (not isinstance(range, tuple | list)
                                  or not 1 <= len(range) <= 3
                                  or any(isinstance(n, bool) or not isinstance(n, int)
                                         for n in range)
                                  or (len(range) == 3 and range[2] == 0)):
            raise WorkflowError(name, f"range must be (stop), (start, stop) or (start, stop, "
                                f"step) of whole numbers, step not 0; got {range!r}",
                                hint="range=(0, 10) or range=(0, 10, 2)")
        for label, fn in (("while_", while_), ("break_if", break_if)):
            if fn is not None and not callable(fn):
                raise WorkflowError(name, f"{label} must be a function of the workflow "
                                    f"context, got {type(fn).__name__}",
                                    hint=f"{label}=lambda ctx: ctx.get('done') is not True")
        self.body = _steps(name, body, f"the body of loop {name!r}")
        self.over = over
        self.range = range
        self.while_ = while_
        self.max_iterations = max_iterations
        self.break_if = break_if
        self.on_max_iterations: OnMaxIterations = on_max_iterations

    async def _items(self, ctx: WorkflowContext) -> list[Any] | None:
        """The items to loop over (None without ``over``/``range``): at most one more than
        ``max_iterations``, so that running out and being cut short can be told apart."""
        if self.range is not None:
            return list(range(*self.range)[:self.max_iterations + 1])
        if self.over is None:
            return None
        try:
            value = await resolve(self.over, ctx)
        except WorkflowError:
            raise
        except Exception as exc:
            raise WorkflowError(self.name, f"the items of loop {self.name!r} could not be "
                                f"computed: {type(exc).__name__}: {error_text(exc)}",
                                hint="the function given as over= raised; it gets the "
                                     "WorkflowContext") from exc
        try:
            items = iter(value)
        except TypeError:
            raise WorkflowError(self.name, f"cannot loop over a {type(value).__name__}",
                                hint="over= takes an iterable, a callable returning one, or "
                                     "a ${...} reference to one") from None
        try:
            # No more than the loop may use (and one to tell whether there were more): an
            # endless iterator (a generator, count()) ends there instead of filling memory.
            return list(itertools.islice(items, self.max_iterations + 1))
        except Exception as exc:
            raise WorkflowError(self.name, f"iterating the items of loop {self.name!r} "
                                f"raised {type(exc).__name__}: {error_text(exc)}",
                                hint="check the iterable given as over=") from exc

    async def _body(self, run: _Run, ctx: WorkflowContext, start: Any) -> None:
        items = await self._items(ctx)
        index = start.get("index", 0) if isinstance(start, dict) else 0
        key = f"{self.name}.iterations"
        iterations: list[Any] = list(run.outputs.get(key, []))
        reason = "break" if isinstance(start, dict) and start.get("break") else ""
        while not reason:
            # Why it ends is checked in this order, so that "max_iterations" means there was
            # more to do: an item left, or a while_ condition still true.
            item: Any = None
            if items is not None:
                if index >= len(items):
                    reason = "exhausted"
                    break
                item = items[index]
            ictx = WorkflowContext(state=run.state, outputs=run.outputs, input=ctx.input,
                                   item=item, index=index, workflow_id=ctx.workflow_id,
                                   workflow=ctx.workflow, system=ctx.system)
            if self.while_ is not None and not await call_condition(
                    self.while_, ictx, f"the while_ condition of loop {self.name!r}"):
                reason = "condition"
                break
            if index >= self.max_iterations:
                reason = "max_iterations"
                break
            await run.custom(LOOP_ITERATION_START, "loop_iteration",
                             {"index": index, "item": item})
            await run.sequence(self.body, ictx)
            done = {s.name: run.outputs.get(s.name) for s in self.body}
            iterations.append(done)
            run.outputs[key] = list(iterations)
            await run.custom(LOOP_ITERATION_COMPLETE, "loop_iteration_completed",
                             {"index": index, "outputs": done})
            index += 1
            stop = self.break_if is not None and await call_condition(
                self.break_if, ictx, f"the break_if condition of loop {self.name!r}")
            await run.save_checkpoint({"index": index, "break": stop})
            if stop:
                reason = "break"
        run.outputs.setdefault(key, list(iterations))
        run.outputs[f"{self.name}.terminated"] = reason
        await run.custom(LOOP_TERMINATED, "loop_terminated",
                         {"reason": reason, "iterations": index})
        if reason == "max_iterations" and self.on_max_iterations == "fail":
            what = ("its while_ condition was still true" if self.while_ is not None
                    else "items were left" if items is not None
                    else "it has no other end (no over=, range= or while_=)")
            raise WorkflowError(self.name, f"loop {self.name!r} stopped at max_iterations="
                                f"{self.max_iterations} and {what}",
                                hint="raise max_iterations, make the loop end sooner (while_, "
                                     "break_if, fewer items), or pass "
                                     "on_max_iterations='complete' to accept a cut-short loop")


class Parallel(Workflow):
    """Run ``branches`` (each a :class:`Branch` or a list of steps, named ``branch<i>``)
    concurrently, each branch's steps in order, at most ``max_concurrency`` at a time.

    ``fail_fast=True``: the first failure cancels the other branches and fails the workflow.
    ``fail_fast=False``: every branch runs; failures are recorded in ``errors`` (with the
    branch) and ``outputs["<name>.branches"]`` (``{branch: "completed" | "failed"}``).
    Fires ``custom:workflow_parallel_fork`` and ``custom:workflow_parallel_join``.
    Checkpoint position: the branches done.
    """

    kind = "parallel"

    def __init__(self, name: str, branches: Sequence[Branch | Sequence[Step]], *,
                 max_concurrency: int | None = None, fail_fast: bool = True,
                 timeout: float | None = None, checkpoint: Checkpoint = "none",
                 rollback: bool = False) -> None:
        super().__init__(name, timeout=timeout, checkpoint=checkpoint, rollback=rollback)
        if max_concurrency is not None and max_concurrency < 1:
            raise WorkflowError(name, "max_concurrency must be >= 1 or None",
                                hint="max_concurrency=4")
        self.branches: list[Branch] = []
        owners: dict[str, str] = {}
        for i, branch in enumerate(branches):
            if isinstance(branch, Branch):
                b = Branch(branch.name, None, _steps(name, branch.steps,
                                                     f"branch {branch.name!r}"))
            else:
                b = Branch(f"branch{i}", None, _steps(name, branch, f"branch{i}"))
            if any(b.name == other.name for other in self.branches):
                raise WorkflowError(name, f"two branches are called {b.name!r}",
                                    hint="branch names must be unique")
            for step in b.steps:
                other = owners.setdefault(step.name, b.name)
                if other != b.name:
                    raise WorkflowError(
                        name, f"branches {other!r} and {b.name!r} both have a step called "
                        f"{step.name!r}", step=step.name,
                        hint="step names must be unique across the branches: outputs are "
                             "keyed by them, and one branch's would overwrite the other's")
            self.branches.append(b)
        self.max_concurrency = max_concurrency
        self.fail_fast = fail_fast

    async def _body(self, run: _Run, ctx: WorkflowContext, start: Any) -> None:
        done: set[str] = set(start.get("done", [])) if isinstance(start, dict) else set()
        key = f"{self.name}.branches"
        statuses: dict[str, str] = dict(run.outputs.get(key, {}))
        names = [b.name for b in self.branches]
        await run.custom(PARALLEL_FORK, "parallel_fork",
                         {"branches": names, "skipped": sorted(done),
                          "max_concurrency": self.max_concurrency,
                          "fail_fast": self.fail_fast})
        limit = (asyncio.Semaphore(self.max_concurrency) if self.max_concurrency
                 else contextlib.nullcontext())
        lock = asyncio.Lock()

        async def one(branch: Branch) -> None:
            # Each branch is a task of its own: marking it makes rollback (of this workflow,
            # or of one nested in the branch) undo per step what the branch wrote, never a
            # sibling's work.
            run.enter_branch(branch.name)
            async with limit:
                try:
                    await run.sequence(list(branch.steps), ctx)
                    statuses[branch.name] = "completed"
                except _Jump as jump:
                    raise WorkflowError(self.name, f"cannot redirect to {jump.target!r} from "
                                        f"parallel branch {branch.name!r}", step=jump.source,
                                        hint="Redirect works within a branch's steps") from None
                except OperationCancelled:
                    raise
                except Exception as exc:
                    if self.fail_fast:
                        raise
                    statuses[branch.name] = "failed"
                    step = exc.step if isinstance(exc, WorkflowError) else None
                    run.errors.append({"branch": branch.name, "step": step,
                                       **_error_info(exc)})
                async with lock:
                    done.add(branch.name)
                    run.outputs[key] = dict(statuses)
                    await run.save_checkpoint({"done": sorted(done)})

        tasks = [asyncio.ensure_future(one(b)) for b in self.branches if b.name not in done]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        run.outputs[key] = dict(statuses)
        await run.custom(PARALLEL_JOIN, "parallel_join", {"branches": dict(statuses)})
