"""node/reader, node/verified, node/startup, node/repair: tamper detection of stored blocks,
quarantine and repair from peers, the scrub, the start-up check. Stores are real SQLite files
whose bytes the tests change directly.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from node.ledger import (
    Block,
    block_from_committed,
    block_header,
)
from node.reader import BlockReader
from node.startup import startup_verify
from node.store import Store
from node.verified import BlockUnavailable, ChainVerifier
from tests.unit.helpers_audit import (
    FAST_READ,
    FakePeer,
    RawEditor,
    Running,
    chain_of_ten,
    flip,
    make_reader,
    new_store,
    raw_of,
    replace_once,
    started,
    stop_all,
)
from tests.unit.helpers_ledger import (
    CONSORTIUM,
    REGISTRY,
    make_chain,
    make_committed,
    make_tx,
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


def reader_report(reader: BlockReader) -> dict[str, Any]:
    """What GET /audit shows of the read path."""
    return {"local": reader.status(), "events": [e.to_json() for e in reader.log.events(20)]}


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
        assert verifier.read(store, 2) == blocks[1]
        undetected = []
        for pos in range(len(original)):
            for mask in (0x01, 0x80):
                editor.write(2, flip(original, pos, mask))
                try:
                    verifier.read(store, 2)
                except BlockUnavailable:
                    continue
                undetected.append((pos, mask))
        assert undetected == []
        editor.write(2, original)
        assert verifier.read(store, 2) == blocks[1]
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
            ChainVerifier(CONSORTIUM, REGISTRY).read(store, 3)
        assert info.value.height == 3 and info.value.reason
        # The neighbours are not blamed for it.
        verifier = ChainVerifier(CONSORTIUM, REGISTRY)
        assert verifier.read(store, 2) == blocks[1]
        assert verifier.read(store, 4) == blocks[3]
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
    assert ChainVerifier(CONSORTIUM, REGISTRY).read(store, 99) is None


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


def test_full_startup_check_applies_the_one_repeat_rule(tmp_path: Path) -> None:
    """A repeat in a re-issued batch (proposed in view 0, certified in view 1: PBFT 4.4) is a
    no-op the full check accepts; the same repeat in a fresh batch is a bad block. The same
    rule as verify_chain, the simulator's invariant and the history checker."""
    chain = make_chain(2)
    replay = chain[0].txs[1]
    for view, commit_view, bad in ((0, 1, set()), (1, 1, {3})):
        b3 = make_committed(
            3, chain[1].block_hash, [make_tx(99), replay], view=view, commit_view=commit_view
        )
        path = tmp_path / f"chain-{view}-{commit_view}.sqlite"
        store = new_store(path, [*chain, block_from_committed(b3)])
        try:
            report = startup_verify(store, ChainVerifier(CONSORTIUM, REGISTRY), full=True)
            assert {h for h, _ in report.bad} == bad
            if bad:
                assert "repeats seq 1 in a fresh batch" in report.bad[0][1]
        finally:
            store.close()


# =============================================================================================
# quarantine and repair from peers


async def test_tampered_block_is_quarantined_refused_and_repaired(
    tmp_path: Path, chain: list[Block], running: list[Running]
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
            reader = make_reader(store, {1: honest.url})
            report = reader.startup_check()
            assert [h for h, _ in report.bad] == [4]
            with pytest.raises(BlockUnavailable) as info:
                reader.read_block(4)
            assert info.value.quarantined and "payload hash mismatch" in info.value.reason
            assert reader.read_blocks(1, 10) == chain[:3]  # stops before the bad block
            assert reader_report(reader)["local"]["quarantined"][0]["height"] == 4

            await started(running, reader)
            await reader.run_round()

            assert raw_of(path, 4) == good
            assert reader.read_block(4) == chain[3]
            [(height, reason, old)] = store.quarantined()
            assert (height, old) == (4, tampered) and "payload hash mismatch" in reason
            local = reader_report(reader)["local"]
            assert local["quarantined"] == [] and local["repaired"] == 1
            kinds = [e["kind"] for e in reader_report(reader)["events"]]
            assert "tamper-detected" in kinds and "repaired" in kinds
            assert "block 4" in honest.requests
    finally:
        store.close()


async def test_repair_without_a_good_copy_keeps_refusing(
    tmp_path: Path, chain: list[Block], running: list[Running]
) -> None:
    path = tmp_path / "a.sqlite"
    store = new_store(path, chain)
    editor = RawEditor(path)
    editor.write(3, flip(raw_of(path, 3), 40))
    editor.close()
    try:
        async with FakePeer(chain, repair_bodies={3: b"\xc1garbage"}) as liar:
            reader = await started(
                running, make_reader(store, {1: liar.url, 2: "http://127.0.0.1:9"})
            )
            with pytest.raises(BlockUnavailable):
                reader.read_block(3)
            await reader.run_round()
            [q] = reader_report(reader)["local"]["quarantined"]
            assert q["attempts"] == 1 and "do not decode" in q["last_error"]
            assert "repair-failed" in [e["kind"] for e in reader_report(reader)["events"]]
            with pytest.raises(BlockUnavailable):
                reader.read_block(3)
    finally:
        store.close()


async def test_tamper_under_a_running_node_is_found_by_scrub_and_repaired(
    tmp_path: Path, chain: list[Block], running: list[Running]
) -> None:
    path = tmp_path / "a.sqlite"
    store = new_store(path, chain)
    try:
        async with FakePeer(chain) as honest:
            reader = await started(running, make_reader(store, {1: honest.url}))
            await reader.run_round()  # scrub verifies (and remembers) every block
            good = raw_of(path, 6)
            editor = RawEditor(path)
            editor.write(6, replace_once(good, chain[5].commits[2].signature[:8], bytes(8)))
            editor.close()
            await reader.run_round()  # scrub: detected, quarantined
            assert reader.repairer.is_quarantined(6)
            await reader.run_round()  # repaired
            assert raw_of(path, 6) == good and not reader.repairer.is_quarantined(6)
    finally:
        store.close()


# =============================================================================================
# the scrub, verification in steps, headers


async def test_scrub_is_bounded_per_round(store: Store, running: list[Running]) -> None:
    settings = dataclasses.replace(FAST_READ, scrub_blocks=3)
    reader = await started(running, make_reader(store, {}, settings=settings))
    await reader.run_round()
    scrub = reader_report(reader)["local"]["scrub"]
    assert (scrub["next_height"], scrub["cycles"], scrub["blocks_checked"]) == (4, 0, 3)


class FakeCpuClock:
    """Every reading advances by ``step_s``: each metered step costs exactly that."""

    def __init__(self, step_s: float) -> None:
        self.now = 0.0
        self.step_s = step_s

    def __call__(self) -> float:
        self.now += self.step_s
        return self.now


async def test_scrub_stays_within_its_cpu_budget(store: Store, running: list[Running]) -> None:
    # 10% of a 100 ms round = 10 ms of credit per round; every metered step costs 4 ms.
    settings = dataclasses.replace(FAST_READ, interval_ms=100, scrub_cpu_permille=100)
    reader = make_reader(store, {}, settings=settings, cpu_clock=FakeCpuClock(0.004))
    await started(running, reader)
    checked = []
    for _ in range(8):
        await reader.run_round()
        checked.append(reader_report(reader)["local"]["scrub"]["blocks_checked"])
    cpu_ms = reader_report(reader)["local"]["scrub"]["cpu_ms"]
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
            ChainVerifier(CONSORTIUM, REGISTRY).read(store, 3)
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
    tmp_path: Path, chain: list[Block], running: list[Running]
) -> None:
    path = tmp_path / "a.sqlite"
    store = new_store(path, chain)
    try:
        reader = await started(running, make_reader(store, {}))
        reader.note_written(chain[5:], [raw_of(path, b.height) for b in chain[5:]])
        editor = RawEditor(path)
        editor.write(7, replace_once(raw_of(path, 7), chain[6].commits[0].signature[:8], bytes(8)))
        editor.close()
        # 1..5 are read, hashed and verified; 6..10 come from memory, as committed (7 too:
        # what is served is the verified header, not the bytes now on disk).
        assert reader.read_headers(1, 10, with_tx_ids=True) == [
            block_header(b, with_tx_ids=True) for b in chain
        ]
        assert reader.verifier.verified == 5
        assert reader.read_headers(7, 1) == [block_header(chain[6])]
        # The bytes are caught where they are read (or scrubbed); then 7 is refused.
        with pytest.raises(BlockUnavailable, match="bad commit signature"):
            reader.read_block(7)
        with pytest.raises(BlockUnavailable, match="bad commit signature"):
            reader.read_headers(7, 2)
        assert reader.read_headers(6, 5) == [block_header(chain[5])]
    finally:
        store.close()


async def test_headers_are_read_verified_with_tx_ids(
    tmp_path: Path, chain: list[Block], running: list[Running]
) -> None:
    path = tmp_path / "a.sqlite"
    store = new_store(path, chain)
    try:
        reader = await started(running, make_reader(store, {}))
        expected = [block_header(b, with_tx_ids=True) for b in chain]
        assert reader.read_headers(1, 100, with_tx_ids=True) == expected  # verified on read
        assert reader.read_headers(1, 100, with_tx_ids=True) == expected  # cached: light decode
        assert reader.read_headers(3, 2) == [block_header(b) for b in chain[2:4]]
        assert reader.read_headers(11, 5) == [] and reader.read_headers(0, 0) == []
        editor = RawEditor(path)
        editor.write(5, replace_once(raw_of(path, 5), chain[4].txs[0].payload[:4], b"XXXX"))
        editor.close()
        assert reader.read_headers(1, 100) == [block_header(b) for b in chain[:4]]
        with pytest.raises(BlockUnavailable, match="payload hash mismatch"):
            reader.read_headers(5, 3)
        assert reader.repairer.is_quarantined(5)
    finally:
        store.close()
