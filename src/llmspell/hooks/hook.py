"""What a hook is: a callable, or an object with ``execute``/``metadata``/``should_execute``.

A hook receives one :class:`HookContext` and returns a :class:`HookResult`, ``None``
(continue), or an awaitable of either. Sync and async hooks are both first-class.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol, TypeAlias, TypeVar, runtime_checkable

from llmspell.core.errors import InvalidValueError
from llmspell.core.language import Language
from llmspell.hooks.context import HookContext
from llmspell.hooks.metadata import ErrorPolicy, HookMetadata, metadata_fields
from llmspell.hooks.points import CustomHookPoint, HookPoint, parse_point
from llmspell.hooks.result import HookResult

__all__ = [
    "BaseHook",
    "Hook",
    "HookCallable",
    "HookOutput",
    "HookSpec",
    "cancel_requested",
    "check_predicate",
    "hook",
    "hook_spec_of",
    "is_async_callable",
]

HookOutput: TypeAlias = "HookResult | Awaitable[HookResult | None] | None"
HookCallable: TypeAlias = Callable[[HookContext], "HookOutput"]
F = TypeVar("F", bound=Callable[..., Any])

_SPEC_ATTR = "__llmspell_hook__"


@runtime_checkable
class Hook(Protocol):
    """A hook object: metadata, a predicate, and the hook body (sync or async)."""

    @property
    def metadata(self) -> HookMetadata:
        """Name, priority, language, tags, version, error policy, timeout."""
        ...

    def execute(self, ctx: HookContext) -> HookOutput:
        """Run the hook and return a result, ``None`` or an awaitable of either."""
        ...

    def should_execute(self, ctx: HookContext) -> bool:
        """Return False to skip this hook for ``ctx`` (cheap checks only)."""
        ...


class BaseHook:
    """Convenience base for hook objects. Subclasses set ``metadata`` and define ``execute``."""

    metadata: HookMetadata

    def __init__(self, metadata: HookMetadata | None = None, **fields: Any) -> None:
        if metadata is None:
            fields.setdefault("name", type(self).__name__)
            metadata = HookMetadata(**fields)
        self.metadata = metadata

    def execute(self, ctx: HookContext) -> HookOutput:
        """Override: the hook body."""
        raise NotImplementedError

    def should_execute(self, ctx: HookContext) -> bool:
        """Override to skip contexts the hook does not apply to. Default: always run."""
        return True


class HookSpec:
    """Registration settings attached to a function by :func:`hook`."""

    __slots__ = ("metadata_fields", "points")

    def __init__(self, points: tuple[HookPoint | CustomHookPoint, ...], fields: dict[str, Any]):
        self.points = points
        self.metadata_fields = fields


def hook(
    *points: str,
    name: str | None = None,
    priority: int | str | None = None,
    language: Language | str | None = None,
    tags: Iterable[str] | None = None,
    version: str | None = None,
    error_policy: ErrorPolicy | str | None = None,
    timeout: float | None = None,
    description: str | None = None,
) -> Callable[[F], F]:
    """Mark a function as a hook for ``points``; ``registry.register(fn)`` then needs nothing else.

    >>> @hook("BeforeToolExecution", priority="high")
    ... def audit(ctx): ...
    """
    parsed = tuple(parse_point(p) for p in points)
    fields = metadata_fields(
        name=name, priority=priority, language=language, tags=tags, version=version,
        error_policy=error_policy, timeout=timeout, description=description,
    )

    def mark(fn: F) -> F:
        setattr(fn, _SPEC_ATTR, HookSpec(parsed, fields))
        return fn

    return mark


def hook_spec_of(obj: object) -> HookSpec | None:
    """Return the :class:`HookSpec` attached by :func:`hook`, if any."""
    spec = getattr(obj, _SPEC_ATTR, None)
    return spec if isinstance(spec, HookSpec) else None


def is_async_callable(fn: object) -> bool:
    """True when calling ``fn`` returns a coroutine (async def, partials, async __call__)."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004
    return call is not None and inspect.iscoroutinefunction(call)


def check_predicate(hook: object, should: Callable[..., Any]) -> None:
    """Refuse an ``async def should_execute``: the executor asks it without awaiting, and a
    coroutine is truthy, so the hook would run on every call (its predicate never asked)."""
    if is_async_callable(should):
        name = getattr(getattr(hook, "metadata", None), "name", None) or type(hook).__name__
        raise InvalidValueError(
            f"hook {name!r}: should_execute is async; it must return a bool at once",
            hint="make should_execute a plain (sync) method with cheap checks, and do "
                 "async work in execute (return Skipped(...) when the hook does not apply)")


def cancel_requested() -> bool:
    """True when the running task has been asked to cancel: an ``asyncio.CancelledError``
    seen now is that cancellation (it must propagate), not one a hook's own await met."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running loop: nothing to cancel
        return False
    return task is not None and task.cancelling() > 0
