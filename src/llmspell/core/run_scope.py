"""The id of the run the current task works for, readable by every layer.

The runtime opens runs (``system.runs``); the event bus stamps the current run id on every
event it builds, so events, hook records and model/tool records of one run can be found
together. The id lives in a context variable: nested calls and tasks started inside a run
see it; independent tasks do not.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from typing import Any, Protocol

__all__ = ["RECORDING_RUNS", "RUNNING_REPLAYS", "StateReads", "current_replay",
           "current_run_id", "enter_run_id", "leave_run_id", "mark_recording",
           "mark_replay", "register_state_reads", "replay_serves", "state_reads",
           "unmark_recording", "unmark_replay"]

_run_id: ContextVar[str | None] = ContextVar("llmspell_run_id", default=None)

current_run_id = _run_id.get
"""The id of the innermost run of the calling task, or None outside any run."""


def enter_run_id(run_id: str | None) -> Token[str | None]:
    """Make ``run_id`` current; pass the token to :func:`leave_run_id` to restore."""
    return _run_id.set(run_id)


def leave_run_id(token: Token[str | None]) -> None:
    """Restore the run id that was current before :func:`enter_run_id`."""
    _run_id.reset(token)


_REPLAYS: dict[str, object] = {}
"""The runs that are replays (or run inside one), by run id, each with its replay session:
what :func:`current_replay` reads. Written only while a replay runs, so outside replays the
lookup is one test of an empty dict."""

RUNNING_REPLAYS: Mapping[str, object] = _REPLAYS
"""The same dict, read-only for other modules: empty exactly when no replay runs in this
process. A hot path (the hook executor's) tests it, the cheapest test there is, before it
pays for :func:`current_replay`. (Never rebound: importers hold this very object.)"""


def mark_replay(run_id: str, replay: object) -> None:
    """Note that run ``run_id`` replays a recording (``replay``: its session); the runtime
    does, for the replay's run and every run inside it, until :func:`unmark_replay`."""
    _REPLAYS[run_id] = replay


def unmark_replay(run_id: str) -> None:
    """The run ``run_id`` has ended: it no longer counts as a replay."""
    _REPLAYS.pop(run_id, None)


def current_replay() -> object | None:
    """The replay session the calling task works for (an object to tell replays apart, and
    to key what a replay must keep to itself), or None outside replays. For layers that
    cannot import the runtime: a built-in hook keeping state of its own (a cache) keeps a
    replay's apart from live calls."""
    if not _REPLAYS:
        return None
    run_id = _run_id.get()
    return None if run_id is None else _REPLAYS.get(run_id)


def replay_serves() -> bool | None:
    """Inside a replay, in a tool or model call: True when the replay serves the call's
    result (from the recording, or an edit) instead of making the call, False when the call
    runs live (a what-if's call after its change). At the call's before point this is what
    the replay will do as things stand (a later hook at that point deciding otherwise than
    recorded can still send it live); at its after and error points, what it did. None
    outside replays, and inside one outside a tool or model call (an agent, a workflow: they
    run again). For built-in hooks that keep live state (budgets, rate limits, metrics):
    what a replay serves touches none of it."""
    if not _REPLAYS:
        return None
    replay = current_replay()
    if replay is None:
        return None
    probe = getattr(replay, "serves_current", None)
    if probe is None:
        return None
    served = probe()
    return None if served is None else bool(served)


class StateReads(Protocol):
    """Where a state read made inside a recorded run is recorded (the step the calling task
    is in), and, in a replay, served from. Implemented by the runtime's run steps; the
    state store uses it through :func:`state_reads` without importing the runs."""

    def served_read(self, op: str, scope: str, scope_id: str,
                    key: str | None) -> tuple[bool, Any]:
        """Before the read: ``(True, stored result)`` when a replay serves it from the
        recording, ``(False, None)`` when it is read from the state."""
        ...

    def note_read(self, op: str, scope: str, scope_id: str, key: str | None,
                  result: Any) -> None:
        """After the read: what it returned (kept as it is; stored with the step)."""
        ...


_RECORDING: dict[str, object] = {}
"""The runs open in this process that record steps (level not ``off``, or a replay), by run
id. Written only while such a run is open, so outside runs the test of
:data:`RECORDING_RUNS` is all a state read pays."""

RECORDING_RUNS: Mapping[str, object] = _RECORDING
"""The same dict, read-only for other modules: empty exactly when no recorded run is open
in this process. (Never rebound: importers hold this very object.)"""

_state_reads: list[Callable[[], StateReads | None]] = []


def mark_recording(run_id: str, run: object) -> None:
    """Note that run ``run_id`` (``run``: the open run) records its steps, until
    :func:`unmark_recording`."""
    _RECORDING[run_id] = run


def unmark_recording(run_id: str) -> None:
    """The run ``run_id`` has ended."""
    _RECORDING.pop(run_id, None)


def register_state_reads(find: Callable[[], StateReads | None]) -> None:
    """Install ``find``: the recorder of the calling task's state reads (its step in a
    recorded run), or None. The runtime's runs install theirs when imported."""
    _state_reads[:] = [find]


def state_reads() -> StateReads | None:
    """Where the calling task's state reads are recorded (and in a replay served from), or
    None: outside recorded runs, in a run recorded at ``off``. For the state store, below
    the runs; outside runs this is one test of an empty dict."""
    if not _RECORDING or not _state_reads:
        return None
    return _state_reads[0]()
