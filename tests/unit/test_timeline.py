"""medchain timeline: strict parsing of GET /events, merging, windows, text, the swimlane
PNG, and fetching page by page from (fake) nodes."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from scripts.client import NodeClient
from scripts.timeline import parse_time
from scripts.timeline.events import (
    Event,
    EventsError,
    format_lines,
    merge,
    parse_page,
    summarize,
    window,
)
from scripts.timeline.fetch import Collector, fetch_events
from scripts.timeline.plot import plot_swimlanes
from tests.unit.fake_events_node import FakeNode, event


def page(node: int, events: list[dict[str, object]], **extra: object) -> dict[str, object]:
    return {"node": node, "now_ms": 5_000, "next": 99, "dropped": 0, "events": events, **extra}


def test_parse_page_reads_every_field() -> None:
    p = parse_page(page(2, [event(10, "msg_out", seq=4, peer=1, detail="prepare")], dropped=3))
    assert p.node == 2 and p.next == 99 and p.dropped == 3
    assert p.events == (Event(10, 2, "msg_out", 0, 4, 1, "prepare"),)


@pytest.mark.parametrize(
    "doc, problem",
    [
        ([], "JSON object"),
        ({**page(0, []), "node": "0"}, "'node'"),
        (page(0, "x"), "'events'"),
        (page(0, [{"t_ms": "1", "kind": "timer"}]), "event 0: 't_ms'"),
        (page(0, [{"t_ms": 1, "kind": ""}]), "'kind'"),
        (page(0, [{"t_ms": 1, "kind": "timer", "view": 1.5}]), "'view'"),
        (page(0, [{"t_ms": 1, "kind": "timer", "detail": 3}]), "'detail'"),
        (page(0, [{"t_ms": True, "kind": "timer"}]), "'t_ms'"),
    ],
)
def test_parse_page_refuses_bad_shapes(doc: object, problem: str) -> None:
    with pytest.raises(EventsError, match=problem):
        parse_page(doc)


def test_detail_is_bounded() -> None:
    p = parse_page(page(0, [event(1, "fault", detail="x" * 10_000)]))
    assert len(p.events[0].detail) == 200


def test_merge_orders_by_time_then_node_and_windows_cut() -> None:
    a = [Event(5, 1, "timer", 0, None, None, ""), Event(9, 1, "commit", 0, 3, None, "1 txs")]
    b = [
        Event(5, 0, "view_change", 1, None, None, "to view 1"),
        Event(7, 0, "new_view", 1, None, None, ""),
    ]
    merged = merge([a, b])
    assert [(e.t_ms, e.node) for e in merged] == [(5, 0), (5, 1), (7, 0), (9, 1)]
    assert [e.t_ms for e in window(merged, 6, 8)] == [7]
    assert [e.t_ms for e in window(merged, None, 5)] == [5, 5]
    s = summarize(merged)
    assert s["views"] == [0, 1] and s["committed_heights"] == [3, 3]
    assert s["view_changes"][0]["detail"] == "to view 1"
    lines = format_lines(merged)
    assert "node0" in lines[0] and "view_change to view 1" in lines[0] and "+0.000s" in lines[0]
    assert "+0.004s" in lines[-1]


def test_parse_time_forms() -> None:
    assert parse_time("1700000000000") == 1_700_000_000_000
    assert parse_time("-30s", now_ms=100_000) == 70_000
    assert parse_time("-2m", now_ms=200_000) == 80_000
    assert parse_time("2025-01-01T00:00:00+00:00") == 1_735_689_600_000
    with pytest.raises(argparse.ArgumentTypeError):
        parse_time("yesterday")


def test_swimlane_png_is_drawn(tmp_path: Path) -> None:
    events = [
        Event(0, 0, "msg_out", 0, 1, 1, "pre-prepare"),
        Event(3, 1, "msg_in", 0, 1, 0, "pre-prepare"),
        Event(900, 1, "timer", 0, None, None, ""),
        Event(910, 1, "view_change", 1, None, None, "to view 1"),
        Event(950, 2, "fault", None, None, None, "applied kill"),
        Event(1200, 1, "new_view", 1, None, None, ""),
        Event(1300, 1, "commit", 1, 2, None, "3 txs"),
    ]
    out = tmp_path / "t.png"
    plot_swimlanes(
        events,
        out,
        nodes=[0, 1, 2, 3],
        title="test",
        spans=[{"from_ms": 900, "to_ms": 1000, "label": "kill"}],
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_fetch_follows_pages_and_checks_node_ids() -> None:
    good = FakeNode(0, events=[event(t, "msg_out", detail="prepare") for t in range(7000)])
    liar = FakeNode(5)  # says it is node 5 where the cluster has node 1
    servers = [TestServer(n.app()) for n in (good, liar)]
    for s in servers:
        await s.start_server()
    try:
        urls = {0: str(servers[0].make_url("")), 1: str(servers[1].make_url(""))}
        async with NodeClient(list(urls.values())) as client:
            states = await fetch_events(client, urls, since_ms=100)
        assert len(states[0].events) == 6900  # two pages of at most 5000
        assert states[0].since == 7000 and states[0].error is None
        assert states[0].clock_offset_ms is not None
        assert states[1].error is not None and "node 5" in states[1].error
    finally:
        for s in servers:
            await s.close()


async def test_collector_keeps_what_a_node_recorded_before_it_died() -> None:
    node = FakeNode(0, events=[event(1, "commit", seq=1)])
    server = TestServer(node.app())
    await server.start_server()
    url = str(server.make_url(""))
    async with NodeClient(url) as client:
        collector = Collector(client, {0: url})
        await collector.collect_once()
        node.events.append(event(2, "fault", detail="applied kill"))
        await collector.collect_once()
        await server.close()  # the node is gone: what was read stays
        await collector.collect_once()
    assert [e.t_ms for e in collector.merged()] == [1, 2]
    assert collector.available() and collector.nodes[0].error is not None


async def test_fetch_reports_a_malformed_answer() -> None:
    node = FakeNode(0, events_doc={"node": 0, "events": []})
    server = TestServer(node.app())
    await server.start_server()
    try:
        url = str(server.make_url(""))
        async with NodeClient(url) as client:
            states = await fetch_events(client, {0: url})
        assert states[0].error is not None and "'now_ms'" in states[0].error
    finally:
        await server.close()
