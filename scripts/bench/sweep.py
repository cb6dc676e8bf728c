"""``medchain bench sweep``: every point in turn into OUT/<label>/, with summary.json,
summary.csv and sweep_throughput.png rewritten after each point."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.table import Table

from node.config import ConfigError
from node.crypto import KeyFileError
from scripts.bench.params import BenchError, BenchParams, fmt_number
from scripts.bench.progress import BenchUI
from scripts.bench.report import figure, fmt, stdout, write_json
from scripts.cluster import ClusterError


def _summary_row(
    label: str, p: BenchParams, result: dict[str, Any] | None, error: str | None, out: Path
) -> dict[str, Any]:
    row: dict[str, Any] = {"point": label, "status": "ok" if error is None else "failed"}
    params = p.to_json()
    params.pop("urls")
    row.update(params)
    lat = (result or {}).get("latency_ms") or {}
    metrics = {
        "throughput_tx_per_s": (result or {}).get("throughput_tx_per_s"),
        "blocks_per_s": (result or {}).get("blocks_per_s"),
        "latency_p50_ms": lat.get("p50"),
        "latency_p95_ms": lat.get("p95"),
        "latency_p99_ms": lat.get("p99"),
        "latency_max_ms": lat.get("max"),
        "view_changes": (result or {}).get("view_changes"),
        "committed_txs": (result or {}).get("committed_txs"),
        "uncommitted_txs": (result or {}).get("uncommitted_txs"),
        "errors": sum((result or {}).get("errors", {}).values()) if result else None,
    }
    row.update(metrics)
    row["error"] = error
    row["dir"] = str(out / label)
    return row


def run_sweep(
    points: list[BenchParams],
    varying: list[str],
    out: Path,
    ui: BenchUI,
    run_point: Callable[[BenchParams, Path], dict[str, Any]],
) -> tuple[list[dict[str, Any]], bool]:
    """Run every point in turn into OUT/<label>/ with ``run_point(point, dir)``; returns the
    summary rows and whether all points succeeded. A failed point is recorded and the sweep
    goes on; Ctrl-C ends it."""
    rows: list[dict[str, Any]] = []
    ok = True
    for k, p in enumerate(points, 1):
        label = p.label(varying)
        ui.note(f"sweep point {k}/{len(points)}: {label}")
        result: dict[str, Any] | None = None
        error: str | None = None
        try:
            result = run_point(p, out / label)
        except (BenchError, ClusterError, ConfigError, KeyFileError) as e:
            error, ok = str(e), False
            ui.note(f"point {label} failed: {e}")
        interrupted = bool(result and result.get("interrupted"))
        rows.append(_summary_row(label, p, result, "interrupted" if interrupted else error, out))
        _write_sweep_summary(out, rows, varying)
        if interrupted:
            raise KeyboardInterrupt
    return rows, ok


def _write_sweep_summary(out: Path, rows: list[dict[str, Any]], varying: list[str]) -> None:
    write_json(out / "summary.json", {"varying": varying, "points": rows})
    with (out / "summary.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    plot_sweep(out / "sweep_throughput.png", rows, varying)


def plot_sweep(path: Path, rows: list[dict[str, Any]], varying: list[str]) -> None:
    """Throughput (and p50 latency) against the first varying parameter, one line per
    combination of the others."""
    fig = figure(10.0, 4.5)
    tput_ax, lat_ax = fig.subplots(1, 2)
    x_name = varying[0] if varying else None
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        key = ", ".join(f"{v}={fmt_number(row[v])}" for v in varying[1:]) or "all"
        groups.setdefault(key, []).append(row)
    for key, group in groups.items():
        ok = [r for r in group if r["throughput_tx_per_s"] is not None]
        xs = [r[x_name] if x_name else i for i, r in enumerate(ok)]
        tput_ax.plot(xs, [r["throughput_tx_per_s"] for r in ok], marker="o", label=key)
        lat_ok = [r for r in ok if r["latency_p50_ms"] is not None]
        lat_ax.plot(
            [r[x_name] if x_name else i for i, r in enumerate(lat_ok)],
            [r["latency_p50_ms"] for r in lat_ok],
            marker="o",
            label=key,
        )
    xlabel = x_name.replace("_", " ") if x_name else "point"
    tput_ax.set(xlabel=xlabel, ylabel="throughput (tx/s)", title="throughput")
    lat_ax.set(xlabel=xlabel, ylabel="p50 latency (ms)", title="median latency")
    for ax in (tput_ax, lat_ax):
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if len(groups) > 1:
            ax.legend(fontsize="small")
    fig.suptitle(f"medchain bench sweep over {', '.join(varying) or 'nothing'}")
    fig.tight_layout()
    fig.savefig(path)


def print_sweep(rows: list[dict[str, Any]], out: Path) -> None:
    t = Table(title=f"medchain bench sweep ({len(rows)} points; latency in ms)")
    t.add_column("point", no_wrap=True)
    for col in ("tx/s", "blocks/s", "p50", "p95", "p99", "views", "status"):
        t.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        t.add_row(
            r["point"],
            fmt(r["throughput_tx_per_s"], 0),
            fmt(r["blocks_per_s"], 1),
            fmt(r["latency_p50_ms"], 0),
            fmt(r["latency_p95_ms"], 0),
            fmt(r["latency_p99_ms"], 0),
            fmt(r["view_changes"]),
            r["status"],
        )
    stdout.print(t)
    stdout.print(f"results in {out} (summary.csv, summary.json, sweep_throughput.png)")
