from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from llmspell.core.text import is_utf8, printable


@given(st.binary(max_size=64))
def test_printable_text_of_any_bytes_encodes_and_keeps_what_was_utf8(raw: bytes) -> None:
    text = os.fsdecode(raw)  # as a file name or argument reaches Python
    shown = printable(text)
    assert is_utf8(shown)
    if is_utf8(text):
        assert shown == text


def test_a_lone_surrogate_is_not_utf8_and_is_shown_replaced() -> None:
    assert not is_utf8("a\udcffb") and is_utf8("a\u00e9b")
    assert printable("a\udcffb") == "a\ufffdb"
    assert is_utf8(printable("half \ud800 pair"))
    assert printable(42) == "42"
