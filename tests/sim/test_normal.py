"""Normal case: no faults beyond random delays and reordering; many transactions."""

from __future__ import annotations

import pytest

from tests.sim.cluster import SimCluster
from tests.sim.network import LinkPolicy


@pytest.mark.parametrize(("n", "txs"), [(4, 400), (7, 150)])
def test_all_honest_nodes_commit_the_same_blocks_in_the_same_order(n: int, txs: int) -> None:
    cluster = SimCluster(
        n, seed=1000 + n, scenario="normal", policy=LinkPolicy(1, 15, spike=0.1, spike_ms=40)
    )
    cluster.start()
    cluster.schedule_load(txs, 0, 1500, max_group=4)
    liveness = cluster.liveness
    assert liveness is not None

    def everything_committed_everywhere() -> bool:
        return liveness.expected == txs and liveness.outstanding == 0

    assert cluster.run_until(30_000, stop=everything_committed_everywhere), cluster.summary()
    cluster.run_until(cluster.now + 500)  # let trailing checkpoints settle

    chains = cluster.chains()
    reference = chains["node0"]
    assert all(chain == reference for chain in chains.values()), cluster.summary()["heights"]
    ids = [tid for c in cluster.nodes[0].store.blocks for tid in c.block.batch.tx_ids]
    assert len(ids) == len(set(ids)) == txs
    assert cluster.checker.blocks_checked == n * len(reference)
    # The log was garbage-collected along the way: checkpoints became stable everywhere.
    assert all(node.replica.stable_seq > 0 for node in cluster.nodes)
    assert cluster.stats.codec_rejects == 0
