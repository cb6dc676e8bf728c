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
        [sys.executable, "-m", "node.cli", *args.split(), "--timeout", "120"],
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
