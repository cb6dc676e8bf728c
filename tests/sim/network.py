"""The simulated network: virtual-time event queue and per-link delivery policy.

Everything random comes from one ``random.Random`` handed in by the cluster, so a run is a pure
function of its seed. The network only decides *whether and when* a message arrives; the cluster
owns the queue's contents and what delivery means.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class LinkPolicy:
    """How one directed link behaves. Delays are uniform in [min, max]; a ``spike`` adds
    ``spike_ms`` more, which is what reorders messages well beyond the usual jitter."""

    min_delay_ms: int = 1
    max_delay_ms: int = 5
    drop: float = 0.0
    duplicate: float = 0.0
    spike: float = 0.0
    spike_ms: int = 50

    def __post_init__(self) -> None:
        if not 0 <= self.min_delay_ms <= self.max_delay_ms:
            raise ValueError(f"bad delay range [{self.min_delay_ms}, {self.max_delay_ms}]")
        for name in ("drop", "duplicate", "spike"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability, got {p}")
        if self.spike_ms < 0:
            raise ValueError(f"spike_ms must be >= 0, got {self.spike_ms}")


BENIGN = LinkPolicy()
"""What the network returns to when faults heal: small jitter, nothing lost."""


class EventQueue:
    """A min-heap of (time, insertion number, payload): ties are served in insertion order, so
    equal-time events are deterministic without ever comparing payloads."""

    __slots__ = ("_counter", "_heap")

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, tuple[Any, ...]]] = []
        self._counter = 0

    def push(self, time_ms: int, item: tuple[Any, ...]) -> None:
        self._counter += 1
        heapq.heappush(self._heap, (time_ms, self._counter, item))

    def pop(self) -> tuple[int, tuple[Any, ...]]:
        time_ms, _, item = heapq.heappop(self._heap)
        return time_ms, item

    def peek_time(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)


@dataclass(slots=True)
class NetworkStats:
    sent: int = 0
    lost: int = 0
    cut: int = 0
    duplicated: int = 0


class Network:
    """Link policies, partitions and the random choices of delay, loss and duplication."""

    __slots__ = ("_group", "_links", "_rng", "policy", "stats")

    def __init__(self, rng: random.Random, policy: LinkPolicy = BENIGN) -> None:
        self._rng = rng
        self.policy = policy
        self._links: dict[tuple[int, int], LinkPolicy] = {}
        self._group: dict[int, int] = {}
        self.stats = NetworkStats()

    def set_link(self, src: int, dest: int, policy: LinkPolicy | None) -> None:
        """Override one directed link (None restores the network-wide policy)."""
        if policy is None:
            self._links.pop((src, dest), None)
        else:
            self._links[(src, dest)] = policy

    def partition(self, groups: Sequence[Iterable[int]]) -> None:
        """Only nodes in the same group can talk; a node named in no group is alone."""
        self._group = {}
        for index, group in enumerate(groups):
            for node in group:
                if node in self._group:
                    raise ValueError(f"node {node} is in two partition groups")
                self._group[node] = index

    def heal(self) -> None:
        """End every fault: no partition, no link overrides, the benign policy."""
        self._group = {}
        self._links = {}
        self.policy = BENIGN

    @property
    def partitioned(self) -> bool:
        return bool(self._group)

    def connected(self, a: int, b: int) -> bool:
        if not self._group:
            return True
        # A node missing from every group gets a group of its own (-1 - id is unique per node).
        return self._group.get(a, -1 - a) == self._group.get(b, -1 - b)

    def delays(self, src: int, dest: int) -> list[int]:
        """Delivery delays for one send: [] if lost or cut, two entries if duplicated."""
        self.stats.sent += 1
        if not self.connected(src, dest):
            self.stats.cut += 1
            return []
        policy = self._links.get((src, dest), self.policy)
        rng = self._rng
        if policy.drop and rng.random() < policy.drop:
            self.stats.lost += 1
            return []
        copies = 1
        if policy.duplicate and rng.random() < policy.duplicate:
            copies = 2
            self.stats.duplicated += 1
        out = []
        for _ in range(copies):
            delay = rng.randint(policy.min_delay_ms, policy.max_delay_ms)
            if policy.spike and rng.random() < policy.spike:
                delay += rng.randint(0, policy.spike_ms)
            out.append(delay)
        return out
