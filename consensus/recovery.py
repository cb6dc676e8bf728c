"""Rebuilding a replica after a crash from what it persisted before sending (section 4.2's
"persist before send"). Everything this replica signed is restored, so after a restart it can
never sign a pre-prepare, prepare, commit or view-change that contradicts an earlier one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from consensus.messages import (
    Checkpoint,
    Commit,
    Message,
    NewView,
    Prepare,
    PreparedProof,
    PrePrepare,
    ViewChange,
)

if TYPE_CHECKING:
    from consensus.log import Slot
    from consensus.replica import Replica


def restore(r: Replica, persisted: Sequence[Message]) -> None:
    if not persisted:
        return
    _restore_views(r, persisted)
    _restore_checkpoints(r, persisted)
    _restore_slots(r, persisted)


def _restore_views(r: Replica, persisted: Sequence[Message]) -> None:
    me = r.id
    view = 0
    for m in persisted:
        if isinstance(m, PrePrepare | Prepare | Commit) and m.replica == me:
            view = max(view, m.view)
        elif isinstance(m, ViewChange) and m.replica == me:
            view = max(view, m.new_view)
            if r.my_view_change is None or m.new_view > r.my_view_change.new_view:
                r.my_view_change = m
        elif isinstance(m, NewView):
            view = max(view, m.view)
            if r.new_view_msg is None or m.view > r.new_view_msg.view:
                r.new_view_msg = m
    r.view = view
    nv = r.new_view_msg
    vc = r.my_view_change
    if vc is not None and vc.new_view == view and (nv is None or nv.view < view):
        r.view_active = False
        r.view_changes[(vc.new_view, me)] = vc
        r.vc_attempts = 1
    if nv is not None and nv.view == view:
        r.view_base_seq = max(v.stable_seq for v in nv.view_changes)


def _restore_checkpoints(r: Replica, persisted: Sequence[Message]) -> None:
    for m in persisted:
        if isinstance(m, Checkpoint) and r.valid_replica(m.replica):
            r.checkpoint_votes.setdefault(m.seq, {})[m.replica] = m
            if m.replica == r.id:
                r.my_checkpoints[m.seq] = m.state_digest
    for seq in sorted(r.checkpoint_votes, reverse=True):
        mine = r.my_checkpoints.get(seq)
        if mine is None or seq > r.last_executed:
            continue
        proof = [c for c in r.checkpoint_votes[seq].values() if c.state_digest == mine]
        if len(proof) >= r.cfg.quorum:
            proof.sort(key=lambda c: c.replica)
            r.stable_seq, r.stable_digest = seq, mine
            r.stable_proof = tuple(proof[: r.cfg.quorum])
            break
    for seq in [s for s in r.checkpoint_votes if s < r.stable_seq]:
        del r.checkpoint_votes[seq]


def _restore_slots(r: Replica, persisted: Sequence[Message]) -> None:
    for m in persisted:
        if not isinstance(m, PrePrepare | Prepare | Commit) or m.seq <= r.stable_seq:
            continue
        slot = r.log.slot(m.seq)
        if isinstance(m, PrePrepare):
            if slot.pre_prepare is None or m.view > slot.pre_prepare.view:
                slot.pre_prepare = m
            # A later view may re-issue this batch stripped (section 4.4: O carries digests);
            # the transactions we accepted before the crash are what lets us execute it then.
            r.remember_batch(m.seq, m.batch)
            if m.replica == r.id:
                r.next_seq = max(r.next_seq, m.seq + 1)
        elif isinstance(m, Prepare):
            slot.prepares.add((m.view, m.digest), m, m.replica)
            if m.replica == r.id and m.view == r.view:
                slot.my_prepare = m
        elif m.replica == r.id:
            slot.commits.add((m.view, m.digest), m, m.replica)
            if m.view == r.view:
                slot.my_commit = m
    _restore_new_view(r)
    for slot in r.log.slots():
        _rebuild_prepared_proof(r, slot)
        if slot.pre_prepare is not None and slot.pre_prepare.view != r.view:
            slot.pre_prepare = None
        if slot.seq <= r.last_executed:
            continue
        if slot.pre_prepare is not None and r.view_active:
            for tx_id in slot.pre_prepare.batch.tx_ids:
                r.inflight_ids[tx_id] = slot.seq


def _restore_new_view(r: Replica) -> None:
    """The pre-prepares a new-view re-issued belong to the view it started; a primary that
    sent that new-view must not reuse its sequence numbers after a restart."""
    nv = r.new_view_msg
    if nv is None or nv.view != r.view:
        return
    top = r.view_base_seq
    for pp in nv.pre_prepares:
        top = max(top, pp.seq)
        if pp.seq <= r.stable_seq:
            continue
        slot = r.log.slot(pp.seq)
        if slot.pre_prepare is None or slot.pre_prepare.view < pp.view:
            slot.pre_prepare = pp
        r.remember_batch(pp.seq, pp.batch)  # the only copy if the view's primary sent it
    if nv.replica == r.id:
        r.next_seq = max(r.next_seq, top + 1)


def _rebuild_prepared_proof(r: Replica, slot: Slot) -> None:
    pp = slot.pre_prepare
    if pp is None:
        return
    voters = slot.prepares.voters((pp.view, pp.digest))
    backups = sorted((p for rid, p in voters.items() if rid != pp.replica), key=lambda p: p.replica)
    if len(backups) >= r.cfg.quorum - 1:
        slot.prepared_proof = PreparedProof(pp, tuple(backups[: r.cfg.quorum - 1]))
