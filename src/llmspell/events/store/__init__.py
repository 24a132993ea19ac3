"""Event stores: the :class:`EventStore` protocol and its two implementations.

:class:`SQLiteStore` is the embedded default (one file, batching writer, never loses an
accepted event); :class:`MemoryStore` is bounded and in-memory, for tests and short runs.
"""

from llmspell.events.store.base import EventQuery, EventStore, StoreStats
from llmspell.events.store.memory import MemoryStore
from llmspell.events.store.sqlite import SQLiteStore

__all__ = ["EventQuery", "EventStore", "MemoryStore", "SQLiteStore", "StoreStats"]
