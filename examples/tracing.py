"""Trace an agent run and a workflow with OpenTelemetry, offline, and print the span tree.

The spans go to the OpenTelemetry SDK's in-memory exporter here; point the same provider at
Jaeger, Langfuse or Phoenix with an OTLP exporter instead (docs/observability.md). The agent
calls two tools; a hook blocks the second, so its span carries ``error.type`` and the hook's
decision as a span event. The workflow's steps are spans under ``invoke_workflow``, and the
agent a step runs is a span under the step. Content (prompts, replies, tool arguments and
results) is captured because this example asks for it: it is off by default.

Run: ``python examples/tracing.py``
"""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from llmspell.builtin.tracing import DECISION_EVENT, TracingConfig, TracingHook
from llmspell.errors import OperationCancelled
from llmspell.hooks import HookPoint
from llmspell.hooks.result import Cancel
from llmspell.runtime import Sequential, Step, System, SystemConfig, tool
from llmspell.runtime.providers.scripted import ScriptedProvider

SHOWN = ("gen_ai.request.model", "gen_ai.response.finish_reasons", "gen_ai.usage.input_tokens",
         "gen_ai.usage.output_tokens", "gen_ai.tool.call.id", "gen_ai.tool.call.arguments",
         "gen_ai.tool.call.result", "error.type", "llmspell.workflow.status")


@tool()
def add(a: float, b: float) -> float:
    """Add two numbers."""
    return a + b


@tool()
def shell(command: str) -> str:
    """Pretends to run a shell command."""
    return f"ran {command}"


def no_shell(ctx: Any) -> Cancel | None:
    """A guard: no shell commands from agents."""
    if ctx.component.name == "shell":
        return Cancel(reason="agents may not run shell commands")
    return None


def show(spans: list[ReadableSpan]) -> None:
    """Print the spans as a tree, with a few attributes and the hook decisions."""
    by_id = {s.context.span_id: s for s in spans}

    def children(parent: int | None) -> list[ReadableSpan]:
        found = [s for s in spans
                 if (s.parent.span_id if s.parent and s.parent.span_id in by_id else None)
                 == parent]
        return sorted(found, key=lambda s: s.start_time or 0)

    def walk(span: ReadableSpan, depth: int) -> None:
        attrs = span.attributes or {}
        ms = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
        details = ", ".join(f"{k.removeprefix('gen_ai.').removeprefix('llmspell.')}={attrs[k]}"
                            for k in SHOWN if k in attrs)
        status = "  ERROR" if span.status.status_code.name == "ERROR" else ""
        print(f"{'  ' * depth}{span.name}  ({ms:.2f} ms){status}  {details}")
        for event in span.events:
            if event.name == DECISION_EVENT:
                e = event.attributes or {}
                print(f"{'  ' * depth}    hook {e['llmspell.hook.name']!r}: "
                      f"{e['llmspell.hook.result']} at {e['llmspell.hook.point']} "
                      f"({e.get('llmspell.hook.reason', '')})")
        for child in children(span.context.span_id):
            walk(child, depth + 1)

    for root in children(None):
        walk(root, 0)


async def main() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    async with System(SystemConfig(store="memory")) as system:
        system.tools.register_all([add, shell])
        system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, no_shell, name="no_shell")
        tracing = TracingHook(TracingConfig(capture_content=True), bus=system.bus,
                              tracer_provider=provider)
        tracing.install(system.registry)

        helper = system.agents.create("helper", tools=["add", "shell"], provider=ScriptedProvider([
            {"tool_calls": [{"name": "add", "arguments": {"a": 19, "b": 23}},
                            {"name": "shell", "arguments": {"command": "rm -rf /tmp/x"}}]},
            "19 + 23 = 42 (and I was not allowed to clean up).",
        ]))
        answer = await helper.run("Add 19 and 23, then clean up /tmp/x.")
        print("agent:", answer.output)

        system.agents.create("writer", provider=ScriptedProvider(["Forty-two, in words."]))
        report = Sequential("report", [
            Step("sum", tool="add", params={"a": 40, "b": 2}),
            Step("words", agent="writer", input="Write ${outputs.sum} in words."),
        ])
        result = await report.run(system)
        print("workflow:", result.status, result.outputs["words"])

        try:
            await system.tools.execute("shell", {"command": "ls"})
        except OperationCancelled as exc:
            print("direct call refused:", exc.reason)
        print("tracing:", tracing.stats())

    print()
    show(list(exporter.get_finished_spans()))


if __name__ == "__main__":
    import asyncio

    asyncio.run(main())
