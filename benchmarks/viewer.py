"""What the live viewer (``llmspell view``) sustains, and what it holds in memory under load.

The viewer runs as users run it: ``python -m llmspell view --store PATH --port 0`` in its own
process, following an SQLite event store that a second process (the *writer*, standing in
for a busy application) appends to: runs of tool and model calls, with run ids, as the
runtime publishes them. Clients read ``GET /events`` over HTTP in this process.

1. **Throughput to one client.** The writer appends events as fast as it can; one client
   reads the stream as fast as it can. Value: events per second delivered to the client
   (not summarised), between its first and last event. Baseline: the rate at which the same
   events are read from the file by ``SQLiteStoreReader`` alone (the source's ceiling), so
   the ratio is the share of it the whole viewer (read, summarise, encode, stream) keeps.
   Target: ``>= 10,000 events/s``.
2. **10,000 events/s for 60 s** (``--quick``: 5 s) with two clients: one fast, one that
   reads ~64 KB/s (far slower than the stream). Rows: the writer's achieved rate (the
   condition of the test; target ``>= 9,500/s``); the fast client's share of events
   delivered (target ``>= 99 %``: it stays live) and its lag, event time to receipt, at the
   95th percentile (target ``<= 1,000 ms``); the events the viewer summarised for the slow
   client instead of buffering them (from ``/api/state``, target ``> 0``; baseline: the
   events that client received); and the viewer's resident memory: its
   growth from a quarter into the run to the end (target ``<= 25 MB``: bounded, not growing
   with time) and its size at the end against its size at start (target ``<= 250 MB``).

    python benchmarks/viewer.py [--quick] [--json out.json]
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import msgspec
from _harness import Row, parse_args, report

from llmspell.events.event import UniversalEvent
from llmspell.events.store.sqlite import SQLiteStore, SQLiteStoreReader

THROUGHPUT_TARGET = 10_000.0
RATE = 10_000
RATE_FLOOR = 9_500.0
SHARE_TARGET = 99.0
LAG_TARGET_MS = 1_000.0
GROWTH_TARGET_MB = 25.0
RSS_TARGET_MB = 250.0
SLOW_BYTES_PER_S = 64 * 1024
ROOT = Path(__file__).resolve().parent.parent


# -- the writer (a separate process) -------------------------------------------------------
def _events(start: int, count: int) -> list[UniversalEvent]:
    """``count`` events as a busy application's runs publish them (a run every 50)."""
    out = []
    for n in range(start, start + count):
        run = f"run-{n // 50}"
        step = n % 50
        if step == 0:
            out.append(UniversalEvent.create("run.started", {"kind": "agent", "name": "bench",
                                                             "run_id": run}, run_id=run))
        elif step == 49:
            out.append(UniversalEvent.create("run.completed", {"status": "completed",
                                                               "tool_calls": 24}, run_id=run))
        elif step % 2:
            out.append(UniversalEvent.create("tool.lookup.started",
                                             {"params": {"q": f"item {n}"}, "attempt": 1},
                                             correlation_id=run, run_id=run))
        else:
            out.append(UniversalEvent.create("tool.lookup.completed",
                                             {"result": {"rows": n % 7}, "attempts": 1,
                                              "cached": False, "duration_ms": 0.4},
                                             correlation_id=run, run_id=run))
    return out


def write(path: str, rate: int, seconds: float, count: int) -> None:
    """The writer: ``rate`` events/s for ``seconds`` (or, with rate 0, ``count`` events as
    fast as possible); prints the achieved rate."""
    store = SQLiteStore(path, flush_interval=0.005)
    written = 0
    began = time.perf_counter()
    if rate == 0:
        while written < count:
            store.append_many(_events(written, min(1000, count - written)))
            written += min(1000, count - written)
            if written % 20_000 == 0:
                store.flush()  # stay within the store's bound on unwritten events
    else:
        tick = 0.01
        per_tick = max(1, int(rate * tick))
        while time.perf_counter() - began < seconds:
            store.append_many(_events(written, per_tick))
            written += per_tick
            due = began + written / rate
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
    store.flush()
    elapsed = time.perf_counter() - began
    store.close()
    print(f"{written} {elapsed}", flush=True)


# -- the viewer (a separate process, the real command) ------------------------------------
@contextlib.contextmanager
def viewer(path: Path) -> Iterator[tuple[str, int]]:
    env = {k: v for k, v in os.environ.items() if k != "LLMSPELL_VIEW_TOKEN"}
    proc = subprocess.Popen([sys.executable, "-m", "llmspell", "view", "--store", str(path),
                             "--port", "0"], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "serving http://" not in line:
            raise RuntimeError(f"the viewer did not start: {line!r}")
        url = line.split("serving ", 1)[1].split(" ", 1)[0]
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "api/state", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the viewer did not answer")
            time.sleep(0.05)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (Linux /proc)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


# -- clients ---------------------------------------------------------------------------------
class Client(threading.Thread):
    """Reads ``/events`` (tail 0): counts events and summarised events, notes the lag of
    each batch's newest event. ``rate`` (bytes/s) slows it down."""

    def __init__(self, url: str, rate: float | None = None) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.rate = rate
        self.events = 0
        self.coalesced = 0
        self.lags: list[float] = []
        self.first = 0.0
        self.last = 0.0
        self.connected = threading.Event()
        self.stop = threading.Event()

    def _line(self, line: str, pending: list[str]) -> None:
        if line.startswith("event: "):
            pending[:] = [line[7:]]
        elif line.startswith("data: ") and pending:
            kind = pending[0]
            if kind == "events":
                now = time.time()
                batch = msgspec.json.decode(line[6:])
                if not self.events:
                    self.first = now
                self.events += len(batch)
                self.last = now
                self.lags.append((now - batch[-1]["ts"]) * 1000)
            elif kind == "coalesced":
                self.coalesced += msgspec.json.decode(line[6:])["count"]
            elif kind == "hello":
                self.connected.set()

    def run(self) -> None:
        pending: list[str] = []
        with httpx.stream("GET", self.url + "events", params={"tail": "0"},
                          timeout=httpx.Timeout(60, connect=10)) as reply:
            if self.rate is None:
                for line in reply.iter_lines():
                    self._line(line, pending)
                    if self.stop.is_set():
                        return
                return
            buffer = ""
            for chunk in reply.iter_raw(4096):
                buffer += chunk.decode("utf-8", "replace")
                *lines, buffer = buffer.split("\n")
                for line in lines:
                    self._line(line, pending)
                if self.stop.is_set():
                    return
                time.sleep(len(chunk) / self.rate)


def start_client(url: str, rate: float | None = None) -> Client:
    client = Client(url, rate)
    client.start()
    if not client.connected.wait(30):
        raise RuntimeError("a client could not connect")
    return client


def run_writer(path: Path, rate: int, seconds: float, count: int = 0) -> tuple[int, float]:
    done = subprocess.run([sys.executable, __file__, "--write", str(path), str(rate),
                           str(seconds), str(count)], check=False, capture_output=True,
                          text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"the writer failed: {done.stderr}")
    out = done.stdout.split()
    return int(out[0]), float(out[1])


def settle(client: Client, total: int, timeout: float) -> None:
    """Wait until ``client`` has received or been told about ``total`` events."""
    deadline = time.monotonic() + timeout
    while client.events + client.coalesced < total and time.monotonic() < deadline:
        time.sleep(0.05)


# -- the measurements ------------------------------------------------------------------------
def throughput(folder: Path, count: int) -> list[Row]:
    path = folder / "throughput.db"
    seed = SQLiteStore(path)
    seed.append(UniversalEvent.create("bench.start"))
    seed.close()
    with viewer(path) as (url, _):
        client = start_client(url)
        written, _ = run_writer(path, 0, 0, count)
        settle(client, written, 60)
        client.stop.set()
    delivered = client.events / max(client.last - client.first, 1e-6)
    began = time.perf_counter()
    read = 0
    with SQLiteStoreReader(path) as reader:
        after = 0
        while True:
            rows = reader.read_after(after, limit=2000)
            if not rows:
                break
            read += len(rows)
            after = rows[-1][0]
    ceiling = read / (time.perf_counter() - began)
    return [Row(f"stream to one client ({written} events as fast as written)",
                delivered, "events/s", ceiling, delivered / ceiling,
                f"value >= {THROUGHPUT_TARGET:,.0f} events/s",
                delivered >= THROUGHPUT_TARGET)]


def sustained(folder: Path, seconds: float) -> list[Row]:
    path = folder / "sustained.db"
    seed = SQLiteStore(path)
    seed.append(UniversalEvent.create("bench.start"))
    seed.close()
    with viewer(path) as (url, pid):
        start_rss = rss_mb(pid)
        fast = start_client(url)
        slow = start_client(url, SLOW_BYTES_PER_S)
        samples: list[tuple[float, float]] = []
        result: dict[str, Any] = {}

        def writer() -> None:
            result["written"], result["elapsed"] = run_writer(path, RATE, seconds)

        thread = threading.Thread(target=writer)
        began = time.monotonic()
        thread.start()
        while thread.is_alive():
            samples.append((time.monotonic() - began, rss_mb(pid)))
            thread.join(0.5)
        settle(fast, result["written"], 30)
        end_rss = rss_mb(pid)
        time.sleep(1.1)  # the tables are refreshed once a second
        feeds = httpx.get(url + "api/state", timeout=10).json()["stats"]["feeds"]
        fast.stop.set()
        slow.stop.set()
    written, elapsed = result["written"], result["elapsed"]
    # What the viewer summarised for the slow client: the notice itself may still sit
    # behind megabytes of the kernel's socket buffers, so it is read from the server.
    summarised = float(max((feed["coalesced"] for feed in feeds), default=0))
    quarter = next((mb for t, mb in samples if t >= seconds / 4), samples[0][1])
    growth = end_rss - quarter
    share = 100.0 * fast.events / max(written, 1)
    lags = sorted(fast.lags) or [float("inf")]
    p95 = lags[min(len(lags) - 1, int(0.95 * len(lags)))]
    offered = written / elapsed
    label = f"{RATE:,} events/s for {seconds:g} s"
    return [
        Row(f"{label}: writer's achieved rate", offered, "events/s", None, None,
            f"value >= {RATE_FLOOR:,.0f} events/s", offered >= RATE_FLOOR),
        Row(f"{label}: fast client, events delivered", share, "%", None, None,
            f"value >= {SHARE_TARGET:g} %", share >= SHARE_TARGET),
        Row(f"{label}: fast client, lag p95", p95, "ms", statistics.median(lags), None,
            f"value <= {LAG_TARGET_MS:,.0f} ms", p95 <= LAG_TARGET_MS),
        Row(f"{label}: slow client (~64 KB/s), events summarised", summarised,
            "events", float(slow.events), None, "value > 0 (summarised, not buffered)",
            summarised > 0),
        Row(f"{label}: viewer memory growth after the first quarter", growth, "MB", quarter,
            None, f"value <= {GROWTH_TARGET_MB:g} MB", growth <= GROWTH_TARGET_MB),
        Row(f"{label}: viewer memory at the end", end_rss, "MB", start_rss,
            end_rss / max(start_rss, 1e-6), f"value <= {RSS_TARGET_MB:g} MB",
            end_rss <= RSS_TARGET_MB),
    ]


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--write":
        write(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]))
        return 0
    options = parse_args(__doc__ or "")
    count = 60_000 if options.quick else 300_000
    seconds = 5.0 if options.quick else 60.0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = throughput(folder, count) + sustained(folder, seconds)
    return report("llmspell view: stream throughput and memory under load", rows,
                  options.json)


if __name__ == "__main__":
    sys.exit(main())
