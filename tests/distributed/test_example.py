"""examples/distributed runs as its docstring says: ``llmspell hooks serve policy.py`` in one
process, ``worker.py`` in another, one shared key (tests/test_examples_and_docs.py runs the
top-level examples; this one needs a NATS server, so it runs here)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from tests.distributed.support import KEY, ROOT, Server, hook_url
from tests.events.nats_support import nats_url

__all__ = ["nats_url"]  # fixtures

EXAMPLE = ROOT / "examples" / "distributed"


def _worker(url: str, key: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMSPELL_")}
    env["LLMSPELL_BUS"] = url
    if key is not None:
        env["LLMSPELL_HOOK_KEY"] = key
    return subprocess.run([sys.executable, str(EXAMPLE / "worker.py")], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env=env)


async def test_the_policy_server_guards_the_worker(nats_url: str) -> None:
    url = hook_url(nats_url)
    server = await Server(EXAMPLE / "policy.py", url, env={"LLMSPELL_HOOK_KEY": KEY}).ready()
    try:
        worker = await asyncio.to_thread(_worker, url, KEY)
    finally:
        counts = await server.stop()
    assert worker.returncode == 0, worker.stdout + worker.stderr
    out = worker.stdout
    assert "'ls -R /srv'" in out and "-> done: ran ls /srv" in out      # Modified
    assert "policy: chaining or redirection is not allowed" in out       # Cancel
    assert "policy: 'rm' is not an allowed program" in out
    assert "the tool ran: ['ls /srv', 'echo hi']" in out
    assert f":{server.proc.pid}'] (trace " in out                       # who answered
    assert counts == {"served": 4, "refused": 0, "failed": 0}


async def test_without_a_policy_server_the_worker_runs_nothing(nats_url: str) -> None:
    worker = await asyncio.to_thread(_worker, hook_url(nats_url), None)
    assert worker.returncode == 1
    assert "the tool ran: []" in worker.stdout
    assert "no server serves remote hook 'shell_guard'" in worker.stdout
