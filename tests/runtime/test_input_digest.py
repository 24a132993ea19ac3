"""A model step's input digest continued along its conversation is the digest of the whole
input, whatever the calls (property test), and a recorded agent run keys its model steps
by it as before."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from llmspell.runtime.providers.base import Message, ToolCall, ToolSpec
from llmspell.runtime.runs.input_digest import (
    CONVERSATIONS_KEPT,
    ConversationDigests,
    step_input,
)
from llmspell.runtime.runs.records import digest

JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1),
              st.floats(allow_nan=False), st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=8)
CALLS = st.lists(st.builds(ToolCall, id=st.text(max_size=4), name=st.text(max_size=4),
                           arguments=st.dictionaries(st.text(max_size=5), JSON, max_size=3)),
                 max_size=2).map(tuple)
MESSAGES = st.builds(Message, role=st.sampled_from(["user", "assistant", "tool", "system"]),
                     content=st.one_of(st.none(), st.text(max_size=20)), tool_calls=CALLS,
                     tool_call_id=st.one_of(st.none(), st.text(max_size=4)),
                     name=st.one_of(st.none(), st.text(max_size=4)))
TOOLS = st.lists(st.builds(ToolSpec, name=st.text(max_size=5), description=st.text(max_size=5),
                           parameters=st.dictionaries(st.text(max_size=5), JSON, max_size=2)),
                 max_size=2)
SETTINGS = st.tuples(st.one_of(st.none(), st.floats(0, 2)),
                     st.one_of(st.none(), st.integers(1, 4096)))
# One step of a run: which conversation (of three) calls, what it appends first (or whether
# it starts over, or swaps a message for an equal copy), its tools (None: the same tool
# objects as its call before) and the call's settings.
STEPS = st.lists(st.tuples(st.integers(0, 2), st.lists(MESSAGES, max_size=3),
                           st.sampled_from(["append", "restart", "copy"]),
                           st.one_of(st.none(), TOOLS), SETTINGS),
                 min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(STEPS)
def test_the_continued_digest_is_the_digest_of_the_whole_input(steps: list[Any]) -> None:
    digests = ConversationDigests()
    conversations: list[list[Message]] = [[], [], []]
    offered: list[list[ToolSpec]] = [[], [], []]
    for which, new, how, drawn, (temperature, max_tokens) in steps:
        conversation = conversations[which]
        # None: a new list of the same ToolSpec objects as this conversation's call before
        tools = list(offered[which]) if drawn is None else drawn
        offered[which] = tools
        if how == "restart":
            conversation.clear()
        elif how == "copy" and conversation:  # an equal message, not the same object
            conversation[0] = Message(**{f: getattr(conversation[0], f)
                                         for f in Message.__struct_fields__})
        conversation.extend(new)
        got = digests.digest(conversation, tools, temperature, max_tokens)
        assert got == digest(step_input(conversation, tools, temperature, max_tokens))


def test_a_long_conversation_is_continued_not_encoded_again() -> None:
    digests = ConversationDigests()
    conversation = [Message(role="user", content="go")]
    for turn in range(20):
        conversation.append(Message(role="assistant", content=f"turn {turn}"))
        assert digests.digest(conversation, [], None, 10) == \
            digest(step_input(conversation, [], None, 10))
    # the kept state covers the whole conversation: one message more encodes one message
    (kept,) = digests._kept
    assert kept.messages == tuple(conversation)


def test_several_conversations_are_kept_and_the_oldest_dropped() -> None:
    digests = ConversationDigests()
    for n in range(CONVERSATIONS_KEPT + 2):
        talk = [Message(role="user", content=f"conversation {n}")]
        digests.digest(talk, [], None, None)
    assert len(digests._kept) == CONVERSATIONS_KEPT
    assert [k.messages[0].content for k in digests._kept] == [
        f"conversation {n}" for n in range(2, CONVERSATIONS_KEPT + 2)]


def test_what_the_encoder_refuses_or_dicts_are_digested_whole() -> None:
    digests = ConversationDigests()
    odd = [Message(role="user", content="x",
                   tool_calls=(ToolCall(id="1", name="t", arguments={"s": object()}),))]
    assert digests.digest(odd, [], None, None) == digest(step_input(odd, [], None, None))
    assert digests._kept == []
    plain: list[Any] = [{"role": "user", "content": "hi"}]
    assert digests.digest(plain, [], 0.5, None) == digest(
        {"messages": plain, "tools": [], "temperature": 0.5, "max_tokens": None})
    assert digests._kept == []


async def test_a_recorded_runs_model_steps_carry_the_digest_and_the_run_lets_go_at_its_end(
        ) -> None:
    from llmspell.runtime import System, SystemConfig
    from llmspell.runtime.providers.scripted import ScriptedProvider

    provider = ScriptedProvider(lambda messages, tools: f"seen {len(messages)}")
    async with System(SystemConfig(store="memory", record="decisions")) as system:
        talk = [Message(role="user", content="one")]
        async with system.runs.start("job", "chat") as run:
            for turn in range(3):
                answer = await system.models.call(provider, talk, max_tokens=64)
                talk = [*talk, answer.completion.message,
                        Message(role="user", content=f"turn {turn}")]
            assert run.conversations is not None
        assert run.conversations is None  # nothing kept past the run
        recording = system.runs.recording(run.run_id)
        models = sorted((s for s in recording.steps.values() if s.kind == "model"),
                        key=lambda s: s.index)
        assert len(models) == 3
        asked = [[Message(role="user", content="one")]]
        for step in models[:-1]:
            text = step.result["message"]["content"]
            asked.append([*asked[-1], Message(role="assistant", content=text),
                          Message(role="user", content=f"turn {len(asked) - 1}")])
        assert [s.input_digest for s in models] == [
            digest(step_input(m, [], None, 64)) for m in asked]


def test_arguments_nested_too_deep_to_encode_still_get_a_digest() -> None:
    deep: dict[str, Any] = {}
    inner = deep
    for _ in range(100_000):  # past what msgspec encodes and what repr can print
        inner["a"] = {}
        inner = inner["a"]
    talk = [Message(role="user", content="x",
                    tool_calls=(ToolCall(id="1", name="t", arguments=deep),))]
    got = ConversationDigests().digest(talk, [], None, None)
    assert got == digest(step_input(talk, [], None, None))
    assert len(got) == 16
