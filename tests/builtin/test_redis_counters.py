"""Shared counters in Redis (:class:`RedisCounters`), against the real server.

The tests talk to the Redis server at ``LLMSPELL_TEST_REDIS_URL`` (default
``redis://127.0.0.1:6379/0``; ``.ci/run`` checks that one answers, and starts one when none
does). A missing server (or redis-py) skips them locally and fails them in CI (tests/ci.py).
Every test writes under a prefix of its own, whose keys are deleted afterwards.

Covered: compare-and-set updates from many tasks, threads and backends add up exactly (and
a conflict runs ``change`` again on the fresh value); expiry with ``PX``; the sync and async
APIs; stored values the counter cannot use; an unreachable or silent server; credentials
never shown; rate limits and budgets shared by two systems.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from llmspell.builtin import CostConfig, CostTrackingHook, RateLimitConfig, RateLimitHook
from llmspell.builtin.cost import Budget, BudgetAlert, TokenPrice
from llmspell.builtin.counters import counter_key, shared_counters
from llmspell.builtin.redis_counters import RedisCounters
from llmspell.errors import (
    AgentError,
    ConfigurationError,
    InvalidValueError,
    OperationCancelled,
    SharedCounterError,
)
from llmspell.hooks import Cancel, HookExecutor, HookRegistry
from llmspell.hooks.context import ComponentId, HookContext
from llmspell.hooks.metadata import ErrorPolicy
from llmspell.hooks.points import HookPoint
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.providers import ScriptedProvider
from tests.ci import require_module, unavailable

REDIS_URL = os.environ.get("LLMSPELL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
MODEL = ComponentId(type="model", name="p/m")
PRICES = {"m": TokenPrice(input=Decimal(100_000), output=Decimal(0))}  # $0.10 per token


def _reachable(url: str, timeout: float = 1.0) -> bool:
    """Whether something accepts connections at ``url`` (TCP host and port, or a socket)."""
    parts = urllib.parse.urlsplit(url)
    try:
        if parts.scheme == "unix":
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(timeout)
                sock.connect(parts.path)
            return True
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379),
                                      timeout=timeout):
            return True
    except OSError:
        return False


@pytest.fixture
def redis_url() -> str:
    """The test server's URL (skip locally / fail in CI when nothing listens there)."""
    require_module("redis", install="redis (pip install 'llmspell[redis]')")
    if not _reachable(REDIS_URL):
        unavailable(f"no Redis server at {REDIS_URL}: start one with `redis-server` or set "
                    "LLMSPELL_TEST_REDIS_URL")
    return REDIS_URL


@pytest.fixture
def raw(redis_url: str) -> Iterator[Any]:
    """A plain (sync) redis-py client of the test server, to look at and spoil keys."""
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def prefix(raw: Any) -> Iterator[str]:
    """A prefix of this test's own; its keys are deleted afterwards."""
    name = f"llmspell-test:{uuid.uuid4().hex[:12]}:"
    yield name
    keys = list(raw.scan_iter(match=f"{name}*", count=1000))
    if keys:
        raw.delete(*keys)


@pytest.fixture
def backends(redis_url: str, prefix: str) -> Iterator[Any]:
    """Make backends on the test server and prefix (closed afterwards)."""
    made: list[RedisCounters] = []

    def make(**options: Any) -> RedisCounters:
        counters = RedisCounters(redis_url, prefix=prefix, **options)
        made.append(counters)
        return counters

    yield make
    for counters in made:
        counters.close()


def _add(value: Any) -> tuple[int, int]:
    new = (value or 0) + 1
    return new, new


# -- configuration ------------------------------------------------------------------------
def test_shared_makes_one_backend_per_redis_url() -> None:
    require_module("redis", install="redis (pip install 'llmspell[redis]')")
    one = shared_counters("redis://127.0.0.1:6379/0?prefix=t-shared:")
    assert isinstance(one, RedisCounters) and one.prefix == "t-shared:"
    assert shared_counters(" redis://127.0.0.1:6379/0?prefix=t-shared: ") is one
    assert shared_counters("redis://127.0.0.1:6379/1?prefix=t-shared:") is not one
    for url in ("rediss://127.0.0.1:6380/0", "unix:///tmp/no-redis-here.sock?db=2"):
        assert isinstance(shared_counters(url), RedisCounters)  # no connection yet
    assert shared_counters("unix:///tmp/no-redis-here.sock?db=2").url == \
        "unix:///tmp/no-redis-here.sock"
    with pytest.raises(InvalidValueError, match="a Redis URL") as error:
        shared_counters("memcached://bob:hunter2@cache:11211")
    assert "hunter2" not in str(error.value)


def test_options_of_the_url_and_bad_ones() -> None:
    require_module("redis", install="redis (pip install 'llmspell[redis]')")
    counters = RedisCounters("redis://127.0.0.1:6379/3?prefix=shop:&timeout=0.5"
                             "&max_attempts=5&socket_keepalive=true")
    assert (counters.prefix, counters.timeout, counters.max_attempts) == ("shop:", 0.5, 5)
    assert counters.url == "redis://127.0.0.1:6379/3"
    assert RedisCounters("redis://h", prefix="x:", timeout=1).prefix == "x:"
    with pytest.raises(ConfigurationError, match="not a valid float"):
        RedisCounters("redis://127.0.0.1:6379/0?timeout=soon")
    with pytest.raises(ConfigurationError, match="colour"):
        RedisCounters("redis://127.0.0.1:6379/0?colour=red")
    with pytest.raises(ConfigurationError, match="timeout must be"):
        RedisCounters("redis://127.0.0.1:6379/0", timeout=-1)
    with pytest.raises(ConfigurationError, match="starts with redis://"):
        RedisCounters("http://127.0.0.1:6379")
    with pytest.raises(ConfigurationError, match="prefix"):
        RedisCounters("redis://127.0.0.1:6379", prefix="a\nb")
    with pytest.raises(InvalidValueError, match="ttl"):
        counters.update_expiring_sync("k", _add, 0)
    with pytest.raises(InvalidValueError, match="invalid counter key"):
        counters.update_sync("", _add)
    counters.close()
    with pytest.raises(SharedCounterError, match="closed"):
        counters.read_sync("k")


async def test_credentials_never_appear(caplog: pytest.LogCaptureFixture) -> None:
    require_module("redis", install="redis (pip install 'llmspell[redis]')")
    caplog.set_level(logging.DEBUG)
    counters = RedisCounters("redis://bob-the-user:hunter2%21@127.0.0.1:1/0"
                             "?password=other-secret&timeout=1")
    try:
        with pytest.raises(SharedCounterError) as error:
            await counters.update("k", _add)
        shown = [counters.description, repr(counters), counters.url, str(error.value),
                 error.value.hint or "", caplog.text]
        for secret in ("hunter2", "bob-the-user", "other-secret"):
            assert not any(secret in text for text in shown), secret
        assert "127.0.0.1:1" in counters.description
    finally:
        counters.close()


# -- compare-and-set --------------------------------------------------------------------------
async def test_concurrent_updates_from_many_tasks_add_up(backends: Any) -> None:
    counters = backends()
    results = await asyncio.gather(*(counters.update("hits", _add) for _ in range(300)))
    assert sorted(results) == list(range(1, 301))     # each saw the one before it
    assert await counters.read("hits") == 300
    stats = counters.stats()
    assert stats.updates == 300 and stats.connected and stats.failures == 0


async def test_many_keys_at_once_share_a_bounded_set_of_connections(
        redis_url: str, prefix: str, raw: Any) -> None:
    name = f"llmspell-test-{uuid.uuid4().hex[:8]}"
    joiner = "&" if "?" in redis_url else "?"
    counters = RedisCounters(f"{redis_url}{joiner}client_name={name}", prefix=prefix)
    try:
        results = await asyncio.gather(*(counters.update(f"k{n}", _add) for n in range(200)))
        assert results == [1] * 200
        mine = [c for c in raw.client_list() if c.get("name") == name]
        assert 1 <= len(mine) <= 32                    # the rest waited for a free one
    finally:
        counters.close()


def test_two_backends_in_several_threads_lose_no_increment(backends: Any) -> None:
    pair = [backends(), backends()]                   # two "processes"
    errors: list[BaseException] = []

    def work(counters: RedisCounters) -> None:
        try:
            for _ in range(150):
                counters.update_sync("hits", _add)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(c,)) for c in pair * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert pair[0].read_sync("hits") == pair[1].read_sync("hits") == 600
    assert sum(c.stats().updates for c in pair) == 600


def test_a_conflict_runs_change_again_on_the_fresh_value(backends: Any) -> None:
    mine, other = backends(), backends()
    mine.update_sync("k", lambda v: (10, None))
    seen: list[Any] = []

    def change(value: Any) -> tuple[int, int]:
        seen.append(value)
        if len(seen) == 1:                              # another process writes meanwhile
            other.update_sync("k", lambda v: (v + 5, None))
        return value + 1, value + 1

    assert mine.update_sync("k", change) == 16
    assert seen == [10, 15]                             # pure change, run twice
    assert mine.read_sync("k") == 16
    assert mine.stats().conflicts == 1


def test_a_key_that_keeps_changing_is_a_typed_error(backends: Any) -> None:
    mine, other = backends(max_attempts=3), backends()
    calls = 0

    def change(value: Any) -> tuple[int, None]:
        nonlocal calls
        calls += 1
        other.update_sync("k", _add)                    # always someone faster
        return 0, None

    with pytest.raises(SharedCounterError, match="kept changing under 3 attempts") as error:
        mine.update_sync("k", change)
    assert error.value.hint and "Redis" in error.value.hint
    assert calls == 3 and mine.read_sync("k") == 3     # only the other's writes landed


# -- expiry and the APIs ----------------------------------------------------------------------
async def test_expiring_keys_carry_px_and_plain_writes_keep_them(
        backends: Any, raw: Any, prefix: str) -> None:
    counters = backends()
    assert await counters.update_expiring("bucket", _add, 30.0) == 1
    assert 29_000 < raw.pttl(f"{prefix}bucket") <= 30_000
    seconds, micros = raw.time()
    before_ms = seconds * 1000 + micros // 1000
    assert counters.update_expiring_sync("bucket", _add, 2.5) == 2
    expires_ms = raw.execute_command("PEXPIRETIME", f"{prefix}bucket")
    assert before_ms + 2500 <= expires_ms <= before_ms + 2500 + 5000  # never sooner than ttl
    await counters.update("kept", _add)
    await counters.update_expiring("kept", _add, 60.0)
    await counters.update("kept", _add)                 # a plain write keeps the key again
    assert raw.pttl(f"{prefix}kept") == -1
    await counters.update_expiring("forever", _add, 1e12)  # beyond a century: kept
    assert raw.pttl(f"{prefix}forever") == -1
    assert await counters.update_expiring("gone", _add, 0.05) == 1
    for _ in range(500):                               # Redis forgets it
        if await counters.read("gone") is None:
            break
        await asyncio.sleep(0.01)
    assert await counters.read("gone") is None
    assert await counters.update_expiring("gone", _add, 60.0) == 1  # starts afresh


def test_sync_and_async_apis_and_any_loop(backends: Any, raw: Any, prefix: str) -> None:
    counters = backends()
    assert counters.read_sync("x") is None
    assert counters.update_sync("x", lambda v: ({"n": [1, 2.5, "a"]}, "done")) == "done"
    assert counters.read_sync("x") == {"n": [1, 2.5, "a"]}
    assert raw.get(f"{prefix}x") == b'{"n":[1,2.5,"a"]}'   # JSON, readable by anyone

    async def use() -> Any:
        await counters.update("x", lambda v: ({**v, "m": True}, None))
        return await counters.read("x")

    assert asyncio.run(use()) == {"n": [1, 2.5, "a"], "m": True}   # one loop...
    assert asyncio.run(use()) == {"n": [1, 2.5, "a"], "m": True}   # ...and another
    asyncio.run(counters.delete("x"))
    assert counters.read_sync("x") is None and raw.exists(f"{prefix}x") == 0
    long_key = counter_key("rl", "u" * 5000)
    assert counters.update_sync(long_key, _add) == 1
    (stored,) = raw.keys(f"{prefix}rl.uuu*")
    assert len(stored) < 400 and b"=h" in stored
    with pytest.raises(InvalidValueError, match="JSON-able"):
        counters.update_sync("y", lambda v: (object(), None))
    with pytest.raises(ZeroDivisionError):              # the counter's own failure, as is
        counters.update_sync("y", lambda v: (1 // 0, None))
    assert counters.read_sync("y") is None


# -- bad stored values ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["not-json", "empty", "too-large", "a-hash", "unusable"])
def test_a_value_the_counter_cannot_use_is_a_typed_error_naming_the_key(
        backends: Any, raw: Any, prefix: str, kind: str) -> None:
    counters = backends()
    full = f"{prefix}spent"
    if kind == "not-json":
        raw.set(full, b"{oops")
    elif kind == "empty":
        raw.set(full, b"")
    elif kind == "too-large":
        raw.set(full, b"[" + b"1," * 40_000 + b"1]")
    elif kind == "a-hash":
        raw.hset(full, "a", "1")
    else:
        raw.set(full, b'"abc"')
    before = raw.dump(full)

    def add(value: Any) -> tuple[int, None]:
        return (value or 0) + 1, None                   # TypeError on a string

    calls = [lambda: counters.update_sync("spent", add)]
    if kind == "unusable":
        assert counters.read_sync("spent") == "abc"     # valid JSON: reading it is fine
    else:
        calls.append(lambda: counters.read_sync("spent"))
    for call in calls:
        with pytest.raises(SharedCounterError, match="cannot use") as error:
            call()
        assert repr(full) in str(error.value)
        assert error.value.hint and f"DEL '{full}'" in error.value.hint
    assert raw.dump(full) == before                     # left as it was for its owner to see
    raw.delete(full)
    assert counters.update_sync("spent", add) is None   # deleted: starts afresh
    assert counters.read_sync("spent") == 1


@pytest.mark.parametrize("policy", [ErrorPolicy.FAIL_OPEN, ErrorPolicy.FAIL_CLOSED])
async def test_a_spoiled_bucket_follows_the_hook_error_policy(
        backends: Any, raw: Any, prefix: str, policy: ErrorPolicy) -> None:
    counters = backends()
    registry = HookRegistry()
    RateLimitHook(RateLimitConfig(rate=1.0, burst=2, key="global"), shared=counters,
                  error_policy=policy).install(registry)
    executor = HookExecutor(registry)
    assert not isinstance((await executor.execute(_tool())).result, Cancel)
    (key,) = raw.keys(f"{prefix}*")
    raw.set(key, b"not json")
    outcome = await executor.execute(_tool())
    assert outcome.failures[0].error_type == "SharedCounterError"
    assert isinstance(outcome.result, Cancel) == (policy is ErrorPolicy.FAIL_CLOSED)
    assert raw.get(key) == b"not json"


# -- a server that cannot answer -----------------------------------------------------------------
def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_an_unreachable_server_is_a_typed_error_at_once() -> None:
    require_module("redis", install="redis (pip install 'llmspell[redis]')")
    counters = RedisCounters(f"redis://127.0.0.1:{_closed_port()}/0")
    try:
        with pytest.raises(SharedCounterError, match="cannot reach the server") as error:
            await counters.update("x", _add)
        assert error.value.hint and "Redis server runs there" in error.value.hint
        with pytest.raises(SharedCounterError, match="cannot reach"):
            counters.read_sync("x")
        assert counters.stats().failures == 2 and not counters.stats().connected
    finally:
        counters.close()


async def test_a_silent_server_times_out_then_fails_fast() -> None:
    require_module("redis", install="redis (pip install 'llmspell[redis]')")
    server = socket.create_server(("127.0.0.1", 0))   # accepts, never answers
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.05)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    counters = RedisCounters(f"redis://127.0.0.1:{server.getsockname()[1]}/0", timeout=0.3)
    try:
        with pytest.raises(SharedCounterError, match="no answer"):
            await counters.update("x", _add)
        tries = len(accepted)
        assert tries >= 1
        with pytest.raises(SharedCounterError, match="cannot reach"):  # no new attempt
            await counters.update("x", _add)
        assert len(accepted) == tries
    finally:
        counters.close()
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        server.close()


@pytest.mark.parametrize("policy", [ErrorPolicy.FAIL_OPEN, ErrorPolicy.FAIL_CLOSED])
async def test_an_unreachable_server_follows_the_hook_error_policy(policy: ErrorPolicy
                                                                   ) -> None:
    require_module("redis", install="redis (pip install 'llmspell[redis]')")
    counters = RedisCounters(f"redis://127.0.0.1:{_closed_port()}/0")
    try:
        registry = HookRegistry()
        RateLimitHook(RateLimitConfig(), shared=counters, error_policy=policy
                      ).install(registry)
        CostTrackingHook(CostConfig(prices=PRICES, budgets=(Budget(limit=Decimal(1)),)),
                         shared=counters, error_policy=policy).install(registry)
        executor = HookExecutor(registry)
        tool_outcome = await executor.execute(_tool())
        model_outcome = await executor.execute(HookContext(
            point=HookPoint.BEFORE_MODEL_CALL, component=MODEL,
            data={"provider": "p", "model": "m", "params": {"messages": []}}))
        for outcome in (tool_outcome, model_outcome):
            assert isinstance(outcome.result, Cancel) == (policy is ErrorPolicy.FAIL_CLOSED)
            assert outcome.failures[0].error_type == "SharedCounterError"
    finally:
        counters.close()


# -- hooks shared by two systems -----------------------------------------------------------------
def _tool() -> HookContext:
    return HookContext(point=HookPoint.BEFORE_TOOL_EXECUTION,
                       component=ComponentId(type="tool", name="search"),
                       data={"params": {"q": 1}}, metadata={"user": "ann"})


@tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


async def test_a_rate_limit_shared_by_two_systems(backends: Any) -> None:
    config = RateLimitConfig(rate=0.001, burst=3, key="global")  # 3 calls, then none
    async with System(SystemConfig(store="memory")) as one, \
            System(SystemConfig(store="memory")) as two:
        for system in (one, two):                       # a backend each: two "processes"
            system.tools.register(add)
            RateLimitHook(config, shared=backends()).install(system.registry)

        async def call(system: System) -> Any:
            try:
                return await system.tools.execute("add", {"a": 1, "b": 1})
            except OperationCancelled as exc:
                return exc.reason

        done = await asyncio.gather(*(call((one, two)[n % 2]) for n in range(10)))
    assert done.count(2) == 3
    assert all(isinstance(d, str) and "rate limit exceeded for 'global'" in d
               for d in done if d != 2)


async def test_a_budget_shared_by_two_systems(backends: Any) -> None:
    config = CostConfig(prices={"scripted/gpt-x": TokenPrice(input=Decimal(0),
                                                             output=Decimal(100_000))},
                        budgets=(Budget(limit=Decimal(3)),),       # $1 a call
                        default_max_tokens=10)
    alerts: list[BudgetAlert] = []
    hooks = [CostTrackingHook(config, shared=backends(), on_budget=alerts.append)
             for _ in range(2)]
    answers: list[Any] = []
    async with System(SystemConfig(store="memory")) as one, \
            System(SystemConfig(store="memory")) as two:
        agents = []
        for system, hook in zip((one, two), hooks, strict=True):
            hook.install(system.registry)
            agents.append(system.agents.create("a", provider=ScriptedProvider(
                lambda messages, tools: "a" * 40, model="gpt-x")))  # 10 output tokens
        for n in range(5):
            try:
                answers.append(await agents[n % 2].run("hi"))
            except (AgentError, OperationCancelled) as exc:   # at the model or the agent
                answers.append(str(exc))
    assert [isinstance(a, str) and "budget global (total)" in a for a in answers] == \
        [False, False, False, True, True]                # $3 spent of $3, then blocked
    for hook in hooks:
        status = hook.budget_status()[0]
        assert status.spent == Decimal(3) and status.blocking
    assert sorted(a.level for a in alerts) == ["critical", "info", "warning"]  # once each
