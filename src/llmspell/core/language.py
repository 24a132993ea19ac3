"""The languages a hook or event can come from."""

from __future__ import annotations

from enum import StrEnum

from llmspell.core.errors import InvalidValueError

__all__ = ["Language"]

_ALIASES = {
    "py": "python",
    "python3": "python",
    "rust": "native",
    "js": "javascript",
    "node": "javascript",
    "ecmascript": "javascript",
    "luajit": "lua",
}


class Language(StrEnum):
    """Where a hook or event comes from. ``native`` is code compiled into the host."""

    PYTHON = "python"
    LUA = "lua"
    JAVASCRIPT = "javascript"
    NATIVE = "native"
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, value: str | Language) -> Language:
        """Parse a language name, accepting common aliases (``js``, ``py``, ``rust``)."""
        if isinstance(value, Language):
            return value
        key = value.strip().lower()
        key = _ALIASES.get(key, key)
        try:
            return cls(key)
        except ValueError:
            valid = ", ".join(m.value for m in cls)
            raise InvalidValueError(
                f"unknown language {value!r}; use one of: {valid}"
            ) from None
