"""Pattern semantics, pinned by a table."""

from __future__ import annotations

import pytest

from llmspell.errors import InvalidValueError
from llmspell.events import PatternRouter, compile_pattern
from llmspell.events.event import validate_event_type

TABLE = [
    # pattern, event type, matches
    ("tool.calculator.completed", "tool.calculator.completed", True),
    ("tool.calculator.completed", "tool.calculator.failed", False),
    ("tool.*.completed", "tool.calculator.completed", True),
    ("tool.*.completed", "tool.completed", False),          # * is exactly one segment
    ("tool.*.completed", "tool.a.b.completed", False),      # * never crosses a dot
    ("tool.*", "tool.calculator", True),
    ("tool.*", "tool.calculator.completed", False),
    ("tool.*", "tool", False),
    ("tool.**", "tool", True),                               # ** matches zero segments
    ("tool.**", "tool.a", True),
    ("tool.**", "tool.a.b.c", True),
    ("tool.**", "tools.a", False),
    ("**", "anything.at.all", True),
    ("**", "x", True),
    ("**.error", "error", True),
    ("**.error", "tool.calc.error", True),
    ("**.error", "tool.calc.errors", False),
    ("agent.**.done", "agent.done", True),
    ("agent.**.done", "agent.a.b.done", True),
    ("agent.**.done", "agent.a.b.done.x", False),
    ("tool.calc*", "tool.calculator", True),                 # glob inside a segment
    ("tool.calc*", "tool.calc", True),
    ("tool.calc*", "tool.calc.x", False),                    # a segment glob stays in it
    ("*.error", "tool.error", True),
    ("*.error", "a.b.error", False),
    ("v?", "v1", True),
    ("v?", "v10", False),
    ("v[0-9]", "v7", True),
    ("v[0-9]", "vx", False),
    ("v[!0-9]", "vx", True),
    ("v[!0-9]", "v7", False),
    ("*", "a", True),
    ("*", "a.b", False),
    ("*.*", "a.b", True),
    ("*.**", "a", True),
    ("a-b.c_d", "a-b.c_d", True),
]


@pytest.mark.parametrize(("pattern", "event_type", "expected"), TABLE)
def test_pattern_table(pattern: str, event_type: str, expected: bool) -> None:
    assert compile_pattern(pattern).matches(event_type) is expected
    router: PatternRouter[str] = PatternRouter()
    router.add(compile_pattern(pattern), "target")
    assert router.resolve(event_type) == (("target",) if expected else ())


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("", "empty"),
        ("a..b", "empty segment"),
        (".a", "empty segment"),
        ("a.", "empty segment"),
        ("a.***", "whole segment"),
        ("a.b**", "whole segment"),
        ("a.[bc", "unclosed"),
        ("a.[]", "unclosed"),
        ("a.[!]", "empty character class"),
        ("a.b]", "stray"),
        ("a b", "characters"),
        ("a.b/c", "characters"),
        ("a!", "stray"),
    ],
)
def test_invalid_patterns_say_why(pattern: str, why: str) -> None:
    with pytest.raises(InvalidValueError, match=why):
        compile_pattern(pattern)


def test_non_string_pattern() -> None:
    with pytest.raises(InvalidValueError):
        compile_pattern(3)  # type: ignore[arg-type]


def test_router_keeps_subscription_order_and_caches_per_type() -> None:
    router: PatternRouter[str] = PatternRouter(cache_size=4, validate=validate_event_type)
    router.add(compile_pattern("tool.**"), "all-tools")
    router.add(compile_pattern("tool.calc.done"), "exact")
    router.add(compile_pattern("*.calc.*"), "calc")
    assert router.resolve("tool.calc.done") == ("all-tools", "exact", "calc")
    misses = router.misses
    assert router.resolve("tool.calc.done") == ("all-tools", "exact", "calc")
    assert router.misses == misses  # served from the cache
    router.add(compile_pattern("tool.calc.done"), "late")
    assert router.resolve("tool.calc.done")[-1] == "late"  # the cache was invalidated
    assert router.remove("exact") and not router.remove("exact")
    assert router.resolve("tool.calc.done") == ("all-tools", "calc", "late")
    assert router.remove("all-tools")
    assert len(router) == 2


def test_router_cache_is_bounded_and_validates_types() -> None:
    router: PatternRouter[str] = PatternRouter(cache_size=4, validate=validate_event_type)
    router.add(compile_pattern("**"), "t")
    for i in range(20):
        router.resolve(f"e{i}")
    assert len(router.cache) <= 4
    with pytest.raises(InvalidValueError, match="event type"):
        router.resolve("bad..type")
    with pytest.raises(InvalidValueError):
        PatternRouter(cache_size=0)


def test_pattern_equality_and_repr() -> None:
    assert compile_pattern("a.*") == compile_pattern("a.*")
    assert len({compile_pattern("a.*"), compile_pattern("a.*")}) == 1
    assert repr(compile_pattern("a.*")) == "EventPattern('a.*')"
    assert compile_pattern("a.b").is_exact and not compile_pattern("a.*").is_exact
