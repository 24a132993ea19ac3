"""The distributed bus across real processes, through the real NATS server.

Publishers in two and three worker processes reach one subscriber process with every pattern
kind; a durable subscription killed with SIGKILL mid-stream resumes in a new process with no
acked event lost or handled twice; an event that kills its handler's process every time is
parked once its deliveries are used up, never retried forever.
"""

from __future__ import annotations

import asyncio
import collections
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmspell.events.distributed import DistributedBus, make_bus
from tests.events.nats_support import WORKER, bus_url, eventually, namespace, nats_url

__all__ = ["namespace", "nats_url"]  # fixtures

TYPES = ["tool.calc.done", "tool.calculator.done", "tool.search.done", "tool.search.started",
         "tool", "tool.a.b.done", "agent.x.done"]
EXPECTED = {
    "tool.calc.done": {"tool.calc.done"},                                    # exact
    "tool.*.done": {"tool.calc.done", "tool.calculator.done", "tool.search.done"},  # '*'
    "tool.**": {"tool.calc.done", "tool.calculator.done", "tool.search.done",   # trailing **
                "tool.search.started", "tool", "tool.a.b.done"},
    "tool.**.done": {"tool.calc.done", "tool.calculator.done", "tool.search.done",  # middle **
                     "tool.a.b.done"},
    "tool.calc*.done": {"tool.calc.done", "tool.calculator.done"},           # in-segment glob
    "**": set(TYPES),
}
COUNT = 4


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(WORKER), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def _line(proc: subprocess.Popen[str], timeout: float = 60.0) -> str:
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), timeout)
    except TimeoutError:
        proc.kill()
        pytest.fail(f"worker {proc.args} said nothing for {timeout} s")
    if not line:
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"worker {proc.args} exited ({proc.returncode}): {err[-3000:]}")
    return line.strip()


def _finish(proc: subprocess.Popen[str], timeout: float = 60.0) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"worker {proc.args} failed ({proc.returncode}): {err[-3000:]}"
    return out


@pytest.mark.parametrize("publishers", [2, 3])
async def test_every_pattern_kind_reaches_a_subscriber_process_from_each_publisher(
        nats_url: str, namespace: str, tmp_path: Path, publishers: int) -> None:
    url = bus_url(nats_url, namespace)
    out = tmp_path / "received.json"
    subscriber = _spawn("subscribe", url, str(out), *EXPECTED)
    try:
        assert await _line(subscriber) == "ready"
        workers = [_spawn("publish", url, f"w{n}", str(COUNT), *TYPES)
                   for n in range(publishers)]
        for worker in workers:
            assert await _line(worker) == f"done {COUNT * len(TYPES)}"
            await asyncio.to_thread(_finish, worker)
        assert subscriber.stdin is not None
        subscriber.stdin.write("stop\n")
        subscriber.stdin.flush()
        await asyncio.to_thread(_finish, subscriber)
    finally:
        subscriber.kill()
    received = json.loads(out.read_text(encoding="utf-8"))
    for pattern, types in EXPECTED.items():
        want = sorted([t, f"w{n}", i] for t in types for n in range(publishers)
                      for i in range(COUNT))
        assert sorted(received[pattern]) == want, pattern   # each exactly once
        # Per publisher, in publish order.
        for n in range(publishers):
            mine = [r for r in received[pattern] if r[1] == f"w{n}"]
            assert [r[2] for r in mine] == sorted(r[2] for r in mine)


async def _publish_jobs(bus: DistributedBus, keys: range, event_type: str = "job.run") -> None:
    for k in keys:
        bus.publish(event_type, {"k": k})
    await eventually(lambda: bus.distributed_stats().buffered == 0, what="events accepted")


def _log(path: Path) -> list[int]:
    if not path.exists():
        return []
    return [int(line) for line in path.read_text(encoding="utf-8").split()]


async def test_a_durable_subscription_resumes_after_kill_9_without_losing_or_repeating_acked_events(
        nats_url: str, namespace: str, tmp_path: Path) -> None:
    url = bus_url(nats_url, namespace)
    log = tmp_path / "handled.log"
    publisher = make_bus(url)
    assert isinstance(publisher, DistributedBus)
    await publisher.connect()
    total = 400
    first = _spawn("durable", url, "jobs", "job.*", str(log), "1.5", "5")
    try:
        assert await _line(first) == "ready"
        await _publish_jobs(publisher, range(total))
        await eventually(lambda: len(_log(log)) >= 60, what="the first worker to start")
        first.kill()  # SIGKILL, mid-stream
        first.wait(10)
        before = _log(log)
        assert 0 < len(before) < total, "the kill came too late to test anything"

        second = _spawn("durable", url, "jobs", "job.*", str(log), "1.5", "5")
        try:
            assert await _line(second) == "ready"
            await eventually(lambda: set(_log(log)) == set(range(total)), timeout=60,
                             what="every event to be handled")
            # The worker logs an event before acking it: the one in flight at the kill can
            # be in the log already while its redelivery (after ack_wait) is still to come.
            # Stop the second worker only once the server has every ack.
            deadline = time.monotonic() + 30
            while (settled := await publisher.durable_state("jobs")).ack_pending or \
                    settled.pending:
                if time.monotonic() > deadline:
                    break  # the assertions below say what is left
                await asyncio.sleep(0.1)
            assert second.stdin is not None
            second.stdin.write("stop\n")
            second.stdin.flush()
            await asyncio.to_thread(_finish, second)
        finally:
            second.kill()
        state = await publisher.durable_state("jobs")
    finally:
        first.kill()
        await publisher.close()
    handled = _log(log)
    assert set(handled) == set(range(total))                      # nothing lost
    assert state.pending == 0 and state.ack_pending == 0 and state.ack_floor >= total
    repeated = [k for k, n in collections.Counter(handled).items() if n > 1]
    # The handler acks (and the server confirms) an event before it is handed the next
    # one: only the event in flight when the process died can come again.
    assert len(repeated) <= 1
    if repeated:
        assert repeated == [before[-1]]
        assert handled.count(before[-1]) == 2


async def test_an_event_that_keeps_killing_its_process_is_parked_not_retried_forever(
        nats_url: str, namespace: str, tmp_path: Path) -> None:
    url = bus_url(nats_url, namespace)
    log = tmp_path / "handled.log"
    publisher = make_bus(url)
    assert isinstance(publisher, DistributedBus)
    await publisher.connect()
    args = ("durable", url, "jobs", "job.*", str(log), "1", "2", "job.poison")
    try:
        worker = _spawn(*args)
        assert await _line(worker) == "ready"
        publisher.publish("job.run", {"k": 1})
        publisher.publish("job.poison", {"k": 2})
        publisher.publish("job.run", {"k": 3})
        # max_deliver=2: two handler attempts, each killing the process; the third delivery
        # (after the ack wait) is parked without calling the handler.
        for _ in range(2):
            await asyncio.to_thread(worker.wait, 60)
            assert worker.returncode == -9
            worker = _spawn(*args)
            assert await _line(worker) == "ready"
        await eventually(lambda: _log(log).count(3) == 1, timeout=30,
                         what="the event after the poison to be handled")
        for _ in range(1500):
            letters = await publisher.dead_letters("jobs")
            if letters:
                break
            await asyncio.sleep(0.02)
        assert worker.stdin is not None
        worker.stdin.write("stop\n")
        worker.stdin.flush()
        await asyncio.to_thread(_finish, worker)
    finally:
        worker.kill()
        await publisher.close()
    assert _log(log).count(2) == 2          # two attempts, then never again
    assert [(d.event.data if d.event else None, d.reason, d.error_type) for d in letters] == [
        ({"k": 2}, "no ack", "NoAck")]
    assert letters[0].deliveries == 3
