"""The engine protocol every script language implements, and the driver that runs it.

A call into a script either finishes or stops at *host requests*: operations only the host
can do, often asynchronously (run a tool, read state, wait for an event). The engine hands
the requests out as a :class:`Pending`; the driver performs them and resumes the engine
with the replies, until the call finishes. Lua suspends the call in a coroutine; JavaScript
parks it on promises and an outbox. The driver is the same for both:

* :func:`drive` runs a call synchronously as long as every operation it needs completes
  synchronously, and otherwise returns an awaitable for the rest (so a hook that needs no
  host I/O stays a cheap synchronous hook);
* :func:`drive_blocking` finishes a call from sync code (on a private loop when there is no
  running loop; inside a running loop an asynchronous operation is an error that says to
  use the async entry points).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from llmspell.core.errors import LlmspellError, ScriptError
from llmspell.core.loops import run_blocking

__all__ = [
    "CALLBACK_OPS",
    "Finished",
    "Operation",
    "Outcome",
    "Pending",
    "Reply",
    "Request",
    "ScriptEngine",
    "ScriptFunction",
    "drive",
    "drive_blocking",
]


class Request(msgspec.Struct, frozen=True):
    """One host operation a script asked for: ``op`` (``"tool.invoke"``) with ``args``
    (Python data; script functions arrive as :class:`ScriptFunction`). A frozen struct:
    one is built per host request, at a fraction of a frozen dataclass's cost."""

    id: int
    op: str
    args: tuple[Any, ...]


class Reply(msgspec.Struct, frozen=True):
    """The answer to a :class:`Request`: ``ok`` with ``value``, or an error message."""

    id: int
    ok: bool
    value: Any = None
    error_type: str = ""


@dataclass
class Finished:
    """The call returned ``value`` (Python data)."""

    value: Any


@dataclass
class Pending:
    """The call waits for ``requests``; ``state`` is the engine's own continuation."""

    requests: list[Request]
    state: Any = field(default=None, repr=False)


CALLBACK_OPS = frozenset({"hook.register", "event.subscribe", "workflow.create"})
"""The host operations whose arguments may carry script functions (hook bodies, event
callbacks, custom workflow steps). A function anywhere else is refused: the host would
keep it for nothing."""

Outcome = Finished | Pending
Operation = Callable[[str, tuple[Any, ...]], Any]
"""Performs one host operation: returns its value, or an awaitable of it."""


class ScriptEngine(Protocol):
    """What the bindings and the driver need from a language engine."""

    language: str
    time_budget: float

    def start(self, fn: Any, args: tuple[Any, ...], *, name: str | None = None,
              time_budget: float | None = None) -> Outcome:
        """Call the script function ``fn`` with ``args`` (Python data)."""
        ...

    def start_hook(self, fn: Any, ctx: Any, *, name: str | None = None,
                   time_budget: float | None = None) -> Outcome:
        """:meth:`start` with the script's view of the hook context ``ctx``
        (:func:`~llmspell.scripting.views.hook_context_view`) as the one argument."""
        ...

    def start_event(self, fn: Any, event: Any, *, name: str | None = None,
                    time_budget: float | None = None) -> Outcome:
        """:meth:`start` with the script's view of ``event``
        (:func:`~llmspell.scripting.views.event_view`) as the one argument."""
        ...

    def resume(self, pending: Pending, replies: list[Reply]) -> Outcome:
        """Continue a call that stopped at ``pending`` with the ``replies``."""
        ...

    def release(self, fn: Any) -> None:
        """Forget a function the host kept and will not call again."""
        ...

    def time_left(self, pending: Pending) -> float:
        """Seconds of script time the call that stopped at ``pending`` has left."""
        ...

    def charge(self, pending: Pending, seconds: float) -> None:
        """Spend ``seconds`` of the budget of the call that stopped at ``pending`` (script
        time its callbacks used while it waited for the host)."""
        ...


class _Allowance:
    """The script time left to the call whose host requests are being performed, shared
    by the script callbacks those requests run (a hook, an event callback, a workflow step
    of the same run): without it each callback would start a fresh budget, and a script
    could turn one budget into any number by publishing events or running workflows.
    ``parent``: the allowance of the call that itself runs as such a callback."""

    __slots__ = ("depth", "left", "parent")

    def __init__(self, left: float, parent: _Allowance | None) -> None:
        self.left = left
        self.parent = parent
        self.depth: int = 1 if parent is None else parent.depth + 1

    def spend(self, seconds: float) -> None:
        allowance: _Allowance | None = self
        while allowance is not None:
            allowance.left -= seconds
            allowance = allowance.parent


_ALLOWANCE: ContextVar[_Allowance | None] = ContextVar("llmspell_script_allowance",
                                                       default=None)
"""Set while the driver performs a call's host requests (see :class:`_Allowance`)."""

MAX_CALLBACK_DEPTH = 32
"""How deeply script callbacks may run inside each other's host requests (an event callback
that publishes the event it listens to would otherwise recurse until Python's stack ran
out)."""

_LEAST = 0.001
"""The budget a callback starts with when its run's allowance is spent: it stops at once
with the engine's own timeout error."""


class ScriptFunction:
    """A script function held by the host (a hook body, a callback, a custom step).

    Calling it runs the function through :func:`drive`: the result is the function's
    return value, or an awaitable of it when the function needed asynchronous host
    operations. ``time_budget``: the script time each call may use (None: the engine's)."""

    __slots__ = ("engine", "name", "perform", "ref", "time_budget")

    def __init__(self, engine: ScriptEngine, ref: Any, perform: Operation, name: str) -> None:
        self.engine = engine
        self.ref = ref
        self.perform = perform
        self.name = name
        self.time_budget: float | None = None

    def __call__(self, *args: Any) -> Any:
        return self._run(self.engine.start, args)

    def call_hook(self, ctx: Any) -> Any:
        """Call with the script's view of the hook context ``ctx`` (as ``self(view)``)."""
        return self._run(self.engine.start_hook, ctx)

    def call_event(self, event: Any) -> Any:
        """Call with the script's view of ``event`` (as ``self(view)``)."""
        return self._run(self.engine.start_event, event)

    def _run(self, start: Callable[..., Outcome], value: Any) -> Any:
        """``start(ref, value, name=..., time_budget=...)`` driven to its end."""
        outer = _ALLOWANCE.get()
        if outer is None:  # called by the host itself: the function's own budget
            return drive(self.engine, start(self.ref, value, name=self.name,
                                            time_budget=self.time_budget), self.perform)
        # called back while a script call waits for the host: it spends from that call
        if outer.depth >= MAX_CALLBACK_DEPTH:
            raise ScriptError(
                f"{self.name}: script callbacks nested more than {MAX_CALLBACK_DEPTH} deep "
                "(each called back from a host call of the one before)",
                hint="look for a callback that triggers itself, such as an event callback "
                     "that publishes the event it listens to")
        own = self.engine.time_budget if self.time_budget is None else self.time_budget
        return drive(self.engine, _slice(
            outer, lambda budget: start(self.ref, value, name=self.name, time_budget=budget),
            max(min(own, outer.left), _LEAST)), self.perform, outer)

    def __repr__(self) -> str:
        return f"ScriptFunction({self.engine.language}, {self.name!r})"


def _error_reply(request: Request, exc: Exception) -> Reply:
    return failed_reply(request.id, exc)


def failed_reply(request_id: int, exc: Exception) -> Reply:
    """The error reply to request ``request_id`` that ``exc`` makes: what the script's
    call raises (its text, its type's name)."""
    text = str(exc) if isinstance(exc, LlmspellError) else f"{type(exc).__name__}: {exc}"
    return Reply(request_id, False, text, type(exc).__name__)


def _slice(outer: _Allowance, run: Callable[[Any], Outcome], arg: Any) -> Outcome:
    """``run(arg)``, one slice of a callback's script time, spent from ``outer``. No
    allowance is current during it: a callback that runs inside the slice (a Lua script's
    synchronous publish) spends this slice's time already."""
    token = _ALLOWANCE.set(None)
    began = time.monotonic()
    try:
        return run(arg)
    finally:
        outer.spend(time.monotonic() - began)
        _ALLOWANCE.reset(token)


def _performing(engine: ScriptEngine, outcome: Pending,
                outer: _Allowance | None) -> _Allowance:
    """The allowance of a call's callbacks while its requests at ``outcome`` run."""
    left = engine.time_left(outcome)
    if outer is not None:
        left = min(left, outer.left)
    return _Allowance(left, outer)


def _charged(engine: ScriptEngine, outcome: Pending, allowance: _Allowance) -> None:
    """Spend from the waiting call what its callbacks used of ``allowance``."""
    used = engine.time_left(outcome) - allowance.left
    if used > 0:
        engine.charge(outcome, used)


def _resume(engine: ScriptEngine, outcome: Pending, replies: list[Reply],
            outer: _Allowance | None) -> Outcome:
    if outer is None:
        return engine.resume(outcome, replies)
    return _slice(outer, lambda r: engine.resume(outcome, r), replies)


def drive(engine: ScriptEngine, outcome: Outcome, perform: Operation,
          outer: _Allowance | None = None) -> Any:
    """Run ``outcome`` to the end: the value, or an awaitable when an operation is async.
    ``outer``: the allowance of the call this one is a callback of (its slices spend from
    it)."""
    while isinstance(outcome, Pending):
        replies: list[Reply] = []
        allowance = _performing(engine, outcome, outer)
        token = _ALLOWANCE.set(allowance)
        try:
            for index, request in enumerate(outcome.requests):
                try:
                    value = perform(request.op, request.args)
                except Exception as exc:
                    replies.append(_error_reply(request, exc))
                    continue
                if inspect.isawaitable(value):
                    return _finish(engine, outcome, replies, index, value, perform, outer,
                                   allowance)
                replies.append(Reply(request.id, True, value))
        finally:
            _ALLOWANCE.reset(token)
        _charged(engine, outcome, allowance)
        outcome = _resume(engine, outcome, replies, outer)
    return outcome.value


async def _finish(engine: ScriptEngine, outcome: Pending, replies: list[Reply], index: int,
                  first: Awaitable[Any], perform: Operation, outer: _Allowance | None,
                  allowance: _Allowance) -> Any:
    current: Outcome = outcome
    awaiting: Awaitable[Any] | None = first
    while isinstance(current, Pending):
        token = _ALLOWANCE.set(allowance)
        try:
            for request in current.requests[index:]:
                try:
                    if awaiting is not None:
                        first_op, awaiting = awaiting, None
                        value = await first_op
                    else:
                        value = perform(request.op, request.args)
                        if inspect.isawaitable(value):
                            value = await value
                except Exception as exc:
                    replies.append(_error_reply(request, exc))
                    continue
                replies.append(Reply(request.id, True, value))
        finally:
            _ALLOWANCE.reset(token)
        _charged(engine, current, allowance)
        current = _resume(engine, current, replies, outer)
        replies, index = [], 0
        if isinstance(current, Pending):
            allowance = _performing(engine, current, outer)
    return current.value


def drive_blocking(value: Any, what: str) -> Any:
    """The result of :func:`drive` for sync callers: awaits an awaitable on this thread's
    private event loop; inside a running loop that is impossible and raises
    :class:`ScriptError`."""
    if not inspect.isawaitable(value):
        return value
    return run_blocking(value, lambda: ScriptError(
        f"{what} needs an asynchronous host operation (a tool, an agent, a workflow, state, "
        "sessions or Event.receive) but was run synchronously inside a running event loop",
        hint="use the async entry points: `await host.run_lua_async(...)`, "
             "`run_js_async(...)` or `run_file_async(...)`",
    ))
