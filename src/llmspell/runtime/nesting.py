"""The chain of runtime operations a call is nested in: cycle detection and a depth bound.

A hook's ``Redirect`` or ``Fork`` can send an operation to another tool or agent, whose
hooks can send it on again. An agent holds its run lock while it runs, so an agent
reached again inside its own run (``A -> A``, ``A -> B -> A``, a fork of ``A`` from inside
``A``) would wait for itself forever; that is refused at once with
:class:`AgentCycleError`. Any chain of nested operations deeper than :data:`MAX_DEPTH` is
refused with :class:`OperationDepthError`, so a loop through tools ends too.

The chain lives in a context variable: nested calls (and forks, which run in tasks that
copy the context) see it; independent calls in other tasks do not.
"""

from __future__ import annotations

from contextvars import ContextVar

from llmspell.core.errors import AgentCycleError, OperationDepthError

__all__ = ["MAX_DEPTH", "current_chain", "nested"]

MAX_DEPTH = 16
"""How many runtime operations may be nested inside one another."""

_chain: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("llmspell_chain", default=())


def current_chain() -> tuple[tuple[str, str], ...]:
    """The ``(kind, name)`` operations the current call is nested in, outermost first."""
    return _chain.get()


def _describe(chain: tuple[tuple[str, str], ...]) -> str:
    return " -> ".join(f"{kind} {name!r}" for kind, name in chain)


class nested:  # noqa: N801 - used as a function: ``with nested("tool", name):``
    """Run the body as operation ``(kind, name)`` nested in the current chain.

    Raises :class:`AgentCycleError` when ``kind`` is ``"agent"`` and that agent is already
    in the chain, and :class:`OperationDepthError` past :data:`MAX_DEPTH`. (A class, not a
    ``contextmanager`` generator: every tool, model and agent call enters one, and the
    generator's machinery cost about three times the check itself.)
    """

    __slots__ = ("_here", "_token")

    def __init__(self, kind: str, name: str) -> None:
        self._here = (kind, name)

    def __enter__(self) -> None:
        chain = _chain.get()
        here = self._here
        kind, name = here
        if kind == "agent" and here in chain:
            path = _describe((*chain[chain.index(here):], here))
            raise AgentCycleError(name, path)
        if len(chain) >= MAX_DEPTH:
            raise OperationDepthError(
                f"{kind} {name!r} would be nested {len(chain) + 1} deep "
                f"(the limit is {MAX_DEPTH}): {_describe(chain)}",
                hint="check the hooks that return Redirect or Fork for a loop")
        self._token = _chain.set((*chain, here))

    def __exit__(self, *exc: object) -> None:
        _chain.reset(self._token)
