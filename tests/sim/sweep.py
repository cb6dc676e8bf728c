"""Long sweeps: seeded schedules spread over worker processes, in bounded memory.

A sweep is a plan of (n, first seed, count) ranges. Workers run chunks of seeds and send back
one ``SimResult`` per seed; the parent folds each into a ``Tally`` at once (counters, plus the
failures, at most ``MAX_KEPT_FAILURES`` of them), so memory does not grow with the seed count.
A seed that raises anything but an invariant violation, or runs past ``SEED_WALL_LIMIT_S``, is
itself a failure with its replay command; it never stops the sweep. Workers ignore SIGINT: on
Ctrl-C the parent terminates them and reports the seeds that finished.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType

from tests.sim.faults import SimResult, run_seed

CHUNK = 8
"""Seeds per task sent to a worker: amortises process round trips without starving the bar."""

MAX_KEPT_FAILURES = 200
"""Failures kept for the summary; the rest are only counted (a broken build fails every seed)."""

SEED_WALL_LIMIT_S = 300
"""A seed still running after this long is reported as hung (seeds take well under a second)."""

TOTALS = ("blocks_checked", "deliveries", "view_changes", "crashes", "virtual_ms")


@dataclass(frozen=True, slots=True)
class Range:
    """Seeds first .. first + count - 1 of one scenario at one n."""

    n: int
    first: int
    count: int

    @property
    def last(self) -> int:
        return self.first + self.count - 1


@dataclass(slots=True)
class Tally:
    """What a sweep found so far, in memory independent of the number of seeds."""

    runs: Counter[int] = field(default_factory=Counter)
    """Seeds run, by n."""
    done_to: dict[int, int] = field(default_factory=dict)
    """By n, the last seed of the unbroken prefix of its range that has run."""
    failed: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    failures: list[SimResult] = field(default_factory=list)
    totals: Counter[str] = field(default_factory=Counter)
    cpu_s: float = 0.0

    @property
    def total_runs(self) -> int:
        return sum(self.runs.values())

    def add(self, result: SimResult) -> None:
        self.runs[result.n] += 1
        self.done_to[result.n] = result.seed
        self.cpu_s += result.wall_s
        if result.ok:
            for key in TOTALS:
                self.totals[key] += int(result.summary.get(key, 0))
            return
        self.failed += 1
        self.kinds[result.kind or "unknown"] += 1
        if len(self.failures) < MAX_KEPT_FAILURES:
            self.failures.append(result)


class _SeedTimeout(Exception):
    pass


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise _SeedTimeout


def run_guarded(seed: int, scenario: str, n: int, codec: bool) -> SimResult:
    """``run_seed``, with any other exception or a hang reported as that seed's failure."""
    started = time.perf_counter()
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(SEED_WALL_LIMIT_S)
    try:
        return run_seed(seed, scenario, n, codec=codec)
    except _SeedTimeout:
        kind, message = "hang", f"[hang] still running after {SEED_WALL_LIMIT_S}s of wall time"
    except Exception as error:  # any crash of the core or the sim is a finding
        where = traceback.extract_tb(error.__traceback__)[-1]
        kind = "exception"
        message = (
            f"[exception] {type(error).__name__}: {error} "
            f"(at {where.filename}:{where.lineno} in {where.name})"
        )
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return SimResult(
        seed, scenario, n, codec, False, kind, message, {}, time.perf_counter() - started
    )


Task = tuple[tuple[int, ...], str, int, bool]


def _run_task(task: Task) -> list[SimResult]:
    seeds, scenario, n, codec = task
    return [run_guarded(seed, scenario, n, codec) for seed in seeds]


def _tasks(plan: Sequence[Range], scenario: str, codec: bool) -> Iterator[Task]:
    for r in plan:
        for first in range(r.first, r.last + 1, CHUNK):
            seeds = tuple(range(first, min(first + CHUNK, r.last + 1)))
            yield seeds, scenario, r.n, codec


def _init_worker() -> None:
    # Ctrl-C reaches the whole process group: only the parent acts on it. (Forked with SIGINT
    # blocked, see iter_results: ignored first, then unblocked.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def iter_results(
    plan: Sequence[Range], scenario: str, jobs: int, codec: bool = True
) -> Iterator[list[SimResult]]:
    """Run every seed of ``plan`` on ``jobs`` processes; yields results in plan order, a chunk
    at a time. Closing the iterator (or an exception in the consumer) terminates the workers."""
    if jobs == 1:
        for task in _tasks(plan, scenario, codec):
            yield _run_task(task)
        return
    # fork: workers start in milliseconds with the parent's imports (and its sys.path).
    ctx = multiprocessing.get_context("fork")
    pool = None
    try:
        with _ctrl_c_held() as interrupted:
            pool = ctx.Pool(jobs, initializer=_init_worker)
        if interrupted:
            raise KeyboardInterrupt
        yield from pool.imap(_run_task, _tasks(plan, scenario, codec), chunksize=1)
        pool.close()
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


@contextlib.contextmanager
def _ctrl_c_held() -> Iterator[list[bool]]:
    """Hold Ctrl-C while the pool is built, then report it.

    A Ctrl-C inside ``Pool()`` would leave the workers already forked running (no pool object
    to terminate) and could reach a worker before its initializer ignores it. Blocking SIGINT
    covers the forks (a child starts with its parent thread's mask) but not the process: another
    thread may take the signal, and the handler then runs in the main thread mid-``Pool()``.
    So a recording handler is installed as well; the caller raises once the pool exists."""
    if threading.current_thread() is not threading.main_thread():
        yield []  # signal handlers can only be set from the main thread
        return
    caught: list[bool] = []
    previous = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield caught
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # a held one is caught now
        signal.signal(signal.SIGINT, previous)
        if caught and previous is signal.SIG_IGN:
            caught.clear()


def run_many(seeds: range, scenario: str, n: int, jobs: int, codec: bool = True) -> list[SimResult]:
    """Every result of a range of seeds (for tests; a long sweep folds into a Tally)."""
    if seeds.step != 1:
        raise ValueError("seeds must be a contiguous range")
    plan = [Range(n, seeds.start, len(seeds))] if seeds else []
    return [r for chunk in iter_results(plan, scenario, jobs, codec) for r in chunk]
