"""The router's segment trie routes exactly as the reference matcher (EventPattern.matches)
does, in subscription order, through adds and removals; its cache evicts by recency."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from llmspell.events import PatternRouter, compile_pattern

WORDS = ["a", "b", "ab", "tool", "x1"]
SEGMENTS = st.sampled_from([*WORDS, "*", "**", "a*", "*b", "?", "x[0-9]", "[!a]*", "t?ol"])
PATTERNS = st.lists(SEGMENTS, min_size=1, max_size=5).map(".".join)
TYPES = st.lists(st.sampled_from([*WORDS, "x7", "tol", "bb"]), min_size=1,
                 max_size=6).map(".".join)


def reference(patterns: list[tuple[str, int]], event_type: str) -> tuple[int, ...]:
    return tuple(t for p, t in patterns if compile_pattern(p).matches(event_type))


@settings(max_examples=300, deadline=None)
@given(st.lists(PATTERNS, min_size=1, max_size=12), st.lists(TYPES, min_size=1, max_size=8),
       st.data())
def test_trie_routes_like_the_reference_matcher(
    patterns: list[str], types: list[str], data: st.DataObject
) -> None:
    router: PatternRouter[int] = PatternRouter(cache_size=3)
    subscribed = list(zip(patterns, range(len(patterns)), strict=True))
    for pattern, target in subscribed:
        router.add(compile_pattern(pattern), target)
    for event_type in types:
        assert router.resolve(event_type) == reference(subscribed, event_type)
    # Remove some targets: routing follows, cached or not.
    removed = data.draw(st.sets(st.integers(0, len(patterns) - 1)))
    for target in removed:
        assert router.remove(target)
    kept = [(p, t) for p, t in subscribed if t not in removed]
    for event_type in types:
        assert router.resolve(event_type) == reference(kept, event_type)
        assert router.resolve(event_type) == reference(kept, event_type)  # from the cache


def test_the_same_target_through_two_paths_is_routed_once() -> None:
    router: PatternRouter[str] = PatternRouter()
    router.add(compile_pattern("**.**.a.**"), "x")
    router.add(compile_pattern("a.**"), "y")
    assert router.resolve("a.a.a") == ("x", "y")


def test_the_cache_evicts_the_least_recently_resolved_type() -> None:
    router: PatternRouter[str] = PatternRouter(cache_size=2)
    router.add(compile_pattern("t.*"), "s")
    router.resolve("t.a")
    router.resolve("t.b")
    router.resolve("t.a")  # used again: t.b is now the least recent
    router.resolve("t.c")
    assert set(router.cache) == {"t.a", "t.c"}
    misses = router.misses
    router.resolve("t.a")
    assert router.misses == misses
