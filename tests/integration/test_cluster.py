"""A real cluster end to end, driven through the `medchain` CLI as a user would.

Records go in with `medchain submit --wait`; every node must end on the same height and head
hash, `medchain verify` must accept every node's chain, and the chain must survive a full
`cluster down` / `cluster up` on the same directory and keep growing afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.conftest import Cluster, run_cli, run_cli_json

RECORDS = 1000


def submit(cluster: Cluster, count: int, *extra: str) -> list[dict[str, Any]]:
    receipts: list[dict[str, Any]] = run_cli_json(
        "submit", "--dir", str(cluster.root), "--count", str(count), "--wait", *extra
    )
    assert len(receipts) == count
    assert len({r["tx_id"] for r in receipts}) == count, "tx ids must be unique"
    assert all(type(r["height"]) is int and r["height"] >= 1 for r in receipts), receipts[:3]
    return receipts


def verify_all(cluster: Cluster, min_height: int) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = run_cli_json("verify", "--dir", str(cluster.root))
    assert len(results) == len(cluster.urls())
    for r in results:
        assert r["ok"], r
        assert r["first_bad_height"] is None
        assert r["height"] >= min_height
    return results


def committed_everywhere(cluster: Cluster, receipts: list[dict[str, Any]]) -> tuple[int, str]:
    """Wait until every node holds every receipt's block and all agree on the head."""
    height, head = cluster.wait_converged(max(r["height"] for r in receipts))
    return height, head


def run_lifecycle(cluster: Cluster, nodes: int) -> None:
    endpoints = cluster.up(nodes)
    assert [e["id"] for e in endpoints] == list(range(nodes))

    receipts = submit(cluster, RECORDS)
    height, head = committed_everywhere(cluster, receipts)

    results = verify_all(cluster, height)
    assert {r["head_hash"] for r in results if r["height"] == height} == {head}

    rows = cluster.status()
    assert all(r["alive"] and r["serving"] for r in rows), rows
    assert len({r["view"] for r in rows}) == 1

    # Full stop: no node process may survive `cluster down`.
    pids = {r["pid"] for r in rows}
    cluster.down()
    assert cluster.procs.running() == []
    assert not [p for p in pids if p in cluster.live_nodes()]
    assert all(not r["alive"] for r in cluster.status())

    # Same directory again: the chain is intact (same height and head on every node) ...
    cluster.up()
    assert cluster.wait_converged(height) == (height, head)
    # ... and new records still commit on top of it (another hospital, another entry node).
    more = submit(cluster, 50, "--node-index", str(nodes - 1), "--hospital", "hospital-1")
    assert min(r["height"] for r in more) > height
    new_height, _ = committed_everywhere(cluster, more)
    verify_all(cluster, new_height)


def test_four_nodes_commit_verify_and_restart(make_cluster: Callable[[str], Cluster]) -> None:
    run_lifecycle(make_cluster("four"), nodes=4)


@pytest.mark.slow
def test_seven_nodes_commit_verify_and_restart(make_cluster: Callable[[str], Cluster]) -> None:
    run_lifecycle(make_cluster("seven"), nodes=7)


def test_up_on_partly_running_cluster_starts_only_the_missing_nodes(
    make_cluster: Callable[[str], Cluster],
) -> None:
    cluster = make_cluster("partial")
    cluster.up(4)
    before = {i: cluster.procs.pid(i) for i in range(4)}
    run_cli("cluster", "kill-node", "2", "--dir", str(cluster.root))
    assert not cluster.procs.is_alive(2)

    cluster.up()
    after = {i: cluster.procs.pid(i) for i in range(4)}
    assert after[2] is not None and after[2] != before[2]
    assert {i: after[i] for i in (0, 1, 3)} == {i: before[i] for i in (0, 1, 3)}
    receipts = submit(cluster, 20, "--node-index", "2")
    # The same through an explicit node URL and key file, as for a remote node.
    key = cluster.procs.layout.client_key("hospital-3")
    receipts += submit(
        cluster, 20, "--node", cluster.urls()[2], "--key", str(key), "--hospital", "hospital-3"
    )
    assert {r["node"] for r in receipts} == {cluster.urls()[2]}
    committed_everywhere(cluster, receipts)


def test_up_rejects_a_different_node_count(make_cluster: Callable[[str], Cluster]) -> None:
    cluster = make_cluster("mismatch")
    run_cli("init", "--nodes", "4", "--dir", str(cluster.root))
    proc = run_cli("cluster", "up", "--nodes", "7", "--dir", str(cluster.root), check=False)
    assert proc.returncode == 1
    assert "4-node cluster, not 7" in proc.stderr
    assert cluster.procs.running() == []


def test_verify_names_the_first_tampered_block(make_cluster: Callable[[str], Cluster]) -> None:
    """Stop one node, rewrite a transaction's payload inside its stored block 2, and check that
    `medchain verify --db` rejects the chain at exactly that block while the others pass."""
    import sqlite3

    from node import ledger

    cluster = make_cluster("tamper")
    cluster.up(4)
    first = submit(cluster, 30)
    second = submit(cluster, 30)
    committed_everywhere(cluster, first + second)
    run_cli("cluster", "stop-node", "3", "--dir", str(cluster.root))

    db = cluster.root / "data" / "node3" / "chain.sqlite3"
    target = min(r["height"] for r in second)
    with sqlite3.connect(db) as conn:
        (raw,) = conn.execute("SELECT data FROM blocks WHERE height = ?", (target,)).fetchone()
        block = ledger.decode_block(bytes(raw))
        env = block.txs[0]
        forged = ledger.TxEnvelope(tx=env.tx, payload=env.payload + b" (edited)")
        tampered = ledger.Block(
            **{f: getattr(block, f) for f in ledger.Block.__dataclass_fields__}
            | {"txs": (forged, *block.txs[1:])}
        )
        conn.execute(
            "UPDATE blocks SET data = ? WHERE height = ?", (ledger.encode_block(tampered), target)
        )

    config = str(cluster.root / "node0.toml")
    bad = run_cli("verify", "--db", str(db), "--config", config, "--json", check=False)
    assert bad.returncode == 1, bad.stderr
    report = __import__("json").loads(bad.stdout)
    assert report["ok"] is False
    assert report["first_bad_height"] == target
    assert report["height"] == target - 1
    assert "payload hash mismatch" in report["reason"]

    good = run_cli_json("verify", "--node", cluster.urls()[0], "--config", config)
    assert good["ok"] is True
