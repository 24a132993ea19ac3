"""Guide step 1: check the installation.

Prints the installed version, runs one hook through the hook engine, runs one line of Lua
and one of JavaScript in the embedded engines, and lists which optional extras are present.

Run: ``python examples/guide/01_check_install.py``
"""

from __future__ import annotations

import importlib.util

import llmspell
from llmspell.hooks import (
    Cancel,
    ComponentId,
    ComponentType,
    HookContext,
    HookExecutor,
    HookPoint,
    HookRegistry,
)
from llmspell.runtime import System, SystemConfig
from llmspell.scripting import ScriptHost

EXTRAS = {  # extra -> a module it installs
    "prometheus": "prometheus_client",
    "otel": "opentelemetry.sdk",
    "prices": "genai_prices",
    "tools": "jinja2",
    "media": "PIL",
    "docs": "mkdocs",
}


def main() -> None:
    print(f"llmspell {llmspell.__version__}")

    registry = HookRegistry()
    registry.register(HookPoint.BEFORE_TOOL_EXECUTION, lambda ctx: Cancel("works"), name="probe")
    ctx = HookContext(point=HookPoint.BEFORE_TOOL_EXECUTION,
                      component=ComponentId(type=ComponentType.TOOL, name="demo"))
    outcome = HookExecutor(registry).execute_sync(ctx)
    print(f"hook engine: {outcome.kind} by {outcome.decided_by}")
    assert outcome.kind == "cancel"

    host = ScriptHost(System(SystemConfig(store="none")))
    try:
        lua, js = host.run_lua("return 6 * 7"), host.run_js("return 6 * 7")
    finally:
        host.close()
    print(f"Lua says {lua}, JavaScript says {js}")
    assert lua == 42 and js == 42

    for extra, module in EXTRAS.items():
        present = importlib.util.find_spec(module.split(".")[0]) is not None
        hint = "installed" if present else f"not installed: pip install 'llmspell[{extra}]'"
        print(f"extra {extra:<10} {hint}")

if __name__ == "__main__":
    main()
