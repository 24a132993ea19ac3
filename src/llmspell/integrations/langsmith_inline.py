"""LangChain middleware without LangSmith's two thread hops per call when nothing is traced.

LangChain v1 wraps every middleware's ``wrap_model_call``/``wrap_tool_call`` (sync and
async) in LangSmith's ``traceable``. Its async wrapper starts and ends each call in a
worker thread (``loop.run_in_executor``) even when tracing is off: two thread hops per
model or tool call, whatever the middleware does. On 2 shared cores that is most of what a
no-op middleware adds to a short agent run (about 2 ms of a 7 ms run with 3 tool calls,
``benchmarks/integrations.py``).

:func:`enable` installs LangSmith's own seam for this, a runtime override
(``langsmith.set_runtime_overrides(aio_to_thread=...)``, documented for runtimes that must
not use threads). The override runs the call in the calling thread, inside the context
LangSmith passes, when that context is not tracing (``langsmith.utils.tracing_is_enabled``
is false there: no ``LANGSMITH_TRACING``, no ``tracing_context(enabled=True)``, no current
run tree); otherwise it hands the call on unchanged, to the override installed before or to
LangSmith's default. Untraced, the work done in the thread is building an empty container,
so running it inline blocks nothing.

The override is process-wide: it applies to every LangSmith ``traceable`` in the process,
not only to llmspell's middleware. :func:`disable` puts back what was installed before.
"""

from __future__ import annotations

import contextvars
import importlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from llmspell.core.errors import UnsupportedFrameworkVersionError
from llmspell.integrations import _bridge

__all__ = ["disable", "enable", "is_enabled"]

_langsmith = _bridge.require("langsmith", "langchain", "inlining untraced LangSmith calls")

from langsmith.utils import tracing_is_enabled  # noqa: E402 - after the extra check

AioToThread = Callable[..., Awaitable[Any]]

_lock = threading.Lock()
_previous: AioToThread | None = None
"""The override :func:`enable` replaced (None: LangSmith's default)."""


async def _inline_when_untraced(default: AioToThread, ctx: contextvars.Context,
                                func: Callable[..., Any], /, *args: Any, **kwargs: Any
                                ) -> Any:
    if ctx.run(tracing_is_enabled):
        if _previous is not None:
            return await _previous(default, ctx, func, *args, **kwargs)
        return await default(ctx, func, *args, **kwargs)
    return ctx.run(func, *args, **kwargs)


def _overrides() -> tuple[Callable[..., None], Callable[[], Any]]:
    # LangSmith exports the setter only; the getter (to keep an override installed before)
    # lives beside it in the module that defines both.
    try:
        module: Any = importlib.import_module("langsmith._runtime_overrides")
    except ImportError:
        module = None
    set_overrides = getattr(_langsmith, "set_runtime_overrides", None)
    get_overrides = getattr(module, "get_runtime_overrides", None)
    if set_overrides is None or get_overrides is None:
        raise UnsupportedFrameworkVersionError(
            "langsmith", _bridge.installed_version("langsmith") or "(unknown)",
            ">=0.15 (with set_runtime_overrides)")
    return set_overrides, get_overrides


def enable() -> None:
    """Run LangSmith's per-call thread work inline while nothing is traced (see the module
    docstring). Idempotent; an override installed before is kept for traced calls.
    Raises :class:`~llmspell.errors.UnsupportedFrameworkVersionError` when the installed
    ``langsmith`` has no runtime overrides."""
    global _previous
    set_overrides, get_overrides = _overrides()
    with _lock:
        current = get_overrides().aio_to_thread
        if current is _inline_when_untraced:
            return
        _previous = current
        set_overrides(aio_to_thread=_inline_when_untraced)


def disable() -> None:
    """Put back the override :func:`enable` replaced (LangSmith's default when there was
    none). Does nothing when :func:`enable` is not in effect."""
    global _previous
    set_overrides, get_overrides = _overrides()
    with _lock:
        if get_overrides().aio_to_thread is _inline_when_untraced:
            set_overrides(aio_to_thread=_previous)
        _previous = None


def is_enabled() -> bool:
    """True while :func:`enable`'s override is LangSmith's ``aio_to_thread`` override."""
    _, get_overrides = _overrides()
    return bool(get_overrides().aio_to_thread is _inline_when_untraced)
