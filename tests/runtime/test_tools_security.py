"""Regression tests for the red-team findings against the tool library (the attack each
one reproduces is in its docstring). Each would hang, exhaust memory or leak before its fix;
none checks a wall-clock bound. Database findings live in test_tools_system_comm.py, next
to the PostgreSQL fixture."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest

from llmspell.core.errors import ToolExecutionError
from llmspell.runtime import System, SystemConfig
from llmspell.runtime.tools import library as lib
from llmspell.runtime.tools.library.diff_tool import DiffCalculatorTool
from tests.runtime.test_all_tools import CASES
from tests.runtime.tool_helpers import call

# -- item 6: ReDoS in tools marked safe ------------------------------------------------


async def test_text_manipulator_alternation_bomb_through_the_pipeline() -> None:
    """``(a|a)*b`` passed the old nested-quantifier guard and took exponential time."""
    system = System(SystemConfig(store="none"))
    system.tools.register(lib.TextManipulatorTool())
    run = await system.tools.execute("text_manipulator", {
        "operation": "replace", "text": "a" * 100_000, "find": "(a|a)*b", "regex": True,
        "replacement": "x"})
    assert run["replacements"] == 0
    split = await system.tools.execute("text_manipulator", {
        "operation": "split", "text": "a" * 5000 + "c", "separator": "(a|a)*b",
        "regex": True})
    assert split["count"] == 1


def test_data_validation_polynomial_rule() -> None:
    """``a*a*a*a*a*b`` (n**5 backtracking) in a pattern rule; and in a schema pattern."""
    tool = lib.DataValidationTool()
    out = call(tool, {"data": {"s": "a" * 100_000}, "rules": [
        {"path": "s", "rule": "pattern", "value": "a*a*a*a*a*b"}]})
    assert out["valid"] is False and "should match" in out["errors"][0]["message"]
    out = call(tool, {"data": "a" * 100_000, "schema": {"pattern": "a*a*a*a*a*b"}})
    assert out["valid"] is False


def test_json_processor_schema_patterns_run_in_linear_time() -> None:
    """json_processor did not check schema patterns at all: ``^(a+)+$`` hung."""
    tool = lib.JsonProcessorTool()
    out = call(tool, {"operation": "validate", "data": "a" * 64 + "!",
                      "schema": {"type": "string", "pattern": "^(a+)+$"}})
    assert out["valid"] is False and "does not match" in out["errors"][0]["message"]
    evil_key = "a" * 64 + "!"
    schema = {"type": "object", "patternProperties": {"^(a+)+$": {"type": "integer"}},
              "additionalProperties": False}
    out = call(tool, {"operation": "validate", "data": {evil_key: 1, "aaa": "x"},
                      "schema": schema})
    messages = sorted(e["message"] for e in out["errors"])
    assert len(messages) == 2 and "is not of type 'integer'" in messages[1]
    assert "does not match any of the regexes" in messages[0]
    ok = call(tool, {"operation": "validate", "data": {"aaa": 1}, "schema": schema})
    assert ok["valid"] is True
    with pytest.raises(ToolExecutionError, match="unevaluatedProperties"):
        call(tool, {"operation": "validate", "data": {evil_key: 1}, "schema": {
            "patternProperties": {"^(a+)+$": {}}, "unevaluatedProperties": False}})
    with pytest.raises(ToolExecutionError, match="invalid schema pattern"):
        call(tool, {"operation": "validate", "data": "x", "schema": {"pattern": "(?<=x)y"}})


def test_data_validation_additional_properties_keep_jsonschema_semantics() -> None:
    tool = lib.DataValidationTool()
    schema = {"type": "object", "properties": {"id": {"type": "integer"}},
              "patternProperties": {"^x-": {"type": "string"}},
              "additionalProperties": {"type": "boolean"}}
    assert call(tool, {"data": {"id": 1, "x-a": "s", "flag": True},
                       "schema": schema})["valid"] is True
    bad = call(tool, {"data": {"id": 1, "x-a": 2, "flag": "no"}, "schema": schema})
    assert sorted(e["path"] for e in bad["errors"]) == ["flag", "x-a"]
    closed = call(tool, {"data": {"id": 1, "other": 1}, "schema": {
        "properties": {"id": {}}, "additionalProperties": False}})
    assert "Additional properties are not allowed" in closed["errors"][0]["message"]


def test_diff_calculator_refuses_quadratic_texts_before_computing() -> None:
    """Texts of a few often-repeated lines, within the size limits, kept difflib busy for
    minutes (16 s on the loop in the report); the matching work is now counted up front."""
    old = "".join(f"{i % 150}\n" for i in range(19_999))
    new = "".join(f"{(i * 7) % 150}\n" for i in range(19_999))
    with pytest.raises(ToolExecutionError, match="too costly to diff") as info:
        call(DiffCalculatorTool(), {"old": old, "new": new})
    assert "mode 'json'" in (info.value.hint or "")
    # Ordinary large diffs still work, and match difflib's output.
    import difflib

    text = "".join(f"line {i}\n" for i in range(19_999))
    edited = text.replace("line 500\n", "changed\n").replace("line 15000\n", "")
    out = call(DiffCalculatorTool(), {"old": text, "new": edited, "context": 2})
    assert out["diff"] == "".join(difflib.unified_diff(
        text.splitlines(True), edited.splitlines(True), "old", "new", n=2))
    assert out["added_lines"] == 1 and out["removed_lines"] == 2


@pytest.mark.parametrize(("name", "factory"), [(c[0], c[1]) for c in CASES],
                         ids=[c[0] for c in CASES])
def test_no_library_tool_runs_sync_code_on_the_event_loop(
        name: str, factory: object, tmp_path: Path) -> None:
    """A sync tool body runs on a worker thread under the tool's timeout (``blocking``);
    inline it would stall every other task of the loop while it computes."""
    assert callable(factory)
    tool = factory(tmp_path)
    if not inspect.iscoroutinefunction(type(tool).execute):
        assert tool.blocking, f"{name} has a sync body but blocking=False"


def test_sys_module_is_untouched() -> None:
    # safe_regex must not swap jsonschema's or re's internals process-wide.
    import re

    import jsonschema._keywords as keywords

    assert keywords.re is re and "re2" not in repr(sys.modules["re"])


# -- item 8: YAML alias bomb in file_converter -----------------------------------------


def _laughs(levels: int) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]"
              for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_file_converter_refuses_yaml_alias_bombs(tmp_path: Path) -> None:
    """A 478-byte file of nested aliases reached 2.9 GB once converted to JSON. The
    composed document is weighed with aliases expanded before any data is built."""
    tool = lib.FileConverterTool(tmp_path)
    for levels in (6, 9):  # 6 levels: a 3.7 MB JSON before the fix; 9: 2.9 GB
        (tmp_path / "bomb.yaml").write_text(_laughs(levels))
        with pytest.raises(ToolExecutionError, match="once its aliases") as info:
            call(tool, {"operation": "format", "source": "bomb.yaml",
                        "destination": "bomb.json"})
        assert "alias" in (info.value.hint or "")
        assert not (tmp_path / "bomb.json").exists()
    # Merge keys expand too: each level merges the previous one nine times.
    merges = ["m0: &m0 {a: 1, b: 2, c: 3}"] + [
        f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 9)}]}}" for i in range(1, 8)]
    (tmp_path / "merge.yaml").write_text("\n".join(merges) + "\n")
    with pytest.raises(ToolExecutionError, match="once its aliases"):
        call(tool, {"operation": "format", "source": "merge.yaml",
                    "destination": "merge.json"})
    (tmp_path / "cycle.yaml").write_text("a: &a [1, *a]\n")
    with pytest.raises(ToolExecutionError, match="cycle"):
        call(tool, {"operation": "format", "source": "cycle.yaml",
                    "destination": "cycle.json"})
    # Ordinary anchors still convert.
    (tmp_path / "ok.yaml").write_text(
        "base: &base {host: localhost, port: 5432}\ndev: *base\nprod: {<<: *base, port: 1}\n")
    call(tool, {"operation": "format", "source": "ok.yaml", "destination": "ok.json"})
    import json

    assert json.loads((tmp_path / "ok.json").read_text()) == {
        "base": {"host": "localhost", "port": 5432},
        "dev": {"host": "localhost", "port": 5432},
        "prod": {"host": "localhost", "port": 1}}
    (tmp_path / "empty.yaml").write_text("")
    call(tool, {"operation": "format", "source": "empty.yaml", "destination": "e.json"})
    assert (tmp_path / "e.json").read_text() == "null\n"
