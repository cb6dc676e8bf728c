"""Fault injection on real node processes, through the `medchain` CLI as a user runs it.

* `medchain fault ...` on a live cluster: a partition cuts a node off (it stays behind while the
  others commit), the operator signature is enforced, SIGSTOP/SIGCONT, and a wiped node
  rejoins by state transfer;
* `medchain scenario run` on three short shipped scenarios: each must pass every check (no
  acknowledged write lost, chains agree and verify, progress after every heal).

Every wait is bounded; every cluster is torn down however the test ends (the scenario runner
tears its own down; a leftover node process of the test's directories is SIGKILLed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from node.crypto import generate_keypair
from scripts.cluster import ClusterLayout, ClusterProcesses, fetch_status
from scripts.faultctl import AdminClient, AdminRequestError
from scripts.scenario import SCENARIO_DIR, enable_faults
from tests.integration.conftest import Cluster, run_cli, run_cli_json

pytestmark = pytest.mark.integration

SCENARIO_TIMEOUT_S = 240.0
WAIT_S = 30.0


def _wait(predicate: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def _status(cluster: Cluster, i: int) -> dict[str, Any]:
    st = fetch_status(cluster.urls()[i])
    assert st is not None, f"node {i} does not answer GET /status"
    return st


# =============================================================================================
# medchain fault on a live cluster


def test_fault_commands_on_a_live_cluster(make_cluster: Callable[[str], Cluster]) -> None:
    cluster = make_cluster("faults")
    root = str(cluster.root)
    run_cli("init", "--nodes", "4", "--dir", root)
    layout = ClusterLayout(cluster.root)
    for i in layout.node_indices():
        enable_faults(layout.config_path(i), seed=i)
    cluster.up()

    # Cut node 3 off; the other three keep committing without it.
    rows = run_cli_json(
        "fault", "apply", "--dir", root, "--all", "partition", "--group", "3", "--duration", "120"
    )
    assert [r["ok"] for r in rows] == [True] * 4, rows
    listing = run_cli_json("fault", "list", "--dir", root, "--node", "3")
    assert [a["kind"] for a in listing[0]["active"]] == ["partition"]
    assert listing[0]["active"][0]["groups"] == [[3]]
    receipts = run_cli_json("submit", "--dir", root, "--count", "20", "--wait", "--node-index", "0")
    top = max(r["height"] for r in receipts)
    assert _status(cluster, 3)["height"] == 0, "an isolated node cannot have committed anything"
    _wait(
        lambda: _status(cluster, 3)["faults"]["counters"].get("partition_out", 0) > 0,
        "node 3 to count frames cut by the partition",
    )

    # Only the operator may inject faults: a request signed by another key is refused.
    async def forged() -> None:
        async with aiohttp.ClientSession() as session:
            client = AdminClient(session, generate_keypair(b"\x07" * 32)[0])
            with pytest.raises(AdminRequestError) as info:
                await client.apply(1, cluster.urls()[1], {"kind": "pause"})
            assert info.value.status == 403

    asyncio.run(forged())
    after = run_cli_json("fault", "list", "--dir", root, "--node", "1")[0]["active"]
    assert [a["kind"] for a in after] == ["partition"], "the forged pause must not apply"

    # Heal: node 3 catches up with everyone.
    cleared = run_cli_json("fault", "clear", "--dir", root)
    assert all(r["ok"] and r["cleared"] for r in cleared), cleared
    cluster.wait_converged(top)

    # Freeze node 2 and wake it again; then wipe node 1: it rejoins empty, by state transfer.
    run_cli_json("fault", "stop", "--dir", root, "--node", "2")
    assert cluster.procs.state(2).stopped
    run_cli_json("fault", "cont", "--dir", root, "--node", "2")
    assert not cluster.procs.state(2).stopped
    run_cli_json("fault", "wipe", "--dir", root, "--node", "1")
    more = run_cli_json("submit", "--dir", root, "--count", "10", "--wait", "--node-index", "0")
    height, _ = cluster.wait_converged(max(r["height"] for r in more))
    assert height > top
    verified = run_cli_json("verify", "--dir", root)
    assert all(r["ok"] for r in verified), verified
    cluster.remember_pids()


# =============================================================================================
# medchain scenario run


@pytest.fixture
def scenario_dirs(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(out dir, cluster dir) for one scenario run; teardown stops whatever still runs there."""
    out, cluster_dir = tmp_path / "out", tmp_path / "cluster"
    yield out, cluster_dir
    with contextlib.suppress(Exception):
        ClusterProcesses(cluster_dir).down(timeout=10)
    leftovers = _kill_nodes_under(cluster_dir)
    assert not leftovers, f"node processes outlived the scenario: {leftovers}"


def _kill_nodes_under(root: Path) -> list[int]:
    """SIGKILL every live process whose command line names ``root``; returns their pids."""
    killed = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        cmdline = proc.info.get("cmdline") or []
        if proc.info.get("status") == psutil.STATUS_ZOMBIE:
            continue
        if any(str(root) in arg for arg in cmdline) and proc.pid != os.getpid():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            killed.append(proc.pid)
    return killed


@pytest.fixture(scope="module")
def peak_tx_s(tmp_path_factory: pytest.TempPathFactory) -> float:
    """The 4-node peak the shipped scenarios' ``load = 0.5`` refers to, measured once for the
    module by ``medchain scenario peak`` (the same short bench ``scenario run`` would run)."""
    out = tmp_path_factory.mktemp("peak")
    cmd = [sys.executable, "-m", "scripts.cli", "scenario", "peak"]
    cmd += [str(SCENARIO_DIR / "primary-crash.toml"), "--out", str(out), "--json"]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=SCENARIO_TIMEOUT_S, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [row] = json.loads(proc.stdout)
    assert row["nodes"] == 4 and row["peak_tx_s"] > 0 and row["method"].startswith("medchain")
    return float(row["peak_tx_s"])


@pytest.mark.parametrize(
    "name", ["primary-crash", "minority-partition", "byzantine-equivocating-primary"]
)
def test_shipped_scenario_passes_at_half_of_peak(
    name: str, scenario_dirs: tuple[Path, Path], peak_tx_s: float
) -> None:
    out, cluster_dir = scenario_dirs
    cmd = [
        sys.executable,
        "-m",
        "scripts.cli",
        "scenario",
        "run",
        str(SCENARIO_DIR / f"{name}.toml"),
        "--seed",
        "1",
        "--out",
        str(out),
        "--cluster-dir",
        str(cluster_dir),
        "--peak",
        str(peak_tx_s),
        "--json",
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=SCENARIO_TIMEOUT_S, stdin=subprocess.DEVNULL
    )
    report_path = out / "report.json"
    assert report_path.is_file(), f"no report\n--- stderr\n{proc.stderr[-3000:]}"
    report = json.loads(report_path.read_text())
    failed = [c for c in report["checks"] if not c["ok"]]
    assert proc.returncode == 0 and report["ok"], (
        f"exit {proc.returncode}; failed checks: {json.dumps(failed, indent=1)}"
    )
    assert json.loads(proc.stdout) == [{"scenario": name, "ok": True, "out": str(out)}]

    # The run did what the file says, and the report carries what a reader needs.
    assert report["faults"] and all(f["error"] is None for f in report["faults"])
    assert all(f["healed_s"] is not None and f["recovery_s"] is not None for f in report["faults"])
    load = report["load"]
    assert load["source"] == "the scenario's load" and load["share_of_peak"] == 0.5
    assert load["rate_tx_s"] == pytest.approx(peak_tx_s / 2, rel=0.01)
    stats = report["stats"]
    assert stats["commit_observed"] > 0 and stats["commit_observed"] <= stats["accepted"]
    assert stats["accepted_uncommitted"] == 0 and report["accepted_uncommitted"]["count"] == 0
    gap = report["commit_gap"]
    assert gap["ok"] and gap["longest_s"] <= gap["bound_s"] == 3.0
    assert all(f["throughput_tx_s"] is not None for f in report["faults"])
    assert sum(report["commits_per_second"]) == stats["commit_observed"]
    assert report["latency_ms"]["commit"]["p50"] is not None
    heights = set(report["heights"].values())
    assert len(heights) == 1 and heights.pop() > 0
    if name == "byzantine-equivocating-primary":
        assert report["byzantine"] == [0] and report["honest"] == [1, 2, 3]
    if name != "minority-partition":
        assert report["view_changes"]["max_view"] >= 1, "losing the primary forces a view change"
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out / "history.jsonl").read_text().splitlines()) == stats["submitted"]
    assert sorted(p.name for p in (out / "logs").iterdir()) == [f"node{i}.log" for i in range(4)]
