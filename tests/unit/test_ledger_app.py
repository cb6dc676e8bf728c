"""The consensus Application (node.ledger.app): checks, the verified-tx cache, the index."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest

import node.ledger.app as ledger_app_mod
from node.ledger import (
    HARD_MAX_PAYLOAD_BYTES,
    ClientRegistry,
    LedgerApp,
    LedgerError,
    TxEnvelope,
    encode_tx,
)
from tests.unit.helpers_ledger import (
    REGISTRY,
    make_tx,
)

# -- LedgerApp ----------------------------------------------------------------------------------


class FakeIndex:
    def __init__(self) -> None:
        self.committed: set[bytes] = set()

    def committed_among(self, tx_ids: Sequence[bytes]) -> set[bytes]:
        return {t for t in tx_ids if t in self.committed}


def _batch(envs: list[TxEnvelope]) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    return tuple(e.tx_id for e in envs), tuple(encode_tx(e) for e in envs)


def test_ledger_app_checks_and_caches() -> None:
    app = LedgerApp(FakeIndex(), REGISTRY)
    envs = [make_tx(40), make_tx(41, client=1)]
    admitted = app.admit(encode_tx(envs[0]))
    assert admitted == envs[0]
    ids, raws = _batch(envs)
    assert app.check_txs(ids, raws) is None
    assert (app.cache_hits, app.cache_misses) == (1, 1)  # envs[0] verified at admission
    assert app.check_txs(ids, raws) is None
    assert (app.cache_hits, app.cache_misses) == (3, 1)


def test_ledger_app_cache_is_keyed_by_the_exact_bytes() -> None:
    app = LedgerApp(FakeIndex(), REGISTRY)
    env = make_tx(42)
    app.admit(encode_tx(env))
    forged = encode_tx(TxEnvelope(env.tx, b"other payload"))
    problem = app.check_txs((env.tx_id,), (forged,))
    assert problem is not None and "payload hash mismatch" in problem


def test_ledger_app_reasons() -> None:
    app = LedgerApp(FakeIndex(), REGISTRY)
    a, b = make_tx(43), make_tx(44)
    assert app.check_txs((a.tx_id,), ()) == "1 tx ids but 0 txs"
    assert app.check_txs((a.tx_id, a.tx_id), (encode_tx(a),) * 2) == "duplicate tx id in batch"
    problem = app.check_txs((a.tx_id,), (encode_tx(b),))
    assert problem is not None and problem.endswith("tx does not match its id")
    problem = app.check_txs((a.tx_id,), (b"\x93",))
    assert problem is not None and "not valid msgpack" in problem
    with pytest.raises(LedgerError, match="unknown client key"):
        LedgerApp(FakeIndex(), ClientRegistry()).admit(encode_tx(a))
    with pytest.raises(LedgerError, match="not valid msgpack"):
        app.admit(b"\xc1")


def test_ledger_app_cache_is_bounded() -> None:
    app = LedgerApp(FakeIndex(), REGISTRY, cache_size=2)
    envs = [make_tx(50 + i) for i in range(3)]
    for env in envs:
        app.admit(encode_tx(env))
    ids, raws = _batch(envs)
    assert app.check_txs(ids[1:], raws[1:]) is None
    assert (app.cache_hits, app.cache_misses) == (2, 0)
    assert app.check_txs(ids[:1], raws[:1]) is None
    assert (app.cache_hits, app.cache_misses) == (2, 1)  # the oldest was evicted: verified again
    with pytest.raises(ValueError):
        LedgerApp(FakeIndex(), REGISTRY, cache_size=0)


def test_ledger_app_committed_among_uses_the_store() -> None:
    index = FakeIndex()
    app = LedgerApp(index, REGISTRY)
    env = make_tx(60)
    assert not app.committed_among([env.tx_id])
    index.committed.add(env.tx_id)
    assert app.committed_among([env.tx_id]) == {env.tx_id}


def test_ledger_app_hands_out_the_envelope_it_verified_once() -> None:
    app = LedgerApp(FakeIndex(), REGISTRY)
    env, other = make_tx(70), make_tx(71)
    raw = encode_tx(env)
    admitted = app.admit(raw)
    assert app.take_decoded(env.tx_id, encode_tx(TxEnvelope(env.tx, b"other"))) is None
    assert app.take_decoded(env.tx_id, bytes(bytearray(raw))) is admitted  # equal bytes
    assert app.take_decoded(env.tx_id, raw) is None  # handed out once: its block is built
    ids, raws = _batch([other])
    assert app.check_txs(ids, raws) is None
    assert app.take_decoded(other.tx_id, raws[0]) == other


def test_ledger_app_cache_is_bounded_in_bytes() -> None:
    envs = [make_tx(80 + i) for i in range(3)]
    raws = [encode_tx(env) for env in envs]
    app = LedgerApp(FakeIndex(), REGISTRY, cache_bytes=len(raws[0]) + len(raws[1]))
    for raw in raws:
        app.admit(raw)
    assert app.take_decoded(envs[0].tx_id, raws[0]) is None  # evicted to make room
    assert app.take_decoded(envs[2].tx_id, raws[2]) == envs[2]
    with pytest.raises(ValueError):
        LedgerApp(FakeIndex(), REGISTRY, cache_bytes=0)


def test_admitting_a_built_envelope_checks_what_decoding_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = LedgerApp(FakeIndex(), REGISTRY)
    good = make_tx(90)
    bad = [
        TxEnvelope(dataclasses.replace(good.tx, record_id="r" * 200), good.payload),
        TxEnvelope(good.tx, b"p" * (HARD_MAX_PAYLOAD_BYTES + 1)),
        TxEnvelope(dataclasses.replace(good.tx, patient="line\nbreak"), good.payload),
        TxEnvelope(good.tx, b"not the signed payload"),
    ]
    for env in bad:
        raw = encode_tx(env)
        with pytest.raises(LedgerError) as decoding:
            app.admit(raw)
        with pytest.raises(LedgerError) as built:
            app.admit(raw, env)
        assert built.value.reason == decoding.value.reason
    monkeypatch.setattr(ledger_app_mod, "decode_tx", _never)
    assert app.admit(encode_tx(good), good) is good


def _never(data: object) -> TxEnvelope:
    raise AssertionError("decoded a transaction the caller built")
