"""Each browser's bounded buffer: order, filtering, and summarising instead of growing."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from llmspell.events.event import UniversalEvent
from llmspell.events.pattern import compile_pattern
from llmspell.viewer.feed import MAX_SKIPPED_TYPES, PREVIEW_BYTES, Feed, encode_item


def item(cursor: int, event_type: str = "a.b", data: object = None):  # type: ignore[no-untyped-def]
    return encode_item(cursor, UniversalEvent.create(event_type, data))


def test_the_wire_form_has_the_event_and_its_position() -> None:
    event = UniversalEvent.create("tool.add.completed", {"result": 5},
                                  correlation_id="c1", source="llmspell.tools")
    wire = msgspec.json.decode(encode_item(42, event).wire)
    assert wire == {"p": 42, "t": "tool.add.completed", "ts": event.timestamp,
                    "d": {"result": 5}, "c": "c1", "s": "llmspell.tools"}


def test_large_data_is_sent_as_a_preview() -> None:
    wire = msgspec.json.decode(item(1, data={"text": "x" * 10_000}).wire)
    assert wire["x"] is True
    assert isinstance(wire["d"], str) and len(wire["d"]) <= PREVIEW_BYTES + 3


def test_items_come_out_in_order_and_only_matching_ones() -> None:
    feed = Feed(compile_pattern("tool.**").matches)
    for i, kind in enumerate(["tool.a.started", "agent.x", "tool.a.completed"], start=1):
        feed.push(item(i, kind))
    items, skipped = feed.take()
    assert [i.cursor for i in items] == [1, 3] and skipped is None
    assert feed.pushed == 2 and feed.depth == 0


def test_a_full_feed_drops_the_oldest_and_says_what_it_dropped() -> None:
    feed = Feed(max_items=10)
    for i in range(1, 26):
        feed.push(item(i, "tool.a.started" if i % 2 else "model.m.completed"))
    assert feed.depth == 10 and feed.dropped == 15
    items, skipped = feed.take()
    assert [i.cursor for i in items] == list(range(16, 26))
    assert skipped is not None
    summary = skipped.as_dict("behind")
    assert summary["count"] == 15 and (summary["from"], summary["to"]) == (1, 15)
    assert summary["types"] == {"tool.a.started": 8, "model.m.completed": 7}
    assert feed.take() == ([], None)


def test_the_byte_bound_holds_too() -> None:
    feed = Feed(max_items=1000, max_bytes=5000)
    for i in range(200):
        feed.push(item(i, data="y" * 200))
    assert feed.buffered_bytes <= 5000
    assert feed.dropped > 0


def test_the_summary_names_a_bounded_number_of_types() -> None:
    feed = Feed(max_items=1)
    for i in range(MAX_SKIPPED_TYPES + 10):
        feed.push(item(i, f"t.k{i}"))
    _, skipped = feed.take()
    assert skipped is not None
    assert len(skipped.types) == MAX_SKIPPED_TYPES + 1
    assert skipped.types["(other types)"] == 9


def test_take_respects_its_limits() -> None:
    feed = Feed()
    for i in range(10):
        feed.push(item(i))
    first, _ = feed.take(max_items=4)
    assert len(first) == 4 and feed.depth == 6
    one, _ = feed.take(max_bytes=1)
    assert len(one) == 1  # at least one, whatever its size


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="max_items"):
        Feed(max_items=0)


async def test_wait_returns_when_something_is_pushed() -> None:
    feed = Feed()

    async def later() -> None:
        await asyncio.sleep(0.01)
        feed.push(item(1))

    task = asyncio.create_task(later())
    await feed.wait(5.0)
    assert feed.has_data()
    await task
    feed.take()
    await feed.wait(0.01)  # nothing: returns after the timeout
    assert not feed.has_data()
