"""Opening and closing runs: the ``run.started`` / ``run.completed`` / ``run.failed``
events (a cancelled run's ``run.failed`` has status ``cancelled``), and the step records
published as each step ends.

Recording never fails the operation it records: a record the store cannot take (full, too
large) is logged and dropped, the operation goes on.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import msgspec

from llmspell.core.errors import (
    EventError,
    EventTooLargeError,
    InvalidValueError,
    NotJsonSafeError,
)
from llmspell.core.process import this_process
from llmspell.core.redact import get_logger
from llmspell.core.run_scope import (
    mark_recording,
    mark_replay,
    unmark_recording,
    unmark_replay,
)
from llmspell.core.values import to_json_safe
from llmspell.events.event import EventMetadata, PlainJson, UniversalEvent
from llmspell.runtime.content import (
    has_sensitive_key,
    mask_value,
    may_hold_secret,
    may_need_mask,
)
from llmspell.runtime.runs.records import (
    RECORDING_VERSION,
    STATE_READS_VERSION,
    RunEnded,
    RunStarted,
    end_status,
    stored_form,
)
from llmspell.runtime.runs.scope import (
    STEP_BATCH,
    ActiveRun,
    ReplaySource,
    StepFrame,
    close_open_steps,
    current_frame,
    current_run,
    error_dict,
    kept_error,
)

__all__ = ["STEP_BATCH", "begin_run", "end_run", "flush_steps", "open_run", "open_run_sync"]

logger = get_logger("llmspell.runs")

_LEVELS = ("off", "decisions", "full")



_RECORDS = msgspec.json.Encoder(enc_hook=repr)


def _publish(system: Any, run: ActiveRun, event_type: str,
             make: Callable[[Callable[[Any], Any] | None], Any],
             sensitive: Callable[[], bool], *, quiet_if_too_large: bool = False) -> bool:
    """Publish the record ``make(keep)`` builds. A record not kept is logged and dropped,
    except one too large for the store, or holding a value nested too deep to encode,
    under ``quiet_if_too_large``: then the answer is False and the caller publishes a
    smaller one (True otherwise).
    It is built and encoded (in C) once without the content filter; under ``masked`` the
    encoded text is searched once (RE2) for secret-shaped strings and sensitive key
    fragments (:func:`~llmspell.runtime.content.may_need_mask`: a record with neither, the
    common one, is kept as it is without walking its values); on a hit it is searched for
    secret-shaped strings alone and ``sensitive()`` says whether what the record holds from
    outside the runtime has a sensitive key; only a record that may hold a secret is built
    again masked."""
    bus = system.bus
    if system.store is None and not bus.has_subscribers(event_type):
        return True
    try:
        content = run.content
        raw = _encode(make(None if content is mask_value else content))
        if content is mask_value and may_need_mask(raw) \
                and (may_hold_secret(raw) or sensitive()):
            raw = _encode(make(_memoised(mask_value)))
        if getattr(system.store, "accepts_encoded_data", False) and \
                not bus.has_subscribers(event_type):
            # Only the store sees it: the encoded text goes in as it is.
            bus.publish(_encoded_event(event_type, raw, run.run_id))
        else:
            # Decoded by msgspec: plain JSON data the event need not check again.
            bus.publish(event_type, PlainJson(msgspec.json.decode(raw)))
    except (EventTooLargeError, NotJsonSafeError, RecursionError) as exc:
        # Too large, or a value nested too deep to encode (a model's tool-call arguments):
        # the caller publishes a smaller record, its values withheld, under the flag.
        if quiet_if_too_large:
            return False
        logger.warning("run record %s not kept: %s", event_type, exc)
    except (EventError, InvalidValueError, TypeError, ValueError,
            msgspec.MsgspecError) as exc:
        logger.warning("run record %s not kept: %s", event_type, exc)
    return True


def _encode(record: Any) -> bytes:
    """``record`` as JSON text. Text that reached Python from bytes that are not UTF-8 (a
    script's arguments, a file name: lone surrogates) is kept with U+FFFD in their place,
    rather than losing the record."""
    try:
        return _RECORDS.encode(record)
    except UnicodeEncodeError:
        return _RECORDS.encode(stored_form(record))


def _encoded_event(event_type: str, raw: bytes, run_id: str) -> UniversalEvent:
    """An event whose data is the JSON text ``raw`` (``msgspec.Raw``), for a store that
    writes such data as it is. Set after construction: the event's own check is for data
    from callers, and this text is the runtime's own encoding."""
    event = UniversalEvent(event_type=event_type, metadata=EventMetadata(run_id=run_id))
    msgspec.structs.force_setattr(event, "data", msgspec.Raw(raw))
    return event


def _memoised(keep: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``keep`` applied once per distinct object (a step's output is often its last
    attempt's, and an agent's output holds its model's)."""
    seen: dict[int, tuple[Any, Any]] = {}

    def once(value: Any) -> Any:
        if value is None or isinstance(value, bool | int | float):
            return value
        hit = seen.get(id(value))
        if hit is None:
            hit = seen[id(value)] = (value, keep(value))  # value kept alive: ids stay unique
        return hit[1]
    return once


def flush_steps(system: Any, run: ActiveRun) -> None:
    """Publish the run's finished steps not yet published, as one ``run.steps`` event."""
    pending = run.pending
    if not pending:
        return
    run.pending = []
    if run.level == "off" and run.replay is None:
        return
    if _publish(system, run, "run.steps",
                lambda keep: {"steps": [frame.record(keep) for frame in pending]},
                lambda: any(frame.holds_sensitive_key() for frame in pending),
                quiet_if_too_large=True):
        return
    # The batch was too large for the store: one step's values can be (a huge tool
    # result), or nested too deep to encode (a model's tool-call arguments). Each step
    # goes out on its own, and one refused even so keeps its digests and decisions
    # without its values, rather than losing the whole batch.
    for frame in pending:
        if len(pending) > 1 and _publish(
                system, run, "run.steps", _one_step(frame, results=True),
                frame.holds_sensitive_key, quiet_if_too_large=True):
            continue
        logger.warning("run %s: the values of %s are too large for the event store (or "
                       "nested too deep to encode); its record keeps digests and decisions "
                       "only (a replay cannot serve it)", run.run_id, frame.label())
        _publish(system, run, "run.steps", _one_step(frame, results=False), lambda: False)


def _one_step(frame: StepFrame, *, results: bool
              ) -> Callable[[Callable[[Any], Any] | None], dict[str, Any]]:
    """What builds a ``run.steps`` record of ``frame`` alone (see :meth:`StepFrame.record`)."""
    def make(keep: Callable[[Any], Any] | None) -> dict[str, Any]:
        return {"steps": [frame.record(keep, results=results)]}
    return make


def _begin(system: Any, kind: str, name: str, input: Any, *, level: str | None,
           target: dict[str, Any] | None, replay: ReplaySource | None,
           replay_of: str | None, mode: str | None, top_level: bool = False) -> ActiveRun:
    if not isinstance(kind, str) or not kind or not isinstance(name, str) or not name:
        raise InvalidValueError("a run needs a kind and a name (non-empty strings)",
                                hint="system.runs.start(kind='agent', name='helper')")
    parent = None if top_level else current_run()
    chosen = level if level is not None else (
        parent.level if parent is not None else system.config.record)
    if chosen not in _LEVELS:
        raise InvalidValueError(f"unknown record level {chosen!r}",
                                hint=f"use one of: {', '.join(_LEVELS)}")
    if replay is None and parent is not None:
        replay = parent.replay
    if chosen != "off" and replay is None and parent is None and system.store is None \
            and not system.bus.has_subscribers("run.steps"):
        chosen = "off"  # nowhere to keep a recording: its steps would be built for nobody
    parent_frame = current_frame() if parent is not None else None
    safe_input = _safe_output(input)
    content = _content_filter(system.config.record_content)
    run = ActiveRun(kind=kind, name=name, input=safe_input, level=chosen, parent=parent,
                    parent_frame=parent_frame, replay=replay,
                    on_batch=lambda full: flush_steps(system, full), content=content)
    run.keeps_results = system.config.record_content != "none"
    if parent_frame is not None:
        parent_frame.add_child_run(run.run_id)
        if replay is not None:
            replay.child_run(parent_frame, run)
    me = this_process()
    if replay is not None:
        mark_replay(run.run_id, replay)  # for layers below the runtime (built-in hooks)
    if run.recording:
        mark_recording(run.run_id, run)  # its state reads are recorded (state store)
    run.enter()

    def started(keep: Callable[[Any], Any] | None, *, values: bool = True) -> RunStarted:
        return RunStarted(
            run_id=run.run_id, kind=kind, name=name, level=chosen,
            root_run_id=run.root_run_id, parent_run_id=run.parent_run_id,
            parent_step=run.root.key or None,
            input=None if not values else safe_input if keep is None else keep(safe_input),
            target=target if keep is None else keep(target), host=me.host, pid=me.pid,
            process_started=me.started, replay_of=replay_of, mode=mode,
            state_reads=STATE_READS_VERSION if run.recording else 0,
            version=RECORDING_VERSION)

    if not _publish(system, run, "run.started", started,
                    lambda: has_sensitive_key(safe_input) or has_sensitive_key(target),
                    quiet_if_too_large=True):
        # An input too large for the store: the run is still listed, without its input.
        logger.warning("run %s: its input is too large for the event store and is not "
                       "recorded", run.run_id)
        _publish(system, run, "run.started", lambda keep: started(keep, values=False),
                 lambda: has_sensitive_key(target))
    return run


def _end(system: Any, run: ActiveRun, error: BaseException | None) -> None:
    root = run.root
    try:
        run.closed = True
        close_open_steps(run)
        if error is None:
            root.output = _safe_output(run.output)
        else:
            root.error = error_dict(error)
        if run.replay is not None:
            run.replay.step_finished(root)
        root.ended = time.perf_counter()
        run.pending.append(root)
        flush_steps(system, run)
        # The root step's perf_counter span, not wall time (which jumps).
        duration_ms = (root.ended - root.t0) * 1000

        def ended(keep: Callable[[Any], Any] | None, *, values: bool = True) -> RunEnded:
            return RunEnded(
                run_id=run.run_id,
                status=end_status(root.error) if error is not None else "completed",
                duration_ms=duration_ms,
                output=None if not values else root.output if keep is None
                else keep(root.output),
                error=kept_error(root.error, keep, run.keeps_results),
                steps=run.step_count, model_calls=run.model_calls,
                tool_calls=run.tool_calls, decisions=run.decisions,
                tokens_in=run.tokens_in, tokens_out=run.tokens_out, cost_usd=run.cost_usd,
                version=RECORDING_VERSION)

        event_type = "run.failed" if error is not None else "run.completed"
        if not _publish(system, run, event_type, ended,
                        lambda: has_sensitive_key(root.output) or has_sensitive_key(root.error),
                        quiet_if_too_large=True):
            # An output too large for the store: the run still ends (else it would be
            # listed as running for ever); the root step's record has the output's digest.
            logger.warning("run %s: its output is too large for the event store and is not "
                           "recorded", run.run_id)
            _publish(system, run, event_type, lambda keep: ended(keep, values=False),
                     lambda: has_sensitive_key(root.error))
    finally:
        run.conversations = None  # the messages it kept for digests: not past the run
        if run.replay is not None:
            unmark_replay(run.run_id)
        unmark_recording(run.run_id)
        run.leave()


def _withheld(value: Any) -> Any:
    return None


def _content_filter(mode: str) -> Callable[[Any], Any] | None:
    """What the ``record_content`` setting keeps of recorded values: everything
    (``full``), the values with secrets masked (``masked``), or nothing (``none``: the
    recording keeps decisions and digests only, so its tool and model calls cannot be
    served by a replay)."""
    if mode == "full":
        return None
    return mask_value if mode == "masked" else _withheld


def _safe_output(value: Any) -> Any:
    try:
        return to_json_safe(value, "run output")
    except NotJsonSafeError:
        pass
    try:
        return repr(value)
    except Exception:  # a repr that raises: recording never fails the operation
        return f"<{type(value).__name__} object>"


def begin_run(system: Any, kind: str, name: str, input: Any = None, *,
              level: str | None = None, target: dict[str, Any] | None = None) -> ActiveRun:
    """Open a run and make it current in the calling context, for code that cannot wrap
    the run's body in a ``with`` block (a framework's start and end callbacks); close it
    with :func:`end_run` in the same context."""
    return _begin(system, kind, name, input, level=level, target=target, replay=None,
                  replay_of=None, mode=None)


def end_run(system: Any, run: ActiveRun, error: BaseException | None = None) -> None:
    """Close a run opened by :func:`begin_run` (``error``: what it failed with)."""
    _end(system, run, error)


@asynccontextmanager
async def open_run(system: Any, kind: str, name: str, input: Any = None, *,
                   level: str | None = None, target: dict[str, Any] | None = None,
                   replay: ReplaySource | None = None, replay_of: str | None = None,
                   mode: str | None = None, top_level: bool = False
                   ) -> AsyncIterator[ActiveRun]:
    """Open a run for the body (see :meth:`RunManager.start`); ``top_level`` opens it
    outside any current run (a replay)."""
    run = _begin(system, kind, name, input, level=level, target=target, replay=replay,
                 replay_of=replay_of, mode=mode, top_level=top_level)
    try:
        yield run
    except BaseException as exc:
        _end(system, run, exc)
        raise
    _end(system, run, None)


@contextmanager
def open_run_sync(system: Any, kind: str, name: str, input: Any = None, *,
                  level: str | None = None, target: dict[str, Any] | None = None
                  ) -> Iterator[ActiveRun]:
    """:func:`open_run` for sync code."""
    run = _begin(system, kind, name, input, level=level, target=target, replay=None,
                 replay_of=None, mode=None)
    try:
        yield run
    except BaseException as exc:
        _end(system, run, exc)
        raise
    _end(system, run, None)
