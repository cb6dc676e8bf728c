"""The hot path of a node: each transaction decoded once, each message encoded once.

A transaction submitted as JSON is never decoded on the node that admitted it, and decoded once
on each backup (when its pre-prepare is checked); building the committed block decodes nothing.
A message persisted and sent in one round goes to the store and the transport as the same bytes,
and a received pre-prepare is persisted as the frame it came in.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient, TestServer

import node.inbox
import node.ledger.app
import node.ledger.block
import node.store
from consensus.messages import Batch, Message, PrePrepare
from node.api import tx_to_request_json
from node.codec import encode_message
from node.crypto import NodeCrypto, Signer, load_key
from node.ledger import TxEnvelope, decode_tx, encode_tx
from node.peerauth import PeerAuth
from node.runtime import Node
from node.transport import FRAMES_CONTENT_TYPE, PEER_PATH
from tests.unit.test_api import FAST, FAST_LIMITS, Cluster, _until, make_configs, tx


def _counting(calls: Counter[bytes]) -> Any:
    def counted(data: object) -> TxEnvelope:
        env = decode_tx(data)
        calls[env.tx_id] += 1
        return env

    return counted


async def test_a_committed_transaction_is_decoded_once_per_backup_and_never_on_the_primary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: Counter[bytes] = Counter()
    rebuilt: Counter[bytes] = Counter()
    monkeypatch.setattr(node.ledger.app, "decode_tx", _counting(checked))
    monkeypatch.setattr(node.ledger.block, "decode_tx", _counting(rebuilt))
    cluster = Cluster(make_configs(tmp_path, consensus=FAST, limits=FAST_LIMITS))
    try:
        for i in range(4):
            await cluster.start(i)
        envs = [tx(i) for i in range(5000, 5010)]
        async with ClientSession() as http:
            body = {"txs": [tx_to_request_json(env) for env in envs]}
            async with http.post(cluster.url(0) + "/tx", json=body) as resp:  # the primary
                assert resp.status == 202, await resp.text()

            async def everywhere() -> bool:
                return all(
                    n.store.is_committed(e.tx_id) for n in cluster.nodes.values() for e in envs
                )

            await _until(everywhere)
    finally:
        await cluster.close()
    assert rebuilt == Counter()  # no committed block decoded its transactions again
    assert checked == {env.tx_id: 3 for env in envs}  # once on each backup, never on node 0


async def test_a_message_persisted_and_sent_in_one_round_is_encoded_once(tmp_path: Path) -> None:
    n0 = Node(make_configs(tmp_path, consensus=FAST)[0])
    await n0.start()
    persisted: dict[int, bytes] = {}
    sent: list[tuple[Message, bytes | None]] = []
    store, transport = n0.store, n0.transport
    real_save, real_send = store.save_messages, transport.send

    def save(msgs: Any, frames: Any = None) -> None:
        assert frames is not None
        persisted.update((id(m), f) for m, f in zip(msgs, frames, strict=True))
        real_save(msgs, frames)

    def send(dest: int | None, msg: Any, frame: Any = None) -> None:
        sent.append((msg, frame))
        real_send(dest, msg, frame)

    store.save_messages = save  # type: ignore[method-assign]
    transport.send = send  # type: ignore[method-assign]
    try:
        assert await n0.submit([tx(1).tx_id], [encode_tx(tx(1))]) == {}

        async def proposed() -> bool:
            return any(isinstance(m, PrePrepare) for m, _ in sent)

        await _until(proposed)
    finally:
        await n0.stop()
    pp, frame = next((m, f) for m, f in sent if isinstance(m, PrePrepare))
    assert frame is not None and frame is persisted[id(pp)]
    assert frame == encode_message(pp)


async def test_a_received_pre_prepare_is_persisted_as_the_frame_it_came_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configs = make_configs(tmp_path, consensus=FAST)
    backup = Node(configs[1])
    await backup.start()
    encoded: list[str] = []
    real_encode = node.inbox.encode_message

    def counting_encode(msg: Message, **kw: Any) -> bytes:
        encoded.append(type(msg).__name__)
        return real_encode(msg, **kw)

    monkeypatch.setattr(node.inbox, "encode_message", counting_encode)
    monkeypatch.setattr(node.store, "encode_message", counting_encode)
    saved: list[tuple[Message, bytes]] = []
    real_save = backup.store.save_messages

    def save(msgs: Any, frames: Any = None) -> None:
        saved.extend(zip(msgs, frames, strict=True))
        real_save(msgs, frames)

    backup.store.save_messages = save  # type: ignore[method-assign]
    frame = encode_message(_pre_prepare(configs[0].key_file, tx(7)))
    client = TestClient(TestServer(backup.app))
    await client.start_server()
    try:
        body = msgpack.packb([frame], use_bin_type=True)
        primary = NodeCrypto(load_key(configs[0].key_file)[0], configs[0].replica_publics)
        auth = PeerAuth(
            self_id=0, replicas=configs[0].replica_publics, sign=primary.sign, tls=False
        )
        resp = await client.post(
            PEER_PATH,
            data=body,
            headers={**auth.headers(1, body), "Content-Type": FRAMES_CONTENT_TYPE},
        )
        assert resp.status == 204

        async def accepted() -> bool:
            return any(isinstance(m, PrePrepare) for m, _ in saved)

        await _until(accepted)
    finally:
        await client.close()
        await backup.stop()
    assert [f for m, f in saved if isinstance(m, PrePrepare)] == [frame]
    assert "PrePrepare" not in encoded


def _pre_prepare(key_file: Path, env: TxEnvelope) -> PrePrepare:
    """Replica 0's pre-prepare of ``env`` at seq 1 in view 0, signed with its key."""
    secret, _ = load_key(key_file)
    batch = Batch(view=0, proposer=0, timestamp_ms=1, tx_ids=(env.tx_id,), txs=(encode_tx(env),))
    unsigned = PrePrepare(view=0, seq=1, digest=batch.digest(), replica=0, batch=batch)
    return PrePrepare(
        view=0,
        seq=1,
        digest=batch.digest(),
        replica=0,
        batch=batch,
        signature=Signer(secret).sign(unsigned.signing_bytes()),
    )
