"""A tool's result is awaited when it is awaitable, whatever kind of awaitable it is (a
coroutine, a Future, an object with ``__await__``), within the tool's timeout; a plain
result is used as it is."""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import Any

import pytest

from llmspell.errors import ToolTimeoutError
from llmspell.runtime import System, SystemConfig, tool


class Deferred:
    """An awaitable that is neither a coroutine nor a Future."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, Any]:
        yield from asyncio.sleep(0).__await__()
        return self.value


class Later(dict):  # type: ignore[type-arg]
    """A dict subclass that is also awaitable: its awaited value is what counts."""

    def __await__(self) -> Generator[Any, None, Any]:
        yield from asyncio.sleep(0).__await__()
        return {"awaited": True}


@pytest.fixture
async def system() -> Any:
    made = System(SystemConfig(store="none"))
    await made.start()
    yield made
    await made.shutdown()


async def test_every_kind_of_awaitable_result_is_awaited(system: System) -> None:
    @tool("future")
    def future() -> Any:
        done = asyncio.get_running_loop().create_future()
        done.set_result({"from": "future"})
        return done

    @tool("deferred")
    def deferred() -> Any:
        return Deferred([1, 2])

    @tool("later")
    def later() -> Any:
        return Later(plain=True)

    @tool("plain")
    def plain() -> dict[str, int]:
        return {"n": 1}

    @tool("coroutine")
    async def coroutine() -> str:
        await asyncio.sleep(0)
        return "done"

    system.tools.register_all([future, deferred, later, plain, coroutine])
    assert await system.tools.execute("future", {}) == {"from": "future"}
    assert await system.tools.execute("deferred", {}) == [1, 2]
    assert await system.tools.execute("later", {}) == {"awaited": True}
    assert await system.tools.execute("plain", {}) == {"n": 1}
    assert await system.tools.execute("coroutine", {}) == "done"


async def test_an_awaitable_result_is_bounded_by_the_tool_timeout(system: System) -> None:
    @tool("slow", timeout=0.01)
    def slow() -> Any:
        return asyncio.sleep(5)  # a coroutine from a sync function

    system.tools.register(slow)
    with pytest.raises(ToolTimeoutError, match=r"timed out after 0\.01 s"):
        await system.tools.execute("slow", {})
