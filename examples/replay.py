"""Record an agent run, replay it exactly, replay it with a change, and compare the two.

The agent looks up the weather with a tool and answers. Its run is recorded in a SQLite
store (a temporary folder here; by default the data directory). The exact replay serves
every tool and model call from the recording: the "network" provider below refuses to be
called again, and the tool counts its executions. The what-if replay edits the tool's
result (the model call after it runs live), and the divergence report says where the
runs part; the diff compares the two runs step by step.

Run: ``python examples/replay.py``
"""

from __future__ import annotations

import asyncio
import tempfile
from typing import Any

from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.providers.scripted import ScriptedProvider

executions: list[str] = []


@tool()
def weather(city: str) -> dict[str, Any]:
    """Today's weather in a city."""
    executions.append(city)
    return {"city": city, "sky": "rain", "temp_c": 11}


def no_network(messages: Any, tools: Any) -> Any:
    raise ConnectionError("the model provider must not be called during a replay")


async def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        system = System(SystemConfig(data_dir=folder))
        await system.start()
        system.tools.register(weather)
        system.agents.create("forecaster", tools=["weather"], provider=ScriptedProvider([
            {"tool_calls": [{"name": "weather", "arguments": {"city": "Bergen"}}]},
            "Rain in Bergen, 11 degrees: take an umbrella."]))

        answer = await system.agents.get("forecaster").run("Do I need an umbrella in Bergen?")
        print("live run:", answer.output)
        run = system.runs.list(limit=1)[0]
        print(f"recorded: {run.kind} {run.name!r}, {run.steps} steps, "
              f"{run.tool_calls} tool call(s), {run.model_calls} model call(s)")

        # Exact: nothing is called again, nothing diverges.
        system.agents.get("forecaster").provider = ScriptedProvider(no_network)
        exact = await system.runs.replay(run.run_id)
        print("exact replay:", exact.output, "| served:", exact.served,
              "| diverged:", exact.diverged)
        assert exact.output == answer.output and not exact.diverged
        assert executions == ["Bergen"]

        # What-if: had the tool said "sun", what would the agent have answered? The edited
        # tool result takes the run off the recorded path; the model call after it runs
        # live (here a scripted model stands in for the real one).
        tool_step = next(s for s in system.runs.recording(run.run_id).ordered
                         if s.kind == "tool")
        system.agents.get("forecaster").provider = ScriptedProvider(
            ["Sunny in Bergen, 19 degrees: leave the umbrella."])
        what_if = await system.runs.replay(
            run.run_id, mode="what-if",
            edits={tool_step.index: {"city": "Bergen", "sky": "sun", "temp_c": 19}})
        print("what-if replay:", what_if.output, "| served:", what_if.served)
        for divergence in what_if.divergences[:3]:
            print("  -", divergence.describe())
        first = what_if.first_divergence
        assert first is not None and first.what == "edited" and first.key == tool_step.key
        assert executions == ["Bergen"]

        diff = system.runs.diff(run.run_id, what_if.run_id)
        print(f"diff: {len(diff.steps)} step(s) differ; cost {diff.totals['cost_usd']}")
        await system.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
