"""View changes (sections 4.4 and 4.5.2): replacing a faulty or slow primary.

A backup whose timer expires suspects the primary: it tells every replica (``Suspect``) and
stays in view v. A replica that suspects v and holds f+1 fresh suspicions of it (its own
among them, so one is an honest replica's) moves to view v+1 and sends a view-change carrying
its stable checkpoint and its prepared certificates; the others follow once f+1 have. The
primary of v+1 gathers 2f+1 of them and sends a new-view that re-issues, in v+1, every batch
that may have committed (a null batch where none did). Every backup recomputes that choice
from the same view-changes and checks it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from consensus import checkpoints, normal, statetransfer
from consensus.events import DropReason, Forget, Ready, Retention, ViewChangeCause
from consensus.hashing import GENESIS_HASH
from consensus.messages import (
    NULL_BATCH,
    Batch,
    Commit,
    NewView,
    Prepare,
    PreparedProof,
    PrePrepare,
    Suspect,
    ViewChange,
)
from consensus.quorum import check_checkpoint_proof, check_prepared_proof

if TYPE_CHECKING:
    from consensus.replica import Replica


MAX_VIEWS_PER_REPLICA = 4
SUSPICION_FRESH_TIMEOUTS = 2
"""A suspicion counts for this many view timeouts after it came: a replica whose timer keeps
firing says so again every view timeout, so the suspicions of replicas timing out together
overlap; one that saw no progress once, alone, minutes ago no longer does."""


def retention(view: int) -> Retention:
    """Once a replica moves to ``view``, the view-changes and new-views of earlier views are
    never needed again: recovery restores the newest of each, which are for ``view``."""
    return Retention((Forget(frozenset({ViewChange, NewView}), below_view=view),))


def _moved_to(out: Ready, view: int) -> None:
    out.view_changed = view
    out.forget(retention(view))


def on_view_timeout(r: Replica, out: Ready) -> None:
    """The timer expired: suspect the primary, unless this replica is the one cut off (it
    cannot reach a quorum) or still catching up on blocks others have decided; then look
    again shortly. Only liveness depends on this choice, never safety."""
    if r.suspected_at_ms is None:
        r.suspected_at_ms = r.now_ms
        _announce_suspicion(r, out)
    recheck_ms = _defer_for_ms(r, r.suspected_at_ms)
    if recheck_ms is None and r.view_active and _we_are_behind(r):
        recheck_ms = r.cfg.heartbeat_ms
    if recheck_ms is not None:
        r.vc_deadline_ms = r.now_ms + recheck_ms
        return
    if not r.view_active:
        # Section 4.5.2: no new-view for v+1 in time, though 2f+1 voted for it (the timer of
        # a view change runs only then, ``arm_timer_on_quorum``): on to v+2.
        start_view_change(r, r.view + 1, out, ViewChangeCause.VIEW_TIMER)
        return
    r.vc_deadline_ms = r.now_ms + r.view_timeout_ms()  # still no progress then: say it again
    suspect_primary(r, out, ViewChangeCause.VIEW_TIMER)


def _we_are_behind(r: Replica) -> bool:
    """The cluster executed past us within the last view timeout (f+1 say so): the primary
    makes progress, and our timer fired because this replica fell behind (its pre-prepares
    lost from a full send queue, its CPU starved); state transfer catches it up. Measured at
    twice the peak: such a replica's timeout, with a suspicion from another that saw progress
    a moment later, moved it alone to the next view, where it sat out of every quorum to the
    end of the run. A primary that stops is suspected at most one view timeout later."""
    return statetransfer.cluster_executes_past_us(r, r.now_ms - r.view_timeout_ms())


def on_request_timeout(r: Replica, out: Ready) -> None:
    """A request has waited ``request_timeout_ms`` in this view: the primary executes others
    but not this one (censorship), or nothing at all. Suspect it, with the same deferrals
    (progress elsewhere does not clear this suspicion: only a new view does)."""
    if r.request_suspected_at_ms is None:
        r.request_suspected_at_ms = r.now_ms
        _announce_suspicion(r, out)
    recheck_ms = _defer_for_ms(r, r.request_suspected_at_ms)
    if recheck_ms is not None:
        r.request_check_ms = r.now_ms + recheck_ms
        return
    r.request_check_ms = r.now_ms + r.view_timeout_ms()
    suspect_primary(r, out, ViewChangeCause.REQUEST_TIMER)


def suspect_primary(r: Replica, out: Ready, cause: ViewChangeCause) -> None:
    """Our timer expired: tell every replica, and move to the next view once f+1 suspicions
    of this one are fresh, ours among them. Alone, we stay in the view and keep working: a
    replica that lags (just restarted, starved of CPU under overload) saw no progress that
    the others made, and leaving the view took it out of the quorum, for as long as the
    others had no reason to follow (measured: one node sat in a view change to the end of a
    rolling restart at peak load; at twice the peak two such lone timeouts, 10 s apart, made
    each view change of a 150 s run)."""
    r.suspicions[r.id] = r.now_ms
    out.suspected = cause
    r.broadcast(r.sign(Suspect(r.view, r.id)), out)
    _change_if_suspected(r, cause, out)


def on_suspect(r: Replica, m: Suspect, out: Ready) -> None:
    if not r.valid_replica(m.replica) or m.replica == r.id:
        return
    if m.view < r.view:
        help_stale(r, m.replica, out)  # it suspects a primary we replaced: it missed our new-view
        return
    if m.view > r.view or not r.view_active:
        return  # a view we are not in: its view-changes, not suspicions, bring us there
    if not r.verify(m):
        out.drop(DropReason.BAD_SIGNATURE, f"suspect from {m.replica}", replica=m.replica)
        return
    r.suspicions[m.replica] = r.now_ms
    _change_if_suspected(r, ViewChangeCause.SUSPECTED, out)


def _change_if_suspected(r: Replica, cause: ViewChangeCause, out: Ready) -> None:
    """f+1 fresh suspicions, ours among them, start the view change: f+1 include an honest
    replica's (section 4.5.2's argument for joining on f+1 view-changes), and ours is current
    (progress withdraws it). A replica that does not suspect the primary itself follows once
    f+1 have moved (``_join_if_f_plus_one``): under overload two backups each timed out while
    behind, saw progress a moment later, and their two suspicions moved the primary and the
    third backup to a view change neither suspecting replica would have started."""
    if r.id not in r.suspicions:
        return
    fresh = r.now_ms - SUSPICION_FRESH_TIMEOUTS * r.view_timeout_ms()
    if sum(1 for t in r.suspicions.values() if t >= fresh) >= r.cfg.weak_quorum:
        start_view_change(r, r.view + 1, out, cause)


def _announce_suspicion(r: Replica, out: Ready) -> None:
    """Heartbeat now: a suspicion waits for a quorum heard from after it (``_defer_for_ms``),
    and the other backups, whose timers fire about now too, would otherwise hear from this one
    only at its next heartbeat, up to ``heartbeat_ms`` later."""
    statetransfer.heartbeat(r, out)


def _defer_for_ms(r: Replica, suspected_at_ms: int) -> int | None:
    """How long to wait before looking again, or None to suspect the primary now."""
    heartbeat = r.cfg.heartbeat_ms
    recently = r.now_ms - 4 * heartbeat
    if not r.quorum_reachable():
        r.unreachable_at_ms = r.now_ms
    # Just reconnected: first let heartbeats, state transfer and request relays catch us up.
    if r.unreachable_at_ms >= recently or r.last_fetch_progress_ms >= recently:
        return heartbeat
    # A timer armed at our last progress expires one view timeout after the last messages we
    # heard, so "heard lately" cannot tell a dead primary from our own partition: a quorum
    # must be heard from after we suspect it (every peer's heartbeat is due within
    # ``heartbeat_ms``). Found by the minority-partition scenario at half of peak.
    if not r.quorum_reachable(since_ms=suspected_at_ms):
        return max(1, heartbeat // 5)
    return None


def start_view_change(r: Replica, new_view: int, out: Ready, cause: ViewChangeCause) -> None:
    """Stop accepting messages of the old view and vote for ``new_view`` (section 4.4)."""
    if new_view <= r.view:
        return
    out.view_change_cause = cause
    r.view = new_view
    r.view_active = False
    r.suspected_at_ms = r.request_suspected_at_ms = None
    r.suspicions.clear()
    r.peer_commit_seq.clear()
    r.view_base_seq = 0
    r.new_view_msg = None
    r.buffered.clear()
    _take_up_unexecuted(r)
    for slot in r.log.slots():
        slot.reset_for_view(new_view)
    r.inflight_ids = {
        tx_id: s.seq
        for s in r.log.slots()
        if s.pre_prepare is not None
        for tx_id in s.pre_prepare.batch.tx_ids
    }
    r.mempool.requeue_all()
    prepared = tuple(
        _proof_for_view_change(r, s.seq, s.prepared_proof)
        for s in r.log.slots()
        if s.prepared_proof is not None and s.seq > r.stable_seq
    )
    vc = r.sign(ViewChange(new_view, r.stable_seq, r.stable_digest, r.stable_proof, prepared, r.id))
    r.my_view_change = vc
    r.view_changes = {k: v for k, v in r.view_changes.items() if k[0] >= new_view}
    _remember(r, vc)
    r.vc_deadline_ms = None
    r.vc_attempts += 1
    arm_timer_on_quorum(r)
    _moved_to(out, new_view)
    r.persist_and_broadcast(vc, out)
    _try_new_view(r, out)


def _take_up_unexecuted(r: Replica) -> None:
    """Keep the transactions of every batch accepted in the old view and not executed: the
    new view re-issues only the prepared ones, so the others would be lost with a crashed
    primary (the only other holder). Held in the mempool, they reach the new primary with
    ``normal.reforward_pending`` (or are proposed, on the new primary), as PBFT's clients
    re-broadcasting to all replicas would make happen (section 4.1)."""
    pairs: list[tuple[bytes, bytes]] = []
    for slot in r.log.slots():
        pp = slot.pre_prepare
        if pp is None or slot.seq <= r.last_executed or slot.certificate is not None:
            continue
        batch = r.full_batch(pp.batch)
        if batch.is_stripped:
            continue  # only its digest is known here: whoever holds its transactions keeps them
        pairs.extend(
            (tx_id, tx)
            for tx_id, tx in zip(batch.tx_ids, batch.txs, strict=True)
            if tx_id not in r.mempool
        )
    if not pairs:
        return
    done = r.committed_among([tx_id for tx_id, _ in pairs])
    for tx_id, tx in pairs:
        if tx_id not in done:
            r.mempool.add(tx_id, tx, r.now_ms, force=True)


def _proof_for_view_change(r: Replica, seq: int, proof: PreparedProof) -> PreparedProof:
    """Batches we executed are committed, so whoever lacks them can fetch them by state
    transfer: send only their digests, which bounds a view-change to the in-flight batches."""
    if seq > r.last_executed:
        return proof
    pp = proof.pre_prepare
    return PreparedProof(replace(pp, batch=pp.batch.stripped()), proof.prepares)


def on_view_change(r: Replica, vc: ViewChange, out: Ready) -> None:
    if not r.valid_replica(vc.replica) or vc.replica == r.id:
        return
    if vc.new_view < r.view or (vc.new_view == r.view and r.view_active):
        _help_laggard(r, vc, out)
        return
    if (vc.new_view, vc.replica) in r.view_changes:
        return
    reason = check_view_change(r, vc)
    if reason is not None:
        out.drop(
            DropReason.INVALID_VIEW_CHANGE,
            f"from {vc.replica}: {reason}",
            replica=vc.replica,
            view=vc.new_view,
        )
        return
    _remember(r, vc)
    _join_if_f_plus_one(r, out)
    arm_timer_on_quorum(r)
    _try_new_view(r, out)


def _remember(r: Replica, vc: ViewChange) -> None:
    """Keep a replica's view-change for each of its last few views, not just its newest: a
    replica that timed out once more must still count towards the view the others are in."""
    r.view_changes[(vc.new_view, vc.replica)] = vc
    mine = sorted(v for (v, rid) in r.view_changes if rid == vc.replica)
    for v in mine[:-MAX_VIEWS_PER_REPLICA]:
        del r.view_changes[(v, vc.replica)]


def _votes_for(r: Replica, view: int) -> list[ViewChange]:
    return sorted(
        (vc for (v, _), vc in r.view_changes.items() if v == view), key=lambda vc: vc.replica
    )


def arm_timer_on_quorum(r: Replica) -> None:
    """Section 4.5.2: the timer for a new view starts only once 2f+1 view-changes for it are
    in; started earlier, one replica's timer runs it views ahead of the rest, for good."""
    if r.view_active or r.vc_deadline_ms is not None:
        return
    if len(_votes_for(r, r.view)) >= r.cfg.quorum:
        r.vc_deadline_ms = r.now_ms + r.view_timeout_ms()


def note_higher_view(r: Replica, m: PrePrepare | Prepare | Commit, out: Ready) -> None:
    """Messages of a later view from f+1 replicas mean we missed a view change (we were down,
    partitioned, or caught up by state transfer): ask for the new-view by voting for the next
    view; replicas already there answer with their new-view (``_help_laggard``)."""
    if not r.view_active or not r.valid_replica(m.replica) or m.replica == r.id:
        return
    if r.higher_view.get(m.replica, -1) >= m.view or not r.verify(m):
        return
    r.higher_view[m.replica] = m.view
    if sum(1 for v in r.higher_view.values() if v > r.view) >= r.cfg.weak_quorum:
        r.higher_view.clear()
        start_view_change(r, r.view + 1, out, ViewChangeCause.HIGHER_VIEW)


def _installed_new_view(r: Replica) -> NewView | None:
    """The new-view that started the view we are in, if we are in one a new-view started."""
    nv = r.new_view_msg
    return nv if r.view_active and nv is not None and nv.view == r.view else None


def _help_laggard(r: Replica, vc: ViewChange, out: Ready) -> None:
    """A replica still voting for a view we already entered missed the new-view: resend it."""
    nv = _installed_new_view(r)
    if nv is not None:
        r.send_to(vc.replica, nv, out)


def help_stale(r: Replica, replica: int, out: Ready) -> None:
    """A replica still speaking in an earlier view missed our new-view (it was down or cut off
    when it went out, and heartbeats carry no view): send it, at most once per retransmit
    interval per replica. A restarted primary re-offering what it acknowledged in its old
    view learns the view this way, since it never suspects itself (section 4.4)."""
    nv = _installed_new_view(r)
    if nv is None or replica == r.id or not r.valid_replica(replica):
        return
    last = r.helped_ms.get(replica)
    if last is not None and r.now_ms - last < r.cfg.retransmit_ms:
        return
    r.helped_ms[replica] = r.now_ms
    r.send_to(replica, nv, out)


def _join_if_f_plus_one(r: Replica, out: Ready) -> None:
    """Section 4.5.2: f+1 view-changes for views above ours prove the primary is suspected by
    an honest replica; join the smallest such view without waiting for our own timer."""
    lowest_ahead: dict[int, int] = {}
    for v, rid in r.view_changes:
        if v > r.view and v < lowest_ahead.get(rid, v + 1):
            lowest_ahead[rid] = v
    if len(lowest_ahead) >= r.cfg.weak_quorum:
        start_view_change(r, min(lowest_ahead.values()), out, ViewChangeCause.F_PLUS_ONE)


def check_view_change(r: Replica, vc: ViewChange) -> str | None:
    if not r.verify(vc):
        return "bad signature"
    cfg = r.cfg
    if vc.stable_seq == 0:
        if vc.stable_digest != GENESIS_HASH or vc.checkpoint_proof:
            return "bad genesis checkpoint"
    else:
        reason = check_checkpoint_proof(
            vc.stable_seq, vc.stable_digest, vc.checkpoint_proof, cfg.n, cfg.quorum, r.crypto
        )
        if reason is not None:
            return reason
    seen: set[int] = set()
    for proof in vc.prepared:
        pp = proof.pre_prepare
        if pp.view >= vc.new_view or pp.seq in seen:
            return f"prepared proof for seq {pp.seq} in view {pp.view} is not acceptable"
        if not vc.stable_seq < pp.seq <= vc.stable_seq + cfg.watermark_window:
            return f"prepared proof for seq {pp.seq} outside the sender's watermarks"
        seen.add(pp.seq)
        reason = check_prepared_proof(proof, cfg.n, cfg.quorum, cfg.primary(pp.view), r.crypto)
        if reason is not None:
            return reason
    return None


def _try_new_view(r: Replica, out: Ready) -> None:
    if r.view_active or r.primary != r.id:
        return
    vcs = _votes_for(r, r.view)
    if len(vcs) < r.cfg.quorum:
        return
    chosen = tuple(vc.stripped() for vc in vcs[: r.cfg.quorum])
    pps = tuple(
        r.sign(PrePrepare(r.view, seq, batch.digest(), r.id, _reissued_batch(r, seq, batch)))
        for seq, batch in compute_reissue(chosen)
    )
    nv = r.sign(NewView(r.view, chosen, pps, r.id))
    r.persist_and_broadcast(nv, out)
    enter_new_view(r, nv, out)


def _reissued_batch(r: Replica, seq: int, batch: Batch) -> Batch:
    """Full transactions only where some replica may still need them to execute: seqs we have
    executed ourselves are committed and fetchable, so they go stripped."""
    if seq <= r.last_executed:
        return batch.stripped()
    return r.full_batch(batch)


def compute_reissue(vcs: tuple[ViewChange, ...]) -> list[tuple[int, Batch]]:
    """The set O of section 4.4: for every seq between min-s and max-s, the batch prepared in
    the highest view among the view-changes, or a null batch if none prepared there."""
    min_s = max(vc.stable_seq for vc in vcs)
    best: dict[int, tuple[int, Batch]] = {}
    for vc in vcs:
        for proof in vc.prepared:
            pp = proof.pre_prepare
            if pp.seq <= min_s:
                continue
            known = best.get(pp.seq)
            if known is None or pp.view > known[0] or (pp.view == known[0] and pp.batch.txs):
                best[pp.seq] = (pp.view, pp.batch)
    max_s = max(best, default=min_s)
    return [
        (seq, best[seq][1] if seq in best else NULL_BATCH) for seq in range(min_s + 1, max_s + 1)
    ]


def on_new_view(r: Replica, nv: NewView, out: Ready) -> None:
    if nv.view < r.view or (nv.view == r.view and r.view_active):
        return
    reason = check_new_view(r, nv)
    if reason is not None:
        out.drop(
            DropReason.INVALID_NEW_VIEW,
            f"view {nv.view} from {nv.replica}: {reason}",
            replica=nv.replica,
            view=nv.view,
        )
        return
    if nv.view > r.view:
        r.view = nv.view
    out.persist.append(nv)
    _moved_to(out, nv.view)
    enter_new_view(r, nv, out)


def check_new_view(r: Replica, nv: NewView) -> str | None:
    cfg = r.cfg
    if nv.replica != cfg.primary(nv.view):
        return "not from the primary of that view"
    if not r.verify(nv):
        return "bad signature"
    replicas = {vc.replica for vc in nv.view_changes}
    if len(replicas) != len(nv.view_changes) or len(replicas) < cfg.quorum:
        return f"needs {cfg.quorum} view-changes from distinct replicas"
    for vc in nv.view_changes:
        if vc.new_view != nv.view or not r.valid_replica(vc.replica):
            return f"view-change from {vc.replica} is for another view"
        reason = check_view_change(r, vc)
        if reason is not None:
            return f"view-change from {vc.replica}: {reason}"
    expected = compute_reissue(nv.view_changes)
    if len(expected) != len(nv.pre_prepares):
        return "re-issued pre-prepares do not match the view-changes"
    for (seq, batch), pp in zip(expected, nv.pre_prepares, strict=True):
        if (pp.view, pp.seq, pp.replica) != (nv.view, seq, nv.replica):
            return f"re-issued pre-prepare for seq {seq} is malformed"
        if pp.digest != batch.digest() or pp.batch.digest() != pp.digest:
            return f"re-issued pre-prepare for seq {seq} has the wrong batch"
        if not r.verify(pp):
            return f"re-issued pre-prepare for seq {seq} has a bad signature"
    return None


def enter_new_view(r: Replica, nv: NewView, out: Ready) -> None:
    """Install the new view: adopt its stable checkpoint, accept its pre-prepares, prepare them."""
    r.view_active = True
    r.view_started_ms = r.now_ms
    r.new_view_msg = nv
    r.request_suspected_at_ms = None  # suspicions were of an earlier view's primary
    r.suspicions.clear()
    r.restart_view_timer()
    r.view_changes = {k: v for k, v in r.view_changes.items() if k[0] > r.view}
    base = max(nv.view_changes, key=lambda vc: vc.stable_seq)
    r.view_base_seq = base.stable_seq
    if base.stable_seq > r.stable_seq:
        if base.stable_seq > r.last_executed:
            r.fetch_target = max(r.fetch_target, base.stable_seq)
        checkpoints.make_stable(r, base.stable_seq, base.stable_digest, base.checkpoint_proof, out)
    r.inflight_ids = {}
    r.mempool.requeue_all()
    top = base.stable_seq
    for pp in nv.pre_prepares:
        top = max(top, pp.seq)
        if pp.seq <= r.last_executed:
            continue
        slot = r.log.slot(pp.seq)
        pp = replace(pp, batch=r.full_batch(pp.batch))
        if slot.certificate is not None and slot.pre_prepare is not None:
            # Decided already; keep the decided batch (safety makes the digests equal).
            if slot.pre_prepare.digest == pp.digest and pp.batch.txs:
                slot.pre_prepare = pp
        else:
            slot.pre_prepare = pp
        r.remember_batch(pp.seq, pp.batch)
        for tx_id in pp.batch.tx_ids:
            r.inflight_ids[tx_id] = pp.seq
        r.mempool.mark_proposed(pp.batch.tx_ids)
        normal.send_prepare(r, slot, out)
    r.next_seq = max(top, r.last_executed) + 1
    normal.reforward_pending(r, out)
    normal.try_execute(r, out)


def retransmit(r: Replica, out: Ready) -> None:
    """While waiting for a new-view, keep our view-change in flight (lost messages)."""
    if not r.view_active and r.my_view_change is not None and r.my_view_change.new_view == r.view:
        r.broadcast(r.my_view_change, out)
