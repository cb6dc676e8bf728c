"""Pending client transactions known to one replica: de-duplicated, bounded in count and in
bytes, in arrival order, with the age of the oldest (the backlog a shell admits against)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from itertools import islice


class Mempool:
    """Transactions not yet executed. Those not inside an in-flight batch wait in ``_queue`` so
    the primary never puts one transaction in two batches of the same view.

    The ordered maps are OrderedDicts: their oldest entry is found in O(1), where a plain
    dict's first key is found by scanning every slot deleted before it (and this one is
    consumed from the front), which grows with everything the replica ever held.

    ``_local`` holds, in arrival order, the ones this replica's own clients submitted: those are
    the ones it relays to every replica when they wait too long (``normal.relay_stale``), as a
    PBFT client would (section 4.1). A relayed transaction is not relayed again by whoever
    received it, so a backlog never turns into n-fold traffic.
    """

    __slots__ = (
        "_arrival_ms",
        "_local",
        "_queue",
        "_relayed",
        "_txs",
        "max_bytes",
        "max_txs",
        "nbytes",
        "overflow_txs",
    )

    def __init__(self, max_txs: int, max_bytes: int = 1 << 62, overflow_txs: int = 0) -> None:
        self.max_txs = max_txs
        self.max_bytes = max_bytes
        self.overflow_txs = overflow_txs
        """How far past ``max_txs`` a forced add may go (``add(force=True)``)."""
        self.nbytes = 0
        """Sum of the held transactions' encoded sizes."""
        self._txs: dict[bytes, bytes] = {}
        self._arrival_ms: OrderedDict[bytes, int] = OrderedDict()
        self._queue: OrderedDict[bytes, None] = OrderedDict()
        self._local: OrderedDict[bytes, None] = OrderedDict()
        self._relayed: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._txs)

    def __contains__(self, tx_id: bytes) -> bool:
        return tx_id in self._txs

    def has_room(self, size: int) -> bool:
        return len(self._txs) < self.max_txs and self.nbytes + size <= self.max_bytes

    def add(
        self, tx_id: bytes, tx: bytes, now_ms: int, *, local: bool = False, force: bool = False
    ) -> bool:
        """False when full in count or bytes (the shell answers 503); a duplicate is accepted
        as a no-op (and becomes local if ``local``: its client is here now). ``force``: up to
        ``overflow_txs`` past the bounds (a view change taking up the batches of one watermark
        window, ``viewchange._take_up_unexecuted``)."""
        if tx_id in self._txs:
            if local:
                self._local[tx_id] = None
            return True
        if force:
            if len(self._txs) >= self.max_txs + self.overflow_txs:
                return False
        elif not self.has_room(len(tx)):
            return False
        self._txs[tx_id] = tx
        self.nbytes += len(tx)
        self._arrival_ms[tx_id] = now_ms
        self._queue[tx_id] = None
        if local:
            self._local[tx_id] = None
        return True

    def remove(self, tx_ids: Iterable[bytes]) -> None:
        for tx_id in tx_ids:
            tx = self._txs.pop(tx_id, None)
            if tx is not None:
                self.nbytes -= len(tx)
                del self._arrival_ms[tx_id]
                self._queue.pop(tx_id, None)
                self._local.pop(tx_id, None)
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

    def oldest_ms(self) -> int | None:
        """Arrival time of the longest-waiting transaction held (arrival order is insertion
        order, and removal keeps it): the age of the backlog, in O(1)."""
        first = next(iter(self._arrival_ms.items()), None)
        return None if first is None else first[1]

    def stale(
        self,
        older_than_ms: int,
        now_ms: int,
        limit: int,
        *,
        unproposed_only: bool = False,
        resent_before_ms: int | None = None,
    ) -> tuple[list[bytes], list[bytes]]:
        """Local transactions waiting since before ``older_than_ms`` and not relayed since
        ``resent_before_ms`` (by default the same time; a relay can be lost too), optionally
        only those not in a batch yet; marks them relayed now. Scans a bounded prefix of the
        local ones, oldest first."""
        resent = older_than_ms if resent_before_ms is None else resent_before_ms
        ids: list[bytes] = []
        for tx_id in islice(self._local, 8 * limit):
            t = self._arrival_ms[tx_id]
            if t > older_than_ms or len(ids) >= limit:
                break
            if unproposed_only and tx_id not in self._queue:
                continue
            if self._relayed.get(tx_id, t) <= resent:
                ids.append(tx_id)
        for tx_id in ids:
            self._relayed[tx_id] = now_ms
        return ids, [self._txs[i] for i in ids]

    def items(self, limit: int) -> tuple[list[bytes], list[bytes]]:
        ids = list(islice(self._txs, limit))
        return ids, [self._txs[i] for i in ids]

    def requeue_all(self) -> None:
        """A view change voids in-flight proposals; what was prepared comes back via new-view."""
        self._queue = OrderedDict.fromkeys(self._txs)
