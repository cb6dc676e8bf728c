"""``medchain timeline``: every node's flight recorder merged into one timeline.

    medchain timeline --dir DIR [--from T] [--to T] [--kinds K,...] [--out FILE.png] [--json]
    medchain timeline --nodes URL,URL,...

Reads ``GET /events`` of every node (``scripts.timeline.fetch``), merges the events by time
(``scripts.timeline.events``), prints them one per line and, with ``--out``, draws them as a
swimlane chart, one lane per node, view changes and faults marked (``scripts.timeline.plot``).
T is milliseconds since the epoch, an ISO time (``2025-05-01T10:00:00``, or ``10:00:00`` for
today), or a time before now (``-30s``, ``-5m``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import re
import time
from pathlib import Path
from typing import Any, Final

from scripts.argtypes import non_negative_int
from scripts.client import NodeClient
from scripts.output import CliError, print_json, stderr, stdout
from scripts.timeline.events import KINDS, Event, format_lines, merge, only, summarize, window
from scripts.timeline.fetch import NodeEvents, fetch_events

DEFAULT_MAX_LINES: Final = 2000
_RELATIVE = re.compile(r"^-(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNIT_MS: Final = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}


def parse_time(text: str, *, now_ms: int | None = None) -> int:
    """A --from/--to value as epoch milliseconds (see the module doc for the forms)."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    rel = _RELATIVE.match(text)
    if rel:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return now - int(float(rel.group(1)) * _UNIT_MS[rel.group(2)])
    try:
        if "T" in text or "-" in text:
            stamp = dt.datetime.fromisoformat(text)
        else:
            clock = dt.time.fromisoformat(text)
            stamp = dt.datetime.combine(dt.date.today(), clock)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (epoch ms, ISO 2025-05-01T10:00:00, 10:00:00, or -30s)"
        ) from None
    if stamp.tzinfo is None:
        stamp = stamp.astimezone()  # local time, as an operator types it
    return int(stamp.timestamp() * 1000)


def parse_kinds(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if not kinds or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown event kind(s) {unknown or text!r}; known: {', '.join(KINDS)}"
        )
    return kinds


def targets(args: argparse.Namespace) -> dict[int, str]:
    """Node id -> URL from --nodes (ids -1, -2, ...: each node says its own) or --dir."""
    if args.nodes:
        from scripts.audit.targets import url_targets

        return {-1 - i: t.url for i, t in enumerate(url_targets(args.nodes)) if t.url}
    from scripts.cluster import ClusterProcesses

    specs = ClusterProcesses(args.dir).specs()
    if not specs:
        raise CliError(f"{args.dir}: no cluster here; give --nodes URL,URL,... instead")
    return {s.index: s.url for s in specs}


async def gather(nodes: dict[int, str], from_ms: int | None, to_ms: int | None) -> list[NodeEvents]:
    async with NodeClient(list(nodes.values())) as client:
        states = await fetch_events(client, nodes, since_ms=from_ms or 0, until_ms=to_ms)
    for i, st in states.items():
        if st.node < 0:
            st.node = i  # never answered: keep its placeholder
    return list(states.values())


def cmd_timeline(args: argparse.Namespace) -> int:
    if args.from_ms is not None and args.to_ms is not None and args.from_ms > args.to_ms:
        raise CliError("--from is after --to")
    nodes = targets(args)
    states = asyncio.run(gather(nodes, args.from_ms, args.to_ms))
    served = [st for st in states if st.error is None]
    if not served:
        problems = "; ".join(f"{st.url}: {st.error}" for st in states)
        raise CliError(f"no node served its events: {problems}")
    events = only(
        window(merge(list(st.events) for st in states), args.from_ms, args.to_ms), args.kinds
    )
    if args.out is not None:
        from scripts.timeline.plot import plot_swimlanes

        plot_swimlanes(
            events,
            args.out,
            nodes=sorted(st.node for st in states),
            title=_title(events, states),
            t0_ms=args.from_ms,
        )
    if args.json:
        print_json(_json(states, events))
        return 0
    _print(states, events, args.max_lines, args.from_ms)
    if args.out is not None:
        stderr.print(f"swimlane chart: {args.out}", markup=False)
    return 0


def _title(events: list[Event], states: list[NodeEvents]) -> str:
    s = summarize(events)
    views = s["views"]
    span = f"views {views[0]}..{views[-1]}" if views else "no view seen"
    changes = len(s["view_changes"])
    return (
        f"medchain timeline: {len(states)} nodes, {s['events']} events, {span}, "
        f"{changes} view-change start(s), {len(s['faults'])} fault event(s)"
    )


def _json(states: list[NodeEvents], events: list[Event]) -> dict[str, Any]:
    return {
        "nodes": [st.to_json() for st in states],
        "summary": summarize(events),
        "events": [e.to_json() for e in events],
    }


def _print(
    states: list[NodeEvents], events: list[Event], max_lines: int, t0_ms: int | None
) -> None:
    lines = format_lines(events, t0_ms)
    shown = lines if max_lines == 0 else lines[-max_lines:]
    if len(shown) < len(lines):
        stdout.print(
            f"... {len(lines) - len(shown)} earlier events not shown (--max-lines 0 shows all)",
            markup=False,
        )
    for line in shown:
        stdout.print(line, markup=False)
    for st in sorted(states, key=lambda s: s.node):
        if st.error is not None:
            stderr.print(f"node{st.node}: {st.error}", markup=False)
        elif st.lost:
            stderr.print(
                f"node{st.node}: {st.lost} events had left its ring before they were read",
                markup=False,
            )
    stderr.print(_title(events, states), markup=False)


def add_timeline_parser(sub: Any) -> None:
    from scripts.cluster import DEFAULT_CLUSTER_DIR

    p = sub.add_parser(
        "timeline",
        help="merge every node's protocol events into one timeline (text, PNG swimlanes)",
        description="Read every node's flight recorder (GET /events), merge the events by "
        "time and print them; --out draws a swimlane chart (one lane per node, view changes "
        "and faults marked). T: epoch ms, an ISO time (10:00:00 is today), or -30s/-5m.",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_CLUSTER_DIR,
        help="cluster directory (default: %(default)s)",
    )
    where.add_argument("--nodes", metavar="URL,...", help="nodes by URL instead of --dir")
    p.add_argument("--from", dest="from_ms", type=parse_time, metavar="T", help="first time")
    p.add_argument("--to", dest="to_ms", type=parse_time, metavar="T", help="last time")
    p.add_argument(
        "--kinds", type=parse_kinds, help=f"only these kinds, comma-separated ({', '.join(KINDS)})"
    )
    p.add_argument("--out", type=Path, metavar="FILE.png", help="draw the swimlane chart here")
    p.add_argument(
        "--max-lines",
        type=non_negative_int,
        default=DEFAULT_MAX_LINES,
        help="print at most the last N events (0: all; default %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    p.set_defaults(func=cmd_timeline)


__all__ = ["add_timeline_parser", "cmd_timeline", "parse_time"]
