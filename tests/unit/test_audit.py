"""node/audit, node/evidence, scripts/audit: comparison logic, evidence, tamper detection, repair.

Peers are in-process aiohttp servers on 127.0.0.1 serving blocks built from fixed seeds
(tests.unit.helpers_ledger), honest or altered; stores are real SQLite files whose bytes the
tests change directly.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from consensus.hashing import GENESIS_HASH
from node.audit import (
    AGREE,
    DIVERGED,
    INVALID,
    LAGGING,
    UNKNOWN,
    UNREACHABLE,
    Auditor,
    AuditSettings,
    BlockUnavailable,
    ChainVerifier,
    HeightCheck,
    PeerError,
    PeerState,
    apply_checks,
    audit_routes,
    classify,
    contiguous_ranges,
    parse_status,
    plan_heights,
    startup_verify,
    verify_on_read,
)
from node.config import ClientEntry, ReplicaEntry, load_config, make_node_config, write_config
from node.crypto import Signer
from node.evidence import (
    KIND_CONFLICT,
    KIND_INVALID,
    AuditLog,
    EvidenceError,
    Exhibit,
    block_exhibit_text,
    canonical_json,
    check_served_block,
    check_served_header,
    conflict_signers,
    evidence_from_json,
    load_evidence_file,
    make_evidence,
    parse_block_json,
    parse_header_json,
    served_from_block,
    verify_evidence,
)
from node.ledger import (
    Block,
    TxEnvelope,
    VerifiedCommits,
    block_from_committed,
    block_header,
    block_to_json,
    encode_block,
    header_to_json,
)
from node.store import Store
from scripts.audit import add_audit_parser
from tests.unit.helpers_ledger import (
    CLIENT_KEYS,
    CONSORTIUM,
    HOSPITALS,
    REGISTRY,
    REPLICA_KEYS,
    N,
    make_chain,
    make_committed,
    make_tx,
)

SIGNERS = [Signer(secret) for secret, _ in REPLICA_KEYS]
FAST = AuditSettings(
    interval_ms=50, http_timeout_ms=2000, repair_backoff_max_ms=50, scrub_cpu_permille=1000
)


# =============================================================================================
# helpers


def fork_chain(base: list[Block], at: int, *, replicas: tuple[int, ...] = (1, 2, 3)) -> list[Block]:
    """``base`` up to ``at - 1``, then other validly certified blocks (signed by ``replicas``)."""
    blocks = list(base[: at - 1])
    prev = blocks[-1].block_hash if blocks else GENESIS_HASH
    for seq in range(at, len(base) + 1):
        txs = [make_tx(5000 + seq, client=1)]
        block = block_from_committed(
            make_committed(seq, prev, txs, proposer=seq % N, replicas=replicas)
        )
        blocks.append(block)
        prev = block.block_hash
    return blocks


def new_store(path: Path, blocks: list[Block]) -> Store:
    store = Store(path)
    store.append_blocks(blocks)
    return store


def raw_of(path: Path, height: int) -> bytes:
    with sqlite3.connect(path) as db:
        return bytes(
            db.execute("SELECT data FROM blocks WHERE height = ?", (height,)).fetchone()[0]
        )


class RawEditor:
    """Changes stored bytes behind the store's back (a second SQLite connection)."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA synchronous=OFF")

    def write(self, height: int, data: bytes) -> None:
        self.db.execute("UPDATE blocks SET data = ? WHERE height = ?", (data, height))

    def set_column(self, height: int, column: str, value: bytes) -> None:
        assert column in ("hash", "prev_hash")
        self.db.execute(f"UPDATE blocks SET {column} = ? WHERE height = ?", (value, height))

    def close(self) -> None:
        self.db.close()


def flip(data: bytes, pos: int, mask: int = 0x01) -> bytes:
    return data[:pos] + bytes([data[pos] ^ mask]) + data[pos + 1 :]


def replace_once(data: bytes, old: bytes, new: bytes) -> bytes:
    assert len(old) == len(new) and data.count(old) >= 1, old
    return data.replace(old, new, 1)


def altered_payload(block: Block) -> Block:
    """The block with one tx payload changed (decodes fine, fails verification)."""
    env = block.txs[0]
    bad = TxEnvelope(tx=env.tx, payload=env.payload + b"!")
    return dataclasses.replace(block, txs=(bad, *block.txs[1:]))


def forged_certificate(block: Block) -> Block:
    """The block with one commit signature replaced (decodes fine, fails verification)."""
    bad = dataclasses.replace(block.commits[0], signature=bytes(64))
    return dataclasses.replace(block, commits=(bad, *block.commits[1:]))


JsonMutator = Callable[[dict[str, Any]], None]


class FakePeer:
    """A peer's HTTP API (GET /status, /blocks[?txs=0], /blocks/{h}) over a fixed list of
    blocks. ``mutate`` alters served documents of both forms (a mutator of transactions leaves
    headers alone), ``header_mutate`` only headers."""

    def __init__(
        self,
        blocks: list[Block],
        *,
        mutate: dict[int, JsonMutator] | None = None,
        header_mutate: dict[int, JsonMutator] | None = None,
        msgpack_blocks: dict[int, bytes] | None = None,
        status_extra: dict[str, Any] | None = None,
    ) -> None:
        self.blocks = {b.height: b for b in blocks}
        self.mutate = mutate or {}
        self.header_mutate = header_mutate or {}
        self.msgpack_blocks = msgpack_blocks or {}
        self.status_extra = status_extra or {}
        self.requests: list[str] = []
        self.server: TestServer | None = None

    @property
    def height(self) -> int:
        return max(self.blocks, default=0)

    @property
    def url(self) -> str:
        assert self.server is not None and self.server.port is not None
        return f"http://127.0.0.1:{self.server.port}"

    def doc(self, height: int, payload: bool = False) -> dict[str, Any]:
        doc = block_to_json(self.blocks[height], include_payload=payload)
        if height in self.mutate:
            self.mutate[height](doc)
        return doc

    async def status(self, request: web.Request) -> web.Response:
        self.requests.append("status")
        head = self.blocks[self.height].block_hash if self.blocks else GENESIS_HASH
        return web.json_response(
            {"height": self.height, "head_hash": head.hex(), "view": 0, **self.status_extra}
        )

    def header_doc(self, height: int) -> dict[str, Any]:
        doc = header_to_json(block_header(self.blocks[height]))
        for mutators in (self.mutate, self.header_mutate):
            if height in mutators:
                mutators[height](doc)
        return doc

    async def page(self, request: web.Request) -> web.Response:
        start, limit = int(request.query["from"]), int(request.query["limit"])
        heights = [h for h in range(start, start + min(limit, 1000)) if h in self.blocks]
        if request.query.get("txs") == "0":
            self.requests.append(f"headers {start}+{limit}")
            return web.json_response({"blocks": [self.header_doc(h) for h in heights]})
        self.requests.append(f"blocks {start}+{limit}")
        payload = request.query.get("payload") == "1"
        return web.json_response({"blocks": [self.doc(h, payload) for h in heights[:100]]})

    async def one(self, request: web.Request) -> web.Response:
        height = int(request.match_info["h"])
        self.requests.append(f"block {height}")
        if height not in self.blocks:
            return web.json_response({"error": "not found"}, status=404)
        data = self.msgpack_blocks.get(height, encode_block(self.blocks[height]))
        return web.Response(body=data, content_type="application/msgpack")

    async def __aenter__(self) -> FakePeer:
        app = web.Application()
        app.router.add_get("/status", self.status)
        app.router.add_get("/blocks", self.page)
        app.router.add_get("/blocks/{h}", self.one)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        await self.server.close()


def whole_blocks_fetched(peer: FakePeer) -> set[int]:
    """Heights whose whole blocks ``peer`` was asked for (GET /blocks without txs=0)."""
    out: set[int] = set()
    for q in peer.requests:
        if q.startswith("blocks "):
            start, limit = map(int, q.removeprefix("blocks ").split("+"))
            out.update(range(start, start + limit))
    return out


def make_auditor(
    store: Store, peers: dict[int, str], *, settings: AuditSettings = FAST, node_id: int = 0
) -> Auditor:
    return Auditor(
        node_id=node_id,
        store=store,
        consortium=CONSORTIUM,
        registry=REGISTRY,
        signer=SIGNERS[node_id],
        peers=peers,
        audit_log=AuditLog(None),
        settings=settings,
    )


@pytest.fixture
def chain() -> list[Block]:
    return make_chain(10, txs_per_block=2)


@pytest.fixture
def store(tmp_path: Path, chain: list[Block]) -> Iterator[Store]:
    s = new_store(tmp_path / "chain.sqlite", chain)
    yield s
    s.close()


@pytest.fixture
async def running() -> AsyncIterator[list[Auditor]]:
    """Auditors registered here are stopped and closed whatever the test's outcome."""
    auditors: list[Auditor] = []
    yield auditors
    for a in auditors:
        await a.stop()
        a.close()


async def started(auditors: list[Auditor], auditor: Auditor) -> Auditor:
    auditors.append(auditor)
    await auditor.start(background=False)
    return auditor


def peer_report(auditor: Auditor, peer_id: int) -> dict[str, Any]:
    return next(p for p in auditor.report()["peers"] if p["id"] == peer_id)


# =============================================================================================
# comparison logic (pure)


def test_same_height_same_blocks_is_agree() -> None:
    v = classify(10, 10, {}, lag_tolerance=2)
    assert (v.agreement, v.lag) == (AGREE, 0)


@pytest.mark.parametrize(("ours", "theirs"), [(20, 10), (10, 20)])
def test_different_heights_same_blocks_is_lagging_not_diverged(ours: int, theirs: int) -> None:
    v = classify(ours, theirs, {}, lag_tolerance=2)
    assert v.agreement == LAGGING
    assert v.lag == theirs - ours


def test_lag_within_tolerance_is_agree() -> None:
    assert classify(10, 12, {}, lag_tolerance=2).agreement == AGREE
    assert classify(10, 13, {}, lag_tolerance=2).agreement == LAGGING
    assert classify(10, 11, {}, lag_tolerance=0).agreement == LAGGING


def test_divergence_outranks_invalid_and_lag() -> None:
    assert classify(10, 30, {4: DIVERGED, 5: INVALID}, lag_tolerance=2).agreement == DIVERGED
    assert classify(10, 30, {5: INVALID}, lag_tolerance=2).agreement == INVALID


def test_height_check_outcomes() -> None:
    a, b = b"a" * 32, b"b" * 32
    assert HeightCheck(1, a, a).outcome == AGREE
    assert HeightCheck(1, a, b).outcome == DIVERGED
    assert HeightCheck(1, a, a, "bad signature").outcome == INVALID
    assert HeightCheck(1, None, a).outcome == UNKNOWN


def test_open_issues_open_and_close() -> None:
    a, b = b"a" * 32, b"b" * 32
    issues = apply_checks(
        {}, [HeightCheck(3, a, b), HeightCheck(4, a, a, "bad"), HeightCheck(5, a, a)]
    )
    assert issues == {3: DIVERGED, 4: INVALID}
    issues = apply_checks(issues, [HeightCheck(3, a, a), HeightCheck(4, None, a)])
    assert issues == {4: INVALID}  # an unknown outcome neither opens nor closes


def test_plan_heights_tip_and_sweep() -> None:
    assert plan_heights(1, (), 0, recent=4, sweep=3) == []
    assert plan_heights(1, (), 20, recent=4, sweep=3) == [1, 2, 3, 17, 18, 19, 20]
    assert plan_heights(1, (), 5, recent=4, sweep=3) == [1, 2, 3, 4, 5]
    # Done heights are skipped, and the sweep goes past them instead of stalling.
    assert plan_heights(4, {5, 17, 18, 19, 20}, 20, recent=4, sweep=3) == [4, 6, 7]
    assert plan_heights(21, (), 20, recent=4, sweep=3) == []


def test_contiguous_ranges() -> None:
    assert contiguous_ranges([]) == []
    assert contiguous_ranges([1, 2, 3, 7, 9, 10]) == [(1, 3), (7, 7), (9, 10)]
    assert contiguous_ranges([1, 2, 3, 4, 5], max_len=2) == [(1, 2), (3, 4), (5, 5)]


def test_peer_state_cursor_only_passes_compared_heights() -> None:
    state = PeerState(1, "http://x", max_problems=2)
    state.mark_done([1, 2, 4, 5])
    assert state.cursor == 3 and state.tip_done == {4, 5}
    state.mark_done([3])
    assert state.cursor == 6 and not state.tip_done
    for i in range(5):
        state.problem("p", i, "detail")
    assert len(state.problems) == 2


def test_parse_status_variants() -> None:
    head = "ab" * 32
    s = parse_status({"height": 7, "head_hash": head, "stable_seq": 4, "view": 1})
    assert (s.height, s.head_hash, s.stable_seq, s.view) == (7, bytes.fromhex(head), 4, 1)
    s = parse_status({"height": 7, "head": head, "stable_checkpoint": {"seq": 3}})
    assert (s.head_hash, s.stable_seq) == (bytes.fromhex(head), 3)
    assert parse_status({"height": 0, "head_hash": "zz"}).head_hash is None
    bad_docs: list[object] = [[], {"height": "7"}, {"height": -1}, {}]
    for bad in bad_docs:
        with pytest.raises(PeerError, match="status"):
            parse_status(bad)


def test_settings_reject_non_positive() -> None:
    with pytest.raises(ValueError, match="interval_ms"):
        AuditSettings(interval_ms=0)


# =============================================================================================
# blocks as served (JSON)


def test_served_block_round_trip(chain: list[Block]) -> None:
    block = chain[3]
    served = served_from_block(block)
    assert check_served_block(served, CONSORTIUM, registry=REGISTRY) is None
    with_payloads = parse_block_json(block_to_json(block, include_payload=True))
    assert check_served_block(with_payloads, CONSORTIUM, registry=REGISTRY) is None
    assert with_payloads.to_block() == block
    with pytest.raises(EvidenceError, match="without its payload"):
        served.to_block()


def _set_tx(key: str, value: object) -> JsonMutator:
    def m(doc: dict[str, Any]) -> None:
        if "txs" in doc:  # a header has none: the lie is only in the whole block
            doc["txs"][0][key] = value

    return m


def _set(key: str, value: object) -> JsonMutator:
    def m(doc: dict[str, Any]) -> None:
        doc[key] = value

    return m


def _set_commit(key: str, value: object) -> JsonMutator:
    def m(doc: dict[str, Any]) -> None:
        doc["certificate"][0][key] = value

    return m


def _drop_commit(doc: dict[str, Any]) -> None:
    doc["certificate"].pop()


def _dup_commit(doc: dict[str, Any]) -> None:
    doc["certificate"][1] = copy.deepcopy(doc["certificate"][0])


def _bump_hex(value: str) -> str:
    return ("0" if value[0] != "0" else "1") + value[1:]


ALTERATIONS: dict[str, tuple[JsonMutator, str]] = {
    "tx patient": (_set_tx("patient", "patient-666"), "does not match its tx_id"),
    "tx payload hash": (_set_tx("payload_hash", "00" * 32), "does not match its tx_id"),
    "tx signature": (_set_tx("signature", "00" * 64), "bad signature"),
    "tx id": (_set_tx("tx_id", "00" * 32), "does not match its tx_id"),
    "tx payload": (_set_tx("payload", "00"), "payload hash mismatch"),
    "merkle root": (_set("merkle_root", "00" * 32), "merkle root"),
    "timestamp": (_set("timestamp_ms", 1), "digest does not match"),
    "digest": (_set("digest", "00" * 32), "digest does not match"),
    "hash": (_set("hash", "00" * 32), "block hash does not match"),
    "prev hash": (_set("prev_hash", "00" * 32), "block hash does not match"),
    "commit signature": (_set_commit("signature", "00" * 64), "bad commit signature"),
    "commit digest": (_set_commit("digest", "00" * 32), "another digest"),
    "commit replica": (_set_commit("replica", 3), "bad commit signature"),
    "commit view": (_set_commit("view", 9), "different views"),
    "commit missing": (_drop_commit, "quorum is 3"),
    "commit duplicated": (_dup_commit, "duplicate commit"),
    "tx count": (_set("tx_count", 5), "tx_count"),
    "height type": (_set("height", "3"), "block.height"),
    "unregistered client": (_set_tx("hospital", "hospital-9"), "does not match its tx_id"),
}


@pytest.mark.parametrize("name", sorted(ALTERATIONS))
def test_every_alteration_of_a_served_block_is_caught(chain: list[Block], name: str) -> None:
    mutate, expected = ALTERATIONS[name]
    doc = block_to_json(chain[3], include_payload=True)
    mutate(doc)
    try:
        problem = check_served_block(parse_block_json(doc), CONSORTIUM, registry=REGISTRY)
    except EvidenceError as e:
        problem = e.reason
    assert problem is not None and expected in problem


HEADER_ALTERATIONS: dict[str, tuple[JsonMutator, str]] = {
    "merkle root": (_set("merkle_root", "00" * 32), "digest does not match"),
    "timestamp": (_set("timestamp_ms", 1), "digest does not match"),
    "tx count": (_set("tx_count", 5), "digest does not match"),
    "digest": (_set("digest", "00" * 32), "digest does not match"),
    "hash": (_set("hash", "00" * 32), "block hash does not match"),
    "prev hash": (_set("prev_hash", "00" * 32), "block hash does not match"),
    "proposer": (_set("proposer", 9), "not a consortium member"),
    "commit signature": (_set_commit("signature", "00" * 64), "bad commit signature"),
    "commit digest": (_set_commit("digest", "00" * 32), "another digest"),
    "commit replica": (_set_commit("replica", 3), "bad commit signature"),
    "commit view": (_set_commit("view", 9), "different views"),
    "commit missing": (_drop_commit, "quorum is 3"),
    "commit duplicated": (_dup_commit, "duplicate commit"),
    "height type": (_set("height", "3"), "header.height"),
    "hash not hex": (_set("hash", "zz" * 32), "not valid hex"),
    "no certificate": (_set("certificate", None), "header.certificate"),
}


def test_served_header_round_trip(chain: list[Block]) -> None:
    for block in (chain[3], chain[0]):
        doc = header_to_json(block_header(block))
        assert "txs" not in doc and doc == {
            k: v for k, v in block_to_json(block).items() if k != "txs"
        }
        header = parse_header_json(doc)
        assert (header.block_hash, header.digest, header.tx_count) == (
            block.block_hash,
            block.digest,
            len(block.txs),
        )
        assert check_served_header(header, CONSORTIUM) is None
        # A whole block document parses as its header.
        assert parse_header_json(block_to_json(block)) == header


@pytest.mark.parametrize("name", sorted(HEADER_ALTERATIONS))
def test_every_alteration_of_a_served_header_is_caught(chain: list[Block], name: str) -> None:
    mutate, expected = HEADER_ALTERATIONS[name]
    doc = header_to_json(block_header(chain[3]))
    mutate(doc)
    try:
        problem = check_served_header(parse_header_json(doc), CONSORTIUM)
    except EvidenceError as e:
        problem = e.reason
    assert problem is not None and expected in problem


def test_verified_commits_spare_only_identical_signatures(chain: list[Block]) -> None:
    block = chain[3]
    verified = VerifiedCommits(16)
    header = parse_header_json(header_to_json(block_header(block)))
    assert check_served_header(header, CONSORTIUM, verified_commits=verified) is None
    assert (verified.hits, verified.misses, len(verified)) == (0, 3, 3)
    assert check_served_header(header, CONSORTIUM, verified_commits=verified) is None
    assert verified.hits == 3
    # A cached good signature never vouches for a different one over the same commit.
    doc = header_to_json(block_header(block))
    doc["certificate"][0]["signature"] = "00" * 64
    problem = check_served_header(parse_header_json(doc), CONSORTIUM, verified_commits=verified)
    assert problem is not None and "bad commit signature" in problem


def test_known_signatures_skip_only_identical_signatures(chain: list[Block]) -> None:
    block = chain[3]
    known = {env.tx_id: env.tx.signature for env in block.txs}
    assert check_served_block(served_from_block(block), CONSORTIUM, known_signatures=known) is None
    doc = block_to_json(block)
    doc["txs"][1]["signature"] = "11" * 64
    problem = check_served_block(parse_block_json(doc), CONSORTIUM, known_signatures=known)
    assert problem is not None and "tx 1" in problem and "bad signature" in problem


# =============================================================================================
# evidence


def conflict_record(chain: list[Block], height: int = 5) -> tuple[Any, list[Block]]:
    fork = fork_chain(chain, height)
    record = make_evidence(
        SIGNERS[0],
        kind=KIND_CONFLICT,
        height=height,
        reporter=0,
        accused=3,
        source="http://127.0.0.1:1",
        reason="test conflict",
        exhibits=[
            Exhibit("served by replica 3", block_exhibit_text(block_to_json(fork[height - 1]))),
            Exhibit("held by replica 0", block_exhibit_text(block_to_json(chain[height - 1]))),
        ],
    )
    return record, fork


def test_conflict_evidence_verifies_offline_and_names_signers(chain: list[Block]) -> None:
    record, _ = conflict_record(chain)
    assert verify_evidence(record, CONSORTIUM, registry=REGISTRY) is None
    doc = json.loads(canonical_json(record.to_json()))  # as stored, served and saved
    assert verify_evidence(doc, CONSORTIUM) is None
    assert evidence_from_json(doc) == record
    # ours signed by 0, 1, 2; the fork by 1, 2, 3: replicas 1 and 2 signed both.
    assert conflict_signers(record) == [1, 2]
    # No patient payloads in evidence, only their hashes.
    exhibit = json.loads(block_exhibit_text(block_to_json(chain[4], include_payload=True)))
    assert all("payload" not in tx and "payload_hash" in tx for tx in exhibit["txs"])


def _tamper_exhibit(doc: dict[str, Any]) -> None:
    text = doc["exhibits"][0]["block"]
    doc["exhibits"][0]["block"] = text.replace('"view":0', '"view":1', 1)


EVIDENCE_TAMPERING: dict[str, Callable[[dict[str, Any]], None]] = {
    "reason": lambda d: d.__setitem__("reason", d["reason"] + "!"),
    "height": lambda d: d.__setitem__("height", d["height"] + 1),
    "accused": lambda d: d.__setitem__("accused", 2),
    "reporter": lambda d: d.__setitem__("reporter", 1),
    "observed": lambda d: d.__setitem__("observed_at_ms", 1),
    "source": lambda d: d.__setitem__("source", "http://elsewhere:1"),
    "label": lambda d: d["exhibits"][0].__setitem__("label", "held by replica 1"),
    "exhibit": _tamper_exhibit,
    "exhibits swapped": lambda d: d["exhibits"].reverse(),
    "signature": lambda d: d.__setitem__("signature", _bump_hex(d["signature"])),
    "kind": lambda d: d.__setitem__("kind", KIND_INVALID),
    "id": lambda d: d.__setitem__("id", "00" * 32),
}


@pytest.mark.parametrize("name", sorted(EVIDENCE_TAMPERING))
def test_tampered_evidence_fails(chain: list[Block], name: str) -> None:
    record, _ = conflict_record(chain)
    doc = record.to_json()
    EVIDENCE_TAMPERING[name](doc)
    assert verify_evidence(doc, CONSORTIUM) is not None


def test_evidence_from_another_key_fails(chain: list[Block]) -> None:
    record, _ = conflict_record(chain)
    forged = dataclasses.replace(record, signature=SIGNERS[1].sign(record.signing_bytes()))
    assert "not valid for reporter 0" in (verify_evidence(forged, CONSORTIUM) or "")
    assert "not a consortium member" in (
        verify_evidence(dataclasses.replace(record, reporter=9), CONSORTIUM) or ""
    )


def test_conflict_needs_two_valid_certificates_for_different_batches(chain: list[Block]) -> None:
    text = block_exhibit_text(block_to_json(chain[4]))
    same = make_evidence(
        SIGNERS[0],
        kind=KIND_CONFLICT,
        height=5,
        reporter=0,
        accused=1,
        source="",
        reason="r",
        exhibits=[Exhibit("a", text), Exhibit("b", text)],
    )
    assert "same batch digest" in (verify_evidence(same, CONSORTIUM) or "")
    doc = block_to_json(fork_chain(chain, 5)[4])
    doc["certificate"][0]["signature"] = "00" * 64
    broken = make_evidence(
        SIGNERS[0],
        kind=KIND_CONFLICT,
        height=5,
        reporter=0,
        accused=1,
        source="",
        reason="r",
        exhibits=[Exhibit("a", block_exhibit_text(doc)), Exhibit("b", text)],
    )
    assert "exhibit 0 does not verify" in (verify_evidence(broken, CONSORTIUM) or "")


def test_invalid_block_evidence(chain: list[Block]) -> None:
    doc = block_to_json(chain[2])
    doc["txs"][0]["signature"] = "22" * 64

    def record(text: str) -> Any:
        return make_evidence(
            SIGNERS[2],
            kind=KIND_INVALID,
            height=3,
            reporter=2,
            accused=1,
            source="http://127.0.0.1:1",
            reason="bad block",
            exhibits=[Exhibit("served", text)],
        )

    assert verify_evidence(record(block_exhibit_text(doc)), CONSORTIUM) is None
    assert verify_evidence(record("{not json"), CONSORTIUM) is None  # malformed is invalid too
    honest = record(block_exhibit_text(block_to_json(chain[2])))
    assert "does not substantiate" in (verify_evidence(honest, CONSORTIUM) or "")


def test_load_evidence_file_formats(tmp_path: Path, chain: list[Block]) -> None:
    record, _ = conflict_record(chain)
    doc = record.to_json()
    forms = {
        "one.json": json.dumps(doc),
        "array.json": json.dumps([doc, doc]),
        "api.json": json.dumps({"count": 1, "evidence": [doc]}),
        "lines.jsonl": json.dumps(doc) + "\n\n" + json.dumps(doc) + "\n",
    }
    for name, text in forms.items():
        (tmp_path / name).write_text(text)
        docs = load_evidence_file(tmp_path / name)
        assert docs and all(verify_evidence(d, CONSORTIUM) is None for d in docs), name
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(EvidenceError, match="does not hold evidence"):
        load_evidence_file(tmp_path / "bad.json")
    with pytest.raises(EvidenceError, match="cannot read"):
        load_evidence_file(tmp_path / "missing.json")


def resigned(record: Any) -> Any:
    return dataclasses.replace(
        record, signature=SIGNERS[record.reporter].sign(record.signing_bytes())
    )


def test_audit_log_dedups_bounds_and_persists(tmp_path: Path, chain: list[Block]) -> None:
    path = tmp_path / "audit.sqlite"
    with AuditLog(path, max_evidence=2, max_events=3) as audit_log:
        records = [conflict_record(chain, h)[0] for h in (3, 4, 5)]
        assert audit_log.add_evidence(records[0])
        again = dataclasses.replace(records[0], observed_at_ms=1, reason="seen again")
        assert not audit_log.add_evidence(resigned(again))
        assert audit_log.add_evidence(records[1]) and audit_log.add_evidence(records[2])
        assert audit_log.evidence_count() == 2
        assert [d["height"] for d in audit_log.evidence(10)] == [5, 4]
        assert [d["height"] for d in audit_log.evidence_summaries(10)] == [5, 4]
        for i in range(5):
            audit_log.add_event("repaired", i, f"event {i}")
        assert [e.height for e in audit_log.events(10)] == [4, 3, 2]
        assert audit_log.quarantine(7, "bad bytes", b"\x01\x02")
        assert audit_log.event_counts() == {"repaired": 3}
    with AuditLog(path, read_only=True) as reopened:
        assert [(q.height, q.reason, q.data) for q in reopened.quarantined()] == [
            (7, "bad bytes", b"\x01\x02")
        ]
        assert all(verify_evidence(d, CONSORTIUM) is None for d in reopened.evidence(10))


# =============================================================================================
# tamper detection of stored blocks


def test_every_byte_change_in_a_stored_block_is_detected(tmp_path: Path) -> None:
    blocks = make_chain(4, txs_per_block=1)
    path = tmp_path / "chain.sqlite"
    store = new_store(path, blocks)
    editor = RawEditor(path)
    verifier = ChainVerifier(CONSORTIUM, REGISTRY)
    try:
        original = raw_of(path, 2)
        assert verify_on_read(store, 2, verifier) == blocks[1]
        undetected = []
        for pos in range(len(original)):
            for mask in (0x01, 0x80):
                editor.write(2, flip(original, pos, mask))
                try:
                    verify_on_read(store, 2, verifier)
                except BlockUnavailable:
                    continue
                undetected.append((pos, mask))
        assert undetected == []
        editor.write(2, original)
        assert verify_on_read(store, 2, verifier) == blocks[1]
    finally:
        editor.close()
        store.close()


def _locate(block: Block) -> dict[str, tuple[bytes, bytes]]:
    """Named single-field changes as (old bytes, new bytes) inside the encoded block."""
    env = block.txs[0]
    ts = block.timestamp_ms.to_bytes(8, "big")
    sig = env.tx.signature
    csig = block.commits[0].signature
    return {
        "tx payload": (env.payload[:4], b"XXXX"),
        "tx header (patient)": (env.tx.patient.encode(), b"P" + env.tx.patient.encode()[1:]),
        "tx signature": (sig[:8], bytes(8)),
        "block header (timestamp)": (b"\xcf" + ts, b"\xcf" + ts[:-1] + bytes([ts[-1] ^ 1])),
        "merkle root": (block.merkle_root[:8], bytes(8)),
        "certificate signature": (csig[:8], bytes(8)),
        "certificate digest": (block.commits[0].digest[:8], bytes(8)),
        "re-typed integer, same value": (b"\xcf" + ts, b"\xd3" + ts),
    }


@pytest.mark.parametrize("kind", sorted(_locate(make_chain(1)[0])))
def test_named_tamper_kinds_are_detected_on_read(tmp_path: Path, kind: str) -> None:
    blocks = make_chain(5, txs_per_block=2)
    path = tmp_path / "chain.sqlite"
    store = new_store(path, blocks)
    editor = RawEditor(path)
    try:
        old, new = _locate(blocks[2])[kind]
        editor.write(3, replace_once(raw_of(path, 3), old, new))
        with pytest.raises(BlockUnavailable) as info:
            verify_on_read(store, 3, ChainVerifier(CONSORTIUM, REGISTRY))
        assert info.value.height == 3 and info.value.reason
        # The neighbours are not blamed for it.
        verifier = ChainVerifier(CONSORTIUM, REGISTRY)
        assert verify_on_read(store, 2, verifier) == blocks[1]
        assert verify_on_read(store, 4, verifier) == blocks[3]
    finally:
        editor.close()
        store.close()


def test_unavailable_block_response_names_the_problem() -> None:
    response = BlockUnavailable(7, "bad commit signature from replica 2").response()
    assert response.status == 503
    body = json.loads(response.body)  # type: ignore[arg-type]
    assert body["error"] == "block unavailable"
    assert body["detail"]["height"] == 7 and "replica 2" in body["detail"]["reason"]


def test_missing_block_reads_as_none(store: Store) -> None:
    assert verify_on_read(store, 99, ChainVerifier(CONSORTIUM, REGISTRY)) is None


def test_startup_check_fast_and_full(tmp_path: Path) -> None:
    blocks = make_chain(12, txs_per_block=1)
    path = tmp_path / "chain.sqlite"
    store = new_store(path, blocks)
    editor = RawEditor(path)
    try:
        clean = startup_verify(store, ChainVerifier(CONSORTIUM, REGISTRY))
        assert clean.bad == () and clean.links_checked == 12 and clean.signatures_checked == 12
        # Old block, signature only: found by the full check (and the scrub), not the fast one.
        editor.write(2, replace_once(raw_of(path, 2), blocks[1].commits[0].signature[:8], bytes(8)))
        # Inside the hash window: a payload byte.
        editor.write(6, replace_once(raw_of(path, 6), blocks[5].txs[0].payload[:4], b"XXXX"))
        # Inside the signature window: a certificate byte.
        editor.write(
            11, replace_once(raw_of(path, 11), blocks[10].commits[1].signature[:8], bytes(8))
        )
        # The store's own hash column of block 9 (what the head and links rely on).
        editor.set_column(9, "hash", bytes(32))

        def bad(full: bool) -> set[int]:
            report = startup_verify(
                store,
                ChainVerifier(CONSORTIUM, REGISTRY),
                full=full,
                hash_blocks=8,
                signature_blocks=4,
            )
            return {h for h, _ in report.bad}

        assert bad(full=False) == {6, 9, 10, 11}
        assert bad(full=True) == {2, 6, 9, 10, 11}
    finally:
        editor.close()
        store.close()


# =============================================================================================
# quarantine and repair from peers


async def test_tampered_block_is_quarantined_refused_and_repaired(
    tmp_path: Path, chain: list[Block], running: list[Auditor]
) -> None:
    path = tmp_path / "a.sqlite"
    store = new_store(path, chain)
    editor = RawEditor(path)
    good = raw_of(path, 4)
    tampered = replace_once(good, chain[3].txs[1].payload[:4], b"XXXX")
    editor.write(4, tampered)
    editor.close()
    try:
        async with FakePeer(chain) as honest:
            auditor = make_auditor(store, {1: honest.url})
            report = auditor.startup_check()
            assert [h for h, _ in report.bad] == [4]
            with pytest.raises(BlockUnavailable) as info:
                auditor.read_block(4)
            assert info.value.quarantined and "payload hash mismatch" in info.value.reason
            assert auditor.read_blocks(1, 10) == chain[:3]  # stops before the bad block
            assert auditor.report()["local"]["quarantined"][0]["height"] == 4

            await started(running, auditor)
            await auditor.run_round()

            assert raw_of(path, 4) == good
            assert auditor.read_block(4) == chain[3]
            [(height, reason, old)] = store.quarantined()
            assert (height, old) == (4, tampered) and "payload hash mismatch" in reason
            local = auditor.report()["local"]
            assert local["quarantined"] == [] and local["repaired"] == 1
            kinds = [e["kind"] for e in auditor.report()["events"]]
            assert "tamper-detected" in kinds and "repaired" in kinds
            assert "block 4" in honest.requests
    finally:
        store.close()


@pytest.mark.parametrize(
    ("forge", "evidential"), [(forged_certificate, True), (altered_payload, False)]
)
async def test_repair_skips_a_byzantine_copy(
    tmp_path: Path,
    chain: list[Block],
    running: list[Auditor],
    forge: Callable[[Block], Block],
    evidential: bool,
) -> None:
    path = tmp_path / "a.sqlite"
    store = new_store(path, chain)
    editor = RawEditor(path)
    editor.write(3, flip(raw_of(path, 3), 40))
    editor.close()
    forged = encode_block(forge(chain[2]))
    try:
        async with FakePeer(chain, msgpack_blocks={3: forged}) as liar, FakePeer(chain) as honest:
            auditor = await started(running, make_auditor(store, {1: liar.url, 2: honest.url}))
            with pytest.raises(BlockUnavailable):
                auditor.read_block(3)
            await auditor.run_round()
            # The liar is asked first (rotation), its copy refused, the honest copy used.
            assert liar.requests.index("block 3") < len(liar.requests)
            assert "block 3" in honest.requests
            assert auditor.read_block(3) == chain[2]
            assert "repaired" in [e["kind"] for e in auditor.report()["events"]]
            assert peer_report(auditor, 1)["problems"][0]["kind"] == "bad-repair-copy"
            records = auditor.evidence()
            if evidential:
                [record] = records
                assert record["kind"] == KIND_INVALID and record["accused"] == 1
                assert verify_evidence(record, CONSORTIUM, registry=REGISTRY) is None
            else:
                # A bad payload cannot be shown without the payload: no evidence, a problem.
                assert records == []
    finally:
        store.close()


async def test_repair_without_a_good_copy_keeps_refusing(
    tmp_path: Path, chain: list[Block], running: list[Auditor]
) -> None:
    path = tmp_path / "a.sqlite"
    store = new_store(path, chain)
    editor = RawEditor(path)
    editor.write(3, flip(raw_of(path, 3), 40))
    editor.close()
    try:
        async with FakePeer(chain, msgpack_blocks={3: b"\xc1garbage"}) as liar:
            auditor = await started(
                running, make_auditor(store, {1: liar.url, 2: "http://127.0.0.1:9"})
            )
            with pytest.raises(BlockUnavailable):
                auditor.read_block(3)
            await auditor.run_round()
            [q] = auditor.report()["local"]["quarantined"]
            assert q["attempts"] == 1 and "do not decode" in q["last_error"]
            assert "repair-failed" in [e["kind"] for e in auditor.report()["events"]]
            with pytest.raises(BlockUnavailable):
                auditor.read_block(3)
    finally:
        store.close()


async def test_tamper_under_a_running_node_is_found_by_scrub_and_repaired(
    tmp_path: Path, chain: list[Block], running: list[Auditor]
) -> None:
    path = tmp_path / "a.sqlite"
    store = new_store(path, chain)
    try:
        async with FakePeer(chain) as honest:
            auditor = await started(running, make_auditor(store, {1: honest.url}))
            await auditor.run_round()  # scrub verifies (and remembers) every block
            good = raw_of(path, 6)
            editor = RawEditor(path)
            editor.write(6, replace_once(good, chain[5].commits[2].signature[:8], bytes(8)))
            editor.close()
            await auditor.run_round()  # scrub: detected, quarantined
            assert auditor.repairer.is_quarantined(6)
            await auditor.run_round()  # repaired
            assert raw_of(path, 6) == good and not auditor.repairer.is_quarantined(6)
    finally:
        store.close()


# =============================================================================================
# cross-audit of peers


async def test_honest_peers_agree_and_the_sweep_covers_history(
    store: Store, chain: list[Block], running: list[Auditor]
) -> None:
    settings = dataclasses.replace(FAST, recent_blocks=2, sweep_blocks=3, history_sample_blocks=4)
    async with FakePeer(chain) as p1, FakePeer(chain) as p2:
        auditor = await started(
            running, make_auditor(store, {1: p1.url, 2: p2.url}, settings=settings)
        )
        rounds = 0
        while peer_report(auditor, 1)["audited_through"] < len(chain):
            await auditor.run_round()
            rounds += 1
            assert rounds <= 3
        for pid in (1, 2):
            r = peer_report(auditor, pid)
            assert (r["agreement"], r["lag"], r["open_issues"]) == (AGREE, 0, [])
            assert r["counters"]["blocks_compared"] == len(chain)  # each compared once
        p1.requests.clear()
        await auditor.run_round()  # nothing new: a history sample and one body, no more
        r = peer_report(auditor, 1)
        assert r["counters"]["blocks_compared"] == len(chain)
        assert r["counters"]["history_samples"] >= 4
        headers = [q for q in p1.requests if q.startswith("headers")]
        blocks = [q for q in p1.requests if q.startswith("blocks")]
        assert headers == [h for h in headers if h.endswith("+4")] and len(headers) == 1
        assert len(blocks) == settings.body_sample_blocks == 1 and blocks[0].endswith("+1")
        assert auditor.report()["evidence"]["count"] == 0
        assert auditor.agreement() == AGREE
        # Each distinct commit signature was checked once, however many peers and rounds
        # served it (10 blocks of 3 commits).
        verifier = auditor.report()["local"]["verifier"]
        assert 0 < verifier["commit_cache_misses"] <= 3 * len(chain)
        assert verifier["commit_cache_hits"] > verifier["commit_cache_misses"]


async def test_commits_of_blocks_we_wrote_are_not_verified_again(
    store: Store, chain: list[Block], running: list[Auditor]
) -> None:
    async with FakePeer(chain) as peer:
        auditor = await started(running, make_auditor(store, {1: peer.url}))
        auditor.note_written(chain, [encode_block(b) for b in chain])
        await auditor.run_round()
        assert peer_report(auditor, 1)["agreement"] == AGREE
        verifier = auditor.report()["local"]["verifier"]
        assert verifier["commit_cache_misses"] == 0 and verifier["commit_cache_hits"] > 0


@pytest.mark.parametrize("peer_length", [5, 10])
async def test_honest_peer_at_another_height_is_lagging(
    tmp_path: Path, running: list[Auditor], peer_length: int
) -> None:
    full = make_chain(10, txs_per_block=1)
    ours = full[:5] if peer_length == 10 else full
    store = new_store(tmp_path / "a.sqlite", ours)
    try:
        async with FakePeer(full[:peer_length]) as peer:
            auditor = await started(running, make_auditor(store, {1: peer.url}))
            await auditor.run_round()
            r = peer_report(auditor, 1)
            assert r["agreement"] == LAGGING
            assert r["lag"] == peer_length - len(ours)
            assert r["open_issues"] == [] and r["problems"] == []
            assert r["audited_through"] == 5
            assert auditor.report()["evidence"]["count"] == 0
    finally:
        store.close()


async def test_forked_peer_is_diverged_with_offline_checkable_evidence(
    store: Store, chain: list[Block], running: list[Auditor]
) -> None:
    fork = fork_chain(chain, 6)
    async with FakePeer(fork) as forked, FakePeer(chain) as honest:
        auditor = await started(running, make_auditor(store, {1: forked.url, 2: honest.url}))
        await auditor.run_round()
        r = peer_report(auditor, 1)
        assert r["agreement"] == DIVERGED
        assert {i["height"] for i in r["open_issues"]} == set(range(6, 11))
        assert peer_report(auditor, 2)["agreement"] == AGREE
        records = auditor.evidence()
        # One record per height whose batch differs (the fork differs at 6..10).
        assert sorted(d["height"] for d in records) == [6, 7, 8, 9, 10]
        for doc in records:
            assert doc["kind"] == KIND_CONFLICT and doc["accused"] == 1
            assert verify_evidence(doc, CONSORTIUM, registry=REGISTRY) is None
            assert conflict_signers(evidence_from_json(doc)) == [1, 2]
        await auditor.run_round()  # still diverged; the same findings are not re-recorded
        assert peer_report(auditor, 1)["agreement"] == DIVERGED
        assert auditor.report()["evidence"]["count"] == 5
        assert auditor.agreement() == DIVERGED


async def test_peer_serving_an_altered_block_is_invalid_with_evidence(
    store: Store, chain: list[Block], running: list[Auditor]
) -> None:
    # 4: a transaction altered in the whole block only (found by the body sample: here every
    # block); 7: a forged commit signature, visible in the header too.
    mutate = {4: _set_tx("patient", "patient-666"), 7: _set_commit("signature", "00" * 64)}
    settings = dataclasses.replace(FAST, body_sample_blocks=len(chain))
    async with FakePeer(chain, mutate=mutate) as liar:
        auditor = await started(running, make_auditor(store, {3: liar.url}, settings=settings))
        await auditor.run_round()
        r = peer_report(auditor, 3)
        assert r["agreement"] == INVALID
        assert {i["height"] for i in r["open_issues"]} == {4, 7}
        records = auditor.evidence()
        assert sorted(d["height"] for d in records) == [4, 7]
        for doc in records:
            assert doc["kind"] == KIND_INVALID and doc["reporter"] == 0 and doc["accused"] == 3
            assert verify_evidence(doc, CONSORTIUM) is None
            tampered = copy.deepcopy(doc)
            tampered["reason"] = "nothing to see"
            assert verify_evidence(tampered, CONSORTIUM) is not None
        # The peer stops lying: the open issues close on the next round's re-check.
        liar.mutate.clear()
        await auditor.run_round()
        assert peer_report(auditor, 3)["agreement"] == AGREE


async def test_a_bad_header_is_looked_at_closer_and_the_whole_block_is_the_evidence(
    store: Store, chain: list[Block], running: list[Auditor]
) -> None:
    mutate = {7: _set_commit("signature", "00" * 64)}
    async with FakePeer(chain, mutate=mutate) as liar:
        auditor = await started(running, make_auditor(store, {3: liar.url}))
        await auditor.run_round()
        r = peer_report(auditor, 3)
        assert r["agreement"] == INVALID and r["open_issues"] == [{"height": 7, "outcome": INVALID}]
        [record] = auditor.evidence()
        assert record["height"] == 7 and verify_evidence(record, CONSORTIUM) is None
        assert "txs" in json.loads(record["exhibits"][0]["block"])  # a whole block
        # Headers of everything; whole blocks only for 7 and the body sample.
        whole = whole_blocks_fetched(liar)
        assert "headers 1+10" in liar.requests and 7 in whole and len(whole) <= 2


async def test_a_header_that_does_not_verify_is_invalid_without_evidence(
    store: Store, chain: list[Block], running: list[Auditor]
) -> None:
    # The peer's headers lie, its whole blocks do not: no exhibit would show the lie.
    async with FakePeer(chain, header_mutate={5: _set("timestamp_ms", 1)}) as liar:
        auditor = await started(running, make_auditor(store, {2: liar.url}))
        await auditor.run_round()
        r = peer_report(auditor, 2)
        assert r["agreement"] == INVALID and r["open_issues"] == [{"height": 5, "outcome": INVALID}]
        assert "served header does not verify" in r["problems"][-1]["detail"]
        assert "digest does not match" in r["problems"][-1]["detail"]
        assert 5 in whole_blocks_fetched(liar)  # looked at closer
        assert auditor.evidence() == []


async def test_a_certified_header_of_another_block_is_diverged(
    store: Store, chain: list[Block], running: list[Auditor]
) -> None:
    other = header_to_json(block_header(fork_chain(chain, 5)[4]))

    def swap(doc: dict[str, Any]) -> None:
        doc.clear()
        doc.update(other)

    async with FakePeer(chain, header_mutate={5: swap}) as liar:
        auditor = await started(running, make_auditor(store, {2: liar.url}))
        await auditor.run_round()
        r = peer_report(auditor, 2)
        assert r["agreement"] == DIVERGED
        assert r["open_issues"] == [{"height": 5, "outcome": DIVERGED}]
        assert "validly certified but differs from ours" in r["problems"][-1]["detail"]
        assert auditor.evidence() == []  # the whole block it serves is ours


async def test_a_tampered_hash_column_accuses_nobody_and_is_repaired(
    tmp_path: Path, chain: list[Block], running: list[Auditor]
) -> None:
    path = tmp_path / "a.sqlite"
    store = new_store(path, chain)
    editor = RawEditor(path)
    editor.set_column(6, "hash", b"\x07" * 32)
    # The scrub stays away from 6 (a verified hash, once known, is used instead of the column).
    settings = dataclasses.replace(FAST, scrub_blocks=1)
    try:
        async with FakePeer(chain) as honest:
            auditor = await started(
                running, make_auditor(store, {1: honest.url}, settings=settings)
            )
            await auditor.run_round()
            r = peer_report(auditor, 1)
            assert r["agreement"] == AGREE and r["open_issues"] == [] and r["problems"] == []
            assert auditor.evidence() == []
            assert auditor.repairer.is_quarantined(6)  # our column, not the peer, was wrong
            await auditor.run_round()
            assert not auditor.repairer.is_quarantined(6)
            column = editor.db.execute("SELECT hash FROM blocks WHERE height = 6").fetchone()[0]
            assert bytes(column) == chain[5].block_hash
            assert peer_report(auditor, 1)["audited_through"] == len(chain)
    finally:
        editor.close()
        store.close()


async def test_status_head_that_contradicts_served_blocks_is_invalid(
    store: Store, chain: list[Block], running: list[Auditor]
) -> None:
    async with FakePeer(chain, status_extra={"head_hash": "00" * 32}) as liar:
        auditor = await started(running, make_auditor(store, {1: liar.url}))
        await auditor.run_round()
        r = peer_report(auditor, 1)
        assert r["agreement"] == INVALID
        assert r["problems"][-1]["kind"] == "status-inconsistent"


async def test_unreachable_peer(store: Store, running: list[Auditor]) -> None:
    auditor = await started(running, make_auditor(store, {1: "http://127.0.0.1:9"}))
    await auditor.run_round()
    r = peer_report(auditor, 1)
    assert r["agreement"] == UNREACHABLE and r["last_error"]
    assert r["counters"]["unreachable"] == 1


async def test_background_task_runs_rounds_and_stops(store: Store, chain: list[Block]) -> None:
    async with FakePeer(chain) as peer:
        auditor = make_auditor(store, {1: peer.url})
        await auditor.start()
        try:
            async with asyncio.timeout(10):
                while auditor.rounds < 2:
                    await asyncio.sleep(0.02)
        finally:
            await auditor.stop()
            await auditor.stop()  # idempotent
            assert peer_report(auditor, 1)["agreement"] == AGREE
            auditor.close()


async def test_audit_routes(store: Store, chain: list[Block], running: list[Auditor]) -> None:
    fork = fork_chain(chain, 9)
    async with FakePeer(fork) as forked:
        auditor = await started(running, make_auditor(store, {1: forked.url}))
        await auditor.run_round()
        app = web.Application()
        app.add_routes(audit_routes(auditor))
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            resp = await client.get("/audit")
            assert resp.status == 200
            doc = await resp.json()
            assert doc["node"] == 0 and doc["height"] == 10 and doc["agreement"] == DIVERGED
            assert doc["evidence"]["count"] == 2 and "exhibits" not in doc["evidence"]["latest"][0]
            resp = await client.get("/audit/evidence?limit=1")
            page = await resp.json()
            assert page["count"] == 2 and len(page["evidence"]) == 1
            older = await (
                await client.get(f"/audit/evidence?before={page['evidence'][0]['seq']}")
            ).json()
            assert len(older["evidence"]) == 1
            assert all(verify_evidence(d, CONSORTIUM) is None for d in page["evidence"])
            for bad in ("limit=0", "limit=abc", "limit=100000", "before=-1"):
                resp = await client.get(f"/audit/evidence?{bad}")
                assert resp.status == 400
                assert "error" in await resp.json()


# =============================================================================================
# medchain audit (scripts/audit.py)


def write_test_config(
    path: Path, data_dir: Path, node_id: int = 0, ports: list[int] | None = None
) -> None:
    ports = ports or [1 + i for i in range(N)]
    config = make_node_config(
        node_id=node_id,
        host="127.0.0.1",
        port=ports[node_id],
        data_dir=data_dir,
        key_file=path.parent / f"node{node_id}.key",
        replicas=[
            ReplicaEntry(id=i, url=f"http://127.0.0.1:{ports[i]}", public_key=CONSORTIUM[i])
            for i in range(N)
        ],
        clients=[ClientEntry(HOSPITALS[i], CLIENT_KEYS[i][1]) for i in range(len(HOSPITALS))],
    )
    write_config(path, config)


def run_cli(*argv: str) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="medchain")
    add_audit_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["audit", *argv])
    return int(args.func(args))


def test_cli_check_evidence(
    tmp_path: Path, chain: list[Block], capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "node0.toml"
    write_test_config(config, tmp_path / "data")
    record, _ = conflict_record(chain)
    good = tmp_path / "evidence.json"
    good.write_text(json.dumps({"count": 1, "evidence": [record.to_json()]}))
    assert run_cli("--check-evidence", str(good), "--config", str(config)) == 0
    assert "VALID" in capsys.readouterr().out
    doc = record.to_json()
    doc["height"] += 1
    bad = tmp_path / "tampered.json"
    bad.write_text(json.dumps(doc))
    assert run_cli("--check-evidence", str(bad), "--config", str(config), "--json") == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and "altered or forged" in out["records"][0]["problem"]
    assert run_cli("--check-evidence", str(tmp_path / "none.json"), "--config", str(config)) == 1


async def test_cli_audit_nodes(
    tmp_path: Path, chain: list[Block], capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "node0.toml"
    write_test_config(config, tmp_path / "data")
    async with FakePeer(chain) as a, FakePeer(chain) as b, FakePeer(chain[:6]) as behind:
        urls = ",".join(p.url for p in (a, b, behind))
        code = await asyncio.to_thread(run_cli, "--nodes", urls, "--config", str(config), "--json")
        out = json.loads(capsys.readouterr().out)
        assert code == 0 and out["ok"] and out["divergences"] == []
        assert [n["status"] for n in out["nodes"]] == ["agree", "agree", "lagging"]
        assert [n["agrees_through"] for n in out["nodes"]] == [10, 10, 6]
        assert out["nodes"][2]["lag"] == 4 and out["nodes"][2]["certificates_ok"] is True

        code = await asyncio.to_thread(run_cli, "--nodes", urls, "--config", str(config))
        assert code == 0 and "OK" in capsys.readouterr().out

    mutate = {5: _set_commit("signature", "00" * 64)}
    async with (
        FakePeer(chain) as a,
        FakePeer(fork_chain(chain, 8)) as forked,
        FakePeer(chain, mutate=mutate) as liar,
        FakePeer(chain) as d,
    ):
        urls = ",".join(p.url for p in (a, forked, liar, d))
        code = await asyncio.to_thread(run_cli, "--nodes", urls, "--config", str(config), "--json")
        out = json.loads(capsys.readouterr().out)
        assert code == 1 and not out["ok"]
        statuses = [n["status"] for n in out["nodes"]]
        assert statuses == ["agree", "diverged", "invalid", "agree"]
        assert out["nodes"][1]["agrees_through"] == 7
        assert out["nodes"][2]["first_bad_height"] == 5
        assert [dv["height"] for dv in out["divergences"]] == [8, 9, 10]


async def test_cli_checks_payloads_of_live_nodes(
    tmp_path: Path, chain: list[Block], capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "node0.toml"
    write_test_config(config, tmp_path / "data")

    def corrupt_payload(doc: dict[str, Any]) -> None:
        if "payload" in doc["txs"][0]:  # only when payloads are asked for, as a node would
            doc["txs"][0]["payload"] = "00"

    async with FakePeer(chain) as a, FakePeer(chain, mutate={3: corrupt_payload}) as b:
        urls = f"{a.url},{b.url}"
        code = await asyncio.to_thread(run_cli, "--nodes", urls, "--config", str(config), "--json")
        out = json.loads(capsys.readouterr().out)
    assert code == 1
    assert out["nodes"][1]["status"] == "invalid"
    assert "payload hash mismatch" in out["nodes"][1]["bad_reason"]


def test_cli_audits_stopped_nodes_offline(
    tmp_path: Path, chain: list[Block], capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "cluster"
    ports = [9, 10, 11, 12]  # nothing listens there: every node is read from its store
    lengths = [10, 10, 10, 7]
    for i in range(N):
        data = root / "data" / f"node{i}"
        data.mkdir(parents=True)
        write_test_config(root / f"node{i}.toml", data, node_id=i, ports=ports)
        new_store(data / "chain.sqlite", chain[: lengths[i]]).close()
    code = run_cli("--dir", str(root), "--json", "--timeout", "1")
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out
    assert [n["source"] for n in out["nodes"]] == ["offline"] * 4
    assert [n["status"] for n in out["nodes"]] == ["agree", "agree", "agree", "lagging"]

    editor = RawEditor(root / "data" / "node2" / "chain.sqlite")
    editor.write(4, flip(raw_of(root / "data" / "node2" / "chain.sqlite", 4), 60))
    editor.close()
    code = run_cli("--dir", str(root), "--json", "--timeout", "1")
    out = json.loads(capsys.readouterr().out)
    assert code == 1
    assert out["nodes"][2]["status"] == "invalid" and out["nodes"][2]["first_bad_height"] == 4


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("--dir", str(tmp_path / "nothing")) == 1
    assert "no cluster here" in capsys.readouterr().err
    assert run_cli("--nodes", "ftp://x") == 1
    assert "not an http" in capsys.readouterr().err


# =============================================================================================
# wiring


async def test_scrub_is_bounded_per_round(store: Store, running: list[Auditor]) -> None:
    settings = dataclasses.replace(FAST, scrub_blocks=3)
    auditor = await started(running, make_auditor(store, {}, settings=settings))
    await auditor.run_round()
    scrub = auditor.report()["local"]["scrub"]
    assert (scrub["next_height"], scrub["cycles"], scrub["blocks_checked"]) == (4, 0, 3)


class FakeCpuClock:
    """Every reading advances by ``step_s``: each metered step costs exactly that."""

    def __init__(self, step_s: float) -> None:
        self.now = 0.0
        self.step_s = step_s

    def __call__(self) -> float:
        self.now += self.step_s
        return self.now


async def test_scrub_stays_within_its_cpu_budget(store: Store, running: list[Auditor]) -> None:
    # 10% of a 100 ms round = 10 ms of credit per round; every metered step costs 4 ms.
    settings = dataclasses.replace(FAST, interval_ms=100, scrub_cpu_permille=100)
    auditor = Auditor(
        node_id=0,
        store=store,
        consortium=CONSORTIUM,
        registry=REGISTRY,
        signer=SIGNERS[0],
        peers={},
        audit_log=AuditLog(None),
        settings=settings,
        cpu_clock=FakeCpuClock(0.004),
    )
    await started(running, auditor)
    checked = []
    for _ in range(8):
        await auditor.run_round()
        checked.append(auditor.report()["local"]["scrub"]["blocks_checked"])
    cpu_ms = auditor.report()["local"]["scrub"]["cpu_ms"]
    # Never more than the credit of the rounds so far, plus one block's overrun.
    assert cpu_ms <= 8 * 10 + 16
    # An uncached block of 2 txs takes 4 steps (hash, decode, header, txs) = 16 ms > 10 ms:
    # blocks are spread over rounds, and an overrun is paid back (some rounds check none).
    per_round = [b - a for a, b in zip([0, *checked], checked, strict=False)]
    assert per_round == [1, 1, 0, 1, 1, 0, 1, 0]


def test_verification_in_steps_matches_the_one_shot_verdict(tmp_path: Path) -> None:
    blocks = make_chain(3, txs_per_block=70)
    path = tmp_path / "a.sqlite"
    store = new_store(path, blocks)
    try:
        verifier = ChainVerifier(CONSORTIUM, REGISTRY)
        steps = list(verifier.verify_steps(store, 2))
        # hash, decode, header, then signatures 32 at a time: 3 steps for 70 txs.
        assert len(steps) == 2 + 3 and verifier.known_hash(2) == blocks[1].block_hash
        assert list(verifier.verify_steps(store, 2)) == []  # unchanged bytes: one hash
        editor = RawEditor(path)
        sig = blocks[2].txs[65].tx.signature
        editor.write(3, replace_once(raw_of(path, 3), sig[:8], bytes(8)))
        editor.close()
        with pytest.raises(BlockUnavailable, match=r"tx 65.*bad signature"):
            list(verifier.verify_steps(store, 3))
        with pytest.raises(BlockUnavailable, match=r"tx 65.*bad signature"):
            verify_on_read(store, 3, ChainVerifier(CONSORTIUM, REGISTRY))
    finally:
        store.close()


def test_verification_in_steps_gives_no_verdict_on_bytes_replaced_meanwhile(
    tmp_path: Path,
) -> None:
    blocks = make_chain(2, txs_per_block=1)
    path = tmp_path / "a.sqlite"
    store = new_store(path, blocks)
    good = raw_of(path, 2)
    editor = RawEditor(path)
    editor.write(2, flip(good, 40))
    try:
        verifier = ChainVerifier(CONSORTIUM, REGISTRY)
        steps = verifier.verify_steps(store, 2)
        next(steps)
        editor.write(2, good)  # repaired while the bad bytes were being verified
        list(steps)  # no BlockUnavailable about bytes no longer stored
        assert verifier.failures == 0 and verifier.known_hash(2) is None
        assert list(verifier.verify_steps(store, 2))  # the new bytes: verified afresh
        assert verifier.known_hash(2) == blocks[1].block_hash
    finally:
        editor.close()
        store.close()


async def test_headers_of_blocks_just_written_are_served_from_memory(
    tmp_path: Path, chain: list[Block], running: list[Auditor]
) -> None:
    path = tmp_path / "a.sqlite"
    store = new_store(path, chain)
    try:
        auditor = await started(running, make_auditor(store, {}))
        auditor.note_written(chain[5:], [raw_of(path, b.height) for b in chain[5:]])
        editor = RawEditor(path)
        editor.write(7, replace_once(raw_of(path, 7), chain[6].commits[0].signature[:8], bytes(8)))
        editor.close()
        # 1..5 are read, hashed and verified; 6..10 come from memory, as committed (7 too:
        # what is served is the verified header, not the bytes now on disk).
        assert auditor.read_headers(1, 10, with_tx_ids=True) == [
            block_header(b, with_tx_ids=True) for b in chain
        ]
        assert auditor.verifier.verified == 5
        assert auditor.read_headers(7, 1) == [block_header(chain[6])]
        # The bytes are caught where they are read (or scrubbed); then 7 is refused.
        with pytest.raises(BlockUnavailable, match="bad commit signature"):
            auditor.read_block(7)
        with pytest.raises(BlockUnavailable, match="bad commit signature"):
            auditor.read_headers(7, 2)
        assert auditor.read_headers(6, 5) == [block_header(chain[5])]
    finally:
        store.close()


async def test_headers_are_read_verified_with_tx_ids(
    tmp_path: Path, chain: list[Block], running: list[Auditor]
) -> None:
    path = tmp_path / "a.sqlite"
    store = new_store(path, chain)
    try:
        auditor = await started(running, make_auditor(store, {}))
        expected = [block_header(b, with_tx_ids=True) for b in chain]
        assert auditor.read_headers(1, 100, with_tx_ids=True) == expected  # verified on read
        assert auditor.read_headers(1, 100, with_tx_ids=True) == expected  # cached: light decode
        assert auditor.read_headers(3, 2) == [block_header(b) for b in chain[2:4]]
        assert auditor.read_headers(11, 5) == [] and auditor.read_headers(0, 0) == []
        editor = RawEditor(path)
        editor.write(5, replace_once(raw_of(path, 5), chain[4].txs[0].payload[:4], b"XXXX"))
        editor.close()
        assert auditor.read_headers(1, 100) == [block_header(b) for b in chain[:4]]
        with pytest.raises(BlockUnavailable, match="payload hash mismatch"):
            auditor.read_headers(5, 3)
        assert auditor.repairer.is_quarantined(5)
    finally:
        store.close()


async def test_for_node_and_routes_before_start(
    tmp_path: Path, chain: list[Block], running: list[Auditor]
) -> None:
    config_path = tmp_path / "node1.toml"
    write_test_config(config_path, tmp_path / "data1", node_id=1)
    config = load_config(config_path)
    store = new_store(tmp_path / "chain.sqlite3", chain)
    try:
        auditor = Auditor.for_node(config, store, SIGNERS[1])
        running.append(auditor)
        assert (tmp_path / "data1" / "audit.sqlite").is_file()
        assert sorted(auditor.report()["peers"], key=lambda p: p["id"])[0]["url"] == config.peers[0]
        assert [p["id"] for p in auditor.report()["peers"]] == [0, 2, 3]

        current: list[Auditor | None] = [None]
        app = web.Application()
        app.add_routes(audit_routes(lambda: current[0]))
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            resp = await client.get("/audit")
            assert resp.status == 503 and (await resp.json())["error"] == "audit not running"
            current[0] = auditor
            resp = await client.get("/audit")
            assert resp.status == 200 and (await resp.json())["node"] == 1
    finally:
        store.close()
