"""What OpenTelemetry tracing (``llmspell.builtin.tracing.TracingHook``) costs.

Every figure is a public call timed the way users write it, with tracing installed the way
the docs show (``TracingHook(bus=system.bus, tracer_provider=provider).install(
system.registry)``) against the same System without it. The traced systems export to an
OpenTelemetry SDK ``TracerProvider`` with a ``BatchSpanProcessor`` (what a real exporter
uses) over an exporter that drops what it is given (so no network is timed; the batch
processor's worker thread still takes every span).

1. A tool call: ``await system.tools.execute("work", ...)`` of a ~100 µs pure-Python tool,
   outside any run (one span: ``execute_tool work``). Target: ``ratio <= 1.5``; and what
   tracing adds to it, in µs (target: ``<= 100 µs`` per span).
2. An agent run: a top-level ``agent.run`` whose scripted model (answering at once) asks
   for 10 calls of the ~100 µs tool in one turn, then answers (13 spans: the agent, 2 chat,
   10 execute_tool; the benchmark checks they are exported). Target: ``ratio <= 1.5``; and
   the added µs divided by the 13 spans (target: ``<= 100 µs`` per span).
3. The same agent run with a sampler that drops every span (``ALWAYS_OFF``): what the
   hook's own work costs when nothing is recorded. Target: ``ratio <= 1.3``.
4. No tracer: a ``TracingHook`` created with no tracer provider configured (the
   OpenTelemetry API's default) installs nothing, so the tool call must cost what it costs
   without tracing. Target: ``ratio <= 1.05`` (the noise of two identical systems).

The targets are honest rather than tight: the ~100 µs tool and the instant scripted model
are far cheaper than real tools and models (a model call takes 0.3-30 s), so the ratios
here are upper bounds of what tracing adds to a real application; the µs added per span is
what carries over. Most of it is the OpenTelemetry SDK's own span (``start_span`` with the
attributes, ``end``, the batch processor's queue: 12-25 µs on the machine this was written
on), then the dispatch of the hook's point and, where other hooks run, the
``hook.<point>`` event that reports their decisions.

Timing: each configuration's run is a batch of calls; rounds take one batch of each in
turn (order reversed every other round, a collection before each round, the collector
held back during it) and the value is the median batch, per call. ``--quick`` runs fewer,
smaller batches.

    python benchmarks/tracing.py [--quick] [--json out.json]
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Row, interleaved_medians, parse_args, report, time_sync
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from llmspell.builtin.tracing import TracingHook
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.agents.agent import Agent
from llmspell.runtime.providers.base import Message, ToolSpec
from llmspell.runtime.providers.scripted import ScriptedProvider

TOOL_TARGET = 1.5
AGENT_TARGET = 1.5
DROPPED_TARGET = 1.3
NO_TRACER_TARGET = 1.05
ADDED_TARGET = 100.0
CALLS_PER_RUN = 10


class DropExporter(SpanExporter):
    """Takes spans and keeps none (counts them, so the benchmark can check they came)."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


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
        return sum(range(loops)) * 0 + x

    return work


def fan_out_model(calls: int) -> ScriptedProvider:
    """Turn 1 asks for ``calls`` calls of ``work``; turn 2 answers."""

    def reply(messages: list[Message], tools: list[ToolSpec]) -> Any:
        if any(m.role == "assistant" for m in messages):
            return "done"
        return {"tool_calls": [{"name": "work", "arguments": {"x": i}} for i in range(calls)]}

    return ScriptedProvider(reply)


async def make_system(work: Any, tracing: str
                      ) -> tuple[System, Agent, TracerProvider | None]:
    """A System with the tool and the agent; ``tracing``: ``none``, ``sdk``, ``dropped``
    (a sampler that records nothing) or ``no-tracer`` (a hook with no provider)."""
    system = System(SystemConfig(store="memory"))
    await system.start()
    system.tools.register(work)
    agent = system.agents.create("bench", provider=fan_out_model(CALLS_PER_RUN),
                                 tools=["work"], max_turns=4)
    provider: TracerProvider | None = None
    if tracing in ("sdk", "dropped"):
        provider = TracerProvider(sampler=ALWAYS_OFF) if tracing == "dropped" \
            else TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(DropExporter()))
        hook = TracingHook(bus=system.bus, tracer_provider=provider)
        hook.install(system.registry)
    elif tracing == "no-tracer":
        hook = TracingHook(bus=system.bus)  # no provider configured: installs nothing
        if hook.install(system.registry) or hook.active:
            raise RuntimeError("a TracingHook with no tracer provider installed itself")
    return system, agent, provider


def tool_batch(system: System, size: int) -> Callable[[], Awaitable[object]]:
    async def run() -> object:
        total = 0
        for i in range(size):
            total += await system.tools.execute("work", {"x": i})
        return total
    return run


def agent_batch(agent: Agent, size: int) -> Callable[[], Awaitable[object]]:
    async def run() -> object:
        for _ in range(size):
            out = (await agent.run("go")).output
            if out != "done":
                return out
        return "done"
    return run


async def compare(work: Any, configs: tuple[str, str], batch: str, size: int,
                  rounds: int) -> tuple[float, float]:
    """Median µs per call of ``configs[0]`` and of ``configs[1]`` (the baseline)."""
    made = [await make_system(work, c) for c in configs]
    try:
        if batch == "tool":
            runs = [tool_batch(system, size) for system, _, _ in made]
            expect: object = sum(range(size))
        else:
            runs = [agent_batch(agent, size) for _, agent, _ in made]
            expect = "done"
        measured, base = await interleaved_medians(runs, rounds, expect=expect, warmup=2)
    finally:
        for system, _, provider in made:
            await system.shutdown()
            if provider is not None:
                provider.shutdown()
    return measured / size, base / size


def ratio_row(name: str, value: float, baseline: float, target: float) -> Row:
    ratio = value / baseline
    return Row(name, value, "µs/call", baseline, ratio, f"ratio <= {target:.2f}",
               ratio <= target)


def added_row(name: str, value: float, baseline: float, spans: int, target: float) -> Row:
    """What tracing adds per span (operation), in µs."""
    added = (value - baseline) / spans
    return Row(name, added, "µs/span", None, None, f"value <= {target:.0f} µs", added <= target)


async def spans_per_agent_run(work: Any) -> int:
    """Spans one traced agent run exports (checks the benchmark traces what it says)."""
    system = System(SystemConfig(store="memory"))
    await system.start()
    system.tools.register(work)
    agent = system.agents.create("bench", provider=fan_out_model(CALLS_PER_RUN),
                                 tools=["work"], max_turns=4)
    exporter = DropExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    TracingHook(bus=system.bus, tracer_provider=provider).install(system.registry)
    try:
        await agent.run("go")
    finally:
        await system.shutdown()
        provider.shutdown()  # exports what the batch processor holds
    return exporter.spans


async def measure(quick: bool) -> list[Row]:
    work = calibrated_tool(100_000)
    rounds = 7 if quick else 25
    tool_size = 20 if quick else 100
    agent_size = 2 if quick else 10
    spans = CALLS_PER_RUN + 3
    exported = await spans_per_agent_run(work)
    if exported != spans:
        raise RuntimeError(f"a traced agent run exported {exported} spans, not {spans}")
    tool_on, tool_off = await compare(work, ("sdk", "none"), "tool", tool_size, rounds)
    agent_on, agent_off = await compare(work, ("sdk", "none"), "agent", agent_size, rounds)
    dropped, dropped_off = await compare(work, ("dropped", "none"), "agent", agent_size,
                                         rounds)
    idle, idle_off = await compare(work, ("no-tracer", "none"), "tool", tool_size, rounds)
    agent = f"agent run, {CALLS_PER_RUN} x ~100 µs tools"
    return [
        ratio_row("tool call, ~100 µs tool: traced vs not", tool_on, tool_off, TOOL_TARGET),
        added_row("tool call: added per span", tool_on, tool_off, 1, ADDED_TARGET),
        ratio_row(f"{agent}: traced vs not", agent_on, agent_off, AGENT_TARGET),
        added_row(f"{agent}: added per span ({spans} spans)", agent_on, agent_off, spans,
                  ADDED_TARGET),
        ratio_row(f"{agent}: sampled out vs not", dropped, dropped_off, DROPPED_TARGET),
        ratio_row("tool call: no tracer configured vs not", idle, idle_off,
                  NO_TRACER_TARGET),
    ]


def main() -> int:
    args = parse_args(__doc__ or "")
    rows = asyncio.run(measure(args.quick))
    return report("tracing: OpenTelemetry spans vs none (medians)", rows, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
