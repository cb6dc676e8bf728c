"""The fault layer composed around a node: the faulty transport, the served-block middleware,
the pause gate. A disabled layer composes nothing in."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from pathlib import Path
from typing import Any

import msgpack
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from consensus.messages import Message, Prepare
from node.codec import encode_message
from node.config import NodeLimits
from node.crypto import NodeCrypto, ReplicaKeys, generate_keypair
from node.faults import FaultLayer, FaultsConfig, parse_fault
from node.faults.peer import FaultyTransport
from node.faults.served import served_blocks_middleware
from node.faults.wiring import install_api_faults, make_transport, pause_gate
from node.peerauth import PeerAuth
from node.runtime import Node
from node.transport import PEER_PATH, Transport
from tests.unit.test_api import make_configs

KEYS = [generate_keypair(bytes([0x40 + i]) * 32) for i in range(4)]
REPLICAS = ReplicaKeys([pub for _, pub in KEYS])
LIMITS = NodeLimits(peer_backoff_min_ms=1000, peer_backoff_max_ms=2000, peer_timeout_ms=2000)


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _prepare(seq: int = 1) -> Prepare:
    return Prepare(view=0, seq=seq, digest=b"d" * 32, replica=0, signature=b"s" * 64)


class Inbox:
    def __init__(self) -> None:
        self.got: list[tuple[int, Message]] = []

    def __call__(self, sender: int, msg: Message, frame: bytes) -> bool:
        self.got.append((sender, msg))
        return True


def _layer(enabled: bool = True) -> FaultLayer:
    return FaultLayer(0, 4, enabled=enabled, seed=3)


def _apply(fl: FaultLayer, **fault: Any) -> int:
    return fl.apply(parse_fault(fault, n=4)).id


def _auth(i: int) -> PeerAuth:
    return PeerAuth(
        self_id=i, replicas=REPLICAS, sign=NodeCrypto(KEYS[i][0], REPLICAS).sign, tls=False
    )


def _transport(fl: FaultLayer, inbox: Inbox) -> Transport:
    peers = {i: _dead_url() for i in (1, 2, 3)}
    return make_transport(
        fl,
        lambda data: b"\x01" * 64,
        self_id=0,
        peers=peers,
        limits=LIMITS,
        deliver=inbox,
        auth=_auth(0),
    )


def test_only_an_enabled_layer_wraps_the_transport() -> None:
    assert type(_transport(_layer(enabled=False), Inbox())) is Transport
    assert isinstance(_transport(_layer(), Inbox()), FaultyTransport)


async def test_faulty_transport_applies_send_decisions_per_peer() -> None:
    fl = _layer()
    t = _transport(fl, Inbox())
    await t.start()
    try:
        queued = lambda: [t.link(i).queued for i in (1, 2, 3)]  # noqa: E731
        t.send(None, _prepare(1))
        assert queued() == [1, 1, 1]
        drop = _apply(fl, kind="drop", probability=1.0, peers=[2])
        t.send(None, _prepare(2))
        assert queued() == [2, 1, 2] and fl.counters["drop_out"] == 1
        fl.clear(drop)
        _apply(fl, kind="duplicate", probability=1.0, peers=[3])
        t.send(3, _prepare(3))
        assert queued() == [2, 1, 4]
        fl.clear()
        _apply(fl, kind="byzantine", mode="silent")
        t.send(None, _prepare(4))
        assert queued() == [2, 1, 4]
        fl.clear()
        _apply(fl, kind="delay", ms=20)
        t.send(1, _prepare(5))
        assert queued() == [2, 1, 4]
        await asyncio.sleep(0.2)
        assert queued() == [3, 1, 4]  # released after its delay
        t.send(7, _prepare(6))
        assert t.status()["send_errors"] == {"unknown_destination": 1}
    finally:
        await t.stop()


async def test_faulty_transport_drops_received_frames_before_decoding() -> None:
    fl = _layer()
    inbox = Inbox()
    t = _transport(fl, inbox)
    app = web.Application()
    t.add_routes(app)
    body = msgpack.packb([encode_message(_prepare(1)), 42], use_bin_type=True)
    async with TestClient(TestServer(app)) as client:

        async def post(sender: int) -> None:
            resp = await client.post(
                PEER_PATH,
                data=body,
                headers={**_auth(sender).headers(0, body), "Content-Type": "application/msgpack"},
            )
            assert resp.status == 204

        _apply(fl, kind="partition", groups=[[0, 1]])
        await post(2)
        assert inbox.got == []
        assert t.status()["dropped_frames"] == {"fault_injected": 1, "frame_not_bytes": 1}
        assert t.status()["received_frames"] == 0 and fl.counters["partition_in"] == 1
        await post(1)
        assert inbox.got == [(1, _prepare(1))]


def _block(height: int) -> dict[str, Any]:
    return {"height": height, "timestamp_ms": 5, "txs": [{"tx_id": "ab", "payload_hash": "00ff"}]}


def _block_app(fl: FaultLayer) -> web.Application:
    async def one(request: web.Request) -> web.Response:
        height = int(request.match_info["height"])
        if height > 3:
            return web.json_response({"error": "no such block", "detail": height}, status=404)
        return web.json_response(_block(height))

    async def page(request: web.Request) -> web.Response:
        return web.json_response({"blocks": [_block(1), _block(2)], "height": 2, "next": None})

    async def status(request: web.Request) -> web.Response:
        return web.json_response(_block(9))

    app = web.Application(middlewares=[served_blocks_middleware(fl)])
    app.router.add_get("/blocks/{height}", one)
    app.router.add_get("/blocks", page)
    app.router.add_get("/status", status)
    return app


async def test_served_blocks_are_altered_only_in_alter_blocks_mode() -> None:
    fl = _layer()
    async with TestClient(TestServer(_block_app(fl))) as client:

        async def get(path: str) -> tuple[int, Any]:
            resp = await client.get(path)
            return resp.status, await resp.json()

        assert await get("/blocks/1") == (200, _block(1))
        _apply(fl, kind="byzantine", mode="alter_blocks")
        status, doc = await get("/blocks/1")
        assert status == 200 and doc["txs"][0]["payload_hash"] == "ffff"
        _, doc = await get("/blocks")
        assert [b["txs"][0]["payload_hash"] for b in doc["blocks"]] == ["ffff", "ffff"]
        assert doc["height"] == 2
        assert await get("/blocks/9") == (404, {"error": "no such block", "detail": 9})
        assert await get("/status") == (200, _block(9))  # not a block route


async def test_disabled_layer_adds_no_middleware_but_admin_routes_answer_404() -> None:
    app = web.Application()
    install_api_faults(app, _layer(enabled=False), None)
    assert list(app.middlewares) == []
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/admin/fault", json={})
        assert resp.status == 404 and "enabled = true" in (await resp.json())["detail"]
    enabled = web.Application()
    install_api_faults(enabled, _layer(), None)
    assert len(enabled.middlewares) == 1


async def test_pause_gate_holds_while_paused_and_is_open_without_faults() -> None:
    await asyncio.wait_for(pause_gate(_layer(enabled=False))(), 1.0)
    fl = _layer()
    gate = pause_gate(fl)
    await asyncio.wait_for(gate(), 1.0)
    pause = _apply(fl, kind="pause")
    waiter = asyncio.create_task(gate())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    fl.clear(pause)
    await asyncio.wait_for(waiter, 5.0)


async def test_a_node_composes_faults_only_when_its_config_enables_them(tmp_path: Path) -> None:
    config = make_configs(tmp_path)[0]
    plain = Node(config)
    assert type(plain.transport) is Transport
    await plain.start()
    try:
        assert plain.status()["faults"] == {
            "enabled": False,
            "paused": False,
            "active": [],
            "held_frames": 0,
            "counters": {},
        }
    finally:
        await plain.stop()
    faulty = Node(dataclasses.replace(config, faults=FaultsConfig(enabled=True, seed=1)))
    assert isinstance(faulty.transport, FaultyTransport)
    assert faulty.faults.enabled and faulty.faults.status()["enabled"]
