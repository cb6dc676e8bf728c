"""Verification (node.ledger.verify): quorums, certificates, blocks, chains."""

from __future__ import annotations

import dataclasses

import pytest

from consensus.execution import RepeatCheck
from consensus.hashing import GENESIS_HASH
from consensus.messages import Commit
from node.codec import CodecError
from node.crypto import sign
from node.ledger import (
    Block,
    ClientRegistry,
    TxEnvelope,
    VerifiedCommits,
    block_from_committed,
    block_repeats,
    certificate_view,
    decode_block,
    encode_block,
    quorum_size,
    verify_block,
    verify_block_header,
    verify_certificate,
    verify_chain,
    verify_txs,
)
from tests.unit.helpers_ledger import (
    CONSORTIUM,
    QUORUM,
    REGISTRY,
    REPLICA_KEYS,
    make_chain,
    make_committed,
    make_tx,
)

# -- certificates -------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "q"), [(1, 1), (4, 3), (5, 4), (6, 4), (7, 5), (10, 7), (13, 9)])
def test_quorum_size(n: int, q: int) -> None:
    assert quorum_size(n) == q


def _commit(replica: int, *, seq: int = 1, digest: bytes = b"d" * 32, view: int = 0) -> Commit:
    unsigned = Commit(view=view, seq=seq, digest=digest, replica=replica)
    sig = sign(REPLICA_KEYS[replica][0], unsigned.signing_bytes())
    return dataclasses.replace(unsigned, signature=sig)


def test_verify_certificate() -> None:
    d = b"d" * 32
    good = (_commit(0), _commit(1), _commit(3))
    assert verify_certificate(1, d, good, CONSORTIUM, QUORUM) is None
    assert verify_certificate(1, d, (*good, _commit(2)), CONSORTIUM, QUORUM) is None
    bad_sig = dataclasses.replace(_commit(2), signature=bytes(64))
    cases: list[tuple[tuple[Commit, ...], str]] = [
        ((), "certificate is empty"),
        (good[:2], "certificate has 2 commits, quorum is 3"),
        ((_commit(0), _commit(1), _commit(1)), "duplicate commit from replica 1"),
        ((_commit(0), _commit(1), dataclasses.replace(_commit(2), replica=7)), "unknown replica 7"),
        ((_commit(0), _commit(1), _commit(2, seq=2)), "is for seq 2, not 1"),
        ((_commit(0), _commit(1), _commit(2, digest=b"e" * 32)), "another digest"),
        ((_commit(0), _commit(1), _commit(2, view=1)), "different views"),
        ((_commit(0), _commit(1), bad_sig), "bad commit signature from replica 2"),
        # A commit signed by replica 2 but claiming to be replica 3.
        ((_commit(0), _commit(1), dataclasses.replace(_commit(2), replica=3)), "signature"),
    ]
    for commits, reason in cases:
        problem = verify_certificate(1, d, commits, CONSORTIUM, QUORUM)
        assert problem is not None and reason in problem, (reason, problem)


def test_verified_commits_are_remembered_bounded_and_bound_to_the_signature() -> None:
    d = b"d" * 32
    good = (_commit(0), _commit(1), _commit(3))
    verified = VerifiedCommits(capacity=4)
    assert verify_certificate(1, d, good, CONSORTIUM, QUORUM, verified=verified) is None
    assert (verified.misses, verified.hits, len(verified)) == (3, 0, 3)
    assert verify_certificate(1, d, good, CONSORTIUM, QUORUM, verified=verified) is None
    assert verified.hits == 3
    forged = dataclasses.replace(_commit(2), signature=bytes(64))
    problem = verify_certificate(
        1, d, (good[0], good[1], forged), CONSORTIUM, QUORUM, verified=verified
    )
    assert problem == "bad commit signature from replica 2"
    assert len(verified) == 3  # a failed signature is never remembered
    # The same commit presented as another replica's is not a hit.
    relabelled = dataclasses.replace(_commit(0), replica=2)
    assert (
        verify_certificate(
            1, d, (good[0], good[1], relabelled), CONSORTIUM, QUORUM, verified=verified
        )
        == "bad commit signature from replica 2"
    )
    verified.add_commits([_commit(2), _commit(0, seq=2)], CONSORTIUM)
    assert len(verified) == 4  # bounded: the least recently used went
    with pytest.raises(ValueError, match="capacity"):
        VerifiedCommits(0)


def test_verify_block_in_parts_agrees_with_verify_block() -> None:
    txs = [make_tx(40 + i, client=i % 2) for i in range(5)]
    block = block_from_committed(make_committed(1, GENESIS_HASH, txs))
    assert verify_block_header(block, GENESIS_HASH, CONSORTIUM) is None
    assert verify_txs(block, REGISTRY) is None
    bad = TxEnvelope(tx=dataclasses.replace(txs[3].tx, signature=bytes(64)), payload=b"x")
    broken = dataclasses.replace(block, txs=(*block.txs[:3], bad, *block.txs[4:]))
    whole = verify_block(broken, GENESIS_HASH, CONSORTIUM, REGISTRY)
    assert whole is not None and whole.startswith("tx 3")
    assert verify_txs(broken, REGISTRY, start=0, stop=3) is None
    assert verify_txs(broken, REGISTRY, start=3, stop=4) == whole
    assert verify_txs(broken, REGISTRY, start=4) is None


# -- verify_block / verify_chain ----------------------------------------------------------------


def test_verify_block_reasons() -> None:
    txs = [make_tx(20), make_tx(21, client=1)]
    block = block_from_committed(make_committed(1, GENESIS_HASH, txs))

    def check(b: Block, prev: bytes = GENESIS_HASH) -> str | None:
        return verify_block(b, prev, CONSORTIUM, REGISTRY)

    assert check(block) is None
    assert check(block, prev=bytes(32)) == "prev_hash does not link to the previous block"
    assert "merkle root" in str(check(dataclasses.replace(block, txs=block.txs[:1])))
    assert check(dataclasses.replace(block, txs=(txs[0], txs[0]))) == "duplicate tx id in block"
    assert (
        check(dataclasses.replace(block, timestamp_ms=1)) == "block hash does not match the header"
    )
    assert check(dataclasses.replace(block, proposer=9)) == "proposer 9 is not a consortium member"
    null_with_txs = dataclasses.replace(block, proposer=-1)
    assert check(null_with_txs) == "null block carries transactions"
    weak = dataclasses.replace(block, commits=block.commits[:2])
    assert check(weak) == "certificate has 2 commits, quorum is 3"
    # A transaction swapped for another with the same id but a different payload.
    swapped = TxEnvelope(txs[1].tx, b"forged payload")
    problem = check(dataclasses.replace(block, txs=(txs[0], swapped)))
    assert (
        problem is not None and problem.startswith("tx 1 (") and "payload hash mismatch" in problem
    )
    # Same block, an unregistered client: signature and certificate fine, registry refuses.
    problem = verify_block(block, GENESIS_HASH, CONSORTIUM, ClientRegistry())
    assert problem is not None and "unknown client key" in problem


def test_verify_chain_ok() -> None:
    chain = make_chain(6, null_every=3)
    report = verify_chain(chain, CONSORTIUM, REGISTRY)
    assert report.ok and report.height == 6 and report.head_hash == chain[-1].block_hash
    assert report.first_bad_height is None and report.reason is None
    empty = verify_chain([], CONSORTIUM, REGISTRY)
    assert empty.ok and empty.height == 0 and empty.head_hash == GENESIS_HASH


def test_verify_chain_reports_first_bad_block() -> None:
    chain = make_chain(5)
    gap = verify_chain(chain[:2] + chain[3:], CONSORTIUM, REGISTRY)
    assert not gap.ok and gap.height == 2 and gap.head_hash == chain[1].block_hash
    assert gap.first_bad_height == 3 and gap.reason == "expected height 3, found 4"
    not_genesis = verify_chain(chain[1:], CONSORTIUM, REGISTRY)
    assert not_genesis.first_bad_height == 1 and not_genesis.height == 0
    tampered = [*chain[:3], dataclasses.replace(chain[3], timestamp_ms=5), chain[4]]
    report = verify_chain(tampered, CONSORTIUM, REGISTRY)
    assert report.first_bad_height == 4 and report.height == 3
    assert report.reason == "block hash does not match the header"


def _block3(chain: list[Block], txs: list[TxEnvelope], view: int, commit_view: int) -> Block:
    c = make_committed(3, chain[1].block_hash, txs, view=view, commit_view=commit_view)
    return block_from_committed(c)


def test_a_tx_repeated_in_a_reissued_batch_is_a_counted_no_op() -> None:
    chain = make_chain(2)
    replay = chain[0].txs[1]
    # Proposed in view 0, certified in view 1: the new-view re-issued it (PBFT 4.4).
    b3 = _block3(chain, [make_tx(99), replay], view=0, commit_view=1)
    report = verify_chain([*chain, b3], CONSORTIUM, REGISTRY)
    assert report.ok and report.height == 3 and report.duplicate_txs == 1


def test_a_tx_repeated_in_a_fresh_batch_is_a_bad_block() -> None:
    chain = make_chain(2)
    replay = chain[0].txs[1]
    for view in (0, 2):  # certified in the very view that proposed it
        b3 = _block3(chain, [make_tx(99), replay], view=view, commit_view=view)
        report = verify_chain([*chain, b3], CONSORTIUM, REGISTRY)
        assert not report.ok and report.height == 2 and report.first_bad_height == 3
        assert report.reason == (
            f"tx {replay.tx_id.hex()[:16]} at seq 3 repeats seq 1 in a fresh batch"
        )
        assert report.duplicate_txs == 0
    # The count reported with a failure is that of the blocks that verified.
    b3 = _block3(chain, [make_tx(99), replay], view=0, commit_view=1)
    c4 = make_committed(4, b3.block_hash, [make_tx(100), chain[1].txs[0]], view=1)
    report = verify_chain([*chain, b3, block_from_committed(c4)], CONSORTIUM, REGISTRY)
    assert not report.ok and report.first_bad_height == 4 and report.duplicate_txs == 1


def test_block_repeats_is_the_chain_rule_one_block_at_a_time() -> None:
    chain = make_chain(2)
    replay = chain[0].txs[0]
    check = RepeatCheck[bytes]()
    assert [block_repeats(check, b).problem for b in chain] == [None, None]
    assert certificate_view(chain[0]) == 0
    reissued = _block3(chain, [replay], view=1, commit_view=3)
    assert certificate_view(reissued) == 3
    verdict = block_repeats(check, reissued)
    assert verdict.ok and verdict.repeats == 1 and check.repeats == 1
    assert check.first_seq(replay.tx_id) == 1
    fresh = block_from_committed(make_committed(4, reissued.block_hash, [replay], view=3))
    verdict = block_repeats(check, fresh)
    assert verdict.repeats == 0 and verdict.problem is not None
    assert f"tx {replay.tx_id.hex()[:16]} at seq 4 repeats seq 1" in verdict.problem


def test_every_single_byte_change_of_an_encoded_block_is_detected() -> None:
    """Header, tx fields, payloads, signatures, certificate: flip any byte, decode or verify
    catches it."""
    txs = [make_tx(30, payload=b"abc"), make_tx(31, client=1, payload=b"de")]
    block = block_from_committed(make_committed(1, GENESIS_HASH, txs, view=1, proposer=1))
    data = encode_block(block)
    assert verify_block(decode_block(data), GENESIS_HASH, CONSORTIUM, REGISTRY) is None
    undetected = []
    for pos in range(len(data)):
        for mask in (0x01, 0x80, 0xFF):
            flipped = bytearray(data)
            flipped[pos] ^= mask
            try:
                candidate = decode_block(bytes(flipped))
            except CodecError:
                continue
            if verify_block(candidate, GENESIS_HASH, CONSORTIUM, REGISTRY) is None:
                undetected.append((pos, mask))
    assert undetected == []
