"""The core's invariants hold at every step boundary, and a broken one stops the step (as
TigerBeetle asserts its own): a bug never runs on silently."""

from __future__ import annotations

import pytest

from consensus.config import ReplicaConfig
from consensus.events import Tick
from consensus.invariants import check_config, check_step
from tests.consensus.harness import start, tx


def test_quorums_intersect_in_an_honest_replica_for_every_cluster_size() -> None:
    """Sections 3 and 4.2: any two quorums share at least f+1 replicas."""
    for n in range(4, 40):
        cfg = ReplicaConfig(n=n, replica_id=0)
        check_config(cfg)
        assert 2 * cfg.quorum - n >= cfg.f + 1


def test_the_invariants_hold_through_a_run_with_a_view_change() -> None:
    c = start()
    c.submit(1, [tx(i) for i in range(60)])
    c.run(300)
    c.down = {0}
    c.run(8000)
    for node in c.nodes:
        check_step(node.replica, None)


def test_a_step_that_breaks_an_invariant_raises() -> None:
    """Section 4.3: stable checkpoint <= last executed < next seq."""
    c = start()
    c.submit(0, [tx(i) for i in range(20)])
    c.run(300)
    r = c.nodes[0].replica
    r.next_seq = r.last_executed
    with pytest.raises(AssertionError, match="next seq"):
        r.step(Tick(), c.now)
