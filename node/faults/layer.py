"""The fault layer: the faults active on one node and every decision they take.

For each frame sent, :meth:`FaultLayer.on_send` says what to actually send, as
``(delay_s, frame)`` pairs (empty: drop it; two: duplicate; delays with jitter reorder); for
each frame received, :meth:`FaultLayer.on_receive` says whether it is delivered. While a pause
is active :attr:`FaultLayer.paused` holds and :meth:`FaultLayer.wait_unpaused` waits;
:meth:`FaultLayer.outgoing` applies the active byzantine mode to outgoing consensus messages.
The wrappers in :mod:`node.faults.peer`, :mod:`node.faults.served` and :mod:`node.faults.wiring`
consult it; a disabled layer passes every frame through untouched and refuses every fault, so a
production node cannot be made to misbehave over HTTP.

Every fault may carry a duration after which it clears itself, measured on the node's monotonic
clock (lazily: checked whenever the layer is consulted). Every random choice comes from a
per-fault ``random.Random`` seeded from the fault's ``seed`` (or the layer's seed), so a given
seed and sequence of calls always gives the same drops, delays and digests.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from consensus.messages import Message, PrePrepare
from node.faults.byzantine import Sign, byzantine_rewrite
from node.faults.model import (
    Byzantine,
    ByzantineMode,
    Delay,
    Direction,
    Drop,
    Duplicate,
    Fault,
    FaultConflict,
    FaultError,
    FaultsDisabled,
    FaultSpec,
    Partition,
    Pause,
    Reorder,
    faults_config_of,
)

log = logging.getLogger("medchain.faults")

MAX_ACTIVE_FAULTS: Final = 64
"""Faults active at once on one node; more is an operator mistake, refused with 409."""
MAX_DELAYED_FRAMES: Final = 50_000
"""Frames held back by delay/reorder at once; beyond it new frames are dropped and counted
(a 60 s delay on a busy link must not grow the heap of pending sends without bound)."""
PAUSE_POLL_S: Final = 0.25
"""Longest single wait inside :meth:`FaultLayer.wait_unpaused` (re-checks expiry)."""

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class ActiveFault:
    id: int
    spec: FaultSpec
    started: float
    expires: float | None
    rng: random.Random = field(compare=False, repr=False)

    def applies_to(self, peer: int) -> bool:
        peers = getattr(self.spec.fault, "peers", None)
        return peers is None or peer in peers

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            **self.spec.to_json(),
            "age_s": round(now - self.started, 3),
            "remaining_s": None if self.expires is None else round(max(0.0, self.expires - now), 3),
        }


class FaultLayer:
    """The faults active on one node, consulted by its transport, runtime and API.

    Single-threaded by design: every method runs on the node's event loop.
    """

    def __init__(
        self,
        self_id: int,
        n: int,
        *,
        enabled: bool,
        seed: int | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        if not 0 <= self_id < n:
            raise ValueError(f"self_id {self_id} not in 0..{n - 1}")
        self.self_id = self_id
        self.n = n
        self.enabled = enabled
        self._clock = clock
        self._seed_rng = random.Random(seed)
        self._active: dict[int, ActiveFault] = {}
        self._next_id = 1
        self._delayed: list[float] = []
        """Release times (clock seconds) of frames held back by delay/reorder: a min-heap."""
        self._resumed: asyncio.Event | None = None
        self.counters: Counter[str] = Counter()
        self.listener: Callable[[str, int, str], None] | None = None
        """Told (action, fault id, what) when a fault is applied, cleared or expires."""

    @classmethod
    def from_config(
        cls, config: object, config_path: str | Path | None = None, **kwargs: Any
    ) -> FaultLayer:
        """The layer for a loaded NodeConfig (``node_id``, ``n`` and ``[faults]``)."""
        fc = faults_config_of(config, config_path)
        node_id = getattr(config, "node_id")  # noqa: B009 - NodeConfig is duck-typed here
        n = getattr(config, "n")  # noqa: B009
        return cls(node_id, n, enabled=fc.enabled, seed=fc.seed, **kwargs)

    @property
    def peers(self) -> list[int]:
        return [i for i in range(self.n) if i != self.self_id]

    # ------------------------------------------------------------------ applying and clearing

    def apply(self, spec: FaultSpec) -> ActiveFault:
        """Activate ``spec``; raises FaultConflict if disabled, full, or a second byzantine
        mode, FaultError if it names nodes outside the consortium."""
        if not self.enabled:
            raise FaultsDisabled()
        now = self._clock()
        self._expire(now)
        if len(self._active) >= MAX_ACTIVE_FAULTS:
            raise FaultConflict("faults", f"{MAX_ACTIVE_FAULTS} faults already active")
        self._check_ids(spec.fault)
        if isinstance(spec.fault, Byzantine):
            current = self._byzantine()
            if current is not None:
                raise FaultConflict(
                    "mode", f"byzantine fault {current.id} is already active; clear it first"
                )
        fault_id = self._next_id
        self._next_id += 1
        seed = spec.seed if spec.seed is not None else self._seed_rng.getrandbits(63)
        expires = None if spec.duration_s is None else now + spec.duration_s
        active = ActiveFault(fault_id, spec, now, expires, random.Random(seed))
        self._active[fault_id] = active
        self.counters["applied"] += 1
        self.counters[f"applied_{spec.kind}"] += 1
        log.warning("fault %d injected: %s", fault_id, spec.to_json())
        self._tell("applied", fault_id, spec)
        return active

    def clear(self, fault_id: int | None = None) -> list[int]:
        """Clear one fault (or all); returns the ids cleared ([] if ``fault_id`` is unknown)."""
        self._expire(self._clock())
        ids = list(self._active) if fault_id is None else [fault_id]
        popped = [(i, self._active.pop(i, None)) for i in ids]
        cleared = [i for i, a in popped if a is not None]
        if cleared:
            for i, a in popped:
                if a is not None:
                    self._tell("cleared", i, a.spec)
            self.counters["cleared"] += len(cleared)
            log.warning("faults cleared: %s", cleared)
            self._wake_paused()
        return cleared

    def _tell(self, action: str, fault_id: int, spec: FaultSpec) -> None:
        if self.listener is not None:
            self.listener(action, fault_id, json.dumps(spec.to_json(), separators=(",", ":")))

    def active(self) -> list[ActiveFault]:
        self._expire(self._clock())
        return list(self._active.values())

    def _check_ids(self, fault: Fault) -> None:
        ids: Iterable[int] = ()
        if isinstance(fault, Partition):
            ids = (i for g in fault.groups for i in g)
        elif getattr(fault, "peers", None) is not None:
            ids = getattr(fault, "peers")  # noqa: B009
        for i in ids:
            if not 0 <= i < self.n:
                raise FaultError("peers", f"node {i} does not exist (ids are 0..{self.n - 1})")

    def _expire(self, now: float) -> None:
        expired = [
            a.id for a in self._active.values() if a.expires is not None and now >= a.expires
        ]
        if not expired:
            return
        for fault_id in expired:
            a = self._active.pop(fault_id)
            log.warning("fault %d (%s) expired after %.1fs", fault_id, a.spec.kind, now - a.started)
            self._tell("expired", fault_id, a.spec)
        self.counters["expired"] += len(expired)
        self._wake_paused()

    # ------------------------------------------------------------------ transport hooks

    def on_send(self, dest: int, frame: bytes) -> list[tuple[float, bytes]]:
        """What to send to ``dest`` for ``frame``: ``(delay_s, frame)`` pairs, in order.

        [] drops it; two pairs duplicate it; a positive delay means "enqueue after delay_s"
        (delays with jitter reorder frames)."""
        if not self._active:
            return [(0.0, frame)]
        now = self._clock()
        self._expire(now)
        delay_s = 0.0
        copies = 1
        for a in self._active.values():
            f = a.spec.fault
            if isinstance(f, Partition):
                if f.separates(self.self_id, dest):
                    self.counters["partition_out"] += 1
                    return []
            elif not a.applies_to(dest):
                continue
            elif isinstance(f, Drop):
                if f.direction is not Direction.IN and a.rng.random() < f.probability:
                    self.counters["drop_out"] += 1
                    return []
            elif isinstance(f, Delay):
                jitter = a.rng.uniform(-f.jitter_ms, f.jitter_ms) if f.jitter_ms else 0.0
                delay_s += max(0.0, f.ms + jitter) / 1000.0
                self.counters["delay"] += 1
            elif isinstance(f, Reorder):
                if a.rng.random() < f.probability:
                    delay_s += a.rng.uniform(0.0, f.window_ms) / 1000.0
                    self.counters["reorder"] += 1
            elif isinstance(f, Duplicate) and a.rng.random() < f.probability:
                copies = 2
                self.counters["duplicate"] += 1
        if delay_s > 0.0 and not self._hold(now, now + delay_s, copies):
            self.counters["delay_overflow"] += 1
            return []
        return [(delay_s, frame)] * copies

    def _hold(self, now: float, release: float, copies: int) -> bool:
        """Account for frames held back until ``release``; False if the bound is reached."""
        heap = self._delayed
        while heap and heap[0] <= now:
            heapq.heappop(heap)
        if len(heap) + copies > MAX_DELAYED_FRAMES:
            return False
        for _ in range(copies):
            heapq.heappush(heap, release)
        return True

    def on_receive(self, sender: int, frame: bytes) -> bool:
        """True if a frame received from ``sender`` is delivered; False drops it (counted)."""
        if not self._active:
            return True
        self._expire(self._clock())
        for a in self._active.values():
            f = a.spec.fault
            if isinstance(f, Partition):
                if f.separates(self.self_id, sender):
                    self.counters["partition_in"] += 1
                    return False
            elif (
                isinstance(f, Drop)
                and f.direction is not Direction.OUT
                and a.applies_to(sender)
                and a.rng.random() < f.probability
            ):
                self.counters["drop_in"] += 1
                return False
        return True

    # ------------------------------------------------------------------ runtime hooks

    @property
    def paused(self) -> bool:
        if not self._active:
            return False
        self._expire(self._clock())
        return any(isinstance(a.spec.fault, Pause) for a in self._active.values())

    def _pause_remaining(self) -> float | None:
        """Seconds until every pause fault expires; None if one has no duration."""
        now = self._clock()
        remaining = 0.0
        for a in self._active.values():
            if isinstance(a.spec.fault, Pause):
                if a.expires is None:
                    return None
                remaining = max(remaining, a.expires - now)
        return remaining

    async def wait_unpaused(self) -> None:
        """Return once no pause fault is active (cleared or expired). Waits at most
        PAUSE_POLL_S at a time, so expiry is noticed without a timer of its own."""
        while self.paused:
            remaining = self._pause_remaining()
            step = PAUSE_POLL_S if remaining is None else min(PAUSE_POLL_S, remaining)
            if self._resumed is None:
                self._resumed = asyncio.Event()
            self._resumed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._resumed.wait(), max(step, 0.001))

    def _wake_paused(self) -> None:
        if self._resumed is not None:
            self._resumed.set()

    def _byzantine(self) -> ActiveFault | None:
        for a in self._active.values():
            if isinstance(a.spec.fault, Byzantine):
                return a
        return None

    @property
    def byzantine_mode(self) -> ByzantineMode | None:
        if not self._active:
            return None
        self._expire(self._clock())
        a = self._byzantine()
        return a.spec.fault.mode if a is not None and isinstance(a.spec.fault, Byzantine) else None

    @property
    def serves_altered_blocks(self) -> bool:
        """True while the API must serve blocks altered (:mod:`node.faults.served`)."""
        return self.byzantine_mode is ByzantineMode.ALTER_BLOCKS

    def outgoing(
        self, dest: int | None, msg: Message, sign: Sign
    ) -> list[tuple[int | None, Message]]:
        """The sends that replace ``(dest, msg)`` under the active byzantine mode (``dest`` None
        means every peer, as in ``Ready.send``). Without one: ``[(dest, msg)]`` unchanged."""
        if not self._active:
            return [(dest, msg)]
        self._expire(self._clock())
        active = self._byzantine()
        if active is None or not isinstance(active.spec.fault, Byzantine):
            return [(dest, msg)]
        mode = active.spec.fault.mode
        if dest is None and mode is ByzantineMode.EQUIVOCATE and isinstance(msg, PrePrepare):
            targets: list[int | None] = list(self.peers)  # equivocation differs per backup
        else:
            targets = [dest]
        out: list[tuple[int | None, Message]] = []
        for d in targets:
            rewritten = byzantine_rewrite(mode, d, msg, sign, n=self.n, rng=active.rng)
            if rewritten is None:
                self.counters[f"byzantine_{mode.value}_dropped"] += 1
                continue
            if rewritten is not msg:
                self.counters[f"byzantine_{mode.value}"] += 1
            out.append((d, rewritten))
        return out

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """For GET /status and GET /admin/faults."""
        now = self._clock()
        self._expire(now)
        return {
            "enabled": self.enabled,
            "paused": any(isinstance(a.spec.fault, Pause) for a in self._active.values()),
            "active": [a.to_json(now) for a in self._active.values()],
            "held_frames": sum(1 for t in self._delayed if t > now),
            "counters": dict(sorted(self.counters.items())),
        }


__all__ = ["MAX_ACTIVE_FAULTS", "ActiveFault", "FaultLayer"]
