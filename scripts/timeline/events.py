"""The flight recorder's events as the tools see them: one node's ``GET /events`` page parsed
strictly, every node's events merged into one timeline, a time window cut out of it, and the
timeline as text. Pure functions: no I/O, no clock.

A node's ``t_ms`` is its own wall-anchored clock in milliseconds. Nodes on one host share a
clock, so their events merge by time as they are; across hosts the merge is as good as the
hosts' clock synchronisation, which is why every page's ``now_ms`` is kept: a fetch can tell
how far a node's clock is from the tool's (``NodeEvents.clock_offset_ms``).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

KINDS: Final = (
    "msg_in",
    "msg_out",
    "timer",
    "view_change",
    "new_view",
    "commit",
    "checkpoint",
    "fault",
)
"""The kinds a node records (docs: GET /events). Unknown kinds are kept, not refused: a newer
node may record more."""
MESSAGE_KINDS: Final = frozenset({"msg_in", "msg_out"})
PROTOCOL_KINDS: Final = frozenset(KINDS) - MESSAGE_KINDS
"""Everything but the messages: what a report of a fault lists line by line."""
MAX_KIND_CHARS: Final = 32
MAX_DETAIL_CHARS: Final = 200
"""A longer detail is cut: the tools never trust a node to bound what it sends."""


class EventsError(ValueError):
    """A GET /events answer that is not the documented shape."""


@dataclass(frozen=True, slots=True)
class Event:
    """One protocol event of one node (``node`` is the node that recorded it)."""

    t_ms: int
    node: int
    kind: str
    view: int | None
    seq: int | None
    peer: int | None
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {
            "t_ms": self.t_ms,
            "node": self.node,
            "kind": self.kind,
            "view": self.view,
            "seq": self.seq,
            "peer": self.peer,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class EventsPage:
    """One answer of ``GET /events?since=T&limit=N``."""

    node: int
    now_ms: int
    next: int
    """Pass as ``since`` to continue after this page."""
    dropped: int
    """Events the node's ring lost before ``since`` (overwritten before anyone fetched them)."""
    events: tuple[Event, ...]


def _int(doc: Mapping[str, Any], key: str, *, optional: bool = False) -> int | None:
    value = doc.get(key)
    if value is None and optional:
        return None
    if type(value) is not int:
        raise EventsError(f"{key!r} must be an integer, got {type(value).__name__}")
    return value


def parse_event(doc: object, node: int) -> Event:
    """One event object of a page; EventsError if it is not the documented shape."""
    if not isinstance(doc, Mapping):
        raise EventsError(f"an event must be a JSON object, got {type(doc).__name__}")
    kind, detail = doc.get("kind"), doc.get("detail", "")
    if not isinstance(kind, str) or not 0 < len(kind) <= MAX_KIND_CHARS:
        raise EventsError(f"'kind' must be a string of 1..{MAX_KIND_CHARS} characters")
    if not isinstance(detail, str):
        raise EventsError("'detail' must be a string")
    t_ms = _int(doc, "t_ms")
    assert t_ms is not None
    return Event(
        t_ms=t_ms,
        node=node,
        kind=kind,
        view=_int(doc, "view", optional=True),
        seq=_int(doc, "seq", optional=True),
        peer=_int(doc, "peer", optional=True),
        detail=detail[:MAX_DETAIL_CHARS],
    )


def parse_page(doc: object) -> EventsPage:
    """A whole GET /events answer; EventsError naming the first problem."""
    if not isinstance(doc, Mapping):
        raise EventsError("GET /events must answer a JSON object")
    node, now_ms, nxt, dropped = (_int(doc, k) for k in ("node", "now_ms", "next", "dropped"))
    assert node is not None and now_ms is not None and nxt is not None and dropped is not None
    items = doc.get("events")
    if not isinstance(items, list):
        raise EventsError("'events' must be a list")
    events = []
    for i, item in enumerate(items):
        try:
            events.append(parse_event(item, node))
        except EventsError as exc:
            raise EventsError(f"event {i}: {exc}") from None
    return EventsPage(node, now_ms, nxt, max(0, dropped), tuple(events))


def merge(streams: Iterable[Sequence[Event]]) -> list[Event]:
    """Every node's events as one timeline, by time (a node's own order kept at equal times:
    the sort is stable and each stream is already in the node's order)."""
    merged = [e for stream in streams for e in stream]
    merged.sort(key=lambda e: (e.t_ms, e.node))
    return merged


def window(events: Iterable[Event], from_ms: int | None, to_ms: int | None) -> list[Event]:
    """The events with ``from_ms <= t_ms <= to_ms`` (an open end where None)."""
    return [
        e
        for e in events
        if (from_ms is None or e.t_ms >= from_ms) and (to_ms is None or e.t_ms <= to_ms)
    ]


def only(events: Iterable[Event], kinds: Iterable[str] | None) -> list[Event]:
    """The events of the given kinds (all of them for None)."""
    if kinds is None:
        return list(events)
    wanted = frozenset(kinds)
    return [e for e in events if e.kind in wanted]


def wall_text(t_ms: int) -> str:
    """A node time as local wall-clock time with milliseconds (what an operator compares with
    log lines)."""
    stamp = dt.datetime.fromtimestamp(t_ms / 1000).astimezone()
    return stamp.strftime("%H:%M:%S.") + f"{t_ms % 1000:03d}"


def format_event(e: Event, t0_ms: int) -> str:
    """One line: offset from t0, wall time, node, view/seq, what happened."""
    where = " ".join(
        part
        for part in (
            f"v{e.view}" if e.view is not None else "",
            f"seq {e.seq}" if e.seq is not None else "",
        )
        if part
    )
    what = e.kind
    if e.detail:
        what += f" {e.detail}"
    if e.peer is not None:
        what += f" {'<-' if e.kind == 'msg_in' else '->'} node{e.peer}"
    offset = (e.t_ms - t0_ms) / 1000
    return f"{offset:+9.3f}s  {wall_text(e.t_ms)}  node{e.node:<3} {where:<14} {what}"


def format_lines(events: Sequence[Event], t0_ms: int | None = None) -> list[str]:
    if not events:
        return []
    start = events[0].t_ms if t0_ms is None else t0_ms
    return [format_event(e, start) for e in events]


def summarize(events: Sequence[Event]) -> dict[str, Any]:
    """Counts by node and kind, the views seen and the heights committed: the shape of a
    window at a glance (report.json, the CLI's JSON)."""
    by_node: dict[int, Counter[str]] = {}
    for e in events:
        by_node.setdefault(e.node, Counter())[e.kind] += 1
    views = sorted({e.view for e in events if e.view is not None})
    heights = [e.seq for e in events if e.kind == "commit" and e.seq is not None]
    return {
        "events": len(events),
        "from_ms": events[0].t_ms if events else None,
        "to_ms": events[-1].t_ms if events else None,
        "by_node": {str(n): dict(sorted(c.items())) for n, c in sorted(by_node.items())},
        "views": views,
        "view_changes": [
            {"t_ms": e.t_ms, "node": e.node, "view": e.view, "detail": e.detail}
            for e in events
            if e.kind == "view_change"
        ],
        "new_views": [
            {"t_ms": e.t_ms, "node": e.node, "view": e.view} for e in events if e.kind == "new_view"
        ],
        "faults": [
            {"t_ms": e.t_ms, "node": e.node, "detail": e.detail}
            for e in events
            if e.kind == "fault"
        ],
        "committed_heights": [min(heights), max(heights)] if heights else None,
    }
