"""Checkpoints and garbage collection (section 4.3).

Every K sequence numbers a replica signs the chain hash it reached; 2f+1 matching checkpoints
make it stable: the log at or below it is discarded and the watermark window moves on.
f+1 matching checkpoints above what we executed prove we are behind: state transfer fetches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from consensus.events import DropReason, Forget, Ready, Retention
from consensus.messages import Checkpoint, Commit, Prepare, PrePrepare

if TYPE_CHECKING:
    from consensus.replica import Replica

# Distinct checkpoint seqs remembered above the stable one; older ones are pruned first.
MAX_CHECKPOINT_SEQS = 16


def retention(stable_seq: int) -> Retention:
    """What a replica may forget of its persisted log once ``stable_seq`` is stable: the
    pre-prepares, prepares and commits at or below it, and the checkpoints below it. Those AT
    it stay: they are the stable checkpoint's proof, which every view-change carries."""
    return Retention(
        (
            Forget(frozenset({PrePrepare, Prepare, Commit}), below_seq=stable_seq + 1),
            Forget(frozenset({Checkpoint}), below_seq=stable_seq),
        )
    )


def take_checkpoint(r: Replica, out: Ready) -> None:
    cp = r.sign(Checkpoint(r.last_executed, r.head_hash, r.id))
    r.my_checkpoints[cp.seq] = cp.state_digest
    _record(r, cp)
    r.persist_and_broadcast(cp, out)
    check_stable(r, cp.seq, out)


def on_checkpoint(r: Replica, cp: Checkpoint, out: Ready) -> None:
    if not r.valid_replica(cp.replica):
        out.drop(DropReason.UNKNOWN_REPLICA, f"checkpoint from {cp.replica}", replica=cp.replica)
        return
    if cp.seq <= r.stable_seq or cp.seq % r.cfg.checkpoint_interval:
        return
    votes = r.checkpoint_votes.get(cp.seq)
    if votes is not None and cp.replica in votes:
        return
    if not r.verify(cp):
        detail = f"checkpoint from {cp.replica}"
        out.drop(DropReason.BAD_SIGNATURE, detail, replica=cp.replica, seq=cp.seq)
        return
    _record(r, cp)
    check_stable(r, cp.seq, out)
    _note_lag(r, cp.seq)


def _record(r: Replica, cp: Checkpoint) -> None:
    r.checkpoint_votes.setdefault(cp.seq, {})[cp.replica] = cp
    while len(r.checkpoint_votes) > MAX_CHECKPOINT_SEQS:
        del r.checkpoint_votes[min(r.checkpoint_votes)]


def _matching(r: Replica, seq: int, digest: bytes) -> list[Checkpoint]:
    votes = r.checkpoint_votes.get(seq, {})
    return [c for c in votes.values() if c.state_digest == digest]


def _note_lag(r: Replica, seq: int) -> None:
    """f+1 matching checkpoints beyond what we executed: at least one honest replica is there."""
    if seq <= r.last_executed:
        return
    votes = r.checkpoint_votes.get(seq, {})
    by_digest: dict[bytes, int] = {}
    for c in votes.values():
        by_digest[c.state_digest] = by_digest.get(c.state_digest, 0) + 1
    if max(by_digest.values(), default=0) >= r.cfg.weak_quorum:
        r.fetch_target = max(r.fetch_target, seq)


def check_stable(r: Replica, seq: int, out: Ready) -> None:
    mine = r.my_checkpoints.get(seq)
    if mine is None or seq <= r.stable_seq:
        return
    proof = _matching(r, seq, mine)
    if len(proof) < r.cfg.quorum:
        return
    proof.sort(key=lambda c: c.replica)
    make_stable(r, seq, mine, tuple(proof[: r.cfg.quorum]), out)


def check_all_stable(r: Replica, out: Ready) -> None:
    for seq in sorted(r.checkpoint_votes, reverse=True):
        if seq <= r.last_executed:
            check_stable(r, seq, out)
            return


def make_stable(
    r: Replica, seq: int, digest: bytes, proof: tuple[Checkpoint, ...], out: Ready
) -> None:
    """Advance the low watermark to ``seq`` and garbage-collect everything at or below it."""
    r.stable_seq = seq
    r.stable_digest = digest
    r.stable_proof = proof
    out.persist.extend(c for c in proof if c.replica != r.id)
    out.forget(retention(seq))
    r.log.collect_garbage(seq)
    for s in [s for s in r.checkpoint_votes if s < seq]:
        del r.checkpoint_votes[s]
    for s in [s for s in r.my_checkpoints if s < seq]:
        del r.my_checkpoints[s]
    for s in [s for s in r.buffered if s <= seq]:
        del r.buffered[s]
    for d in [d for d, (s, _) in r.batches.items() if s <= seq]:
        del r.batches[d]


def retransmit(r: Replica, out: Ready) -> None:
    """Re-send our newest checkpoint while it is not yet stable (lost messages)."""
    if not r.my_checkpoints:
        return
    seq = max(r.my_checkpoints)
    if seq > r.stable_seq:
        r.broadcast(r.sign(Checkpoint(seq, r.my_checkpoints[seq], r.id)), out)
