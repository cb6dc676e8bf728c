"""node/access: a closed node answers reads only under a registered key; fetch serving is bounded.

A node of a closed cluster (the default: no ``[access] open``) refuses anonymous GETs of
/tx, /blocks and /audit with 401, shows anonymous /status only its public summary, and
answers a signed read token of a registered client or replica key, bound to the cluster id
and short-lived. An open node answers everyone. Served fetches are rate- and byte-limited per
peer (node/fetchserve).
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from consensus.messages import FetchRequest, FetchResponse
from node.access import READ_HEADER, ReadTokens, client_signer
from node.config import NodeLimits, load_config
from node.crypto import NodeCrypto, ReplicaKeys, generate_keypair
from node.fetchserve import FetchBudget
from node.ledger.verify import verify_certificate
from node.runtime import STORE_FILE, Node
from tests.unit.helpers_audit import chain_of_ten, new_store, write_test_config
from tests.unit.helpers_ledger import CLIENT_KEYS, REPLICA_KEYS, N

CLUSTER = ""
"""The helpers' chain was signed without a cluster id (see the last test)."""
READS = ("/blocks/3", "/blocks?from=1&limit=5", "/blocks?txs=0", "/tx/" + "ab" * 32, "/audit")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _node(tmp_path: Path, **changes: Any) -> Node:
    path = tmp_path / "node0.toml"
    write_test_config(path, tmp_path / "data", ports=[_free_port() for _ in range(N)])
    config = dataclasses.replace(load_config(path), cluster_id=CLUSTER, **changes)
    config.data_dir.mkdir(parents=True)
    new_store(config.data_dir / STORE_FILE, chain_of_ten()).close()
    node = Node(config, secret=REPLICA_KEYS[0][0])
    await node.start()
    return node


@pytest.fixture
async def closed(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    node = await _node(tmp_path)
    try:
        async with TestClient(TestServer(node.app, host="127.0.0.1")) as client:
            yield client
    finally:
        await node.stop()


def _token(secret: bytes, public: bytes, cluster: str = CLUSTER, **kw: Any) -> str:
    return ReadTokens(public, client_signer(secret, cluster.encode()), **kw).header()


async def test_anonymous_reads_of_a_closed_node_are_refused(closed: TestClient[Any, Any]) -> None:
    for path in READS:
        resp = await closed.get(path)
        assert resp.status == 401, path
        doc = await resp.json()
        assert doc["error"] == "authentication required"
    status = await (await closed.get("/status")).json()
    assert status["height"] == 10 and status["access"] == "closed"
    assert "peers" not in status and "clients" not in status and "counters" not in status
    assert (await closed.get("/health")).status == 200
    # Writing needs no reader key: each transaction is signed (a bad body is a 400, not a 401).
    assert (await closed.post("/tx", json={})).status == 400


async def test_a_registered_key_reads_with_a_token(closed: TestClient[Any, Any]) -> None:
    for secret, public in (CLIENT_KEYS[0], REPLICA_KEYS[2]):
        headers = {READ_HEADER: _token(secret, public)}
        for path in READS[:3]:
            resp = await closed.get(path, headers=headers)
            assert resp.status == 200, path
        status = await (await closed.get("/status", headers=headers)).json()
        assert "peers" in status and "clients" in status


@pytest.mark.parametrize(
    "header",
    [
        _token(*generate_keypair(b"\x77" * 32)),  # a key nobody registered
        _token(*CLIENT_KEYS[0], cluster="another-cluster"),  # signed for another cluster
        _token(*CLIENT_KEYS[0], clock_ms=lambda: 1_000_000),  # long expired
        "ab" * 32 + " 99999999999999 " + "00" * 64,  # too far ahead (and a bad signature)
        "not a token",
    ],
)
async def test_bad_read_tokens_are_refused(closed: TestClient[Any, Any], header: str) -> None:
    resp = await closed.get("/blocks/3", headers={READ_HEADER: header})
    assert resp.status == 401


async def test_an_open_node_answers_anonymous_reads(tmp_path: Path) -> None:
    node = await _node(tmp_path, access_open=True)
    try:
        async with TestClient(TestServer(node.app, host="127.0.0.1")) as client:
            for path in READS[:3]:
                assert (await client.get(path)).status == 200, path
            assert "peers" in await (await client.get("/status")).json()
    finally:
        await node.stop()


async def test_fetches_are_served_within_the_peers_budget(tmp_path: Path) -> None:
    """Twenty whole-chain fetches from one peer at once (what a 283-byte body can hold) are
    served within its request budget; another peer's budget is its own."""
    limits = NodeLimits(fetch_serve_per_s=3)
    node = await _node(tmp_path, limits=limits)
    sent: list[tuple[int | None, FetchResponse]] = []
    node.transport.send = lambda dest, msg, frame=None: sent.append((dest, msg))  # type: ignore[method-assign]
    try:
        for _ in range(20):
            node._serve_fetch(FetchRequest(1, 64, 1))
        assert len(sent) == 3 and {d for d, _ in sent} == {1}
        assert all(len(m.blocks) == 10 for _, m in sent)
        node._serve_fetch(FetchRequest(1, 64, 2))
        assert len(sent) == 4 and sent[-1][0] == 2
        assert node.counters.dropped.snapshot()["fetch_budget_spent"] == 17
    finally:
        await node.stop()


def test_the_byte_budget_bounds_what_a_peer_is_sent() -> None:
    limits = NodeLimits(
        fetch_serve_per_s=1000,
        fetch_response_max_bytes=1000,
        fetch_serve_burst_bytes=1000,
        fetch_serve_bytes_per_s=500,
    )
    budget = FetchBudget(limits)
    sent = 0
    for step in range(100):  # ten seconds, a fetch every 100 ms
        allowed = budget.take(1, step / 10)
        if allowed:
            chunk = allowed + 200  # a served answer may overshoot by its last block
            budget.charge(1, chunk)
            sent += chunk
    # burst + rate * time, plus at most one block's overshoot
    assert sent <= 1000 + 500 * 10 + 1200
    assert budget.refused > 0


def test_consensus_signatures_are_bound_to_the_cluster_id() -> None:
    """A vote or a commit certificate of one cluster never verifies in another that shares
    the replica keys: NodeCrypto signs under the cluster domain, and the offline verifiers
    take the cluster id with the keys (ReplicaKeys)."""
    publics = [pub for _, pub in REPLICA_KEYS]
    a, b = ReplicaKeys(publics, b"cluster-a"), ReplicaKeys(publics, b"cluster-b")
    signer = NodeCrypto(REPLICA_KEYS[0][0], a)
    sig = signer.sign(b"medchain/commit\x00...")
    assert signer.verify(0, b"medchain/commit\x00...", sig)
    assert not NodeCrypto(REPLICA_KEYS[1][0], b).verify(0, b"medchain/commit\x00...", sig)
    block = chain_of_ten()[0]  # certified without a cluster id
    args = (block.height, block.digest, block.commits)
    assert verify_certificate(*args, publics, 3) is None
    assert verify_certificate(*args, ReplicaKeys(publics, b""), 3) is None
    assert verify_certificate(*args, a, 3) == "bad commit signature from replica 0"


def test_keys_a_node_publishes_carry_its_cluster_id() -> None:
    """`medchain verify --node URL` takes the keys from /status: without the cluster id there
    every certificate of a cluster with one would look forged."""
    from scripts.client import consortium_from_status

    doc = {
        "cluster_id": "medchain-abc",
        "replicas": [{"public_key": pub.hex()} for _, pub in REPLICA_KEYS],
        "clients": [],
    }
    keys = consortium_from_status(doc, "http://x").replica_publics
    assert list(keys) == [pub for _, pub in REPLICA_KEYS]
    assert getattr(keys, "cluster_id", None) == b"medchain-abc"
