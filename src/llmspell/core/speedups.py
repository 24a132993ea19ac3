"""Whether llmspell's native speedups are in use, and the module when they are.

``llmspell.core._speedups`` is a small C module (built when the package is installed, if a
C compiler is there) with native versions of the steps every event pays for: its id, the
check that its data is plain JSON, and its ``__post_init__``; of a hook context's field
checks; of the hook executor's fast-path loop (calling, timing and counting hooks); and a
literal prefilter in front of content masking's RE2 searches.
They return exactly what the pure-Python versions return (the tests compare the two);
they are only faster. Set the environment variable ``LLMSPELL_PURE_PYTHON=1`` before
importing llmspell to run the pure-Python versions (to debug, or to compare).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

__all__ = ["ENABLED", "PURE_PYTHON_VARIABLE", "native"]

PURE_PYTHON_VARIABLE = "LLMSPELL_PURE_PYTHON"
"""The environment variable that turns the native speedups off when set to anything but
an empty string or ``0``."""


def _load() -> ModuleType | None:
    if os.environ.get(PURE_PYTHON_VARIABLE, "").strip() not in ("", "0"):
        return None
    try:
        return importlib.import_module("llmspell.core._speedups")
    except ImportError:  # not built (no C compiler at install time): pure Python
        return None


native: ModuleType | None = _load()
"""The native module, or ``None`` when the pure-Python versions run."""

ENABLED: bool = native is not None
"""True when the native speedups are in use."""
