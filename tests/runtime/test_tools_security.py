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


def test_python_spellings_are_kept_where_re2_differs() -> None:
    from llmspell.runtime.tools.library.text_manipulator import check_regex

    assert check_regex(r"a\Z").search("ba") is not None
    assert check_regex(r"a\Z").search("ab") is None
    assert check_regex(r"\\Z").search("x\\Z") is not None  # an escaped backslash, then Z
    assert check_regex("ABC", ignore_case=True).search("xabc") is not None
    with pytest.raises(ToolExecutionError, match="more than 500"):
        check_regex("a" * 501)


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


# -- item 22: a root check without the separator -----------------------------------------


@pytest.fixture
def sibling_roots(tmp_path: Path) -> tuple[Path, Path]:
    """``data/root`` (the sandbox) and ``data/root-secrets``, a sibling that shares the
    root's name as a prefix; symlinks in the root lead to the sibling."""
    root = tmp_path / "data" / "root"
    secrets = tmp_path / "data" / "root-secrets"
    root.mkdir(parents=True)
    secrets.mkdir()
    (secrets / "secret.txt").write_text("top secret\n")
    (secrets / "secret.yaml").write_text("secret: 1\n")
    (root / "link_dir").symlink_to(secrets)
    (root / "link_file").symlink_to(secrets / "secret.txt")
    (root / "link_yaml.yaml").symlink_to(secrets / "secret.yaml")
    (root / "plain.txt").write_text("hello\n")
    return root, secrets


_SIBLING_CASES: list[tuple[str, str, dict[str, object]]] = [
    ("file_operations", "read", {"operation": "read", "path": "link_file"}),
    ("file_operations", "read dir", {"operation": "list", "path": "link_dir"}),
    ("file_operations", "stat", {"operation": "exists", "path": "link_dir/secret.txt"}),
    ("file_operations", "write", {"operation": "write", "path": "link_dir/new.txt",
                                  "content": "x"}),
    ("file_operations", "write through", {"operation": "write", "path": "link_file",
                                          "content": "x", "overwrite": True}),
    ("file_operations", "copy out", {"operation": "copy", "path": "plain.txt",
                                     "destination": "link_dir/copied.txt"}),
    ("file_operations", "copy in", {"operation": "copy", "path": "link_file",
                                    "destination": "stolen.txt"}),
    ("file_operations", "mkdir", {"operation": "mkdir", "path": "link_dir/sub"}),
    ("file_search", "path", {"path": "link_dir"}),
    ("file_converter", "read", {"operation": "format", "source": "link_yaml.yaml",
                                "destination": "out.json"}),
    ("file_converter", "write", {"operation": "line_endings", "source": "plain.txt",
                                 "destination": "link_dir/out.txt", "line_ending": "crlf"}),
    ("archive_handler", "read", {"operation": "create", "archive": "a.zip",
                                 "sources": ["link_file"]}),
    ("archive_handler", "write", {"operation": "create", "archive": "link_dir/a.zip",
                                  "sources": ["plain.txt"]}),
    ("archive_handler", "extract", {"operation": "extract", "archive": "ok.zip",
                                    "destination": "link_dir"}),
    ("image_processor", "read", {"operation": "metadata", "path": "link_file"}),
    ("audio_processor", "read", {"operation": "metadata", "path": "link_file"}),
    ("video_processor", "read", {"operation": "metadata", "path": "link_file"}),
]


@pytest.mark.parametrize(("tool_name", "what", "params"), _SIBLING_CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in _SIBLING_CASES])
def test_file_tools_refuse_a_sibling_sharing_the_roots_name(
        tool_name: str, what: str, params: dict[str, object],
        sibling_roots: tuple[Path, Path]) -> None:
    from llmspell.core.errors import SandboxViolationError

    root, secrets = sibling_roots
    tools = {t.tool_name: t for t in lib.default_tools(sandbox=root, network=False)}
    if tool_name == "archive_handler" and params["operation"] == "extract":
        call(tools[tool_name], {"operation": "create", "archive": "ok.zip",
                                "sources": ["plain.txt"]})
    before = sorted((p.name, p.read_bytes()) for p in secrets.iterdir())
    with pytest.raises(SandboxViolationError):
        call(tools[tool_name], dict(params))
    assert sorted((p.name, p.read_bytes()) for p in secrets.iterdir()) == before
    assert not (root / "stolen.txt").exists()


def test_file_search_walk_skips_links_to_the_sibling(sibling_roots: tuple[Path, Path]) -> None:
    root, _ = sibling_roots
    tool = lib.FileSearchTool(root)
    found = call(tool, {"query": "secret"})
    assert found["matches"] == []
    assert all("secret" not in f for f in call(tool, {})["files"])


def test_archive_entries_cannot_reach_the_sibling(sibling_roots: tuple[Path, Path]) -> None:
    import io
    import tarfile

    from llmspell.core.errors import SandboxViolationError

    root, secrets = sibling_roots
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        link = tarfile.TarInfo("escape")
        link.type = tarfile.SYMTYPE
        link.linkname = "../root-secrets"
        tar.addfile(link)
        data = b"pwned"
        entry = tarfile.TarInfo("escape/pwn.txt")
        entry.size = len(data)
        tar.addfile(entry, io.BytesIO(data))
    (root / "evil.tar").write_bytes(buffer.getvalue())
    with pytest.raises(SandboxViolationError):
        call(lib.ArchiveHandlerTool(root), {"operation": "extract", "archive": "evil.tar",
                                            "destination": "."})
    assert not (secrets / "pwn.txt").exists()


async def test_file_watcher_refuses_the_sibling(sibling_roots: tuple[Path, Path]) -> None:
    from llmspell.core.errors import SandboxViolationError
    from tests.runtime.tool_helpers import run

    root, _ = sibling_roots
    with pytest.raises(SandboxViolationError):
        await run(lib.FileWatcherTool(root), {"paths": ["link_dir"], "duration": 0.01})


# -- sync function tools can opt out of the event loop ---------------------------------


async def test_function_tools_can_run_on_a_worker_thread() -> None:
    import threading

    from llmspell.core.errors import InvalidValueError
    from llmspell.runtime import tool

    @tool(blocking=True)
    def where() -> str:
        """The thread the body runs on."""
        return threading.current_thread().name

    @tool()
    def inline() -> str:
        """The thread the body runs on."""
        return threading.current_thread().name

    system = System(SystemConfig(store="none"))
    system.tools.register_all([where, inline])
    assert where.blocking is True and inline.blocking is False
    assert await system.tools.execute("where", {}) != threading.current_thread().name
    assert await system.tools.execute("inline", {}) == threading.current_thread().name
    with pytest.raises(InvalidValueError, match="blocking=True is for sync functions"):
        @tool(blocking=True)
        async def nope() -> None:
            """Async."""
