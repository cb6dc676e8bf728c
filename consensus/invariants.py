"""The replica's invariants, asserted at every step boundary as TigerBeetle asserts its own.

A violated invariant is a bug in the core, never bad input (bad input is a ``Drop``): the step
raises, and the shell stops the node rather than run on in a state nobody reasoned about; a
restart recovers from what was persisted. Each check is O(1), bounded by what the step itself
produced (its ``Ready``), or bounded by the watermark window and run only when the low
watermark or the view moves (the log); so they run on the hot path in production, not only in
tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from consensus.config import ReplicaConfig
from consensus.events import Ready
from consensus.messages import Batch, PrePrepare
from consensus.viewchange import MAX_VIEWS_PER_REPLICA

if TYPE_CHECKING:
    from consensus.replica import Replica


def check_config(cfg: ReplicaConfig) -> None:
    """Quorums (section 4, with n >= 3f+1): any two intersect in at least f+1 replicas, so in
    one honest replica, and the n-f correct replicas alone still form one."""
    assert 2 * cfg.quorum - cfg.n >= cfg.f + 1, f"quorums of {cfg.quorum} of {cfg.n} too small"
    assert cfg.quorum <= cfg.n - cfg.f, f"a quorum of {cfg.quorum} needs faulty replicas"


def check_step(r: Replica, out: Ready | None) -> None:
    """Everything true of ``r`` between two steps (after recovery, ``out`` is None). The whole
    log is checked where its shape changes (recovery, a stable checkpoint, a view change: the
    steps whose ``Ready`` carries a retention), which keeps the cost per step O(1) amortized;
    in between, the pre-prepares a step adds are checked as they go out in its ``Ready``."""
    _check_sequence(r)
    _check_bounds(r)
    if out is None or out.retain is not None:
        _check_log(r)
    if out is not None:
        _check_ready(r, out)


def _check_sequence(r: Replica) -> None:
    # Section 4.3: nothing executes twice and the next proposal is above what executed.
    assert r.last_executed < r.next_seq, f"next seq {r.next_seq} <= executed {r.last_executed}"
    # A stable checkpoint adopted from a new-view may lie ahead of execution, but only while
    # state transfer is fetching up to it.
    assert r.stable_seq <= max(r.last_executed, r.fetch_target), (
        f"stable {r.stable_seq} beyond executed {r.last_executed} and fetch {r.fetch_target}"
    )
    # Section 4.4: out of a view only while voting to enter the next one.
    vc = r.my_view_change
    assert r.view_active or (vc is not None and vc.new_view == r.view), "no view-change sent"


def _check_log(r: Replica) -> None:
    """Section 4.3: the log holds only slots above the low watermark (garbage collection), and
    every slot's batch is well formed; bounded by the window."""
    quorum = r.cfg.quorum
    for slot in r.log:
        assert slot.seq > r.stable_seq, f"slot {slot.seq} at or below stable {r.stable_seq}"
        pp = slot.pre_prepare
        if pp is not None:
            assert pp.seq == slot.seq, f"pre-prepare for {pp.seq} in slot {slot.seq}"
            _check_batch(pp.batch, slot.seq)
        if slot.certificate is not None:
            assert pp is not None, f"slot {slot.seq} certified without its pre-prepare"
            assert len(slot.certificate) == quorum, f"slot {slot.seq}: certificate size"
        if slot.prepared_proof is not None:
            assert len(slot.prepared_proof.prepares) == quorum - 1, f"slot {slot.seq}: proof"


def _check_batch(b: Batch, seq: int) -> None:
    # Ids and transactions pair up one to one, or the batch is stripped (ids only).
    assert not b.txs or len(b.tx_ids) == len(b.txs), f"seq {seq}: ids and txs differ in length"


def _check_bounds(r: Replica) -> None:
    cfg = r.cfg
    # A view change may take up the batches of one window past the bound (viewchange).
    assert len(r.mempool) <= r.mempool.max_txs + r.mempool.overflow_txs, "mempool over its bound"
    assert r.mempool.unproposed_count() <= len(r.mempool), "unproposed txs not in the mempool"
    assert len(r.buffered) <= cfg.watermark_window, "buffered pre-prepares over the window"
    assert len(r.view_changes) <= cfg.n * MAX_VIEWS_PER_REPLICA, "view-changes over their bound"
    assert len(r.recently_executed) <= cfg.recent_executed_max, "executed ids over their bound"


def _check_ready(r: Replica, out: Ready) -> None:
    # Section 4.2: a pre-prepare enters the log only below the high watermark.
    for m in out.persist:
        if isinstance(m, PrePrepare):
            assert m.seq <= r.high_watermark, f"pre-prepare {m.seq} above the high watermark"
            _check_batch(m.batch, m.seq)
    # Blocks go out in order, whole, each linked to the one before, ending at the head.
    prev = None
    for c in out.committed:
        batch = c.block.batch
        assert not batch.is_stripped, f"block {c.block.seq} committed without its transactions"
        _check_batch(batch, c.block.seq)
        if prev is not None:
            assert c.block.seq == prev.block.seq + 1, f"block {c.block.seq} out of order"
            assert c.prev_hash == prev.block_hash, f"block {c.block.seq} not linked"
        prev = c
    if prev is not None:
        assert prev.block.seq == r.last_executed and prev.block_hash == r.head_hash
    assert out.deadline_ms is None or out.deadline_ms > r.now_ms, "a deadline in the past"
