"""Event-type patterns and the routing table.

A pattern is dotted segments. ``*`` is exactly one segment, ``**`` is any number of segments
(zero included) and must stand alone in its segment; inside a segment ``*`` is any run of
characters, ``?`` one character and ``[abc]``/``[!abc]`` a character class — none of them
ever crosses a dot.

Matching cannot blow up. A pattern with at most one ``**`` and at most one ``*`` inside
each segment compiles to an anchored regular expression whose only ambiguity is where the
one ``**`` ends (at most quadratic in the event type's length, which is bounded). Any other
pattern compiles to one matcher per segment, and an event type is matched by a
set-of-states walk over its segments (``**`` keeps its state alive), with a two-pointer
glob match inside a segment: at most (pattern segments x type segments x segment length)
steps. Patterns are bounded (:data:`MAX_PATTERN_LENGTH`
characters, :data:`MAX_DOUBLE_STARS` ``**`` segments), so no pattern can stall a publisher.
A pattern past a bound raises :class:`~llmspell.errors.PatternTooComplexError`.

Routing does not scan patterns per event: :class:`PatternRouter` resolves the matching
subscriptions once per concrete event type and caches the answer (bounded, evicting the
least recently used type), and the cache is dropped whenever a subscription is added or
removed. A cache hit costs one dict lookup. A miss walks a segment trie of the glob
patterns, as message brokers route subjects: per segment of the event type, one dict lookup
for literal segments, the ``*`` child, the glob segments of the nodes reached (each matched
against the one segment) and the ``**`` children; so a new type costs about the depth of the
patterns that could match it, not the number of subscriptions.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from contextlib import suppress
from typing import Generic, TypeVar, cast

from llmspell.core.errors import InvalidValueError, PatternTooComplexError

__all__ = [
    "MAX_DOUBLE_STARS",
    "MAX_PATTERN_LENGTH",
    "EventPattern",
    "PatternRouter",
    "compile_pattern",
]

T = TypeVar("T")

MAX_PATTERN_LENGTH = 512
"""The longest pattern, in characters (event types are at most 255)."""
MAX_DOUBLE_STARS = 8
"""The most ``**`` segments one pattern may have."""

_SEGMENT_CHARS = re.compile(r"[A-Za-z0-9_\-*?\[\]!]+")
_GLOB_CHARS = frozenset("*?[")

# A segment matcher: None for '**', else a function of one type segment.
_SegmentMatcher = Callable[[str], bool] | None


def _any_segment(segment: str) -> bool:
    return True


class _Glob:
    """One segment with globs: tokens are '*' (any run), '?' (one char), a compiled
    one-character class (with its negation flag) or a literal character."""

    __slots__ = ("tokens",)

    def __init__(self, tokens: list[object]) -> None:
        self.tokens = tokens

    def __call__(self, text: str) -> bool:
        # The classic two-pointer wildcard match: on a mismatch, resume after the last '*'
        # one character further. Worst case len(text) x len(tokens), never exponential.
        tokens = self.tokens
        n, m = len(text), len(tokens)
        i = j = 0
        star_j = -1
        star_i = 0
        while i < n:
            if j < m:
                token = tokens[j]
                if token == "*":
                    star_j, star_i = j, i
                    j += 1
                    continue
                if _token_matches(token, text[i]):
                    i += 1
                    j += 1
                    continue
            if star_j < 0:
                return False
            star_i += 1
            i, j = star_i, star_j + 1
        while j < m and tokens[j] == "*":
            j += 1
        return j == m


def _token_matches(token: object, char: str) -> bool:
    if token == "?":
        return True
    if isinstance(token, str):
        return token == char
    assert isinstance(token, _Class)
    return (token.regex.fullmatch(char) is None) is token.negate


class _Class:
    """A one-character class, ``[a-c]`` or negated ``[!a-c]``."""

    __slots__ = ("negate", "regex")

    def __init__(self, regex: re.Pattern[str], negate: bool) -> None:
        self.regex = regex
        self.negate = negate


class EventPattern:
    """A compiled pattern. ``matches(event_type)`` answers whether an event type fits."""

    __slots__ = ("_regex", "_segments", "is_exact", "source")

    def __init__(self, source: str, segments: tuple[_SegmentMatcher, ...] | None,
                 regex: re.Pattern[str] | None = None) -> None:
        self.source = source
        self._segments = segments
        self._regex = regex
        self.is_exact = segments is None

    def matches(self, event_type: str) -> bool:
        """True when ``event_type`` fits this pattern (bounded time; see the module doc)."""
        if self._regex is not None:
            return self._regex.fullmatch(event_type + ".") is not None
        segments = self._segments
        if segments is None:
            return event_type == self.source
        last = len(segments)
        states = _closure(segments, {0})
        for part in event_type.split("."):
            following: set[int] = set()
            for state in states:
                if state == last:
                    continue
                matcher = segments[state]
                if matcher is None:
                    following.add(state)
                elif matcher(part):
                    following.add(state + 1)
            if not following:
                return False
            states = _closure(segments, following)
        return last in states

    def __repr__(self) -> str:
        return f"EventPattern({self.source!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EventPattern) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)


def _closure(segments: tuple[_SegmentMatcher, ...], states: set[int]) -> set[int]:
    """Add the states reachable by letting a '**' match zero segments."""
    last = len(segments)
    for start in sorted(states):
        state = start
        while state < last and segments[state] is None:
            state += 1
            states.add(state)
    return states


def _invalid(pattern: str, why: str) -> InvalidValueError:
    return InvalidValueError(
        f"invalid event pattern {pattern!r}: {why}",
        hint="use dotted segments; '*' = one segment, '**' = any number (alone in its "
        "segment), globs like 'calc*' or 'v?' inside a segment",
    )


def _segment_matcher(pattern: str, segment: str) -> _SegmentMatcher:
    if segment == "**":
        return None
    if segment == "*":
        return _any_segment
    if not any(c in _GLOB_CHARS for c in segment):
        if "]" in segment or "!" in segment:
            raise _invalid(pattern, f"stray ']' or '!' in segment {segment!r}")
        return segment.__eq__
    tokens: list[object] = []
    i = 0
    while i < len(segment):
        char = segment[i]
        if char == "*":
            if segment.startswith("**", i):
                raise _invalid(pattern, "'**' must be a whole segment")
            if not tokens or tokens[-1] != "*":
                tokens.append("*")
        elif char == "?":
            tokens.append("?")
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
            try:
                regex = re.compile(f"[{escaped}]")
            except re.error as exc:
                raise _invalid(pattern, f"bad character class [{body}]: {exc}") from None
            tokens.append(_Class(regex, negate))
            i = end
        elif char in "]!":
            raise _invalid(pattern, f"stray {char!r} in segment {segment!r}")
        else:
            tokens.append(char)
        i += 1
    return _Glob(tokens)


def compile_pattern(pattern: str) -> EventPattern:
    """Compile ``pattern``; an invalid one raises ``InvalidValueError`` saying why, one past
    the bounds :class:`PatternTooComplexError`."""
    if not isinstance(pattern, str):
        raise InvalidValueError(f"an event pattern must be a string, not {type(pattern).__name__}")
    if not pattern:
        raise _invalid(pattern, "it is empty")
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise PatternTooComplexError(
            f"event pattern is {len(pattern)} characters long; the limit is "
            f"{MAX_PATTERN_LENGTH}", hint="use a shorter pattern")
    segments = pattern.split(".")
    if any(not s for s in segments):
        raise _invalid(pattern, "empty segment (leading, trailing or doubled dot)")
    for segment in segments:
        if not _SEGMENT_CHARS.fullmatch(segment):
            raise _invalid(pattern, f"segment {segment!r} has characters outside "
                                    "letters, digits, '_', '-' and glob syntax")
    stars = segments.count("**")
    if stars > MAX_DOUBLE_STARS:
        raise PatternTooComplexError(
            f"event pattern {pattern[:80]!r} has {stars} '**' segments; the limit is "
            f"{MAX_DOUBLE_STARS}", hint="one '**' already matches any number of segments")
    if not any(c in _GLOB_CHARS for c in pattern):
        if "]" in pattern or "!" in pattern:
            raise _invalid(pattern, "stray ']' or '!' outside a character class")
        return EventPattern(pattern, None)
    matchers: list[_SegmentMatcher] = []
    for segment in segments:
        matcher = _segment_matcher(pattern, segment)  # validates the segment
        if matcher is None and matchers and matchers[-1] is None:
            continue  # '**.**' is the same as '**'
        matchers.append(matcher)
    regex = None
    if stars <= 1 and all(s.count("*") <= 1 for s in segments if s != "**"):
        parts = [r"(?:[^.]+\.)*" if s == "**" else _segment_regex(s) for s in segments]
        regex = re.compile("".join(parts))
    return EventPattern(pattern, tuple(matchers), regex)


def _segment_regex(segment: str) -> str:
    """The regex of one already validated segment (with at most one '*')."""
    if segment == "*":
        return r"[^.]+\."
    out: list[str] = []
    i = 0
    while i < len(segment):
        char = segment[i]
        if char == "*":
            out.append(r"[^.]*")
        elif char == "?":
            out.append(r"[^.]")
        elif char == "[":
            end = segment.find("]", i + 2)
            body = segment[i + 1 : end]
            negate = body.startswith("!")
            if negate:
                body = body[1:]
            escaped = re.escape(body).replace(r"\-", "-")
            out.append(f"[^.{escaped}]" if negate else f"(?!\\.)[{escaped}]")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out) + r"\."


class _Node:
    """A trie node: children by literal segment, the ``*`` child, glob segments (matcher and
    child, keyed by the segment's text), the ``**`` child, and the (order, target) pairs of
    the patterns ending here."""

    __slots__ = ("double", "globs", "is_double", "literal", "star", "targets")

    def __init__(self, is_double: bool = False) -> None:
        self.is_double = is_double
        self.literal: dict[str, _Node] = {}
        self.star: _Node | None = None
        self.globs: dict[str, tuple[Callable[[str], bool], _Node]] = {}
        self.double: _Node | None = None
        self.targets: list[tuple[int, object]] = []


def _trie_segments(source: str) -> list[str]:
    """The pattern's segments with runs of ``**`` collapsed (``**.**`` is ``**``)."""
    out: list[str] = []
    for segment in source.split("."):
        if segment == "**" and out and out[-1] == "**":
            continue
        out.append(segment)
    return out


class _Trie:
    """The glob patterns of a router as a segment trie (see the module doc)."""

    __slots__ = ("root",)

    def __init__(self) -> None:
        self.root = _Node()

    def add(self, pattern: EventPattern, order: int, target: object) -> None:
        node = self.root
        for segment in _trie_segments(pattern.source):
            if segment == "**":
                if node.double is None:
                    node.double = _Node(is_double=True)
                node = node.double
            elif segment == "*":
                if node.star is None:
                    node.star = _Node()
                node = node.star
            elif any(c in _GLOB_CHARS for c in segment):
                entry = node.globs.get(segment)
                if entry is None:
                    matcher = _segment_matcher(pattern.source, segment)
                    assert matcher is not None
                    entry = node.globs[segment] = (matcher, _Node())
                node = entry[1]
            else:
                child = node.literal.get(segment)
                if child is None:
                    child = node.literal[segment] = _Node()
                node = child
        node.targets.append((order, target))

    def match(self, parts: list[str], found: dict[int, object]) -> None:
        """Add the (order, target) pairs of every pattern matching ``parts`` to ``found``.

        A level-by-level walk over the set of nodes reached: a ``**`` node stays in the set
        (it takes one more segment) and lets its children try the segment too (it took
        zero)."""
        root = self.root
        current = [root, root.double] if root.double is not None else [root]
        for part in parts:
            following: list[_Node] = []
            for node in current:
                child = node.literal.get(part)
                if child is not None:
                    following.append(child)
                if node.star is not None:
                    following.append(node.star)
                if node.globs:
                    following.extend(c for m, c in node.globs.values() if m(part))
                if node.is_double:
                    following.append(node)
            if not following:
                return
            current = []
            seen: set[_Node] = set()  # nodes hash by identity
            for node in following:
                if node not in seen:
                    seen.add(node)
                    current.append(node)
                    double = node.double
                    if double is not None and double not in seen:
                        seen.add(double)
                        current.append(double)
        for node in current:
            if node.targets:
                found.update(node.targets)


class PatternRouter(Generic[T]):
    """Maps concrete event types to the targets whose patterns match, with a bounded cache.

    Targets are kept in the order they were added. ``resolve`` is safe to call from any
    thread; ``add``/``remove`` take a lock and clear the cache. Past ``cache_size`` types
    the least recently resolved one is evicted.
    """

    def __init__(self, cache_size: int = 4096, *, validate: Callable[[str], object] | None = None):
        if cache_size < 1:
            raise InvalidValueError("cache_size must be >= 1")
        self._cache_size = cache_size
        self._validate = validate
        self._lock = threading.Lock()
        self._exact: dict[str, list[tuple[int, T]]] = {}
        self._globs: list[tuple[int, EventPattern, T]] = []
        self._trie = _Trie()
        self._order = 0
        self.cache: OrderedDict[str, tuple[T, ...]] = OrderedDict()
        self.misses = 0

    def add(self, pattern: EventPattern, target: T) -> None:
        """Route events matching ``pattern`` to ``target``."""
        with self._lock:
            self._order += 1
            if pattern.is_exact:
                self._exact.setdefault(pattern.source, []).append((self._order, target))
            else:
                self._globs.append((self._order, pattern, target))
                self._trie.add(pattern, self._order, target)
            self.cache = OrderedDict()

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
                # Removal is rare: the trie is rebuilt (which also drops emptied nodes).
                trie = _Trie()
                for order, glob, routed in kept_globs:
                    trie.add(glob, order, routed)
                self._trie = trie
            self.cache = OrderedDict()
            return found

    def resolve(self, event_type: str) -> tuple[T, ...]:
        """The targets for ``event_type``, in the order they were added (cached)."""
        cache = self.cache
        hit = cache.get(event_type)
        if hit is not None:
            with suppress(KeyError):  # evicted by another thread meanwhile
                cache.move_to_end(event_type)
            return hit
        return self._resolve_slow(event_type)

    def _resolve_slow(self, event_type: str) -> tuple[T, ...]:
        if self._validate is not None:
            self._validate(event_type)
        with self._lock:
            found: dict[int, object] = dict(self._exact.get(event_type, ()))
            if self._globs:
                self._trie.match(event_type.split("."), found)
            targets = cast(tuple[T, ...], tuple(map(found.__getitem__, sorted(found))))
            cache = self.cache
            while len(cache) >= self._cache_size:
                cache.popitem(last=False)  # the least recently resolved type
            cache[event_type] = targets
            self.misses += 1
            return targets

    def __len__(self) -> int:
        return sum(len(v) for v in self._exact.values()) + len(self._globs)
