"""Pattern: fan in the events of several processes.

Worker processes each run their own ``System`` on the same data directory: every one of
them appends its events to the one SQLite file (``<data_dir>/events.db``, WAL mode), and the
store numbers committed events in one order across all writers. A reader (a dashboard, an
auditor, this parent process) then sees every process's events in one stream:
``store.query(pattern=...)`` for what is there, and ``iter_events`` to page through
large histories.

Run: ``python examples/patterns/13_fan_in_processes.py``
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from llmspell.events.store import SQLiteStore

WORKER = """
import asyncio, os, sys
from llmspell.runtime import System, SystemConfig

async def main(data_dir, worker):
    async with System(SystemConfig(data_dir=data_dir, store="sqlite")) as system:
        for job in range(3):
            system.bus.publish(f"worker.{worker}.job_done", {"job": job, "pid": os.getpid()})
        system.bus.flush()            # committed before the process exits

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def run_workers(data_dir: Path, names: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(data_dir), name], env=env)
             for name in names]
    for proc in procs:
        assert proc.wait(timeout=60) == 0


def main(data_dir: Path) -> None:
    run_workers(data_dir, ["alpha", "beta", "gamma"])
    store = SQLiteStore(data_dir / "events.db")
    try:
        events = store.query(pattern="worker.*.job_done")
    finally:
        store.close()
    per_worker = Counter(e.event_type.split(".")[1] for e in events)
    pids = {e.data["pid"] for e in events}
    print(f"{len(events)} events from {len(pids)} processes: {dict(per_worker)}")
    assert per_worker == {"alpha": 3, "beta": 3, "gamma": 3} and len(pids) == 3
    for worker in per_worker:   # each worker's events keep their order in the shared stream
        jobs = [e.data["job"] for e in events if e.event_type == f"worker.{worker}.job_done"]
        assert jobs == [0, 1, 2]


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(Path(tmp))
