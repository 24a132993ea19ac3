"""Pattern semantics, pinned by a table and by a property test against a reference."""

from __future__ import annotations

import fnmatch
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmspell.errors import InvalidValueError, PatternTooComplexError
from llmspell.events import EventBus, EventPattern, PatternRouter, compile_pattern
from llmspell.events.event import MAX_EVENT_TYPE_LENGTH, validate_event_type
from llmspell.events.pattern import MAX_DOUBLE_STARS, MAX_PATTERN_LENGTH

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


# -- a simple (exponential, obviously correct) reference matcher -----------------------------


def _reference(pattern: list[str], parts: list[str]) -> bool:
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_reference(rest, parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], head) and _reference(rest, parts[1:])


_pattern_segments = st.sampled_from(["**", "*", "a", "b", "ab", "a*", "*b", "*a*", "?", "a?",
                                     "[ab]", "[!a]", "a*b*a", "?*?"])
_type_segments = st.sampled_from(["a", "b", "ab", "ba", "aab", "abab", "bb", "c", "aba"])


@settings(max_examples=400)
@given(st.lists(_pattern_segments, min_size=1, max_size=5),
       st.lists(_type_segments, min_size=1, max_size=6))
def test_matcher_agrees_with_a_reference_matcher(pattern: list[str], parts: list[str]) -> None:
    compiled = compile_pattern(".".join(pattern))
    expected = _reference(pattern, parts)
    assert compiled.matches(".".join(parts)) is expected
    # Simple patterns also compile to a regex; the segment walk must agree with it.
    walk = EventPattern(compiled.source, compiled._segments)
    assert walk.matches(".".join(parts)) is expected


def test_adversarial_patterns_match_in_linear_time() -> None:
    # With a backtracking matcher, one such publish hung the host for over a minute.
    bus = EventBus()
    seen: list[str] = []
    pattern = "**." * 8 + "z"
    bus.subscribe(pattern, lambda e: seen.append(e.event_type))
    done = threading.Event()

    def publish() -> None:
        bus.publish("a." * 120 + "b")
        bus.publish("a." * 100 + "z")
        done.set()

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    assert done.wait(30), "matching an adversarial pattern did not finish"
    assert seen == ["a." * 100 + "z"]
    glob = compile_pattern("*a*a*a*a*a*a*a*a*a*a*b")
    assert not glob.matches("a" * MAX_EVENT_TYPE_LENGTH)
    assert glob.matches("a" * 200 + "b")


def test_patterns_are_bounded_with_a_typed_error() -> None:
    with pytest.raises(PatternTooComplexError, match="'\\*\\*' segments"):
        compile_pattern("**." * 14 + "z")
    with pytest.raises(PatternTooComplexError, match="characters long"):
        compile_pattern("a" * (MAX_PATTERN_LENGTH + 1))
    assert isinstance(PatternTooComplexError("x"), InvalidValueError)
    compile_pattern(".".join(["**", "a"] * MAX_DOUBLE_STARS))
    with pytest.raises(InvalidValueError, match="character class"):
        compile_pattern("v[z-a]")


@pytest.mark.parametrize("bad", ["user.saved\n", "user.saved\r\n", "user.*\n", "a\n.b"])
def test_a_trailing_newline_is_not_a_valid_pattern_or_type(bad: str) -> None:
    with pytest.raises(InvalidValueError):
        compile_pattern(bad)
    with pytest.raises(InvalidValueError):
        validate_event_type(bad)


def test_event_types_are_bounded() -> None:
    validate_event_type("a" * MAX_EVENT_TYPE_LENGTH)
    with pytest.raises(InvalidValueError, match="characters long"):
        validate_event_type("a" * (MAX_EVENT_TYPE_LENGTH + 1))
