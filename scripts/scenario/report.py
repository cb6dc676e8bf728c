"""What a scenario run leaves behind: report.json, history.jsonl, samples.jsonl, timeline.png,
and the verdict printed at the end."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from rich.console import Console
from rich.markup import escape

from scripts import history
from scripts.history import CheckResult
from scripts.scenario.analyse import (
    RunRecords,
    accepted_uncommitted,
    commit_gap,
    view_changes,
)
from scripts.scenario.faultlines import EVENTS_FILE, write_fault_artifacts
from scripts.scenario.params import Scenario
from scripts.timeline.events import Event

stdout = Console(highlight=False, soft_wrap=True)

ARTIFACTS: Final = {
    "history": "history.jsonl",
    "samples": "samples.jsonl",
    "timeline": "timeline.png",
    "events": EVENTS_FILE,
    "fault_charts": "fault-K-LABEL.png",
    "logs": "logs/",
}


def fault_throughput(
    spans: Sequence[Mapping[str, Any]], commits: Sequence[float], load_s: float
) -> list[float | None]:
    """Per fault: transactions committed per second between its start and its heal (the end
    of the load if it never healed; None for an instantaneous step such as a restart that
    took no time)."""
    out: list[float | None] = []
    for span in spans:
        start = float(span["start_s"])
        end = span["healed_s"] if span["healed_s"] is not None else load_s
        if end - start <= 0:
            out.append(None)
            continue
        n = sum(1 for t in commits if start <= t < end)
        out.append(round(n / (end - start), 1))
    return out


def build_report(
    sc: Scenario,
    seed: int,
    run: RunRecords,
    checks: Sequence[CheckResult],
    load: Mapping[str, Any] | None = None,
    fault_timelines: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """report.json's content; ``fault_timelines`` the protocol events around each fault
    (``scripts.scenario.faultlines``)."""
    records, chains = run.records, run.chains
    horizon = max(run.load_s, *(r.commit_s or 0.0 for r in records)) if records else run.load_s
    commits = [r.commit_s for r in records if r.commit_s is not None]
    faults = [s.to_json() for s in run.spans]
    for fault, tput in zip(faults, fault_throughput(faults, commits, run.load_s), strict=True):
        fault["throughput_tx_s"] = tput
    _, lost = accepted_uncommitted(run)
    window = [t for t in commits if t <= run.load_s]
    steady = round(len(window) / run.load_s, 1) if run.load_s > 0 else None
    return {
        "scenario": sc.name,
        "description": sc.description,
        "file": str(sc.path) if sc.path else None,
        "seed": seed,
        "nodes": sc.nodes,
        "f": sc.f,
        "ok": all(c.ok for c in checks),
        "load": {**(load or {"rate_tx_s": sc.rate}), "committed_tx_s_mean": steady},
        "duration_s": sc.duration_s,
        "recovery_bound_s": sc.recovery_s,
        "load_s": round(run.load_s, 2),
        "settle": dict(run.settled),
        "honest": sorted(chains),
        "byzantine": sorted(run.byzantine),
        "faults": faults,
        "checks": [c.to_json() for c in checks],
        "commit_gap": commit_gap(sc, run).to_json(),
        "accepted_uncommitted": {
            "count": len(lost),
            "listed": [u.to_json() for u in lost[: history.MAX_UNCOMMITTED_LISTED]],
        },
        "stats": {
            **history.history_stats(records, chains),
            "accepted_uncommitted": len(lost),
            "skipped_backpressure": run.skipped,
            "errors": dict(sorted(run.errors.items())),
        },
        "commits_per_second": history.per_second(commits, horizon),
        "latency_ms": {
            "commit": history.latency_percentiles(
                [(r.commit_s - r.submit_s) * 1000 for r in records if r.commit_s is not None]
            ),
            "ack": history.latency_percentiles(
                [(r.ack_s - r.submit_s) * 1000 for r in records if r.ack_s is not None]
            ),
        },
        "view_changes": view_changes(run.samples),
        "heights": {str(i): len(c) for i, c in sorted(chains.items())},
        "fault_timelines": dict(fault_timelines) if fault_timelines is not None else None,
        "artifacts": dict(ARTIFACTS),
    }


def write_report(
    out: Path, report: Mapping[str, Any], run: RunRecords, events: Sequence[Event] = ()
) -> None:
    """report.json, the client history, the status samples, the plot, and the flight
    recorders' events with a swimlane chart per fault, into ``out``."""
    history.write_history(out / ARTIFACTS["history"], run.records)
    with (out / ARTIFACTS["samples"]).open("w", encoding="utf-8") as fh:
        for s in run.samples:
            fh.write(json.dumps(dataclasses.asdict(s), separators=(",", ":")) + "\n")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plot_timeline(report, out / ARTIFACTS["timeline"])
    if report.get("fault_timelines"):
        write_fault_artifacts(out, report["fault_timelines"], events, report["nodes"])


_KIND_COLORS: Final = {
    "kill": "tab:red",
    "stop": "tab:orange",
    "restart": "tab:pink",
    "wipe": "tab:brown",
    "partition": "tab:purple",
    "pause": "tab:olive",
    "byzantine": "black",
}


def plot_timeline(report: Mapping[str, Any], path: Path) -> None:
    """Commits per second over time, faults as shaded spans, view changes as dotted lines."""
    # Imported here: every `medchain` command loads this module, few of them plot.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    commits = report["commits_per_second"]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    try:
        ax.bar(
            range(len(commits)),
            commits,
            width=1.0,
            align="edge",
            color="tab:blue",
            alpha=0.8,
            label="commits/s (seen by the client)",
        )
        top = max([*commits, 1]) * 1.15
        faults = report["faults"]
        for row, span in enumerate(faults):
            end = span["healed_s"] if span["healed_s"] is not None else report["load_s"]
            end = max(end, span["start_s"] + 0.3)  # instantaneous steps stay visible
            color = _KIND_COLORS.get(span["kind"], "tab:gray")
            ax.axvspan(span["start_s"], end, color=color, alpha=0.18)
            y = top * (0.97 - 0.07 * (row % 6))
            ax.text(
                span["start_s"],
                y,
                f" {span['label']} {span['nodes']}",
                fontsize=7,
                va="top",
                color=color,
            )
        for rise in report["view_changes"]["rises"]:
            ax.axvline(rise["t"], color="gray", linestyle=":", linewidth=1)
        ax.axvline(report["load_s"], color="gray", linestyle="--", linewidth=1)
        ax.set_ylim(0, top)
        ax.set_xlim(0, max(len(commits), 1))
        ax.set_xlabel("seconds since the load started (dotted: view changes, dashed: load end)")
        ax.set_ylabel("transactions committed / s")
        verdict = "PASS" if report["ok"] else "FAIL"
        ax.set_title(
            f"{report['scenario']} (n={report['nodes']}, seed {report['seed']}): {verdict}"
        )
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def print_report(report: Mapping[str, Any], out_dir: Path) -> None:
    verdict = "[green]PASS[/]" if report["ok"] else "[red]FAIL[/]"
    name, where = escape(report["scenario"]), escape(f"{out_dir}/report.json")
    stdout.print(f"\n[bold]{name}[/]: {verdict}  (report: {where})")
    for c in report["checks"]:
        mark = "[green]ok[/]  " if c["ok"] else "[red]FAIL[/]"
        stdout.print(f"  {mark} {escape(c['name'])}: {escape(c['detail'])}")
        for v in c["violations"][:5]:
            stdout.print(f"         {v}", markup=False)
    _print_fault_timelines(report.get("fault_timelines"))
    st = report["stats"]
    lat = report["latency_ms"]["commit"]
    gap = report["commit_gap"]
    stdout.print(
        f"  {report['load']['rate_tx_s']:,} tx/s offered; {st['submitted']} submitted, "
        f"{st['accepted']} accepted, {st['commit_observed']} commits seen (p50 {lat['p50']} ms, "
        f"p99 {lat['p99']} ms), {st['accepted_uncommitted']} accepted but not committed; "
        f"longest commit gap {gap['longest_s']} s (bound {gap['bound_s']} s); "
        f"max view {report['view_changes']['max_view']}"
    )
    for f in report["faults"]:
        stdout.print(
            f"  {f['label']} {f['nodes']}: {f['throughput_tx_s']} tx/s during it, "
            f"recovery {f['recovery_s']} s",
            markup=False,
        )


def _print_fault_timelines(timelines: Mapping[str, Any] | None) -> None:
    if not timelines:
        return
    if not timelines["available"]:
        stdout.print(f"  fault timelines: {escape(timelines.get('reason', ''))}")
        return
    for fault in timelines["faults"]:
        s = fault["summary"]
        stdout.print(
            f"  around {escape(fault['label'])}: {s['events']} protocol events, "
            f"{len(s['view_changes'])} view-change start(s), {len(s['new_views'])} new view(s), "
            f"views {s['views']} ({escape(fault['chart'])})"
        )
