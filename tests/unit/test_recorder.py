"""The flight recorder's ring: bounded in count and bytes, paged by time without a gap or a
repeat, and what a reader missed counted; one event per message kind and round."""

from __future__ import annotations

import random

import pytest

from consensus.messages import Checkpoint, FetchRequest, ViewChange
from node.recorder import MSG_IN, MSG_OUT, EventRing, ProtocolEvent, RoundTally, position


def _all_pages(ring: EventRing, since: int, limit: int) -> list[ProtocolEvent]:
    out: list[ProtocolEvent] = []
    for _ in range(10_000):
        page = ring.page(since, limit)
        if not page.events:
            return out
        assert page.next > since
        out.extend(page.events)
        since = page.next
    raise AssertionError("paging did not end")


def test_the_ring_keeps_the_newest_events_within_its_count() -> None:
    ring = EventRing(max_events=10, max_bytes=1 << 20)
    for t in range(100):
        ring.add(t, "commit", seq=t)
    assert len(ring) == 10
    assert (ring.recorded, ring.evicted) == (100, 90)
    assert [e.seq for e in ring.page(0, 100).events] == list(range(90, 100))


def test_the_ring_keeps_within_its_bytes() -> None:
    ring = EventRing(max_events=1000, max_bytes=4000)
    for t in range(100):
        ring.add(t, "fault", detail="x" * 150)
    assert ring.nbytes <= 4000
    assert 0 < len(ring) < 100
    assert ring.evicted == 100 - len(ring)


def test_a_long_detail_is_cut() -> None:
    ring = EventRing(10, 1 << 20)
    ring.add(1, "fault", detail="y" * 10_000)
    assert len(ring.page(0, 10).events[0].detail) == 200


@pytest.mark.parametrize("seed", range(5))
def test_paging_with_next_returns_every_event_once(seed: int) -> None:
    rng = random.Random(seed)
    ring = EventRing(100_000, 1 << 30)
    t = 1000
    for i in range(2000):
        t += rng.choice((0, 0, 0, 1, 5))  # many events share a millisecond
        ring.add(t, "commit", seq=i)
    limit = rng.randint(1, 50)
    pages = _all_pages(ring, 0, limit)
    assert [e.seq for e in pages] == list(range(2000))


def test_a_millisecond_with_more_events_than_the_limit_comes_whole() -> None:
    ring = EventRing(100, 1 << 20)
    for i in range(5):
        ring.add(7, "commit", seq=i)
    ring.add(8, "commit", seq=5)
    first = ring.page(0, 2)
    assert [e.seq for e in first.events] == [0, 1, 2, 3, 4]
    assert first.next == 8
    assert [e.seq for e in ring.page(first.next, 2).events] == [5]


def test_a_page_is_cut_between_two_milliseconds() -> None:
    ring = EventRing(100, 1 << 20)
    for i, t in enumerate((1, 2, 2, 2, 3)):
        ring.add(t, "commit", seq=i)
    page = ring.page(0, 3)
    assert [e.seq for e in page.events] == [0]
    assert page.next == 2


def test_an_event_recorded_after_a_page_is_never_missed() -> None:
    ring = EventRing(100, 1 << 20)
    ring.add(50, "commit", seq=1)
    page = ring.page(0, 10)
    assert page.next == 51
    ring.add(50, "commit", seq=2)  # same millisecond as the page's last event
    later = ring.page(page.next, 10)
    assert [(e.seq, e.t_ms) for e in later.events] == [(2, 51)]


def test_an_empty_page_keeps_since() -> None:
    ring = EventRing(10, 1 << 20)
    page = ring.page(123, 10)
    assert (page.events, page.next, page.dropped) == ([], 123, 0)


def test_dropped_counts_the_evicted_events_a_reader_asked_for() -> None:
    ring = EventRing(max_events=5, max_bytes=1 << 20)
    for t in range(10):  # 0..4 evicted
        ring.add(t * 10, "commit", seq=t)
    assert ring.page(0, 100).dropped == 5
    assert ring.page(20, 100).dropped == 3  # 20, 30, 40
    assert ring.page(41, 100).dropped == 0
    assert [e.seq for e in ring.page(20, 100).events] == [5, 6, 7, 8, 9]


def test_a_round_gives_one_event_per_direction_and_kind() -> None:
    ring = EventRing(100, 1 << 20)
    tally = RoundTally()
    tally.add(tally.inbound, "prepare", 0, 4, 1)
    tally.add(tally.inbound, "prepare", 0, 5, 2)
    tally.add(tally.inbound, "prepare", 0, 5, 3)
    tally.add(tally.outbound, "commit", 0, 5, -1)  # a broadcast
    tally.add(tally.inbound, "pre-prepare", 1, 6, 1)
    received: dict[str, int] = {}
    tally.flush(ring, 10, received)
    assert received == {"prepare": 3, "pre-prepare": 1}
    assert not tally
    got = {(e.kind, e.detail): e for e in ring.page(0, 100).events}
    prep = got[(MSG_IN, "prepare x3 seq 4..5 peers 1,2,3")]
    assert (prep.view, prep.seq, prep.peer) == (0, 5, None)
    assert got[(MSG_OUT, "commit")].peer is None  # a broadcast names no single peer
    pp = got[(MSG_IN, "pre-prepare")]
    assert (pp.view, pp.seq, pp.peer) == (1, 6, 1)


def test_the_position_of_each_message_kind() -> None:
    vc = ViewChange(3, 8, b"d" * 32, (), (), 2)
    assert position(vc) == (3, 8)
    assert position(Checkpoint(16, b"d" * 32, 1)) == (None, 16)
    assert position(FetchRequest(9, 12, 0)) == (None, 9)


def test_events_serialise_to_the_documented_shape() -> None:
    ev = ProtocolEvent(1, "commit", 0, 3, None, "2 txs")
    assert ev.to_json() == {
        "t_ms": 1,
        "kind": "commit",
        "view": 0,
        "seq": 3,
        "peer": None,
        "detail": "2 txs",
    }
