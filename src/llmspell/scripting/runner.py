"""Running scripts against a :class:`~llmspell.runtime.System`."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from llmspell.core.errors import ReplayError, ScriptError
from llmspell.core.loops import settle
from llmspell.runtime.runs.manager import REPLAYERS
from llmspell.runtime.runs.scope import current_run
from llmspell.scripting.globals import LuaBindings
from llmspell.scripting.js import JsEngine
from llmspell.scripting.js_globals import JsBindings
from llmspell.scripting.lua import MIB, Capabilities, LuaEngine
from llmspell.scripting.protocol import drive, drive_blocking
from llmspell.scripting.runtime_ops import ProviderFactory

__all__ = ["DEFAULT_MAX_MEMORY", "DEFAULT_TIME_BUDGET", "LANGUAGES", "ScriptHost",
           "capabilities_from", "language_of"]

DEFAULT_TIME_BUDGET = 0.5
"""Seconds of script time per call when neither the caller nor the config says."""
DEFAULT_MAX_MEMORY = 32 * MIB
"""Bytes per engine when neither the caller nor the config says."""


def capabilities_from(settings: Any, extra: Capabilities | None = None) -> Capabilities:
    """The :class:`Capabilities` a ``ScriptingConfig`` grants, joined with ``extra``."""
    base = Capabilities(
        allow_env=bool(getattr(settings, "allow_env", False)),
        allow_read=tuple(getattr(settings, "allow_read", ())),
        allow_write=tuple(getattr(settings, "allow_write", ())),
        allow_exec=bool(getattr(settings, "allow_exec", False)),
        allow_net=bool(getattr(settings, "allow_net", False)),
        allow_all=bool(getattr(settings, "allow_all", False)))
    if extra is None:
        return base
    return Capabilities(
        allow_env=base.allow_env or extra.allow_env,
        allow_read=tuple(dict.fromkeys(base.allow_read + extra.allow_read)),
        allow_write=tuple(dict.fromkeys(base.allow_write + extra.allow_write)),
        allow_exec=base.allow_exec or extra.allow_exec,
        allow_net=base.allow_net or extra.allow_net,
        allow_all=base.allow_all or extra.allow_all)

LANGUAGES = {".lua": "lua", ".js": "javascript", ".mjs": "javascript"}
"""Script file extensions and their languages."""


def language_of(path: str | Path) -> str:
    """The language of a script file, from its extension."""
    suffix = Path(path).suffix.lower()
    if suffix not in LANGUAGES:
        raise ScriptError("cannot tell the language from the file's extension",
                          script=str(path),
                          hint="name Lua scripts *.lua and JavaScript *.js (or *.mjs)")
    return LANGUAGES[suffix]


class ScriptHost:
    """Sandboxed Lua and JavaScript engines with the shared globals bound to ``system``.

    ``run_lua``/``run_js``/``run_file`` run a script from sync code; the ``*_async`` forms
    from async code (needed when the script uses tools, agents, workflows, state, sessions
    or waits for events while an event loop is running). A script's result is its return
    value as Python data; errors are :class:`ScriptError` with the script name, line and
    traceback. :meth:`close` removes the hooks and subscriptions the scripts made.

    ``allow``: the :class:`Capabilities` granted; ``max_memory`` (bytes) and
    ``time_budget`` (seconds of script time per call) limit each engine (each defaults to
    the system's ``config.scripting``, then 0.5 s and 32 MiB); ``providers``
    builds agents' providers (see :mod:`llmspell.scripting.runtime_ops`). The JavaScript
    engine is created on first use.
    """

    def __init__(self, system: Any, *, allow: Capabilities | None = None,
                 max_memory: int | None = None, time_budget: float | None = None,
                 providers: ProviderFactory | None = None) -> None:
        settings = getattr(getattr(system, "config", None), "scripting", None)
        if allow is None:
            allow = capabilities_from(settings)
        if time_budget is None:
            time_budget = getattr(settings, "time_budget", None) or DEFAULT_TIME_BUDGET
        if max_memory is None:
            megabytes = getattr(settings, "max_memory_mb", None)
            max_memory = megabytes * MIB if megabytes else DEFAULT_MAX_MEMORY
        self.system = system
        self.allow = allow
        self.max_memory = max_memory
        self.time_budget = time_budget
        self.providers = providers
        self.engine = LuaEngine(max_memory=max_memory, time_budget=time_budget, allow=allow)
        self.bindings = LuaBindings(self.engine, system, providers=providers)
        self._js: JsBindings | None = None

    @property
    def js(self) -> JsBindings:
        """The JavaScript engine's bindings (the engine is ``host.js.engine``)."""
        if self._js is None:
            engine = JsEngine(max_memory=self.max_memory, time_budget=self.time_budget,
                              allow=self.allow)
            self._js = JsBindings(engine, self.system, providers=self.providers)
        return self._js

    def _start(self, language: str, source: str, name: str, budget: float | None,
               args: tuple[Any, ...] = ()) -> Any:
        if language == "lua":
            fn = self.engine.compile(source, name)
            return drive(self.engine,
                         self.engine.start(fn, args, name=name, time_budget=budget),
                         self.bindings.api.perform)
        js = self.js
        ref = js.engine.compile(source, name)
        try:
            value = drive(js.engine, js.engine.start(ref, args, name=name, time_budget=budget),
                          js.api.perform)
        except BaseException:
            js.engine.release(ref)
            raise
        if inspect.isawaitable(value):
            return _release_after(value, js.engine, ref)
        js.engine.release(ref)
        return value

    # -- sync ---------------------------------------------------------------------------
    def run_lua(self, source: str, *, name: str = "<script>",
                time_budget: float | None = None) -> Any:
        """Run Lua ``source``; return its first result as Python data."""
        return drive_blocking(self._start("lua", source, name, time_budget), name)

    def run_js(self, source: str, *, name: str = "<script>",
               time_budget: float | None = None) -> Any:
        """Run JavaScript ``source`` (as the body of an async function: top-level ``await``
        works and ``return`` gives the result)."""
        return drive_blocking(self._start("javascript", source, name, time_budget), name)

    def run_file(self, path: str | Path, *, args: tuple[Any, ...] = (),
                 time_budget: float | None = None) -> Any:
        """Run a ``.lua`` or ``.js`` file (its name in errors is the path). ``args`` (data)
        are the script's arguments: ``...`` in Lua, ``arguments`` in JavaScript."""
        language = language_of(path)
        return drive_blocking(
            self._start(language, _read(path), str(path), time_budget, tuple(args)), str(path))

    def run_lua_file(self, path: str | Path, *, time_budget: float | None = None) -> Any:
        """Run the Lua file at ``path``."""
        return self.run_lua(_read(path), name=str(path), time_budget=time_budget)

    # -- async ----------------------------------------------------------------------------
    async def run_lua_async(self, source: str, *, name: str = "<script>",
                            time_budget: float | None = None) -> Any:
        """:meth:`run_lua` for async code. Outside a run it opens one (kind ``script``)."""
        return await self.run_source_async("lua", source, name=name, time_budget=time_budget)

    async def run_js_async(self, source: str, *, name: str = "<script>",
                           time_budget: float | None = None) -> Any:
        """:meth:`run_js` for async code. Outside a run it opens one (kind ``script``)."""
        return await self.run_source_async("javascript", source, name=name,
                                           time_budget=time_budget)

    async def run_file_async(self, path: str | Path, *, args: tuple[Any, ...] = (),
                             time_budget: float | None = None) -> Any:
        """:meth:`run_file` for async code. Outside a run it opens one (kind ``script``)."""
        return await self.run_source_async(language_of(path), _read(path), name=str(path),
                                           args=tuple(args), time_budget=time_budget)

    async def run_source_async(self, language: str, source: str, *,
                               name: str = "<script>", args: tuple[Any, ...] = (),
                               time_budget: float | None = None) -> Any:
        """Run ``source`` in ``language`` (``lua`` or ``javascript``) from async code.

        Outside a run this opens a run of kind ``script`` named ``name`` whose recording
        keeps the source, the arguments and the granted capabilities, so
        ``system.runs.replay`` can run the script again (see docs/runs.md)."""
        if language not in ("lua", "javascript"):
            raise ScriptError(f"unknown script language {language!r}", script=name,
                              hint="use 'lua' or 'javascript'")
        runs = getattr(self.system, "runs", None)
        if runs is None or current_run() is not None:
            return await settle(self._start(language, source, name, time_budget, args))
        target = {"language": language, "source": source, "name": name,
                  "args": list(args), "capabilities": _capabilities_dict(self.allow),
                  "time_budget": time_budget or self.time_budget,
                  "max_memory": self.max_memory}
        async with runs.start("script", name, list(args), target=target) as run:
            run.output = await settle(self._start(language, source, name, time_budget, args))
            return run.output

    def pump(self) -> int:
        """Run event callbacks queued from other threads (both engines); how many ran."""
        ran = self.engine.pump()
        if self._js is not None:
            ran += self._js.engine.pump()
        return ran

    def close(self) -> None:
        """Unregister the scripts' hooks and subscriptions (both languages)."""
        self.bindings.close()
        if self._js is not None:
            self._js.close()


async def _release_after(value: Any, engine: JsEngine, ref: Any) -> Any:
    try:
        return await value
    finally:
        engine.release(ref)


def _capabilities_dict(allow: Capabilities) -> dict[str, Any]:
    return {field.name: (list(value) if isinstance(value, tuple) else value)
            for field in dataclasses.fields(allow)
            for value in (getattr(allow, field.name),)}


def _read(path: str | Path) -> str:
    """The script's text: UTF-8, a leading byte-order mark dropped."""
    file = Path(path)
    try:
        return file.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise ScriptError(f"cannot read the script: {exc}", script=str(file)) from exc
    except UnicodeDecodeError as exc:
        raise ScriptError(f"the script is not UTF-8 text (byte {exc.object[exc.start]:#04x} "
                          f"at offset {exc.start})", script=str(file),
                          hint="save the script as UTF-8") from None


def _replay_script(system: Any, target: dict[str, Any], allow_side_effects: bool
                   ) -> Callable[[Any], Awaitable[Any]]:
    """How ``system.runs.replay`` runs a recorded script again: the recorded source and
    arguments, time budget and memory limit, with the recorded capabilities minus
    writing, running programs and the network (a replay does not repeat side effects
    unless ``allow_side_effects``)."""
    source, language = target.get("source"), target.get("language")
    if not isinstance(source, str) or language not in ("lua", "javascript"):
        raise ReplayError("the script run's recording does not hold its source",
                          hint="record the run again with this llmspell")
    granted = target.get("capabilities") or {}
    names = {field.name for field in dataclasses.fields(Capabilities)}
    caps: dict[str, Any] = {key: (tuple(value) if isinstance(value, list) else value)
            for key, value in granted.items() if key in names}
    if not allow_side_effects:
        caps = {key: value for key, value in caps.items()
                if key in ("allow_env", "allow_read")}
    name = str(target.get("name") or "<script>")
    args = tuple(target.get("args") or ())

    budget = target.get("time_budget")
    memory = target.get("max_memory")

    async def run_script(_input: Any) -> Any:
        host = ScriptHost(system, allow=Capabilities(**caps),
                          time_budget=float(budget) if isinstance(budget, int | float)
                          else None,
                          max_memory=int(memory) if isinstance(memory, int) else None)
        try:
            return await host.run_source_async(language, source, name=name, args=args)
        finally:
            host.close()
    return run_script


REPLAYERS["script"] = _replay_script
