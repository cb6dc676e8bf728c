"""Normal-case operation (Castro & Liskov, section 4.2; the system model of section 3):
requests, pre-prepare, prepare, commit and execution, on a FIFO harness with real Ed25519 keys
from fixed seeds."""

from __future__ import annotations

from consensus.config import ReplicaConfig
from consensus.events import DropReason, Ready, Receive, Submit, Tick
from consensus.messages import Batch, Prepare, PrePrepare, Request
from tests.consensus.harness import Cluster, assert_same_chain, start, tx, tx_count


def test_n_is_at_least_3f_plus_1_and_a_quorum_is_2f_plus_1() -> None:
    """Section 3: n >= 3f+1 replicas; certificates need 2f+1 (section 4.2)."""
    for bad in ({"n": 3, "replica_id": 0}, {"n": 4, "replica_id": 4}):
        try:
            ReplicaConfig(**bad)  # type: ignore[arg-type]
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad}")
    assert ReplicaConfig(n=7, replica_id=0).quorum == 5
    assert ReplicaConfig(n=4, replica_id=0).quorum == 3


def test_every_replica_executes_every_request_once_in_the_same_order() -> None:
    """Section 4.2: committed requests execute in sequence-number order on every replica."""
    for n in (4, 7):
        c = start(n)
        c.submit(1, [tx(i) for i in range(95)])
        c.run(500)
        assert_same_chain(c)
        assert all(tx_count(node) == 95 for node in c.nodes)
        ids = [t for b in c.nodes[0].blocks for t in b.block.batch.tx_ids]
        assert len(ids) == len(set(ids)) == 95


def test_a_request_sent_to_every_replica_executes_once() -> None:
    """Sections 4.1-4.2: a client may send its request to all replicas; it executes once."""
    c = start()
    txs = [tx(i) for i in range(20)]
    for i in range(4):
        c.submit(i, txs)
    c.run(300)
    c.submit(2, txs)
    c.run(300)
    assert all(tx_count(node) == 20 for node in c.nodes)


def test_a_backup_accepts_one_pre_prepare_per_view_and_seq_signed_by_the_primary() -> None:
    """Section 4.2: a backup accepts a pre-prepare only if correctly signed and if it has not
    accepted another for the same view and sequence number with a different digest."""
    c = start()
    primary = c.nodes[0].replica
    batch = Batch(0, 0, 0, (tx(1)[0],), (tx(1)[1],))
    good = primary.sign(PrePrepare(0, 1, batch.digest(), 0, batch))
    other = Batch(0, 0, 0, (tx(2)[0],), (tx(2)[1],))
    conflicting = primary.sign(PrePrepare(0, 1, other.digest(), 0, other))
    forged = PrePrepare(0, 2, other.digest(), 0, other, signature=b"\x00" * 64)
    backup = c.nodes[1].replica
    out1 = backup.step(Receive(good, 0), 0)
    assert any(isinstance(m, Prepare) for _, m in out1.send)
    out2 = backup.step(Receive(conflicting, 0), 0)
    assert not any(isinstance(m, Prepare) for _, m in out2.send)
    assert any(d.reason is DropReason.EQUIVOCATION for d in out2.dropped)
    out3 = backup.step(Receive(forged, 0), 0)
    assert any(d.reason is DropReason.BAD_SIGNATURE for d in out3.dropped)


def test_a_backup_does_not_prepare_a_batch_with_an_invalid_request() -> None:
    """Section 4.2: the backup checks the requests a pre-prepare carries before preparing."""
    c = start()
    bad = (b"x" * 32, b"bad-tx")
    batch = Batch(0, 0, 0, (bad[0],), (bad[1],))
    pp = c.nodes[0].replica.sign(PrePrepare(0, 1, batch.digest(), 0, batch))
    out = c.nodes[1].replica.step(Receive(pp, 0), 0)
    assert not out.send
    assert any(d.reason is DropReason.INVALID_BATCH for d in out.dropped)


def test_a_request_executed_before_the_shell_stored_it_is_not_ordered_again() -> None:
    """Section 4.2 (requests execute once): the core remembers what it executed, so a request
    for it arriving in the same round (the shell stores blocks only after the round) must not
    be proposed again."""
    c = start()
    c.submit(0, [tx(1)])
    c.run(200)
    assert all(tx_count(n) == 1 for n in c.nodes)
    for node in c.nodes:
        node.app.committed.clear()  # as if no shell had stored the block yet
    c.submit(0, [tx(1)])
    c.feed(1, Receive(Request((tx(1)[0],), (tx(1)[1],), 2), 2))
    assert c.nodes[0].replica.mempool_size == 0
    assert c.nodes[1].replica.mempool_size == 0


def test_a_replica_with_a_full_mempool_refuses_requests_by_id() -> None:
    """Section 4.2 bounds the log; the mempool in front of it is bounded too: what finds no
    room is refused with its ids, so the shell answers those clients without parsing text."""
    c = start(mempool_max_txs=3)
    txs = [tx(i) for i in range(5)]
    ready = c.nodes[1].replica.step(Submit(tuple(t[0] for t in txs), tuple(t[1] for t in txs)), 0)
    assert list(ready.refused()) == [txs[3][0], txs[4][0]]
    full = [d for d in ready.dropped if d.reason is DropReason.MEMPOOL_FULL]
    assert [d.tx_ids for d in full] == [(txs[3][0], txs[4][0])]


def test_executed_ids_are_a_fifo_that_forgets_the_oldest_in_constant_time() -> None:
    """The executed-id memory is consumed from the front. A plain dict finds its first key by
    scanning every slot deleted before it, so each block cost grew with the chain (the
    sustained-load collapse); an OrderedDict pops its oldest in O(1)."""
    from collections import OrderedDict

    c = start(recent_executed_max=4)
    r = c.nodes[1].replica
    assert isinstance(r.recently_executed, OrderedDict)
    ids = [bytes([i]) * 32 for i in range(7)]
    r.note_executed(tuple(ids[:3]))
    r.note_executed(tuple(ids[3:]))
    assert list(r.recently_executed) == ids[3:]
    assert isinstance(r.mempool._arrival_ms, OrderedDict)
    assert isinstance(r.mempool._queue, OrderedDict)


# -- adaptive batching: propose at once while the pipeline has room, batch while it is full ---


def _submit_step(c: Cluster, i: int, txs: list[tuple[bytes, bytes]]) -> Ready:
    """Step replica i with one client Submit and carry out its Ready; returns the Ready."""
    ready = c.nodes[i].replica.step(
        Submit(tuple(t[0] for t in txs), tuple(t[1] for t in txs)), c.now
    )
    c.apply(i, ready)
    return ready


def _pre_prepares(ready: Ready) -> list[PrePrepare]:
    return [m for _, m in ready.send if isinstance(m, PrePrepare)]


def test_a_lone_request_is_pre_prepared_in_the_step_it_arrives_when_the_pipeline_is_empty() -> None:
    """Section 4.2 with adaptive batching: no batch timer stands between a request and its
    pre-prepare while fewer than max_inflight batches are in flight."""
    c = start()
    ready = _submit_step(c, 0, [tx(1)])
    [pp] = _pre_prepares(ready)
    assert pp.seq == 1 and pp.batch.tx_ids == (tx(1)[0],)
    assert pp in ready.persist  # persisted before it is sent, as every proposal
    c.run(50)
    assert all(tx_count(n) == 1 for n in c.nodes)


def test_a_request_forwarded_by_a_backup_is_pre_prepared_in_the_step_it_reaches_the_primary() -> (
    None
):
    c = start()
    c.queue.clear()
    _submit_step(c, 2, [tx(1)])
    [(src, dst, fwd)] = [q for q in c.queue if isinstance(q[2], Request)]
    assert (src, dst) == (2, 0) and isinstance(fwd, Request)
    c.queue.clear()
    ready = c.nodes[0].replica.step(Receive(fwd, 2), c.now)
    [pp] = _pre_prepares(ready)
    assert pp.batch.tx_ids == (tx(1)[0],)


def test_under_a_full_pipeline_requests_wait_and_are_batched_together() -> None:
    """While max_inflight batches are in flight the primary proposes nothing and sets no
    timer for it; the execution that frees a slot takes every waiting request as one batch."""
    c = start(max_inflight=2, max_batch_txs=10)
    primary = c.nodes[0].replica
    held = list(c.queue)
    c.queue.clear()
    firsts = [_submit_step(c, 0, [tx(i)]) for i in (1, 2)]
    assert [len(_pre_prepares(r)) for r in firsts] == [1, 1]
    held += list(c.queue)
    c.queue.clear()
    for i in range(3, 8):
        ready = _submit_step(c, 0, [tx(i)])
        assert not _pre_prepares(ready)
        # No busy timer for a batch the primary may not propose (the pipeline is full).
        assert ready.deadline_ms is None or ready.deadline_ms > c.now + 1
    assert primary.mempool.unproposed_count() == 5
    c.queue.extend(held)  # now let the two in-flight batches commit
    c.run(100)
    sizes = [len(b.block.batch.tx_ids) for b in c.nodes[1].blocks]
    assert sizes == [1, 1, 5]
    assert_same_chain(c)


def test_a_full_batch_is_cut_at_max_batch_txs_even_when_more_wait() -> None:
    c = start(max_inflight=1, max_batch_txs=4)
    held = list(c.queue)
    c.queue.clear()
    _submit_step(c, 0, [tx(0)])
    held += list(c.queue)
    c.queue.clear()
    _submit_step(c, 0, [tx(i) for i in range(1, 10)])
    c.queue.extend(held)
    c.run(200)
    sizes = [len(b.block.batch.tx_ids) for b in c.nodes[1].blocks]
    assert sizes == [1, 4, 4, 1]


def test_the_pipeline_never_reaches_past_the_high_watermark() -> None:
    """Section 4.3: however large max_inflight, the primary proposes no seq above h + L."""
    c = start(max_inflight=64, max_batch_txs=1)
    primary = c.nodes[0].replica
    c.queue.clear()
    for i in range(20):
        _submit_step(c, 0, [tx(i)])
        c.queue.clear()  # nothing commits: the backups never hear of them
    assert primary.next_seq - 1 == primary.high_watermark == 8
    assert primary.mempool.unproposed_count() == 20 - 8


def test_batch_timeout_ms_lets_a_partial_batch_wait_for_more_when_asked() -> None:
    """batch_timeout_ms > 0: the primary holds a partial batch that long even with room (the
    timer-only behaviour before adaptive batching), then proposes everything that arrived."""
    c = start(batch_timeout_ms=20)
    ready = _submit_step(c, 0, [tx(1)])
    assert not _pre_prepares(ready)
    assert ready.deadline_ms == c.now + 20
    c.now += 10
    assert not _pre_prepares(_submit_step(c, 0, [tx(2)]))
    c.now += 10
    ready = c.nodes[0].replica.step(Tick(), c.now)
    [pp] = _pre_prepares(ready)
    assert pp.batch.tx_ids == (tx(1)[0], tx(2)[0])
