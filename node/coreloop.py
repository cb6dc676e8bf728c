"""The consensus task of a node: drain the inboxes, step the replica, carry out the Readies.

One round (``ConsensusLoop._round``) steps up to ``max_events_per_round`` events (peer
messages first, client batches a bounded share, then a tick) and carries out their Readies
together: persist, append committed blocks, retain, send, serve fetches, re-arm the timer
(the order and why are in ``node.runtime``). Mixed into ``node.runtime.Node``, which owns the
state named below and the task's lifecycle; only this task touches the replica.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from consensus.events import Ready, Retention, Tick
from consensus.messages import (
    CertifiedBlock,
    FetchRequest,
    FetchResponse,
    Message,
    PrePrepare,
    Request,
)
from consensus.replica import Replica
from node.api import Overloaded
from node.ledger import Block, LedgerApp, block_from_committed, block_to_certified
from node.verified import BlockUnavailable

if TYPE_CHECKING:
    from node.clock import NodeClock
    from node.config import NodeConfig, NodeLimits
    from node.faults.wiring import Gate
    from node.fetchserve import FetchBudget
    from node.inbox import ClientBatch, ClientInbox, PeerInbox, RoundFrames
    from node.observer import Observer
    from node.pending import DurablePending, PendingTxs
    from node.reader import BlockReader
    from node.status import NodeCounters
    from node.store import Store
    from node.transport import LogLimiter, Transport
    from node.waiters import CommitWaiters

log = logging.getLogger("medchain.node")


class ConsensusLoop:
    """The rounds of the consensus task (see the module docstring)."""

    if TYPE_CHECKING:
        # Set by node.runtime.Node.
        config: NodeConfig
        limits: NodeLimits
        node_id: int
        clock: NodeClock
        observer: Observer
        counters: NodeCounters
        pending: PendingTxs
        waiters: CommitWaiters
        transport: Transport
        reader: BlockReader | None
        _durable: DurablePending | None
        _peer_inbox: PeerInbox
        _client_inbox: ClientInbox
        _frames: RoundFrames
        _fetch_budget: FetchBudget
        _gate: Gate
        _wake: asyncio.Event
        _tick_due: bool
        _deadline_ms: int
        _step_ms: int
        _timer: asyncio.TimerHandle | None
        _fatal: BaseException | None
        _log_limit: LogLimiter

        @property
        def replica(self) -> Replica: ...
        @property
        def store(self) -> Store: ...
        @property
        def ledger_app(self) -> LedgerApp: ...
        def _reoffer_pending(self, *, now: bool = False) -> None: ...

    async def _run_core(self) -> None:
        try:
            while True:
                await self._gate()
                if not self._has_work():
                    self._wake.clear()
                    if not self._has_work():
                        await self._wake.wait()
                self._round()
                # Let HTTP handlers and peer senders run between rounds.
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._fatal = e
            log.critical("consensus task failed; stopping the node", exc_info=True)
            self.waiters.release_all()
            self._client_inbox.fail_all("node failed")

    def _has_work(self) -> bool:
        return bool(
            self._peer_inbox
            or self._client_inbox
            or self._tick_due
            or self.clock() >= self._deadline_ms
        )

    def _round(self) -> None:
        """Step up to a round's worth of events, then carry out their Readies together.

        If a step raises, what the earlier steps produced is still carried out (persisted
        before sent) and their submitters answered; the exception then stops the node.
        """
        readies: list[Ready] = []
        batches: list[tuple[ClientBatch, Ready]] = []
        self.observer.round_started(self.replica)
        try:
            self._step_events(readies, batches)
        finally:
            self.counters.rounds += 1
            self.counters.steps += len(readies)
            try:
                if readies:
                    self._apply(readies)
                    self.observer.round_done(self.replica, readies)
            except BaseException:
                for batch, _ in batches:
                    if not batch.done.done():
                        batch.done.set_exception(Overloaded("node failed"))
                raise
            finally:
                self._frames.clear()
            for batch, ready in batches:
                self._answer_submit(batch, ready)

    def _step_events(self, readies: list[Ready], batches: list[tuple[ClientBatch, Ready]]) -> None:
        replica = self.replica
        budget = self.limits.max_events_per_round
        # Peer traffic drives progress; client batches get a bounded share so neither starves.
        client_quota = min(len(self._client_inbox), max(1, budget // 4))
        peer_quota = min(len(self._peer_inbox), budget - client_quota)
        observe_in = self.observer.msg_in
        for _ in range(peer_quota):
            ev, frame, received_ms = self._peer_inbox.pop()
            if frame is not None:
                self._frames.note(ev.message, frame)
            self._note_seen(ev.message)
            observe_in(ev)
            readies.append(replica.step(ev, self._at(received_ms)))
        for _ in range(client_quota):
            batch = self._client_inbox.pop()
            try:
                ready = replica.step(batch.event, self._at(batch.received_ms))
            except BaseException:
                batch.done.set_exception(Overloaded("node failed"))
                raise
            readies.append(ready)
            batches.append((batch, ready))
        # A tick brings the replica to the present only once it has read every message that
        # arrived before it; until then its timers run on receipt times (see node.inbox).
        now = self.clock()
        if (self._tick_due or now >= self._deadline_ms) and not self._peer_inbox:
            self._tick_due = False
            readies.append(replica.step(Tick(), self._at(now)))

    def _at(self, received_ms: int) -> int:
        self._step_ms = max(self._step_ms, received_ms)
        return self._step_ms

    def _note_seen(self, msg: Message) -> None:
        if isinstance(msg, Request):
            self.pending.add(msg.tx_ids, self.clock())
        elif isinstance(msg, PrePrepare) and msg.batch.tx_ids:
            self.pending.add(msg.batch.tx_ids, self.clock())

    def _apply(self, readies: list[Ready]) -> None:
        blocks = self._write_round(readies)
        if blocks:
            self._on_committed(blocks)
        send = self._send
        for r in readies:
            for dest, msg in r.send:
                if dest != self.node_id:
                    send(dest, msg)
        for r in readies:
            for req in r.serve:
                self._serve_fetch(req)
        view_changed = False
        for r in readies:
            self._note_drops(r)
            if r.suspected is not None and r.view_changed is None:
                self.counters.suspicions += 1
                log.info(
                    "suspecting the primary (%s); a view change needs f+1 suspicions",
                    r.suspected.value,
                )
            if r.view_changed is not None:
                view_changed = True
                self.counters.view_changes += 1
                cause = r.view_change_cause
                why = "" if cause is None else f" ({cause.value})"
                log.info("view change: moving to view %d%s", r.view_changed, why)
        self._reoffer_pending(now=view_changed)
        deadline = readies[-1].deadline_ms
        self._arm_timer(deadline)

    def _write_round(self, readies: list[Ready]) -> list[Block]:
        """Persist the round's messages, append its committed blocks and carry out its
        retention as one store transaction (``Store.round``), before anything is sent or any
        client is answered; returns the blocks appended."""
        store = self.store
        persist = [m for r in readies for m in r.persist]
        decoded = self.ledger_app.take_decoded
        blocks = [block_from_committed(c, decoded) for r in readies for c in r.committed]
        rules = tuple(rule for r in readies if r.retain is not None for rule in r.retain.forget)
        if not (persist or blocks or rules):
            return blocks
        raws: list[bytes] = []
        with store.round(durable=bool(persist)):
            if persist:
                # Encoded once here (or kept as received); the sends reuse the same bytes.
                store.save_messages(persist, [self._frames.encoded(m) for m in persist])
            if blocks:
                raws = store.append_blocks(blocks)
                assert self._durable is not None
                self._durable.forget_committed(t for b in blocks for t in b.tx_ids)
            if rules:
                store.retain(Retention(rules))
        self.counters.persisted_msgs += len(persist)
        if blocks:
            assert self.reader is not None
            self.reader.note_written(blocks, raws)
        return blocks

    def _on_committed(self, blocks: list[Block]) -> None:
        c = self.counters
        for block in blocks:
            ids = block.tx_ids
            c.committed_blocks += 1
            c.committed_txs += len(ids)
            self.pending.discard(ids)
            self.waiters.wake(ids)
        last = blocks[-1]
        log.debug("committed through height %d (%d blocks)", last.height, len(blocks))

    def _serve_fetch(self, req: FetchRequest) -> None:
        """Answer a FetchRequest with at most ``fetch_batch_blocks`` blocks and about
        ``fetch_response_max_bytes`` (always at least one block, so a peer never stalls)."""
        count = min(req.to_seq - req.from_seq + 1, self.config.consensus.fetch_batch_blocks)
        if count < 1:
            return
        # Rate- and byte-limited per peer; req.replica is the authenticated sender (transport).
        budget = self._fetch_budget.take(req.replica, time.monotonic())
        if budget <= 0:
            self.counters.dropped.add("fetch_budget_spent")
            return
        size = 0
        certified: list[CertifiedBlock] = []
        for height, raw in self.store.get_blocks_raw(req.from_seq, count):
            if height > req.to_seq:
                break
            if certified and size + len(raw) > budget:
                break
            block = self._verified_for_serving(height, raw)
            if block is None:
                break  # never serve corrupted data; the reader quarantines and repairs it
            size += len(raw)
            certified.append(block_to_certified(block))
        self._fetch_budget.charge(req.replica, size)
        if not certified:
            return
        self.counters.served_fetches += 1
        self.counters.served_blocks += len(certified)
        self._send(req.replica, FetchResponse(tuple(certified), self.node_id))

    def _verified_for_serving(self, height: int, raw: bytes) -> Block | None:
        assert self.reader is not None
        try:
            return self.reader.read_block(height, raw)
        except BlockUnavailable as e:
            log.warning("not serving block %d: %s", height, e.reason)
            return None

    def _send(self, dest: int | None, msg: Message) -> None:
        self.transport.send(dest, msg, self._frames.get(msg))

    def _note_drops(self, ready: Ready) -> None:
        for d in ready.dropped:
            reason = d.reason.value
            self.counters.dropped.add(reason)
            self._log_limit(log, logging.INFO, reason, "core dropped: %s (%s)", reason, d.detail)

    def _answer_submit(self, batch: ClientBatch, ready: Ready) -> None:
        refused = {tx_id: reason.value for tx_id, reason in ready.refused().items()}
        ev = batch.event
        if ev.acknowledged:
            # Re-offered: already on disk and acknowledged; what was refused stays on disk and
            # is offered again later.
            if not batch.done.done():
                batch.done.set_result(refused)
            return
        kept = [(t, tx) for t, tx in zip(ev.tx_ids, ev.txs, strict=True) if t not in refused]
        accepted = [t for t, _ in kept]
        # Durable before the client hears 202: a crash now must not lose an accepted record.
        assert self._durable is not None
        self._durable.save(accepted, [tx for _, tx in kept])
        self.pending.add(accepted, self.clock())
        self.observer.submitted(accepted)
        self.counters.submitted_txs += len(accepted)
        self.counters.refused_txs += len(refused)
        for reason in refused.values():
            self.counters.overloaded.add(reason)
        if not batch.done.done():
            batch.done.set_result(refused)

    def _arm_timer(self, deadline_ms: int | None) -> None:
        now = self.clock()
        idle = now + self.limits.idle_tick_ms
        deadline = idle if deadline_ms is None else min(deadline_ms, idle)
        self._deadline_ms = deadline
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(
            max(0, deadline - now) / 1000.0, self._on_timer
        )

    def _on_timer(self) -> None:
        self._timer = None
        self._tick_due = True
        self._wake.set()
