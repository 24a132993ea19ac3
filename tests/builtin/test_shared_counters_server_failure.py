"""Shared counters (:class:`RedisCounters`, :class:`NatsCounters`) when their server fails.

Every test starts its own ``redis-server`` or ``nats-server -js`` on a free port and stops,
freezes (SIGSTOP) or restarts it; the machine's shared servers are never touched. A missing
server binary (or client library) skips the tests locally and fails them in CI
(tests/ci.py).

Covered: a server gone mid-run and back (typed errors, then the same backend works again
without a restart of the app); a restart without the data (the counts start afresh: a
budget resets; NATS makes its bucket again instead of failing for ever); a server that
accepts connections but never answers (bounded, typed, and then fails fast); wrong
credentials name the login; a Redis database that is no number; the hooks' error policy
when the server dies mid-run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from llmspell.builtin import CostConfig, CostTrackingHook, RateLimitConfig, RateLimitHook
from llmspell.builtin.cost import Budget, TokenPrice
from llmspell.errors import ConfigurationError, SharedCounterError
from llmspell.hooks import Cancel, HookExecutor, HookRegistry
from llmspell.hooks.context import ComponentId, HookContext
from llmspell.hooks.metadata import ErrorPolicy
from llmspell.hooks.points import HookPoint
from tests.ci import require_module, unavailable
from tests.events.nats_support import OwnServer, free_port, reachable, server_binary


def _add(value: Any) -> tuple[int, int]:
    new = (value or 0) + 1
    return new, new


def _until(attempt: Callable[[], Any], what: str, limit: float = 20.0) -> Any:
    """``attempt()``'s result once it stops raising ``SharedCounterError`` (a failure of
    the test after ``limit`` seconds)."""
    deadline = time.monotonic() + limit
    while True:
        try:
            return attempt()
        except SharedCounterError as exc:
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: still failing ({exc})")
            time.sleep(0.1)


# -- a private Redis -----------------------------------------------------------------------------
class OwnRedis:
    """A private, non-persistent ``redis-server`` on a free port."""

    def __init__(self, *options: str) -> None:
        binary = shutil.which("redis-server") or next(
            (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server")
             if os.path.exists(p)), None)
        if binary is None:
            unavailable("no redis-server executable (apt-get install redis-server)")
        self.binary = binary
        self.options = options
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", *self.options],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while not reachable(self.url, 0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # in case a test froze it
            self.proc.kill()
            self.proc.wait(15)
        self.proc = None


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    require_module("redis", install="redis (pip install 'llmspell[redis]')")
    server = OwnRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _redis(url: str, **options: Any) -> Any:
    from llmspell.builtin.redis_counters import RedisCounters

    return RedisCounters(url, **options)


def test_redis_gone_mid_run_is_a_typed_error_and_back_without_a_restart(
        own_redis: OwnRedis) -> None:
    counters = _redis(own_redis.url, timeout=1.0)
    try:
        assert [counters.update_sync("k", _add) for _ in range(3)] == [1, 2, 3]
        own_redis.stop()
        with pytest.raises(SharedCounterError, match="cannot reach the server") as error:
            counters.update_sync("k", _add)
        assert error.value.hint and "Redis server runs there" in error.value.hint
        own_redis.start()  # no data: --save '' and no AOF
        # The same backend works again, and the count starts afresh (a budget resets).
        assert _until(lambda: counters.update_sync("k", _add), "Redis back") == 1
        assert counters.stats().connected
    finally:
        counters.close()


def test_redis_frozen_server_is_bounded_and_typed(own_redis: OwnRedis) -> None:
    counters = _redis(own_redis.url, timeout=0.5)
    try:
        assert counters.update_sync("k", _add) == 1
        assert own_redis.proc is not None
        own_redis.proc.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(SharedCounterError, match=r"no answer in 0\.5 s"):
                counters.update_sync("k", _add)
            with pytest.raises(SharedCounterError, match="no answer"):
                counters.read_sync("k")
        finally:
            own_redis.proc.send_signal(signal.SIGCONT)
        assert _until(lambda: counters.read_sync("k"), "Redis thawed") in (1, 2)
    finally:
        counters.close()


def test_redis_wrong_password_says_the_login_was_refused() -> None:
    require_module("redis", install="redis (pip install 'llmspell[redis]')")
    server = OwnRedis("--requirepass", "right-one")
    server.start()
    try:
        for url in (server.url, f"redis://:wrong-one@127.0.0.1:{server.port}/0"):
            counters = _redis(url, timeout=1.0)
            try:
                with pytest.raises(SharedCounterError, match="refused the login") as error:
                    counters.update_sync("k", _add)
                assert error.value.hint and "password" in error.value.hint
                assert "wrong-one" not in str(error.value)
                with pytest.raises(SharedCounterError, match="refused the login"):
                    counters.update_sync("k", _add)  # the next second: at once, same words
            finally:
                counters.close()
        counters = _redis(f"redis://:right-one@127.0.0.1:{server.port}/0")
        try:
            assert counters.update_sync("k", _add) == 1
        finally:
            counters.close()
    finally:
        server.stop()


def test_redis_database_that_is_no_number_is_a_configuration_error() -> None:
    require_module("redis", install="redis (pip install 'llmspell[redis]')")
    with pytest.raises(ConfigurationError, match="database") as error:
        _redis("redis://127.0.0.1:1/shop")  # redis-py would use db 0
    assert error.value.hint and "/0" in error.value.hint
    _redis("redis://127.0.0.1:1/3").close()
    _redis("redis://127.0.0.1:1").close()


@pytest.mark.parametrize("policy", [ErrorPolicy.FAIL_OPEN, ErrorPolicy.FAIL_CLOSED])
async def test_hooks_follow_their_error_policy_when_redis_dies_mid_run(
        own_redis: OwnRedis, policy: ErrorPolicy) -> None:
    counters = _redis(own_redis.url, timeout=1.0)
    try:
        registry = HookRegistry()
        RateLimitHook(RateLimitConfig(), shared=counters, error_policy=policy
                      ).install(registry)
        prices = {"m": TokenPrice(input=Decimal(1), output=Decimal(0))}
        CostTrackingHook(CostConfig(prices=prices, budgets=(Budget(limit=Decimal(1)),)),
                         shared=counters, error_policy=policy).install(registry)
        executor = HookExecutor(registry)
        tool = HookContext(point=HookPoint.BEFORE_TOOL_EXECUTION,
                           component=ComponentId(type="tool", name="search"),
                           data={"params": {}})
        model = HookContext(point=HookPoint.BEFORE_MODEL_CALL,
                            component=ComponentId(type="model", name="p/m"),
                            data={"provider": "p", "model": "m", "params": {"messages": []}})
        assert not isinstance((await executor.execute(tool)).result, Cancel)
        own_redis.stop()
        for context in (tool, model):
            outcome = await executor.execute(context)
            assert isinstance(outcome.result, Cancel) == (policy is ErrorPolicy.FAIL_CLOSED)
            assert outcome.failures[0].error_type == "SharedCounterError"
    finally:
        counters.close()


# -- a private NATS ------------------------------------------------------------------------------
@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[OwnServer]:
    require_module("nats", install="nats-py (pip install 'llmspell[nats]')")
    server = OwnServer(server_binary(), tmp_path / "jetstream")
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None:
            server.proc.send_signal(signal.SIGCONT)
        server.stop()


def _nats(url: str, **options: Any) -> Any:
    from llmspell.builtin.nats_counters import NatsCounters

    return NatsCounters(url, **options)


def test_nats_gone_mid_run_is_a_typed_error_and_back_with_its_counts(
        own_nats: OwnServer) -> None:
    counters = _nats(own_nats.url, timeout=1.0)
    try:
        assert [counters.update_sync("k", _add) for _ in range(3)] == [1, 2, 3]
        own_nats.stop()
        with pytest.raises(SharedCounterError):
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # until the client notices the loss
                counters.update_sync("k", _add)
        own_nats.start()  # the same store: the bucket and its counts are kept
        value = _until(lambda: counters.update_sync("k", _add), "NATS back")
        assert value >= 4  # an update that timed out may have been applied after all
    finally:
        counters.close()


def test_nats_restarted_without_its_store_makes_the_bucket_again(
        own_nats: OwnServer) -> None:
    counters = _nats(own_nats.url, timeout=1.0)
    try:
        assert [counters.update_sync("k", _add) for _ in range(3)] == [1, 2, 3]
        own_nats.stop()
        shutil.rmtree(own_nats.store)
        own_nats.start()  # a server that lost its data: no bucket any more
        # The counters start afresh (a budget resets) rather than failing for ever.
        assert _until(lambda: counters.read_sync("k"), "NATS bucket made again") is None
        assert _until(lambda: counters.update_sync("k", _add), "NATS update") == 1
        assert counters.update_sync("k", _add) == 2
    finally:
        counters.close()


def test_nats_restarted_without_its_store_update_first(own_nats: OwnServer) -> None:
    counters = _nats(own_nats.url, timeout=1.0)
    try:
        assert counters.update_sync("k", _add) == 1
        own_nats.stop()
        shutil.rmtree(own_nats.store)
        own_nats.start()
        assert _until(lambda: counters.update_sync("k", _add), "NATS update") == 1
    finally:
        counters.close()


def test_nats_server_that_never_answers_fails_fast_after_timeout(
        own_nats: OwnServer) -> None:
    assert own_nats.proc is not None
    own_nats.proc.send_signal(signal.SIGSTOP)  # accepts connections, answers nothing
    counters = _nats(own_nats.url, timeout=0.5)
    try:
        with pytest.raises(SharedCounterError, match=r"cannot reach the server \(no answer"):
            counters.update_sync("k", _add)
        # Within the next second: at once, without another try (was: every update waited
        # timeout + 1 s and said only "no answer in time").
        with pytest.raises(SharedCounterError, match="cannot reach the server"):
            counters.update_sync("k", _add)
        own_nats.proc.send_signal(signal.SIGCONT)
        assert _until(lambda: counters.update_sync("k", _add), "NATS thawed") == 1
    finally:
        own_nats.proc.send_signal(signal.SIGCONT)
        counters.close()


def test_nats_wrong_credentials_say_the_login_was_refused(tmp_path: Path) -> None:
    require_module("nats", install="nats-py (pip install 'llmspell[nats]')")
    port = free_port()
    proc = subprocess.Popen(
        [server_binary(), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd",
         str(tmp_path / "js"), "--user", "bob", "--pass", "right-one"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while not reachable(f"nats://127.0.0.1:{port}", 0.2):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        for url in (f"nats://127.0.0.1:{port}", f"nats://bob:wrong-one@127.0.0.1:{port}"):
            counters = _nats(url, timeout=1.0)
            try:
                with pytest.raises(SharedCounterError, match="refused the login") as error:
                    counters.update_sync("k", _add)
                assert error.value.hint and "credentials" in error.value.hint
                assert "wrong-one" not in str(error.value)
                with pytest.raises(SharedCounterError, match="refused the login"):
                    counters.update_sync("k", _add)  # the next second: at once
            finally:
                counters.close()
        counters = _nats(f"nats://bob:right-one@127.0.0.1:{port}")
        try:
            assert counters.update_sync("k", _add) == 1
        finally:
            counters.close()
    finally:
        proc.kill()
        proc.wait(15)
