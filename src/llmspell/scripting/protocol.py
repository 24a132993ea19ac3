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
from collections.abc import Awaitable, Callable
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
        return drive(self.engine, self.engine.start(self.ref, args, name=self.name,
                                                    time_budget=self.time_budget),
                     self.perform)

    def call_hook(self, ctx: Any) -> Any:
        """Call with the script's view of the hook context ``ctx`` (as ``self(view)``)."""
        return drive(self.engine, self.engine.start_hook(self.ref, ctx, name=self.name,
                                                         time_budget=self.time_budget),
                     self.perform)

    def call_event(self, event: Any) -> Any:
        """Call with the script's view of ``event`` (as ``self(view)``)."""
        return drive(self.engine, self.engine.start_event(self.ref, event, name=self.name,
                                                          time_budget=self.time_budget),
                     self.perform)

    def __repr__(self) -> str:
        return f"ScriptFunction({self.engine.language}, {self.name!r})"


def _error_reply(request: Request, exc: Exception) -> Reply:
    text = str(exc) if isinstance(exc, LlmspellError) else f"{type(exc).__name__}: {exc}"
    return Reply(request.id, False, text, type(exc).__name__)


def drive(engine: ScriptEngine, outcome: Outcome, perform: Operation) -> Any:
    """Run ``outcome`` to the end: the value, or an awaitable when an operation is async."""
    while isinstance(outcome, Pending):
        replies: list[Reply] = []
        for index, request in enumerate(outcome.requests):
            try:
                value = perform(request.op, request.args)
            except Exception as exc:
                replies.append(_error_reply(request, exc))
                continue
            if inspect.isawaitable(value):
                return _finish(engine, outcome, replies, index, value, perform)
            replies.append(Reply(request.id, True, value))
        outcome = engine.resume(outcome, replies)
    return outcome.value


async def _finish(engine: ScriptEngine, outcome: Pending, replies: list[Reply], index: int,
                  first: Awaitable[Any], perform: Operation) -> Any:
    current: Outcome = outcome
    awaiting: Awaitable[Any] | None = first
    while isinstance(current, Pending):
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
        current = engine.resume(current, replies)
        replies, index = [], 0
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
