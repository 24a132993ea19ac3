"""Every example runs and the README's commands are real (docs blocks: test_docs_blocks.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def offline_env() -> dict[str, str]:
    """The environment without provider settings: examples must run offline here."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("LLMSPELL_") and k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(example: Path) -> None:
    proc = subprocess.run([sys.executable, str(example)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=offline_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip(), "an example should show what it did"


def test_quickstart_shows_every_effect() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    out = proc.stdout
    assert "6 * 7 -> 42.0\n" in out
    assert "(cached, served by serve_cached)" in out
    assert "refused: division by zero is not allowed (by refuse_division_by_zero)" in out
    assert "'flaky_metrics_exporter': 'open'" in out


def test_main_example_agent_shows_hooks_events_and_effects() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "agent.py")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=offline_env())
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr
    assert out.count("agent: The result is 84.") == 2
    assert "cached=True" in out                       # the Cache hook served the 2nd call
    assert "exponentiation is not allowed" in out     # the Cancel hook refused the 3rd
    assert "[hook]  calculator returned" in out and "[event] tool.calculator.started" in out
    assert "model call: redacted 1 e-mail address(es) from the prompt" in out
    assert "agent: The result is 42." in out          # the redacted prompt still worked
    assert "tokens on scripted/scripted" in out       # AfterModelCall saw the usage
    assert "events stored in" in out


def test_readme_quick_start_is_two_commands_and_ci_runs_the_test_one() -> None:
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```sh\n(.*?)```", quick, re.DOTALL)
    commands = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    assert len(commands) == 2
    assert "examples/" in commands[0]
    assert "pytest" in commands[1]
    assert commands[1].strip() in (ROOT / ".ci" / "run").read_text()
