"""``llmspell view``: serve the live web viewer.

    llmspell view [--store PATH | --bus URL] [--host 127.0.0.1] [--port 8787]
        [--token TOKEN] [--config FILE] [--throttle-failures N] [--throttle-backoff SECONDS]
        [--throttle-max-backoff SECONDS] [--throttle-clients N] [--throttle-forget SECONDS]

The page shows the event stream with a pattern filter, each run as a timeline (agent, model
calls, tools, with durations, tokens, cost and every hook decision that changed something),
breaker states, the hook latency table and backpressure notices (:mod:`llmspell.viewer`).

Events come from the configured event store (``data_dir/events.db``, as ``llmspell events``
reads it), or ``--store PATH``, followed read-only; or from a distributed bus with ``--bus
nats://...`` (the events of every process on it, nothing stored). The viewer only reads.
It listens on 127.0.0.1 by default; any other address needs a token (``--token`` or
``LLMSPELL_VIEW_TOKEN``), which every request must then present; wrong tokens are throttled
per client address as the ``--throttle-*`` options say (the fields of
:class:`~llmspell.viewer.security.ThrottleLimits`). Needs the ``viewer``
extra (``pip install 'llmspell[viewer]'``). See ``docs/observability.md``.
"""

from __future__ import annotations

import argparse
import re
import urllib.parse
from pathlib import Path
from typing import Any, TextIO

from llmspell.cli_args import printable
from llmspell.core.errors import ConfigurationError, InvalidValueError, StoreError
from llmspell.events.distributed import check_bus_url, make_bus
from llmspell.runtime.config import load_config
from llmspell.viewer.app import create_app, require_viewer_extra
from llmspell.viewer.security import ThrottleLimits, check_bind, token_from_env
from llmspell.viewer.server import ViewerServer
from llmspell.viewer.source import BusSource, Source, StoreSource

__all__ = ["DEFAULT_PORT", "THROTTLE_FLAGS", "add_view_parser", "run_view", "throttle_limits"]

DEFAULT_PORT = 8787
EXIT_OK = 0


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0-65535 (0: any free port), got {text}")
    return value


THROTTLE_FLAGS = {"max_failures": "--throttle-failures", "backoff": "--throttle-backoff",
                  "max_backoff": "--throttle-max-backoff", "max_clients": "--throttle-clients",
                  "forget": "--throttle-forget"}
"""The ``llmspell view`` option setting each :class:`ThrottleLimits` field."""
_THROTTLE_FIELD = re.compile(r"(?:ThrottleLimits\.)?\b(" + "|".join(THROTTLE_FLAGS) + r")\b")


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None


def throttle_limits(options: argparse.Namespace) -> ThrottleLimits | None:
    """The :class:`ThrottleLimits` the ``--throttle-*`` options give (None: none given, the
    defaults). A bad value raises :class:`~llmspell.errors.InvalidValueError`, as
    ``ThrottleLimits`` does, naming the option rather than the field."""
    given = {field: value for field in THROTTLE_FLAGS
             if (value := getattr(options, f"throttle_{field}", None)) is not None}
    if not given:
        return None
    try:
        return ThrottleLimits(**given)
    except InvalidValueError as exc:
        def flag(match: re.Match[str]) -> str:
            return THROTTLE_FLAGS[match[1]]

        raise InvalidValueError(_THROTTLE_FIELD.sub(flag, exc.message),
                                hint=_THROTTLE_FIELD.sub(flag, exc.hint or "") or None) \
            from None


def add_view_parser(commands: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """Add the ``view`` command to ``commands`` (the top-level subparsers action)."""
    view = commands.add_parser(
        "view", help="serve the live web viewer of events, runs and hooks", allow_abbrev=False,
        description="Serve one page showing the live event stream, each run as a timeline, "
                    "breaker states, the hook latency table and backpressure notices. It "
                    "only reads.")
    where = view.add_mutually_exclusive_group()
    where.add_argument("--store", type=Path, metavar="PATH",
                       help="the event store file to follow (default: the configured "
                            "data_dir/events.db)")
    where.add_argument("--bus", metavar="URL",
                       help="follow a distributed bus instead (nats://host:4222?namespace=...)")
    view.add_argument("--host", default="127.0.0.1",
                      help="address to listen on (default 127.0.0.1; any non-loopback "
                           "address needs --token)")
    view.add_argument("--port", type=_port, default=DEFAULT_PORT,
                      help=f"port to listen on (default {DEFAULT_PORT}; 0 picks a free one)")
    view.add_argument("--token", metavar="TOKEN",
                      help="require this token on every request (default: "
                           "$LLMSPELL_VIEW_TOKEN); open the page with ?token=TOKEN")
    view.add_argument("--config", type=Path, metavar="FILE",
                      help="a TOML configuration file (LLMSPELL_* variables override it)")
    view.add_argument("--log-level", default="warning",
                      choices=("critical", "error", "warning", "info", "debug"),
                      help="uvicorn's log level (default warning)")
    defaults = ThrottleLimits()
    throttle = view.add_argument_group(
        "wrong-token throttle",
        "With a token, an address that sent too many wrong tokens is refused with 429 and a "
        "Retry-After for a wait that doubles with each further wrong token (the right token "
        "included, until the wait ends). Without a token nothing is throttled.")
    throttle.add_argument("--throttle-failures", dest="throttle_max_failures", type=_whole,
                          metavar="N",
                          help="wrong tokens an address may send before it must wait "
                               f"(default {defaults.max_failures}; at least 1)")
    throttle.add_argument("--throttle-backoff", dest="throttle_backoff", type=_seconds,
                          metavar="SECONDS",
                          help=f"the first wait (default {defaults.backoff:g}; > 0)")
    throttle.add_argument("--throttle-max-backoff", dest="throttle_max_backoff",
                          type=_seconds, metavar="SECONDS",
                          help=f"the longest wait (default {defaults.max_backoff:g}; at "
                               "least --throttle-backoff)")
    throttle.add_argument("--throttle-clients", dest="throttle_max_clients", type=_whole,
                          metavar="N",
                          help="addresses tracked at once; past it the oldest not waiting "
                               f"is forgotten (default {defaults.max_clients}; at least 1)")
    throttle.add_argument("--throttle-forget", dest="throttle_forget", type=_seconds,
                          metavar="SECONDS",
                          help="seconds without a wrong token (from the end of the last "
                               "wait) after which an address starts afresh (default "
                               f"{defaults.forget:g}; > 0)")


def _default_store(config_file: Path | None) -> Path:
    config = load_config(config_file)
    if config.store != "sqlite":
        raise StoreError(
            f"the configured event store is {config.store!r}: it keeps nothing between "
            "processes, so there is nothing to follow",
            hint="record with store = 'sqlite' (the default; LLMSPELL_STORE), pass --store "
                 "PATH, or follow a bus with --bus nats://...")
    return config.resolved_data_dir / "events.db"


def _public_url(url: str) -> str:
    """``url`` without a user name or password."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def run_view(options: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Serve the viewer until interrupted; return the exit code. llmspell errors (a bind
    refused without a token, a missing extra, a port in use) are left to the caller."""
    token = options.token if options.token is not None else token_from_env()
    check_bind(options.host, token)
    throttle = throttle_limits(options)
    require_viewer_extra()
    source: Source
    if options.bus:
        check_bus_url(options.bus)
        source = BusSource(make_bus(options.bus), owns_bus=True,
                           where=_public_url(options.bus))
        where = f"bus {_public_url(options.bus)}"
    else:
        path = options.store if options.store is not None else _default_store(options.config)
        if path.exists() and not path.is_file():
            raise ConfigurationError(f"{path} is not a file",
                                     hint="give the path of an events.db")
        source = StoreSource(path)
        where = f"store {printable(path)}" + ("" if path.exists()
                                              else " (waiting for it to be created)")
    server = ViewerServer(create_app(source, token=token, throttle=throttle), options.host,
                          options.port,
                          log_level=options.log_level)
    print(f"llmspell view: serving {server.url} ({where})", file=out)
    if token is not None:
        print("open it with ?token=TOKEN (the token you gave); Ctrl-C stops it", file=out)
    else:
        print("Ctrl-C stops it", file=out)
        if throttle is not None:
            print("llmspell view: note: the --throttle-* options do nothing without a token",
                  file=err)
    out.flush()
    server.run()
    return EXIT_OK
