"""The Lua and JavaScript examples (examples/lua, examples/js) run offline and check themselves.

Each example asserts its own results (Lua ``assert``, JS ``throw``) and returns a summary;
here every one runs against a fresh in-memory :class:`System` with the standard tools.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llmspell.runtime import System, SystemConfig
from llmspell.runtime.tools.library import default_tools
from llmspell.scripting import ScriptHost

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "examples" / "lua"
JS = ROOT / "examples" / "js"
SCRIPTS = [*sorted(LUA.glob("*.lua")), *sorted(JS.glob("*.js"))]
TOPIC = re.compile(r"^(\d\d)_")


def topics(folder: Path, suffix: str) -> dict[str, str]:
    """Topic number -> file stem, for the examples in ``folder``."""
    found: dict[str, str] = {}
    for path in sorted(folder.glob(f"*{suffix}")):
        match = TOPIC.match(path.name)
        assert match, f"{path.name}: examples are named NN_topic{suffix}"
        assert match.group(1) not in found, f"two examples for topic {match.group(1)}"
        found[match.group(1)] = path.stem
    return found


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
async def test_script_example_runs(script: Path) -> None:
    system = System(SystemConfig(store="memory"))
    await system.start()
    system.tools.register_all(default_tools())
    host = ScriptHost(system)
    try:
        result = await host.run_file_async(script)
        assert result is not None, f"{script.name} should return a summary"
    finally:
        host.close()
        await system.shutdown()


def test_each_language_has_at_least_eight_examples() -> None:
    assert len(topics(LUA, ".lua")) >= 8
    assert len(topics(JS, ".js")) >= 8


def test_lua_and_js_cover_the_same_topics() -> None:
    lua, js = topics(LUA, ".lua"), topics(JS, ".js")
    assert lua == js, "examples/lua and examples/js should read side by side"


def test_readmes_list_every_example() -> None:
    for folder, suffix in ((LUA, ".lua"), (JS, ".js")):
        readme = (folder / "README.md").read_text()
        for path in folder.glob(f"*{suffix}"):
            assert path.name in readme, f"{folder.name}/README.md does not list {path.name}"
