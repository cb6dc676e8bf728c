"""Deterministic keys, transactions and certified blocks for tests (n = 4, f = 1, quorum 3).

Every key comes from a fixed seed, every tx from fixed fields, so the same call always builds
byte-identical blocks. Importable from any test: ``from tests.unit.helpers_ledger import ...``.
"""

from __future__ import annotations

from collections.abc import Sequence

from consensus.events import Committed
from consensus.hashing import GENESIS_HASH, chain_link
from consensus.messages import NULL_BATCH, Batch, CertifiedBlock, Commit
from node.crypto import generate_keypair, sign
from node.ledger import (
    Block,
    ClientRegistry,
    TxEnvelope,
    block_from_committed,
    encode_tx,
    make_transaction,
)

N = 4
QUORUM = 3
REPLICA_KEYS: list[tuple[bytes, bytes]] = [generate_keypair(bytes([i]) * 32) for i in range(N)]
CONSORTIUM: list[bytes] = [public for _, public in REPLICA_KEYS]

HOSPITALS = ["hospital-0", "hospital-1"]
CLIENT_KEYS: list[tuple[bytes, bytes]] = [
    generate_keypair(bytes([100 + i]) * 32) for i in range(len(HOSPITALS))
]
REGISTRY = ClientRegistry({pub: HOSPITALS[i] for i, (_, pub) in enumerate(CLIENT_KEYS)})

BASE_TIME_MS = 1_700_000_000_000


def make_tx(i: int, client: int = 0, payload: bytes | None = None) -> TxEnvelope:
    """The i-th deterministic transaction of ``client`` (hospital-<client>)."""
    secret, _ = CLIENT_KEYS[client]
    return make_transaction(
        secret,
        hospital=HOSPITALS[client],
        patient=f"patient-{i % 7}",
        record_type="lab-result",
        payload=payload if payload is not None else f"record {i} of client {client}".encode(),
        record_id=f"rec-{client}-{i}",
        timestamp_ms=BASE_TIME_MS + i,
        nonce=i.to_bytes(16, "big"),
    )


def sign_commits(
    seq: int, digest: bytes, *, view: int = 0, replicas: Sequence[int] = (0, 1, 2)
) -> tuple[Commit, ...]:
    out = []
    for r in replicas:
        unsigned = Commit(view=view, seq=seq, digest=digest, replica=r)
        sig = sign(REPLICA_KEYS[r][0], unsigned.signing_bytes())
        out.append(Commit(view=view, seq=seq, digest=digest, replica=r, signature=sig))
    return tuple(out)


def make_batch(
    txs: Sequence[TxEnvelope], *, view: int = 0, proposer: int = 0, timestamp_ms: int | None = None
) -> Batch:
    return Batch(
        view=view,
        proposer=proposer,
        timestamp_ms=BASE_TIME_MS if timestamp_ms is None else timestamp_ms,
        tx_ids=tuple(env.tx_id for env in txs),
        txs=tuple(encode_tx(env) for env in txs),
    )


def make_committed(
    seq: int,
    prev_hash: bytes,
    txs: Sequence[TxEnvelope] | None,
    *,
    view: int = 0,
    proposer: int = 0,
    commit_view: int | None = None,
    replicas: Sequence[int] = (0, 1, 2),
) -> Committed:
    """A decision at ``seq`` as the core reports it; ``txs=None`` gives a null batch."""
    batch = NULL_BATCH if txs is None else make_batch(txs, view=view, proposer=proposer)
    digest = batch.digest()
    commits = sign_commits(
        seq, digest, view=view if commit_view is None else commit_view, replicas=replicas
    )
    return Committed(
        block=CertifiedBlock(seq=seq, batch=batch, commits=commits),
        prev_hash=prev_hash,
        block_hash=chain_link(seq, prev_hash, digest),
    )


def make_chain(length: int, txs_per_block: int = 2, *, null_every: int = 0) -> list[Block]:
    """A valid chain of ``length`` blocks from genesis; every ``null_every``-th block is null."""
    blocks: list[Block] = []
    prev = GENESIS_HASH
    counter = 0
    for seq in range(1, length + 1):
        txs: list[TxEnvelope] | None
        if null_every and seq % null_every == 0:
            txs = None
        else:
            txs = []
            for _ in range(txs_per_block):
                txs.append(make_tx(counter, client=counter % len(HOSPITALS)))
                counter += 1
        block = block_from_committed(make_committed(seq, prev, txs, proposer=seq % N))
        blocks.append(block)
        prev = block.block_hash
    return blocks
