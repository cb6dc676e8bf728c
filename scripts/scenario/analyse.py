"""Checking a run: what the client's history, the chains and the status samples say about it.
Pure functions of the records: no I/O, no clock."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from consensus.config import ReplicaConfig
from scripts import gaps, history
from scripts.history import BlockSummary, CheckResult, TxRecord, Uncommitted
from scripts.scenario.params import Scenario


@dataclass(frozen=True, slots=True)
class Sample:
    """One node's GET /status at time ``t`` (``ok`` False: it did not answer)."""

    t: float
    node: int
    ok: bool
    height: int | None = None
    view: int | None = None
    head: str | None = None
    in_view_change: bool | None = None
    mempool: int | None = None


@dataclass(slots=True)
class FaultSpan:
    """One timeline step as it happened (mutable while the run goes on)."""

    label: str
    kind: str
    nodes: list[int]
    start_s: float
    params: dict[str, Any]
    healed_s: float | None = None
    error: str | None = None
    fault_ids: dict[int, int] = field(default_factory=dict)
    """node -> fault id on that node's fault layer (message faults)."""
    recovery_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["fault_ids"] = {str(k): v for k, v in self.fault_ids.items()}
        return out


def first_commit_after(records: Sequence[TxRecord], t: float) -> float | None:
    """The first commit seen of a transaction submitted at or after ``t`` (None if none)."""
    times = [r.commit_s for r in records if r.commit_s is not None and r.submit_s >= t]
    return min(times) if times else None


def recovery_s(healed_s: float, records: Sequence[TxRecord]) -> float | None:
    """Seconds from a heal to the first commit of a transaction submitted after it."""
    first = first_commit_after(records, healed_s)
    return None if first is None else round(first - healed_s, 3)


def unsettled(s: Sample) -> str | None:
    """Why a node is not settled yet (None if it is)."""
    if not s.ok:
        return f"node {s.node} does not answer GET /status"
    if s.in_view_change:
        return f"node {s.node} is in a view change (view {s.view})"
    if s.mempool:
        return f"node {s.node} holds {s.mempool} uncommitted transactions (view {s.view})"
    return None


@dataclass(frozen=True, slots=True)
class RunRecords:
    """What a finished run recorded: the input of the checks and the report."""

    records: list[TxRecord]
    """The client's history, by submit time."""
    chains: Mapping[int, list[BlockSummary]]
    """Every honest node's chain, fetched at the end."""
    verify_checks: list[CheckResult]
    samples: list[Sample]
    spans: list[FaultSpan]
    """The timeline as it happened, each healed span with its recovery_s."""
    byzantine: set[int]
    settled: Mapping[str, Any]
    load_s: float
    """When the load stopped (seconds since it started)."""
    skipped: int
    errors: Mapping[str, int]
    client_errors: list[str]


_DEFAULT_VIEW_TIMEOUT_MS: Final[int] = next(
    int(f.default)  # type: ignore[arg-type]
    for f in dataclasses.fields(ReplicaConfig)
    if f.name == "view_timeout_ms"
)


def node_fates(spans: Sequence[FaultSpan]) -> dict[int, list[str]]:
    """node -> what the timeline did to it, in words ("kill 4.0-12.0s", "partition [[0], [1,
    2, 3]] 4.0-12.0s"), for reporting what became of a transaction's accepting node."""
    fates: dict[int, list[str]] = {}
    for s in spans:
        until = "" if s.kind == "restart" else f"-{s.healed_s:.1f}s" if s.healed_s else "-end"
        what = s.kind
        if s.kind == "partition":
            what = f"partitioned {s.params.get('groups')}"
        elif s.kind == "byzantine":
            what = f"byzantine({s.params.get('mode')})"
        elif s.kind in ("kill", "stop", "wipe", "restart"):
            what = {"kill": "killed", "stop": "stopped", "wipe": "wiped", "restart": "restarted"}[
                s.kind
            ]
        failed = f" (failed: {s.error})" if s.error else ""
        for i in s.nodes:
            fates.setdefault(i, []).append(f"{what} at {s.start_s:.1f}s{until}{failed}")
    return fates


def view_timeout_ms(sc: Scenario) -> int:
    """The view timeout every node of the scenario's cluster runs with."""
    return int(sc.consensus.get("view_timeout_ms", _DEFAULT_VIEW_TIMEOUT_MS))


def commit_gap(sc: Scenario, run: RunRecords) -> gaps.CommitGap:
    """The longest stretch without a commit while 2f+1 nodes were up and an accepted
    transaction awaited its commit (scripts.gaps)."""
    faults = [s.to_json() for s in run.spans]
    outs = gaps.outages(faults, sc.nodes, run.load_s)
    times = [r.commit_s for r in run.records if r.commit_s is not None]
    busy = gaps.awaiting_commit(((r.ack_s, r.commit_s) for r in run.records), run.load_s)
    return gaps.longest_commit_gap(
        times, run.load_s, outs, sc.nodes, gaps.gap_bound_s(view_timeout_ms(sc)), busy
    )


def accepted_uncommitted(run: RunRecords) -> tuple[CheckResult, list[Uncommitted]]:
    return history.check_accepted(run.records, run.chains, node_fates(run.spans))


def _gap_check(gap: gaps.CommitGap) -> CheckResult:
    span = f"{gap.longest_s:.2f}s without a commit ({gap.from_s:.1f}s-{gap.to_s:.1f}s)"
    detail = f"longest {span} while 2f+1 nodes were up; bound {gap.bound_s:g}s"
    if gap.ok:
        return CheckResult("commit_gap", True, detail)
    return CheckResult(
        "commit_gap",
        False,
        detail + " (view timeout + 1 s): commits stopped although a quorum was up",
        (span,),
    )


def run_checks(sc: Scenario, run: RunRecords) -> list[CheckResult]:
    """Every check of a run, in report order."""
    return [
        accepted_uncommitted(run)[0],
        *history.check_history(run.records, run.chains),
        *history.check_chains_agree(run.chains),
        *run.verify_checks,
        _rejoined_check(run.settled, sc.settle_s),
        _recovery_check(run.spans, sc.recovery_s),
        _timeline_check(run.spans),
        history.make_result(
            "valid_txs_accepted", run.client_errors, "no node refused a valid transaction (4xx)"
        ),
        _progress_check(run.records),
        _gap_check(commit_gap(sc, run)),
    ]


def _rejoined_check(settled: Mapping[str, Any], settle_s: float) -> CheckResult:
    return CheckResult(
        "nodes_rejoined",
        bool(settled["ok"]),
        f"every honest node back in normal operation within {settled['seconds']}s"
        if settled["ok"]
        else f"not every honest node was back in normal operation (same head, no view "
        f"change in progress, mempool drained) within settle_s = {settle_s:g}s",
        tuple(settled.get("reasons", ())),
    )


def _recovery_check(spans: Sequence[FaultSpan], bound: float) -> CheckResult:
    problems = []
    healed = [s for s in spans if s.healed_s is not None]
    for s in healed:
        if s.recovery_s is None or s.recovery_s > bound:
            got = "no commit" if s.recovery_s is None else f"first commit after {s.recovery_s}s"
            problems.append(f"{s.label} healed at {s.healed_s}s: {got} (bound {bound:g}s)")
    worst = max((s.recovery_s or 0.0 for s in healed), default=0.0)
    return history.make_result(
        "recovery",
        problems,
        f"progress within {worst:.2f}s of each of {len(healed)} heals (bound {bound:g}s)",
    )


def _timeline_check(spans: Sequence[FaultSpan]) -> CheckResult:
    problems = [f"{s.label} at {s.start_s}s: {s.error}" for s in spans if s.error]
    return history.make_result(
        "timeline_applied", problems, f"{len(spans)} steps applied as written"
    )


def _progress_check(records: Sequence[TxRecord]) -> CheckResult:
    seen = sum(1 for r in records if r.committed)
    if seen:
        return CheckResult("made_progress", True, f"{seen} commits seen by the client")
    return CheckResult("made_progress", False, "the client saw no commit at all")


def view_changes(samples: Sequence[Sample]) -> dict[str, Any]:
    """Per node: how many times its view went up, and its last view; plus when the highest
    view seen anywhere went up (for the plot)."""
    per_node: dict[int, int] = {}
    last: dict[int, int] = {}
    max_view = -1
    rises: list[dict[str, Any]] = []
    for s in sorted(samples, key=lambda s: s.t):
        if not s.ok or s.view is None:
            continue
        if s.node in last and s.view > last[s.node]:
            per_node[s.node] = per_node.get(s.node, 0) + 1
        last[s.node] = s.view
        if s.view > max_view:
            if max_view >= 0:
                rises.append({"t": round(s.t, 2), "view": s.view})
            max_view = s.view
    return {
        "per_node": {str(k): v for k, v in sorted(per_node.items())},
        "final_views": {str(k): v for k, v in sorted(last.items())},
        "max_view": max_view,
        "rises": rises,
    }
