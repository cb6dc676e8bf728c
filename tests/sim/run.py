"""Run simulated fault schedules from the command line.

    python -m tests.sim.run --seeds 1000 [--from 0] [--n 4,7] [--scenario random|NAME] [--jobs 2]
    python -m tests.sim.run --seed 17 --scenario crash [--n 4] [--trace]   # replay one seed

A sweep runs seeds S .. S+N-1 at each n given, spread over --jobs processes (``tests.sim.sweep``),
shows progress, then a summary: schedules run, the seed range at each n, and every violation
with the command that replays it. Exit status 1 on any violation, 130 if interrupted (Ctrl-C
stops the workers and reports what finished). ``--list`` names the scenarios.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tests.sim.faults import SCENARIOS, SimResult, run_scenario
from tests.sim.invariants import InvariantViolation
from tests.sim.sweep import Range, Tally, iter_results, run_many

__all__ = ["main", "run_many"]

MAX_JOBS = 64
PLAIN_PROGRESS_EVERY_S = 30.0
"""Without a terminal (a log file, CI), a progress line this often instead of a live bar."""


def _n_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        expected = f"expected n or n,n,... (e.g. 4,7), got {text!r}"
        raise argparse.ArgumentTypeError(expected) from None
    for n in values:
        if n < 4 or (n - 1) % 3:
            raise argparse.ArgumentTypeError(f"n must be 3f+1 with f >= 1 (4, 7, 10, ...): {n}")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"n given twice in {text!r}")
    return values


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.sim.run", description=__doc__.split("\n")[0])
    which = p.add_mutually_exclusive_group()
    which.add_argument("--seeds", type=int, default=100, help="seeds per n (default 100)")
    which.add_argument("--seed", type=int, help="run exactly this one seed (replay)")
    p.add_argument("--from", "--start", dest="first", type=int, default=0, help="first seed")
    p.add_argument("--n", type=_n_list, default=[4], help="replicas: n or a list (4,7)")
    p.add_argument("--scenario", default="random", help="scenario name, or 'random' (default)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="processes")
    p.add_argument("--no-codec", action="store_true", help="pass message objects, not bytes")
    p.add_argument("--trace", action="store_true", help="with --seed: print every event")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = p.parse_args(argv)
    if args.scenario not in SCENARIOS:
        p.error(f"unknown scenario {args.scenario!r}; choose from {', '.join(SCENARIOS)}")
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    if args.first < 0:
        p.error("--from must be at least 0")
    if not 1 <= args.jobs <= MAX_JOBS:
        p.error(f"--jobs must be in 1..{MAX_JOBS}")
    if args.seed is not None and len(args.n) != 1:
        p.error("--seed replays at one n")
    if args.trace and args.seed is None:
        p.error("--trace needs --seed")
    return args


def _chunks_with_progress(
    plan: Sequence[Range], scenario: str, jobs: int, codec: bool, tally: Tally, console: Console
) -> Iterator[list[SimResult]]:
    """``iter_results``, drawing a live bar per n on a terminal, else a line now and then."""
    if not console.is_terminal:
        started = last = time.monotonic()
        for chunk in iter_results(plan, scenario, jobs, codec):
            yield chunk
            now = time.monotonic()
            if now - last >= PLAIN_PROGRESS_EVERY_S:
                last = now
                runs = ", ".join(f"n={r.n} {tally.runs[r.n]}/{r.count}" for r in plan)
                print(f"[{now - started:7.0f}s] {runs}; {tally.failed} failed", flush=True)
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[red]{task.fields[failed]} failed"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        bars = {
            r.n: progress.add_task(f"{scenario} n={r.n}", total=r.count, failed=0) for r in plan
        }
        for chunk in iter_results(plan, scenario, jobs, codec):
            yield chunk
            n = chunk[0].n
            failed = sum(1 for x in chunk if not x.ok)
            progress.update(bars[n], advance=len(chunk))
            if failed:
                done = progress.tasks[bars[n]].fields["failed"]
                progress.update(bars[n], failed=done + failed)


def sweep(
    plan: Sequence[Range], scenario: str, jobs: int, codec: bool, console: Console
) -> tuple[Tally, bool]:
    """Run ``plan``; returns what was found and whether it ran to the end (False on Ctrl-C)."""
    tally = Tally()
    try:
        for chunk in _chunks_with_progress(plan, scenario, jobs, codec, tally, console):
            for result in chunk:
                tally.add(result)
    except KeyboardInterrupt:
        return tally, False
    return tally, True


def _summary(
    tally: Tally, plan: Sequence[Range], scenario: str, wall_s: float, console: Console
) -> None:
    table = Table(title="simulation summary", show_header=False)
    table.add_row("scenario", scenario)
    table.add_row("schedules run", f"{tally.total_runs:,}")
    for r in plan:
        ran = tally.runs[r.n]
        span = f"{r.first}-{tally.done_to[r.n]}" if ran else "none"
        note = "" if ran == r.count else f" (interrupted; {r.first}-{r.last} planned)"
        table.add_row(f"n={r.n}", f"{ran:,} seeds: {span}{note}")
    table.add_row("violations", f"[red]{tally.failed}" if tally.failed else "0")
    if tally.kinds:
        table.add_row("by kind", ", ".join(f"{k}: {v}" for k, v in tally.kinds.most_common()))
    totals = tally.totals
    table.add_row("blocks checked", f"{totals['blocks_checked']:,}")
    table.add_row("messages delivered", f"{totals['deliveries']:,}")
    table.add_row("view changes", f"{totals['view_changes']:,}")
    table.add_row("crashes", f"{totals['crashes']:,}")
    table.add_row("virtual time", f"{totals['virtual_ms'] / 1000:,.1f} s")
    table.add_row("wall time", f"{wall_s:,.1f} s")
    table.add_row("cpu time", f"{tally.cpu_s:,.1f} s")
    console.print(table)
    for r in tally.failures:
        first_line = (r.message or "").splitlines()[0] if r.message else ""
        console.print(f"FAIL seed {r.seed} n={r.n}: {first_line}", markup=False, soft_wrap=True)
        console.print(f"      replay: {r.replay}", markup=False, soft_wrap=True)
    if tally.failed > len(tally.failures):
        console.print(f"... and {tally.failed - len(tally.failures)} more failures not shown")


def _replay(args: argparse.Namespace, console: Console) -> int:
    trace = (lambda line: print(line, flush=True)) if args.trace else None
    spec = SCENARIOS[args.scenario]
    n = args.n[0]
    try:
        cluster = run_scenario(args.seed, args.scenario, n, codec=not args.no_codec, trace=trace)
    except InvariantViolation as violation:
        if violation.kind == spec.expect:
            console.print(f"expected violation: {violation}", markup=False, soft_wrap=True)
            return 0
        console.print(f"FAIL {violation}", markup=False, soft_wrap=True)
        return 1
    if spec.expect is not None:
        console.print(f"[red]FAIL[/] expected a {spec.expect!r} violation; the run passed")
        return 1
    console.print(f"[green]ok[/] seed {args.seed} scenario {args.scenario} n={n}")
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
    plan = [Range(n, args.first, args.seeds) for n in args.n]
    ranges = ", ".join(f"n={r.n} seeds {r.first}-{r.last}" for r in plan)
    console.print(f"sweep {args.scenario}: {ranges} on {args.jobs} processes", markup=False)
    console.file.flush()
    started = time.monotonic()
    tally, finished = sweep(plan, args.scenario, args.jobs, not args.no_codec, console)
    _summary(tally, plan, args.scenario, time.monotonic() - started, console)
    if not finished:
        console.print("interrupted: the summary covers the seeds that finished")
        return 130
    return 1 if tally.failed else 0


if __name__ == "__main__":
    sys.exit(main())
