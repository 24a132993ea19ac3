"""Small statistics helpers shared by the hook monitor and the bus metrics."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

__all__ = ["counter_value", "percentile"]


def percentile(ordered: Sequence[int | float], pct: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0 for an empty one)."""
    if not ordered:
        return 0
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def counter_value(counter: itertools.count[int]) -> int:
    """The next value an ``itertools.count`` will return (= how many it has counted, from 0).

    ``itertools.count`` is used for lock-free counting (``next`` is atomic in CPython); it
    exposes its position only through its pickling support.
    """
    state: tuple[object, tuple[int, ...]] = counter.__reduce__()  # type: ignore[assignment]
    return state[1][0]
