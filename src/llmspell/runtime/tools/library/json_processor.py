"""A JSON tool: query with a small path language, validate against a JSON Schema, pick and
rename parts, parse and stringify.

Why hand-written: the path language is tiny (``a.b[0].c``, ``items[*].name``,
``["odd key"]``) and a full query language such as JMESPath or JSONPath would add a
dependency and a much larger surface for a model to get wrong. The parser here is a few
dozen lines, its grammar is below, and :func:`format_path` is its exact inverse (property
tested). Validation uses :mod:`jsonschema`, but with an empty reference registry: the
library's default would fetch remote ``$ref`` URLs over the network.

Path grammar::

    path     := "" | "$" | first rest*        (empty or "$" is the whole document)
    first    := name | "*" | bracket | "$" rest
    rest     := "." name | "." "*" | bracket
    bracket  := "[" ( integer | "*" | json-string ) "]"
    name     := a letter or "_" followed by letters, digits, "_" or "-"

An integer selects a list element (negative counts from the end); a name or a quoted string
selects an object key; ``*`` selects every element of a list or every value of an object.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import referencing
from jsonschema import validators
from jsonschema.exceptions import SchemaError
from referencing.exceptions import Unresolvable

from llmspell.core.errors import ToolExecutionError
from llmspell.runtime.tools.base import SecurityLevel, Tool
from llmspell.runtime.tools.library.safe_regex import linear_validator

__all__ = [
    "JsonProcessorTool",
    "PathSyntaxError",
    "Segment",
    "WILDCARD",
    "Wildcard",
    "format_path",
    "parse_path",
    "query_path",
]

_NAME = "json_processor"
MAX_TEXT_LENGTH: Final = 5_000_000
"""Longest string ``parse`` accepts, in characters."""
MAX_ERRORS: Final = 100
"""Most validation errors reported by default."""


@dataclass(frozen=True)
class Wildcard:
    """The ``*`` path segment: every element of a list or value of an object."""

    def __repr__(self) -> str:
        return "WILDCARD"


WILDCARD: Final = Wildcard()
Segment: TypeAlias = str | int | Wildcard
"""One step of a path: an object key, a list index, or :data:`WILDCARD`."""


class PathSyntaxError(ValueError):
    """A path string does not follow the grammar; ``column`` is 1-based."""

    def __init__(self, path: str, column: int, message: str) -> None:
        self.path = path
        self.column = column
        super().__init__(f"invalid path {path!r} at column {column}: {message}")


_NAME_RE: Final = re.compile(r"[^\W\d][\w-]*")
_INT_RE: Final = re.compile(r"-?\d+")
_DECODER: Final = json.JSONDecoder()


def parse_path(path: str) -> tuple[Segment, ...]:
    """Parse ``path`` into segments; raise :class:`PathSyntaxError` with the column."""
    segments: list[Segment] = []
    rooted = path.startswith("$")
    pos = 1 if rooted else 0
    first = not rooted  # after "$" the next step needs its "." or "["
    while pos < len(path):
        char = path[pos]
        if char == "[":
            segment, pos = _parse_bracket(path, pos)
            segments.append(segment)
        else:
            if not first:
                if char != ".":
                    raise PathSyntaxError(path, pos + 1, f"expected '.' or '[', found {char!r}")
                pos += 1
            if path.startswith("*", pos):
                segments.append(WILDCARD)
                pos += 1
            else:
                match = _NAME_RE.match(path, pos)
                if match is None:
                    found = repr(path[pos]) if pos < len(path) else "the end"
                    raise PathSyntaxError(
                        path, pos + 1,
                        f"expected a key name or '*', found {found} "
                        "(quote unusual keys: [\"my key\"])",
                    )
                segments.append(match.group())
                pos = match.end()
        first = False
    return tuple(segments)


def _parse_bracket(path: str, pos: int) -> tuple[Segment, int]:
    start = pos + 1
    segment: Segment
    if path.startswith("*", start):
        segment, end = WILDCARD, start + 1
    elif path.startswith('"', start):
        try:
            value, end = _DECODER.raw_decode(path, start)
        except json.JSONDecodeError as exc:
            raise PathSyntaxError(path, start + 1, f"bad quoted key: {exc.msg}") from None
        if not isinstance(value, str):  # pragma: no cover - raw_decode at '"' yields a str
            raise PathSyntaxError(path, start + 1, "expected a quoted key")
        segment = value
    else:
        match = _INT_RE.match(path, start)
        if match is None:
            raise PathSyntaxError(path, start + 1,
                                  "expected an index, '*' or a quoted key inside [ ]")
        segment, end = int(match.group()), match.end()
    if not path.startswith("]", end):
        raise PathSyntaxError(path, end + 1, "expected ']'")
    return segment, end + 1


def format_path(segments: Sequence[Segment]) -> str:
    """The path string of ``segments``; ``parse_path(format_path(s)) == tuple(s)``."""
    parts: list[str] = []
    for index, segment in enumerate(segments):
        if isinstance(segment, Wildcard):
            parts.append("[*]")
        elif isinstance(segment, int):
            parts.append(f"[{segment}]")
        elif _NAME_RE.fullmatch(segment):
            parts.append(segment if index == 0 else f".{segment}")
        else:
            parts.append("[" + json.dumps(segment, ensure_ascii=False) + "]")
    return "".join(parts)


class _MissingError(Exception):
    """A path step found nothing; the message says why."""


def _type_name(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def _step(value: Any, segment: str | int) -> tuple[str | int, Any]:
    """One concrete step; returns the normalised key (negative indexes made positive)."""
    if isinstance(segment, int):
        if not isinstance(value, list):
            raise _MissingError(f"index [{segment}] needs an array, found {_type_name(value)}")
        size = len(value)
        if not -size <= segment < size:
            raise _MissingError(f"index [{segment}] is out of range (array of {size})")
        position = segment % size
        return position, value[position]
    if not isinstance(value, dict):
        raise _MissingError(f"key {segment!r} needs an object, found {_type_name(value)}")
    if segment not in value:
        raise _MissingError(f"key {segment!r} is missing")
    return segment, value[segment]


def _expand(value: Any, segments: Sequence[Segment], prefix: tuple[str | int, ...] = (),
            ) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    """Every (concrete path, value) the path matches, in document order; missing steps are
    skipped."""
    if not segments:
        yield prefix, value
        return
    head, rest = segments[0], segments[1:]
    if isinstance(head, Wildcard):
        if isinstance(value, list):
            for index, item in enumerate(value):
                yield from _expand(item, rest, (*prefix, index))
        elif isinstance(value, dict):
            for key, item in value.items():
                yield from _expand(item, rest, (*prefix, key))
        return
    try:
        key, item = _step(value, head)
    except _MissingError:
        return
    yield from _expand(item, rest, (*prefix, key))


def query_path(data: Any, path: str | Sequence[Segment]) -> Any:
    """The value at ``path``. A path with a wildcard gives a flat list of every match (in
    document order; elements where the rest of the path is missing are skipped). A path
    without one raises :class:`LookupError` naming the step that found nothing."""
    segments = parse_path(path) if isinstance(path, str) else tuple(path)
    if any(isinstance(s, Wildcard) for s in segments):
        return [value for _, value in _expand(data, segments)]
    value = data
    for depth, segment in enumerate(segments):
        assert not isinstance(segment, Wildcard)
        try:
            _, value = _step(value, segment)
        except _MissingError as exc:
            where = format_path(segments[:depth]) or "$"
            raise LookupError(f"at {where}: {exc}") from None
    return value


def _bad_path(exc: PathSyntaxError) -> ToolExecutionError:
    return ToolExecutionError(
        _NAME, str(exc),
        hint='paths look like a.b[0].c, items[*].name or ["key with spaces"]',
    )


def _parse_or_fail(path: str) -> tuple[Segment, ...]:
    try:
        return parse_path(path)
    except PathSyntaxError as exc:
        raise _bad_path(exc) from None


def _pick(source: Any, paths: list[tuple[str | int, ...]]) -> Any:
    """A copy of ``source`` keeping only ``paths`` (concrete), structure and order kept;
    picked array elements are compacted in their original order."""
    if any(not p for p in paths):
        return copy.deepcopy(source)
    groups: dict[str | int, list[tuple[str | int, ...]]] = {}
    for p in paths:
        groups.setdefault(p[0], []).append(p[1:])
    if isinstance(source, dict):
        return {k: _pick(v, groups[k]) for k, v in source.items() if k in groups}
    assert isinstance(source, list)
    return [_pick(source[i], groups[i]) for i in sorted(k for k in groups if isinstance(k, int))]


def _locate(data: Any, concrete: tuple[str | int, ...]) -> Any:
    for key in concrete:
        data = data[key]
    return data


def _raise_on_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (not a finite number)")


class JsonProcessorTool(Tool):
    """Query, validate, transform, parse and stringify JSON (see the module docstring for the
    path language)."""

    name = _NAME
    description = (
        "Work with JSON. operation 'query': the value at 'path' in 'data' (paths like "
        "a.b[0].c, items[*].name, [\"odd key\"]; '*' matches every element). 'validate': "
        "check 'data' against the JSON Schema 'schema'. 'transform': keep only the 'pick' "
        "paths and/or 'rename' keys (path -> new name). 'parse': JSON text -> value. "
        "'stringify': value -> JSON text ('indent', 'sort_keys')."
    )
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "operation": {
                "enum": ["query", "validate", "transform", "parse", "stringify"],
                "description": "What to do.",
            },
            "data": {"description": "The JSON value to work on (query, validate, transform, "
                                    "stringify)."},
            "path": {"type": "string", "maxLength": 2000,
                     "description": "query: the path to read."},
            "default": {"description": "query: the value returned when a path without "
                                       "wildcards finds nothing (else that is an error)."},
            "schema": {"type": ["object", "boolean"],
                       "description": "validate: the JSON Schema to check against."},
            "max_errors": {"type": "integer", "minimum": 1, "maximum": 1000,
                           "description": f"validate: most errors listed (default "
                                          f"{MAX_ERRORS})."},
            "pick": {"type": "array", "items": {"type": "string", "maxLength": 2000},
                     "maxItems": 1000,
                     "description": "transform: paths to keep (wildcards allowed)."},
            "rename": {"type": "object", "additionalProperties": {"type": "string"},
                       "description": "transform: path of a key -> its new name."},
            "text": {"type": "string", "description": "parse: the JSON text."},
            "indent": {"type": ["integer", "null"], "minimum": 0, "maximum": 8,
                       "description": "stringify: indentation (null for compact)."},
            "sort_keys": {"type": "boolean", "description": "stringify: sort object keys."},
        },
        "required": ["operation"],
        "additionalProperties": False,
        "allOf": [
            {"if": {"properties": {"operation": {"const": "query"}}},
             "then": {"required": ["data", "path"]}},
            {"if": {"properties": {"operation": {"const": "validate"}}},
             "then": {"required": ["data", "schema"]}},
            {"if": {"properties": {"operation": {"const": "transform"}}},
             "then": {"required": ["data"], "anyOf": [{"required": ["pick"]},
                                                      {"required": ["rename"]}]}},
            {"if": {"properties": {"operation": {"const": "parse"}}},
             "then": {"required": ["text"]}},
            {"if": {"properties": {"operation": {"const": "stringify"}}},
             "then": {"required": ["data"]}},
        ],
    }
    timeout = 10.0
    security_level = SecurityLevel.SAFE
    blocking = True  # a worker thread runs it: the event loop never waits on it

    def execute(self, params: dict[str, Any]) -> dict[str, Any]:
        """Run ``params["operation"]``; see the class docstring."""
        operation = params["operation"]
        if operation == "query":
            return self._query(params)
        if operation == "validate":
            return self._validate(params)
        if operation == "transform":
            return self._transform(params)
        if operation == "parse":
            return self._parse(params["text"])
        if operation == "stringify":
            return self._stringify(params)
        raise ToolExecutionError(_NAME, f"unknown operation {operation!r}")

    def _query(self, params: dict[str, Any]) -> dict[str, Any]:
        path: str = params["path"]
        segments = _parse_or_fail(path)
        try:
            value = query_path(params["data"], segments)
        except LookupError as exc:
            if "default" in params:
                return {"path": path, "value": params["default"], "found": False}
            raise ToolExecutionError(
                _NAME, f"path {path!r} found nothing: {exc}",
                hint="pass 'default' to get a value instead of an error",
            ) from None
        found = bool(value) if any(isinstance(s, Wildcard) for s in segments) else True
        return {"path": path, "value": value, "found": found}

    def _validate(self, params: dict[str, Any]) -> dict[str, Any]:
        schema = params["schema"]
        cls = validators.validator_for(schema)
        try:
            cls.check_schema(schema)
        except SchemaError as exc:
            where = format_path(list(exc.path)) or "$"
            raise ToolExecutionError(
                _NAME, f"the schema is not a valid JSON Schema at {where}: {exc.message}",
            ) from None
        # An empty registry: never fetch remote $refs (jsonschema's default would); regex
        # keywords run on RE2 (linear time), so a schema pattern cannot hang the tool.
        linear = linear_validator(cls, _NAME, schema)
        validator = linear(schema, registry=referencing.Registry())
        limit: int = params.get("max_errors", MAX_ERRORS)
        errors: list[dict[str, Any]] = []
        truncated = False
        try:
            found = sorted(validator.iter_errors(params["data"]),
                           key=lambda e: [(0, p, "") if isinstance(p, int) else (1, 0, p)
                                          for p in e.absolute_path])
        except Unresolvable as exc:
            raise ToolExecutionError(
                _NAME, f"the schema has a $ref that cannot be resolved: {exc}",
                hint="remote references are not fetched; inline them under $defs",
            ) from None
        for error in found:
            if len(errors) == limit:
                truncated = True
                break
            errors.append({
                "path": format_path(list(error.absolute_path)) or "$",
                "message": error.message,
                "schema_path": "/".join(str(p) for p in error.absolute_schema_path),
            })
        return {"valid": not errors, "errors": errors, "truncated": truncated}

    def _transform(self, params: dict[str, Any]) -> dict[str, Any]:
        data = params["data"]
        missing: list[str] = []
        if "pick" in params:
            concrete: list[tuple[str | int, ...]] = []
            for path in params["pick"]:
                matches = [p for p, _ in _expand(data, _parse_or_fail(path))]
                if not matches:
                    missing.append(path)
                concrete.extend(matches)
            result = _pick(data, concrete) if concrete else (
                {} if isinstance(data, dict) else [] if isinstance(data, list) else None)
        else:
            result = copy.deepcopy(data)
        for path, new_name in params.get("rename", {}).items():
            segments = _parse_or_fail(path)
            if not segments or not isinstance(segments[-1], str):
                raise ToolExecutionError(
                    _NAME, f"rename path {path!r} must end in an object key",
                    hint="e.g. {\"user.name\": \"full_name\"}",
                )
            old = segments[-1]
            renamed = False
            for parent_path, parent in list(_expand(result, segments[:-1])):
                if not isinstance(parent, dict) or old not in parent:
                    continue
                if new_name != old and new_name in parent:
                    where = format_path(parent_path) or "$"
                    raise ToolExecutionError(
                        _NAME, f"cannot rename {old!r} to {new_name!r} at {where}: "
                        f"{new_name!r} already exists",
                    )
                target = _locate(result, parent_path)
                items = [(new_name if k == old else k, v) for k, v in target.items()]
                target.clear()
                target.update(items)
                renamed = True
            if not renamed:
                missing.append(path)
        return {"value": result, "missing": missing}

    def _parse(self, text: str) -> dict[str, Any]:
        if len(text) > MAX_TEXT_LENGTH:
            raise ToolExecutionError(
                _NAME, f"the text is {len(text)} characters long, more than {MAX_TEXT_LENGTH}")
        try:
            value = json.loads(text, parse_constant=_raise_on_constant)
        except json.JSONDecodeError as exc:
            raise ToolExecutionError(
                _NAME, f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
                hint=f"near {text[max(exc.pos - 20, 0):exc.pos + 20]!r}",
            ) from None
        except RecursionError:
            raise ToolExecutionError(_NAME, "invalid JSON: nested too deeply") from None
        except ValueError as exc:  # NaN/Infinity, or an integer too long to convert
            raise ToolExecutionError(_NAME, f"invalid JSON: {exc}") from None
        return {"value": value}

    def _stringify(self, params: dict[str, Any]) -> dict[str, Any]:
        indent: int | None = params.get("indent")
        try:
            text = json.dumps(params["data"], indent=indent,
                              sort_keys=params.get("sort_keys", False),
                              ensure_ascii=False, allow_nan=False)
        except (ValueError, TypeError, RecursionError) as exc:
            raise ToolExecutionError(_NAME, f"cannot stringify the value: {exc}") from None
        return {"text": text}
