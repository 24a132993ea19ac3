"""A web security audit of the viewer against a real server on 127.0.0.1: DNS rebinding
(foreign ``Host`` headers), cross-origin and CSRF (no CORS, nothing but ``GET``), the
token (query, header, cookie attributes, many wrong guesses, which are throttled), the
headers that keep event text inert (CSP, nosniff, framing), resource exhaustion (huge
requests, connections that never finish their headers) and path traversal on the static
files. What got through
before: ``Host: [::1]evil.example`` and ``Host: localhost:x`` passed as loopback hosts, and
a connection that never sent a whole request was held open for ever, and a client could
guess tokens as fast as it could send them."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.ci import require_module

require_module("starlette", install="llmspell[viewer]")
require_module("sse_starlette", install="llmspell[viewer]")
require_module("uvicorn", install="llmspell[viewer]")

from llmspell.core.clock import ManualClock  # noqa: E402
from llmspell.events.event import UniversalEvent  # noqa: E402
from llmspell.events.store.sqlite import SQLiteStore  # noqa: E402
from llmspell.viewer import StoreSource, ThrottleLimits, ViewerServer, create_app  # noqa: E402
from llmspell.viewer.security import host_of, is_loopback  # noqa: E402

TOKEN = "audit-test-token-0123456789abcdef"
WAIT = 15.0  # a bound on waiting for the server, never a measured duration


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("audit") / "events.db"
    store = SQLiteStore(path)
    store.append(UniversalEvent.create("audit.ready", {"x": "<img src=x onerror=alert(1)>"}))
    store.close()
    return path


def serve(store_path: Path, **options: object) -> ViewerServer:
    token = options.pop("token", None)
    throttle = options.pop("throttle", None)
    clock = options.pop("clock", None)
    server = ViewerServer(create_app(StoreSource(store_path, poll_interval=0.05),
                                     token=token, throttle=throttle,  # type: ignore[arg-type]
                                     clock=clock),  # type: ignore[arg-type]
                          "127.0.0.1", 0, graceful_timeout=1, **options)  # type: ignore[arg-type]
    server.start()
    return server


@pytest.fixture(scope="module")
def served(store_path: Path) -> Iterator[ViewerServer]:
    server = serve(store_path)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def guarded(store_path: Path) -> Iterator[ViewerServer]:
    server = serve(store_path, token=TOKEN)
    yield server
    server.stop()


def raw(server: ViewerServer, request: bytes) -> tuple[int, bytes, bytes]:
    """Send ``request`` as it is (no client fixes its Host or path); (status, head, body),
    status 0 when the server cut the connection before answering."""
    answer = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as conn:
        try:
            conn.sendall(request)
            while chunk := conn.recv(65536):
                answer += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass  # refused while it was still sending
    head, _, body = answer.partition(b"\r\n\r\n")
    return (int(head.split(b" ", 2)[1]) if head else 0), head.lower(), body


def get(path: str, host: bytes = b"127.0.0.1", method: bytes = b"GET",
        extra: bytes = b"") -> bytes:
    return (method + b" " + path.encode() + b" HTTP/1.1\r\nHost: " + host + b"\r\n" + extra
            + b"Connection: close\r\n\r\n")


# -- DNS rebinding: a foreign Host ---------------------------------------------------------
@pytest.mark.parametrize("host", [
    b"evil.example", b"127.0.0.1.evil.example", b"localhost.evil.example", b"192.168.1.4",
    b"10.0.0.1:8787", b"2130706433", b"127.0.0.1@evil.example",
    b"[::1]evil.example", b"localhost:x", b"[::1]:80x",  # passed as loopback before
])
def test_a_foreign_host_is_refused(served: ViewerServer, host: bytes) -> None:
    status, _, body = raw(served, get("/api/state", host))
    assert status == 403 and b"loopback" in body
    assert not is_loopback(host_of(host.decode()))


def test_a_request_without_a_host_is_refused(served: ViewerServer) -> None:
    assert raw(served, b"GET /api/state HTTP/1.0\r\n\r\n")[0] == 403


@pytest.mark.parametrize("host", [b"127.0.0.1:%d", b"localhost:%d", b"[::1]:%d", b"127.0.0.1"])
def test_a_loopback_host_is_served(served: ViewerServer, host: bytes) -> None:
    assert raw(served, get("/api/state", host % served.port if b"%" in host else host))[0] == 200


# -- cross-origin: no CORS, nothing but GET ------------------------------------------------
@pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"TRACE"])
def test_only_get_is_answered_and_never_with_cors(served: ViewerServer, method: bytes) -> None:
    own = b"127.0.0.1:%d" % served.port
    for origin in (b"http://" + own, b"http://evil.example"):
        status, head, _ = raw(served, get("/events", own, method,
                                          b"Origin: " + origin + b"\r\n"
                                          b"Access-Control-Request-Method: POST\r\n"))
        assert status in (403, 405)
        assert b"access-control-" not in head


def test_a_cross_origin_stream_gets_no_cors_headers(served: ViewerServer) -> None:
    with httpx.stream("GET", served.url + "events", timeout=WAIT,
                      headers={"origin": "http://evil.example"}) as answer:
        assert answer.status_code == 403
        assert not any(name.startswith("access-control-") for name in answer.headers)


# -- the token ------------------------------------------------------------------------------
def test_the_token_opens_the_page_and_its_cookie_is_strict(guarded: ViewerServer) -> None:
    answer = httpx.get(guarded.url + f"?token={TOKEN}", timeout=WAIT)
    assert answer.status_code == 200
    cookie = answer.headers["set-cookie"]
    assert TOKEN not in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert answer.headers["referrer-policy"] == "no-referrer"  # the ?token= never leaks on
    assert httpx.get(guarded.url + "api/state", timeout=WAIT,
                     headers={"x-llmspell-token": TOKEN}).status_code == 200


def test_many_wrong_tokens_are_all_refused_and_throttled(store_path: Path) -> None:
    """Before, every guess was checked: a client could guess as fast as it could send.
    Now the first ``max_failures`` are checked (401), the rest refused unchecked (429),
    the right token too, until the wait the ``Retry-After`` names is over."""
    guesses = [TOKEN[:-1], TOKEN + "x", TOKEN.upper(), TOKEN[:-1] + "\u00e9", "", "x" + TOKEN,
               *(f"{TOKEN[:16]}{i:0{len(TOKEN) - 16}d}" for i in range(200))]
    clock = ManualClock()
    limits = ThrottleLimits()
    server = serve(store_path, token=TOKEN, throttle=limits, clock=clock)
    statuses: list[int] = []
    try:
        with httpx.Client(timeout=WAIT) as client:
            for guess in guesses:
                statuses.append(client.get(server.url + "api/state",
                                           params={"token": guess}).status_code)
                bearer = f"Bearer {guess}".strip().encode()
                answer = client.get(server.url + "api/state", headers={"authorization": bearer})
                statuses.append(answer.status_code)
            assert statuses == [401] * limits.max_failures \
                + [429] * (2 * len(guesses) - limits.max_failures)
            refused = client.get(server.url + "api/state",
                                 headers={"authorization": f"Bearer {TOKEN}"})
            assert refused.status_code == 429
            clock.advance(int(refused.headers["retry-after"]))
            assert client.get(server.url + "api/state",
                              headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
    finally:
        server.stop()


# -- event text stays inert --------------------------------------------------------------------
def test_every_answer_carries_the_protective_headers(served: ViewerServer) -> None:
    for path, status in (("", 200), ("static/app.js", 200), ("api/state", 200),
                         ("nowhere", 404), ("api/runs/%3Cscript%3E", 404)):
        answer = httpx.get(served.url + path, timeout=WAIT)
        assert answer.status_code == status, path
        csp = answer.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "unsafe-eval" not in csp and "frame-ancestors 'none'" in csp
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["x-frame-options"] == "DENY"
        assert not answer.headers["content-type"].startswith("text/html") or path == ""


def test_the_page_script_never_parses_text_as_markup() -> None:
    script = (Path(__file__).parents[2] / "src/llmspell/viewer/static/app.js").read_text()
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\("
                         r"|new Function|setTimeout\(\s*[\"']", script)


# -- resource exhaustion ---------------------------------------------------------------------
@pytest.mark.parametrize("request_bytes", [
    get("/api/state?pattern=" + "a" * 200_000),
    b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",
])
def test_a_huge_request_is_refused(served: ViewerServer, request_bytes: bytes) -> None:
    assert raw(served, request_bytes)[0] in (0, 400, 431)
    assert raw(served, get("/api/state"))[0] == 200


@pytest.fixture(scope="module")
def impatient(store_path: Path) -> Iterator[ViewerServer]:
    server = serve(store_path, header_timeout=0.3)
    yield server
    server.stop()


@pytest.mark.parametrize("sent", [
    b"",  # connects and says nothing
    b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1\r\n",  # headers never finished
    get("/api/state")[:-2].replace(b"Connection: close\r\n", b""),  # one \r\n short
])
def test_a_connection_that_never_sends_a_whole_request_is_closed(impatient: ViewerServer,
                                                                 sent: bytes) -> None:
    """Before, uvicorn held it open for ever, before any token was checked."""
    with socket.create_connection(("127.0.0.1", impatient.port), timeout=WAIT) as conn:
        conn.sendall(sent)
        assert conn.recv(100) == b""  # closed by the server (a timeout would raise)


def test_a_kept_alive_connection_is_closed_when_idle_after_its_answer(
        impatient: ViewerServer) -> None:
    with socket.create_connection(("127.0.0.1", impatient.port), timeout=WAIT) as conn:
        conn.sendall(b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        while b'"stats"' not in answer:
            answer += conn.recv(65536)
        conn.sendall(b"GET /api/state HTTP/1.1\r\n")  # the next request, never finished
        while conn.recv(65536):
            pass  # drained to the close (a timeout would raise)


def test_a_stream_outlives_the_header_timeout(impatient: ViewerServer) -> None:
    with httpx.stream("GET", impatient.url + "events?tail=0", timeout=WAIT) as answer:
        assert answer.status_code == 200
        kinds = []
        for line in answer.iter_lines():
            if line.startswith("event: "):
                kinds.append(line[7:])
            if kinds.count("stats") >= 3:  # stats come once a second: well past 0.3 s
                break
    assert kinds[:3] == ["hello", "runs", "stats"]


# -- path traversal on the static files --------------------------------------------------------
@pytest.mark.parametrize("path", [
    "/static/..%2fapp.py", "/static/%2e%2e/app.py", "/static/..%252fapp.py",
    "/static/..\\app.py", "/static/%2e%2e%5capp.py", "/static/../app.py",
    "/static/..%2f..%2f..%2fetc%2fpasswd", "/static//etc/passwd", "/static/app.js%00.py",
    "/static/%2fetc%2fpasswd", "/static/./app.js", "/static/APP.JS", "/../../etc/passwd",
])
def test_static_paths_outside_the_two_files_are_not_found(served: ViewerServer,
                                                          path: str) -> None:
    status, _, body = raw(served, get(path))
    assert status == 404
    assert b"import" not in body and b"root:" not in body


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "10", True])
def test_a_bad_header_timeout_is_refused(bad: object) -> None:
    from llmspell.errors import InvalidValueError

    with pytest.raises(InvalidValueError, match="header_timeout"):
        ViewerServer(object(), header_timeout=bad)  # type: ignore[arg-type]
