"""A transaction a node acknowledged commits while 2f+1 nodes are up, whatever happens to that
node: its client never sends it again (issue: faults at load)."""

from __future__ import annotations

from tests.sim.cluster import SimCluster
from tests.sim.network import LinkPolicy

CUT = LinkPolicy(drop=1.0)


def _committed_on(cluster: SimCluster, ids: list[bytes], replica_ids: list[int]) -> bool:
    for rid in replica_ids:
        on_chain = {t for c in cluster.nodes[rid].store.blocks for t in c.block.batch.tx_ids}
        if not set(ids) <= on_chain:
            return False
    return True


def test_a_primary_killed_right_after_acknowledging_commits_them_once_restarted() -> None:
    """The primary acknowledges a batch and dies before proposing it; the others move to view
    1. Restarted, it re-offers what it acknowledged (its durable pending table) in view 0, is
    brought to view 1, and the new primary commits every one of them."""
    cluster = SimCluster(4, seed=71, scenario="ack-primary-restart")
    cluster.start()
    cluster.schedule_load(30, 0, 300)
    cluster.run_until(400)
    acked = cluster.submit_once(0, 12)
    assert len(acked) == 12
    cluster.crash(0)
    cluster.schedule_load(30, 450, 900)  # the others keep committing, in a new view
    cluster.at(1500, lambda: cluster.restart(0))
    done = cluster.run_until(15_000, stop=lambda: _committed_on(cluster, acked, [0, 1, 2, 3]))
    assert done, cluster.summary()
    assert cluster.nodes[1].replica.view >= 1
    assert not cluster.nodes[0].acknowledged


def test_a_batch_that_reached_one_backup_survives_its_primary_for_good() -> None:
    """The primary's batch reaches one backup only, then the primary crashes and never
    returns. Its transactions were in its mempool and in that backup's log, nowhere else:
    the backup must relay them so every replica times them, and the next primary must take
    them up (without that they are lost, and with no request held elsewhere no timer even
    runs)."""
    cluster = SimCluster(4, seed=72, scenario="ack-preprepared-lost")
    cluster.start()
    cluster.run_until(100)
    cluster.network.set_link(0, 2, CUT)
    cluster.network.set_link(0, 3, CUT)
    acked = cluster.submit_once(0, 6)
    assert len(acked) == 6
    cluster.run_until(cluster.now + 30)
    assert set(acked) <= set(cluster.nodes[1].replica.inflight_ids), "batch not pre-prepared"
    assert not any(set(acked) & set(cluster.nodes[i].replica.inflight_ids) for i in (2, 3))
    cluster.crash(0)
    cluster.network.heal()
    done = cluster.run_until(20_000, stop=lambda: _committed_on(cluster, acked, [1, 2, 3]))
    assert done, cluster.summary()
    assert cluster.nodes[1].replica.view >= 1
