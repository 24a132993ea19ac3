"""mask_value: its fast path (a value with nothing secret is returned uncopied) never lets a
secret through that the full walk would mask (property test against the walk)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmspell.runtime.content import (
    _mask_walk,
    has_sensitive_key,
    mask_value,
    may_hold_secret,
    response_has_sensitive_key,
)

SECRETY = st.sampled_from([
    "sk-abcdefghijklmnopqrstuv", "password=hunter2", "Password :\t x", "token= t",
    "Bearer abcdefgh1234", "AKIA" + "A" * 16, "ghp_" + "b" * 24, "xoxb-1234567890ab",
    "AIza" + "c" * 35, "api-key: 42", "'api_key': 'k1'", '"password": "hunter2"',
    "{'Token' :'t'}", "-----BEGIN RSA PRIVATE KEY-----\nabc\n-----END RSA "
    "PRIVATE KEY-----"])
KEYS = st.one_of(st.text(max_size=12), st.sampled_from([
    "api_key", "user_token", "input_tokens", "Authorization", "author", "password", 'a"b',
    "session_id", "tokens", "my\\secret", "max_tokens", "x\"max_tokens", "tokens_in"]))
TEXT = st.one_of(st.text(max_size=40), SECRETY,
                 st.builds(lambda a, b, c: a + b + c, st.text(max_size=8), SECRETY,
                           st.text(max_size=8)))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1),
                    st.floats(allow_nan=False, allow_infinity=False), TEXT)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)), max_leaves=12)


@settings(max_examples=400, deadline=None)
@given(VALUES)
def test_the_fast_path_masks_exactly_what_the_walk_masks(value: Any) -> None:
    assert mask_value(value) == _mask_walk(value, 0)


@settings(max_examples=400, deadline=None)
@given(VALUES)
def test_the_copied_fast_path_masks_exactly_what_the_walk_masks(value: Any) -> None:
    # copied=True (a tool's parameters and results in its events): one search of the
    # encoded text decides, for texts and plain containers; the answer is still the walk's,
    # and a container comes back as a copy.
    masked = mask_value(value, copied=True)
    assert masked == _mask_walk(value, 0)
    if isinstance(value, dict | list):
        assert masked is not value


@pytest.mark.parametrize("key", ["TO\u212aEN", 'x"password\\', "\u0000secret\n",
                                 "PrIvAtE_KeY", "Api-Key", "session_ID"])
def test_keys_built_to_slip_past_the_search_are_masked_in_copies(key: str) -> None:
    value = {"rows": [[{key: "hidden", "ok": 1}]], "text": "plain"}
    masked = mask_value(value, copied=True)
    assert masked == _mask_walk(value, 0)
    assert masked["rows"][0][0][key] == ("***" if has_sensitive_key({key: 1}) else "hidden")


def _response(calls: list[Any], content: Any, usage: Any, extra: dict[str, Any],
              message_extra: dict[str, Any]) -> dict[str, Any]:
    return {"message": {"role": "assistant", "content": content, "tool_calls": calls,
                        "tool_call_id": None, "name": None, **message_extra},
            "finish_reason": "tool_calls", "model": "m", "usage": usage, "cost_usd": None,
            "latency_ms": 1.0, **extra}


CALL = st.builds(lambda i, args: {"id": f"c{i}", "name": "t", "arguments": args},
                 st.integers(0, 9), VALUES)
GOOD_USAGE = st.one_of(st.none(), st.just({"input_tokens": 1, "output_tokens": 2}))
# In the runtime's shape (the quick path), and perturbed anywhere (walked whole).
EXACT = st.builds(_response, st.lists(CALL, max_size=4), st.one_of(st.none(), TEXT),
                  GOOD_USAGE, st.just({}), st.just({}))
PERTURBED = st.builds(
    _response, st.lists(st.one_of(CALL, st.dictionaries(KEYS, VALUES, max_size=3)),
                        max_size=4),
    VALUES, st.one_of(GOOD_USAGE, st.dictionaries(KEYS, VALUES, max_size=3)),
    st.dictionaries(KEYS, VALUES, max_size=2), st.dictionaries(KEYS, VALUES, max_size=2))


@settings(max_examples=600, deadline=None)
@given(st.one_of(EXACT, PERTURBED, VALUES))
def test_the_response_walk_answers_what_the_whole_walk_answers(value: Any) -> None:
    # Responses in the runtime's shape (only the tool-call arguments walked) and every
    # other shape (walked whole): the same answer as has_sensitive_key.
    assert response_has_sensitive_key(value) == has_sensitive_key(value)


def test_a_value_with_nothing_secret_is_returned_uncopied() -> None:
    value = {"usage": {"input_tokens": 3, "total_tokens": 4}, "text": "tokens are fine"}
    assert mask_value(value) is value
    assert mask_value({"api_key": "k"}) == {"api_key": "***"}


_ENCODE = msgspec.json.Encoder(enc_hook=repr)


def test_ordinary_records_are_cleared() -> None:
    raw = _ENCODE.encode({"usage": {"input_tokens": 1, "max_tokens": 2}, "text": "ok, a token"})
    assert not may_hold_secret(raw)


def test_a_model_step_is_walked_whole_and_its_own_keys_are_not_sensitive() -> None:
    from llmspell.runtime.runs.records import Attempt
    from llmspell.runtime.runs.scope import ActiveRun, StepFrame

    response = {"message": {"role": "assistant", "content": "hi", "tool_calls": [
        {"id": "c1", "name": "login", "arguments": {"user": "x"}}],
        "tool_call_id": None, "name": None}, "finish_reason": "tool_calls", "model": "m",
        "usage": {"input_tokens": 1, "output_tokens": 2, "cached_tokens": 0,
                  "reasoning_tokens": 0, "total_tokens": 3},
        "cost_usd": None, "latency_ms": 1.0}

    def step(output: object, kind: str = "model") -> StepFrame:
        run = ActiveRun(kind="agent", name="a", input="go", level="decisions", parent=None,
                        parent_frame=None, replay=None)
        frame = StepFrame(run, run.root, kind, "p/m", {"messages": []})
        frame.attempts.append(Attempt(output=output))
        return frame

    assert not step(response).holds_sensitive_key()
    secret_call = {**response, "message": {**response["message"], "tool_calls": [
        {"id": "c1", "name": "login", "arguments": {"password": "x"}}]}}
    assert step(secret_call).holds_sensitive_key()
    assert step({**response, "api_key": "k"}).holds_sensitive_key()  # a hook added it
    assert step({**response, "usage": {"input_tokens": 1, "token": "t"}}).holds_sensitive_key()
    assert not step("text").holds_sensitive_key()
    assert step([{"Api_Key": 1}], kind="tool").holds_sensitive_key()
    tool = step(3, kind="tool")
    tool.input = {"nested": {"session_id": "s"}}
    assert tool.holds_sensitive_key()
