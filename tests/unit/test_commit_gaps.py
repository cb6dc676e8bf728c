"""Commit gaps (scripts/gaps.py): the longest stretch without a commit while 2f+1 nodes were
up, clipped to the time a quorum was up, from fault timelines as the runner records them."""

from __future__ import annotations

from typing import Any

import pytest

from scripts import gaps


def _fault(kind: str, nodes: list[int], start: float, healed: float | None, **params: Any) -> dict:
    return {
        "label": kind,
        "kind": kind,
        "nodes": nodes,
        "start_s": start,
        "healed_s": healed,
        "params": params,
        "error": None,
    }


def test_no_fault_longest_gap_between_commits_and_to_the_end() -> None:
    gap = gaps.longest_commit_gap([1.0, 1.5, 4.0, 4.2], 5.0, [], 4, 3.0)
    assert (gap.longest_s, gap.from_s, gap.to_s) == (2.5, 1.5, 4.0)
    assert gap.ok and gap.commits == 4
    # Silence at the end of the load counts too.
    tail = gaps.longest_commit_gap([1.0, 1.2], 9.0, [], 4, 3.0)
    assert tail.longest_s == pytest.approx(7.8) and not tail.ok


def test_primary_crash_gap_counts_while_three_of_four_are_up() -> None:
    # Node 0 killed at 4 s (3 nodes up: 2f+1 for n = 4): the 5 s stall is a violation.
    outs = gaps.outages([_fault("kill", [0], 4.0, 12.0)], 4, 20.0)
    gap = gaps.longest_commit_gap([1.0, 3.9, 9.0, 11.0, 13.0, 15.0, 17.0, 19.5], 20.0, outs, 4, 3.0)
    assert gap.longest_s == pytest.approx(5.1) and not gap.ok


def test_gap_while_no_quorum_is_up_is_not_counted() -> None:
    # Two of four down from 4 s to 12 s: no quorum, so only the parts outside count.
    faults = [_fault("kill", [0], 4.0, 12.0), _fault("stop", [1], 5.0, 12.0)]
    outs = gaps.outages(faults, 4, 20.0)
    assert gaps.quorum_up(outs, 4, (0.0, 20.0)) == [(0.0, 5.0), (12.0, 20.0)]
    gap = gaps.longest_commit_gap([1.0, 3.0, 13.0, 14.0, 19.9], 20.0, outs, 4, 3.0)
    # 3.0 -> 13.0 clipped to [3, 5) and [12, 13): 2 s; the longest is 14 -> 19.9.
    assert gap.longest_s == pytest.approx(5.9) and (gap.from_s, gap.to_s) == (14.0, 19.9)
    assert gap.quorum_up_s == pytest.approx(4.0 + 8.0)  # [1, 5) and [12, 20)


def test_partition_takes_down_only_those_outside_the_largest_group() -> None:
    part = _fault("partition", [0, 1, 2, 3], 4.0, 12.0, groups=[[0]])
    outs = gaps.outages([part], 4, 20.0)
    assert {o.node for o in outs} == {0}
    split = _fault("partition", [0, 1, 2, 3, 4, 5, 6], 1.0, 2.0, groups=[[0, 1], [2, 3, 4]])
    assert {o.node for o in gaps.outages([split], 7, 5.0)} == {0, 1, 5, 6}


def test_slowing_faults_and_failed_steps_take_nothing_down() -> None:
    faults = [
        _fault("delay", [0, 1, 2, 3], 1.0, 10.0, ms=50),
        _fault("drop", [1], 1.0, 10.0, probability=0.05),
        {**_fault("kill", [2], 1.0, 3.0), "error": "node unreachable"},
    ]
    assert gaps.outages(faults, 4, 10.0) == []


def test_unhealed_fault_lasts_to_the_end_and_bound_unknown_is_ok() -> None:
    outs = gaps.outages([_fault("byzantine", [0], 2.0, None, mode="silent")], 4, 10.0)
    assert outs == [gaps.Outage(0, 2.0, 10.0, "byzantine")]
    gap = gaps.longest_commit_gap([1.0, 9.0], 10.0, outs, 4, gaps.gap_bound_s(None))
    assert gap.bound_s is None and gap.ok and gap.longest_s == 8.0
    assert gaps.gap_bound_s(2000) == 3.0


def test_no_commit_at_all_is_an_empty_gap_and_json_says_how() -> None:
    gap = gaps.longest_commit_gap([], 10.0, [], 4, 3.0)
    assert gap.commits == 0 and gap.longest_s == 0.0
    doc = gaps.longest_commit_gap([0.5, 2.0], 2.5, [], 4, 3.0).to_json()
    assert doc["longest_s"] == 1.5 and doc["ok"] is True and "2f+1" in doc["definition"]


def test_awaiting_commit_is_the_union_of_accepted_to_committed() -> None:
    txs = [
        (1.0, 2.0),
        (1.5, 3.0),  # overlaps the first: merged
        (None, None),  # never accepted: no work for the cluster
        (5.0, 5.0),  # committed as it was accepted: empty
        (6.0, None),  # never committed: waits to the end
        (12.0, None),  # accepted after the end: outside
    ]
    assert gaps.awaiting_commit(txs, 10.0) == [(1.0, 3.0), (6.0, 10.0)]


def test_a_stretch_with_every_accepted_transaction_committed_is_not_a_gap() -> None:
    # Commits at 1 and 6: the client sent nothing from 1.2 (all it had was committed at 1) to
    # 5.0, so only 5.0 -> 6.0 had work waiting. Without ``busy`` the 5 s idle stretch counts.
    commits = [0.5, 1.0, 6.0, 6.5]
    busy = gaps.awaiting_commit([(0.2, 1.0), (5.0, 6.0), (6.1, 6.5)], 7.0)
    gap = gaps.longest_commit_gap(commits, 7.0, [], 4, 3.0, busy)
    assert (gap.longest_s, gap.from_s, gap.to_s) == (1.0, 5.0, 6.0) and gap.ok
    assert gaps.longest_commit_gap(commits, 7.0, [], 4, 3.0).longest_s == 5.0


def test_a_stall_with_work_waiting_is_still_a_gap() -> None:
    # An accepted transaction waited from 2 s to 9 s and nothing committed from 1.5 s: the
    # gap counts from when the work arrived.
    busy = gaps.awaiting_commit([(1.0, 1.5), (2.0, 9.0)], 10.0)
    gap = gaps.longest_commit_gap([1.5, 9.0], 10.0, [], 4, 3.0, busy)
    assert (gap.longest_s, gap.from_s, gap.to_s) == (7.0, 2.0, 9.0) and not gap.ok
