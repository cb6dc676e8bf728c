"""The operations endpoints of real in-process nodes: /metrics, /events, /healthz, /readyz.

The metrics parse with prometheus-client's own text parser and follow what the cluster does;
the flight recorder serves the documented shape and pages with ``next``; readiness drops
while a view change replaces a stopped primary and comes back once the new view is
installed; every error answer is counted by route, status and error.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from node.api import tx_to_request_json
from node.audit.compare import SEVERITY
from node.faults.layer import FaultLayer
from node.faults.model import Delay, FaultsConfig, FaultSpec, parse_fault
from node.observer import Observer
from node.recorder import EVENT_KINDS
from node.runtime import Node
from tests.unit.test_api import FAST, FAST_LIMITS, Cluster, make_configs, tx

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def _until(cond: Callable[[], Awaitable[bool]], timeout_s: float = 30.0) -> None:
    async def poll() -> None:
        while not await cond():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout_s)


async def scrape(http: ClientSession, url: str) -> Samples:
    async with http.get(url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.name.startswith(("medchain_", "process_")), family.name
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def submit(http: ClientSession, url: str, first: int, count: int) -> list[Any]:
    envs = [tx(i) for i in range(first, first + count)]
    body = {"txs": [tx_to_request_json(e) for e in envs]}
    async with http.post(url + "/tx", json=body) as resp:
        assert resp.status == 202, await resp.text()
    return envs


async def events(http: ClientSession, url: str, **params: int) -> dict[str, Any]:
    async with http.get(url + "/events", params={k: str(v) for k, v in params.items()}) as resp:
        assert resp.status == 200, await resp.text()
        doc: dict[str, Any] = await resp.json()
        return doc


async def test_metrics_parse_and_follow_the_cluster(tmp_path: Path) -> None:
    cluster = Cluster(make_configs(tmp_path, consensus=FAST, limits=FAST_LIMITS))
    try:
        for i in range(4):
            await cluster.start(i)
        url = cluster.url(1)
        async with ClientSession() as http:
            before = await scrape(http, url)
            assert value(before, "medchain_up") == 1
            assert value(before, "medchain_node_info", node="1", n="4", f="1") == 1
            envs = await submit(http, url, 7000, 10)  # to a backup: forwarded to the primary

            async def committed() -> bool:
                return all(
                    n.store.is_committed(e.tx_id) for n in cluster.nodes.values() for e in envs
                )

            await _until(committed)
            gc.collect()  # the nodes run in this process: their GC pause timers see it
            after = await scrape(http, url)
            async with http.get(url + "/tx/zz") as resp:
                assert resp.status == 400
            rejected = await scrape(http, url)
    finally:
        await cluster.close()

    def grew(name: str, by: float = 1, **labels: str) -> bool:
        return value(after, name, **labels) - value(before, name, **labels) >= by

    assert grew("medchain_committed_transactions_total", 10)
    assert grew("medchain_committed_blocks_total")
    assert value(after, "medchain_height") >= 1
    assert value(after, "medchain_transactions_accepted_total") == 10
    for kind in ("pre-prepare", "prepare", "commit"):
        assert grew("medchain_messages_received_total", kind=kind), kind
    assert grew("medchain_messages_sent_total", kind="request")
    assert grew("medchain_messages_sent_total", 3, kind="prepare")  # a broadcast, per peer
    assert value(after, "medchain_commit_latency_seconds_count") == 10
    assert value(after, "medchain_commit_latency_seconds_bucket", le="+Inf") == 10
    assert value(after, "medchain_commit_latency_seconds_sum") > 0
    assert value(after, "medchain_consensus_round_duration_seconds_count") >= 1
    assert value(after, "medchain_task_round_duration_seconds_count") >= 1
    assert value(after, "medchain_store_commit_duration_seconds_count") >= 1
    assert value(after, "medchain_store_size_bytes") > 0
    for peer in ("0", "2", "3"):
        assert value(after, "medchain_peer_up", peer=peer) == 1
        assert value(after, "medchain_peer_rtt_seconds", peer=peer) > 0
        verdicts = [
            v
            for (name, labels), v in after.items()
            if name == "medchain_audit_peer_agreement" and ("peer", peer) in labels
        ]
        assert len(verdicts) == len(SEVERITY) and sum(verdicts) == 1  # exactly one verdict
    assert value(after, "medchain_view") == 0
    assert value(after, "medchain_in_view_change") == 0
    assert value(after, "medchain_events_recorded_total") > 0
    assert grew("medchain_gc_pause_seconds_count", generation="2")
    assert value(after, "medchain_gc_pause_seconds_sum", generation="2") > 0
    key = {"route": "/tx/{tx_id}", "code": "400", "error": "bad transaction id"}
    assert value(rejected, "medchain_http_rejections_total", **key) == 1


async def test_events_have_the_documented_shape_and_page_with_next(tmp_path: Path) -> None:
    cluster = Cluster(make_configs(tmp_path, consensus=FAST, limits=FAST_LIMITS))
    try:
        for i in range(4):
            await cluster.start(i)
        url = cluster.url(0)
        async with ClientSession() as http:
            node0 = cluster.nodes[0]
            for k in range(3):
                envs = await submit(http, url, 7100 + 10 * k, 10)

                async def on_chain(envs: list[Any] = envs) -> bool:
                    return all(node0.store.is_committed(e.tx_id) for e in envs)

                await _until(on_chain)
            whole = await events(http, url, limit=5000)
            paged: list[dict[str, Any]] = []
            since = 0
            for _ in range(1000):
                page = await events(http, url, since=since, limit=7)
                if not page["events"]:
                    break
                paged.extend(page["events"])
                since = page["next"]
            for bad in ("limit=0", "limit=5001", "since=-1", "since=x", "limit=1&limit=2"):
                async with http.get(f"{url}/events?{bad}") as resp:
                    assert resp.status == 400, bad
                    assert (await resp.json())["error"] == "bad query parameter"
    finally:
        await cluster.close()
    assert set(whole) == {"node", "now_ms", "next", "dropped", "events"}
    assert whole["node"] == 0 and whole["dropped"] == 0
    assert abs(whole["now_ms"] - time.time() * 1000) < 60_000
    evs = whole["events"]
    for e in evs:
        assert set(e) == {"t_ms", "kind", "view", "seq", "peer", "detail"}
        assert e["kind"] in EVENT_KINDS
        assert isinstance(e["t_ms"], int) and isinstance(e["detail"], str)
    assert [e["t_ms"] for e in evs] == sorted(e["t_ms"] for e in evs)
    commits = [e for e in evs if e["kind"] == "commit"]
    assert [c["seq"] for c in commits] == list(range(1, len(commits) + 1))
    assert sum(int(c["detail"].split()[0]) for c in commits) == 30
    sent = {e["detail"].split()[0] for e in evs if e["kind"] == "msg_out"}
    assert {"pre-prepare", "commit"} <= sent  # node 0 is the primary
    # Paging with next gives every event of the whole read once, in order (and maybe newer).
    assert paged[: len(evs)] == evs


async def test_readyz_drops_during_a_view_change_and_comes_back(tmp_path: Path) -> None:
    consensus = {**FAST, "view_timeout_ms": 800}
    configs = make_configs(tmp_path, consensus=consensus, limits=FAST_LIMITS)
    configs[1] = replace(configs[1], faults=FaultsConfig(enabled=True, seed=1))
    cluster = Cluster(configs)
    try:
        for i in range(4):
            await cluster.start(i)
        # A backup, which waits for the new primary's new-view: a view change starts only on
        # f+1 suspicions, so the new primary (node 1) has the quorum as it joins and installs
        # view 1 at once, and a backup waits one message. Node 1's frames to the backups are
        # delayed so that the wait is long enough to be seen.
        url = cluster.url(2)
        cluster.nodes[1].faults.apply(FaultSpec(Delay(ms=600, peers=frozenset({2, 3}))))
        async with ClientSession() as http:
            async with http.get(url + "/readyz") as resp:
                assert resp.status == 200, await resp.text()
            async with http.get(url + "/healthz") as resp:
                assert resp.status == 200 and (await resp.json())["ok"] is True
            await cluster.stop(0)  # the primary of view 0
            envs = await submit(http, url, 7200, 5)
            seen: list[dict[str, Any]] = []

            async def not_ready() -> bool:
                async with http.get(url + "/readyz") as resp:
                    doc = await resp.json()
                    if resp.status == 503:
                        seen.append(doc)
                    return resp.status == 503

            await _until(not_ready)

            async def ready_again() -> bool:
                async with http.get(url + "/readyz") as resp:
                    return resp.status == 200

            await _until(ready_again)
            node2 = cluster.nodes[2]

            async def on_chain() -> bool:
                return all(node2.store.is_committed(e.tx_id) for e in envs)

            await _until(on_chain)
            evs = (await events(http, url, limit=5000))["events"]
            metrics = await scrape(http, url)
            async with http.get(url + "/healthz") as resp:
                assert resp.status == 200
    finally:
        await cluster.close()
    assert "view change" in seen[0]["reason"] and seen[0]["in_view_change"] is True
    assert seen[0]["ready"] is False
    kinds = [e["kind"] for e in evs]
    assert {"timer", "view_change", "new_view"} <= set(kinds)
    assert kinds.index("view_change") < kinds.index("new_view")
    installed = [e for e in evs if e["kind"] == "new_view"]
    assert installed[-1]["view"] >= 1
    assert any(e["detail"].startswith("view-change") for e in evs if e["kind"] == "msg_out")
    assert value(metrics, "medchain_view") >= 1
    assert value(metrics, "medchain_view_changes_total") >= 1
    assert value(metrics, "medchain_view_timer_fires_total") >= 1
    assert value(metrics, "medchain_peer_up", peer="0") == 0


async def test_readyz_says_why_a_stopped_node_is_not_ready(tmp_path: Path) -> None:
    node = Node(make_configs(tmp_path, consensus=FAST, limits=FAST_LIMITS)[0])
    await node.start()
    await node.stop()
    async with TestClient(TestServer(node.app)) as client:
        resp = await client.get("/readyz")
        assert resp.status == 503
        assert (await resp.json())["reason"] == "consensus task not running"
        resp = await client.get("/healthz")
        assert resp.status == 503
        resp = await client.get("/metrics")
        assert resp.status == 200
        assert "medchain_up 0.0" in await resp.text()


def test_faults_are_recorded_as_events() -> None:
    clock_ms = [5000]
    obs = Observer(
        node_id=1,
        n=4,
        f=1,
        clock=lambda: clock_ms[0],  # type: ignore[arg-type]
        events_max=100,
        events_max_bytes=1 << 20,
        submitted_max=100,
        ready_max_lag_seqs=8,
    )
    now = [0.0]
    layer = FaultLayer(1, 4, enabled=True, seed=1, clock=lambda: now[0])
    layer.listener = obs.on_fault
    a = layer.apply(parse_fault({"kind": "drop", "probability": 0.5, "duration_s": 5}, n=4))
    b = layer.apply(parse_fault({"kind": "pause"}, n=4))
    layer.clear(b.id)
    now[0] = 10.0
    assert layer.active() == []
    got = [(e.kind, e.detail.split(":")[0]) for e in obs.ring.page(0, 10).events]
    assert got == [
        ("fault", f"applied {a.id}"),
        ("fault", f"applied {b.id}"),
        ("fault", f"cleared {b.id}"),
        ("fault", f"expired {a.id}"),
    ]
    assert obs.faults == {"applied": 2, "cleared": 1, "expired": 1}
    assert '"kind":"drop"' in obs.ring.page(0, 1).events[0].detail


@pytest.mark.parametrize("claims", [{2: 500}, {2: 500, 3: 10}])
def test_one_peer_claiming_a_far_seq_does_not_make_a_node_look_behind(
    claims: dict[int, int],
) -> None:
    class R:
        fetch_target = 0
        last_executed = 10

    obs = Observer(
        node_id=1, n=4, f=1, clock=lambda: 0,  # type: ignore[arg-type]
        events_max=10, events_max_bytes=1 << 20, submitted_max=10, ready_max_lag_seqs=8,
    )  # fmt: skip
    obs.peer_seq.update(claims)
    assert obs.lag(R()) == 0  # type: ignore[arg-type]
    obs.peer_seq[0] = 400  # a second peer (f + 1 = 2) there too: we are behind
    assert obs.lag(R()) == 390  # type: ignore[arg-type]


def test_the_mempool_counts_the_bytes_it_holds() -> None:
    from consensus.mempool import Mempool

    pool = Mempool(max_txs=3)
    assert pool.add(b"a", b"x" * 10, 0) and pool.add(b"b", b"y" * 5, 0)
    assert pool.add(b"a", b"x" * 10, 0)  # a duplicate adds nothing
    assert not pool.add(b"c", b"z", 0) or pool.nbytes == 16
    pool.remove([b"a", b"missing"])
    assert pool.nbytes == len(b"z") * (b"c" in pool) + 5
