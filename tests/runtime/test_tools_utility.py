"""The utility tools: Base64, data validation, date and time, diffs, hashes, templates and
UUIDs. Tools are called directly (``validate`` then ``execute``), the way the pipeline calls
them, and once each through a running system."""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import json
import uuid
from datetime import datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmspell.core.errors import ConfigurationError, ToolExecutionError, ToolValidationError
from llmspell.core.values import check_json_safe
from llmspell.runtime import System, SystemConfig
from llmspell.runtime.tools.base import Tool
from llmspell.runtime.tools.library import template_tool
from llmspell.runtime.tools.library.base64_tool import MAX_INPUT_CHARS, Base64EncoderTool
from llmspell.runtime.tools.library.data_validation import DataValidationTool
from llmspell.runtime.tools.library.datetime_tool import DateTimeHandlerTool
from llmspell.runtime.tools.library.diff_tool import DiffCalculatorTool, json_diff
from llmspell.runtime.tools.library.hash_tool import ALGORITHMS, HashCalculatorTool
from llmspell.runtime.tools.library.template_tool import TemplateEngineTool
from llmspell.runtime.tools.library.uuid_tool import UuidGeneratorTool, uuid7
from tests.runtime.tool_helpers import call


def fails(tool: Tool, params: dict[str, Any], match: str) -> ToolExecutionError:
    """The execution error ``params`` give (they pass the schema)."""
    tool.validate(params)
    with pytest.raises(ToolExecutionError, match=match) as info:
        tool.execute(params)
    assert info.value.tool == tool.name
    return info.value


def invalid(tool: Tool, params: dict[str, Any]) -> None:
    with pytest.raises(ToolValidationError):
        tool.validate(params)


_CHARS = st.characters(codec="utf-8")  # no lone surrogates: text that UTF-8 can encode

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=4),
    max_leaves=20,
)


# -- base64_encoder ---------------------------------------------------------------------


def test_base64_encode_decode() -> None:
    tool = Base64EncoderTool()
    out = call(tool, {"operation": "encode", "input": "héllo"})
    assert out["result"] == base64.b64encode("héllo".encode()).decode()
    assert out["bytes"] == 6 and out["variant"] == "standard"
    assert call(tool, {"operation": "decode", "input": out["result"]})["result"] == "héllo"
    # Line-wrapped Base64 is accepted.
    assert call(tool, {"operation": "decode", "input": "aGVs\nbG8="})["result"] == "hello"


def test_base64_urlsafe_and_encodings() -> None:
    tool = Base64EncoderTool()
    text = "??>>"  # standard alphabet gives '/' and '+' here
    std = call(tool, {"operation": "encode", "input": text})["result"]
    safe = call(tool, {"operation": "encode", "input": text, "variant": "urlsafe"})["result"]
    assert std == "Pz8+Pg==" and safe == "Pz8-Pg=="
    assert call(tool, {"operation": "decode", "input": safe, "variant": "urlsafe"})[
        "result"] == text
    latin = call(tool, {"operation": "encode", "input": "é", "encoding": "latin-1"})
    assert latin["result"] == "6Q==" and latin["encoding"] == "iso8859-1"


def test_base64_errors() -> None:
    tool = Base64EncoderTool()
    fails(tool, {"operation": "decode", "input": "abc"}, "not valid Base64")
    err = fails(tool, {"operation": "decode", "input": "Pz8-Pg=="}, "not valid Base64")
    assert err.hint == "use variant 'urlsafe'"
    fails(tool, {"operation": "decode", "input": "Pz8+Pg==", "variant": "urlsafe"},
          "URL-safe")
    fails(tool, {"operation": "decode", "input": "/w=="}, "not valid utf-8")
    fails(tool, {"operation": "decode", "input": "é"}, "non-ASCII")
    fails(tool, {"operation": "encode", "input": "x", "encoding": "klingon"}, "unknown")
    fails(tool, {"operation": "encode", "input": "é", "encoding": "ascii"}, "cannot be encoded")
    invalid(tool, {"operation": "rot13", "input": "x"})
    invalid(tool, {"operation": "encode"})
    invalid(tool, {"operation": "encode", "input": "x" * (MAX_INPUT_CHARS + 1)})


@given(st.text(_CHARS, max_size=200), st.sampled_from(["standard", "urlsafe"]))
@settings(max_examples=100, deadline=None)
def test_base64_round_trip(text: str, variant: str) -> None:
    tool = Base64EncoderTool()
    encoded = call(tool, {"operation": "encode", "input": text, "variant": variant})
    decoded = call(tool, {"operation": "decode", "input": encoded["result"], "variant": variant})
    assert decoded["result"] == text


# -- data_validation --------------------------------------------------------------------


def test_validation_schema_paths() -> None:
    tool = DataValidationTool()
    schema = {"type": "object", "required": ["id"],
              "properties": {"users": {"type": "array", "items": {
                  "type": "object", "properties": {"age": {"type": "integer", "minimum": 0}}}}}}
    ok = call(tool, {"data": {"id": 1, "users": [{"age": 3}]}, "schema": schema})
    assert ok == {"valid": True, "errors": [], "truncated": False}
    bad = call(tool, {"data": {"users": [{"age": 3}, {"age": -1}]}, "schema": schema})
    assert not bad["valid"]
    assert [(e["path"], e["source"]) for e in bad["errors"]] == [
        ("$", "schema"), ("users[1].age", "schema")]
    assert "'id' is a required property" in bad["errors"][0]["message"]


def test_validation_rules() -> None:
    tool = DataValidationTool()
    data = {"name": "Al", "age": 17, "email": "al@example.com", "site": "ftp//x",
            "tags": ["a"], "role": "root", "code": "AB-1", "n": 1.0}
    rules = [
        {"path": "name", "rule": "required"},
        {"path": "missing", "rule": "required"},
        {"path": "missing", "rule": "min", "value": 1},     # absent and not required: fine
        {"path": "age", "rule": "min", "value": 18},
        {"path": "age", "rule": "max", "value": 120},
        {"path": "name", "rule": "min_length", "value": 3},
        {"path": "tags", "rule": "max_length", "value": 1},
        {"path": "name", "rule": "type", "value": "integer"},
        {"path": "n", "rule": "type", "value": "integer"},
        {"path": "email", "rule": "email"},
        {"path": "site", "rule": "url"},
        {"path": "role", "rule": "enum", "value": ["user", "admin"],
         "message": "bad role"},
        {"path": "code", "rule": "pattern", "value": "^[A-Z]+-\\d+$"},
        {"path": "$", "rule": "type", "value": "object"},
    ]
    out = call(tool, {"data": data, "rules": rules})
    assert [(e["path"], e["message"]) for e in out["errors"]] == [
        ("missing", "is required but missing"),
        ("age", "should be at least 18, not 17"),
        ("name", "should have a length of at least 3, not 2"),
        ("name", "should be of type integer, not string"),
        ("site", "should be an http(s) or ftp(s) URL"),
        ("role", "bad role"),
    ]
    assert out["errors"][0]["source"] == "rule 1 (required)"
    assert call(tool, {"data": {"e": "a@b"}, "rules": [{"path": "e", "rule": "email"}]})[
        "errors"][0]["message"] == "should be an email address"
    assert call(tool, {"data": {"x": True}, "rules": [
        {"path": "x", "rule": "enum", "value": [1]}]})["valid"] is False


@pytest.mark.parametrize(("rule", "value", "data", "message"), [
    ("max", 3, 4, "should be at most 3, not 4"),
    ("max", 3, "4", "should be a number, not string"),
    ("max_length", 2, "abc", "should have a length of at most 2, not 3"),
    ("min_length", 2, {"a": 1}, "should have a length of at least 2, not 1"),
    ("min_length", 2, 5, "should be a string, array or object, not integer"),
    ("type", "number", "1", "should be of type number, not string"),
    ("type", "null", 0, "should be of type null, not integer"),
    ("enum", ["a", 1], 1.5, 'should be one of ["a", 1]'),
    ("email", None, 5, "should be a string, not integer"),
    ("url", None, "https://exa mple.com", "should be an http(s) or ftp(s) URL"),
    ("url", None, "javascript:alert(1)", "should be an http(s) or ftp(s) URL"),
    ("pattern", "^a", "ba", "should match '^a'"),
])
def test_validation_rule_failures(rule: str, value: Any, data: Any, message: str) -> None:
    out = call(DataValidationTool(), {"data": {"x": data},
                                      "rules": [{"path": "x", "rule": rule, "value": value}]})
    assert out["errors"] == [{"path": "x", "message": message, "source": f"rule 0 ({rule})"}]


@pytest.mark.parametrize(("rule", "value", "data"), [
    ("type", "number", 1), ("type", "array", []), ("type", "boolean", False),
    ("enum", [1, "a"], 1.0), ("url", None, "https://example.com/a?b=c"),
    ("email", None, "first.last@sub.example.org"), ("max", 2.5, 2.5),
    ("max_length", 0, []), ("pattern", "\\d", "a1"),
])
def test_validation_rule_passes(rule: str, value: Any, data: Any) -> None:
    assert call(DataValidationTool(), {"data": {"x": data}, "rules": [
        {"path": "x", "rule": rule, "value": value}]})["valid"]


@pytest.mark.parametrize(("rule", "value", "match"), [
    ("min_length", -1, "non-negative integer"), ("min_length", True, "non-negative integer"),
    ("enum", "a", "list 'value'"), ("pattern", 5, "regular expression"),
    ("max", float("inf"), "number 'value'"),
])
def test_validation_bad_rule_values(rule: str, value: Any, match: str) -> None:
    fails(DataValidationTool(), {"data": {"x": "a"}, "rules": [
        {"path": "x", "rule": rule, "value": value}]}, match)


def test_validation_both_and_limits() -> None:
    tool = DataValidationTool()
    out = call(tool, {"data": [1, "a", "b"], "schema": {"items": {"type": "integer"}},
                      "rules": [{"path": "[0]", "rule": "max", "value": 0}],
                      "max_errors": 2})
    assert len(out["errors"]) == 2 and out["truncated"]
    out = call(tool, {"data": [1, "a"], "schema": {"items": {"type": "integer"}},
                      "rules": [{"path": "[0]", "rule": "max", "value": 0}]})
    assert [e["path"] for e in out["errors"]] == ["[1]", "[0]"]


def test_validation_errors() -> None:
    tool = DataValidationTool()
    fails(tool, {"data": 1, "schema": {"$ref": "https://example.com/s.json"}},
          "cannot be resolved")
    fails(tool, {"data": 1, "schema": {"type": "nonsense"}}, "schema is invalid")
    fails(tool, {"data": "aaa", "schema": {"pattern": "(a)\\1"}}, "invalid schema pattern")
    fails(tool, {"data": {"a": "x"}, "rules": [{"path": "a", "rule": "pattern",
                                                "value": "(?!x)"}]}, "lookaround")
    fails(tool, {"data": {}, "rules": [{"path": "a[", "rule": "required"}]}, "rule 0")
    fails(tool, {"data": {}, "rules": [{"path": "a[*]", "rule": "required"}]}, "wildcard")
    fails(tool, {"data": {"a": 1}, "rules": [{"path": "a", "rule": "min", "value": "x"}]},
          "needs a number")
    fails(tool, {"data": {"a": 1}, "rules": [{"path": "a", "rule": "type", "value": "int"}]},
          "needs 'value'")
    fails(tool, {"data": "x" * 1_000_001, "rules": []}, "more than")
    invalid(tool, {"data": 1})                                     # neither schema nor rules
    invalid(tool, {"data": 1, "rules": [{"path": "a", "rule": "odd"}]})
    invalid(tool, {"data": 1, "schema": "string"})
    # A local $ref works.
    local = {"$defs": {"pos": {"minimum": 0}}, "items": {"$ref": "#/$defs/pos"}}
    assert call(tool, {"data": [1, -1], "schema": local})["errors"][0]["path"] == "[1]"


# -- date_time_handler ------------------------------------------------------------------


def test_datetime_now_parse_format() -> None:
    tool = DateTimeHandlerTool()
    now = call(tool, {"operation": "now", "timezone": "Asia/Tokyo"})
    assert now["utc_offset_seconds"] == 9 * 3600
    assert datetime.fromisoformat(now["result"]).tzinfo is not None
    assert call(tool, {"operation": "now"})["timezone"] == "UTC"
    parsed = call(tool, {"operation": "parse", "datetime": "2024-05-01T12:30:00Z"})
    assert parsed["result"] == "2024-05-01T12:30:00+00:00" and parsed["weekday"] == "Wednesday"
    custom = call(tool, {"operation": "parse", "datetime": "01/05/2024 10:00",
                         "format": "%d/%m/%Y %H:%M", "timezone": "Europe/Paris"})
    assert custom["result"] == "2024-05-01T10:00:00+02:00"
    naive = call(tool, {"operation": "parse", "datetime": "2024-05-01 10:00"})
    assert naive["timestamp"] is None and naive["utc_offset_seconds"] is None
    assert call(tool, {"operation": "format", "datetime": "2024-05-01T10:00:00",
                       "format": "%Y/%m/%d %A"})["result"] == "2024/05/01 Wednesday"


def test_datetime_convert_arithmetic_diff_weekday() -> None:
    tool = DateTimeHandlerTool()
    conv = call(tool, {"operation": "convert", "datetime": "2024-01-15T12:00:00+00:00",
                       "timezone": "America/New_York"})
    assert conv["result"] == "2024-01-15T07:00:00-05:00" and conv["timezone"] == "EST"
    added = call(tool, {"operation": "add", "datetime": "2024-02-28T00:00:00",
                        "days": 1, "hours": 1.5, "weeks": 1})
    assert added["result"] == "2024-03-07T01:30:00"
    sub = call(tool, {"operation": "subtract", "datetime": "2024-01-01T00:00:00Z",
                      "minutes": 1, "seconds": 30})
    assert sub["result"] == "2023-12-31T23:58:30+00:00"
    diff = call(tool, {"operation": "diff", "datetime": "2024-05-01T12:00:00Z",
                       "other": "2024-05-03T13:00:00+01:00"})
    assert diff["seconds"] == 2 * 86400 and diff["days"] == 2 and diff["hours"] == 48
    week = call(tool, {"operation": "weekday", "datetime": "2024-12-30"})
    assert (week["weekday"], week["iso_weekday"], week["iso_week"]) == ("Monday", 1, 1)


def test_datetime_errors() -> None:
    tool = DateTimeHandlerTool()
    err = fails(tool, {"operation": "now", "timezone": "Mars/Olympus"}, "unknown time zone")
    assert err.hint is not None and "IANA" in err.hint
    fails(tool, {"operation": "now", "timezone": "../../etc/passwd"}, "unknown time zone")
    fails(tool, {"operation": "parse", "datetime": "yesterday"}, "not an ISO 8601")
    fails(tool, {"operation": "parse", "datetime": "2024", "format": "%d/%m"}, "does not match")
    fails(tool, {"operation": "convert", "datetime": "2024-05-01T10:00"}, "needs 'timezone'")
    fails(tool, {"operation": "convert", "datetime": "2024-05-01T10:00", "timezone": "UTC"},
          "without a UTC offset")
    fails(tool, {"operation": "add", "datetime": "2024-05-01"}, "needs at least one")
    fails(tool, {"operation": "add", "datetime": "9999-12-31", "days": 1}, "outside")
    fails(tool, {"operation": "diff", "datetime": "2024-05-01", "other": "2024-05-01T00:00Z"},
          "with a UTC offset and one without")
    fails(tool, {"operation": "diff", "datetime": "2024-05-01"}, "needs 'other'")
    fails(tool, {"operation": "format", "datetime": "2024-05-01"}, "needs 'format'")
    fails(tool, {"operation": "weekday"}, "needs 'datetime'")
    invalid(tool, {"operation": "tomorrow"})
    invalid(tool, {"operation": "add", "datetime": "2024-05-01", "days": 10**12})
    invalid(tool, {"operation": "format", "datetime": "2024-05-01", "format": "%Y" * 101})


# -- diff_calculator --------------------------------------------------------------------


def test_text_diff() -> None:
    tool = DiffCalculatorTool()
    old = "".join(f"line {i}\n" for i in range(10))
    new = old.replace("line 5\n", "line five\n")
    out = call(tool, {"old": old, "new": new, "context": 1, "old_name": "a.txt",
                      "new_name": "b.txt"})
    assert out["diff"] == ("--- a.txt\n+++ b.txt\n@@ -5,3 +5,3 @@\n line 4\n-line 5\n"
                           "+line five\n line 6\n")
    assert (out["added_lines"], out["removed_lines"], out["equal"]) == (1, 1, False)
    same = call(tool, {"old": old, "new": old})
    assert same["equal"] and same["diff"] == "" and same["similarity"] == 1.0
    no_newline = call(tool, {"old": "a", "new": "b"})["diff"]
    assert "\\ No newline at end of file" in no_newline


def test_json_diff() -> None:
    tool = DiffCalculatorTool()
    old = {"a": 1, "b": [1, 2, 3], "c": {"d": True, "gone": 0}, "key with space": "x"}
    new = {"a": 1.0, "b": [1, 5], "c": {"d": 1}, "key with space": "y", "e": None}
    out = call(tool, {"mode": "json", "old": old, "new": new})
    assert out["changes"] == [
        {"path": "b[1]", "type": "changed", "old": 2, "new": 5},
        {"path": "b[2]", "type": "removed", "old": 3},
        {"path": "c.gone", "type": "removed", "old": 0},
        {"path": "c.d", "type": "changed", "old": True, "new": 1},
        {"path": '["key with space"]', "type": "changed", "old": "x", "new": "y"},
        {"path": "e", "type": "added", "new": None},
    ]
    assert out["summary"] == {"added": 1, "removed": 2, "changed": 3}
    root = call(tool, {"mode": "json", "old": [1], "new": {"a": 1}})
    assert root["changes"] == [{"path": "$", "type": "changed", "old": [1], "new": {"a": 1}}]


def test_diff_errors_and_limits() -> None:
    tool = DiffCalculatorTool()
    fails(tool, {"old": 1, "new": "x"}, "two strings")
    fails(tool, {"old": "x" * 500_001, "new": ""}, "more than")
    fails(tool, {"old": "\n" * 20_001, "new": ""}, "lines")
    fails(tool, {"mode": "json", "old": ["x" * 1_000_001], "new": []}, "more than")
    deep: Any = 1
    for _ in range(150):
        deep = [deep]
    fails(tool, {"mode": "json", "old": deep, "new": deep}, "nested")
    many = json_diff(list(range(50)), [], limit=10)
    assert many["truncated"] and len(many["changes"]) == 10
    invalid(tool, {"old": "a"})
    invalid(tool, {"old": "a", "new": "b", "context": -1})


@given(json_values)
@settings(max_examples=100, deadline=None)
def test_json_diff_of_a_value_with_itself_is_empty(value: Any) -> None:
    out = json_diff(value, json.loads(json.dumps(value)))
    assert out["equal"] and out["changes"] == []


@given(json_values, json_values)
@settings(max_examples=100, deadline=None)
def test_json_diff_is_empty_only_for_equal_values(a: Any, b: Any) -> None:
    assert json_diff(a, b)["equal"] == (json.dumps(a, sort_keys=True)
                                        == json.dumps(b, sort_keys=True)
                                        or _numeric_equal(a, b))


def _numeric_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_numeric_equal, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_numeric_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


# -- hash_calculator --------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_hash_algorithms(algorithm: str) -> None:
    out = call(HashCalculatorTool(), {"input": "abc", "algorithm": algorithm})
    assert out["digest"] == hashlib.new(algorithm, b"abc").hexdigest()
    assert out["hmac"] is False


def test_hash_hmac_base64_and_key_never_shown() -> None:
    tool = HashCalculatorTool()
    secret = "s3cr3t-key"
    out = call(tool, {"input": "msg", "key": secret, "algorithm": "sha512",
                      "output_format": "base64"})
    expected = base64.b64encode(hmac.new(secret.encode(), b"msg", "sha512").digest()).decode()
    assert out["digest"] == expected and out["hmac"] is True
    assert secret not in json.dumps(out)
    err = fails(tool, {"input": "x", "key": "\udcff-" + secret, "encoding": "utf-8"},
                "key cannot be encoded")
    assert secret not in str(err)
    latin = call(tool, {"input": "é", "encoding": "latin-1", "algorithm": "md5"})
    assert latin["digest"] == hashlib.md5(b"\xe9").hexdigest()


def test_hash_verify() -> None:
    tool = HashCalculatorTool()
    digest = hashlib.sha256(b"abc").hexdigest()
    assert call(tool, {"operation": "verify", "input": "abc", "expected": digest.upper()})[
        "matches"] is True
    assert call(tool, {"operation": "verify", "input": "abd", "expected": digest})[
        "matches"] is False
    assert "digest" not in call(tool, {"operation": "verify", "input": "abd",
                                       "expected": digest})
    fails(tool, {"operation": "verify", "input": "abc"}, "needs 'expected'")
    fails(tool, {"input": "x", "encoding": "nope"}, "unknown text encoding")
    invalid(tool, {"input": "x", "algorithm": "crc32"})
    invalid(tool, {"input": "x", "key": ""})
    invalid(tool, {"input": 5})


@given(st.text(_CHARS, max_size=100), st.sampled_from(ALGORITHMS),
       st.text(_CHARS, min_size=1, max_size=20))
@settings(max_examples=100, deadline=None)
def test_hash_verify_accepts_its_own_digest(text: str, algorithm: str, key: str) -> None:
    tool = HashCalculatorTool()
    digest = call(tool, {"input": text, "algorithm": algorithm, "key": key})["digest"]
    assert call(tool, {"operation": "verify", "input": text, "algorithm": algorithm,
                       "key": key, "expected": digest})["matches"]
    assert not call(tool, {"operation": "verify", "input": text + "!", "algorithm": algorithm,
                           "key": key, "expected": digest})["matches"]


# -- template_engine --------------------------------------------------------------------


def test_template_renders() -> None:
    tool = TemplateEngineTool()
    out = call(tool, {"template": "Hello {{ name|title }}! {% for x in items %}[{{ x }}]"
                                  "{% endfor %}",
                      "variables": {"name": "ada lovelace", "items": [1, 2]}})
    assert out == {"result": "Hello Ada Lovelace! [1][2]", "length": 26}
    escaped = call(tool, {"template": "{{ v }}", "variables": {"v": "<b>&"},
                          "autoescape": True})
    assert escaped["result"] == "&lt;b&gt;&amp;"
    assert call(tool, {"template": "{{ v }}", "variables": {"v": "<b>"}})["result"] == "<b>"
    assert call(tool, {"template": "[{{ missing }}]", "strict": False})["result"] == "[]"


def test_template_sandbox_and_errors() -> None:
    tool = TemplateEngineTool()
    err = fails(tool, {"template": "{{ ''.__class__.__mro__[1].__subclasses__() }}"},
                "sandbox forbids")
    assert err.hint is not None and "__class__" in err.hint
    fails(tool, {"template": "{{ cycler.__init__.__globals__ }}"}, "sandbox forbids")
    fails(tool, {"template": "Hi {{ name }}"}, "undefined variable: 'name' is undefined")
    fails(tool, {"template": "{% include '/etc/passwd' %}"}, "load another template")
    fails(tool, {"template": "{% if %}"}, "syntax error on line 1")
    fails(tool, {"template": "{{ 1 / 0 }}"}, "ZeroDivisionError")
    invalid(tool, {"template": "x" * 100_001})
    invalid(tool, {"template": "x", "variables": {"bad name": 1}})
    invalid(tool, {})


def test_template_resource_limits() -> None:
    tool = TemplateEngineTool()
    fails(tool, {"template": "{% for i in range(20000) %}{{ 'x' * 100 }}{% endfor %}"},
          "output is longer")
    fails(tool, {"template": "{{ 'x' * 10**9 }}"}, "memory")       # never reaches the parent
    fails(tool, {"template": "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}"},
          "recursed")


def test_template_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(template_tool, "RENDER_TIMEOUT", 0.5)
    fails(TemplateEngineTool(), {"template": "{% for i in range(99999) %}{% for j in "
                                             "range(99999) %}{% endfor %}{% endfor %}"},
          "longer than 0.5 seconds")


def test_template_without_jinja(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigurationError, match="Jinja2") as info:
        TemplateEngineTool().execute({"template": "x"})
    assert info.value.hint == "pip install 'llmspell[tools]'"


# -- uuid_generator ---------------------------------------------------------------------


def test_uuid_versions_and_formats() -> None:
    tool = UuidGeneratorTool()
    for version in (1, 4, 7):
        out = call(tool, {"version": version, "count": 5})
        values = [uuid.UUID(u) for u in out["uuids"]]
        assert len(set(values)) == 5
        assert all(v.version == version and v.variant == uuid.RFC_4122 for v in values)
    v5 = call(tool, {"version": 5, "namespace": "dns", "name": "python.org"})
    assert v5["uuids"] == [str(uuid.uuid5(uuid.NAMESPACE_DNS, "python.org"))]
    custom_ns = str(uuid.uuid4())
    assert call(tool, {"version": 5, "namespace": custom_ns, "name": "x"})["uuids"] == [
        str(uuid.uuid5(uuid.UUID(custom_ns), "x"))]
    hexed = call(tool, {"format": "hex"})["uuids"][0]
    assert len(hexed) == 32 and "-" not in hexed
    assert call(tool, {"format": "urn"})["uuids"][0].startswith("urn:uuid:")
    assert len(call(tool, {"count": 100})["uuids"]) == 100


def test_uuid1_hides_the_mac_address() -> None:
    node = uuid.getnode()
    made = [uuid.UUID(u) for u in call(UuidGeneratorTool(), {"version": 1, "count": 3})["uuids"]]
    assert all(u.node != node and u.node & (1 << 40) for u in made)


def test_uuid_validate() -> None:
    tool = UuidGeneratorTool()
    seven = uuid7(1_700_000_000_000)
    out = call(tool, {"operation": "validate", "uuid": seven.urn})
    assert out["valid"] and out["version"] == 7 and out["unix_ms"] == 1_700_000_000_000
    assert out["canonical"] == str(seven)
    assert call(tool, {"operation": "validate", "uuid": "{" + str(uuid.uuid4()) + "}"})[
        "version"] == 4
    nil = call(tool, {"operation": "validate", "uuid": str(uuid.UUID(int=0))})
    assert nil["nil"] and nil["version"] is None
    assert call(tool, {"operation": "validate", "uuid": "not-a-uuid"})["valid"] is False


def test_uuid_errors() -> None:
    tool = UuidGeneratorTool()
    fails(tool, {"version": 5, "name": "x"}, "needs 'namespace'")
    fails(tool, {"version": 5, "namespace": "nope", "name": "x"}, "neither")
    fails(tool, {"operation": "validate"}, "needs 'uuid'")
    invalid(tool, {"count": 101})
    invalid(tool, {"count": 0})
    invalid(tool, {"version": 3})
    invalid(tool, {"format": "base64"})
    with pytest.raises(ToolExecutionError, match="48 bits"):
        uuid7(1 << 48)


@given(st.integers(0, (1 << 48) - 2), st.integers(1, 10**9))
@settings(max_examples=200, deadline=None)
def test_uuid7_orders_by_time(ms: int, later: int) -> None:
    first, second = uuid7(ms), uuid7(min(ms + later, (1 << 48) - 1))
    assert first.version == second.version == 7 and first.variant == uuid.RFC_4122
    assert first.int >> 80 == ms
    assert str(first) < str(second) and first < second


# -- through the runtime ----------------------------------------------------------------


@pytest.mark.parametrize(("tool", "params", "check"), [
    (Base64EncoderTool(), {"operation": "encode", "input": "hi"},
     lambda r: r["result"] == "aGk="),
    (DataValidationTool(), {"data": {"a": 1}, "rules": [{"path": "a", "rule": "required"}]},
     lambda r: r["valid"]),
    (DateTimeHandlerTool(), {"operation": "weekday", "datetime": "2024-05-01"},
     lambda r: r["weekday"] == "Wednesday"),
    (DiffCalculatorTool(), {"mode": "json", "old": {"a": 1}, "new": {"a": 2}},
     lambda r: r["changes"][0]["path"] == "a"),
    (HashCalculatorTool(), {"input": "abc", "algorithm": "md5"},
     lambda r: r["digest"] == "900150983cd24fb0d6963f7d28e17f72"),
    (TemplateEngineTool(), {"template": "{{ a + b }}", "variables": {"a": 1, "b": 2}},
     lambda r: r["result"] == "3"),
    (UuidGeneratorTool(), {"version": 7}, lambda r: uuid.UUID(r["uuids"][0]).version == 7),
], ids=lambda v: getattr(v, "name", ""))
async def test_tools_run_through_the_system(tool: Tool, params: dict[str, Any],
                                            check: Any) -> None:
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(tool)
        result = await system.tools.execute(tool.name, params)
        check_json_safe(result)
        assert check(result)
        with pytest.raises(ToolValidationError):
            await system.tools.execute(tool.name, {"no_such_parameter": 1})
