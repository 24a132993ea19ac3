"""Replaying a recorded run: the operation runs again, its hooks run live, and each tool or
model call is served from the recording instead of being made.

The session below is the :class:`~llmspell.runtime.runs.scope.ReplaySource` of the replayed
run. It matches each step to its recorded twin by key, serves leaf results (tool results,
model responses, clock and random readings), and compares what happens with what was
recorded: each hook decision, each step's input, output and error. Every difference is a
:class:`Divergence`; the first one is where the replay left the recorded path.

Modes:

* ``exact`` - nothing changed; any divergence means something is nondeterministic (a hook
  reading the wall clock, a random draw outside the run's sources) or the code changed.
* ``what-if`` - something was changed on purpose (hooks added or removed, the input, the
  model, edited step outputs); the divergences show what the change did. After a step's
  input left the recording, its call runs live (``after="live"``, the default here) or keeps
  being served from the recording (``after="simulate"``).
* ``simulate`` - nothing runs live: every leaf is served from the recording even when its
  input changed; a step with no recorded twin fails the replay with :class:`ReplayError`.

A tool that declares side effects (:class:`~llmspell.runtime.tools.SideEffect`) is never
executed by a replay unless ``allow_side_effects=True``: its recorded result is served, and
with no recorded result the step fails with :class:`ReplayError`.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import inspect
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from llmspell.core import errors as error_types
from llmspell.core.errors import LlmspellError, ReplayDivergenceError, ReplayError
from llmspell.core.text import ERROR_TEXT_LIMIT
from llmspell.runtime.content import mask_value
from llmspell.runtime.runs.query import Recording
from llmspell.runtime.runs.records import Dispatch, StateRead, StepRecord, digest
from llmspell.runtime.runs.scope import (
    LEAF_KINDS,
    ActiveRun,
    StepFrame,
    current_frame,
    delta_sink,
    kept_error,
    served_deltas,
)

if TYPE_CHECKING:
    from llmspell.runtime.calls import ResultCache

__all__ = ["BY_TYPE_ONLY", "MODES", "Divergence", "RecordedError", "ReplayResult",
           "ReplaySession", "StepView", "recorded_error", "same_error"]

MODES = ("exact", "what-if", "simulate")


class Divergence(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One place where the replay differs from the recording.

    ``what``: ``decision`` (a hook decided otherwise at ``point``), ``input`` (the step was
    called with other input), ``output``, ``error``, ``edited`` (its output was replaced on
    request), ``new_step`` (not in the recording), ``missing_step`` (recorded, not reached),
    ``state_read`` (the step read other state than recorded at that place in its reads, or
    a read more or fewer: ``expected``/``got`` name the reads).
    ``nondeterministic`` is set when the step's input and the deciding hook (name and
    version) are the same as recorded, yet the decision differs: the hook depends on
    something outside the recording (the wall clock, an unrecorded random draw).
    """

    step: int
    key: str
    kind: str
    name: str
    what: str
    point: str | None = None
    hook: str | None = None
    expected: Any = None
    got: Any = None
    nondeterministic: bool = False

    def describe(self) -> str:
        """``step 3 (tool 'search'): decision at BeforeToolExecution: expected ...``."""
        where = "the run" if not self.key else f"step {self.step} ({self.kind} {self.name!r})"
        text = f"{where}: {self.what}"
        if self.point:
            text += f" at {self.point}"
        if self.what not in ("new_step", "missing_step"):
            text += f": expected {_short(self.expected)}, got {_short(self.got)}"
        if self.nondeterministic:
            text += f" (nondeterministic: hook {self.hook!r} decided differently on the " \
                    "same input)"
        return text


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class ReplayResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a replay did: the new run's id, how it ended, and how it differs.

    ``status`` is ``completed``, ``failed`` or ``cancelled`` (the replayed operation was
    cancelled: a recorded cancellation delivered again, which is no divergence).
    ``served`` counts where leaf results came from (``recording``, ``edited``, ``live``);
    ``side_effects_skipped`` lists the steps whose side-effecting tool was not executed;
    ``notes`` says what the replay could not serve from the recording though it matched (a
    state read whose recorded result was withheld, read live instead).
    """

    run_id: str
    replay_of: str
    mode: str
    status: str
    output: Any = None
    error: dict[str, str] | None = None
    divergences: list[Divergence] = []
    served: dict[str, int] = {}
    side_effects_skipped: list[str] = []
    notes: list[str] = []

    @property
    def diverged(self) -> bool:
        """True when the replay differs from the recording anywhere."""
        return bool(self.divergences)

    @property
    def first_divergence(self) -> Divergence | None:
        """Where the replay first left the recorded path (None when it never did)."""
        return self.divergences[0] if self.divergences else None

    def check(self) -> ReplayResult:
        """Raise :class:`ReplayDivergenceError` naming the first divergence, if any;
        return ``self`` otherwise."""
        first = self.first_divergence
        if first is not None:
            raise ReplayDivergenceError(
                f"replay {self.run_id} of run {self.replay_of} diverged at "
                f"{first.describe()} ({len(self.divergences)} difference(s) in all)",
                hint="see result.divergences; a nondeterministic hook should read time and "
                     "randomness from llmspell.runtime.runs (run_clock, run_random)")
        return self


class StepView(msgspec.Struct, kw_only=True):
    """What a breakpoint handler sees before a tool or model step is served."""

    index: int
    key: str
    kind: str
    name: str
    input: Any
    recorded_output: Any
    recorded: bool


class RecordedError(LlmspellError):
    """A recorded failure re-raised by a replay whose original type it cannot rebuild (not
    an llmspell error nor a built-in or :mod:`asyncio` exception, or one whose constructor
    takes more than a message). :func:`recorded_error` raises a subclass of this class named
    as the original type, so ``type(exc).__name__`` (and the replay's own record of the
    step) says what it was: ``type_name`` is that name, ``message`` the recorded message
    (``str(exc)`` is it, with the recorded ``hint`` if any, as the original's was) and the
    recorded text attributes of an llmspell error are set again. Catch it as
    ``RecordedError`` (or ``LlmspellError``) and look at ``type_name``."""

    type_name: str = "RecordedError"

    def __init__(self, type_name: str, message: str, *, hint: str | None = None) -> None:
        if type_name != type(self).type_name:
            self.type_name = type_name
        super().__init__(message, hint=hint)


_RECORDED_CLASSES: dict[str, type[RecordedError]] = {}
_MAX_RECORDED_CLASSES = 1024
"""At most this many subclasses of :class:`RecordedError` are made (one per type name);
past it, a new name is raised as :class:`RecordedError` itself (its ``type_name`` set)."""


def _recorded_class(name: str) -> type[RecordedError]:
    """The subclass of :class:`RecordedError` named ``name`` (made once per name)."""
    cls = _RECORDED_CLASSES.get(name)
    if cls is not None:
        return cls
    if not name.isidentifier() or len(name) > 200 or name == "RecordedError" \
            or len(_RECORDED_CLASSES) >= _MAX_RECORDED_CLASSES:
        return RecordedError
    cls = type(name, (RecordedError,), {
        "type_name": name, "__module__": __name__,
        "__doc__": f"A recorded {name}, raised again by a replay (see RecordedError)."})
    return _RECORDED_CLASSES.setdefault(name, cls)


def recorded_error(error: Mapping[str, str]) -> BaseException:
    """The exception a recorded ``{"type", "message"}`` stands for: the same llmspell,
    built-in or :mod:`asyncio` error class when there is one (an llmspell error with its
    recorded ``hint`` and text attributes; a ``KeyError`` with the key its message quotes),
    else a :class:`RecordedError` named as the recorded type, with its message (and hint
    and text attributes)."""
    name = str(error.get("type", "Exception"))
    message = str(error.get("message", ""))
    if name == "CancelledError":
        # The call was cancelled while it ran (its task, a timeout): cancelled again, so
        # what awaited it sees what it saw (and its step records the same error).
        return asyncio.CancelledError(message) if message else asyncio.CancelledError()
    cls = getattr(error_types, name, None)
    if isinstance(cls, type) and issubclass(cls, LlmspellError):
        return _llmspell_error(cls, error, message)
    for module in (builtins, asyncio):
        known = getattr(module, name, None)
        if isinstance(known, type) and issubclass(known, Exception):
            rebuilt = _plain_error(known, message)
            if rebuilt is not None:
                return rebuilt
            break
    return _llmspell_error(_recorded_class(name), error, message)


def _llmspell_error(cls: type[LlmspellError], error: Mapping[str, str],
                    message: str) -> LlmspellError:
    """``cls`` built as recorded: its message, hint and text attributes (its constructor
    is not called: it may want other arguments)."""
    exc = cls.__new__(cls)
    hint = error.get("hint")
    if hint is not None and message.endswith(f" ({hint})"):
        message = message[:-len(hint) - 3]  # the message as raised, its hint apart
    for key, value in error.items():
        name = key[5:]
        # Only plain public names, text values: a recording is data, never code.
        if (key.startswith("attr:") and name.isidentifier() and not name.startswith("_")
                and isinstance(value, str)):
            setattr(exc, name, value)
    if isinstance(exc, RecordedError) and cls is RecordedError:  # no subclass: names it
        exc.type_name = str(error.get("type", "Exception"))
    LlmspellError.__init__(exc, message, hint=hint)
    return exc


def _plain_error(cls: type[Exception], message: str) -> Exception | None:
    """A built-in (or asyncio) exception whose text is ``message``, or None when ``cls``
    cannot be built from a message alone."""
    try:
        if not message:
            return cls()
        if issubclass(cls, KeyError):
            # A KeyError's text is the repr of its key: raised again with that key.
            try:
                key = ast.literal_eval(message)
            except Exception:  # not a literal (a key whose repr is not one): as text
                key = None
            if key is not None and repr(key) == message:
                return cls(key)
        return cls(message)
    except Exception:  # a constructor that wants more (UnicodeDecodeError), or refuses
        return None


BreakHandler = Callable[[StepView], Awaitable[Any] | Any]


class ReplaySession:
    """The replay of one recording (see the module docstring)."""

    def __init__(self, system: Any, recording: Recording, *, mode: str,
                 edits: Mapping[str, Any], after: str, allow_side_effects: bool,
                 breakpoints: Iterable[int | str], on_break: BreakHandler | None) -> None:
        self.system = system
        self.recording = recording
        self.mode = mode
        self.edits = dict(edits)
        self.after = after
        self.allow_side_effects = allow_side_effects
        self.breakpoints = set(breakpoints)
        self.on_break = on_break
        self.divergences: list[Divergence] = []
        self.served: dict[str, int] = {}
        self.side_effects_skipped: list[str] = []
        self.visited: set[str] = set()
        self._seen_points: dict[int, dict[str, int]] = {}
        self._diverged_steps: set[str] = set()
        self._served_leaves: set[str] = set()
        self._siblings: dict[str, list[StepRecord]] | None = None
        self.changed_hooks: set[str] = set()
        """Hooks the replay itself added or removed: their decisions are expected to
        differ, so they are never called nondeterministic."""
        self._caches: dict[int, tuple[ResultCache, ResultCache]] = {}
        self._caches_lock = threading.Lock()
        self._armed: dict[int, asyncio.TimerHandle] = {}
        """The recorded cancellations waiting to be delivered, by the id of the step's
        frame (see :meth:`arm_cancellation`)."""
        self._delivered: list[asyncio.Task[Any]] = []
        """The tasks this replay cancelled to deliver a recorded cancellation (each once
        per delivery): :meth:`settle_cancellations` takes the requests back."""
        self.reads_recorded = recording.started.state_reads >= 1
        """False for a recording made before state reads were recorded: reads go to the
        state (the replay's own over the live one), as they did then."""
        self.input_changed = False
        """True when the replayed run was given other input than recorded (a what-if's
        ``input``): its change point is its start."""
        self._reads_taken: dict[int, _StepReads] = {}
        """Which recorded reads each running step (by its frame's id) has matched."""
        self.notes: list[str] = []

    # -- helpers --------------------------------------------------------------------------
    def _diverge(self, frame: StepFrame, what: str, **fields: Any) -> None:
        self._diverged_steps.add(frame.key)
        self.divergences.append(Divergence(step=frame.index, key=frame.key, kind=frame.kind,
                                           name=frame.name, what=what, **fields))

    def _count(self, frame: StepFrame, how: str) -> None:
        frame.served = how
        self.served[how] = self.served.get(how, 0) + 1

    def _side_effects(self, frame: StepFrame) -> list[str]:
        if frame.kind != "tool":
            return []
        try:
            tool = self.system.tools.get(frame.name)
        except LlmspellError:
            return []
        params = frame.input if isinstance(frame.input, dict) else {}
        return [str(effect) for effect in tool.side_effects_for(params)]

    def _hook_version(self, name: str) -> str | None:
        for info in self.system.registry.list(enabled=True):
            if info.name == name:
                return str(info.version)
        return None

    # -- ReplaySource ---------------------------------------------------------------------
    def step_started(self, frame: StepFrame) -> None:
        """Find the step's recorded twin and compare its input."""
        recorded = self.recording.steps.get(frame.key)
        if frame.parent is not None and (recorded is None or frame.key in self.visited
                                         or recorded.input_digest != frame.input_digest):
            recorded = self._sibling(frame, recorded)
        self.visited.add(frame.key)
        frame.recorded = recorded
        if recorded is None:
            self._diverge(frame, "new_step")
        elif recorded.input_digest != frame.input_digest:
            self._diverge(frame, "input", expected=recorded.input if recorded.input is not None
                          else recorded.input_digest,
                          got=frame.input if recorded.input is not None
                          else frame.input_digest)
        else:
            self.arm_cancellation(frame, recorded)

    def _sibling(self, frame: StepFrame, recorded: StepRecord | None) -> StepRecord | None:
        """The recorded twin of a step whose key-twin is taken or was given other input.

        A key counts the calls of one operation under one parent in the order they
        started, and calls made concurrently under one parent (a Parallel workflow's
        branches, a gather) can start in another order in the replay, where served calls
        take no time: the step is matched with the sibling (same parent, same operation)
        the replay has not reached yet that was given the same input, and takes its key.
        A step whose key is taken already with no such sibling takes the first one not
        reached (its input differs), else a key the recording lacks (a new step)."""
        if self._siblings is None:
            self._siblings = {}
            for step in self.recording.steps.values():
                base, sep, count = step.key.rpartition("#")
                if sep and count.isdigit():
                    self._siblings.setdefault(base + "#", []).append(step)
            for steps in self._siblings.values():
                steps.sort(key=lambda s: int(s.key.rpartition("#")[2]))
        base = frame.key.rpartition("#")[0] + "#"
        open_ones = [s for s in self._siblings.get(base, ()) if s.key not in self.visited]
        same = next((s for s in open_ones if s.input_digest == frame.input_digest), None)
        if same is None and frame.key not in self.visited:
            return recorded  # no better match: compared with its own key's record
        chosen = same or (open_ones[0] if open_ones else None)
        if chosen is not None:
            frame.key = chosen.key
            return chosen
        n = int(frame.key.rpartition("#")[2])
        while f"{base}{n}" in self.visited or f"{base}{n}" in self.recording.steps:
            n += 1
        frame.key = f"{base}{n}"
        return None

    async def serve(self, frame: StepFrame, attempt: int,
                    invoke: Callable[[], Awaitable[Any]]) -> Any:
        """The step's result for ``attempt`` (see the module docstring for the rules)."""
        recorded = frame.recorded
        if attempt == 1 and self._breaks_at(frame):
            await self._break(frame, recorded)
        if attempt == 1 and frame.key in self.edits:
            self._count(frame, "edited")
            self._served_leaves.add(frame.key)
            value = self.edits[frame.key]
            self._diverge(frame, "edited", expected=_first_output(recorded), got=value)
            return value
        effects = self._side_effects(frame)
        if effects:
            frame.side_effects = effects
        on_path = frame.key not in self._diverged_steps
        if self._from_recording(frame, attempt, effects):
            assert recorded is not None
            if effects and not on_path:
                self.side_effects_skipped.append(frame.key)
            self._count(frame, "recording")
            self._served_leaves.add(frame.key)
            served = recorded.attempts[attempt - 1]
            if served.deltas and frame.kind == "model":
                await self._stream_again(frame, served.deltas, served.output)
            if _cancelled(served.error):
                await self._await_cancellation(frame, recorded)
            return _replay_attempt(served)
        if self._cancelled_before(frame):
            assert recorded is not None
            # The recorded call was cancelled before this attempt was made (in its before
            # hooks, a retry's wait): the attempt is not made now either, the recorded
            # cancellation is delivered (its hooks were quicker this time).
            assert recorded.error is not None
            self._count(frame, "recording")
            self._served_leaves.add(frame.key)
            if id(frame) in self._armed:
                await asyncio.get_running_loop().create_future()  # ended by a cancellation
            await self._await_cancellation(frame, recorded)
            raise recorded_error(recorded.error)
        if self.mode == "simulate" or (self.after == "simulate" and recorded is None):
            why = (" (its values were too large for the event store when it was recorded)"
                   if recorded is not None and recorded.results_withheld else "")
            raise ReplayError(
                f"{frame.label()} has no recorded result to serve (attempt {attempt}){why}",
                hint="a simulation runs nothing live; replay with mode='what-if', "
                     "after='live' to call it")
        if effects and not self.allow_side_effects:
            self.side_effects_skipped.append(frame.key)
            raise ReplayError(
                f"{frame.label()} would have side effects ({', '.join(effects)}) and the "
                "recording has no result for it", hint="a replay never repeats side effects "
                "unless asked: pass allow_side_effects=True to run it")
        self._count(frame, "live")
        return await invoke()

    @staticmethod
    async def _stream_again(frame: StepFrame, stored: list[Any], output: Any) -> None:
        """Hand a served streaming call's recorded deltas to its consumer again, in order
        (before its response is returned or its error raised, as they came in the run)."""
        sink = delta_sink.get()
        if sink is None:
            return
        deltas = served_deltas(stored, output)
        handed = frame.deltas = []
        for delta in deltas:
            handed.append(delta)
            done = sink(delta)
            if done is not None:
                await done

    def _from_recording(self, frame: StepFrame, attempt: int, effects: list[str]) -> bool:
        """True when :meth:`serve` answers ``attempt`` of ``frame`` from its recorded twin's
        attempts."""
        recorded = frame.recorded
        if recorded is None or attempt > len(recorded.attempts):
            return False
        return (frame.key not in self._diverged_steps or self.mode == "simulate"
                or self.after == "simulate" or bool(effects and not self.allow_side_effects))

    def _cancelled_before(self, frame: StepFrame) -> bool:
        """True when the recorded call was cancelled before its next attempt was made (in
        its before hooks, a retry's wait): :meth:`serve` delivers that cancellation."""
        recorded = frame.recorded
        return (recorded is not None and frame.key not in self._diverged_steps
                and _cancelled(recorded.error) and not recorded.results_withheld)

    def serves_current(self) -> bool | None:
        """For :func:`llmspell.core.run_scope.replay_serves`: whether the calling task's
        tool or model step is (after its call: was) served rather than run live; None
        outside such a step of this replay. Before the call this is what :meth:`serve`
        would do as things stand."""
        frame = current_frame()
        if frame is None or frame.run.replay is not self or frame.kind not in LEAF_KINDS:
            return None
        if frame.served is not None:
            return frame.served != "live"
        attempt = len(frame.attempts) + 1
        effects = self._side_effects(frame)
        if (attempt == 1 and frame.key in self.edits) or self._from_recording(
                frame, attempt, effects) or self._cancelled_before(frame):
            return True
        # Nothing to serve: a simulation (or a side effect not allowed) fails the step, so
        # nothing runs live either.
        return (self.mode == "simulate" or (self.after == "simulate" and frame.recorded is None)
                or bool(effects and not self.allow_side_effects))

    async def _await_cancellation(self, frame: StepFrame, recorded: StepRecord) -> None:
        """Serve a recorded cancellation as it happened: wait for this replay's own
        canceller (an ``asyncio.timeout``/``wait_for`` around the call, a workflow step's
        timeout, a ``task.cancel()``), so what awaits the call sees what it saw (a
        timeout's ``TimeoutError``, not a bare ``CancelledError``). The wait ends, at the
        latest, a little after the time into the run the call was cancelled at in the
        recording: a canceller inside the run has fired by then, the replay being no
        slower than the run; past it the cancellation came from outside the run (it was
        cancelled as a whole), and it is raised as recorded."""
        wait = self._cancel_wait(frame, recorded)
        if wait is not None and wait > 0:
            await asyncio.sleep(wait)  # a cancellation arriving now is the replay's own

    def _cancel_wait(self, frame: StepFrame, recorded: StepRecord) -> float | None:
        """Seconds from now to the latest a recorded cancellation of ``recorded`` is left
        to the replay's own canceller (see :meth:`_await_cancellation`); None when the
        recording has no start to measure from."""
        root = self.recording.steps.get("")
        if root is None:
            return None
        cancelled_at = recorded.started + recorded.duration_ms / 1000 - root.started
        top = frame.run
        while top.parent is not None:
            top = top.parent
        elapsed = time.perf_counter() - top.root.t0
        return max(cancelled_at, 0.0) * (1 + _CANCEL_SLACK) + _CANCEL_GRACE - elapsed

    def arm_cancellation(self, frame: StepFrame, recorded: StepRecord) -> None:
        """When ``recorded`` was cancelled outside its call (while its hooks ran, between
        a run's steps; not while a tool or model call ran, which :meth:`serve` delivers)
        and the cancellation started there (not in a step inside it), deliver it again:
        cancel the task running the step at the time :meth:`_await_cancellation` waits
        until, unless the step has ended by then (the replay's own canceller, a timeout
        around it, fired first). Its live hooks are interrupted where the recorded ones
        were, and a replay of a run cancelled from outside while a hook waited ends as it
        did instead of running on (or waiting for ever)."""
        if not _cancelled(recorded.error) or any(_cancelled(a.error)
                                                 for a in recorded.attempts):
            return
        if self._cancelled_inside(recorded):
            return
        task = asyncio.current_task()
        wait = self._cancel_wait(frame, recorded)
        if task is None or wait is None:
            return
        handle = asyncio.get_running_loop().call_later(max(wait, 0.0), self._deliver,
                                                       id(frame), task)
        self._armed[id(frame)] = handle

    def _cancelled_inside(self, recorded: StepRecord) -> bool:
        """True when the cancellation of ``recorded`` came from a step inside it: the last
        of its steps to end was cancelled too."""
        prefix = recorded.key + "|" if recorded.key else ""
        last: StepRecord | None = None
        for step in self.recording.steps.values():
            if step.key and step.key.startswith(prefix) and step is not recorded and (
                    last is None or _ended(step) > _ended(last)):
                last = step
        return last is not None and _cancelled(last.error)

    def _deliver(self, frame_id: int, task: asyncio.Task[Any]) -> None:
        self._armed.pop(frame_id, None)
        if task.done() or task.cancelling():
            return  # being cancelled already (the replay's own canceller, or from outside)
        self._delivered.append(task)
        task.cancel()

    def disarm(self, frame: StepFrame) -> None:
        """The step ended: its recorded cancellation is not delivered any more."""
        handle = self._armed.pop(id(frame), None)
        if handle is not None:
            handle.cancel()

    def settle_cancellations(self) -> None:
        """Take back, in the calling task, the cancellation requests this replay made to
        deliver recorded cancellations (so they do not count as the replay itself being
        cancelled); called by the replay's task when the replayed operation is over."""
        task = asyncio.current_task()
        for _ in range(self._delivered.count(task) if task is not None else 0):
            if task is not None and task.cancelling():
                task.uncancel()
        self._delivered = []  # the others were cancelled inside the operation: over now
        for handle in self._armed.values():
            handle.cancel()
        self._armed.clear()

    def _breaks_at(self, frame: StepFrame) -> bool:
        marks = self.breakpoints
        return bool(marks) and (frame.index in marks or frame.key in marks
                                or f"{frame.kind}:{frame.name}" in marks)

    async def _break(self, frame: StepFrame, recorded: StepRecord | None) -> None:
        if self.on_break is None:
            return
        view = StepView(index=frame.index, key=frame.key, kind=frame.kind, name=frame.name,
                        input=frame.input, recorded_output=_first_output(recorded),
                        recorded=recorded is not None)
        answer = self.on_break(view)
        if inspect.isawaitable(answer):
            answer = await answer
        if answer == "stop":
            raise ReplayError(f"replay stopped at the breakpoint before {frame.label()}",
                              hint="the breakpoint handler returned 'stop'")

    def dispatched(self, frame: StepFrame, dispatch: Dispatch) -> None:
        """Compare a decision with the recorded one at the same point and occurrence."""
        recorded = frame.recorded
        if recorded is None:
            return
        seen = self._seen_points.setdefault(id(frame), {})
        n = seen.get(dispatch.point, 0)
        seen[dispatch.point] = n + 1
        expected = _nth_at(recorded.dispatches, dispatch.point, n)
        if expected is None:
            expected = Dispatch(point=dispatch.point)
        if expected.same_as(dispatch) or (expected.kind == "continue"
                                          and dispatch.kind == "fork"):
            # (A recording made before forks were recorded as decisions has "continue"
            # there; forks it lacks show as new steps.)
            return
        self._diverge(frame, "decision", point=dispatch.point,
                      hook=expected.hook or dispatch.hook, expected=expected.describe(),
                      got=dispatch.describe(),
                      nondeterministic=self._nondeterministic(frame, recorded, expected,
                                                              dispatch))

    def _nondeterministic(self, frame: StepFrame, recorded: StepRecord, expected: Dispatch,
                          got: Dispatch) -> bool:
        if recorded.input_digest != frame.input_digest:
            return False
        if {expected.hook, got.hook} & self.changed_hooks:
            return False
        if self.changed_hooks and expected.forks != got.forks:
            return False  # the forking hooks are not named: one of them may be the change
        if frame.key in self._diverged_steps:
            return False
        if got.hook is not None and got.hook == expected.hook:
            return got.version == expected.version
        hook = expected.hook or got.hook
        version = expected.version if expected.hook else got.version
        return hook is not None and self._hook_version(hook) == version

    def value(self, frame: StepFrame, index: int, live: Any) -> Any:
        """The recorded clock/random value, when the recording has it."""
        recorded = frame.recorded
        if recorded is not None and index < len(recorded.values):
            return recorded.values[index]
        return live

    def state_read(self, frame: StepFrame, op: str, scope: str, scope_id: str,
                   key: str | None) -> tuple[bool, Any]:
        """Serve a state read from the recording: the step's recorded read of the same
        identity (``op``, scope, scope id and key), in order among the reads of that
        identity, so reads made concurrently (a ``gather`` in a hook or in the run's body)
        match whatever their interleaving; a tool or model call's reads made inside its
        call are passed over, its call being served. A read with no recorded twin is a
        ``state_read`` divergence naming it and the first recorded read not matched yet
        (that one is not reported again as not read), and goes to the state. A what-if
        past its change point (its first divergence) reads the state: its own writes, then
        the live state."""
        recorded = frame.recorded
        if not self.reads_recorded or recorded is None or self.past_change():
            return _LIVE
        reads = recorded.reads
        taken = self._reads_taken.get(id(frame))
        if taken is None:
            taken = self._reads_taken[id(frame)] = _StepReads(frame, reads)
        at = taken.match((op, scope, scope_id, key))
        if at is None:
            got = StateRead(op=op, scope=scope, scope_id=scope_id, key=key)
            other = taken.name_first_open()
            self._diverge(frame, "state_read",
                          expected="no more state reads" if other is None
                          else reads[other].describe(), got=got.describe())
            return _LIVE
        read = reads[at]
        if read.withheld:
            note = (f"{frame.label()}: the recorded result of its {read.describe()} was "
                    "withheld (too large for the event store, or record_content='none'); "
                    "it was read from the state")
            if note not in self.notes:
                self.notes.append(note)
            return _LIVE
        return True, read.result

    def past_change(self) -> bool:
        """True in a what-if once its change took effect: its input differs, or it has
        diverged (an edit served, a hook deciding otherwise, ...)."""
        return self.mode == "what-if" and (self.input_changed or bool(self.divergences))

    def _unread(self, frame: StepFrame, recorded: StepRecord) -> None:
        """Report the recorded reads of a step that the replay did not make (not in a
        what-if, whose change may well leave them out), in their recorded order."""
        taken = self._reads_taken.pop(id(frame), None)
        if not self.reads_recorded or self.mode == "what-if":
            return
        reads = recorded.reads
        if taken is None:
            taken = _StepReads(frame, reads)
        for at in taken.open():
            self._diverge(frame, "state_read", expected=reads[at].describe(),
                          got="not read")

    def step_finished(self, frame: StepFrame) -> None:
        """Report recorded decisions that did not happen, and a changed output or error."""
        if self._armed:
            self.disarm(frame)
        recorded = frame.recorded
        if recorded is None:
            return
        if recorded.reads or id(frame) in self._reads_taken:
            self._unread(frame, recorded)
        seen = self._seen_points.pop(id(frame), {})
        counted: dict[str, int] = {}
        for dispatch in recorded.dispatches:
            n = counted.get(dispatch.point, 0)
            counted[dispatch.point] = n + 1
            if n >= seen.get(dispatch.point, 0) and dispatch.kind != "continue":
                self._diverge(frame, "decision", point=dispatch.point, hook=dispatch.hook,
                              expected=dispatch.describe(), got="not dispatched")
        if (recorded.error is None) != (frame.error is None) or (
                recorded.error is not None and frame.error is not None
                and not same_error(recorded.error, frame.error)):
            self._diverge(frame, "error", expected=recorded.error, got=frame.error)
        elif frame.error is None and frame.served != "edited" and \
                _output_digest(frame.output, recorded) != (recorded.output_digest
                                                           or digest(recorded.result)):
            expected = recorded.result
            self._diverge(frame, "output", expected=expected if expected is not None or
                          not recorded.output_digest else {"digest": recorded.output_digest},
                          got=_plain(frame.output))

    def cache_for(self, live: ResultCache) -> ResultCache:
        """This replay's :class:`~llmspell.runtime.calls.ReplayCache` standing in for
        ``live`` (made at its first use)."""
        found = self._caches.get(id(live))
        if found is not None:
            return found[1]
        from llmspell.runtime.calls import ReplayCache  # noqa: PLC0415 - calls imports us

        with self._caches_lock:
            found = self._caches.get(id(live))
            if found is None:  # the live cache is kept, so its id stays its own
                found = self._caches[id(live)] = (live, ReplayCache(live, self))
        return found[1]

    def cached(self, frame: StepFrame, own: Callable[[], tuple[bool, Any]]
               ) -> tuple[bool, Any] | None:
        """What a cache lookup in ``frame`` finds, as the recording says: in a tool or
        model step still on the recorded path (not edited), a miss when the recorded call
        ran, else (it was served from a cache) a hit with the recorded result; once the
        replay has diverged, what this replay cached (``own()``) first, so a what-if's
        change reaches the calls the run served from its cache. None (ask the replay's
        own entries) anywhere else, or when the recording kept no result to serve."""
        recorded = frame.recorded
        if (recorded is None or frame.kind not in LEAF_KINDS or recorded.results_withheld
                or frame.key in self._diverged_steps or frame.key in self.edits):
            return None
        if recorded.attempts or recorded.error is not None:
            return False, None
        if self.divergences:
            hit, value = own()
            if hit:
                return hit, value
        if recorded.output is not None:
            return True, recorded.output
        if recorded.output_digest == _NONE_DIGEST:
            return True, None
        return None  # not kept (record_content="none"): serving None would be wrong

    def child_run(self, parent: StepFrame, run: ActiveRun) -> None:
        """A run started inside a step: its root step is matched like any step."""
        self.visited.add(run.root.key)
        run.root.recorded = self.recording.steps.get(run.root.key)
        if run.root.recorded is not None and parent.key not in self._diverged_steps:
            self.arm_cancellation(run.root, run.root.recorded)

    # -- the end --------------------------------------------------------------------------
    def missing_steps(self) -> None:
        """Add a ``missing_step`` divergence for each recorded step the replay never
        reached (call once, after the replayed operation ended). Steps a served call made
        while it ran (the tools and agents a tool's code called) are not missing: the
        call's result came from the recording, so its code did not run."""
        served = self._served_leaves
        for step in sorted(self.recording.steps.values(), key=lambda s: (s.started, s.index)):
            if step.key and step.key not in self.visited and not (served and any(
                    step.key.startswith(key + "|") for key in served)):
                self.divergences.append(Divergence(step=step.index, key=step.key,
                                                   kind=step.kind, name=step.name,
                                                   what="missing_step"))


BY_TYPE_ONLY = frozenset({"CancelledError"})
"""Error types a replay compares by type only: a cancellation's message is the
canceller's (``anyio`` names its cancel scope by its id; a replay delivers a recorded
cancellation with none), not the step's."""

_TRUNCATED = re.compile(r"\.\.\. \[\d+ more characters\]\Z")


def same_error(recorded: Mapping[str, Any], live: Mapping[str, Any]) -> bool:
    """True when a step's ``live`` error (an :func:`~llmspell.runtime.runs.scope.error_dict`)
    is the ``recorded`` one as far as the recording can tell: the same type, and unless
    the recording kept the type only (``record_content="none"``) or the type is one of
    :data:`BY_TYPE_ONLY`, the same message, hint and text attributes as the recording kept
    them (verbatim, or masked as ``record_content="masked"`` masks them). A text cut short
    for its length (``... [N more characters]``) is compared by the part kept."""
    name = recorded.get("type")
    if name != live.get("type"):
        return False
    if "message" not in recorded or name in BY_TYPE_ONLY:
        return True
    want = _comparable(recorded)
    if _comparable(live) == want:
        return True
    masked = kept_error(dict(live), mask_value, True)
    return masked is not None and _comparable(masked) == want


def _comparable(error: Mapping[str, Any]) -> dict[str, Any]:
    """``error`` with each text cut short for its length reduced to the part kept (how many
    characters were cut depends on how long the whole was, which a replay may not know)."""
    return {key: text[:ERROR_TEXT_LIMIT] if isinstance(text, str)
            and len(text) > ERROR_TEXT_LIMIT and _TRUNCATED.search(text) else text
            for key, text in error.items()}


_NONE_DIGEST = digest(None)
_LIVE: tuple[bool, Any] = (False, None)

_ReadIdentity = tuple[str, str, str, str | None]
"""What a state read is matched by: ``(op, scope, scope_id, key)``."""


class _StepReads:
    """How far a running step of a replay is in its recorded state reads: for each read
    identity, the places of the recorded reads of it still to match (in recorded order),
    so reads of different identities match whatever order they come in; and the reads
    already matched or named by a divergence. A tool or model call's reads made inside its
    call are left out (its call is served, so its code does not run)."""

    __slots__ = ("_cursor", "_done", "_order", "_queues")

    def __init__(self, frame: StepFrame, reads: list[StateRead]) -> None:
        leaf = frame.kind in LEAF_KINDS
        self._order = [at for at, read in enumerate(reads) if not (leaf and read.in_call)]
        self._queues: dict[_ReadIdentity, deque[int]] = {}
        for at in self._order:
            read = reads[at]
            self._queues.setdefault((read.op, read.scope, read.scope_id, read.key),
                                    deque()).append(at)
        self._done: set[int] = set()
        """Recorded reads matched by a read of the replay, or named by a divergence."""
        self._cursor = 0
        """Every place in ``_order`` before it is done."""

    def match(self, identity: _ReadIdentity) -> int | None:
        """The place of the next recorded read of ``identity`` (now matched), or None. A
        read a divergence named (another read came in its place) still matches a later
        read of its own identity."""
        queue = self._queues.get(identity)
        if not queue:
            return None
        at = queue.popleft()
        self._done.add(at)
        return at

    def name_first_open(self) -> int | None:
        """The first recorded read not matched nor named yet (now named by a divergence,
        so it is not reported again), or None."""
        still = self.open()
        if not still:
            return None
        self._done.add(still[0])
        return still[0]

    def open(self) -> list[int]:
        """The recorded reads not matched nor named, in recorded order."""
        order, done = self._order, self._done
        while self._cursor < len(order) and order[self._cursor] in done:
            self._cursor += 1
        return [at for at in order[self._cursor:] if at not in done]


_CANCEL_SLACK = 0.5
"""How much longer than the recorded time into the run a served cancellation waits for the
replay's own canceller (a fraction of that time), plus :data:`_CANCEL_GRACE` seconds."""
_CANCEL_GRACE = 0.1


def _cancelled(error: Mapping[str, str] | None) -> bool:
    return error is not None and error.get("type") == "CancelledError"


def _ended(step: StepRecord) -> float:
    return step.started + step.duration_ms / 1000


def _nth_at(dispatches: list[Dispatch], point: str, n: int) -> Dispatch | None:
    for dispatch in dispatches:
        if dispatch.point == point:
            if n == 0:
                return dispatch
            n -= 1
    return None


def _first_output(recorded: StepRecord | None) -> Any:
    if recorded is None:
        return None
    for attempt in recorded.attempts:
        if attempt.error is None:
            return attempt.output
    return recorded.result


def _replay_attempt(attempt: Any) -> Any:
    if attempt.error is not None:
        raise recorded_error(attempt.error)
    return attempt.output


def _output_digest(output: Any, recorded: StepRecord) -> str:
    """The digest of a live output to compare with ``recorded``'s: of its plain form when
    the recording kept a digest, else of the value as the store gives it back (encoded to
    JSON and read again, as the recorded output was: integer keys become strings)."""
    if recorded.output_digest is not None:
        return digest(_plain(output))
    try:
        return digest(msgspec.json.decode(_STORED.encode(output)))
    except (TypeError, ValueError, msgspec.MsgspecError):
        return digest(_plain(output))


_STORED = msgspec.json.Encoder(enc_hook=repr)


def _plain(value: Any) -> Any:
    try:
        return msgspec.to_builtins(value, enc_hook=repr)
    except (TypeError, ValueError):
        return repr(value)
