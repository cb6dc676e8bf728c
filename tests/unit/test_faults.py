"""Fault injection: the fault layer, the signed admin API, the history checker, scenario files.

Everything here is in-process and deterministic: fault layers run on a fake clock with fixed
seeds, keys come from fixed seeds, the admin API runs on aiohttp's in-process test server.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from consensus.hashing import GENESIS_HASH
from consensus.messages import (
    Batch,
    Commit,
    FetchResponse,
    Prepare,
    PrePrepare,
    Request,
)
from node.crypto import NodeCrypto, generate_keypair
from node.faults import (
    ByzantineMode,
    Delay,
    Direction,
    Drop,
    FaultConflict,
    FaultError,
    FaultLayer,
    FaultsConfig,
    FaultsDisabled,
    FaultSpec,
    Partition,
    alter_block_json,
    alter_certified_block,
    byzantine_rewrite,
    equivocation_target,
    faults_config_of,
    parse_fault,
    parse_faults_table,
)
from node.faults import layer as layer_mod
from node.faults.admin import NonceCache, admin_routes
from node.faults.signing import MAX_SKEW_MS, SIGNATURE_HEADER, sign_admin_request
from node.ledger import block_to_certified, block_to_json, check_tx, decode_tx, verify_chain
from scripts import history, scenario
from scripts.faultctl import FaultCtlError, fault_from_args
from scripts.history import BlockSummary, TxRecord
from tests.unit.helpers_ledger import CONSORTIUM, REGISTRY, REPLICA_KEYS, make_chain, make_tx

FRAME = b"\x93\x02\x00\x00"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def layer(
    self_id: int = 0, n: int = 4, *, seed: int = 7, clock: FakeClock | None = None
) -> FaultLayer:
    return FaultLayer(self_id, n, enabled=True, seed=seed, clock=clock or FakeClock())


def spec(obj: dict[str, Any], n: int = 4) -> FaultSpec:
    return parse_fault(obj, n=n)


# =============================================================================================
# parsing


def test_parse_round_trips_every_kind() -> None:
    objs: list[dict[str, Any]] = [
        {"kind": "drop", "probability": 0.25, "peers": [1, 3], "direction": "both", "seed": 4},
        {"kind": "delay", "ms": 50, "jitter_ms": 20, "duration_s": 10},
        {"kind": "duplicate", "probability": 1},
        {"kind": "reorder", "probability": 0.5, "window_ms": 30},
        {"kind": "partition", "groups": [[0], [2, 3]]},
        {"kind": "pause", "duration_s": 2.5},
        {"kind": "byzantine", "mode": "equivocate"},
    ]
    for obj in objs:
        parsed = spec(obj)
        assert parse_fault(parsed.to_json(), n=4) == parsed
        assert parsed.kind == obj["kind"]


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({"kind": "explode"}, "kind"),
        ({"kind": "drop"}, "probability"),
        ({"kind": "drop", "probability": 1.5}, "probability"),
        ({"kind": "drop", "probability": True}, "probability"),
        ({"kind": "drop", "probability": 0.1, "direction": "sideways"}, "direction"),
        ({"kind": "drop", "probability": 0.1, "peers": [4]}, "peers"),
        ({"kind": "drop", "probability": 0.1, "peers": []}, "peers"),
        ({"kind": "drop", "probability": 0.1, "ms": 3}, "ms"),
        ({"kind": "delay", "ms": -1}, "ms"),
        ({"kind": "delay", "ms": 10, "jitter_ms": 1e9}, "jitter_ms"),
        ({"kind": "partition", "groups": [[0, 1], [1, 2]]}, "groups[1]"),
        ({"kind": "partition", "groups": [[0, 1, 2, 3]]}, "groups"),
        ({"kind": "partition", "groups": []}, "groups"),
        ({"kind": "pause", "duration_s": 0}, "duration_s"),
        ({"kind": "byzantine", "mode": "evil"}, "mode"),
        ({"kind": "byzantine"}, "mode"),
        ({"kind": "pause", "seed": -1}, "seed"),
    ],
)
def test_parse_rejects_bad_faults_naming_the_field(obj: dict[str, Any], field: str) -> None:
    with pytest.raises(FaultError) as info:
        parse_fault(obj, n=4)
    assert info.value.field == field


def test_faults_table_and_defensive_config_read(tmp_path: Path) -> None:
    assert parse_faults_table(None) == FaultsConfig()
    assert parse_faults_table({"enabled": True, "seed": 3}) == FaultsConfig(True, 3)
    with pytest.raises(FaultError):
        parse_faults_table({"enabled": "yes"})
    with pytest.raises(FaultError):
        parse_faults_table({"enable": True})

    cfg = tmp_path / "node0.toml"
    cfg.write_text("[node]\nid = 0\n\n[faults]\nenabled = true\nseed = 9\n")
    assert faults_config_of(object(), cfg) == FaultsConfig(True, 9)
    cfg.write_text("[faults]\nenabled = 1\n")
    assert faults_config_of(object(), cfg) == FaultsConfig()  # unreadable: stays disabled
    assert faults_config_of(object(), tmp_path / "missing.toml") == FaultsConfig()

    class WithFaults:
        faults = FaultsConfig(True, 1)

    assert faults_config_of(WithFaults(), None) == FaultsConfig(True, 1)


# =============================================================================================
# the layer: message faults


def test_disabled_layer_passes_everything_and_refuses_faults() -> None:
    fl = FaultLayer(0, 4, enabled=False)
    assert fl.on_send(1, FRAME) == [(0.0, FRAME)]
    assert fl.on_receive(1, FRAME)
    assert not fl.paused
    with pytest.raises(FaultsDisabled):
        fl.apply(spec({"kind": "pause"}))


def test_drop_rate_is_deterministic_given_a_seed() -> None:
    def decisions(seed: int) -> list[bool]:
        fl = layer(seed=seed)
        fl.apply(spec({"kind": "drop", "probability": 0.3}))
        return [bool(fl.on_send(1 + i % 3, FRAME)) for i in range(10_000)]

    first = decisions(11)
    assert first == decisions(11)
    assert first != decisions(12)
    dropped = first.count(False) / len(first)
    assert 0.27 < dropped < 0.33

    fl = layer()
    fl.apply(spec({"kind": "drop", "probability": 0.3, "seed": 5}))
    fl2 = layer(seed=999)  # the fault's own seed wins over the layer's
    fl2.apply(spec({"kind": "drop", "probability": 0.3, "seed": 5}))
    assert [fl.on_send(1, FRAME) for _ in range(200)] == [fl2.on_send(1, FRAME) for _ in range(200)]


def test_drop_respects_peers_and_direction() -> None:
    fl = layer()
    fl.apply(spec({"kind": "drop", "probability": 1.0, "peers": [2]}))
    assert fl.on_send(2, FRAME) == []
    assert fl.on_send(1, FRAME) == [(0.0, FRAME)]
    assert fl.on_receive(2, FRAME)  # direction "out" by default
    fl.clear()
    fl.apply(spec({"kind": "drop", "probability": 1.0, "direction": "in", "peers": [3]}))
    assert fl.on_send(3, FRAME) == [(0.0, FRAME)]
    assert not fl.on_receive(3, FRAME)
    assert fl.on_receive(1, FRAME)
    fl.clear()
    fl.apply(spec({"kind": "drop", "probability": 1.0, "direction": "both"}))
    assert fl.on_send(1, FRAME) == []
    assert not fl.on_receive(1, FRAME)
    assert fl.counters["drop_out"] == 2 and fl.counters["drop_in"] == 2


def test_partition_blocks_both_directions_symmetrically() -> None:
    n = 5
    groups = {"kind": "partition", "groups": [[0, 1], [4]]}  # 2 and 3 form the implicit group
    layers = {i: layer(i, n) for i in range(n)}
    for fl in layers.values():
        fl.apply(spec(groups, n))
    side = {0: "a", 1: "a", 4: "b", 2: "rest", 3: "rest"}
    for a in range(n):
        for b in range(n):
            if a == b:
                continue
            connected = side[a] == side[b]
            assert bool(layers[a].on_send(b, FRAME)) is connected
            assert layers[b].on_receive(a, FRAME) is connected
            assert bool(layers[b].on_send(a, FRAME)) is connected
    # A partition applied on one side only still cuts both directions at that node.
    lone = layer(0, n)
    lone.apply(spec({"kind": "partition", "groups": [[0]]}, n))
    assert all(lone.on_send(b, FRAME) == [] and not lone.on_receive(b, FRAME) for b in (1, 2))


def test_partition_group_semantics() -> None:
    p = Partition(groups=(frozenset({3}),))
    assert p.separates(3, 0) and p.separates(0, 3)
    assert not p.separates(0, 1)


def test_durations_expire_on_the_node_clock() -> None:
    clock = FakeClock()
    fl = layer(clock=clock)
    drop = fl.apply(spec({"kind": "drop", "probability": 1.0, "duration_s": 5}))
    fl.apply(spec({"kind": "pause", "duration_s": 2}))
    forever = fl.apply(spec({"kind": "delay", "ms": 10}))
    assert fl.paused and fl.on_send(1, FRAME) == []
    clock.now += 1.999
    assert fl.paused
    clock.now += 0.001
    assert not fl.paused
    assert fl.on_send(1, FRAME) == []
    clock.now += 3.0
    assert fl.on_send(1, FRAME) == [(0.01, FRAME)]
    assert [a.id for a in fl.active()] == [forever.id]
    assert fl.counters["expired"] == 2
    assert drop.id not in [a["id"] for a in fl.status()["active"]]
    assert fl.clear(drop.id) == []  # already gone


def test_delay_jitter_reorders_and_duplicate_copies() -> None:
    fl = layer()
    fl.apply(spec({"kind": "delay", "ms": 50, "jitter_ms": 20, "peers": [1]}))
    delays = [fl.on_send(1, FRAME)[0][0] for _ in range(500)]
    assert all(0.030 <= d <= 0.070 for d in delays)
    assert any(b < a for a, b in itertools.pairwise(delays))  # later frames overtake
    assert fl.on_send(2, FRAME) == [(0.0, FRAME)]
    fl.clear()
    fl.apply(spec({"kind": "duplicate", "probability": 1.0}))
    assert fl.on_send(1, FRAME) == [(0.0, FRAME), (0.0, FRAME)]
    fl.clear()
    fl.apply(spec({"kind": "reorder", "probability": 1.0, "window_ms": 40}))
    held = [fl.on_send(1, FRAME)[0][0] for _ in range(100)]
    assert all(0 <= d <= 0.040 for d in held) and len(set(held)) > 50


def test_held_back_frames_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layer_mod, "MAX_DELAYED_FRAMES", 10)
    clock = FakeClock()
    fl = layer(clock=clock)
    fl.apply(spec({"kind": "delay", "ms": 1000}))
    sent = [fl.on_send(1, FRAME) for _ in range(15)]
    assert sum(1 for s in sent if s) == 10
    assert fl.counters["delay_overflow"] == 5
    clock.now += 1.0  # the first ten are released: room again
    assert fl.on_send(1, FRAME) == [(1.0, FRAME)]


def test_limits_and_conflicts() -> None:
    fl = layer()
    fl.apply(spec({"kind": "byzantine", "mode": "silent"}))
    with pytest.raises(FaultConflict):
        fl.apply(spec({"kind": "byzantine", "mode": "equivocate"}))
    with pytest.raises(FaultError):
        FaultLayer(0, 3, enabled=True).apply(spec({"kind": "partition", "groups": [[3]]}))
    for _ in range(layer_mod.MAX_ACTIVE_FAULTS - 1):
        fl.apply(spec({"kind": "delay", "ms": 1}))
    with pytest.raises(FaultConflict):
        fl.apply(spec({"kind": "delay", "ms": 1}))
    assert len(fl.clear()) == layer_mod.MAX_ACTIVE_FAULTS


async def test_wait_unpaused_returns_on_clear_and_on_expiry() -> None:
    clock = FakeClock()
    fl = layer(clock=clock)
    p = fl.apply(spec({"kind": "pause"}))
    waiter = asyncio.create_task(fl.wait_unpaused())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    fl.clear(p.id)
    await asyncio.wait_for(waiter, 5.0)

    fl.apply(spec({"kind": "pause", "duration_s": 30}))
    waiter = asyncio.create_task(fl.wait_unpaused())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    clock.now += 30
    await asyncio.wait_for(waiter, 5.0)  # noticed within one PAUSE_POLL_S step
    assert not fl.paused


# =============================================================================================
# byzantine modes

CRYPTO = [NodeCrypto(secret, CONSORTIUM) for secret, _ in REPLICA_KEYS]


def _pre_prepare(primary: int = 0, n_txs: int = 3) -> PrePrepare:
    txs = [make_tx(i) for i in range(n_txs)]
    from node.ledger import encode_tx

    batch = Batch(0, primary, 1, tuple(t.tx_id for t in txs), tuple(encode_tx(t) for t in txs))
    unsigned = PrePrepare(view=0, seq=1, digest=batch.digest(), replica=primary, batch=batch)
    return dataclasses.replace(unsigned, signature=CRYPTO[primary].sign(unsigned.signing_bytes()))


def _valid(msg: PrePrepare | Prepare | Commit) -> bool:
    return CRYPTO[0].verify(msg.replica, msg.signing_bytes(), msg.signature)


def test_equivocating_primary_splits_the_backups_with_valid_signatures() -> None:
    fl = layer(0)
    fl.apply(spec({"kind": "byzantine", "mode": "equivocate"}))
    pp = _pre_prepare()
    out = dict(fl.outgoing(None, pp, CRYPTO[0].sign))  # a broadcast is expanded per backup
    assert set(out) == {1, 2, 3}
    assert out[1] is pp
    for d in (2, 3):
        alt = out[d]
        assert isinstance(alt, PrePrepare) and _valid(alt)
        assert alt.digest == alt.batch.digest() != pp.digest
        assert alt.batch.tx_ids == pp.batch.tx_ids[:-1]
    assert out[2] == out[3]  # deterministic: retransmissions tell the same lie
    prepare = Prepare(0, 1, pp.digest, 0, b"s" * 64)
    assert fl.outgoing(None, prepare, CRYPTO[0].sign) == [(None, prepare)]
    # n = 7, primary 2: backups ranked 1..6 from the primary; ranks 4..6 get the other batch.
    targets = [d for d in range(7) if equivocation_target(d, 2, 7)]
    assert targets == [0, 1, 6]


def test_silent_corrupt_and_wrong_digest_modes() -> None:
    rng = random.Random(1)
    sign = CRYPTO[1].sign
    vote = dataclasses.replace(Commit(0, 5, b"d" * 32, 1), signature=b"")
    vote = dataclasses.replace(vote, signature=sign(vote.signing_bytes()))
    assert _valid(vote)
    assert byzantine_rewrite(ByzantineMode.SILENT, 2, vote, sign, n=4, rng=rng) is None

    corrupt = byzantine_rewrite(ByzantineMode.CORRUPT_SIGNATURES, 2, vote, sign, n=4, rng=rng)
    assert isinstance(corrupt, Commit) and not _valid(corrupt)
    assert corrupt.signature == bytes(b ^ 0xFF for b in vote.signature)

    wrong = byzantine_rewrite(ByzantineMode.WRONG_DIGEST, 2, vote, sign, n=4, rng=rng)
    assert isinstance(wrong, Commit) and _valid(wrong) and wrong.digest != vote.digest

    request = Request((b"i" * 32,), (b"tx",), 1)
    assert byzantine_rewrite(ByzantineMode.WRONG_DIGEST, 2, request, sign, n=4, rng=rng) is request

    fl = layer(1)
    fl.apply(spec({"kind": "byzantine", "mode": "silent"}))
    assert fl.outgoing(None, vote, sign) == []
    assert fl.counters["byzantine_silent_dropped"] == 1


def test_altered_blocks_fail_verification() -> None:
    chain = make_chain(3, txs_per_block=2, null_every=3)
    assert verify_chain(chain, CONSORTIUM, REGISTRY).ok

    certified = block_to_certified(chain[0])
    altered = alter_certified_block(certified)
    assert altered.batch.tx_ids == certified.batch.tx_ids
    assert check_tx(decode_tx(altered.batch.txs[0]), REGISTRY) == "payload hash mismatch"
    empty = block_to_certified(chain[2])
    assert alter_certified_block(empty).batch.digest() != empty.batch.digest()

    fl = layer(0)
    fl.apply(spec({"kind": "byzantine", "mode": "alter_blocks"}))
    assert fl.serves_altered_blocks
    [(dest, resp)] = fl.outgoing(2, FetchResponse((certified,), 0), CRYPTO[0].sign)
    assert dest == 2 and isinstance(resp, FetchResponse)
    assert resp.blocks[0] == altered

    for include_payload in (True, False):
        docs = [block_to_json(b, include_payload) for b in chain]
        docs[1] = alter_block_json(docs[1])
        docs[2] = alter_block_json(docs[2])
        if include_payload:
            _, report = history.verify_served_chain(docs, CONSORTIUM, REGISTRY)
            assert not isinstance(report, str) and not report.ok
            assert report.first_bad_height == 2
    honest = [block_to_json(b, True) for b in chain]
    _, report = history.verify_served_chain(honest, CONSORTIUM, REGISTRY)
    assert not isinstance(report, str) and report.ok and report.height == 3


# =============================================================================================
# the admin API

OPERATOR_SECRET, OPERATOR_PUBLIC = generate_keypair(b"\x42" * 32)
OTHER_SECRET, _ = generate_keypair(b"\x43" * 32)
NOW_MS = 1_700_000_000_000


@pytest.fixture
async def admin() -> AsyncIterator[tuple[TestClient[Any, Any], FaultLayer]]:
    fl = layer(1)
    app = web.Application()
    app.add_routes(admin_routes(fl, OPERATOR_PUBLIC, wall_clock_ms=lambda: NOW_MS))
    async with TestClient(TestServer(app)) as client:
        yield client, fl


async def _post(
    client: TestClient[Any, Any],
    action: str,
    params: dict[str, Any],
    *,
    secret: bytes = OPERATOR_SECRET,
    node: int = 1,
    now_ms: int | None = NOW_MS,
    nonce: bytes | None = None,
) -> tuple[int, dict[str, Any]]:
    fields, headers = sign_admin_request(secret, action, node, params, now_ms=now_ms, nonce=nonce)
    resp = await client.post(f"/admin/{action}", json=fields, headers=headers)
    return resp.status, await resp.json()


async def test_admin_applies_lists_and_clears_signed_requests(
    admin: tuple[TestClient[Any, Any], FaultLayer],
) -> None:
    client, fl = admin
    status, body = await _post(client, "fault", {"fault": {"kind": "delay", "ms": 5}})
    assert status == 201, body
    assert body["applied"]["kind"] == "delay" and len(fl.active()) == 1

    fields, headers = sign_admin_request(OPERATOR_SECRET, "list", 1, {}, now_ms=NOW_MS)
    resp = await client.get(
        "/admin/faults", params={k: str(v) for k, v in fields.items()}, headers=headers
    )
    listing = await resp.json()
    assert resp.status == 200 and [a["kind"] for a in listing["active"]] == ["delay"]

    status, body = await _post(client, "clear", {"id": 99})
    assert status == 404
    status, body = await _post(client, "clear", {})
    assert status == 200 and len(body["cleared"]) == 1 and not fl.active()


async def test_admin_rejects_bad_signatures_replays_and_stale_requests(
    admin: tuple[TestClient[Any, Any], FaultLayer],
) -> None:
    client, fl = admin
    pause = {"fault": {"kind": "pause"}}
    status, body = await _post(client, "fault", pause, secret=OTHER_SECRET)
    assert (status, body["error"]) == (403, "bad signature")
    status, body = await _post(client, "fault", pause, node=2)  # signed for another node
    assert (status, body["error"]) == (403, "bad signature")
    status, body = await _post(client, "fault", pause, now_ms=NOW_MS - MAX_SKEW_MS - 1)
    assert (status, body["error"]) == (403, "stale request")
    status, body = await _post(client, "fault", pause, now_ms=NOW_MS + MAX_SKEW_MS + 1)
    assert (status, body["error"]) == (403, "stale request")

    # A tampered body: signed for a pause, sent as a byzantine fault.
    fields, headers = sign_admin_request(OPERATOR_SECRET, "fault", 1, pause, now_ms=NOW_MS)
    tampered = {**fields, "fault": {"kind": "byzantine", "mode": "silent"}}
    resp = await client.post("/admin/fault", json=tampered, headers=headers)
    assert resp.status == 403
    # A signed clear cannot be replayed as a fault: the action is part of what is signed.
    fields, headers = sign_admin_request(OPERATOR_SECRET, "clear", 1, {}, now_ms=NOW_MS)
    resp = await client.post("/admin/fault", json=fields, headers=headers)
    assert (resp.status, (await resp.json())["error"]) == (403, "bad signature")

    fields, headers = sign_admin_request(OPERATOR_SECRET, "fault", 1, pause, now_ms=NOW_MS)
    first = await client.post("/admin/fault", json=fields, headers=headers)
    replay = await client.post("/admin/fault", json=fields, headers=headers)
    assert first.status == 201
    assert replay.status == 403 and (await replay.json())["error"] == "replayed nonce"
    assert len(fl.active()) == 1

    resp = await client.post("/admin/fault", json=fields)
    assert resp.status == 401
    bad_nonce = {**fields, "nonce": "abc"}
    resp = await client.post("/admin/fault", json=bad_nonce, headers=headers)
    assert resp.status == 401
    resp = await client.post("/admin/fault", json=fields, headers={SIGNATURE_HEADER: "zz"})
    assert resp.status == 401
    resp = await client.post(
        "/admin/fault", data=b"not json", headers={**headers, "Content-Type": "application/json"}
    )
    assert resp.status == 400


async def test_admin_bad_fault_conflict_disabled_and_keyless() -> None:
    fl = layer(0)
    app = web.Application()
    app.add_routes(admin_routes(fl, OPERATOR_PUBLIC, wall_clock_ms=lambda: NOW_MS))
    async with TestClient(TestServer(app)) as client:
        status, body = await _post(client, "fault", {"fault": {"kind": "drop"}}, node=0)
        assert status == 400 and "probability" in body["detail"]
        byz = {"fault": {"kind": "byzantine", "mode": "silent"}}
        assert (await _post(client, "fault", byz, node=0))[0] == 201
        assert (await _post(client, "fault", byz, node=0))[0] == 409

    for routes in (
        admin_routes(FaultLayer(0, 4, enabled=False), OPERATOR_PUBLIC),
        admin_routes(None, OPERATOR_PUBLIC),
    ):
        app = web.Application()
        app.add_routes(routes)
        async with TestClient(TestServer(app)) as client:
            status, body = await _post(
                client, "fault", {"fault": {"kind": "pause"}}, node=0, now_ms=None
            )
            assert status == 404 and "enabled = true" in body["detail"]

    app = web.Application()
    app.add_routes(admin_routes(layer(0), None))
    async with TestClient(TestServer(app)) as client:
        status, body = await _post(
            client, "fault", {"fault": {"kind": "pause"}}, node=0, now_ms=None
        )
        assert (status, body["error"]) == (403, "no operator key")


def test_nonce_cache_expires_and_is_bounded() -> None:
    cache = NonceCache(max_entries=2, ttl_ms=1000)
    assert cache.add(b"a", 0) is None
    assert cache.add(b"a", 10) == "replayed"
    assert cache.add(b"b", 20) is None
    assert cache.add(b"c", 30) == "full"  # refusing beats forgetting a live nonce
    assert cache.add(b"c", 1000) is None  # "a" expired
    assert cache.add(b"a", 1001) == "full"  # "b" and "c" are still live
    assert cache.add(b"a", 1020) is None and len(cache) == 2  # "b" expired


# =============================================================================================
# the history checker


def _rec(
    tx: str, t: float, node: int | None = 0, commit: tuple[float, int, int] | None = None
) -> TxRecord:
    return TxRecord(
        tx_id=tx,
        submit_s=t,
        node=node,
        ack_s=None if node is None else t + 0.01,
        error=None if node is not None else "refused",
        commit_s=None if commit is None else commit[0],
        commit_node=None if commit is None else commit[1],
        commit_height=None if commit is None else commit[2],
    )


def _chain(*blocks: tuple[str, ...]) -> list[BlockSummary]:
    return [BlockSummary(h, f"hash{h}-" + "-".join(txs), txs) for h, txs in enumerate(blocks, 1)]


def _failed(checks: list[history.CheckResult]) -> set[str]:
    return {c.name for c in checks if not c.ok}


def test_history_checker_accepts_a_correct_history() -> None:
    records = [
        _rec("a", 0.0, 0, (0.5, 0, 1)),
        _rec("b", 0.1, 1, (0.6, 2, 1)),
        _rec("c", 0.2, 2),  # accepted, commit never seen: indeterminate, allowed either way
        _rec("d", 0.3, None),
    ]
    chain = _chain(("a", "b"), ("c",))
    chains = {0: chain, 1: chain, 2: chain}
    assert _failed(history.check_history(records, chains)) == set()
    assert _failed(history.check_chains_agree(chains)) == set()
    stats = history.history_stats(records, chains)
    assert stats["indeterminate"] == 1 and stats["indeterminate_on_chain"] == 1


def test_history_checker_catches_lost_duplicated_and_phantom_writes() -> None:
    records = [_rec("a", 0.0, 0, (0.5, 0, 1)), _rec("b", 0.1, 1, (0.6, 1, 2))]
    good = _chain(("a",), ("b",))
    lost = _chain(("a",))
    checks = history.check_history(records, {0: good, 1: good, 2: lost})
    assert _failed(checks) == {"acked_commits_durable"}
    assert "missing on node 2" in next(c for c in checks if not c.ok).violations[0]

    twice = _chain(("a",), ("b", "a"))
    assert _failed(history.check_history(records, {0: twice, 1: twice})) == {
        "acked_commits_durable",
        "exactly_once",
    }
    phantom = _chain(("a",), ("b", "zz"))
    assert _failed(history.check_history(records, {0: phantom})) == {"no_phantom_txs"}
    moved = _chain(("b",), ("a",))
    assert _failed(history.check_history(records, {0: moved, 1: moved})) == {"commit_heights_match"}
    # A commit reported only by a node outside the honest set proves nothing.
    liar = [_rec("x", 0.0, 3, (0.2, 3, 1))]
    assert _failed(history.check_history(liar, {0: _chain(), 1: _chain()})) == set()


def test_chain_agreement_and_convergence() -> None:
    a = _chain(("a",), ("b",))
    fork = [a[0], BlockSummary(2, "other", ("c",))]
    assert _failed(history.check_chains_agree({0: a, 1: fork})) == {
        "chains_agree",
        "chains_converged",
    }
    assert _failed(history.check_chains_agree({0: a, 1: a[:1]})) == {"chains_converged"}
    assert _failed(history.check_chains_agree({0: a, 1: a})) == set()


def test_history_file_round_trip_and_stats(tmp_path: Path) -> None:
    records = [_rec("a", 0.0, 0, (0.5, 0, 1)), _rec("b", 0.1, None)]
    path = tmp_path / "history.jsonl"
    history.write_history(path, records)
    assert history.read_history(path) == records
    lat = history.latency_percentiles([float(i) for i in range(1, 101)])
    assert (lat["p50"], lat["p90"], lat["p99"], lat["max"]) == (50.0, 90.0, 99.0, 100.0)
    assert history.per_second([0.1, 0.9, 2.5, 9.0], 3.0) == [2, 0, 1, 0]


def test_block_json_parsing_is_strict() -> None:
    doc = block_to_json(make_chain(1)[0], True)
    block = history.block_from_json(doc)
    assert block.block_hash.hex() == doc["hash"]
    no_payload = block_to_json(make_chain(1)[0], False)
    with pytest.raises(history.BlockJsonError, match="payload"):
        history.block_from_json(no_payload)
    with pytest.raises(history.BlockJsonError):
        history.block_from_json({**doc, "height": "1"})
    with pytest.raises(history.BlockJsonError, match="tx_id"):
        history.block_from_json({**doc, "txs": [{**doc["txs"][0], "tx_id": "00" * 32}]})
    blocks, reason = history.verify_served_chain([doc, {"junk": 1}], CONSORTIUM, REGISTRY)
    assert len(blocks) == 1 and isinstance(reason, str) and reason.startswith("block 2")
    assert block.prev_hash == GENESIS_HASH


# =============================================================================================
# scenario files and the fault command line


def test_every_shipped_scenario_parses_for_several_cluster_sizes() -> None:
    paths = scenario.shipped_scenarios()
    names = {p.stem for p in paths}
    assert {
        "primary-crash",
        "rolling-restart",
        "minority-partition",
        "primary-isolated",
        "byzantine-equivocating-primary",
        "byzantine-corrupt-voter",
        "slow-node",
        "lossy-wan",
        "wipe-rejoin",
        "primary-pause",
    } <= names
    for path in paths:
        for n in (4, 7):
            sc = scenario.load_scenario(path, nodes=n)
            assert sc.name == path.stem and sc.steps and sc.description
            for step in sc.steps:
                assert step.duration_s is None or step.at_s + step.duration_s <= sc.duration_s


def test_selectors_resolve_roles_against_the_current_primary() -> None:
    def sel(raw: object) -> scenario.Selector:
        return scenario.Selector.parse(raw, 4, "nodes")

    assert sel("primary").resolve(2, 4) == [2]
    assert sel("backup:1").resolve(2, 4) == [3]
    assert sel("backup:3").resolve(2, 4) == [1]
    assert sel("backups").resolve(2, 4) == [0, 1, 3]
    assert sel("all").resolve(2, 4) == [0, 1, 2, 3]
    assert sel(1).resolve(2, 4) == sel("node:1").resolve(0, 4) == [1]
    assert scenario.resolve_all([sel("primary"), sel(0)], 0, 4) == [0]
    for bad in ("backup:4", "backup:0", 9, "node:x", "leader", 1.5):
        with pytest.raises(scenario.ScenarioError):
            sel(bad)


def _doc(**step: Any) -> dict[str, Any]:
    return {"duration_s": 20, "timeline": [{"at": 2, "fault": "kill", "nodes": 1, **step}]}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (_doc(at=20), "before duration_s"),
        (_doc(duration_s=19), "after the end of the timeline"),
        (_doc(fault="restart", duration_s=3), "no duration"),
        (_doc(fault="kill", probability=0.5), "takes no parameters"),
        (_doc(fault="drop"), "probability"),
        (_doc(fault="byzantine", mode="sneaky"), "mode"),
        (_doc(fault="partition", groups=[]), "groups"),
        (_doc(nodes="leader"), "unknown node selector"),
        ({**_doc(), "speed": 3}, "unknown key"),
        ({**_doc(), "nodes": 3}, "nodes"),
        ({"timeline": []}, "duration_s: missing"),
    ],
)
def test_bad_scenarios_are_refused_with_the_key(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(scenario.ScenarioError, match=message):
        scenario.parse_scenario(doc, name="t")


def test_scenario_partition_groups_and_params() -> None:
    sc = scenario.parse_scenario(
        {
            "duration_s": 30,
            "rate": 5,
            "consensus": {"view_timeout_ms": 1000},
            "timeline": [
                {"at": 9, "fault": "drop", "nodes": "all", "probability": 0.1},
                {
                    "at": 1,
                    "fault": "partition",
                    "groups": [["primary"], [1, "backup:2"]],
                    "duration_s": 5,
                },
            ],
        },
        name="x",
    )
    first, second = sc.steps  # sorted by time
    assert first.kind == "partition" and first.groups[1][1] == scenario.Selector("backup", 2)
    assert second.params == {"probability": 0.1} and sc.consensus == {"view_timeout_ms": 1000}
    assert [scenario.resolve_all(g, 3, 4) for g in first.groups] == [[3], [1]]


def _apply_args(**kw: Any) -> argparse.Namespace:
    base = dict(
        kind="drop",
        probability=None,
        ms=None,
        jitter_ms=None,
        window_ms=None,
        direction=None,
        mode=None,
        seed=None,
        duration=None,
        peers=None,
        group=None,
    )
    return argparse.Namespace(**{**base, **kw})


def test_fault_command_line_builds_validated_faults() -> None:
    assert fault_from_args(_apply_args(probability=0.5, peers="1,2", duration=3.0)) == {
        "kind": "drop",
        "probability": 0.5,
        "peers": [1, 2],
        "duration_s": 3.0,
    }
    assert fault_from_args(_apply_args(kind="partition", group=["0", "1,2"]))["groups"] == [
        [0],
        [1, 2],
    ]
    with pytest.raises(FaultCtlError, match="--probability"):
        fault_from_args(_apply_args())
    with pytest.raises(FaultCtlError, match="--jitter-ms"):
        fault_from_args(_apply_args(kind="delay", ms=5.0, jitter_ms=-1.0))
    with pytest.raises(FaultCtlError, match="--peers"):
        fault_from_args(_apply_args(probability=0.1, peers="1,x"))
    assert Direction.BOTH.value == "both" and Drop(0.5).direction is Direction.OUT
    assert Delay(1.0).peers is None


def test_view_change_summary_and_timeline_plot(tmp_path: Path) -> None:
    samples = [
        scenario.Sample(0.0, 0, True, 1, 0),
        scenario.Sample(0.0, 1, True, 1, 0),
        scenario.Sample(1.0, 0, False),
        scenario.Sample(2.0, 1, True, 5, 1),
        scenario.Sample(3.0, 0, True, 5, 2),
        scenario.Sample(3.0, 1, True, 6, 2),
    ]
    vc = scenario.view_changes(samples)
    assert vc["per_node"] == {"0": 1, "1": 2} and vc["max_view"] == 2
    assert vc["rises"] == [{"t": 2.0, "view": 1}, {"t": 3.0, "view": 2}]

    report = {
        "scenario": "demo",
        "nodes": 4,
        "seed": 1,
        "ok": False,
        "load_s": 6.0,
        "commits_per_second": [20, 19, 0, 0, 35, 20, 18],
        "view_changes": vc,
        "faults": [
            {
                "label": "kill primary",
                "kind": "kill",
                "nodes": [0],
                "start_s": 1.5,
                "healed_s": 4.0,
            },
            {
                "label": "restart 1",
                "kind": "restart",
                "nodes": [1],
                "start_s": 5.0,
                "healed_s": None,
            },
        ],
    }
    path = tmp_path / "timeline.png"
    scenario.plot_timeline(report, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
