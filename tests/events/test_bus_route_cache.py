"""The bus's route cache is bounded and evicts by recency; counts stay exact through it (the
per-type counts of the types still listed, and the total)."""

from __future__ import annotations

from llmspell.events import EventBus, UniversalEvent


def test_a_full_route_cache_keeps_recently_used_types_and_exact_counts() -> None:
    bus = EventBus(route_cache_size=8)
    seen: list[str] = []
    bus.subscribe("t.*", lambda event: seen.append(event.event_type))
    for _ in range(3):
        bus.publish("t.hot")
    for i in range(40):
        bus.publish(f"t.cold{i}")
        bus.publish("t.hot")  # used between every sweep: never evicted
        assert len(bus._routes) <= 8
    assert "t.hot" in bus._routes
    assert len(seen) == 3 + 40 * 2
    stats = bus.stats()
    assert stats.by_type["t.hot"] == 43
    # The per-type counts are bounded like the cache: the oldest cold types are forgotten.
    cold = {t: n for t, n in stats.by_type.items() if t != "t.hot"}
    assert 0 < len(cold) <= 2 * 8 and set(cold.values()) == {1}
    assert stats.published == 83
    assert stats.subscriptions[0].delivered == 83


def test_an_evicted_route_is_resolved_again_with_current_subscriptions() -> None:
    bus = EventBus(route_cache_size=4)
    got: list[str] = []
    bus.subscribe("a.**", lambda event: got.append("a"))
    bus.publish(UniversalEvent(event_type="a.first"))
    for i in range(10):
        bus.publish(f"b.x{i}")
    assert "a.first" not in bus._routes
    bus.subscribe("*.first", lambda event: got.append("first"))
    bus.publish("a.first")
    assert got == ["a", "a", "first"]
    stats = bus.stats()
    # Its first count was forgotten with the cold types (the per-type counts are bounded
    # like the cache); the total keeps it.
    assert stats.by_type["a.first"] == 1 and stats.published == 12
