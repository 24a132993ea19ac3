"""``llmspell hooks``: serve the hooks of a policy file to remote callers.

    llmspell hooks serve POLICY.py [--bus URL] [--key-env VAR] [--queue NAME]
        [--max-inflight N] [--hop-limit N] [--max-payload BYTES]

The policy file declares its hooks (``HOOKS = [...]``, or ``@hook`` functions; see
:mod:`llmspell.distributed.policy`). The server joins queue group ``NAME`` on the bus
(``--bus``, else ``LLMSPELL_BUS``, else ``nats://127.0.0.1:4222``), prints one line saying
what it serves once it takes calls, and serves until SIGINT or SIGTERM, when it finishes the
calls it received, prints its counts and exits 0. With ``--key-env VAR`` (or
``LLMSPELL_HOOK_KEY`` set) calls must be signed with that key. Errors exit 2. See
``docs/distributed.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path
from typing import Any, TextIO

from llmspell.cli_args import positive_int, utf8_text
from llmspell.core.errors import ConfigurationError, LlmspellError
from llmspell.core.text import terminal_safe
from llmspell.distributed import DEFAULT_KEY_ENV, DEFAULT_QUEUE, HookServer, Signer, load_policy
from llmspell.distributed.context import MAX_HOP_LIMIT
from llmspell.distributed.wire import MAX_PAYLOAD

__all__ = ["add_hooks_parser", "run_hooks"]

EXIT_OK = 0
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def add_hooks_parser(commands: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """Add the ``hooks`` command and its subcommands to ``commands`` (the top-level
    subparsers action)."""
    hooks = commands.add_parser(
        "hooks", help="serve hooks to other processes", allow_abbrev=False,
        description="Serve the hooks of a policy file to remote callers over NATS (see "
                    "docs/distributed.md).")
    sub = hooks.add_subparsers(dest="hooks_command", metavar="HOOKS_COMMAND",
                               parser_class=parser_class)
    sub.required = True
    serve = sub.add_parser(
        "serve", help="serve a policy file's hooks until SIGINT/SIGTERM", allow_abbrev=False,
        description="Serve the hooks POLICY declares (HOOKS = [...], or @hook functions) to "
                    "RemoteHook callers until SIGINT or SIGTERM.")
    serve.add_argument("policy", type=Path, metavar="POLICY", help="the policy file (.py)")
    serve.add_argument("--bus", metavar="URL", default=None,
                       help="the NATS URL, with ?namespace=... (default: LLMSPELL_BUS, else "
                            "nats://127.0.0.1:4222)")
    serve.add_argument("--key-env", metavar="VAR", default=None,
                       help="take the shared signing key from environment variable VAR and "
                            f"refuse unsigned calls (default: {DEFAULT_KEY_ENV} if set)")
    serve.add_argument("--queue", metavar="NAME", default=DEFAULT_QUEUE, type=utf8_text,
                       help=f"the queue group whose servers share the calls (default "
                            f"{DEFAULT_QUEUE})")
    serve.add_argument("--max-inflight", type=positive_int, default=256, metavar="N",
                       help="async hook calls running at once (default 256)")
    serve.add_argument("--hop-limit", type=positive_int, default=MAX_HOP_LIMIT, metavar="N",
                       help=f"refuse calls that crossed more than N processes (default "
                            f"{MAX_HOP_LIMIT}; a call's own limit applies too)")
    serve.add_argument("--max-payload", type=positive_int, default=MAX_PAYLOAD,
                       metavar="BYTES",
                       help=f"refuse calls larger than BYTES, unread (default {MAX_PAYLOAD}; "
                            "at least 1024)")


def run_hooks(options: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run ``llmspell hooks ...``; llmspell errors exit with code 2 (message and hint)."""
    try:
        return asyncio.run(_serve(options, out, err))
    except LlmspellError as exc:
        print(f"llmspell: error: {terminal_safe(exc.message, multiline=True)}", file=err)
        if exc.hint:
            print(f"hint: {terminal_safe(exc.hint, multiline=True)}", file=err)
        return EXIT_ERROR
    except KeyboardInterrupt:  # Ctrl-C before the server took over SIGINT (loading)
        print("llmspell: interrupted", file=err)
        return EXIT_INTERRUPTED


def _signer(options: argparse.Namespace) -> tuple[Signer | None, str]:
    if options.key_env is not None:
        return Signer.from_env(options.key_env), f"on (key from {options.key_env})"
    signer = Signer.from_env(DEFAULT_KEY_ENV, required=False)
    if signer is not None:
        return signer, f"on (key from {DEFAULT_KEY_ENV})"
    return None, (f"OFF (any process on the bus may call these hooks; set {DEFAULT_KEY_ENV} "
                  "or --key-env)")


async def _serve(options: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if options.hop_limit > MAX_HOP_LIMIT:
        raise ConfigurationError(f"--hop-limit must be at most {MAX_HOP_LIMIT}",
                                 hint=f"e.g. --hop-limit {MAX_HOP_LIMIT}")
    hooks = load_policy(options.policy)
    signer, signing = _signer(options)
    server = HookServer(hooks, url=options.bus, key=signer, queue=options.queue,
                        max_inflight=options.max_inflight, hop_limit=options.hop_limit,
                        max_payload=options.max_payload)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await server.start()
        served = ", ".join(hook.describe() for hook in server.hooks.values())
        line = (f"serving {served} on {server.config.description}, queue {server.queue!r}, "
                f"pid {os.getpid()}; signing {signing}")
        print(terminal_safe(line), file=out, flush=True)
        await stop.wait()
        print("stopping: finishing the calls received", file=err, flush=True)
    finally:
        await server.stop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    stats = server.stats()
    print(f"stopped: served {sum(stats.served.values())}, refused "
          f"{sum(stats.refused.values())}, failed {sum(stats.failed.values())}",
          file=out, flush=True)
    return EXIT_OK
