from __future__ import annotations

import os
import threading

import pytest

from llmspell.core import Language, ManualClock, SystemClock, new_id
from llmspell.core.ids import id_prefix
from llmspell.errors import InvalidValueError


def test_ids_are_unique_across_threads() -> None:
    seen: list[str] = []

    def work() -> None:
        seen.extend(new_id() for _ in range(2000))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 16000
    assert all(i.startswith(id_prefix()) for i in seen)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_ids_keep_their_form_and_order_across_counter_blocks() -> None:
    # The counter's text is cached per block of 4096: crossing blocks must keep every id
    # "<24 hex>-<12 hex>", unique, and sorted in creation order.
    ids = [new_id() for _ in range(3 * 4096 + 7)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    prefix = id_prefix()
    for value in ids:
        head, _, counter = value.partition("-")
        assert head == prefix
        assert len(counter) == 12
        int(counter, 16)
    counters = [int(value.rpartition("-")[2], 16) for value in ids]
    assert counters == list(range(counters[0], counters[0] + len(ids)))


def test_forked_child_gets_a_new_prefix() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.write(write, new_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child_id = os.read(read, 200).decode()
    assert not child_id.startswith(id_prefix())


def test_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(start=10.0)
    assert clock.monotonic() == 10.0
    clock.advance(2.5)
    assert clock.monotonic() == 12.5
    assert clock.now() == 1_700_000_002.5
    with pytest.raises(ValueError):
        clock.advance(-1)
    real = SystemClock()
    assert real.monotonic() <= real.monotonic()
    assert real.now() > 1_600_000_000


@pytest.mark.parametrize(
    ("text", "lang"),
    [("js", Language.JAVASCRIPT), ("Lua", Language.LUA), ("rust", Language.NATIVE),
     ("python", Language.PYTHON), (Language.LUA, Language.LUA)],
)
def test_language_parse(text: str, lang: Language) -> None:
    assert Language.parse(text) is lang


def test_language_parse_error_lists_valid_names() -> None:
    with pytest.raises(InvalidValueError, match="javascript"):
        Language.parse("cobol")
