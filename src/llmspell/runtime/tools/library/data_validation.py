"""A data validation tool: check a JSON value against a JSON Schema and/or simple rules.

Schemas are checked with :mod:`jsonschema` (Draft 2020-12 unless the schema's ``$schema``
names another draft) and an empty :class:`referencing.Registry`, so a ``$ref`` to a remote
document is reported as unresolvable instead of being fetched over the network. Rules are
a small list of ``{"path", "rule", "value"}`` checks for callers who do not want to write a
schema. Every error names the path of the bad value in the JSON processor's syntax
(``users[0].email``, ``$`` for the whole value).

Regular expressions (rule ``pattern``, and ``pattern``/``patternProperties`` in schemas) go
through the text tool's guard against catastrophic backtracking, since :mod:`re` has no
timeout; data and schema sizes and the number of reported errors are capped.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from typing import Any, Final
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from referencing import Registry
from referencing.exceptions import Unresolvable

from llmspell.core.errors import ToolExecutionError
from llmspell.runtime.tools.base import SecurityLevel, Tool
from llmspell.runtime.tools.library.json_processor import (
    PathSyntaxError,
    Wildcard,
    format_path,
    parse_path,
    query_path,
)
from llmspell.runtime.tools.library.safe_regex import (
    UserRegex,
    compile_user_regex,
    linear_validator,
)
from llmspell.runtime.tools.library.text_manipulator import MAX_REGEX_INPUT

__all__ = ["RULES", "DataValidationTool"]

_NAME = "data_validation"
MAX_DATA_CHARS: Final = 1_000_000
"""Largest data accepted, serialised as JSON, in characters."""
MAX_SCHEMA_CHARS: Final = 200_000
"""Largest schema accepted, serialised as JSON, in characters."""
MAX_RULES: Final = 200
"""Most rules accepted in one call."""
MAX_ERRORS: Final = 100
"""Most errors reported (``truncated`` says when there were more)."""
_MAX_COLLECTED: Final = 10_000  # schema errors gathered (then sorted by path)

RULES: Final = ("required", "type", "min", "max", "min_length", "max_length", "pattern",
                "enum", "email", "url")
TYPES: Final = ("string", "number", "integer", "boolean", "array", "object", "null")

_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")


def _fail(message: str, hint: str | None = None) -> ToolExecutionError:
    return ToolExecutionError(_NAME, message, hint=hint)


def _size(value: Any, what: str, limit: int) -> None:
    try:
        size = len(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise _fail(f"the {what} is not JSON: {exc}") from None
    except RecursionError:
        raise _fail(f"the {what} is nested too deeply") from None
    if size > limit:
        raise _fail(f"the {what} is {size} characters of JSON, more than {limit}")


def _regex(pattern: str) -> UserRegex:
    return compile_user_regex(pattern, _NAME)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    return type(a) is type(b) and bool(a == b)


def _schema_errors(data: Any, schema: Any, limit: int) -> tuple[list[dict[str, str]], bool]:
    _size(schema, "schema", MAX_SCHEMA_CHARS)
    if not isinstance(schema, dict | bool):
        raise _fail("the schema must be a JSON object (or true/false)")
    cls: Any = validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        where = format_path(list(exc.path)) or "$"
        raise _fail(f"the schema is invalid at {where}: {exc.message[:300]}",
                    hint="see https://json-schema.org for the keywords") from None
    # pattern / patternProperties run on RE2 (linear time), never on backtracking re.
    linear = linear_validator(cls, _NAME, schema)
    validator = linear(schema, registry=Registry(), format_checker=cls.FORMAT_CHECKER)
    errors: list[dict[str, str]] = []
    truncated = False
    try:
        found = sorted(itertools.islice(validator.iter_errors(data), _MAX_COLLECTED),
                       key=lambda e: [str(p) for p in e.path])
    except Unresolvable as exc:
        raise _fail(f"the schema has a $ref that cannot be resolved: {exc}",
                    hint="remote references are never fetched; put the definitions in "
                         "'$defs' and refer to them as '#/$defs/name'") from None
    except RecursionError:
        raise _fail("the schema's references recurse without end") from None
    for error in found:
        if len(errors) >= limit:
            truncated = True
            break
        message = error.message if len(error.message) <= 300 else error.message[:300] + "..."
        errors.append({"path": format_path(list(error.absolute_path)) or "$",
                       "message": message, "source": "schema"})
    return errors, truncated


def _check_rule(data: Any, index: int, rule: dict[str, Any]) -> str | None:
    """The message for a failed rule, or None if it passes."""
    kind: str = rule["rule"]
    path: str = rule["path"]
    try:
        segments = parse_path(path)
    except PathSyntaxError as exc:
        raise _fail(f"rule {index}: {exc}",
                    hint='paths look like a.b[0].c or ["key with spaces"]') from None
    if any(isinstance(s, Wildcard) for s in segments):
        raise _fail(f"rule {index}: the path {path!r} has a wildcard, which rules do not "
                    f"support", hint="use a JSON Schema with 'items' to check every element")
    try:
        value = query_path(data, segments)
    except LookupError:
        return "is required but missing" if kind == "required" else None
    wanted = rule.get("value")
    if kind == "required":
        return None
    if kind == "type":
        if wanted not in TYPES:
            raise _fail(f"rule {index} (type) needs 'value', one of " + ", ".join(TYPES))
        actual = _json_type(value)
        ok = actual == wanted or (wanted == "number" and actual == "integer") or (
            wanted == "integer" and isinstance(value, float) and value.is_integer())
        return None if ok else f"should be of type {wanted}, not {actual}"
    if kind in ("min", "max"):
        if (not isinstance(wanted, int | float) or isinstance(wanted, bool)
                or not math.isfinite(wanted)):
            raise _fail(f"rule {index} ({kind}) needs a number 'value'")
        if not _is_number(value):
            return f"should be a number, not {_json_type(value)}"
        if kind == "min" and value < wanted:
            return f"should be at least {wanted}, not {value}"
        if kind == "max" and value > wanted:
            return f"should be at most {wanted}, not {value}"
        return None
    if kind in ("min_length", "max_length"):
        if not isinstance(wanted, int) or isinstance(wanted, bool) or wanted < 0:
            raise _fail(f"rule {index} ({kind}) needs a non-negative integer 'value'")
        if not isinstance(value, str | list | dict):
            return f"should be a string, array or object, not {_json_type(value)}"
        if kind == "min_length" and len(value) < wanted:
            return f"should have a length of at least {wanted}, not {len(value)}"
        if kind == "max_length" and len(value) > wanted:
            return f"should have a length of at most {wanted}, not {len(value)}"
        return None
    if kind == "enum":
        if not isinstance(wanted, list):
            raise _fail(f"rule {index} (enum) needs a list 'value' of allowed values")
        return None if any(_same(value, w) for w in wanted) else \
            f"should be one of {json.dumps(wanted)[:200]}"
    if not isinstance(value, str):
        return f"should be a string, not {_json_type(value)}"
    if kind == "pattern":
        if not isinstance(wanted, str):
            raise _fail(f"rule {index} (pattern) needs a regular expression 'value'")
        if len(value) > MAX_REGEX_INPUT:
            raise _fail(f"rule {index}: the string at {path!r} is longer than "
                        f"{MAX_REGEX_INPUT} characters, too long to match a pattern on")
        return None if _regex(wanted).search(value) else f"should match {wanted!r}"
    if kind == "email":
        return None if len(value) <= 320 and _EMAIL.fullmatch(value) else \
            "should be an email address"
    if kind == "url":
        try:
            parts = urlsplit(value)
        except ValueError:
            parts = None
        ok = (parts is not None and parts.scheme in ("http", "https", "ftp", "ftps")
              and bool(parts.netloc) and not any(c.isspace() for c in value))
        return None if ok else "should be an http(s) or ftp(s) URL"
    raise _fail(f"rule {index}: unknown rule {kind!r}", hint="one of " + ", ".join(RULES))


class DataValidationTool(Tool):
    """Validate a JSON value against a JSON Schema and/or a list of simple rules."""

    name = _NAME
    description = (
        "Validate 'data' against a JSON Schema ('schema') and/or simple 'rules' "
        "({path, rule, value} with rule one of required, type, min, max, min_length, "
        "max_length, pattern, enum, email, url). Returns {valid, errors: [{path, message}]}."
    )
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "data": {"description": "The JSON value to validate."},
            "schema": {"type": ["object", "boolean"],
                       "description": "A JSON Schema (Draft 2020-12 by default)."},
            "rules": {
                "type": "array",
                "maxItems": MAX_RULES,
                "items": {
                    "type": "object",
                    "properties": {
                        "path": {"type": "string", "maxLength": 500,
                                 "description": "Where: a.b[0].c, or '$' for the whole data."},
                        "rule": {"enum": list(RULES)},
                        "value": {"description": "The rule's argument (type name, bound, "
                                                 "length, pattern or list of values)."},
                        "message": {"type": "string", "maxLength": 500,
                                    "description": "A custom error message."},
                    },
                    "required": ["path", "rule"],
                    "additionalProperties": False,
                },
            },
            "max_errors": {"type": "integer", "minimum": 1, "maximum": MAX_ERRORS,
                           "default": MAX_ERRORS},
        },
        "required": ["data"],
        "anyOf": [{"required": ["schema"]}, {"required": ["rules"]}],
        "additionalProperties": False,
    }
    timeout = 10.0
    security_level = SecurityLevel.SAFE
    blocking = True  # a worker thread runs it: the event loop never waits on it

    def execute(self, params: dict[str, Any]) -> dict[str, Any]:
        """Validate ``params["data"]``; return ``{"valid", "errors", "truncated"}``."""
        data = params["data"]
        limit: int = params.get("max_errors", MAX_ERRORS)
        if "schema" not in params and "rules" not in params:
            raise _fail("give a 'schema', 'rules' or both")
        _size(data, "data", MAX_DATA_CHARS)
        errors: list[dict[str, str]] = []
        truncated = False
        if "schema" in params:
            errors, truncated = _schema_errors(data, params["schema"], limit)
        for index, rule in enumerate(params.get("rules", [])):
            message = _check_rule(data, index, rule)
            if message is None:
                continue
            if len(errors) >= limit:
                truncated = True
                break
            errors.append({"path": rule["path"], "message": rule.get("message", message),
                           "source": f"rule {index} ({rule['rule']})"})
        return {"valid": not errors, "errors": errors, "truncated": truncated}
