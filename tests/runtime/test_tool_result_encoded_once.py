"""A tool's result is checked and encoded once (issue 18): the caller's JSON-safe copy and
the ``tool.<name>.completed`` event's masked copy both come from one encoding.

The contracts this must keep: the caller, the tool and the event each hold their own value
(a tool or caller changing its dict later changes nothing published); a result that is not
JSON-safe is normalised or refused exactly as before; the event's copy is masked exactly as
:func:`~llmspell.runtime.content.mask_value` masks; an ``AfterToolExecution`` hook that
changes the result in place is what the event shows.
"""

from __future__ import annotations

import enum
import math
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings

from llmspell.core.errors import NotJsonSafeError
from llmspell.core.values import to_json_safe, to_json_safe_encoded
from llmspell.errors import ToolExecutionError
from llmspell.events import UniversalEvent
from llmspell.hooks.points import HookPoint
from llmspell.hooks.result import Continue
from llmspell.runtime import System, SystemConfig, content, tool
from llmspell.runtime.content import mask_plain, mask_value
from tests.runtime.test_mask_value import VALUES

KEY = "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6"
_ENCODE = msgspec.json.Encoder()


class Color(enum.Enum):
    RED = "red"


class Name(str):
    pass


def _completed(events: list[UniversalEvent], name: str) -> dict[str, Any]:
    [event] = [e for e in events if e.event_type == f"tool.{name}.completed"]
    return dict(event.data)


# -- the helpers: the same answers as the functions they stand in for ----------------------

@settings(max_examples=400, deadline=None)
@given(VALUES)
def test_mask_plain_answers_what_mask_value_copied_answers(value: Any) -> None:
    safe, raw = to_json_safe_encoded(value)
    if raw is None:  # a scalar, or a text UTF-8 cannot carry: no encoding to reuse
        return
    masked = mask_plain(safe, raw)
    assert masked == mask_value(safe, copied=True)
    assert masked is not safe  # a copy, decoded from raw


@pytest.mark.parametrize("value", [
    {"sum": 3, "inputs": [1, 2], "note": "added"},
    {"api_key": "k", "x": 1}, {"Session_ID": "s"}, {"user": {"PassWord": "p"}},
    {"usage": {"input_tokens": 3, "max_tokens": 9}, "author": "me"},  # kept keys
    {"text": "tokens are fine"}, {"text": f"key {KEY}"}, [{"auth": 1}, "x"],
    {"naïve": "café"}, {"k": "password = hunter2"}, [], {},
    {"nested": [[{"Authorization": "Bearer abcdefgh1234"}]]},
])
def test_mask_plain_on_chosen_values(value: Any) -> None:
    raw = _ENCODE.encode(value)
    assert mask_plain(value, raw) == mask_value(value, copied=True)


def test_mask_plain_copies_nested_containers() -> None:
    value = {"a": [1, {"b": [2]}], "c": {"d": "e"}}
    copy = mask_plain(value, _ENCODE.encode(value))
    copy["a"][1]["b"].append(3)
    copy["c"]["d"] = "changed"
    assert value == {"a": [1, {"b": [2]}], "c": {"d": "e"}}


@pytest.mark.parametrize("value", [
    3, "text", None, True, 1.5, 2**100, {"a": [1, 2.5, None, True, "x"]}, [[], {}],
    (1, 2), {"b", "a"}, frozenset({2, 1}), Color.RED, Name("plain"), {Name("k"): Name("v")},
    {"t": (1, Color.RED)}, {"s": "\ud800"}, ["\udcff"],
])
def test_to_json_safe_encoded_answers_what_to_json_safe_answers(value: Any) -> None:
    safe, raw = to_json_safe_encoded(value, "result")
    expected = to_json_safe(value, "result")
    assert safe == expected
    assert type(safe) is type(expected)
    if raw is not None:
        assert msgspec.json.decode(raw) == safe
    if isinstance(value, dict | list):
        assert safe is not value


@pytest.mark.parametrize("value", [
    float("nan"), {"x": math.inf}, 2**1100, {"o": object()}, {1: "int key"}, [b"bytes"],
])
def test_to_json_safe_encoded_refuses_what_to_json_safe_refuses(value: Any) -> None:
    with pytest.raises(NotJsonSafeError) as new:
        to_json_safe_encoded(value, "result")
    with pytest.raises(NotJsonSafeError) as old:
        to_json_safe(value, "result")
    assert str(new.value) == str(old.value)


def test_a_cyclic_list_is_refused_by_both() -> None:
    cyclic: list[Any] = [1]
    cyclic.append(cyclic)
    with pytest.raises(NotJsonSafeError, match="cycle"):
        to_json_safe_encoded(cyclic, "result")


# -- the pipeline ---------------------------------------------------------------------------

async def test_the_tool_the_caller_and_the_event_each_hold_their_own_result(
        system: System, events: list[UniversalEvent]) -> None:
    kept: list[dict[str, Any]] = []

    @tool()
    def record(a: int) -> dict[str, Any]:
        """Answers a dict it keeps and changes later."""
        out = {"n": a, "items": [a], "meta": {"k": "v"}}
        kept.append(out)
        return out

    system.tools.register(record)
    result = await system.tools.execute("record", {"a": 1})
    assert result == {"n": 1, "items": [1], "meta": {"k": "v"}}
    assert result is not kept[0] and result["items"] is not kept[0]["items"]
    published = _completed(events, "record")["result"]
    assert published == result and published is not result
    assert published["items"] is not result["items"]
    # The tool changes what it returned; the caller changes what it got.
    kept[0]["items"].append("tool")
    kept[0]["meta"]["k"] = "tool"
    result["items"].append("caller")
    result["meta"]["k"] = "caller"
    assert _completed(events, "record")["result"] == {"n": 1, "items": [1],
                                                      "meta": {"k": "v"}}
    stored = [e for e in system.store.query() if e.event_type == "tool.record.completed"]
    assert stored[0].data["result"] == {"n": 1, "items": [1], "meta": {"k": "v"}}


@pytest.mark.parametrize(("returned", "expected"), [
    ({"b", "a"}, ["a", "b"]), ((1, 2), [1, 2]), ({"t": (1, Color.RED)}, {"t": [1, "red"]}),
    (Name("plain"), "plain"), ({Name("k"): Name("v")}, {"k": "v"}), (Color.RED, "red"),
    ({"sum": 3, "inputs": [1, 2]}, {"sum": 3, "inputs": [1, 2]}),
])
async def test_results_are_normalised_as_before(
        system: System, events: list[UniversalEvent], returned: Any, expected: Any) -> None:
    @tool()
    def answer() -> Any:
        """Answers a fixed value."""
        return returned

    system.tools.register(answer)
    result = await system.tools.execute("answer", {})
    assert result == expected
    assert type(result) is type(expected)
    published = _completed(events, "answer")["result"]
    assert published == expected and type(published) is type(expected)


@pytest.mark.parametrize("returned", [
    {"x": float("nan")}, 2**1100, {"o": object()}, {1: "int key"}, {"nested": [math.inf]},
])
async def test_results_that_are_not_json_safe_are_refused_as_before(
        system: System, events: list[UniversalEvent], returned: Any) -> None:
    @tool()
    def bad() -> Any:
        """Answers something JSON cannot carry."""
        return returned

    system.tools.register(bad)
    with pytest.raises(ToolExecutionError, match="not JSON-safe") as caught:
        await system.tools.execute("bad", {})
    assert caught.value.hint == "return dicts, lists, strings, numbers, booleans or None"
    assert [e.event_type for e in events if e.event_type.startswith("tool.bad.")] == [
        "tool.bad.started", "tool.bad.failed"]


async def test_a_secret_in_a_result_is_masked_in_the_event_only(
        system: System, events: list[UniversalEvent]) -> None:
    @tool()
    def leak() -> dict[str, Any]:
        """Answers a key under an ordinary name and a sensitive one."""
        return {"content": f"OPENAI_API_KEY={KEY}", "Api_Key": "k", "input_tokens": 3}

    system.tools.register(leak)
    result = await system.tools.execute("leak", {})
    assert result["Api_Key"] == "k" and KEY in result["content"]
    published = _completed(events, "leak")["result"]
    assert published["Api_Key"] == "***" and KEY not in published["content"]
    assert published["input_tokens"] == 3


# Keys built to slip past the one-search shortcut: a Kelvin sign lower-cases to an ASCII
# "k", a fragment sits between characters JSON escapes, deep in lists, or in any case.
HOSTILE_KEYS = ["TO\u212aEN", 'x"password\\', "\u0000secret\n", "PrIvAtE_KeY"]


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_mask_plain_masks_keys_built_to_slip_past_its_search(key: str) -> None:
    value = {"rows": [[{key: "hidden", "ok": 1}]]}
    raw = _ENCODE.encode(value)
    assert mask_plain(value, raw) == mask_value(value, copied=True)
    assert mask_plain(value, raw)["rows"][0][0][key] == "***"


async def test_hostile_result_keys_are_masked_in_the_event(
        system: System, events: list[UniversalEvent]) -> None:
    @tool()
    def sly() -> dict[str, Any]:
        """Answers sensitive keys spelled to dodge a text search."""
        return {"nested": [{key: "hidden"} for key in HOSTILE_KEYS]}

    system.tools.register(sly)
    result = await system.tools.execute("sly", {})
    assert [next(iter(d.values())) for d in result["nested"]] == ["hidden"] * 4
    published = _completed(events, "sly")["result"]
    assert [next(iter(d.values())) for d in published["nested"]] == ["***"] * 4


async def test_an_after_hook_changing_the_result_in_place_is_what_the_event_shows(
        system: System, events: list[UniversalEvent]) -> None:
    @tool()
    def plain() -> dict[str, Any]:
        """Answers a small dict."""
        return {"a": 1}

    def touch(ctx: Any) -> Any:
        ctx.data["result"]["touched"] = True
        return Continue()

    system.tools.register(plain)
    system.registry.register(HookPoint.AFTER_TOOL_EXECUTION, touch, name="touch")
    result = await system.tools.execute("plain", {})
    assert _completed(events, "plain")["result"] == result


async def test_without_masking_the_event_holds_the_result_as_before() -> None:
    system = System(SystemConfig(store="none", mask_event_data=False))
    seen: list[UniversalEvent] = []
    system.bus.subscribe("tool.**", seen.append)

    @tool()
    def plain() -> dict[str, Any]:
        """Answers a dict holding a key."""
        return {"api_key": "k"}

    system.tools.register(plain)
    result = await system.tools.execute("plain", {})
    assert _completed(seen, "plain")["result"] == {"api_key": "k"} == result


async def test_a_plain_result_is_encoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The completed event's copy of a plain dict result reuses the encoding the caller's
    copy was made from: the masking encoder never sees the result (before, the result was
    encoded again to be searched and copied), nor walks its keys."""
    system = System(SystemConfig(store="none"))
    result_value = {"sum": 3, "inputs": [1, 2], "note": "added"}

    @tool()
    def summary() -> dict[str, Any]:
        """Answers a small record."""
        return dict(result_value)

    encoded: list[Any] = []
    walked: list[Any] = []
    real_encode = content._TEXT.encode
    real_walk = content.has_sensitive_key

    class Counting:
        def encode(self, value: Any) -> bytes:
            encoded.append(value)
            return real_encode(value)

    def counting_walk(value: Any, depth: int = 0) -> bool:
        walked.append(value)
        return real_walk(value, depth)

    monkeypatch.setattr(content, "_TEXT", Counting())
    monkeypatch.setattr(content, "has_sensitive_key", counting_walk)
    system.tools.register(summary)
    assert await system.tools.execute("summary", {}) == result_value
    assert result_value not in encoded
    assert result_value not in walked


def test_the_search_shortcut_falls_back_to_the_public_search() -> None:
    """Another re2 module (no bound match call): the public search answers, the same."""

    class Public:
        def __init__(self, pattern: Any) -> None:
            self._pattern = pattern

        def search(self, raw: bytes, pos: int = 0, endpos: int | None = None) -> Any:
            return self._pattern.search(raw, pos, len(raw) if endpos is None else endpos)

    spans = content._spans(Public(content._MAY_NEED_MASK), b'{"api_key":1}', b'{"a":1}')
    assert spans is not content._need_spans
    for text in (b'{"a":1}', b'{"api_key":1}', b'{"t":"sk-abc"}', b'{"Cookie":2}', b"[]"):
        assert (spans(text, 0, len(text))[0][0] >= 0) == (
            content._need_spans(text, 0, len(text))[0][0] >= 0) == (
            content._MAY_NEED_MASK.search(text) is not None)
