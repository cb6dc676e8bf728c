"""Long polls (GET /tx?wait_ms=N) waiting for their transaction to commit."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

from node.api import Overloaded


class CommitWaiters:
    """Futures by tx id, bounded in number; woken when the tx commits or the node stops."""

    __slots__ = ("_by_tx", "_closed", "_count", "_max")

    def __init__(self, max_waiters: int) -> None:
        self._max = max_waiters
        self._by_tx: dict[bytes, set[asyncio.Future[None]]] = {}
        self._count = 0
        self._closed = False

    @property
    def count(self) -> int:
        """Requests waiting right now."""
        return self._count

    async def wait(self, tx_id: bytes, wait_ms: int) -> None:
        """Return when ``tx_id`` is woken or after ``wait_ms``, whichever is first; Overloaded
        if too many requests wait already."""
        if self._closed:
            return  # stopping: a new long poll would hold the graceful shutdown open
        if self._count >= self._max:
            raise Overloaded("too many waiting requests")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._by_tx.setdefault(tx_id, set()).add(fut)
        self._count += 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, wait_ms / 1000.0)
        finally:
            self._count -= 1
            futs = self._by_tx.get(tx_id)
            if futs is not None:
                futs.discard(fut)
                if not futs:
                    del self._by_tx[tx_id]

    def wake(self, tx_ids: Iterable[bytes]) -> None:
        """Answer everyone waiting for one of ``tx_ids`` (they have committed)."""
        for tx_id in tx_ids:
            for fut in self._by_tx.pop(tx_id, ()):
                if not fut.done():
                    fut.set_result(None)

    def release_all(self, *, close: bool = False) -> None:
        """Answer every waiter now (the node has failed, or, with ``close``, is stopping: then
        later waits return at once too, as clients keep polling until the listener closes)."""
        self._closed = self._closed or close
        waiting, self._by_tx = self._by_tx, {}
        for futs in waiting.values():
            for fut in futs:
                if not fut.done():
                    fut.set_result(None)
