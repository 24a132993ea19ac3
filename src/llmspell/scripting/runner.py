"""Running scripts against a :class:`~llmspell.runtime.System`."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from llmspell.core.errors import ScriptError
from llmspell.scripting.globals import LuaBindings
from llmspell.scripting.lua import MIB, Capabilities, LuaEngine
from llmspell.scripting.protocol import drive, drive_blocking
from llmspell.scripting.runtime_ops import ProviderFactory

__all__ = ["ScriptHost"]


class ScriptHost:
    """A sandboxed Lua engine with the shared globals bound to ``system``.

    ``run_lua``/``run_lua_file`` run a script from sync code; ``run_lua_async``/
    ``run_file_async`` from async code (needed when the script calls tools, agents,
    workflows, state or sessions while an event loop is running). Errors are
    :class:`ScriptError` with the script name, line and traceback. :meth:`close` removes
    the hooks and subscriptions the scripts made.

    ``allow``: the :class:`Capabilities` granted; ``max_memory`` (bytes) and
    ``time_budget`` (seconds of script time per call) limit each engine; ``providers``
    builds agents' providers (see :mod:`llmspell.scripting.runtime_ops`).
    """

    def __init__(self, system: Any, *, allow: Capabilities | None = None,
                 max_memory: int = 32 * MIB, time_budget: float = 0.5,
                 providers: ProviderFactory | None = None) -> None:
        self.system = system
        self.allow = allow
        self.engine = LuaEngine(max_memory=max_memory, time_budget=time_budget, allow=allow)
        self.bindings = LuaBindings(self.engine, system, providers=providers)

    def _lua(self, source: str, name: str, time_budget: float | None) -> Any:
        fn = self.engine.compile(source, name)
        return drive(self.engine, self.engine.start(fn, (), name=name, time_budget=time_budget),
                     self.bindings.api.perform)

    def run_lua(self, source: str, *, name: str = "<script>",
                time_budget: float | None = None) -> Any:
        """Run Lua ``source``; return its first result as Python data."""
        return drive_blocking(self._lua(source, name, time_budget), name)

    async def run_lua_async(self, source: str, *, name: str = "<script>",
                            time_budget: float | None = None) -> Any:
        """:meth:`run_lua` for async code."""
        value = self._lua(source, name, time_budget)
        return await value if _awaitable(value) else value

    def run_lua_file(self, path: str | Path, *, time_budget: float | None = None) -> Any:
        """Run the Lua file at ``path`` (its name in errors is the path)."""
        return self.run_lua(_read(path), name=str(path), time_budget=time_budget)

    async def run_file_async(self, path: str | Path, *,
                             time_budget: float | None = None) -> Any:
        """Run the script file at ``path`` from async code."""
        return await self.run_lua_async(_read(path), name=str(path), time_budget=time_budget)

    def close(self) -> None:
        """Unregister the scripts' hooks and subscriptions."""
        self.bindings.close()


def _awaitable(value: Any) -> bool:
    return inspect.isawaitable(value)


def _read(path: str | Path) -> str:
    file = Path(path)
    try:
        return file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScriptError(f"cannot read the script: {exc}", script=str(file)) from exc
