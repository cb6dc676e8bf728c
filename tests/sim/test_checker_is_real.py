"""The simulator can break PBFT when given more faults than it tolerates, and the checker
then reports it: proof that a passing sweep means something."""

from __future__ import annotations

import pytest

from tests.sim.faults import run_scenario, run_seed
from tests.sim.invariants import InvariantViolation


@pytest.mark.parametrize("n", [4, 7])
@pytest.mark.parametrize("seed", range(3))
def test_f_plus_one_colluders_fork_the_chain_and_the_checker_reports_it(n: int, seed: int) -> None:
    with pytest.raises(InvariantViolation) as info:
        run_scenario(seed, "fork", n)
    violation = info.value
    assert violation.kind == "fork"
    assert f"--seed {seed} --scenario fork --n {n}" in str(violation)


@pytest.mark.parametrize("n", [4, 7])
def test_the_same_attack_by_f_colluders_is_tolerated(n: int) -> None:
    for seed in range(3):
        result = run_seed(seed, "collude", n)
        assert result.ok, result.message


def test_a_run_that_misses_its_expected_violation_fails() -> None:
    # "fork" expects a fork; run_seed reports success only when the checker found one.
    result = run_seed(0, "fork", 4)
    assert result.ok and result.kind == "fork"
