"""The distributed bus over NATS JetStream against raw ``nats-py``, in the same run.

Rows:

1. **Publish throughput**: ``bus.publish(type, data)`` as an async program calls it (it
   yields to its event loop every 100 events), timed until the server has accepted every
   event (``distributed_stats().accepted``). Baseline: raw nats-py JetStream publishing of
   the same messages (``js.publish_async`` of the event's JSON with the same headers: the
   message id, the origin, the expected stream), yielding as often, timed until every
   PubAck arrived. Target: ``>= 80 %`` of raw.
2. **Durable publish**: ``await bus.publish_async(type, data, durable=True)`` one after
   another (each returns once the server accepted the event), against raw
   ``await js.publish(...)`` one after another. Target: ``>= 80 %`` of raw.
3. **End-to-end latency**: an event published here (``bus.publish``, one every 2 ms) to
   its handler in a subscriber process (a bus subscription there), p50 and p99, with the
   same measured for raw nats-py (JetStream publish to a pull consumer read one message at
   a time in another process) as the baseline. Targets: p50 ``<= 5 ms``, p99 ``<= 50 ms``.

Each throughput figure is the median of several interleaved rounds (raw, bus, raw...), so a
load spike on a shared machine hits both. Needs a NATS server with JetStream:
``LLMSPELL_TEST_NATS_URL``, ``NATS_URL`` or ``nats://127.0.0.1:4222`` (exit 2 when none
answers). Every stream it makes is deleted at the end.

    python benchmarks/distributed.py [--quick] [--json out.json]
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nats
from _harness import Row, parse_args, report

from llmspell.events.distributed import DistributedBus, make_bus
from llmspell.events.event import UniversalEvent, encode_event
from llmspell.events.transport.base import ORIGIN_HEADER
from llmspell.events.transport.nats import NatsTransport

ROOT = Path(__file__).resolve().parent.parent
NATS = (os.environ.get("LLMSPELL_TEST_NATS_URL") or os.environ.get("NATS_URL")
        or "nats://127.0.0.1:4222")
DATA = {"tool": "calculator", "result": 42, "elapsed_ms": 1.25}
YIELD_EVERY = 100
RATIO_TARGET = 0.8
P50_TARGET_MS = 5.0
P99_TARGET_MS = 50.0

SUBSCRIBER = '''
import asyncio, json, sys, time
import nats
import nats.js.api
from llmspell.events.distributed import make_bus

async def bus_side(url, count):
    bus = make_bus(url)
    got = []
    def handle(event):
        got.append(time.monotonic_ns() - event.data["sent"])
    bus.subscribe("bench.latency", handle)
    await bus.connect()
    await bus.ready()
    print("ready", flush=True)
    deadline = time.monotonic() + 120
    while len(got) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await bus.close()
    return got

async def raw_side(server, stream, subject, count):
    nc = await nats.connect(server)
    js = nc.jetstream()
    sub = await js.pull_subscribe(subject, stream=stream, config=nats.js.api.ConsumerConfig(
        ack_policy=nats.js.api.AckPolicy.NONE))  # as llmspell's own subscriptions
    print("ready", flush=True)
    got = []
    deadline = time.monotonic() + 120
    while len(got) < count and time.monotonic() < deadline:
        try:
            msgs = await sub.fetch(1, timeout=1.0)
        except nats.errors.TimeoutError:
            continue
        now = time.monotonic_ns()
        for msg in msgs:
            got.append(now - json.loads(msg.data)["data"]["sent"])
    await nc.close()
    return got

mode, count = sys.argv[1], int(sys.argv[2])
if mode == "bus":
    got = asyncio.run(bus_side(sys.argv[3], count))
else:
    got = asyncio.run(raw_side(sys.argv[3], sys.argv[4], sys.argv[5], count))
print(json.dumps(got), flush=True)
'''


def _reachable(url: str) -> bool:
    parts = urllib.parse.urlsplit(url.split(",", maxsplit=1)[0].split("?", maxsplit=1)[0])
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 4222), 1.0):
            return True
    except OSError:
        return False


class Bench:
    """One namespace (stream) on the server, and the buses and clients measuring it."""

    def __init__(self, quick: bool) -> None:
        self.namespace = f"bench-{uuid.uuid4().hex[:10]}"
        self.url = f"{NATS}?namespace={self.namespace}&max_age=600&buffer=1000000"
        self.stream = f"llmspell-{self.namespace}"
        self.prefix = f"llmspell.{self.namespace}.ev"
        self.events = 3_000 if quick else 20_000
        self.durables = 300 if quick else 2_000
        self.rounds = 3 if quick else 5
        self.latency_events = 200 if quick else 2_000

    # -- throughput ---------------------------------------------------------------------
    async def raw_burst(self, nc: Any) -> float:
        """Events per second: raw publish_async of the same messages, all PubAcks in."""
        js = nc.jetstream()
        subject = f"{self.prefix}.bench.raw"
        start = time.perf_counter()
        futures = []
        for i in range(self.events):
            event = UniversalEvent(event_type="bench.raw", data=DATA)
            futures.append(await js.publish_async(
                subject, encode_event(event), stream=self.stream,
                headers={"Nats-Msg-Id": event.id, ORIGIN_HEADER: "raw"}))
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
        await asyncio.gather(*futures)
        return self.events / (time.perf_counter() - start)

    async def bus_burst(self, bus: DistributedBus) -> float:
        """Events per second: bus.publish, until the server accepted every one."""
        target = bus.distributed_stats().accepted + self.events
        start = time.perf_counter()
        for i in range(self.events):
            bus.publish("bench.bus", DATA)
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
        deadline = time.monotonic() + 120
        while bus.distributed_stats().accepted < target:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server accepted {bus.distributed_stats()} only")
            await asyncio.sleep(0.0005)
        return self.events / (time.perf_counter() - start)

    async def raw_durable(self, nc: Any) -> float:
        js = nc.jetstream()
        subject = f"{self.prefix}.bench.raw-durable"
        start = time.perf_counter()
        for _ in range(self.durables):
            event = UniversalEvent(event_type="bench.raw-durable", data=DATA)
            await js.publish(subject, encode_event(event), stream=self.stream,
                             headers={"Nats-Msg-Id": event.id, ORIGIN_HEADER: "raw"})
        return self.durables / (time.perf_counter() - start)

    async def bus_durable(self, bus: DistributedBus) -> float:
        start = time.perf_counter()
        for _ in range(self.durables):
            await bus.publish_async("bench.durable", DATA, durable=True)
        return self.durables / (time.perf_counter() - start)

    async def throughput(self) -> list[Row]:
        bus = make_bus(self.url)
        assert isinstance(bus, DistributedBus)
        await bus.connect()
        nc = await nats.connect(NATS)
        burst: tuple[list[float], list[float]] = ([], [])
        durable: tuple[list[float], list[float]] = ([], [])
        try:
            await self.raw_burst(nc)          # warm both paths up
            await self.bus_burst(bus)
            for i in range(self.rounds):
                pairs = [(burst[0], self.raw_burst(nc)), (burst[1], self.bus_burst(bus)),
                         (durable[0], self.raw_durable(nc)),
                         (durable[1], self.bus_durable(bus))]
                for sink, run in pairs if i % 2 == 0 else pairs[::-1]:
                    sink.append(await run)
        finally:
            await nc.close()
            await bus.close()
        rows = []
        for name, (raw, ours) in (
                ("bus.publish(type, data) throughput, until accepted", burst),
                ("publish_async(durable=True) one at a time", durable)):
            raw_rate, rate = statistics.median(raw), statistics.median(ours)
            ratio = rate / raw_rate
            rows.append(Row(name, rate, "events/s", raw_rate, ratio,
                            f">= {RATIO_TARGET:.0%} of raw nats-py", ratio >= RATIO_TARGET))
        return rows

    # -- latency ------------------------------------------------------------------------
    def _spawn(self, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=ROOT)
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != "ready":
            proc.kill()
            raise RuntimeError(f"the subscriber did not start: {line}{proc.stderr.read()}"
                               if proc.stderr else line)
        return proc

    @staticmethod
    def _collect(proc: subprocess.Popen[str]) -> list[float]:
        out, err = proc.communicate(timeout=180)
        if proc.returncode != 0:
            raise RuntimeError(f"the subscriber failed: {err[-2000:]}")
        return [ns / 1e6 for ns in json.loads(out.strip().splitlines()[-1])]

    async def bus_latency(self) -> list[float]:
        proc = self._spawn("bus", str(self.latency_events), self.url)
        bus = make_bus(self.url)
        assert isinstance(bus, DistributedBus)
        await bus.connect()
        try:
            for _ in range(self.latency_events):
                bus.publish("bench.latency", {"sent": time.monotonic_ns(), **DATA})
                await asyncio.sleep(0.002)
        finally:
            await bus.close()
        return await asyncio.to_thread(self._collect, proc)

    async def raw_latency(self) -> list[float]:
        subject = f"{self.prefix}.bench.raw-latency"
        proc = self._spawn("raw", str(self.latency_events), NATS, self.stream, subject)
        nc = await nats.connect(NATS)
        js = nc.jetstream()
        try:
            for _ in range(self.latency_events):
                event = UniversalEvent(event_type="bench.raw-latency",
                                       data={"sent": time.monotonic_ns(), **DATA})
                await js.publish_async(subject, encode_event(event), stream=self.stream,
                                       headers={"Nats-Msg-Id": event.id})
                await asyncio.sleep(0.002)
            await nc.flush()
        finally:
            await nc.close()
        return await asyncio.to_thread(self._collect, proc)

    async def latency(self) -> list[Row]:
        ours = await self.bus_latency()
        raw = await self.raw_latency()
        rows = []
        for q, target in ((50, P50_TARGET_MS), (99, P99_TARGET_MS)):
            value, base = _percentile(ours, q), _percentile(raw, q)
            rows.append(Row(f"publish -> handler in another process, p{q}", value, "ms",
                            base, value / base if base else None, f"<= {target:g} ms",
                            value <= target))
        received = len(ours) / self.latency_events
        rows.append(Row("latency events received", 100 * received, "%", None, None,
                        "100 %", received == 1.0))
        return rows

    async def cleanup(self) -> None:
        transport = NatsTransport(self.url.split("&buffer", maxsplit=1)[0])
        await transport.connect()
        try:
            await transport.delete_stream()
        finally:
            await transport.close()

    async def run(self) -> list[Row]:
        try:
            return [*await self.throughput(), *await self.latency()]
        finally:
            await self.cleanup()


def _percentile(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> int:
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "distributed bus")
    if not _reachable(NATS):
        print(f"no NATS server at {NATS}: start one with `nats-server -js` or set "
              "LLMSPELL_TEST_NATS_URL", file=sys.stderr)
        return 2
    rows = asyncio.run(Bench(args.quick).run())
    return report("Distributed bus over NATS JetStream vs raw nats-py (same run, loopback)",
                  rows, args.json)


if __name__ == "__main__":
    sys.exit(main())
