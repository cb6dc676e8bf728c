"""The safety checker on hand-made chains: every invariant must reject what it forbids."""

from __future__ import annotations

from dataclasses import replace

import pytest

from consensus.events import Committed
from consensus.hashing import GENESIS_HASH, chain_link
from consensus.messages import Batch, CertifiedBlock, Commit
from tests.sim.app import INVALID_PREFIX, VALID_PREFIX, tx_id, tx_problem
from tests.sim.cluster import SimCrypto, _inner_crypto, _public_key, node_secret
from tests.sim.invariants import InvariantViolation, LivenessTracker, RunId, SafetyChecker

N = 4
QUORUM = 3
PUBLICS = [_public_key(node_secret(i)) for i in range(N)]
CRYPTO = [SimCrypto(_inner_crypto(node_secret(i), PUBLICS), {}) for i in range(N)]
RUN = RunId(seed=42, scenario="unit", n=N)


def checker() -> SafetyChecker:
    return SafetyChecker(RUN, N, QUORUM, CRYPTO[0].verify, tx_problem)


def commit(view: int, seq: int, digest: bytes, replica: int) -> Commit:
    c = Commit(view, seq, digest, replica)
    return replace(c, signature=CRYPTO[replica].sign(c.signing_bytes()))


def block(
    seq: int, blobs: list[bytes], signers: tuple[int, ...] = (0, 1, 2), view: int = 0
) -> CertifiedBlock:
    batch = Batch(view, 0, 1000 + seq, tuple(tx_id(b) for b in blobs), tuple(blobs))
    commits = tuple(commit(view, seq, batch.digest(), r) for r in signers)
    return CertifiedBlock(seq, batch, commits)


def link(prev: bytes, b: CertifiedBlock) -> Committed:
    return Committed(b, prev, chain_link(b.seq, prev, b.batch.digest()))


def chain(*blocks: CertifiedBlock) -> list[Committed]:
    out, prev = [], GENESIS_HASH
    for b in blocks:
        out.append(link(prev, b))
        prev = out[-1].block_hash
    return out


def expect(kind: str, c: SafetyChecker, node: str, committed: Committed) -> InvariantViolation:
    with pytest.raises(InvariantViolation) as info:
        c.on_commit(node, committed, 77)
    assert info.value.kind == kind
    return info.value


def test_agreeing_chains_pass() -> None:
    c = checker()
    blocks = chain(block(1, [VALID_PREFIX + b"a"]), block(2, []), block(3, [VALID_PREFIX + b"b"]))
    for node in ("node0", "node1", "node2"):
        for committed in blocks:
            c.on_commit(node, committed, 1)
    assert c.blocks_checked == 9
    assert c.height("node1") == 3


def test_fork_is_reported_with_seed_and_replay_command() -> None:
    c = checker()
    (a,) = chain(block(1, [VALID_PREFIX + b"a"]))
    (b,) = chain(block(1, [VALID_PREFIX + b"b"]))
    c.on_commit("node0", a, 5)
    violation = expect("fork", c, "node1", b)
    text = str(violation)
    assert "node0" in text and "seed=42" in text and "t=77ms" in text
    assert "python -m tests.sim.run --seed 42 --scenario unit --n 4" in text


def test_certificate_must_be_a_quorum_of_valid_matching_commits() -> None:
    b = block(1, [VALID_PREFIX + b"a"])
    digest = b.batch.digest()
    c0, c1, c2 = b.commits
    cases = {
        "only 2 signers": (c0, c1),
        "twice": (c0, c1, c1),
        "not a replica": (c0, c1, replace(c2, replica=9)),
        "bad signature": (replace(c0, signature=bytes(64)), c1, c2),
        "digest": (commit(0, 1, bytes(32), 0), c1, c2),
        "seq": (commit(0, 2, digest, 0), c1, c2),
        "different views": (commit(1, 1, digest, 0), c1, c2),
    }
    for why, commits in cases.items():
        bad = link(GENESIS_HASH, replace(b, commits=commits))
        violation = expect("certificate", checker(), "node0", bad)
        assert why in violation.detail, (why, violation.detail)


def test_chain_must_link() -> None:
    b1, b2 = chain(block(1, []), block(2, []))
    expect("chain", checker(), "node0", b2)  # height 2 before height 1
    c = checker()
    c.on_commit("node0", b1, 1)
    expect("chain", c, "node0", replace(b2, prev_hash=bytes(32)))
    expect("chain", c, "node0", replace(b2, block_hash=bytes(32)))


def test_transactions_valid_and_at_most_once_per_chain() -> None:
    blob = VALID_PREFIX + b"a"
    b1, b2 = chain(block(1, [blob]), block(2, [blob]))
    c = checker()
    c.on_commit("node0", b1, 1)
    expect("double-commit", c, "node0", b2)
    (bad,) = chain(block(1, [INVALID_PREFIX + b"x"]))
    expect("invalid-tx", checker(), "node0", bad)


def test_liveness_tracker_counts_each_honest_chain() -> None:
    t = LivenessTracker(["node0", "node1"])
    t.expect(b"a")
    t.expect(b"b")
    t.expect(b"a")
    assert (t.expected, t.outstanding) == (2, 2)
    t.on_honest_commit(b"a")
    t.on_honest_commit(b"zzz")  # not a client transaction: ignored
    assert t.outstanding == 2
    t.on_honest_commit(b"a")
    assert t.outstanding == 1
    assert t.missing() == [(b"b".hex(), 0)]
