"""Fault tolerance on real processes (PBFT sections 4.4, 4.5, 5.3): kill -9 the primary under
load, restart it, and start a node late with an empty data directory."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from scripts.cluster import fetch_status
from tests.integration.conftest import Cluster, run_cli, run_cli_json

LOAD_TIMEOUT_S = 150.0


def chain_tx_ids(url: str) -> list[str]:
    """Every transaction id on a node's chain, in order (paged GET /blocks)."""
    ids: list[str] = []
    start: int | None = 1
    while start is not None:
        with urllib.request.urlopen(f"{url}/blocks?from={start}&limit=100", timeout=10) as r:
            page: dict[str, Any] = json.load(r)
        ids.extend(t["tx_id"] for b in page["blocks"] for t in b["txs"])
        start = page["next"]
    return ids


def submit(cluster: Cluster, node: int, count: int) -> subprocess.Popen[str]:
    args = f"submit --dir {cluster.root} --node-index {node} --count {count} --wait --json"
    return subprocess.Popen(
        [sys.executable, "-m", "scripts.cli", *args.split(), "--timeout", "120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def acknowledged(load: subprocess.Popen[str]) -> list[str]:
    out, err = load.communicate(timeout=LOAD_TIMEOUT_S)
    assert load.returncode == 0, err
    return [r["tx_id"] for r in json.loads(out)]


def test_killing_the_primary_under_load_loses_no_acknowledged_record(
    make_cluster: Callable[[str], Cluster],
) -> None:
    cluster = make_cluster("kill-primary")
    run_cli("init", "--nodes", "4", "--dir", str(cluster.root))
    cluster.up()
    first = submit(cluster, 1, 3000)  # to a backup: it forwards to the primary
    time.sleep(1.0)
    status = fetch_status(cluster.urls()[1])
    assert status is not None
    primary = int(status["primary"])
    cluster.procs.kill(primary)  # kill -9, in the middle of the load
    second = submit(cluster, (primary + 2) % 4, 300)
    acked = acknowledged(first) + acknowledged(second)
    assert len(acked) == 3300

    live = [i for i in range(4) if i != primary]
    for i in live:
        s = fetch_status(cluster.urls()[i])
        assert s is not None and s["view"] > 0, "the live nodes moved to a new view"
        on_chain = chain_tx_ids(cluster.urls()[i])
        assert len(on_chain) == len(set(on_chain)), f"node {i} committed a record twice"
        assert set(acked) <= set(on_chain), f"node {i} lost acknowledged records"

    cluster.up()  # restarts only the killed node; it catches up by state transfer
    height, _ = cluster.wait_converged(min_height=1)
    for url in cluster.urls():
        assert run_cli_json("verify", "--node", url)["ok"] is True
    more = submit(cluster, primary, 50)  # and takes part again
    assert len(acknowledged(more)) == 50
    cluster.wait_converged(min_height=height + 1)


def test_a_node_started_late_with_an_empty_data_dir_catches_up(
    make_cluster: Callable[[str], Cluster],
) -> None:
    cluster = make_cluster("late")
    run_cli("init", "--nodes", "7", "--dir", str(cluster.root))
    early = [0, 1, 2, 3, 5, 6]
    cluster.procs.up(early)
    cluster.remember_pids()
    acked = acknowledged(submit(cluster, 0, 600))
    assert len(acked) == 600
    cluster.procs.wipe(4)
    cluster.procs.up([4])  # the 5th of 7, empty: state transfer brings it up to date
    cluster.remember_pids()
    cluster.wait_converged(min_height=1)
    assert set(acked) <= set(chain_tx_ids(cluster.urls()[4]))
    assert run_cli_json("verify", "--node", cluster.urls()[4])["ok"] is True


def _hold_batches(cluster: Cluster, batch_timeout_ms: int) -> None:
    """Make the primary sit on a partial batch for ``batch_timeout_ms`` (so a transaction it
    acknowledged is, for that long, nowhere but in its mempool and its pending table)."""
    for path in sorted(cluster.root.glob("node*.toml")):
        text = path.read_text()
        assert "[consensus]" not in text
        path.write_text(text + f"\n[consensus]\nbatch_timeout_ms = {batch_timeout_ms}\n")


def test_a_primary_killed_right_after_acknowledging_commits_it_all_once_restarted(
    make_cluster: Callable[[str], Cluster],
) -> None:
    """kill -9 the primary right after its 202, before it proposed; the others move to view 1
    (a backup's own request times the dead primary out); the primary restarts in view 0 and
    re-submits what it acknowledged: every acknowledged record commits on every node."""
    cluster = make_cluster("ack-kill")
    run_cli("init", "--nodes", "4", "--dir", str(cluster.root))
    _hold_batches(cluster, 4000)
    cluster.up()
    acked = acknowledged(submit_no_wait(cluster, 0, 100))
    assert len(acked) == 100
    cluster.procs.kill(0)
    other = acknowledged(submit(cluster, 1, 5))  # commits in view 1, after the backups' timers
    s = fetch_status(cluster.urls()[1])
    assert s is not None and s["view"] >= 1
    cluster.up()  # restarts node 0 only
    deadline = time.monotonic() + 60
    missing: set[str] = set(acked)
    while time.monotonic() < deadline and missing:
        missing = set(acked) - set(chain_tx_ids(cluster.urls()[1]))
        time.sleep(0.5)
    assert not missing, f"{len(missing)} acknowledged records never committed"
    cluster.wait_converged(min_height=1)
    for url in cluster.urls():
        on_chain = chain_tx_ids(url)
        assert set(acked) | set(other) <= set(on_chain)
        assert len(on_chain) == len(set(on_chain))


def submit_no_wait(cluster: Cluster, node: int, count: int) -> subprocess.Popen[str]:
    args = f"submit --dir {cluster.root} --node-index {node} --count {count} --json"
    return subprocess.Popen(
        [sys.executable, "-m", "scripts.cli", *args.split(), "--timeout", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
