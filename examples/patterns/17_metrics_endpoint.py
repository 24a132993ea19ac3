"""Pattern: export metrics to Prometheus from a running application.

The built-in ``MetricsHook`` counts every tool, agent and model call (calls, errors,
latency; per model: calls, tokens, provider latency); a ``PrometheusExporter`` turns them
into Prometheus metrics and ``prometheus_client.start_http_server`` serves them at
``/metrics`` for your scraper. Hook latencies from the executor's monitor are read at scrape
time. Needs ``pip install 'llmspell[prometheus]'``. The server here listens on loopback on
a free port and the example scrapes itself once.

Run: ``python examples/patterns/17_metrics_endpoint.py``
"""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client import start_http_server

from llmspell.builtin import MetricsHook
from llmspell.builtin.metrics import PrometheusExporter
from llmspell.runtime import System, SystemConfig
from llmspell.runtime.providers import ScriptedProvider
from llmspell.runtime.tools.library.calculator import CalculatorTool


async def main() -> None:
    exporter = PrometheusExporter()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=exporter.registry)
    try:
        async with System(SystemConfig(store="memory")) as system:
            system.tools.register(CalculatorTool())
            metrics = MetricsHook(exporters=[exporter])
            metrics.install(system.registry)
            metrics.include_monitor(system.executor.monitor)
            agent = system.agents.create("math", tools=["calculator"], provider=ScriptedProvider([
                {"tool_calls": [{"name": "calculator", "arguments": {"expression": "6*7"}}]},
                "42"]))
            await agent.run("What is 6 times 7?")
            port = server.server_address[1]
            async with httpx.AsyncClient() as client:
                scraped = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    finally:
        server.shutdown()
        thread.join(timeout=5)
    wanted = ("llmspell_model_calls_total", "llmspell_model_tokens_total",
              "llmspell_point_calls_total", "llmspell_hook_latency_seconds")
    for line in scraped.splitlines():
        if line.startswith(wanted[:2]):
            print(line)
    assert all(name in scraped for name in wanted)
    assert 'llmspell_model_calls_total{model="scripted",outcome="ok",provider="scripted"} 2.0' \
        in scraped


if __name__ == "__main__":
    asyncio.run(main())
