"""Pending client transactions known to one replica: de-duplicated, bounded, in arrival order."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice


class Mempool:
    """Transactions not yet executed. Those not inside an in-flight batch wait in ``_queue`` so
    the primary never puts one transaction in two batches of the same view."""

    __slots__ = ("_arrival_ms", "_queue", "_relayed", "_txs", "max_txs")

    def __init__(self, max_txs: int) -> None:
        self.max_txs = max_txs
        self._txs: dict[bytes, bytes] = {}
        self._arrival_ms: dict[bytes, int] = {}
        self._queue: dict[bytes, None] = {}
        self._relayed: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._txs)

    def __contains__(self, tx_id: bytes) -> bool:
        return tx_id in self._txs

    def add(self, tx_id: bytes, tx: bytes, now_ms: int) -> bool:
        """False when full (the shell answers 503); a duplicate is accepted as a no-op."""
        if tx_id in self._txs:
            return True
        if len(self._txs) >= self.max_txs:
            return False
        self._txs[tx_id] = tx
        self._arrival_ms[tx_id] = now_ms
        self._queue[tx_id] = None
        return True

    def remove(self, tx_ids: Iterable[bytes]) -> None:
        for tx_id in tx_ids:
            if self._txs.pop(tx_id, None) is not None:
                del self._arrival_ms[tx_id]
                self._queue.pop(tx_id, None)
                self._relayed.pop(tx_id, None)

    def mark_proposed(self, tx_ids: Iterable[bytes]) -> None:
        for tx_id in tx_ids:
            self._queue.pop(tx_id, None)

    def take_batch(self, max_txs: int, max_bytes: int) -> tuple[list[bytes], list[bytes]]:
        """Oldest unproposed transactions, up to the batch bounds; marks them proposed."""
        ids: list[bytes] = []
        txs: list[bytes] = []
        size = 0
        for tx_id in self._queue:
            tx = self._txs[tx_id]
            if len(ids) >= max_txs or (ids and size + len(tx) > max_bytes):
                break
            ids.append(tx_id)
            txs.append(tx)
            size += len(tx)
        self.mark_proposed(ids)
        return ids, txs

    def unproposed_count(self) -> int:
        return len(self._queue)

    def oldest_unproposed_ms(self) -> int | None:
        first = next(iter(self._queue), None)
        return None if first is None else self._arrival_ms[first]

    def stale(self, older_than_ms: int, now_ms: int, limit: int) -> tuple[list[bytes], list[bytes]]:
        """Transactions waiting since before ``older_than_ms`` and not relayed since then
        (a relay can be lost too); marks them relayed now. Scans a bounded prefix."""
        ids: list[bytes] = []
        for tx_id, t in islice(self._arrival_ms.items(), 8 * limit):
            if t > older_than_ms or len(ids) >= limit:
                break
            if self._relayed.get(tx_id, t) <= older_than_ms:
                ids.append(tx_id)
        for tx_id in ids:
            self._relayed[tx_id] = now_ms
        return ids, [self._txs[i] for i in ids]

    def items(self, limit: int) -> tuple[list[bytes], list[bytes]]:
        ids = list(islice(self._txs, limit))
        return ids, [self._txs[i] for i in ids]

    def requeue_all(self) -> None:
        """A view change voids in-flight proposals; what was prepared comes back via new-view."""
        self._queue = dict.fromkeys(self._txs)
