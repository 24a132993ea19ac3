"""Core building blocks shared by every layer: ids, clocks, errors, JSON-safe values."""

from llmspell.core.clock import Clock, ManualClock, SystemClock
from llmspell.core.ids import new_id
from llmspell.core.language import Language
from llmspell.core.values import JsonValue, check_json_safe, to_json_safe

__all__ = [
    "Clock",
    "JsonValue",
    "Language",
    "ManualClock",
    "SystemClock",
    "check_json_safe",
    "new_id",
    "to_json_safe",
]
