"""Checkpoints and garbage collection (Castro & Liskov, section 4.3)."""

from __future__ import annotations

from consensus.checkpoints import retention
from consensus.hashing import GENESIS_HASH
from consensus.messages import Checkpoint, Commit, Prepare, PrePrepare, ViewChange
from tests.consensus.harness import start, tx


def test_a_stable_checkpoint_discards_the_log_at_or_below_it() -> None:
    """Section 4.3: 2f+1 matching checkpoints make one stable; the log at or below it goes, and
    the low watermark moves to it."""
    c = start()
    c.submit(0, [tx(i) for i in range(200)])
    c.run(2000)
    for node in c.nodes:
        r = node.replica
        assert r.last_executed >= 20
        assert r.stable_seq >= r.last_executed - r.cfg.checkpoint_interval
        assert len(r.log) <= r.cfg.watermark_window
        assert all(s > r.stable_seq for s in r.log.seqs())


def test_a_stable_checkpoint_lets_the_shell_forget_the_log_but_not_its_proof() -> None:
    """Section 4.3: once a checkpoint is stable the pre-prepares, prepares and commits at or
    below it, and older checkpoints, are never needed again; the 2f+1 checkpoints proving it
    are, since every view-change carries them (section 4.4)."""
    c = start()
    c.submit(0, [tx(i) for i in range(200)])
    c.run(2000)
    for node in c.nodes:
        stable = node.replica.stable_seq
        assert stable >= 8
        kept = node.persisted
        assert not [
            m for m in kept if isinstance(m, PrePrepare | Prepare | Commit) and m.seq <= stable
        ]
        assert not [m for m in kept if isinstance(m, Checkpoint) and m.seq < stable]
        proof = [m for m in kept if isinstance(m, Checkpoint) and m.seq == stable]
        assert len(proof) >= node.replica.cfg.quorum


def test_the_retention_rule_names_kinds_and_bounds() -> None:
    """Section 4.3, as the instruction the shell carries out: seq <= S for the log, < S for
    checkpoints; view-changes and new-views are never forgotten by seq."""
    rule = retention(32)
    digest = bytes(32)
    assert rule.covers(Prepare(0, 32, digest, 1)) and not rule.covers(Prepare(0, 33, digest, 1))
    assert rule.covers(Checkpoint(31, digest, 1)) and not rule.covers(Checkpoint(32, digest, 1))
    assert not rule.covers(ViewChange(1, 0, GENESIS_HASH, (), (), 1))
