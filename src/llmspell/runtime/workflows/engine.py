"""The workflow engine: one run of a workflow, the step boundary and its hook results.

Every point a run reaches publishes ``workflow.<name>.<event>`` (whether or not hooks are
registered) with the run's correlation id; the hooks at a point are dispatched only when
some are registered (one dict lookup otherwise). At the step boundary
(``BeforeWorkflowStage``):

* ``Cancel`` raises :class:`~llmspell.errors.OperationCancelled` (hook and reason named);
* ``Modified`` changes the step input (``data["input"]``) and/or the shared state
  (``data["state"]``);
* ``Replace(value)`` is the step's output; the step does not run;
* ``Redirect(target)`` jumps to the step ``target`` (Sequential) or branch (Conditional);
* ``Retry`` asks the before hooks again after the delay; ``Fork`` runs its operations
  concurrently with the step (results under ``outputs["<step>.forks"]``).

``AfterWorkflowStage``: ``Modified`` replaces the output (``data["output"]``) and/or state,
``Replace`` replaces the output, ``Retry`` re-runs the step, ``Cancel`` raises,
``Redirect`` jumps. ``WorkflowError`` (a step failed): ``Retry`` re-runs the step,
``Replace`` recovers with its value, ``Redirect`` jumps, ``Cancel`` raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import itertools
import re
import time
from collections.abc import Awaitable, Callable, Generator, Iterable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import msgspec

from llmspell.core.errors import (
    EventTooLargeError,
    NotJsonSafeError,
    OperationCancelled,
    WorkflowError,
)
from llmspell.core.ids import new_id
from llmspell.core.redact import get_logger
from llmspell.core.text import error_text
from llmspell.core.values import check_json_safe
from llmspell.events.event import EventMetadata
from llmspell.hooks.context import ComponentId, ComponentType, HookContext
from llmspell.hooks.executor import NO_HOOKS, ChainResult
from llmspell.hooks.points import HookPoint
from llmspell.hooks.result import (
    Cancel,
    Continue,
    ForkOperation,
    Modified,
    Redirect,
    Replace,
    Retry,
    cancelled_error,
)
from llmspell.runtime.runs.scope import current_run
from llmspell.runtime.withheld import publish_withheld
from llmspell.runtime.workflows.steps import Step, WorkflowContext, resolve

if TYPE_CHECKING:
    from llmspell.runtime.agents.agent import SideEffects
    from llmspell.runtime.system import System

__all__ = [
    "CANCEL_ROLLBACK_GRACE",
    "CHECKPOINT_KEY",
    "MAX_NESTING",
    "WorkflowFailedError",
    "WorkflowResult",
    "Workflow",
]

CHECKPOINT_KEY = "__checkpoint__"
"""The key (scope ``workflow``, scope id the workflow id) a checkpoint is saved under."""

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*$")
_MAX_REDIRECTS = 100
MAX_NESTING = 32
"""How deep workflows may be nested as steps of workflows (a workflow that contains itself
would otherwise recurse until Python's stack runs out). Each level takes several Python
frames, and the caller's own frames (an agent's tool, a script, a tracer) count too, so the
bound stays well under the interpreter's recursion limit."""
Status = Literal["completed", "completed_with_errors", "failed"]

CANCEL_ROLLBACK_GRACE = 5.0
"""Seconds the ``WorkflowRollback`` hooks of a cancelled step (``rollback=True``) get to
finish, shielded from further cancellations of the task, before they are cancelled and the
``CancelledError`` goes on (each hook's own ``timeout=`` applies within it). The state and
outputs are put back before the hooks run, at once, so this bounds the hooks only."""
_CANCELLED = "the task running the workflow was cancelled"

logger = get_logger("llmspell.workflows")


_MISSING: Any = object()
"""A key's value where the key is absent (journals, output snapshots)."""
_STAMPS = itertools.count(1)

_BRANCH: ContextVar[tuple[_State, str] | None] = ContextVar("llmspell_workflow_branch",
                                                           default=None)
"""The :class:`~llmspell.runtime.workflows.Parallel` branch the current task runs (each branch
is a task of its own) and the state its run shares, None outside one. A run with
``rollback=True`` on that state (the Parallel's, or one nested in the branch) journals each
step's own writes instead of snapshotting the state."""
_JOURNALS: ContextVar[tuple[_Journal, ...]] = ContextVar("llmspell_workflow_journals",
                                                         default=())
"""The recording journals of the current task's state writes (innermost last)."""


def _same(a: Any, b: Any) -> bool:
    """``a`` is ``b`` or equals it; a comparison that raises counts as different."""
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:
        return False


class _State(dict[str, Any]):
    """The shared state of a run (nested runs share it): a dict that, while some journal is
    open on it, stamps each key's writes so a rollback can tell whose write is current.

    Without an open journal every operation is the plain dict's (one check more per
    write). A copy (``copy``, ``deepcopy``, pickle, ``dict(...)``) is a plain dict.
    """

    __slots__ = ("_open", "_stamps")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._open = 0
        self._stamps: dict[str, int] = {}

    def _touch(self, key: str) -> None:
        """Stamp a write of ``key`` (about to happen); the journals of the writing task
        record it, with the value before."""
        stamp = next(_STAMPS)
        before = self._stamps.get(key, 0)
        for journal in _JOURNALS.get():
            if journal.state is self:
                journal.wrote(key, dict.get(self, key, _MISSING), before, stamp)
        self._stamps[key] = stamp

    def _restore(self, key: str, value: Any, stamp: int) -> None:
        """Put back ``value`` (or remove the key) with the write stamp it had."""
        if value is _MISSING:
            dict.pop(self, key, None)
        else:
            dict.__setitem__(self, key, value)
        if stamp:
            self._stamps[key] = stamp
        else:
            self._stamps.pop(key, None)

    def opened(self) -> None:
        self._open += 1

    def closed(self) -> None:
        self._open -= 1
        if not self._open:
            self._stamps.clear()

    def __setitem__(self, key: str, value: Any) -> None:
        if self._open:
            self._touch(key)
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        if self._open and key in self:
            self._touch(key)
        super().__delitem__(key)

    def pop(self, key: str, *default: Any) -> Any:
        if self._open and key in self:
            self._touch(key)
        return super().pop(key, *default)

    def popitem(self) -> tuple[str, Any]:
        if self._open and self:
            self._touch(next(reversed(self)))
        return super().popitem()

    def setdefault(self, key: str, default: Any = None) -> Any:
        if self._open and key not in self:
            self._touch(key)
        return super().setdefault(key, default)

    def update(self, *args: Any, **kwargs: Any) -> None:
        if not self._open:
            super().update(*args, **kwargs)
            return
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def clear(self) -> None:
        if self._open:
            for key in list(self):
                self._touch(key)
        super().clear()

    def __ior__(self, other: Any) -> _State:  # type: ignore[override,misc]
        self.update(other)
        return self

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        memo[id(self)] = out
        for key, value in self.items():
            out[copy.deepcopy(key, memo)] = copy.deepcopy(value, memo)
        return out

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self),))


class _Journal:
    """What one step changed while it ran (``rollback=True``), so that rolling the step back
    undoes exactly that: never the work of the steps that completed before it.

    Outside a Parallel branch the step is the only one changing the state while it runs, so
    the journal is a deep copy of the state and outputs at the step's start (``snapshot``)
    and undo puts both back whole (a change made inside a value in place is undone too).

    Inside a Parallel branch (``snapshot`` None) other branches change the same state
    concurrently, so the journal records the step's writes instead: per key, the value and
    stamp before the step's first write and the stamps of the step's writes. Undo puts a key
    back only while its current write is the step's own; a key another branch wrote since is
    kept (the later write wins). The step's own outputs (its name and ``<name>.forks``) are
    put back to their values at its start.
    """

    __slots__ = ("entries", "outputs", "saved", "snapshot", "state")

    def __init__(self, state: _State, outputs: dict[str, Any], keys: Iterable[str] = (), *,
                 snapshot: tuple[dict[str, Any], dict[str, Any]] | None = None) -> None:
        self.state = state
        self.outputs = outputs
        self.snapshot = snapshot
        self.saved = {key: outputs.get(key, _MISSING) for key in keys}
        self.entries: dict[str, tuple[Any, int, set[int]]] = {}

    @classmethod
    def whole(cls, workflow: str, step: str, state: _State,
              outputs: dict[str, Any]) -> _Journal:
        """A journal holding a deep copy of ``state`` and ``outputs`` (the step's start)."""
        try:
            snapshot = (copy.deepcopy(dict(state)), copy.deepcopy(outputs))
        except Exception as exc:
            raise WorkflowError(workflow, f"cannot copy the state and outputs at the start of "
                                f"step {step!r} for rollback: {type(exc).__name__}: "
                                f"{error_text(exc)}", step=step,
                                hint="with rollback=True they are deep-copied at each step's "
                                     "start: keep them deep-copyable (plain data), or use "
                                     "rollback=False") from exc
        return cls(state, outputs, snapshot=snapshot)

    def wrote(self, key: str, before: Any, before_stamp: int, stamp: int) -> None:
        entry = self.entries.get(key)
        if entry is None:
            self.entries[key] = (before, before_stamp, {stamp})
        else:
            entry[2].add(stamp)

    def undo(self) -> list[str]:
        """Undo what the step changed; return the keys kept because another branch wrote
        them after the step (always none for a snapshot)."""
        if self.snapshot is not None:
            # A copy again: the snapshot must stay as it was for the next attempt's undo.
            state, outputs = copy.deepcopy(self.snapshot)
            self.state.clear()
            self.state.update(state)
            self.outputs.clear()
            self.outputs.update(outputs)
            return []
        kept: list[str] = []
        stamps = self.state._stamps
        for key, (before, before_stamp, mine) in self.entries.items():
            current = stamps.get(key, 0)
            if current in mine:
                self.state._restore(key, before, before_stamp)
            elif current != before_stamp:  # (equal: an inner rollback put it back already)
                kept.append(key)
        self.entries.clear()
        for key, value in self.saved.items():
            if value is _MISSING:
                self.outputs.pop(key, None)
            else:
                self.outputs[key] = value
        return kept


class WorkflowResult(msgspec.Struct, kw_only=True):
    """What a run produced. ``status``: ``completed``, ``completed_with_errors`` (errors
    recorded by ``on_error="continue"`` steps or collect-all parallel branches) or
    ``failed``. ``outputs`` maps step names to outputs; ``state`` is the final shared state;
    ``errors`` lists ``{"step", "error", "error_type", ...}``."""

    workflow: str
    workflow_id: str
    status: Status
    outputs: dict[str, Any]
    state: dict[str, Any]
    errors: list[dict[str, Any]]
    correlation_id: str

    @property
    def ok(self) -> bool:
        """True when the workflow completed without recorded errors."""
        return self.status == "completed"


class WorkflowFailedError(WorkflowError):
    """The workflow failed; ``result`` holds the outputs and state reached (status
    ``failed``), ``step`` the failing step (None for a workflow timeout)."""

    def __init__(self, workflow: str, message: str, *, result: WorkflowResult,
                 step: str | None = None, hint: str | None = None) -> None:
        super().__init__(workflow, message, step=step, hint=hint)
        self.result = result


class _Jump(Exception):  # noqa: N818 - a control-flow signal, not an error
    """A ``Redirect`` travelling to the pattern that knows the target."""

    def __init__(self, target: str, source: str | None) -> None:
        super().__init__(target)
        self.target = target
        self.source = source


class _Nothing:
    """An awaitable already done: what dispatching a point without hooks gives."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, tuple[ChainResult, HookContext | None]]:
        return NO_HOOKS, None
        yield  # pragma: no cover - makes __await__ a generator


_NOTHING = _Nothing()


def jsonable(value: Any) -> Any:
    """``value`` if JSON-safe, else a JSON-safe rendering (tuples as lists, others as repr)."""
    try:
        check_json_safe(value)
        return value
    except Exception:
        try:
            out = msgspec.json.decode(msgspec.json.encode(value, enc_hook=_safe_repr))
            check_json_safe(out)
            return out
        except Exception:
            return _safe_repr(value)


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:  # a repr that raises: the type is all there is to show
        return f"<{type(value).__name__} object>"


async def _shielded(awaitable: Awaitable[Any], grace: float) -> None:
    """Await ``awaitable`` (a task of its own) to its end although the awaiting task is being
    cancelled: a further cancellation does not cut it short (the caller re-raises the
    ``CancelledError`` it is handling afterwards); past ``grace`` seconds it is cancelled,
    and given at most ``grace`` more to unwind. Raises what ``awaitable`` raised."""
    task = asyncio.ensure_future(awaitable)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while not task.done() and (remaining := deadline - loop.time()) > 0:
        # (asyncio.wait never cancels the task it waits for.)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait((task,), timeout=remaining)
    if not task.done():
        logger.warning("WorkflowRollback hooks still running after %gs of a cancellation: "
                       "cancelled", grace)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait((task,), timeout=grace)
        if not task.done():  # a hook that ignores its cancellation: left to end on its own
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            return
    if not task.cancelled():
        task.result()


def _error_info(exc: BaseException) -> dict[str, Any]:
    cause = exc.__cause__ if isinstance(exc, WorkflowError) and exc.__cause__ else exc
    return {"error": error_text(exc), "error_type": type(cause).__name__}


async def call_condition(fn: Callable[[WorkflowContext], Any], ctx: WorkflowContext,
                         what: str) -> bool:
    """Evaluate ``fn(ctx)`` (sync or async) as a bool; a raising condition is a
    :class:`WorkflowError` naming ``what``."""
    try:
        value = fn(ctx)
        if inspect.isawaitable(value):
            value = await value
        return bool(value)
    except Exception as exc:
        raise WorkflowError(ctx.workflow, f"{what} raised {type(exc).__name__}: "
                            f"{error_text(exc)}", step=ctx.step,
                            hint="a condition gets the WorkflowContext and returns a bool") from exc


class Workflow:
    """Base of the patterns. ``timeout`` bounds the whole run (seconds); ``checkpoint="step"``
    saves ``{position, state, outputs}`` to ``system.state`` after each top-level step;
    ``rollback=True`` undoes what a failing or cancelled step changed since it started (before
    failing, retrying or letting the ``CancelledError`` go on), never the work of the steps
    before it — inside a Parallel branch, where other branches share the state, only what the
    failing step wrote (a later write by another branch wins)."""

    kind: ClassVar[str] = "workflow"

    def __init__(self, name: str, *, timeout: float | None = None,
                 checkpoint: Literal["step", "none"] = "none", rollback: bool = False) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise WorkflowError(str(name), f"invalid workflow name {name!r}",
                                hint="use letters, digits, '_' or '-' (it is an event segment)")
        if checkpoint not in ("step", "none"):
            raise WorkflowError(name, f"checkpoint must be 'step' or 'none', got {checkpoint!r}",
                                hint="checkpoint='step' saves after each top-level step")
        if timeout is not None and not timeout > 0:
            raise WorkflowError(name, "timeout must be > 0 seconds or None", hint="timeout=30")
        self.name = name
        self.timeout = timeout
        self.checkpoint = checkpoint
        self.rollback = rollback

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    async def run(self, system: System, input: Any = None, *, workflow_id: str | None = None,
                  parent: HookContext | None = None, resume: bool = False,
                  state: dict[str, Any] | None = None) -> WorkflowResult:
        """Run the workflow on ``system`` and return its :class:`WorkflowResult`.

        ``state`` seeds the shared state. ``resume=True`` (with the ``workflow_id`` of an
        earlier run) restores the last checkpoint and continues after it. Raises
        :class:`WorkflowFailedError` when a step fails (``result`` attached) or the run times
        out, ``OperationCancelled`` when a hook cancels.

        ``parent``: the context the run is a child of; without one, a run started inside a
        hooked operation (a workflow a tool runs) inherits its metadata. Every context of
        the run (its steps, and the tools and agents they call) descends from its
        ``BeforeWorkflowStart`` context, so metadata a hook sets there (the user) reaches
        them.
        """
        if parent is None:
            # calls imports the runs package, which imports this module: imported here.
            from llmspell.runtime.calls import inherited_context  # noqa: PLC0415

            parent = inherited_context()
        if resume and workflow_id is None:
            raise WorkflowError(self.name, "resume=True needs the workflow_id of the run to resume",
                                hint="pass workflow_id=... both times")
        run = _Run(system, self, workflow_id or new_id(), parent, _State(state or {}), input,
                   nested=False)
        if parent is not None or current_run() is not None:
            return await run.execute(resume=resume)
        # A top-level workflow run is a run of its own (system.runs).
        async with system.runs.start("workflow", self.name, input,
                                     target={"workflow": self.name}) as active:
            result = await run.execute(resume=resume)
            active.output = result.outputs
            return result

    async def _body(self, run: _Run, ctx: WorkflowContext, start: Any) -> None:
        """Run the pattern; ``start`` is the checkpointed position to continue from."""
        raise NotImplementedError  # pragma: no cover


class _Run:
    """One run of one workflow: its outputs, errors, checkpoints, and the step boundary."""

    def __init__(self, system: System, workflow: Workflow, workflow_id: str,
                 parent: HookContext | None, state: _State, input: Any, *,
                 nested: bool, depth: int = 0) -> None:
        self.system = system
        self.depth = depth
        self.workflow = workflow
        self.name = workflow.name
        self.workflow_id = workflow_id
        self.component = ComponentId(type=ComponentType.WORKFLOW, name=workflow.name,
                                     id=workflow_id)
        self.root = (parent.child(HookPoint.BEFORE_WORKFLOW_START, self.component, {})
                     if parent is not None else
                     HookContext(point=HookPoint.BEFORE_WORKFLOW_START, component=self.component))
        self.correlation_id = self.root.correlation_id
        self.state = state
        self.outputs: dict[str, Any] = {}
        self.input = input
        self.errors: list[dict[str, Any]] = []
        self.nested = nested
        self.checkpointing = workflow.checkpoint == "step" and not nested
        # The position of the last checkpoint (saved, or only reached when not
        # checkpointing): what the rollback event reports.
        self.position: Any = None
        self.redirects = 0
        self._reported: set[int] = set()  # ids of errors already fired at WorkflowError
        self._meta = EventMetadata(correlation_id=self.correlation_id,
                                   source="llmspell.workflows")
        self._prefix = f"workflow.{workflow.name}."
        # The registry's live point -> chain mapping: "any hooks here?" is one dict lookup.
        self._chains = system.registry.chains

    # -- points and events ------------------------------------------------------------
    def publish(self, event: str, info: dict[str, Any] | None = None) -> None:
        """Publish ``workflow.<name>.<event>`` with the run's correlation id."""
        data = jsonable({"workflow": self.name, "workflow_id": self.workflow_id,
                         **(info or {})})
        try:
            self.system.bus.publish(self._prefix + event, data, self._meta)
        except (EventTooLargeError, NotJsonSafeError) as exc:
            # A huge output, or one no event can carry: the run goes on, the output kept
            # as it is; the event's copy is withheld or made safe.
            publish_withheld(self.system.bus, exc, self._prefix + event, data, self._meta)

    def hooked(self, point: str) -> bool:
        """True when hooks are registered at ``point`` (one dict lookup)."""
        return point in self._chains

    def fire(self, point: str, data: dict[str, Any] | Callable[[], dict[str, Any]],
             ) -> Awaitable[tuple[ChainResult, HookContext | None]]:
        """Dispatch ``point`` with ``data`` (await the result): the hooks' payload
        (``"workflow"``, the workflow's name, first: the callers build it whole, so it is not
        copied again); ``data`` may be a factory, called only when hooks are registered. A
        plain function handing over the dispatch itself: one coroutine fewer per point."""
        if point not in self._chains:
            return _NOTHING
        return self.system.dispatch(point, self.component, data() if callable(data) else data,
                                    parent=self.root)

    async def custom(self, point: str, event: str, data: dict[str, Any]
                     ) -> tuple[ChainResult, HookContext | None]:
        """Fire a pattern point and publish its event; ``Cancel`` raises."""
        self.publish(event, data)
        outcome, ctx = await self.fire(point, lambda: {"workflow": self.name, **data})
        if isinstance(outcome.result, Cancel):
            raise cancelled_error(point, outcome.result, outcome.decided_by)
        return outcome, ctx

    def apply_state(self, data: dict[str, Any], given: dict[str, Any]) -> None:
        """Apply to the shared state what a hook changed in the state it was ``given``
        (``data["state"]``): the keys it set to another value, added or removed. A key the
        hook left as it was keeps its current value, so a write a concurrent branch made
        while the hook ran is not undone by the hook's stale copy."""
        new = data.get("state")
        if not isinstance(new, dict) or new is given:
            return
        for key in [k for k in given if k not in new]:
            self.state.pop(key, None)
        for key, value in list(new.items()):
            if key not in given or not _same(value, given[key]):
                self.state[key] = value

    def context(self) -> WorkflowContext:
        """A fresh context over the shared state and outputs."""
        return WorkflowContext(state=self.state, outputs=self.outputs, input=self.input,
                               workflow_id=self.workflow_id, workflow=self.name,
                               system=self.system)

    def result(self, status: Status) -> WorkflowResult:
        """The result as it stands."""
        return WorkflowResult(workflow=self.name, workflow_id=self.workflow_id, status=status,
                              outputs=self.outputs, state=dict(self.state), errors=self.errors,
                              correlation_id=self.correlation_id)

    # -- the run ------------------------------------------------------------------------
    async def execute(self, *, resume: bool) -> WorkflowResult:
        """Start, run the body, complete or fail."""
        store = getattr(self.system, "state", None)
        if self.checkpointing and store is None:
            raise WorkflowError(self.name, "checkpoint='step' needs a state store (system.state)",
                                hint="use a System with state, or checkpoint='none'")
        start: Any = None
        if resume and store is not None:
            saved = await store.get(CHECKPOINT_KEY, scope="workflow", scope_id=self.workflow_id,
                                    parent=self.root)
            if isinstance(saved, dict):
                self.state.clear()
                self.state.update(copy.deepcopy(saved.get("state", {})))
                self.outputs.update(copy.deepcopy(saved.get("outputs", {})))
                if self.input is None:
                    self.input = saved.get("input")
                start = self.position = saved.get("position")
        began = time.monotonic()
        self.publish("started", {"resume": resume, "position": start})
        given = dict(self.state) if self.hooked(HookPoint.BEFORE_WORKFLOW_START) else {}
        outcome, ctx = await self.fire(HookPoint.BEFORE_WORKFLOW_START, lambda: {
            "workflow": self.name, "workflow_id": self.workflow_id,
            "input": self.input, "state": dict(given),
            "resume": resume, "position": start})
        if isinstance(outcome.result, Cancel):
            self.publish("cancelled", {"reason": outcome.result.reason,
                                       "hook": outcome.decided_by})
            raise cancelled_error(HookPoint.BEFORE_WORKFLOW_START, outcome.result,
                                  outcome.decided_by)
        if ctx is not None:  # the run's points and steps are its children (its metadata)
            self.root = ctx
        if isinstance(outcome.result, Modified) and ctx is not None:
            self.input = ctx.data.get("input", self.input)
            self.apply_state(ctx.data, given)
        try:
            if self.workflow.timeout is None:
                await self._body(start)
            else:
                async with asyncio.timeout(self.workflow.timeout):
                    await self._body(start)
        except OperationCancelled as exc:
            self.publish("cancelled", {"reason": exc.reason, "hook": exc.hook,
                                       "point": exc.point})
            raise
        except asyncio.CancelledError:
            # The task running the workflow was cancelled (or a sibling parallel branch
            # failed): the run ends with an event saying so, like any other end.
            self.publish("cancelled", {"reason": _CANCELLED, "hook": None, "point": None})
            raise
        except TimeoutError as exc:
            error = WorkflowError(self.name,
                                  f"workflow {self.name!r} timed out after "
                                  f"{self.workflow.timeout}s",
                                  hint="raise the workflow's timeout, or bound slow steps "
                                       "with their own timeout")
            raise await self._failed(error, None, began) from exc
        except WorkflowFailedError:
            raise
        except WorkflowError as exc:
            raise await self._failed(exc, exc.step, began,
                                     reported=id(exc) in self._reported) from exc
        except Exception as exc:
            # Anything else (a hook's own error, say) fails the run like a step would:
            # typed, with the result reached, a failed event and the WorkflowError point.
            error = WorkflowError(self.name, f"workflow {self.name!r} failed: "
                                  f"{type(exc).__name__}: {error_text(exc)}",
                                  hint="see the cause of this error")
            raise await self._failed(error, None, began) from exc
        return await self._complete(began)

    async def _body(self, start: Any) -> None:
        ctx = self.context()
        try:
            await self.workflow._body(self, ctx, start)
        except _Jump as jump:
            raise WorkflowError(
                self.name, f"a hook redirected to {jump.target!r}, which is not a step or "
                f"branch here", step=jump.source,
                hint="Redirect names a step of the same Sequential or a Conditional branch",
            ) from None

    async def _complete(self, began: float) -> WorkflowResult:
        status: Status = "completed_with_errors" if self.errors else "completed"
        given = dict(self.state) if self.hooked(HookPoint.AFTER_WORKFLOW_COMPLETE) else {}
        outcome, ctx = await self.fire(HookPoint.AFTER_WORKFLOW_COMPLETE, lambda: {
            "workflow": self.name, "workflow_id": self.workflow_id,
            "status": status, "outputs": dict(self.outputs),
            "state": dict(given), "errors": list(self.errors)})
        if isinstance(outcome.result, Cancel):
            self.publish("cancelled", {"reason": outcome.result.reason,
                                       "hook": outcome.decided_by})
            raise cancelled_error(HookPoint.AFTER_WORKFLOW_COMPLETE, outcome.result,
                                  outcome.decided_by)
        if isinstance(outcome.result, Modified) and ctx is not None:
            new_outputs = ctx.data.get("outputs")
            if isinstance(new_outputs, dict):
                self.outputs = dict(new_outputs)
            self.apply_state(ctx.data, given)
        self.publish("completed", {"status": status, "steps": list(self.outputs),
                                   "errors": len(self.errors),
                                   "duration": time.monotonic() - began})
        return self.result(status)

    async def _failed(self, error: WorkflowError, step: str | None, began: float, *,
                      reported: bool = False) -> WorkflowFailedError:
        info = {"step": step, **_error_info(error)}
        self.errors.append(info)
        if not reported:  # step failures were reported at WorkflowError already
            self.publish("error", info)
            outcome, _ = await self.fire(HookPoint.WORKFLOW_ERROR, lambda: {
                "workflow": self.name, "workflow_id": self.workflow_id, **info, "attempt": 1,
                "state": dict(self.state)})
            if isinstance(outcome.result, Cancel):
                raise cancelled_error(HookPoint.WORKFLOW_ERROR, outcome.result,
                                      outcome.decided_by) from error
        self.publish("failed", {**info, "duration": time.monotonic() - began})
        return WorkflowFailedError(self.name, error.message, result=self.result("failed"),
                                   step=step, hint=error.hint)

    # -- checkpoints ----------------------------------------------------------------------
    def _snapshot(self, position: Any) -> dict[str, Any]:
        return {"position": position, "state": copy.deepcopy(self.state),
                "outputs": copy.deepcopy(self.outputs), "input": self.input,
                "workflow": self.name, "saved_at": time.time()}

    async def save_checkpoint(self, position: Any) -> None:
        """Reach checkpoint ``position``: when checkpointing, save ``{position, state,
        outputs}`` to ``system.state`` and fire ``WorkflowCheckpoint``."""
        self.position = position
        if not self.checkpointing:
            return
        snapshot = self._snapshot(position)
        try:
            await self.system.state.set(CHECKPOINT_KEY, snapshot, scope="workflow",
                                        scope_id=self.workflow_id, parent=self.root)
        except Exception as exc:
            raise WorkflowError(self.name, f"cannot save the checkpoint: {exc}",
                                hint="checkpointed state and outputs must be JSON-safe") from exc
        self.publish("checkpoint", {"position": position})
        await self.fire(HookPoint.WORKFLOW_CHECKPOINT, lambda: {
            "workflow": self.name, "workflow_id": self.workflow_id,
            "position": position, "state": dict(self.state),
            "outputs": dict(self.outputs)})

    def enter_branch(self, name: str) -> None:
        """Mark the current task as Parallel branch ``name`` of this run (call it in the
        branch's own task): rollbacks in it are then per step, of what the branch wrote."""
        _BRANCH.set((self.state, name))

    def branch(self) -> str | None:
        """The Parallel branch (sharing this run's state) the current task runs, if any."""
        current = _BRANCH.get()
        return current[1] if current is not None and current[0] is self.state else None

    def journal(self, step: Step) -> _Journal | None:
        """The journal of ``step`` with ``rollback=True`` (None without: nothing is copied
        or recorded): a snapshot of state and outputs at the step's start, or, in a run
        inside a Parallel branch, where other branches change the state concurrently, a
        record of the step's own writes."""
        if not self.workflow.rollback:
            return None
        if self.branch() is None:
            return _Journal.whole(self.name, step.name, self.state, self.outputs)
        return _Journal(self.state, self.outputs, (step.name, f"{step.name}.forks"))

    async def roll_back(self, step: Step, exc: BaseException, journal: _Journal | None) -> None:
        """With ``rollback=True``, undo what the failing step changed since it started (its
        ``journal``) and fire ``WorkflowRollback``; the steps before it keep their work."""
        if journal is None:
            return
        info = self._undo(step, journal, _error_info(exc))
        await self.fire(HookPoint.WORKFLOW_ROLLBACK, lambda: {
            "workflow": self.name, "workflow_id": self.workflow_id,
            **info, "state": dict(self.state)})

    async def roll_back_cancelled(self, step: Step, journal: _Journal | None) -> None:
        """With ``rollback=True``, roll back ``step`` whose task is being cancelled, as a
        failing step is (error type ``CancelledError``); the caller then re-raises the
        ``CancelledError``. The undo happens at once (no await); the ``WorkflowRollback``
        hooks run shielded from further cancellations, for at most
        :data:`CANCEL_ROLLBACK_GRACE` seconds. Nothing here raises: a failing undo or
        hook is logged, never put in the cancellation's place."""
        if journal is None:
            return
        try:
            info = self._undo(step, journal, {"error": _CANCELLED,
                                              "error_type": "CancelledError"})
            if HookPoint.WORKFLOW_ROLLBACK in self._chains:
                await _shielded(self.fire(HookPoint.WORKFLOW_ROLLBACK, {
                    "workflow": self.name, "workflow_id": self.workflow_id,
                    **info, "state": dict(self.state)}), CANCEL_ROLLBACK_GRACE)
        except Exception:
            logger.exception("workflow %s: rolling back cancelled step %s failed; the "
                             "cancellation goes on", self.name, step.name)

    def _undo(self, step: Step, journal: _Journal, error: dict[str, Any]) -> dict[str, Any]:
        """Undo ``journal`` and publish ``rollback``; return the WorkflowRollback data."""
        kept = journal.undo()
        info = {"step": step.name, "position": self.position, **error}
        # The event also says which branch rolled back and which keys it left to a later
        # write by another branch (the hook's data is the documented WorkflowRollback set).
        self.publish("rollback", {**info, "branch": self.branch(), "kept": kept})
        return info

    # -- sequences ------------------------------------------------------------------------
    async def sequence(self, steps: list[Step], ctx: WorkflowContext, start: int = 0,
                       position: Callable[[int], Any] | None = None) -> None:
        """Run ``steps`` in order from ``start``, firing transitions; a redirect to one of
        them jumps there; after each step ``position(next_index)`` is checkpointed."""
        names = {s.name: i for i, s in enumerate(steps)}
        index = start
        previous = steps[start - 1].name if 0 < start <= len(steps) else None
        while index < len(steps):
            step = steps[index]
            try:
                if previous is not None:
                    await self.transition(previous, step.name)
                await self.run_step(step, ctx)
            except _Jump as jump:
                if jump.target not in names:
                    raise
                self.redirects += 1
                if self.redirects > _MAX_REDIRECTS:
                    raise WorkflowError(self.name, f"redirects went over {_MAX_REDIRECTS}",
                                        step=step.name,
                                        hint="check the hooks that return Redirect for a loop"
                                        ) from None
                previous, index = step.name, names[jump.target]
                continue
            if position is not None:
                await self.save_checkpoint(position(index + 1))
            previous = step.name
            index += 1

    async def transition(self, source: str, target: str) -> None:
        """Fire ``WorkflowStageTransition``: ``Cancel`` raises, ``Redirect`` jumps."""
        self.publish("transition", {"from": source, "to": target})
        outcome, _ = await self.fire(HookPoint.WORKFLOW_STAGE_TRANSITION, lambda: {
            "workflow": self.name, "from": source, "to": target, "state": dict(self.state)})
        result = outcome.result
        if isinstance(result, Cancel):
            raise cancelled_error(HookPoint.WORKFLOW_STAGE_TRANSITION, result,
                                  outcome.decided_by)
        if isinstance(result, Redirect) and result.target != target:
            raise _Jump(result.target, source)

    # -- the step boundary ------------------------------------------------------------------
    async def run_step(self, step: Step, base: WorkflowContext) -> Any:
        """Run one step with its hooks, error policy and timeout; record and return its
        output. A step whose task is cancelled publishes ``stage_cancelled`` and, with
        ``rollback=True``, is rolled back before the ``CancelledError`` goes on."""
        journal = self.journal(step)
        if journal is None or journal.snapshot is not None:  # nothing to record
            try:
                return await self._step(step, base, journal)
            except asyncio.CancelledError:
                self.publish("stage_cancelled", {"step": step.name, "index": base.index})
                await self.roll_back_cancelled(step, journal)
                raise
        self.state.opened()
        token = _JOURNALS.set((*_JOURNALS.get(), journal))
        try:
            return await self._step(step, base, journal)
        except asyncio.CancelledError:
            self.publish("stage_cancelled", {"step": step.name, "index": base.index})
            # (Before the journal closes: its undo needs the state's write stamps.)
            await self.roll_back_cancelled(step, journal)
            raise
        finally:
            _JOURNALS.reset(token)
            self.state.closed()

    async def _step(self, step: Step, base: WorkflowContext, journal: _Journal | None) -> Any:
        ctx = _with(base, step.name)
        raw = step.params if step.kind == "tool" else step.input
        try:
            step_input = await resolve(raw, ctx)
        except (WorkflowError, OperationCancelled):
            raise
        except Exception as exc:
            what = "params" if step.kind == "tool" else "input"
            raise WorkflowError(self.name, f"the {what} of step {step.name!r} could not be "
                                f"computed: {type(exc).__name__}: {error_text(exc)}",
                                step=step.name,
                                hint=f"the function given as {what}= raised; it gets the "
                                     "WorkflowContext") from exc
        if step.kind == "tool" and step_input is None:
            step_input = {}

        attempt = 1
        while True:
            self.publish("stage_started", {"step": step.name, "kind": step.kind,
                                           "target": step.target, "attempt": attempt,
                                           "index": ctx.index})
            given = dict(self.state) if HookPoint.BEFORE_WORKFLOW_STAGE in self._chains else {}
            outcome, hctx = await self.fire(HookPoint.BEFORE_WORKFLOW_STAGE, {
                "workflow": self.name, "workflow_id": self.workflow_id,
                "step": step.name, "kind": step.kind,
                "target": step.target, "input": step_input, "state": dict(given),
                "attempt": attempt, "index": ctx.index,
            }) if HookPoint.BEFORE_WORKFLOW_STAGE in self._chains else (NO_HOOKS, None)
            result = outcome.result
            if type(result) is Continue:  # every hook went on (or none ran): no tests
                break
            if isinstance(result, Cancel):
                raise cancelled_error(HookPoint.BEFORE_WORKFLOW_STAGE, result,
                                      outcome.decided_by)
            if isinstance(result, Modified) and hctx is not None:
                step_input = hctx.data.get("input", step_input)
                self.apply_state(hctx.data, given)
            if isinstance(result, Retry) and attempt < result.max_attempts:
                await asyncio.sleep(result.delay)
                attempt += 1
                continue
            break
        went_on = type(result) is Continue
        if not went_on and isinstance(result, Redirect):
            raise _Jump(result.target, step.name)
        stage = hctx if hctx is not None else self.root
        replaced = not went_on and isinstance(result, Replace)
        pending = (tuple(op for f in outcome.forks for op in f.operations) if outcome.forks
                   else ())
        forks: list[dict[str, Any]] = []

        attempt = 1
        retry_limit = 1
        output: Any = None
        while True:
            # What the attempt's tool calls (its agents' too) declare they change outside
            # the process: collected only when WorkflowError hooks (or an enclosing
            # attempt) may read it, for the WorkflowError data.
            effects: SideEffects | None = None
            token: Any = None
            if HookPoint.WORKFLOW_ERROR in self._chains:
                # The agents module imports calls, which imports this one: imported here.
                from llmspell.runtime.agents.agent import SideEffects  # noqa: PLC0415

                effects, token = SideEffects.enter()
            try:
                if replaced and isinstance(result, Replace):  # (the test narrows the type)
                    output = result.value
                elif pending:
                    main, done = await asyncio.gather(
                        self._invoke(step, ctx, step_input, stage),
                        self._forks(pending, stage), return_exceptions=True)
                    pending = ()
                    forks.extend(done if isinstance(done, list) else [])
                    if isinstance(main, BaseException):
                        raise main
                    output = main
                else:
                    output = await self._invoke(step, ctx, step_input, stage)
            except (OperationCancelled, _Jump):
                raise
            except Exception as exc:
                if step.on_error == "retry" and attempt <= step.retries:
                    await self.roll_back(step, exc, journal)
                    await asyncio.sleep(step.backoff * 2 ** (attempt - 1))
                    attempt += 1
                    continue
                info = {"step": step.name, **_error_info(exc), "attempt": attempt}
                self.publish("stage_failed", info)
                err_outcome, _ = await self.fire(HookPoint.WORKFLOW_ERROR, {
                    "workflow": self.name, "workflow_id": self.workflow_id,
                    **info, "input": step_input,
                    "state": dict(self.state),
                    **(effects.error_data() if effects is not None else {"side_effects": []}),
                }) if HookPoint.WORKFLOW_ERROR in self._chains else (NO_HOOKS, None)
                verdict = err_outcome.result
                if isinstance(verdict, Retry):
                    retry_limit = max(retry_limit, verdict.max_attempts)
                    if attempt < retry_limit:
                        await self.roll_back(step, exc, journal)
                        await asyncio.sleep(verdict.delay)
                        attempt += 1
                        continue
                if isinstance(verdict, Replace):
                    output = verdict.value
                elif isinstance(verdict, Cancel):
                    raise cancelled_error(HookPoint.WORKFLOW_ERROR, verdict,
                                          err_outcome.decided_by) from exc
                elif isinstance(verdict, Redirect):
                    raise _Jump(verdict.target, step.name) from exc
                elif step.on_error == "continue":
                    self.errors.append(info)
                    output = None
                else:
                    await self.roll_back(step, exc, journal)
                    failure = WorkflowError(
                        self.name,
                        f"step {step.name!r} of workflow {self.name!r} failed: "
                        f"{type(exc).__name__}: {exc}",
                        step=step.name,
                        hint="give the step on_error='continue' or 'retry', or recover with "
                             "a WorkflowError hook returning Retry or Replace",
                    )
                    self._reported.add(id(failure))
                    raise failure from exc
            finally:
                if effects is not None:
                    effects.leave(token)

            # -- after ------------------------------------------------------------------
            given = dict(self.state) if HookPoint.AFTER_WORKFLOW_STAGE in self._chains else {}
            out, actx = await self.fire(HookPoint.AFTER_WORKFLOW_STAGE, {
                "workflow": self.name, "workflow_id": self.workflow_id,
                "step": step.name, "kind": step.kind,
                "target": step.target, "input": step_input, "output": output,
                "state": dict(given), "attempt": attempt, "replaced": replaced,
                "index": ctx.index,
            }) if HookPoint.AFTER_WORKFLOW_STAGE in self._chains else (NO_HOOKS, None)
            verdict = out.result
            if type(verdict) is Continue:  # every hook went on (or none ran): no tests
                pass
            elif isinstance(verdict, Retry):
                retry_limit = max(retry_limit, verdict.max_attempts)
                if attempt < retry_limit:
                    await asyncio.sleep(verdict.delay)
                    attempt += 1
                    continue
            elif isinstance(verdict, Cancel):
                raise cancelled_error(HookPoint.AFTER_WORKFLOW_STAGE, verdict,
                                      out.decided_by)
            elif isinstance(verdict, Modified) and actx is not None:
                output = actx.data.get("output", output)
                self.apply_state(actx.data, given)
            elif isinstance(verdict, Replace):
                output = verdict.value
            if out.forks:
                forks.extend(await self._forks(
                    tuple(op for f in out.forks for op in f.operations), actx or stage))
            break

        self.outputs[step.name] = output
        if forks:
            self.outputs[f"{step.name}.forks"] = forks
        self.publish("stage_completed", {"step": step.name, "kind": step.kind,
                                         "output": output, "attempts": attempt,
                                         "replaced": replaced, "index": ctx.index})
        if type(verdict) is not Continue and isinstance(verdict, Redirect):
            raise _Jump(verdict.target, step.name)
        return output

    async def _invoke(self, step: Step, ctx: WorkflowContext, step_input: Any,
                      stage: HookContext) -> Any:
        if step.timeout is None:
            return await self._call(step, ctx, step_input, stage)
        try:
            async with asyncio.timeout(step.timeout):
                return await self._call(step, ctx, step_input, stage)
        except TimeoutError:
            raise WorkflowError(self.name, f"step {step.name!r} timed out after "
                                f"{step.timeout}s", step=step.name,
                                hint="raise the step's timeout") from None

    async def _call(self, step: Step, ctx: WorkflowContext, step_input: Any,
                    stage: HookContext) -> Any:
        if step.tool is not None:
            if not isinstance(step_input, dict):
                raise WorkflowError(self.name, f"step {step.name!r}: tool parameters must be a "
                                    f"dict, got {type(step_input).__name__}", step=step.name,
                                    hint="params={'name': value, ...}")
            # (The tool pipeline notes its side effects for the step's WorkflowError.)
            return await self.system.tools.execute(step.tool, step_input, parent=stage)
        if step.agent is not None:
            agent = self.system.agents.get(step.agent)
            response = await agent.run(step_input if step_input is not None else "",
                                       parent=stage)
            return response.output
        if step.fn is not None:
            ctx.step_input = step_input
            value = step.fn(ctx)
            if inspect.isawaitable(value):
                value = await value
            return value
        assert step.workflow is not None
        if self.depth >= MAX_NESTING:
            raise WorkflowError(self.name, f"step {step.name!r} would nest workflows more "
                                f"than {MAX_NESTING} deep", step=step.name,
                                hint="does a workflow contain itself? Flatten the nesting, "
                                     "or loop with Loop instead of nesting")
        child = _Run(self.system, step.workflow, f"{self.workflow_id}.{step.name}", stage,
                     self.state, step_input, nested=True, depth=self.depth + 1)
        result = await child.execute(resume=False)
        if result.errors:
            self.errors.extend({"step": step.name, "nested": e} for e in result.errors)
        return result.outputs

    async def _forks(self, operations: tuple[ForkOperation, ...],
                     ctx: HookContext) -> list[dict[str, Any]]:
        # calls imports the runs package, which imports this module: imported here.
        from llmspell.runtime.calls import run_forks  # noqa: PLC0415

        return await run_forks(operations, self.system.run_operation, ctx)


def _with(base: WorkflowContext, step: str) -> WorkflowContext:
    return WorkflowContext(state=base.state, outputs=base.outputs, input=base.input,
                           item=base.item, index=base.index, workflow_id=base.workflow_id,
                           workflow=base.workflow, step=step, system=base.system)
