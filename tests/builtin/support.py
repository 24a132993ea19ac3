"""Fixtures the built-in hook tests share: a NATS KV bucket of a test's own and a local
OTLP/HTTP receiver (loopback only)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from llmspell.builtin.nats_counters import NatsCounters

__all__ = ["kv_url", "receiver"]


@pytest.fixture
def kv_url(nats_url: str) -> Iterator[str]:
    """The test server with a KV bucket (and namespace) of its own, deleted afterwards."""
    url = f"{nats_url}?namespace=t{uuid.uuid4().hex[:8]}&bucket=t-{uuid.uuid4().hex[:10]}"
    yield url
    cleaner = NatsCounters(url)
    try:
        asyncio.run(cleaner.delete_bucket())
    finally:
        cleaner.close()


class _Receiver(BaseHTTPRequestHandler):
    """Records every POST (path, content type, body) on the server object."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.posts.append(  # type: ignore[attr-defined]
            (self.path, self.headers.get("Content-Type"), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def receiver() -> Iterator[HTTPServer]:
    """An OTLP/HTTP collector on 127.0.0.1: ``server.posts`` lists what it was sent."""
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    server.posts = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
