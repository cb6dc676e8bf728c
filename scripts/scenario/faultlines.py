"""The protocol events around each fault of a scenario run: what report.json says of every
fault, cut from the nodes' flight recorders (``scripts.timeline``), and its swimlane charts.

The runner's clock counts seconds from the start of the load; the nodes' events carry their
wall-anchored milliseconds. The runner notes the wall time at its start (``t0_wall_ms``) and
maps each fault span onto the nodes' time with it (the nodes and the runner share one host).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from scripts.scenario.analyse import FaultSpan
from scripts.timeline.events import PROTOCOL_KINDS, Event, format_lines, only, summarize, window

BEFORE_S: Final = 2.0
"""Seconds of events kept before a fault starts."""
AFTER_S: Final = 5.0
"""Seconds kept after it heals (or starts, for one that never healed in the run)."""
MAX_LINES: Final = 300
"""Protocol events (messages aside) listed per fault in report.json; all are in events.jsonl."""
EVENTS_FILE: Final = "events.jsonl"


def fault_window_ms(span: FaultSpan, t0_wall_ms: int, load_s: float) -> tuple[int, int]:
    end_s = span.healed_s if span.healed_s is not None else load_s
    start = t0_wall_ms + int((span.start_s - BEFORE_S) * 1000)
    return start, t0_wall_ms + int((max(end_s, span.start_s) + AFTER_S) * 1000)


def chart_name(index: int, label: str) -> str:
    return f"fault-{index}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', label)[:40]}.png"


def fault_timelines(
    spans: Sequence[FaultSpan],
    events: Sequence[Event],
    *,
    t0_wall_ms: int,
    load_s: float,
    sources: Mapping[int, Mapping[str, Any]],
) -> dict[str, Any]:
    """report.json's ``fault_timelines``: per fault, its window on the nodes' clocks, what
    happened in it (counts by node and kind, view changes, new views, faults, heights) and its
    protocol events line by line; ``sources`` says what was read of each node."""
    available = any(s.get("clock_offset_ms") is not None for s in sources.values())
    out: dict[str, Any] = {
        "available": available,
        "events_file": EVENTS_FILE if available else None,
        "nodes": {str(i): dict(s) for i, s in sorted(sources.items())},
        "faults": [],
    }
    if not available:
        errors = {s.get("error") for s in sources.values() if s.get("error")}
        out["reason"] = "no node served GET /events: " + "; ".join(sorted(map(str, errors)))[:500]
        return out
    for k, span in enumerate(spans):
        a, b = fault_window_ms(span, t0_wall_ms, load_s)
        cut = window(events, a, b)
        protocol = only(cut, PROTOCOL_KINDS)
        lines = format_lines(protocol, t0_ms=t0_wall_ms + int(span.start_s * 1000))
        out["faults"].append(
            {
                "label": span.label,
                "kind": span.kind,
                "nodes": list(span.nodes),
                "from_ms": a,
                "to_ms": b,
                "start_ms": t0_wall_ms + int(span.start_s * 1000),
                "healed_ms": None
                if span.healed_s is None
                else t0_wall_ms + int(span.healed_s * 1000),
                "summary": summarize(cut),
                "lines": lines[:MAX_LINES],
                "lines_omitted": max(0, len(lines) - MAX_LINES),
                "chart": chart_name(k, span.label),
            }
        )
    return out


def write_fault_artifacts(
    out: Path, timelines: Mapping[str, Any], events: Sequence[Event], n: int
) -> None:
    """events.jsonl (every event read) and one swimlane chart per fault."""
    if not timelines.get("available"):
        return
    with (out / EVENTS_FILE).open("w", encoding="utf-8") as fh:
        for e in events:
            fh.write(json.dumps(e.to_json(), separators=(",", ":")) + "\n")
    from scripts.timeline.plot import plot_swimlanes

    for fault in timelines["faults"]:
        cut = window(events, fault["from_ms"], fault["to_ms"])
        end = fault["healed_ms"] if fault["healed_ms"] is not None else fault["to_ms"]
        plot_swimlanes(
            cut,
            out / fault["chart"],
            nodes=range(n),
            title=f"{fault['label']} on nodes {fault['nodes']}: protocol events around it",
            spans=[{"from_ms": fault["start_ms"], "to_ms": end, "label": fault["label"]}],
            t0_ms=fault["from_ms"],
        )
