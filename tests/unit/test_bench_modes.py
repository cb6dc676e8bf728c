"""The bench's closed-loop client modes, cost per transaction and per-minute stability: pure
functions of the parameters and of synthetic records (no processes, no clock)."""

from __future__ import annotations

import argparse
from array import array

import pytest

from scripts import bench
from scripts.bench.analyse import (
    UsageSample,
    late_fault_warnings,
    per_minute,
    stability_warnings,
)
from scripts.bench.loadspec import TX_ACCEPTED, BlockSeen, LoadResult, StatusSample

S = 1_000_000_000


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="medchain")
    bench.add_bench_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["bench", *argv])


def _point(*argv: str) -> bench.BenchParams:
    (p,), _ = bench.build_points(_parse(*argv))
    return p


def test_clients_times_outstanding_is_the_closed_loop_and_batch_is_records_per_request() -> None:
    p = _point("--clients", "64", "--outstanding", "2", "--batch", "1")
    assert (p.clients, p.outstanding, p.concurrency, p.client_batch) == (64, 2, 128, 1)
    assert p.rate is None and p.latency_from == "long-poll"
    lone = _point("--clients", "1", "--batch", "1")
    assert (lone.concurrency, lone.outstanding, lone.client_batch) == (1, 1, 1)
    # The older spellings still work.
    old = _point("--concurrency", "8", "--client-batch", "100")
    assert (old.concurrency, old.clients, old.client_batch) == (8, None, 100)


def test_the_block_size_is_block_txs_and_goes_to_the_cluster() -> None:
    p = _point("--block-txs", "250")
    assert p.block_txs == 250
    assert bench.params.CLUSTER_SIDE["block_txs"] == "max_batch_txs"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--clients", "2", "--concurrency", "4"], "exclude each other"),
        (["--clients", "2", "--rate", "100"], "exclude each other"),
        (["--outstanding", "2"], "give --clients too"),
        (["--clients", "0"], "--clients must be positive"),
        (["--clients", "1", "--outstanding", "0"], "--outstanding must be positive"),
        (["--rate", "100", "--latency-from", "long-poll"], "closed loop until commit"),
        (["--nodes", "http://127.0.0.1:1", "--vote-log-sync", "normal"], "cluster-side"),
    ],
)
def test_inconsistent_client_modes_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(bench.BenchError, match=message):
        bench.build_points(_parse(*argv))


def test_open_loop_and_ack_only_loops_observe_on_the_status_grid() -> None:
    assert _point("--rate", "100").latency_from == "status-poll"
    assert _point("--closed-until", "ack").latency_from == "status-poll"
    assert _point("--latency-from", "status-poll").latency_from == "status-poll"


def test_a_sweep_over_clients() -> None:
    points, varying = bench.build_points(_parse("sweep", "--clients", "1,64", "--batch", "1"))
    assert varying == ["clients"]
    assert [(p.clients, p.concurrency) for p in points] == [(1, 1), (64, 64)]
    assert [p.label(varying) for p in points] == ["clients1", "clients64"]


def _steady(minutes: int, tx_per_block: list[int], latency_ms: list[float]) -> LoadResult:
    """One block a second for ``minutes`` minutes of window after a 1 s warmup; block k holds
    tx_per_block[minute] of anyone's transactions and one of ours with latency_ms[minute]."""
    t0 = 5 * S
    start = t0 + S
    blocks, origin, committed = [], array("q"), array("q")
    for k in range(minutes * 60):
        m = k // 60
        seen = start + k * S + S // 2
        blocks.append(BlockSeen(k + 1, seen, 0, tx_per_block[m], 0))
        committed.append(seen)
        origin.append(seen - int(latency_ms[m] * 1e6))
    n = len(origin)
    end = start + minutes * 60 * S
    return LoadResult(
        t0_ns=t0,
        warmup_end_ns=start,
        submit_end_ns=end,
        end_ns=end + S,
        wall_minus_mono_ns=0,
        pool_size=n,
        origin_ns=origin,
        sent_ns=array("q", origin),
        acked_ns=array("q", origin),
        acked_by=array("b", [0] * n),
        committed_ns=committed,
        height=array("q", range(1, n + 1)),
        outcome=array("b", [TX_ACCEPTED] * n),
        blocks=blocks,
        status=[StatusSample(t0, 0, 0, 0)],
        errors={},
        requests=n,
        retries=0,
        pool_exhausted=False,
        interrupted=False,
        max_schedule_lag_ms=0.0,
    )


def _usage(r: LoadResult, cpu: list[float], nodes: int = 2) -> list[UsageSample]:
    """A sample a second; node CPU percent per minute of the window."""
    out = []
    for k in range(len(cpu) * 60):
        t = r.warmup_end_ns + (k + 1) * S
        c = cpu[k // 60]
        out.append(UsageSample(t, (c,) * nodes, (1,) * nodes, 0.0, 50.0))
    return out


def test_cpu_us_per_tx_is_per_node_and_summed() -> None:
    r = _steady(1, [100], [10.0])
    p = _point("--duration", "60", "--warmup", "1")
    target = bench.Target(("http://a:1", "http://b:1"), (), (None, None), False, None, None)
    outcome = bench.LoadOutcome(r, _usage(r, [50.0]), frozenset(), None, None)
    s = bench.analyze(p, target, outcome, []).summary
    # 100 tx/s; each node busy half a core: 0.5 * 1e6 / 100 = 5,000 µs each.
    assert s["throughput_tx_per_s"] == 100.0
    assert [n["cpu_us_per_tx"] for n in s["nodes"]] == [5000.0, 5000.0]
    assert s["cpu_us_per_tx"] == 10000.0
    assert s["latency_from"] == "long-poll" and s["observation_resolution_ms"] is None


def test_per_minute_figures_and_a_warning_when_the_last_minute_is_worse() -> None:
    r = _steady(3, [100, 100, 80], [10.0, 10.0, 10.5])
    usage = _usage(r, [50.0, 50.0, 50.0])
    start, end = r.warmup_end_ns, r.submit_end_ns
    minutes = per_minute(r, usage, 2, start, end)
    assert [m["throughput_tx_per_s"] for m in minutes] == [100.0, 100.0, 80.0]
    assert [m["latency_p50_ms"] for m in minutes] == [10.0, 10.0, 10.5]
    assert [m["cpu_us_per_tx"] for m in minutes] == [10000.0, 10000.0, 12500.0]
    [warning] = stability_warnings(minutes)
    assert "minute 3" in warning and "throughput" in warning and "CPU-µs/tx" in warning
    assert "latency p50" not in warning  # +5%: within the 10% tolerance


def test_no_stability_verdict_without_two_full_minutes() -> None:
    r = _steady(1, [100], [10.0])
    # A window of 1.5 minutes holds one full minute: the tail is left out.
    minutes = per_minute(r, [], 2, r.warmup_end_ns, r.warmup_end_ns + 90 * S)
    assert len(minutes) == 1 and minutes[0]["cpu_us_per_tx"] is None
    assert stability_warnings(minutes) == []
    steady = per_minute(_steady(2, [100, 100], [10.0, 10.9]), [], 2, 6 * S, 126 * S)
    assert stability_warnings(steady) == []


def test_a_scenario_step_that_began_after_the_load_is_named() -> None:
    faults = [
        {"label": "restart 1", "kind": "restart", "start_s": 0.6, "healed_s": 6.8},
        {"label": "kill 0", "kind": "kill", "start_s": 18.3, "healed_s": 22.7},
    ]
    (warning,) = late_fault_warnings(faults, load_end_s=13.0)
    assert "'kill 0' began at 18.3s, after the load ended at 13.0s" in warning
    assert late_fault_warnings(faults[:1], load_end_s=13.0) == []
