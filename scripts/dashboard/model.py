"""What the dashboard shows, computed from what the nodes answered: pure, no I/O, no clock.

Every poll gives one ``Probe`` per node (its /status, /healthz or /health, /readyz, /audit and
/metrics answers, whichever it has). ``ClusterModel.update`` turns a round of probes into the
page's rows (height, view, primary, lag, health, audit state), one point of the throughput
and latency series, and the feed items of what changed since the last round (a node going
down, a view change, a fault applied or cleared, an audit finding). Everything kept is bounded:
HISTORY_POINTS points and FEED_ITEMS items.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

HISTORY_POINTS: Final = 600
"""Points of the throughput and latency series (10 minutes at the default 1 s poll)."""
FEED_ITEMS: Final = 200
LATENCY_WINDOW_S: Final = 10.0
"""Latency quantiles are over the commits of the last LATENCY_WINDOW_S seconds."""
RATE_WINDOW_S: Final = 5.0
"""Throughput is averaged over the last RATE_WINDOW_S seconds (blocks come in bursts)."""

OK, NOT_READY, UNHEALTHY, DOWN = "ok", "not-ready", "unhealthy", "down"
"""A node's health: serves and is ready; alive but not ready (in a view change, catching up:
its /readyz says why); its /healthz (or /health) says it is not alive; does not answer."""


@dataclass(frozen=True, slots=True)
class Histogram:
    """A Prometheus histogram summed over its labels: cumulative counts per upper bound."""

    buckets: tuple[tuple[float, float], ...]
    count: float


@dataclass(frozen=True, slots=True)
class Probe:
    """One node's answers in one poll (None: that endpoint did not answer usefully)."""

    node: int
    url: str
    t: float
    """Seconds (the dashboard's wall clock) when the poll started."""
    status: Mapping[str, Any] | None
    error: str | None = None
    """Why /status did not answer."""
    alive: bool | None = None
    """/healthz (or /health) answered 200; None if the node has neither."""
    ready: bool | None = None
    ready_reason: str | None = None
    audit: Mapping[str, Any] | None = None
    committed_txs: float | None = None
    """medchain_committed_transactions_total of /metrics (None without /metrics)."""
    latency: Histogram | None = None
    """medchain_commit_latency_seconds of /metrics."""


@dataclass(slots=True)
class _NodeMemory:
    """What the model remembers of one node between polls."""

    last: dict[str, Any] | None = None
    counts: deque[tuple[float, float, int]] = field(default_factory=lambda: deque(maxlen=64))
    """(t, committed transactions, height) of the answers of the last RATE_WINDOW_S."""
    latency: deque[tuple[float, Histogram]] = field(default_factory=lambda: deque(maxlen=64))
    faults: dict[int, str] = field(default_factory=dict)
    evidence: int | None = None


def _int(value: object) -> int | None:
    return value if type(value) is int else None


def health_of(p: Probe) -> tuple[str, str]:
    """(health, why) of one probe."""
    if p.status is None:
        return DOWN, p.error or "does not answer GET /status"
    if p.alive is False or p.status.get("healthy") is False:
        return UNHEALTHY, "its health check fails"
    if p.ready is False:
        return NOT_READY, p.ready_reason or "not ready"
    if p.status.get("in_view_change"):
        return NOT_READY, f"in a view change (view {p.status.get('view')})"
    return OK, "serving"


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated within its bucket as
    Prometheus's histogram_quantile does; None without observations."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if bound == float("inf"):
                return prev_bound  # beyond the last finite bound: its lower edge
            width = count - prev_count
            frac = 0.0 if width <= 0 else (rank - prev_count) / width
            return prev_bound + (bound - prev_bound) * frac
        prev_bound, prev_count = bound, count
    return prev_bound


def _delta(new: Histogram, old: Histogram) -> list[tuple[float, float]] | None:
    """New minus old, per bound; None if the counts went down (the node restarted)."""
    before = dict(old.buckets)
    out = [(b, c - before.get(b, 0.0)) for b, c in new.buckets]
    return None if any(c < 0 for _, c in out) else out


class ClusterModel:
    def __init__(self, nodes: Mapping[int, str]) -> None:
        self.nodes = dict(nodes)
        self.series: deque[dict[str, Any]] = deque(maxlen=HISTORY_POINTS)
        self.feed: deque[dict[str, Any]] = deque(maxlen=FEED_ITEMS)
        self.rows: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        self._memory = {i: _NodeMemory() for i in nodes}
        self._max_view: int | None = None

    def snapshot(self) -> dict[str, Any]:
        """The whole page: what a browser gets when it connects."""
        return {
            "summary": self.summary,
            "nodes": self.rows,
            "series": list(self.series),
            "feed": list(self.feed),
        }

    def update(self, probes: Sequence[Probe], t: float) -> dict[str, Any]:
        """Take one round of probes; returns the tick sent to browsers (rows, the new point,
        the new feed items)."""
        feed: list[dict[str, Any]] = []
        rates: list[float] = []
        block_rates: list[float] = []
        windows: list[list[tuple[float, float]]] = []
        rows = []
        for p in sorted(probes, key=lambda p: p.node):
            mem = self._memory.setdefault(p.node, _NodeMemory())
            row = self._row(p, mem)
            feed.extend(self._changes(p, row, mem, t))
            rate = self._rate(p, mem, row)
            if rate is not None:
                rates.append(rate[0])
                block_rates.append(rate[1])
            window = self._latency_window(p, mem)
            if window is not None:
                windows.append(window)
            mem.last = row
            rows.append(row)
        feed.extend(self._view_changes(rows, t))
        top = max((r["height"] for r in rows if r["height"] is not None), default=None)
        for r in rows:
            r["lag"] = None if top is None or r["height"] is None else top - r["height"]
        point = self._point(t, rates, block_rates, windows, top)
        self.series.append(point)
        self.feed.extend(feed)
        self.rows = rows
        self.summary = self._summary(rows, point)
        return {"summary": self.summary, "nodes": rows, "point": point, "feed": feed}

    # -- one node --------------------------------------------------------------------------

    def _row(self, p: Probe, mem: _NodeMemory) -> dict[str, Any]:
        st = p.status or {}
        health, why = health_of(p)
        audit = p.audit or {}
        evidence = _dict(audit.get("evidence"))
        active = _active_faults(st)
        keep = p.status is not None or mem.last is None
        last = mem.last or {}
        return {
            "id": p.node,
            "url": p.url,
            "health": health,
            "health_detail": why,
            # A node that stopped answering keeps its last known height and view, greyed out.
            "height": _int(st.get("height")) if keep else last.get("height"),
            "view": _int(st.get("view")) if keep else last.get("view"),
            "primary": _int(st.get("primary")) if keep else last.get("primary"),
            "is_primary": bool(st.get("is_primary")),
            "in_view_change": bool(st.get("in_view_change")),
            "mempool": _int(st.get("mempool_size")),
            "audit": audit.get("agreement") if isinstance(audit.get("agreement"), str) else None,
            "evidence": _int(evidence.get("count")),
            "faults": [str(f.get("kind")) for f in active],
            "lag": None,
        }

    def _rate(self, p: Probe, mem: _NodeMemory, row: dict[str, Any]) -> tuple[float, float] | None:
        """(transactions/s, blocks/s) of this node since its last answer."""
        st = p.status
        if st is None:
            return None
        counters = st.get("counters") if isinstance(st.get("counters"), dict) else {}
        txs = counters.get("committed_txs") if isinstance(counters, dict) else None
        txs = float(txs) if type(txs) is int else p.committed_txs
        height = row["height"]
        if txs is None or height is None:
            mem.counts.clear()
            return None
        if mem.counts and (txs < mem.counts[-1][1] or height < mem.counts[-1][2]):
            mem.counts.clear()  # the node restarted: its counters start again
        mem.counts.append((p.t, txs, height))
        while mem.counts and mem.counts[0][0] < p.t - RATE_WINDOW_S:
            mem.counts.popleft()
        first = mem.counts[0]
        dt = p.t - first[0]
        if dt <= 0:
            return None
        return ((txs - first[1]) / dt, (height - first[2]) / dt)

    def _latency_window(self, p: Probe, mem: _NodeMemory) -> list[tuple[float, float]] | None:
        if p.latency is None:
            return None
        mem.latency.append((p.t, p.latency))
        while mem.latency and mem.latency[0][0] < p.t - LATENCY_WINDOW_S:
            mem.latency.popleft()
        if len(mem.latency) < 2:
            return None
        return _delta(p.latency, mem.latency[0][1])

    def _changes(
        self, p: Probe, row: dict[str, Any], mem: _NodeMemory, t: float
    ) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        name = f"node {p.node}"
        last = mem.last
        if last is not None and last["health"] != row["health"]:
            level = "ok" if row["health"] == OK else "bad"
            items.append(
                _item(t, "health", level, f"{name}: {row['health']} ({row['health_detail']})")
            )
        if p.status is not None:
            active = _active_faults(p.status)
            now = {
                int(f["id"]): _fault_text(f)
                for f in active
                if isinstance(f, dict) and type(f.get("id")) is int
            }
            for fid in sorted(now.keys() - mem.faults.keys()):
                items.append(_item(t, "fault", "bad", f"{name}: fault applied: {now[fid]}"))
            for fid in sorted(mem.faults.keys() - now.keys()):
                items.append(_item(t, "fault", "ok", f"{name}: fault cleared: {mem.faults[fid]}"))
            mem.faults = now
            if last is not None and row["in_view_change"] and not last["in_view_change"]:
                items.append(
                    _item(
                        t, "view", "warn", f"{name}: started a view change from view {row['view']}"
                    )
                )
        if p.audit is not None:
            if last is not None and last["audit"] is not None and row["audit"] != last["audit"]:
                level = "ok" if row["audit"] == "agree" else "bad"
                items.append(
                    _item(t, "audit", level, f"{name}: audit {last['audit']} -> {row['audit']}")
                )
            count = row["evidence"]
            if count is not None and mem.evidence is not None and count > mem.evidence:
                items.append(
                    _item(
                        t,
                        "audit",
                        "bad",
                        f"{name}: recorded {count - mem.evidence} new piece(s) of audit evidence "
                        f"({_latest_evidence(p.audit)})",
                    )
                )
            mem.evidence = count if count is not None else mem.evidence
        return items

    # -- the cluster -----------------------------------------------------------------------

    def _view_changes(self, rows: Sequence[dict[str, Any]], t: float) -> list[dict[str, Any]]:
        views = [r["view"] for r in rows if r["health"] != DOWN and r["view"] is not None]
        if not views:
            return []
        top = max(views)
        items = []
        if self._max_view is not None and top > self._max_view:
            primary = next((r["primary"] for r in rows if r["view"] == top), None)
            items.append(
                _item(
                    t,
                    "view",
                    "warn",
                    f"view change: view {self._max_view} -> {top} (primary: node {primary})",
                )
            )
        self._max_view = top if self._max_view is None else max(self._max_view, top)
        return items

    @staticmethod
    def _point(
        t: float,
        rates: Sequence[float],
        block_rates: Sequence[float],
        windows: Sequence[Sequence[tuple[float, float]]],
        top: int | None,
    ) -> dict[str, Any]:
        merged: dict[float, float] = {}
        for w in windows:
            for bound, count in w:
                merged[bound] = merged.get(bound, 0.0) + count
        buckets = sorted(merged.items())

        def ms(q: float) -> float | None:
            v = quantile(q, buckets)
            return None if v is None else round(v * 1000, 1)

        return {
            "t": round(t, 3),
            # Every honest node commits every transaction: the median is the cluster's rate,
            # robust to one node catching up in a burst.
            "tx_per_s": round(statistics.median(rates), 1) if rates else None,
            "blocks_per_s": round(statistics.median(block_rates), 2) if block_rates else None,
            "p50_ms": ms(0.5),
            "p95_ms": ms(0.95),
            "height": top,
        }

    def _summary(self, rows: Sequence[dict[str, Any]], point: Mapping[str, Any]) -> dict[str, Any]:
        up = [r for r in rows if r["health"] != DOWN]
        views = [r["view"] for r in up if r["view"] is not None]
        view = max(set(views), key=lambda v: (views.count(v), v)) if views else None
        primary = next((r["primary"] for r in up if r["view"] == view), None)
        n = len(rows)
        return {
            "n": n,
            "f": (n - 1) // 3,
            "up": len(up),
            "ok": sum(1 for r in rows if r["health"] == OK),
            "height": point["height"],
            "view": view,
            "primary": primary,
            "tx_per_s": point["tx_per_s"],
            "p50_ms": point["p50_ms"],
            "p95_ms": point["p95_ms"],
            "t": point["t"],
        }


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _active_faults(status: Mapping[str, Any]) -> list[dict[str, Any]]:
    active = _dict(status.get("faults")).get("active")
    return [f for f in active if isinstance(f, dict)] if isinstance(active, list) else []


def _item(t: float, kind: str, level: str, text: str) -> dict[str, Any]:
    return {"t": round(t, 3), "kind": kind, "level": level, "text": text}


def _fault_text(fault: Mapping[str, Any]) -> str:
    params = ", ".join(
        f"{k}={v}"
        for k, v in fault.items()
        if k not in ("id", "kind", "age_s", "remaining_s", "seed")
    )
    return f"{fault.get('kind')}" + (f" ({params})" if params else "")


def _latest_evidence(audit: Mapping[str, Any]) -> str:
    evidence = audit.get("evidence")
    latest = evidence.get("latest") if isinstance(evidence, dict) else None
    if isinstance(latest, list) and latest and isinstance(latest[0], dict):
        first = latest[0]
        return ", ".join(f"{k} {first[k]}" for k in ("kind", "peer", "height") if k in first)
    return "see GET /audit/evidence"
