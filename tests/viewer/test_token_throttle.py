"""Wrong tokens are throttled per client address: after ``max_failures`` wrong tokens an
address is refused with 429 and a ``Retry-After`` for a back-off that doubles with each
further wrong token (capped), even when it then presents the right token; the right token
after the back-off resets the address; the table of addresses is bounded. Before, a client
could guess tokens as fast as it could send requests. Time is a ManualClock throughout."""

from __future__ import annotations

import hmac
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.ci import require_module

require_module("starlette", install="llmspell[viewer]")
require_module("sse_starlette", install="llmspell[viewer]")
require_module("uvicorn", install="llmspell[viewer]")

from starlette.testclient import TestClient  # noqa: E402

from llmspell.core.clock import ManualClock  # noqa: E402
from llmspell.errors import InvalidValueError, LlmspellError  # noqa: E402
from llmspell.events.event import UniversalEvent  # noqa: E402
from llmspell.events.store.sqlite import SQLiteStore  # noqa: E402
from llmspell.viewer import StoreSource, ViewerServer, create_app  # noqa: E402
from llmspell.viewer.security import (  # noqa: E402
    ThrottleLimits,
    TokenThrottle,
    client_key,
    cookie_name,
)

TOKEN = "throttle-test-token-0123456789"
WRONG = "wrong-token-0123456789abcdef"
WAIT = 15.0  # a bound on waiting for a real server, never a measured duration
ROUTES = ["/", "/static/app.js", "/events", "/api/state", "/api/runs/r1",
          "/api/events/1", "/api/check"]
LIMITS = ThrottleLimits(max_failures=3, backoff=1.0, max_backoff=8.0)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("throttle") / "events.db"
    store = SQLiteStore(path)
    store.append(UniversalEvent.create("throttle.ready"))
    store.close()
    return path


class Viewer:
    """One app with a manual clock, and a client per address (no lifespan: the routes the
    tests reach through the guard need no hub)."""

    def __init__(self, store_path: Path, limits: ThrottleLimits = LIMITS) -> None:
        self.clock = ManualClock()
        self.app = create_app(StoreSource(store_path), token=TOKEN, throttle=limits,
                              clock=self.clock)

    def client(self, address: str = "203.0.113.7") -> TestClient:
        return TestClient(self.app, base_url="http://viewer.example", client=(address, 40000))

    @property
    def throttle(self) -> TokenThrottle:
        throttle = self.app.state.throttle
        assert isinstance(throttle, TokenThrottle)
        return throttle


@pytest.fixture
def viewer(store_path: Path) -> Viewer:
    return Viewer(store_path)


def wrong(client: TestClient, path: str = "/api/check", **kwargs: Any) -> httpx.Response:
    return client.get(path, params={"token": WRONG}, **kwargs)


def right(client: TestClient, path: str = "/api/check") -> httpx.Response:
    """The right token; the cookie it may set is dropped (it would let in later
    requests whatever token they give)."""
    answer = client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
    client.cookies.clear()
    return answer


def trip(client: TestClient) -> None:
    for _ in range(LIMITS.max_failures):
        assert wrong(client).status_code == 401


# -- the back-off --------------------------------------------------------------------------
def test_repeated_wrong_tokens_get_429_with_retry_after(viewer: Viewer) -> None:
    c = viewer.client()
    trip(c)
    refused = wrong(c)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert "token" not in refused.headers.get("set-cookie", "")
    assert refused.headers["x-frame-options"] == "DENY"  # the protective headers too
    assert WRONG not in refused.text and TOKEN not in refused.text


@pytest.mark.parametrize("credential", [
    {"params": {"token": WRONG}},
    {"headers": {"Authorization": f"Bearer {WRONG}"}},
    {"headers": {"X-Llmspell-Token": WRONG}},
    {"params": {"token": ""}},
])
def test_every_way_of_giving_a_wrong_token_counts(viewer: Viewer,
                                                  credential: dict[str, Any]) -> None:
    c = viewer.client()
    for _ in range(LIMITS.max_failures):
        assert c.get("/api/check", **credential).status_code == 401
    assert c.get("/api/check", **credential).status_code == 429


def test_the_back_off_doubles_and_is_capped(viewer: Viewer) -> None:
    c = viewer.client()
    trip(c)
    waits = []
    for _ in range(6):
        refused = wrong(c)
        assert refused.status_code == 429
        wait = int(refused.headers["retry-after"])
        waits.append(wait)
        viewer.clock.advance(wait)
        assert wrong(c).status_code == 401  # checked again once the wait is over: wrong
    assert waits == [1, 2, 4, 8, 8, 8]


def test_retry_after_counts_down(viewer: Viewer) -> None:
    c = viewer.client()
    trip(c)
    viewer.clock.advance(0.25)
    assert wrong(c).headers["retry-after"] == "1"  # rounded up, never 0
    viewer.clock.advance(0.75)
    assert wrong(c).status_code == 401


@pytest.mark.parametrize("path", ROUTES)
def test_the_right_token_is_refused_on_every_route_until_the_back_off_ends(
        viewer: Viewer, path: str) -> None:
    c = viewer.client()
    trip(c)
    refused = right(c, path)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert c.get(path, params={"token": TOKEN}).status_code == 429
    assert c.get(path, headers={"X-Llmspell-Token": TOKEN}).status_code == 429
    viewer.clock.advance(1)
    assert right(c).status_code == 200


def test_a_valid_cookie_is_refused_too_while_the_address_waits(viewer: Viewer) -> None:
    c = viewer.client()
    assert c.get("/", params={"token": TOKEN}).status_code == 200  # sets the cookie
    trip(viewer.client())  # the same address, guessing without the cookie
    assert c.get("/api/check").status_code == 429  # the cookie alone
    viewer.clock.advance(1)
    assert c.get("/api/check").status_code == 200


def test_the_event_stream_is_refused_while_the_address_waits(viewer: Viewer) -> None:
    c = viewer.client()
    for _ in range(LIMITS.max_failures):
        assert wrong(c, "/events").status_code == 401  # the stream counts wrong tokens
    refused = c.get("/events", params={"token": TOKEN}, headers={"accept": "text/event-stream"})
    assert refused.status_code == 429
    assert not refused.headers["content-type"].startswith("text/event-stream")


def test_success_resets_the_count(viewer: Viewer) -> None:
    c = viewer.client()
    for _ in range(LIMITS.max_failures - 1):
        assert wrong(c).status_code == 401
    assert right(c).status_code == 200
    for _ in range(LIMITS.max_failures):
        assert wrong(c).status_code == 401  # a fresh allowance
    assert wrong(c).status_code == 429


def test_after_a_back_off_success_starts_the_next_episode_afresh(viewer: Viewer) -> None:
    c = viewer.client()
    trip(c)
    viewer.clock.advance(1)
    wrong(c)
    viewer.clock.advance(2)
    assert right(c).status_code == 200
    trip(c)
    assert wrong(c).headers["retry-after"] == "1"  # not 4: the success reset it
    assert len(viewer.throttle) == 1


def test_the_count_is_forgotten_after_a_quiet_while(store_path: Path) -> None:
    viewer = Viewer(store_path, ThrottleLimits(max_failures=3, backoff=1.0, max_backoff=8.0,
                                               forget=60.0))
    c = viewer.client()
    for _ in range(2):
        assert wrong(c).status_code == 401
    viewer.clock.advance(60)
    for _ in range(2):
        assert wrong(c).status_code == 401  # a mistake an hour later starts again
    assert len(viewer.throttle) == 1


# -- who is counted ------------------------------------------------------------------------
def test_addresses_are_counted_apart(viewer: Viewer) -> None:
    trip(viewer.client("198.51.100.1"))
    assert wrong(viewer.client("198.51.100.1")).status_code == 429
    assert wrong(viewer.client("198.51.100.2")).status_code == 401
    assert right(viewer.client("198.51.100.2")).status_code == 200


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "127.0.0.2"])
def test_loopback_clients_are_throttled_too(viewer: Viewer, address: str) -> None:
    """A local reverse proxy forwards everyone from a loopback address: no exemption."""
    c = viewer.client(address)
    trip(c)
    assert right(c).status_code == 429


def test_an_ipv6_client_is_counted_by_its_64_prefix(viewer: Viewer) -> None:
    """One host usually holds a whole /64: rotating through it must not reset the count."""
    for i in range(LIMITS.max_failures):
        assert wrong(viewer.client(f"2001:db8:1:2::{i + 1:x}")).status_code == 401
    assert wrong(viewer.client("2001:db8:1:2:ffff::9")).status_code == 429
    assert wrong(viewer.client("2001:db8:1:3::1")).status_code == 401


def test_client_keys() -> None:
    assert client_key("203.0.113.7") == "203.0.113.7"
    assert client_key("::ffff:203.0.113.7") == "203.0.113.7"
    assert client_key("2001:db8:1:2::5") == client_key("2001:db8:1:2:aaaa::1")
    assert client_key("2001:db8:1:2::5") != client_key("2001:db8:1:3::5")
    assert len(client_key("x" * 10_000)) <= 100  # not an address: kept, but cut


def test_requests_without_a_token_or_with_a_stale_cookie_are_not_guesses(
        viewer: Viewer) -> None:
    """A page left open across a restart sends the old cookie until it renews it; the
    cookie is an HMAC under a key drawn at start, so guessing it is hopeless anyway."""
    c = viewer.client()
    stale = viewer.client()  # the same address, sending the old cookie
    stale.cookies.set(cookie_name(80), "0" * 64)
    for _ in range(LIMITS.max_failures * 3):
        assert c.get("/api/check").status_code == 401
        assert stale.get("/api/check").status_code == 401
    assert right(c).status_code == 200


def test_the_table_of_addresses_is_bounded(store_path: Path) -> None:
    viewer = Viewer(store_path, ThrottleLimits(max_failures=3, max_clients=16))
    for i in range(500):  # an attacker spraying addresses
        assert wrong(viewer.client(f"10.0.{i // 256}.{i % 256}")).status_code == 401
    assert len(viewer.throttle) == 16
    # the oldest were evicted, the newest kept
    assert viewer.throttle.failures("10.0.0.0") == 0
    assert viewer.throttle.failures("10.0.1.243") == 1


def test_a_throttled_address_is_kept_over_a_newer_quiet_one() -> None:
    clock = ManualClock()
    throttle = TokenThrottle(ThrottleLimits(max_failures=2, max_clients=4), clock=clock)
    for _ in range(2):
        throttle.failed("192.0.2.1")
    assert throttle.wait("192.0.2.1") > 0
    for i in range(2, 8):
        throttle.failed(f"192.0.2.{i}")
    assert len(throttle) == 4
    assert throttle.wait("192.0.2.1") > 0  # eviction takes the oldest address not waiting


def test_the_comparison_stays_constant_time(viewer: Viewer,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[bytes] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append(a)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    c = viewer.client()
    trip(c)
    assert WRONG.encode() in compared
    compared.clear()
    assert right(c).status_code == 429
    assert compared == []  # refused before any token is compared


# -- logging -------------------------------------------------------------------------------
def test_each_episode_is_logged_once_without_the_token(
        viewer: Viewer, caplog: pytest.LogCaptureFixture) -> None:
    c = viewer.client("198.51.100.9")
    with caplog.at_level(logging.INFO, logger="llmspell.viewer"):
        trip(c)
        for _ in range(50):
            assert wrong(c).status_code == 429
            assert right(c).status_code == 429
        first = [r for r in caplog.records if "198.51.100.9" in r.getMessage()]
        assert len(first) == 1
        assert first[0].levelno == logging.WARNING
        viewer.clock.advance(1)
        assert wrong(c).status_code == 401
        for _ in range(20):
            assert wrong(c).status_code == 429
    records = [r for r in caplog.records if "198.51.100.9" in r.getMessage()]
    assert len(records) == 2  # a second episode, one more line
    for record in caplog.records:
        text = record.getMessage()
        assert WRONG not in text and TOKEN not in text


# -- settings ------------------------------------------------------------------------------
def test_the_defaults() -> None:
    limits = ThrottleLimits()
    assert 3 <= limits.max_failures <= 20
    assert 0 < limits.backoff <= 5
    assert 30 <= limits.max_backoff <= 300
    assert 100 <= limits.max_clients <= 100_000
    assert limits.forget >= limits.max_backoff


@pytest.mark.parametrize("settings", [
    {"max_failures": 0}, {"max_failures": -1}, {"max_failures": True}, {"max_failures": 2.5},
    {"backoff": 0}, {"backoff": -1.0}, {"backoff": math.nan}, {"backoff": math.inf},
    {"backoff": "1"}, {"max_backoff": math.inf}, {"backoff": 10.0, "max_backoff": 5.0},
    {"max_clients": 0}, {"max_clients": 1.5}, {"forget": 0}, {"forget": math.nan},
])
def test_bad_settings_are_typed_errors_with_a_hint(settings: dict[str, Any]) -> None:
    with pytest.raises(InvalidValueError) as raised:
        ThrottleLimits(**settings)
    assert isinstance(raised.value, LlmspellError) and raised.value.hint


def test_create_app_refuses_a_throttle_that_is_not_limits(store_path: Path) -> None:
    with pytest.raises(InvalidValueError):
        create_app(StoreSource(store_path), token=TOKEN,
                   throttle={"max_failures": 3})  # type: ignore[arg-type]


# -- over a real server --------------------------------------------------------------------
@pytest.fixture
def served(store_path: Path) -> Iterator[tuple[ViewerServer, ManualClock]]:
    clock = ManualClock()
    server = ViewerServer(create_app(StoreSource(store_path, poll_interval=0.05), token=TOKEN,
                                     throttle=LIMITS, clock=clock),
                          "127.0.0.1", 0, graceful_timeout=1)
    server.start()
    yield server, clock
    server.stop()


def test_a_real_server_throttles_by_the_peer_address(
        served: tuple[ViewerServer, ManualClock]) -> None:
    server, clock = served
    with httpx.Client(timeout=WAIT) as client:
        for _ in range(LIMITS.max_failures):
            assert client.get(server.url + "api/check",
                              params={"token": WRONG}).status_code == 401
        refused = client.get(server.url + "events", headers={"X-Llmspell-Token": TOKEN})
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        clock.advance(1)
        with client.stream("GET", server.url + "events?tail=0",
                           headers={"X-Llmspell-Token": TOKEN}) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
