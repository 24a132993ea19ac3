"""``llmspell events``: query, tail, count and list for replay the events in the configured
event store.

    llmspell events query [PATTERN] [--since T] [--until T] [--run ID] [--correlation ID]
        [--limit N] [--oldest-first] [--json]
    llmspell events tail [PATTERN] [--limit N] [--run ID] [--follow] [--interval S] [--json]
    llmspell events stats [--since T] [--json]
    llmspell events replay [PATTERN] [--since T] [--run ID] [--json]

Each command takes ``--config FILE``; the store is the configured one (``data_dir/events.db``;
``LLMSPELL_DATA_DIR`` and the other ``LLMSPELL_*`` variables apply). The commands only read:
no System is started, no event is published, and the file is opened read-only
(:class:`~llmspell.events.store.sqlite.SQLiteStoreReader`: it is never written, upgraded or
locked for writing, and no file is created beside it, so a store another program is writing,
or one on a read-only mount, can be inspected; a store of an older schema version is refused
with a hint saying how to upgrade it). On a terminal the output is a table (the
event type coloured unless ``NO_COLOR`` is set); piped, or with ``--json``, it is JSON: one
event per line in its JSON form (``stats``: one object). ``T`` is an ISO 8601 time (local
time when it names no zone) or a relative one: ``30s``, ``10m``, ``2h``, ``1d`` ago. See
``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
import re
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

import msgspec

from llmspell.cli_args import CELL_LIMIT, positive_int, printable, shown, utf8_text
from llmspell.core.errors import InvalidValueError, StoreError
from llmspell.core.text import terminal_safe_json
from llmspell.events.event import UniversalEvent
from llmspell.events.pattern import compile_pattern
from llmspell.events.store.base import EventQuery
from llmspell.events.store.sqlite import SQLiteStoreReader
from llmspell.runtime.config import load_config

__all__ = ["add_events_parser", "parse_time", "run_events"]

EXIT_OK = 0
EXIT_ERROR = 2

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_FOLLOW_PAGE = 1000
"""Events read per query while following."""
_SEEN = 100_000
"""How many ids ``tail --follow`` remembers to print each event once."""
_SLACK = 100
"""Extra newest events ``tail`` reads beyond ``--limit``, whose ids ``--follow`` remembers (so
an event committed between its first position and its first read is printed once)."""
_TOP_TYPES = 20


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or not value > 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0 seconds, got {text}")
    return value


def parse_time(text: str, *, now: float | None = None) -> float:
    """Wall-clock seconds for ``text``: an ISO 8601 time (local time when it names no zone)
    or a relative one (``30s``, ``10m``, ``2h``, ``1d``: that long before ``now``).

    Raises :class:`~llmspell.errors.InvalidValueError` for anything else.
    """
    relative = _RELATIVE.match(text)
    if relative:
        amount = float(relative.group(1)) * _UNITS[relative.group(2)]
        return (time.time() if now is None else now) - amount
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidValueError(
            f"{text!r} is not a time",
            hint="give an ISO time (2026-01-31T14:00, 2026-01-31 14:00:00+00:00) or one "
                 "relative to now (30s, 10m, 2h, 1d)") from None
    try:
        if moment.tzinfo is None:
            moment = moment.astimezone()  # a naive time is local time
        return moment.timestamp()
    except (ValueError, OverflowError):  # the first or last days of the calendar
        raise InvalidValueError(
            f"{text!r} is out of the range of times this machine can convert",
            hint="give a time in the years 2 to 9998, or one relative to now (30s, 10m, "
                 "2h, 1d)") from None


def add_events_parser(commands: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """Add the ``events`` command and its subcommands to ``commands`` (the top-level
    subparsers action)."""
    events = commands.add_parser(
        "events", help="query, tail, count and replay-list stored events", allow_abbrev=False,
        description="Read the events in the configured event store (nothing is written).")
    sub = events.add_subparsers(dest="events_command", metavar="EVENTS_COMMAND",
                                parser_class=parser_class)
    sub.required = True
    common = parser_class(add_help=False, allow_abbrev=False)
    common.add_argument("--config", type=Path, metavar="FILE",
                        help="a TOML configuration file (LLMSPELL_* variables override it)")
    common.add_argument("--json", action="store_true",
                        help="print JSON even on a terminal (the default when piped)")
    pattern = parser_class(add_help=False, allow_abbrev=False)
    pattern.add_argument("pattern", nargs="?", metavar="PATTERN", type=utf8_text,
                         help="an event type pattern ('agent.*', 'model.**', 'tool.*.failed')")
    since = parser_class(add_help=False, allow_abbrev=False)
    since.add_argument("--since", metavar="T",
                       help="only events at or after T (ISO time, or 30s/10m/2h/1d ago)")
    run = parser_class(add_help=False, allow_abbrev=False)
    run.add_argument("--run", metavar="ID", type=utf8_text,
                     help="only the events of this run")

    query = sub.add_parser("query", parents=[common, pattern, since, run], allow_abbrev=False,
                           help="stored events, newest first",
                           description="List stored events matching the filters, newest "
                                       "first (in the order the store committed them).")
    query.add_argument("--until", metavar="T", help="only events at or before T")
    query.add_argument("--correlation", metavar="ID", type=utf8_text,
                       help="only events with this correlation id")
    query.add_argument("--limit", type=positive_int, default=50, metavar="N",
                       help="at most N events (default 50)")
    query.add_argument("--oldest-first", action="store_true",
                       help="oldest first instead (the oldest N when limited)")

    tail = sub.add_parser("tail", parents=[common, pattern, run], allow_abbrev=False,
                          help="the newest events, and with --follow new ones as they arrive",
                          description="Print the newest N events oldest to newest; with "
                                      "--follow keep printing new ones until Ctrl-C.")
    tail.add_argument("--limit", "-n", type=positive_int, default=20, metavar="N",
                      help="how many of the newest events to start with (default 20)")
    tail.add_argument("--follow", "-f", action="store_true",
                      help="keep polling the store and print new events as they arrive")
    tail.add_argument("--interval", type=_seconds, default=0.5, metavar="S",
                      help="seconds between polls with --follow (default 0.5)")
    tail.add_argument("--max-events", type=positive_int, help=argparse.SUPPRESS)
    tail.add_argument("--duration", type=_seconds, help=argparse.SUPPRESS)

    sub.add_parser("stats", parents=[common, since], allow_abbrev=False,
                   help="counts per event type, time range and store size",
                   description="Count the stored events per type (the top 20) and show the "
                               "total, the oldest and newest times and the store's size.")

    sub.add_parser("replay", parents=[common, pattern, since, run], allow_abbrev=False,
                   help="the events a replay would re-publish, as JSON lines",
                   description="Print the matching events oldest first, as a replay would "
                               "re-publish them (marked replayed), one JSON object a line. "
                               "Nothing is published.")


def run_events(options: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run an ``events`` subcommand; return the exit code. llmspell errors (a bad pattern or
    time, a missing or newer store) are left to the caller (reported with exit code 2)."""
    command: Callable[[argparse.Namespace, SQLiteStoreReader, TextIO], int] = {
        "query": _query, "tail": _tail, "stats": _stats, "replay": _replay,
    }[options.events_command]
    pattern = getattr(options, "pattern", None)
    if pattern is not None:
        compile_pattern(pattern)  # a literal type ('a..b') would not be checked by the store
    for name in ("since", "until"):
        value = getattr(options, name, None)
        if value is not None:
            setattr(options, name, parse_time(value))
    store = _open(options)
    try:
        return command(options, store, out)
    finally:
        store.close()


# -- the store ----------------------------------------------------------------------------
def _store_path(options: argparse.Namespace) -> Path:
    config = load_config(options.config)
    if config.store != "sqlite":
        raise StoreError(
            f"the configured event store is {config.store!r}: it keeps nothing between "
            "processes, so there is nothing to read",
            hint="record with store = 'sqlite' (the default; LLMSPELL_STORE)")
    return config.resolved_data_dir / "events.db"


def _open(options: argparse.Namespace) -> SQLiteStoreReader:
    """The configured store, opened read-only: looking never writes, upgrades or locks it
    (a store of an older schema version is refused with a StoreError saying how to
    upgrade it)."""
    path = _store_path(options)
    if not path.is_file():
        raise StoreError(
            f"no event store at {path}: nothing has been recorded there",
            hint="point LLMSPELL_DATA_DIR (or data_dir in --config FILE) at the data "
                 "directory llmspell recorded into")
    return SQLiteStoreReader(path)


def _store_bytes(path: Path) -> int:
    total = 0
    for file in (path, path.with_name(path.name + "-wal")):
        with contextlib.suppress(OSError):
            total += file.stat().st_size
    return total


# -- output -------------------------------------------------------------------------------
def _tty(out: TextIO) -> bool:
    isatty = getattr(out, "isatty", None)
    return bool(isatty and isatty())


def _as_json(options: argparse.Namespace, out: TextIO) -> bool:
    return bool(options.json) or not _tty(out)


def _colour(out: TextIO) -> bool:
    return _tty(out) and not os.environ.get("NO_COLOR")


def _when(epoch: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch).astimezone()
    return moment.isoformat(sep=" ", timespec="milliseconds")


def _short(value: Any, limit: int = 60) -> str:
    if value is None:
        return "-"
    text = value if isinstance(value, str) else \
        msgspec.json.encode(value, enc_hook=repr).decode()
    return shown(" ".join(text.split()), limit)


_COLOURS = {"failed": "31", "error": "31", "blocked": "31", "completed": "32",
            "started": "36"}


def _paint(event_type: str, width: int) -> str:
    last = event_type.rsplit(".", 1)[-1]
    code = next((c for word, c in _COLOURS.items() if word in last), "33")
    return f"\x1b[{code}m{event_type}\x1b[0m" + " " * (width - len(event_type))


class _Printer:
    """Prints events as JSON lines, or as table rows on a terminal."""

    HEADERS = ("TIME", "TYPE", "RUN", "SOURCE", "DATA")

    def __init__(self, options: argparse.Namespace, out: TextIO) -> None:
        self.out = out
        self.json = _as_json(options, out)
        self.colour = _colour(out)
        self.widths: list[int] | None = None

    def _row(self, event: UniversalEvent) -> list[str]:
        """The cells of ``event``'s row, each :func:`~llmspell.cli_args.shown` (an event
        from another process, a model's output or a tool's result in its data, cannot act
        on the terminal) before the widths are measured and the type is coloured."""
        run = event.run_id
        return [_when(event.timestamp), shown(event.event_type, CELL_LIMIT),
                (shown(run)[:12] if run else "-"),
                shown(event.metadata.source or "-", CELL_LIMIT), _short(event.data)]

    def print(self, events: Sequence[UniversalEvent], *, header: bool = True) -> None:
        """Print ``events``: a header and aligned rows (column widths fixed by the first
        call) or one JSON object a line."""
        if self.json:
            for event in events:
                self.out.write(terminal_safe_json(event.to_json().decode()) + "\n")
            self.out.flush()
            return
        rows = [self._row(event) for event in events]
        if self.widths is None:
            self.widths = [max(len(h), *(len(row[i]) for row in rows), 0)
                           for i, h in enumerate(self.HEADERS)]
            if header:
                self.out.write(self._line(list(self.HEADERS), paint=False) + "\n")
        for row in rows:
            self.out.write(self._line(row, paint=self.colour) + "\n")
        self.out.flush()

    def _line(self, cells: list[str], *, paint: bool) -> str:
        assert self.widths is not None
        parts = []
        for i, (cell, width) in enumerate(zip(cells, self.widths, strict=True)):
            if i == 1 and paint:
                parts.append(_paint(cell, width))
            else:
                parts.append(cell.ljust(width))
        return "  ".join(parts).rstrip()


# -- commands -----------------------------------------------------------------------------
def _query(options: argparse.Namespace, store: SQLiteStoreReader, out: TextIO) -> int:
    events = store.query(EventQuery(
        pattern=options.pattern, correlation_id=options.correlation, run_id=options.run,
        since=options.since, until=options.until, limit=options.limit,
        descending=not options.oldest_first))
    printer = _Printer(options, out)
    if not events and not printer.json:
        out.write("no events\n")
        return EXIT_OK
    printer.print(events)
    return EXIT_OK


def _tail(options: argparse.Namespace, store: SQLiteStoreReader, out: TextIO) -> int:
    base = EventQuery(pattern=options.pattern, run_id=options.run)
    printer = _Printer(options, out)
    seen: OrderedDict[str, None] = OrderedDict()

    def remember(events: Iterable[UniversalEvent]) -> None:
        for event in events:
            seen[event.id] = None
        while len(seen) > _SEEN:
            seen.popitem(last=False)

    # New events are found by position, the store-wide commit order: a count that grows
    # hides events when retention deletes old ones as new ones arrive, and counting a
    # large store on every poll is slow. The ids seen drop what the first read and the
    # first poll both saw.
    last = store.last_position()
    newest = store.query(msgspec.structs.replace(base, limit=options.limit + _SLACK,
                                                 descending=True))
    remember(newest)
    shown = list(reversed(newest[:options.limit]))
    if shown:
        printer.print(shown)
    elif not printer.json and not options.follow:
        out.write("no events\n")
    if not options.follow:
        return EXIT_OK
    printed = 0
    deadline = None if options.duration is None else time.monotonic() + options.duration
    try:
        while options.max_events is None or printed < options.max_events:
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(options.interval if deadline is None
                       else max(0.0, min(options.interval, deadline - time.monotonic())))
            while options.max_events is None or printed < options.max_events:
                page = store.read_after(last, limit=_FOLLOW_PAGE, pattern=options.pattern)
                if not page:
                    if last > 0 and store.last_position() < last:
                        # The store file was replaced by a new one (positions start again
                        # at 1): follow it from its beginning.
                        last = 0
                        continue
                    break
                last = page[-1][0]
                fresh = [event for _, event in page if event.id not in seen
                         and (options.run is None or event.run_id == options.run)]
                if options.max_events is not None:
                    fresh = fresh[:options.max_events - printed]
                remember(fresh)
                if fresh:
                    printer.print(fresh)
                    printed += len(fresh)
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def _stats(options: argparse.Namespace, store: SQLiteStoreReader, out: TextIO) -> int:
    summary = store.type_summary(options.since)
    counts = Counter({name: count for name, (count, _, _) in summary.items()})
    oldest = min((first for _, first, _ in summary.values()), default=None)
    newest = max((last for _, _, last in summary.values()), default=None)
    total = sum(counts.values())
    size = _store_bytes(store.path)
    top = counts.most_common(_TOP_TYPES)
    if _as_json(options, out):
        view = {"store": printable(store.path), "bytes": size, "total": total,
                "types": len(counts), "oldest": oldest, "newest": newest,
                "counts": dict(top)}
        out.write(terminal_safe_json(msgspec.json.encode(view).decode()) + "\n")
        return EXIT_OK
    lines = [f"store    {shown(store.path)} ({_size(size)})",
             f"events   {total} of {len(counts)} types",
             f"oldest   {'-' if oldest is None else _when(oldest)}",
             f"newest   {'-' if newest is None else _when(newest)}"]
    if top:
        top = [(shown(name, CELL_LIMIT), count) for name, count in top]
        width = max(len("TYPE"), *(len(name) for name, _ in top))
        colour = _colour(out)
        lines += ["", "COUNT  TYPE"]
        for name, count in top:
            painted = _paint(name, width).rstrip() if colour else name
            lines.append(f"{count:>5}  {painted}")
        if len(counts) > _TOP_TYPES:
            rest = total - sum(count for _, count in top)
            lines.append(f"{rest:>5}  ({len(counts) - _TOP_TYPES} other types)")
    out.write("\n".join(lines) + "\n")
    return EXIT_OK


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / (1024 * 1024):.1f} MiB"


def _replay(options: argparse.Namespace, store: SQLiteStoreReader, out: TextIO) -> int:
    query = EventQuery(pattern=options.pattern, run_id=options.run, since=options.since)
    for event in store.iter_events(query):
        out.write(terminal_safe_json(event.as_replayed().to_json().decode()) + "\n")
    out.flush()
    return EXIT_OK
