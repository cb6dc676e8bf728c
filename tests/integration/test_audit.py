"""Audit against a real 4-node cluster on 127.0.0.1: tamper detection and repair, a byzantine
peer's forged blocks, honest nodes at different heights.

Every test starts its own cluster in a temporary directory (free ports) and always stops it;
every wait is bounded. The nodes' own auditors (GET /audit) must be wired into the runtime for
the repair test; the other tests drive an in-process Auditor against the real nodes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from consensus.hashing import batch_digest, chain_link, merkle_root
from consensus.messages import Commit
from node.audit.auditor import Auditor
from node.audit.compare import AGREE, DIVERGED, INVALID, LAGGING
from node.audit.evidence import evidence_from_json
from node.audit.log import AuditLog
from node.audit.served import parse_block_json
from node.audit.settings import AuditSettings
from node.audit.verify_evidence import conflict_signers, verify_evidence
from node.config import NodeConfig, load_config
from node.crypto import NodeCrypto, Signer, load_key
from node.ledger import (
    Block,
    ClientRegistry,
    block_to_json,
    decode_block,
    make_transaction,
)
from node.reader import BlockReader, ReaderSettings
from node.store import Store
from scripts.audit import add_audit_parser
from scripts.audit.gather import find_store_file
from scripts.cluster import ClusterLayout, ClusterProcesses, hospital_id
from scripts.provision import init_cluster
from scripts.submit import SubmitTarget, submit_records, synthetic_records

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

N_NODES = 4
WAIT_S = 45.0
HTTP_TIMEOUT_S = 5.0
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# helpers


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = WAIT_S) -> T:
    """Poll ``probe`` until it returns a truthy value; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def get_json(url: str) -> Any:
    """GET a JSON document; None if the node does not answer; raises on an HTTP error."""
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as resp:
            return json.loads(resp.read(64 << 20))
    except urllib.error.HTTPError:
        raise
    except (OSError, ValueError):
        return None


def run_audit(*argv: str) -> tuple[int, dict[str, Any]]:
    """``medchain audit ... --json`` in-process; (exit status, parsed output)."""
    import io
    import sys

    parser = argparse.ArgumentParser(prog="medchain")
    add_audit_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["audit", *argv, "--json"])
    out, saved = io.StringIO(), sys.stdout
    sys.stdout = out
    try:
        code = int(args.func(args))
    finally:
        sys.stdout = saved
    return code, json.loads(out.getvalue())


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.layout = ClusterLayout(root)
        self.procs = ClusterProcesses(root)
        self.configs: list[NodeConfig] = [
            load_config(self.layout.config_path(i)) for i in range(N_NODES)
        ]

    def url(self, i: int) -> str:
        return self.configs[i].self_url

    def status(self, i: int) -> dict[str, Any] | None:
        doc = get_json(f"{self.url(i)}/status")
        return doc if isinstance(doc, dict) else None

    def heights(self, nodes: range | list[int] | None = None) -> list[int | None]:
        out = []
        for i in nodes if nodes is not None else range(N_NODES):
            st = self.status(i)
            out.append(None if st is None else st.get("height"))
        return out

    def submit(self, count: int, rounds: int = 1, node: int = 0) -> None:
        """Commit ``count`` records per round, waiting for each round (several blocks)."""
        secret, _ = load_key(self.layout.client_key(hospital_id(0)))
        target = SubmitTarget(url=self.url(node), client_secret=secret, hospital=hospital_id(0))
        for r in range(rounds):
            records = list(synthetic_records(count, run=f"r{r}{time.monotonic_ns()}"))
            asyncio.run(submit_records(target, records, wait=True, timeout=WAIT_S))

    def wait_same_height(self, nodes: list[int]) -> int:
        def probe() -> int | None:
            hs = self.heights(nodes)
            return hs[0] if hs[0] and len(set(hs)) == 1 else None

        return wait_for(f"nodes {nodes} to reach the same height", probe)

    def block(self, i: int, height: int, payload: bool = False) -> dict[str, Any]:
        extra = "?payload=1" if payload else ""
        doc = get_json(f"{self.url(i)}/blocks/{height}{extra}")
        assert isinstance(doc, dict), f"node {i} did not serve block {height}"
        return doc

    def store_path(self, i: int) -> Path:
        path = find_store_file(self.configs[i].data_dir)
        assert path is not None, f"no chain database in {self.configs[i].data_dir}"
        return path

    def node_signer(self, i: int) -> Signer:
        secret, _ = load_key(self.layout.node_key(i))
        return Signer(secret)

    def replica_crypto(self, i: int) -> NodeCrypto:
        """Signs consensus messages as replica ``i`` does: bound to the cluster id."""
        secret, _ = load_key(self.layout.node_key(i))
        return NodeCrypto(secret, self.configs[i].replica_publics)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    root = tmp_path / "cluster"
    init_cluster(root, N_NODES)
    c = Cluster(root)
    try:
        c.procs.up(timeout=60)
        yield c
    finally:
        c.procs.down()


def blocks_with_txs(c: Cluster, node: int, up_to: int) -> list[int]:
    return [h for h in range(1, up_to + 1) if c.block(node, h)["tx_count"] > 0]


def local_copy(c: Cluster, node: int, path: Path, up_to: int | None = None) -> Store:
    """A store holding node ``node``'s chain (fetched over HTTP with payloads, verified by the
    store's shape checks), for an in-process Auditor to compare with the real nodes."""
    store = Store(path)
    height = c.heights([node])[0] if up_to is None else up_to
    assert height
    blocks = [
        parse_block_json(c.block(node, h, payload=True)).to_block() for h in range(1, height + 1)
    ]
    store.append_blocks(blocks)
    return store


def in_process_auditor(c: Cluster, store: Store, me: int, peers: dict[int, str]) -> Auditor:
    """An auditor with fast rounds whose body sample covers every block of these short chains
    (by default one random whole block per peer and round is checked)."""
    config = c.configs[me]
    audit_log = AuditLog(None)
    reader = BlockReader(
        store=store,
        consortium=config.replica_publics,
        registry=ClientRegistry(config.client_keys()),
        peers=peers,
        repair_log=audit_log,
        settings=ReaderSettings(interval_ms=100),
    )
    return Auditor(
        node_id=me,
        reader=reader,
        signer=c.node_signer(me),
        audit_log=audit_log,
        settings=AuditSettings(interval_ms=100, body_sample_blocks=1000),
    )


async def audit_rounds(auditor: Auditor, rounds: int) -> dict[str, Any]:
    """Rounds of the reader (repairs, scrub) and the audit, as a node's two tasks run them."""
    await auditor.reader.start(background=False)
    await auditor.start(background=False)
    try:
        for _ in range(rounds):
            await auditor.reader.run_round()
            await auditor.run_round()
        return auditor.report()
    finally:
        await auditor.stop()
        await auditor.reader.stop()


def stored_raw(db: sqlite3.Connection, height: int) -> bytes:
    return bytes(db.execute("SELECT data FROM blocks WHERE height=?", (height,)).fetchone()[0])


def flip_in(raw: bytes, needle: bytes) -> bytes:
    """``raw`` with the first byte of ``needle``'s first occurrence changed."""
    i = raw.find(needle)
    assert i >= 0, needle
    return raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1 :]


# ---------------------------------------------------------------------------------------------
# a byte changed in one node's database: detected, reported, repaired


def test_tampered_store_is_detected_reported_and_repaired(cluster: Cluster) -> None:
    c = cluster
    c.submit(8, rounds=5)
    height = c.wait_same_height(list(range(N_NODES)))
    with_txs = blocks_with_txs(c, 0, height)
    assert len(with_txs) >= 2, f"need two blocks with transactions, chain is {height} long"
    payload_h, cert_h = with_txs[0], with_txs[-1]
    victim = 2

    c.procs.stop(victim)
    path = c.store_path(victim)
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        # One byte of a patient record's payload, and one of a commit signature.
        raw = stored_raw(db, payload_h)
        db.execute("UPDATE blocks SET data=? WHERE height=?", (flip_in(raw, b'{"run"'), payload_h))
        raw = stored_raw(db, cert_h)
        signature = decode_block(raw).commits[0].signature
        db.execute("UPDATE blocks SET data=? WHERE height=?", (flip_in(raw, signature), cert_h))

    # Offline, the audit names the node and the first bad block.
    code, out = run_audit("--dir", str(c.root))
    assert code == 1, out
    node = out["nodes"][victim]
    assert (node["source"], node["status"], node["first_bad_height"]) == (
        "offline",
        "invalid",
        payload_h,
    )
    assert "payload hash mismatch" in node["bad_reason"]

    c.procs.start(victim)
    c.procs.wait_ready([victim], timeout=60)
    audit_url = f"{c.url(victim)}/audit"
    try:
        get_json(audit_url)
    except urllib.error.HTTPError as e:
        pytest.fail(f"GET /audit answered {e.code}: the Auditor is not wired into the node")

    def repaired() -> dict[str, Any] | None:
        doc = get_json(audit_url)
        if not isinstance(doc, dict) or doc["local"]["quarantined"]:
            return None
        done = {e["height"] for e in doc["events"] if e["kind"] == "repaired"}
        return doc if {payload_h, cert_h} <= done else None

    report = wait_for("the node to repair both blocks from its peers", repaired)
    detected = {e["height"] for e in report["events"] if e["kind"] == "tamper-detected"}
    assert {payload_h, cert_h} <= detected
    assert report["local"]["repaired"] >= 2
    startup = report["local"]["startup"]
    assert startup is not None and {b["height"] for b in startup["bad"]} >= {payload_h}

    # Every node now serves the same, verifying blocks, and the audit agrees.
    c.submit(5)
    c.wait_same_height(list(range(N_NODES)))
    for h in (payload_h, cert_h):
        served = [c.block(i, h, payload=True) for i in range(N_NODES)]
        assert all(s["hash"] == served[0]["hash"] for s in served)
        assert served[victim]["txs"] == served[0]["txs"]
    code, out = run_audit("--dir", str(c.root))
    assert code == 0, out
    assert [n["status"] for n in out["nodes"]] == [AGREE] * N_NODES
    assert out["nodes"][victim]["repaired"] >= 2

    # The corrupt bytes were kept, with the reason, in the store's quarantine table.
    with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
        kept = db.execute("SELECT height, reason FROM quarantine").fetchall()
    assert {h for h, _ in kept} >= {payload_h, cert_h}


# ---------------------------------------------------------------------------------------------
# a byzantine peer: forged and altered blocks


class Impostor:
    """Impersonates replica 3's HTTP API: proxies the real node, but alters what it serves
    (whole blocks, and the headers of the light form ``txs=0`` as the altered blocks')."""

    def __init__(self, real_url: str, alter: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.real_url = real_url
        self.alter = alter
        self.server: TestServer | None = None
        self.session: ClientSession | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"

    async def _get(self, path: str, query: str) -> Any:
        assert self.session is not None
        async with self.session.get(f"{self.real_url}{path}?{query}") as resp:
            return await resp.json()

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(await self._get("/status", request.query_string))

    async def blocks(self, request: web.Request) -> web.Response:
        doc = await self._get("/blocks", request.query_string)
        altered = [self.alter(b) for b in doc["blocks"]]
        if request.query.get("txs") == "0":
            altered = [{k: v for k, v in b.items() if k != "txs"} for b in altered]
        doc["blocks"] = altered
        return web.json_response(doc)

    async def __aenter__(self) -> Impostor:
        self.session = ClientSession()
        app = web.Application()
        app.router.add_get("/status", self.status)
        app.router.add_get("/blocks", self.blocks)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None and self.session is not None
        await self.server.close()
        await self.session.close()


def test_byzantine_peer_is_caught_with_offline_checkable_evidence(
    cluster: Cluster, tmp_path: Path
) -> None:
    c = cluster
    c.submit(6, rounds=3)
    height = c.wait_same_height(list(range(N_NODES)))
    with_txs = blocks_with_txs(c, 0, height)
    assert len(with_txs) >= 2, f"need two blocks with transactions, chain is {height} long"
    target, forked = with_txs[0], with_txs[-1]
    keys = [c.replica_crypto(i) for i in range(N_NODES)]
    client_secret, _ = load_key(c.layout.client_key(hospital_id(1)))

    def alter(doc: dict[str, Any]) -> dict[str, Any]:
        if doc["height"] == target and "txs" in doc:
            doc["txs"][0]["patient"] = "patient-forged"  # the tx no longer matches its id
        if doc["height"] == forked:
            doc = forge_certified(doc, keys[1:], client_secret)  # 3 colluding signers
        return doc

    store = local_copy(c, 0, tmp_path / "copy.sqlite3")
    try:

        async def scenario() -> dict[str, Any]:
            async with Impostor(c.url(3), alter) as impostor:
                peers = {1: c.url(1), 2: c.url(2), 3: impostor.url}
                auditor = in_process_auditor(c, store, 0, peers)
                try:
                    report = await audit_rounds(auditor, 3)
                    report["evidence_records"] = auditor.evidence(50)
                    return report
                finally:
                    auditor.close()
                    auditor.reader.close()

        report = asyncio.run(scenario())
    finally:
        store.close()

    by_id = {p["id"]: p for p in report["peers"]}
    assert by_id[1]["agreement"] == AGREE and by_id[2]["agreement"] == AGREE
    assert by_id[3]["agreement"] == DIVERGED  # a conflicting certificate outranks invalid
    issues = {i["height"]: i["outcome"] for i in by_id[3]["open_issues"]}
    assert issues == {target: INVALID, forked: DIVERGED}
    records = report["evidence_records"]
    kinds = {r["height"]: r["kind"] for r in records}
    assert kinds == {target: "invalid-block", forked: "conflicting-certificates"}
    publics = c.configs[0].replica_publics
    for r in records:
        assert r["reporter"] == 0 and r["accused"] == 3
        assert verify_evidence(r, publics) is None
    conflict = next(r for r in records if r["kind"] == "conflicting-certificates")
    # The real block was certified by some quorum, the forgery by 1, 2, 3: the replicas in
    # both signed two different batches at one height.
    real_signers = {x["replica"] for x in c.block(0, forked)["certificate"]}
    assert conflict_signers(evidence_from_json(conflict)) == sorted(real_signers & {1, 2, 3})

    # Offline, with `medchain audit --check-evidence`: valid as saved, invalid once altered.
    saved = tmp_path / "evidence.json"
    saved.write_text(json.dumps({"evidence": records}))
    code, out = run_audit("--check-evidence", str(saved), "--dir", str(c.root))
    assert code == 0 and out["ok"], out
    records[0]["reason"] = "edited"
    saved.write_text(json.dumps({"evidence": records}))
    code, out = run_audit("--check-evidence", str(saved), "--dir", str(c.root))
    assert code == 1 and not out["records"][0]["ok"]


def forge_certified(
    doc: dict[str, Any], signers: list[NodeCrypto], client_secret: bytes
) -> dict[str, Any]:
    """Another block at the same height: a different transaction, a valid certificate from
    ``signers`` (colluding replicas), linked to the same predecessor."""
    env = make_transaction(
        client_secret, hospital_id(1), "patient-x", "lab-result", b"forged", record_id="forged"
    )
    height, prev = doc["height"], bytes.fromhex(doc["prev_hash"])
    root = merkle_root([env.tx_id])
    digest = batch_digest(doc["view"], doc["proposer"], doc["timestamp_ms"], root, 1)
    commits = []
    for replica, signer in enumerate(signers, start=1):
        unsigned = Commit(view=doc["view"], seq=height, digest=digest, replica=replica)
        commits.append(
            Commit(
                view=unsigned.view,
                seq=height,
                digest=digest,
                replica=replica,
                signature=signer.sign(unsigned.signing_bytes()),
            )
        )
    block = Block(
        height=height,
        prev_hash=prev,
        block_hash=chain_link(height, prev, digest),
        merkle_root=root,
        view=doc["view"],
        proposer=doc["proposer"],
        timestamp_ms=doc["timestamp_ms"],
        txs=(env,),
        commits=tuple(commits),
    )
    return block_to_json(block)


# ---------------------------------------------------------------------------------------------
# honest nodes at different heights


def test_honest_nodes_at_different_heights_are_lagging_not_divergent(
    cluster: Cluster, tmp_path: Path
) -> None:
    c = cluster
    c.submit(6, rounds=2)
    c.wait_same_height(list(range(N_NODES)))
    c.procs.stop(3)
    c.submit(6, rounds=4)  # n = 4 tolerates one node down: the other three go on
    ahead = c.wait_same_height([0, 1, 2])

    code, out = run_audit("--dir", str(c.root))
    assert code == 0, out
    nodes = out["nodes"]
    assert [n["source"] for n in nodes] == ["live", "live", "live", "offline"]
    assert [n["status"] for n in nodes] == [AGREE, AGREE, AGREE, LAGGING]
    assert nodes[3]["height"] < ahead and nodes[3]["lag"] == ahead - nodes[3]["height"]
    assert nodes[3]["agrees_through"] == nodes[3]["height"] and out["divergences"] == []

    # The stopped node's own chain, audited in-process against the live ones: lagging.
    stale = tmp_path / "stale.sqlite3"
    with (
        contextlib.closing(sqlite3.connect(c.store_path(3))) as src,
        contextlib.closing(sqlite3.connect(stale)) as dst,
    ):
        src.backup(dst)
    store = Store(stale)
    try:
        auditor = in_process_auditor(c, store, 3, {i: c.url(i) for i in range(3)})
        try:
            report = asyncio.run(audit_rounds(auditor, 2))
        finally:
            auditor.close()
            auditor.reader.close()
        behind = store.head()[0]
    finally:
        store.close()
    for peer in report["peers"]:
        assert peer["agreement"] == LAGGING, peer
        assert peer["lag"] >= ahead - behind > AuditSettings().lag_tolerance
        assert peer["open_issues"] == [] and peer["audited_through"] == behind
    assert report["evidence"]["count"] == 0

    # Restarted, the node catches up and everyone agrees.
    c.procs.start(3)
    c.procs.wait_ready([3], timeout=60)
    c.submit(3)
    c.wait_same_height(list(range(N_NODES)))
    code, out = run_audit("--dir", str(c.root))
    assert code == 0 and [n["status"] for n in out["nodes"]] == [AGREE] * N_NODES, out
