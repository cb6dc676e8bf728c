"""The consensus Application: the one synchronous port the pure core calls.

``consensus/`` is deterministic and does no I/O; the only thing it asks of the outside world
while it steps is this object (``consensus.events.Application``): is this batch's every tx
valid (:meth:`LedgerApp.check_txs`), and which of these txs are already on the chain
(:meth:`LedgerApp.committed_among`). A synchronous call from the core is allowed here because
both answers are deterministic (the same batch gets the same answer on every replica, which
safety needs), local to this replica (nothing is sent or awaited), and cost no I/O beyond one
indexed SQLite read of the replica's own chain: the core stays a pure function of its inputs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

from node.codec import CodecError
from node.ledger.tx import (
    MAX_PAYLOAD_BYTES,
    MAX_TX_BYTES,
    ClientRegistry,
    LedgerError,
    TxEnvelope,
    check_tx,
    decode_tx,
    tx_from_raw,
    tx_to_raw,
)


class CommittedIndex(Protocol):
    def committed_among(self, tx_ids: Sequence[bytes]) -> set[bytes]: ...


class LedgerApp:
    """``consensus.events.Application`` over a ledger store and the client registry.

    A transaction is decoded and verified once, at admission (:meth:`admit`) or when it first
    comes in a peer's Request or PrePrepare (:meth:`check_txs`). The verified envelope is kept,
    with the exact bytes verified, in a cache bounded in entries and in bytes: when the same
    bytes come back inside a pre-prepare they are not verified again, and when their batch
    commits the block is built from the envelope (:meth:`take_decoded`), not by decoding them
    once more. The cache is keyed by tx id and compares the bytes, so a byzantine primary cannot
    pass a known tx id with a different payload or signature through it. Cached or not, the
    answer is the same: the cache only saves work, so check_txs stays deterministic across
    replicas.
    """

    def __init__(
        self,
        store: CommittedIndex,
        registry: ClientRegistry,
        *,
        max_payload: int = MAX_PAYLOAD_BYTES,
        cache_size: int = 100_000,
        cache_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        if cache_size < 1 or cache_bytes < 1:
            raise ValueError("cache_size and cache_bytes must be positive")
        self._store = store
        self._registry = registry
        self._max_payload = max_payload
        self._cache_size = cache_size
        self._cache_bytes = cache_bytes
        self._verified: OrderedDict[bytes, tuple[bytes, TxEnvelope]] = OrderedDict()
        self._verified_bytes = 0
        self.cache_hits = 0
        self.cache_misses = 0

    @property
    def registry(self) -> ClientRegistry:
        return self._registry

    def admit(self, raw: bytes, decoded: TxEnvelope | None = None) -> TxEnvelope:
        """Decode and fully check a client's encoded tx; raises LedgerError(reason).

        ``decoded``: the envelope ``raw`` encodes, when the caller built it (from the JSON form)
        and encoded it itself; it is checked for the decoder's bounds instead of decoded."""
        try:
            env = decode_tx(raw) if decoded is None else _checked_shape(raw, decoded)
        except CodecError as e:
            raise LedgerError(e.reason) from None
        problem = check_tx(env, self._registry, max_payload=self._max_payload)
        if problem:
            raise LedgerError(problem)
        self._remember(env.tx_id, raw, env)
        return env

    def check_txs(self, tx_ids: tuple[bytes, ...], txs: tuple[bytes, ...]) -> str | None:
        if len(tx_ids) != len(txs):
            return f"{len(tx_ids)} tx ids but {len(txs)} txs"
        if len(set(tx_ids)) != len(tx_ids):
            return "duplicate tx id in batch"
        for i, (tx_id, raw) in enumerate(zip(tx_ids, txs, strict=True)):
            problem = self._check_one(tx_id, raw)
            if problem:
                return f"tx {i} ({tx_id.hex()[:16]}): {problem}"
        return None

    def committed_among(self, tx_ids: Sequence[bytes]) -> set[bytes]:
        return self._store.committed_among(tx_ids)

    def take_decoded(self, tx_id: bytes, raw: bytes) -> TxEnvelope | None:
        """The verified envelope of exactly ``raw`` (None if not cached), forgotten as it is
        handed out: its batch has committed, so the chain holds it from now on."""
        entry = self._verified.get(tx_id)
        if entry is None or not (entry[0] is raw or entry[0] == raw):
            return None
        del self._verified[tx_id]
        self._verified_bytes -= len(entry[0])
        return entry[1]

    def _check_one(self, tx_id: bytes, raw: bytes) -> str | None:
        entry = self._verified.get(tx_id)
        if entry is not None and (entry[0] is raw or entry[0] == raw):
            self._verified.move_to_end(tx_id)
            self.cache_hits += 1
            return None
        self.cache_misses += 1
        try:
            env = decode_tx(raw)
        except CodecError as e:
            return e.reason
        if env.tx_id != tx_id:
            return "tx does not match its id"
        problem = check_tx(env, self._registry, max_payload=self._max_payload)
        if problem:
            return problem
        self._remember(tx_id, raw, env)
        return None

    def _remember(self, tx_id: bytes, raw: bytes, env: TxEnvelope) -> None:
        verified = self._verified
        old = verified.pop(tx_id, None)
        if old is not None:
            self._verified_bytes -= len(old[0])
        verified[tx_id] = (raw, env)
        self._verified_bytes += len(raw)
        while len(verified) > self._cache_size or self._verified_bytes > self._cache_bytes:
            _, (evicted, _) = verified.popitem(last=False)
            self._verified_bytes -= len(evicted)


def _checked_shape(raw: bytes, env: TxEnvelope) -> TxEnvelope:
    """``env`` if it passes what :func:`decode_tx` checks of ``raw`` (its size; each field's
    type and bounds), without unpacking ``raw``; CodecError naming the first problem."""
    if len(raw) > MAX_TX_BYTES:
        raise CodecError(f"tx: {len(raw)} bytes exceeds the limit of {MAX_TX_BYTES}")
    tx_from_raw(tx_to_raw(env), "tx")
    return env
