"""At-most-once execution (consensus.execution): the one rule for a repeated transaction, and
the history checker and simulator invariants that use it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from consensus.events import Committed
from consensus.execution import RepeatCheck, RepeatedTx, RepeatVerdict, is_reissued
from consensus.hashing import GENESIS_HASH, chain_link
from consensus.messages import Batch, CertifiedBlock, Commit
from node.ledger import block_from_committed
from scripts import history
from scripts.history import BlockSummary, TxRecord
from tests.sim.app import VALID_PREFIX, tx_id, tx_problem
from tests.sim.cluster import SimCrypto, _inner_crypto, _public_key, node_secret
from tests.sim.invariants import InvariantViolation, RunId, SafetyChecker
from tests.unit.helpers_ledger import make_committed, make_tx


def test_a_repeat_in_a_reissued_batch_is_a_counted_no_op() -> None:
    check = RepeatCheck[bytes]()
    assert check.observe(1, 0, 0, [b"a", b"b"]) == RepeatVerdict(0)
    verdict = check.observe(2, 0, 1, [b"c", b"a", b"b"])
    assert verdict.ok and verdict.repeats == 2 and verdict.problem is None
    assert check.repeats == 2
    assert (check.first_seq(b"a"), check.first_seq(b"c"), check.first_seq(b"z")) == (1, 2, None)
    assert check.observe(5, 1, 4, [b"a"]).repeats == 1 and check.repeats == 3


def test_a_repeat_in_a_fresh_batch_is_a_violation() -> None:
    check = RepeatCheck[bytes]()
    check.observe(1, 0, 0, [b"\x01\x02", b"b"])
    verdict = check.observe(3, 2, 2, [b"c", b"\x01\x02", b"b"])
    assert not verdict.ok and verdict.repeats == 0 and check.repeats == 0
    assert verdict.violations == (RepeatedTx(b"\x01\x02", 1, 3), RepeatedTx(b"b", 1, 3))
    assert verdict.problem == "tx 0102 at seq 3 repeats seq 1 in a fresh batch (and 1 more)"
    # A later view's certificate alone makes a re-issue; a batch view above it never does.
    assert is_reissued(0, 1) and not is_reissued(1, 1) and not is_reissued(2, 1)
    assert not check.observe(4, 5, 4, [b"c"]).ok
    # The new ids of a bad batch are still recorded: the next repeat of them is judged too.
    assert check.first_seq(b"c") == 3


def test_a_fresh_repeat_of_a_batch_a_later_view_reissued_below_it_is_a_no_op() -> None:
    """Sim seed 114145 (n = 7): seq 5 prepared in view 1 was left out of view 2's new-view;
    view 2 certified a fresh batch at seq 6 with one of its transactions (no honest backup of
    view 2 knew of seq 5's batch), and view 3 re-issued seq 5 again. The earlier occurrence is
    certified in a later view than the repeat: legitimate, a no-op at seq 6."""
    check = RepeatCheck[bytes]()
    assert check.observe(5, 1, 3, [b"t", b"u"]).ok
    verdict = check.observe(6, 2, 2, [b"t", b"v"])
    assert verdict.ok and verdict.repeats == 1 and check.first_seq(b"t") == 5
    # Certified in the same view as the first occurrence, or a later one: a violation.
    assert not check.observe(7, 3, 3, [b"u"]).ok
    assert not check.observe(8, 4, 4, [b"v"]).ok


def test_twice_in_one_batch_is_a_violation_even_when_reissued() -> None:
    check = RepeatCheck[str]()
    verdict = check.observe(1, 0, 3, ["a", "b", "a"])
    assert verdict.violations == (RepeatedTx("a", 1, 1),) and verdict.repeats == 0
    assert verdict.problem == "tx a at seq 1 repeats seq 1 twice in one batch"


def test_batches_must_come_in_increasing_seq_order() -> None:
    check = RepeatCheck[str]()
    check.observe(2, 0, 0, ["a"])
    for seq in (2, 1):
        with pytest.raises(ValueError, match="observed after seq 2"):
            check.observe(seq, 0, 0, ["a"])
    assert check.observe(7, 0, 0, []).ok  # gaps are the caller's to judge


# -- the history checker -------------------------------------------------------------------------


def _acked(tx: str, height: int) -> TxRecord:
    return TxRecord(tx, 0.0, 0, 0.01, None, 0.5, 0, height)


def _failed(checks: list[history.CheckResult]) -> set[str]:
    return {c.name for c in checks if not c.ok}


def test_history_counts_a_reissued_repeat_at_its_first_height() -> None:
    records = [_acked("a", 1), _acked("b", 2)]
    chain = [
        BlockSummary(1, "h1", ("a",)),
        BlockSummary(2, "h2", ("b", "a"), batch_view=0, certificate_view=1),
    ]
    assert _failed(history.check_history(records, {0: chain, 1: chain})) == set()


def test_history_fails_a_repeat_in_a_fresh_batch() -> None:
    records = [_acked("a", 1), _acked("b", 2)]
    chain = [
        BlockSummary(1, "h1", ("a",)),
        BlockSummary(2, "h2", ("b", "a"), batch_view=1, certificate_view=1),
    ]
    checks = history.check_history(records, {0: chain})
    assert _failed(checks) == {"acked_commits_durable", "exactly_once"}
    once = next(c for c in checks if c.name == "exactly_once")
    assert once.violations == ("tx a appears 2 times on node 0 (heights [1, 2])",)


def test_history_summaries_carry_both_views() -> None:
    block = block_from_committed(make_committed(1, GENESIS_HASH, [make_tx(1)], commit_view=2))
    (summary,) = history.summarize([block])
    assert (summary.batch_view, summary.certificate_view) == (0, 2)


# -- the simulator's invariant -------------------------------------------------------------------

SIM_PUBLICS = [_public_key(node_secret(i)) for i in range(4)]
SIM_CRYPTO = [SimCrypto(_inner_crypto(node_secret(i), SIM_PUBLICS), {}) for i in range(4)]


def _sim_block(seq: int, prev: bytes, blobs: list[bytes], view: int, cert_view: int) -> Committed:
    batch = Batch(view, 0, 1000 + seq, tuple(tx_id(b) for b in blobs), tuple(blobs))
    commits = []
    for r in range(3):
        unsigned = Commit(cert_view, seq, batch.digest(), r)
        commits.append(replace(unsigned, signature=SIM_CRYPTO[r].sign(unsigned.signing_bytes())))
    block = CertifiedBlock(seq, batch, tuple(commits))
    return Committed(block, prev, chain_link(seq, prev, batch.digest()))


def test_sim_invariant_uses_the_same_rule() -> None:
    run = RunId(seed=1, scenario="unit", n=4)
    checker = SafetyChecker(run, 4, 3, SIM_CRYPTO[0].verify, tx_problem)
    blob = VALID_PREFIX + b"a"
    b1 = _sim_block(1, GENESIS_HASH, [blob], 0, 0)
    checker.on_commit("node0", b1, 1)
    b2 = _sim_block(2, b1.block_hash, [blob], 0, 1)
    checker.on_commit("node0", b2, 2)
    assert checker.repeats == 1 and checker.height("node0") == 2
    b3 = _sim_block(3, b2.block_hash, [blob], 1, 1)
    with pytest.raises(InvariantViolation) as info:
        checker.on_commit("node0", b3, 3)
    assert info.value.kind == "double-commit"
    assert f"tx {tx_id(blob).hex()[:16]} at seq 3 repeats seq 1 in a fresh batch" in str(info.value)
