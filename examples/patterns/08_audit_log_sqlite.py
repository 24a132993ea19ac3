"""Pattern: an audit log of every tool call, in SQLite.

A subscriber on the event bus writes one row per started, finished or failed tool call into an
``audit`` table of a SQLite database you own (beside the system's own event store): who
(the correlation id), what (tool, parameters as published, already masked), the outcome and
when. Queued delivery (``mode="queued"``) keeps the database work off the caller's path;
``bus.drain()`` waits for the queues before the example reads the table back.

Run: ``python examples/patterns/08_audit_log_sqlite.py``
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import tempfile
from pathlib import Path

from llmspell.errors import ToolExecutionError
from llmspell.events import UniversalEvent
from llmspell.runtime import System, SystemConfig, tool


@tool()
def lookup(customer: str, api_key: str) -> str:
    """Find a customer (fails for unknown ones)."""
    if customer != "ann":
        raise ValueError(f"no customer {customer!r}")
    return "ann: premium"


class AuditLog:
    """Writes tool outcomes into ``audit`` rows."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, check_same_thread=False)
        self.db.execute("CREATE TABLE IF NOT EXISTS audit (at REAL, correlation_id TEXT, "
                        "tool TEXT, outcome TEXT, detail TEXT)")

    def __call__(self, event: UniversalEvent) -> None:
        _, tool_name, outcome = event.event_type.split(".", 2)
        if outcome not in ("started", "completed", "failed"):
            return
        self.db.execute("INSERT INTO audit VALUES (?, ?, ?, ?, ?)",
                        (event.timestamp, event.metadata.correlation_id, tool_name, outcome,
                         json.dumps(event.data, default=str)))
        self.db.commit()


async def main(folder: Path) -> None:
    audit = AuditLog(folder / "audit.db")
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(lookup)
        system.bus.subscribe("tool.*.*", audit, mode="queued", name="audit")
        await system.tools.execute("lookup", {"customer": "ann", "api_key": "sk-secret"})
        with contextlib.suppress(ToolExecutionError):
            await system.tools.execute("lookup", {"customer": "zed", "api_key": "sk-secret"})
        await system.bus.drain()
    rows = audit.db.execute("SELECT tool, outcome, detail FROM audit ORDER BY at").fetchall()
    for row in rows:
        print(row)
    assert [r[1] for r in rows] == ["started", "completed", "started", "failed"]
    details = "".join(r[2] for r in rows)
    assert "api_key" in details and "sk-secret" not in details   # published data is masked


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp)))
