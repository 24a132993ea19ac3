"""Crash consistency: a process killed with SIGKILL in the middle of publishing events, of
state writes, or of a recorded run leaves files that open, hold everything it was told was
committed, and show nothing half-written; a run whose process died is listed as
``interrupted``, not ``running`` for ever.

Each scenario kills its child several times at a random point (a random number of
confirmations after it began), reopening the file in this process after each kill.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from llmspell.core.process import this_process
from llmspell.runtime import StateScope, System, SystemConfig
from llmspell.runtime.runs.query import process_gone
from llmspell.runtime.state import SQLiteStateBackend

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")

_ROUNDS = 4


class _Child:
    """A child Python process whose stdout lines are read on a thread."""

    def __init__(self, code: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", code, *args], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout or ():
            if line.endswith("\n"):  # a line cut short by the kill was never confirmed
                self.lines.put(line.strip())

    def take(self, count: int) -> list[str]:
        """The next ``count`` lines (the test fails if the child stops first)."""
        got: list[str] = []
        deadline = time.monotonic() + 30
        while len(got) < count:
            try:
                got.append(self.lines.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                err = self.proc.stderr.read() if self.proc.poll() is not None else ""
                pytest.fail(f"the child confirmed only {len(got)} of {count} in time {err}")
        return got

    def kill(self) -> list[str]:
        """SIGKILL the child (no atexit, no final flush); the lines it wrote before."""
        assert self.proc.poll() is None, "the child ended before it was killed"
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.reader.join(timeout=10)
        assert self.proc.returncode == -signal.SIGKILL
        rest: list[str] = []
        while not self.lines.empty():
            line = self.lines.get()
            if line:
                rest.append(line)
        return rest


def _integrity_ok(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


# -- 1. publishing events ---------------------------------------------------------------------

_PUBLISHER = """
import hashlib, sys
from llmspell.events import EventBus
from llmspell.events.store import SQLiteStore

path, tag, durable = sys.argv[1], sys.argv[2], sys.argv[3] == "durable"
bus = EventBus(store=SQLiteStore(path))
i = 0
while True:
    data = {"tag": tag, "i": i, "pad": "x" * (i % 200),
            "digest": hashlib.sha256(f"{tag}:{i}".encode()).hexdigest()}
    bus.publish("crash.event", data, durable=durable)
    if durable:
        print(i, flush=True)                  # committed before this line runs
    elif i % 37 == 36:
        bus.flush()
        print(i, flush=True)                  # every event up to i is committed
    i += 1
"""


@pytest.mark.parametrize("mode", ["batched", "durable"])
def test_events_confirmed_before_a_sigkill_are_stored_whole_and_in_order(
        tmp_path: Path, mode: str) -> None:
    import hashlib

    path = tmp_path / "events.db"
    rng = random.Random()
    for round_ in range(_ROUNDS):
        tag = f"{mode}{round_}"
        child = _Child(_PUBLISHER, str(path), tag, mode)
        confirmed = child.take(rng.randint(5, 60))
        confirmed += child.kill()
        last = int(confirmed[-1])
        _integrity_ok(path)
        conn = sqlite3.connect(path)
        rows = [json.loads(payload)[0] for (payload,) in conn.execute(
            "SELECT payload FROM events WHERE event_type = 'crash.event' ORDER BY position")]
        conn.close()
        mine = [data for data in rows if data["tag"] == tag]
        numbers = [data["i"] for data in mine]
        # Every confirmed event is there; what is stored is a prefix of what was published
        # (batches commit whole and in order: no gap, no half-written batch), each row whole.
        assert numbers == list(range(len(numbers)))
        assert len(numbers) > last
        for data in mine:
            assert data["digest"] == hashlib.sha256(f"{tag}:{data['i']}".encode()).hexdigest()
            assert data["pad"] == "x" * (data["i"] % 200)


# -- 2. state writes: compare-and-set, deletes with tombstones ----------------------------------

_STATE_WRITER = """
import sys
from llmspell.runtime import StateScope
from llmspell.runtime.state import SQLiteStateBackend

backend = SQLiteStateBackend(sys.argv[1])
scope, sid = StateScope.GLOBAL, sys.argv[2]
j = 0
while True:
    j += 1
    entry = backend.get(scope, sid, "n")
    current = entry.version if entry is not None else 0
    if j % 5 == 0:  # empties the scope: its versions fold into a floor
        ok = backend.apply(scope, sid, {}, ["n", f"b{j - 1}"], ("n", current), 0.0)
        version = current
    elif j % 5 == 3:  # a plain compare-and-set delete: a tombstone
        ok = backend.delete(scope, sid, "n", current) is True
        ok = ok and backend.apply(scope, sid, {f"b{j}": j}, [f"b{j - 1}"], None, 0.0)
        version = current
    else:
        ok = backend.apply(scope, sid, {"n": {"j": j}, f"b{j}": j}, [f"b{j - 1}"],
                           ("n", current), 0.0)
        version = backend.get(scope, sid, "n").version
    assert ok, j
    print(j, version, flush=True)
"""


def _state_after(j: int) -> dict[str, Any]:
    """The scope's values once step ``j`` of the writer above committed."""
    if j == 0 or j % 5 == 0:
        return {}
    if j % 5 == 3:
        return {f"b{j}": j}
    return {"n": {"j": j}, f"b{j}": j}


def test_state_writes_survive_a_sigkill_whole_and_never_reuse_a_version(
        tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    SQLiteStateBackend(path).close()
    rng = random.Random()
    for round_ in range(_ROUNDS):
        sid = f"r{round_}"
        child = _Child(_STATE_WRITER, str(path), sid)
        confirmed = child.take(rng.randint(5, 120))
        confirmed += child.kill()
        steps = [tuple(int(x) for x in line.split()) for line in confirmed]
        last = steps[-1][0]
        _integrity_ok(path)
        backend = SQLiteStateBackend(path)
        try:
            values = {key: entry.value
                      for key, entry in backend.items(StateScope.GLOBAL, sid).items()}
            # The last confirmed step, or the one after it (committed, not yet confirmed),
            # or between that step's two transactions: never a half-written transaction.
            between = [{f"b{last}": last}] if (last + 1) % 5 == 3 else []
            assert values in (_state_after(last), _state_after(last + 1), *between), \
                (last, values)
            # Versions live on through the kill: the key's next version is past every one
            # the killed process saw, whether it is live, a tombstone or a floor.
            entry = backend.get(StateScope.GLOBAL, sid, "n")
            written = backend.put(StateScope.GLOBAL, sid, "n", "after",
                                  entry.version if entry else 0, 0.0)
            assert written is not None
            assert written.version > max(version for _, version in steps)
        finally:
            backend.close()


# -- 3. a recorded run whose process died ------------------------------------------------------

_RUNNER = """
import asyncio, sys
from llmspell.runtime import System, SystemConfig, tool

@tool()
def step(i: int) -> dict:
    \"\"\"One step.\"\"\"
    return {"i": i}

async def main(data_dir: str) -> None:
    async with System(SystemConfig(data_dir=data_dir)) as system:
        system.tools.register(step)
        async with system.runs.start("custom", "crashy", {"n": 1}) as run:
            system.bus.publish("crash.marker", {}, durable=True)  # run.started is stored
            print(run.run_id, flush=True)
            i = 0
            while True:
                await system.tools.execute("step", {"i": i})
                print(i, flush=True)
                i += 1
                await asyncio.sleep(0.002)

asyncio.run(main(sys.argv[1]))
"""


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLMSPELL_DATA_DIR": str(data_dir)}
    return subprocess.run([sys.executable, "-m", "llmspell", "runs", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_a_run_whose_process_was_killed_is_listed_as_interrupted(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    rng = random.Random()
    killed: list[str] = []
    for _ in range(_ROUNDS):
        child = _Child(_RUNNER, str(data_dir))
        run_id = child.take(1)[0]
        child.take(rng.randint(0, 30))
        child.kill()
        killed.append(run_id)
        _integrity_ok(data_dir / "events.db")

    async def check() -> None:
        async with System(SystemConfig(data_dir=data_dir)) as system:
            async with system.runs.start("custom", "alive", None) as alive:
                listed = {s.run_id: s.status for s in system.runs.list(limit=10)}
                # This process's own open run is running; the killed ones are not.
                assert listed[alive.run_id] == "running"
                for run_id in killed:
                    assert listed[run_id] == "interrupted"
                    assert system.runs.get(run_id).status == "interrupted"
                    recording = system.runs.recording(run_id)  # whole records only
                    assert recording.ended is None
                assert {s.run_id for s in system.runs.list(status="interrupted")} \
                    == set(killed)
                assert [s.run_id for s in system.runs.list(status="running")] \
                    == [alive.run_id]
            # A replay says the recording stops where the process died.
            result = await system.runs.replay(killed[0], mode="simulate",
                                              operation=lambda value: value)
            assert result.status == "completed"
            assert any("interrupted" in note and "died" in note for note in result.notes)

    asyncio.run(check())
    listing = _cli(data_dir, "list", "--status", "interrupted", "--json")
    assert listing.returncode == 0, listing.stderr
    assert {run["run_id"] for run in json.loads(listing.stdout)} == set(killed)
    shown = _cli(data_dir, "show", killed[0])
    assert shown.returncode == 0, shown.stderr
    assert "status     interrupted" in shown.stdout


def test_process_gone_tells_a_dead_or_reused_pid_from_a_live_one() -> None:
    me = this_process()
    assert not process_gone(me.host, me.pid, me.started)  # this process
    assert process_gone(me.host, me.pid, me.started - 100.0)  # a former process on my pid
    assert not process_gone("another-host", 1, 0.0)  # cannot be checked from here
    assert not process_gone(me.host, 0, 0.0)  # no pid recorded
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert not process_gone(me.host, child.pid, time.time())
        if Path("/proc/self/stat").exists():
            # The pid now belongs to a process started long after the recorded one.
            assert process_gone(me.host, child.pid, time.time() - 3600.0)
    finally:
        child.kill()
        child.wait(timeout=10)
    assert process_gone(me.host, child.pid, time.time())  # reaped: no such pid
