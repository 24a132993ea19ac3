"""Checking a tool's parameters against its JSON Schema (Draft 2020-12), fast where it is
exact.

python-jsonschema is the authority: its verdict and its error (``best_match``) are what a
caller sees. It costs about 13 µs for a two-property object, half of a tool call's whole
pipeline, so a call first asks jsonschema-rs (compiled Rust, about 0.2 µs); when that says
valid, the call goes on. The shortcut is taken only where the two libraries agree by
construction:

* the schema is plain JSON (no tuple where jsonschema-rs would see an array) and uses
  only keywords whose meaning involves no regex dialect, format
  vocabulary, reference resolution, annotation collection or float remainder
  (:data:`SAME_KEYWORDS`: no ``pattern``, ``format``, ``$ref``, ``multipleOf``,
  ``unevaluatedProperties``, ...); jsonschema-rs would also fetch a remote ``$ref`` over
  the network, which jsonschema here never does;
* the parameters are plain JSON values (:func:`~llmspell.core.values.is_plain_json_safe`):
  jsonschema-rs reads a tuple as an array, for one, where jsonschema does not.

Everything else, and every call jsonschema-rs rejects, is decided by jsonschema alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jsonschema_rs
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match
from referencing import Registry

from llmspell.core.errors import InvalidValueError, ToolValidationError, brief
from llmspell.core.values import is_plain_json_safe

__all__ = ["SAME_KEYWORDS", "ParamsValidator"]

_SUBSCHEMA = frozenset({"items", "not", "additionalProperties", "if", "then", "else",
                        "propertyNames", "contains"})
"""Keywords whose value is one schema."""
_SUBSCHEMA_LISTS = frozenset({"prefixItems", "anyOf", "oneOf", "allOf"})
"""Keywords whose value is a list of schemas."""
_SUBSCHEMA_MAPS = frozenset({"properties", "dependentSchemas"})
"""Keywords whose value maps names to schemas."""
_VALUES = frozenset({"type", "required", "enum", "const", "minimum", "maximum",
                     "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
                     "minItems", "maxItems", "uniqueItems", "minProperties",
                     "maxProperties", "minContains", "maxContains", "dependentRequired",
                     "title", "description", "default", "examples", "deprecated",
                     "readOnly", "writeOnly", "$comment"})
"""Keywords whose value is data (checked as it is, never walked as a schema)."""
SAME_KEYWORDS = _SUBSCHEMA | _SUBSCHEMA_LISTS | _SUBSCHEMA_MAPS | _VALUES
"""The keywords on which jsonschema-rs and jsonschema agree for plain JSON values."""


def _same_everywhere(schema: Any, depth: int = 0) -> bool:
    """True when ``schema`` and every schema inside it use only :data:`SAME_KEYWORDS`."""
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, Mapping) or depth > 32:
        return False
    for keyword, value in schema.items():
        if keyword not in SAME_KEYWORDS:
            return False
        if keyword in _SUBSCHEMA:
            inner: Any = [value]
        elif keyword in _SUBSCHEMA_LISTS:
            inner = value
        elif keyword in _SUBSCHEMA_MAPS:
            inner = list(value.values()) if isinstance(value, Mapping) else None
        else:
            continue
        if not isinstance(inner, list) or not all(
                _same_everywhere(item, depth + 1) for item in inner):
            return False
    return True


class ParamsValidator:
    """The compiled check of one tool's parameter schema (see the module docstring).
    Building it checks the schema: an invalid one raises ``InvalidValueError``."""

    __slots__ = ("_fast", "_full", "tool")

    def __init__(self, tool: str, schema: dict[str, Any]) -> None:
        self.tool = tool
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            raise InvalidValueError(
                f"tool {tool!r} has an invalid parameter schema: {exc.message}") from None
        # An empty registry: a schema's remote $ref is never fetched over the network.
        self._full = Draft202012Validator(schema, registry=Registry())
        self._fast: Any = None
        if is_plain_json_safe(schema) and _same_everywhere(schema):
            try:
                self._fast = jsonschema_rs.Draft202012Validator(schema)
            except Exception:  # a schema jsonschema-rs cannot compile: jsonschema decides
                self._fast = None

    def validate(self, params: dict[str, Any]) -> None:
        """Raise :class:`ToolValidationError` naming the first bad parameter."""
        fast = self._fast
        if fast is not None and is_plain_json_safe(params):
            try:
                if fast.is_valid(params):
                    return
            except Exception:  # a value it cannot read: jsonschema decides
                pass
        full = self._full
        try:
            if full.is_valid(params):
                return
            error = best_match(full.iter_errors(params))
        except Exception as exc:  # jsonschema failing on a value (NaN with multipleOf, ...)
            raise ToolValidationError(
                self.tool, f"tool {self.tool!r}: params cannot be checked against the "
                f"parameter schema: {type(exc).__name__}: {brief(exc, 300)}", path="params",
                hint="pass JSON values (finite numbers, str keys); a schema's $ref must "
                "point inside the schema") from None
        path = "" if error is None else "".join(
            f"[{p!r}]" if isinstance(p, int) or not str(p).isidentifier() else f".{p}"
            for p in error.path
        )
        where = f"params{path}" if path else "params"
        # jsonschema quotes the bad value, which may be huge
        message = "does not match the parameter schema" if error is None else error.message
        raise ToolValidationError(
            self.tool,
            f"tool {self.tool!r}: {where}: {brief(message, 300)}",
            path=where,
            hint="see the tool's parameters with tools.get(name).parameters",
        )
