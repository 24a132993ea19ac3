"""Running scripts against a :class:`~llmspell.runtime.System`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmspell.core.errors import ScriptError
from llmspell.scripting.globals import LuaBindings
from llmspell.scripting.lua import MIB, Capabilities, LuaEngine

__all__ = ["ScriptHost"]


class ScriptHost:
    """One sandboxed Lua engine with the shared globals bound to ``system``.

    ``run_lua``/``run_lua_file`` run a script (errors are :class:`ScriptError` with the
    script name, line and traceback); :meth:`close` removes the hooks and subscriptions
    the scripts made.
    """

    def __init__(self, system: Any, *, allow: Capabilities | None = None,
                 max_memory: int = 32 * MIB, time_budget: float = 0.5) -> None:
        self.system = system
        self.engine = LuaEngine(max_memory=max_memory, time_budget=time_budget, allow=allow)
        self.bindings = LuaBindings(self.engine, system)

    def run_lua(self, source: str, *, name: str = "<script>",
                time_budget: float | None = None) -> Any:
        """Run Lua ``source``; return its first result as Python data."""
        return self.engine.run(source, name, time_budget=time_budget)

    def run_lua_file(self, path: str | Path, *, time_budget: float | None = None) -> Any:
        """Run the Lua file at ``path`` (its name in errors is the path)."""
        file = Path(path)
        try:
            source = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ScriptError(f"cannot read the script: {exc}", script=str(file)) from exc
        return self.engine.run(source, str(file), time_budget=time_budget)

    def close(self) -> None:
        """Unregister the scripts' hooks and subscriptions."""
        self.bindings.close()
