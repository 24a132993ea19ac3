"""The built-in hooks against careless settings and hostile data (tool input, model output).

Every hook is driven through a real ``System`` with llmspell's own tools and the scripted
model provider, offline.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import msgspec
import pytest

import llmspell.builtin.cost as cost_module
from llmspell.builtin.cost import Budget, CostConfig, CostTrackingHook, TokenPrice
from llmspell.builtin.debugging import DebuggingHook
from llmspell.builtin.logging_hook import DEFAULT_LOGGER, LoggingConfig, LoggingHook
from llmspell.builtin.masking import MASK, Masker, truncate
from llmspell.builtin.metrics import OTHER_COMPONENT, MetricsConfig, MetricsHook
from llmspell.builtin.rate_limit import RateLimitConfig, RateLimitHook
from llmspell.builtin.retry import RetryConfig, RetryHook
from llmspell.builtin.security import (
    EMAIL_PATTERN,
    SecurityConfig,
    SecurityHook,
    redact_rule,
)
from llmspell.core.clock import ManualClock
from llmspell.errors import AgentError, InvalidValueError
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.providers import ScriptedProvider

SECRET = "hunter2-secret"


@tool()
def nested_secret(depth: int) -> dict:
    """Return a password nested ``depth`` dicts deep."""
    value: dict[str, Any] = {"password": SECRET}
    for _ in range(depth):
        value = {"x": value}
    return value


@tool()
def note(text: dict) -> str:
    """Return what it was given, as text."""
    return repr(text)


@tool()
def items(n: int) -> list:
    """Return a fresh list."""
    return [n]


@tool()
def blob(size: int) -> str:
    """Return a long text."""
    return "z" * size


@pytest.fixture
async def system() -> AsyncIterator[System]:
    async with System(SystemConfig(store="memory")) as sys:
        sys.tools.register_all([nested_secret, note, items, blob])
        yield sys


# -- masking ----------------------------------------------------------------------------------
async def test_a_secret_nested_deeper_than_32_is_masked_in_the_published_event(
        system: System) -> None:
    # The runtime accepts values 64 containers deep; the masker used to stop at 32 and
    # hand the rest through unmasked, into the stored tool.*.completed event.
    await system.tools.execute("nested_secret", {"depth": 40})
    stored = [e for e in system.store.query() if e.event_type == "tool.nested_secret.completed"]
    assert stored and SECRET not in repr(stored[0].data)


def test_a_container_past_the_masking_depth_is_masked_whole() -> None:
    value: Any = {"password": SECRET}
    for _ in range(200):
        value = [value]
    assert SECRET not in repr(Masker().mask(value))


def test_tuples_are_masked_like_lists() -> None:
    masked = Masker().mask({"calls": ({"api_key": SECRET, "n": 1},)})
    assert masked == {"calls": ({"api_key": MASK, "n": 1},)}


def test_truncate_bounds_dicts_their_keys_and_the_total() -> None:
    wide = {f"k{i}": i for i in range(10_000)}
    cut = truncate(wide, 20)
    assert len(cut) == 101 and cut["..."] == "(+9900 keys)"
    (key,) = truncate({"k" * 10_000: 1}, 20)
    assert key.startswith("k" * 20) and key.endswith("...(+9980)")
    assert truncate(b"b" * 10_000, 20) == b"b" * 20 + b"...(+9980)"
    # 100 x 100 x 100 is a million values; only about 1000 are kept, the rest marked.
    cube = [[list(range(100)) for _ in range(100)] for _ in range(100)]
    kept = repr(truncate(cube, 20))
    assert kept.count("...(cut)") > 0 and len(kept) < 50_000


async def test_a_logging_record_of_a_huge_dict_stays_bounded(
        system: System, caplog: pytest.LogCaptureFixture) -> None:
    LoggingHook(LoggingConfig()).install(system.registry)
    caplog.set_level(logging.INFO, logger=DEFAULT_LOGGER)
    await system.tools.execute("note", {"text": {f"k{i}": "v" for i in range(5000)}})
    before = [r for r in caplog.records if r.name == DEFAULT_LOGGER
              and r.llmspell_point == "before_tool_execution"]  # type: ignore[attr-defined]
    text = before[0].llmspell_data["params"]["text"]  # type: ignore[attr-defined]
    assert len(text) <= 101


# -- security ---------------------------------------------------------------------------------
async def test_a_mask_rule_on_a_container_masks_the_strings_inside(system: System) -> None:
    # The rule matched (its test reads the JSON text) but used to replace nothing in a
    # dict, so the address reached the tool.
    hook = SecurityHook(SecurityConfig(rules=(
        redact_rule("emails", EMAIL_PATTERN, path="params.text",
                    points=("before_tool_execution",)),)))
    hook.install(system.registry)
    out = await system.tools.execute(
        "note", {"text": {"to": "bob@example.com", "cc": ["ann@example.org"], "n": 3}})
    assert "example" not in out and out.count("[REDACTED]") == 2
    assert hook.stats().masked == 1


def test_the_email_pattern_bounds_an_address_by_rfc_5321() -> None:
    # Unbounded, a long run of letters made `re` try each start and scan the whole run
    # from it: quadratic (about 1.4 s for 40,000 letters, minutes for a 1 MB reply). The
    # RFC's limits (64 before the @, 255 after) make it linear.
    local = "x" * 100
    assert re.sub(EMAIL_PATTERN, "[R]", f"{local}@example.com") == "x" * 36 + "[R]"
    assert re.sub(EMAIL_PATTERN, "[R]", "mail bob@example.com, ann.lee+x@mail.co.uk.") == \
        "mail [R], [R]."


async def test_a_long_prompt_is_still_redacted(system: System) -> None:
    hook = SecurityHook(SecurityConfig(rules=(redact_rule("emails", EMAIL_PATTERN),)))
    hook.install(system.registry)
    provider = ScriptedProvider(lambda messages, tools: messages[-1].content)
    agent = system.agents.create("echo", provider=provider)
    prompt = "a" * 20_000 + " bob@example.com " + "b." * 5_000
    answer = (await agent.run(prompt)).output
    assert "bob@example.com" not in answer and "[REDACTED]" in answer


# -- rate limit: serve_cached -----------------------------------------------------------------
async def test_serve_cached_hands_out_a_copy(system: System) -> None:
    clock = ManualClock()
    RateLimitHook(RateLimitConfig(rate=1.0, burst=1, action="serve_cached"),
                  clock=clock).install(system.registry)
    first = await system.tools.execute("items", {"n": 1})
    first.append("changed by the caller")
    second = await system.tools.run("items", {"n": 1})
    assert second.replaced and second.result == [1]
    second.result.append("changed again")
    third = await system.tools.run("items", {"n": 1})
    assert third.result == [1]


# -- debugging --------------------------------------------------------------------------------
async def test_a_trace_is_a_snapshot_and_does_not_keep_a_huge_payload(
        system: System) -> None:
    hook = DebuggingHook()
    hook.install(system.registry)
    result = await system.tools.execute("items", {"n": 2})
    result.append("later")
    (after,) = hook.traces(point="after_tool_execution")
    assert after.data is not None and after.data["result"] == [2]
    await system.tools.execute("blob", {"size": 1_000_000})
    # What the hook retains (not only what it shows) is cut to about max_chars.
    kept = hook._snapshots[-1]
    assert kept is not None and len(msgspec.json.encode(kept)) < 2000


# -- retry ------------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["retry_on", "never_retry_on", "retry_on_messages"])
def test_a_bare_string_for_a_list_of_names_is_refused(field: str) -> None:
    # retry_on_messages="rate limit" was read as the patterns r, a, t, e, ...: every
    # message with one of those letters was retried (side effects run again).
    with pytest.raises(InvalidValueError) as info:
        RetryConfig(**{field: "rate limit"})
    assert info.value.hint == f"write {field}=('rate limit',)"


@pytest.mark.parametrize(("field", "value"), [
    ("base_delay", "0.5"), ("max_delay", "30"), ("multiplier", float("inf")),
    ("max_total_time", float("nan")), ("max_attempts", 2.5), ("retry_statuses", ("429",)),
])
def test_retry_settings_of_the_wrong_kind_are_refused(field: str, value: object) -> None:
    with pytest.raises(InvalidValueError):
        RetryConfig(**{field: value})


def test_a_huge_multiplier_caps_the_delay_instead_of_overflowing() -> None:
    hook = RetryHook(RetryConfig(base_delay=0.5, max_delay=10.0, multiplier=1e200,
                                 jitter="none", max_attempts=10))
    assert hook.delay_for(3) == 10.0
    zero = RetryHook(RetryConfig(base_delay=0.0, max_delay=1.0, multiplier=1e200,
                                 jitter="none"))
    assert zero.delay_for(5) == 0.0


# -- metrics ----------------------------------------------------------------------------------
async def test_error_types_are_bounded_like_components(system: System) -> None:
    count = {"n": 0}

    def model(messages: Any, tools: Any) -> str:
        count["n"] += 1
        raise type(f"Error{count['n']}", (RuntimeError,), {})("no")

    hook = MetricsHook(MetricsConfig(max_components=2))
    hook.install(system.registry)
    agent = system.agents.create("failing", provider=ScriptedProvider(model))
    for _ in range(6):
        with pytest.raises(AgentError):
            await agent.run("hi")
    by_type = hook.stats().errors_by_type
    assert len(by_type) <= 3 and OTHER_COMPONENT in by_type
    assert sum(by_type.values()) == hook.stats().errors


# -- cost -------------------------------------------------------------------------------------
def test_report_groups_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cost_module, "_MAX_GROUPS", 3, raising=False)
    hook = CostTrackingHook(CostConfig(
        prices={"p/m": TokenPrice(input=Decimal(1), output=Decimal(1))}))
    for i in range(10):
        hook.record({"provider": "p", "model": "m", "input": 1_000_000, "output": 0},
                    metadata={"user": f"user-{i}"})
    rows = hook.report(group_by=("user",))
    assert len(rows) == 4 and {r.group["user"] for r in rows} >= {"(other)"}
    assert sum(r.calls for r in rows) == 10
    assert sum(r.cost or 0 for r in rows) == Decimal(10)


def test_a_budget_level_must_be_finite() -> None:
    with pytest.raises(InvalidValueError):
        Budget(limit=Decimal(1), levels={"critical": float("inf")})
