"""Status sampling: every node's GET /status at a fixed interval, and the primary of the view
most nodes report."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Final

from scripts.client import NO_RETRY, NodeClient, NodeError
from scripts.scenario.analyse import Sample
from scripts.scenario.cluster import Cluster, RunError

STATUS_TIMEOUT_S: Final = 1.0
POLL_INTERVAL_S: Final = 0.5
MAX_SAMPLES: Final = 200_000


class Poller:
    def __init__(self, nodes: NodeClient, cluster: Cluster, clock: Callable[[], float]) -> None:
        self._nodes = {
            i: nodes.at(url, retry=NO_RETRY, timeout_s=STATUS_TIMEOUT_S)
            for i, url in cluster.urls.items()
        }
        self._cluster = cluster
        self._clock = clock
        self.samples: list[Sample] = []

    async def snapshot(self, nodes: Sequence[int]) -> dict[int, Sample]:
        samples = await asyncio.gather(*(self._one(i) for i in nodes))
        return {s.node: s for s in samples}

    async def _one(self, i: int) -> Sample:
        t = self._clock()
        if i in self._cluster.suspended or i in self._cluster.down:
            return Sample(t, i, False)
        try:
            doc = await self._nodes[i].status()
        except NodeError:
            return Sample(t, i, False)
        return Sample(
            t,
            i,
            True,
            height=_opt_int(doc.get("height")),
            view=_opt_int(doc.get("view")),
            head=doc.get("head_hash") if isinstance(doc.get("head_hash"), str) else None,
            in_view_change=bool(doc.get("in_view_change", False)),
            mempool=_opt_int(doc.get("mempool_size")),
        )

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            snap = await self.snapshot(range(self._cluster.n))
            if len(self.samples) + len(snap) <= MAX_SAMPLES:
                self.samples.extend(snap.values())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_INTERVAL_S)

    async def primary(self) -> int:
        """The primary of the view most reachable nodes report (ties: the higher view)."""
        snap = await self.snapshot(self._cluster.reachable())
        views = Counter(s.view for s in snap.values() if s.ok and s.view is not None)
        if not views:
            raise RunError("no node answers GET /status: cannot tell which node is primary")
        view = max(views, key=lambda v: (views[v], v))
        return view % self._cluster.n


def _opt_int(value: object) -> int | None:
    return value if type(value) is int else None
