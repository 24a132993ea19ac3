"""Fixtures shared by the framework adapter tests: a started System whose events go to a
SQLite store in a temporary directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from llmspell.runtime.config import SystemConfig
from llmspell.runtime.system import System


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[System]:
    """A started System with its SQLite event store under ``tmp_path``."""
    async with System(SystemConfig(data_dir=str(tmp_path), store="sqlite")) as sys:
        yield sys
