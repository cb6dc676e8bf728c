"""A transaction a node acknowledged (HTTP 202) survives that node's restart before it commits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import ClientSession

from node.api import msgpack_tx_body
from tests.unit.test_api import FAST, FAST_LIMITS, Cluster, _until, make_configs, tx


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(make_configs(tmp_path, consensus=FAST, limits=FAST_LIMITS))
    try:
        yield c
    finally:
        await c.close()


async def test_accepted_transactions_survive_a_restart_before_commit(cluster: Cluster) -> None:
    envs = [tx(i) for i in range(3000, 3005)]
    node0 = await cluster.start(0)  # alone: no quorum, nothing can commit
    async with ClientSession() as http:
        async with http.post(
            cluster.url(0) + "/tx",
            data=msgpack_tx_body(envs),
            headers={"Content-Type": "application/msgpack"},
        ) as resp:
            assert resp.status == 202, await resp.text()
        assert node0.height == 0
        await cluster.stop(0)  # the mempool is gone with the process
        for i in range(4):
            await cluster.start(i)
        for env in envs:
            url = f"{cluster.url(3)}/tx/{env.tx_id.hex()}?wait_ms=15000"
            async with http.get(url) as resp:
                body = await resp.json()
                assert body["status"] == "committed", body
    node = cluster.nodes[0]
    await _until(lambda: _height_at_least(node, 1))
    assert node.store.load_pending(100) == []


async def _height_at_least(node: object, h: int) -> bool:
    return getattr(node, "height", 0) >= h


async def test_a_node_whose_backlog_is_too_old_answers_503_before_checking_signatures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Admission control: alone (nothing commits), the node takes a first batch; once that
    has waited admission_max_age_ms, POST /tx gets 503 + Retry-After, counted by reason, and
    no signature of the refused request is checked (the node spends nothing on it)."""
    consensus = {**FAST, "admission_max_age_ms": 200}
    c = Cluster(make_configs(tmp_path, consensus=consensus, limits=FAST_LIMITS))
    try:
        node0 = await c.start(0)
        headers = {"Content-Type": "application/msgpack"}
        async with ClientSession() as http:
            body = msgpack_tx_body([tx(i) for i in range(4000, 4003)])
            async with http.post(c.url(0) + "/tx", data=body, headers=headers) as resp:
                assert resp.status == 202, await resp.text()
            await _until(lambda: _older_than(node0, 250))
            checked: list[object] = []
            admit = node0.ledger_app.admit
            monkeypatch.setattr(
                node0.ledger_app, "admit", lambda *a: checked.append(a) or admit(*a)
            )
            body = msgpack_tx_body([tx(i) for i in range(4010, 4012)])
            async with http.post(c.url(0) + "/tx", data=body, headers=headers) as resp:
                assert resp.status == 503, await resp.text()
                assert resp.headers["Retry-After"]
                assert (await resp.json())["error"] == "overloaded"
        assert checked == []
        assert node0.counters.overloaded.snapshot() == {"backlog too old": 2}
        assert node0.status()["counters"]["overloaded"] == {"backlog too old": 2}  # type: ignore[index]
    finally:
        await c.close()


async def _older_than(node: object, ms: int) -> bool:
    replica = node.replica  # type: ignore[attr-defined]
    oldest = replica.mempool.oldest_ms()
    return oldest is not None and node.clock() - oldest > ms  # type: ignore[attr-defined]
