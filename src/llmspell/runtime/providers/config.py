"""Build a provider from configuration: a :class:`ProviderConfig` or environment variables.

Environment (with the default prefix ``LLMSPELL_``):

- ``LLMSPELL_PROVIDER``: ``openai`` (any OpenAI-compatible server) or ``anthropic``;
  unset means "no provider configured" and :func:`provider_from_env` returns None.
- ``LLMSPELL_MODEL``: the model (required).
- ``LLMSPELL_BASE_URL``: the API root (default: the vendor's hosted API).
- ``LLMSPELL_API_KEY``: the key; falls back to ``OPENAI_API_KEY`` or
  ``ANTHROPIC_API_KEY`` by kind.
- ``LLMSPELL_TIMEOUT`` (seconds, each wait), ``LLMSPELL_DEADLINE`` (seconds, a whole
  call; ``none`` for no deadline) and ``LLMSPELL_MAX_TOKENS``: optional.

The ``scripted`` kind plays back replies with no network (for offline runs, tests and
``llmspell run`` of agent scripts): ``replies`` in the config, or ``LLMSPELL_REPLIES``
(a JSON list, or one plain-text reply) or ``LLMSPELL_REPLIES_FILE`` (a JSON list, or one
reply per non-empty line). A reply is text or ``{"tool_calls": [...], "content": ...}``
(see :class:`~llmspell.runtime.providers.scripted.ScriptedProvider`). Replies computed by
code need ``ScriptedProvider(fn)`` directly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from llmspell.core.errors import ConfigurationError, InvalidValueError
from llmspell.runtime.providers.anthropic import AnthropicProvider
from llmspell.runtime.providers.base import Provider
from llmspell.runtime.providers.openai_compat import (
    DEFAULT_DEADLINE,
    OpenAICompatibleProvider,
    _redact_url,
)
from llmspell.runtime.providers.scripted import ScriptedProvider

__all__ = ["HOSTED_ENDPOINTS", "PROVIDER_KINDS", "ProviderConfig", "provider_from_config",
           "provider_from_env"]

PROVIDER_KINDS = ("openai", "anthropic", "scripted")
"""The provider kinds a :class:`ProviderConfig` can name."""

_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
HOSTED_ENDPOINTS = {"openai": "https://api.openai.com/v1",
                    "anthropic": "https://api.anthropic.com"}
"""The vendors' hosted APIs: a provider's endpoint when no ``base_url`` is configured."""
_HOSTED = HOSTED_ENDPOINTS


def _unknown_kind(kind: object) -> ConfigurationError:
    return ConfigurationError(
        f"unknown provider kind {kind!r}",
        hint="valid kinds: " + ", ".join(PROVIDER_KINDS),
    )


class ProviderConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How to reach a model provider.

    ``kind`` is one of :data:`PROVIDER_KINDS`. ``base_url`` None means the vendor's hosted
    API. The key is ``api_key``, else the environment variable named by ``api_key_env``
    (which must then be set), else ``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY`` by kind.
    ``max_tokens`` None means the provider's default. ``timeout`` bounds each wait for
    the server, ``deadline`` a whole call (None: no deadline). The key, and credentials
    in ``base_url``, are never shown in ``repr``.
    """

    kind: str
    model: str | None = None
    base_url: str | None = None
    api_key: str | None = None
    api_key_env: str | None = None
    timeout: float = 60.0
    deadline: float | None = DEFAULT_DEADLINE
    max_tokens: int | None = None
    replies: list[Any] | None = None
    replies_file: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in PROVIDER_KINDS:
            raise _unknown_kind(self.kind)
        if self.api_key is not None and self.api_key_env is not None:
            raise ConfigurationError(
                "a provider config gives both api_key and api_key_env",
                hint="give the key itself or the name of the variable holding it, not both",
            )

    def __repr__(self) -> str:
        key = "None" if self.api_key is None else "'***'"
        base_url = self.base_url if self.base_url is None else _redact_url(self.base_url)
        return (
            f"ProviderConfig(kind={self.kind!r}, model={self.model!r}, "
            f"base_url={base_url!r}, api_key={key}, api_key_env={self.api_key_env!r}, "
            f"timeout={self.timeout!r}, deadline={self.deadline!r}, "
            f"max_tokens={self.max_tokens!r})"
        )


def provider_from_config(
    config: ProviderConfig, *, environ: Mapping[str, str] | None = None
) -> Provider:
    """Build the provider ``config`` describes (``environ`` defaults to ``os.environ``).

    Raises :class:`ConfigurationError` for an unknown kind, a ``scripted`` kind without
    replies, a missing model, an unset ``api_key_env`` variable, a hosted API without a
    key, or a value the provider rejects.
    """
    env = os.environ if environ is None else environ
    kind = config.kind
    if kind == "scripted":
        return _scripted(config, env)
    if kind not in _KEY_ENV:  # pragma: no cover - ProviderConfig already checks the kind
        raise _unknown_kind(kind)
    if not config.model:
        raise ConfigurationError(
            f"the {kind} provider needs a model",
            hint="set model in the config (or LLMSPELL_MODEL)",
        )
    api_key = config.api_key
    if config.api_key_env is not None:
        api_key = env.get(config.api_key_env)
        if not api_key:
            raise ConfigurationError(
                f"environment variable {config.api_key_env} (api_key_env) is not set",
                hint=f"export {config.api_key_env}=<your key>, or drop api_key_env",
            )
    if not api_key:
        api_key = env.get(_KEY_ENV[kind]) or None
    base_url = config.base_url or _HOSTED[kind]
    if api_key is None and base_url.rstrip("/") == _HOSTED[kind]:
        raise ConfigurationError(
            f"the hosted {kind} API needs an API key",
            hint=f"set LLMSPELL_API_KEY or {_KEY_ENV[kind]}, or point base_url at a "
            "local server",
        )
    try:
        if kind == "openai":
            return OpenAICompatibleProvider(
                config.model, base_url=base_url, api_key=api_key, timeout=config.timeout,
                max_tokens=config.max_tokens, deadline=config.deadline,
            )
        if config.max_tokens is None:
            return AnthropicProvider(
                config.model, base_url=base_url, api_key=api_key, timeout=config.timeout,
                deadline=config.deadline,
            )
        return AnthropicProvider(
            config.model, base_url=base_url, api_key=api_key, timeout=config.timeout,
            max_tokens=config.max_tokens, deadline=config.deadline,
        )
    except InvalidValueError as exc:
        raise ConfigurationError(f"bad {kind} provider config: {exc.message}",
                                 hint=exc.hint) from exc


def _scripted(config: ProviderConfig, env: Mapping[str, str]) -> Provider:
    """A :class:`ScriptedProvider` from the config's or the environment's replies."""
    replies = config.replies
    source = "replies"
    path = config.replies_file or env.get("LLMSPELL_REPLIES_FILE") or None
    if replies is None and path is not None:
        source = path
        try:
            text = Path(path).read_bytes().decode("utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"cannot read the scripted replies file {path}: {exc}",
                                     hint="a JSON list, or one reply per line") from None
        replies = _parse_replies(text, source, lines=True)
    inline = env.get("LLMSPELL_REPLIES")
    if replies is None and inline:
        source = "LLMSPELL_REPLIES"
        replies = _parse_replies(inline, source, lines=False)
    if not replies:
        raise ConfigurationError(
            "the scripted provider needs its replies",
            hint="set LLMSPELL_REPLIES (a JSON list or one reply) or LLMSPELL_REPLIES_FILE, "
                 "or give replies in the config")
    try:
        return ScriptedProvider(list(replies), model=config.model or "scripted")
    except InvalidValueError as exc:
        raise ConfigurationError(f"bad scripted replies ({source}): {exc.message}",
                                 hint=exc.hint) from exc


def _parse_replies(text: str, source: str, *, lines: bool) -> list[Any]:
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            parsed = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"scripted replies in {source} are not valid JSON: {exc}",
                                     hint='e.g. ["first answer", "second answer"]') from None
        if not isinstance(parsed, list):  # pragma: no cover - "[" starts a list
            raise ConfigurationError(f"scripted replies in {source} must be a list")
        return parsed
    if lines:
        return [line for line in (raw.strip() for raw in text.splitlines()) if line]
    return [stripped] if stripped else []


def provider_from_env(
    prefix: str = "LLMSPELL_", *, environ: Mapping[str, str] | None = None
) -> Provider | None:
    """Build a provider from ``{prefix}PROVIDER``, ``{prefix}MODEL``, ``{prefix}BASE_URL``,
    ``{prefix}API_KEY`` (else ``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY``),
    ``{prefix}TIMEOUT``, ``{prefix}DEADLINE`` (``none`` for no deadline) and
    ``{prefix}MAX_TOKENS``; None when ``{prefix}PROVIDER`` is unset or empty. Raises
    :class:`ConfigurationError` as :func:`provider_from_config` does, and for a timeout,
    deadline or token cap that is not a number.
    """
    env = os.environ if environ is None else environ
    kind = env.get(f"{prefix}PROVIDER", "").strip().lower()
    if not kind:
        return None
    timeout_text = env.get(f"{prefix}TIMEOUT") or None
    max_tokens_text = env.get(f"{prefix}MAX_TOKENS") or None
    try:
        timeout = float(timeout_text) if timeout_text is not None else 60.0
    except ValueError:
        raise ConfigurationError(
            f"{prefix}TIMEOUT={timeout_text!r} is not a number of seconds",
            hint=f"e.g. {prefix}TIMEOUT=30",
        ) from None
    deadline_text = (env.get(f"{prefix}DEADLINE") or "").strip() or None
    deadline: float | None = DEFAULT_DEADLINE
    if deadline_text is not None and deadline_text.lower() == "none":
        deadline = None
    elif deadline_text is not None:
        try:
            deadline = float(deadline_text)
        except ValueError:
            raise ConfigurationError(
                f"{prefix}DEADLINE={deadline_text!r} is not a number of seconds",
                hint=f"e.g. {prefix}DEADLINE=600, or {prefix}DEADLINE=none for no deadline",
            ) from None
    try:
        max_tokens = int(max_tokens_text) if max_tokens_text is not None else None
    except ValueError:
        raise ConfigurationError(
            f"{prefix}MAX_TOKENS={max_tokens_text!r} is not an integer",
            hint=f"e.g. {prefix}MAX_TOKENS=1024",
        ) from None
    config = ProviderConfig(
        kind=kind,
        model=env.get(f"{prefix}MODEL") or None,
        base_url=env.get(f"{prefix}BASE_URL") or None,
        api_key=env.get(f"{prefix}API_KEY") or None,
        timeout=timeout,
        deadline=deadline,
        max_tokens=max_tokens,
    )
    return provider_from_config(config, environ=env)
