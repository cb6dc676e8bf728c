"""Garbage-collection pauses are timed per generation, logged when long, and can be undone."""

from __future__ import annotations

import gc
import logging

import pytest

from node.gcpause import LONG_PAUSE_S, GcPauses


def test_a_full_collection_is_timed_and_counted_in_its_generation() -> None:
    pauses = GcPauses()
    pauses.install()
    try:
        gc.collect()
    finally:
        pauses.uninstall()
    oldest = pauses.by_generation[2]
    assert oldest.count >= 1
    assert oldest.sum > 0
    assert pauses.max_s >= oldest.sum / oldest.count
    assert pauses.to_json()["collections"][2] >= 1  # type: ignore[index]


def test_uninstall_stops_the_timing_and_install_is_idempotent() -> None:
    pauses = GcPauses()
    pauses.install()
    pauses.install()
    assert gc.callbacks.count(pauses._on_gc) == 1
    pauses.uninstall()
    assert pauses._on_gc not in gc.callbacks
    before = pauses.by_generation[2].count
    gc.collect()
    assert pauses.by_generation[2].count == before


def test_a_long_pause_is_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    pauses = GcPauses()
    pauses._on_gc("start", {"generation": 2})
    pauses._started_ns = (pauses._started_ns or 0) - int(LONG_PAUSE_S * 2e9)  # it began earlier
    with caplog.at_level(logging.WARNING, logger="medchain.node"):
        pauses._on_gc("stop", {"generation": 2, "collected": 7})
    assert pauses.long_pauses == 1
    assert pauses.max_s >= 2 * LONG_PAUSE_S
    assert "garbage collection of generation 2 paused the node" in caplog.text


def test_a_short_pause_is_counted_but_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    pauses = GcPauses()
    with caplog.at_level(logging.WARNING, logger="medchain.node"):
        pauses._on_gc("start", {"generation": 0})
        pauses._on_gc("stop", {"generation": 0, "collected": 0})
    assert pauses.by_generation[0].count == 1
    assert pauses.long_pauses == 0
    assert caplog.text == ""
