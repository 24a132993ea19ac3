"""The OpenAI Agents SDK example runs offline: the guard rejects the transfer through the
SDK's tool guardrail, the built-ins price the model calls, the events are in the store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "integrations" / "openai_agents_agent.py"


def test_the_example_runs_offline() -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LLMSPELL_", "OPENAI_"))}
    proc = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    answer = out.split("answer:", 1)[1].splitlines()[0]
    assert "holds 1200 EUR" in answer and "need a second approval" in answer
    assert "sent 800" not in out
    assert "event tool.transfer.failed" in out and "event tool.balance.completed" in out
    assert "for 3 model calls" in out and "cost: 0 USD" not in out
    assert "'model.openai.completed': 3" in out and "'openai_agents.span.function': 2" in out
