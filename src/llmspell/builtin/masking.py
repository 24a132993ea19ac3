"""Masking of sensitive values, shared by every built-in hook that logs, traces or publishes.

A key is sensitive when its lower-cased name contains one of the configured fragments
(``password``, ``token``, ``api_key``, ``authorization``, ...). Masking walks dicts, lists
and tuples and returns a new value; the input is never changed. A container nested deeper
than :data:`MAX_MASK_DEPTH` is replaced by :data:`MASK` whole: what cannot be checked is
not let through.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from llmspell.core.redact import MASK as CORE_MASK
from llmspell.core.values import MAX_DEPTH

__all__ = [
    "DEFAULT_KEEP_KEYS", "DEFAULT_SENSITIVE_KEYS", "MASK", "MAX_MASK_DEPTH", "MAX_TRUNCATE_ITEMS",
    "Masker", "truncate",
]

MASK = CORE_MASK
MAX_MASK_DEPTH = MAX_DEPTH
"""Containers nested deeper than this are masked whole (every JSON-safe value the runtime
accepts is within it, so its secrets are masked key by key)."""
MAX_TRUNCATE_ITEMS = 1000
"""The most values (containers and scalars) :func:`truncate` keeps of one value in all."""
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


_CONTAINERS = (dict, list, tuple)


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
        """A copy of ``value`` with every sensitive key's value masked; a container deeper
        than :data:`MAX_MASK_DEPTH` becomes :data:`MASK`."""
        if depth > MAX_MASK_DEPTH:
            return MASK if isinstance(value, _CONTAINERS) else value
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
        if isinstance(value, tuple):
            return tuple(self.mask(v, depth + 1) if isinstance(v, _CONTAINERS) else v
                         for v in value)
        return value


def truncate(value: Any, max_chars: int, depth: int = 0, *,
             max_items: int = MAX_TRUNCATE_ITEMS) -> Any:
    """A copy of ``value`` bounded for a log line, an audit entry or a trace: long strings
    (dict keys too) and bytes cut to about ``max_chars``, dicts, lists and tuples to 100
    items each, at most ``max_items`` values in all (``"...(+N)"`` and ``"...(cut)"`` say
    what went), and nothing deeper than 32 containers (``"...(too deep)"``)."""
    budget = [max_items]
    return _truncate(value, max_chars, depth, budget)


def _cut_text(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    return text[:max_chars] + f"...(+{len(text) - max_chars})"


def _truncate(value: Any, max_chars: int, depth: int, budget: list[int]) -> Any:
    if budget[0] <= 0:
        return "...(cut)"
    budget[0] -= 1
    if isinstance(value, str):
        return value if len(value) <= max_chars else _cut_text(value, max_chars)
    if isinstance(value, (bytes, bytearray)):
        if len(value) <= max_chars:
            return value
        return bytes(value[:max_chars]) + f"...(+{len(value) - max_chars})".encode()
    if not isinstance(value, (dict, list, tuple)):
        return value
    if depth > 32:
        return "...(too deep)"
    # Scalars other than strings are kept inline (no call): this runs on every record.
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for i, (key, v) in enumerate(value.items()):
            if i == 100 or budget[0] <= 0:
                out["..."] = f"(+{len(value) - i} keys)"
                break
            k = key
            if type(key) is str and len(key) > max_chars:
                k = _cut_text(key, max_chars)
                if k in out:  # two long keys cut to the same text: keep both
                    k = f"{k}#{i}"
            kind = type(v)
            if (kind is str and len(v) <= max_chars) or v is None or kind in _PLAIN:
                budget[0] -= 1
                out[k] = v
            else:
                out[k] = _truncate(v, max_chars, depth + 1, budget)
        return out
    head: list[Any] = []
    for v in value[:100]:
        kind = type(v)
        if budget[0] > 0 and ((kind is str and len(v) <= max_chars) or v is None
                              or kind in _PLAIN):
            budget[0] -= 1
            head.append(v)
        else:
            head.append(_truncate(v, max_chars, depth + 1, budget))
    return [*head, f"...(+{len(value) - 100})"] if len(value) > 100 else head


_PLAIN = frozenset({int, float, bool})
