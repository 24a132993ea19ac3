"""ParamsValidator: jsonschema-rs answers only where it agrees with python-jsonschema, so a
tool call is accepted or refused exactly as jsonschema alone would (property test), and
the fast path is really taken for the schemas ``@tool`` makes."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from referencing import Registry

from llmspell.errors import InvalidValueError, ToolValidationError
from llmspell.runtime import tool
from llmspell.runtime.tools.validation import ParamsValidator

NAMES = st.sampled_from(["a", "b", "c", "x"])
TYPES = st.sampled_from(["object", "array", "string", "integer", "number", "boolean", "null"])
NUMBERS = st.one_of(st.integers(-3, 3), st.sampled_from([0.5, -1.5, 2.0, 2**64, 1e21]))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-4, 4),
                    st.sampled_from([2**64 + 1, 2**70, -(2**63), 1.0, 0.3, 2.5, 1e21]),
                    st.sampled_from(["", "a", "ab", "1", "é", "👍", "abc"]))
JSON = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(NAMES, inner, max_size=3)), max_leaves=6)
ODD = st.one_of(st.just(math.nan), st.just(math.inf), st.tuples(SCALARS),
                st.just({1: "int key"}), st.just({"a": (1, 2)}), st.just(b"bytes"))
INSTANCES = st.one_of(JSON, st.dictionaries(NAMES, st.one_of(JSON, ODD), max_size=3))

LEAF = st.fixed_dictionaries({}, optional={
    "type": st.one_of(TYPES, st.lists(TYPES, min_size=1, max_size=3, unique=True)),
    "minimum": NUMBERS, "maximum": NUMBERS, "exclusiveMinimum": NUMBERS,
    "exclusiveMaximum": NUMBERS, "minLength": st.integers(0, 3),
    "maxLength": st.integers(0, 3), "enum": st.lists(JSON, min_size=1, max_size=3),
    "const": JSON, "minItems": st.integers(0, 2), "maxItems": st.integers(0, 2),
    "uniqueItems": st.booleans(), "minProperties": st.integers(0, 2),
    "maxProperties": st.integers(0, 2), "required": st.lists(NAMES, max_size=3, unique=True),
    "description": st.text(max_size=4),
    # keywords only jsonschema decides:
    "pattern": st.sampled_from(["^a", "\\d", "b$", "^[a-c]+$"]),
    "multipleOf": st.sampled_from([0.1, 2, 0.5]),
    "format": st.sampled_from(["email", "date"]),
})


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for part in parts:
        merged.update(part)
    return merged


SCHEMAS = st.recursive(st.one_of(st.booleans(), LEAF), lambda inner: st.builds(
    lambda leaf, nested: _merge([leaf, nested]), LEAF, st.fixed_dictionaries({}, optional={
        "properties": st.dictionaries(NAMES, inner, max_size=3), "items": inner,
        "prefixItems": st.lists(inner, min_size=1, max_size=2), "additionalProperties": inner,
        "anyOf": st.lists(inner, min_size=1, max_size=2),
        "allOf": st.lists(inner, min_size=1, max_size=2),
        "oneOf": st.lists(inner, min_size=1, max_size=2), "not": inner, "if": inner,
        "then": inner, "else": inner, "propertyNames": inner, "contains": inner,
        "dependentRequired": st.dictionaries(NAMES, st.lists(NAMES, unique=True,
                                                             max_size=2), max_size=2),
    })), max_leaves=6)


def _refused(validator: ParamsValidator, params: Any) -> bool:
    try:
        validator.validate(params)
    except ToolValidationError:
        return True
    return False


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SCHEMAS, st.lists(INSTANCES, min_size=1, max_size=4))
def test_a_call_is_refused_exactly_when_jsonschema_refuses_it(schema: Any,
                                                             instances: list[Any]) -> None:
    if isinstance(schema, bool):
        schema = {"allOf": [schema]}
    validator = ParamsValidator("t", schema)
    reference = Draft202012Validator(schema, registry=Registry())
    for params in instances:
        try:
            expected = not reference.is_valid(params)
        except Exception:  # jsonschema cannot check it (NaN with multipleOf): refused
            expected = True
        assert _refused(validator, params) == expected, params


def test_tool_schemas_take_the_fast_path() -> None:
    @tool("adder")
    def adder(a: int, b: float = 1.0, tags: list[str] | None = None, flag: bool = False
              ) -> float:
        """Add."""
        return a + b

    validator = adder.validator()
    assert validator._fast is not None
    # jsonschema is not asked about a call jsonschema-rs accepts...
    validator._full = None  # type: ignore[assignment]
    validator.validate({"a": 1, "b": 2.5, "tags": ["x"], "flag": True})
    # ...and decides every refusal, with its message.
    adder._validator = None
    with pytest.raises(ToolValidationError, match=r"params\.a: 'one' is not of type 'integer'"):
        adder.validate({"a": "one"})
    with pytest.raises(ToolValidationError, match="Additional properties"):
        adder.validate({"a": 1, "extra": 2})


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"s": {"type": "string", "pattern": "^a"}}},
    {"type": "object", "properties": {"n": {"multipleOf": 0.1}}},
    {"type": "object", "properties": {"e": {"type": "string", "format": "email"}}},
    {"type": "object", "properties": {"r": {"$ref": "#/$defs/r"}}, "$defs": {"r": {}}},
    {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object"},
    {"type": "object", "unevaluatedProperties": False},
    {"type": "object", "properties": {"t": {"enum": [(1, 2)]}}},  # not plain JSON
])
def test_schemas_with_keywords_the_libraries_read_differently_are_left_to_jsonschema(
        schema: dict[str, Any]) -> None:
    assert ParamsValidator("t", schema)._fast is None


def test_values_jsonschema_rs_reads_differently_are_left_to_jsonschema() -> None:
    validator = ParamsValidator("t", {"type": "object", "properties": {
        "items": {"type": "array"}, "n": {"type": "number"}}})
    assert validator._fast is not None
    with pytest.raises(ToolValidationError, match="is not of type 'array'"):
        validator.validate({"items": (1, 2)})  # jsonschema-rs would take the tuple
    validator.validate({"n": math.nan})  # jsonschema takes NaN as a number
    validator.validate({1: "an int key"})  # type: ignore[dict-item]
    multiple = ParamsValidator("t", {"type": "object", "properties": {"n": {"multipleOf": 0.1}}})
    with pytest.raises(ToolValidationError, match=r"is not a multiple of 0\.1"):
        multiple.validate({"n": 0.3})  # jsonschema-rs says it is


def test_a_value_jsonschema_cannot_check_is_refused_with_a_typed_error() -> None:
    validator = ParamsValidator("t", {"type": "object", "properties": {
        "n": {"multipleOf": 0.1}}})
    with pytest.raises(ToolValidationError, match="cannot be checked against the parameter"):
        validator.validate({"n": math.nan})
    remote = ParamsValidator("t", {"type": "object", "properties": {
        "r": {"$ref": "https://example.com/never-fetched.json"}}})
    with pytest.raises(ToolValidationError, match="cannot be checked"):
        remote.validate({"r": 1})


def test_an_invalid_schema_is_refused_when_the_validator_is_built() -> None:
    with pytest.raises(InvalidValueError, match="invalid parameter schema"):
        ParamsValidator("t", {"type": "no-such-type"})
