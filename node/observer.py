"""What a node tells its operators about itself: the hooks the runtime calls, and their state.

The consensus task calls :class:`Observer` at a few points of each round (every message
stepped, the round's start and end, transactions acknowledged); the store calls it after each
write transaction, the fault layer when a fault changes. The observer keeps plain integers and
bucket arrays (no locks, no label lookups: everything runs on the node's one event loop
thread) and the flight recorder's ring; ``node.metrics`` turns them into Prometheus families
only when ``GET /metrics`` is scraped, and ``node.ops`` serves ``/events`` and ``/readyz``.

The cost on the hot path is one dictionary update per message stepped and a few per round; see
``tests/unit/test_observer_cost.py`` for the side-by-side measurement of a round.
"""

from __future__ import annotations

import bisect
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from consensus.events import Ready, Receive
from consensus.messages import Checkpoint, Commit, FetchResponse, Prepare, PrePrepare
from node.recorder import (
    CHECKPOINT,
    COMMIT,
    FAULT,
    MESSAGE_KINDS,
    NEW_VIEW,
    POSITION,
    TIMER,
    VIEW_CHANGE,
    EventRing,
    RoundTally,
    position,
)
from node.transport import ReasonCounter

if TYPE_CHECKING:
    from consensus.replica import Replica
    from node.clock import NodeClock
    from node.config import NodeConfig

LATENCY_BUCKETS_S: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
"""Commit latency and the three-phase round: milliseconds on a LAN, seconds across a view
change."""
FAST_BUCKETS_S: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip
"""One pass of the consensus task and one SQLite write: tens of microseconds to milliseconds."""
_PROGRESS: Final = frozenset({PrePrepare, Prepare, Commit, Checkpoint, FetchResponse})
"""Messages whose seq says how far their sender got (a fetch names the block after its own
chain, a view-change its stable checkpoint: neither is its sender's position)."""
_MAX_PREPREPARED_SEQS: Final = 4096
"""Seqs whose pre-prepare time is remembered (the watermark window is far smaller)."""


class Buckets:
    """A cumulative histogram as plain counts (Prometheus semantics: ``le`` upper bounds, a
    sum and a count). ``observe`` is a bisect and two additions: cheap enough to call once per
    committed transaction."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError("bucket bounds must be distinct and increasing")
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(bounds) + 1)
        """Per bucket, not cumulative; the last one is +Inf."""
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, cumulative count) pairs, ending with +Inf, as Prometheus exposes them."""
        out: list[tuple[str, int]] = []
        acc = 0
        for bound, n in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            acc += n
            out.append((bound, acc))
        return out


class Observer:
    """One node's operational state: counters, histograms, the event ring, readiness inputs."""

    def __init__(
        self,
        *,
        node_id: int,
        n: int,
        f: int,
        clock: NodeClock,
        events_max: int,
        events_max_bytes: int,
        submitted_max: int,
        ready_max_lag_seqs: int,
    ) -> None:
        self.node_id = node_id
        self.n = n
        self.f = f
        self.clock = clock
        self.ring = EventRing(events_max, events_max_bytes)
        self.ready_max_lag_seqs = ready_max_lag_seqs
        self.sent: dict[str, int] = dict.fromkeys(sorted(set(MESSAGE_KINDS.values())), 0)
        self.received: dict[str, int] = dict(self.sent)
        self.commit_latency = Buckets(LATENCY_BUCKETS_S)
        self.consensus_round = Buckets(LATENCY_BUCKETS_S)
        self.task_round = Buckets(FAST_BUCKETS_S)
        self.store_write = Buckets(FAST_BUCKETS_S)
        self.store_commit = Buckets(FAST_BUCKETS_S)
        self.http_rejections = ReasonCounter()
        """POST/GET answers >= 400, keyed "route|status|error" (bounded distinct keys)."""
        self.peer_seq: dict[int, int] = {}
        """Highest seq each peer's messages named (claims: see :meth:`lag`)."""
        self.timer_fires = 0
        self.new_views = 0
        self.faults: dict[str, int] = {"applied": 0, "cleared": 0, "expired": 0}
        self._submitted: OrderedDict[bytes, int] = OrderedDict()
        """Transactions acknowledged here (202) and not yet committed: perf_counter_ns."""
        self._submitted_max = submitted_max
        self._preprepared: dict[int, int] = {}
        """seq -> perf_counter_ns when this node first saw (or sent) its pre-prepare."""
        self._tally = RoundTally()
        self._round_ns = 0
        self._before: tuple[int, bool, int | None, int] = (0, True, None, 0)

    @classmethod
    def for_node(cls, config: NodeConfig, clock: NodeClock) -> Observer:
        lim = config.limits
        return cls(
            node_id=config.node_id,
            n=config.n,
            f=config.consensus.f,
            clock=clock,
            events_max=lim.events_max,
            events_max_bytes=lim.events_max_bytes,
            submitted_max=lim.pending_tx_max,
            ready_max_lag_seqs=lim.ready_max_lag_seqs,
        )

    # ------------------------------------------------------------------ the consensus task

    def round_started(self, replica: Replica) -> None:
        self._round_ns = time.perf_counter_ns()
        self._before = (
            replica.view,
            replica.view_active,
            replica.vc_deadline_ms,
            replica.stable_seq,
        )

    def msg_in(self, ev: Receive) -> None:
        """A peer's message about to be stepped (whatever the core then makes of it)."""
        msg = ev.message
        t = type(msg)
        kind = MESSAGE_KINDS.get(t, "other")
        view, seq = POSITION.get(t, position)(msg)
        sender = ev.sender
        RoundTally.add(self._tally.inbound, kind, view, seq, sender)
        if seq is not None and t in _PROGRESS and seq > self.peer_seq.get(sender, 0):
            self.peer_seq[sender] = seq
        if t is PrePrepare:
            self._preprepared.setdefault(seq, self._round_ns)  # type: ignore[arg-type]

    def round_done(self, replica: Replica, readies: Sequence[Ready]) -> None:
        """After the round's Readies were carried out (persisted, then sent)."""
        now_ms = self.clock()
        committed = False
        for r in readies:
            if r.send:
                self._count_sent(r)
            if r.committed:
                committed = True
        view0, active0, deadline0, stable0 = self._before
        if (
            replica.view != view0
            or replica.view_active is not active0
            or (deadline0 is not None and replica.vc_deadline_ms != deadline0)
        ):
            self._note_view(replica, readies, now_ms)
        if self._tally:
            self._tally.flush(self.ring, now_ms, self.received)
        if committed:
            self._note_commits(replica, readies, now_ms)
        stable = replica.stable_seq
        if stable > stable0:
            self.ring.add(now_ms, CHECKPOINT, seq=stable, detail=f"stable at seq {stable}")
        self.task_round.observe((time.perf_counter_ns() - self._round_ns) / 1e9)

    def _count_sent(self, ready: Ready) -> None:
        me = self.node_id
        n_peers = self.n - 1
        outbound = self._tally.outbound
        sent = self.sent
        for dest, msg in ready.send:
            if dest == me:
                continue
            t = type(msg)
            kind = MESSAGE_KINDS.get(t, "other")
            view, seq = POSITION.get(t, position)(msg)
            sent[kind] = sent.get(kind, 0) + (n_peers if dest is None else 1)
            RoundTally.add(outbound, kind, view, seq, -1 if dest is None else dest)
            if t is PrePrepare:
                self._preprepared.setdefault(seq, self._round_ns)  # type: ignore[arg-type]

    def _note_view(self, replica: Replica, readies: Sequence[Ready], now_ms: int) -> None:
        view0, active0, deadline0, _ = self._before
        if deadline0 is not None and now_ms >= deadline0 and replica.vc_deadline_ms != deadline0:
            self.timer_fires += 1
            self.ring.add(now_ms, TIMER, view=view0, detail=f"view timer expired in view {view0}")
        for r in readies:
            if r.view_changed is not None:
                v = r.view_changed
                why = "" if r.view_change_cause is None else f": {r.view_change_cause.value}"
                self.ring.add(now_ms, VIEW_CHANGE, view=v, detail=f"to view {v}{why}")
        if replica.view_active and (not active0 or replica.view != view0):
            self.new_views += 1
            self.ring.add(
                now_ms,
                NEW_VIEW,
                view=replica.view,
                detail=f"installed view {replica.view} (primary {replica.primary})",
            )

    def _note_commits(self, replica: Replica, readies: Sequence[Ready], now_ms: int) -> None:
        now_ns = time.perf_counter_ns()
        latency = self.commit_latency
        submitted = self._submitted
        preprepared = self._preprepared
        for r in readies:
            for c in r.committed:
                block = c.block
                ids = block.batch.tx_ids
                view = block.commits[0].view if block.commits else None
                self.ring.add(now_ms, COMMIT, view=view, seq=block.seq, detail=f"{len(ids)} txs")
                t0 = preprepared.pop(block.seq, None)
                if t0 is not None:
                    self.consensus_round.observe((now_ns - t0) / 1e9)
                if submitted:
                    for tx_id in ids:
                        t = submitted.pop(tx_id, None)
                        if t is not None:
                            latency.observe((now_ns - t) / 1e9)
        if len(preprepared) > _MAX_PREPREPARED_SEQS:
            # Seqs executed by state transfer or voided by a view change never come back.
            done = replica.last_executed
            for seq in [s for s in preprepared if s <= done]:
                del preprepared[seq]
            while len(preprepared) > _MAX_PREPREPARED_SEQS:
                del preprepared[min(preprepared)]

    def submitted(self, tx_ids: Sequence[bytes]) -> None:
        """Transactions this node just acknowledged to a client (the 202)."""
        if not tx_ids:
            return
        now_ns = time.perf_counter_ns()
        pending = self._submitted
        for tx_id in tx_ids:
            pending.setdefault(tx_id, now_ns)
        while len(pending) > self._submitted_max:
            pending.popitem(last=False)

    # ------------------------------------------------------------------ other sources

    def on_store_write(self, write_s: float, commit_s: float) -> None:
        """One SQLite write transaction: BEGIN..COMMIT, and the COMMIT alone (WAL write, and
        the fsync under synchronous=FULL or at a WAL checkpoint)."""
        self.store_write.observe(write_s)
        self.store_commit.observe(commit_s)

    def on_fault(self, action: str, fault_id: int, detail: str) -> None:
        """The fault layer injected, cleared or let expire a fault."""
        self.faults[action] = self.faults.get(action, 0) + 1
        self.ring.add(self.clock(), FAULT, detail=f"{action} {fault_id}: {detail}")

    def on_http_rejection(self, route: str, status: int, error: str) -> None:
        self.http_rejections.add(f"{route}|{status}|{error[:60]}")

    # ------------------------------------------------------------------ readiness

    def lag(self, replica: Replica) -> int:
        """How many seqs this replica is behind the peers it hears from: the (f+1)-th highest
        seq they named (so at least one honest replica reached it; f liars cannot make us
        look behind), or what f+1 checkpoints told the core, minus what we executed."""
        claims = sorted(self.peer_seq.values(), reverse=True)
        heard = claims[self.f] if len(claims) > self.f else 0
        target = max(heard, replica.fetch_target)
        return max(0, target - replica.last_executed)
