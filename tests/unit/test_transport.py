"""node/transport: two in-process transports over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
import msgpack
import pytest
from aiohttp import web

from consensus.messages import Commit, FetchRequest, Message, Prepare
from node.codec import encode_message
from node.config import NodeLimits
from node.crypto import NodeCrypto, ReplicaKeys, generate_keypair
from node.peerauth import AUTH_HEADER, PeerAuth
from node.transport import FROM_HEADER, PEER_PATH, Transport, reason_key

LIMITS = NodeLimits(peer_backoff_min_ms=10, peer_backoff_max_ms=50, peer_timeout_ms=2000)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prepare(seq: int, replica: int = 0) -> Prepare:
    return Prepare(
        view=0, seq=seq, digest=bytes([seq % 256]) * 32, replica=replica, signature=b"s" * 64
    )


@dataclass
class Peer:
    """A transport with its own aiohttp server; ``got`` collects delivered messages."""

    node_id: int
    port: int
    transport: Transport
    runner: web.AppRunner | None = None
    got: list[tuple[int, Message]] = field(default_factory=list)
    accept: bool = True

    def deliver(self, sender: int, msg: Message, frame: bytes) -> bool:
        assert len(frame) > 0
        if not self.accept:
            return False
        self.got.append((sender, msg))
        return True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self) -> None:
        app = web.Application()
        self.transport.add_routes(app)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def close(self) -> None:
        await self.transport.stop()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


KEYS = [generate_keypair(bytes([0x30 + i]) * 32) for i in range(4)]
REPLICAS = ReplicaKeys([pub for _, pub in KEYS], b"test-cluster")


def _auth(i: int, replicas: ReplicaKeys = REPLICAS) -> PeerAuth:
    crypto = NodeCrypto(KEYS[i][0], replicas)
    return PeerAuth(self_id=i, replicas=replicas, sign=crypto.sign, tls=False)


def _make_peers(n: int, limits: NodeLimits = LIMITS) -> list[Peer]:
    ports = [_free_port() for _ in range(n)]
    peers: list[Peer] = []
    for i in range(n):
        urls = {j: f"http://127.0.0.1:{ports[j]}" for j in range(n) if j != i}
        box: list[Peer] = []
        t = Transport(
            self_id=i,
            peers=urls,
            limits=limits,
            deliver=lambda s, m, f, b=box: b[0].deliver(s, m, f),
            auth=_auth(i),
        )
        p = Peer(i, ports[i], t)
        box.append(p)
        peers.append(p)
    return peers


@pytest.fixture
async def pair() -> AsyncIterator[list[Peer]]:
    peers = _make_peers(2)
    try:
        for p in peers:
            await p.serve()
            await p.transport.start()
        yield peers
    finally:
        for p in peers:
            await p.close()


async def _until(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout_s)


async def test_frames_flow_both_ways_in_order(pair: list[Peer]) -> None:
    a, b = pair
    for seq in range(1, 301):
        a.transport.send(1, _prepare(seq, 0))
    b.transport.send(None, Commit(view=0, seq=7, digest=b"d" * 32, replica=1, signature=b"x" * 64))
    await _until(lambda: len(b.got) == 300 and len(a.got) == 1)
    assert [m for _, m in b.got] == [_prepare(seq, 0) for seq in range(1, 301)]
    assert {s for s, _ in b.got} == {0}
    assert a.got[0][0] == 1 and isinstance(a.got[0][1], Commit)
    link = a.transport.link(1).status()
    assert link["state"] == "up"
    assert link["sent_frames"] == 300
    # Batching: far fewer POSTs than frames.
    assert 1 <= int(link["sent_batches"]) <= 300
    assert b.transport.status()["received_frames"] == 300


async def _post(
    peer: Peer, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, object] | None]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(peer.url + PEER_PATH, data=body, headers=headers) as r,
    ):
        data = await r.json() if r.status != 204 else None
        return r.status, data


FRAMES = {"Content-Type": "application/msgpack"}


def signed(body: bytes, sender: int = 0, dest: int = 1) -> dict[str, str]:
    """Headers of a POST of ``body`` that replica ``sender`` signed for ``dest``."""
    return {**FRAMES, **_auth(sender).headers(dest, body)}


async def test_garbage_frames_are_counted_and_dropped(pair: list[Peer]) -> None:
    _, b = pair
    good = encode_message(_prepare(5))
    unknown_tag = msgpack.packb([99, 1, 2])
    short_digest = msgpack.packb([2, 0, 1, b"xx", 0, b"s" * 64])
    body = msgpack.packb([b"\xc1garbage", 42, unknown_tag, short_digest, good], use_bin_type=True)
    status, _ = await _post(b, body, signed(body))
    assert status == 204
    assert b.got == [(0, _prepare(5))]
    dropped = b.transport.status()["dropped_frames"]
    assert isinstance(dropped, dict)
    assert dropped["frame_not_bytes"] == 1
    assert dropped["frame"] == 2  # not msgpack; unknown tag
    assert dropped["Prepare.digest"] == 1
    # The link keeps working after garbage.
    pair[0].transport.send(1, _prepare(6))
    await _until(lambda: len(b.got) == 2)


async def test_inbox_full_is_counted(pair: list[Peer]) -> None:
    _, b = pair
    b.accept = False
    body = msgpack.packb([encode_message(_prepare(1))])
    status, _ = await _post(b, body, signed(body))
    assert status == 204
    assert b.transport.status()["dropped_frames"] == {"inbox_full": 1}


def _sender(value: str | None) -> Callable[[bytes], dict[str, str]]:
    def headers(body: bytes) -> dict[str, str]:
        h = signed(body)
        if value is None:
            del h[FROM_HEADER]
        else:
            h[FROM_HEADER] = value
        return h

    return headers


@pytest.mark.parametrize(
    ("body", "headers", "status", "error"),
    [
        (b"\x93\x01", signed, 400, "malformed body"),
        (msgpack.packb({"a": 1}), signed, 400, "malformed body"),
        (b"", signed, 400, "malformed body"),
        (msgpack.packb([]), _sender("7"), 403, "peer not authenticated"),
        (msgpack.packb([]), _sender("1"), 403, "peer not authenticated"),
        (msgpack.packb([]), _sender("x"), 400, "peer not authenticated"),
        (msgpack.packb([]), _sender(None), 400, "peer not authenticated"),
        (
            msgpack.packb([]),
            lambda body: {**signed(body), "Content-Type": "text/plain"},
            415,
            "unsupported content type",
        ),
    ],
)
async def test_bad_bodies_get_json_errors(
    pair: list[Peer],
    body: bytes,
    headers: Callable[[bytes], dict[str, str]],
    status: int,
    error: str,
) -> None:
    _, b = pair
    got_status, data = await _post(b, body, headers(body))
    assert got_status == status
    assert data is not None and data["error"] == error
    assert b.got == []


async def test_oversize_body_is_refused() -> None:
    limits = NodeLimits(
        peer_max_body_bytes=4096, peer_batch_max_bytes=1024, fetch_response_max_bytes=1024
    )
    peers = _make_peers(2, limits)
    try:
        await peers[1].serve()
        body = msgpack.packb([b"x" * 10_000])
        status, data = await _post(peers[1], body, signed(body))
        assert status == 413
        assert data is not None and data["error"] == "body too large"
    finally:
        for p in peers:
            await p.close()


async def test_queue_is_bounded_and_frames_survive_a_down_peer() -> None:
    limits = NodeLimits(
        peer_queue_max_msgs=50, peer_backoff_min_ms=10, peer_backoff_max_ms=40, peer_timeout_ms=2000
    )
    a, b = _make_peers(2, limits)
    try:
        await a.transport.start()  # b is not listening yet: connection refused
        for seq in range(1, 201):
            a.transport.send(1, _prepare(seq))
        link = a.transport.link(1)
        await _until(lambda: link.stats.consecutive_failures >= 2)
        status = link.status()
        assert status["state"] == "down"
        assert status["queued"] == 50
        # Oldest frames were dropped; the newest 50 are kept (a failed batch is re-queued).
        assert status["dropped_queue_full"] == 150
        await b.serve()
        await _until(lambda: len(b.got) == 50)
        assert [m for _, m in b.got] == [_prepare(seq) for seq in range(151, 201)]
        await _until(lambda: link.status()["state"] == "up")
    finally:
        await a.close()
        await b.close()


async def test_stop_is_idempotent_and_cancels_senders() -> None:
    (a, _b) = _make_peers(2)
    await a.transport.start()
    a.transport.send(None, _prepare(1))
    await asyncio.sleep(0)
    assert any(t.get_name() == "peer-1-sender" for t in asyncio.all_tasks())
    await a.transport.stop()
    await a.transport.stop()
    assert not any(t.get_name().startswith("peer-") for t in asyncio.all_tasks())


def test_reason_key_is_bounded_by_schema_not_input() -> None:
    assert reason_key("NewView.view_changes[3].prepared[17].digest: expected 32 bytes, got 3") == (
        "NewView.view_changes[].prepared[].digest"
    )
    assert reason_key("frame: unknown message tag 99") == "frame"


# -- peer authentication (node/peerauth): a spoofed sender is refused before its body is read


def _reason_count(peer: Peer, reason: str) -> int:
    rejected = peer.transport.status()["rejected_bodies"]
    assert isinstance(rejected, dict)
    return int(rejected.get(reason, 0))


async def test_a_spoofed_sender_is_refused_and_nothing_is_delivered(pair: list[Peer]) -> None:
    _, b = pair
    body = msgpack.packb([encode_message(_prepare(1))])
    status, data = await _post(b, body, {**FRAMES, FROM_HEADER: "0"})  # the old, unsigned claim
    assert status == 401 and data is not None and data["error"] == "peer not authenticated"
    # A signature by replica 2 cannot speak for replica 0, nor one for another receiver.
    as_two = {**FRAMES, **_auth(2).headers(1, body), FROM_HEADER: "0"}
    assert (await _post(b, body, as_two))[0] == 401
    assert (await _post(b, body, signed(body, dest=2)))[0] == 401
    # A key of another cluster (same replica key, other cluster id) does not verify here.
    other = ReplicaKeys(list(REPLICAS), b"other-cluster")
    assert (await _post(b, body, {**FRAMES, **_auth(0, other).headers(1, body)}))[0] == 401
    assert b.got == []
    assert _reason_count(b, "bad_peer_auth") == 1
    assert _reason_count(b, "bad_peer_signature") == 3


async def test_a_captured_post_cannot_be_replayed_or_given_another_body(pair: list[Peer]) -> None:
    _, b = pair
    body = msgpack.packb([encode_message(_prepare(1))])
    headers = signed(body)
    assert (await _post(b, body, headers))[0] == 204
    assert (await _post(b, body, headers))[0] == 401
    assert _reason_count(b, "replayed_peer_auth") == 1
    other = msgpack.packb([encode_message(_prepare(2))])
    assert (await _post(b, other, signed(body)))[0] == 401
    assert _reason_count(b, "body_hash_mismatch") == 1
    assert b.got == [(0, _prepare(1))]


async def test_a_stale_signed_post_is_refused(pair: list[Peer]) -> None:
    _, b = pair
    body = msgpack.packb([])
    old = PeerAuth(
        self_id=0,
        replicas=REPLICAS,
        sign=NodeCrypto(KEYS[0][0], REPLICAS).sign,
        tls=False,
        clock_ms=lambda: 1_000_000,
    )
    assert (await _post(b, body, {**FRAMES, **old.headers(1, body)}))[0] == 401
    assert _reason_count(b, "stale_peer_auth") == 1


async def test_an_unauthenticated_body_is_never_read(pair: list[Peer]) -> None:
    """The refusal comes before the body: a client announcing 100 MB and sending none of it
    gets its 401 at once (the node neither waits for nor buffers the body)."""
    _, b = pair
    reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
    try:
        writer.write(
            (
                f"POST {PEER_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/msgpack\r\n"
                f"{FROM_HEADER}: 0\r\n{AUTH_HEADER}: 1 {'0' * 64} {'0' * 128}\r\n"
                "Content-Length: 100000000\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        assert status_line.split()[1] == b"401"
    finally:
        writer.close()
    assert b.got == []


async def test_an_unsigned_message_must_name_its_authenticated_sender(pair: list[Peer]) -> None:
    """A FetchRequest from replica 0 that names replica 2 as the requester would make node 1
    send blocks to 2: dropped, counted; one naming 0 itself is delivered."""
    _, b = pair
    body = msgpack.packb(
        [encode_message(FetchRequest(1, 64, 2)), encode_message(FetchRequest(1, 64, 0))]
    )
    assert (await _post(b, body, signed(body)))[0] == 204
    assert b.got == [(0, FetchRequest(1, 64, 0))]
    assert b.transport.status()["dropped_frames"] == {"replica_not_sender": 1}
