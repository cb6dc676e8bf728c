"""A scenario report's timeline of its faults: each fault's window on the nodes' clocks, the
protocol events in it, and its swimlane chart."""

from __future__ import annotations

from pathlib import Path

from scripts.scenario.analyse import FaultSpan
from scripts.scenario.faultlines import fault_timelines, write_fault_artifacts
from scripts.timeline.events import Event

T0 = 1_700_000_000_000
SOURCES = {i: {"clock_offset_ms": 0, "error": None} for i in range(4)}


def ev(at_s: float, node: int, kind: str, detail: str = "", view: int = 0) -> Event:
    return Event(T0 + int(at_s * 1000), node, kind, view, None, None, detail)


def test_each_fault_gets_the_events_around_it(tmp_path: Path) -> None:
    span = FaultSpan("kill primary", "kill", [0], start_s=10.0, params={}, healed_s=14.0)
    events = [
        ev(1.0, 1, "commit", "5 txs"),  # long before: not in the window
        ev(9.5, 0, "msg_out", "prepare"),
        ev(11.0, 1, "timer"),
        ev(11.1, 1, "view_change", "to view 1", view=1),
        ev(12.0, 2, "new_view", view=1),
        ev(18.5, 3, "commit", "2 txs", view=1),
        ev(30.0, 3, "commit", "2 txs", view=1),  # after heal + 5 s: out
    ]
    doc = fault_timelines([span], events, t0_wall_ms=T0, load_s=20.0, sources=SOURCES)
    (fault,) = doc["faults"]
    assert doc["available"] and fault["from_ms"] == T0 + 8000 and fault["to_ms"] == T0 + 19000
    s = fault["summary"]
    assert s["events"] == 5
    assert [v["detail"] for v in s["view_changes"]] == ["to view 1"] and s["views"] == [0, 1]
    assert len(fault["lines"]) == 4  # messages are counted, not listed
    assert "+1.100s" in fault["lines"][1] and "view_change to view 1" in fault["lines"][1]
    write_fault_artifacts(tmp_path, doc, events, 4)
    assert (tmp_path / fault["chart"]).read_bytes()[:4] == b"\x89PNG"
    assert len((tmp_path / "events.jsonl").read_text().splitlines()) == len(events)


def test_nodes_without_a_recorder_are_said_so() -> None:
    sources = {0: {"clock_offset_ms": None, "error": "GET /events answered 404: not found"}}
    span = FaultSpan("slow", "delay", [1], start_s=1.0, params={})
    doc = fault_timelines([span], [], t0_wall_ms=T0, load_s=5.0, sources=sources)
    assert not doc["available"] and "404" in doc["reason"] and doc["faults"] == []
