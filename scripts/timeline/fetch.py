"""Reading nodes' flight recorders: ``GET /events`` page by page through ``NodeClient``.

``fetch_events`` reads one node from a time on, bounded in pages and events. ``Collector``
keeps reading every node while something runs (a scenario): a node's ring is in memory and
bounded, so what it recorded before a kill -9, or before the ring wrapped, is only known to
whoever fetched it in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from scripts.client import NO_RETRY, NodeClient, NodeError
from scripts.timeline.events import Event, EventsError, merge, parse_page

PAGE_LIMIT: Final = 5000
"""The node's maximum page (GET /events limit)."""
MAX_EVENTS_PER_NODE: Final = 200_000
"""What a tool keeps of one node (about 40 MB at most): the oldest go first."""
MAX_PAGES_PER_FETCH: Final = 100
FETCH_TIMEOUT_S: Final = 5.0
COLLECT_INTERVAL_S: Final = 1.0


@dataclass(slots=True)
class NodeEvents:
    """What a tool has read of one node's recorder."""

    node: int
    """The node's id (-1 until a node given by URL only has said it)."""
    url: str
    events: deque[Event] = field(default_factory=lambda: deque(maxlen=MAX_EVENTS_PER_NODE))
    since: int = 0
    """Where the next fetch starts (the last page's ``next``)."""
    lost: int = 0
    """Events the node's ring dropped before we read them."""
    discarded: int = 0
    """Events we read and later let go of (MAX_EVENTS_PER_NODE)."""
    clock_offset_ms: int | None = None
    """The node's clock minus ours, at the last fetch (half the round trip either way)."""
    error: str | None = None
    """Why the last fetch failed (None: it worked)."""

    def add(self, events: Sequence[Event]) -> None:
        room = MAX_EVENTS_PER_NODE - len(self.events)
        self.discarded += max(0, len(events) - room)
        self.events.extend(events)

    def to_json(self) -> dict[str, object]:
        return {
            "node": self.node,
            "url": self.url,
            "events": len(self.events),
            "lost": self.lost,
            "discarded": self.discarded,
            "clock_offset_ms": self.clock_offset_ms,
            "error": self.error,
        }


async def fetch_into(client: NodeClient, state: NodeEvents, *, until_ms: int | None = None) -> None:
    """Read ``state``'s node from ``state.since`` until it has nothing newer (or ``until_ms``
    is passed, or the page bound is reached); on failure ``state.error`` says why, and what was
    read stays."""
    for _ in range(MAX_PAGES_PER_FETCH):
        sent = time.time()
        try:
            doc = await client.get_json(f"/events?since={state.since}&limit={PAGE_LIMIT}")
            page = parse_page(doc)
        except NodeError as exc:
            state.error = str(exc)
            return
        except EventsError as exc:
            state.error = f"{client.url}/events: {exc}"
            return
        if state.node < 0:
            state.node = page.node  # a node given by URL only: it says who it is
        elif page.node != state.node:
            state.error = f"{client.url}/events says it is node {page.node}, not {state.node}"
            return
        middle_ms = int((sent + time.time()) * 500)
        state.clock_offset_ms = page.now_ms - middle_ms
        state.error = None
        state.lost += page.dropped
        state.add(page.events)
        done = not page.events or page.next <= state.since
        state.since = max(state.since, page.next)
        if done or len(page.events) < PAGE_LIMIT:
            return
        if until_ms is not None and page.events[-1].t_ms > until_ms:
            return


async def fetch_events(
    client: NodeClient,
    nodes: Mapping[int, str],
    *,
    since_ms: int = 0,
    until_ms: int | None = None,
) -> dict[int, NodeEvents]:
    """Every node's events from ``since_ms`` on, fetched in parallel."""
    states = {i: NodeEvents(i, url, since=since_ms) for i, url in nodes.items()}
    await asyncio.gather(
        *(fetch_into(_one(client, url), states[i], until_ms=until_ms) for i, url in nodes.items())
    )
    return states


def _one(client: NodeClient, url: str) -> NodeClient:
    return client.at(url, retry=NO_RETRY, timeout_s=FETCH_TIMEOUT_S)


class Collector:
    """Reads every node's recorder every ``interval_s`` until stopped; a node that does not
    answer (killed, suspended) is simply tried again next time, from where it was left."""

    def __init__(
        self,
        client: NodeClient,
        nodes: Mapping[int, str],
        *,
        since_ms: int = 0,
        interval_s: float = COLLECT_INTERVAL_S,
    ) -> None:
        self._clients = {i: _one(client, url) for i, url in nodes.items()}
        self.nodes = {i: NodeEvents(i, url, since=since_ms) for i, url in nodes.items()}
        self._interval_s = interval_s

    async def collect_once(self) -> None:
        await asyncio.gather(*(fetch_into(self._clients[i], st) for i, st in self.nodes.items()))

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set, then one last read."""
        while not stop.is_set():
            await self.collect_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval_s)
        await self.collect_once()

    def merged(self) -> list[Event]:
        return merge(list(st.events) for st in self.nodes.values())

    def available(self) -> bool:
        """Did any node ever serve its events?"""
        return any(st.clock_offset_ms is not None for st in self.nodes.values())
