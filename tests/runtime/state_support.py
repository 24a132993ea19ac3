"""Fixtures shared by the state tests: a backend of each kind, and a System of each kind
(memory store, SQLite data directory) with its state store; and a SQLite backend on a
given file, closed after use."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from llmspell.runtime import System, SystemConfig
from llmspell.runtime.state import MemoryStateBackend, SQLiteStateBackend
from llmspell.runtime.state.base import StateBackend
from llmspell.runtime.state.store import StateStore

BackendFactory = Callable[..., StateBackend]


@contextmanager
def opened(path: Path, **bounds: Any) -> Iterator[SQLiteStateBackend]:
    """A SQLiteStateBackend on ``path`` (keyword arguments: its bounds), closed on leaving."""
    backend = SQLiteStateBackend(path, **bounds)
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture(params=["memory", "sqlite"])
def make_backend(request: pytest.FixtureRequest, tmp_path: Path) -> BackendFactory:
    """Builds a backend of the parameter's kind (keyword arguments: its bounds)."""
    def make(**kwargs: Any) -> StateBackend:
        if request.param == "memory":
            return MemoryStateBackend(**kwargs)
        return SQLiteStateBackend(tmp_path / "state.db", **kwargs)
    return make


@pytest.fixture(params=["memory", "sqlite"])
async def system(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[System]:
    """A started System with an in-memory store, or with its files in ``tmp_path``."""
    if request.param == "memory":
        sys_ = System(SystemConfig(store="memory"))
    else:
        sys_ = System(SystemConfig(data_dir=str(tmp_path)))
    await sys_.start()
    yield sys_
    await sys_.shutdown()


@pytest.fixture
def state(system: System) -> StateStore:
    """The state store of ``system``."""
    return system.state
