"""Bus metrics keep a bounded history however many event types there are, and the rates
still divide by the time they really span."""

from __future__ import annotations

import pytest

from llmspell.core.clock import ManualClock
from llmspell.events import EventBus
from llmspell.events.metrics import BusMetrics


def test_per_type_tables_are_kept_only_as_often_as_the_widest_window_needs() -> None:
    clock = ManualClock()
    counts = {"a": 0}
    metrics = BusMetrics(lambda: dict(counts), clock)
    for _ in range(4 * 240):  # four simulated minutes of ticks every 0.25 s
        counts["a"] += 10
        clock.advance(0.25)
        metrics.tick()
    assert len(metrics._snapshots) <= 4
    assert len(metrics._totals) <= int(120 / 0.25) + 4
    totals, by_type = metrics.rates()
    # 10 events per 0.25 s = 40/s, whatever span each figure covers.
    assert totals["1s"] == pytest.approx(40.0)
    assert totals["60s"] == pytest.approx(40.0)
    assert by_type["a"] == pytest.approx(40.0)


def test_a_bus_with_many_event_types_keeps_few_per_type_tables() -> None:
    clock = ManualClock()
    bus = EventBus(clock=clock)
    bus.subscribe("svc.**", lambda event: None)
    for step in range(200):
        for i in range(20):
            bus.publish(f"svc.t{step * 20 + i}.done", {"i": i})
        clock.advance(0.5)
    stats = bus.stats()
    assert stats.published == 4000
    assert len(bus._metrics._snapshots) <= 4
    assert stats.rates_by_type["svc.t3999.done"] > 0
