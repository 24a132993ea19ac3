"""Replaying runs whose model calls streamed: a served streaming call hands its consumer the
deltas it was handed in the run (so a consumer that stops after some of them stops there
again), and steps still running when the run ends (an agent stream left without closing
it) are recorded as cancelled by the run's end, so the recording is complete and replays
exactly."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from llmspell.hooks import HookPoint
from llmspell.runtime import System, SystemConfig
from llmspell.runtime.providers.base import Completion, Message, StreamDelta, ToolSpec
from llmspell.runtime.providers.scripted import ScriptedProvider

SIX = "one two three four five six"


class Slow(ScriptedProvider):
    """Streams its scripted replies with a pause after each piece (a real stream's
    network waits): the consumer runs between deltas."""

    async def stream(self, messages: Sequence[Message], *, tools: Sequence[ToolSpec] = (),
                     model: str | None = None, temperature: float | None = None,
                     max_tokens: int | None = None
                     ) -> AsyncIterator[StreamDelta | Completion]:
        async for item in super().stream(messages, tools=tools, model=model,
                                         temperature=temperature, max_tokens=max_tokens):
            await asyncio.sleep(0)
            yield item


async def _system(provider: ScriptedProvider, **config: Any) -> System:
    system = System(SystemConfig(store="memory", **config))
    await system.start()
    system.agents.create("s1", provider=provider)
    return system


Operation = Callable[[Any], Awaitable[Any]]


async def _record_and_replay(system: System, op: Operation) -> tuple[Any, Any]:
    async with system.runs.start("job", "c", "go") as run:
        run.output = await op("go")
    replay = await asyncio.wait_for(system.runs.replay(run.run_id, operation=op), 10)
    return run, replay


async def test_a_stream_stopped_and_closed_mid_way_replays_exactly() -> None:
    system = await _system(Slow([SIX] * 3))
    try:
        async def op(value: Any) -> Any:
            got: list[str] = []
            agent = system.agents.get("s1")
            async with contextlib.aclosing(agent.stream(value)) as stream:
                async for item in stream:
                    got.append(item.delta.text)  # type: ignore[union-attr]
                    if len(got) == 2:
                        break
            return f"stopped after {got}"

        run, replay = await _record_and_replay(system, op)
        assert run.output == "stopped after ['one ', 'two ']"
        model = system.runs.recording(run.run_id).ordered[-1]
        assert model.kind == "model" and model.error is not None
        assert model.error["type"] == "CancelledError"
        assert model.attempts[-1].deltas  # what the consumer was handed is kept
        assert (replay.status, replay.output, replay.error) == (
            "completed", run.output, None)
        assert replay.divergences == [] and replay.served == {"recording": 1}
    finally:
        await system.shutdown()


async def test_a_stream_left_without_closing_is_recorded_whole_and_replays_exactly() -> None:
    system = await _system(Slow([SIX] * 3))
    try:
        async def op(value: Any) -> Any:
            got: list[str] = []
            async for item in system.agents.get("s1").stream(value):
                got.append(item.delta.text)  # type: ignore[union-attr]
                if len(got) == 2:
                    break  # no aclose: the generator is finalised after the run ends
            return f"stopped after {len(got)}"

        run, replay = await _record_and_replay(system, op)
        await asyncio.sleep(0.05)  # the generators' finalisation (the agent runs ending)
        steps = system.runs.recording(run.run_id).ordered
        assert [s.kind for s in steps] == ["job", "agent", "model"]
        for step in steps[1:]:
            assert step.error is not None and step.error["type"] == "CancelledError"
            assert "run ended" in step.error["message"]
        assert (replay.status, replay.output, replay.error) == (
            "completed", "stopped after 2", None)
        assert [d.describe() for d in replay.divergences] == []
        assert replay.served == {"recording": 1}
        # The replay's own recording is as complete.
        again = system.runs.recording(replay.run_id).ordered
        assert [(s.key, s.error) for s in again] == [(s.key, s.error) for s in steps]
    finally:
        await system.shutdown()


async def test_a_served_streaming_call_hands_over_the_recorded_deltas() -> None:
    tool_call = {"tool_calls": [{"name": "lookup", "arguments": {"q": "x"}}]}
    system = await _system(Slow([SIX, tool_call] * 2))
    try:
        async def op(value: Any) -> Any:
            pieces: list[Any] = []
            for _ in range(2):
                result = await system.models.call(
                    system.agents.get("s1").provider, [Message(role="user", content=value)],
                    on_delta=lambda d: pieces.append(
                        d.text or (d.tool_name, d.arguments_text)))
                pieces.append(result.completion.message.content)
            return pieces

        run, replay = await _record_and_replay(system, op)
        assert run.output[:6] == ["one ", "two ", "three ", "four ", "five ", "six"]
        assert run.output[6:] == [SIX, ("lookup", '{"q":"x"}'), None]
        assert replay.output == run.output
        assert replay.divergences == [] and replay.served == {"recording": 2}
        # The text of a completed answer is not stored twice: its deltas are lengths.
        first = system.runs.recording(run.run_id).ordered[1]
        assert first.attempts[0].deltas == [4, 4, 6, 5, 5, 3]
    finally:
        await system.shutdown()


async def test_a_hooked_streaming_call_is_served_with_its_deltas() -> None:
    system = await _system(Slow([SIX] * 2))
    system.registry.register(HookPoint.BEFORE_MODEL_CALL, lambda ctx: None, name="look")
    try:
        async def op(value: Any) -> Any:
            got: list[str] = []

            async def sink(item: Any) -> None:
                got.append(item.delta.text)
                if len(got) == 3:
                    raise LookupError("enough")

            with contextlib.suppress(Exception):
                await system.agents.get("s1").run(value, on_delta=sink)
            return got

        run, replay = await _record_and_replay(system, op)
        assert run.output == ["one ", "two ", "three "]
        assert replay.output == run.output and replay.divergences == []
    finally:
        await system.shutdown()


class Split(ScriptedProvider):
    """Streams its reply in fixed pieces (a secret split across two deltas)."""

    PIECES = ("key sk-abcdefghij", "klmnopqrstuvwxyz0123", " end")

    async def stream(self, messages: Sequence[Message], *, tools: Sequence[ToolSpec] = (),
                     model: str | None = None, temperature: float | None = None,
                     max_tokens: int | None = None
                     ) -> AsyncIterator[StreamDelta | Completion]:
        completion = await self.complete(messages, tools=tools, model=model)
        for piece in self.PIECES:
            await asyncio.sleep(0)
            yield StreamDelta(text=piece)
        yield completion


async def test_recorded_deltas_are_masked_even_when_a_secret_is_split_across_them() -> None:
    system = await _system(Split(["".join(Split.PIECES)] * 2))
    try:
        async def op(value: Any) -> Any:
            got: list[str] = []
            await system.agents.get("s1").run(
                value, on_delta=lambda d: got.append(d.delta.text))
            return len(got)

        run, replay = await _record_and_replay(system, op)
        assert run.output == 3
        stored = str(system.store.query(run_id=run.run_id))  # type: ignore[union-attr]
        assert "sk-abc" not in stored and "klmnopqrstuvwxyz" not in stored
        assert replay.output == 3  # as many pieces, masked
    finally:
        await system.shutdown()


async def test_record_off_keeps_no_deltas() -> None:
    system = await _system(Slow([SIX]), record="off")
    try:
        got: list[str] = []
        async with system.runs.start("job", "c", "go") as run:
            await system.agents.get("s1").run("go", on_delta=lambda d: got.append(
                d.delta.text))
        assert len(got) == 6 and not run.root.attempts and not run.open
    finally:
        await system.shutdown()
