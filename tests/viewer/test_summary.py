"""Runs as timelines, hook latencies, breakers and notices, built from real events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llmspell.events.event import UniversalEvent
from llmspell.events.store.sqlite import SQLiteStoreReader
from llmspell.viewer.summary import LATENCY_SAMPLES, Summary
from tests.viewer.support import live_events, record_agent_run


def steps_of(run: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for step in run["steps"]:
        found.setdefault(f"{step['kind']}:{step['name']}", []).append(step)
    return found


def stored_events(path: Path) -> list[UniversalEvent]:
    with SQLiteStoreReader(path) as reader:
        return [event for _, event in reader.read_after(0, limit=10_000)]


def only_run(summary: Summary) -> dict[str, Any]:
    assert len(summary.runs) == 1
    run = summary.run(next(iter(summary.runs)))
    assert run is not None
    return run


def test_a_stored_run_becomes_a_timeline(tmp_path: Path) -> None:
    summary = Summary()
    for event in stored_events(record_agent_run(tmp_path)):
        summary.observe(event)
    run = only_run(summary)
    assert (run["kind"], run["name"], run["status"]) == ("agent", "helper", "completed")
    assert run["totals"]["tool_calls"] == 2 and run["totals"]["model_calls"] == 2
    steps = steps_of(run)
    agent = steps["agent:helper"][0]
    models = steps["model:scripted/scripted"]
    assert len(models) == 2
    assert models[0]["tokens_in"] == 1 and models[0]["tokens_out"] == 20
    assert all(step["parent"] == agent["id"] for step in run["steps"] if step is not agent)
    (shell,) = steps["tool:shell"]
    assert shell["status"] == "blocked"
    assert shell["marks"] == {"blocked": "no_shell: no shell here"}
    (add,) = steps["tool:add"]
    assert add["status"] == "ok" and add["marks"] == {}
    assert all(step["ended"] is not None for step in run["steps"])
    # A model call without a start event is dated from its step record.
    assert models[0]["started"] < models[0]["ended"]


def test_live_events_give_every_start_and_decision() -> None:
    summary = Summary()
    versions = []
    for event in live_events(modify=True):
        summary.observe(event)
        versions.append(summary.version)
    run = only_run(summary)
    steps = steps_of(run)
    models = steps["model:scripted/scripted"]
    assert len(models) == 2  # started + completed are one step each, not two
    assert all(m["marks"] == {"modified": "tidy"} for m in models)
    assert steps["tool:shell"][0]["marks"]["blocked"].startswith("no_shell")
    table = {row["hook"]: row for row in summary.hook_table()}
    assert table["no_shell"]["calls"] == 2 and table["tidy"]["calls"] == 2
    assert table["no_shell"]["decisions"] == {"blocked": 1}
    row = table["tidy"]
    assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"]
    assert versions == sorted(versions)


def test_steps_appear_when_they_start() -> None:
    summary = Summary()
    meta = {"run_id": "r1", "correlation_id": "c1"}
    summary.observe(UniversalEvent.create("run.started", {"kind": "agent", "name": "a"},
                                          **meta))
    summary.observe(UniversalEvent.create("agent.a.state_changed",
                                          {"from": "ready", "to": "running"}, **meta))
    summary.observe(UniversalEvent.create("tool.slow.started", {"attempt": 1}, **meta))
    run = summary.run("r1")
    assert run is not None
    tool = steps_of(run)["tool:slow"][0]
    assert tool["status"] == "running" and tool["ended"] is None
    assert tool["parent"] == steps_of(run)["agent:a"][0]["id"]
    summary.observe(UniversalEvent.create("tool.slow.started", {"attempt": 2}, **meta))
    summary.observe(UniversalEvent.create("tool.slow.completed",
                                          {"attempts": 2, "cached": False, "duration_ms": 3},
                                          **meta))
    run = summary.run("r1")
    assert run is not None
    (tool,) = steps_of(run)["tool:slow"]
    assert tool["status"] == "ok" and tool["attempts"] == 2
    assert "retried" in tool["marks"]


def test_versions_send_only_what_changed() -> None:
    summary = Summary()
    meta = {"run_id": "r1"}
    summary.observe(UniversalEvent.create("run.started", {"kind": "k", "name": "n"},
                                          **meta))
    summary.observe(UniversalEvent.create("tool.t.started", {}, **meta))
    seen = summary.version
    assert summary.runs_since(seen) == []
    summary.observe(UniversalEvent.create("tool.t.completed", {"duration_ms": 1},
                                          **meta))
    (changed,) = summary.runs_since(seen)
    assert [s["status"] for s in changed["steps"]] == ["ok"]
    assert len(summary.runs_since(0)[0]["steps"]) == 1


def test_bounds_hold() -> None:
    summary = Summary(max_runs=3, max_steps=5)
    for r in range(10):
        meta = {"run_id": f"r{r}"}
        summary.observe(UniversalEvent.create("run.started", {"kind": "k", "name": "n"},
                                              **meta))
        for _ in range(8):
            summary.observe(UniversalEvent.create("tool.t.started", {}, **meta))
        summary.observe(UniversalEvent.create("run.completed", {}, **meta))
    assert list(summary.runs) == ["r7", "r8", "r9"] and summary.forgotten_runs == 7
    run = summary.run("r9")
    assert run is not None and len(run["steps"]) == 5 and run["dropped_steps"] == 3
    assert {s["status"] for s in run["steps"]} == {"ended"}
    hook = {"hooks": ["h"], "kinds": ["continue"], "durations_ns": [1000]}
    for _ in range(LATENCY_SAMPLES + 10):
        summary.observe(UniversalEvent.create("hook.before_tool_execution", hook))
    assert summary.hooks["h"].calls == LATENCY_SAMPLES + 10
    assert len(summary.hooks["h"].samples) == LATENCY_SAMPLES


def test_breakers_and_notices() -> None:
    summary = Summary()
    summary.observe(UniversalEvent.create("hook.breaker.open", {
        "hook": "slow", "point": "before_tool_execution", "old": "closed", "new": "open",
        "reason": "5 failures", "open_duration": 30.0, "at": 1.0}))
    summary.observe(UniversalEvent.create("bus.backpressure.warning", {
        "kind": "warning", "subscription": "audit", "depth": 1024, "capacity": 1024,
        "dropped": 3, "rejected": 0, "at": 1.0, "detail": "queue full"}))
    stats = summary.stats()
    assert stats["breakers"][0]["state"] == "open"
    assert stats["breakers"][0]["reason"] == "5 failures"
    (notice,) = stats["notices"]
    assert notice["subscription"] == "audit" and notice["dropped"] == 3
    assert stats["notice_counts"] == {"bus.backpressure.warning": 1}


@pytest.mark.parametrize("data", [None, 5, "text", [1], {"steps": "no"}, {"steps": [5]},
                                  {"usage": "none", "attempts": "x"}])
def test_events_of_an_unexpected_shape_are_ignored(data: object) -> None:
    summary = Summary()
    meta = {"run_id": "r"}
    for kind in ("run.started", "run.steps", "tool.t.started", "tool.t.failed",
                 "model.p.completed", "agent.a.state_changed", "workflow.w.stage_started",
                 "hook.before_tool_execution", "hook.breaker.open", "run.completed"):
        summary.observe(UniversalEvent.create(kind, data, **meta))
    assert summary.events == 10


def test_workflow_steps() -> None:
    summary = Summary()
    meta = {"run_id": "r", "correlation_id": "w1"}
    for kind, data in [
            ("workflow.report.started", {}),
            ("workflow.report.stage_started", {"step": "sum", "attempt": 1}),
            ("tool.add.started", {"attempt": 1}),
            ("tool.add.completed", {"duration_ms": 1}),
            ("workflow.report.stage_completed", {"step": "sum", "replaced": True}),
            ("workflow.report.completed", {})]:
        summary.observe(UniversalEvent.create(kind, data, **meta))
    run = summary.run("r")
    assert run is not None
    steps = steps_of(run)
    workflow = steps["workflow:report"][0]
    stage = steps["stage:report/sum"][0]
    tool = steps["tool:add"][0]
    assert stage["parent"] == workflow["id"] and tool["parent"] == stage["id"]
    assert stage["marks"] == {"replaced": ""}
    assert {workflow["status"], stage["status"], tool["status"]} == {"ok"}
