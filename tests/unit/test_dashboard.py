"""medchain dashboard: what the model computes from probes, what the probe reads from a node,
and the server's page, state, stream and errors (with fake nodes in the documented shapes)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from scripts.client import NodeClient
from scripts.dashboard.model import ClusterModel, Histogram, Probe, quantile
from scripts.dashboard.probe import node_client, parse_metrics, probe
from scripts.dashboard.server import make_app
from tests.unit.fake_events_node import FakeNode


def status(node: int, height: int, view: int = 0, txs: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "node": node,
        "height": height,
        "view": view,
        "primary": view % 4,
        "is_primary": view % 4 == node,
        "in_view_change": False,
        "mempool_size": 0,
        "healthy": True,
        "counters": {"committed_txs": txs},
        "faults": {"active": extra.pop("faults", [])},
        **extra,
    }


def probes(t: float, heights: list[int | None], **kw: Any) -> list[Probe]:
    return [
        Probe(
            i,
            f"http://n{i}",
            t,
            None if h is None else status(i, h, txs=h * 10, **kw),
            alive=True,
            error=None if h is not None else "refused",
        )
        for i, h in enumerate(heights)
    ]


def test_rows_lag_rate_and_a_node_going_down() -> None:
    m = ClusterModel({i: f"http://n{i}" for i in range(4)})
    m.update(probes(0.0, [1, 1, 1, 1]), 0.0)
    tick = m.update(probes(2.0, [5, 5, 5, 3]), 2.0)
    assert [r["lag"] for r in tick["nodes"]] == [0, 0, 0, 2]
    assert tick["point"]["tx_per_s"] == 20.0  # median of 20, 20, 20, 10 tx/s
    assert tick["summary"]["height"] == 5 and tick["summary"]["ok"] == 4
    tick = m.update(probes(3.0, [6, 6, 6, None]), 3.0)
    down = tick["nodes"][3]
    assert down["health"] == "down" and down["height"] == 3  # last known, kept
    assert any(i["text"].startswith("node 3: down") for i in tick["feed"])
    assert tick["summary"]["ok"] == 3


def test_a_restart_does_not_make_a_negative_rate() -> None:
    m = ClusterModel({0: "http://n0"})
    m.update([Probe(0, "u", 0.0, status(0, 10, txs=1000))], 0.0)
    tick = m.update([Probe(0, "u", 1.0, status(0, 10, txs=5))], 1.0)
    assert tick["point"]["tx_per_s"] is None


def test_view_change_fault_and_audit_feed_items() -> None:
    m = ClusterModel({0: "u0", 1: "u1"})
    audit = {"agreement": "agree", "evidence": {"count": 0}}
    m.update([Probe(i, "u", 0.0, status(i, 1), audit=audit) for i in (0, 1)], 0.0)
    fault = {"id": 7, "kind": "delay", "ms": 50, "age_s": 1}
    bad = {
        "agreement": "diverged",
        "evidence": {"count": 2, "latest": [{"kind": "fork", "peer": 1}]},
    }
    tick = m.update(
        [
            Probe(0, "u", 1.0, status(0, 2, view=1, faults=[fault]), audit=bad),
            Probe(1, "u", 1.0, status(1, 2, view=1), audit=audit),
        ],
        1.0,
    )
    texts = [i["text"] for i in tick["feed"]]
    assert "view change: view 0 -> 1 (primary: node 1)" in texts
    assert "node 0: fault applied: delay (ms=50)" in texts
    assert "node 0: audit agree -> diverged" in texts
    assert any("2 new piece(s) of audit evidence (kind fork, peer 1)" in t for t in texts)
    tick = m.update([Probe(i, "u", 2.0, status(i, 3, view=1), audit=audit) for i in (0, 1)], 2.0)
    assert "node 0: fault cleared: delay (ms=50)" in [i["text"] for i in tick["feed"]]


def test_not_ready_and_unhealthy() -> None:
    m = ClusterModel({0: "u", 1: "u"})
    tick = m.update(
        [
            Probe(0, "u", 0.0, status(0, 1), alive=True, ready=False, ready_reason="catching up"),
            Probe(1, "u", 0.0, status(1, 1), alive=False),
        ],
        0.0,
    )
    assert [(r["health"], r["health_detail"]) for r in tick["nodes"]] == [
        ("not-ready", "catching up"),
        ("unhealthy", "its health check fails"),
    ]


def test_quantile_interpolates_like_histogram_quantile() -> None:
    buckets = [(0.1, 50.0), (0.2, 100.0), (float("inf"), 100.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.75, buckets) == pytest.approx(0.15)
    assert quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None


def test_latency_comes_from_histogram_deltas() -> None:
    m = ClusterModel({0: "u"})
    h0 = Histogram(((0.1, 0.0), (0.5, 0.0), (float("inf"), 0.0)), 0.0)
    h1 = Histogram(((0.1, 0.0), (0.5, 10.0), (float("inf"), 10.0)), 10.0)
    m.update([Probe(0, "u", 0.0, status(0, 1), latency=h0)], 0.0)
    point = m.update([Probe(0, "u", 1.0, status(0, 2), latency=h1)], 1.0)["point"]
    assert point["p50_ms"] == pytest.approx(300.0)


def test_parse_metrics_reads_counter_and_histogram() -> None:
    node = FakeNode(0, committed_txs=42, latency_buckets={"0.05": 3, "0.25": 9, "+Inf": 10})
    committed, latency = parse_metrics(node.metrics().encode())
    assert committed == 42
    assert latency is not None and latency.buckets[-1] == (float("inf"), 10.0)
    assert parse_metrics(b"this is { not prometheus") == (None, None)


async def test_probe_reads_every_endpoint() -> None:
    node = FakeNode(1, height=9, ready=False, agreement="lagging", committed_txs=5)
    server = TestServer(node.app())
    await server.start_server()
    try:
        async with NodeClient(str(server.make_url(""))) as pool:
            p = await probe(node_client(pool, str(server.make_url(""))), 1)
    finally:
        await server.close()
    assert p.status is not None and p.status["height"] == 9
    assert (p.alive, p.ready, p.ready_reason) == (True, False, "catching up")
    assert p.audit is not None and p.audit["agreement"] == "lagging"
    assert p.committed_txs == 5


async def test_server_page_state_stream_and_errors() -> None:
    nodes = [FakeNode(i, height=3) for i in range(4)]
    servers = [TestServer(n.app()) for n in nodes]
    for s in servers:
        await s.start_server()
    app = make_app({i: str(s.make_url("")) for i, s in enumerate(servers)}, interval_s=0.1)
    try:
        async with TestClient(TestServer(app)) as client:
            page = await client.get("/")
            assert page.status == 200 and "<canvas" in await page.text()
            js = await client.get("/static/dashboard.js")
            assert js.status == 200 and "EventSource" in await js.text()
            for bad in ("/static/..%2f__init__.py", "/static/index.py", "/api/nothing"):
                resp = await client.get(bad)
                assert resp.status == 404 and "error" in await resp.json()
            stream = await client.get("/api/stream")
            assert stream.headers["Content-Type"] == "text/event-stream"
            frames = await _frames(stream, 3)
            assert frames[0][0] == "snapshot"
            ticks = [d for e, d in frames if e == "tick"]
            nodes[2].height = 8
            more = await _frames(stream, 4)
            last = [d for e, d in more if e == "tick"][-1]
            assert [r["height"] for r in last["nodes"]] == [3, 3, 8, 3]
            assert ticks and len(ticks[0]["nodes"]) == 4
            state = await (await client.get("/api/state")).json()
            assert state["polls"] >= 3 and len(state["nodes"]) == 4
            stream.close()
    finally:
        for s in servers:
            await s.close()


async def _frames(resp: Any, count: int) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    event = ""
    async with asyncio.timeout(20):
        while len(out) < count:
            line = (await resp.content.readline()).decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                out.append((event, json.loads(line[6:])))
    return out
