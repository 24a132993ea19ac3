"""The native literal prefilter in front of the masking searches: it gives the RE2
search's own answer on every text (a text with no needle cannot match), and the needles
cover every branch of the secret pattern."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmspell.core.speedups import native
from llmspell.runtime import content
from llmspell.runtime.content import (
    _MASKER,
    _MAY_HOLD_SECRET,
    _MAY_NEED_MASK,
    _SECRET_NEEDLES,
    _spans,
)

pytestmark = pytest.mark.skipif(native is None, reason="the native speedups are not built")

_PLAIN_SECRET = _spans(_MAY_HOLD_SECRET, b'"sk-', b'{"a":1}')
_PLAIN_NEED = _spans(_MAY_NEED_MASK, b'{"api_key":1}', b'{"a":1}')
_FRAGMENTS = tuple(f.encode() for f in _MASKER.fragments)

# Pieces that make texts near the patterns' matches: the needles and the pattern's own
# prefixes in mixed case, the separators the password branch allows, JSON punctuation.
_PIECES = [
    *_SECRET_NEEDLES, *_FRAGMENTS, b"SK-", b"Sk-", b"AKIA", b"AIza", b"ghp_", b"GHP_",
    b"xoxb-", b"-----BEGIN", b"Bearer", b"PASSWORD", b"PassWd", b"Pwd", b"api-Key",
    b"API_KEY", b"Token", b"tokens_in", b'\\"', b"'", b" ", b"\\t", b"\\n", b"\\u0020",
    b":", b"=", b'"', b"{", b"}", b"[", b"]", b",", b"a", b"k", b"s", b"-", b"_", b"x",
    b"1", b"pw", b"to", b"se", b"ap", b"gh", b"xo", b"be",
]
def _same(a: object, b: object) -> bool:
    """The same spans (the search gives a list, the prefilter its no-match tuple)."""
    return [tuple(span) for span in a] == [tuple(span) for span in b]  # type: ignore[attr-defined]


texts = st.lists(st.sampled_from(_PIECES) | st.binary(max_size=4).map(
    lambda b: bytes(c & 0x7F for c in b)), max_size=40).map(b"".join)


@settings(max_examples=3000, deadline=None)
@given(texts)
def test_the_prefilter_gives_the_searchs_answer(raw: bytes) -> None:
    end = len(raw)
    assert _same(content._secret_spans(raw, 0, end), _PLAIN_SECRET(raw, 0, end))
    if content._KEYS_SEARCHABLE:
        assert _same(content._need_spans(raw, 0, end), _PLAIN_NEED(raw, 0, end))


@settings(max_examples=500, deadline=None)
@given(texts, st.integers(0, 50), st.integers(0, 50))
def test_windows_of_a_text(raw: bytes, pos: int, end: int) -> None:
    assert _same(content._secret_spans(raw, pos, end), _PLAIN_SECRET(raw, pos, end))


def test_every_branch_of_the_secret_pattern_holds_a_needle() -> None:
    samples = [b"sk-x", b"pk-x", b"rk-x", b"AKIAX", b"ghp_x", b"gho_x", b"ghu_x", b"ghs_x",
               b"ghr_x", b"xoxa-", b"xoxb-", b"xoxp-", b"xoxo-", b"xoxs-", b"xoxr-", b"AIzaX",
               b"-----BEGIN KEY", b"BEARER x", b'password\\": 1', b"PASSWD=1", b"pwd :1",
               b"Secret:1", b"api_key=1", b"api-key=1", b"apikey=1", b"TOKEN\\t:1"]
    # Every top-level branch of the pattern has a sample here.
    branches = _MAY_HOLD_SECRET.pattern.count(b"|") - _MAY_HOLD_SECRET.pattern.count(
        b"(?:sk|pk|rk)") * 2
    assert branches > 0
    for sample in samples:
        assert _PLAIN_SECRET(sample, 0, len(sample))[0][0] >= 0, sample
        assert content._secret_spans(sample, 0, len(sample))[0][0] >= 0, sample
        lowered = sample.lower()
        assert any(needle in lowered for needle in _SECRET_NEEDLES), sample


def test_the_needles_are_what_the_prefilter_needs() -> None:
    assert all(needle == needle.lower() and needle for needle in _SECRET_NEEDLES)
    literal = re.compile(rb"[a-z]+")
    for word in (b"password", b"passwd", b"pwd", b"secret", b"token", b"bearer"):
        assert literal.fullmatch(word) and word in _SECRET_NEEDLES


def test_texts_made_of_needle_beginnings_give_the_searchs_answer() -> None:
    for raw in (b"s" * 500, b"se" * 250, b"pa" * 256, b"sk" * 100 + b"-",
                b"se" * 100 + b"secret", b"pw" * 30 + b"d:1"):
        assert _same(content._secret_spans(raw, 0, len(raw)),
                     _PLAIN_SECRET(raw, 0, len(raw))), raw[:10]
        assert _same(content._need_spans(raw, 0, len(raw)), _PLAIN_NEED(raw, 0, len(raw)))


def test_one_byte_needles() -> None:
    assert native is not None
    found = native.prefilter((b"q", b"ab"), lambda *a: "hit", "miss")
    assert found(b"xxQxx", 0, 5) == "hit" and found(b"xxxxa", 0, 5) == "miss"
    assert found(b"", 0, 0) == "miss" and found(b"xAB", 0, 3) == "hit"


def test_long_and_non_ascii_texts_go_to_the_search() -> None:
    long_text = b'{"a":"' + b"x" * 2000 + b'"}'
    assert content._secret_spans(long_text, 0, len(long_text))[0][0] < 0
    secret_far = b"x" * 2000 + b"sk-abc"
    assert _same(content._secret_spans(secret_far, 0, len(secret_far)),
                 _PLAIN_SECRET(secret_far, 0, len(secret_far)))
    accented = "caf\u00e9 sk-1".encode()
    assert _same(content._secret_spans(accented, 0, len(accented)),
                 _PLAIN_SECRET(accented, 0, len(accented)))


def test_bad_prefilter_arguments() -> None:
    assert native is not None
    with pytest.raises(TypeError, match="needles"):
        native.prefilter([b"a"], print, None)
    with pytest.raises(TypeError, match="non-empty bytes"):
        native.prefilter((b"",), print, None)
    with pytest.raises(ValueError, match="lower case"):
        native.prefilter((b"Ab",), print, None)
    calls: list[tuple[object, ...]] = []
    found = native.prefilter((b"ab",), lambda *a: calls.append(a) or "hit", "miss")
    assert found(b"xxABxx", 0, 6) == "hit" and found(b"xxaxbx", 0, 6) == "miss"
    assert found("not bytes", 0, 1) == "hit"  # anything unusual: the search decides
    assert found(b"ab", 2, 1) == "hit" and found(b"ab", 0, 9) == "hit"
    assert found(b"ab", 0) == "hit"


@pytest.mark.parametrize("value", [
    {"note": "BEARER abcdefghijklmnopqrstuvwxyz"},
    {"PassWord": "hunter2"},
    {"cfg": {"Api-Key": "k-123"}},
    ["AKIAIOSFODNN7EXAMPLE"],
    {"x": "AIzaSyA-1234567890abcdefghijklmnopqrstu"},
    {"text": "pwd : s3cret"},
    {"deep": [[{"Session_Id": "abc"}]]},
    {"ok": "nothing to see", "n": 3},
])
def test_hostile_values_are_masked_as_without_the_prefilter(
        monkeypatch: pytest.MonkeyPatch, value: object) -> None:
    """End to end through mask_value: whatever the prefilter lets through, the plain
    search would have let through too (mixed case, keys, nesting, secret shapes)."""
    with_prefilter = content.mask_value(value, copied=True)
    monkeypatch.setattr(content, "_need_spans", _PLAIN_NEED)
    monkeypatch.setattr(content, "_secret_spans", _PLAIN_SECRET)
    assert with_prefilter == content.mask_value(value, copied=True)
