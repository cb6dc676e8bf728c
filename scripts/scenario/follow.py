"""Seeing commits: the chain read as it grows, from the honest node furthest ahead.

Every FOLLOW_INTERVAL_S the follower asks every honest node for its ``GET /status`` (each
bounded by STATUS_TIMEOUT_S: a dead or frozen node costs one timeout, not a stall), and reads
the blocks it has not seen yet from the one with the highest height (``GET /blocks?txs=ids``:
headers and transaction ids only). A transaction counts as committed when the status that
showed its block arrived, seen on that node at that height: the resolution of every commit
time in a scenario's report is one interval plus a round trip. This replaces a long poll per
transaction, which at thousands of transactions a second would load the nodes more than the
load itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Final

from scripts.client import NO_RETRY, NodeClient, NodeError
from scripts.scenario.cluster import Cluster

FOLLOW_INTERVAL_S: Final = 0.1
STATUS_TIMEOUT_S: Final = 1.0
BLOCKS_TIMEOUT_S: Final = 10.0
BLOCKS_PAGE: Final = 200

OnCommit = Callable[[str, float, int, int], None]
"""(tx id hex, seen at, node, height)."""


class CommitFollower:
    def __init__(
        self,
        nodes: NodeClient,
        cluster: Cluster,
        clock: Callable[[], float],
        honest: Callable[[], set[int]],
        on_commit: OnCommit,
    ) -> None:
        self._nodes = {
            i: nodes.at(url, retry=NO_RETRY, timeout_s=STATUS_TIMEOUT_S)
            for i, url in cluster.urls.items()
        }
        self._clock = clock
        self._honest = honest
        self._on_commit = on_commit
        self.height = 0
        """Height through which blocks have been read."""
        self.errors = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.step()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), FOLLOW_INTERVAL_S)

    async def step(self) -> None:
        """One round: every honest node's height, then the new blocks from the highest."""
        honest = sorted(self._honest())
        heights = await asyncio.gather(*(self._height(i) for i in honest))
        seen = self._clock()
        ranked = sorted(
            ((h, i) for h, i in zip(heights, honest, strict=True) if h is not None),
            reverse=True,
        )
        for top, node in ranked:
            if top <= self.height:
                return
            if await self._read(node, top, seen):
                return  # else that node did not serve its blocks: try the next one

    async def _height(self, i: int) -> int | None:
        try:
            doc = await self._nodes[i].status(timeout_s=STATUS_TIMEOUT_S)
        except NodeError:
            return None
        height = doc.get("height")
        return height if type(height) is int else None

    async def _read(self, node: int, top: int, seen: float) -> bool:
        """Blocks (height, top] from ``node``; False if it failed before reaching ``top``."""
        client = self._nodes[node]
        while self.height < top:
            try:
                page = await client.blocks(
                    self.height + 1,
                    min(BLOCKS_PAGE, top - self.height),
                    txs="ids",
                    timeout_s=BLOCKS_TIMEOUT_S,
                )
            except NodeError:
                self.errors += 1
                return False
            if not page.blocks or not self._note(page.blocks, node, seen):
                self.errors += 1
                return False
        return True

    def _note(self, blocks: list[Any], node: int, seen: float) -> bool:
        for block in blocks:
            if not isinstance(block, dict) or block.get("height") != self.height + 1:
                return False
            ids = block.get("tx_ids")
            if not isinstance(ids, list):
                return False
            for tx_id in ids:
                if isinstance(tx_id, str):
                    self._on_commit(tx_id, seen, node, self.height + 1)
            self.height += 1
        return True
