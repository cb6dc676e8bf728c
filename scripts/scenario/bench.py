"""A scenario under the benchmark: ``medchain bench --scenario FILE`` runs the timeline while the
bench drives the load."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from scripts.client import NodeClient
from scripts.cluster import ClusterLayout
from scripts.faultctl import AdminClient
from scripts.scenario.cluster import STARTUP_TIMEOUT_S, Cluster, enable_faults
from scripts.scenario.params import Scenario, load_scenario
from scripts.scenario.poller import Poller
from scripts.scenario.timeline import STEP_GRACE_S, Timeline


class BenchTimeline:
    """A scenario's fault timeline, applied while ``medchain bench`` drives the cluster (the
    bench's load replaces the scenario's, and the bench reports the figures). The bench calls
    ``prepare``, ``start`` and ``stop`` once per benchmark point, in this order; the timeline
    runs on an event loop in its own thread so the bench's loop is never blocked, and ``stop``
    heals everything before returning."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pool = contextlib.AsyncExitStack()
        self._timeline: Timeline | None = None
        self._t0 = 0.0

    def prepare(self, cluster_dir: Path) -> None:
        """After ``init``, before any node starts: enable fault injection in the configs."""
        layout = ClusterLayout(cluster_dir)
        for i in layout.node_indices():
            enable_faults(layout.config_path(i), seed=1009 + i, consensus=self.scenario.consensus)

    def start(self, cluster_dir: Path) -> None:
        """At second 0 of the load: start applying the timeline in the background."""
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="scenario", daemon=True)
        self._thread.start()
        n = len(ClusterLayout(cluster_dir).node_indices())
        asyncio.run_coroutine_threadsafe(self._begin(cluster_dir, n), loop).result(30.0)

    async def _begin(self, cluster_dir: Path, n: int) -> None:
        cluster = Cluster(cluster_dir, n)
        nodes = await self._pool.enter_async_context(NodeClient(list(cluster.urls.values())))
        self._t0 = time.monotonic()
        poller = Poller(nodes, cluster, self._clock)
        admin = AdminClient(nodes.session, cluster.operator_secret)
        out = Console(stderr=True, highlight=False)
        self._timeline = Timeline(cluster, admin, poller, self._clock, out)
        self._timeline.schedule(self.scenario.steps)

    def _clock(self) -> float:
        return time.monotonic() - self._t0

    def stop(self) -> dict[str, Any]:
        """After the load: heal everything; return what was done (goes into result.json)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return {"name": self.scenario.name, "faults": [], "error": "never started"}
        try:
            fut = asyncio.run_coroutine_threadsafe(self._end(), loop)
            return fut.result(STEP_GRACE_S + STARTUP_TIMEOUT_S * 2)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10.0)
            if not thread.is_alive():
                loop.close()

    async def _end(self) -> dict[str, Any]:
        timeline = self._timeline
        assert timeline is not None
        try:
            await timeline.heal_all()
        finally:
            await self._pool.aclose()
        return {
            "name": self.scenario.name,
            "file": str(self.scenario.path),
            "faults": [s.to_json() for s in timeline.spans],
            "byzantine": sorted(timeline.byzantine),
        }


def bench_scenario(path: Path) -> BenchTimeline:
    """``medchain bench --scenario FILE``: the scenario's timeline as a bench companion."""
    return BenchTimeline(load_scenario(path))
