"""Random fault schedules over many seeds, every named scenario, the regression seeds, and
exact replay. ``MEDCHAIN_SIM_SEEDS`` scales the sweep (default 1000: 750 with n=4, 250 with n=7)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sim.faults import SCENARIOS, SimResult, run_scenario, run_seed
from tests.sim.regressions import REGRESSIONS
from tests.sim.sweep import run_many

ROOT = Path(__file__).resolve().parents[2]
SEEDS = int(os.environ.get("MEDCHAIN_SIM_SEEDS", "1000"))
JOBS = 2


def _report(failed: list[SimResult]) -> str:
    return "\n".join(f"{(r.message or '').splitlines()[0]}\n  {r.replay}" for r in failed)


def test_random_fault_schedules() -> None:
    n7 = SEEDS // 4
    results = run_many(range(SEEDS - n7), "random", 4, JOBS) + run_many(
        range(n7), "random", 7, JOBS
    )
    assert len(results) == SEEDS
    failed = [r for r in results if not r.ok]
    assert not failed, f"{len(failed)} of {SEEDS} seeds failed:\n{_report(failed)}"


NAMED = [name for name in SCENARIOS if name not in ("random", "fork")]


@pytest.mark.parametrize("scenario", NAMED)
def test_named_scenario(scenario: str) -> None:
    results = [run_seed(seed, scenario, 4) for seed in range(8)]
    results += [run_seed(seed, scenario, 7) for seed in range(2)]
    failed = [r for r in results if not r.ok]
    assert not failed, _report(failed)


@pytest.mark.parametrize(("seed", "scenario", "n"), REGRESSIONS)
def test_regression(seed: int, scenario: str, n: int) -> None:
    result = run_seed(seed, scenario, n)
    assert result.ok, _report([result])


def test_a_seed_replays_exactly_whatever_the_hash_seed() -> None:
    """Replay depends only on the seed: not on PYTHONHASHSEED (set iteration order) nor on
    anything else in the process."""
    code = (
        "from tests.sim.faults import run_scenario;"
        "print(run_scenario(11, 'random', 4).fingerprint())"
    )
    prints = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        prints.add(done.stdout.strip())
    prints.add(run_scenario(11, "random", 4).fingerprint())
    assert len(prints) == 1
