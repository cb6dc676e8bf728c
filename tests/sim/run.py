"""Run simulated fault schedules from the command line.

    python -m tests.sim.run --seeds 1000 [--start 0] [--n 4|7] [--scenario random|NAME] [--jobs 2]
    python -m tests.sim.run --seed 17 --scenario crash [--trace]     # replay one seed

Prints a progress bar and a summary, every failing seed with its replay command, and exits 1
if any seed failed. ``--list`` names the scenarios.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tests.sim.faults import SCENARIOS, SimResult, run_scenario, run_seed
from tests.sim.invariants import InvariantViolation

MAX_JOBS = 64
CHUNK = 8
"""Seeds per task sent to a worker: amortises process round trips without starving the bar."""


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.sim.run", description=__doc__.split("\n")[0])
    which = p.add_mutually_exclusive_group()
    which.add_argument("--seeds", type=int, default=100, help="how many seeds (default 100)")
    which.add_argument("--seed", type=int, help="run exactly this one seed (replay)")
    p.add_argument("--start", type=int, default=0, help="first seed of the sweep")
    p.add_argument("--n", type=int, default=4, help="replicas (n = 3f+1; default 4)")
    p.add_argument("--scenario", default="random", help="scenario name, or 'random' (default)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="processes")
    p.add_argument("--no-codec", action="store_true", help="pass message objects, not bytes")
    p.add_argument("--trace", action="store_true", help="with --seed: print every event")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = p.parse_args(argv)
    if args.scenario not in SCENARIOS:
        p.error(f"unknown scenario {args.scenario!r}; choose from {', '.join(SCENARIOS)}")
    if args.n < 4 or (args.n - 1) % 3:
        p.error(f"--n must be 3f+1 with f >= 1 (4, 7, 10, ...), got {args.n}")
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    if not 1 <= args.jobs <= MAX_JOBS:
        p.error(f"--jobs must be in 1..{MAX_JOBS}")
    if args.trace and args.seed is None:
        p.error("--trace needs --seed")
    return args


def _run_chunk(seeds: list[int], scenario: str, n: int, codec: bool) -> list[SimResult]:
    return [run_seed(seed, scenario, n, codec=codec) for seed in seeds]


def iter_results(
    seeds: Sequence[int], scenario: str, n: int, jobs: int, codec: bool = True
) -> Iterator[list[SimResult]]:
    """Run ``seeds`` on ``jobs`` processes; yields results in seed order, a chunk at a time."""
    chunks = [list(seeds[i : i + CHUNK]) for i in range(0, len(seeds), CHUNK)]
    if jobs == 1:
        for chunk in chunks:
            yield _run_chunk(chunk, scenario, n, codec)
        return
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_run_chunk, chunk, scenario, n, codec) for chunk in chunks]
        for future in futures:
            yield future.result()


def run_many(
    seeds: Sequence[int], scenario: str, n: int, jobs: int, codec: bool = True
) -> list[SimResult]:
    return [r for chunk in iter_results(seeds, scenario, n, jobs, codec) for r in chunk]


def sweep(
    start: int, count: int, scenario: str, n: int, jobs: int, codec: bool, console: Console
) -> list[SimResult]:
    """``run_many`` with a progress bar."""
    results: list[SimResult] = []
    columns = (
        TextColumn(f"[bold]{scenario}[/] n={n}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[red]{task.fields[failed]} failed"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("sweep", total=count, failed=0)
        for chunk in iter_results(range(start, start + count), scenario, n, jobs, codec):
            results.extend(chunk)
            failed = sum(1 for r in results if not r.ok)
            progress.update(task, advance=len(chunk), failed=failed)
    return results


def _summary(results: list[SimResult], console: Console) -> None:
    passed = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    table = Table(title="simulation summary", show_header=False)
    table.add_row("seeds", str(len(results)))
    table.add_row("passed", f"[green]{len(passed)}")
    table.add_row("failed", f"[red]{len(failed)}" if failed else "0")
    totals: Counter[str] = Counter()
    for r in passed:
        for key in ("blocks_checked", "deliveries", "view_changes", "crashes", "virtual_ms"):
            totals[key] += int(r.summary.get(key, 0))
    table.add_row("blocks checked", str(totals["blocks_checked"]))
    table.add_row("messages delivered", str(totals["deliveries"]))
    table.add_row("view changes", str(totals["view_changes"]))
    table.add_row("crashes", str(totals["crashes"]))
    table.add_row("virtual time", f"{totals['virtual_ms'] / 1000:.1f} s")
    table.add_row("cpu time", f"{sum(r.wall_s for r in results):.1f} s")
    kinds = Counter(r.kind for r in failed)
    if kinds:
        table.add_row("failures by kind", ", ".join(f"{k}: {v}" for k, v in kinds.most_common()))
    console.print(table)
    for r in failed:
        first_line = (r.message or "").splitlines()[0] if r.message else ""
        console.print(f"FAIL seed {r.seed}: {first_line}", markup=False, soft_wrap=True)
        console.print(f"      replay: {r.replay}", markup=False, soft_wrap=True)


def _replay(args: argparse.Namespace, console: Console) -> int:
    trace = (lambda line: print(line, flush=True)) if args.trace else None
    spec = SCENARIOS[args.scenario]
    try:
        cluster = run_scenario(
            args.seed, args.scenario, args.n, codec=not args.no_codec, trace=trace
        )
    except InvariantViolation as violation:
        if violation.kind == spec.expect:
            console.print(f"expected violation: {violation}", markup=False, soft_wrap=True)
            return 0
        console.print(f"FAIL {violation}", markup=False, soft_wrap=True)
        return 1
    if spec.expect is not None:
        console.print(f"[red]FAIL[/] expected a {spec.expect!r} violation; the run passed")
        return 1
    console.print(f"[green]ok[/] seed {args.seed} scenario {args.scenario} n={args.n}")
    console.print(cluster.summary())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    console = Console(stderr=False)
    if args.list:
        for spec in SCENARIOS.values():
            console.print(f"[bold]{spec.name:<14}[/] {spec.description}")
        return 0
    if args.seed is not None:
        return _replay(args, console)
    results = sweep(
        args.start, args.seeds, args.scenario, args.n, args.jobs, not args.no_codec, console
    )
    _summary(results, console)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
