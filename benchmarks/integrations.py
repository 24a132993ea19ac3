"""What llmspell's framework adapters add to an agent run, for the three frameworks, in one
table.

For each framework whose package is installed, one agent run with an offline model that
asks for 3 tool calls (4 model calls) is timed bare, through the llmspell adapter with 5
no-op hooks at every point the adapter fires, and with the framework's own no-op seams
(the modules ``_integration_pydantic_ai.py``, ``_integration_langchain.py`` and
``_integration_openai_agents.py`` say what each run does and why the targets are what they
are). Targets (issue 15): the adapter adds at most 5 % to the bare run; against the
framework's own no-op plumbing it costs at most 3 times what that plumbing adds
(pydantic-ai, LangChain) or takes at most 10 % longer (OpenAI Agents SDK). A framework that
is not installed is left out with a note on stderr (``pip install 'llmspell[integrations]'``
installs all three).

    python benchmarks/integrations.py [--quick] [--json out.json]
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _integration_langchain
import _integration_openai_agents
import _integration_pydantic_ai
from _harness import Row, parse_args, report

FRAMEWORKS: tuple[tuple[str, str, Callable[[bool], list[Row]]], ...] = (
    ("pydantic-ai", "pydantic_ai", _integration_pydantic_ai.measure),
    ("langchain", "langchain.agents", _integration_langchain.measure),
    ("openai-agents", "agents", _integration_openai_agents.measure),
)
"""Each framework: its extra, the module that says it is installed, its measurement."""


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package of a dotted name is missing
        return False


def measure(quick: bool) -> list[Row]:
    """The rows of every installed framework, one framework after another."""
    rows: list[Row] = []
    for extra, module, measure_one in FRAMEWORKS:
        if not _installed(module):
            print(f"{extra}: not installed, left out (pip install 'llmspell[{extra}]')",
                  file=sys.stderr)
            continue
        rows.extend(measure_one(quick))
    return rows


def main() -> int:
    args = parse_args(__doc__ or "")
    rows = measure(args.quick)
    if not rows:
        print("no framework installed: pip install 'llmspell[integrations]'", file=sys.stderr)
        return 1
    return report("framework adapters: an agent run with 3 tool calls (median µs per run)",
                  rows, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
