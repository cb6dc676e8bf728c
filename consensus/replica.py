"""The PBFT replica: state, the one dispatch point ``step``, timers and shared helpers.

Protocol rules live in phase modules: ``normal`` (section 4.2), ``checkpoints`` (4.3),
``viewchange`` (4.4-4.5), ``statetransfer`` (5.3.2, simplified to whole certified blocks),
``recovery`` (rebuilding state from what was persisted before a crash). ``invariants`` are
asserted after recovery and at the end of every step.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from typing import TypeVar

from consensus import checkpoints, invariants, normal, recovery, statetransfer, viewchange
from consensus.config import ReplicaConfig
from consensus.events import (
    Application,
    Crypto,
    DropReason,
    Event,
    Ready,
    Receive,
    Submit,
    Tick,
)
from consensus.hashing import GENESIS_HASH
from consensus.log import Log
from consensus.mempool import Mempool
from consensus.messages import (
    Batch,
    Checkpoint,
    Commit,
    FetchRequest,
    FetchResponse,
    Message,
    NewView,
    Prepare,
    PrePrepare,
    Request,
    SignedMessage,
    Suspect,
    ViewChange,
)

S = TypeVar("S", PrePrepare, Prepare, Commit, Checkpoint, ViewChange, NewView, Suspect)


class Replica:
    """One PBFT replica. Pure: input arrives through ``step``; output leaves in ``Ready``."""

    def __init__(
        self,
        config: ReplicaConfig,
        crypto: Crypto,
        app: Application,
        *,
        last_executed: int = 0,
        head_hash: bytes = GENESIS_HASH,
        persisted: Sequence[Message] = (),
    ) -> None:
        self.cfg = config
        self.id = config.replica_id
        self.crypto = crypto
        self.app = app
        self.now_ms = 0

        self.view = 0
        self.view_active = True
        self.view_base_seq = 0
        """min-s of the new-view that started this view: seqs at or below it need no pre-prepare."""
        self.view_started_ms = 0
        """When this replica entered its current view (restarted replicas: when they started)."""
        self.request_check_ms = 0
        """The request timer is not looked at again before this (a deferred check)."""
        self.last_executed = last_executed
        self.head_hash = head_hash

        self.stable_seq = 0
        self.stable_digest = GENESIS_HASH
        self.stable_proof: tuple[Checkpoint, ...] = ()
        self.checkpoint_votes: dict[int, dict[int, Checkpoint]] = {}
        self.my_checkpoints: dict[int, bytes] = {}

        self.log = Log()
        self.batches: dict[bytes, tuple[int, Batch]] = {}
        """Full batches by digest, for seqs above the stable checkpoint: fills in stripped ones."""
        self.buffered: dict[int, PrePrepare] = {}
        self.inflight_ids: dict[bytes, int] = {}
        self.next_seq = last_executed + 1
        self.mempool = Mempool(
            config.mempool_max_txs,
            config.mempool_max_bytes,
            overflow_txs=config.watermark_window * config.max_batch_txs,
        )

        self.view_changes: dict[tuple[int, int], ViewChange] = {}
        """Valid view-changes by (new_view, replica) for views not yet installed; a few per
        replica (``viewchange.MAX_VIEWS_PER_REPLICA``)."""
        self.my_view_change: ViewChange | None = None
        self.new_view_msg: NewView | None = None
        self.vc_deadline_ms: int | None = None
        self.vc_attempts = 0
        self.higher_view: dict[int, int] = {}
        """Highest later view each replica was seen voting in (stale-view detection)."""
        self.helped_ms: dict[int, int] = {}
        """When each replica seen in an earlier view was last sent our new-view."""

        self.fetch_target = last_executed
        self.next_fetch_ms = 0
        self.next_heartbeat_ms = 0
        self.heard_ms: dict[int, int] = {}
        """When each peer was last heard from (any message): is a quorum reachable?"""
        self.last_fetch_progress_ms = -(1 << 62)
        self.unreachable_at_ms = -(1 << 62)
        """Last time a view timer found no quorum reachable (see ``viewchange``)."""
        self.progress_ms = -(1 << 62)
        """When the primary last made progress here (a batch prepared or executed, a new view
        installed): while it does, waiting requests are queued, not lost (``relay_stale``)."""
        self.suspected_at_ms: int | None = None
        """When a timer first suspected this view's primary; cleared by progress and by a new
        view. A view change starts only once a quorum is heard from after it (``viewchange``)."""
        self.request_suspected_at_ms: int | None = None
        """The same for the request timer (censorship); only a new view clears it."""
        self.suspicions: dict[int, int] = {}
        """Replica -> when its latest Suspect of this view's primary came (ours included): a
        view change starts once f+1 are fresh (``viewchange.on_suspect``). At most n."""
        self.peer_commit_seq: dict[int, int] = {}
        """Replica -> the highest seq of this view it sent a valid Commit for: a Commit above it
        shows the sender prepared a new batch (retransmits do not). At most n."""
        self.peer_executed: dict[int, tuple[int, int]] = {}
        """Replica -> (the last seq it says it executed, when that last rose), from the
        ``from_seq`` of its fetch requests and heartbeats (the block after its chain). At most
        n. Positions claimed by f+1 rising past ours show that the cluster executes and that we
        are the one behind (``viewchange.on_view_timeout``)."""
        self.recently_executed: OrderedDict[bytes, None] = OrderedDict()
        """A FIFO of executed ids. An OrderedDict, not a dict: evicting a plain dict's first
        key scans every slot deleted before it, which made each block cost O(chain) once the
        bound was reached (115 ms a block at 100,000 ids against 0.7 ms)."""
        self.next_retransmit_ms = 0
        self.fetch_peer = self.id

        invariants.check_config(config)
        recovery.restore(self, persisted)
        invariants.check_step(self, None)

    # -- read-only views for shells ------------------------------------------------------------

    @property
    def n(self) -> int:
        return self.cfg.n

    @property
    def primary(self) -> int:
        return self.cfg.primary(self.view)

    @property
    def is_primary(self) -> bool:
        return self.primary == self.id

    @property
    def in_view_change(self) -> bool:
        return not self.view_active

    @property
    def mempool_size(self) -> int:
        return len(self.mempool)

    @property
    def high_watermark(self) -> int:
        return self.stable_seq + self.cfg.watermark_window

    def in_window(self, seq: int) -> bool:
        return self.stable_seq < seq <= self.high_watermark

    # -- the one dispatch point ----------------------------------------------------------------

    def step(self, event: Event, now_ms: int) -> Ready:
        self.now_ms = now_ms
        out = Ready()
        if isinstance(event, Receive):
            if event.sender != self.id and self.valid_replica(event.sender):
                self.heard_ms[event.sender] = now_ms
            self._dispatch(event.message, event.sender, out)
        elif isinstance(event, Submit):
            normal.on_submit(self, event, out)
        elif not isinstance(event, Tick):
            out.drop(DropReason.UNKNOWN_EVENT, type(event).__name__)
        self._on_timers(out)
        out.deadline_ms = self._deadline()
        invariants.check_step(self, out)
        return out

    def _dispatch(self, m: Message, sender: int, out: Ready) -> None:
        if isinstance(m, PrePrepare):
            normal.on_pre_prepare(self, m, out)
        elif isinstance(m, Prepare):
            normal.on_prepare(self, m, out)
        elif isinstance(m, Commit):
            normal.on_commit(self, m, out)
        elif isinstance(m, Checkpoint):
            checkpoints.on_checkpoint(self, m, out)
        elif isinstance(m, ViewChange):
            viewchange.on_view_change(self, m, out)
        elif isinstance(m, NewView):
            viewchange.on_new_view(self, m, out)
        elif isinstance(m, Suspect):
            viewchange.on_suspect(self, m, out)
        elif isinstance(m, Request):
            normal.on_request(self, m, out)
        elif isinstance(m, FetchRequest):
            if sender == m.replica and sender != self.id and self.valid_replica(sender):
                statetransfer.note_position(self, sender, m.from_seq - 1)  # the link's own word
            statetransfer.on_fetch_request(self, m, out)
        elif isinstance(m, FetchResponse):
            statetransfer.on_fetch_response(self, m, out)
        else:
            out.drop(DropReason.UNKNOWN_MESSAGE, type(m).__name__)

    # -- timers --------------------------------------------------------------------------------

    def _on_timers(self, out: Ready) -> None:
        now = self.now_ms
        if self.vc_deadline_ms is not None and now >= self.vc_deadline_ms:
            viewchange.on_view_timeout(self, out)
        request_due = self.request_deadline_ms()
        if request_due is not None and now >= request_due:
            viewchange.on_request_timeout(self, out)
        normal.maybe_propose(self, out)
        if now >= self.next_retransmit_ms:
            self.next_retransmit_ms = now + self.cfg.retransmit_ms
            normal.retransmit(self, out)
            viewchange.retransmit(self, out)
            checkpoints.retransmit(self, out)
            normal.relay_stale(self, out)
        if now >= self.next_fetch_ms:
            statetransfer.maybe_fetch(self, out)
        if now >= self.next_heartbeat_ms:
            statetransfer.heartbeat(self, out)

    def _deadline(self) -> int:
        candidates = [self.next_retransmit_ms, self.next_fetch_ms, self.next_heartbeat_ms]
        if self.vc_deadline_ms is not None:
            candidates.append(self.vc_deadline_ms)
        request_due = self.request_deadline_ms()
        if request_due is not None:
            candidates.append(request_due)
        batch_due = normal.batch_deadline(self)
        if batch_due is not None:
            candidates.append(batch_due)
        return max(self.now_ms + 1, min(candidates))

    def view_timeout_ms(self) -> int:
        """Section 4.5.2: the timeout doubles for each view change that fails to complete."""
        t = self.cfg.view_timeout_ms << min(self.vc_attempts, 16)
        return min(t, self.cfg.max_view_timeout_ms)

    def arm_view_timer(self) -> None:
        """Start the view-change timer if requests are waiting and it is not running. (While a
        view change is under way its own timer rules apply: ``viewchange``.) Section 4.4: a
        backup is waiting for a request it received and has not executed, and that includes
        one it holds only in an accepted pre-prepare: else a primary that pre-prepares a batch
        and never lets it commit is never suspected by the backups that only saw it there."""
        waiting = len(self.mempool) or self.inflight_ids
        # Section 4.4: backups time the primary; a primary never suspects itself (under load
        # its own pipeline waiting on slow backups fired it, and its view-change and one
        # backup's made the f+1 that moved everyone, while it was committing).
        if self.view_active and not self.is_primary and self.vc_deadline_ms is None and waiting:
            self.vc_deadline_ms = self.now_ms + self.view_timeout_ms()

    def restart_view_timer(self) -> None:
        """The primary made progress: the timer starts over, and runs only if requests are
        still waiting (section 4.5.2: stop it when no longer waiting, restart it otherwise)."""
        if self.view_active:
            self.progress_ms = self.now_ms
            self.vc_deadline_ms = None
            self.suspected_at_ms = None
            self.suspicions.pop(self.id, None)  # we no longer suspect it; others' age out
            self.arm_view_timer()

    def request_deadline_ms(self) -> int | None:
        """When the longest-waiting request held here has waited ``request_timeout_ms`` (scaled
        like the view timer): a primary that keeps executing others but never this one is
        suspected then. None while a view change is under way (its own timer applies)."""
        if not self.view_active or self.is_primary:
            return None
        oldest = self.mempool.oldest_ms()
        if oldest is None:
            return None
        t = self.cfg.request_timeout_ms << min(self.vc_attempts, 16)
        t = max(min(t, self.cfg.max_view_timeout_ms), self.cfg.request_timeout_ms)
        # Counted from when this view started at the earliest: the new primary gets its own
        # full interval for what the old one left behind.
        return max(max(oldest, self.view_started_ms) + t, self.request_check_ms)

    # -- helpers shared by the phases ----------------------------------------------------------

    def sign(self, msg: S) -> S:
        return replace(msg, signature=self.crypto.sign(msg.signing_bytes()))

    def verify(self, msg: SignedMessage) -> bool:
        return self.crypto.verify(msg.replica, msg.signing_bytes(), msg.signature)

    def committed_among(self, tx_ids: Sequence[bytes]) -> set[bytes]:
        recent = self.recently_executed
        found = {t for t in tx_ids if t in recent}
        rest = [t for t in tx_ids if t not in found]
        return found | self.app.committed_among(rest) if rest else found

    def note_executed(self, tx_ids: tuple[bytes, ...]) -> None:
        recent = self.recently_executed
        for tx_id in tx_ids:
            recent[tx_id] = None
        while len(recent) > self.cfg.recent_executed_max:
            recent.popitem(last=False)

    def quorum_reachable(self, since_ms: int | None = None) -> bool:
        """Heard from enough peers since ``since_ms`` (by default, lately) to form a quorum
        (Raft's pre-vote, in spirit): a replica cut off from the others must not start view
        changes it cannot finish, or it comes back views ahead of everyone and stays out of
        the protocol."""
        since = self.now_ms - 4 * self.cfg.heartbeat_ms if since_ms is None else since_ms
        heard = sum(1 for t in self.heard_ms.values() if t >= since)
        return heard + 1 >= self.cfg.quorum

    def remember_batch(self, seq: int, batch: Batch) -> None:
        if batch.txs:
            self.batches[batch.digest()] = (seq, batch)

    def full_batch(self, batch: Batch) -> Batch:
        """``batch`` with its transactions if this replica has them, else as it is."""
        if not batch.is_stripped:
            return batch
        known = self.batches.get(batch.digest())
        return batch if known is None else known[1]

    def valid_replica(self, replica: int) -> bool:
        return 0 <= replica < self.n

    def broadcast(self, msg: Message, out: Ready) -> None:
        out.send.append((None, msg))

    def send_to(self, dest: int, msg: Message, out: Ready) -> None:
        if dest != self.id:
            out.send.append((dest, msg))

    def persist_and_broadcast(self, msg: SignedMessage, out: Ready) -> None:
        """Persist before send (section 4.2, and what makes crash recovery safe)."""
        out.persist.append(msg)
        out.send.append((None, msg))
