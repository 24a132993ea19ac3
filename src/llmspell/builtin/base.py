"""What every built-in hook shares: metadata, the points it watches, one-line install.

A built-in hook is a hook object (``metadata``, ``execute``, ``should_execute``) that
watches several points. ``hook.install(registry)`` registers it at each of its points (one
line) and returns the handles; ``hook.uninstall(registry)`` removes it. Every built-in hook
has a typed config (a msgspec Struct), a documented default priority, and ``stats()``.

Built-in hooks sit above the hook engine and the event bus and never import the runtime:
they know the runtime's contracts only by their documented names (for example the
``custom:agent_model_call`` point and its ``token_usage`` data).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from llmspell.hooks.context import HookContext
from llmspell.hooks.hook import BaseHook, HookOutput
from llmspell.hooks.metadata import ErrorPolicy, HookMetadata
from llmspell.hooks.points import CustomHookPoint, HookPoint, parse_point
from llmspell.hooks.registry import HookHandle, HookRegistry

__all__ = [
    "ALL_RUNTIME_POINTS",
    "BuiltinHook",
    "MODEL_CALL",
    "OPERATION_AFTER",
    "OPERATION_BEFORE",
    "OPERATION_ERROR",
]

MODEL_CALL = HookPoint.custom("agent_model_call")
"""Fired by the runtime after each model call; its data holds ``token_usage``
(``input``, ``output``, ``total``, ``model``, ``provider``) and ``agent``."""

OPERATION_BEFORE: tuple[HookPoint, ...] = (
    HookPoint.BEFORE_TOOL_EXECUTION, HookPoint.BEFORE_AGENT_EXECUTION,
)
OPERATION_AFTER: tuple[HookPoint, ...] = (
    HookPoint.AFTER_TOOL_EXECUTION, HookPoint.AFTER_AGENT_EXECUTION,
)
OPERATION_ERROR: tuple[HookPoint, ...] = (HookPoint.TOOL_ERROR, HookPoint.AGENT_ERROR)
ALL_RUNTIME_POINTS: tuple[HookPoint | CustomHookPoint, ...] = (
    *OPERATION_BEFORE, *OPERATION_AFTER, *OPERATION_ERROR, HookPoint.TOOL_VALIDATION,
    MODEL_CALL,
)


class BuiltinHook(BaseHook):
    """Base of the built-in hooks. Subclasses set ``default_points`` and implement
    ``execute``; ``points`` (constructor) overrides where the hook is installed."""

    default_points: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        name: str,
        priority: int,
        points: Iterable[str] | None = None,
        error_policy: ErrorPolicy = ErrorPolicy.FAIL_OPEN,
        timeout: float | None = None,
        tags: Iterable[str] = ("builtin",),
        description: str = "",
    ) -> None:
        super().__init__(HookMetadata(
            name=name, priority=priority, error_policy=error_policy, timeout=timeout,
            tags=frozenset(tags), description=description,
        ))
        chosen = self.default_points if points is None else tuple(points)
        self.points: tuple[HookPoint | CustomHookPoint, ...] = tuple(
            parse_point(p) for p in chosen
        )
        self._handles: list[HookHandle] = []

    def execute(self, ctx: HookContext) -> HookOutput:
        """Override: the hook body."""
        raise NotImplementedError

    def install(self, registry: HookRegistry) -> list[HookHandle]:
        """Register this hook at each of its points (all or none); returns the handles."""
        self._handles = registry.register_many([(p, self) for p in self.points])
        return list(self._handles)

    def uninstall(self, registry: HookRegistry) -> None:
        """Remove this hook from every point it was installed at."""
        for handle in self._handles:
            registry.unregister(handle)
        self._handles = []

    def stats(self) -> Any:
        """Override: what the hook has seen and done."""
        raise NotImplementedError
