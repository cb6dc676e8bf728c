"""node/storeguard + node/store: private files, the integrity watch, the voted marker, --wipe,
durable votes, and admin nonces that survive a restart."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from consensus.messages import Prepare
from node.config import NodeLimits
from node.faults.admin import NonceCache
from node.runtime import STORE_FILE, Node
from node.store import Store
from node.storeguard import StoreRefused, StoreWatch, open_store, voted_marker_path
from tests.unit.test_api import make_configs


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _vote(seq: int = 1) -> Prepare:
    return Prepare(view=0, seq=seq, digest=b"\x01" * 32, replica=0, signature=b"\x02" * 64)


def test_store_files_are_private(tmp_path: Path) -> None:
    data = tmp_path / "node0"
    data.mkdir(mode=0o755)
    (data / "audit.sqlite").write_bytes(b"")
    (data / "audit.sqlite").chmod(0o644)
    store = open_store(data, STORE_FILE, node_id=0, vote_log_sync="full", wipe=False)
    try:
        store.save_messages([_vote()])
        assert _mode(data) == 0o700
        for name in (STORE_FILE, f"{STORE_FILE}-wal", f"{STORE_FILE}-shm", "audit.sqlite"):
            assert _mode(data / name) == 0o600, name
    finally:
        store.close()


def test_vote_log_commits_with_synchronous_full(tmp_path: Path) -> None:
    seen: list[int] = []
    store = Store(tmp_path / "db", vote_log_sync="FULL")
    store._db.set_trace_callback(lambda sql: seen.append(1) if "synchronous=FULL" in sql else None)
    try:
        store.save_messages([_vote()])
        assert seen, "the vote log was committed without synchronous=FULL"
        assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # back to NORMAL
    finally:
        store.close()


@pytest.mark.parametrize("damage", ["delete", "truncate", "replace", "header", "wal"])
def test_watch_notices_a_deleted_truncated_or_replaced_database(
    tmp_path: Path, damage: str
) -> None:
    path = tmp_path / "chain.sqlite3"
    store = Store(path)
    store.save_messages([_vote(i) for i in range(1, 200)])
    store._db.execute("PRAGMA wal_checkpoint")
    watch = StoreWatch(path)
    try:
        assert watch.check() is None
        if damage == "delete":
            path.unlink()
        elif damage == "truncate":
            os.truncate(path, 1024)
        elif damage == "replace":
            shutil.copy(path, tmp_path / "copy")
            os.replace(tmp_path / "copy", path)
        elif damage == "header":
            with path.open("r+b") as f:
                f.write(b"garbage garbage!")
        else:
            Path(f"{path}-wal").unlink()
        problem = watch.check()
        assert problem is not None and "\n" not in problem
    finally:
        watch.close()
        store.close()


def test_a_node_that_voted_refuses_an_empty_or_damaged_store_unless_wiped(tmp_path: Path) -> None:
    data = tmp_path / "node0"
    store = open_store(data, STORE_FILE, node_id=0, vote_log_sync="full", wipe=False)
    marker = voted_marker_path(data)
    assert not marker.exists()
    store.save_messages([_vote()])
    assert marker.exists() and _mode(marker) == 0o600
    store.close()

    shutil.rmtree(data)  # the disk lost it
    with pytest.raises(StoreRefused, match="--wipe"):
        open_store(data, STORE_FILE, node_id=0, vote_log_sync="full", wipe=False)
    data.mkdir()
    Store(data / STORE_FILE).close()  # a blank database where the old one was
    with pytest.raises(StoreRefused, match="empty"):
        open_store(data, STORE_FILE, node_id=0, vote_log_sync="full", wipe=False)
    (data / STORE_FILE).write_bytes(b"not a database at all" * 100)
    for suffix in ("-wal", "-shm"):
        Path(f"{data / STORE_FILE}{suffix}").unlink(missing_ok=True)
    with pytest.raises(StoreRefused, match="damaged"):
        open_store(data, STORE_FILE, node_id=0, vote_log_sync="full", wipe=False)

    wiped = open_store(data, STORE_FILE, node_id=0, vote_log_sync="full", wipe=True)
    try:
        assert wiped.head()[0] == 0 and wiped.message_count() == 0
        assert marker.exists()  # it will vote again: the marker stays
    finally:
        wiped.close()


async def test_node_stops_and_health_is_503_when_its_database_is_deleted(tmp_path: Path) -> None:
    node = Node(make_configs(tmp_path, limits=NodeLimits(store_watch_ms=50))[0])
    await node.start()
    client = TestClient(TestServer(node.app))
    await client.start_server()
    try:
        assert (await client.get("/health")).status == 200
        (node.config.data_dir / STORE_FILE).unlink()
        for _ in range(100):
            if not node.healthy:
                break
            await asyncio.sleep(0.05)
        resp = await client.get("/health")
        assert resp.status == 503
        assert node.fatal is not None and "deleted" in str(node.fatal)
    finally:
        await client.close()
        await node.stop()


def test_admin_nonces_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "node0.admin-nonces"
    first = NonceCache(path=path)
    assert first.add(b"\x01" * 16, now_ms=1_000) is None
    again = NonceCache(path=path)  # the node restarted
    assert again.add(b"\x01" * 16, now_ms=2_000) == "replayed"
    assert again.add(b"\x02" * 16, now_ms=2_000) is None
    assert _mode(path) == 0o600
    path.write_text(path.read_text() + "garbage line\nzz 5\n")
    later = NonceCache(path=path)  # malformed lines are skipped, expired ones forgotten
    assert later.add(b"\x02" * 16, now_ms=3_000) == "replayed"
    assert NonceCache(path=path).add(b"\x01" * 16, now_ms=10**9) is None


async def test_a_voted_node_refuses_its_lost_store_then_rejoins_with_wipe(tmp_path: Path) -> None:
    from aiohttp import ClientSession, web

    from node.api import msgpack_tx_body
    from tests.unit.test_api import FAST, FAST_LIMITS, Cluster, _at_least, _until, tx

    cluster = Cluster(make_configs(tmp_path, consensus=FAST, limits=FAST_LIMITS))
    try:
        for i in range(4):
            await cluster.start(i)
        async with ClientSession() as http:
            envs = [tx(i) for i in range(3000, 3010)]
            async with http.post(
                cluster.url(0) + "/tx",
                data=msgpack_tx_body(envs),
                headers={"Content-Type": "application/msgpack"},
            ) as resp:
                assert resp.status == 202
            last = envs[-1].tx_id.hex()
            async with http.get(f"{cluster.url(3)}/tx/{last}?wait_ms=15000") as resp:
                assert (await resp.json())["status"] == "committed"
        height = cluster.nodes[0].height
        config = cluster.configs[3]
        await cluster.stop(3)
        assert voted_marker_path(config.data_dir).exists()
        shutil.rmtree(config.data_dir)  # the disk lost node 3's store
        with pytest.raises(StoreRefused, match="--wipe"):
            await Node(config).start()
        node = Node(config, wipe=True)
        await node.start()
        runner = web.AppRunner(node.app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", config.port).start()
        cluster.nodes[3], cluster.runners[3] = node, runner
        await _until(lambda: _at_least(node, height))  # rejoined by state transfer
    finally:
        await cluster.close()
