"""``medchain bench``: the command. One point is: cluster (drive), load (drive), figures
(analyse), files (report); a sweep runs the points in turn (sweep)."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from node.config import ConfigError
from node.crypto import KeyFileError
from scripts.bench.analyse import Analysis, Target, analyze
from scripts.bench.drive import drive_load, running_cluster, started_cluster
from scripts.bench.loadspec import LoadSpec
from scripts.bench.params import (
    DEFAULT_OUT_ROOT,
    MAX_POOL_TXS,
    TX_OVERHEAD_BYTES,
    BenchError,
    BenchParams,
    add_bench_arguments,
    build_points,
    pool_size,
)
from scripts.bench.progress import BenchUI
from scripts.bench.report import (
    manifest,
    plot_latency,
    plot_latency_distribution,
    plot_throughput,
    plot_title,
    print_summary,
    stderr,
    write_json,
    write_timeline,
)
from scripts.bench.sweep import print_sweep, run_sweep
from scripts.cluster import ClusterError
from scripts.scenario import BenchTimeline, bench_scenario

EXIT_INTERRUPTED: Final = 130


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``bench`` (and ``bench sweep``) on an argparse subparsers object."""
    p = subparsers.add_parser(
        "bench",
        help="measure throughput and latency (starts its own cluster unless given one)",
        description=(
            "Measure a cluster: start one (--nodes N) or load a running one (--nodes URL,... "
            "or --dir DIR), drive it with pre-signed transactions from a separate load "
            "generator process, and write result.json, timeline.csv and plots to --out. "
            "`medchain bench sweep` takes comma-separated lists for the sweepable parameters "
            "(nodes, block-txs, batch-timeout-ms, inflight, payload-size, rate, concurrency, "
            "clients, batch) and runs every combination in turn."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_bench_arguments(p)
    p.set_defaults(func=main_bench)
    parser: argparse.ArgumentParser = p
    return parser


def load_scenario(path: Path | None) -> BenchTimeline | None:
    """The scenario for ``--scenario`` (checked before anything starts), or None."""
    if path is None:
        return None
    if not path.is_file():
        raise BenchError(f"--scenario: no such file {path}")
    try:
        return bench_scenario(path)
    except ValueError as e:  # ScenarioError: the file is not a valid scenario
        raise BenchError(f"--scenario: {e}") from e


def run_point(
    args: argparse.Namespace,
    p: BenchParams,
    out: Path,
    ui: BenchUI,
    scenario: BenchTimeline | None,
) -> dict[str, Any]:
    """Run one benchmark point into ``out``; returns result.json's content."""
    out.mkdir(parents=True, exist_ok=True)
    started_at = dt.datetime.now(dt.UTC)
    if p.nodes is None:
        if scenario is not None:
            raise BenchError("--scenario needs a cluster the bench starts (--nodes N)")
        return _measure(p, running_cluster(args, p.urls), out, ui, None, started_at)
    prepare = scenario.prepare if scenario is not None else None
    with started_cluster(p, out, ui, keep=args.keep_cluster, prepare=prepare) as target:
        return _measure(p, target, out, ui, scenario, started_at)


def _measure(
    p: BenchParams,
    target: Target,
    out: Path,
    ui: BenchUI,
    scenario: BenchTimeline | None,
    started_at: dt.datetime,
) -> dict[str, Any]:
    last = len(target.urls) - 1
    p = dataclasses.replace(p, observe=last if p.observe is None else p.observe)
    assert p.observe is not None
    if not 0 <= p.observe <= last:
        raise BenchError(f"--observe {p.observe}: the cluster has nodes 0..{last}")
    warnings: list[str] = []
    spec = _load_spec(p, target, warnings)
    started: list[BenchTimeline] = []

    def on_go() -> None:
        if scenario is not None and target.cluster_dir is not None:
            scenario.start(target.cluster_dir)
            started.append(scenario)

    try:
        load = drive_load(spec, target, p, ui, on_go)
    finally:
        scenario_report = started[0].stop() if started else None
    faults = scenario_report.get("faults", []) if scenario_report is not None else []
    a = analyze(p, target, load, warnings, faults)
    result = {**a.summary, "warnings": warnings}
    if scenario_report is not None:
        result["scenario"] = scenario_report
    _write_outputs(out, result, a, p, target, started_at, spec)
    return result


def _load_spec(p: BenchParams, target: Target, warnings: list[str]) -> LoadSpec:
    """What the load generator is asked for at point ``p``; notes what the user should know."""
    assert p.observe is not None
    size, capped = pool_size(p, len(target.urls))
    if capped:
        warnings.append(f"the pre-signed pool was capped at {MAX_POOL_TXS} transactions")
    batch_bytes = p.block_txs * (p.payload_size + TX_OVERHEAD_BYTES)
    max_bytes = (target.consensus or {}).get("max_batch_bytes")
    if max_bytes and batch_bytes > max_bytes:
        warnings.append(
            f"--block-txs {p.block_txs} x {p.payload_size} B exceeds max_batch_bytes "
            f"({max_bytes}): blocks are capped by size, not count"
        )
    return LoadSpec(
        targets=target.urls,
        keys=target.keys,
        observe_url=target.urls[p.observe],
        payload_size=p.payload_size,
        client_batch=p.client_batch,
        pool_size=size,
        seed=p.seed,
        warmup_s=p.warmup_s,
        duration_s=p.duration_s,
        count=p.count,
        rate=p.rate,
        concurrency=p.concurrency,
        closed_until_commit=p.closed_until == "commit",
        long_poll=p.latency_from == "long-poll",
        poll_ms=p.poll_ms,
        drain_s=p.drain_s,
    )


def _write_outputs(
    out: Path,
    result: dict[str, Any],
    a: Analysis,
    p: BenchParams,
    target: Target,
    started_at: dt.datetime,
    spec: LoadSpec,
) -> None:
    """Add the file names and the manifest to ``result``, then write it, the CSV and plots."""
    files = {
        "result": "result.json",
        "timeline": "timeline.csv",
        "throughput_plot": "throughput.png",
        "latency_plot": "latency.png",
        "latency_distribution_plot": "latency_distribution.png",
    }
    result["files"] = files
    result["manifest"] = manifest(p, target, started_at, spec)
    heading = plot_title(p, len(target.urls))
    write_timeline(out / files["timeline"], a.timeline, len(target.urls))
    plot_throughput(out / files["throughput_plot"], a, heading)
    plot_latency(out / files["latency_plot"], a, heading)
    plot_latency_distribution(out / files["latency_distribution_plot"], a, heading)
    write_json(out / files["result"], result)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _default_out(sweep: bool) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return DEFAULT_OUT_ROOT / (f"{stamp}-sweep" if sweep else stamp)


def main_bench(args: argparse.Namespace) -> int:
    """``medchain bench [sweep]``: returns the exit status (0 ok, 1 error, 130 interrupted)."""
    # Ctrl-C must interrupt even where SIGINT arrives ignored (a background job of a
    # non-interactive shell starts with SIGINT ignored, and Python keeps it that way).
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM tears down too
    try:
        points, varying = build_points(args)
        scenario = load_scenario(args.scenario)
        sweep = args.mode == "sweep"
        out = (args.out or _default_out(sweep)).resolve()
        out.mkdir(parents=True, exist_ok=True)
        with BenchUI(stderr) as ui:
            if sweep:
                rows, ok = run_sweep(
                    points, varying, out, ui, lambda p, d: run_point(args, p, d, ui, scenario)
                )
            else:
                result = run_point(args, points[0], out, ui, scenario)
        if sweep:
            if args.json:
                sys.stdout.write(json.dumps({"varying": varying, "points": rows}, indent=2) + "\n")
            else:
                print_sweep(rows, out)
            return 0 if ok else 1
        if args.json:
            sys.stdout.write(json.dumps(result, indent=2) + "\n")
        else:
            print_summary(result, out)
        return EXIT_INTERRUPTED if result.get("interrupted") else 0
    except KeyboardInterrupt:
        stderr.print("medchain: interrupted (the bench's cluster and load generator are stopped)")
        return EXIT_INTERRUPTED
    except (BenchError, ClusterError, ConfigError, KeyFileError) as e:
        stderr.print(f"medchain: error: {e}", markup=False)
        return 1
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m scripts.bench ...`` (the same as ``medchain bench ...``)."""
    parser = argparse.ArgumentParser(prog="medchain")
    sub = parser.add_subparsers(dest="command", required=True)
    add_bench_parser(sub)
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))
