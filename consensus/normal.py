"""Normal-case operation (section 4.2): requests, pre-prepare, prepare, commit, execution."""

from __future__ import annotations

from typing import TYPE_CHECKING

from consensus import checkpoints, viewchange
from consensus.events import Committed, Ready, Submit
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
    """Client transactions admitted by this node's shell (already signature-checked)."""
    if len(ev.tx_ids) != len(ev.txs):
        out.drop("malformed submit", "tx_ids and txs differ in length")
        return
    ids, txs = _add(r, _unknown(r, ev.tx_ids, ev.txs), out)
    if ids and not r.is_primary:
        _forward(r, r.primary, ids, txs, out)


def on_request(r: Replica, m: Request, out: Ready) -> None:
    """Transactions forwarded or relayed by a peer: checked here, since the peer is untrusted."""
    if len(m.tx_ids) != len(m.txs) or len(m.tx_ids) > r.cfg.max_request_txs:
        out.drop("malformed request", f"{len(m.tx_ids)} ids, {len(m.txs)} txs")
        return
    valid: list[tuple[bytes, bytes]] = []
    for tx_id, tx in _unknown(r, m.tx_ids, m.txs):
        reason = r.app.check_txs((tx_id,), (tx,))
        if reason is not None:
            out.drop("invalid transaction in request", reason)
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
    r: Replica, pairs: list[tuple[bytes, bytes]], out: Ready
) -> tuple[list[bytes], list[bytes]]:
    new_ids: list[bytes] = []
    new_txs: list[bytes] = []
    for tx_id, tx in pairs:
        if tx_id in r.mempool:
            continue  # the same transaction twice in one request
        if not r.mempool.add(tx_id, tx, r.now_ms):
            out.drop("mempool full", tx_id.hex())
            continue
        new_ids.append(tx_id)
        new_txs.append(tx)
    r.arm_view_timer()
    return new_ids, new_txs


def _forward(r: Replica, dest: int, ids: list[bytes], txs: list[bytes], out: Ready) -> None:
    step = r.cfg.max_request_txs
    for i in range(0, len(ids), step):
        r.send_to(dest, Request(tuple(ids[i : i + step]), tuple(txs[i : i + step]), r.id), out)


def relay_stale(r: Replica, out: Ready) -> None:
    """A request waiting too long is sent to every replica, as a PBFT client retransmits to all
    (section 4.1), so that every backup's timer covers it and a faulty primary is replaced."""
    cutoff = r.now_ms - r.cfg.view_timeout_ms // 2
    ids, txs = r.mempool.stale(cutoff, r.now_ms, r.cfg.max_request_txs)
    done = r.committed_among(ids) if ids else set()
    if done:
        r.mempool.remove(done)  # committed while this replica was away: nothing to relay
        keep = [i for i, tx_id in enumerate(ids) if tx_id not in done]
        ids, txs = [ids[i] for i in keep], [txs[i] for i in keep]
    if ids:
        r.broadcast(Request(tuple(ids), tuple(txs), r.id), out)


def reforward_pending(r: Replica, out: Ready) -> None:
    """After a view change, hand the new primary whatever this replica still holds."""
    limit = r.cfg.max_inflight * r.cfg.max_batch_txs
    ids, txs = r.mempool.items(limit)
    if ids and not r.is_primary:
        _forward(r, r.primary, ids, txs, out)


# -- pre-prepare -----------------------------------------------------------------------------


def batch_deadline(r: Replica) -> int | None:
    if not (r.is_primary and r.view_active):
        return None
    oldest = r.mempool.oldest_unproposed_ms()
    return None if oldest is None else oldest + r.cfg.batch_timeout_ms


def maybe_propose(r: Replica, out: Ready) -> None:
    """The primary orders batches, by size or by time, keeping at most max_inflight in flight
    and never beyond the high watermark (section 4.2)."""
    if not (r.is_primary and r.view_active):
        return
    cfg = r.cfg
    while r.mempool.unproposed_count():
        if r.next_seq - 1 - r.last_executed >= cfg.max_inflight:
            return
        if r.next_seq > r.high_watermark:
            return
        oldest = r.mempool.oldest_unproposed_ms()
        full = r.mempool.unproposed_count() >= cfg.max_batch_txs
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
        return
    if pp.replica != r.primary or r.is_primary:
        out.drop("pre-prepare not from the primary", f"replica {pp.replica}")
        return
    if pp.seq <= r.last_executed:
        return
    if not r.in_window(pp.seq):
        out.drop("pre-prepare outside watermarks", f"seq {pp.seq}")
        return
    slot = r.log.slot(pp.seq)
    if slot.pre_prepare is not None:
        if slot.pre_prepare.digest != pp.digest and slot.pre_prepare.view == pp.view:
            out.drop("conflicting pre-prepare (equivocation)", f"seq {pp.seq}")
        return
    if not r.verify(pp):
        out.drop("bad signature", f"pre-prepare from {pp.replica}")
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
        out.drop("invalid batch", f"seq {pp.seq}: {reason}")
        return
    slot.pre_prepare = pp
    r.remember_batch(pp.seq, pp.batch)
    for tx_id in pp.batch.tx_ids:
        r.inflight_ids[tx_id] = pp.seq
    r.mempool.mark_proposed(pp.batch.tx_ids)
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
    if not _vote_acceptable(r, p.view, p.seq, p.replica, out, "prepare"):
        return
    if p.replica == r.cfg.primary(p.view):
        out.drop("prepare from the primary", f"seq {p.seq}")
        return
    if not r.verify(p):
        out.drop("bad signature", f"prepare from {p.replica}")
        return
    slot = r.log.slot(p.seq)
    slot.prepares.add((p.view, p.digest), p, p.replica)
    _check_prepared(r, slot, out)


def on_commit(r: Replica, c: Commit, out: Ready) -> None:
    if c.view > r.view:
        viewchange.note_higher_view(r, c, out)
    if not _vote_acceptable(r, c.view, c.seq, c.replica, out, "commit"):
        return
    if not r.verify(c):
        out.drop("bad signature", f"commit from {c.replica}")
        return
    slot = r.log.slot(c.seq)
    slot.commits.add((c.view, c.digest), c, c.replica)
    _check_committed(r, slot, out)


def _vote_acceptable(r: Replica, view: int, seq: int, replica: int, out: Ready, kind: str) -> bool:
    if not r.valid_replica(replica):
        out.drop("unknown replica", f"{kind} from {replica}")
        return False
    if view != r.view or not r.view_active:
        return False
    if seq <= r.last_executed:
        return False
    if not r.in_window(seq):
        out.drop(f"{kind} outside watermarks", f"seq {seq}")
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
    r.vc_deadline_ms = None
    if r.view_active:
        r.arm_view_timer()
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
