from __future__ import annotations

import random
import threading
import time

import pytest

from llmspell.core import Language
from llmspell.errors import DuplicateHookError, HookNotFoundError, InvalidValueError
from llmspell.hooks import (
    BaseHook,
    ErrorPolicy,
    HookExecutor,
    HookMetadata,
    HookPoint,
    HookRegistry,
    Priority,
    hook,
)

P = HookPoint.BEFORE_TOOL_EXECUTION


def noop(ctx):  # type: ignore[no-untyped-def]
    return None


def names(registry: HookRegistry, point: str = P) -> list[str]:
    return [e.name for e in registry.chain(point)]


def test_order_is_priority_then_registration() -> None:
    reg = HookRegistry()
    reg.register(P, noop, name="normal1")
    reg.register(P, noop, name="low", priority=Priority.LOW)
    reg.register(P, noop, name="highest", priority="highest")
    reg.register(P, noop, name="normal2", priority=0)
    reg.register(P, noop, name="minus5", priority=-5)
    reg.register(P, noop, name="lowest", priority="LOWEST")
    reg.register(P, noop, name="high", priority="high")
    assert names(reg) == ["highest", "high", "minus5", "normal1", "normal2", "low", "lowest"]
    assert Priority.HIGHEST < Priority.HIGH == -100 < Priority.NORMAL == 0 < Priority.LOW == 100


def test_duplicate_name_at_one_point_is_an_error_but_fine_elsewhere() -> None:
    reg = HookRegistry()
    reg.register(P, noop, name="audit")
    with pytest.raises(DuplicateHookError, match="audit"):
        reg.register("BeforeToolExecution", noop, name="audit")
    reg.register(HookPoint.AFTER_TOOL_EXECUTION, noop, name="audit")
    assert len(reg) == 2


def test_lambdas_get_unique_names() -> None:
    reg = HookRegistry()
    reg.register(P, lambda c: None)
    reg.register(P, lambda c: None)
    assert len(reg.chain(P)) == 2


def test_unregister_by_handle_and_by_name() -> None:
    reg = HookRegistry()
    h = reg.register(P, noop, name="a")
    reg.register(P, noop, name="b")
    reg.register(HookPoint.AFTER_TOOL_EXECUTION, noop, name="b")
    assert reg.unregister(h) == 1
    with pytest.raises(HookNotFoundError):
        reg.unregister(h)
    assert reg.unregister("b", point="before_tool_execution") == 1
    assert names(reg, HookPoint.AFTER_TOOL_EXECUTION) == ["b"]
    reg.register(P, noop, name="b")
    assert reg.unregister("b") == 2
    assert not reg.has_hooks(P)
    with pytest.raises(HookNotFoundError, match="nope"):
        reg.unregister("nope")
    with pytest.raises(InvalidValueError):
        reg.unregister(3)  # type: ignore[arg-type]


def test_enable_disable_one_and_all() -> None:
    reg = HookRegistry()
    a = reg.register(P, noop, name="a")
    reg.register(P, noop, name="b", enabled=False)
    assert names(reg) == ["a"]
    reg.enable("b")
    assert names(reg) == ["a", "b"]
    reg.disable(a)
    assert names(reg) == ["b"]
    reg.disable_all()
    assert reg.chain(P) == () and not reg.has_hooks(P)
    reg.enable_all(P)
    assert names(reg) == ["a", "b"]
    assert reg.get(a).enabled


def test_bulk_register_is_all_or_nothing() -> None:
    reg = HookRegistry()
    handles = reg.register_many([(P, noop, {"name": "a"}), ("AfterToolExecution", noop)])
    assert len(handles) == 2
    with pytest.raises(DuplicateHookError):
        reg.register_many([(P, noop, {"name": "c"}), (P, noop, {"name": "c"})])
    with pytest.raises(DuplicateHookError):
        reg.register_many([(P, noop, {"name": "d"}), (P, noop, {"name": "a"})])
    assert names(reg) == ["a"]


def test_list_filters_and_stats() -> None:
    reg = HookRegistry()
    reg.register(P, noop, name="a", tags=["security"], priority="high")
    reg.register(P, noop, name="b", language="lua", enabled=False)
    reg.register(HookPoint.AFTER_TOOL_EXECUTION, noop, name="c", language=Language.JAVASCRIPT,
                 priority=50)
    assert [i.name for i in reg.list()] == ["c", "a", "b"]
    assert [i.name for i in reg.list(P)] == ["a", "b"]
    assert [i.name for i in reg.list(language="lua")] == ["b"]
    assert [i.name for i in reg.list(tag="security")] == ["a"]
    assert [i.name for i in reg.list(priority="high")] == ["a"]
    assert [i.name for i in reg.list(priority=(0, 100))] == ["c", "b"]
    assert [i.name for i in reg.list(enabled=False)] == ["b"]
    stats = reg.stats()
    assert (stats.total, stats.enabled, stats.disabled, stats.points) == (3, 2, 1, 2)
    assert stats.by_point["before_tool_execution"] == 2
    assert stats.by_language == {"python": 1, "lua": 1, "javascript": 1}
    assert len(list(reg)) == 3
    reg.clear()
    assert len(reg) == 0 and reg.chains == {}


def test_decorators_and_hook_objects() -> None:
    reg = HookRegistry()

    @hook("BeforeToolExecution", priority="high", tags=["t"], error_policy="fail_closed",
          timeout=1.0, version="2.0", language="python", description="d")
    def decorated(ctx):  # type: ignore[no-untyped-def]
        return None

    @hook("BeforeToolExecution", "AfterToolExecution", name="both")
    def both(ctx):  # type: ignore[no-untyped-def]
        return None

    handle = reg.register(decorated)
    info = reg.get(handle)
    assert (info.name, info.priority, info.error_policy, info.timeout, info.version) == (
        "test_decorators_and_hook_objects.<locals>.decorated", -100, ErrorPolicy.FAIL_CLOSED,
        1.0, "2.0")
    assert len(reg.register_all(both)) == 2
    with pytest.raises(InvalidValueError, match="register_all"):
        reg.register(both)

    class Guard(BaseHook):
        def __init__(self) -> None:
            super().__init__(name="guard", priority=-1)

        def execute(self, ctx):  # type: ignore[no-untyped-def]
            return None

        def should_execute(self, ctx):  # type: ignore[no-untyped-def]
            return False

    reg.register(P, Guard())
    entry = next(e for e in reg.chain(P) if e.name == "guard")
    assert entry.should_execute is not None and entry.priority == -1

    class Plain(BaseHook):
        def execute(self, ctx):  # type: ignore[no-untyped-def]
            return None

    reg.register(P, Plain(HookMetadata(name="plain")), priority="low")
    plain = next(e for e in reg.chain(P) if e.name == "plain")
    assert plain.should_execute is None and plain.priority == 100

    @reg.on("AfterToolExecution", name="via_on")
    async def via_on(ctx):  # type: ignore[no-untyped-def]
        return None

    on_entry = next(e for e in reg.chain(HookPoint.AFTER_TOOL_EXECUTION) if e.name == "via_on")
    assert on_entry.is_async


def test_bad_registrations_explain_themselves() -> None:
    reg = HookRegistry()
    with pytest.raises(InvalidValueError, match="not a hook"):
        reg.register(P, 42)
    with pytest.raises(InvalidValueError, match="needs a point"):
        reg.register(noop)
    with pytest.raises(InvalidValueError, match=r"\(ctx, extra\) cannot be called with the hook"):
        reg.register(P, lambda ctx, extra: None)
    with pytest.raises(InvalidValueError, match="cannot be called with the hook context"):
        reg.register(P, lambda: None)
    other = HookRegistry()
    assert other.register(P, lambda *args: None, name="star")  # one argument binds
    assert other.register(P, print, name="builtin")  # no signature: judged at dispatch
    with pytest.raises(InvalidValueError, match="priority"):
        reg.register(P, noop, priority="urgent")
    with pytest.raises(InvalidValueError, match="error policy"):
        reg.register(P, noop, error_policy="explode")
    with pytest.raises(InvalidValueError, match="timeout"):
        reg.register(P, noop, timeout=0)
    with pytest.raises(InvalidValueError, match="tags"):
        reg.register(P, noop, tags="security")
    with pytest.raises(InvalidValueError):
        reg.register(3, noop)
    with pytest.raises(InvalidValueError):
        reg.register(P, noop, priority=True)
    with pytest.raises(InvalidValueError, match="not decorated"):
        reg.register_all(noop)
    assert len(reg) == 0


def test_change_listener_is_called() -> None:
    reg = HookRegistry()
    calls: list[int] = []
    reg.add_change_listener(lambda: calls.append(reg.version))
    reg.register(P, noop, name="a")
    reg.unregister("a")
    assert len(calls) == 2 and calls[1] > calls[0]


def test_concurrent_writers_and_a_dispatcher_lose_nothing(make_ctx) -> None:  # type: ignore[no-untyped-def]
    """Eight threads register and unregister while another dispatches."""
    reg = HookRegistry()
    executor = HookExecutor(reg, breaker=False, monitor=False)
    stop = threading.Event()
    errors: list[str] = []
    kept: dict[int, list[str]] = {}

    def writer(w: int) -> None:
        rng = random.Random(w)
        mine: list[str] = []
        for i in range(300):
            name = f"w{w}-{i}"
            reg.register(P, noop, name=name, priority=rng.randint(-50, 50))
            mine.append(name)
            if rng.random() < 0.5:
                victim = mine.pop(rng.randrange(len(mine)))
                reg.unregister(victim, point=P)
        kept[w] = mine

    def reader() -> None:
        ctx = make_ctx()
        while not stop.is_set():
            chain = reg.chain(P)
            keys = [(e.priority, e.seq) for e in chain]
            if keys != sorted(keys):
                errors.append("chain out of order")
            executor.execute_sync(ctx)
            time.sleep(0)  # let writers in: under coverage tracing a spinning reader starves them

    reader_thread = threading.Thread(target=reader)
    reader_thread.start()
    writers = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    reader_thread.join()
    assert errors == []
    expected = {name for names_ in kept.values() for name in names_}
    assert {e.name for e in reg.chain(P)} == expected
    assert len(reg) == len(expected)


def test_metadata_accepts_string_forms_and_refuses_bad_ones() -> None:
    meta = HookMetadata(name="m", priority="high", error_policy="fail_closed",  # type: ignore[arg-type]
                        language="lua", tags=["a"])  # type: ignore[arg-type]
    assert meta.priority == -100 and meta.error_policy is ErrorPolicy.FAIL_CLOSED
    assert meta.language is Language.LUA and meta.tags == frozenset({"a"})
    with pytest.raises(InvalidValueError, match="error policy"):
        HookMetadata(name="m", error_policy="explode")  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="name"):
        HookMetadata(name="")
    with pytest.raises(InvalidValueError, match="timeout"):
        HookMetadata(name="m", timeout=-1)
    with pytest.raises(InvalidValueError, match="priority"):
        HookMetadata(name="m", priority=[1])  # type: ignore[arg-type]
    assert HookMetadata(name="m", priority="-7").priority == -7  # type: ignore[arg-type]


def test_unknown_registration_options_are_refused() -> None:
    reg = HookRegistry()
    with pytest.raises(InvalidValueError, match="colour"):
        reg.register_many([(P, noop, {"colour": "red"})])


def test_change_listeners_run_after_the_lock_is_released() -> None:
    reg = HookRegistry()
    finished: list[bool] = []

    def listener() -> None:
        # Another thread must be able to use the registry while we are being told.
        worker = threading.Thread(target=lambda: finished.append(bool(reg.list())))
        worker.start()
        worker.join(2)
        finished.append(not worker.is_alive())

    reg.add_change_listener(listener)
    reg.register(P, noop, name="a")
    assert finished == [True, True]
