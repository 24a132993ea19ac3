"""The NATS server restarted under several publisher processes: every event whose durable
publish returned (the server accepted it) is in the stream afterwards, every event the
publishers buffered while the server was away is published once it returns, and none is
stored twice (retried publishes carry the event id as the message id)."""

from __future__ import annotations

import asyncio
import collections
import subprocess
import sys
from pathlib import Path

import pytest

from llmspell.events.transport.nats import NatsTransport
from tests.events.nats_support import OwnServer, eventually, own_server

__all__ = ["own_server"]  # fixtures

WORKER = Path(__file__).with_name("nats_restart_worker.py")
PUBLISHERS = 3
COUNT = 600


def _ids(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split() if path.exists() else []


async def test_publishers_recover_from_a_server_restart_and_lose_nothing_accepted(
        own_server: OwnServer, tmp_path: Path) -> None:
    url = f"{own_server.url}?namespace=restart&publish_timeout=1"
    files = [(tmp_path / f"acked-{n}", tmp_path / f"sent-{n}") for n in range(PUBLISHERS)]
    workers = [subprocess.Popen([sys.executable, str(WORKER), url, f"w{n}", str(COUNT),
                                 str(acked), str(sent)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
               for n, (acked, sent) in enumerate(files)]
    try:
        await eventually(lambda: all(len(_ids(acked)) >= 50 for acked, _ in files),
                         timeout=60, what="every publisher to be accepted 50 times")
        own_server.stop()                              # mid-stream, under every publisher
        stopped_at = [len(_ids(acked)) for acked, _ in files]
        assert all(n < COUNT for n in stopped_at), "the restart came too late"
        await asyncio.sleep(1.5)
        own_server.start()                             # same port, same store
        outputs = []
        for worker in workers:
            out, err = await asyncio.to_thread(worker.communicate, timeout=180)
            assert worker.returncode == 0, err[-3000:]
            outputs.append(out.split())
    finally:
        for worker in workers:
            worker.kill()
    # Each publisher: everything accepted in the end, nothing left unsent.
    assert all(o[0] == "done" and int(o[1]) == COUNT and int(o[2]) == 0 for o in outputs)
    transport = NatsTransport(f"{own_server.url}?namespace=restart")
    await transport.connect()
    try:
        stored = [d.event.id async for d in transport.replay("order.*")]
    finally:
        await transport.close()
    counts = collections.Counter(stored)
    assert not [i for i, n in counts.items() if n > 1], "an event was stored twice"
    for acked, sent in files:
        assert set(_ids(acked)) <= counts.keys()       # nothing accepted was lost
        assert set(_ids(sent)) <= counts.keys()        # the buffered ones were sent too
    assert len(stored) == PUBLISHERS * COUNT
    if all(len(_ids(acked)) == COUNT for acked, _ in files):
        pytest.fail("no publish waited for the server: the restart tested nothing")
