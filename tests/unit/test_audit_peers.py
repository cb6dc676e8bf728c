"""node/audit: cross-audit of peers (in-process aiohttp peers, honest or altered), routes."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from node.audit.auditor import Auditor
from node.audit.compare import (
    AGREE,
    DIVERGED,
    INVALID,
    LAGGING,
    UNREACHABLE,
)
from node.audit.evidence import KIND_CONFLICT, KIND_INVALID, evidence_from_json
from node.audit.log import AuditLog
from node.audit.routes import audit_routes
from node.audit.verify_evidence import conflict_signers, verify_evidence
from node.config import load_config
from node.ledger import (
    Block,
    block_header,
    block_to_json,
    encode_block,
    header_to_json,
)
from node.reader import BlockReader
from node.store import Store
from node.verified import BlockUnavailable
from tests.unit.helpers_audit import (
    FAST,
    FAST_READ,
    SIGNERS,
    FakePeer,
    RawEditor,
    Running,
    altered_payload,
    chain_of_ten,
    flip,
    forged_certificate,
    fork_chain,
    full_round,
    make_auditor,
    new_store,
    peer_report,
    raw_of,
    set_commit,
    set_key,
    set_tx,
    started,
    stop_all,
    whole_blocks_fetched,
    write_test_config,
)
from tests.unit.helpers_ledger import (
    CONSORTIUM,
    REGISTRY,
    make_chain,
)


@pytest.fixture
def chain() -> list[Block]:
    return chain_of_ten()


@pytest.fixture
def store(tmp_path: Path, chain: list[Block]) -> Iterator[Store]:
    s = new_store(tmp_path / "chain.sqlite", chain)
    yield s
    s.close()


@pytest.fixture
async def running() -> AsyncIterator[list[Running]]:
    """Readers and auditors registered here are stopped and closed whatever the outcome."""
    things: list[Running] = []
    yield things
    await stop_all(things)


# =============================================================================================
# cross-audit of peers


async def test_honest_peers_agree_and_the_sweep_covers_history(
    store: Store, chain: list[Block], running: list[Running]
) -> None:
    settings = dataclasses.replace(FAST, recent_blocks=2, sweep_blocks=3, history_sample_blocks=4)
    async with FakePeer(chain) as p1, FakePeer(chain) as p2:
        auditor = await started(
            running, make_auditor(store, {1: p1.url, 2: p2.url}, settings=settings)
        )
        rounds = 0
        while peer_report(auditor, 1)["audited_through"] < len(chain):
            await full_round(auditor)
            rounds += 1
            assert rounds <= 3
        for pid in (1, 2):
            r = peer_report(auditor, pid)
            assert (r["agreement"], r["lag"], r["open_issues"]) == (AGREE, 0, [])
            assert r["counters"]["blocks_compared"] == len(chain)  # each compared once
        p1.requests.clear()
        await full_round(auditor)  # nothing new: a history sample and one body, no more
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
    store: Store, chain: list[Block], running: list[Running]
) -> None:
    async with FakePeer(chain) as peer:
        auditor = await started(running, make_auditor(store, {1: peer.url}))
        auditor.reader.note_written(chain, [encode_block(b) for b in chain])
        await full_round(auditor)
        assert peer_report(auditor, 1)["agreement"] == AGREE
        verifier = auditor.report()["local"]["verifier"]
        assert verifier["commit_cache_misses"] == 0 and verifier["commit_cache_hits"] > 0


@pytest.mark.parametrize("peer_length", [5, 10])
async def test_honest_peer_at_another_height_is_lagging(
    tmp_path: Path, running: list[Running], peer_length: int
) -> None:
    full = make_chain(10, txs_per_block=1)
    ours = full[:5] if peer_length == 10 else full
    store = new_store(tmp_path / "a.sqlite", ours)
    try:
        async with FakePeer(full[:peer_length]) as peer:
            auditor = await started(running, make_auditor(store, {1: peer.url}))
            await full_round(auditor)
            r = peer_report(auditor, 1)
            assert r["agreement"] == LAGGING
            assert r["lag"] == peer_length - len(ours)
            assert r["open_issues"] == [] and r["problems"] == []
            assert r["audited_through"] == 5
            assert auditor.report()["evidence"]["count"] == 0
    finally:
        store.close()


async def test_forked_peer_is_diverged_with_offline_checkable_evidence(
    store: Store, chain: list[Block], running: list[Running]
) -> None:
    fork = fork_chain(chain, 6)
    async with FakePeer(fork) as forked, FakePeer(chain) as honest:
        auditor = await started(running, make_auditor(store, {1: forked.url, 2: honest.url}))
        await full_round(auditor)
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
        await full_round(auditor)  # still diverged; the same findings are not re-recorded
        assert peer_report(auditor, 1)["agreement"] == DIVERGED
        assert auditor.report()["evidence"]["count"] == 5
        assert auditor.agreement() == DIVERGED


async def test_peer_serving_an_altered_block_is_invalid_with_evidence(
    store: Store, chain: list[Block], running: list[Running]
) -> None:
    # 4: a transaction altered in the whole block only (found by the body sample: here every
    # block); 7: a forged commit signature, visible in the header too.
    mutate = {4: set_tx("patient", "patient-666"), 7: set_commit("signature", "00" * 64)}
    settings = dataclasses.replace(FAST, body_sample_blocks=len(chain))
    async with FakePeer(chain, mutate=mutate) as liar:
        auditor = await started(running, make_auditor(store, {3: liar.url}, settings=settings))
        await full_round(auditor)
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
        await full_round(auditor)
        assert peer_report(auditor, 3)["agreement"] == AGREE


async def test_a_bad_header_is_looked_at_closer_and_the_whole_block_is_the_evidence(
    store: Store, chain: list[Block], running: list[Running]
) -> None:
    mutate = {7: set_commit("signature", "00" * 64)}
    async with FakePeer(chain, mutate=mutate) as liar:
        auditor = await started(running, make_auditor(store, {3: liar.url}))
        await full_round(auditor)
        r = peer_report(auditor, 3)
        assert r["agreement"] == INVALID and r["open_issues"] == [{"height": 7, "outcome": INVALID}]
        [record] = auditor.evidence()
        assert record["height"] == 7 and verify_evidence(record, CONSORTIUM) is None
        assert "txs" in json.loads(record["exhibits"][0]["block"])  # a whole block
        # Headers of everything; whole blocks only for 7 and the body sample.
        whole = whole_blocks_fetched(liar)
        assert "headers 1+10" in liar.requests and 7 in whole and len(whole) <= 2


async def test_a_header_that_does_not_verify_is_invalid_without_evidence(
    store: Store, chain: list[Block], running: list[Running]
) -> None:
    # The peer's headers lie, its whole blocks do not: no exhibit would show the lie.
    async with FakePeer(chain, header_mutate={5: set_key("timestamp_ms", 1)}) as liar:
        auditor = await started(running, make_auditor(store, {2: liar.url}))
        await full_round(auditor)
        r = peer_report(auditor, 2)
        assert r["agreement"] == INVALID and r["open_issues"] == [{"height": 5, "outcome": INVALID}]
        assert "served header does not verify" in r["problems"][-1]["detail"]
        assert "digest does not match" in r["problems"][-1]["detail"]
        assert 5 in whole_blocks_fetched(liar)  # looked at closer
        assert auditor.evidence() == []


async def test_a_certified_header_of_another_block_is_diverged(
    store: Store, chain: list[Block], running: list[Running]
) -> None:
    other = header_to_json(block_header(fork_chain(chain, 5)[4]))

    def swap(doc: dict[str, Any]) -> None:
        doc.clear()
        doc.update(other)

    async with FakePeer(chain, header_mutate={5: swap}) as liar:
        auditor = await started(running, make_auditor(store, {2: liar.url}))
        await full_round(auditor)
        r = peer_report(auditor, 2)
        assert r["agreement"] == DIVERGED
        assert r["open_issues"] == [{"height": 5, "outcome": DIVERGED}]
        assert "validly certified but differs from ours" in r["problems"][-1]["detail"]
        assert auditor.evidence() == []  # the whole block it serves is ours


async def test_a_tampered_hash_column_accuses_nobody_and_is_repaired(
    tmp_path: Path, chain: list[Block], running: list[Running]
) -> None:
    path = tmp_path / "a.sqlite"
    store = new_store(path, chain)
    editor = RawEditor(path)
    editor.set_column(6, "hash", b"\x07" * 32)
    # The scrub stays away from 6 (a verified hash, once known, is used instead of the column).
    settings = dataclasses.replace(FAST_READ, scrub_blocks=1)
    try:
        async with FakePeer(chain) as honest:
            auditor = await started(
                running, make_auditor(store, {1: honest.url}, read_settings=settings)
            )
            await full_round(auditor)
            r = peer_report(auditor, 1)
            assert r["agreement"] == AGREE and r["open_issues"] == [] and r["problems"] == []
            assert auditor.evidence() == []
            assert auditor.reader.repairer.is_quarantined(6)  # our column, not the peer, was wrong
            await full_round(auditor)
            assert not auditor.reader.repairer.is_quarantined(6)
            column = editor.db.execute("SELECT hash FROM blocks WHERE height = 6").fetchone()[0]
            assert bytes(column) == chain[5].block_hash
            assert peer_report(auditor, 1)["audited_through"] == len(chain)
    finally:
        editor.close()
        store.close()


async def test_status_head_that_contradicts_served_blocks_is_invalid(
    store: Store, chain: list[Block], running: list[Running]
) -> None:
    async with FakePeer(chain, status_extra={"head_hash": "00" * 32}) as liar:
        auditor = await started(running, make_auditor(store, {1: liar.url}))
        await full_round(auditor)
        r = peer_report(auditor, 1)
        assert r["agreement"] == INVALID
        assert r["problems"][-1]["kind"] == "status-inconsistent"


async def test_unreachable_peer(store: Store, running: list[Running]) -> None:
    auditor = await started(running, make_auditor(store, {1: "http://127.0.0.1:9"}))
    await full_round(auditor)
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
            auditor.reader.close()


async def test_audit_routes(store: Store, chain: list[Block], running: list[Running]) -> None:
    fork = fork_chain(chain, 9)
    async with FakePeer(fork) as forked:
        auditor = await started(running, make_auditor(store, {1: forked.url}))
        await full_round(auditor)
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
# bad repair copies, for_node and routes before start


@pytest.mark.parametrize(
    ("forge", "evidential"), [(forged_certificate, True), (altered_payload, False)]
)
async def test_repair_skips_a_byzantine_copy(
    tmp_path: Path,
    chain: list[Block],
    running: list[Running],
    forge: Callable[[Block], Block],
    evidential: bool,
) -> None:
    path = tmp_path / "a.sqlite"
    store = new_store(path, chain)
    editor = RawEditor(path)
    editor.write(3, flip(raw_of(path, 3), 40))
    editor.close()
    forged = json.dumps(block_to_json(forge(chain[2]), include_payload=True)).encode()
    try:
        async with FakePeer(chain, repair_bodies={3: forged}) as liar, FakePeer(chain) as honest:
            auditor = await started(running, make_auditor(store, {1: liar.url, 2: honest.url}))
            with pytest.raises(BlockUnavailable):
                auditor.reader.read_block(3)
            await full_round(auditor)
            # The liar is asked first (rotation), its copy refused, the honest copy used.
            assert liar.requests.index("block 3") < len(liar.requests)
            assert "block 3" in honest.requests
            assert auditor.reader.read_block(3) == chain[2]
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


async def test_for_node_and_routes_before_start(
    tmp_path: Path, chain: list[Block], running: list[Running]
) -> None:
    config_path = tmp_path / "node1.toml"
    write_test_config(config_path, tmp_path / "data1", node_id=1)
    config = load_config(config_path)
    store = new_store(tmp_path / "chain.sqlite3", chain)
    try:
        audit_log = AuditLog.for_node(config)
        reader = BlockReader.for_node(config, store, REGISTRY, audit_log)
        auditor = Auditor.for_node(config, reader, SIGNERS[1], audit_log)
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
