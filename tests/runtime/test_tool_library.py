"""The built-in tool library: calculator, JSON, text, sandboxed files and guarded HTTP.

Tools are called directly (``validate`` then ``execute``), the way the pipeline calls them.
HTTP tests talk only to a local server on 127.0.0.1 started here.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmspell.core.errors import (
    ConfigurationError,
    SandboxViolationError,
    ToolExecutionError,
    ToolTimeoutError,
    ToolValidationError,
)
from llmspell.runtime.tools.base import SecurityLevel
from llmspell.runtime.tools.library import (
    CalculatorTool,
    FileOperationsTool,
    HttpRequestTool,
    JsonProcessorTool,
    TextManipulatorTool,
    default_tools,
)
from llmspell.runtime.tools.library.http_request import address_refusal
from llmspell.runtime.tools.library.json_processor import (
    WILDCARD,
    PathSyntaxError,
    format_path,
    parse_path,
    query_path,
)
from llmspell.runtime.tools.library.text_manipulator import check_regex, split_words
from tests.runtime.tool_helpers import call, run

# -- default_tools -----------------------------------------------------------------------


def test_default_tools(tmp_path: Path) -> None:
    names = [t.name for t in default_tools()]
    assert {"calculator", "json_processor", "text_manipulator", "http_request"} <= set(names)
    assert "file_operations" not in names  # no file tool without a sandbox
    with_files = default_tools(sandbox=tmp_path, allow_loopback=True)
    files = next(t for t in with_files if t.name == "file_operations")
    http = next(t for t in with_files if isinstance(t, HttpRequestTool))
    assert http.allow_loopback
    for made in with_files:
        made.validator()  # every schema is a valid JSON Schema
        assert made.description
        assert made.spec().name == made.name
    assert http.security_level is SecurityLevel.RESTRICTED
    assert files.security_level is SecurityLevel.RESTRICTED


# -- calculator ----------------------------------------------------------------------------

calc = CalculatorTool()


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("2 ** 3 ** 2", 512),
        ("-2 ** 2", -4),
        ("7 // 2 + 7 % 2", 4),
        ("7 / 2", 3.5),
        ("+-+3", -3),
        ("sqrt(16) + abs(-2)", 6.0),
        ("round(2.567, 2)", 2.57),
        ("max(1, 5, 3) - min(4, 2)", 3),
        ("floor(2.7) + ceil(2.1)", 5),
        ("log(8, 2) + log10(100) + log(e)", 6.0),
        ("sin(0) + cos(0) + tan(0) + exp(0)", 2.0),
        ("pi", 3.141592653589793),
        ("1 < 2 <= 2 != 3", True),
        ("3 > 4", False),
        ("2 ** -2", 0.25),
        ("10 ** 3999 // 10 ** 3998", 10),
    ],
)
def test_calculator_arithmetic(expression: str, expected: object) -> None:
    result = call(calc, {"expression": expression})
    assert result == {"result": expected, "expression": expression}
    assert type(result["result"]) is type(expected)


def test_calculator_variables() -> None:
    result = call(calc, {"expression": "sqrt(x**2 + y**2) * rate",
                         "variables": {"x": 3, "y": 4, "rate": 1.5}})
    assert result["result"] == 7.5
    # a variable may shadow a constant
    assert call(calc, {"expression": "e * 2", "variables": {"e": 5}})["result"] == 10


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("(1).real", "unsupported syntax: Attribute"),
        ("().__class__", "unsupported syntax: Attribute"),
        ("__import__('os')", "unknown function '__import__'"),
        ("open('x')", "unknown function 'open'"),
        ("(lambda: 1)()", "unsupported call of a Lambda"),
        ("lambda: 1", "unsupported syntax: Lambda"),
        ("[x for x in [1]]", "unsupported syntax: ListComp"),
        ("{x: 1 for x in [1]}", "unsupported syntax: DictComp"),
        ("[1, 2][0]", "unsupported syntax: Subscript"),
        ("1 if 1 else 2", "unsupported syntax: IfExp"),
        ("'abc'", "unsupported constant 'abc'"),
        ("True", "unsupported constant True"),
        ("1 << 3", "unsupported operator LShift"),
        ("not 1", "unsupported unary operator Not"),
        ("1 in 2", "unsupported comparison In"),
        ("x + 1", "unknown name 'x'"),
        ("sqrt", "'sqrt' is a function"),
        ("sqrt(x=1)", "positional arguments only"),
        ("min()", "min() takes 1 or more argument(s), got 0"),
        ("sqrt(1, 2)", "sqrt() takes 1 argument(s), got 2"),
        ("1 +", "invalid expression"),
        ("   ", "the expression is empty"),
        ("sqrt(-1)", "math domain error"),
        ("(-8) ** (1/3)", "complex number"),
        ("round(1.5, 0.5)", "integer number of digits"),
    ],
)
def test_calculator_refusals(expression: str, message: str) -> None:
    calc.validate({"expression": expression})
    with pytest.raises(ToolExecutionError) as caught:
        calc.execute({"expression": expression})
    assert message in str(caught.value)
    assert caught.value.tool == "calculator"


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("1 / 0", "division by zero in 1 / 0"),
        ("1 // 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("9 ** 9 ** 9", "369693100 digits, more than the limit of 4000"),
        ("2 ** 100000", "would have about 30103 digits"),
        ("(10 ** 2000) * (10 ** 2000)", "more than 4000 digits"),
        ("10.0 ** 400", "overflows"),
        ("1e308 * 10", "not a finite number"),
        ("exp(1000)", "math range error"),
    ],
)
def test_calculator_arithmetic_errors(expression: str, message: str) -> None:
    # The messages show the size was estimated, not computed (9 ** 9 ** 9 would not end).
    with pytest.raises(ToolExecutionError) as caught:
        call(calc, {"expression": expression})
    assert message in str(caught.value)
    assert len(str(caught.value)) < 400  # huge numbers are abbreviated in messages


def test_calculator_limits() -> None:
    with pytest.raises(ToolValidationError):
        calc.validate({"expression": "1+" * 600 + "1"})
    with pytest.raises(ToolExecutionError, match="more than 1000"):
        calc.execute({"expression": "1+" * 600 + "1"})
    with pytest.raises(ToolExecutionError, match="nested more than 50 levels"):
        call(calc, {"expression": "-" * 200 + "1"})
    with pytest.raises(ToolExecutionError, match=r"invalid expression|nested"):
        call(calc, {"expression": "(" * 300 + "1" + ")" * 300})
    with pytest.raises(ToolValidationError):  # variables must be numbers
        calc.validate({"expression": "x", "variables": {"x": "1"}})
    with pytest.raises(ToolValidationError):
        calc.validate({"expression": "x", "variables": {"x": True}})


# -- json_processor ------------------------------------------------------------------------

jp = JsonProcessorTool()
DOC: dict[str, Any] = {
    "store": {"name": "corner", "tags": ["a", "b"]},
    "items": [{"name": "pen", "price": 2}, {"name": "ink", "price": 5}, {"price": 1}],
    "odd key": {"x.y": 1},
}


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("store.name", "corner"),
        ("store.tags[1]", "b"),
        ("store.tags[-1]", "b"),
        ("items[0].price", 2),
        ("$.items[1].name", "ink"),
        ('["odd key"]["x.y"]', 1),
        ("items[*].name", ["pen", "ink"]),
        ("items.*.price", [2, 5, 1]),
        ("store.*", ["corner", ["a", "b"]]),
        ("", DOC),
    ],
)
def test_json_query(path: str, value: Any) -> None:
    result = call(jp, {"operation": "query", "data": DOC, "path": path})
    assert result["value"] == value
    assert result["found"] is True


def test_json_query_missing() -> None:
    with pytest.raises(ToolExecutionError, match=r"at items\[2\]: key 'name' is missing"):
        call(jp, {"operation": "query", "data": DOC, "path": "items[2].name"})
    with pytest.raises(ToolExecutionError, match=r"index \[9\] is out of range"):
        call(jp, {"operation": "query", "data": DOC, "path": "items[9]"})
    with pytest.raises(ToolExecutionError, match="needs an array, found object"):
        call(jp, {"operation": "query", "data": DOC, "path": "store[0]"})
    result = call(jp, {"operation": "query", "data": DOC, "path": "nope", "default": None})
    assert result == {"path": "nope", "value": None, "found": False}
    assert call(jp, {"operation": "query", "data": DOC, "path": "nope[*]"})["found"] is False
    with pytest.raises(ToolExecutionError, match=r"invalid path 'a\.\.b' at column 3"):
        call(jp, {"operation": "query", "data": DOC, "path": "a..b"})


def test_json_path_syntax() -> None:
    assert parse_path('a.b[0]["c d"][*].*') == ("a", "b", 0, "c d", WILDCARD, WILDCARD)
    for bad, column in [("a[", 3), ("a[x]", 3), ("[0", 3), ("a.", 3), ("a b", 2), (".a", 1)]:
        with pytest.raises(PathSyntaxError) as caught:
            parse_path(bad)
        assert caught.value.column == column
    assert format_path(["a", 0, "b c", WILDCARD, "$", "9"]) == 'a[0]["b c"][*]["$"]["9"]'
    with pytest.raises(LookupError):
        query_path([], "[0]")


def test_json_validate() -> None:
    schema = {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": {
                "type": "object", "required": ["name"],
                "properties": {"price": {"type": "integer", "minimum": 2}}}},
        },
    }
    result = call(jp, {"operation": "validate", "data": DOC, "schema": schema})
    assert result["valid"] is False
    assert [(e["path"], e["message"]) for e in result["errors"]] == [
        ("items[2]", "'name' is a required property"),
        ("items[2].price", "1 is less than the minimum of 2"),
    ]
    assert result["errors"][1]["schema_path"].endswith("price/minimum")
    ok = call(jp, {"operation": "validate", "data": {"items": []}, "schema": schema})
    assert ok == {"valid": True, "errors": [], "truncated": False}
    limited = call(jp, {"operation": "validate", "data": [1, 2, 3], "max_errors": 2,
                        "schema": {"items": {"type": "string"}}})
    assert limited["truncated"] is True
    assert [e["path"] for e in limited["errors"]] == ["[0]", "[1]"]
    with pytest.raises(ToolExecutionError, match="not a valid JSON Schema"):
        call(jp, {"operation": "validate", "data": 1, "schema": {"type": "nope"}})


def test_json_validate_never_fetches_remote_refs() -> None:
    schema = {"$ref": "http://127.0.0.1:9/schema.json"}
    with pytest.raises(ToolExecutionError, match="cannot be resolved"):
        call(jp, {"operation": "validate", "data": 1, "schema": schema})
    local = {"$defs": {"n": {"type": "integer"}}, "$ref": "#/$defs/n"}
    assert call(jp, {"operation": "validate", "data": "x", "schema": local})["valid"] is False


def test_json_transform() -> None:
    picked = call(jp, {"operation": "transform", "data": DOC,
                       "pick": ["store.name", "items[*].name", "items[-1]", "absent"]})
    assert picked["value"] == {
        "store": {"name": "corner"},
        "items": [{"name": "pen"}, {"name": "ink"}, {"price": 1}],
    }
    assert picked["missing"] == ["absent"]
    renamed = call(jp, {"operation": "transform", "data": DOC,
                        "rename": {"items[*].price": "cost", "store": "shop", "zz": "q"}})
    assert list(renamed["value"]) == ["shop", "items", "odd key"]  # order kept
    assert renamed["value"]["items"][2] == {"cost": 1}
    assert renamed["missing"] == ["zz"]
    assert DOC["items"][0] == {"name": "pen", "price": 2}  # the input is untouched
    both = call(jp, {"operation": "transform", "data": DOC, "pick": ["store"],
                     "rename": {"store.tags": "labels"}})
    assert both["value"] == {"store": {"name": "corner", "labels": ["a", "b"]}}
    with pytest.raises(ToolExecutionError, match="'price' already exists"):
        call(jp, {"operation": "transform", "data": DOC, "rename": {"items[0].name": "price"}})
    with pytest.raises(ToolExecutionError, match="must end in an object key"):
        call(jp, {"operation": "transform", "data": DOC, "rename": {"items[0]": "x"}})
    with pytest.raises(ToolValidationError):
        jp.validate({"operation": "transform", "data": DOC})


def test_json_parse_and_stringify() -> None:
    assert call(jp, {"operation": "parse", "text": '{"a": [1, 2.5, null]}'}) == {
        "value": {"a": [1, 2.5, None]}}
    with pytest.raises(ToolExecutionError, match="line 2, column 8") as caught:
        call(jp, {"operation": "parse", "text": '{"a": 1,\n  "b": }'})
    assert caught.value.hint and "near" in caught.value.hint
    with pytest.raises(ToolExecutionError, match="NaN"):
        call(jp, {"operation": "parse", "text": "[NaN]"})
    with pytest.raises(ToolExecutionError, match="invalid JSON"):
        call(jp, {"operation": "parse", "text": "[" * 100_000})
    text = call(jp, {"operation": "stringify", "data": {"b": 1, "a": "é"}, "indent": 2,
                     "sort_keys": True})["text"]
    assert text == '{\n  "a": "é",\n  "b": 1\n}'
    assert call(jp, {"operation": "stringify", "data": [1, 2]})["text"] == "[1, 2]"
    with pytest.raises(ToolValidationError, match="'text' is a required property"):
        jp.validate({"operation": "parse"})
    with pytest.raises(ToolValidationError):
        jp.validate({"operation": "explode", "data": 1})


json_scalars = (st.none() | st.booleans() | st.integers()
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6))
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=16,
)
segments = st.lists(st.text(max_size=6) | st.integers(-50, 50) | st.just(WILDCARD), max_size=6)


@given(segments)
def test_path_format_parse_round_trip(path: list[Any]) -> None:
    assert parse_path(format_path(path)) == tuple(path)


@settings(max_examples=150)
@given(st.data())
def test_query_finds_every_generated_path(data: st.DataObject) -> None:
    doc = data.draw(json_values)
    path: list[str | int] = []
    node = doc
    while isinstance(node, (list, dict)) and node and data.draw(st.booleans()):
        if isinstance(node, list):
            index = data.draw(st.integers(-len(node), len(node) - 1))
            path.append(index)
            node = node[index]
        else:
            key = data.draw(st.sampled_from(sorted(node)))
            path.append(key)
            node = node[key]
    text = format_path(path)
    assert parse_path(text) == tuple(path)
    result = jp.execute({"operation": "query", "data": doc, "path": text})
    assert result["value"] == node


@given(st.lists(st.dictionaries(st.sampled_from(["name", "x"]), json_scalars), max_size=5))
def test_wildcard_query_matches_comprehension(items: list[dict[str, Any]]) -> None:
    result = jp.execute({"operation": "query", "data": {"items": items},
                         "path": "items[*].name"})
    assert result["value"] == [i["name"] for i in items if "name" in i]


# -- text_manipulator ----------------------------------------------------------------------

tm = TextManipulatorTool()


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"operation": "uppercase", "text": "abc é"}, "ABC É"),
        ({"operation": "lowercase", "text": "ABC"}, "abc"),
        ({"operation": "title", "text": "they're HERE now"}, "They're Here Now"),
        ({"operation": "reverse", "text": "abc"}, "cba"),
        ({"operation": "reverse", "text": "ne\u0301e"}, "ee\u0301n"),  # accent stays put
        ({"operation": "trim", "text": "  a b  "}, "a b"),
        ({"operation": "trim", "text": "xxaxx", "characters": "x", "side": "left"}, "axx"),
        ({"operation": "trim", "text": "  a  ", "side": "right"}, "  a"),
        ({"operation": "split", "text": "a  b\tc"}, ["a", "b", "c"]),
        ({"operation": "split", "text": "a,b,c", "separator": ",", "max_splits": 1},
         ["a", "b,c"]),
        ({"operation": "split", "text": "a1b22c", "separator": r"\d+", "regex": True},
         ["a", "b", "c"]),
        ({"operation": "split", "text": "a1b", "separator": r"\d", "regex": True,
          "max_splits": 0}, ["a1b"]),
        ({"operation": "join", "items": ["a", "b"], "separator": "-"}, "a-b"),
        ({"operation": "join", "items": []}, ""),
        ({"operation": "truncate", "text": "hello world", "length": 8}, "hello..."),
        ({"operation": "truncate", "text": "hello world", "length": 9, "suffix": "…",
          "word_boundary": True}, "hello…"),
        ({"operation": "truncate", "text": "hi", "length": 5}, "hi"),
        ({"operation": "truncate", "text": "hello", "length": 2}, ".."),
        ({"operation": "word_count", "text": " one two\nthree "}, 3),
        ({"operation": "slugify", "text": "Héllo, World! 2024"}, "hello-world-2024"),
        ({"operation": "snake_case", "text": "HTTPServerError v2Beta"},
         "http_server_error_v2_beta"),
        ({"operation": "snake_case", "text": "already_snake-case"}, "already_snake_case"),
        ({"operation": "camel_case", "text": "user id_number"}, "userIdNumber"),
        ({"operation": "camel_case", "text": "XMLHttpRequest"}, "xmlHttpRequest"),
    ],
)
def test_text_operations(params: dict[str, Any], expected: Any) -> None:
    assert call(tm, params)["result"] == expected


def test_text_counts_and_replace() -> None:
    counts = call(tm, {"operation": "char_count", "text": "é a\nb"})
    assert counts == {"result": 5, "without_whitespace": 3, "bytes": 6, "lines": 2}
    literal = call(tm, {"operation": "replace", "text": "a.b.c", "find": ".",
                        "replacement": "-", "count": 1})
    assert literal == {"result": "a-b.c", "replacements": 1}
    regex = call(tm, {"operation": "replace", "text": "2024-01-31", "regex": True,
                      "find": r"(\d+)-(\d+)-(\d+)", "replacement": r"\3/\2/\1"})
    assert regex == {"result": "31/01/2024", "replacements": 1}
    nocase = call(tm, {"operation": "replace", "text": "A.a", "find": "a.",
                       "replacement": "x", "ignore_case": True})
    assert nocase["result"] == "xa"
    with pytest.raises(ToolExecutionError, match="bad replacement template"):
        call(tm, {"operation": "replace", "text": "a", "find": "a", "regex": True,
                  "replacement": r"\9"})
    with pytest.raises(ToolExecutionError, match="invalid regular expression"):
        call(tm, {"operation": "replace", "text": "a", "find": "(", "regex": True,
                  "replacement": ""})


def test_text_limits() -> None:
    small = TextManipulatorTool(max_bytes=100)
    with pytest.raises(ToolExecutionError, match="larger than the limit of 100 bytes"):
        call(small, {"operation": "uppercase", "text": "é" * 51})
    call(small, {"operation": "uppercase", "text": "é" * 50})
    with pytest.raises(ToolExecutionError, match="larger than 100 bytes"):
        call(small, {"operation": "replace", "text": "a" * 50, "find": "a",
                     "replacement": "bbb"})
    with pytest.raises(ToolExecutionError, match="larger than 100 bytes"):
        call(small, {"operation": "replace", "text": "a" * 50, "find": "a", "regex": True,
                     "replacement": "bbb"})
    with pytest.raises(ToolExecutionError, match="joined text"):
        call(small, {"operation": "join", "items": ["x" * 60, "y" * 60]})
    with pytest.raises(ToolExecutionError, match="larger than the limit"):
        call(tm, {"operation": "lowercase", "text": "a" * (1024 * 1024 + 1)})
    # Catastrophic-backtracking shapes run in linear time (RE2): 2**64 paths, no hang.
    assert call(tm, {"operation": "replace", "text": "a" * 64 + "!", "find": "(a+)+$",
                     "regex": True, "replacement": ""})["replacements"] == 0
    with pytest.raises(ToolExecutionError, match="lookaround") as info:
        call(tm, {"operation": "replace", "text": "ab", "find": "a(?=b)", "regex": True,
                  "replacement": ""})
    assert "invalid regular expression" in info.value.message
    with pytest.raises(ToolExecutionError, match="more than 500"):
        call(tm, {"operation": "split", "text": "a", "separator": "a" * 501, "regex": True})
    with pytest.raises(ToolExecutionError, match="at most 200000 characters"):
        call(tm, {"operation": "split", "text": "a" * 200_001, "separator": "a",
                  "regex": True})
    with pytest.raises(ToolValidationError):
        tm.validate({"operation": "uppercase"})
    with pytest.raises(ToolValidationError):
        tm.validate({"operation": "truncate", "text": "x"})


@pytest.mark.parametrize(("pattern", "text"), [
    (r"(a+)+$", "a" * 64 + "!"), (r"(\w*)*x", "a" * 64), (r"(?:x*y)*z", "xy" * 64),
    (r"(a|a)*b", "a" * 10_000), (r"a*a*a*a*a*b", "a" * 10_000), (r"^(a{2,3}){2}$", "a" * 9),
])
def test_regex_backtracking_shapes_run_in_linear_time(pattern: str, text: str) -> None:
    """Red-team item 6: each of these takes exponential (or n**5) time on backtracking
    ``re``; RE2 answers at once, so the test finishes instead of hanging."""
    assert check_regex(pattern).search(text) is None


@pytest.mark.parametrize("pattern", [r"(a|b)+", r"[(]+", r"\(a+\)+", r"a+b*", r"(ab)+",
                                     r"(?P<n>\d)?", r"[]a]+"])
def test_regex_guard_allows_plain_patterns(pattern: str) -> None:
    assert check_regex(pattern).pattern == pattern


def test_split_words() -> None:
    assert split_words("café au lait") == ["café", "au", "lait"]
    assert split_words("XMLHttpRequest2") == ["XML", "Http", "Request2"]


# -- file_operations -----------------------------------------------------------------------


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    root = tmp_path / "sandbox"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("secret")
    return root


def test_files_write_read_append(sandbox: Path) -> None:
    files = FileOperationsTool(sandbox)
    written = call(files, {"operation": "write", "path": "notes/a.txt", "content": "héllo",
                           "parents": True})
    assert written == {"path": "notes/a.txt", "bytes_written": 6, "created": True}
    assert call(files, {"operation": "read", "path": "notes/a.txt"}) == {
        "path": "notes/a.txt", "content": "héllo", "size": 6, "encoding": "utf-8"}
    appended = call(files, {"operation": "append", "path": "notes/a.txt", "content": "!"})
    assert appended["size"] == 7
    assert (sandbox / "notes" / "a.txt").read_text() == "héllo!"
    again = call(files, {"operation": "write", "path": "notes/a.txt", "content": "new"})
    assert again["created"] is False
    with pytest.raises(ToolExecutionError, match="exists"):
        call(files, {"operation": "write", "path": "notes/a.txt", "content": "x",
                     "overwrite": False})
    with pytest.raises(ToolExecutionError, match="does not exist"):
        call(files, {"operation": "write", "path": "missing/a.txt", "content": "x"})
    call(files, {"operation": "write", "path": "l1.txt", "content": "é", "encoding": "latin-1"})
    assert (sandbox / "l1.txt").read_bytes() == b"\xe9"
    with pytest.raises(ToolExecutionError, match="not valid utf-8"):
        call(files, {"operation": "read", "path": "l1.txt"})
    assert call(files, {"operation": "read", "path": "l1.txt",
                        "encoding": "latin-1"})["content"] == "é"
    with pytest.raises(ToolExecutionError, match="unknown text encoding"):
        call(files, {"operation": "read", "path": "l1.txt", "encoding": "rot13"})
    with pytest.raises(ToolExecutionError, match="cannot be encoded as ascii"):
        call(files, {"operation": "write", "path": "b.txt", "content": "é", "encoding": "ascii"})
    with pytest.raises(ToolExecutionError, match="no such file"):
        call(files, {"operation": "read", "path": "nope.txt"})
    with pytest.raises(ToolExecutionError, match="is a directory"):
        call(files, {"operation": "read", "path": "notes"})


def test_files_write_is_atomic(sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = FileOperationsTool(sandbox)
    for index in range(3):
        call(files, {"operation": "write", "path": "a.txt", "content": f"v{index}"})
    assert sorted(p.name for p in sandbox.iterdir()) == ["a.txt"]

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(ToolExecutionError, match="No space left"):
        call(files, {"operation": "write", "path": "a.txt", "content": "lost"})
    assert (sandbox / "a.txt").read_text() == "v2"
    assert sorted(p.name for p in sandbox.iterdir()) == ["a.txt"]  # no temp file left


def test_files_list_exists_stat_mkdir(sandbox: Path) -> None:
    files = FileOperationsTool(sandbox)
    assert call(files, {"operation": "mkdir", "path": "d/e", "parents": True})["created"]
    assert not call(files, {"operation": "mkdir", "path": "d/e"})["created"]
    (sandbox / "d" / "f.txt").write_text("12345")
    (sandbox / "top.txt").write_text("x")
    listing = call(files, {"operation": "list", "path": ""})
    assert [(e["path"], e["type"]) for e in listing["entries"]] == [
        ("d", "dir"), ("top.txt", "file")]
    deep = call(files, {"operation": "list", "path": ".", "recursive": True})
    assert [e["path"] for e in deep["entries"]] == ["d", "top.txt", "d/e", "d/f.txt"]
    assert deep["truncated"] is False
    assert call(files, {"operation": "exists", "path": "d/f.txt"})["exists"] is True
    assert call(files, {"operation": "exists", "path": "d/zz"})["exists"] is False
    info = call(files, {"operation": "stat", "path": "d/f.txt"})
    assert info["size"] == 5 and info["is_file"] and not info["is_dir"]
    assert info["modified"].endswith("+00:00")
    assert call(files, {"operation": "stat", "path": "d"})["type"] == "dir"
    with pytest.raises(ToolExecutionError, match="not a directory"):
        call(files, {"operation": "list", "path": "top.txt"})
    with pytest.raises(ToolExecutionError, match="no such file"):
        call(files, {"operation": "stat", "path": "zz"})


def test_files_delete_move_copy(sandbox: Path) -> None:
    files = FileOperationsTool(sandbox)
    (sandbox / "d").mkdir()
    (sandbox / "d" / "f.txt").write_text("data")
    copied = call(files, {"operation": "copy", "path": "d/f.txt", "destination": "g.txt"})
    assert copied == {"path": "d/f.txt", "destination": "g.txt", "bytes": 4}
    with pytest.raises(ToolExecutionError, match="exists"):
        call(files, {"operation": "copy", "path": "d/f.txt", "destination": "g.txt"})
    call(files, {"operation": "copy", "path": "d/f.txt", "destination": "g.txt",
                 "overwrite": True})
    with pytest.raises(ToolExecutionError, match="pass recursive=true"):
        call(files, {"operation": "copy", "path": "d", "destination": "d2"})
    call(files, {"operation": "copy", "path": "d", "destination": "d2", "recursive": True})
    assert (sandbox / "d2" / "f.txt").read_text() == "data"
    with pytest.raises(ToolExecutionError, match="into itself"):
        call(files, {"operation": "copy", "path": "d", "destination": "d/sub",
                     "recursive": True})
    moved = call(files, {"operation": "move", "path": "g.txt", "destination": "h/g.txt",
                         "parents": True})
    assert moved == {"path": "g.txt", "destination": "h/g.txt"}
    assert (sandbox / "h" / "g.txt").exists() and not (sandbox / "g.txt").exists()
    with pytest.raises(ToolExecutionError, match="is a directory; it is never replaced"):
        call(files, {"operation": "move", "path": "h/g.txt", "destination": "d",
                     "overwrite": True})
    with pytest.raises(ToolExecutionError, match="not empty"):
        call(files, {"operation": "delete", "path": "d"})
    assert call(files, {"operation": "delete", "path": "d", "recursive": True})["deleted"] == "dir"
    assert call(files, {"operation": "delete", "path": "h/g.txt"})["deleted"] == "file"
    assert call(files, {"operation": "delete", "path": "h"})["deleted"] == "dir"
    with pytest.raises(SandboxViolationError, match="root cannot be deleted"):
        call(files, {"operation": "delete", "path": ".", "recursive": True})
    with pytest.raises(ToolExecutionError, match="no such file"):
        call(files, {"operation": "delete", "path": "h"})
    with pytest.raises(ToolExecutionError, match="no such file"):
        call(files, {"operation": "move", "path": "zz", "destination": "yy"})


@pytest.mark.parametrize(
    "path",
    ["../outside/secret.txt", "a/../../outside/secret.txt", "..", "/etc/passwd",
     "\\etc\\passwd", "C:/Windows", "a\0b"],
)
def test_files_refuse_escapes(sandbox: Path, path: str) -> None:
    files = FileOperationsTool(sandbox)
    for operation in ("read", "exists", "list", "stat", "delete"):
        with pytest.raises(SandboxViolationError) as caught:
            call(files, {"operation": operation, "path": path})
        assert caught.value.tool == "file_operations"
    with pytest.raises(SandboxViolationError):
        call(files, {"operation": "write", "path": path, "content": "x"})
    with pytest.raises(SandboxViolationError):
        call(files, {"operation": "copy", "path": "x", "destination": path})


def test_files_refuse_symlinks_out(sandbox: Path) -> None:
    outside = sandbox.parent / "outside"
    (sandbox / "link.txt").symlink_to(outside / "secret.txt")
    (sandbox / "dirlink").symlink_to(outside, target_is_directory=True)
    (sandbox / "dangling").symlink_to(outside / "new.txt")
    files = FileOperationsTool(sandbox)
    for params in [
        {"operation": "read", "path": "link.txt"},
        {"operation": "write", "path": "link.txt", "content": "pwned"},
        {"operation": "append", "path": "link.txt", "content": "pwned"},
        {"operation": "delete", "path": "link.txt"},
        {"operation": "read", "path": "dirlink/secret.txt"},
        {"operation": "write", "path": "dirlink/new.txt", "content": "pwned"},
        {"operation": "list", "path": "dirlink"},
        {"operation": "write", "path": "dangling", "content": "pwned"},
        {"operation": "copy", "path": "link.txt", "destination": "copy.txt"},
        {"operation": "move", "path": "dirlink", "destination": "x"},
    ]:
        with pytest.raises(SandboxViolationError, match="outside the sandbox"):
            call(files, params)
    assert (outside / "secret.txt").read_text() == "secret"
    assert not (outside / "new.txt").exists()
    # listing the sandbox shows the links without following them
    listing = call(files, {"operation": "list", "path": "", "recursive": True})
    assert {e["path"]: e["type"] for e in listing["entries"]} == {
        "dangling": "symlink", "dirlink": "symlink", "link.txt": "symlink"}


def test_files_symlink_inside_is_fine(sandbox: Path) -> None:
    (sandbox / "real.txt").write_text("inside")
    (sandbox / "alias.txt").symlink_to(sandbox / "real.txt")
    files = FileOperationsTool(sandbox)
    assert call(files, {"operation": "read", "path": "alias.txt"})["content"] == "inside"
    call(files, {"operation": "write", "path": "alias.txt", "content": "changed"})
    assert (sandbox / "alias.txt").is_symlink()  # written through, link kept
    assert (sandbox / "real.txt").read_text() == "changed"
    assert call(files, {"operation": "stat", "path": "alias.txt"})["is_symlink"] is True
    assert call(files, {"operation": "delete", "path": "alias.txt"})["deleted"] == "symlink"
    assert (sandbox / "real.txt").exists()


def test_files_limits_and_read_only(sandbox: Path) -> None:
    files = FileOperationsTool(sandbox, max_bytes=10)
    with pytest.raises(ToolExecutionError, match="more than the limit of 10"):
        call(files, {"operation": "write", "path": "a.txt", "content": "x" * 11})
    call(files, {"operation": "write", "path": "a.txt", "content": "x" * 8})
    with pytest.raises(ToolExecutionError, match="would grow to 12 bytes"):
        call(files, {"operation": "append", "path": "a.txt", "content": "xxxx"})
    (sandbox / "big.txt").write_text("y" * 11)
    with pytest.raises(ToolExecutionError, match="11 bytes, more than the limit"):
        call(files, {"operation": "read", "path": "big.txt"})
    with pytest.raises(ToolExecutionError, match="more than the limit"):
        call(files, {"operation": "copy", "path": "big.txt", "destination": "c.txt"})
    read_only = FileOperationsTool(sandbox, allow_write=False)
    assert call(read_only, {"operation": "read", "path": "a.txt"})["content"] == "x" * 8
    for operation in ("write", "append", "delete", "mkdir"):
        with pytest.raises(SandboxViolationError, match="read-only"):
            call(read_only, {"operation": operation, "path": "a.txt", "content": "z"})
    with pytest.raises(ConfigurationError):
        FileOperationsTool(sandbox / "missing")
    with pytest.raises(ToolValidationError):
        files.validate({"operation": "write", "path": "a.txt"})


# -- http_request --------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    flaky_seen: dict[str, int] = {}  # noqa: RUF012
    lock = threading.Lock()
    hits = 0
    # /slow answers only once this is set: a timeout test sees no reply however slow the
    # machine is, and the handler thread does not linger afterwards.
    slow_release = threading.Event()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, value: Any, status: int = 200) -> None:
        self._send(status, json.dumps(value).encode())

    def do_GET(self) -> None:
        with _Handler.lock:
            _Handler.hits += 1
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        httpd: Any = self.server
        port = httpd.server_address[1]
        if parts.path == "/json":
            self._json({"hello": "world", "query": query})
        elif parts.path == "/headers":
            self._json({k.lower(): v for k, v in self.headers.items()})
        elif parts.path == "/text":
            self._send(200, "plain é".encode(), "text/plain; charset=utf-8")
        elif parts.path == "/binary":
            self._send(200, bytes(range(256)), "application/octet-stream")
        elif parts.path == "/flaky":
            key = query["key"][0]
            with _Handler.lock:
                seen = _Handler.flaky_seen[key] = _Handler.flaky_seen.get(key, 0) + 1
            fails = int(query.get("fails", ["1"])[0])
            status = int(query.get("status", ["500"])[0])
            if seen <= fails:
                self._json({"error": "try again"}, status)
            else:
                self._json({"ok": True, "seen": seen})
        elif parts.path == "/redirect":
            self._send(302, b"", extra={"Location": query.get("to", ["/json?from=redirect"])[0]})
        elif parts.path == "/loop":
            self._send(302, b"", extra={"Location": "/loop"})
        elif parts.path == "/to-localhost":
            self._send(302, b"", extra={"Location": f"http://localhost:{port}/headers"})
        elif parts.path == "/big":
            self._send(200, b"x" * 5000, "text/plain")
        elif parts.path == "/big-chunked":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(10):
                self.wfile.write(b"3e8\r\n" + b"y" * 1000 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif parts.path == "/slow":
            _Handler.slow_release.wait(30)
            self._json({"slow": True})
        else:
            self._json({"error": "not found"}, 404)

    do_HEAD = do_GET  # noqa: N815

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        if urlsplit(self.path).path == "/redirect":
            self._send(303, b"", extra={"Location": "/json"})
            return
        self._json({
            "method": self.command,
            "content_type": self.headers.get("Content-Type"),
            "json": json.loads(raw) if raw and "json" in self.headers["Content-Type"] else None,
            "text": raw.decode(),
        })

    do_PUT = do_PATCH = do_DELETE = do_POST  # noqa: N815


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a client that gave up (timeout or size tests): expected
        super().handle_error(request, client_address)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def http() -> HttpRequestTool:
    return HttpRequestTool(allow_loopback=True, timeout=5)


async def test_http_get_json(server: str, http: HttpRequestTool) -> None:
    result = await run(http, {"url": f"{server}/json?a=1", "query": {"b": [2, 3], "c": True}})
    assert result["status"] == 200
    assert result["body_encoding"] == "json"
    assert result["body"] == {"hello": "world",
                              "query": {"a": ["1"], "b": ["2", "3"], "c": ["true"]}}
    assert result["headers"]["content-type"] == "application/json"
    assert result["url"].startswith(f"{server}/json?a=1")
    assert result["elapsed_ms"] > 0
    assert result["attempts"] == 1 and result["redirects"] == []


async def test_http_post_json_and_text(server: str, http: HttpRequestTool) -> None:
    echoed = await run(http, {"url": f"{server}/echo", "method": "POST",
                              "json": {"x": [1, "é"]}})
    assert echoed["body"]["json"] == {"x": [1, "é"]}
    assert echoed["body"]["content_type"] == "application/json"
    put = await run(http, {"url": f"{server}/echo", "method": "PUT", "body": "raw text"})
    assert put["body"]["method"] == "PUT" and put["body"]["text"] == "raw text"
    with pytest.raises(ToolValidationError):  # json and body together
        http.validate({"url": f"{server}/echo", "json": 1, "body": "x"})


async def test_http_headers_and_auth(server: str, http: HttpRequestTool) -> None:
    result = await run(http, {"url": f"{server}/headers", "headers": {"X-Trace": "abc"},
                              "auth": {"type": "bearer", "token": "s3cret"}})
    seen = result["body"]
    assert seen["x-trace"] == "abc"
    assert seen["authorization"] == "Bearer s3cret"
    assert seen["host"] == server.removeprefix("http://")
    basic = await run(http, {"url": f"{server}/headers",
                             "auth": {"type": "basic", "username": "u", "password": "p"}})
    assert basic["body"]["authorization"] == "Basic dTpw"
    with pytest.raises(ToolExecutionError, match="set by the tool itself"):
        await run(http, {"url": f"{server}/headers", "headers": {"Host": "evil"}})
    with pytest.raises(ToolExecutionError, match="invalid header"):
        await run(http, {"url": f"{server}/headers", "headers": {"X-A": "a\r\nX-B: b"}})
    with pytest.raises(ToolExecutionError, match="not both"):
        await run(http, {"url": f"{server}/headers", "headers": {"Authorization": "x"},
                         "auth": {"type": "bearer", "token": "y"}})


async def test_http_text_binary_head(server: str, http: HttpRequestTool) -> None:
    text = await run(http, {"url": f"{server}/text"})
    assert text["body"] == "plain é" and text["body_encoding"] == "text"
    binary = await run(http, {"url": f"{server}/binary"})
    assert binary["body_encoding"] == "base64"
    head = await run(http, {"url": f"{server}/json", "method": "HEAD"})
    assert head["status"] == 200 and head["body"] == ""
    missing = await run(http, {"url": f"{server}/nope"})
    assert missing["status"] == 404  # an HTTP error status is a result, not a failure


async def test_http_retries(server: str, http: HttpRequestTool) -> None:
    result = await run(http, {"url": f"{server}/flaky?key=a", "retries": 2})
    assert result["status"] == 200 and result["attempts"] == 2
    assert result["body"] == {"ok": True, "seen": 2}
    throttled = await run(http, {"url": f"{server}/flaky?key=b&status=429&fails=2",
                                 "retries": 3})
    assert throttled["status"] == 200 and throttled["attempts"] == 3
    gave_up = await run(http, {"url": f"{server}/flaky?key=c&fails=3", "retries": 1})
    assert gave_up["status"] == 500 and gave_up["attempts"] == 2
    with pytest.raises(ToolValidationError):
        http.validate({"url": server, "retries": 6})


async def test_http_connect_error_retried() -> None:
    import socket

    slept: list[float] = []

    async def sleep(seconds: float) -> None:  # records the backoff instead of waiting
        slept.append(seconds)

    http = HttpRequestTool(allow_loopback=True, timeout=5, sleep=sleep)
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ToolExecutionError, match="could not connect"):
        await run(http, {"url": f"http://127.0.0.1:{port}/", "retries": 2})
    assert slept == [0.1, 0.2]  # two retries, exponential backoff


async def test_http_redirects(server: str, http: HttpRequestTool) -> None:
    result = await run(http, {"url": f"{server}/redirect"})
    assert result["status"] == 200
    assert result["body"]["query"] == {"from": ["redirect"]}
    assert result["url"] == f"{server}/json?from=redirect"
    assert result["redirects"] == [f"{server}/json?from=redirect"]
    posted = await run(http, {"url": f"{server}/redirect", "method": "POST", "json": {}})
    assert posted["body"]["hello"] == "world"  # 303: followed with GET
    with pytest.raises(ToolExecutionError, match="too many redirects"):
        await run(http, {"url": f"{server}/loop"})


async def test_http_redirect_to_other_host_drops_credentials(server: str,
                                                             http: HttpRequestTool) -> None:
    result = await run(http, {"url": f"{server}/to-localhost",
                              "auth": {"type": "bearer", "token": "s3cret"}})
    assert result["status"] == 200
    assert "authorization" not in result["body"]
    assert result["body"]["host"].startswith("localhost:")  # original Host header kept


async def test_http_redirect_targets_are_checked(server: str, http: HttpRequestTool) -> None:
    with pytest.raises(SandboxViolationError, match="private"):
        await run(http, {"url": f"{server}/redirect?to=http://10.1.2.3/"})
    with pytest.raises(SandboxViolationError, match="link-local"):
        await run(http, {"url": f"{server}/redirect?to=http://169.254.169.254/latest"})
    with pytest.raises(SandboxViolationError, match="scheme 'file'"):
        await run(http, {"url": f"{server}/redirect?to=file:///etc/passwd"})


async def test_http_body_limit(server: str) -> None:
    small = HttpRequestTool(allow_loopback=True, max_bytes=1000)
    with pytest.raises(ToolExecutionError, match="5000 bytes, more than the limit of 1000"):
        await run(small, {"url": f"{server}/big"})
    with pytest.raises(ToolExecutionError, match="larger than the limit of 1000"):
        await run(small, {"url": f"{server}/big-chunked"})


async def test_http_head_ignores_declared_length(server: str) -> None:
    small = HttpRequestTool(allow_loopback=True, max_bytes=1000)
    head = await run(small, {"url": f"{server}/big", "method": "HEAD"})
    assert head["headers"]["content-length"] == "5000" and head["body"] == ""


async def test_http_timeout(server: str) -> None:
    quick = HttpRequestTool(allow_loopback=True, timeout=0.3)
    _Handler.slow_release.clear()
    try:
        with pytest.raises(ToolTimeoutError, match=r"0\.3 s"):
            await run(quick, {"url": f"{server}/slow"})
    finally:
        _Handler.slow_release.set()
    assert quick.timeout is not None and quick.timeout > 0.3  # pipeline backstop is later


async def test_http_refuses_loopback_by_default(server: str) -> None:
    guarded = HttpRequestTool()
    before = _Handler.hits
    for url in (f"{server}/json", server.replace("127.0.0.1", "localhost") + "/json",
                server.replace("127.0.0.1", "[::ffff:127.0.0.1]") + "/json"):
        with pytest.raises(SandboxViolationError, match="loopback") as caught:
            await run(guarded, {"url": url})
        assert caught.value.hint and "allow_loopback" in caught.value.hint
    assert _Handler.hits == before  # nothing reached the server


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x",
                                 "gopher://127.0.0.1:70/"])
async def test_http_refuses_other_schemes(url: str, http: HttpRequestTool) -> None:
    with pytest.raises(ToolValidationError):
        http.validate({"url": url})
    with pytest.raises(SandboxViolationError, match="scheme"):
        await http.execute({"url": url})


async def test_http_refuses_url_credentials(server: str, http: HttpRequestTool) -> None:
    with pytest.raises(ToolExecutionError, match="credentials in the URL"):
        await run(http, {"url": server.replace("http://", "http://u:p@") + "/json"})


async def test_http_injected_clients(server: str) -> None:
    async with httpx.AsyncClient(trust_env=False) as client:
        tool_async = HttpRequestTool(allow_loopback=True, client=client)
        assert (await run(tool_async, {"url": f"{server}/json"}))["status"] == 200
    with httpx.Client(trust_env=False) as sync_client:
        tool_sync = HttpRequestTool(allow_loopback=True, client=sync_client, max_bytes=1000)
        result = await run(tool_sync, {"url": f"{server}/redirect"})
        assert result["body"]["hello"] == "world"
        with pytest.raises(ToolExecutionError, match="larger than the limit"):
            await run(tool_sync, {"url": f"{server}/big-chunked"})


@pytest.mark.parametrize(
    ("address", "flags", "refused"),
    [
        ("8.8.8.8", {}, None),
        ("2606:4700:4700::1111", {}, None),
        ("127.0.0.1", {}, "loopback"),
        ("::1", {}, "loopback"),
        ("127.0.0.1", {"allow_loopback": True}, None),
        ("::ffff:127.0.0.1", {}, "loopback"),
        ("2002:7f00:1::", {}, "loopback"),  # 6to4 wrapping 127.0.0.1
        ("10.0.0.1", {}, "private"),
        ("192.168.1.1", {}, "private"),
        ("100.64.0.1", {}, "private"),
        ("fd00::1", {}, "private"),
        ("10.0.0.1", {"allow_private": True}, None),
        ("169.254.169.254", {"allow_private": True}, "link-local"),
        ("fe80::1%eth0", {"allow_private": True}, "link-local"),
        ("224.0.0.1", {}, "multicast"),
        ("240.0.0.1", {"allow_private": True}, "reserved"),
        ("0.0.0.0", {"allow_private": True, "allow_loopback": True}, "unspecified"),
    ],
)
def test_address_refusal(address: str, flags: dict[str, bool], refused: str | None) -> None:
    reason = address_refusal(address, **flags)
    if refused is None:
        assert reason is None
    else:
        assert reason is not None and refused in reason
