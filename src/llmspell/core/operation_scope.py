"""Give back what a hook took for an operation when the operation is over, however it ends.

A hook at a before point may take something for the operation it lets through: the cost
hook reserves a model call's estimated cost at ``BeforeModelCall`` and gives it back at
``AfterModelCall`` or ``ModelCallError``. Those points run only when the operation runs.
When a later hook at the same before point cancels, replaces or redirects the call, when a
cache serves it, when a before hook asks for a ``Retry`` (the next attempt asks again), or
when something raises or the task is cancelled, no after or error point comes for what
was taken.

So whoever dispatches a before point (``run_hooked``, the framework adapters) opens an
:class:`OperationScope` around the dispatch and ends it once the operation is over, or at
once when the operation will not run. A hook calls :func:`on_operation_end` during the
dispatch to have a callback run then, exactly once. The scope lives in a context variable:
hooks see the scope of the before point they run at; a nested operation opens its own.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar, Token
from types import TracebackType

from llmspell.core.redact import get_logger

__all__ = ["CURRENT_SCOPE", "OperationScope", "on_operation_end"]

logger = get_logger("llmspell.hooks")

CURRENT_SCOPE: ContextVar[OperationScope | None] = ContextVar("llmspell_operation_scope",
                                                              default=None)
"""The scope of the before point being dispatched. ``with scope:`` sets it; the runtime's
call path sets and resets it inline (one scope per call, no context manager)."""
_current = CURRENT_SCOPE


class OperationScope(list[Callable[[], None]]):
    """The end-of-operation callbacks registered while one before point was dispatched (a
    list of them: building one and leaving it empty costs no Python-level call, which
    matters on every hooked call's path).

    ``with scope:`` makes it the current scope for the dispatch; :meth:`end` runs what was
    registered (each callback once; ending again runs only what was registered since)::

        scope = OperationScope()
        with scope:
            outcome, ctx = await system.dispatch(before_point, ...)
        try:
            ...  # run the operation, or not
        finally:
            scope.end()
    """

    __slots__ = ("_token",)

    def __enter__(self) -> OperationScope:
        self._token: Token[OperationScope | None] | None = _current.set(self)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        token = getattr(self, "_token", None)
        self._token = None
        if token is not None:
            _current.reset(token)

    def add(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` (no arguments) when the scope ends."""
        self.append(callback)

    def end(self) -> None:
        """Run the callbacks registered so far, oldest first, and forget them. A failing
        callback is logged; the others still run."""
        callbacks = self[:]
        self.clear()
        for callback in callbacks:
            try:
                callback()
            except Exception:
                logger.exception("an end-of-operation callback failed: %r", callback)

    # A scope is one scope: equal only to itself, never to another (empty) one.
    __eq__ = object.__eq__
    __ne__ = object.__ne__
    __hash__ = object.__hash__  # type: ignore[assignment]


def on_operation_end(callback: Callable[[], None]) -> bool:
    """Run ``callback`` once when the operation whose before point is being dispatched is
    over (answered, failed, cancelled, replaced, redirected or served from a cache). False
    when no scope is open (a caller that dispatched the point without one): the callback
    is not kept, and the hook needs a fallback of its own."""
    scope = _current.get()
    if scope is None:
        return False
    scope.append(callback)
    return True
