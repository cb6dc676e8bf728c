"""Transactions a node knows of but has not seen commit: heard of, and acknowledged.

:class:`PendingTxs` remembers in memory the ids this node has seen (client submissions, peers'
Requests and PrePrepares), so GET /tx can answer "pending" on any node that heard of one.
:class:`DurablePending` keeps on disk the transactions this node itself acknowledged to a
client (HTTP 202) until they commit, so a crash in between loses none of them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from itertools import islice

from node.store import Store


class PendingTxs:
    """Ids of transactions this node has seen but not yet committed: bounded LRU with a TTL.

    Fed with client submissions and with the ids in peers' Requests and PrePrepares, so that
    GET /tx can say "pending" on any node that heard of the transaction.
    """

    __slots__ = ("_max", "_seen", "_ttl_ms")

    def __init__(self, max_size: int, ttl_ms: int) -> None:
        self._max = max_size
        self._ttl_ms = ttl_ms
        self._seen: OrderedDict[bytes, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, tx_ids: tuple[bytes, ...] | list[bytes], now_ms: int) -> None:
        seen = self._seen
        for tx_id in tx_ids:
            if tx_id not in seen:
                seen[tx_id] = now_ms
        self._expire(now_ms)
        while len(seen) > self._max:
            seen.popitem(last=False)

    def discard(self, tx_ids: tuple[bytes, ...]) -> None:
        for tx_id in tx_ids:
            self._seen.pop(tx_id, None)

    def get(self, tx_id: bytes, now_ms: int) -> int | None:
        t = self._seen.get(tx_id)
        if t is not None and now_ms - t > self._ttl_ms:
            del self._seen[tx_id]
            return None
        return t

    def _expire(self, now_ms: int) -> None:
        """Insertion order is first-seen order, so expired entries are at the front."""
        seen = self._seen
        while seen:
            tx_id, t = next(iter(seen.items()))
            if now_ms - t <= self._ttl_ms:
                return
            del seen[tx_id]


class DurablePending:
    """The store's pending table, with the ids (and sizes) in it mirrored in memory.

    Only transactions this node acknowledged itself are on disk as pending: most nodes have
    none of a block's, so the mirror answers "nothing to delete" without touching SQLite. The
    table is bounded in count and bytes: past either, the node acknowledges nothing more
    (``room_for`` is False and POST /tx gets 503) until some commit.
    """

    __slots__ = ("_ids", "_max_bytes", "_max_txs", "_store", "nbytes")

    def __init__(self, store: Store, max_txs: int = 1 << 62, max_bytes: int = 1 << 62) -> None:
        self._store = store
        self._max_txs = max_txs
        self._max_bytes = max_bytes
        self._ids: dict[bytes, int] = {}
        """Id -> encoded size, in acknowledgement order (the oldest are re-offered first)."""
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, tx_id: bytes) -> bool:
        return tx_id in self._ids

    def room_for(self, count: int, size: int) -> bool:
        return len(self._ids) + count <= self._max_txs and self.nbytes + size <= self._max_bytes

    def save(self, tx_ids: Sequence[bytes], txs: Sequence[bytes]) -> None:
        """Durably remember acknowledged transactions (before the client hears 202)."""
        self._store.save_pending(tx_ids, txs)
        self._note(zip(tx_ids, (len(tx) for tx in txs), strict=True))

    def _note(self, items: Iterable[tuple[bytes, int]]) -> None:
        ids = self._ids
        for tx_id, size in items:
            if tx_id not in ids:
                ids[tx_id] = size
                self.nbytes += size

    def load(self, limit: int) -> list[tuple[bytes, bytes]]:
        """What was acknowledged before a restart and is not on the chain: (tx id, tx)."""
        pending = self._store.load_pending(limit)
        self._note((t, len(tx)) for t, tx in pending)
        return pending

    def oldest(self, limit: int, held: Callable[[bytes], bool]) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` of the longest-pending transactions not ``held``: (tx id, tx), read
        back from the table (to hand to the replica again)."""
        ids = list(islice((t for t in self._ids if not held(t)), limit))
        return self._store.get_pending(ids) if ids else []

    def forget_committed(self, tx_ids: Iterable[bytes]) -> None:
        """Delete the committed ones of ``tx_ids`` from the table."""
        mine = self._ids
        if not mine:
            return
        done = [t for t in tx_ids if t in mine]
        if done:
            self._store.delete_pending(done)
            for t in done:
                self.nbytes -= mine.pop(t)
