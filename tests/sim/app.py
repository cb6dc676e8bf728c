"""The sim's application: transactions are small deterministic blobs, the ledger is in memory.

A valid transaction is ``VALID_PREFIX + anything`` with id ``tx_id(blob)``; a blob starting with
``INVALID_PREFIX`` models a transaction whose hospital signature does not verify, so a byzantine
primary proposing it can be modelled without real client keys (which would cost a signature
check per transaction per node and slow the sweep for no extra coverage of the protocol).
"""

from __future__ import annotations

from collections.abc import Container, Sequence

from consensus.hashing import h

VALID_PREFIX = b"ok|"
INVALID_PREFIX = b"bad|"


def tx_id(blob: bytes) -> bytes:
    return h(b"sim/tx", blob)


def tx_problem(tx_ids: tuple[bytes, ...], txs: tuple[bytes, ...]) -> str | None:
    """Why this list of transactions is unacceptable, or None."""
    if len(tx_ids) != len(txs):
        return f"{len(tx_ids)} ids for {len(txs)} transactions"
    for index, (tid, blob) in enumerate(zip(tx_ids, txs, strict=True)):
        if not blob.startswith(VALID_PREFIX):
            return f"tx {index} is invalid"
        if tx_id(blob) != tid:
            return f"tx {index} does not match its id"
    return None


class SimApp:
    """consensus ``Application`` over a node's durable set of committed transaction ids."""

    __slots__ = ("_committed",)

    def __init__(self, committed: Container[bytes]) -> None:
        self._committed = committed

    def check_txs(self, tx_ids: tuple[bytes, ...], txs: tuple[bytes, ...]) -> str | None:
        return tx_problem(tx_ids, txs)

    def committed_among(self, tx_ids: Sequence[bytes]) -> set[bytes]:
        return {t for t in tx_ids if t in self._committed}
