"""Byzantine behaviour of outgoing consensus messages: pure functions of the message.

Randomness comes in through ``rng`` and signing through ``sign`` (the node's own key: every lie
that must pass signature checks to be interesting is signed by the liar itself), so a given
seed always tells the same lies.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from typing import Final

from consensus.messages import (
    Batch,
    CertifiedBlock,
    Checkpoint,
    Commit,
    FetchResponse,
    Message,
    NewView,
    Prepare,
    PrePrepare,
    Suspect,
    ViewChange,
)
from node.faults.model import ByzantineMode

Sign = Callable[[bytes], bytes]
DIGEST_BYTES: Final = 32

SIGNED_TYPES: Final = (PrePrepare, Prepare, Commit, Checkpoint, ViewChange, NewView, Suspect)


def resign(msg: PrePrepare | Prepare | Commit, sign: Sign) -> PrePrepare | Prepare | Commit:
    unsigned = replace(msg, signature=b"")
    return replace(unsigned, signature=sign(unsigned.signing_bytes()))


def flip_bytes(data: bytes) -> bytes:
    return bytes(b ^ 0xFF for b in data)


def alternative_batch(batch: Batch) -> Batch:
    """A different batch for the same slot: the last transaction dropped, a later timestamp
    (so even a one-transaction batch gets a different digest)."""
    return replace(
        batch,
        timestamp_ms=batch.timestamp_ms + 1,
        tx_ids=batch.tx_ids[:-1],
        txs=batch.txs[:-1],
    )


def equivocation_target(dest: int, primary: int, n: int) -> bool:
    """True for the backups that get the alternative batch: the second half, counting backups
    from the primary (n=4, primary 0: backups 2 and 3; backup 1 gets the real batch)."""
    rank = (dest - primary) % n
    return rank > (n - 1) // 2


def byzantine_rewrite(
    mode: ByzantineMode,
    dest: int | None,
    message: Message,
    sign: Sign,
    *,
    n: int,
    rng: random.Random,
) -> Message | None:
    """What a byzantine node in ``mode`` sends to ``dest`` instead of ``message`` (None: send
    nothing). ``sign`` is the node's own signing function (its key): every lie that must pass
    signature checks to be interesting is signed by the liar itself."""
    if mode is ByzantineMode.SILENT:
        return None
    if mode is ByzantineMode.EQUIVOCATE:
        if (
            isinstance(message, PrePrepare)
            and dest is not None
            and not message.batch.is_null
            and equivocation_target(dest, message.replica, n)
        ):
            alt = alternative_batch(message.batch)
            return resign(replace(message, batch=alt, digest=alt.digest()), sign)
        return message
    if mode is ByzantineMode.CORRUPT_SIGNATURES:
        if isinstance(message, SIGNED_TYPES):
            return replace(message, signature=flip_bytes(message.signature))
        return message
    if mode is ByzantineMode.WRONG_DIGEST:
        if isinstance(message, Prepare | Commit):
            return resign(replace(message, digest=rng.randbytes(DIGEST_BYTES)), sign)
        return message
    if mode is ByzantineMode.ALTER_BLOCKS:
        if isinstance(message, FetchResponse) and message.blocks:
            return replace(message, blocks=tuple(alter_certified_block(b) for b in message.blocks))
        return message
    raise AssertionError(f"unhandled byzantine mode {mode}")


def alter_certified_block(block: CertifiedBlock) -> CertifiedBlock:
    """The block with its first transaction's payload altered (the tx id, which covers only the
    header, is unchanged, so only the payload-hash check catches it); a block without
    transactions gets a later timestamp instead (its digest no longer matches the
    certificate). Either way the block must fail verification at the receiver."""
    batch = block.batch
    if not batch.txs:
        return replace(block, batch=replace(batch, timestamp_ms=batch.timestamp_ms + 1))
    altered = _alter_encoded_tx(batch.txs[0])
    return replace(block, batch=replace(batch, txs=(altered, *batch.txs[1:])))


def _alter_encoded_tx(raw: bytes) -> bytes:
    # Imported here: node.ledger pulls in the codec and crypto, which the rest of this module
    # (consulted on every frame) does not need.
    from node.codec import CodecError
    from node.ledger import TxEnvelope, decode_tx, encode_tx

    try:
        env = decode_tx(raw)
    except CodecError:
        return raw[:-1] + bytes([raw[-1] ^ 0xFF]) if raw else b"\x00"
    payload = env.payload
    altered = bytes([payload[0] ^ 0xFF]) + payload[1:] if payload else b"\x00"
    return encode_tx(TxEnvelope(tx=env.tx, payload=altered))


__all__ = [
    "Sign",
    "alter_certified_block",
    "alternative_batch",
    "byzantine_rewrite",
    "equivocation_target",
]
