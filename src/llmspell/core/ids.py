"""Cheap unique ids for hot-path objects (contexts, events, correlation ids).

``uuid.uuid4()`` costs about 3 µs per call here, which is more than a whole hook dispatch
should cost. An id here is a random per-process prefix (96 bits from ``os.urandom``, renewed
after ``fork`` so parent and child never share one) followed by a counter in hex. Ids are
unique across processes and machines with overwhelming probability, sort (as text) by creation order
within one process, and cost one ``next()`` plus one concatenation: the counter's text is a
block part (formatted once per 4096 ids) followed by one of 4096 precomputed three-digit
endings, which is about half the cost of formatting the whole id each time. With the native
speedups (:mod:`llmspell.core.speedups`) the same ids come from C, at a fifth of the cost.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable

from llmspell.core.speedups import native

__all__ = ["id_prefix", "new_id"]

_lock = threading.Lock()
_prefix = ""
_counter: itertools.count[int] = itertools.count()
_ENDINGS = tuple(f"{low:03x}" for low in range(4096))
# (block number, "<prefix>-<block in 9 hex digits>"): one tuple, so a thread never sees a
# block number paired with another block's text.
_block: tuple[int, str] = (-1, "")


def _reseed() -> None:
    global _prefix, _counter, _block
    with _lock:
        _prefix = os.urandom(12).hex()
        _counter = itertools.count()
        _block = (-1, "")
        if native is not None:
            native.seed_ids(_prefix)


def _enter_block(number: int) -> tuple[int, str]:
    global _block
    block = _block = (number, f"{_prefix}-{number:09x}")
    return block


_reseed()
os.register_at_fork(after_in_child=_reseed)


def id_prefix() -> str:
    """Return this process's id prefix (24 hex characters)."""
    return _prefix


def _python_new_id() -> str:
    """Return a new id, unique across processes: ``<24 hex prefix>-<12 hex counter>``.

    ``itertools.count`` is atomic under the GIL, so no lock is taken per id. The
    pure-Python :data:`new_id`: its counter is not the native one's, so while the speedups
    are in use, ids from both could repeat (only the tests call it then).
    """
    count = next(_counter)
    block = _block
    if block[0] != count >> 12:
        block = _enter_block(count >> 12)
    return block[1] + _ENDINGS[count & 0xFFF]


new_id: Callable[[], str] = _python_new_id if native is None else native.new_id
"""Return a new id, unique across processes: ``<24 hex prefix>-<12 hex counter>`` (from C
when the native speedups are in use; the same ids either way)."""
