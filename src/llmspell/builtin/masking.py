"""Masking of sensitive values, shared by every built-in hook that logs, traces or publishes.

A key is sensitive when its lower-cased name contains one of the configured fragments
(``password``, ``token``, ``api_key``, ``authorization``, ...). Masking walks dicts and lists
and returns a new value; the input is never changed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["DEFAULT_SENSITIVE_KEYS", "MASK", "Masker", "truncate"]

MASK = "***"
DEFAULT_SENSITIVE_KEYS: tuple[str, ...] = (
    "password", "passwd", "secret", "token", "api_key", "apikey", "authorization",
    "auth", "cookie", "session_id", "private_key", "credential", "ssn", "credit_card",
)


class Masker:
    """Replaces the values of sensitive keys with :data:`MASK`, at any depth."""

    __slots__ = ("_cache", "fragments")

    def __init__(self, keys: Iterable[str] = DEFAULT_SENSITIVE_KEYS) -> None:
        self.fragments = tuple(k.lower() for k in keys)
        self._cache: dict[str, bool] = {}

    def is_sensitive(self, key: str) -> bool:
        """True when ``key`` names a secret."""
        hit = self._cache.get(key)
        if hit is None:
            lowered = key.lower()
            hit = any(f in lowered for f in self.fragments)
            if len(self._cache) < 4096:
                self._cache[key] = hit
        return hit

    def mask(self, value: Any, depth: int = 0) -> Any:
        """A copy of ``value`` with every sensitive key's value masked."""
        if depth > 32:
            return value
        if isinstance(value, dict):
            return {
                k: (MASK if isinstance(k, str) and self.is_sensitive(k)
                    else self.mask(v, depth + 1))
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [self.mask(v, depth + 1) for v in value]
        return value


def truncate(value: Any, max_chars: int) -> Any:
    """Shorten long strings (and the repr of huge containers) to about ``max_chars``."""
    if isinstance(value, str):
        if len(value) <= max_chars:
            return value
        return value[:max_chars] + f"...(+{len(value) - max_chars})"
    if isinstance(value, dict):
        return {k: truncate(v, max_chars) for k, v in value.items()}
    if isinstance(value, list):
        if len(value) > 100:
            return [truncate(v, max_chars) for v in value[:100]] + [f"...(+{len(value) - 100})"]
        return [truncate(v, max_chars) for v in value]
    return value
