"""The long-sweep runner: bounded tallies, failures of any kind reported with their replay
command, exit codes, and Ctrl-C stopping the workers cleanly."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sim import run, sweep
from tests.sim.faults import SimResult

ROOT = Path(__file__).resolve().parents[2]


def _result(seed: int, ok: bool, n: int = 4) -> SimResult:
    kind = None if ok else "liveness"
    return SimResult(seed, "random", n, True, ok, kind, None if ok else "[liveness] stuck")


def test_a_tally_counts_every_failure_but_keeps_a_bounded_number() -> None:
    tally = sweep.Tally()
    extra = 50
    for seed in range(sweep.MAX_KEPT_FAILURES + extra):
        tally.add(_result(seed, ok=False))
    tally.add(_result(10_000, ok=True, n=7))
    assert tally.failed == sweep.MAX_KEPT_FAILURES + extra
    assert len(tally.failures) == sweep.MAX_KEPT_FAILURES
    assert tally.runs == {4: sweep.MAX_KEPT_FAILURES + extra, 7: 1}
    assert tally.done_to == {4: sweep.MAX_KEPT_FAILURES + extra - 1, 7: 10_000}


def test_a_seed_that_raises_is_a_failure_with_its_replay_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(seed: int, scenario: str, n: int, *, codec: bool) -> SimResult:
        raise KeyError("no such slot")

    monkeypatch.setattr(sweep, "run_seed", broken)
    result = sweep.run_guarded(7, "random", 4, True)
    assert not result.ok and result.kind == "exception"
    assert "KeyError" in (result.message or "")
    assert "--seed 7 --scenario random --n 4" in result.replay


def test_a_seed_that_hangs_is_a_failure_not_a_stuck_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    def hangs(seed: int, scenario: str, n: int, *, codec: bool) -> SimResult:
        while True:
            time.sleep(0.05)

    monkeypatch.setattr(sweep, "run_seed", hangs)
    monkeypatch.setattr(sweep, "SEED_WALL_LIMIT_S", 1)
    result = sweep.run_guarded(3, "random", 4, True)
    assert not result.ok and result.kind == "hang"


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_sweep_covers_every_seed_of_every_n_in_order(jobs: int) -> None:
    plan = [sweep.Range(4, 20, 11), sweep.Range(7, 5, 3)]
    seen = [(r.n, r.seed) for chunk in sweep.iter_results(plan, "normal", jobs) for r in chunk]
    assert seen == [(4, s) for s in range(20, 31)] + [(7, s) for s in range(5, 8)]


def test_the_cli_exits_1_and_prints_each_violation_with_its_replay(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def some_fail(seed: int, scenario: str, n: int, *, codec: bool) -> SimResult:
        return _result(seed, ok=seed % 5 != 0, n=n)

    monkeypatch.setattr(sweep, "run_seed", some_fail)
    code = run.main(["--seeds", "12", "--from", "100", "--n", "4,7", "--jobs", "2"])
    out = capsys.readouterr().out
    assert code == 1
    assert "24" in out and "100-111" in out
    for n in (4, 7):
        for seed in (100, 105, 110):
            assert f"--seed {seed} --scenario random --n {n}" in out
    assert "--seed 101 " not in out


def test_the_cli_exits_0_on_a_clean_sweep(capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(["--seeds", "3", "--from", "40", "--scenario", "normal", "--jobs", "1"]) == 0
    assert "40-42" in capsys.readouterr().out


def test_an_interrupted_sweep_reports_what_finished(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*args: object) -> Iterator[list[SimResult]]:
        yield [_result(s, ok=True) for s in range(0, 8)]
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "iter_results", interrupted)
    assert run.main(["--seeds", "1000", "--jobs", "2"]) == 130
    out = capsys.readouterr().out
    assert "0-7" in out and "interrupted" in out


def test_ctrl_c_stops_the_workers_and_the_sweep_cleanly() -> None:
    """SIGINT to the whole process group (what a terminal's Ctrl-C sends): the parent stops
    the workers and prints its summary; no worker prints a traceback."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "tests.sim.run", "--seeds", "100000", "--jobs", "2"]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready and proc.stdout.readline().startswith("sweep random: n=4 seeds 0-99999")
        time.sleep(1)  # into the sweep proper: workers busy with their first chunks
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted" in out and "schedules run" in out


def test_ctrl_c_while_the_workers_start_leaves_none_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A SIGINT that lands while the pool is being built (a loaded machine makes that window
    wide) still stops every worker. A second thread is alive, as in a pytest run with helper
    threads: with SIGINT blocked only in the main thread, the kernel hands the signal to that
    thread and Python runs the handler in the main thread mid-``Pool()`` (CI, once)."""
    import multiprocessing.pool
    import threading

    import psutil

    real = multiprocessing.pool.Pool._repopulate_pool_static
    interrupted = []

    def fork_then_interrupt(*args: object, **kwargs: object) -> object:
        result = real(*args, **kwargs)  # type: ignore[arg-type]
        if not interrupted:
            interrupted.append(True)
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(
        multiprocessing.pool.Pool, "_repopulate_pool_static", staticmethod(fork_then_interrupt)
    )
    plan = [sweep.Range(4, 0, 100_000)]
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    release = threading.Event()
    bystander = threading.Thread(target=release.wait, args=(60,), daemon=True)
    bystander.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            for _ in sweep.iter_results(plan, "random", 2):
                pass
    finally:
        release.set()
        bystander.join(timeout=10)
    assert interrupted
    _, alive = psutil.wait_procs(_new_children(before), timeout=30)
    running = [p for p in alive if _running(p)]
    for proc in running:
        proc.kill()
    assert not running, f"workers left running: {[p.pid for p in running]}"


def _new_children(before: set[int]) -> list[object]:
    import psutil

    return [p for p in psutil.Process().children(recursive=True) if p.pid not in before]


def _running(proc: object) -> bool:
    """Not exited: a zombie has exited (another test's, not yet reaped by its parent)."""
    import psutil

    try:
        return proc.status() != psutil.STATUS_ZOMBIE  # type: ignore[attr-defined,no-any-return]
    except psutil.NoSuchProcess:
        return False


def test_workers_are_forked_with_ctrl_c_held_until_they_ignore_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Between its fork and its initializer a worker still has the parent's SIGINT handler: a
    Ctrl-C there killed it with a traceback and left the pool waiting on its task (the
    ctrl-c test timed out on a loaded CI machine). Workers must start with SIGINT blocked."""
    real_init = sweep._init_worker

    def recording_init() -> None:
        held = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, set())
        (tmp_path / str(os.getpid())).write_text("held" if held else "open")
        real_init()

    monkeypatch.setattr(sweep, "_init_worker", recording_init)
    results = [
        r for chunk in sweep.iter_results([sweep.Range(4, 0, 2)], "random", 2) for r in chunk
    ]
    assert len(results) == 2
    seen = [f.read_text() for f in tmp_path.iterdir()]
    assert seen and set(seen) == {"held"}, seen
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set()), "parent unblocked"
