"""The cookbook (docs/patterns.md): every pattern under examples/patterns runs offline and
checks itself (a Python pattern asserts its own results; a Lua or JavaScript one raises on a
wrong result), and the cookbook page shows each of them.

Python patterns run in this process (``runpy``, as ``__main__``), which keeps the suite fast;
Lua and JavaScript patterns run in a fresh ``System`` with the standard tools, as
``llmspell run`` would run them.
"""

from __future__ import annotations

import asyncio
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from llmspell.runtime import System, SystemConfig
from llmspell.runtime.tools.library import default_tools
from llmspell.scripting import ScriptHost

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "examples" / "patterns"
PATTERNS = sorted(p for p in FOLDER.iterdir() if p.suffix in (".py", ".lua", ".js"))
PY = [p for p in PATTERNS if p.suffix == ".py"]
SCRIPTS = [p for p in PATTERNS if p.suffix != ".py"]
COOKBOOK = ROOT / "docs" / "patterns.md"


@pytest.mark.parametrize("pattern", PY, ids=lambda p: p.name)
def test_python_pattern_runs_and_checks_itself(pattern: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(pattern), run_name="__main__")
    assert capsys.readouterr().out.strip(), f"{pattern.name} should show what it did"


async def _run_script(path: Path) -> object:
    system = System(SystemConfig(store="memory"))
    await system.start()
    system.tools.register_all(default_tools())
    host = ScriptHost(system)
    try:
        return await host.run_file_async(path)
    finally:
        host.close()
        await system.shutdown()


@pytest.mark.parametrize("pattern", SCRIPTS, ids=lambda p: p.name)
def test_script_pattern_runs_and_checks_itself(pattern: Path) -> None:
    assert asyncio.run(_run_script(pattern)) is not None, "a pattern returns a summary"


def test_there_are_at_least_fifteen_patterns_numbered_once() -> None:
    numbers = []
    for path in PATTERNS:
        match = re.match(r"(\d\d)_[a-z0-9_]+$", path.stem)
        assert match, f"{path.name}: patterns are named NN_what_it_does.<py|lua|js>"
        numbers.append(match.group(1))
    assert len(numbers) == len(set(numbers)), "two patterns share a number"
    assert len(PATTERNS) >= 15


def test_the_cookbook_includes_every_pattern() -> None:
    page = COOKBOOK.read_text(encoding="utf-8")
    included = set(re.findall(r'--8<-- "examples/patterns/([^"]+)"', page))
    assert included == {p.name for p in PATTERNS}, (
        "docs/patterns.md includes each pattern once: "
        f"missing {sorted({p.name for p in PATTERNS} - included)}, "
        f"unknown {sorted(included - {p.name for p in PATTERNS})}")


def test_each_pattern_says_what_it_shows_and_how_to_run_it() -> None:
    for path in PATTERNS:
        head = path.read_text(encoding="utf-8")[:1500]
        assert "Pattern:" in head, f"{path.name}: the first lines name the pattern"
        assert f"examples/patterns/{path.name}" in head, f"{path.name}: say how to run it"


@pytest.mark.parametrize("pattern", SCRIPTS, ids=lambda p: p.name)
def test_script_pattern_runs_with_the_documented_command(pattern: Path) -> None:
    """``llmspell run examples/patterns/<file>``, as the cookbook says (through
    ``python -m llmspell``, the same entry point)."""
    proc = subprocess.run([sys.executable, "-m", "llmspell", "run", str(pattern)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith("{"), "llmspell run prints the summary as JSON"
