"""What one benchmark point leaves behind: result.json with its manifest, timeline.csv, the
PNG plots, and the summary printed at the end."""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Final

import psutil
from rich.console import Console
from rich.table import Table

from scripts.bench.analyse import Analysis, Target, TimelineRow
from scripts.bench.loadspec import LoadSpec
from scripts.bench.params import BenchParams

GIT_TIMEOUT_S: Final = 5.0

stderr = Console(stderr=True, highlight=False)
stdout = Console(highlight=False, soft_wrap=True)

DEFINITIONS: Final = {
    "throughput_tx_per_s": "transactions in blocks observed committed during the measurement "
    "window (after the warmup) / window length; counts every client's transactions",
    "blocks_per_s": "blocks (including empty ones) observed committed in the window / length",
    "latency_ms": "per transaction sent in the window: submission (closed loop: request sent; "
    "open loop: request scheduled) to its commit, as latency_from says",
    "latency_from": "long-poll: the arrival of the accepting node's answer to GET "
    "/tx/{id}?wait_ms= (asked as the request is accepted, answered once the node stored the "
    "block), or the observer's first sight of the block if earlier; status-poll: the "
    "observer's first GET /status (every observation_resolution_ms) showing the block",
    "observation_resolution_ms": "status-poll only: the observer polls GET /status of one node "
    "at this interval; a commit is seen at most one interval plus one round trip after it",
    "cpu_us_per_tx": "CPU-microseconds the node processes spent per committed transaction in "
    "the window, summed over the nodes (per node in nodes[].cpu_us_per_tx): mean CPU percent "
    "/ 100 * 1e6 / throughput_tx_per_s",
    "per_minute": "each full minute of the window: committed tx/s, latency p50/p99 of our "
    "transactions committed in it, CPU-µs per committed transaction summed over the nodes; a "
    "warning when the last minute is more than 10% worse than the first",
    "latency_breakdown_ms": "submit_to_proposal: request sent to the block's timestamp (the "
    "primary's clock when it built the batch); proposal_to_commit_observed: from there to the "
    "observation; schedule_to_send (open loop): client-side wait for a free request slot",
    "view_changes": "views the observed node moved through during the run (view at the end "
    "minus view at the start)",
    "view_change_events": "the observed node's own view_changes counter over the run (it counts "
    "every view it enters, including views abandoned before they were installed)",
    "nodes": "per node process: CPU percent (100 = one core) and resident memory, sampled "
    "once a second during the window",
}


def manifest(
    p: BenchParams, target: Target, started_at: dt.datetime, spec: LoadSpec
) -> dict[str, Any]:
    repo = Path(__file__).resolve().parents[2]
    commit = _git(repo, "rev-parse", "HEAD")
    dirty = _git(repo, "--no-optional-locks", "status", "--porcelain", "--untracked-files=no")
    return {
        "tool": "medchain bench",
        "medchain_version": _installed_version(),
        "git_commit": commit,
        "git_dirty": None if dirty is None else bool(dirty),
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": sys.argv,
        "parameters": p.to_json(),
        "seed": p.seed,
        "pool_size": spec.pool_size,
        "cluster": {
            "started_by_bench": target.started,
            "nodes": len(target.urls),
            "urls": list(target.urls),
            "pids": list(target.pids),
            "dir": str(target.cluster_dir) if target.cluster_dir else None,
            "consensus": target.consensus,
            "observed_node": p.observe,
            "client_hospitals": [k.hospital for k in target.keys],
        },
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "memory_total_mb": round(psutil.virtual_memory().total / 1e6),
        "definitions": DEFINITIONS,
    }


def _installed_version() -> str | None:
    """medchain's installed version; None when it runs from a checkout it was not installed
    from."""
    try:
        return version("medchain")
    except PackageNotFoundError:
        return None


def _git(repo: Path, *argv: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *argv],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def write_json(path: Path, value: object) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


def write_timeline(path: Path, rows: Sequence[TimelineRow], n_nodes: int) -> None:
    header = [
        "second",
        "phase",
        "sent_tx",
        "committed_tx",
        "blocks",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "max_ms",
        "view",
        "system_cpu_percent",
        "loadgen_cpu_percent",
        *[f"node{i}_cpu_percent" for i in range(n_nodes)],
        *[f"node{i}_rss_mb" for i in range(n_nodes)],
    ]

    def cell(v: object) -> object:
        if v is None:
            return ""
        return round(v, 2) if isinstance(v, float) else v

    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for r in rows:
            w.writerow(
                [
                    cell(x)
                    for x in (
                        r.second,
                        r.phase,
                        r.sent_tx,
                        r.committed_tx,
                        r.blocks,
                        r.p50_ms,
                        r.p95_ms,
                        r.p99_ms,
                        r.max_ms,
                        r.view,
                        r.system_cpu,
                        r.loadgen_cpu,
                        *r.node_cpu,
                        *r.node_rss_mb,
                    )
                ]
            )


def figure(width: float = 8.0, height: float = 4.5) -> Any:
    # The object-oriented API with the Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _shade_phases(ax: Any, window: tuple[float, float], last: float) -> None:
    if window[0] > 0:
        ax.axvspan(0, window[0], color="0.9", label="warmup")
    if last > window[1]:
        ax.axvspan(window[1], last, color="0.95", label="drain")


def plot_throughput(path: Path, a: Analysis, title: str) -> None:
    fig = figure()
    ax = fig.add_subplot()
    xs = [r.second + 0.5 for r in a.timeline]
    _shade_phases(ax, a.window_s, len(a.timeline))
    ax.step(xs, [r.committed_tx for r in a.timeline], where="mid", label="committed tx/s")
    ax.step(xs, [r.sent_tx for r in a.timeline], "--", where="mid", alpha=0.7, label="sent tx/s")
    tput = a.summary["throughput_tx_per_s"]
    if tput:
        ax.axhline(tput, color="k", lw=0.8, label=f"window mean {tput:.0f} tx/s")
    ax.set(xlabel="time (s)", ylabel="transactions / s", title=title)
    ax.set_ylim(bottom=0)
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    fig.savefig(path)


def plot_latency(path: Path, a: Analysis, title: str) -> None:
    fig = figure()
    ax = fig.add_subplot()
    xs = [r.second + 0.5 for r in a.timeline]
    _shade_phases(ax, a.window_s, len(a.timeline))
    for name in ("p50_ms", "p95_ms", "p99_ms", "max_ms"):
        ys = [getattr(r, name) for r in a.timeline]
        ax.plot(xs, [math.nan if y is None else y for y in ys], marker=".", label=name[:-3])
    ax.set(xlabel="time of commit (s)", ylabel="latency (ms)", title=title)
    ax.set_ylim(bottom=0)
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    fig.savefig(path)


def plot_latency_distribution(path: Path, a: Analysis, title: str) -> None:
    fig = figure(10.0, 4.5)
    hist, cdf = fig.subplots(1, 2)
    values = sorted(a.latencies_ms)
    if values:
        hist.hist(values, bins=min(60, max(5, len(values) // 20)))
        ys = [(i + 1) / len(values) for i in range(len(values))]
        cdf.plot(values, ys)
        lat = a.summary["latency_ms"]
        for q in ("p50", "p95", "p99"):
            if lat[q] is not None:
                cdf.axvline(lat[q], ls=":", color="k", lw=0.8)
                cdf.text(lat[q], 0.02, q, rotation=90, fontsize="small")
    else:
        for ax in (hist, cdf):
            ax.text(0.5, 0.5, "no committed transactions", ha="center", transform=ax.transAxes)
    hist.set(xlabel="latency (ms)", ylabel="transactions", title="histogram")
    cdf.set(xlabel="latency (ms)", ylabel="fraction of transactions", title="CDF")
    cdf.set_ylim(0, 1)
    for ax in (hist, cdf):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)


def _load_words(p: BenchParams | dict[str, Any]) -> str:
    """The load in words, from BenchParams or its JSON form."""
    v = p if isinstance(p, dict) else p.to_json()
    if v["rate"] is not None:
        return f"rate {v['rate']:g} tx/s"
    if v["clients"] is not None:
        return f"{v['clients']} clients x {v['outstanding']} outstanding"
    return f"concurrency {v['concurrency']}"


def plot_title(p: BenchParams, n_nodes: int) -> str:
    return (
        f"{n_nodes} nodes, block {p.block_txs}, {p.payload_size} B payload, {_load_words(p)}, "
        f"{p.client_batch} per request"
    )


def fmt(v: object, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def print_summary(result: dict[str, Any], out: Path) -> None:
    lat = result["latency_ms"]
    t = Table(title=f"medchain bench: {_title_from(result)}", show_header=False)
    t.add_column("metric", style="bold")
    t.add_column("value", justify="right")
    rows = [
        ("throughput (tx/s)", fmt(result["throughput_tx_per_s"])),
        ("blocks/s", fmt(result["blocks_per_s"], 2)),
        ("txs per block", fmt(result["txs_per_block"])),
        (
            "latency p50 / p95 / p99 (ms)",
            f"{fmt(lat['p50'])} / {fmt(lat['p95'])} / {fmt(lat['p99'])}",
        ),
        ("latency max (ms)", fmt(lat["max"])),
        ("latency from", _latency_words(result)),
        ("CPU-µs per committed tx (nodes summed)", fmt(result["cpu_us_per_tx"])),
        ("measured window (s)", fmt(result["measured_seconds"], 2)),
        (
            "sent / committed / uncommitted",
            f"{fmt(result['sent_txs'])} / {fmt(result['committed_txs'])} / "
            f"{fmt(result['uncommitted_txs'])}",
        ),
        ("view changes", fmt(result["view_changes"])),
        ("errors", fmt(sum(result["errors"].values()))),
        ("load generator CPU %", fmt(result["loadgen_cpu_percent_mean"])),
        ("machine CPU % (all cores)", fmt(result["system_cpu_percent_mean"])),
    ]
    for k, v in rows:
        t.add_row(k, v)
    stdout.print(t)
    nodes = Table(title="per node (measurement window)")
    cols = ("node", "pid", "CPU % mean", "CPU % max", "CPU-µs/tx", "RSS MB mean", "RSS MB max")
    for col in cols:
        nodes.add_column(col, justify="right")
    for n in result["nodes"]:
        nodes.add_row(
            str(n["id"]),
            fmt(n["pid"]),
            fmt(n["cpu_percent_mean"]),
            fmt(n["cpu_percent_max"]),
            fmt(n["cpu_us_per_tx"]),
            fmt(n["rss_mb_mean"]),
            fmt(n["rss_mb_max"]),
        )
    stdout.print(nodes)
    if result["per_minute"]:
        stdout.print(_minutes_table(result["per_minute"]))
    for w in result["warnings"]:
        stderr.print(f"[yellow]warning:[/] {w}")
    stdout.print(f"results in {out}")


def _latency_words(result: dict[str, Any]) -> str:
    if result["latency_from"] == "long-poll":
        return "GET /tx long poll"
    return f"GET /status every {result['observation_resolution_ms']} ms (<= that + RTT late)"


def _minutes_table(minutes: list[dict[str, Any]]) -> Table:
    t = Table(title="per minute (measurement window)")
    for col in ("minute", "tx/s", "p50 ms", "p99 ms", "CPU-µs/tx"):
        t.add_column(col, justify="right")
    for m in minutes:
        t.add_row(
            str(m["minute"]),
            fmt(m["throughput_tx_per_s"]),
            fmt(m["latency_p50_ms"]),
            fmt(m["latency_p99_ms"]),
            fmt(m["cpu_us_per_tx"]),
        )
    return t


def _title_from(result: dict[str, Any]) -> str:
    p = result["manifest"]["parameters"]
    return (
        f"{result['manifest']['cluster']['nodes']} nodes, block {p['block_txs']}, "
        f"{p['payload_size']} B, {_load_words(p)}, {p['client_batch']} per request"
    )
