"""Recovery after a crash from what was persisted before sending (section 4.2: a replica logs
what it sends; section 4.3: the log it keeps)."""

from __future__ import annotations

from consensus.events import Receive, Tick
from consensus.messages import Batch, Commit, Prepare, PrePrepare
from tests.consensus.harness import Cluster, assert_same_chain, start, tx


def test_a_restarted_replica_never_contradicts_what_it_signed() -> None:
    """Section 4.2 (persist before send): after a restart the replica re-sends its votes for
    the batch it accepted and never votes for a conflicting one."""
    c = start()
    primary = c.nodes[0].replica
    a = Batch(0, 0, 0, (tx(1)[0],), (tx(1)[1],))
    b = Batch(0, 0, 0, (tx(2)[0],), (tx(2)[1],))
    backup = c.nodes[1]
    out = backup.replica.step(Receive(primary.sign(PrePrepare(0, 1, a.digest(), 0, a)), 0), 0)
    backup.persisted.extend(out.persist)
    restarted = c._make(1, c.overrides, persisted=backup.persisted)
    out2 = restarted.replica.step(Receive(primary.sign(PrePrepare(0, 1, b.digest(), 0, b)), 0), 10)
    votes = [m for _, m in out2.send if isinstance(m, Prepare | Commit)]
    assert votes, "the restarted replica re-sends what it signed before"
    assert all(m.digest == a.digest() for m in votes), "and never a conflicting vote"


def _restart(c: Cluster, i: int) -> None:
    persisted = c.nodes[i].persisted
    c.nodes[i] = c._make(i, c.overrides, persisted=list(persisted))
    c.nodes[i].persisted = list(persisted)
    c.down.discard(i)
    c.feed(i, Tick())


def test_a_restarted_replica_keeps_the_transactions_of_what_it_accepted() -> None:
    """Section 4.4: a new-view's pre-prepares carry digests, and a replica lacking a request
    obtains it from one that has it. Here the new primary never saw the batch and the old one is
    down, so the two replicas that accepted it before a crash are the only ones holding it: if
    recovery kept only the digest, the batch would commit in view 1 with nobody able to execute
    it (sim seed 101474)."""
    c = start()
    t1 = tx(1)
    digest_of: dict[int, bytes] = {}

    def hide_from_new_primary(src: int, dst: int, msg: object) -> bool:
        if isinstance(msg, PrePrepare):
            digest_of[msg.seq] = msg.digest
        return isinstance(msg, Commit) or (isinstance(msg, PrePrepare) and dst == 1)

    c.submit(1, [t1])
    c.run(50, drop=hide_from_new_primary)
    assert all(c.nodes[i].replica.log.slot(1).prepared_proof is not None for i in (2, 3))
    assert c.nodes[1].replica.log.slot(1).pre_prepare is None
    c.down.update({0, 2, 3})
    c.queue.clear()
    _restart(c, 2)
    _restart(c, 3)
    c.submit(2, [tx(2)])
    c.submit(3, [tx(3)])
    c.run(3000)
    for i in (1, 2, 3):
        assert c.nodes[i].replica.view >= 1
        assert c.nodes[i].replica.last_executed >= 1, f"node {i} is stuck at height 0"
    assert_same_chain(c, [1, 2, 3])
    first = c.nodes[1].blocks[0].block
    assert first.batch.digest() == digest_of[1] and first.batch.txs == (t1[1],)


def test_a_restarted_replica_keeps_the_transactions_a_new_view_gave_it() -> None:
    """The same for a batch this replica first received inside a new-view (section 4.4's O):
    after a restart it must still hold its transactions, not only the slot's digest."""
    c = start()
    t1 = tx(1)
    c.submit(3, [t1])
    c.run(50, drop=lambda src, dst, msg: isinstance(msg, Commit) or (dst == 3 and src == 0))
    assert c.nodes[3].replica.log.slot(1).pre_prepare is None
    c.down.add(0)
    c.submit(1, [tx(2)])  # requests waiting at every backup: all of them time out on 0
    c.submit(2, [tx(2)])
    c.run(3000)
    node3 = c.nodes[3].replica
    assert node3.view == 1 and node3.new_view_msg is not None
    reissued = node3.new_view_msg.pre_prepares[0].batch
    assert reissued.txs == (t1[1],), "view 1's primary re-issued the batch with its transactions"
    _restart(c, 3)
    assert c.nodes[3].replica.full_batch(reissued.stripped()).txs == (t1[1],)
