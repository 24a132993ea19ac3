"""The package diagram of docs/architecture-diagram.md is the code's import graph: every
import from one llmspell package into another is an arrow there, and every arrow is an
import. Read from the source with ``ast``, so the test sees imports inside functions too."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "llmspell"
PAGE = ROOT / "docs" / "architecture-diagram.md"
PACKAGES = {"core", "hooks", "events", "builtin", "runtime", "scripting", "integrations", "cli",
            "distributed", "viewer"}
"""The boxes of the diagram (the top-level ``llmspell``/``llmspell.errors`` re-exports and
``__main__`` are left out: they only forward names)."""


def _package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "llmspell" else None


def import_graph() -> set[tuple[str, str]]:
    edges: set[tuple[str, str]] = set()
    for path in SRC.rglob("*.py"):
        source = _package_of(".".join(("llmspell", *path.relative_to(SRC).with_suffix("").parts)))
        if source not in PACKAGES:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            for module in modules:
                target = _package_of(module)
                if target == "errors":
                    target = "core"            # llmspell.errors re-exports core.errors
                if target in PACKAGES and target != source:
                    edges.add((source, target))
    return edges


def diagram_edges() -> set[tuple[str, str]]:
    text = PAGE.read_text(encoding="utf-8")
    block = text.split("```mermaid\nflowchart", 1)[1].split("```", 1)[0]
    return set(re.findall(r"^\s*(\w+)\s*-->\s*(\w+)\s*$", block, flags=re.MULTILINE))


def test_the_diagram_draws_exactly_the_imports() -> None:
    code, drawn = import_graph(), diagram_edges()
    assert code, "no imports found: is SRC right?"
    assert not code - drawn, f"imports missing from the diagram: {sorted(code - drawn)}"
    assert not drawn - code, f"arrows with no import behind them: {sorted(drawn - code)}"


def test_imports_point_down_only() -> None:
    layer = {"core": 0, "hooks": 1, "events": 1, "builtin": 2, "runtime": 3,
             "scripting": 4, "integrations": 4, "distributed": 4, "viewer": 4, "cli": 5}
    upward = sorted((a, b) for a, b in import_graph() if layer[b] >= layer[a])
    assert not upward, f"imports that point up or sideways: {upward}"
