"""Scoped, versioned state: the contract, two backends and the hooked store."""

from llmspell.runtime.state.base import StateBackend, StateEntry, StateScope
from llmspell.runtime.state.memory import MemoryStateBackend
from llmspell.runtime.state.sqlite import SQLiteStateBackend
from llmspell.runtime.state.store import (
    RESERVED_PREFIX,
    SCHEMA_KEY,
    Migration,
    StateStore,
    parse_scope,
)

__all__ = [
    "RESERVED_PREFIX",
    "SCHEMA_KEY",
    "MemoryStateBackend",
    "Migration",
    "SQLiteStateBackend",
    "StateBackend",
    "StateEntry",
    "StateScope",
    "StateStore",
    "parse_scope",
]
