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
