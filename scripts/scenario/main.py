"""``medchain scenario run | list | check``: the command line."""

from __future__ import annotations

import argparse
import functools
import json
import random
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

from rich.console import Console
from rich.markup import escape

from scripts.cluster import ClusterError
from scripts.scenario.cluster import RunError
from scripts.scenario.drive import Runner, RunOptions
from scripts.scenario.params import (
    DEFAULT_OUT,
    MAX_RATE,
    Scenario,
    ScenarioError,
    load_scenario,
    parse_load,
    shipped_scenarios,
)
from scripts.scenario.peak import PeakCache, PeakError
from scripts.scenario.report import print_report, stdout

EXIT_OK: Final = 0
EXIT_VIOLATION: Final = 1
EXIT_ERROR: Final = 2

stderr = Console(stderr=True, highlight=False)

T = TypeVar("T")


def _seed(args: argparse.Namespace) -> int:
    return args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        scenarios = [load_scenario(Path(f), nodes=args.nodes) for f in args.files]
    except ScenarioError as e:
        stderr.print(f"medchain: error: {e}", markup=False)
        return EXIT_ERROR
    try:
        share = parse_load(args.load, "--load") if args.load is not None else None
    except ScenarioError as e:
        stderr.print(f"medchain: error: {e}", markup=False)
        return EXIT_ERROR
    if args.rate is not None and not 0 < args.rate <= MAX_RATE:
        stderr.print(f"medchain: error: --rate: must be in (0, {MAX_RATE:g}]", markup=False)
        return EXIT_ERROR
    seed = _seed(args)
    out_root = Path(args.out) if args.out else DEFAULT_OUT
    peaks = PeakCache(out_root, args.peak, seed, quiet=_json(args))
    results = []
    worst = EXIT_OK
    for sc in scenarios:
        out_dir = out_root / sc.name if (len(scenarios) > 1 or not args.out) else out_root
        cluster_dir = None
        if args.cluster_dir is not None:
            cluster_dir = (
                Path(args.cluster_dir) / sc.name if len(scenarios) > 1 else Path(args.cluster_dir)
            )
        try:
            rate, load_info = _offered(sc, args.rate, share, peaks)
            options = RunOptions(
                seed, out_dir, args.keep_cluster, _json(args), cluster_dir, rate, load_info
            )
            report = _with_sigterm(Runner(sc, options).run)
        except (RunError, ClusterError, OSError, PeakError) as e:
            stderr.print(f"medchain: error: scenario {sc.name}: {e}", markup=False)
            results.append({"scenario": sc.name, "ok": False, "error": str(e), "out": str(out_dir)})
            worst = max(worst, EXIT_ERROR)
            continue
        results.append({"scenario": sc.name, "ok": report["ok"], "out": str(out_dir)})
        if not report["ok"]:
            worst = max(worst, EXIT_VIOLATION)
        if not _json(args):
            print_report(report, out_dir)
    if _json(args):
        sys.stdout.write(json.dumps(results, indent=2) + "\n")
    return worst


def _offered(
    sc: Scenario, rate: float | None, share: float | None, peaks: PeakCache
) -> tuple[float, dict[str, Any]]:
    """The rate a run offers, and how it was chosen: --rate, else --load, else the file's
    ``rate`` or ``load`` (a share of the peak, measured once per cluster shape)."""
    if rate is not None:
        return rate, {"source": "--rate"}
    if share is None and sc.load is None:
        assert sc.rate is not None
        return sc.rate, {"source": "the scenario's rate"}
    used = share if share is not None else sc.load
    assert used is not None
    offered, info = _with_sigterm(lambda: peaks.rate(sc, used))
    source = "--load" if share is not None else "the scenario's load"
    return offered, {"source": source, **info}


def _with_sigterm(fn: Callable[[], T]) -> T:
    """Run ``fn`` with SIGTERM turned into KeyboardInterrupt, so teardown still happens."""

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        return fn()
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_peak(args: argparse.Namespace) -> int:
    """Measure (once per cluster shape) the peak the files' load shares refer to."""
    try:
        scenarios = [load_scenario(Path(f), nodes=args.nodes) for f in args.files]
    except ScenarioError as e:
        stderr.print(f"medchain: error: {e}", markup=False)
        return EXIT_ERROR
    out_root = Path(args.out) if args.out else DEFAULT_OUT
    peaks = PeakCache(out_root, None, args.seed, quiet=_json(args))
    rows = []
    try:
        for sc in scenarios:
            found, _cached = _with_sigterm(functools.partial(peaks.peak, sc))
            rows.append(
                {"scenario": sc.name, "nodes": sc.nodes, "peak_tx_s": found.tx_s, **found.how}
            )
    except (PeakError, ClusterError, OSError) as e:
        stderr.print(f"medchain: error: {e}", markup=False)
        return EXIT_ERROR
    if _json(args):
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    else:
        for r in rows:
            stdout.print(f"{r['scenario']}: peak {r['peak_tx_s']:,.0f} tx/s ({r['command']})")
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    rows = []
    for path in shipped_scenarios():
        try:
            sc = load_scenario(path)
            rows.append(
                {
                    "name": sc.name,
                    "file": str(path),
                    "duration_s": sc.duration_s,
                    "description": sc.description,
                }
            )
        except ScenarioError as e:
            rows.append({"name": path.stem, "file": str(path), "error": str(e)})
    if _json(args):
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    else:
        for r in rows:
            text = " ".join(str(r.get("description") or r.get("error", "")).split())
            stdout.print(f"[bold]{escape(str(r['name'])):32}[/] {escape(text)}")
    return 0 if all("error" not in r for r in rows) else EXIT_ERROR


def cmd_check(args: argparse.Namespace) -> int:
    status = EXIT_OK
    for f in args.files:
        try:
            sc = load_scenario(Path(f), nodes=args.nodes)
        except ScenarioError as e:
            stderr.print(f"medchain: error: {e}", markup=False)
            status = EXIT_ERROR
            continue
        stdout.print(f"{f}: ok ({sc.name}, {len(sc.steps)} steps, {sc.duration_s:g}s)")
    return status


def _json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def add_scenario_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``scenario`` (run, list, check) to a ``medchain`` subparsers object."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "scenario",
        help="run fault scenarios on a fresh local cluster and check the outcome",
        description="Run fault scenarios (configs/scenarios/*.toml, see docs/faults.md).",
    )
    sub = p.add_subparsers(dest="scenario_cmd", required=True, metavar="ACTION")
    rp = sub.add_parser("run", help="run scenario files; exit 1 on any violated check")
    rp.add_argument("files", nargs="+", help="scenario TOML files")
    rp.add_argument("--nodes", type=int, help="override the scenario's node count")
    rp.add_argument("--seed", type=int, help="seed of the load and the faults (default: random)")
    rp.add_argument(
        "--out",
        help=f"output directory (default: {DEFAULT_OUT}/NAME; with several files, OUT/NAME)",
    )
    rp.add_argument(
        "--load",
        help='offer this share of the measured peak ("peak", 0.5 = half), whatever the files say',
    )
    rp.add_argument("--rate", type=float, help="offer this many tx/s, whatever the files say")
    rp.add_argument(
        "--peak",
        type=float,
        help="the peak in tx/s for load shares (default: measured by a short bench per "
        "cluster shape, once per invocation)",
    )
    rp.add_argument("--keep-cluster", action="store_true", help="keep the cluster directory")
    rp.add_argument(
        "--cluster-dir",
        help="create the cluster here instead of a temporary directory (kept afterwards; "
        "with several files, CLUSTER_DIR/NAME)",
    )
    rp.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print a JSON summary on stdout",
    )
    rp.set_defaults(scenario_handler=cmd_run)
    pp = sub.add_parser(
        "peak", help="measure the peak (tx/s) that load shares refer to, for each file's cluster"
    )
    pp.add_argument("files", nargs="+", help="scenario TOML files")
    pp.add_argument("--nodes", type=int, help="override the scenario's node count")
    pp.add_argument("--seed", type=int, default=1, help="seed of the bench's load")
    pp.add_argument("--out", help=f"where the bench's results go (default: {DEFAULT_OUT})")
    pp.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    pp.set_defaults(scenario_handler=cmd_peak)
    lp = sub.add_parser("list", help="list the shipped scenarios")
    lp.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    lp.set_defaults(scenario_handler=cmd_list)
    cp = sub.add_parser("check", help="validate scenario files without running them")
    cp.add_argument("files", nargs="+")
    cp.add_argument("--nodes", type=int, help="validate for this node count")
    cp.set_defaults(scenario_handler=cmd_check)
    p.set_defaults(func=main_scenario)
    return p


def main_scenario(args: argparse.Namespace) -> int:
    status: int = args.scenario_handler(args)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medchain")
    add_scenario_parser(parser.add_subparsers(dest="command", required=True))
    try:
        return main_scenario(parser.parse_args(argv))
    except KeyboardInterrupt:
        stderr.print("medchain: interrupted", markup=False)
        return 130
