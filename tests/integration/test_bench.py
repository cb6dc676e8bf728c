"""``medchain bench``: real clusters under a few seconds of load, plus the pure statistics.

The process tests start real node processes on free 127.0.0.1 ports through the bench itself,
bound every wait, and check that nothing the bench started outlives it. They never assert a
speed: only that the figures exist, are consistent and are sane.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from array import array
from pathlib import Path
from typing import Any

import psutil
import pytest

from scripts import bench
from scripts.bench.loadspec import TX_ACCEPTED, TX_REJECTED, BlockSeen, LoadResult, StatusSample

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 150.0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# helpers


def _bench_command() -> list[str]:
    """``medchain bench`` as a user runs it."""
    return [sys.executable, "-m", "scripts.cli", "bench"]


def _procs_mentioning(text: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if any(text in part for part in cmdline) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _kill_leftovers(out: Path) -> list[int]:
    """Kill (and report) any process still running from ``out``: cleanup even on failure."""
    left = _procs_mentioning(str(out))
    for proc in left:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    psutil.wait_procs(left, timeout=10)
    return [p.pid for p in left]


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        status: str = psutil.Process(pid).status()
    except psutil.Error:
        return False
    return bool(status != psutil.STATUS_ZOMBIE)


def _run(args: list[str], out: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [*_bench_command(), *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
    finally:
        leftovers = _kill_leftovers(out)
        assert not leftovers, f"processes left behind: {leftovers}"


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 0 and height > 0
    from PIL import Image  # matplotlib's own dependency

    with Image.open(path) as img:
        img.verify()  # decodes the whole file: CRCs and structure


def _assert_latency_sane(lat: dict[str, Any]) -> None:
    assert lat["count"] > 0
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert lat["min"] <= lat["p50"]


# ---------------------------------------------------------------------------------------------
# real clusters


@pytest.mark.integration
def test_bench_run_writes_consistent_results(tmp_path: Path) -> None:
    out = tmp_path / "tmp"
    proc = _run(
        ["--nodes", "4", "--duration", "3", "--warmup", "1", "--out", str(out), "--json"], out
    )
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)  # --json: stdout holds the result and nothing else
    result = json.loads((out / "result.json").read_text())
    assert printed == result

    assert result["throughput_tx_per_s"] > 0
    assert result["blocks_per_s"] > 0
    _assert_latency_sane(result["latency_ms"])
    assert result["committed_txs"] > 0
    assert result["accepted_txs"] == result["committed_txs"] + result["uncommitted_txs"]
    assert result["view_changes"] >= 0
    # Closed loop until commit: each commit time is the accepting node's long-poll answer,
    # not a GET /status polling grid (which would be observation_resolution_ms = 25).
    assert result["latency_from"] == "long-poll"
    assert result["observation_resolution_ms"] is None
    assert not result["interrupted"]
    assert len(result["nodes"]) == 4
    for node in result["nodes"]:
        assert node["cpu_percent_mean"] is not None and node["rss_mb_max"] > 0

    manifest = result["manifest"]
    assert manifest["parameters"]["nodes"] == 4
    assert manifest["parameters"]["payload_size"] == 1024
    assert manifest["seed"] == 1
    assert manifest["cpu_count"] == os.cpu_count()
    assert manifest["python"] == sys.version.split()[0]
    assert manifest["cluster"]["consensus"]["max_batch_txs"] == manifest["parameters"]["block_txs"]

    with (out / "timeline.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows and {"second", "committed_tx", "blocks", "p50_ms"} <= set(rows[0])
    assert sum(int(r["committed_tx"]) for r in rows) >= result["committed_txs"]
    assert {r["phase"] for r in rows} >= {"warmup", "measure"}

    for name in ("throughput.png", "latency.png", "latency_distribution.png"):
        _assert_png(out / name)

    # Nothing survives the bench: node processes, the load generator, the private keys.
    for pid in (*manifest["cluster"]["pids"], result["loadgen_pid"]):
        assert not _alive(pid), f"pid {pid} is still running"
    assert not (out / "cluster" / "keys").exists()
    assert (out / "cluster" / "logs" / "node0.log").is_file()


@pytest.mark.integration
def test_bench_sweep_writes_summary_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    args = ["sweep", "--nodes", "4", "--block-txs", "50,100", "--duration", "2", "--warmup", "0.5"]
    proc = _run([*args, "--rate", "200", "--drain", "5", "--out", str(out), "--json"], out)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert json.loads(proc.stdout) == summary
    assert summary["varying"] == ["block_txs"]
    points = summary["points"]
    assert [p["block_txs"] for p in points] == [50, 100]
    assert all(p["status"] == "ok" and p["throughput_tx_per_s"] > 0 for p in points)
    with (out / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["point"] for r in rows] == ["block50", "block100"]
    _assert_png(out / "sweep_throughput.png")
    for p in points:
        result = json.loads((Path(p["dir"]) / "result.json").read_text())
        assert result["manifest"]["cluster"]["consensus"]["max_batch_txs"] == p["block_txs"]
        _assert_latency_sane(result["latency_ms"])


@pytest.mark.integration
def test_ctrl_c_stops_load_and_cluster(tmp_path: Path) -> None:
    out = tmp_path / "interrupted"
    load = ["--duration", "60", "--rate", "300"]  # open loop: a small pre-signed pool
    cmd = [*_bench_command(), "--nodes", "4", *load, "--out", str(out), "--json"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # Wait (bounded) until the load runs: the nodes are up and transactions commit.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if _committed_height(out) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert _committed_height(out) >= 2, "the load never started"
        proc.send_signal(signal.SIGINT)
        # Bounded, with room for a loaded CI machine: drain, stop 4 nodes, write results.
        stdout, stderr = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
        leftovers = _kill_leftovers(out)
    assert not leftovers, f"processes left behind: {leftovers}"
    assert proc.returncode == bench.EXIT_INTERRUPTED, stderr.decode()
    result = json.loads(stdout)  # partial results are still written
    assert result["interrupted"]
    assert not _alive(result["loadgen_pid"])
    assert not (out / "cluster" / "keys").exists()


def _committed_height(out: Path) -> int:
    from scripts.cluster import ClusterProcesses, fetch_status

    try:
        specs = ClusterProcesses(out / "cluster").specs()
    except Exception:
        return 0
    status = fetch_status(specs[0].url, timeout=1.0) if specs else None
    return int(status.get("height", 0)) if status else 0


@pytest.mark.integration
def test_bench_against_a_running_cluster(tmp_path: Path, make_cluster: Any) -> None:
    """--dir: the bench loads a cluster it did not start, and leaves it running."""
    cluster = make_cluster("cluster")
    cluster.up(4)
    out = tmp_path / "out"
    args = ["--dir", str(cluster.root), "--duration", "2", "--warmup", "0.5", "--rate", "200"]
    proc = subprocess.run(
        [*_bench_command(), *args, "--out", str(out), "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["throughput_tx_per_s"] > 0
    assert not result["manifest"]["cluster"]["started_by_bench"]
    assert result["manifest"]["cluster"]["pids"] == [cluster.procs.pid(i) for i in range(4)]
    assert cluster.procs.running() == [0, 1, 2, 3]


# ---------------------------------------------------------------------------------------------
# argument handling and statistics (no processes)


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="medchain")
    bench.add_bench_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["bench", *argv])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--block-txs", "100,500"], "use `medchain bench sweep`"),
        (["--rate", "10", "--concurrency", "2"], "exclude each other"),
        (["--count", "10", "--duration", "2"], "exclude each other"),
        (["--nodes", "http://127.0.0.1:1", "--block-txs", "10"], "cluster-side parameter"),
        (["--nodes", "3"], "--nodes must be in 4..64"),
        (["--payload-size", "100000"], "--payload-size must be in"),
        (["--nodes", "ftp://x:1"], "is not an http(s)://host:port URL"),
        (["--dir", "/nowhere", "--nodes", "4"], "--dir targets a running cluster"),
        (["--key", "k.key"], "--key is for a running cluster"),
    ],
)
def test_bad_parameters_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(bench.BenchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        bench.build_points(_parse(*argv))


def test_sweep_is_the_cartesian_product_in_order() -> None:
    points, varying = bench.build_points(
        _parse("sweep", "--nodes", "4,7", "--block-txs", "100,500", "--rate", "300")
    )
    assert varying == ["nodes", "block_txs"]
    assert [(p.nodes, p.block_txs) for p in points] == [(4, 100), (4, 500), (7, 100), (7, 500)]
    assert [p.label(varying) for p in points][:2] == ["n4-block100", "n4-block500"]
    assert all(p.rate == 300 and p.concurrency is None for p in points)
    assert points[0].client_batch == 2  # open loop default: about 200 requests a second


def test_defaults_are_a_closed_loop_on_four_nodes() -> None:
    (p,), varying = bench.build_points(_parse())
    assert varying == []
    assert (p.nodes, p.concurrency, p.rate, p.duration_s) == (4, 8, None, 10.0)
    assert p.block_txs == 500 and p.payload_size == 1024


SCENARIO = """
name = "bench-restarts"
description = "restart three nodes in turn, then kill the fourth for 1.5 s, while the bench runs"
nodes = 4
duration_s = 12

[[timeline]]
at = 0.5
fault = "restart"
nodes = 1

[[timeline]]
at = 3.5
fault = "restart"
nodes = 2

[[timeline]]
at = 6.5
fault = "restart"
nodes = 3

[[timeline]]
at = 9.5
fault = "kill"
nodes = 0
duration_s = 1.5
"""


def test_bench_runs_a_fault_scenario_and_reports_it(tmp_path: Path) -> None:
    scenario = tmp_path / "kill.toml"
    scenario.write_text(SCENARIO)
    out = tmp_path / "out"
    args = ["--nodes", "4", "--duration", "12", "--warmup", "1", "--scenario", str(scenario)]
    proc = _run([*args, "--out", str(out), "--json"], out)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["committed_txs"] > 0
    faults = result["scenario"]["faults"]
    assert [(f["kind"], f["error"]) for f in faults] == [("restart", None)] * 3 + [("kill", None)]
    assert all(f["healed_s"] is not None for f in faults), "the bench heals the scenario's faults"
    # Every node's process exited once, never all at once: the process monitor follows the
    # launcher's restarts instead of stopping the load for a dead cluster.
    assert not any("down at once" in w for w in result["warnings"]), result["warnings"]
    # The launcher runs process faults one at a time, so on a loaded machine later steps slip;
    # a step that began after the load ended is named as such, and every node whose fault was
    # over a sample interval before the end was seen to exit and come back.
    end_s = result["load_end_s"]
    late = [f for f in faults if f["start_s"] >= end_s]
    assert sum("after the load ended" in w for w in result["warnings"]) == len(late)
    seen = {int(w.split()[1]) for w in result["warnings"] if "was started again" in w}
    due = {f["nodes"][0] for f in faults if f["healed_s"] < end_s - 1.0}
    assert faults[0]["nodes"] == [1] and 1 in due, faults
    assert due <= seen <= {0, 1, 2, 3}, (faults, result["warnings"])
    gap = result["commit_gap"]
    assert gap["commits"] > 0 and gap["bound_s"] == 3.0 and gap["longest_s"] >= 0


def test_an_invalid_scenario_is_refused_before_anything_starts(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nnodes = 4\n[[timeline]]\nat = 1\nfault = "teleport"\n')
    out = tmp_path / "out"
    code = bench.main_bench(_parse("--scenario", str(bad), "--out", str(out)))
    assert code == 1
    assert not (out / "cluster").exists()


def test_percentiles_interpolate_and_are_ordered() -> None:
    assert bench.percentile([], 50) is None
    assert bench.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert bench.percentile([5.0], 99) == 5.0
    d = bench.Distribution.of([float(x) for x in range(1, 101)])
    assert d.p50 is not None and d.p95 is not None and d.p99 is not None and d.max is not None
    assert d.p50 == pytest.approx(50.5) and d.max == 100.0
    assert d.p50 <= d.p95 <= d.p99 <= d.max


def _synthetic_result() -> LoadResult:
    """Two requests of 2 txs: one sent in the warmup, one in the window; both commit."""
    s = 1_000_000_000
    t0 = 10 * s
    origin = array("q", [t0, t0, t0 + 2 * s, t0 + 2 * s])
    committed = array("q", [t0 + s // 2, t0 + s // 2, t0 + 2 * s + s // 10, t0 + 2 * s + s // 5])
    return LoadResult(
        t0_ns=t0,
        warmup_end_ns=t0 + s,
        submit_end_ns=t0 + 3 * s,
        end_ns=t0 + 4 * s,
        wall_minus_mono_ns=0,
        pool_size=4,
        origin_ns=origin,
        sent_ns=array("q", origin),
        acked_ns=array("q", origin),
        acked_by=array("b", [0] * 4),
        committed_ns=committed,
        height=array("q", [1, 1, 2, 3]),
        outcome=array("b", [TX_ACCEPTED] * 4),
        blocks=[
            BlockSeen(1, t0 + s // 2, t0 // 1_000_000, 2, 0),
            BlockSeen(2, t0 + 2 * s + s // 10, (t0 + 2 * s) // 1_000_000, 1, 0),
            BlockSeen(3, t0 + 2 * s + s // 5, (t0 + 2 * s) // 1_000_000, 1, 0),
        ],
        status=[StatusSample(t0, 0, 0, 0), StatusSample(t0 + 3 * s, 3, 1, 1)],
        errors={},
        requests=2,
        retries=0,
        pool_exhausted=False,
        interrupted=False,
        max_schedule_lag_ms=0.0,
    )


def test_analysis_counts_only_the_window() -> None:
    (p,), _ = bench.build_points(_parse("--duration", "2", "--warmup", "1"))
    target = bench.Target(
        urls=("http://127.0.0.1:1",),
        keys=(),
        pids=(None,),
        started=False,
        cluster_dir=None,
        consensus=None,
    )
    outcome = bench.LoadOutcome(_synthetic_result(), [], frozenset(), None, None)
    warnings: list[str] = []
    a = bench.analyze(p, target, outcome, warnings)
    s = a.summary
    # Window [1 s, 3 s): blocks 2 and 3 (2 txs); block 1 was in the warmup.
    assert s["measured_seconds"] == 2.0
    assert s["throughput_tx_per_s"] == 1.0
    assert s["blocks_per_s"] == 1.0
    # Latency only for the two txs sent in the window: 100 ms and 200 ms.
    assert s["latency_ms"]["count"] == 2
    assert s["latency_ms"]["min"] == 100.0 and s["latency_ms"]["max"] == 200.0
    assert s["latency_breakdown_ms"]["submit_to_proposal"]["max"] == 0.0
    assert s["view_changes"] == 1
    assert [r.phase for r in a.timeline] == ["warmup", "measure", "measure", "drain"]
    assert [r.committed_tx for r in a.timeline] == [2, 0, 2, 0]
    assert warnings == []


def test_rejected_transactions_count_apart_from_latency() -> None:
    r = _synthetic_result()
    r.outcome[3] = TX_REJECTED
    (p,), _ = bench.build_points(_parse("--duration", "2", "--warmup", "1"))
    target = bench.Target(("http://127.0.0.1:1",), (), (None,), False, None, None)
    s = bench.analyze(p, target, bench.LoadOutcome(r, [], frozenset(), None, None), []).summary
    assert (s["sent_txs"], s["accepted_txs"], s["rejected_txs"]) == (2, 1, 1)
    assert s["latency_ms"]["count"] == 1 and s["uncommitted_txs"] == 0
