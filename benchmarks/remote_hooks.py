"""What a remote hook costs: a tool call guarded by a hook in another process.

The public call as users write it, ``await system.tools.execute("shell", {...})``, with a
guard at ``BeforeToolExecution`` three ways, in one run, calls interleaved (one of each in
turn) so that load on the machine hits them alike:

* **local**: the guard is a plain function in the System's registry (the baseline);
* **remote**: the same guard served by ``llmspell hooks serve`` in another process, over
  the NATS server on loopback (``RemoteHook(..., key=None)``);
* **remote, signed**: the same with a shared key (every call and reply signed with
  HMAC-SHA256 and verified, nonce checked).

* **raw**: for reference, a bare nats-py request/reply of the same size to a responder
  process that answers at once: the floor any remote call over NATS pays here.

Rows: p50 and p99 of each remote variant against the local one (µs per call, ratio),
signing's cost against the unsigned remote call, and what llmspell itself adds to a remote
call (remote p50 minus local p50 minus raw p50: encoding, the context, the executor's
async path, the server's checks; target ``<= 300 µs``). The targets: a remote guard adds well
under a millisecond on loopback at the median (``p50 <= 1000 µs``) and stays bounded in
the tail (``p99 <= 5000 µs``); signing adds at most half again (``ratio <= 1.5`` against
the unsigned call, and the signed targets are half again the unsigned ones). Between
machines, add the network's round trip.

Needs a NATS server: ``LLMSPELL_TEST_NATS_URL``, ``NATS_URL`` or ``nats://127.0.0.1:4222``.

    python benchmarks/remote_hooks.py [--quick] [--json out.json]
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nats
from _harness import Row, parse_args, report

from llmspell.distributed import RemoteHook
from llmspell.hooks import Cancel, HookContext
from llmspell.runtime import System, SystemConfig, tool

ROOT = Path(__file__).resolve().parent.parent
NATS = (os.environ.get("LLMSPELL_TEST_NATS_URL") or os.environ.get("NATS_URL")
        or "nats://127.0.0.1:4222")
KEY = "benchmark-key-0123456789abcdefghijkl"
CONTINUE = b'{"result":{"type":"continue"}}'
POLICY = '''
from llmspell.hooks import Cancel, hook


@hook("BeforeToolExecution", name="guard")
def guard(ctx):
    if "rm " in ctx.data["params"].get("command", ""):
        return Cancel("not allowed")
    return None


HOOKS = [guard]
'''
RESPONDER = '''
import asyncio, sys
import nats

async def main():
    nc = await nats.connect(sys.argv[1])
    async def answer(msg):
        await nc.publish(msg.reply, b'{"result":{"type":"continue"}}')
    await nc.subscribe(sys.argv[2], cb=answer)
    await nc.flush()
    print("serving raw", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
'''


def guard(ctx: HookContext) -> Cancel | None:
    """The local guard: the same body as the served one."""
    if "rm " in ctx.data["params"].get("command", ""):
        return Cancel("not allowed")
    return None


@tool()
def shell(command: str) -> str:
    """Pretends to run a command."""
    return command


def _reachable(url: str) -> bool:
    parts = urllib.parse.urlsplit(url.split(",", maxsplit=1)[0].split("?", maxsplit=1)[0])
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 4222), 1).close()
        return True
    except OSError:
        return False


def _serve(policy: Path, url: str, key: str | None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "LLMSPELL_HOOK_KEY"}
    args = [sys.executable, "-m", "llmspell", "hooks", "serve", str(policy), "--bus", url]
    if key is not None:
        env["BENCH_KEY"] = key
        args += ["--key-env", "BENCH_KEY"]
    return _started(args, env)


def _started(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("serving "):
        proc.kill()
        raise RuntimeError(f"the server did not start: {line}{proc.stderr.read()}"
                           if proc.stderr else line)
    return proc


async def _system(hook: Any) -> System:
    system = System(SystemConfig(store="none"))
    system.tools.register(shell)
    if isinstance(hook, RemoteHook):
        system.registry.register(hook)
    else:
        system.registry.register("BeforeToolExecution", hook, name="guard",
                                 error_policy="fail_closed")
    await system.start()
    return system


async def _measure(calls: list[Callable[[], Awaitable[object]]], rounds: int,
                   warmup: int) -> list[list[float]]:
    """µs of each call, ``rounds`` times, interleaved (order reversed every other round)."""
    for _ in range(warmup):
        for call in calls:
            await call()
    samples: list[list[float]] = [[] for _ in calls]
    order = list(enumerate(calls))
    gc.collect()
    for i in range(rounds):
        for index, call in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            out = await call()
            samples[index].append((time.perf_counter() - start) * 1e6)
            if out not in ("ls -la", CONTINUE):
                raise RuntimeError(f"a benchmarked call returned {out!r}")
    return samples


def _p(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def run(quick: bool) -> list[Row]:
    plain_url = f"{NATS}?namespace=bench{uuid.uuid4().hex[:8]}"
    signed_url = f"{NATS}?namespace=bench{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as folder:
        policy = Path(folder) / "bench_policy.py"
        policy.write_text(POLICY)
        subject = f"bench.raw.{uuid.uuid4().hex[:8]}"
        servers = [_serve(policy, plain_url, None), _serve(policy, signed_url, KEY),
                   _started([sys.executable, "-c", RESPONDER, NATS, subject])]
        nc = await nats.connect(NATS)
        # What a remote guard sends: the context (~600 bytes) and ~12 headers.
        payload = b"x" * 600
        headers = {f"Llmspell-Ctx-H{i}": "v" * 24 for i in range(12)}

        async def raw() -> bytes:
            msg = await nc.request(subject, payload, timeout=5, headers=headers)
            data: bytes = msg.data
            return data

        remote = RemoteHook("guard", "BeforeToolExecution", url=plain_url, key=None, timeout=5)
        signed = RemoteHook("guard", "BeforeToolExecution", url=signed_url, key=KEY, timeout=5)
        systems = [await _system(guard), await _system(remote), await _system(signed)]
        try:
            calls: list[Callable[[], Awaitable[object]]] = [
                lambda s=s: s.tools.execute("shell", {"command": "ls -la"}) for s in systems]
            local, plain, keyed, bare = await _measure([*calls, raw], 300 if quick else 5000,
                                                       20 if quick else 200)
        finally:
            await nc.close()
            for system in systems:
                await system.shutdown()
            await remote.close()
            await signed.close()
            for server in servers:
                server.terminate()
                server.communicate(timeout=30)
    rows = []
    for name, values, q, target in [
            ("tool call, remote guard p50", plain, 50, 1000.0),
            ("tool call, remote guard p99", plain, 99, 5000.0),
            ("tool call, signed remote guard p50", keyed, 50, 1500.0),
            ("tool call, signed remote guard p99", keyed, 99, 7500.0)]:
        value, base = _p(values, q), _p(local, q)
        rows.append(Row(name, value, "µs/call", base, value / base,
                        f"value <= {target:.0f} µs", value <= target))
    signing, unsigned = _p(keyed, 50), _p(plain, 50)
    rows.append(Row("signing (signed vs unsigned remote p50)", signing, "µs/call", unsigned,
                    signing / unsigned, "ratio <= 1.50", signing / unsigned <= 1.5))
    added = _p(plain, 50) - _p(local, 50)
    rows.append(Row("added by a remote guard (p50)", added, "µs/call", _p(bare, 50),
                    added / _p(bare, 50), "value <= 1000 µs", added <= 1000))
    rows.append(Row("raw nats-py request/reply p50 (reference)", _p(bare, 50), "µs/call",
                    None, None, "reference", True))
    own = added - _p(bare, 50)
    rows.append(Row("llmspell's own cost per remote call (p50)", own, "µs/call", None, None,
                    "value <= 300 µs", own <= 300))
    return rows


def main() -> int:
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "remote hooks")
    if not _reachable(NATS):
        print(f"no NATS server at {NATS}: start one with `nats-server` or set "
              "LLMSPELL_TEST_NATS_URL", file=sys.stderr)
        return 2
    rows = asyncio.run(run(args.quick))
    return report("Remote hooks: a guarded tool call, local vs another process (loopback "
                  "NATS)", rows, args.json)


if __name__ == "__main__":
    sys.exit(main())
