"""Fleet-wide limits across real processes, their counters in NATS JetStream KV.

Three worker processes share one rate limit of 10 calls per second: counted over a three-
second window in the middle of the run (from the times of the allowed decisions, not from
how fast the machine ran), they are allowed 30 calls together, within 10 %, and never more
than the bucket allows in any window. Three processes spend from one $1.00 budget: the
spending adds up exactly, each level is alerted once in the whole fleet, and every process
is blocked once it is spent.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

from llmspell.builtin.counters import counter_key
from llmspell.builtin.nats_counters import NatsCounters
from tests.builtin.support import kv_url
from tests.events.nats_support import nats_url

__all__ = ["kv_url", "nats_url"]  # fixtures

WORKER = Path(__file__).with_name("fleet_worker.py")
PROCESSES = 3
RATE = 10.0
BURST = 2


def _workers(role: str, url: str, start: float, amount: str, tmp_path: Path
             ) -> list[dict[str, object]]:
    outs = [tmp_path / f"{role}-{n}.json" for n in range(PROCESSES)]
    procs = [subprocess.Popen([sys.executable, str(WORKER), role, url, repr(start), amount,
                               str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for out in outs]
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err[-3000:]
    finally:
        for proc in procs:
            proc.kill()
    return [json.loads(out.read_text(encoding="utf-8")) for out in outs]


def test_three_processes_share_one_rate_limit(kv_url: str, tmp_path: Path) -> None:
    start, duration = time.time() + 3.0, 4.0     # time for the processes to start
    results = _workers("ratelimit", kv_url, start, repr(duration), tmp_path)
    allowed = sorted(t for r in results for t in r["allowed"])  # type: ignore[attr-defined]
    assert all(r["allowed"] for r in results), "a process was never allowed"
    assert sum(r["limited"] for r in results) > 100              # type: ignore[misc]
    assert sum(r["errors"] for r in results) <= 5                # type: ignore[misc]
    # The window from 0.5 s to 3.5 s: 3 s at 10 per second, whatever the machine's speed.
    # A bucket that is full while nobody asks loses what it earns: on a loaded machine the
    # workers can all stall, so the lower bound gives back what such stretches lost.
    low, high = start + 0.5, start + 3.5
    window = [t for t in allowed if low <= t < high]
    asked = sorted(t for r in results for t in r["asked"])  # type: ignore[attr-defined]
    times = [low, *(t for t in asked if low <= t < high), high]
    lost = sum(max(0.0, (b - a) * RATE - BURST) for a, b in itertools.pairwise(times))
    print(f"allowed in the window: {len(window)}; in all: {len(allowed)}; lost to stalls: "
          f"{lost:.1f}")
    assert 27 - lost <= len(window) <= 33, (
        f"{len(window)} calls allowed in 3 s (limit 10/s; {lost:.1f} lost to stalls)")
    # Never more than the bucket holds plus what it earns, over any stretch of the run.
    for i, first in enumerate(allowed):
        for j in range(i, len(allowed)):
            span = allowed[j] - first
            assert j - i + 1 <= BURST + RATE * span + 1, (
                f"{j - i + 1} calls in {span:.3f} s")


def test_three_processes_spend_one_budget_and_alert_once(kv_url: str, tmp_path: Path) -> None:
    results = _workers("budget", kv_url, time.time() + 3.0, "4", tmp_path)
    alerts = sorted(level for r in results for level in r["alerts"])  # type: ignore[attr-defined]
    assert alerts == ["critical", "info", "warning"]          # each once in the fleet
    assert all(r["blocked"] for r in results)
    counters = NatsCounters(kv_url)
    try:
        spent = counters.read_sync(counter_key("cost", "budget", "global", "total", "0"))
    finally:
        counters.close()
    assert Decimal(spent) == Decimal("1.2")                    # 12 calls of $0.10, none lost
