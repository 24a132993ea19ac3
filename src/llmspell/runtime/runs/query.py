"""Reading runs back from the event store: the list of runs, one run's summary, and one
run's whole recording (its steps, and the steps of the runs it started).

A run is its ``run.started`` event, its ``run.steps`` events (batches of step records) and
its ``run.completed`` / ``run.failed`` event, all carrying the run's id (an indexed store
column). A run whose task was cancelled ends with a ``run.failed`` of status ``cancelled``;
one recorded before that status existed (``failed`` with a ``CancelledError``) is read as
``cancelled`` too (:func:`~llmspell.runtime.runs.records.decode_ended`). Listing reads
only the start records, newest first in store order (which is correct when several
processes write one SQLite file), and one end record per listed run.

A run with no end record is ``running`` while the process that started it may still be
alive, and ``interrupted`` once it is known dead: the start record names the process's host,
pid and start time, so on the same host a pid that no longer exists (or is a zombie, or was
reused by a process started later) means the run will never end. A run started on another
host stays ``running``: its process cannot be checked from here.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

import msgspec

from llmspell.core.errors import RecordingError, RunError, RunNotFoundError
from llmspell.core.process import this_process
from llmspell.events.event import UniversalEvent
from llmspell.events.store.base import EventQuery, EventStore
from llmspell.runtime.runs.records import (
    RUN_STATUSES,
    RunEnded,
    RunStarted,
    StepRecord,
    decode_ended,
    decode_started,
    decode_step,
)

__all__ = ["Recording", "RunSummary", "find_run", "list_runs", "load_recording",
           "process_gone"]

_END_TYPES = ("run.completed", "run.failed")


class RunSummary(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One run as listed: who ran what, where, how it ended and what it cost.

    ``status`` is ``completed``, ``failed``, ``cancelled`` (its task was cancelled: by its
    caller, a timeout around it, Ctrl-C), ``running`` (no end record, and its process may
    still be running it: on another host, that cannot be checked) or ``interrupted`` (no end
    record, and its process on this host is gone: killed or crashed, so the run will never
    end). ``host``/``pid`` name the process that ran it.
    """

    run_id: str
    kind: str
    name: str
    status: str
    started: float
    level: str
    host: str
    pid: int
    duration_ms: float | None = None
    parent_run_id: str | None = None
    replay_of: str | None = None
    mode: str | None = None
    steps: int = 0
    model_calls: int = 0
    tool_calls: int = 0
    decisions: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    error: dict[str, str] | None = None


class Recording(msgspec.Struct, kw_only=True):
    """A run's recording: its start and end records and every step of it and of the runs
    it started, keyed by step key (the run's own root step under its root key)."""

    started: RunStarted
    ended: RunEnded | None
    steps: dict[str, StepRecord]
    child_runs: dict[str, RunStarted]

    @property
    def ordered(self) -> list[StepRecord]:
        """The steps in the order they started (child runs' steps inside their parent's)."""
        return sorted(self.steps.values(), key=lambda s: (s.started, s.index))


def _store(system: Any) -> EventStore:
    store: EventStore | None = system.store
    if store is None:
        raise RunError("this System keeps no events, so it has no runs to read",
                       hint="use store='sqlite' (the default) or store='memory'")
    with contextlib.suppress(Exception):  # what is not flushed yet is read next time
        store.flush(5.0)
    return store


_START_SLACK = 2.0
"""Seconds a process's start time read from the OS may be later than the start time it
recorded (the OS's boot time is whole seconds and moves with clock adjustments): a process
on the pid that started later than this is a new one, the pid reused."""


def _os_start_time(pid: int) -> tuple[float, bool] | None:
    """When process ``pid`` started (wall seconds) and whether it is a zombie, from Linux's
    ``/proc``; None where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        with open("/proc/stat", "rb") as boot:
            btime = next(int(line.split()[1]) for line in boot
                         if line.startswith(b"btime "))
        ticks = os.sysconf("SC_CLK_TCK")
        return btime + int(fields[19]) / ticks, fields[0] == b"Z"
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def process_gone(host: str, pid: int, started: float) -> bool:
    """Whether the process ``host``/``pid``/``started`` (a run's writer, as its start record
    names it) is known to be gone: on this host, its pid no longer exists, is a zombie, or
    now belongs to a process started later. False when that cannot be known (another host,
    no pid recorded, Windows)."""
    me = this_process()
    if not host or host != me.host or pid <= 0 or sys.platform == "win32":
        return False
    if pid == me.pid:
        return bool(started) and started != me.started  # a former process on this pid
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the pid exists
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists, run by another user
    except OSError:
        return False
    found = _os_start_time(pid)
    if found is None:
        return False
    begun, zombie = found
    return zombie or (started > 0 and begun > started + _START_SLACK)


def _open_status(started: RunStarted) -> str:
    """The status of a run with no end record (see :class:`RunSummary`)."""
    return ("interrupted" if process_gone(started.host, started.pid, started.process_started)
            else "running")


def _summary(started: RunStarted, ended: RunEnded | None, when: float) -> RunSummary:
    summary = RunSummary(
        run_id=started.run_id, kind=started.kind, name=started.name,
        status=ended.status if ended is not None else _open_status(started), started=when,
        level=started.level, host=started.host, pid=started.pid,
        parent_run_id=started.parent_run_id, replay_of=started.replay_of, mode=started.mode)
    if ended is not None:
        summary.duration_ms = ended.duration_ms
        summary.error = ended.error
        for field in ("steps", "model_calls", "tool_calls", "decisions", "tokens_in",
                      "tokens_out", "cost_usd"):
            setattr(summary, field, getattr(ended, field))
    return summary


def _end_of(store: EventStore, run_id: str) -> RunEnded | None:
    for event_type in _END_TYPES:
        found = store.query(EventQuery(pattern=event_type, run_id=run_id, limit=1,
                                       descending=True))
        if found:
            return decode_ended(found[0].data, run_id)
    return None


def list_runs(system: Any, *, limit: int = 50, kind: str | None = None,
              name: str | None = None, status: str | None = None,
              include_children: bool = False) -> list[RunSummary]:
    """The newest ``limit`` runs, newest first (see :meth:`RunManager.list`)."""
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise RunError(f"limit must be a whole number >= 1, got {limit!r}", hint="limit=50")
    if status is not None and status not in RUN_STATUSES:
        raise RunError(f"unknown run status {status!r}",
                       hint=f"use one of: {', '.join(RUN_STATUSES)}")
    store = _store(system)
    found: list[RunSummary] = []
    for event in store.iter_events(EventQuery(pattern="run.started", descending=True),
                                   batch_size=max(limit * 2, 64)):
        try:
            started = decode_started(event.data, str(event.run_id or "?"))
        except RecordingError:
            continue  # a damaged start record does not hide the other runs
        if not include_children and started.parent_run_id is not None:
            continue
        if (kind is not None and started.kind != kind) or (
                name is not None and started.name != name):
            continue
        try:
            ended = _end_of(store, started.run_id)
        except RecordingError:
            continue  # nor does a damaged (or newer) end record
        summary = _summary(started, ended, event.timestamp)
        if status is not None and summary.status != status:
            continue
        found.append(summary)
        if len(found) >= limit:
            break
    return found


def _start_event(store: EventStore, run_id: str) -> UniversalEvent:
    if not isinstance(run_id, str) or not run_id:
        raise RunNotFoundError(f"{run_id!r} is not a run id",
                               hint="list runs with system.runs.list() or `llmspell runs "
                                    "list`")
    found = store.query(EventQuery(pattern="run.started", run_id=run_id, limit=1))
    if not found:
        raise RunNotFoundError(f"no run {run_id!r} in the event store",
                               hint="list runs with system.runs.list() or `llmspell runs "
                                    "list`; check that the same data_dir/store is used")
    return found[0]


def find_run(system: Any, run_id: str) -> RunSummary:
    """The summary of one run; :class:`RunNotFoundError` when the store has none."""
    store = _store(system)
    event = _start_event(store, run_id)
    started = decode_started(event.data, run_id)
    return _summary(started, _end_of(store, run_id), event.timestamp)


def load_recording(system: Any, run_id: str) -> Recording:
    """The whole recording of ``run_id`` (and of the runs it started).

    Raises :class:`RunNotFoundError` for an unknown id and :class:`RecordingError` when the
    run was recorded at level ``off``, or its records are damaged or newer than this
    llmspell.
    """
    store = _store(system)
    started = decode_started(_start_event(store, run_id).data, run_id)
    if started.level == "off":
        raise RecordingError(
            f"run {run_id!r} was run with recording off: there is nothing to replay or "
            "compare", hint="set SystemConfig(record='decisions') (the default) or "
                            "LLMSPELL_RECORD=decisions and run it again")
    steps: dict[str, StepRecord] = {}
    children: dict[str, RunStarted] = {}
    _collect(store, started, steps, children)
    return Recording(started=started, ended=_end_of(store, run_id), steps=steps,
                     child_runs=children)


def _collect(store: EventStore, started: RunStarted, steps: dict[str, StepRecord],
             children: dict[str, RunStarted]) -> None:
    """Read the steps of ``started``'s run and of the runs it started, breadth first (a
    chain of child runs of any length). Each step key is recorded once in a run's tree: a
    second record under one key (an edited or merged store) is refused rather than one of
    them silently served."""
    queue = [started]
    seen = {started.run_id}
    while queue:
        run_id = queue.pop(0).run_id
        for event in store.iter_events(EventQuery(pattern="run.steps", run_id=run_id)):
            batch = event.data.get("steps") if isinstance(event.data, dict) else None
            if not isinstance(batch, list):
                raise RecordingError(
                    f"the recording of run {run_id!r} is damaged: a run.steps event holds "
                    "no list of steps", hint="the store may have been written by another "
                                             "program; record the run again")
            for data in batch:
                step = decode_step(data, run_id)
                if step.key in steps:
                    raise RecordingError(
                        f"the recording of run {started.run_id!r} is damaged: two records "
                        f"of step {step.key!r} (index {steps[step.key].index} and "
                        f"{step.index})", hint="the store may have been edited or written by "
                                               "another program; record the run again")
                steps[step.key] = step
                for child_id in step.child_runs:
                    if child_id in seen:
                        continue
                    seen.add(child_id)
                    found = store.query(EventQuery(pattern="run.started", run_id=child_id,
                                                   limit=1))
                    if not found:
                        continue  # a child whose records were lost: its steps replay live
                    child = decode_started(found[0].data, child_id)
                    children[child_id] = child
                    queue.append(child)
