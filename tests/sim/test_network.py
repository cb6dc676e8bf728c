"""The simulated network and event queue on their own."""

from __future__ import annotations

import random

import pytest

from tests.sim.network import BENIGN, EventQueue, LinkPolicy, Network


def test_queue_orders_by_time_then_insertion() -> None:
    q = EventQueue()
    q.push(5, ("b",))
    q.push(3, ("a",))
    q.push(5, ("c",))
    q.push(5, ("d",))
    assert q.peek_time() == 3
    assert [q.pop() for _ in range(4)] == [(3, ("a",)), (5, ("b",)), (5, ("c",)), (5, ("d",))]
    assert len(q) == 0
    assert q.peek_time() is None


def test_delays_stay_in_range_and_replay_from_the_seed() -> None:
    policy = LinkPolicy(2, 9)
    a = Network(random.Random(7), policy)
    b = Network(random.Random(7), policy)
    da = [a.delays(0, 1) for _ in range(500)]
    assert da == [b.delays(0, 1) for _ in range(500)]
    assert all(len(d) == 1 and 2 <= d[0] <= 9 for d in da)
    assert len({d[0] for d in da}) > 3  # actually random, so messages reorder


def test_loss_duplication_and_spikes() -> None:
    lossy = Network(random.Random(1), LinkPolicy(1, 1, drop=1.0))
    assert all(lossy.delays(0, 1) == [] for _ in range(50))
    assert lossy.stats.lost == 50
    dup = Network(random.Random(1), LinkPolicy(1, 1, duplicate=1.0))
    assert all(dup.delays(0, 1) == [1, 1] for _ in range(50))
    spiky = Network(random.Random(1), LinkPolicy(1, 1, spike=1.0, spike_ms=100))
    assert max(spiky.delays(0, 1)[0] for _ in range(200)) > 50


def test_partition_and_heal() -> None:
    net = Network(random.Random(0), LinkPolicy(1, 1, drop=0.5))
    net.partition([[0, 1], [2]])
    assert net.connected(0, 1)
    assert not net.connected(1, 2)
    assert not net.connected(3, 0)  # named in no group: alone
    assert not net.connected(3, 4)
    assert net.connected(3, 3)
    assert net.delays(0, 2) == []
    assert net.stats.cut == 1
    net.set_link(0, 1, LinkPolicy(50, 50))
    assert net.delays(0, 1) == [50]
    net.heal()
    assert not net.partitioned
    assert net.policy == BENIGN
    assert all(net.connected(a, b) for a in range(5) for b in range(5))
    assert 1 <= net.delays(0, 1)[0] <= BENIGN.max_delay_ms


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="delay range"):
        LinkPolicy(5, 1)
    with pytest.raises(ValueError, match="probability"):
        LinkPolicy(drop=1.5)
    with pytest.raises(ValueError, match="two partition groups"):
        Network(random.Random(0)).partition([[0, 1], [1, 2]])
