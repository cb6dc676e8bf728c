"""Normal-case operation (section 4.2): requests, pre-prepare, prepare, commit, execution."""

from __future__ import annotations

from typing import TYPE_CHECKING

from consensus import checkpoints, viewchange
from consensus.events import Committed, DropReason, Ready, Submit
from consensus.hashing import chain_link
from consensus.log import Slot
from consensus.messages import (
    Batch,
    CertifiedBlock,
    Commit,
    Prepare,
    PreparedProof,
    PrePrepare,
    Request,
)

if TYPE_CHECKING:
    from consensus.replica import Replica


# -- requests --------------------------------------------------------------------------------


def on_submit(r: Replica, ev: Submit, out: Ready) -> None:
    """Client transactions admitted by this node's shell (already signature-checked). New ones
    are refused while the backlog is older than ``admission_max_age_ms`` (admission control:
    the client is told to retry rather than wait behind it), except those the shell has
    acknowledged already (re-offered after a restart or a view change)."""
    if len(ev.tx_ids) != len(ev.txs):
        out.drop(DropReason.MALFORMED_SUBMIT, "tx_ids and txs differ in length")
        return
    pairs = _unknown(r, ev.tx_ids, ev.txs)
    age = backlog_age_ms(r)
    if pairs and not ev.acknowledged and age > r.cfg.admission_max_age_ms:
        fresh = tuple(tx_id for tx_id, _ in pairs if tx_id not in r.mempool)
        out.drop(DropReason.BACKLOG_TOO_OLD, f"oldest waited {age} ms", tx_ids=fresh)
        pairs = [(tx_id, tx) for tx_id, tx in pairs if tx_id in r.mempool]
    ids, txs = _add(r, pairs, out, local=True)
    if ids and not r.is_primary:
        _forward(r, r.primary, ids, txs, out)


def backlog_age_ms(r: Replica) -> int:
    """How long the longest-waiting transaction this replica holds has waited (0 if none)."""
    oldest = r.mempool.oldest_ms()
    return 0 if oldest is None else max(0, r.now_ms - oldest)


def on_request(r: Replica, m: Request, out: Ready) -> None:
    """Transactions forwarded or relayed by a peer: checked here, since the peer is untrusted."""
    if len(m.tx_ids) != len(m.txs) or len(m.tx_ids) > r.cfg.max_request_txs:
        out.drop(
            DropReason.MALFORMED_REQUEST,
            f"{len(m.tx_ids)} ids, {len(m.txs)} txs",
            replica=m.replica,
        )
        return
    valid: list[tuple[bytes, bytes]] = []
    for tx_id, tx in _unknown(r, m.tx_ids, m.txs):
        reason = r.app.check_txs((tx_id,), (tx,))
        if reason is not None:
            out.drop(DropReason.INVALID_REQUEST_TX, reason, tx_ids=(tx_id,), replica=m.replica)
            continue
        valid.append((tx_id, tx))
    _add(r, valid, out)


def _unknown(
    r: Replica, tx_ids: tuple[bytes, ...], txs: tuple[bytes, ...]
) -> list[tuple[bytes, bytes]]:
    """The transactions this replica neither holds, nor has in flight, nor has committed (one
    committed lookup for the lot)."""
    pairs = [
        (tx_id, tx)
        for tx_id, tx in zip(tx_ids, txs, strict=True)
        if tx_id not in r.mempool and tx_id not in r.inflight_ids
    ]
    known = r.committed_among([tx_id for tx_id, _ in pairs]) if pairs else set()
    return [(tx_id, tx) for tx_id, tx in pairs if tx_id not in known]


def _add(
    r: Replica, pairs: list[tuple[bytes, bytes]], out: Ready, *, local: bool = False
) -> tuple[list[bytes], list[bytes]]:
    """Into the mempool; returns those new to it. ``local``: submitted by this node's own
    clients (relayed by this replica if they wait too long, see ``relay_stale``)."""
    new_ids: list[bytes] = []
    new_txs: list[bytes] = []
    full: list[bytes] = []
    mempool = r.mempool
    for tx_id, tx in pairs:
        if tx_id in mempool:
            mempool.add(tx_id, tx, r.now_ms, local=local)  # a no-op, or now local too
            continue
        if not mempool.add(tx_id, tx, r.now_ms, local=local):
            full.append(tx_id)
            continue
        new_ids.append(tx_id)
        new_txs.append(tx)
    if full:
        out.drop(DropReason.MEMPOOL_FULL, f"{len(full)} transactions", tx_ids=tuple(full))
    r.arm_view_timer()
    return new_ids, new_txs


def _forward(r: Replica, dest: int, ids: list[bytes], txs: list[bytes], out: Ready) -> None:
    step = r.cfg.max_request_txs
    for i in range(0, len(ids), step):
        r.send_to(dest, Request(tuple(ids[i : i + step]), tuple(txs[i : i + step]), r.id), out)


def relay_stale(r: Replica, out: Ready) -> None:
    """A request of this replica's own clients waiting too long is sent on, as a PBFT client
    retransmits (section 4.1), so neither a faulty primary nor the crash of the node that
    accepted it loses it. Only the replica that accepted a request relays it (receivers do not
    relay again), and a primary relays only what it has not proposed yet.

    While the primary is ordering batches (a quorum prepared or executed one lately), a
    request that waits is queued behind others, not lost: it goes to the replicas that must
    hold it (a backup's to the primary, a primary's to the next f primaries, who take it up
    after a view change), and to every replica only once it has waited half the request
    timeout, so that all time it before the request timer (censorship). Relaying every
    queued request to all under overload cost each receiver a signature check per
    transaction, which starved the very ordering it waited for. A silent primary: to all."""
    quick = r.now_ms - r.cfg.view_timeout_ms // 2
    if not (r.view_active and r.progress_ms > quick):
        _relay_local(r, quick, quick, None, out)
        if not r.is_primary:
            _relay_unprepared(r, quick, out)
        return
    suspect = r.now_ms - r.cfg.request_timeout_ms // 2
    _relay_local(r, suspect, quick, None, out)
    _relay_local(r, quick, quick, _holders(r), out)
    if not r.is_primary:
        _relay_unprepared(r, suspect, out)


def _holders(r: Replica) -> list[int]:
    """Who must hold this replica's waiting requests while its primary works: the primary, or
    for the primary itself the next f primaries (f+1 holders survive f crashes)."""
    if not r.is_primary:
        return [r.primary]
    return [r.cfg.primary(r.view + k) for k in range(1, r.cfg.f + 1)]


def _relay_local(
    r: Replica, arrived_before_ms: int, resent_before_ms: int, dests: list[int] | None, out: Ready
) -> None:
    ids, txs = r.mempool.stale(
        arrived_before_ms,
        r.now_ms,
        r.cfg.max_request_txs,
        unproposed_only=r.is_primary and r.view_active,
        resent_before_ms=resent_before_ms,
    )
    done = r.committed_among(ids) if ids else set()
    if done:
        r.mempool.remove(done)  # committed while this replica was away: nothing to relay
        keep = [i for i, tx_id in enumerate(ids) if tx_id not in done]
        ids, txs = [ids[i] for i in keep], [txs[i] for i in keep]
    if not ids:
        return
    msg = Request(tuple(ids), tuple(txs), r.id)
    if dests is None:
        r.broadcast(msg, out)
    for dest in dests or ():
        r.send_to(dest, msg, out)


def _relay_unprepared(r: Replica, cutoff: int, out: Ready) -> None:
    """A batch this backup accepted long ago that has not prepared may have reached it alone
    (a primary that crashed while sending it): relay its transactions to every replica, so
    each holds and times them and the next primary takes them up. In normal operation a batch
    prepares within a round trip, so this sends nothing."""
    budget = r.cfg.max_request_txs
    for slot in r.log.slots():
        pp = slot.pre_prepare
        if budget <= 0 or slot.seq <= r.last_executed or pp is None or not pp.batch.txs:
            continue
        if pp.view != r.view or slot.prepared_proof is not None or slot.accepted_ms > cutoff:
            continue
        slot.accepted_ms = r.now_ms  # relayed now; again one interval later if still stuck
        ids, txs = pp.batch.tx_ids[:budget], pp.batch.txs[:budget]
        budget -= len(ids)
        r.broadcast(Request(ids, txs, r.id), out)


def reforward_pending(r: Replica, out: Ready) -> None:
    """After a view change, hand the new primary whatever this replica still holds."""
    limit = r.cfg.max_inflight * r.cfg.max_batch_txs
    ids, txs = r.mempool.items(limit)
    if ids and not r.is_primary:
        _forward(r, r.primary, ids, txs, out)


# -- pre-prepare -----------------------------------------------------------------------------


def pipeline_has_room(r: Replica) -> bool:
    """The primary may propose another batch: fewer than max_inflight proposed and not yet
    executed, and the next seq within the high watermark (section 4.2)."""
    return r.next_seq - 1 - r.last_executed < r.cfg.max_inflight and r.next_seq <= r.high_watermark


def batch_deadline(r: Replica) -> int | None:
    """When a lingering partial batch is due. None while the pipeline is full: the next
    proposal then follows an execution (a step of its own), not a timer, so a saturated
    primary does not wake every millisecond for a batch it may not propose."""
    if not (r.is_primary and r.view_active) or not pipeline_has_room(r):
        return None
    oldest = r.mempool.oldest_unproposed_ms()
    return None if oldest is None else oldest + r.cfg.batch_timeout_ms


def maybe_propose(r: Replica, out: Ready) -> None:
    """Adaptive batching (as BFT-SMaRt and CCF do): while the pipeline has room the primary
    proposes at once whatever is waiting, so a lone request waits for no timer; while it is
    full, requests accumulate and the next free slot takes them as one batch, so batches grow
    with the load by themselves. ``batch_timeout_ms`` (0 by default) lets a partial batch wait
    that long for more even when there is room: fewer, fuller blocks at light load, for
    latency. Never beyond max_inflight or the high watermark (section 4.2)."""
    if not (r.is_primary and r.view_active):
        return
    cfg = r.cfg
    while r.mempool.unproposed_count() and pipeline_has_room(r):
        full = r.mempool.unproposed_count() >= cfg.max_batch_txs
        oldest = r.mempool.oldest_unproposed_ms()
        if not full and oldest is not None and r.now_ms < oldest + cfg.batch_timeout_ms:
            return
        _propose(r, out)


def _propose(r: Replica, out: Ready) -> None:
    ids, txs = r.mempool.take_batch(r.cfg.max_batch_txs, r.cfg.max_batch_bytes)
    batch = Batch(r.view, r.id, r.now_ms, tuple(ids), tuple(txs))
    seq = r.next_seq
    r.next_seq += 1
    pp = r.sign(PrePrepare(r.view, seq, batch.digest(), r.id, batch))
    slot = r.log.slot(seq)
    slot.pre_prepare = pp
    slot.sent_ms = r.now_ms
    r.remember_batch(seq, batch)
    for tx_id in ids:
        r.inflight_ids[tx_id] = seq
    r.persist_and_broadcast(pp, out)


def on_pre_prepare(r: Replica, pp: PrePrepare, out: Ready) -> None:
    """A backup accepts a pre-prepare if it is signed by the primary of its current view, within
    the watermarks, the only one for (v, n), and its batch is valid (section 4.2)."""
    if pp.view != r.view or not r.view_active:
        if pp.view > r.view:
            viewchange.note_higher_view(r, pp, out)
        elif pp.view < r.view:
            viewchange.help_stale(r, pp.replica, out)
        return
    if pp.replica != r.primary or r.is_primary:
        out.drop_msg(DropReason.PRE_PREPARE_NOT_FROM_PRIMARY, pp, f"replica {pp.replica}")
        return
    if pp.seq <= r.last_executed:
        return
    if not r.in_window(pp.seq):
        out.drop_msg(DropReason.PRE_PREPARE_OUTSIDE_WATERMARKS, pp, f"seq {pp.seq}")
        return
    slot = r.log.slot(pp.seq)
    if slot.pre_prepare is not None:
        if slot.pre_prepare.digest != pp.digest and slot.pre_prepare.view == pp.view:
            out.drop_msg(DropReason.EQUIVOCATION, pp, f"seq {pp.seq}")
        return
    if not r.verify(pp):
        out.drop_msg(DropReason.BAD_SIGNATURE, pp, f"pre-prepare from {pp.replica}")
        return
    if not _predecessor_accepted(r, pp.seq):
        # Accept in seq order so the duplicate-transaction check sees every earlier batch.
        if len(r.buffered) < r.cfg.watermark_window:
            r.buffered[pp.seq] = pp
        return
    _accept(r, slot, pp, out)
    nxt = r.buffered.pop(pp.seq + 1, None)
    if nxt is not None:
        on_pre_prepare(r, nxt, out)


def _predecessor_accepted(r: Replica, seq: int) -> bool:
    prev = seq - 1
    if prev <= max(r.last_executed, r.view_base_seq):
        return True
    s = r.log.get(prev)
    return s is not None and s.pre_prepare is not None and s.pre_prepare.view == r.view


def _accept(r: Replica, slot: Slot, pp: PrePrepare, out: Ready) -> None:
    reason = _check_batch(r, pp)
    if reason is not None:
        out.drop(
            DropReason.INVALID_BATCH,
            f"seq {pp.seq}: {reason}",
            tx_ids=pp.batch.tx_ids,
            replica=pp.replica,
            view=pp.view,
            seq=pp.seq,
        )
        return
    slot.pre_prepare = pp
    slot.accepted_ms = r.now_ms
    r.remember_batch(pp.seq, pp.batch)
    for tx_id in pp.batch.tx_ids:
        r.inflight_ids[tx_id] = pp.seq
    r.mempool.mark_proposed(pp.batch.tx_ids)
    r.arm_view_timer()
    out.persist.append(pp)
    send_prepare(r, slot, out)


def _check_batch(r: Replica, pp: PrePrepare) -> str | None:
    b = pp.batch
    if b.view != pp.view or b.proposer != pp.replica:
        return "batch view/proposer do not match the pre-prepare"
    if b.digest() != pp.digest:
        return "digest does not match batch"
    if len(b.tx_ids) > r.cfg.max_batch_txs or len(b.tx_ids) != len(b.txs):
        return "batch too large or malformed"
    if len(set(b.tx_ids)) != len(b.tx_ids):
        return "duplicate transaction inside batch"
    for tx_id in b.tx_ids:
        other = r.inflight_ids.get(tx_id)
        if other is not None and other != pp.seq:
            return f"transaction {tx_id.hex()[:16]} already in batch {other}"
    done = r.committed_among(b.tx_ids)
    if done:
        return f"transaction {next(iter(done)).hex()[:16]} already committed"
    return r.app.check_txs(b.tx_ids, b.txs)


# -- prepare and commit ----------------------------------------------------------------------


def send_prepare(r: Replica, slot: Slot, out: Ready) -> None:
    pp = slot.pre_prepare
    assert pp is not None
    if not r.is_primary and slot.my_prepare is None:
        p = r.sign(Prepare(pp.view, pp.seq, pp.digest, r.id))
        slot.my_prepare = p
        slot.sent_ms = r.now_ms
        slot.prepares.add((p.view, p.digest), p, r.id)
        r.persist_and_broadcast(p, out)
    _check_prepared(r, slot, out)


def on_prepare(r: Replica, p: Prepare, out: Ready) -> None:
    if p.view > r.view:
        viewchange.note_higher_view(r, p, out)
    elif p.view < r.view:
        viewchange.help_stale(r, p.replica, out)
    if not _vote_acceptable(r, p, out):
        return
    if p.replica == r.cfg.primary(p.view):
        out.drop_msg(DropReason.PREPARE_FROM_PRIMARY, p, f"seq {p.seq}")
        return
    if not r.verify(p):
        out.drop_msg(DropReason.BAD_SIGNATURE, p, f"prepare from {p.replica}")
        return
    slot = r.log.slot(p.seq)
    slot.prepares.add((p.view, p.digest), p, p.replica)
    _check_prepared(r, slot, out)


def on_commit(r: Replica, c: Commit, out: Ready) -> None:
    if c.view > r.view:
        viewchange.note_higher_view(r, c, out)
    elif c.view < r.view:
        viewchange.help_stale(r, c.replica, out)
    if not _vote_acceptable(r, c, out):
        return
    if not r.verify(c):
        out.drop_msg(DropReason.BAD_SIGNATURE, c, f"commit from {c.replica}")
        return
    if c.seq > r.peer_commit_seq.get(c.replica, 0):
        # Its sender prepared a new batch of this view: it saw progress and withdrew any
        # suspicion it sent before (``Replica.restart_view_timer``); a link delivers in order
        # (node.transport), and a retransmitted commit, for a seq it named before, is no news.
        r.peer_commit_seq[c.replica] = c.seq
        r.suspicions.pop(c.replica, None)
    slot = r.log.slot(c.seq)
    slot.commits.add((c.view, c.digest), c, c.replica)
    _check_committed(r, slot, out)


def _vote_acceptable(r: Replica, m: Prepare | Commit, out: Ready) -> bool:
    kind = "prepare" if isinstance(m, Prepare) else "commit"
    if not r.valid_replica(m.replica):
        out.drop_msg(DropReason.UNKNOWN_REPLICA, m, f"{kind} from {m.replica}")
        return False
    if m.view != r.view or not r.view_active:
        return False
    if m.seq <= r.last_executed:
        return False
    if not r.in_window(m.seq):
        outside = (
            DropReason.PREPARE_OUTSIDE_WATERMARKS
            if isinstance(m, Prepare)
            else DropReason.COMMIT_OUTSIDE_WATERMARKS
        )
        out.drop_msg(outside, m, f"seq {m.seq}")
        return False
    return True


def _check_prepared(r: Replica, slot: Slot, out: Ready) -> None:
    """prepared(m, v, n, i): the pre-prepare plus 2f matching prepares from backups."""
    pp = slot.pre_prepare
    if pp is None or slot.my_commit is not None or pp.view != r.view:
        _check_committed(r, slot, out)
        return
    prepares = slot.prepares.voters((pp.view, pp.digest))
    backups = [p for rid, p in prepares.items() if rid != pp.replica]
    if len(backups) < r.cfg.quorum - 1:
        return
    proof = PreparedProof(pp, tuple(sorted(backups, key=lambda p: p.replica))[: r.cfg.quorum - 1])
    slot.prepared_proof = proof
    out.persist.extend(p for p in proof.prepares if p.replica != r.id)
    c = r.sign(Commit(pp.view, pp.seq, pp.digest, r.id))
    # A quorum agreed to the primary's order for this seq: it is making progress, however
    # slowly execution follows behind a long backlog (section 4.5.2's timer is for a primary
    # that does nothing).
    r.restart_view_timer()
    slot.my_commit = c
    slot.sent_ms = r.now_ms
    slot.commits.add((c.view, c.digest), c, r.id)
    r.persist_and_broadcast(c, out)
    _check_committed(r, slot, out)


def _check_committed(r: Replica, slot: Slot, out: Ready) -> None:
    """committed-local: 2f+1 matching commits for the batch we hold. A certificate from 2f+1
    replicas proves f+1 honest ones prepared it, so it is decided even if we missed prepares."""
    pp = slot.pre_prepare
    if pp is None or slot.certificate is not None:
        return
    commits = slot.commits.voters((r.view, pp.digest))
    if len(commits) < r.cfg.quorum:
        return
    slot.certificate = tuple(sorted(commits.values(), key=lambda c: c.replica))[: r.cfg.quorum]
    try_execute(r, out)


# -- execution -------------------------------------------------------------------------------


def try_execute(r: Replica, out: Ready) -> None:
    while True:
        slot = r.log.get(r.last_executed + 1)
        if slot is None or slot.certificate is None or slot.pre_prepare is None:
            return
        batch = r.full_batch(slot.pre_prepare.batch)
        if batch.is_stripped:
            # Decided, but we hold only its digest (new-view re-issued it stripped): fetch it.
            r.fetch_target = max(r.fetch_target, slot.seq)
            return
        execute(r, CertifiedBlock(slot.seq, batch, slot.certificate), out)


def execute(r: Replica, block: CertifiedBlock, out: Ready) -> None:
    """Apply the next block in sequence order; checkpoints every K (section 4.3)."""
    assert block.seq == r.last_executed + 1
    prev = r.head_hash
    r.head_hash = chain_link(block.seq, prev, block.batch.digest())
    r.last_executed = block.seq
    r.remember_batch(block.seq, block.batch)
    out.committed.append(Committed(block, prev, r.head_hash))
    r.mempool.remove(block.batch.tx_ids)
    r.note_executed(block.batch.tx_ids)
    for tx_id in block.batch.tx_ids:
        r.inflight_ids.pop(tx_id, None)
    r.buffered.pop(block.seq, None)
    r.vc_attempts = 0
    r.restart_view_timer()
    if r.next_seq <= block.seq:
        r.next_seq = block.seq + 1
    if block.seq % r.cfg.checkpoint_interval == 0:
        checkpoints.take_checkpoint(r, out)


# -- retransmission --------------------------------------------------------------------------


def retransmit(r: Replica, out: Ready) -> None:
    """Re-send our own votes for slots not yet executed, so lost messages do not stall a slot."""
    if not r.view_active:
        return
    quiet_since = r.now_ms - r.cfg.retransmit_ms
    for slot in r.log.slots():
        if slot.seq <= r.last_executed or slot.sent_ms > quiet_since:
            continue
        slot.sent_ms = r.now_ms
        pp = slot.pre_prepare
        if pp is not None and pp.replica == r.id and pp.view == r.view:
            r.broadcast(pp, out)
        if slot.my_prepare is not None:
            r.broadcast(slot.my_prepare, out)
        if slot.my_commit is not None:
            r.broadcast(slot.my_commit, out)
