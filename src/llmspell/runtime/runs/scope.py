"""The run a task works for and the step it is in: context variables, and the recorder.

:class:`ActiveRun` is one open run; :class:`StepFrame` one step in it. Both live in context
variables, so nested calls (and tasks started inside them) see them and independent tasks do
not. Everything on the hot path starts with one context-variable read: outside a run, or in a
run recorded at level ``off`` with no replay, a step costs that read and nothing else.

A replay is a :class:`ReplaySource` attached to a run: the frame asks it, at each step,
whether to serve the operation's result from the recording, and tells it each dispatch and
value so it can compare them with what was recorded.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar, Token
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from llmspell.builtin.masking import MASK
from llmspell.core.errors import LlmspellError
from llmspell.core.ids import new_id
from llmspell.core.run_scope import enter_run_id, leave_run_id, register_state_reads
from llmspell.core.text import error_text
from llmspell.runtime.content import has_sensitive_key, mask_text, response_has_sensitive_key
from llmspell.runtime.providers.base import Message, StreamDelta
from llmspell.runtime.runs.input_digest import ConversationDigests
from llmspell.runtime.runs.records import (
    RECORDING_VERSION,
    Attempt,
    Dispatch,
    HookExecution,
    StateRead,
    StepRecord,
    digest,
)

if TYPE_CHECKING:
    from llmspell.runtime.calls import ResultCache

__all__ = [
    "LEAF_KINDS",
    "ActiveRun",
    "ReplaySource",
    "RunClock",
    "StepFrame",
    "current_frame",
    "current_run",
    "close_open_steps",
    "delta_sink",
    "kept_error",
    "recorded_deltas",
    "run_clock",
    "run_id_source",
    "run_random",
]

LEAF_KINDS = frozenset({"tool", "model"})
"""Step kinds whose operation replay serves from the recording instead of running."""
STEP_BATCH = 64
"""Finished steps are published in ``run.steps`` events of up to this many records (a
replay publishes each step as it ends, for progress)."""
_PLAIN = (str, int, float, bool, type(None))  # digested as they are, no plain-data copy
_CONTAINERS = (dict, list, tuple)  # what has_sensitive_key looks into (else False)
_DELTAS = attrgetter("deltas")
_wall = time.time
_perf_counter = time.perf_counter
_NO_ITEMS: tuple[()] = ()
"""What a step's rarely used lists (dispatches, values, reads, child runs, side effects) are
until their first item: a step that has none (most) makes no list."""

_run: ContextVar[ActiveRun | None] = ContextVar("llmspell_run", default=None)
_frame: ContextVar[StepFrame | None] = ContextVar("llmspell_step", default=None)
delta_sink: ContextVar[Callable[[StreamDelta], Awaitable[None] | None] | None] = ContextVar(
    "llmspell_delta_sink", default=None)
"""In a replay, the consumer of the model call in progress in this context (its
``on_delta``): a served streaming call hands it the recorded deltas again. Set by the model
layer around each call made with ``on_delta`` inside a replay (and cleared around one made
without, so a call a hook makes never feeds another call's consumer)."""

current_run = _run.get
"""The innermost open run of the calling task (an :class:`ActiveRun`), or None."""


def current_frame() -> StepFrame | None:
    """The step the calling task is in (the run's root step between steps), or None."""
    frame = _frame.get()
    if frame is not None:
        return frame
    run = _run.get()
    return None if run is None else run.root


class ReplaySource(Protocol):
    """What a replay offers the recorder (implemented by the replay session)."""

    def step_started(self, frame: StepFrame) -> None:
        """A step began: find its recorded twin (``frame.recorded``) and compare inputs."""
        ...

    async def serve(self, frame: StepFrame, attempt: int,
                    invoke: Callable[[], Awaitable[Any]]) -> Any:
        """The operation's result for ``attempt``: from the recording, simulated, or
        ``await invoke()`` (live)."""
        ...

    def dispatched(self, frame: StepFrame, dispatch: Dispatch) -> None:
        """A dispatch happened in ``frame``: compare it with the recording."""
        ...

    def value(self, frame: StepFrame, index: int, live: Any) -> Any:
        """The ``index``-th clock/random value of ``frame``: the recorded one if there is."""
        ...

    def state_read(self, frame: StepFrame, op: str, scope: str, scope_id: str,
                   key: str | None) -> tuple[bool, Any]:
        """A state read in ``frame``: ``(True, stored result)`` to serve it from the
        recording, ``(False, None)`` to read the state (the replay's own)."""
        ...

    def step_finished(self, frame: StepFrame) -> None:
        """A step ended: compare its output and what was left unconsumed."""
        ...

    def child_run(self, parent: StepFrame, run: ActiveRun) -> None:
        """A run started inside ``parent``'s step."""
        ...

    def cache_for(self, live: ResultCache) -> ResultCache:
        """The cache the replay's calls use in place of ``live`` (one per live cache, for
        the whole replay): a replay never reads or fills a live cache, nor coalesces
        with live calls."""
        ...

    def cached(self, frame: StepFrame, own: Callable[[], tuple[bool, Any]]
               ) -> tuple[bool, Any] | None:
        """What the recording says a cache lookup in ``frame`` finds: ``(True, value)``
        when the recorded call was served from a cache, ``(False, None)`` when it ran;
        None when the recording does not say (a step off the recorded path, a new one,
        an edited one, a container's). ``own()`` looks the key up in the replay's own
        entries (``(hit, value)``)."""
        ...


class StepFrame:
    """One step of a run while it executes (see :mod:`records` for what it keeps)."""

    __slots__ = (
        "_counts",
        "attempts",
        "calling",
        "child_runs",
        "cost_usd",
        "deltas",
        "dispatches",
        "ended",
        "error",
        "hooks",
        "index",
        "input",
        "input_digest",
        "key",
        "kind",
        "name",
        "output",
        "own_response",
        "parent",
        "reads",
        "recorded",
        "run",
        "served",
        "side_effects",
        "started",
        "t0",
        "tokens_in",
        "tokens_out",
        "values",
    )

    def __init__(self, run: ActiveRun, parent: StepFrame | None, kind: str, name: str,
                 params: Any, digest_of: Callable[[ActiveRun], str] | None = None) -> None:
        self.run = run
        self.parent = parent
        self.kind = kind
        self.name = name
        self._counts: dict[str, int] | None = None  # made at the first step inside
        if parent is None:
            self.key = ""
            self.index = 0
        else:
            label = f"{kind}:{name}"
            counts = parent._counts  # (parent.occurrence, inlined: this runs every step)
            if counts is None:
                counts = parent._counts = {}
            n = counts.get(label, 0)
            counts[label] = n + 1
            self.key = f"{parent.key}|{label}#{n}" if parent.key else f"{label}#{n}"
            self.index = run.step_count = run.step_count + 1
        self.input = params
        self.input_digest = digest(params) if digest_of is None else digest_of(run)
        self.attempts: list[Attempt] = []
        self.deltas: list[Any] | None = None
        """The deltas the attempt in progress (of a streaming model call) has handed to
        its consumer so far: kept with the attempt when it ends (set by the model layer
        only in a recorded run)."""
        # The lists below but hooks (appended by the recorder at level full) stay
        # _NO_ITEMS until their first item (see the methods that append to them).
        self.dispatches: Sequence[Dispatch] = _NO_ITEMS
        self.hooks: list[HookExecution] = []
        self.values: Sequence[Any] = _NO_ITEMS
        self.reads: Sequence[tuple[str, str, str, str | None, Any, bool]] = _NO_ITEMS
        """The state reads made in this step, in order: ``(op, scope, scope_id, key,
        result as the state answered, made while the call ran)``; stored by
        :meth:`record` (as :class:`StateRead`)."""
        self.calling = False
        """True while a tool or model call's operation runs (its code: what a replay
        serving the call does not run)."""
        self.child_runs: Sequence[str] = _NO_ITEMS
        self.side_effects: Sequence[str] = _NO_ITEMS
        self.output: Any = None
        self.error: dict[str, str] | None = None
        self.recorded: StepRecord | None = None
        self.served: str | None = None
        self.own_response: tuple[Any, Sequence[Any]] | None = None
        """A model call's response the runtime built itself from the provider's answer
        (no hook in between) and that answer's tool calls: only their arguments in it come
        from outside (see :meth:`answered`)."""
        self.tokens_in = 0
        self.tokens_out = 0
        self.cost_usd = 0.0
        self.started = _wall()
        self.t0 = self.ended = _perf_counter()

    def occurrence(self, label: str) -> int:
        """The ``#n`` of the next step (or run) labelled ``label`` started inside this
        one: how many it started before (counted per label, for the keys)."""
        counts = self._counts
        if counts is None:
            counts = self._counts = {}
        n = counts.get(label, 0)
        counts[label] = n + 1
        return n

    def add_child_run(self, run_id: str) -> None:
        """Note a run started inside this step."""
        child_runs = self.child_runs
        if not isinstance(child_runs, list):
            child_runs = self.child_runs = []
        child_runs.append(run_id)

    @property
    def leaf(self) -> bool:
        """True for a tool or model call: replay serves its result."""
        return self.kind in LEAF_KINDS

    def label(self) -> str:
        """``step 3 (tool 'calculator')``, for reports."""
        if self.parent is None:
            return f"the run ({self.kind} {self.name!r})"
        return f"step {self.index} ({self.kind} {self.name!r})"

    def record(self, keep: Callable[[Any], Any] | None = None, *,
               results: bool = True) -> dict[str, Any]:
        """The step as it is stored (a :class:`StepRecord`'s fields, those at their
        default left out). ``keep`` (the run's content filter, memoised by the caller) is
        applied to inputs, outputs and what hooks saw; digests are of the real values. Only
        a tool or model call keeps its attempts (what a replay serves); the run keeps its
        output, a container inside it (an agent, a workflow) only its output's digest.
        ``output`` is left out when it is the last attempt's (``output_from_attempt``), and
        ``output_digest`` when the output is kept as it is (its digest is the stored
        value's). ``results=False`` leaves out every value (input, attempts, output, what
        hooks saw) and keeps digests and decisions only (``results_withheld``): the record
        of a step whose values are too large for the store."""
        run = self.run
        kind = self.kind
        leaf = kind in LEAF_KINDS
        output = self.output
        record: dict[str, Any] = {
            "key": self.key, "index": self.index, "kind": kind, "name": self.name,
            "input_digest": self.input_digest, "started": self.started,
            "duration_ms": (self.ended - self.t0) * 1000, "version": RECORDING_VERSION,
        }
        if not results:
            record["results_withheld"] = True
        keeps = run.keeps_results and results
        attempts = self.attempts
        from_attempt = False
        if leaf and attempts and keeps:
            if any(map(_DELTAS, attempts)):  # (in C: no generator per step)
                record["attempts"] = [_stored_attempt(a, keep, True) for a in attempts]
            else:
                record["attempts"] = attempts if keep is None else [
                    Attempt(output=keep(a.output), error=kept_error(a.error, keep, True))
                    for a in attempts]
            last = attempts[-1]
            from_attempt = last.error is None and last.output is output
            if from_attempt:
                record["output_from_attempt"] = True
        if keeps and not from_attempt and (leaf or self.parent is None) \
                and output is not None:
            record["output"] = output if keep is None else keep(output)
        if keep is not None or not (from_attempt or "output" in record):
            # An output kept as it is digests from the record itself (StepRecord.result).
            record["output_digest"] = digest(output if type(output) in _PLAIN
                                             else _builtins(output))
        if results and (run.level == "full" or self.parent is None or kind == "tool"):
            value = _builtins(self.input) if kind == "model" else self.input
            if value is not None:
                record["input"] = value if keep is None else keep(value)
        if self.error is not None:
            record["error"] = kept_error(self.error, keep, run.keeps_results)
        if self.dispatches:
            record["dispatches"] = self.dispatches
        if self.hooks and not results:
            record["hooks"] = [HookExecution(
                hook=h.hook, point=h.point, kind=h.kind, duration_ns=h.duration_ns,
                version=h.version, error=_kept_text(h.error, keep, run.keeps_results))
                for h in self.hooks]
        elif self.hooks:
            record["hooks"] = self.hooks if keep is None else [
                HookExecution(hook=h.hook, point=h.point, kind=h.kind,
                              duration_ns=h.duration_ns, version=h.version,
                              context=keep(h.context),
                              error=_kept_text(h.error, keep, run.keeps_results))
                for h in self.hooks]
        if self.values:
            record["values"] = self.values
        if self.reads:
            record["reads"] = _stored_reads(self.reads, keep, keeps)
        if self.child_runs:
            record["child_runs"] = self.child_runs
        if self.side_effects:
            record["side_effects"] = self.side_effects
        if self.tokens_in or self.tokens_out or self.cost_usd:
            record["tokens_in"] = self.tokens_in
            record["tokens_out"] = self.tokens_out
            record["cost_usd"] = self.cost_usd
        if self.served is not None:
            record["served"] = self.served
        return record

    def holds_sensitive_key(self) -> bool:
        """True when a dict in what :meth:`record` keeps from outside the runtime has a
        sensitive key (:func:`~llmspell.runtime.content.has_sensitive_key`): a kept input,
        the results of a tool or model call, the run's output, what hooks saw. A model
        response is walked whole: the runtime's own keys in it (``usage``'s token counts
        included) are never sensitive, and one walk costs less than picking out the
        tool-call arguments first. Texts are the encoded record's search."""
        kind = self.kind
        root = self.parent is None
        # Only a container can hold a dict: a scalar (a tool's usual result) costs no call.
        if kind == "tool" or root or self.run.level == "full":
            # A model call's input holds message Structs: as plain data, so its dicts
            # (tool-call arguments) are walked.
            value = _builtins(self.input) if kind == "model" else self.input
            if isinstance(value, _CONTAINERS) and has_sensitive_key(value):
                return True
        # One pass over the attempts (no generator): their results, and their errors.
        own = self.own_response
        for attempt in self.attempts:
            output = attempt.output
            if kind == "model":
                if own is not None and output is own[0]:
                    # The runtime's own response: its keys are the runtime's but for the
                    # tool-call arguments (what response_has_sensitive_key finds, without
                    # checking the response's shape again).
                    for call in own[1]:
                        if isinstance(call.arguments, _CONTAINERS) \
                                and has_sensitive_key(call.arguments):
                            return True
                elif response_has_sensitive_key(output):
                    return True
            elif kind == "tool" and isinstance(output, _CONTAINERS) \
                    and has_sensitive_key(output):
                return True
            if attempt.error is not None and has_sensitive_key(attempt.error):
                return True
        if root and isinstance(self.output, _CONTAINERS) and has_sensitive_key(self.output):
            return True
        if self.error is not None and has_sensitive_key(self.error):
            return True  # an llmspell error's attribute under a sensitive name
        if self.reads and any(has_sensitive_key(_read_values(r[0], r[3], r[4]))
                              for r in self.reads):
            return True
        return bool(self.hooks) and any(has_sensitive_key(h.context) for h in self.hooks)

    # -- recording -----------------------------------------------------------------------
    def note_dispatch(self, point: str, kind: str, hook: str | None, version: str | None,
                      detail: Any, failed: list[str], forks: str | None = None) -> None:
        """Record one dispatch of hooks in this step (and let a replay compare it);
        ``forks`` is the digest of forks collected beside a decisive result."""
        dispatch = Dispatch(point=point, kind=kind, hook=hook, version=version,
                            digest=None if kind == "continue" else digest(detail),
                            failed=failed, forks=forks)
        dispatches = self.dispatches
        if not isinstance(dispatches, list):
            dispatches = self.dispatches = []
        dispatches.append(dispatch)
        replay = self.run.replay
        if replay is not None:
            replay.dispatched(self, dispatch)

    async def call(self, attempt: int, invoke: Callable[[], Awaitable[Any]]) -> Any:
        """Run (or, in a replay, serve) the operation's ``attempt``-th call, recording what
        it produced."""
        replay = self.run.replay
        try:
            if replay is None or self.kind not in LEAF_KINDS:
                value = await invoke()
            else:
                value = await replay.serve(self, attempt, self._calling(invoke))
        except BaseException as exc:
            self.attempts.append(self._attempt(None, error_dict(exc)))
            raise
        self.attempts.append(self._attempt(value, None))
        return value

    def answered(self, response: Any, calls: Sequence[Any]) -> None:
        """Record a model call's attempt that the runtime made without :meth:`call` (no
        replay): ``response`` is ``response_dict`` of the provider's completion, as it came,
        and ``calls`` that completion's tool calls (:class:`ToolCall`, whose ``arguments``
        are the response's): :meth:`holds_sensitive_key` walks only their arguments."""
        self.attempts.append(Attempt(output=response) if self.deltas is None
                             else self._attempt(response, None))
        self.own_response = (response, calls)

    def failed(self, exc: BaseException) -> None:
        """Record an attempt made without :meth:`call` that raised ``exc``."""
        self.attempts.append(self._attempt(None, error_dict(exc)))

    def _attempt(self, output: Any, error: dict[str, str] | None) -> Attempt:
        """The attempt that just ended, with the deltas it streamed (if any)."""
        deltas = self.deltas
        if deltas is None:
            return Attempt(output=output, error=error)
        self.deltas = None
        return Attempt(output=output, error=error, deltas=deltas)

    def calls(self, invoke: Callable[[Any, int], Awaitable[Any]]
              ) -> Callable[[Any, int], Awaitable[Any]]:
        """``invoke(params, attempt)`` as :meth:`call` runs it: recorded, or in a replay
        served (outside a replay one coroutine, not three, per call)."""
        if self.run.replay is not None:
            async def served(params: Any, attempt: int) -> Any:
                return await self.call(attempt, lambda: invoke(params, attempt))
            return served
        attempts = self.attempts

        async def recorded(params: Any, attempt: int) -> Any:
            self.calling = True
            try:
                value = await invoke(params, attempt)
            except BaseException as exc:
                attempts.append(self._attempt(None, error_dict(exc)))
                raise
            finally:
                self.calling = False
            attempts.append(Attempt(output=value) if self.deltas is None
                            else self._attempt(value, None))
            return value
        return recorded

    def _calling(self, invoke: Callable[[], Awaitable[Any]]
                 ) -> Callable[[], Awaitable[Any]]:
        """``invoke`` marking the step as calling while it runs (see :attr:`calling`)."""
        async def calling() -> Any:
            self.calling = True
            try:
                return await invoke()
            finally:
                self.calling = False
        return calling

    # -- state reads (llmspell.core.run_scope.StateReads) --------------------------------
    def served_read(self, op: str, scope: str, scope_id: str,
                    key: str | None) -> tuple[bool, Any]:
        """In a replay, the recorded result of this state read (``(True, result)``), or
        ``(False, None)``: read the state."""
        replay = self.run.replay
        if replay is None:
            return _READ_LIVE
        return replay.state_read(self, op, scope, scope_id, key)

    def note_read(self, op: str, scope: str, scope_id: str, key: str | None,
                  result: Any) -> None:
        """Keep what a state read returned (one append: stored by :meth:`record`)."""
        reads = self.reads
        if not isinstance(reads, list):
            reads = self.reads = []
        reads.append((op, scope, scope_id, key, result, self.calling))

    def take_value(self, live: Any) -> Any:
        """A nondeterministic value the step consumed: recorded, or served by a replay."""
        replay = self.run.replay
        values = self.values
        value = live if replay is None else replay.value(self, len(values), live)
        if not isinstance(values, list):
            values = self.values = []
        values.append(value)
        return value


_Entry = tuple[Token["ActiveRun | None"], Token["StepFrame | None"], Token[str | None]]
"""What :meth:`ActiveRun.enter` changed in a context: the tokens that undo it."""


class ActiveRun:
    """An open run: what :meth:`RunManager.start` yields (see docs/runs.md).

    ``run_id``, ``parent_run_id``, ``kind``, ``name``, ``input``; set ``output`` to record
    what the run produced. ``level`` is the recording level; ``replay`` the replay this run
    belongs to (None for a live run); ``content`` what is applied to recorded values before
    they are stored (the ``record_content`` setting; None keeps them verbatim).
    """

    def __init__(self, *, kind: str, name: str, input: Any, level: str,
                 parent: ActiveRun | None, parent_frame: StepFrame | None,
                 replay: ReplaySource | None, run_id: str | None = None,
                 on_batch: Callable[[ActiveRun], None] | None = None,
                 content: Callable[[Any], Any] | None = None) -> None:
        self.run_id = run_id or new_id()
        self.content = content
        self.keeps_results = True
        self.pending: list[StepFrame] = []
        """Finished steps not yet published (they go out in batches)."""
        self.open: set[StepFrame] = set()
        """Steps started and not yet ended: those still open when the run ends are
        recorded as cancelled by its end (:func:`close_open_steps`)."""
        self.closed = False
        """True once the run has ended: a step ending (or starting) later is not its."""
        self.on_batch = on_batch
        """Called with the run when :attr:`pending` holds :data:`STEP_BATCH` steps (after
        every step in a replay)."""
        self.kind = kind
        self.name = name
        self.input = input
        self.level = level
        self.parent = parent
        self.parent_run_id = parent.run_id if parent is not None else None
        self.root_run_id: str = parent.root_run_id if parent is not None else self.run_id
        self.parent_frame = parent_frame
        self.replay = replay
        self.output: Any = None
        self.step_count = 0
        self.model_calls = 0
        self.tool_calls = 0
        self.decisions = 0
        self.tokens_in = 0
        self.tokens_out = 0
        self.cost_usd = 0.0
        self.root = StepFrame(self, None, kind, name, input)
        if parent_frame is not None:
            # The child's steps are keyed inside the step that started it, so the whole
            # tree of runs shares one key space (what replay matches on).
            label = f"run:{kind}:{name}"
            n = parent_frame.occurrence(label)
            prefix = f"{parent_frame.key}|{label}#{n}" if parent_frame.key else f"{label}#{n}"
            self.root.key = prefix
        self.started = time.time()
        self.conversations: ConversationDigests | None = None
        """The model-call input digests taken along this run's conversations (made at
        the first model call)."""
        self._tokens: list[_Entry] = []

    def model_input_digest(self, messages: Sequence[Message], tools: Sequence[Any],
                           temperature: float | None, max_tokens: int | None) -> str:
        """The digest of a model call's step input, continued along its conversation."""
        conversations = self.conversations
        if conversations is None:
            conversations = self.conversations = ConversationDigests()
        return conversations.digest(messages, tools, temperature, max_tokens)

    @property
    def recording(self) -> bool:
        """True when this run records steps (level not ``off``, or a replay)."""
        return self.level != "off" or self.replay is not None

    def enter(self) -> _Entry:
        """Make this run (and its root step) current in the calling context; returns the
        entry, for :meth:`leave` when several contexts enter the run at once."""
        entry = (_run.set(self), _frame.set(self.root), enter_run_id(self.run_id))
        self._tokens.append(entry)
        return entry

    def leave(self, entry: _Entry | None = None) -> None:
        """Restore what was current before :meth:`enter`: before ``entry`` (in the context
        that made it), or else before the latest entry. Bodies of one run that overlap in
        their own contexts (parallel tool calls of a framework run) each leave their own."""
        if entry is None:
            entry = self._tokens.pop()
        else:
            self._tokens.remove(entry)
        run_token, frame_token, id_token = entry
        leave_run_id(id_token)
        _frame.reset(frame_token)
        _run.reset(run_token)

    def totals(self) -> dict[str, Any]:
        """Counters for the end record."""
        return {"steps": self.step_count, "model_calls": self.model_calls,
                "tool_calls": self.tool_calls, "decisions": self.decisions}


def enter_step(kind: str, name: str, params: Any,
               digest_of: Callable[[ActiveRun], str] | None = None
               ) -> tuple[StepFrame, Token[Any]] | None:
    """Open a step in the current run (None when there is no run, or it records nothing).
    ``digest_of(run)``, when given, takes the input's digest (instead of
    ``digest(params)``; it must give the same value: a model call continues its
    conversation's digest, see :mod:`~llmspell.runtime.runs.input_digest`)."""
    run = _run.get()
    # (run.recording, inlined: this runs for every step)
    if run is None or (run.level == "off" and run.replay is None) or run.closed:
        return None
    parent = _frame.get() or run.root
    frame = StepFrame(run, parent, kind, name, params, digest_of)
    run.open.add(frame)
    if kind == "tool":
        run.tool_calls += 1
    elif kind == "model":
        run.model_calls += 1
    if run.replay is not None:
        run.replay.step_started(frame)
    return frame, _frame.set(frame)


def exit_step(opened: tuple[StepFrame, Token[Any]], output: Any,
              error: BaseException | None) -> StepFrame:
    """Close a step opened by :func:`enter_step`; returns its frame."""
    frame, token = opened
    _frame.reset(token)
    run = frame.run
    try:
        run.open.remove(frame)
    except KeyError:
        return frame  # the run ended while it ran: recorded then (close_open_steps)
    frame.ended = _perf_counter()
    if error is not None:
        frame.error = error_dict(error)
    else:
        frame.output = output
    if frame.kind == "model" and isinstance(output, dict):
        usage = output.get("usage")
        if isinstance(usage, dict):
            frame.tokens_in = int(usage.get("input_tokens") or 0)
            frame.tokens_out = int(usage.get("output_tokens") or 0)
            cost = output.get("cost_usd")
            frame.cost_usd = float(cost) if isinstance(cost, (int, float)) else 0.0
            run.tokens_in += frame.tokens_in
            run.tokens_out += frame.tokens_out
            run.cost_usd += frame.cost_usd
    replay = run.replay
    if replay is not None:
        replay.step_finished(frame)
    pending = run.pending
    pending.append(frame)
    if (len(pending) >= STEP_BATCH or replay is not None) and run.on_batch is not None:
        run.on_batch(run)
    return frame


RUN_ENDED = {"type": "CancelledError", "message": "the run ended while this step ran"}
"""The error of a step still running when its run ended (:func:`close_open_steps`)."""


def close_open_steps(run: ActiveRun) -> None:
    """Record the steps of ``run`` still running as it ends (an async generator left
    unfinished, a task that outlives the run's body) as cancelled by the run's end (error
    :data:`RUN_ENDED`; a streaming model call's attempt with the deltas it had handed
    over), innermost first, so the recording is complete and a replay, ending at the same
    point, matches it. When such a step ends later, that is not recorded."""
    if not run.open:
        return
    frames = sorted(run.open, key=lambda f: f.index, reverse=True)
    run.open.clear()
    now = time.perf_counter()
    replay = run.replay
    for frame in frames:
        frame.ended = now
        frame.error = dict(RUN_ENDED)
        frame.output = None
        if frame.deltas is not None:  # a stream was being handed over
            frame.attempts.append(frame._attempt(None, dict(RUN_ENDED)))
        if replay is not None:
            replay.step_finished(frame)
        run.pending.append(frame)


_READ_LIVE: tuple[bool, Any] = (False, None)


def _entry_form(entry: Any, value: Any) -> list[Any]:
    return [value, entry.version, entry.updated_at]


def _read_values(op: str, key: str | None, result: Any) -> Any:
    """The values a state read returned, under their keys (what masking looks at: a value
    under a sensitive key is masked whole)."""
    if op == "get":
        return None if result is None else {key: result.value}
    if op == "items":
        return {k: e.value for k, e in result.items()}
    return result


def _stored_reads(reads: Sequence[tuple[str, str, str, str | None, Any, bool]],
                  keep: Callable[[Any], Any] | None, keeps: bool) -> list[StateRead]:
    """The stored form of a step's state reads (see :class:`StateRead`); ``keeps`` False
    withholds their results (too large for the store, or ``record_content="none"``)."""
    stored: list[StateRead] = []
    for op, scope, scope_id, key, answer, in_call in reads:
        if not keeps:
            stored.append(StateRead(op=op, scope=scope, scope_id=scope_id, key=key,
                                    withheld=True, in_call=in_call))
            continue
        result = answer
        if op == "get":
            if answer is not None:
                value = answer.value
                if keep is not None:
                    value = keep({key: value}).get(key)
                result = _entry_form(answer, value)
        elif op == "items":
            values = {k: e.value for k, e in answer.items()}
            if keep is not None:
                values = keep(values)
            result = {k: _entry_form(e, values.get(k)) for k, e in answer.items()}
        elif keep is not None:
            result = keep(answer)
        stored.append(StateRead(op=op, scope=scope, scope_id=scope_id, key=key,
                                result=result, in_call=in_call))
    return stored


def _stored_attempt(attempt: Attempt, keep: Callable[[Any], Any] | None,
                    keeps: bool) -> Attempt:
    output = attempt.output if keep is None else keep(attempt.output)
    deltas = recorded_deltas(attempt.deltas, output, keep) if attempt.deltas else []
    return Attempt(output=output, error=kept_error(attempt.error, keep, keeps),
                   deltas=deltas)


def _content_of(output: Any) -> str | None:
    message = output.get("message") if isinstance(output, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, str) else None


def recorded_deltas(deltas: Sequence[Any], output: Any,
                    keep: Callable[[Any], Any] | None) -> list[Any]:
    """The stored form of the deltas a model call's attempt streamed (``output``: its
    response as stored). Only what a replay needs to hand them over again: a text delta
    that continues the response's text is its length (the text is in the response), any
    other text delta its text, a tool-call delta a table of its fields that are set. Under
    a content filter (``keep``), texts are kept as it keeps them; when it would mask the
    streamed text as a whole but not piece by piece (a secret split across deltas), the
    first text piece holds the whole masked text and the others are empty."""
    content = _content_of(output)
    at = 0
    stored: list[Any] = []
    for delta in deltas:
        if type(delta) is not StreamDelta:
            stored.append(delta)  # already stored form
            continue
        text = delta.text
        if delta.tool_call_index is None and not delta.arguments_text \
                and delta.tool_call_id is None and delta.tool_name is None:
            if content is not None and content.startswith(text, at):
                stored.append(len(text))
                at += len(text)
            else:
                content = None  # from here on, the texts themselves
                stored.append(text)
            continue
        stored.append({f: v for f in delta.__struct_fields__
                       if (v := getattr(delta, f)) not in ("", None)})
    if keep is not None:
        _keep_texts(stored, keep)
    return stored


def _keep_texts(stored: list[Any], keep: Callable[[Any], Any]) -> None:
    """Apply ``keep`` to the text pieces of ``stored`` (see :func:`recorded_deltas`)."""
    places: list[tuple[int, str | None]] = []
    for i, item in enumerate(stored):
        if isinstance(item, str):
            places.append((i, None))
        elif isinstance(item, dict):
            places.extend((i, f) for f in ("text", "arguments_text") if f in item)
    if not places:
        return

    def text_at(i: int, field: str | None) -> str:
        item = stored[i]
        return str(item if field is None else item[field])

    def put(i: int, field: str | None, text: Any) -> None:
        if field is None:
            stored[i] = text
        else:
            stored[i] = {**stored[i], field: text}

    whole = "".join(text_at(i, f) for i, f in places)
    kept_whole = keep(whole)
    pieces = [keep(text_at(i, f)) for i, f in places]
    if kept_whole == whole or (kept_whole is not None
                               and all(isinstance(p, str) for p in pieces)
                               and "".join(pieces) == kept_whole):
        for (i, f), piece in zip(places, pieces, strict=True):
            put(i, f, piece)
        return
    for n, (i, f) in enumerate(places):
        put(i, f, kept_whole if n == 0 else "")


def served_deltas(stored: Sequence[Any], output: Any) -> list[StreamDelta]:
    """The deltas :func:`recorded_deltas` stored, as a replay hands them over again."""
    content = _content_of(output) or ""
    at = 0
    deltas: list[StreamDelta] = []
    for item in stored:
        if type(item) is StreamDelta:
            deltas.append(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            deltas.append(StreamDelta(text=content[at:at + item]))
            at += item
        elif isinstance(item, str):
            deltas.append(StreamDelta(text=item))
        elif isinstance(item, dict):
            try:
                deltas.append(msgspec.convert(item, StreamDelta))
            except msgspec.ValidationError:
                continue  # a damaged piece: the others still go
    return deltas


def _builtins(value: Any) -> Any:
    """``value`` as plain data (what is stored), so digests of live and stored agree."""
    try:
        return msgspec.to_builtins(value, enc_hook=repr)
    except (TypeError, ValueError):
        pass
    except Exception:  # a repr that raises (the enc_hook)
        return f"<{type(value).__name__} object>"
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__name__} object>"


def error_dict(exc: BaseException) -> dict[str, str]:
    """``{"type": ..., "message": ...}`` of an exception; for an llmspell error also its
    ``hint`` and its other text attributes (``"attr:tool"``: the tool of a
    :class:`~llmspell.errors.ToolError`), so a replay raises it as it was raised
    (:func:`~llmspell.runtime.runs.replay.recorded_error`)."""
    error = {"type": type(exc).__name__, "message": error_text(exc)}
    if isinstance(exc, LlmspellError):
        stands_for = vars(exc).get("type_name")
        if error["type"] == "RecordedError" and isinstance(stands_for, str):
            # A replay's RecordedError standing for a type it could not rebuild: recorded
            # as that type, as it was first.
            error["type"] = stands_for
        if exc.hint is not None:
            error["hint"] = error_text(exc.hint)
        for name, value in vars(exc).items():
            if isinstance(value, str) and name not in ("message", "hint", "type_name") \
                    and not name.startswith("_"):
                error[f"attr:{name}"] = error_text(value)
    return error


def kept_error(error: dict[str, str] | None, keep: Callable[[Any], Any] | None,
               keeps: bool) -> dict[str, str] | None:
    """What a recording keeps of an :func:`error_dict` under the run's content filter
    ``keep`` (None: everything, as it is): with ``keeps`` False (``record_content="none"``)
    its type only; else (``masked``) its texts with credential-shaped substrings replaced
    by ``***`` (:func:`~llmspell.runtime.content.mask_text`; a message's ``(hint)`` masked
    as its hint is) and an attribute under a sensitive name (``attr:token``) masked whole.
    The type is kept as it is, so a replay raises an error of the same type
    (:func:`~llmspell.runtime.runs.replay.recorded_error`); it compares a live error with
    a recorded one as this keeps them (:func:`~llmspell.runtime.runs.replay.same_error`)."""
    if error is None or keep is None:
        return error
    name = error.get("type", "Exception")
    if not keeps:
        return {"type": name}
    kept = {"type": name}
    for key, text in error.items():
        if key != "type":
            kept[key] = MASK if has_sensitive_key({key: None}) else (
                mask_text(text) if isinstance(text, str) else text)
    message, hint = error.get("message"), error.get("hint")
    if isinstance(message, str) and isinstance(hint, str) and message.endswith(f" ({hint})"):
        # An llmspell error's message ends with its hint: masked as the hint is, so a
        # replay still parts them (a mask can swallow the closing parenthesis).
        kept["message"] = f"{mask_text(message[:-len(hint) - 3])} ({kept['hint']})"
    return kept


def _kept_text(text: str | None, keep: Callable[[Any], Any] | None,
               keeps: bool) -> str | None:
    """What a recording keeps of an error's text (a failed hook's) under ``keep``, as
    :func:`kept_error` keeps a message: nothing under ``record_content="none"``."""
    if text is None or keep is None:
        return text
    return mask_text(text) if keeps else None


class RunClock:
    """A :class:`~llmspell.core.clock.Clock` whose readings are part of the recording:
    inside a recorded step each reading is kept, and a replay of that step reads the same
    values back, so a hook that takes its time from here replays deterministically. Outside
    a run it is the system clock."""

    __slots__ = ()

    def monotonic(self) -> float:
        """``time.monotonic()``, recorded."""
        return float(_take(time.monotonic()))

    def now(self) -> float:
        """``time.time()``, recorded."""
        return float(_take(time.time()))


def _take(live: Any) -> Any:
    frame = current_frame()
    if frame is None or not frame.run.recording:
        return live
    return frame.take_value(live)


run_clock = RunClock()
"""The recorded clock (see :class:`RunClock`)."""


def run_random() -> float:
    """A random float in [0, 1), recorded like :data:`run_clock`'s readings."""
    return float(_take(random.random()))


def run_id_source() -> str:
    """A new unique id, recorded like :data:`run_clock`'s readings."""
    return str(_take(new_id()))


def _reads_frame() -> StepFrame | None:
    """The step whose state reads the calling task's are (in a recorded run), or None."""
    frame = current_frame()
    if frame is None:
        return None
    run = frame.run
    return frame if run.recording and not run.closed else None


register_state_reads(_reads_frame)

