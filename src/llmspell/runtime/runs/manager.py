"""``system.runs``: opening, listing, inspecting, replaying and comparing runs (see
docs/runs.md)."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
)
from typing import Any

from llmspell.core.errors import InvalidValueError, LlmspellError, ReplayError
from llmspell.core.process import this_process
from llmspell.hooks.result import Redirect
from llmspell.runtime.runs.diff import RunDiff, diff_recordings
from llmspell.runtime.runs.lifecycle import (
    begin_run,
    end_run,
    open_run,
    open_run_sync,
)
from llmspell.runtime.runs.query import (
    Recording,
    RunSummary,
    find_run,
    list_runs,
    load_recording,
    process_gone,
)
from llmspell.runtime.runs.records import end_status
from llmspell.runtime.runs.replay import MODES, BreakHandler, ReplayResult, ReplaySession
from llmspell.runtime.runs.scope import LEAF_KINDS, ActiveRun, current_run, error_dict
from llmspell.runtime.workflows.engine import Workflow

__all__ = ["REPLAYERS", "Operation", "RunManager"]

_UNSET: Any = object()
Operation = Callable[[Any], Awaitable[Any]]

REPLAYERS: dict[str, Callable[[Any, dict[str, Any], bool], Operation]] = {}
"""How to run a kind of run again from its recorded ``target``: ``kind -> fn(system,
target, allow_side_effects) -> async fn(input)``. Layers above the runtime add theirs
(``llmspell.scripting`` adds ``script``)."""


class RunManager:
    """The runs of one System.

    ``async with system.runs.start(kind, name, input) as run`` opens a run (a child of the
    current run when one is open); every event published inside carries ``run.run_id``, and
    the run's steps are recorded at the configured level (``SystemConfig.record``). Agent,
    workflow and script runs open theirs by themselves.
    """

    def __init__(self, system: Any) -> None:
        self._system = system

    # -- opening ----------------------------------------------------------------------------
    def start(self, kind: str, name: str, input: Any = None, *, level: str | None = None,
              target: dict[str, Any] | None = None
              ) -> AbstractAsyncContextManager[ActiveRun]:
        """Open a run for an ``async with`` body; ``run.started`` is published on entry,
        ``run.completed``/``run.failed`` on exit. Set ``run.output`` to record what the run
        produced."""
        return open_run(self._system, kind, name, input, level=level, target=target)

    def start_sync(self, kind: str, name: str, input: Any = None, *,
                   level: str | None = None, target: dict[str, Any] | None = None
                   ) -> AbstractContextManager[ActiveRun]:
        """:meth:`start` for a ``with`` body in sync code."""
        return open_run_sync(self._system, kind, name, input, level=level, target=target)

    def open(self, kind: str, name: str, input: Any = None, *, level: str | None = None,
             target: dict[str, Any] | None = None) -> ActiveRun:
        """Open a run without a ``with`` block (a framework's start callback) and make it
        current in the calling context; :meth:`close` it in the same context."""
        return begin_run(self._system, kind, name, input, level=level, target=target)

    def close(self, run: ActiveRun, *, output: Any = None,
              error: BaseException | None = None) -> None:
        """Close a run opened by :meth:`open`, with its output or the error it failed
        with."""
        if error is None:
            run.output = output
        end_run(self._system, run, error)

    # -- reading ----------------------------------------------------------------------------
    def list(self, *, limit: int = 50, kind: str | None = None, name: str | None = None,
             status: str | None = None, include_children: bool = False) -> list[RunSummary]:
        """The newest ``limit`` runs in the event store, newest first; filtered by kind,
        name and status (``completed``, ``failed``, ``cancelled``: its task was cancelled,
        ``running``, ``interrupted``: no end record and its process on this host is gone;
        another status is a :class:`~llmspell.errors.RunError`). Runs started inside
        another run are left out unless ``include_children``."""
        return list_runs(self._system, limit=limit, kind=kind, name=name, status=status,
                         include_children=include_children)

    def get(self, run_id: str) -> RunSummary:
        """One run's summary; :class:`~llmspell.errors.RunNotFoundError` if unknown."""
        return find_run(self._system, run_id)

    def recording(self, run_id: str) -> Recording:
        """One run's whole recording (its steps and those of the runs it started).
        :class:`~llmspell.errors.RecordingError` when it was not recorded (level ``off``),
        is damaged, or was written by a newer llmspell."""
        return load_recording(self._system, run_id)

    def diff(self, a: str, b: str) -> RunDiff:
        """Compare two runs step by step (outputs, tool results, decisions, tokens, cost,
        duration)."""
        return diff_recordings(load_recording(self._system, a),
                               load_recording(self._system, b))

    # -- replay -----------------------------------------------------------------------------
    async def replay(self, run_id: str, *, mode: str = "exact", input: Any = _UNSET,
                     hooks: Iterable[Any] = (), remove_hooks: Iterable[str] = (),
                     model: str | None = None, edits: Mapping[int | str, Any] | None = None,
                     after: str | None = None, allow_side_effects: bool = False,
                     breakpoints: Iterable[int | str] = (), on_break: BreakHandler | None = None,
                     operation: Any = None) -> ReplayResult:
        """Run ``run_id`` again as a new run (``replay_of`` = ``run_id``), serving each tool
        and model call from the recording, and report where it diverges.

        ``mode``: ``exact`` (change nothing), ``what-if`` (with ``input``, ``hooks`` to add
        (``@hook``-decorated functions or ``(point, hook)`` pairs), ``remove_hooks`` (names),
        ``model`` (every model call redirected to it), ``edits`` (``{step index or key:
        output}``)), or ``simulate`` (nothing runs live). ``after`` says what happens to a
        call whose input left the recording: ``live`` (what-if's default) runs it,
        ``simulate`` keeps serving the recording. Tools with side effects are never run
        unless ``allow_side_effects``. ``breakpoints`` (step indexes, keys or
        ``"kind:name"``) call ``on_break(StepView)`` before those steps; returning ``"stop"``
        ends the replay. ``operation`` is what to run when the run's kind is not an agent
        or script: a workflow, an agent, or ``async fn(input)``.

        Raises :class:`~llmspell.errors.RunNotFoundError`,
        :class:`~llmspell.errors.RecordingError` (not recorded, damaged, newer) and
        :class:`~llmspell.errors.ReplayError` (nothing to run it with, bad options).
        """
        if mode not in MODES:
            raise InvalidValueError(f"unknown replay mode {mode!r}",
                                    hint=f"use one of: {', '.join(MODES)}")
        chosen_after = after if after is not None else ("live" if mode == "what-if"
                                                        else "simulate")
        if chosen_after not in ("live", "simulate"):
            raise InvalidValueError(f"after must be 'live' or 'simulate', got {after!r}")
        hooks, remove_hooks = list(hooks), list(remove_hooks)
        changes = bool(hooks or remove_hooks or model or edits) or input is not _UNSET
        if mode == "exact" and changes:
            raise InvalidValueError(
                "an exact replay changes nothing, but hooks, input, model or edits were "
                "given", hint="use mode='what-if' to replay with a change")
        outer = current_run()
        if outer is not None and outer.replay is not None:
            raise ReplayError("a replay cannot start another replay",
                              hint="replay runs from outside a replayed operation")
        recording = load_recording(self._system, run_id)
        started = recording.started
        if started.parent_run_id is not None:
            raise ReplayError(f"run {run_id!r} was started inside run "
                              f"{started.parent_run_id!r}; replay that run",
                              hint="a child run replays as part of its parent")
        me = this_process()
        if recording.ended is None and (started.host, started.pid, started.process_started) \
                == (me.host, me.pid, me.started):
            # Still open in this process: its last steps are not even published yet, so a
            # replay would report them as new. (A run with no end from another process may
            # have died with it: that one is replayed, with what was kept.)
            raise ReplayError(f"run {run_id!r} is still running in this process, so its "
                              "recording is not complete",
                              hint="replay it after it ends; a run cannot replay itself")
        run_input = started.input if input is _UNSET else input
        op = self._operation(recording, operation, allow_side_effects)
        session = ReplaySession(
            self._system, recording, mode=mode,
            edits=_edit_keys(recording, edits or {}), after=chosen_after,
            allow_side_effects=allow_side_effects,
            breakpoints=_checked_breakpoints(recording, mode, breakpoints, on_break),
            on_break=on_break)
        if recording.ended is None and process_gone(started.host, started.pid,
                                                    started.process_started):
            session.notes.append(
                f"run {run_id} was interrupted: its process {started.host}:{started.pid} "
                "died before the run ended, so the recording stops there (steps it had not "
                "published are missing; past them the replay runs live where allowed, or "
                "stops with a ReplayError)")
        if recording.ended is not None and recording.ended.status == "cancelled":
            session.notes.append(
                f"run {run_id} was cancelled: the recording ends in a cancellation, which "
                "the replay delivers again where it came (a replay that ends cancelled "
                "there matches the recording)")
        output: Any = None
        error: dict[str, str] | None = None
        replayed_id = ""
        async with self._changed_hooks(hooks, remove_hooks, model, session) as changed:
            session.changed_hooks = changed
            try:
                async with open_run(self._system, started.kind, started.name, run_input,
                                    level=started.level, target=started.target,
                                    replay=session, replay_of=run_id, mode=mode,
                                    top_level=True) as run:
                    replayed_id = run.run_id
                    session.visited.add(run.root.key)
                    run.root.recorded = recording.steps.get(run.root.key)
                    if run.root.recorded is not None:  # cancelled between its steps
                        session.input_changed = \
                            run.root.recorded.input_digest != run.root.input_digest
                        session.arm_cancellation(run.root, run.root.recorded)
                    output = await op(run_input)
                    run.output = output
            except LlmspellError as exc:
                error = error_dict(exc)
            except Exception as exc:  # the operation's own failure is the replay's result
                error = error_dict(exc)
            except asyncio.CancelledError as exc:
                # A recorded cancellation served again (the run was cancelled while a call
                # or its hooks ran): the replay's result, unless the replay itself is being
                # cancelled.
                session.settle_cancellations()
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                error = error_dict(exc)
            finally:
                session.settle_cancellations()
        session.missing_steps()
        return ReplayResult(
            run_id=replayed_id, replay_of=run_id, mode=mode,
            status=end_status(error), output=output,
            error=error, divergences=session.divergences, served=session.served,
            side_effects_skipped=session.side_effects_skipped, notes=session.notes)

    def _operation(self, recording: Recording, operation: Any,
                   allow_side_effects: bool) -> Operation:
        system = self._system
        started = recording.started
        if operation is not None:
            return _as_operation(system, operation)
        if started.kind == "agent":
            agent = system.agents.get(started.name)
            return _as_operation(system, agent)
        rebuild = REPLAYERS.get(started.kind)
        if rebuild is not None:
            return rebuild(system, started.target or {}, allow_side_effects)
        raise ReplayError(
            f"run {started.run_id!r} is a {started.kind} run ({started.name!r}); llmspell "
            "cannot rebuild it by itself", hint="pass operation=: the workflow, the agent, "
                                                "or an async function taking the input")

    @asynccontextmanager
    async def _changed_hooks(self, hooks: Sequence[Any], remove: Sequence[str],
                             model: str | None, session: ReplaySession
                             ) -> AsyncIterator[set[str]]:
        """The replay's hook changes, for its own calls only: hooks it adds are registered
        but run only inside it, hooks it removes are left out only of its calls (live calls
        on this System meanwhile run every hook as registered: a what-if never disables a
        guard for live traffic, nor sends live model calls to another model)."""
        system = self._system
        registry = system.registry
        disabled = [name for name in dict.fromkeys(remove)
                    if any(info.name == name and info.enabled for info in registry.list())]
        unknown = [name for name in remove if not any(i.name == name for i in registry.list())]
        if unknown:
            raise InvalidValueError(f"no hook named {unknown[0]!r} is registered",
                                    hint="remove_hooks takes names of registered hooks")
        handles: builtins.list[Any] = []
        try:
            # Scoped before the hooks are registered: no live call ever sees them.
            system.scope_hooks_to_replay(session, (), disabled)
            for entry in hooks:
                if isinstance(entry, tuple) and len(entry) == 2:
                    new = [registry.register(entry[0], entry[1], enabled=False)]
                else:
                    new = registry.register_all(entry, enabled=False)
                system.scope_hooks_to_replay(session, [h.id for h in new], ())
                handles.extend(new)
            if model is not None:
                handle = registry.register("BeforeModelCall", _redirect_to(model),
                                           name="replay-model", priority="highest",
                                           enabled=False)
                system.scope_hooks_to_replay(session, [handle.id], ())
                handles.append(handle)
            for handle in handles:
                registry.enable(handle)
            yield {*disabled, *(handle.name for handle in handles)}
        finally:
            for handle in handles:
                registry.unregister(handle)
            system.unscope_hooks(session)


def _redirect_to(model: str) -> Callable[[Any], Redirect | None]:
    target = Redirect(target=model)

    def redirect(ctx: Any) -> Redirect | None:
        data = ctx.data
        here = (data.get("model"), f"{data.get('provider')}/{data.get('model')}")
        return None if model in here else target  # the redirected call itself goes on
    return redirect


def _as_operation(system: Any, target: Any) -> Operation:
    if isinstance(target, Workflow):
        async def run_workflow(value: Any) -> Any:
            return _workflow_output(await target.run(system, value))
        return run_workflow
    run = getattr(target, "run", None)
    if callable(run) and hasattr(target, "system"):  # an Agent
        async def run_agent(value: Any) -> Any:
            return (await target.run(value)).output
        return run_agent
    if callable(target):
        async def call(value: Any) -> Any:
            result = target(value)
            return await result if hasattr(result, "__await__") else result
        return call
    raise InvalidValueError(f"operation must be a workflow, an agent or a function, not "
                            f"{type(target).__name__}")


def _workflow_output(result: Any) -> Any:
    return getattr(result, "outputs", result)


def _own_steps(recording: Recording) -> dict[int, str]:
    """The top-level run's own steps by index (a child run's steps are named by key)."""
    return {step.index: step.key for step in recording.steps.values()
            if step.key and not any(part.startswith("run:") for part in step.key.split("|"))}


def _checked_breakpoints(recording: Recording, mode: str, breakpoints: Iterable[int | str],
                         on_break: BreakHandler | None) -> list[int | str]:
    """``breakpoints`` as a list, checked: step indexes, keys or ``"kind:name"`` texts, with
    a handler to call. One naming no recorded step is refused (a typo would otherwise never
    pause), except in a ``what-if`` replay, which may make calls the recording lacks.
    Replay pauses only before tool and model calls: a mark on another step never fires."""
    if isinstance(breakpoints, str | bytes) or not isinstance(breakpoints, Iterable):
        raise InvalidValueError(
            f"breakpoints must be a list of step indexes, keys or 'kind:name' texts, got "
            f"{type(breakpoints).__name__}", hint="breakpoints=[3, 'tool:calculator']")
    marks = list(breakpoints)
    if not marks:
        return marks
    if on_break is None:
        raise InvalidValueError("breakpoints were given but no on_break handler to call",
                                hint="pass on_break=fn; fn(view) runs before each marked "
                                     "step and may return 'stop'")
    own = _own_steps(recording)
    leaf_names = {f"{step.kind}:{step.name}" for step in recording.steps.values()
                  if step.kind in LEAF_KINDS}
    for mark in marks:
        if isinstance(mark, bool) or not isinstance(mark, int | str):
            raise InvalidValueError(
                f"a breakpoint must be a step index or a text, got {mark!r}",
                hint="breakpoints=[3, 'tool:calculator'] (indexes and keys from "
                     "system.runs.recording(run_id))")
        known = (own.get(mark) if isinstance(mark, int) else mark) in recording.steps \
            or mark in leaf_names
        # A what-if replay may make calls the recording lacks: a later index, or a
        # 'tool:NAME' / 'model:NAME' not called before.
        new_call = mode == "what-if" and (isinstance(mark, int) or (
            ":" in mark and mark.split(":", 1)[0] in LEAF_KINDS))
        if not (known or new_call):
            raise InvalidValueError(
                f"the recording has no step {mark!r} to pause before",
                hint="breakpoints take step indexes or keys from "
                     "system.runs.recording(run_id), or 'tool:NAME' / 'model:NAME'")
    return marks


def _edit_keys(recording: Recording, edits: Mapping[int | str, Any]) -> dict[str, Any]:
    if not isinstance(edits, Mapping):
        raise InvalidValueError(
            f"edits must map step indexes or keys to outputs, got {type(edits).__name__}",
            hint="edits={3: {'temperature': 21}}")
    by_index = _own_steps(recording)
    keyed: dict[str, Any] = {}
    for where, value in edits.items():
        if isinstance(where, int) and not isinstance(where, bool):
            key = by_index.get(where)
            if key is None:
                raise InvalidValueError(f"the recording has no step {where}",
                                        hint="edits take step indexes or keys from "
                                             "system.runs.recording(run_id)")
            keyed[key] = value
        elif isinstance(where, str) and where in recording.steps:
            keyed[where] = value
        else:
            raise InvalidValueError(f"the recording has no step {where!r}",
                                    hint="edits take step indexes or keys from "
                                         "system.runs.recording(run_id)")
    return keyed
