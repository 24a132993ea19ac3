"""What model.<provider>.delta events keep of a streamed answer under each record_content
setting: a credential split across deltas is masked whole, argument fragments of a call
that names something sensitive are masked, and `none` keeps only sizes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from llmspell.events import UniversalEvent
from llmspell.runtime import System, SystemConfig
from llmspell.runtime.delta_content import DeltaContent
from llmspell.runtime.providers.base import Completion, Message, StreamDelta, TokenUsage

SECRET = "sk-abcdefghijklmnopqrstuvwx1234"
PASSWORD = "hunter2secret"
WORDS = st.lists(st.sampled_from(["alpha", "beta", "gamma", "the", "key", "is", "\n", "ok."]),
                 max_size=30)


def _shown(text: str, cuts: list[int], mode: str = "masked") -> str:
    """The text of the events a stream of ``text``, cut at ``cuts``, makes."""
    content = DeltaContent(mode)
    points = sorted({c % (len(text) + 1) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    out = [content.text(piece, last=False)["text"] for piece in pieces]
    out.append(content.text("", last=True)["text"])
    return "".join(out)


@settings(max_examples=300, deadline=None)
@given(WORDS, WORDS, st.lists(st.integers(0, 400), max_size=12),
       st.sampled_from([SECRET, f"password: {PASSWORD}", f"Bearer {PASSWORD}xyz"]))
def test_a_credential_cut_anywhere_in_the_stream_never_shows(
        before: list[str], after: list[str], cuts: list[int], credential: str) -> None:
    text = " ".join([*before, credential, *after])
    shown = _shown(text, cuts)
    assert SECRET not in shown and PASSWORD not in shown
    assert "***" in shown


@settings(max_examples=200, deadline=None)
@given(WORDS, st.lists(st.integers(0, 400), max_size=12))
def test_ordinary_text_arrives_whole_and_in_order(words: list[str], cuts: list[int]) -> None:
    text = " ".join(words)
    assert _shown(text, cuts) == text
    assert _shown(text, cuts, "full") == text
    assert _shown(text, cuts, "none") == ""


def test_argument_fragments_are_masked_once_the_call_names_something_sensitive() -> None:
    content = DeltaContent("masked")
    fragments = ['{"city": "Pa', 'ris", "pass', 'word": "hun', 'ter2"}']
    shown = [content.arguments(0, f)["arguments_text"] for f in fragments]
    assert shown[:2] == fragments[:2]
    assert shown[2:] == ["***", "***"]
    assert content.arguments(1, '{"n": 1}')["arguments_text"] == '{"n": 1}'  # another call
    assert DeltaContent("none").arguments(0, "abc") == {"arguments_text": "",
                                                        "arguments_chars": 3}
    assert DeltaContent("full").arguments(0, fragments[3])["arguments_text"] == fragments[3]


class _Pieces:
    """A streaming provider that sends its answer in the pieces it was given."""

    name = "pieces"
    model = "m"

    def __init__(self, pieces: list[str], calls: list[tuple[str, str]]) -> None:
        self.pieces = pieces
        self.calls = calls

    async def complete(self, messages: Sequence[Message], **kwargs: Any) -> Completion:
        raise AssertionError("only streamed here")

    async def stream(self, messages: Sequence[Message], **kwargs: Any
                     ) -> AsyncIterator[StreamDelta | Completion]:
        for piece in self.pieces:
            yield StreamDelta(text=piece)
        for index, (call_id, fragment) in enumerate(self.calls):
            yield StreamDelta(tool_call_index=0, tool_call_id=call_id if index == 0 else None,
                              tool_name="login" if index == 0 else None,
                              arguments_text=fragment)
        yield Completion(message=Message(role="assistant", content="".join(self.pieces)),
                         finish_reason="stop", model="m",
                         usage=TokenUsage(input_tokens=1, output_tokens=1, total_tokens=2,
                                          model="m", provider="pieces"))


async def _delta_events(mode: str) -> list[UniversalEvent]:
    pieces = ["x" * 250 + " my key is sk-abcdefghijk", "lmnopqrstuvwx1234 and more"]
    calls = [("c1", '{"user": "ada", "pass'), ("c1", 'word": "hunter2secret"}')]
    async with System(SystemConfig(store="memory", record_content=mode)) as system:
        events: list[UniversalEvent] = []
        system.bus.subscribe("model.*.delta", events.append)
        await system.models.call(_Pieces(pieces, calls), [Message(role="user", content="hi")])
    return events


async def test_delta_events_follow_record_content() -> None:
    masked = await _delta_events("masked")
    text = "".join(e.data["text"] for e in masked)
    arguments = "".join(c["arguments_text"] for e in masked for c in e.data.get("tool_calls", []))
    assert SECRET not in text and "***" in text and text.endswith("and more")
    assert PASSWORD not in arguments and '"user": "ada"' in arguments
    none = await _delta_events("none")
    assert all(e.data["text"] == "" for e in none)
    assert sum(e.data["chars"] for e in none) == 250 + len(" my key is ") + len(SECRET) + 9
    full = await _delta_events("full")
    assert SECRET in "".join(e.data["text"] for e in full)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="abcdefgh{}\":, ", max_size=40), st.text(alphabet="abc ", max_size=40),
       st.lists(st.integers(0, 200), max_size=15),
       st.sampled_from(["password", "API_KEY", "Authorization", "session_id"]))
def test_a_sensitive_name_split_across_argument_fragments_is_found(
        before: str, after: str, cuts: list[int], name: str) -> None:
    value = "hunter2xyzzy"  # holds no sensitive fragment itself: the name must be found
    text = f'{before}"{name}": "{value}"{after}'
    points = sorted({c % (len(text) + 1) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    content = DeltaContent("masked")
    shown = "".join(content.arguments(0, piece)["arguments_text"] for piece in pieces)
    assert value not in shown
