"""Guide step 6: the pieces of a production deployment in one program.

* configuration from the environment (``LLMSPELL_*``) or a TOML file, with a data
  directory for the SQLite event store;
* JSON log lines carrying the structured fields of the logging hook (point, component,
  correlation id, masked data), at a level you choose;
* the production built-ins, a metrics snapshot and the executor's hook latencies;
* health checks: slow hooks (``check_performance``) and memory (``check_resources``);
* retention: old events deleted by age and count, and the store's size and counters;
* a clean shutdown: leaving ``async with System(...)`` flushes the store.

Run: ``python examples/guide/06_production.py [DATA_DIR]`` (default: a temporary folder)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from llmspell.builtin import LoggingConfig, MetricsHook, install_all, production
from llmspell.runtime import System, load_config
from llmspell.runtime.providers import ScriptedProvider, provider_from_env
from llmspell.runtime.tools.library.calculator import CalculatorTool


class JsonLines(logging.Formatter):
    """One JSON object per record, with the ``llmspell_*`` fields the hooks attach."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"level": record.levelname, "logger": record.name,
                                "message": record.getMessage()}
        line.update({k: v for k, v in vars(record).items() if k.startswith("llmspell_")})
        return json.dumps(line, default=str)


def setup_logging(stream: Any) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLines())
    root = logging.getLogger("llmspell")
    root.addHandler(handler)
    root.setLevel(os.environ.get("APP_LOG_LEVEL", "INFO"))
    return handler


async def main(data_dir: str) -> None:
    Path(data_dir).mkdir(parents=True, exist_ok=True)  # a new data folder is fine
    log_path = Path(data_dir) / "app.log"
    with log_path.open("w", encoding="utf-8") as log_file:
        handler = setup_logging(log_file)
        config = load_config(data_dir=data_dir, store="sqlite", breaker="production")
        async with System(config) as system:
            system.tools.register(CalculatorTool())
            hooks = production(bus=system.bus, logging_config=LoggingConfig(level="INFO"))
            install_all(hooks, system.registry)
            provider = provider_from_env() or ScriptedProvider([
                {"tool_calls": [{"name": "calculator", "arguments": {"expression": "2+2"}}]},
                "It is 4."])
            agent = system.agents.create("ops", provider=provider, tools=["calculator"])
            print("agent:", (await agent.run("What is 2+2?")).output)

            metrics = next(h for h in hooks if isinstance(h, MetricsHook)).stats()
            print(f"metrics: {metrics.calls} hooked calls, {metrics.errors} errors, "
                  f"models {sorted(metrics.models)}")
            monitor = system.executor.monitor
            slowest = sorted(monitor.hook_stats() if monitor else [],
                             key=lambda s: s.p99_ns, reverse=True)[:3]
            for stat in slowest:
                print(f"hook {stat.name} at {stat.point}: p99 {stat.p99_ns / 1e6:.3f} ms")
            print("hooks over 250 ms p99:", await system.check_performance(threshold_ms=250))
            print("resource alerts:", await system.check_resources(max_rss_mb=4096))

            assert system.store is not None
            deleted = system.store.apply_retention(max_age=30 * 24 * 3600, max_count=100_000)
            stats = system.store.stats()
            size = (Path(data_dir) / "events.db").stat().st_size
            print(f"store: {stats.stored} events kept, {deleted} deleted by retention, "
                  f"{stats.write_errors} write errors, {size / 1024:.0f} KiB on disk")
        logging.getLogger("llmspell").removeHandler(handler)
    lines = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines()]
    print(f"{len(lines)} JSON log lines, e.g.:", json.dumps(lines[0])[:160], "...")
    assert any(line.get("llmspell_point") == "after_model_call" for line in lines)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        asyncio.run(main(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(main(tmp))
