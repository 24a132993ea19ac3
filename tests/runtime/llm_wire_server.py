"""A raw-socket HTTP/1.1 server on 127.0.0.1 that speaks the OpenAI chat-completions and
the Anthropic messages wire protocols, with and without ``stream: true``, for tests.

It is written on plain sockets (not http.server) so a test controls every byte and the
connection itself: chunked or close-delimited bodies, a connection closed mid-stream (even
inside a chunk), an abortive close (RST), a stall. By default it emulates both APIs
(an echo answer, a tool call when the user mentions a tool and tools are offered, usage
with cached and reasoning tokens); ``server.plans`` queues exact answers instead.

Usage::

    with LLMWireServer() as server:
        server.plans.append(Plan(parts=openai_sse([...]), end="cut"))
        provider = OpenAICompatibleProvider("m", base_url=server.url + "/v1")
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import pytest

__all__ = [
    "LLMWireServer",
    "Plan",
    "Request",
    "anthropic_sse",
    "anthropic_stream_events",
    "openai_sse",
    "openai_stream_chunks",
    "wire",
]

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 408: "Request Timeout",
            429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable",
            529: "Overloaded"}


@dataclass
class Request:
    """One request as received."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Plan:
    """How to answer one request.

    ``framing``: ``chunked`` (Transfer-Encoding: chunked, one chunk per part, the
    connection kept alive), ``length`` (Content-Length) or ``close`` (no length, the body
    ends when the connection closes). ``end``: ``complete``; ``cut`` (close the connection
    after the parts, without the chunked terminator); ``cut_inside_chunk`` (the last part's
    chunk header promises more bytes than are sent, then close); ``reset`` (abortive close,
    RST); ``stall`` (send the parts, then wait for ``server.release`` before closing).
    ``delay`` seconds between parts.
    """

    status: int = 200
    parts: list[bytes] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "text/event-stream"
    framing: str = "chunked"
    end: str = "complete"
    delay: float = 0.0


def openai_sse(chunks: list[dict[str, Any]], *, done: bool = True) -> list[bytes]:
    """The SSE parts of a chat-completions stream (``data: {json}``), then ``[DONE]``."""
    parts = [b"data: " + json.dumps(chunk).encode() + b"\n\n" for chunk in chunks]
    if done:
        parts.append(b"data: [DONE]\n\n")
    return parts


def anthropic_sse(events: list[dict[str, Any]]) -> list[bytes]:
    """The SSE parts of a Messages stream (``event: type`` + ``data: {json}``)."""
    return [
        f"event: {event['type']}\n".encode() + b"data: " + json.dumps(event).encode() + b"\n\n"
        for event in events
    ]


def openai_stream_chunks(body: dict[str, Any]) -> list[dict[str, Any]]:
    """What the emulated OpenAI server streams for a request (see :func:`_openai_reply`)."""
    model = body["model"] + "-0613"
    text, calls, finish = _openai_reply(body)

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}

    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks.extend(chunk({"content": word}) for word in _words(text or ""))
    for index, (call_id, name, arguments) in enumerate(calls):
        chunks.append(chunk({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                             "function": {"name": name, "arguments": ""}}]}))
        chunks.extend(
            chunk({"tool_calls": [{"index": index,
                                   "function": {"arguments": arguments[start:start + 5]}}]})
            for start in range(0, len(arguments), 5)
        )
    chunks.append(chunk({}, finish))
    chunks.append({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model,
                   "choices": [], "usage": _openai_usage(body)})
    return chunks


def anthropic_stream_events(body: dict[str, Any]) -> list[dict[str, Any]]:
    """What the emulated Anthropic server streams for a request."""
    text, calls, stop = _anthropic_reply(body)
    usage = _anthropic_usage()
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
            "content": [], "stop_reason": None,
            "usage": {**usage, "output_tokens": 1}}},
        {"type": "ping"},
    ]
    index = 0
    if text:
        events.append({"type": "content_block_start", "index": index,
                       "content_block": {"type": "text", "text": ""}})
        events.extend({"type": "content_block_delta", "index": index,
                       "delta": {"type": "text_delta", "text": word}} for word in _words(text))
        events.append({"type": "content_block_stop", "index": index})
        index += 1
    for call_id, name, arguments in calls:
        events.append({"type": "content_block_start", "index": index, "content_block": {
            "type": "tool_use", "id": call_id, "name": name, "input": {}}})
        events.extend(
            {"type": "content_block_delta", "index": index,
             "delta": {"type": "input_json_delta", "partial_json": arguments[i:i + 5]}}
            for i in range(0, len(arguments), 5)
        )
        events.append({"type": "content_block_stop", "index": index})
        index += 1
    events.append({"type": "message_delta", "delta": {"stop_reason": stop,
                                                      "stop_sequence": None},
                   "usage": {"output_tokens": usage["output_tokens"]}})
    events.append({"type": "message_stop"})
    return events


# -- the emulated answers ------------------------------------------------------------------


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]]


def _asks_for_tool(body: dict[str, Any], content: Any) -> bool:
    return bool(body.get("tools")) and isinstance(content, str) and "tool" in content


def _openai_reply(body: dict[str, Any]) -> tuple[str | None, list[tuple[str, str, str]], str]:
    last = body["messages"][-1]
    if last["role"] == "tool":
        return f"The result is {last['content']}.", [], "stop"
    if _asks_for_tool(body, last.get("content")):
        name = body["tools"][0]["function"]["name"]
        return None, [("call_abc", name, json.dumps({"expression": "6*7"}))], "tool_calls"
    return f"echo: {last['content']}", [], "stop"


def _anthropic_reply(body: dict[str, Any]) -> tuple[str | None, list[tuple[str, str, str]], str]:
    last = body["messages"][-1]
    content = last["content"]
    if isinstance(content, list) and content and content[0].get("type") == "tool_result":
        return "The results are " + ", ".join(b["content"] for b in content) + ".", [], "end_turn"
    if _asks_for_tool(body, content):
        return ("Let me compute that.",
                [("toolu_01", body["tools"][0]["name"], json.dumps({"expression": "6*7"}))],
                "tool_use")
    return f"echo: {content}", [], "end_turn"


def _openai_usage(body: dict[str, Any]) -> dict[str, Any]:
    prompt = 11 * len(body["messages"])
    return {"prompt_tokens": prompt, "completion_tokens": 7, "total_tokens": prompt + 7,
            "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 2}}


def _anthropic_usage() -> dict[str, int]:
    return {"input_tokens": 20, "output_tokens": 5, "cache_read_input_tokens": 3,
            "cache_creation_input_tokens": 2}


def _emulate(request: Request) -> Plan:
    body = request.body
    if request.path == "/v1/chat/completions":
        if body.get("stream"):
            return Plan(parts=openai_sse(openai_stream_chunks(body)))
        text, calls, finish = _openai_reply(body)
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = [
                {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                for i, n, a in calls
            ]
        answer: dict[str, Any] = {
            "id": "chatcmpl-1", "object": "chat.completion", "model": body["model"] + "-0613",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": _openai_usage(body),
        }
        return Plan(parts=[json.dumps(answer).encode()], content_type="application/json",
                    framing="length")
    if request.path == "/v1/messages":
        if body.get("stream"):
            return Plan(parts=anthropic_sse(anthropic_stream_events(body)))
        text, calls, stop = _anthropic_reply(body)
        content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
        content += [{"type": "tool_use", "id": i, "name": n, "input": json.loads(a)}
                    for i, n, a in calls]
        answer = {"id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
                  "content": content, "stop_reason": stop, "usage": _anthropic_usage()}
        return Plan(parts=[json.dumps(answer).encode()], content_type="application/json",
                    framing="length")
    return Plan(status=404, parts=[b'{"error": "no such route"}'],
                content_type="application/json", framing="length")


# -- the server ----------------------------------------------------------------------------


class LLMWireServer:
    """Listens on 127.0.0.1 (a free port) in a background thread, one thread per
    connection. ``requests`` records every request; ``plans`` (a deque) answers the next
    requests exactly, else the APIs are emulated; ``aborted`` counts answers the client
    hung up on; ``release`` ends a stall."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(32)
        self._sock.settimeout(0.05)
        self.port: int = self._sock.getsockname()[1]
        self.requests: list[Request] = []
        self.plans: deque[Plan] = deque()
        self.aborted = 0
        self.connections = 0
        self.release = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (append ``/v1`` for the OpenAI base_url)."""
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        """Forget requests and plans (between tests)."""
        with self._lock:
            self.requests.clear()
            self.plans.clear()
            self.aborted = 0
            self.release = threading.Event()

    def start(self) -> Self:
        """Start accepting connections."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, release stalls, close the socket."""
        self._stop.set()
        self.release.set()
        self._thread.join(5)
        self._sock.close()
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def wait_for_abort(self, count: int = 1, seconds: float = 5.0) -> bool:
        """Wait until the client has hung up on ``count`` answers (True) or give up."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.aborted >= count:
                return True
            time.sleep(0.01)
        return self.aborted >= count

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        buffer = b""
        try:
            while not self._stop.is_set():
                parsed = self._read_request(conn, buffer)
                if parsed is None:
                    return
                request, buffer = parsed
                with self._lock:
                    self.requests.append(request)
                    plan = self.plans.popleft() if self.plans else None
                if plan is None:
                    plan = _emulate(request)
                if not self._answer(conn, plan):
                    return
        except OSError:
            return
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    @staticmethod
    def _read_request(conn: socket.socket, buffer: bytes) -> tuple[Request, bytes] | None:
        while b"\r\n\r\n" not in buffer:
            data = conn.recv(65536)
            if not data:
                return None
            buffer += data
        head, _, rest = buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            data = conn.recv(65536)
            if not data:
                return None
            rest += data
        raw, rest = rest[:length], rest[length:]
        body = json.loads(raw) if raw else {}
        return Request(method, path, headers, body), rest

    def _answer(self, conn: socket.socket, plan: Plan) -> bool:
        """Send ``plan``; True when the connection stays open for another request."""
        reason = _REASONS.get(plan.status, "Status")
        head = [f"HTTP/1.1 {plan.status} {reason}", f"Content-Type: {plan.content_type}"]
        if plan.framing == "chunked":
            head.append("Transfer-Encoding: chunked")
        elif plan.framing == "length":
            head.append(f"Content-Length: {sum(len(p) for p in plan.parts)}")
        else:
            head.append("Connection: close")
        head.extend(f"{key}: {value}" for key, value in plan.headers.items())
        try:
            conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            for number, part in enumerate(plan.parts):
                if plan.delay and number:
                    time.sleep(plan.delay)
                last = number == len(plan.parts) - 1
                if plan.framing == "chunked":
                    if last and plan.end == "cut_inside_chunk":
                        conn.sendall(f"{len(part) * 2:x}\r\n".encode() + part)
                    else:
                        conn.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                else:
                    conn.sendall(part)
            if plan.end == "complete":
                if plan.framing == "chunked":
                    conn.sendall(b"0\r\n\r\n")
                return plan.framing != "close"
            if plan.end == "stall":
                self.release.wait(10)
            elif plan.end == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        except (BrokenPipeError, ConnectionResetError):
            with self._lock:
                self.aborted += 1
            return False


@pytest.fixture(scope="module")
def _wire() -> Iterator[LLMWireServer]:
    with LLMWireServer() as server:
        yield server


@pytest.fixture
def wire(_wire: LLMWireServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[LLMWireServer]:
    """The module's wire server, reset for a test, with no proxy between (loopback only)."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                 "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    _wire.reset()
    yield _wire
    _wire.release.set()
