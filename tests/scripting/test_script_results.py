"""tests/scripts/results.{lua,js}: every hook result type from each language has its
effect on a real tool call."""

from __future__ import annotations

import pytest

from llmspell.scripting import ScriptHost

from .conftest import Recorder, script


@pytest.mark.parametrize("name", ["results.lua", "results.js"])
async def test_every_result_type_has_its_effect(name: str, script_host: ScriptHost,
                                                recorder: Recorder) -> None:
    out = await script_host.run_file_async(script(name))

    assert out["modified"] == 202  # params changed before the call: count(101)
    assert out["cancel"]["ok"] is False and "not today" in out["cancel"]["error"]
    assert out["cancel_string"]["ok"] is False
    assert "blocked by policy" in out["cancel_string"]["error"]
    assert 2 not in recorder.counted  # cancelled calls never ran
    assert out["redirect"] == "backup 3" and 3 not in recorder.counted
    assert out["replace"] == {"from_hook": True} and 4 not in recorder.counted
    assert out["retry"] == {"value": 10, "tries": 2}
    assert recorder.counted.count(5) == 1  # asked twice, ran once
    assert out["retry_on_error"] == "recovered" and recorder.flaky_calls == 2
    assert out["skipped"] == 12 and out["skipped_table"] == 12
    assert out["fork"] == 14 and 70 in recorder.counted  # the forked call ran too
    assert out["cache"] == [16, 16] and recorder.counted.count(8) == 1
    assert out["modified_after"] == "changed after" and 9 in recorder.counted
