"""Masking of sensitive values, shared by every built-in hook that logs, traces or publishes.

A key is sensitive when its lower-cased name contains one of the configured fragments
(``password``, ``token``, ``api_key``, ``authorization``, ...). Masking walks dicts and lists
and returns a new value; the input is never changed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["DEFAULT_KEEP_KEYS", "DEFAULT_SENSITIVE_KEYS", "MASK", "Masker", "truncate"]

MASK = "***"
DEFAULT_SENSITIVE_KEYS: tuple[str, ...] = (
    "password", "passwd", "secret", "token", "api_key", "apikey", "authorization",
    "auth", "cookie", "session_id", "private_key", "credential", "ssn", "credit_card",
)

DEFAULT_KEEP_KEYS: tuple[str, ...] = (
    "token_usage", "tokens", "max_tokens", "input_tokens", "output_tokens", "total_tokens",
    "prompt_tokens", "completion_tokens", "token_count", "auth_required", "author",
    "cached_tokens", "reasoning_tokens", "tokens_in", "tokens_out",
)
"""Exact key names that contain a sensitive fragment but are not secrets (token counts)."""


_CONTAINERS = (dict, list)


class Masker:
    """Replaces the values of sensitive keys with :data:`MASK`, at any depth.

    ``keys``: fragments that make a key sensitive; ``keep``: exact names (case-insensitive)
    that are never masked even though they contain a fragment (``token_usage``).
    """

    __slots__ = ("_cache", "fragments", "keep", "ordinary_keys")

    def __init__(self, keys: Iterable[str] = DEFAULT_SENSITIVE_KEYS,
                 keep: Iterable[str] = DEFAULT_KEEP_KEYS) -> None:
        self.fragments = tuple(k.lower() for k in keys)
        self.keep = frozenset(k.lower() for k in keep)
        self._cache: dict[str, bool] = {}
        self.ordinary_keys: set[str] | None = (
            set() if type(self).is_sensitive is Masker.is_sensitive else None)
        """The str keys :meth:`is_sensitive` found not sensitive (bounded with its cache),
        for a subset test of a dict's keys; None when a subclass decides sensitivity
        itself (then every key is asked). Read it, do not change it."""

    def is_sensitive(self, key: str) -> bool:
        """True when ``key`` names a secret."""
        hit = self._cache.get(key)
        if hit is None:
            lowered = key.lower()
            hit = lowered not in self.keep and any(f in lowered for f in self.fragments)
            if len(self._cache) < 4096:
                self._cache[key] = hit
                if not hit and self.ordinary_keys is not None:
                    self.ordinary_keys.add(key)
        return hit

    def mask(self, value: Any, depth: int = 0) -> Any:
        """A copy of ``value`` with every sensitive key's value masked."""
        if depth > 32:
            return value
        # Only containers are descended into, so a scalar item costs no call; a dict whose
        # keys are all known to be ordinary is passed by one subset test (in C), not a
        # verdict per key. Both matter: this runs on every tool event's data.
        if isinstance(value, dict):
            # (a plain dict only: a subclass's keys() need not be what items() yields)
            ordinary = self.ordinary_keys
            if type(value) is dict and ordinary is not None and value.keys() <= ordinary:
                return {k: self.mask(v, depth + 1) if isinstance(v, _CONTAINERS) else v
                        for k, v in value.items()}
            sensitive = self.is_sensitive
            return {
                k: (MASK if isinstance(k, str) and sensitive(k)
                    else self.mask(v, depth + 1) if isinstance(v, _CONTAINERS) else v)
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [self.mask(v, depth + 1) if isinstance(v, _CONTAINERS) else v
                    for v in value]
        return value


def truncate(value: Any, max_chars: int, depth: int = 0) -> Any:
    """Shorten long strings (and huge lists) to about ``max_chars``; stops at depth 32."""
    if depth > 32:
        return "...(too deep)"
    if isinstance(value, str):
        if len(value) <= max_chars:
            return value
        return value[:max_chars] + f"...(+{len(value) - max_chars})"
    if isinstance(value, dict):
        return {k: truncate(v, max_chars, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        head = [truncate(v, max_chars, depth + 1) for v in value[:100]]
        return [*head, f"...(+{len(value) - 100})"] if len(value) > 100 else head
    return value
