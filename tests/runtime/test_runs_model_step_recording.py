"""A recorded model step made without hooks: the conversation digest continued in place stays
the digest of the whole input however the conversation changes (edited in place, cut short,
forked, refused by the encoder), and the step's record masks what a model's tool-call
arguments hold under a sensitive key (the step walks only those arguments of the runtime's
own response) as a walk of the whole response would."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmspell.errors import AgentError
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.providers.base import Message, ToolCall, ToolSpec
from llmspell.runtime.providers.scripted import ScriptedProvider
from llmspell.runtime.runs.input_digest import ConversationDigests, step_input
from llmspell.runtime.runs.records import digest

TEXT = st.text(max_size=8)
MESSAGES = st.builds(
    Message, role=st.sampled_from(["user", "assistant", "tool"]),
    content=st.one_of(st.none(), TEXT),
    tool_calls=st.lists(st.builds(ToolCall, id=TEXT, name=TEXT,
                                  arguments=st.dictionaries(TEXT, st.integers(), max_size=2)),
                        max_size=1).map(tuple))
TOOLS = [ToolSpec(name="t", description="d", parameters={"type": "object"})]
# One call: which conversation (of two) calls, what is done to it first, what it appends.
EDITS = st.sampled_from(["append", "replace-middle", "cut", "fork", "refused", "same"])
STEPS = st.lists(st.tuples(st.integers(0, 1), EDITS, st.lists(MESSAGES, max_size=2),
                           st.integers(0, 50)), min_size=1, max_size=14)


def _whole(messages: list[Any]) -> str:
    return digest(step_input(messages, TOOLS, None, None))


@settings(max_examples=300, deadline=None)
@given(STEPS)
def test_a_conversation_continued_in_place_still_digests_as_the_whole_input(
        steps: list[Any]) -> None:
    digests = ConversationDigests()
    talks: list[list[Any]] = [[Message(role="user", content="a")],
                              [Message(role="user", content="b")]]
    for which, edit, new, at in steps:
        talk = talks[which]
        if edit == "replace-middle" and talk:  # an earlier message swapped in place
            i = at % len(talk)
            talk[i] = Message(role=talk[i].role, content=f"{talk[i].content} edited")
        elif edit == "cut" and talk:  # the conversation cut short, in place
            del talk[at % len(talk):]
        elif edit == "fork":  # the other conversation goes on from this one's messages
            talks[1 - which] = list(talk)
        elif edit == "refused":  # one call the encoder refuses: digested whole, nothing kept
            odd = [*talk, Message(role="user", content="x", tool_calls=(
                ToolCall(id="1", name="t", arguments={"o": object()}),))]
            assert digests.digest(odd, TOOLS, None, None) == _whole(odd)
        if edit != "same":
            talk.extend(new)
        assert digests.digest(talk, TOOLS, None, None) == _whole(talk)


def test_a_fork_continued_by_both_branches_gives_each_its_own_digest() -> None:
    digests = ConversationDigests()
    shared = [Message(role="user", content="go"), Message(role="assistant", content="ok")]
    assert digests.digest(shared, TOOLS, None, None) == _whole(shared)
    left = [*shared, Message(role="user", content="left")]
    right = [*shared, Message(role="user", content="right")]
    # the left branch continues the shared state in place; the right one must not see it
    assert digests.digest(left, TOOLS, None, None) == _whole(left)
    assert digests.digest(right, TOOLS, None, None) == _whole(right)
    more = [*left, Message(role="user", content="more")]
    assert digests.digest(more, TOOLS, None, None) == _whole(more)


def test_an_earlier_message_replaced_in_place_changes_the_digest() -> None:
    digests = ConversationDigests()
    talk = [Message(role="user", content="one"), Message(role="assistant", content="two")]
    before = digests.digest(talk, TOOLS, None, None)
    talk[0] = Message(role="user", content="ONE")
    talk.append(Message(role="user", content="three"))
    after = digests.digest(talk, TOOLS, None, None)
    assert after == _whole(talk)
    assert after != before


@tool("lookup")
def lookup(query: str, api_key: str = "", options: dict[str, Any] | None = None) -> str:
    """Look something up."""
    return query.upper()


def _asking(arguments: dict[str, Any]) -> ScriptedProvider:
    def reply(messages: list[Message], tools: list[ToolSpec]) -> Any:
        if any(m.role == "tool" for m in messages):
            return "done"
        return {"tool_calls": [{"name": "lookup", "arguments": arguments}]}
    return ScriptedProvider(reply)


async def _model_attempts(arguments: dict[str, Any], content: str) -> list[Any]:
    async with System(SystemConfig(store="memory", record="decisions",
                                   record_content=content)) as system:
        system.tools.register_all([lookup])
        agent = system.agents.create("asker", provider=_asking(arguments), tools=["lookup"])
        assert (await agent.run("go")).output == "done"
        run_id = system.runs.list(limit=1)[0].run_id
        recording = system.runs.recording(run_id)
        steps = sorted((s for s in recording.steps.values() if s.kind == "model"),
                       key=lambda s: s.index)
        return [s.attempts[0].output for s in steps]


async def test_a_sensitive_key_in_a_models_tool_call_arguments_is_masked() -> None:
    # Not secret-shaped text: only the walk of the arguments' keys finds them.
    first, last = await _model_attempts(
        {"query": "q", "api_key": "plain-value", "options": {"password": "hunter2"}}, "masked")
    (call,) = first["message"]["tool_calls"]
    assert call["arguments"] == {"query": "q", "api_key": "***",
                                 "options": {"password": "***"}}
    assert first["usage"]["input_tokens"] == 0  # the runtime's own keys are kept as they are
    assert last["message"]["content"] == "done"


async def test_a_model_call_alone_in_a_run_masks_its_arguments_sensitive_keys() -> None:
    # No tool step runs with the same arguments: the model step's own check must find them.
    async with System(SystemConfig(store="memory", record="decisions")) as system:
        async with system.runs.start("job", "ask") as run:
            answer = await system.models.call(
                _asking({"query": "q", "options": {"api_key": "plain-value"}}),
                [Message(role="user", content="go")])
        assert answer.completion.message.tool_calls[0].arguments == {
            "query": "q", "options": {"api_key": "plain-value"}}  # the caller's: unmasked
        recording = system.runs.recording(run.run_id)
        (step,) = [s for s in recording.steps.values() if s.kind == "model"]
        (call,) = step.attempts[0].output["message"]["tool_calls"]
        assert call["arguments"] == {"query": "q", "options": {"api_key": "***"}}


async def test_arguments_without_a_sensitive_key_are_kept_as_they_are() -> None:
    first, _ = await _model_attempts({"query": "plain words"}, "masked")
    (call,) = first["message"]["tool_calls"]
    assert call["arguments"] == {"query": "plain words"}
    full, _ = await _model_attempts({"query": "q", "api_key": "plain-value"}, "full")
    assert full["message"]["tool_calls"][0]["arguments"]["api_key"] == "plain-value"


async def test_a_failed_model_call_is_recorded_as_a_failed_attempt() -> None:
    def broken(messages: list[Message], tools: list[ToolSpec]) -> Any:
        raise RuntimeError("the provider is down")

    async with System(SystemConfig(store="memory", record="decisions")) as system:
        agent = system.agents.create("broken", provider=ScriptedProvider(broken))
        with pytest.raises(AgentError):
            await agent.run("go")
        run_id = system.runs.list(limit=1)[0].run_id
        recording = system.runs.recording(run_id)
        (step,) = [s for s in recording.steps.values() if s.kind == "model"]
        assert step.error is not None and "provider is down" in step.error["message"]
        assert [a.error["message"] for a in step.attempts if a.error] == [
            step.error["message"]]
