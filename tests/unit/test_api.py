"""node/api + node/runtime: the client HTTP API against real nodes, in process.

A single node whose peers are unreachable still serves status and rejects bad input with the
right 4xx and a JSON body naming the problem. A four-node cluster in one event loop (real
aiohttp servers on 127.0.0.1) commits transactions end to end, answers long polls, serves
blocks, catches a late node up by state transfer, and survives a restart.
"""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient, TestServer

from node.api import msgpack_tx_body, tx_to_request_json
from node.config import ClientEntry, NodeConfig, NodeLimits, ReplicaEntry, make_node_config
from node.crypto import generate_keypair, save_key
from node.ledger import TxEnvelope, encode_tx, make_transaction
from node.runtime import Node

HOSPITAL = "hospital-0"
CLIENT_SECRET, CLIENT_PUBLIC = generate_keypair(b"\x64" * 32)
STRANGER_SECRET, _ = generate_keypair(b"\x65" * 32)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_configs(
    tmp_path: Path,
    n: int = 4,
    *,
    consensus: dict[str, int] | None = None,
    limits: NodeLimits | None = None,
) -> list[NodeConfig]:
    ports = [_free_port() for _ in range(n)]
    keys = [generate_keypair(bytes([i + 1]) * 32) for i in range(n)]
    replicas = [ReplicaEntry(i, f"http://127.0.0.1:{ports[i]}", keys[i][1]) for i in range(n)]
    configs = []
    for i in range(n):
        key_file = tmp_path / "keys" / f"node{i}.key"
        key_file.parent.mkdir(parents=True, exist_ok=True)
        if not key_file.exists():
            save_key(key_file, *keys[i])
        configs.append(
            make_node_config(
                node_id=i,
                host="127.0.0.1",
                port=ports[i],
                data_dir=tmp_path / f"node{i}",
                key_file=key_file,
                replicas=replicas,
                clients=[ClientEntry(HOSPITAL, CLIENT_PUBLIC)],
                consensus=consensus,
                limits=limits,
                access_open=True,  # these tests are about the API; tests/unit/test_access.py
            )
        )
    return configs


def tx(i: int, *, secret: bytes = CLIENT_SECRET, hospital: str = HOSPITAL) -> TxEnvelope:
    return make_transaction(
        secret, hospital, f"patient-{i}", "lab-result", f"payload {i}".encode(), record_id=f"r{i}"
    )


@pytest.fixture
async def single(tmp_path: Path) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """Node 0 of a 4-node consortium whose peers are not running."""
    limits = NodeLimits(max_body_bytes=256 * 1024, max_batch_request_txs=50)
    node = Node(make_configs(tmp_path, consensus={"mempool_max_txs": 8}, limits=limits)[0])
    await node.start()
    client = TestClient(TestServer(node.app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()
        await node.stop()


Client = TestClient[web.Request, web.Application]


async def _json(resp: Any) -> dict[str, Any]:
    assert resp.content_type == "application/json", await resp.text()
    data = await resp.json()
    assert isinstance(data, dict)
    return data


async def post_json(client: Client, body: object) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/tx", json=body)
    return resp.status, await _json(resp)


async def post_raw(client: Client, body: bytes, ctype: str) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/tx", data=body, headers={"Content-Type": ctype})
    return resp.status, await _json(resp)


async def _still_serving(client: Client) -> None:
    resp = await client.get("/status")
    assert resp.status == 200
    assert (await _json(resp))["healthy"] is True


# ---------------------------------------------------------------------------------------------
# single node, peers unreachable


async def test_status_and_health_with_unreachable_peers(single: Client) -> None:
    resp = await single.get("/health")
    assert resp.status == 200 and (await _json(resp)) == {"ok": True, "node": 0}
    status = await _json(await single.get("/status"))
    assert status["node"] == 0
    assert status["view"] == 0 and status["primary"] == 0
    assert status["height"] == 0
    assert len(status["head_hash"]) == 64
    assert status["stable_checkpoint"] == 0
    assert status["mempool_size"] == 0
    assert [p["id"] for p in status["peers"]] == [1, 2, 3]
    assert {p["state"] for p in status["peers"]} <= {"idle", "down"}


async def test_valid_json_tx_is_accepted_and_pending(single: Client) -> None:
    env = tx(1)
    status, body = await post_json(single, tx_to_request_json(env))
    assert status == 202
    assert body == {"accepted": [env.tx_id.hex()], "rejected": []}
    got = await _json(await single.get(f"/tx/{env.tx_id.hex()}"))
    assert got == {"tx_id": env.tx_id.hex(), "status": "pending"}
    # Resubmitting is idempotent.
    status, body = await post_json(single, {"txs": [tx_to_request_json(env)]})
    assert status == 202 and body["accepted"] == [env.tx_id.hex()]


async def test_msgpack_single_and_batch(single: Client) -> None:
    one = tx(2)
    status, body = await post_raw(single, encode_tx(one), "application/msgpack")
    assert status == 202 and body["accepted"] == [one.tx_id.hex()]
    batch = [tx(3), tx(4)]
    status, body = await post_raw(single, msgpack_tx_body(batch), "application/msgpack")
    assert status == 202 and body["accepted"] == [e.tx_id.hex() for e in batch]


async def test_partial_batch_reports_rejected_indexes(single: Client) -> None:
    good = tx(5)
    bad_sig = dict(tx_to_request_json(tx(6)), signature="00" * 64)
    status, body = await post_json(
        single, {"txs": [bad_sig, tx_to_request_json(good), tx_to_request_json(good)]}
    )
    assert status == 202
    assert body["accepted"] == [good.tx_id.hex()]
    assert body["rejected"] == [
        {"index": 0, "error": "bad signature"},
        {"index": 2, "error": "duplicate transaction in request"},
    ]


def _field(name: str, value: object) -> dict[str, Any]:
    return dict(tx_to_request_json(tx(7)), **{name: value})


@pytest.mark.parametrize(
    ("body", "ctype", "status", "error", "detail_words"),
    [
        (b"\xc1\x00garbage", "application/msgpack", 400, "malformed msgpack", "not valid msgpack"),
        (msgpack.packb({"a": 1}), "application/msgpack", 400, "malformed msgpack", "map"),
        (msgpack.packb([1, 2, 3]), "application/msgpack", 400, "no transaction accepted", "tx"),
        (msgpack.packb(["text"]), "application/msgpack", 400, "no transaction accepted", "bin"),
        (b"{not json", "application/json", 400, "malformed JSON", "Expecting"),
        (b"[1, 2]", "application/json", 400, "malformed request", "transaction object"),
        (b'{"txs": 5}', "application/json", 400, "malformed request", '"txs"'),
        (b'{"txs": []}', "application/json", 400, "malformed request", "no transactions"),
        (b'{"txs": [], "x": 1}', "application/json", 400, "malformed request", "only the key"),
        (b"hello", "text/plain", 415, "unsupported content type", "application/json"),
    ],
)
async def test_malformed_bodies(
    single: Client, body: bytes, ctype: str, status: int, error: str, detail_words: str
) -> None:
    got_status, got = await post_raw(single, body, ctype)
    assert got_status == status
    assert got["error"] == error
    assert detail_words in str(got["detail"])
    await _still_serving(single)


@pytest.mark.parametrize(
    ("tx_json", "status", "words"),
    [
        (_field("record_id", 5), 400, "record_id must be a string"),
        (_field("timestamp_ms", "soon"), 400, "timestamp_ms"),
        (_field("timestamp_ms", -1), 400, "timestamp_ms"),
        (_field("nonce", "zz"), 400, "nonce is not valid hex"),
        (_field("client_key", "ab"), 400, "client_key must be 32 bytes"),
        (_field("payload", "***"), 400, "payload is not valid base64"),
        (_field("colour", "red"), 400, "unknown field 'colour'"),
        (_field("record_id", "\ud800"), 400, "cannot encode"),
        (_field("payload", base64.b64encode(b"x" * 65_537).decode()), 422, "limit 65536"),
        ({k: v for k, v in tx_to_request_json(tx(8)).items() if k != "nonce"}, 400, "missing"),
        (_field("signature", "11" * 64), 422, "bad signature"),
        (_field("payload", base64.b64encode(b"tampered").decode()), 422, "payload hash"),
        (_field("tx_id", "00" * 32), 422, "tx_id does not match"),
        (_field("patient", ""), 422, "patient is empty"),
        (tx_to_request_json(tx(9, secret=STRANGER_SECRET)), 422, "unknown client key"),
        (tx_to_request_json(tx(10, hospital="hospital-9")), 422, "not registered for hospital"),
    ],
)
async def test_invalid_transactions(
    single: Client, tx_json: dict[str, Any], status: int, words: str
) -> None:
    got_status, got = await post_json(single, tx_json)
    assert got_status == status
    assert got["error"] == "no transaction accepted"
    assert got["accepted"] == []
    assert words in got["rejected"][0]["error"]
    assert words in got["detail"]
    await _still_serving(single)


async def test_size_limits(single: Client) -> None:
    status, body = await post_raw(single, b"x" * (256 * 1024 + 1), "application/json")
    assert status == 413 and body["error"] == "body too large"

    async def chunks() -> AsyncIterator[bytes]:  # chunked: no Content-Length to check upfront
        for _ in range(300):
            yield b"x" * 1024

    resp = await single.post("/tx", data=chunks(), headers={"Content-Type": "application/json"})
    assert resp.status == 413 and (await _json(resp))["error"] == "body too large"
    many = msgpack_tx_body([tx(i) for i in range(51)])
    status, body = await post_raw(single, many, "application/msgpack")
    assert status == 413 and body["error"] == "too many transactions"
    await _still_serving(single)


async def test_mempool_full_is_503_with_retry_after(single: Client) -> None:
    status, body = await post_raw(
        single, msgpack_tx_body([tx(i) for i in range(100, 110)]), "application/msgpack"
    )
    assert status == 202
    assert len(body["accepted"]) == 8
    assert [r["error"] for r in body["rejected"]] == ["mempool full"] * 2
    resp = await single.post("/tx", json=tx_to_request_json(tx(200)))
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert (await _json(resp))["error"] == "overloaded"
    await _still_serving(single)


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        ("/tx/abc", 400, "bad transaction id"),
        ("/tx/" + "zz" * 32, 400, "bad transaction id"),
        ("/tx/" + "00" * 32, 404, "unknown transaction"),
        ("/tx/" + "00" * 32 + "?wait_ms=x", 400, "bad query parameter"),
        ("/tx/" + "00" * 32 + "?wait_ms=-5", 400, "bad query parameter"),
        ("/tx/" + "00" * 32 + "?wait_ms=30", 404, "unknown transaction"),
        ("/blocks/1", 404, "no such block"),
        ("/blocks/0", 404, "no such block"),
        ("/blocks/abc", 400, "bad height"),
        ("/blocks?limit=101", 400, "bad query parameter"),
        ("/blocks?from=0", 400, "bad query parameter"),
        ("/blocks?payload=maybe", 400, "bad query parameter"),
        ("/blocks?txs=maybe", 400, "bad query parameter"),
        ("/blocks?txs=0&payload=1", 400, "bad query parameter"),
        ("/blocks?txs=ids&limit=1001", 400, "bad query parameter"),
        ("/blocks/1?txs=0", 404, "no such block"),
        ("/blocks/1?txs=x", 400, "bad query parameter"),
        ("/nowhere", 404, "Not Found"),
    ],
)
async def test_get_errors_are_json(single: Client, path: str, status: int, error: str) -> None:
    resp = await single.get(path)
    assert resp.status == status
    body = await _json(resp)
    assert body["error"] == error
    assert "detail" in body


async def test_wrong_method_is_json_405(single: Client) -> None:
    resp = await single.delete("/status")
    assert resp.status == 405
    assert (await _json(resp))["error"] == "Method Not Allowed"


async def test_empty_blocks_page(single: Client) -> None:
    body = await _json(await single.get("/blocks"))
    assert body == {"blocks": [], "height": 0, "next": None}
    for form in ("0", "ids"):
        body = await _json(await single.get(f"/blocks?txs={form}&limit=1000"))
        assert body == {"blocks": [], "height": 0, "next": None}


async def test_peer_endpoint_rejects_unknown_and_unauthenticated_senders(single: Client) -> None:
    for sender, status in (("9", 403), ("1", 401)):
        resp = await single.post(
            "/peer/msgs",
            data=msgpack.packb([]),
            headers={"X-Medchain-From": sender, "Content-Type": "application/msgpack"},
        )
        assert resp.status == status
        assert (await _json(resp))["error"] == "peer not authenticated"


# ---------------------------------------------------------------------------------------------
# an in-process cluster

FAST = {
    "batch_timeout_ms": 5,
    "view_timeout_ms": 4000,
    "fetch_retry_ms": 100,
    "heartbeat_ms": 100,
    "retransmit_ms": 200,
    "checkpoint_interval": 4,
    "watermark_window": 16,
}
FAST_LIMITS = NodeLimits(peer_backoff_min_ms=20, peer_backoff_max_ms=200)


class Cluster:
    def __init__(self, configs: list[NodeConfig]) -> None:
        self.configs = configs
        self.nodes: dict[int, Node] = {}
        self.runners: dict[int, web.AppRunner] = {}

    async def start(self, i: int) -> Node:
        node = Node(self.configs[i])
        await node.start()
        runner = web.AppRunner(node.app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.configs[i].port).start()
        self.nodes[i], self.runners[i] = node, runner
        return node

    async def stop(self, i: int) -> None:
        runner = self.runners.pop(i)
        node = self.nodes.pop(i)
        await runner.cleanup()
        await node.stop()

    async def close(self) -> None:
        for i in list(self.nodes):
            await self.stop(i)

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.configs[i].port}"


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(make_configs(tmp_path, consensus=FAST, limits=FAST_LIMITS))
    try:
        yield c
    finally:
        await c.close()


async def _until(cond: Callable[[], Awaitable[bool]], timeout_s: float = 20.0) -> None:
    async def poll() -> None:
        while not await cond():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout_s)


async def test_cluster_commits_catches_up_and_restarts(cluster: Cluster) -> None:
    for i in range(3):  # a quorum (2f+1 = 3) without node 3
        await cluster.start(i)
    envs = [tx(i) for i in range(1000, 1010)]
    async with ClientSession() as http:
        # Submitted to a backup: the core forwards it to the primary.
        async with http.post(
            cluster.url(1) + "/tx",
            data=msgpack_tx_body(envs),
            headers={"Content-Type": "application/msgpack"},
        ) as resp:
            assert resp.status == 202, await resp.text()
            assert len((await resp.json())["accepted"]) == 10
        # Long poll on another node returns once committed.
        for env in envs:
            async with http.get(f"{cluster.url(2)}/tx/{env.tx_id.hex()}?wait_ms=15000") as resp:
                body = await resp.json()
                assert resp.status == 200
                assert body["status"] == "committed", body
        height = cluster.nodes[2].height
        assert height >= 1
        async with http.get(f"{cluster.url(0)}/blocks?from=1&limit=100&payload=1") as resp:
            page = await resp.json()
        on_chain = {t["tx_id"] for b in page["blocks"] for t in b["txs"]}
        assert on_chain == {e.tx_id.hex() for e in envs}
        assert page["next"] is None
        first = page["blocks"][0]
        assert len(first["certificate"]) >= 3
        # The light forms: the same headers, tx ids only or nothing of the transactions.
        async with http.get(f"{cluster.url(0)}/blocks?from=1&limit=1000&txs=ids") as resp:
            light = await resp.json()
        assert light["next"] is None and len(light["blocks"]) == len(page["blocks"])
        for full, ids in zip(page["blocks"], light["blocks"], strict=True):
            assert ids["tx_ids"] == [t["tx_id"] for t in full["txs"]]
            assert {k: v for k, v in ids.items() if k != "tx_ids"} == {
                k: v for k, v in full.items() if k != "txs"
            }
        async with http.get(f"{cluster.url(0)}/blocks/{first['height']}?txs=0") as resp:
            header = await resp.json()
        assert header == {k: v for k, v in first.items() if k != "txs"}

        # Node 3 starts late and catches up by state transfer from the others' stores.
        late = await cluster.start(3)
        await _until(lambda: _at_least(late, height))
        # Certificates may hold different 2f+1 commits; the chain (hashes) must be the same.
        mine, theirs = late.store.get_block(height), cluster.nodes[0].store.get_block(height)
        assert mine is not None and theirs is not None
        assert mine.block_hash == theirs.block_hash

        # Restart node 2: it comes back from its store with the same chain.
        head = cluster.nodes[2].store.head()
        await cluster.stop(2)
        restarted = await cluster.start(2)
        assert restarted.store.head()[0] >= head[0]
        assert restarted.replica.last_executed == restarted.store.head()[0]
        more = tx(2000)
        async with http.post(cluster.url(2) + "/tx", json=tx_to_request_json(more)) as resp:
            assert resp.status == 202
        async with http.get(f"{cluster.url(3)}/tx/{more.tx_id.hex()}?wait_ms=15000") as resp:
            assert (await resp.json())["status"] == "committed"
        async with http.get(cluster.url(1) + "/status") as resp:
            status = await resp.json()
        assert {p["state"] for p in status["peers"]} == {"up"}
        assert status["counters"]["committed_txs"] == 11


async def _at_least(node: Node, height: int) -> bool:
    return node.store.head()[0] >= height


# ---------------------------------------------------------------------------------------------
# runtime behaviour


async def test_persist_happens_before_send(tmp_path: Path) -> None:
    """Every signed message the node sends was saved to its store earlier in the round."""
    node = Node(make_configs(tmp_path, consensus=FAST)[0])
    await node.start()
    order: list[tuple[str, object]] = []
    store, transport = node.store, node.transport
    real_save, real_send = store.save_messages, transport.send

    def save(msgs: Any, frames: Any = None) -> None:
        order.extend(("persist", m) for m in msgs)
        real_save(msgs, frames)

    def send(dest: int | None, msg: Any, frame: Any = None) -> None:
        order.append(("send", msg))
        real_send(dest, msg, frame)

    store.save_messages = save  # type: ignore[method-assign]
    transport.send = send  # type: ignore[method-assign]
    try:
        refused = await node.submit([tx(1).tx_id], [encode_tx(tx(1))])
        assert refused == {}

        async def proposed() -> bool:
            return any(kind == "send" and type(m).__name__ == "PrePrepare" for kind, m in order)

        await _until(proposed)
        persisted: set[int] = set()
        for kind, msg in order:
            if kind == "persist":
                persisted.add(id(msg))
            elif hasattr(msg, "signature") and getattr(msg, "replica", None) == 0:
                assert id(msg) in persisted, f"sent before persisted: {msg}"
    finally:
        await node.stop()


async def test_core_failure_stops_the_node_but_not_the_api(tmp_path: Path) -> None:
    node = Node(make_configs(tmp_path)[0])
    await node.start()
    client = TestClient(TestServer(node.app))
    await client.start_server()
    try:

        def broken(event: Any, now_ms: int) -> Any:
            raise RuntimeError("injected core bug")

        node.replica.step = broken  # type: ignore[method-assign]
        status, body = await post_json(client, tx_to_request_json(tx(1)))
        assert status == 503 and body["error"] == "overloaded"
        assert isinstance(node.fatal, RuntimeError)
        resp = await client.get("/health")
        assert resp.status == 503 and (await _json(resp))["ok"] is False
        status, body = await post_json(client, tx_to_request_json(tx(2)))
        assert status == 503
    finally:
        await client.close()
        await node.stop()


@pytest.mark.integration
def test_run_node_process_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from node.configwrite import write_config

    config = make_configs(tmp_path)[0]
    path = tmp_path / "node0.toml"
    write_config(path, config)
    code = "import sys; from node.main import run_node; sys.exit(run_node(sys.argv[1]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(path)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, "node exited during startup"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{config.port}/health", timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "node did not answer /health"
                time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err.decode()
        lines = [line for line in err.decode().splitlines() if line.strip()]
        assert lines and all(" node0 " in line for line in lines), lines
        assert any("stopped" in line for line in lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
