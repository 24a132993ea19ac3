"""A replay compares a step's error by what the recording keeps of it (type, message, hint,
text attributes), and raises a recorded error as its own type, or as a RecordedError named
after it, with its message."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from llmspell.errors import LlmspellError, ToolError, ToolExecutionError
from llmspell.runtime import System, SystemConfig
from llmspell.runtime.providers.scripted import ScriptedProvider
from llmspell.runtime.runs.replay import RecordedError, recorded_error, same_error
from llmspell.runtime.runs.scope import RUN_ENDED, error_dict

TOKEN = "sk-abcdefghijklmnopqrstuvwxyz0123"


class TeapotError(Exception):
    """Not importable by name, and its constructor wants a number."""

    def __init__(self, cups: int) -> None:
        super().__init__(f"short and stout ({cups} cups)")


async def recorded_run(system: System, raise_it: Any) -> str:
    async def body(value: Any) -> Any:
        raise_it()

    with pytest.raises(Exception):  # noqa: B017 - whatever raise_it raises
        async with system.runs.start("job", "fails", {}) as run:
            await body({})
    return run.run_id


def raiser(exc: BaseException) -> Any:
    def raise_it(value: Any = None) -> Any:
        raise exc
    return raise_it


async def replay_raising(system: System, run_id: str, exc: BaseException) -> Any:
    async def operation(value: Any) -> Any:
        raise exc
    return await system.runs.replay(run_id, operation=operation)


async def test_same_type_with_another_message_diverges() -> None:
    async with System(SystemConfig(store="memory")) as system:
        run_id = await recorded_run(system, raiser(ValueError("limit is 3")))
        same = await replay_raising(system, run_id, ValueError("limit is 3"))
        assert not same.diverged
        other = await replay_raising(system, run_id, ValueError("limit is 4"))
        (divergence,) = other.divergences
        assert divergence.what == "error"
        assert divergence.expected["message"] == "limit is 3"
        assert divergence.got["message"] == "limit is 4"
        assert "limit is 3" in divergence.describe() and "limit is 4" in divergence.describe()


async def test_another_tools_error_diverges_by_its_attributes() -> None:
    async with System(SystemConfig(store="memory")) as system:
        run_id = await recorded_run(system, raiser(ToolError("search", "down", hint="retry")))
        assert not (await replay_raising(
            system, run_id, ToolError("search", "down", hint="retry"))).diverged
        for other in (ToolError("fetch", "down", hint="retry"),
                      ToolError("search", "down", hint="wait")):
            result = await replay_raising(system, run_id, other)
            assert [d.what for d in result.divergences] == ["error"]


async def test_masked_recordings_compare_the_masked_live_error() -> None:
    async with System(SystemConfig(store="memory", record_content="masked")) as system:
        run_id = await recorded_run(system, raiser(ValueError(f"refused key {TOKEN}")))
        step = system.runs.recording(run_id).steps[""]
        assert step.error is not None and TOKEN not in step.error["message"]
        assert not (await replay_raising(
            system, run_id, ValueError(f"refused key {TOKEN}"))).diverged
        other = await replay_raising(system, run_id, ValueError(f"accepted key {TOKEN}"))
        assert [d.what for d in other.divergences] == ["error"]


async def test_content_none_compares_the_type_only() -> None:
    async with System(SystemConfig(store="memory", record_content="none")) as system:
        run_id = await recorded_run(system, raiser(ValueError("limit is 3")))
        assert not (await replay_raising(system, run_id, ValueError("limit is 4"))).diverged
        other = await replay_raising(system, run_id, KeyError("limit"))
        assert [d.what for d in other.divergences] == ["error"]


def test_cancellations_compare_by_type_only() -> None:
    # A canceller's message is its own (anyio names its cancel scope by id).
    assert same_error({"type": "CancelledError", "message": "Cancelled by cancel scope 7f1"},
                      {"type": "CancelledError", "message": "Cancelled by cancel scope 9a2"})
    assert same_error(RUN_ENDED, error_dict(asyncio.CancelledError()))
    assert not same_error(RUN_ENDED, error_dict(TimeoutError()))


def test_a_message_cut_short_compares_by_the_part_kept() -> None:
    long = "x" * 20_000
    recorded = error_dict(ValueError(long))
    again = recorded_error(recorded)
    assert error_dict(again)["message"] != recorded["message"]  # counted again, shorter
    assert same_error(recorded, error_dict(again))
    assert not same_error(recorded, error_dict(ValueError("y" + long)))


@pytest.mark.parametrize("raised", [
    ValueError("bad value"), KeyError("k"), KeyError(3), KeyError(), TimeoutError(),
    FileNotFoundError(2, "No such file or directory"), asyncio.CancelledError(),
    asyncio.CancelledError("stop"), asyncio.InvalidStateError("done already"),
    ToolExecutionError("search", "down", hint="retry later"),
])
def test_known_types_come_back_as_themselves(raised: BaseException) -> None:
    recorded = error_dict(raised)
    again = recorded_error(recorded)
    assert type(again) is type(raised)
    assert str(again) == str(raised)
    assert error_dict(again) == recorded


def test_llmspell_errors_keep_their_hint_and_attributes() -> None:
    again = recorded_error(error_dict(ToolExecutionError("search", "down", hint="retry")))
    assert isinstance(again, ToolExecutionError)
    assert (again.tool, again.message, again.hint) == ("search", "down", "retry")


@pytest.mark.parametrize("raised", [
    TeapotError(3),
    UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
])
def test_unknown_types_become_a_recorded_error_named_after_them(raised: Exception) -> None:
    recorded = error_dict(raised)
    again = recorded_error(recorded)
    assert isinstance(again, RecordedError) and isinstance(again, LlmspellError)
    assert type(again).__name__ == again.type_name == type(raised).__name__
    assert again.message == str(raised) == str(again)
    assert error_dict(again) == recorded  # the replay records (and compares) it as it was
    with pytest.raises(RecordedError) as caught:
        raise again
    assert caught.value.type_name == type(raised).__name__


def test_an_unknown_llmspell_error_keeps_its_hint_and_attributes() -> None:
    recorded = {"type": "WorkflowFailedError", "message": "step 'a' failed (fix it)",
                "hint": "fix it", "attr:workflow": "flow"}
    again = recorded_error(recorded)
    assert isinstance(again, RecordedError) and again.type_name == "WorkflowFailedError"
    assert again.hint == "fix it" and again.workflow == "flow"  # type: ignore[attr-defined]
    assert error_dict(again) == recorded


def test_a_type_name_that_is_no_identifier_is_a_plain_recorded_error() -> None:
    again = recorded_error({"type": "not a name", "message": "odd"})
    assert type(again) is RecordedError
    assert again.type_name == "not a name" and str(again) == "odd"
    # and a replay records it as the type it stands for (not as RecordedError)
    assert error_dict(again) == {"type": "not a name", "message": "odd"}


async def test_a_served_model_error_is_seen_as_it_was_first() -> None:
    def fails(kind: str) -> Any:
        def reply(messages: Any, tools: Any) -> Any:
            if kind == "key":
                raise KeyError("choices")
            raise TeapotError(2)
        return reply

    async with System(SystemConfig(store="memory")) as system:
        for kind in ("key", "teapot"):
            system.agents.create(kind, provider=ScriptedProvider(fails(kind)))

        async def body(value: Any) -> Any:
            seen = []
            for kind in ("key", "teapot"):
                try:
                    await system.agents.get(kind).run("hi")
                except Exception as exc:
                    seen.append(f"{type(exc).__name__}: {exc}")
            return seen

        async with system.runs.start("job", "models", {}) as run:
            run.output = await body({})
        assert run.output[0].endswith("'choices'") and "short and stout" in run.output[1]
        result = await system.runs.replay(run.run_id, operation=body)
        assert result.output == run.output
        assert not result.diverged, [d.describe() for d in result.divergences]
