"""One rule for optional dependencies and servers in tests: skip locally, fail in CI.

A developer without Pillow, genai-prices or a local PostgreSQL still gets a green run with
a few skips; a CI job (``CI`` set to ``1``, ``true``, ``yes`` or ``on``, any case, as
GitHub Actions, GitLab, CircleCI and Travis do) fails instead, so a broken install or a
missing service container cannot hide as skipped tests.

Use :func:`require_module` instead of ``pytest.importorskip`` and :func:`unavailable`
instead of ``pytest.skip`` whenever the reason is something missing from the environment.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from types import ModuleType
from typing import NoReturn

import pytest

__all__ = ["CI_TRUE", "in_ci", "require_module", "unavailable"]

CI_TRUE = frozenset({"1", "true", "yes", "on"})
"""Values of ``CI`` (compared lower-cased, spaces stripped) that mean "this is CI"."""


def in_ci(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the tests run in CI: ``CI`` is set to a true value (see :data:`CI_TRUE`).
    ``environ`` defaults to ``os.environ``."""
    env = os.environ if environ is None else environ
    return env.get("CI", "").strip().lower() in CI_TRUE


def unavailable(reason: str, *, environ: Mapping[str, str] | None = None) -> NoReturn:
    """Stop the current test (or module, at import time) because ``reason`` (a dependency
    or server) is missing: a skip locally, a failure in CI."""
    if in_ci(environ):
        pytest.fail(f"{reason} (CI is set, so a missing dependency fails instead of "
                    "skipping)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require_module(name: str, *, install: str | None = None,
                   environ: Mapping[str, str] | None = None) -> ModuleType:
    """Import and return module ``name``; if it cannot be imported, :func:`unavailable`.
    ``install`` names what to install (default: the module's top-level name)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        what = install or name.partition(".")[0]
        unavailable(f"{name} cannot be imported ({exc}); install {what}", environ=environ)
