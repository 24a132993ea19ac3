"""Every code block in the docs runs on its own, or says that it continues the previous one.

A reader copies one block and runs it: that must work, unless the block's first line says it
continues the previous block of the same language (``# continues the previous block`` in
Python, ``-- continues the previous block`` in Lua, ``// continues the previous block`` in
JavaScript). So the blocks of a page fall into chains: a block without the marker starts a
chain, a marked block joins the chain before it. Each Python chain runs in a fresh namespace,
block by block; each Lua or JavaScript chain runs as one script in a fresh ``System`` with the
standard tools. Other fences must name what they hold (``sh``, ``text``, ``toml``,
``mermaid``, ...): a block without a language is an error, and ``toml`` blocks must parse.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from llmspell.runtime import System, SystemConfig
from llmspell.runtime.tools.library import default_tools
from llmspell.scripting import ScriptHost

ROOT = Path(__file__).resolve().parent.parent
PAGES = [*sorted((ROOT / "docs").glob("**/*.md")), ROOT / "README.md"]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
MARKERS = {"python": "# continues the previous block",
           "lua": "-- continues the previous block",
           "js": "// continues the previous block"}
RUN = tuple(MARKERS)
SNIPPET = re.compile(r'^--8<-- "([^"]+)"$')
"""A block that only includes a file (pymdownx.snippets): the file is run by its own test."""
NOT_RUN = {"sh", "text", "toml", "mermaid", "dot", "json", "yaml", "console"}


@dataclass
class Block:
    """One fenced block: its language, its code and the line it starts on."""

    language: str
    code: str
    line: int


@dataclass
class Chain:
    """A block that runs on its own and the blocks marked as continuing it."""

    language: str
    blocks: list[Block] = field(default_factory=list)

    @property
    def line(self) -> int:
        return self.blocks[0].line


def fenced_blocks(text: str) -> list[Block]:
    """The fenced blocks of a page, in order."""
    return [Block(m.group(1).strip().split(" ")[0], m.group(2),
                  text.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(text)]


def included_files(block: Block) -> list[str]:
    """The files a block includes, when it consists only of snippet includes."""
    lines = [line.strip() for line in block.code.splitlines() if line.strip()]
    found = [m.group(1) for m in map(SNIPPET.match, lines) if m]
    return found if found and len(found) == len(lines) else []


def chains(blocks: list[Block], page: str = "<page>") -> list[Chain]:
    """Group the runnable blocks into chains; a marked block with nothing before it fails."""
    found: list[Chain] = []
    last: dict[str, Chain] = {}
    for block in blocks:
        if block.language not in RUN or included_files(block):
            continue
        if block.code.startswith(MARKERS[block.language]):
            chain = last.get(block.language)
            if chain is None:
                raise AssertionError(f"{page}:{block.line}: a block marked as continuing, "
                                     f"but no {block.language} block comes before it")
            chain.blocks.append(block)
        else:
            chain = Chain(block.language, [block])
            last[block.language] = chain
            found.append(chain)
    return found


def _page_chains() -> list[tuple[str, Chain]]:
    return [(f"{page.relative_to(ROOT)}:{chain.line}", chain) for page in PAGES
            for chain in chains(fenced_blocks(page.read_text(encoding="utf-8")),
                                str(page.relative_to(ROOT)))]


ALL_CHAINS = _page_chains()
PY_CHAINS = [(where, c) for where, c in ALL_CHAINS if c.language == "python"]
SCRIPT_CHAINS = [(where, c) for where, c in ALL_CHAINS if c.language != "python"]


@pytest.mark.parametrize(("where", "chain"), PY_CHAINS, ids=[w for w, _ in PY_CHAINS])
def test_python_chain_runs_on_its_own(where: str, chain: Chain) -> None:
    namespace: dict[str, object] = {"__name__": "doc_block"}
    for block in chain.blocks:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(block.code, f"{where} (block at line {block.line})", "exec"),
                     namespace)
        except Exception as exc:  # pragma: no cover - the message is the point
            pytest.fail(f"{where}: the block at line {block.line} failed: {exc!r}\n{block.code}")


async def _run_script(chain: Chain) -> None:
    source = "\n".join(block.code for block in chain.blocks)
    system = System(SystemConfig(store="memory"))
    await system.start()
    system.tools.register_all(default_tools())
    host = ScriptHost(system)
    try:
        if chain.language == "lua":
            await host.run_lua_async(source, name="doc-block")
        else:
            await host.run_js_async(source, name="doc-block")
    finally:
        host.close()
        await system.shutdown()


@pytest.mark.parametrize(("where", "chain"), SCRIPT_CHAINS, ids=[w for w, _ in SCRIPT_CHAINS])
def test_script_chain_runs_on_its_own(where: str, chain: Chain) -> None:
    asyncio.run(_run_script(chain))


PENDING_FENCES: dict[str, str] = {}
"""Pages with a known unlabelled fence, owned elsewhere: strict xfail, so the test fails
once the page is fixed and the entry must go."""


def _fence_params() -> list[object]:
    out = []
    for page in PAGES:
        name = str(page.relative_to(ROOT))
        marks = ([pytest.mark.xfail(strict=True, reason=PENDING_FENCES[name])]
                 if name in PENDING_FENCES else [])
        out.append(pytest.param(page, id=name, marks=marks))
    return out


@pytest.mark.parametrize("page", _fence_params())
def test_every_fence_names_its_language(page: Path) -> None:
    for block in fenced_blocks(page.read_text(encoding="utf-8")):
        assert block.language in RUN or block.language in NOT_RUN, (
            f"{page.name}:{block.line}: a fence without a known language "
            f"({block.language!r}); name it (python, lua, js, sh, text, toml, mermaid, ...)")
        if block.language == "toml":
            tomllib.loads(block.code)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_included_files_exist_and_are_run_by_a_test(page: Path) -> None:
    """An included file is an example under examples/, which tests run on their own."""
    for block in fenced_blocks(page.read_text(encoding="utf-8")):
        for name in included_files(block):
            assert (ROOT / name).is_file(), f"{page.name}:{block.line}: {name} does not exist"
            assert name.startswith("examples/"), (
                f"{page.name}:{block.line}: include runnable files from examples/ only")


def test_the_docs_have_runnable_blocks_in_each_language() -> None:
    languages = {c.language for _, c in ALL_CHAINS}
    assert languages == {"python", "lua", "js"}
    assert len(PY_CHAINS) >= 20


def test_chains_follow_the_markers() -> None:
    page = ("```python\nx = 1\n```\ntext\n```lua\nlocal y = 1\n```\n"
            "```python\n# continues the previous block\nassert x == 1\n```\n"
            "```python\nz = 2\n```\n```lua\n-- continues the previous block\nprint(y)\n```\n")
    found = chains(fenced_blocks(page))
    assert [(c.language, [b.line for b in c.blocks]) for c in found] == [
        ("python", [1, 8]), ("lua", [5, 15]), ("python", [12])]
    with pytest.raises(AssertionError, match="no js block comes before it"):
        chains(fenced_blocks("```js\n// continues the previous block\n```\n"))
