"""Runs: a batch of step records is searched once (``may_need_mask``) for secret-shaped text
and sensitive key fragments, the runtime's own token-count keys let through; only a batch
it flags is checked key by key. A key that merely sits beside, contains, or looks like one
of those exempt keys must still be found, and its value masked in the stored record."""

from __future__ import annotations

import random
from typing import Any

import msgspec

from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.content import (
    _RUNTIME_KEEP_KEYS,
    has_sensitive_key,
    may_hold_secret,
    may_need_mask,
)
from llmspell.runtime.providers.base import Message, ToolSpec
from llmspell.runtime.providers.scripted import ScriptedProvider

_ENCODE = msgspec.json.Encoder()

# Keys that must be found: each holds the fragment "token" (not an exempt word, in any
# case but the exempt ones' own) next to, around or inside an exempt key's text.
SENSITIVE_NEIGHBOURS = [
    'a"tokens_in', "my_tokens", "tokens_in2", "xinput_tokens", "_tokens_in", "tokens_",
    '"tokens_in"', "tokens_in ", "tokens_in\\", "token", "TOKENS_IN_KEY", "reasoning_tokens_",
    'input_tokens"', "tokens_out:", "access_token", "cached_tokenss",
]


def test_may_need_mask_flags_every_key_has_sensitive_key_finds() -> None:
    words = [*_RUNTIME_KEEP_KEYS, *SENSITIVE_NEIGHBOURS, "auth", "author", "x", "", '"',
             "\\", ",", "{", ":", "_", "s", "in", "out", "T", "\u212a", "sk-", "Bearer "]
    chars = 'tokensinputd_"\\,{:}[]abcTS \n'
    rng = random.Random(158)

    def key() -> str:
        if rng.random() < 0.6:
            return "".join(rng.choice(words) for _ in range(rng.randint(1, 3)))
        return "".join(rng.choice(chars) for _ in range(rng.randint(0, 14)))

    def value(depth: int = 0) -> Any:
        roll = rng.random()
        if depth < 3 and roll < 0.3:
            return {key(): value(depth + 1) for _ in range(rng.randint(0, 4))}
        if depth < 3 and roll < 0.45:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        return key() if roll < 0.75 else rng.randint(0, 9)

    for _ in range(20000):
        item = value()
        raw = _ENCODE.encode(item)
        if has_sensitive_key(item) or may_hold_secret(raw):
            assert may_need_mask(raw), raw


def test_only_the_runtimes_own_token_keys_pass_unflagged() -> None:
    usage = {"input_tokens": 1, "output_tokens": 2, "total_tokens": 3, "cached_tokens": 0,
             "reasoning_tokens": 0}
    assert not may_need_mask(_ENCODE.encode({"usage": usage, "tokens_in": 1,
                                             "tokens_out": 2}))
    for name in SENSITIVE_NEIGHBOURS:
        assert has_sensitive_key({name: 1}), name
        assert may_need_mask(_ENCODE.encode({"tokens_in": 1, name: 1})), name
        assert may_need_mask(_ENCODE.encode({"usage": usage, "v": [{name: 1}]})), name
    for text in ("password", "Auth", "sk-proj-abc", "SESSION_ID", "\u212a"):
        assert may_need_mask(_ENCODE.encode({"tokens_in": 1, "v": text})), text


@tool("echo")
def echo(tokens_in: int, my_tokens: str) -> dict[str, Any]:
    """Echo the parameters back under keys beside the runtime's own."""
    return {"tokens_in": tokens_in, 'a"tokens_in': my_tokens, "usage": {"input_tokens": 1}}


def _asking(arguments: dict[str, Any]) -> ScriptedProvider:
    def reply(messages: list[Message], tools: list[ToolSpec]) -> Any:
        if any(m.role == "tool" for m in messages):
            return "done"
        return {"tool_calls": [{"name": "echo", "arguments": arguments}]}
    return ScriptedProvider(reply)


async def test_values_under_keys_beside_the_exempt_ones_are_masked_in_the_record() -> None:
    # No secret-shaped text anywhere: only the keys make these values sensitive, and every
    # record also holds the exempt token-count keys (a model step's usage and counts).
    async with System(SystemConfig(store="memory", record="decisions")) as system:
        system.tools.register(echo)
        agent = system.agents.create(
            "asker", provider=_asking({"tokens_in": 7, "my_tokens": "hunter2"}),
            tools=["echo"])
        assert (await agent.run("go")).output == "done"
        run_id = system.runs.list(limit=1)[0].run_id
        steps = system.runs.recording(run_id).ordered
        model = next(s for s in steps if s.kind == "model")
        (call,) = model.attempts[0].output["message"]["tool_calls"]
        assert call["arguments"] == {"tokens_in": 7, "my_tokens": "***"}
        assert model.attempts[0].output["usage"]["input_tokens"] >= 0  # kept as it is
        (step,) = [s for s in steps if s.kind == "tool"]
        assert step.input == {"tokens_in": 7, "my_tokens": "***"}
        assert step.attempts[0].output == {"tokens_in": 7, 'a"tokens_in': "***",
                                           "usage": {"input_tokens": 1}}
        records = [e for e in system.store.query(run_id=run_id)  # type: ignore[union-attr]
                   if e.event_type.startswith("run.")]
        assert records and "hunter2" not in str(records)
