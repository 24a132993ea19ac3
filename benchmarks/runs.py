"""What recording runs costs, and how fast runs are replayed and listed (``system.runs``).

Every figure is a public call timed the way users write it: ``await agent.run(...)``,
``await system.runs.replay(run_id)``, ``system.runs.list()``. The rows:

1. Recording overhead on the tool pipeline: a top-level agent run whose scripted model
   (``ScriptedProvider``, answering at once) asks for N calls of a ~100 µs tool in one turn,
   then answers (N + 2 steps: N tool calls, 2 model calls). ``SystemConfig(record=
   "decisions")`` against ``record="off"``, both on a SQLite store in a temporary folder
   (one folder each, so each System owns its store as it would in use), then both on
   ``store="memory"``. Target: ``ratio <= 1.05``.
2. Recording overhead on a 1 ms model call: the scripted model's reply function awaits
   ``asyncio.sleep(0.001)``; an agent run of 10 model turns (turns 1-9 each ask for one call
   of a trivial tool, turn 10 answers: 19 steps), SQLite store, ``decisions`` against
   ``off``. Target: ``ratio <= 1.02``.

2b. Recording overhead on a long agent run: 100 turns (``long_loop_model``), each asking
   for one call of the ~100 µs tool, so the conversation the model is sent grows with every
   turn as a real agent's does; SQLite, ``decisions`` against ``off``. Target: ``ratio <=
   1.05`` (the tool pipeline's). It checks that recording costs the same per turn however
   long the conversation is (a model step's input digest covers the whole request).

   Rows 1, 2 and 2b time samples of K back-to-back runs (about 100 ms or more, several of the
   SQLite writer's 50 ms flush intervals, so its work, which shares the interpreter, lands
   in the sample of the configuration that caused it), the two configurations' samples
   alternated (order reversed every other round). Before each sample, untimed, the store is
   flushed (``system.bus.flush()``: no writes left over from the other configuration) and
   a collection runs; the collector is held back during the sample. The value is the
   median sample per run.
3. Replay of a 1,000-step run: an agent whose scripted model (answering at once) takes 500
   turns, turns 1-499 each asking for one call of the ~100 µs tool (turn 1 for two), turn
   500 answering: 500 model calls + 500 tool calls, the kind of long tool loop a coding or
   research agent runs (the conversation grows with every turn, as a real agent's does).
   Run twice at ``decisions`` on a SQLite store (the first run warms up); then ``await
   system.runs.replay(run_id)`` of the second (exact: every tool and model call served from
   the recording, which the benchmark checks) is timed, loading the recording included,
   median of several replays. Baseline: that live run's duration. Target: ``value <= 2
   s``.
4. Listing: a SQLite store holding 10,000 runs, made by running 10,000 tiny runs through
   ``system.runs.start`` (each one ``run.started``, its root ``run.step`` and
   ``run.completed`` event; every 10th fails, so ``run.failed`` ends are looked up too).
   Then ``system.runs.list()`` (the newest 50) on a freshly opened and started System over
   that folder, a new System for every repetition. Baseline: a plain
   ``store.query(limit=50, descending=True)`` on a freshly opened System in the same way.
   Target: ``value <= 100 ms``.

``--quick`` runs the same rows with fewer repetitions and smaller sizes (10 tool calls per
run, a 40-turn long run, a 200-step run to replay with the target scaled to 0.4 s, 1,000
runs to list).

    python benchmarks/runs.py [--quick] [--json out.json]
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Row, parse_args, report, time_sync

from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.agents.agent import Agent
from llmspell.runtime.providers.base import Message, ToolSpec
from llmspell.runtime.providers.scripted import ScriptedProvider

TOOL_TARGET = 1.05
MODEL_TARGET = 1.02
REPLAY_SECONDS_PER_1000_STEPS = 2.0
LIST_TARGET_MS = 100.0


# -- tools and models ---------------------------------------------------------------------
def calibrated_tool(target_ns: float) -> Any:
    """A tool named ``work`` whose body is pure-Python work of about ``target_ns``."""
    n = 1000
    while True:
        def body(n: int = n) -> int:
            return sum(range(n))

        per = min(time_sync(body, 10, 1) for _ in range(5))
        if per >= target_ns * 0.5:
            break
        n *= 2
    loops = max(1, int(n * target_ns / per))

    @tool("work")
    def work(x: int) -> int:
        """About 100 µs of work."""
        return sum(range(loops)) + x

    return work


@tool("add")
def add(a: int, b: int) -> int:
    """Add two integers (a trivial tool)."""
    return a + b


def _turn(messages: list[Message]) -> int:
    """Which model turn this is: 1 + the assistant messages so far."""
    return 1 + sum(1 for m in messages if m.role == "assistant")


def fan_out_model(calls: int) -> ScriptedProvider:
    """Turn 1 asks for ``calls`` calls of ``work``; turn 2 answers."""

    def reply(messages: list[Message], tools: list[ToolSpec]) -> Any:
        if _turn(messages) > 1:
            return "done"
        return {"tool_calls": [{"name": "work", "arguments": {"x": i}}
                               for i in range(calls)]}

    return ScriptedProvider(reply)


def slow_model(turns: int, seconds: float) -> ScriptedProvider:
    """Every turn awaits ``seconds``; turns 1..turns-1 ask for one ``add`` call, the last
    answers."""

    async def reply(messages: list[Message], tools: list[ToolSpec]) -> Any:
        await asyncio.sleep(seconds)
        turn = _turn(messages)
        if turn >= turns:
            return "done"
        return {"tool_calls": [{"name": "add", "arguments": {"a": turn, "b": 1}}]}

    return ScriptedProvider(reply)


def long_loop_model(turns: int) -> ScriptedProvider:
    """``turns`` model turns and as many tool calls: turns 1..turns-1 ask for one ``work``
    call each (turn 1 for two), the last turn answers."""

    def reply(messages: list[Message], tools: list[ToolSpec]) -> Any:
        turn = _turn(messages)
        if turn >= turns:
            return f"finished after {turn} turns"
        calls = 2 if turn == 1 else 1
        return {"tool_calls": [{"name": "work", "arguments": {"x": turn * 10 + i}}
                               for i in range(calls)], "content": f"turn {turn}"}

    return ScriptedProvider(reply)


# -- timing -------------------------------------------------------------------------------
async def alternated_samples(runs: Sequence[Callable[[], Awaitable[object]]],
                             flushes: Sequence[Callable[[], object]], per_sample: int,
                             rounds: int, *, expect: object, warmup: int = 3
                             ) -> list[float]:
    """Median µs per run of each of ``runs`` (in their order).

    A sample is ``per_sample`` awaited runs. Rounds take one sample of each in turn, the
    order reversed every other round; before each sample, untimed, every configuration's
    ``flush()`` runs (nothing left over from another sample is written during this one) and
    a collection, and the collector is held back during the sample. Every run must return
    ``expect`` (else ``RuntimeError``: a benchmark that measured the wrong thing must not
    report a figure)."""

    async def sample(run: Callable[[], Awaitable[object]]) -> float:
        for flush in flushes:
            flush()
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            for _ in range(per_sample):
                out = await run()
                if out != expect:
                    raise RuntimeError(f"a benchmarked run returned {out!r}, not {expect!r}")
            return (time.perf_counter() - start) / per_sample * 1e6
        finally:
            gc.enable()

    for run in runs:
        for _ in range(warmup):
            await run()
    timings: list[list[float]] = [[] for _ in runs]
    order = list(enumerate(runs))
    for i in range(rounds):
        for index, run in order if i % 2 == 0 else order[::-1]:
            timings[index].append(await sample(run))
    return [statistics.median(t) for t in timings]


async def _agent_system(config: SystemConfig, tools: Sequence[Any], provider: ScriptedProvider,
                        max_turns: int = 16) -> tuple[System, Agent]:
    system = System(config)
    await system.start()
    system.tools.register_all(list(tools))
    agent = system.agents.create("bench", provider=provider,
                                 tools=[t.name for t in tools], max_turns=max_turns)
    return system, agent


def _run_output(agent: Agent) -> Callable[[], Awaitable[object]]:
    async def run() -> object:
        return (await agent.run("go")).output
    return run


# -- rows 1 and 2: recording overhead -----------------------------------------------------
async def overhead_row(label: str, store: str, tools: Sequence[Any],
                       provider: Callable[[], ScriptedProvider], target: float,
                       per_sample: int, rounds: int, *, expect: str = "done",
                       max_turns: int = 16) -> Row:
    """``record="decisions"`` against ``record="off"`` on ``store``: µs per agent run."""
    with tempfile.TemporaryDirectory() as folder:
        systems: list[System] = []
        runs: list[Callable[[], Awaitable[object]]] = []
        try:
            for record in ("decisions", "off"):
                config = SystemConfig(record=record, store=store,
                                      data_dir=str(Path(folder) / record))
                system, agent = await _agent_system(config, tools, provider(), max_turns)
                systems.append(system)
                runs.append(_run_output(agent))
            recorded, off = await alternated_samples(
                runs, [s.bus.flush for s in systems], per_sample, rounds, expect=expect)
        finally:
            for system in systems:
                await system.shutdown()
    ratio = recorded / off
    return Row(label, recorded, "µs/run", off, ratio, f"ratio <= {target:.2f}",
               ratio <= target)


# -- row 3: replay ------------------------------------------------------------------------
async def replay_row(work: Any, turns: int, repeats: int) -> Row:
    steps = 2 * turns
    target_s = REPLAY_SECONDS_PER_1000_STEPS * steps / 1000
    with tempfile.TemporaryDirectory() as folder:
        config = SystemConfig(record="decisions", store="sqlite", data_dir=folder)
        system, agent = await _agent_system(config, [work], long_loop_model(turns),
                                            max_turns=turns)
        try:
            expected = f"finished after {turns} turns"
            for _ in range(2):  # the second run is the one replayed (the first warms up)
                start = time.perf_counter()
                response = await agent.run("go")
                live = time.perf_counter() - start
                if response.output != expected:
                    raise RuntimeError(f"the recorded run answered {response.output!r}")
            run_id = system.runs.list(limit=1)[0].run_id
            summary = system.runs.get(run_id)
            if (summary.model_calls, summary.tool_calls) != (turns, turns):
                raise RuntimeError(f"the recorded run made {summary.model_calls} model and "
                                   f"{summary.tool_calls} tool calls, not {turns} of each")
            # Nothing may run live in an exact replay: a model call would fail it.
            agent.provider = ScriptedProvider(_no_model)
            timings = []
            for _ in range(repeats):
                system.bus.flush()
                gc.collect()
                start = time.perf_counter()
                result = await system.runs.replay(run_id)
                timings.append(time.perf_counter() - start)
                if (result.status, result.output, result.diverged) != ("completed", expected,
                                                                       False):
                    raise RuntimeError(f"the replay did not reproduce the run: "
                                       f"{result.status} {result.error} "
                                       f"{[d.describe() for d in result.divergences[:3]]}")
                if result.served != {"recording": steps}:
                    raise RuntimeError(f"the replay served {result.served}, not "
                                       f"{steps} steps from the recording")
        finally:
            await system.shutdown()
    value = statistics.median(timings) * 1000
    return Row(f"replay exact, {steps}-step agent run (SQLite), incl. load", value, "ms",
               live * 1000, value / (live * 1000), f"value <= {target_s * 1000:.0f} ms",
               value <= target_s * 1000)


def _no_model(messages: list[Message], tools: list[ToolSpec]) -> Any:
    raise RuntimeError("an exact replay called the model")


# -- row 4: listing -----------------------------------------------------------------------
class _PlannedError(Exception):
    """The failure of every 10th tiny run."""


async def fill_runs(folder: str, count: int) -> None:
    """``count`` tiny runs through ``system.runs.start`` (every 10th fails)."""
    async with System(SystemConfig(data_dir=folder)) as system:
        for i in range(count):
            try:
                async with system.runs.start("job", f"job-{i % 7}", {"n": i}) as run:
                    if i % 10 == 9:
                        raise _PlannedError(f"run {i} fails on purpose")
                    run.output = i
            except _PlannedError:
                pass
            if i % 1000 == 999:
                system.bus.flush()


async def list_row(count: int, repeats: int) -> Row:
    with tempfile.TemporaryDirectory() as folder:
        await fill_runs(folder, count)

        async def fresh(read: Callable[[System], list[Any]]) -> float:
            system = System(SystemConfig(data_dir=folder))
            await system.start()
            try:
                start = time.perf_counter()
                found = read(system)
                elapsed = time.perf_counter() - start
            finally:
                await system.shutdown()
            if len(found) != 50:
                raise RuntimeError(f"a listing returned {len(found)} items, not 50")
            return elapsed * 1000

        def listed(system: System) -> list[Any]:
            runs = system.runs.list()
            if runs[0].name != f"job-{(count - 1) % 7}":
                raise RuntimeError(f"the newest run listed is {runs[0].name!r}")
            return runs

        def queried(system: System) -> list[Any]:
            assert system.store is not None
            return system.store.query(limit=50, descending=True)

        lists: list[float] = []
        queries: list[float] = []
        for i in range(repeats):
            pair = [(lists, listed), (queries, queried)]
            for into, read in pair if i % 2 == 0 else pair[::-1]:
                into.append(await fresh(read))
    value, base = statistics.median(lists), statistics.median(queries)
    return Row(f"list() newest 50 of {count:,} runs (fresh System, SQLite)", value, "ms",
               base, value / base, f"value <= {LIST_TARGET_MS:.0f} ms",
               value <= LIST_TARGET_MS)


# -- all ----------------------------------------------------------------------------------
async def measure(quick: bool) -> list[Row]:
    work = calibrated_tool(100_000)
    calls = 10 if quick else 20
    rounds = 5 if quick else 15
    rows = []
    for store, what in (("sqlite", "SQLite"), ("memory", "memory")):
        rows.append(await overhead_row(
            f"agent run, {calls} x ~100 µs tool calls, {what}: decisions vs off", store,
            [work], lambda: fan_out_model(calls), TOOL_TARGET,
            per_sample=25 if quick else 30, rounds=rounds))
    rows.append(await overhead_row(
        "agent run, 10 turns of a 1 ms model, SQLite: decisions vs off", "sqlite", [add],
        lambda: slow_model(10, 0.001), MODEL_TARGET, per_sample=6 if quick else 10,
        rounds=5 if quick else 21))  # 1 ms sleeps jitter: more rounds
    turns = 40 if quick else 100
    rows.append(await overhead_row(
        f"agent run, {turns} turns of one ~100 µs tool call, the conversation growing, "
        "SQLite: decisions vs off", "sqlite", [work], lambda: long_loop_model(turns),
        TOOL_TARGET, per_sample=2 if quick else 3, rounds=5 if quick else 11,
        expect=f"finished after {turns} turns", max_turns=turns))
    rows.append(await replay_row(work, turns=100 if quick else 500, repeats=3 if quick else 5))
    rows.append(await list_row(count=1_000 if quick else 10_000, repeats=3 if quick else 7))
    return rows


def main() -> int:
    args = parse_args(__doc__ or "")
    rows = asyncio.run(measure(args.quick))
    return report("runs: recording overhead, replay and listing (medians)", rows, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
