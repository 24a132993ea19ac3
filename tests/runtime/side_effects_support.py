"""Shared pieces of the side-effect tests: a mailer tool that declares ``email``, a hook
that records what a point's hooks saw, and a scripted model that asks for one tool call and
then fails as an overloaded provider does."""

from __future__ import annotations

from typing import Any

from llmspell.errors import ProviderError
from llmspell.hooks import HookContext, HookPoint
from llmspell.runtime import System, tool

FAST = {"base_delay": 0.001, "max_delay": 0.001, "max_attempts": 3}
"""A RetryConfig's delays and attempts for tests: three attempts, no real waiting."""


def mailer(sent: list[str]) -> Any:
    """A ``send_email`` tool declaring the side effect ``email``; each send is appended to
    ``sent``."""

    @tool(side_effects=["email"])
    def send_email(to: str) -> str:
        """Send an e-mail (it goes out)."""
        sent.append(to)
        return "sent"

    return send_email


def recorder(system: System, point: HookPoint) -> list[dict[str, Any]]:
    """A hook at ``point`` (before the others) keeping a copy of each context's data."""
    seen: list[dict[str, Any]] = []

    def record(ctx: HookContext) -> None:
        seen.append(dict(ctx.data))

    system.registry.register(point, record, name=f"record-{point}", priority=-100)
    return seen


def call_then_503(name: str, arguments: dict[str, Any]) -> Any:
    """A scripted model's reply: ask for tool ``name`` once; then the provider is
    overloaded (a retryable 503)."""

    def script(messages: Any, tools: Any) -> Any:
        if not any(m.role == "tool" for m in messages):
            return {"tool_calls": [{"name": name, "arguments": arguments}]}
        raise ProviderError("scripted", "overloaded", status=503)

    return script
