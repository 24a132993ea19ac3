"""Event-type patterns and the routing table.

A pattern is dotted segments. ``*`` is exactly one segment, ``**`` is any number of segments
(zero included) and must stand alone in its segment; inside a segment ``*`` is any run of
characters, ``?`` one character and ``[abc]``/``[!abc]`` a character class — none of them
ever crosses a dot. A pattern compiles once to an anchored regular expression.

Routing does not scan patterns per event: :class:`PatternRouter` resolves the matching
subscriptions once per concrete event type and caches the answer (bounded), and the cache is
dropped whenever a subscription is added or removed. A cache hit costs one dict lookup.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from llmspell.core.errors import InvalidValueError

__all__ = ["EventPattern", "PatternRouter", "compile_pattern"]

T = TypeVar("T")

_SEGMENT_CHARS = re.compile(r"^[A-Za-z0-9_\-*?\[\]!]+$")
_GLOB_CHARS = frozenset("*?[")


class EventPattern:
    """A compiled pattern. ``matches(event_type)`` answers whether an event type fits."""

    __slots__ = ("_regex", "is_exact", "source")

    def __init__(self, source: str, regex: re.Pattern[str] | None) -> None:
        self.source = source
        self._regex = regex
        self.is_exact = regex is None

    def matches(self, event_type: str) -> bool:
        """True when ``event_type`` fits this pattern."""
        if self._regex is None:
            return event_type == self.source
        return self._regex.fullmatch(event_type + ".") is not None

    def __repr__(self) -> str:
        return f"EventPattern({self.source!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EventPattern) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)


def _invalid(pattern: str, why: str) -> InvalidValueError:
    return InvalidValueError(
        f"invalid event pattern {pattern!r}: {why}",
        hint="use dotted segments; '*' = one segment, '**' = any number (alone in its "
        "segment), globs like 'calc*' or 'v?' inside a segment",
    )


def _segment_regex(pattern: str, segment: str) -> str:
    if segment == "*":
        return r"[^.]+\."
    out: list[str] = []
    i = 0
    while i < len(segment):
        char = segment[i]
        if char == "*":
            if segment.startswith("**", i):
                raise _invalid(pattern, "'**' must be a whole segment")
            out.append(r"[^.]*")
        elif char == "?":
            out.append(r"[^.]")
        elif char == "[":
            end = segment.find("]", i + 2)
            if end == -1:
                raise _invalid(pattern, f"unclosed '[' in segment {segment!r}")
            body = segment[i + 1 : end]
            negate = body.startswith("!")
            if negate:
                body = body[1:]
            if not body:
                raise _invalid(pattern, f"empty character class in segment {segment!r}")
            escaped = re.escape(body).replace(r"\-", "-")
            out.append(f"[^.{escaped}]" if negate else f"(?!\\.)[{escaped}]")
            i = end
        elif char in "]!":
            raise _invalid(pattern, f"stray {char!r} in segment {segment!r}")
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out) + r"\."


def compile_pattern(pattern: str) -> EventPattern:
    """Compile ``pattern``; an invalid one raises ``InvalidValueError`` saying why."""
    if not isinstance(pattern, str):
        raise InvalidValueError(f"an event pattern must be a string, not {type(pattern).__name__}")
    if not pattern:
        raise _invalid(pattern, "it is empty")
    segments = pattern.split(".")
    if any(not s for s in segments):
        raise _invalid(pattern, "empty segment (leading, trailing or doubled dot)")
    for segment in segments:
        if not _SEGMENT_CHARS.match(segment):
            raise _invalid(pattern, f"segment {segment!r} has characters outside "
                                    "letters, digits, '_', '-' and glob syntax")
    if not any(c in _GLOB_CHARS for c in pattern):
        if "]" in pattern or "!" in pattern:
            raise _invalid(pattern, "stray ']' or '!' outside a character class")
        return EventPattern(pattern, None)
    parts = [r"(?:[^.]+\.)*" if s == "**" else _segment_regex(pattern, s) for s in segments]
    return EventPattern(pattern, re.compile("".join(parts)))


class PatternRouter(Generic[T]):
    """Maps concrete event types to the targets whose patterns match, with a bounded cache.

    Targets are kept in the order they were added. ``resolve`` is safe to call from any
    thread; ``add``/``remove`` take a lock and clear the cache.
    """

    def __init__(self, cache_size: int = 4096, *, validate: Callable[[str], object] | None = None):
        if cache_size < 1:
            raise InvalidValueError("cache_size must be >= 1")
        self._cache_size = cache_size
        self._validate = validate
        self._lock = threading.Lock()
        self._exact: dict[str, list[tuple[int, T]]] = {}
        self._globs: list[tuple[int, EventPattern, T]] = []
        self._order = 0
        self.cache: dict[str, tuple[T, ...]] = {}
        self.misses = 0

    def add(self, pattern: EventPattern, target: T) -> None:
        """Route events matching ``pattern`` to ``target``."""
        with self._lock:
            self._order += 1
            if pattern.is_exact:
                self._exact.setdefault(pattern.source, []).append((self._order, target))
            else:
                self._globs.append((self._order, pattern, target))
            self.cache = {}

    def remove(self, target: T) -> bool:
        """Stop routing to ``target``; returns False if it was not routed."""
        with self._lock:
            found = False
            for key in list(self._exact):
                kept = [(o, t) for o, t in self._exact[key] if t is not target]
                if len(kept) != len(self._exact[key]):
                    found = True
                    if kept:
                        self._exact[key] = kept
                    else:
                        del self._exact[key]
            kept_globs = [g for g in self._globs if g[2] is not target]
            if len(kept_globs) != len(self._globs):
                found = True
                self._globs = kept_globs
            self.cache = {}
            return found

    def resolve(self, event_type: str) -> tuple[T, ...]:
        """The targets for ``event_type``, in the order they were added (cached)."""
        hit = self.cache.get(event_type)
        if hit is not None:
            return hit
        return self._resolve_slow(event_type)

    def _resolve_slow(self, event_type: str) -> tuple[T, ...]:
        if self._validate is not None:
            self._validate(event_type)
        with self._lock:
            matched = list(self._exact.get(event_type, ()))
            matched.extend((o, t) for o, p, t in self._globs if p.matches(event_type))
            matched.sort(key=lambda pair: pair[0])
            targets = tuple(t for _, t in matched)
            cache = self.cache
            if len(cache) >= self._cache_size:
                # Bounded: drop the older half (dicts keep insertion order).
                for key in list(cache)[: self._cache_size // 2]:
                    del cache[key]
            cache[event_type] = targets
            self.misses += 1
            return targets

    def __len__(self) -> int:
        return sum(len(v) for v in self._exact.values()) + len(self._globs)
