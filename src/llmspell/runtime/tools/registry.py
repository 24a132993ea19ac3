"""The tool registry and the tool pipeline.

``execute(name, params)`` runs: ``ToolValidation`` (after checking the JSON Schema; hooks may
repair the parameters or reject them), then the hooked call of :mod:`llmspell.runtime.calls`
(``BeforeToolExecution``, the tool with its timeout, ``AfterToolExecution`` or
``ToolError``), publishing ``tool.<name>.started`` per attempt and ``tool.<name>.completed``
or ``tool.<name>.failed`` at the end. Results must be JSON-safe.

Every call that runs the tool (each attempt, a redirect's target, a tool a tool's own code
or a workflow ``fn`` step calls) notes the ``side_effects_for`` its parameters, as the
hooks left them, in the :class:`SideEffects` collector of the attempt it runs in (an agent
run, a workflow step, a framework agent's run), successful or not: that attempt's error
point names them, so a retry hook does not send an e-mail twice. A call that does not run
the tool (refused by validation, answered by a hook's ``Replace`` or a cache) notes none.
"""

from __future__ import annotations

import asyncio
import difflib
import inspect
import threading
import time
import types
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from typing import Any

import msgspec

from llmspell.core.errors import (
    EventTooLargeError,
    InvalidValueError,
    NotJsonSafeError,
    OperationCancelled,
    ToolError,
    ToolExecutionError,
    ToolNotFoundError,
    ToolTimeoutError,
    ToolValidationError,
)
from llmspell.core.ids import new_id
from llmspell.core.redact import get_logger
from llmspell.core.text import error_text
from llmspell.core.values import to_json_safe, to_json_safe_encoded
from llmspell.events.event import EventMetadata
from llmspell.hooks.context import ComponentId, ComponentType, HookContext
from llmspell.hooks.points import HookPoint
from llmspell.hooks.result import (
    Cancel,
    Continue,
    ForkOperation,
    Modified,
    Replace,
    cancelled_error,
)
from llmspell.runtime.calls import (
    CallOutcome,
    CallPoints,
    ResultCache,
    inherited_context,
    run_hooked,
)
from llmspell.runtime.content import mask_plain, mask_value
from llmspell.runtime.nesting import nested
from llmspell.runtime.providers.base import ToolSpec
from llmspell.runtime.tools.base import (
    DEFAULT_TOOL_TIMEOUT,
    SecurityLevel,
    Tool,
    check_tool_name,
    tool,
)
from llmspell.runtime.withheld import publish_withheld

__all__ = ["MAX_TOOL_REDIRECTS", "SideEffects", "ToolAttemptEffects", "ToolRegistry",
           "ToolRun", "current_side_effects", "note_side_effects", "redirect_loop_error"]

logger = get_logger("llmspell.tools")

_COROUTINE = types.CoroutineType
_PLAIN_RESULTS = frozenset({dict, list, str, int, float, bool, type(None)})
"""Result types that are never awaitable (a sync tool's usual results)."""
_POINTS = CallPoints(HookPoint.BEFORE_TOOL_EXECUTION, HookPoint.AFTER_TOOL_EXECUTION,
                     HookPoint.TOOL_ERROR)
MAX_TOOL_REDIRECTS = 4
"""How many tool ``Redirect`` results may follow one another for one call (the runtime's
registry and every adapter): past it the loop ends with :func:`redirect_loop_error`."""
_TOOL_ERROR = HookPoint.TOOL_ERROR
_AFTER = HookPoint.AFTER_TOOL_EXECUTION
_FAILED_ATTEMPT = "_llmspell_failed_tool_attempt"
"""Where a failed tool attempt's error carries ``(params, attempt, collector)`` from the
attempt to its ``ToolError`` data (a call keeps no state of its own for it: the hot path
allocates nothing); ``_error_data`` takes it off."""
_local = threading.local()


class SideEffects:
    """What the tool calls of one attempt of an operation (an agent run, a workflow step)
    declared they change outside the process: its error point's data names them
    (``side_effects``), so a retry hook does not repeat an e-mail that went out. What is
    noted here is noted in the attempts enclosing it too (an agent a tool of another agent
    runs). ``found`` stays None until a call declares an effect."""

    __slots__ = ("enclosing", "found")

    def __init__(self, enclosing: SideEffects | None) -> None:
        self.enclosing = enclosing
        self.found: set[str] | None = None

    def add(self, effects: Iterable[str]) -> None:
        """Note ``effects`` here and in every enclosing attempt."""
        sink: SideEffects | None = self
        while sink is not None:
            if sink.found is None:
                sink.found = {str(e) for e in effects}
            else:
                sink.found.update(str(e) for e in effects)
            sink = sink.enclosing

    def error_data(self) -> dict[str, Any]:
        """The error point's ``side_effects`` (sorted; empty when none were noted)."""
        return {"side_effects": sorted(self.found) if self.found else []}

    @classmethod
    def enter(cls) -> tuple[SideEffects, Any]:
        """A new attempt's collector, made current (inside the enclosing one); returns it
        and the token :meth:`leave` takes."""
        sink = cls(_SIDE_EFFECTS.get())
        return sink, _SIDE_EFFECTS.set(sink)

    @staticmethod
    def leave(token: Any) -> None:
        _SIDE_EFFECTS.reset(token)

    @staticmethod
    def current() -> SideEffects | None:
        """The collector of the attempt running now (None: nobody collects)."""
        return _SIDE_EFFECTS.get()


_SIDE_EFFECTS: ContextVar[SideEffects | None] = ContextVar("llmspell_side_effects",
                                                           default=None)
current_side_effects: Callable[[], SideEffects | None] = _SIDE_EFFECTS.get
"""The collector of the attempt running now, or None (one context-variable read)."""


def note_side_effects(tools: Any, name: Any, params: Any, exc: BaseException | None = None,
                      sink: SideEffects | None = None) -> None:
    """Note in ``sink`` (default: the current attempt's) the side effects a call of tool
    ``name`` with ``params`` (in registry ``tools``) declares. A call refused before it ran
    (an unknown tool, invalid parameters: ``exc``) has none. :meth:`ToolRegistry.run`
    notes every call that runs a tool itself: this is for callers outside it."""
    if sink is None:
        sink = _SIDE_EFFECTS.get()
        if sink is None:
            return
    if isinstance(exc, ToolNotFoundError | ToolValidationError) or not isinstance(name, str) \
            or name not in tools or not isinstance(params, dict):
        return
    _note(tools.get(name), params, sink)


def _note(the_tool: Tool, params: dict[str, Any], sink: SideEffects) -> None:
    try:
        effects = the_tool.side_effects_for(params)
    except Exception:  # a broken override: every effect the tool may have
        effects = the_tool.side_effects
    if effects:
        sink.add(effects)


class ToolAttemptEffects:
    """The side effects the latest attempt of one hooked tool call noted (the llmspell
    tool calls its code made: an e-mail a framework tool sent through ``system.tools``),
    for that call's ``ToolError`` data, so a retry hook does not send it again. The
    adapters' tool paths use it; :meth:`ToolRegistry.run` does the same inline."""

    __slots__ = ("attempt", "sink")

    def __init__(self) -> None:
        self.attempt = 0
        self.sink: SideEffects | None = None

    def enter(self, attempt: int, chains: Any) -> Any:
        """Open attempt ``attempt``'s collector, inside the enclosing attempt's, when
        someone may read it (``ToolError`` hooks in ``chains``, or an enclosing collector);
        the token :meth:`SideEffects.leave` takes, or None."""
        self.attempt = attempt
        if _SIDE_EFFECTS.get() is None and _TOOL_ERROR not in chains:
            self.sink = None
            return None
        self.sink, token = SideEffects.enter()
        return token

    def error_data(self, attempt: Any, own: Iterable[str] = ()) -> dict[str, Any]:
        """``ToolError``'s ``side_effects`` for failed attempt ``attempt``: ``own`` (what
        the tool itself declares) and what that attempt's calls noted (sorted)."""
        effects = {str(e) for e in own}
        if self.sink is not None and self.sink.found and self.attempt == attempt:
            effects.update(self.sink.found)
        return {"side_effects": sorted(effects)}


def redirect_loop_error(target: str, depth: int,
                        path: tuple[str, ...] = ()) -> ToolExecutionError:
    """The error that ends a loop of tool redirects ``depth`` deep at ``target`` (``path``:
    the tools the call went through, when known)."""
    through = f" ({' -> '.join((*path, target))})" if path else ""
    return ToolExecutionError(
        target, f"tool redirects went {depth} deep{through}; stopping at {target!r}",
        hint="check the hooks that return Redirect for a loop")


class ToolRun(msgspec.Struct, kw_only=True):
    """The outcome of one tool call: the result and how it came about."""

    tool: str
    result: Any
    attempts: int = 1
    cached: bool = False
    replaced: bool = False
    redirected_to: str | None = None
    forks: list[dict[str, Any]] = []
    duration_ms: float = 0.0
    correlation_id: str | None = None


class ToolRegistry:
    """The tools a system knows, and the pipeline that runs them with hooks and events."""

    def __init__(self, system: Any) -> None:
        self._system = system
        self._chains = system.registry.chains  # never replaced (see HookRegistry)
        self._tools: dict[str, Tool] = {}
        self._components: dict[str, ComponentId] = {}
        self.cache = ResultCache()
        self._lock = threading.Lock()

    def _mask(self, value: Any) -> Any:
        """What a ``tool.*`` event publishes of ``value`` (parameters, a result, an error
        message): unless the system says not to (``mask_event_data``), sensitive keys'
        values and credential-shaped text in every string masked, as recorded content is
        (:func:`~llmspell.runtime.content.mask_value`: a number is passed at once, any other
        value is encoded and searched once and copied only when it may hold a secret).
        Hooks and the caller get the value itself."""
        if not self._system.config.mask_event_data:
            return value
        # A copy: the caller and the tool keep the value itself (a stored event must not
        # change when they change it).
        return mask_value(value, copied=True)

    # -- registration ---------------------------------------------------------------------
    def register(self, item: Tool | Callable[..., Any], *, replace: bool = False) -> Tool:
        """Add a tool (a :class:`Tool`, or a function, wrapped with :func:`tool`)."""
        made = item if isinstance(item, Tool) else tool()(item)
        name = check_tool_name(made.tool_name)
        made.validator()
        with self._lock:
            if name in self._tools and not replace:
                raise InvalidValueError(
                    f"a tool named {name!r} is already registered",
                    hint="pass replace=True to replace it, or choose another name",
                )
            self._tools[name] = made
            self._components[name] = ComponentId(type=ComponentType.TOOL, name=name, id=name)
        return made

    def register_all(self, tools: Iterable[Tool | Callable[..., Any]]) -> list[Tool]:
        """Register several tools."""
        return [self.register(t) for t in tools]

    def unregister(self, name: str) -> None:
        """Remove a tool."""
        with self._lock:
            self.get(name)
            del self._tools[name]
            del self._components[name]

    def get(self, name: str) -> Tool:
        """The tool called ``name``; an unknown name lists close matches."""
        found = self._tools.get(name)
        if found is None:
            close = difflib.get_close_matches(name, list(self._tools), n=3)
            raise ToolNotFoundError(
                name, f"no tool named {name!r}",
                hint=("did you mean " + ", ".join(map(repr, close)) + "?") if close
                else f"registered tools: {', '.join(sorted(self._tools)) or 'none'}",
            )
        return found

    def names(self) -> list[str]:
        """Registered tool names, sorted."""
        return sorted(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    def specs(self, names: Iterable[str] | None = None) -> list[ToolSpec]:
        """What a model is shown for ``names`` (all tools by default)."""
        chosen = self.names() if names is None else list(names)
        return [self.get(n).spec() for n in chosen]

    # -- discovery -----------------------------------------------------------------------
    async def discover(
        self, query: str | None = None, *, security_levels: Iterable[str] | None = None
    ) -> list[ToolSpec]:
        """Find tools whose name or description contains ``query`` (all when None), with
        ``BeforeToolDiscovery`` (may change the query, cancel, or ``Replace`` the answer with
        a list of names) and ``AfterToolDiscovery`` (may ``Modified`` the ``tools`` list)."""
        system = self._system
        component = ComponentId(type=ComponentType.TOOL, name="registry", id="tool-registry")
        levels = None if security_levels is None else {SecurityLevel(s) for s in security_levels}
        outcome, ctx = await system.dispatch(HookPoint.BEFORE_TOOL_DISCOVERY, component,
                                             {"query": query})
        result = outcome.result
        went_on = type(result) is Continue  # the common case: no isinstance misses
        if not went_on and isinstance(result, Cancel):
            raise cancelled_error(HookPoint.BEFORE_TOOL_DISCOVERY, result, outcome.decided_by)
        if not went_on and isinstance(result, Replace):
            names = [str(n) for n in result.value]
        else:
            if not went_on and isinstance(result, Modified) and ctx is not None:
                query = ctx.data.get("query", query)
            needle = (query or "").lower()
            names = [
                name for name, t in sorted(self._tools.items())
                if (needle in name.lower() or needle in t.description.lower())
                and (levels is None or t.security_level in levels)
            ]
        after, after_ctx = await system.dispatch(HookPoint.AFTER_TOOL_DISCOVERY, component,
                                                 {"query": query, "tools": names},
                                                 parent=ctx)
        if type(after.result) is Continue:
            pass
        elif isinstance(after.result, Modified) and after_ctx is not None:
            names = [str(n) for n in after_ctx.data.get("tools", names)]
        elif isinstance(after.result, Replace):
            names = [str(n) for n in after.result.value]
        return [self.get(n).spec() for n in names if n in self._tools]

    # -- execution ------------------------------------------------------------------------
    async def execute(self, name: str, params: dict[str, Any] | None = None, *,
                      parent: HookContext | None = None,
                      correlation_id: str | None = None) -> Any:
        """Run tool ``name`` through the pipeline and return its result."""
        return (await self.run(name, params, parent=parent,
                               correlation_id=correlation_id)).result

    def execute_sync(self, name: str, params: dict[str, Any] | None = None) -> Any:
        """:meth:`execute` for sync code (not inside a running event loop): on this thread's
        own loop. From a sync tool declared ``blocking=True`` (it runs on a worker thread)
        the call inherits the running call's metadata, the user, as an awaited one does.
        Inside a running event loop (a plain ``def`` tool runs on the loop's thread) it
        raises :class:`~llmspell.errors.ToolExecutionError`: that loop cannot be driven from
        here."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise ToolExecutionError(
                name, f"tools.execute_sync({name!r}) was called inside a running event loop, "
                      "which it cannot drive from there",
                hint="await system.tools.execute(...) instead; a sync tool that calls "
                     "execute_sync must be declared @tool(blocking=True) so it runs on a "
                     "worker thread")
        loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
        if loop is None or loop.is_closed():
            loop = _local.loop = asyncio.new_event_loop()
        return loop.run_until_complete(self.execute(name, params))

    async def run(self, name: str, params: dict[str, Any] | None = None, *,
                  parent: HookContext | None = None, correlation_id: str | None = None,
                  _depth: int = 0) -> ToolRun:
        """Run tool ``name`` and report how (see :class:`ToolRun`). Given neither
        ``parent`` nor ``correlation_id``, a call started inside a hooked operation (a
        tool a tool runs) inherits its metadata (see ``inherited_context``)."""
        if parent is None and correlation_id is None:
            parent = inherited_context()
        if _depth > MAX_TOOL_REDIRECTS:
            raise redirect_loop_error(name, _depth)
        the_tool = self.get(name)
        component = self._components[name]
        params = dict(params or {})
        system = self._system
        correlation = (parent.correlation_id if parent is not None
                       else correlation_id or new_id())
        params = await self._validate(the_tool, component, params, parent, correlation)
        bus = system.bus
        meta = EventMetadata(correlation_id=correlation, source="llmspell.tools")
        started = time.perf_counter()
        base = {"tool": name}
        # The latest attempt's result and its JSON encoding (made by the copy the caller
        # gets), for the completed event's copy of it, when no after hook may have had it.
        encoded: tuple[Any, bytes] | None = None

        async def invoke(call_params: dict[str, Any], attempt: int) -> Any:
            nonlocal encoded
            event_type = f"tool.{name}.started"
            data = {"params": self._mask(call_params), "attempt": attempt}
            try:
                bus.publish(event_type, data, meta)
            except (EventTooLargeError, NotJsonSafeError) as exc:  # the call goes on
                publish_withheld(bus, exc, event_type, data, meta)
            # The attempt opens a collector of its own (the calls the tool's code makes
            # note their effects there, for this call's ToolError data, and in the
            # enclosing attempts') only when someone may read it: an enclosing attempt
            # collects, or ToolError has hooks.
            if _SIDE_EFFECTS.get() is None and _TOOL_ERROR not in self._chains:
                value, raw = await self._invoke(the_tool, call_params)
                encoded = None if raw is None or _AFTER in self._chains else (value, raw)
                return value
            own, token = SideEffects.enter()  # inside the enclosing attempt's, if any
            try:
                value, raw = await self._invoke(the_tool, call_params)
                encoded = None if raw is None or _AFTER in self._chains else (value, raw)
                return value
            except OperationCancelled:
                raise
            except Exception as exc:
                if _TOOL_ERROR in self._chains:  # handed to _error_data on the error
                    exc.__dict__[_FAILED_ATTEMPT] = (call_params, attempt, own)
                raise
            finally:
                # Succeeded or not, the tool ran with these parameters (as the hooks left
                # them) and may have changed the world: the attempt's error point, and
                # those of the attempts enclosing it, say so.
                _note(the_tool, call_params, own)
                SideEffects.leave(token)

        async def redirect(target: str, call_params: dict[str, Any],
                           ctx: HookContext | None) -> Any:
            return (await self.run(target, call_params, parent=ctx, correlation_id=correlation,
                                   _depth=_depth + 1)).result

        async def fork(op: ForkOperation, ctx: HookContext | None) -> Any:
            return await system.run_operation(op, ctx)

        try:
            with nested("tool", name):
                outcome: CallOutcome = await run_hooked(
                    system, points=_POINTS, component=component, base=base, params=params,
                    invoke=invoke, redirect=redirect, fork=fork, cache=self.cache,
                    parent=parent, correlation_id=correlation, error_data=self._error_data,
                )
        except BaseException as exc:
            # A cancelled call (CancelledError is no Exception) ends its events too.
            event_type = f"tool.{name}.failed"
            data = {"error": self._mask(error_text(exc) or _stopped(exc)),
                    "error_type": type(exc).__name__,
                    "duration_ms": (time.perf_counter() - started) * 1000}
            try:
                try:
                    bus.publish(event_type, data, meta)
                except (EventTooLargeError, NotJsonSafeError) as refused:
                    publish_withheld(bus, refused, event_type, data, meta)
            except Exception as publish_error:
                if isinstance(exc, Exception):
                    raise
                # The cancellation goes on: what is lost is the event, said here.
                logger.warning("the %s event was not published: %s", event_type,
                               publish_error)
            raise
        duration = (time.perf_counter() - started) * 1000
        event_type = f"tool.{name}.completed"
        result = outcome.result
        if encoded is not None and encoded[0] is result and _AFTER not in self._chains \
                and self._system.config.mask_event_data:
            # The tool's own answer, which no hook had (none at AfterToolExecution, then
            # or now): its copy for the event is decoded from the encoding the caller's
            # copy was made from, which is plain JSON (see _invoke).
            shown = mask_plain(result, encoded[1])
        else:
            shown = self._mask(result)
        data = {"result": shown, "attempts": outcome.attempts,
                "cached": outcome.cached, "duration_ms": duration}
        try:
            bus.publish(event_type, data, meta)
        except (EventTooLargeError, NotJsonSafeError) as exc:
            # The tool has its result: the event goes out with the result withheld or made
            # safe (the result returned is the tool's own).
            publish_withheld(bus, exc, event_type, data, meta)
        return ToolRun(tool=name, result=outcome.result, attempts=outcome.attempts,
                       cached=outcome.cached, replaced=outcome.replaced,
                       redirected_to=outcome.redirected_to, forks=outcome.forks,
                       duration_ms=duration, correlation_id=correlation)

    def _error_data(self, exc: BaseException, data: dict[str, Any]) -> dict[str, Any]:
        """What the failed attempt (``data["params"]``, as a before hook left them) may
        already have changed outside the process: the tool's own declared effects and
        those of the tool calls its code made in that attempt (an e-mail it sent through
        ``system.tools``), which the attempt handed over on ``exc`` (see ``run``; an
        attempt a replay served, or an error passed on from a nested call, is not this
        attempt's: its parameters or attempt number differ). A retry hook must not
        repeat a payment or an e-mail unless told it may."""
        the_tool = self._tools[data["tool"]]
        effects = {str(e) for e in the_tool.side_effects_for(data["params"])}
        failed = exc.__dict__.pop(_FAILED_ATTEMPT, None)
        if failed is not None and failed[0] is data["params"] \
                and failed[1] == data["attempt"] and failed[2].found:
            effects.update(failed[2].found)
        return {"side_effects": sorted(effects)}

    async def _validate(self, the_tool: Tool, component: ComponentId, params: dict[str, Any],
                        parent: HookContext | None, correlation: str) -> dict[str, Any]:
        if HookPoint.TOOL_VALIDATION not in self._system.registry.chains:
            the_tool.validate(params)
            return params
        error: ToolValidationError | None = None
        try:
            the_tool.validate(params)
        except ToolValidationError as exc:
            error = exc
        outcome, ctx = await self._system.dispatch(
            HookPoint.TOOL_VALIDATION, component,
            {"tool": the_tool.tool_name, "params": params, "valid": error is None,
             "error": None if error is None else error.message},
            parent=parent, correlation_id=correlation,
        )
        result = outcome.result
        if type(result) is Continue:  # every hook went on: the common case, no tests
            pass
        elif isinstance(result, Cancel):
            raise cancelled_error(HookPoint.TOOL_VALIDATION, result,
                                  outcome.decided_by)
        elif isinstance(result, Modified) and ctx is not None:
            params = dict(ctx.data.get("params", params))
            the_tool.validate(params)  # a repair must produce valid parameters
            return params
        if error is not None:
            raise error
        return params

    async def _invoke(self, the_tool: Tool,
                      params: dict[str, Any]) -> tuple[Any, bytes | None]:
        """Run the tool once, with its timeout: its result made JSON-safe (a copy: the tool
        keeps its own value), and that copy's JSON encoding when the copy was made from one
        (a plain dict or list), else None (see ``to_json_safe_encoded``)."""
        name = the_tool.tool_name
        timeout = the_tool.timeout
        if timeout == DEFAULT_TOOL_TIMEOUT:  # the tool set none of its own
            timeout = self._system.config.tool_timeout
        timer: asyncio.Timeout | None = None
        try:
            if getattr(the_tool, "blocking", False):
                call = asyncio.to_thread(the_tool.execute, params)
                if timeout:
                    async with asyncio.timeout(timeout) as timer:
                        value = await call
                else:
                    value = await call
            else:
                value = the_tool.execute(params)
                kind = type(value)
                # (a plain result, the sync tool's, is told apart by type: the isawaitable
                # test asks the Awaitable ABC, which costs more than the rest of this)
                if kind is _COROUTINE or (kind not in _PLAIN_RESULTS
                                          and inspect.isawaitable(value)):
                    if timeout is not None:
                        async with asyncio.timeout(timeout) as timer:
                            value = await value
                    else:
                        value = await value
        except TimeoutError as exc:
            if timer is not None and timer.expired():
                raise ToolTimeoutError(
                    name, f"tool {name!r} timed out after {timeout:g} s",
                    hint="raise the tool's timeout (or SystemConfig.tool_timeout, for tools "
                         "that set none) or make it faster") from None
            # The tool's own TimeoutError (a request it made timed out): a failure like any
            # other, not the pipeline's timeout.
            raise ToolExecutionError(name, f"tool {name!r} failed: TimeoutError: {exc}"
                                     ) from exc
        except (ToolError, OperationCancelled):
            raise
        except Exception as exc:
            raise ToolExecutionError(name, f"tool {name!r} failed: {type(exc).__name__}: {exc}"
                                     ) from exc
        try:
            kind = type(value)
            if kind is dict or kind is list:
                return to_json_safe_encoded(value, "result")
            return to_json_safe(value, "result"), None  # (a scalar: no encoding to reuse)
        except NotJsonSafeError as exc:
            raise ToolExecutionError(
                name, f"tool {name!r} returned a value that is not JSON-safe: {exc.message}",
                hint="return dicts, lists, strings, numbers, booleans or None",
            ) from None


def _stopped(exc: BaseException) -> str:
    """What a failed event says of an error without a message (a bare cancellation)."""
    return "cancelled" if isinstance(exc, asyncio.CancelledError) else type(exc).__name__
