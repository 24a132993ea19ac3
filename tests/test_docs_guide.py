"""The guide (docs/guide/): every step's program runs offline and checks itself, and each
page shows the programs of its step (included from examples/guide, so the code on the page
is the code tested here)."""

from __future__ import annotations

import asyncio
import re
import runpy
from pathlib import Path

import pytest

from llmspell.runtime import System, SystemConfig
from llmspell.runtime.tools.library import default_tools
from llmspell.scripting import ScriptHost

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = sorted(p for p in (ROOT / "examples" / "guide").iterdir()
                  if p.suffix in (".py", ".lua", ".js"))
PAGES = sorted((ROOT / "docs" / "guide").glob("*.md"))
STEPS = ("install", "first-hook", "first-event", "real-agent", "scripting", "production")


@pytest.mark.parametrize("program", [p for p in PROGRAMS if p.suffix == ".py"],
                         ids=lambda p: p.name)
def test_python_step_runs(program: Path, capsys: pytest.CaptureFixture[str],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LLMSPELL_PROVIDER", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(name, raising=False)        # offline, on the scripted model
    monkeypatch.setattr("sys.argv", [str(program)])
    runpy.run_path(str(program), run_name="__main__")
    assert capsys.readouterr().out.strip(), f"{program.name} should show what it did"


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


@pytest.mark.parametrize("program", [p for p in PROGRAMS if p.suffix != ".py"],
                         ids=lambda p: p.name)
def test_script_step_runs(program: Path) -> None:
    assert asyncio.run(_run_script(program)) is not None


def test_every_step_has_a_page_and_every_program_is_shown() -> None:
    names = {p.stem for p in PAGES}
    assert set(STEPS) <= names, f"missing guide pages: {set(STEPS) - names}"
    shown: set[str] = set()
    for page in PAGES:
        shown |= set(re.findall(r'--8<-- "examples/guide/([^"]+)"', page.read_text()))
    assert shown == {p.name for p in PROGRAMS}


def test_the_nav_lists_the_steps_in_order() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    positions = [nav.index(f"guide/{step}.md") for step in STEPS]
    assert positions == sorted(positions)
