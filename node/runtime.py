"""The node process: one task owns the Replica and carries out what it asks, in order.

Events (peer messages, admitted client transactions, timer ticks) wait in bounded inboxes. The
consensus task drains up to ``max_events_per_round`` of them, steps the replica once per event,
and then carries out the round's ``Ready`` records together (group commit):

  1. persist every message of the round in one SQLite transaction;
  2. append the round's committed blocks (one transaction), wake GET /tx waiters;
  3. truncate the persisted log at the newest stable checkpoint (after 2, so a crash between
     them leaves more on disk, never less);
  4. hand every outgoing message to the transport (queued per peer, sent in batches);
  5. serve FetchRequests from the block store;
  6. re-arm the timer for the replica's next deadline.

Nothing is sent before everything it depends on is durable ("persist before send"), and one
fsync covers a whole round instead of one per message. The task never awaits in the middle of a
round, so the replica is only ever touched by it.

A failure inside the core or the store is a bug or a broken disk: the node then stops (fail
stop, exit status 70) instead of running on in an unknown state; a restart recovers from what
was persisted. Every other error (bad input from clients or peers) is answered, counted and
survived.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from aiohttp import web

from consensus.events import Ready, Receive, Submit, Tick
from consensus.messages import (
    CertifiedBlock,
    FetchRequest,
    FetchResponse,
    Message,
    PrePrepare,
    Request,
)
from consensus.replica import Replica
from node.api import Overloaded, create_app
from node.audit import Auditor, BlockUnavailable
from node.config import NodeConfig, load_config
from node.crypto import NodeCrypto, load_key
from node.faults import FaultLayer
from node.ledger import (
    Block,
    ClientRegistry,
    LedgerApp,
    block_from_committed,
    block_to_certified,
    decode_block,
)
from node.store import Store
from node.transport import LogLimiter, ReasonCounter, Transport

log = logging.getLogger("medchain.node")

STORE_FILE: Final = "chain.sqlite3"
MEMPOOL_FULL: Final = "mempool full"
"""The reason ``Replica`` gives in ``Ready.dropped`` for a submitted tx it had no room for."""
EXIT_OK: Final = 0
EXIT_FATAL: Final = 70
"""EX_SOFTWARE: the consensus task or the store failed; the node stopped itself."""
SUBMIT_TIMEOUT_S: Final = 30.0
"""A POST /tx waiting longer than this for the consensus task gets 503 (the task is stuck)."""


class NodeClock:
    """Milliseconds that never go backwards, anchored to the wall clock at start.

    The replica needs a monotonic time for its timers; it also stamps proposed batches with it,
    so anchoring to the wall clock keeps block timestamps meaningful to people.
    """

    __slots__ = ("_mono0", "_wall0")

    def __init__(self) -> None:
        self._wall0 = time.time_ns() // 1_000_000
        self._mono0 = time.monotonic_ns()

    def __call__(self) -> int:
        return self._wall0 + (time.monotonic_ns() - self._mono0) // 1_000_000


@dataclass(slots=True)
class _ClientBatch:
    """Admitted client transactions waiting for the consensus task, and who waits for them."""

    event: Submit
    done: asyncio.Future[dict[bytes, str]]


@dataclass(slots=True)
class _Counters:
    rounds: int = 0
    steps: int = 0
    persisted_msgs: int = 0
    committed_blocks: int = 0
    committed_txs: int = 0
    submitted_txs: int = 0
    refused_txs: int = 0
    served_fetches: int = 0
    served_blocks: int = 0
    peer_inbox_dropped: int = 0
    client_inbox_refused: int = 0
    view_changes: int = 0
    dropped: ReasonCounter = field(default_factory=ReasonCounter)

    def to_json(self) -> dict[str, object]:
        return {
            "rounds": self.rounds,
            "steps": self.steps,
            "persisted_msgs": self.persisted_msgs,
            "committed_blocks": self.committed_blocks,
            "committed_txs": self.committed_txs,
            "submitted_txs": self.submitted_txs,
            "refused_txs": self.refused_txs,
            "served_fetches": self.served_fetches,
            "served_blocks": self.served_blocks,
            "peer_inbox_dropped": self.peer_inbox_dropped,
            "client_inbox_refused": self.client_inbox_refused,
            "view_changes": self.view_changes,
            "core_dropped": self.dropped.snapshot(),
        }


class PendingTxs:
    """Ids of transactions this node has seen but not yet committed: bounded LRU with a TTL.

    Fed with client submissions and with the ids in peers' Requests and PrePrepares, so that
    GET /tx can say "pending" on any node that heard of the transaction.
    """

    __slots__ = ("_max", "_seen", "_ttl_ms")

    def __init__(self, max_size: int, ttl_ms: int) -> None:
        self._max = max_size
        self._ttl_ms = ttl_ms
        self._seen: OrderedDict[bytes, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, tx_ids: tuple[bytes, ...] | list[bytes], now_ms: int) -> None:
        seen = self._seen
        for tx_id in tx_ids:
            if tx_id not in seen:
                seen[tx_id] = now_ms
        self._expire(now_ms)
        while len(seen) > self._max:
            seen.popitem(last=False)

    def discard(self, tx_ids: tuple[bytes, ...]) -> None:
        for tx_id in tx_ids:
            self._seen.pop(tx_id, None)

    def get(self, tx_id: bytes, now_ms: int) -> int | None:
        t = self._seen.get(tx_id)
        if t is not None and now_ms - t > self._ttl_ms:
            del self._seen[tx_id]
            return None
        return t

    def _expire(self, now_ms: int) -> None:
        """Insertion order is first-seen order, so expired entries are at the front."""
        seen = self._seen
        while seen:
            tx_id, t = next(iter(seen.items()))
            if now_ms - t <= self._ttl_ms:
                return
            del seen[tx_id]


class Node:
    """One consortium member: replica, store, ledger, transport and HTTP app.

    ``start()`` opens the store, restores the replica from it and starts the consensus task
    and the peer links; ``stop()`` undoes all of it. ``run()`` also serves HTTP on the
    configured address until asked to stop. ``app`` is the aiohttp application (client API and
    peer endpoint), usable with aiohttp's test client.
    """

    def __init__(
        self, config: NodeConfig, *, secret: bytes | None = None, full_verify: bool = False
    ) -> None:
        self._full_verify = full_verify
        self.config = config
        self.limits = config.limits
        self.node_id = config.node_id
        self.clock = NodeClock()
        self._secret = secret
        self._started_ms = self.clock()
        self._store: Store | None = None
        self.auditor: Auditor | None = None
        self._durable_pending: set[bytes] = set()
        """Ids in the store's pending table (acknowledged here, not yet committed)."""
        self._replica: Replica | None = None
        self._ledger_app: LedgerApp | None = None
        self.faults = FaultLayer.from_config(config)
        self._crypto: NodeCrypto | None = None
        self.transport = Transport(
            self_id=config.node_id,
            peers=config.peers,
            limits=config.limits,
            deliver=self._deliver_peer,
            faults=self.faults,
        )
        self.app = create_app(self)
        self.pending = PendingTxs(self.limits.pending_tx_max, self.limits.pending_tx_ttl_ms)
        self.counters = _Counters()
        self._peer_inbox: deque[tuple[Receive, int]] = deque()
        self._peer_inbox_bytes = 0
        self._client_inbox: deque[_ClientBatch] = deque()
        self._waiters: dict[bytes, set[asyncio.Future[None]]] = {}
        self._waiter_count = 0
        self._wake = asyncio.Event()
        self._tick_due = True
        self._deadline_ms = 0
        self._timer: asyncio.TimerHandle | None = None
        self._core_task: asyncio.Task[None] | None = None
        self._fatal: BaseException | None = None
        self._log_limit = LogLimiter(interval_s=10.0)

    # ------------------------------------------------------------------ accessors

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("node not started")
        return self._store

    @property
    def replica(self) -> Replica:
        if self._replica is None:
            raise RuntimeError("node not started")
        return self._replica

    @property
    def ledger_app(self) -> LedgerApp:
        if self._ledger_app is None:
            raise RuntimeError("node not started")
        return self._ledger_app

    @property
    def healthy(self) -> bool:
        task = self._core_task
        return task is not None and not task.done() and self._fatal is None

    @property
    def fatal(self) -> BaseException | None:
        return self._fatal

    @property
    def height(self) -> int:
        return self.store.head()[0]

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the store, restore the replica, start the consensus task and peer links."""
        if self._core_task is not None:
            raise RuntimeError("node already started")
        cfg = self.config
        secret = self._secret if self._secret is not None else self._load_secret()
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        store = Store(cfg.data_dir / STORE_FILE)
        try:
            height, head = store.head()
            persisted = store.load_messages()
            self._ledger_app = LedgerApp(store, ClientRegistry(cfg.client_keys()))
            crypto = NodeCrypto(secret, cfg.replica_publics)
            self._crypto = crypto
            self._replica = Replica(
                cfg.consensus,
                crypto,
                self._ledger_app,
                last_executed=height,
                head_hash=head,
                persisted=persisted,
            )
        except BaseException:
            store.close()
            raise
        self._store = store
        self.auditor = Auditor.for_node(cfg, store, crypto)
        self.auditor.startup_check(full=self._full_verify)
        log.info(
            "starting: height %d, %d persisted consensus messages, view %d, n=%d",
            height,
            len(persisted),
            self._replica.view,
            cfg.n,
        )
        try:
            await self.transport.start()
        except BaseException:
            self._store = None
            store.close()
            raise
        await self.auditor.start()
        self._core_task = asyncio.create_task(self._run_core(), name="consensus")
        self._resubmit_pending()

    def _forget_durable_pending(self, blocks: list[Block]) -> None:
        """Only transactions this node acknowledged itself are on disk as pending: most nodes
        have none of a block's, so look in memory before touching SQLite."""
        mine = self._durable_pending
        if not mine:
            return
        done = [t for b in blocks for t in b.tx_ids if t in mine]
        if done:
            self.store.delete_pending(done)
            mine.difference_update(done)

    def _resubmit_pending(self) -> None:
        """Hand the replica what this node acknowledged before a crash and never saw commit."""
        pending = self.store.load_pending(self.config.consensus.mempool_max_txs)
        self._durable_pending.update(t for t, _ in pending)
        step = self.config.consensus.max_request_txs
        loop = asyncio.get_running_loop()
        for i in range(0, len(pending), step):
            chunk = pending[i : i + step]
            ev = Submit(tuple(t for t, _ in chunk), tuple(tx for _, tx in chunk))
            self._client_inbox.append(_ClientBatch(ev, loop.create_future()))
        if pending:
            log.info("re-submitting %d accepted transactions not yet committed", len(pending))
            self._wake.set()

    def _load_secret(self) -> bytes:
        secret, public = load_key(self.config.key_file)
        expected = self.config.replicas[self.node_id].public_key
        if public != expected:
            raise ValueError(
                f"key file {self.config.key_file} holds public key {public.hex()[:16]}..., but "
                f"the config lists {expected.hex()[:16]}... for replica {self.node_id}"
            )
        return secret

    async def stop(self) -> None:
        """Stop the consensus task and peer links, release waiters, close the store."""
        self._release_waiters()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task, self._core_task = self._core_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fail_client_batches("node is stopping")
        await self.transport.stop()
        if self.auditor is not None:
            await self.auditor.stop()
            self.auditor.close()
            self.auditor = None
        if self._store is not None:
            self._store.close()
            self._store = None

    async def run(self, stop: asyncio.Event) -> int:
        """Serve until ``stop`` is set or the consensus task fails; returns the exit status."""
        await self.start()
        runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        try:
            await runner.setup()
            site = web.TCPSite(
                runner,
                self.config.host,
                self.config.port,
                shutdown_timeout=self.limits.shutdown_grace_ms / 1000.0,
                reuse_address=True,
            )
            await site.start()
            log.info("serving on http://%s:%d", self.config.host, self.config.port)
            core = self._core_task
            assert core is not None
            stop_wait = asyncio.create_task(stop.wait(), name="stop-signal")
            try:
                await asyncio.wait({stop_wait, core}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop_wait.cancel()
            log.info("shutting down")
            # Long polls would hold the server's graceful shutdown open: answer them first.
            self._release_waiters()
        finally:
            await runner.cleanup()
            await self.stop()
        if self._fatal is not None:
            log.critical("stopped after a fatal error: %r", self._fatal)
            return EXIT_FATAL
        log.info("stopped")
        return EXIT_OK

    # ------------------------------------------------------------------ inputs

    def _deliver_peer(self, sender: int, msg: Message, size: int) -> bool:
        """Called by the transport for every decoded frame; never blocks. The inbox is bounded
        in messages and in bytes (a FetchResponse may be megabytes)."""
        lim = self.limits
        if (
            len(self._peer_inbox) >= lim.peer_inbox_max
            or self._peer_inbox_bytes + size > lim.peer_inbox_max_bytes
            or not self.healthy
        ):
            self.counters.peer_inbox_dropped += 1
            return False
        self._peer_inbox.append((Receive(msg, sender), size))
        self._peer_inbox_bytes += size
        self._wake.set()
        return True

    async def submit(self, tx_ids: list[bytes], txs: list[bytes]) -> dict[bytes, str]:
        """Feed admitted transactions to the replica (``Submit``); wait until it has taken
        them. Returns the ids it refused, with the reason (mempool full). Raises Overloaded
        when the inbox is full or the node is stopping."""
        if not self.healthy:
            raise Overloaded("node is not running")
        if len(self._client_inbox) >= self.limits.client_inbox_max:
            self.counters.client_inbox_refused += 1
            raise Overloaded("client inbox full")
        done: asyncio.Future[dict[bytes, str]] = asyncio.get_running_loop().create_future()
        self._client_inbox.append(_ClientBatch(Submit(tuple(tx_ids), tuple(txs)), done))
        self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(done), SUBMIT_TIMEOUT_S)
        except TimeoutError:
            raise Overloaded("consensus task did not take the transactions in time") from None

    # ------------------------------------------------------------------ queries

    def tx_status(self, tx_id: bytes) -> dict[str, object] | None:
        location = self.store.tx_location(tx_id)
        if location is not None:
            return {
                "tx_id": tx_id.hex(),
                "status": "committed",
                "height": location[0],
                "index": location[1],
            }
        known = self.pending.get(tx_id, self.clock()) is not None
        if known or tx_id in self.replica.mempool:
            return {"tx_id": tx_id.hex(), "status": "pending"}
        return None

    async def wait_committed(self, tx_id: bytes, wait_ms: int) -> None:
        """Return when ``tx_id`` is committed or after ``wait_ms``, whichever is first."""
        if self.store.is_committed(tx_id) or not self.healthy:
            return
        if self._waiter_count >= self.limits.max_waiters:
            raise Overloaded("too many waiting requests")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(tx_id, set()).add(fut)
        self._waiter_count += 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, wait_ms / 1000.0)
        finally:
            self._waiter_count -= 1
            futs = self._waiters.get(tx_id)
            if futs is not None:
                futs.discard(fut)
                if not futs:
                    del self._waiters[tx_id]

    def get_block(self, height: int) -> Block | None:
        assert self.auditor is not None
        return self.auditor.read_block(height)

    def get_blocks(self, from_height: int, limit: int) -> list[Block]:
        assert self.auditor is not None
        return self.auditor.read_blocks(from_height, limit)

    @functools.cached_property
    def _consortium_json(self) -> dict[str, object]:
        """Public keys this node verifies against (auditors should get them out of band)."""
        cfg = self.config
        return {
            "replicas": [
                {"id": r.id, "url": r.url, "public_key": r.public_key.hex()} for r in cfg.replicas
            ],
            "clients": [
                {"hospital": c.hospital, "public_key": c.public_key.hex()} for c in cfg.clients
            ],
        }

    def status(self) -> dict[str, object]:
        r = self.replica
        height, head = self.store.head()
        return {
            "node": self.node_id,
            "view": r.view,
            "primary": r.primary,
            "is_primary": r.primary == self.node_id,
            "in_view_change": r.in_view_change,
            "height": height,
            "head_hash": head.hex(),
            "last_executed": r.last_executed,
            "stable_checkpoint": r.stable_seq,
            "mempool_size": r.mempool_size,
            "pending_txs": len(self.pending),
            "waiters": self._waiter_count,
            "inbox": {
                "peer": len(self._peer_inbox),
                "peer_bytes": self._peer_inbox_bytes,
                "client": len(self._client_inbox),
            },
            "healthy": self.healthy,
            "uptime_ms": self.clock() - self._started_ms,
            "n": self.config.n,
            "f": self.config.consensus.f,
            "peers": self.transport.peers_status(),
            **self._consortium_json,
            "counters": self.counters.to_json(),
            "transport": self.transport.status(),
            "faults": self.faults.status(),
        }

    # ------------------------------------------------------------------ the consensus task

    async def _run_core(self) -> None:
        try:
            while True:
                if self.faults.paused:
                    # Fault injection: stop feeding the replica; the inboxes stay bounded.
                    await self.faults.wait_unpaused()
                    continue
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
            self._release_waiters()
            self._fail_client_batches("node failed")

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
        batches: list[tuple[_ClientBatch, Ready]] = []
        try:
            self._step_events(readies, batches)
        finally:
            self.counters.rounds += 1
            self.counters.steps += len(readies)
            try:
                if readies:
                    self._apply(readies)
            except BaseException:
                for batch, _ in batches:
                    if not batch.done.done():
                        batch.done.set_exception(Overloaded("node failed"))
                raise
            for batch, ready in batches:
                self._answer_submit(batch, ready)

    def _step_events(self, readies: list[Ready], batches: list[tuple[_ClientBatch, Ready]]) -> None:
        replica = self.replica
        budget = self.limits.max_events_per_round
        # Peer traffic drives progress; client batches get a bounded share so neither starves.
        client_quota = min(len(self._client_inbox), max(1, budget // 4))
        peer_quota = min(len(self._peer_inbox), budget - client_quota)
        for _ in range(peer_quota):
            ev, size = self._peer_inbox.popleft()
            self._peer_inbox_bytes -= size
            self._note_seen(ev.message)
            readies.append(replica.step(ev, self.clock()))
        for _ in range(client_quota):
            batch = self._client_inbox.popleft()
            try:
                ready = replica.step(batch.event, self.clock())
            except BaseException:
                batch.done.set_exception(Overloaded("node failed"))
                raise
            readies.append(ready)
            batches.append((batch, ready))
        now = self.clock()
        if self._tick_due or now >= self._deadline_ms:
            self._tick_due = False
            readies.append(replica.step(Tick(), now))

    def _note_seen(self, msg: Message) -> None:
        if isinstance(msg, Request):
            self.pending.add(msg.tx_ids, self.clock())
        elif isinstance(msg, PrePrepare) and msg.batch.tx_ids:
            self.pending.add(msg.batch.tx_ids, self.clock())

    def _apply(self, readies: list[Ready]) -> None:
        store = self.store
        persist = [m for r in readies for m in r.persist]
        if persist:
            store.save_messages(persist)
            self.counters.persisted_msgs += len(persist)
        blocks = [block_from_committed(c) for r in readies for c in r.committed]
        if blocks:
            raws = store.append_blocks(blocks)
            if self.auditor is not None:
                self.auditor.note_written(blocks, raws)
            self._forget_durable_pending(blocks)
            self._on_committed(blocks)
        truncations = [r.truncate_through for r in readies if r.truncate_through is not None]
        if truncations:
            store.truncate_messages(max(truncations))
        send = self._send
        for r in readies:
            for dest, msg in r.send:
                if dest != self.node_id:
                    send(dest, msg)
        for r in readies:
            for req in r.serve:
                self._serve_fetch(req)
        for r in readies:
            self._note_drops(r)
            if r.view_changed is not None:
                store.truncate_views(r.view_changed)
                self.counters.view_changes += 1
                log.info("view change: moving to view %d", r.view_changed)
        deadline = readies[-1].deadline_ms
        self._arm_timer(deadline)

    def _on_committed(self, blocks: list[Block]) -> None:
        c = self.counters
        for block in blocks:
            ids = block.tx_ids
            c.committed_blocks += 1
            c.committed_txs += len(ids)
            self.pending.discard(ids)
            for tx_id in ids:
                for fut in self._waiters.pop(tx_id, ()):
                    if not fut.done():
                        fut.set_result(None)
        last = blocks[-1]
        log.debug("committed through height %d (%d blocks)", last.height, len(blocks))

    def _serve_fetch(self, req: FetchRequest) -> None:
        """Answer a FetchRequest with at most ``fetch_batch_blocks`` blocks and about
        ``fetch_response_max_bytes`` (always at least one block, so a peer never stalls)."""
        count = min(req.to_seq - req.from_seq + 1, self.config.consensus.fetch_batch_blocks)
        if count < 1:
            return
        budget = self.limits.fetch_response_max_bytes
        size = 0
        certified: list[CertifiedBlock] = []
        for height, raw in self.store.get_blocks_raw(req.from_seq, count):
            if height > req.to_seq:
                break
            if certified and size + len(raw) > budget:
                break
            block = self._verified_for_serving(height, raw)
            if block is None:
                break  # never serve corrupted data; the auditor quarantines and repairs it
            size += len(raw)
            certified.append(block_to_certified(block))
        if not certified:
            return
        self.counters.served_fetches += 1
        self.counters.served_blocks += len(certified)
        self._send(req.replica, FetchResponse(tuple(certified), self.node_id))

    def _verified_for_serving(self, height: int, raw: bytes) -> Block | None:
        if self.auditor is None:
            return decode_block(raw)
        try:
            return self.auditor.read_block(height, raw)
        except BlockUnavailable as e:
            log.warning("not serving block %d: %s", height, e.reason)
            return None

    def _send(self, dest: int | None, msg: Message) -> None:
        """Hand one message to the transport, through the fault layer's byzantine modes."""
        if self._crypto is None:
            self.transport.send(dest, msg)
            return
        for d, m in self.faults.outgoing(dest, msg, self._crypto.sign):
            self.transport.send(d, m)

    def _note_drops(self, ready: Ready) -> None:
        for reason, detail in ready.dropped:
            self.counters.dropped.add(reason)
            self._log_limit(log, logging.INFO, reason, "core dropped: %s (%s)", reason, detail)

    def _answer_submit(self, batch: _ClientBatch, ready: Ready) -> None:
        refused: dict[bytes, str] = {}
        for reason, detail in ready.dropped:
            if reason == MEMPOOL_FULL:
                with contextlib.suppress(ValueError):
                    refused[bytes.fromhex(detail)] = reason
        ev = batch.event
        kept = [(t, tx) for t, tx in zip(ev.tx_ids, ev.txs, strict=True) if t not in refused]
        accepted = [t for t, _ in kept]
        # Durable before the client hears 202: a crash now must not lose an accepted record.
        self.store.save_pending(accepted, [tx for _, tx in kept])
        self._durable_pending.update(accepted)
        self.pending.add(accepted, self.clock())
        self.counters.submitted_txs += len(accepted)
        self.counters.refused_txs += len(refused)
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

    def _release_waiters(self) -> None:
        waiters, self._waiters = self._waiters, {}
        for futs in waiters.values():
            for fut in futs:
                if not fut.done():
                    fut.set_result(None)

    def _fail_client_batches(self, why: str) -> None:
        while self._client_inbox:
            batch = self._client_inbox.popleft()
            if not batch.done.done():
                batch.done.set_exception(Overloaded(why))


# ---------------------------------------------------------------------------------------------
# process entry point


def setup_logging(node_id: int, level: str) -> None:
    """Log to stderr with the node id on every line (ours and aiohttp's)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s.%(msecs)03d node{node_id} %(levelname)s %(name)s: %(message)s",
            datefmt="%Y-%m-%d %H:%M:%S",
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # One access log line per request would drown everything else at benchmark rates.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


async def serve(config: NodeConfig, *, full_verify: bool = False) -> int:
    """Run a node until SIGTERM/SIGINT; returns the process exit status."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    log.info("event loop: %s.%s", type(loop).__module__, type(loop).__name__)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await Node(config, full_verify=full_verify).run(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def run_node(config_path: str | os.PathLike[str], *, full_verify: bool = False) -> int:
    """``medchain node --config FILE``: load the config, run the node, return the exit status.

    Raises ConfigError / KeyFileError / ValueError (for the CLI to report) if the node cannot
    start: bad config, unreadable key, key not matching the config.
    """
    config = load_config(Path(config_path))
    setup_logging(config.node_id, config.log_level)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(serve(config, full_verify=full_verify))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where installed (libuv's loop: cheaper sockets and timers for aiohttp under
    load); the standard loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
