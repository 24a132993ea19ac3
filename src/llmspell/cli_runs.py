"""``llmspell runs``: list, show, replay and compare the runs in the configured event store.

    llmspell runs list [--limit N] [--kind K] [--name N] [--status S] [--all] [--json]
    llmspell runs show RUN_ID [--json]
    llmspell runs replay RUN_ID [--mode exact|what-if|simulate] [--after live|simulate]
        [--allow-side-effects] [--fail-on-divergence] [--json]
    llmspell runs diff A B [--json]

Each command takes ``--config FILE``; the store is the configured one (``data_dir/events.db``
by default, ``LLMSPELL_DATA_DIR`` and the other ``LLMSPELL_*`` variables apply). ``list``,
``show`` and ``diff`` only read: they open the store read-only (never written, upgraded or
locked for writing; a store of an older schema version is refused with a hint saying how to
upgrade it). ``replay`` records the replay as a new run in the same store, so it opens it
for writing, as ``llmspell run`` does (a store of an older version is upgraded). Only script
runs can be replayed from the command line: an agent or workflow run needs the Python code
that defined it (``system.runs.replay(run_id, operation=...)``). See ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import msgspec

from llmspell.cli_args import CELL_LIMIT, LINE_LIMIT, positive_int, shown, utf8_text
from llmspell.core.errors import ReplayError, StoreError
from llmspell.core.text import terminal_safe_json
from llmspell.events.event import UniversalEvent
from llmspell.events.store.sqlite import SQLiteStoreReader
from llmspell.runtime import System
from llmspell.runtime.config import SystemConfig, load_config
from llmspell.runtime.runs import ReplayResult, RunSummary
from llmspell.runtime.runs.records import RUN_STATUSES, end_status
from llmspell.runtime.state.memory import MemoryStateBackend
from llmspell.runtime.state.quota import QuotaStateBackend
from llmspell.runtime.state.sqlite import SQLiteStateBackend
from llmspell.runtime.tools.library import default_tools
from llmspell.scripting.replay_ops import (
    decisions_of,
    diff_view,
    recording_view,
    result_view,
    summary_view,
)

__all__ = ["add_runs_parser", "run_runs"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_ERROR = 2

REPLAY_TIME_BUDGET = 30.0
"""Seconds of script time a replayed script (and each of its hook calls) may use when the
configuration sets none: the same default as ``llmspell run``."""

_STATUSES = RUN_STATUSES


def add_runs_parser(commands: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """Add the ``runs`` command and its subcommands to ``commands`` (the top-level
    subparsers action)."""
    runs = commands.add_parser(
        "runs", help="list, show, replay and compare recorded runs", allow_abbrev=False,
        description="Read the runs recorded in the configured event store (see docs/runs.md).")
    sub = runs.add_subparsers(dest="runs_command", metavar="RUNS_COMMAND",
                              parser_class=parser_class)
    sub.required = True
    common = parser_class(add_help=False, allow_abbrev=False)
    common.add_argument("--config", type=Path, metavar="FILE",
                        help="a TOML configuration file (LLMSPELL_* variables override it)")
    common.add_argument("--json", action="store_true", help="print JSON instead of text")

    listing = sub.add_parser("list", parents=[common], allow_abbrev=False,
                             help="the newest runs, newest first",
                             description="List the newest runs, newest first.")
    listing.add_argument("--limit", type=positive_int, default=20, metavar="N",
                         help="how many runs (default 20)")
    listing.add_argument("--kind", metavar="K", type=utf8_text,
                         help="only runs of this kind (agent, workflow, script, ...)")
    listing.add_argument("--name", metavar="N", type=utf8_text,
                         help="only runs with this name")
    listing.add_argument("--status", choices=_STATUSES,
                         help="only runs with this status (cancelled: its task was "
                              "cancelled, by its caller, a timeout or Ctrl-C; interrupted: "
                              "no end, and its process on this host is gone)")
    listing.add_argument("--all", action="store_true",
                         help="include runs started inside other runs (child runs)")

    show = sub.add_parser("show", parents=[common], allow_abbrev=False,
                          help="one run's summary and steps",
                          description="Show one run's summary and its steps.")
    show.add_argument("run_id", metavar="RUN_ID", type=utf8_text)

    replay = sub.add_parser(
        "replay", parents=[common], allow_abbrev=False, help="replay a script run",
        description="Run a recorded script run again, serving its tool and model calls "
                    "from the recording, and report where it diverges. Exit code 0 when "
                    "it completed, 1 when it failed or was cancelled (or diverged, with "
                    "--fail-on-divergence), 2 on errors.")
    replay.add_argument("run_id", metavar="RUN_ID", type=utf8_text)
    replay.add_argument("--mode", choices=("exact", "what-if", "simulate"), default="exact",
                        help="exact (default), what-if or simulate")
    replay.add_argument("--after", choices=("live", "simulate"),
                        help="what a call whose input left the recording does: run live "
                             "(what-if's default) or keep being served (the others')")
    replay.add_argument("--allow-side-effects", action="store_true",
                        help="let tools with side effects run, and give the script its "
                             "recorded write, exec and network capabilities")
    replay.add_argument("--fail-on-divergence", action="store_true",
                        help="exit with code 1 when the replay diverged")

    diff = sub.add_parser("diff", parents=[common], allow_abbrev=False,
                          help="compare two runs step by step",
                          description="Compare runs A and B: totals side by side and each "
                                      "step that differs.")
    diff.add_argument("a", metavar="A", type=utf8_text)
    diff.add_argument("b", metavar="B", type=utf8_text)


def run_runs(options: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run a ``runs`` subcommand; return the exit code. llmspell errors are left to the
    caller (reported with exit code 2)."""
    command: Callable[[argparse.Namespace, TextIO, TextIO], Any] = {
        "list": _list, "show": _show, "replay": _replay, "diff": _diff}[options.runs_command]
    code: int = asyncio.run(command(options, out, err))
    return code


# -- reading ------------------------------------------------------------------------------
def _recorded(config: SystemConfig) -> SystemConfig:
    """``config`` when its SQLite event store exists; a :class:`StoreError` when it does not
    (a System would create the data directory and an empty store, and every command would
    then answer as if nothing had been recorded, into a path that is likely mistyped)."""
    if config.store == "sqlite":
        path = config.resolved_data_dir / "events.db"
        if not path.is_file():
            raise StoreError(
                f"no event store at {path}: nothing has been recorded there",
                hint="point LLMSPELL_DATA_DIR (or data_dir in --config FILE) at the data "
                     "directory llmspell recorded into")
    return config


def _reader(options: argparse.Namespace) -> System:
    """A System to read the store with: no state database, nothing published, and the
    SQLite store opened read-only (never written, upgraded or locked for writing; a store
    of an older schema version is refused with a hint saying how to upgrade it)."""
    config = _recorded(load_config(options.config))
    store = SQLiteStoreReader(config.resolved_data_dir / "events.db") \
        if config.store == "sqlite" else None
    return System(config, store=store, state_backend=MemoryStateBackend())


def _close(system: System) -> None:
    if system.store is not None:
        system.store.close()


def _json(value: Any) -> str:
    return terminal_safe_json(msgspec.json.encode(value, enc_hook=repr).decode())


def _short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else _json(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _when(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


def _duration(ms: float | None) -> str:
    if ms is None or not math.isfinite(ms):
        return "-"
    if ms < 1000:
        return f"{ms:.1f} ms"
    return f"{ms / 1000:.2f} s"


def _cost(usd: float) -> str:
    return f"${usd:.4f}"


def _emit(lines: Sequence[str], out: TextIO) -> None:
    """Print ``lines`` for a person: each :func:`~llmspell.cli_args.shown` (what came from
    the store, a name, an error, a hook's reason, a model's output, cannot act on the
    terminal) and at most :data:`~llmspell.cli_args.LINE_LIMIT` characters."""
    print("\n".join(shown(line, LINE_LIMIT) for line in lines), file=out)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Aligned columns; each cell :func:`~llmspell.cli_args.shown`, all but the last at
    most :data:`~llmspell.cli_args.CELL_LIMIT` characters (one long name would widen every
    row)."""
    last = len(headers) - 1
    rows = [[shown(cell, None if i == last else CELL_LIMIT) for i, cell in enumerate(row)]
            for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in rows))
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.extend("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                 for row in rows)
    return lines


def _summary_row(s: RunSummary) -> list[str]:
    return [s.run_id, s.kind, s.name, s.status, _when(s.started), _duration(s.duration_ms),
            str(s.steps), f"{s.tool_calls}/{s.model_calls}", f"{s.tokens_in}/{s.tokens_out}",
            _cost(s.cost_usd), f"{s.host}:{s.pid}", s.replay_of or "-"]


_LIST_HEADERS = ("RUN ID", "KIND", "NAME", "STATUS", "STARTED", "DURATION", "STEPS",
                 "TOOLS/MODELS", "TOKENS IN/OUT", "COST", "HOST:PID", "REPLAY OF")


async def _list(options: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    system = _reader(options)
    try:
        runs = system.runs.list(limit=options.limit, kind=options.kind, name=options.name,
                                status=options.status, include_children=options.all)
    finally:
        _close(system)
    if options.json:
        print(_json([summary_view(s) for s in runs]), file=out)
    elif not runs:
        print("no runs", file=out)
    else:
        _emit(_table(_LIST_HEADERS, [_summary_row(s) for s in runs]), out)
    return EXIT_OK


def _summary_lines(s: RunSummary) -> list[str]:
    lines = [f"run        {s.run_id}", f"kind       {s.kind}", f"name       {s.name}",
             f"status     {s.status}", f"started    {_when(s.started)}",
             f"duration   {_duration(s.duration_ms)}", f"process    {s.host}:{s.pid}",
             f"recorded   {s.level}",
             f"steps      {s.steps} ({s.tool_calls} tool calls, {s.model_calls} model "
             f"calls, {s.decisions} hook decisions)",
             f"tokens     {s.tokens_in} in, {s.tokens_out} out; cost {_cost(s.cost_usd)}"]
    if s.parent_run_id:
        lines.append(f"parent     {s.parent_run_id}")
    if s.replay_of:
        lines.append(f"replay of  {s.replay_of} ({s.mode})")
    if s.status == "cancelled":
        message = (s.error or {}).get("message")
        lines.append(f"cancelled  {message or 'its task was cancelled'}")
    elif s.error:
        lines.append(f"error      {s.error.get('type')}: {s.error.get('message')}")
    return lines


async def _show(options: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    system = _reader(options)
    try:
        summary = system.runs.get(options.run_id)
        recording = system.runs.recording(options.run_id)
    finally:
        _close(system)
    if options.json:
        print(_json(recording_view(summary, recording)), file=out)
        return EXIT_OK
    lines = _summary_lines(summary)
    steps = [step for step in recording.ordered if step.key]
    if not steps:
        lines += ["", "no steps"]
    else:
        rows = []
        for step in steps:
            how = f"{step.served}, " if step.served else ""
            error = f"{step.error.get('type')}: {step.error.get('message')}" \
                if step.error else ""
            rows.append([str(step.index), step.key, step.kind, step.name,
                         how + _duration(step.duration_ms),
                         "; ".join(decisions_of(step)), _short(error)])
        lines += ["", *_table(("STEP", "KEY", "KIND", "NAME", "SERVED/DURATION",
                               "DECISIONS", "ERROR"), rows)]
    _emit(lines, out)
    return EXIT_OK


async def _diff(options: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    system = _reader(options)
    try:
        diff = system.runs.diff(options.a, options.b)
    finally:
        _close(system)
    if options.json:
        print(_json(diff_view(diff)), file=out)
        return EXIT_OK
    rows = [["run", diff.a, diff.b]]
    for field, (a, b) in diff.totals.items():
        if field == "duration_ms":
            rows.append(["duration", _duration(a), _duration(b)])
        elif field == "cost_usd":
            rows.append(["cost", _cost(a or 0.0), _cost(b or 0.0)])
        else:
            rows.append([field, "-" if a is None else str(a), "-" if b is None else str(b)])
    lines = _table(("", "A", "B"), rows)
    if diff.same:
        lines += ["", "no step differs"]
    else:
        lines += ["", f"{len(diff.steps)} step(s) differ:"]
        for step in diff.steps:
            index = f"{'-' if step.index_a is None else step.index_a}/" \
                    f"{'-' if step.index_b is None else step.index_b}"
            head = f"step {index} {step.kind} {step.name} ({step.key})" if step.key \
                else f"the run ({step.kind} {step.name})"
            if step.only_in is not None:
                lines.append(f"{head}: only in {step.only_in.upper()}")
                continue
            lines.append(head)
            lines.extend(f"  {field}: {_short(a)} -> {_short(b)}"
                         for field, (a, b) in step.changes.items())
    _emit(lines, out)
    return EXIT_OK


# -- replay -------------------------------------------------------------------------------
def _replay_config(config: SystemConfig) -> SystemConfig:
    """The configuration with the command line's script time budget when it sets none."""
    if config.scripting.time_budget is not None:
        return config
    scripting = msgspec.structs.replace(config.scripting, time_budget=REPLAY_TIME_BUDGET)
    return msgspec.structs.replace(config, scripting=scripting)


def _state(config: SystemConfig) -> QuotaStateBackend:
    """State as ``llmspell run`` gives it: in memory, unless the configuration persists
    it; bounded by ``scripting.max_state_bytes``."""
    settings = config.scripting
    if settings.persist_state and config.store == "sqlite":
        folder = config.resolved_data_dir
        folder.mkdir(parents=True, exist_ok=True)
        return QuotaStateBackend(SQLiteStateBackend(folder / "state.db"),
                                 settings.max_state_bytes)
    return QuotaStateBackend(MemoryStateBackend(), settings.max_state_bytes)


def _register_tools(system: System, capabilities: dict[str, Any]) -> None:
    """The standard tools, as ``llmspell run`` registered them for the recorded flags (a
    replay serves their results from the recording; side effects never run unless
    ``--allow-side-effects``)."""
    everything = bool(capabilities.get("allow_all"))
    system.tools.register_all(default_tools(
        network=bool(capabilities.get("allow_net")) or everything,
        read_roots=("/",) if everything else tuple(capabilities.get("allow_read") or ()),
        process_users=bool(capabilities.get("allow_exec")) or everything))


class _Progress:
    """Prints each step of the replay (and of the runs it starts) to ``err`` as it ends."""

    def __init__(self, replay_of: str, err: TextIO) -> None:
        self.replay_of = replay_of
        self.err = err
        self.runs: set[str] = set()

    def __call__(self, event: UniversalEvent) -> None:
        data = event.data if isinstance(event.data, dict) else {}
        if event.event_type == "run.started":
            parent = data.get("parent_run_id")
            if (parent is None and data.get("replay_of") == self.replay_of) or \
                    parent in self.runs:
                self.runs.add(str(data.get("run_id")))
            return
        if event.run_id not in self.runs:
            return
        steps = data.get("steps") if event.event_type == "run.steps" else None
        for step in steps if isinstance(steps, list) else []:
            if isinstance(step, dict) and step.get("key"):
                self._step(step)

    def _step(self, data: dict[str, Any]) -> None:
        key = str(data["key"])
        kind, name = data.get("kind"), data.get("name")
        error = data.get("error")
        if key.rsplit("|", 1)[-1].startswith("run:"):
            _emit([f"run {kind} {name}: "
                   f"{end_status(error if isinstance(error, dict) else None)}"], self.err)
            return
        served = data.get("served")
        how = {"recording": "served from recording", "live": "ran live",
               "edited": "served the edited output",
               "simulated": "served from recording (simulated)"}.get(
                   str(served), f"done in {_duration(data.get('duration_ms'))}")
        if error:
            how += f" (failed: {error.get('type')}: {error.get('message')})"
        _emit([f"step {data.get('index')} {kind} {name}: {how}"], self.err)


async def _replay(options: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = _replay_config(_recorded(load_config(options.config)))
    state = _state(config)
    system = System(config, state_backend=state)
    started = False
    try:
        summary = system.runs.get(options.run_id)
        if summary.kind != "script":
            raise ReplayError(
                f"run {options.run_id!r} is of kind {summary.kind!r} ({summary.name!r}); "
                "the command line replays script runs only",
                hint="an agent or workflow defined in Python code replays from Python: "
                     "await system.runs.replay(run_id, operation=...)")
        recording = system.runs.recording(options.run_id)
        granted = (recording.started.target or {}).get("capabilities")
        _register_tools(system, granted if isinstance(granted, dict) else {})
        started = True
        await system.start()
        progress = _Progress(options.run_id, err)
        handle = system.bus.subscribe("run.*", progress, mode="inline", name="runs-replay")
        try:
            result = await system.runs.replay(
                options.run_id, mode=options.mode, after=options.after,
                allow_side_effects=options.allow_side_effects)
        finally:
            system.bus.unsubscribe(handle)
    finally:
        try:
            if started:
                await system.shutdown()
            else:  # nothing was replayed: leave no startup or shutdown events behind
                _close(system)
        finally:
            state.close()
    if options.json:
        print(_json(result_view(result)), file=out)
    else:
        _emit(_result_lines(result), out)
    if result.status in ("failed", "cancelled") or (
            result.diverged and options.fail_on_divergence):
        return EXIT_FAILED
    return EXIT_OK


def _result_lines(result: ReplayResult) -> list[str]:
    lines = [f"replay {result.run_id} of {result.replay_of} ({result.mode}): {result.status}"]
    if result.error:
        lines.append(f"error: {result.error.get('type')}: {result.error.get('message')}")
    lines.append(f"output: {_short(result.output, 400)}")
    served = ", ".join(f"{count} {how}" for how, count in sorted(result.served.items()))
    lines.append(f"served: {served or 'nothing'}")
    if result.side_effects_skipped:
        lines.append("side effects not repeated: " + ", ".join(result.side_effects_skipped))
    if result.divergences:
        lines.append(f"divergences ({len(result.divergences)}):")
        lines.extend(f"  {d.describe()}" for d in result.divergences)
    else:
        lines.append("no divergence")
    lines.extend(f"note: {note}" for note in result.notes)
    return lines
