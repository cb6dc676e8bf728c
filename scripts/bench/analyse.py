"""Turning one run's raw records into figures: percentiles, distributions, the measurement
window, the per-second timeline and the summary. Pure functions of their arguments: no I/O,
no clock."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from scripts import gaps
from scripts.bench.loadspec import (
    TX_ACCEPTED,
    TX_FAILED,
    TX_REJECTED,
    BlockSeen,
    ClientKey,
    LoadResult,
)
from scripts.bench.params import BenchParams

SAMPLE_INTERVAL_S: Final = 1.0
"""How often the bench samples CPU and memory."""
OFFERED_SHORTFALL: Final = 0.95
"""Open loop: warn when fewer than this share of the offered transactions were sent."""
MINUTE_S: Final = 60
STABILITY_TOLERANCE: Final = 0.10
"""Warn when the last full minute is worse than the first by more than this share (lower
throughput, or higher latency p50/p99 or CPU per transaction); needs two full minutes."""
_NS: Final = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Target:
    """The cluster being measured, as the bench needs it."""

    urls: tuple[str, ...]
    keys: tuple[ClientKey, ...]
    pids: tuple[int | None, ...]
    """Node process ids (for CPU/memory sampling), None where unknown."""
    started: bool
    """True if the bench started (and will stop) this cluster."""
    cluster_dir: Path | None
    consensus: dict[str, Any] | None
    """The nodes' consensus parameters, if known (from a config file)."""


@dataclass(frozen=True, slots=True)
class UsageSample:
    t_ns: int
    cpu: tuple[float | None, ...]
    """Per node: CPU percent over the last interval (100 = one core), None if unknown/dead."""
    rss: tuple[int | None, ...]
    """Per node: resident memory in bytes."""
    loadgen_cpu: float | None
    system_cpu: float
    """Whole machine, percent of all cores."""


def _covered(u: UsageSample) -> int:
    """The middle of the interval a sample covers (CPU percent is over the last interval)."""
    return u.t_ns - int(SAMPLE_INTERVAL_S * _NS) // 2


@dataclass(frozen=True, slots=True)
class LoadOutcome:
    result: LoadResult
    usage: list[UsageSample]
    died: frozenset[int]
    stopped: str | None
    """Why the load was cut short: "interrupted" (Ctrl-C), "overran" (time budget), "cluster
    died" (every node process was down at once), or None."""
    loadgen_pid: int | None
    restarts: Mapping[int, int] = dataclasses.field(default_factory=dict)
    """Node -> how many times it came back with a new process (a restart by the launcher)."""

    @property
    def interrupted(self) -> bool:
        return self.stopped == "interrupted"


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation; None for no data."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass(frozen=True, slots=True)
class Distribution:
    count: int
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None
    mean: float | None
    min: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> Distribution:
        s = sorted(values)
        if not s:
            return cls(0, None, None, None, None, None, None)
        return cls(
            count=len(s),
            p50=percentile(s, 50),
            p95=percentile(s, 95),
            p99=percentile(s, 99),
            max=s[-1],
            mean=sum(s) / len(s),
            min=s[0],
        )

    def to_json(self, digits: int = 2) -> dict[str, Any]:
        return {
            k: (round(v, digits) if isinstance(v, float) else v)
            for k, v in dataclasses.asdict(self).items()
        }


@dataclass(frozen=True, slots=True)
class TimelineRow:
    second: int
    phase: str
    sent_tx: int
    committed_tx: int
    """Transactions (anyone's) in blocks observed committed during this second."""
    blocks: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    """Latency of our transactions observed committed during this second."""
    view: int | None
    system_cpu: float | None
    loadgen_cpu: float | None
    node_cpu: tuple[float | None, ...]
    node_rss_mb: tuple[float | None, ...]


@dataclass(frozen=True, slots=True)
class Analysis:
    summary: dict[str, Any]
    timeline: list[TimelineRow]
    latencies_ms: list[float]
    window_s: tuple[float, float]
    """Measurement window in seconds since second 0."""


def _window(r: LoadResult, p: BenchParams) -> tuple[int, int, list[int]]:
    """The measurement window [start, end) in ns and the transactions it measures: those sent
    in it (duration), or every one sent after the warmup, the window ending at the last of
    their commits (count)."""
    start = r.warmup_end_ns
    sent = r.sent_ns
    if p.duration_s is not None:
        end = max(start, min(start + int(p.duration_s * _NS), r.submit_end_ns))
        return start, end, [i for i in range(r.pool_size) if start <= sent[i] < end]
    measured = [i for i in range(r.pool_size) if sent[i] >= start]
    commits = [r.committed_ns[i] for i in measured if r.committed_ns[i] >= 0]
    end = max(commits) if commits else r.submit_end_ns
    return start, max(start, end), measured


def commit_gap(
    r: LoadResult, target: Target, faults: Sequence[Mapping[str, Any]]
) -> gaps.CommitGap:
    """The longest stretch without an observed block while 2f+1 nodes were up and an accepted
    transaction awaited its commit, from the first block to the end of the load (``faults``:
    the scenario's timeline, seconds since go)."""
    end_s = (r.submit_end_ns - r.t0_ns) / _NS
    times = [(b.observed_ns - r.t0_ns) / _NS for b in r.blocks]
    n = len(target.urls)
    timeout = (target.consensus or {}).get("view_timeout_ms")
    bound = gaps.gap_bound_s(timeout if isinstance(timeout, int) else None)
    busy = gaps.awaiting_commit(
        (
            (_since(r, r.acked_ns[i]), _since(r, r.committed_ns[i]))
            for i in range(r.pool_size)
            if r.acked_ns[i] >= 0
        ),
        end_s,
    )
    return gaps.longest_commit_gap(times, end_s, gaps.outages(faults, n, end_s), n, bound, busy)


def _since(r: LoadResult, t_ns: int) -> float | None:
    """Seconds since the run's second 0, or None for a time not recorded (-1)."""
    return None if t_ns < 0 else (t_ns - r.t0_ns) / _NS


def uncommitted_by_node(r: LoadResult, target: Target, txs: Sequence[int]) -> dict[str, int]:
    """Accepted transactions never seen committed, by the node (URL) that accepted them."""
    counts: dict[str, int] = {}
    for i in txs:
        if r.outcome[i] == TX_ACCEPTED and r.committed_ns[i] < 0:
            k = r.acked_by[i]
            url = target.urls[k] if 0 <= k < len(target.urls) else "unknown"
            counts[url] = counts.get(url, 0) + 1
    return counts


def analyze(
    p: BenchParams,
    target: Target,
    load: LoadOutcome,
    warnings: list[str],
    faults: Sequence[Mapping[str, Any]] = (),
) -> Analysis:
    """Turn the raw records of one run into the result's figures and the per-second timeline."""
    r = load.result
    start, end, measured = _window(r, p)
    window_s = (end - start) / _NS
    accepted = [i for i in measured if r.outcome[i] == TX_ACCEPTED]
    committed = [i for i in accepted if r.committed_ns[i] >= 0]
    latencies = [(r.committed_ns[i] - r.origin_ns[i]) / 1e6 for i in committed]
    in_window = [b for b in r.blocks if start <= b.observed_ns < end]
    window_txs = sum(b.txs for b in in_window)
    views = [s for s in r.status if s.t_ns <= r.end_ns]
    usage = [u for u in load.usage if start <= _covered(u) < end] or load.usage
    tput = window_txs / window_s if window_s > 0 else None
    nodes = _node_usage(target, usage, tput)
    minutes = per_minute(r, load.usage, len(target.urls), start, end)
    warnings.extend(
        _warnings(p, target, load, window_s, len(measured), len(accepted) - len(committed))
    )
    warnings.extend(stability_warnings(minutes))
    warnings.extend(late_fault_warnings(faults, (r.submit_end_ns - r.t0_ns) / _NS))
    summary: dict[str, Any] = {
        "throughput_tx_per_s": round(tput, 2) if tput is not None else None,
        "blocks_per_s": round(len(in_window) / window_s, 3) if window_s > 0 else None,
        "latency_ms": Distribution.of(latencies).to_json(),
        "latency_breakdown_ms": _breakdown(
            r, committed, {b.height: b for b in r.blocks}, p.open_loop
        ),
        "latency_from": p.latency_from,
        "observation_resolution_ms": p.poll_ms if p.latency_from == "status-poll" else None,
        "cpu_us_per_tx": _sum_cpu_us(nodes),
        "measured_seconds": round(window_s, 3),
        "load_end_s": round((r.submit_end_ns - r.t0_ns) / _NS, 3),
        "committed_txs_in_window": window_txs,
        "blocks_in_window": len(in_window),
        "txs_per_block": round(window_txs / len(in_window), 2) if in_window else None,
        "sent_txs": len(measured),
        "accepted_txs": len(accepted),
        "rejected_txs": sum(1 for i in measured if r.outcome[i] == TX_REJECTED),
        "failed_txs": sum(1 for i in measured if r.outcome[i] == TX_FAILED),
        "committed_txs": len(committed),
        "uncommitted_txs": len(accepted) - len(committed),
        "uncommitted_by_node": uncommitted_by_node(r, target, range(r.pool_size)),
        "commit_gap": commit_gap(r, target, faults).to_json(),
        "offered_tx_per_s": p.rate,
        "view_changes": views[-1].view - views[0].view if views else 0,
        "view_change_events": views[-1].view_changes - views[0].view_changes if views else 0,
        "view_start": views[0].view if views else None,
        "view_end": views[-1].view if views else None,
        "requests": r.requests,
        "retries": r.retries,
        "errors": dict(sorted(r.errors.items(), key=lambda kv: -kv[1])),
        "nodes": nodes,
        "per_minute": minutes,
        "loadgen_cpu_percent_mean": _mean([u.loadgen_cpu for u in usage]),
        "loadgen_pid": load.loadgen_pid,
        "system_cpu_percent_mean": _mean([u.system_cpu for u in usage]),
        "pool_size": r.pool_size,
        "pool_exhausted": r.pool_exhausted,
        "interrupted": load.interrupted,
    }
    return Analysis(
        summary=summary,
        timeline=_timeline(r, load.usage, len(target.urls), start, end),
        latencies_ms=latencies,
        window_s=((start - r.t0_ns) / _NS, (end - r.t0_ns) / _NS),
    )


def _warnings(
    p: BenchParams,
    target: Target,
    load: LoadOutcome,
    window_s: float,
    measured: int,
    uncommitted: int,
) -> list[str]:
    r = load.result
    out = []
    if window_s <= 0:
        out.append("the measurement window is empty (stopped during the warmup?)")
    if r.pool_exhausted:
        out.append(
            f"the {r.pool_size} pre-signed transactions ran out before the end: the run was cut "
            "short (raise --presign)"
        )
    if load.stopped == "interrupted":
        out.append("interrupted: partial results")
    elif load.stopped == "overran":
        out.append("the load did not end within its time budget and was stopped")
    elif load.stopped == "cluster died":
        out.append("the load was stopped early: every node process was down at once")
    if p.rate is not None and window_s > 0 and measured < OFFERED_SHORTFALL * p.rate * window_s:
        out.append(
            f"only {measured / window_s:.0f} of the offered {p.rate:g} tx/s were sent "
            f"(requests went out up to {r.max_schedule_lag_ms:.0f} ms behind schedule); "
            "latency counts from the schedule"
        )
    for i in sorted(load.died):
        again = load.restarts.get(i, 0)
        back = f" and was started again ({again}x)" if again else ""
        out.append(f"node {i} (pid {target.pids[i]}) exited during the run{back}")
    if uncommitted:
        out.append(f"{uncommitted} accepted transactions were not seen committed within the drain")
    return out


def late_fault_warnings(faults: Sequence[Mapping[str, Any]], load_end_s: float) -> list[str]:
    """Scenario steps that began only after the load had ended (seconds since go): their
    effect is not in the figures. The launcher runs one process fault at a time, so a restart
    slower than the timeline's spacing pushes every later step back."""
    late = []
    for f in faults:
        start = f.get("start_s")
        if isinstance(start, int | float) and start >= load_end_s:
            late.append(
                f"scenario step {f.get('label', f.get('kind'))!r} began at {start:.1f}s, after "
                f"the load ended at {load_end_s:.1f}s: its effect is not in these figures "
                "(process faults run one at a time; earlier ones took longer than their spacing)"
            )
    return late


def _breakdown(
    r: LoadResult, committed: list[int], by_height: dict[int, BlockSeen], open_loop: bool
) -> dict[str, Any]:
    """Split latency at the block's timestamp (the primary's clock when it built the batch;
    1 ms resolution; comparable because nodes and client share this machine's clock)."""
    to_proposal: list[float] = []
    to_observed: list[float] = []
    queued: list[float] = []
    heights = r.height
    for i in committed:
        block = by_height.get(heights[i])
        if block is None:
            continue
        proposal_ns = block.timestamp_ms * 1_000_000 - r.wall_minus_mono_ns
        to_proposal.append((proposal_ns - r.sent_ns[i]) / 1e6)
        to_observed.append((r.committed_ns[i] - proposal_ns) / 1e6)
        queued.append((r.sent_ns[i] - r.origin_ns[i]) / 1e6)
    out = {
        "submit_to_proposal": Distribution.of(to_proposal).to_json(),
        "proposal_to_commit_observed": Distribution.of(to_observed).to_json(),
    }
    if open_loop:
        out["schedule_to_send"] = Distribution.of(queued).to_json()
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    xs = [v for v in values if v is not None]
    return round(sum(xs) / len(xs), 1) if xs else None


def _max(values: Sequence[float | None]) -> float | None:
    xs = [v for v in values if v is not None]
    return round(max(xs), 1) if xs else None


def _mb(value: int | None) -> float | None:
    return None if value is None else value / 1e6


def _cpu_us(cpu_percent: float | None, tx_per_s: float | None) -> float | None:
    """CPU-microseconds per committed transaction: a process busy ``cpu_percent`` of one core
    while the cluster commits ``tx_per_s`` spends cpu_percent / 100 * 1e6 / tx_per_s µs each."""
    if cpu_percent is None or not tx_per_s:
        return None
    return round(cpu_percent / 100 * 1e6 / tx_per_s, 1)


def _sum_cpu_us(nodes: Sequence[Mapping[str, Any]]) -> float | None:
    """Summed over the nodes (None if any node's CPU is unknown: a partial sum would flatter)."""
    each: list[float | None] = [n["cpu_us_per_tx"] for n in nodes]
    known = [v for v in each if v is not None]
    if not each or len(known) < len(each):
        return None
    return round(sum(known), 1)


def _node_usage(
    target: Target, usage: Sequence[UsageSample], tx_per_s: float | None
) -> list[dict[str, Any]]:
    out = []
    for i, url in enumerate(target.urls):
        cpu = [u.cpu[i] for u in usage]
        rss = [_mb(u.rss[i]) for u in usage]
        cpu_mean = _mean(cpu)
        out.append(
            {
                "id": i,
                "url": url,
                "pid": target.pids[i] if i < len(target.pids) else None,
                "cpu_percent_mean": cpu_mean,
                "cpu_percent_max": _max(cpu),
                "cpu_us_per_tx": _cpu_us(cpu_mean, tx_per_s),
                "rss_mb_mean": _mean(rss),
                "rss_mb_max": _max(rss),
            }
        )
    return out


@dataclass(frozen=True, slots=True)
class _Seconds:
    """A run's records, bucketed by the second (since second 0) they fall in."""

    sent: list[int]
    committed: list[int]
    blocks: list[int]
    latency_ms: list[list[float]]
    view: list[int | None]
    usage: list[list[UsageSample]]

    @classmethod
    def of(cls, r: LoadResult, usage: Sequence[UsageSample], seconds: int) -> _Seconds:
        t0 = r.t0_ns

        def sec(t: int) -> int:
            return min(seconds - 1, max(0, (t - t0) // _NS))

        b = cls([0] * seconds, [0] * seconds, [0] * seconds, [], [None] * seconds, [])
        b.latency_ms.extend([] for _ in range(seconds))
        b.usage.extend([] for _ in range(seconds))
        for t in r.sent_ns:
            if t >= 0:
                b.sent[sec(t)] += 1
        for block in r.blocks:
            b.committed[sec(block.observed_ns)] += block.txs
            b.blocks[sec(block.observed_ns)] += 1
        for i in range(r.pool_size):
            c = r.committed_ns[i]
            if c >= 0 and r.outcome[i] == TX_ACCEPTED:
                b.latency_ms[sec(c)].append((c - r.origin_ns[i]) / 1e6)
        for s in r.status:
            k = sec(s.t_ns)
            b.view[k] = max(b.view[k] or 0, s.view)
        for u in usage:
            b.usage[sec(_covered(u))].append(u)
        return b


def _timeline(
    r: LoadResult, usage: Sequence[UsageSample], n_nodes: int, start: int, end: int
) -> list[TimelineRow]:
    t0 = r.t0_ns
    seconds = max(1, math.ceil((r.end_ns - t0) / _NS))
    b = _Seconds.of(r, usage, seconds)
    rows = []
    for k in range(seconds):
        d = Distribution.of(b.latency_ms[k])
        us = b.usage[k]
        mid = t0 + k * _NS + _NS // 2
        phase = "warmup" if mid < start else ("measure" if mid < end else "drain")
        rows.append(
            TimelineRow(
                second=k,
                phase=phase,
                sent_tx=b.sent[k],
                committed_tx=b.committed[k],
                blocks=b.blocks[k],
                p50_ms=d.p50,
                p95_ms=d.p95,
                p99_ms=d.p99,
                max_ms=d.max,
                view=b.view[k],
                system_cpu=_mean([u.system_cpu for u in us]),
                loadgen_cpu=_mean([u.loadgen_cpu for u in us]),
                node_cpu=tuple(_mean([u.cpu[i] for u in us]) for i in range(n_nodes)),
                node_rss_mb=tuple(_mean([_mb(u.rss[i]) for u in us]) for i in range(n_nodes)),
            )
        )
    return rows


def per_minute(
    r: LoadResult, usage: Sequence[UsageSample], n_nodes: int, start: int, end: int
) -> list[dict[str, Any]]:
    """Each full minute of the measurement window (a shorter tail is left out: it would not
    compare): committed tx/s, latency p50/p99 of our transactions committed in it, and CPU-µs
    per committed transaction summed over the nodes."""
    minute_ns = MINUTE_S * _NS
    count = (end - start) // minute_ns
    out = []
    for m in range(count):
        a, b = start + m * minute_ns, start + (m + 1) * minute_ns
        txs = sum(blk.txs for blk in r.blocks if a <= blk.observed_ns < b)
        lat = [
            (c - r.origin_ns[i]) / 1e6
            for i, c in enumerate(r.committed_ns)
            if a <= c < b and r.outcome[i] == TX_ACCEPTED
        ]
        d = Distribution.of(lat)
        us = [u for u in usage if a <= _covered(u) < b]
        tput = txs / MINUTE_S
        per_node = [_cpu_us(_mean([u.cpu[i] for u in us]), tput) for i in range(n_nodes)]
        known = [v for v in per_node if v is not None]
        out.append(
            {
                "minute": m + 1,
                "throughput_tx_per_s": round(tput, 2),
                "latency_p50_ms": None if d.p50 is None else round(d.p50, 2),
                "latency_p99_ms": None if d.p99 is None else round(d.p99, 2),
                "cpu_us_per_tx": round(sum(known), 1) if len(known) == n_nodes else None,
            }
        )
    return out


def stability_warnings(minutes: Sequence[Mapping[str, Any]]) -> list[str]:
    """One warning if the last full minute is more than STABILITY_TOLERANCE worse than the
    first in any figure (only with two full minutes or more)."""
    if len(minutes) < 2:
        return []
    first, last = minutes[0], minutes[-1]
    worse = []
    checks = (
        ("throughput_tx_per_s", "throughput", -1),
        ("latency_p50_ms", "latency p50", 1),
        ("latency_p99_ms", "latency p99", 1),
        ("cpu_us_per_tx", "CPU-µs/tx", 1),
    )
    for key, name, sign in checks:
        a, b = first[key], last[key]
        if a is None or b is None or a <= 0:
            continue
        change = (b - a) / a
        if sign * change > STABILITY_TOLERANCE:
            worse.append(f"{name} {a:,.1f} -> {b:,.1f} ({change:+.0%})")
    if not worse:
        return []
    return [
        f"minute {last['minute']} is more than {STABILITY_TOLERANCE:.0%} worse than minute 1: "
        + ", ".join(worse)
    ]
