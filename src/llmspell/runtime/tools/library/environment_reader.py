"""A tool that reads environment variables, but only those on an allow-list.

The allow-list holds exact names (``HOME``) or prefix globs (``APP_*``). Any other name is
refused with :class:`SandboxViolationError`, so a model cannot fish for credentials. Values
of allowed names that look secret (their name contains KEY, TOKEN, SECRET, PASSWORD, ...)
are masked unless the tool is built with ``reveal_secrets=True``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any, Final

from llmspell.core.errors import ConfigurationError, SandboxViolationError, ToolExecutionError
from llmspell.runtime.tools.base import SecurityLevel, Tool

__all__ = ["MASK", "EnvironmentReaderTool", "looks_secret"]

_NAME = "environment_reader"
MASK: Final = "********"
_SECRET_WORDS: Final = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")
_ENTRY: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\*?$")


def looks_secret(name: str) -> bool:
    """True when the variable ``name`` probably holds a secret (by its name)."""
    upper = name.upper()
    return any(word in upper for word in _SECRET_WORDS)


class EnvironmentReaderTool(Tool):
    """Read allow-listed environment variables; secret-looking values are masked."""

    name = _NAME
    description = (
        "Read environment variables. operation 'get' returns the value of 'name' (or of "
        "each of 'names'); 'list' returns the allowed variable names that are set. Only "
        "allow-listed names can be read; values of secret-looking names are masked."
    )
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "operation": {"enum": ["get", "list"],
                          "description": "'get' a value or 'list' the readable names."},
            "name": {"type": "string", "minLength": 1, "maxLength": 256,
                     "description": "The variable to read (for 'get')."},
            "names": {"type": "array", "minItems": 1, "maxItems": 100,
                      "items": {"type": "string", "minLength": 1, "maxLength": 256},
                      "description": "Several variables to read (for 'get')."},
        },
        "required": ["operation"],
        "additionalProperties": False,
    }
    timeout = 5.0
    security_level = SecurityLevel.RESTRICTED

    def __init__(self, *, allow: Iterable[str] = (), reveal_secrets: bool = False) -> None:
        entries = list(allow)
        for entry in entries:
            if not isinstance(entry, str) or not _ENTRY.match(entry):
                raise ConfigurationError(
                    f"invalid environment allow-list entry {entry!r}",
                    hint="use exact names (HOME) or prefix globs ending in * (APP_*)",
                )
        self.allow: tuple[str, ...] = tuple(entries)
        self._exact = frozenset(e for e in entries if not e.endswith("*"))
        self._prefixes = tuple(e[:-1] for e in entries if e.endswith("*"))
        self.reveal_secrets = reveal_secrets

    def allowed(self, name: str) -> bool:
        """True when ``name`` is on the allow-list (exactly or by a prefix glob)."""
        return name in self._exact or any(name.startswith(p) for p in self._prefixes)

    def _check(self, name: str) -> None:
        if not self.allowed(name):
            shown = ", ".join(self.allow) or "nothing"
            raise SandboxViolationError(
                _NAME,
                f"reading the environment variable {name!r} is not allowed",
                hint=f"the allow-list (EnvironmentReaderTool(allow=...)) permits: {shown}",
            )

    def _value(self, name: str) -> dict[str, Any]:
        value = os.environ.get(name)
        masked = value is not None and not self.reveal_secrets and looks_secret(name)
        return {"name": name, "present": value is not None,
                "value": MASK if masked else value, "masked": masked}

    blocking = True  # a worker thread runs it: the event loop never waits on it

    def execute(self, params: dict[str, Any]) -> dict[str, Any]:
        """Run ``get`` or ``list``; see the class description."""
        if params["operation"] == "list":
            names = sorted(n for n in os.environ if self.allowed(n))
            return {"names": names, "count": len(names)}
        wanted: list[str] = []
        if "name" in params:
            wanted.append(params["name"])
        wanted.extend(n for n in params.get("names", []) if n not in wanted)
        if not wanted:
            raise ToolExecutionError(_NAME, "operation 'get' needs 'name' or 'names'",
                                     hint="pass the variable name to read")
        for name in wanted:
            self._check(name)
        if "names" not in params:
            return self._value(wanted[0])
        return {"variables": [self._value(n) for n in wanted]}

