"""node/audit/compare, node/audit/client: comparison logic, verdicts, peer state, status."""

from __future__ import annotations

import pytest

from node.audit.client import parse_status
from node.audit.compare import (
    AGREE,
    DIVERGED,
    INVALID,
    LAGGING,
    UNKNOWN,
    HeightCheck,
    PeerState,
    apply_checks,
    classify,
    contiguous_ranges,
    plan_heights,
)
from node.audit.settings import AuditSettings
from node.repair import PeerError

# =============================================================================================
# comparison logic (pure)


def test_same_height_same_blocks_is_agree() -> None:
    v = classify(10, 10, {}, lag_tolerance=2)
    assert (v.agreement, v.lag) == (AGREE, 0)


@pytest.mark.parametrize(("ours", "theirs"), [(20, 10), (10, 20)])
def test_different_heights_same_blocks_is_lagging_not_diverged(ours: int, theirs: int) -> None:
    v = classify(ours, theirs, {}, lag_tolerance=2)
    assert v.agreement == LAGGING
    assert v.lag == theirs - ours


def test_lag_within_tolerance_is_agree() -> None:
    assert classify(10, 12, {}, lag_tolerance=2).agreement == AGREE
    assert classify(10, 13, {}, lag_tolerance=2).agreement == LAGGING
    assert classify(10, 11, {}, lag_tolerance=0).agreement == LAGGING


def test_divergence_outranks_invalid_and_lag() -> None:
    assert classify(10, 30, {4: DIVERGED, 5: INVALID}, lag_tolerance=2).agreement == DIVERGED
    assert classify(10, 30, {5: INVALID}, lag_tolerance=2).agreement == INVALID


def test_height_check_outcomes() -> None:
    a, b = b"a" * 32, b"b" * 32
    assert HeightCheck(1, a, a).outcome == AGREE
    assert HeightCheck(1, a, b).outcome == DIVERGED
    assert HeightCheck(1, a, a, "bad signature").outcome == INVALID
    assert HeightCheck(1, None, a).outcome == UNKNOWN


def test_open_issues_open_and_close() -> None:
    a, b = b"a" * 32, b"b" * 32
    issues = apply_checks(
        {}, [HeightCheck(3, a, b), HeightCheck(4, a, a, "bad"), HeightCheck(5, a, a)]
    )
    assert issues == {3: DIVERGED, 4: INVALID}
    issues = apply_checks(issues, [HeightCheck(3, a, a), HeightCheck(4, None, a)])
    assert issues == {4: INVALID}  # an unknown outcome neither opens nor closes


def test_plan_heights_tip_and_sweep() -> None:
    assert plan_heights(1, (), 0, recent=4, sweep=3) == []
    assert plan_heights(1, (), 20, recent=4, sweep=3) == [1, 2, 3, 17, 18, 19, 20]
    assert plan_heights(1, (), 5, recent=4, sweep=3) == [1, 2, 3, 4, 5]
    # Done heights are skipped, and the sweep goes past them instead of stalling.
    assert plan_heights(4, {5, 17, 18, 19, 20}, 20, recent=4, sweep=3) == [4, 6, 7]
    assert plan_heights(21, (), 20, recent=4, sweep=3) == []


def test_contiguous_ranges() -> None:
    assert contiguous_ranges([]) == []
    assert contiguous_ranges([1, 2, 3, 7, 9, 10]) == [(1, 3), (7, 7), (9, 10)]
    assert contiguous_ranges([1, 2, 3, 4, 5], max_len=2) == [(1, 2), (3, 4), (5, 5)]


def test_peer_state_cursor_only_passes_compared_heights() -> None:
    state = PeerState(1, "http://x", max_problems=2)
    state.mark_done([1, 2, 4, 5])
    assert state.cursor == 3 and state.tip_done == {4, 5}
    state.mark_done([3])
    assert state.cursor == 6 and not state.tip_done
    for i in range(5):
        state.problem("p", i, "detail")
    assert len(state.problems) == 2


def test_parse_status_variants() -> None:
    head = "ab" * 32
    s = parse_status({"height": 7, "head_hash": head, "stable_seq": 4, "view": 1})
    assert (s.height, s.head_hash, s.stable_seq, s.view) == (7, bytes.fromhex(head), 4, 1)
    s = parse_status({"height": 7, "head": head, "stable_checkpoint": {"seq": 3}})
    assert (s.head_hash, s.stable_seq) == (bytes.fromhex(head), 3)
    assert parse_status({"height": 0, "head_hash": "zz"}).head_hash is None
    bad_docs: list[object] = [[], {"height": "7"}, {"height": -1}, {}]
    for bad in bad_docs:
        with pytest.raises(PeerError, match="status"):
            parse_status(bad)


def test_settings_reject_non_positive() -> None:
    with pytest.raises(ValueError, match="interval_ms"):
        AuditSettings(interval_ms=0)
