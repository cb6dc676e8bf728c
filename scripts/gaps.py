"""Commit gaps: the longest stretch without a commit while a quorum (2f+1 nodes) was up and
the cluster had work: a transaction it had accepted (202) and not yet committed.

PBFT promises liveness while at most f replicas are faulty (Castro & Liskov, section 4.4:
a backup whose request waits longer than the view timeout starts a view change), so a
cluster with 2f+1 correct, connected replicas must never go longer than about one view
timeout without committing, whatever happened to the others. The bench and the scenario
runner both measure that from what they observed: the commit times a client saw, and the
fault timeline (which node was killed, stopped, restarting, wiped, paused, byzantine or cut
off, and when). Pure functions: no I/O, no clock.

A node counts as *down* for the gap while it is killed, stopped (SIGSTOP), restarting,
wiped, paused, byzantine, or outside the largest group of a partition. Message faults that
only slow a node (delay, drop, duplicate, reorder) do not take it down: a cluster must stay
live through them. The stretch before the first commit (start-up) is not a gap, and neither is
one in which every transaction a node had accepted was committed: a cluster with nothing to do
commits nothing. (At twice the peak the load generator holds back from nodes that answered 503
for up to 5 s; a 150 s run counted 4.7 s "without a commit" of which the nodes spent the last
two idle, every accepted transaction committed, waiting for the client to send again.)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

SLACK_S: Final = 1.0
"""The bound is the view timeout plus this: the view change itself, one batch and one
observation poll."""
_DOWN_KINDS: Final = frozenset({"kill", "stop", "restart", "wipe", "pause", "byzantine"})


@dataclass(frozen=True, slots=True)
class Outage:
    """Node ``node`` did not count towards the quorum in [start_s, end_s)."""

    node: int
    start_s: float
    end_s: float
    why: str


@dataclass(frozen=True, slots=True)
class CommitGap:
    """The longest stretch without an observed commit while 2f+1 nodes were up."""

    longest_s: float
    """Seconds; only those with 2f+1 nodes up and a transaction accepted, not committed."""
    from_s: float
    to_s: float
    bound_s: float | None
    """View timeout + SLACK_S (None if the view timeout is unknown)."""
    commits: int
    """Distinct commit times it was computed from."""
    quorum_up_s: float
    """Seconds of the window during which 2f+1 nodes were up."""

    @property
    def ok(self) -> bool:
        return self.bound_s is None or self.longest_s <= self.bound_s

    def to_json(self) -> dict[str, Any]:
        return {
            "longest_s": round(self.longest_s, 3),
            "from_s": round(self.from_s, 3),
            "to_s": round(self.to_s, 3),
            "bound_s": self.bound_s,
            "ok": self.ok,
            "commits": self.commits,
            "quorum_up_s": round(self.quorum_up_s, 3),
            "definition": "longest stretch without an observed commit while 2f+1 nodes were "
            "up (not killed, stopped, restarting, wiped, paused, byzantine or partitioned "
            "away) and a transaction accepted with 202 was not yet committed, from the first "
            f"commit to the end of the load; bound = view timeout + {SLACK_S:g} s",
        }


def gap_bound_s(view_timeout_ms: int | None) -> float | None:
    return None if view_timeout_ms is None else view_timeout_ms / 1000 + SLACK_S


def outages(faults: Iterable[Mapping[str, Any]], n: int, end_s: float) -> list[Outage]:
    """The outages a fault timeline caused (``faults``: FaultSpan.to_json() documents: kind,
    nodes, start_s, healed_s, params); a fault never healed lasts until ``end_s``."""
    out: list[Outage] = []
    for fault in faults:
        if fault.get("error"):
            continue  # not applied: it took nothing down
        kind = str(fault.get("kind"))
        start = float(fault["start_s"])
        healed = fault.get("healed_s")
        end = end_s if healed is None else float(healed)
        label = str(fault.get("label") or kind)
        if kind in _DOWN_KINDS:
            nodes = [int(i) for i in fault.get("nodes", ())]
        elif kind == "partition":
            nodes = _outside_largest_group(fault.get("params", {}).get("groups", []), n)
        else:
            continue
        out.extend(Outage(i, start, max(start, end), label) for i in nodes)
    return out


def _outside_largest_group(groups: Sequence[Sequence[int]], n: int) -> list[int]:
    """Nodes outside the largest side of a partition (nodes in no group form one more)."""
    sides = [set(g) for g in groups]
    rest = set(range(n)) - set().union(*sides)
    if rest:
        sides.append(rest)
    if not sides:
        return []
    largest = max(sides, key=lambda s: (len(s), -min(s, default=0)))
    return sorted(set(range(n)) - largest)


def quorum_up(
    outs: Sequence[Outage], n: int, window: tuple[float, float]
) -> list[tuple[float, float]]:
    """The sub-intervals of ``window`` during which at least 2f+1 nodes were up."""
    f = (n - 1) // 3
    quorum = 2 * f + 1
    lo, hi = window
    cuts = sorted({lo, hi, *(t for o in outs for t in (o.start_s, o.end_s) if lo < t < hi)})
    up: list[tuple[float, float]] = []
    for a, b in itertools.pairwise(cuts):
        mid = (a + b) / 2
        down = {o.node for o in outs if o.start_s <= mid < o.end_s}
        if n - len(down) >= quorum:
            if up and up[-1][1] == a:
                up[-1] = (up[-1][0], b)
            else:
                up.append((a, b))
    return up


def awaiting_commit(
    txs: Iterable[tuple[float | None, float | None]], end_s: float
) -> list[tuple[float, float]]:
    """When the cluster held work: the union of [accepted, committed) over ``txs`` (pairs of
    ack and commit times, None for not accepted / not committed; one never committed waits
    until ``end_s``), sorted and disjoint."""
    spans = sorted(
        (ack, min(end_s, end_s if done is None else done))
        for ack, done in txs
        if ack is not None and ack < end_s
    )
    merged: list[tuple[float, float]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        elif b > a:
            merged.append((a, b))
    return merged


def _intersect(
    xs: Sequence[tuple[float, float]], ys: Sequence[tuple[float, float]]
) -> list[tuple[float, float]]:
    """The intersection of two sorted lists of disjoint intervals."""
    out: list[tuple[float, float]] = []
    i = j = 0
    while i < len(xs) and j < len(ys):
        lo, hi = max(xs[i][0], ys[j][0]), min(xs[i][1], ys[j][1])
        if lo < hi:
            out.append((lo, hi))
        if xs[i][1] < ys[j][1]:
            i += 1
        else:
            j += 1
    return out


def longest_commit_gap(
    commit_times: Iterable[float],
    end_s: float,
    outs: Sequence[Outage],
    n: int,
    bound_s: float | None,
    busy: Sequence[tuple[float, float]] | None = None,
) -> CommitGap:
    """The longest stretch of [first commit, end_s] with no commit, counted only while 2f+1
    nodes were up and, given ``busy`` (:func:`awaiting_commit`), only while the cluster held
    an accepted transaction (a stretch partly outside is clipped to its part inside)."""
    times = sorted({t for t in commit_times if t <= end_s})
    if not times:
        return CommitGap(0.0, 0.0, 0.0, bound_s, 0, 0.0)
    window = (times[0], max(end_s, times[0]))
    up = quorum_up(outs, n, window)
    if busy is not None:
        up = _intersect(up, busy)
    best = (0.0, times[0], times[0])
    points = [*times, window[1]]
    k = 0
    for a, b in itertools.pairwise(points):
        while k < len(up) and up[k][1] <= a:
            k += 1  # intervals are sorted and so are the gaps: never look back
        j = k
        while j < len(up) and up[j][0] < b:
            lo, hi = max(a, up[j][0]), min(b, up[j][1])
            if hi - lo > best[0]:
                best = (hi - lo, lo, hi)
            j += 1
    up_s = sum(b - a for a, b in up)
    return CommitGap(best[0], best[1], best[2], bound_s, len(times), up_s)
