"""What every built-in hook shares: metadata, the points it watches, one-line install.

A built-in hook is a hook object (``metadata``, ``execute``, ``should_execute``) that
watches several points. ``hook.install(registry)`` registers it at each of its points (one
line) and returns the handles; ``hook.uninstall(registry)`` removes it. Every built-in hook
has a typed config (a msgspec Struct), a documented default priority, and ``stats()``.

Built-in hooks sit above the hook engine and the event bus and never import the runtime:
they know the runtime's contracts only by their documented names (for example the model
points' data: ``provider``, ``model``, ``params``, ``result``; docs/hook-points.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from llmspell.hooks.context import HookContext
from llmspell.hooks.hook import BaseHook, HookOutput
from llmspell.hooks.metadata import ErrorPolicy, HookMetadata
from llmspell.hooks.points import CustomHookPoint, HookPoint, parse_point
from llmspell.hooks.registry import HookHandle, HookRegistry

__all__ = [
    "ALL_RUNTIME_POINTS",
    "CHARS_PER_TOKEN",
    "MODEL_AFTER",
    "MODEL_BEFORE",
    "MODEL_CALL",
    "MODEL_ERROR",
    "MODEL_POINTS",
    "BuiltinHook",
    "Tokenizer",
    "estimate_prompt_tokens",
    "model_key",
    "OPERATION_AFTER",
    "OPERATION_BEFORE",
    "OPERATION_ERROR",
]

MODEL_CALL = HookPoint.AFTER_MODEL_CALL
"""The old custom point ``agent_model_call``, now an alias of ``AfterModelCall`` (whose
data holds ``result.usage``, not the old ``token_usage``)."""

MODEL_BEFORE = HookPoint.BEFORE_MODEL_CALL
MODEL_AFTER = HookPoint.AFTER_MODEL_CALL
MODEL_ERROR = HookPoint.MODEL_CALL_ERROR
MODEL_POINTS: tuple[HookPoint, ...] = (MODEL_BEFORE, MODEL_AFTER, MODEL_ERROR)
"""The points around every provider call (``system.models``)."""

CHARS_PER_TOKEN = 4
"""Characters per token when a prompt is estimated without a tokenizer (a common rule
of thumb for English text; code and other languages can need more tokens)."""

Tokenizer = Callable[[str], int]
"""Counts the tokens of a text (e.g. ``lambda s: len(enc.encode(s))`` with tiktoken)."""

_JSON = msgspec.json.Encoder(order="sorted")

OPERATION_BEFORE: tuple[HookPoint, ...] = (
    HookPoint.BEFORE_TOOL_EXECUTION, HookPoint.BEFORE_AGENT_EXECUTION,
)
OPERATION_AFTER: tuple[HookPoint, ...] = (
    HookPoint.AFTER_TOOL_EXECUTION, HookPoint.AFTER_AGENT_EXECUTION,
)
OPERATION_ERROR: tuple[HookPoint, ...] = (HookPoint.TOOL_ERROR, HookPoint.AGENT_ERROR)
ALL_RUNTIME_POINTS: tuple[HookPoint | CustomHookPoint, ...] = tuple(dict.fromkeys((
    *OPERATION_BEFORE, *OPERATION_AFTER, *OPERATION_ERROR, HookPoint.TOOL_VALIDATION,
    *MODEL_POINTS,
)))


def model_key(data: dict[str, Any]) -> str:
    """``"<provider>/<model>"`` of a model point's data (the model asked for)."""
    return f"{data.get('provider') or ''}/{data.get('model') or ''}"


def _text_of(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return _JSON.encode(value).decode()
    except (TypeError, ValueError, msgspec.EncodeError):
        return str(value)


def estimate_prompt_tokens(params: Any, tokenizer: Tokenizer | None = None) -> int:
    """Tokens the request ``params`` (a model point's ``params``) will be billed as
    input, estimated before the call: the messages' contents, their tool calls'
    arguments and the tools offered, counted by ``tokenizer`` or as characters /
    :data:`CHARS_PER_TOKEN` (rounded up), plus 4 tokens of framing per message."""
    if not isinstance(params, dict):
        return 0
    parts: list[str] = []
    messages = params.get("messages")
    count = 0
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict):
                continue
            count += 1
            content = message.get("content")
            if content:
                parts.append(_text_of(content))
            calls = message.get("tool_calls")
            if calls:
                parts.append(_text_of(calls))
    tools = params.get("tools")
    if tools:
        parts.append(_text_of(tools))
    if tokenizer is not None:
        tokens = sum(int(tokenizer(p)) for p in parts)
    else:
        chars = sum(len(p) for p in parts)
        tokens = -(-chars // CHARS_PER_TOKEN)
    return tokens + 4 * count


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
