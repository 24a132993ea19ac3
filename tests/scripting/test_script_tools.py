"""The standard tools from Lua and JavaScript: a sample with checked results
(tests/scripts/tools.{lua,js}), and every one of the 34 tools reached from both languages
through the same pipeline as from Python (same result, or the same error)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from llmspell.runtime import System, SystemConfig, Tool
from llmspell.runtime.tools import library as lib
from llmspell.scripting import ScriptHost

from ..runtime.test_all_tools import CASES
from .conftest import script


@pytest_asyncio.fixture
async def tool_host(tmp_path: Path) -> AsyncIterator[ScriptHost]:
    (tmp_path / "in.txt").write_text("line\n")
    system = System(SystemConfig(store="memory"))
    await system.start()
    for _, factory, _ in CASES:
        system.tools.register(factory(tmp_path))
    host = ScriptHost(system, time_budget=2.0)
    yield host
    host.close()
    await system.shutdown()


@pytest.mark.parametrize(("name", "language"), [("tools.lua", "lua"), ("tools.js", "js")])
async def test_a_sample_of_tools_from_scripts(name: str, language: str, tool_host: ScriptHost,
                                              tmp_path: Path) -> None:
    out = await tool_host.run_file_async(script(name))

    assert out["calculator"] == 1025
    assert out["base64"] == {"lua": "bHVh", "js": "anM="}[language]
    assert out["hash"] == hashlib.sha256(b"abc").hexdigest()
    assert out["upper"] == "SHOUT"
    assert out["template"] == f"Hi {'Lua' if language == 'lua' else 'JS'}"
    assert out["query"] == 2
    assert out["valid"] is True
    assert out["weekday"] == "Wednesday"
    assert out["uuids"] == 3
    assert out["host"] == "example.org"
    assert out["written"] is True
    assert out["read"] == f"written by {language}"
    assert (tmp_path / f"from-{language}.txt").read_text() == f"written by {language}"
    assert isinstance(out["escape_refused"], str) and out["escape_refused"]
    assert out["seen"] == 12


CALL_LUA = """
local name, params = ...
local ok, value = pcall(Tool.invoke, name, params)
if ok then return {ok = true} end
return {ok = false, error = value}
"""
CALL_JS = """
const [name, params] = arguments;
try { await Tool.invoke(name, params); return {ok: true}; }
catch (e) { return {ok: false, error: e.message}; }
"""


@pytest.mark.parametrize(("name", "factory", "params"), CASES, ids=[c[0] for c in CASES])
async def test_every_tool_is_callable_from_both_languages(
        name: str, factory: Callable[[Path], Tool], params: dict[str, Any],
        tool_host: ScriptHost, tmp_path: Path) -> None:
    def reset() -> None:  # the side effects of the previous call
        for made in ("side-effect.txt", "out.txt", "out.zip"):
            (tmp_path / made).unlink(missing_ok=True)

    try:
        await tool_host.system.tools.execute(name, params)
        expected: str | None = None
    except Exception as exc:
        expected = str(exc)
    for language, source in (("lua", CALL_LUA), ("js", CALL_JS)):
        reset()
        path = tmp_path.parent / f"call-{tmp_path.name}.{language}"
        path.write_text(source)
        out = await tool_host.run_file_async(path, args=(name, params))
        if expected is None:
            assert out == {"ok": True}, (language, out)
        else:
            assert out["ok"] is False, (language, out)
            assert expected.split(" (")[0][:60] in out["error"], (language, out, expected)


def test_the_sample_covers_the_library() -> None:
    assert len(CASES) == 34 and len({c[0] for c in CASES}) == 34
    assert lib.default_tools  # the same library the CLI registers
