"""Hostile audit of SecurityHook: attacker-chosen tool arguments trying to get past rules.

Every test goes through the public API: a System with the security hook installed and a
registered tool; a call that gets through is one the tool records in RUNS.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import unicodedata
from typing import Any

import pytest

from llmspell.builtin.security import (
    API_KEY_PATTERN,
    SecurityConfig,
    SecurityHook,
    SecurityRule,
    redact_rule,
)
from llmspell.core.values import MAX_DEPTH as SCAN_MAX_DEPTH  # the hook's scan bound
from llmspell.errors import InvalidValueError, OperationCancelled, ToolNotFoundError
from llmspell.hooks import hook
from llmspell.hooks.result import Redirect
from llmspell.runtime import System, SystemConfig, tool

RUNS: list[Any] = []
KEY = "sk-abcdefghijklmnopqrstuv"


@tool()
def shell(command: str) -> str:
    """Pretend to run a shell command."""
    RUNS.append(command)
    return "ran"


@tool()
def anyargs(data: Any = None) -> str:
    """Take anything."""
    RUNS.append(data)
    return "ok"


@tool()
def echo(command: str) -> str:
    """A harmless tool."""
    RUNS.append(("echo", command))
    return command


@pytest.fixture(autouse=True)
def _reset() -> None:
    RUNS.clear()


def block(name: str, condition: dict[str, Any]) -> SecurityRule:
    return SecurityRule(name=name, action="block", points=("BeforeToolExecution",),
                        condition=condition)


def mask(path: str = "params", pattern: str = API_KEY_PATTERN, **kw: Any) -> SecurityRule:
    return redact_rule("mask", pattern, path=path, points=("BeforeToolExecution",), **kw)


def call(tool_name: str, params: dict[str, Any], *rules: SecurityRule,
         **config: Any) -> tuple[str, Any]:
    """("ran", what the tool got) or ("blocked", the Cancel reason)."""
    async def go() -> tuple[str, Any]:
        async with System(SystemConfig(store="memory")) as system:
            for t in (shell, anyargs, echo):
                system.tools.register(t)
            SecurityHook(SecurityConfig(rules=rules, **config)).install(system.registry)
            try:
                await system.tools.execute(tool_name, params)
            except OperationCancelled as exc:
                return "blocked", exc.reason
            return "ran", RUNS[-1]
    return asyncio.run(go())


RM = block("rm", {"path": "params.command", "matches": r"rm\s+-rf"})
RM_ANYWHERE = block("rm", {"path": "params", "matches": r"rm\s+-rf"})


# -- deny rules: every spelling --------------------------------------------------------------
@pytest.mark.parametrize("command", [
    "\uff52\uff4d -rf /",          # full-width letters (NFKC folds them)
    "r\u200bm -rf /",               # zero-width space inside the word
    "r\u200dm -rf /",               # zero-width joiner
    "rm\u202e -rf /",               # bidi override
    "r\u00adm -rf /",               # soft hyphen
    "r\U000e0020m -rf /",           # tag character (invisible)
])
def test_unicode_spellings_of_a_denied_command_are_blocked(command: str) -> None:
    assert call("shell", {"command": command}, RM)[0] == "blocked"
    assert RUNS == []


@pytest.mark.parametrize("data", [
    {"x": "rm\t-rf /"},             # JSON text escapes the tab as \t: \s missed it
    {"x": ["a", {"y": "rm\n-rf /"}]},
    {"rm\t-rf /": 1},               # in a key
    '{"x": "rm\\t-rf /"}',          # a JSON document inside a string argument
    '["rm\\u0020-rf /"]',           # ... with a JSON escape in it
])
def test_denied_text_nested_or_escaped_is_blocked(data: Any) -> None:
    assert call("anyargs", {"data": data}, RM_ANYWHERE)[0] == "blocked"
    assert RUNS == []


def test_percent_encoded_path_is_blocked() -> None:
    rule = block("dotdot", {"path": "params.command", "matches": r"\.\./"})
    assert call("shell", {"command": "cat %2e%2e%2f%2e%2e%2fetc/passwd"}, rule)[0] == "blocked"


def test_data_nested_past_the_scan_bound_fails_closed() -> None:
    deep: Any = "rm\t-rf /"
    for _ in range(SCAN_MAX_DEPTH + 5):
        deep = [deep]
    outcome, reason = call("anyargs", {"data": deep}, RM_ANYWHERE)
    assert outcome == "blocked" and "cannot be scanned" in reason
    assert RUNS == []


# -- allow rules (negate) must hold for every spelling ------------------------------------------
def test_allow_list_is_not_passed_by_a_spelling_that_normalises_outside_it() -> None:
    no_slash = block("no_slash", {"path": "params.command", "matches": r"^[^/]*$",
                                  "negate": True})
    assert call("shell", {"command": "cat ..\uff0fsecret"}, no_slash)[0] == "blocked"
    assert call("shell", {"command": "ls -l"}, no_slash) == ("ran", "ls -l")


# -- masks: every match is replaced, or the call is blocked -------------------------------------
def test_secret_in_a_dict_key_is_masked() -> None:
    assert call("anyargs", {"data": {KEY: 1}}, mask()) == ("ran", {"[REDACTED]": 1})


def test_secret_number_is_masked() -> None:
    card = mask(pattern=r"\b\d{16}\b", replacement="***")
    assert call("anyargs", {"data": 4111111111111111}, card) == ("ran", "***")


def test_secret_split_by_a_zero_width_character_is_masked() -> None:
    split = KEY[:6] + "\u200b" + KEY[6:]
    assert call("anyargs", {"data": f"key {split} end"}, mask()) == ("ran", "key [REDACTED] end")


def test_secret_in_json_inside_a_string_is_masked() -> None:
    escaped = '{"k": "' + KEY[:5] + "\\u0061" + KEY[6:] + '"}'  # 'a' written as \u0061
    outcome, got = call("anyargs", {"data": escaped}, mask())
    assert outcome == "ran" and "sk-" not in got and "[REDACTED]" in got


def test_secret_nested_past_the_scan_bound_is_blocked_not_passed() -> None:
    deep: Any = KEY
    for _ in range(SCAN_MAX_DEPTH + 5):
        deep = [deep]
    outcome, reason = call("anyargs", {"data": deep}, mask())
    assert outcome == "blocked" and "cannot be scanned" in reason
    assert RUNS == []


def test_a_match_the_mask_cannot_replace_blocks() -> None:
    spans = mask(pattern=r'"password":\s*"[^"]*"', replacement="***")
    outcome, reason = call("anyargs", {"data": {"password": "hunter2"}}, spans)
    assert outcome == "blocked" and "could not be masked" in reason
    assert RUNS == []


def test_masked_keys_that_collide_block() -> None:
    other = "sk-zyxwvutsrqponmlkjihgf"
    outcome, reason = call("anyargs", {"data": {KEY: 1, other: 2}}, mask())
    assert outcome == "blocked" and "collide" in reason


def test_a_replacement_matching_its_own_pattern_is_refused() -> None:
    with pytest.raises(InvalidValueError, match="matches the rule's own pattern"):
        mask(pattern=r"[A-Z]{8}")  # "[REDACTED]" holds eight capitals


# -- the hook's own failure mode ------------------------------------------------------------------
def test_lone_surrogate_blocks_with_a_clear_reason() -> None:
    outcome, reason = call("shell", {"command": "\ud800 ls"}, RM)
    assert outcome == "blocked" and "cannot be encoded as JSON" in reason


def test_log_rule_on_a_lone_surrogate_does_not_cancel(caplog: pytest.LogCaptureFixture) -> None:
    log = SecurityRule(name="seen", action="log", points=("BeforeToolExecution",),
                       condition={"path": "params.command", "contains": "ls"})
    with caplog.at_level(logging.INFO, logger="llmspell.builtin.security"):
        assert call("shell", {"command": "\ud800 ls"}, log, max_param_bytes=None)[0] == "ran"


# -- no false positives ---------------------------------------------------------------------------
@pytest.mark.parametrize("data", [
    "ls -la /tmp", "50% off", "[not json", {"note": "format -rf"}, "caf\u00e9 \uff41",
])
def test_benign_input_still_passes(data: Any) -> None:
    assert call("anyargs", {"data": data}, RM_ANYWHERE, mask()) == ("ran", data)


def test_every_format_character_is_removed() -> None:
    from llmspell.builtin.security import _normalize
    fmt = [chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Cf"]
    assert _normalize("a" + "".join(fmt) + "b") == "ab"


# -- tool names and redirects (guards: these already held) --------------------------------------
def test_tool_name_variants_and_redirects_do_not_reach_a_blocked_tool() -> None:
    async def go() -> list[str]:
        async with System(SystemConfig(store="memory")) as system:
            for t in (shell, echo):
                system.tools.register(t)
            no_shell = SecurityRule(name="no_shell", action="block",
                                    points=("BeforeToolExecution",),
                                    condition={"component": "tool:shell"})
            SecurityHook(SecurityConfig(rules=(no_shell,))).install(system.registry)

            @hook("BeforeToolExecution", priority=-2000)
            def to_shell(ctx: Any) -> Any:
                return Redirect("shell") if ctx.component.name == "echo" else None

            system.registry.register(to_shell)
            seen = []
            for name in ("SHELL", "echo"):
                try:
                    await system.tools.execute(name, {"command": "x"})
                except ToolNotFoundError:
                    seen.append("not found")
                except OperationCancelled:
                    seen.append("blocked")
            return seen
    assert asyncio.run(go()) == ["not found", "blocked"]
    assert RUNS == []
