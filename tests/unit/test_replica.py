"""Unit tests of the pure core on a FIFO harness with real Ed25519 keys from fixed seeds."""

from __future__ import annotations

from consensus.config import ReplicaConfig
from consensus.events import Receive, Tick
from consensus.messages import Batch, Commit, Prepare, PrePrepare
from tests.unit.core_harness import Cluster, Node, tx

SMALL = {"max_batch_txs": 10, "checkpoint_interval": 4, "watermark_window": 8}


def start(n: int = 4, **kw: int) -> Cluster:
    c = Cluster(n, **{**SMALL, **kw})
    for i in range(n):
        c.feed(i, Tick())
    return c


def tx_count(node: Node) -> int:
    return sum(len(b.block.batch.tx_ids) for b in node.blocks)


def assert_same_chain(c: Cluster, nodes: list[int] | None = None) -> None:
    ids = nodes if nodes is not None else list(range(c.n))
    heads = {c.nodes[i].replica.head_hash for i in ids}
    assert len(heads) == 1, [c.nodes[i].replica.last_executed for i in ids]


def test_config_rejects_small_or_inconsistent_clusters() -> None:
    for bad in ({"n": 3, "replica_id": 0}, {"n": 4, "replica_id": 4}):
        try:
            ReplicaConfig(**bad)  # type: ignore[arg-type]
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad}")
    assert ReplicaConfig(n=7, replica_id=0).quorum == 5
    assert ReplicaConfig(n=4, replica_id=0).quorum == 3


def test_normal_case_commits_every_transaction_once_in_the_same_order() -> None:
    for n in (4, 7):
        c = start(n)
        c.submit(1, [tx(i) for i in range(95)])
        c.run(500)
        assert_same_chain(c)
        assert all(tx_count(node) == 95 for node in c.nodes)
        ids = [t for b in c.nodes[0].blocks for t in b.block.batch.tx_ids]
        assert len(ids) == len(set(ids)) == 95


def test_duplicate_submissions_commit_once() -> None:
    c = start()
    txs = [tx(i) for i in range(20)]
    for i in range(4):
        c.submit(i, txs)
    c.run(300)
    c.submit(2, txs)
    c.run(300)
    assert all(tx_count(node) == 20 for node in c.nodes)


def test_checkpoints_garbage_collect_the_log() -> None:
    c = start()
    c.submit(0, [tx(i) for i in range(200)])
    c.run(2000)
    for node in c.nodes:
        r = node.replica
        assert r.last_executed >= 20
        assert r.stable_seq >= r.last_executed - r.cfg.checkpoint_interval
        assert len(r.log) <= r.cfg.watermark_window
        assert all(s > r.stable_seq for s in r.log.seqs())


def test_crashed_primary_is_replaced_and_requests_survive() -> None:
    c = start()
    c.submit(1, [tx(i) for i in range(30)])
    c.run(300)
    c.down = {0}
    c.submit(2, [tx(i) for i in range(100, 140)])
    c.run(8000)
    assert [n.replica.view for n in c.nodes[1:]] == [1, 1, 1]
    assert all(tx_count(n) == 70 for n in c.nodes[1:])
    assert_same_chain(c, [1, 2, 3])
    c.down = set()
    c.submit(3, [tx(i) for i in range(200, 210)])
    c.run(6000)
    assert_same_chain(c)
    assert c.nodes[0].replica.view == 1, "a stale replica must learn the new view"


def test_backup_rejects_conflicting_and_forged_pre_prepares() -> None:
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
    assert any("equivocation" in reason for reason, _ in out2.dropped)
    out3 = backup.step(Receive(forged, 0), 0)
    assert any(reason == "bad signature" for reason, _ in out3.dropped)


def test_invalid_transactions_are_not_voted_for() -> None:
    c = start()
    bad = (b"x" * 32, b"bad-tx")
    batch = Batch(0, 0, 0, (bad[0],), (bad[1],))
    pp = c.nodes[0].replica.sign(PrePrepare(0, 1, batch.digest(), 0, batch))
    out = c.nodes[1].replica.step(Receive(pp, 0), 0)
    assert not out.send
    assert any(reason == "invalid batch" for reason, _ in out.dropped)


def test_restarted_replica_never_contradicts_what_it_signed() -> None:
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


def test_replica_behind_catches_up_by_state_transfer() -> None:
    c = start()
    c.down = {3}
    c.submit(0, [tx(i) for i in range(120)])
    c.run(2000)
    assert c.nodes[3].replica.last_executed == 0
    c.down = set()
    c.run(5000)
    assert_same_chain(c)
    assert tx_count(c.nodes[3]) == 120


def test_view_change_reissues_committed_batches_stripped_and_laggard_fetches_them() -> None:
    """A backup that prepared but never saw commits lacks decided blocks when the primary dies;
    the new-view names them by digest only and the backup fetches them by state transfer."""
    c = start(checkpoint_interval=8, watermark_window=16)
    c.submit(1, [tx(i) for i in range(55)])
    c.run(50, drop=lambda src, dst, m: dst == 3 and isinstance(m, Commit))
    assert c.nodes[3].replica.last_executed == 0 < c.nodes[1].replica.last_executed
    c.down = {0}
    c.submit(2, [tx(i) for i in range(100, 150)])
    c.run(8000)
    assert_same_chain(c, [1, 2, 3])
    assert all(tx_count(c.nodes[i]) == 105 for i in (1, 2, 3))
    nv = c.nodes[1].replica.new_view_msg
    assert nv is not None and nv.view == 1
    assert all(p.pre_prepare.batch.txs == () for vc in nv.view_changes for p in vc.prepared)


def test_fetched_block_with_valid_certificate_but_invalid_transaction_is_refused() -> None:
    """A certificate covers transaction ids, not their signatures: a peer's corrupted copy
    (e.g. a flipped signature byte) must not enter a chain by state transfer."""
    from consensus.messages import CertifiedBlock, FetchResponse

    c = start()
    bad = (b"\x01" * 32, b"bad-signature")
    batch = Batch(0, 0, 0, (bad[0],), (bad[1],))
    commits = tuple(c.nodes[i].replica.sign(Commit(0, 1, batch.digest(), i)) for i in range(3))
    resp = FetchResponse((CertifiedBlock(1, batch, commits),), 2)
    out = c.nodes[3].replica.step(Receive(resp, 2), 0)
    assert not out.committed
    assert any(reason == "fetched block rejected" for reason, _ in out.dropped)


def test_an_isolated_replica_does_not_run_ahead_in_views_and_rejoins_after_heal() -> None:
    """Pre-vote in spirit: a replica that cannot reach a quorum does not start a view change
    it cannot finish; once the partition heals it is still in the cluster's view."""
    c = start()
    c.run(100)
    c.down = {3}
    c.submit(3, [tx(i) for i in range(10)])  # only the isolated replica has them
    c.run(10_000)
    r3 = c.nodes[3].replica
    assert r3.view == 0 and not r3.in_view_change
    c.down = set()
    c.run(5_000)
    assert all(n.replica.view == 0 and not n.replica.in_view_change for n in c.nodes)
    assert all(tx_count(n) == 10 for n in c.nodes)
    assert_same_chain(c)


def test_a_replica_in_view_change_does_not_climb_views_on_new_requests() -> None:
    c = start()
    r = c.nodes[1].replica
    r.step(Tick(), 0)
    from consensus.events import Ready
    from consensus.viewchange import start_view_change

    start_view_change(r, 1, Ready())
    for t in range(1, 20):
        r.step(Tick(), t * 1000)
        c.submit(1, [tx(1000 + t)])
    assert r.view == 1, "no quorum of view-changes for view 1: its timer must not run"


def test_a_transaction_executed_before_the_shell_stored_it_is_not_admitted_again() -> None:
    """The core remembers what it executed: a request for it arriving in the same round (the
    shell stores blocks only after the round) must not be proposed again."""
    from consensus.messages import Request

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


def test_a_replica_just_reconnected_catches_up_before_suspecting_the_primary() -> None:
    """Found by the minority-partition scenario: the timer of a replica that had been cut off
    fired 150 ms after the heal, before state transfer and request relays had run; it started a
    view change nobody joined and stayed out of the protocol."""
    from consensus.messages import FetchResponse, Request

    c = start()
    c.run(100)
    c.down = {3}
    c.submit(3, [tx(i) for i in range(10)])
    c.submit(0, [tx(i) for i in range(100, 140)])
    c.run(6_000)
    c.down = set()
    slow_catch_up = lambda src, dst, m: (  # noqa: E731
        (dst == 3 and isinstance(m, FetchResponse)) or (src == 3 and isinstance(m, Request))
    )
    c.run(1_000, drop=slow_catch_up)
    assert not c.nodes[3].replica.in_view_change
    c.run(3_000)
    assert all(n.replica.view == 0 and not n.replica.in_view_change for n in c.nodes)
    assert all(tx_count(n) == 50 for n in c.nodes)
