"""The pydantic-ai example runs offline: the guard refuses the refund, the built-ins price
the model calls, the run's events are in the store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "integrations" / "pydantic_ai_agent.py"


def test_the_example_runs_offline() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMSPELL_")}
    proc = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "refunds over 100 need a human" in out.split("answer:", 1)[1]
    assert "event tool.refund.failed" in out and "event tool.lookup_order.completed" in out
    assert "for 3 model calls" in out and "cost: 0 USD" not in out
    assert "'model.function.completed': 3" in out
