"""The node process: one task owns the Replica and carries out what it asks, in order.

Events (peer messages, admitted client transactions, timer ticks) wait in bounded inboxes. The
consensus task drains up to ``max_events_per_round`` of them, steps the replica once per event,
and then carries out the round's ``Ready`` records together (group commit):

  1. in one SQLite transaction (``Store.round``; FULL-synced when it holds messages to be
     sent): persist every message of the round, append its committed blocks, delete the
     acknowledged transactions they commit, forget the persisted messages the core's
     ``Retention`` names; all or nothing, so a crash leaves the round whole or absent;
  2. wake GET /tx waiters of the committed transactions;
  3. hand every outgoing message to the transport (queued per peer, sent in batches);
  4. serve FetchRequests from the block store;
  5. re-arm the timer for the replica's next deadline.

Nothing is sent before everything it depends on is durable ("persist before send"), and one
fsync covers a whole round instead of one per message. The task never awaits in the middle of a
round, so the replica is only ever touched by it.

A failure inside the core or the store is a bug or a broken disk: the node then stops (fail
stop, exit status 70) instead of running on in an unknown state; a restart recovers from what
was persisted. Every other error (bad input from clients or peers) is answered, counted and
survived.

The rounds themselves are ``node.coreloop``. Around the task: ``node.inbox`` (the bounded
inboxes), ``node.pending`` (what is known or acknowledged but not committed), ``node.waiters``
(GET /tx long polls), ``node.status`` (the GET /status document) and ``node.main`` (the process
entry point: config -> ``Node.run``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Final

from aiohttp import web

from consensus.events import DropReason, Receive, Submit
from consensus.messages import (
    FetchRequest,
    FetchResponse,
    Message,
    Request,
)
from consensus.replica import Replica
from node.access import ReaderHttp, ReadTokens
from node.api import Overloaded, create_app
from node.clock import NodeClock
from node.config import NodeConfig
from node.coreloop import ConsensusLoop
from node.crypto import NodeCrypto, load_key
from node.faults import FaultLayer
from node.faults.wiring import make_transport, pause_gate
from node.fetchserve import FetchBudget
from node.gcpause import GcPauses
from node.http import GuardedRunner, serve_kwargs
from node.inbox import ClientBatch, ClientInbox, PeerInbox, RoundFrames
from node.ledger import (
    Block,
    ClientRegistry,
    LedgerApp,
)
from node.logfmt import set_position
from node.observer import Observer
from node.peerauth import PeerAuth
from node.pending import DurablePending, PendingTxs
from node.reader import BlockReader
from node.repair import RepairLog
from node.status import NodeCounters, consortium_json, status_document
from node.store import Store, StoreError
from node.storeguard import StoreWatch, open_store
from node.tls import check_own_certificate, node_client_context, server_context
from node.transport import LogLimiter
from node.waiters import CommitWaiters

if TYPE_CHECKING:
    from node.audit.auditor import Auditor

log = logging.getLogger("medchain.node")

STORE_FILE: Final = "chain.sqlite3"
EXIT_OK: Final = 0
EXIT_FATAL: Final = 70
"""EX_SOFTWARE: the consensus task or the store failed; the node stopped itself."""
SUBMIT_TIMEOUT_S: Final = 30.0
"""A POST /tx waiting longer than this for the consensus task gets 503 (the task is stuck)."""


class Node(ConsensusLoop):
    """One consortium member: replica, store, ledger, transport and HTTP app.

    ``start()`` opens the store, restores the replica from it and starts the consensus task
    and the peer links; ``stop()`` undoes all of it. ``run()`` also serves HTTP on the
    configured address until asked to stop. ``app`` is the aiohttp application (client API and
    peer endpoint), usable with aiohttp's test client.
    """

    def __init__(
        self,
        config: NodeConfig,
        *,
        secret: bytes | None = None,
        full_verify: bool = False,
        wipe: bool = False,
    ) -> None:
        self._full_verify = full_verify
        self._wipe = wipe
        self._watch_task: asyncio.Task[None] | None = None
        self.config = config
        self.limits = config.limits
        self.node_id = config.node_id
        self.clock = NodeClock()
        self._secret = secret
        self.started_ms = self.clock()
        self._store: Store | None = None
        self.reader: BlockReader | None = None
        """The node's own read path (verify-on-read, quarantine, repair); set while started."""
        self.auditor: Auditor | None = None
        """The cross-audit of peers, while started with ``[audit] enabled``."""
        self._durable: DurablePending | None = None
        """The store's pending table (acknowledged here, not yet committed); while started."""
        self._replica: Replica | None = None
        self._ledger_app: LedgerApp | None = None
        self.faults = FaultLayer.from_config(config)
        self.observer = Observer.for_node(config, self.clock)
        """Metrics, the flight recorder and readiness (node.observer; served by node.ops)."""
        self.faults.listener = self.observer.on_fault
        self.gc_pauses = GcPauses()
        """Every garbage collection's pause, timed (node.gcpause; /metrics and /status)."""
        self._crypto: NodeCrypto | None = None
        self.transport = make_transport(
            self.faults,
            self._sign,
            self_id=config.node_id,
            peers=config.peers,
            limits=config.limits,
            deliver=self._deliver_peer,
            auth=PeerAuth(
                self_id=config.node_id,
                replicas=config.replica_publics,
                sign=self._sign,
                tls=config.tls.enabled,
            ),
            ssl_context=node_client_context(config.tls) if config.tls.enabled else None,
        )
        self._fetch_budget = FetchBudget(config.limits)
        self._gate = pause_gate(self.faults)
        self.app = create_app(self)
        self.app.add_routes(self._audit_routes())
        self.pending = PendingTxs(self.limits.pending_tx_max, self.limits.pending_tx_ttl_ms)
        self.counters = NodeCounters()
        self.waiters = CommitWaiters(self.limits.max_waiters)
        self._consortium = consortium_json(config)
        self._peer_inbox = PeerInbox(
            self.limits.peer_inbox_max, self.limits.peer_inbox_max_bytes, self.clock
        )
        self._client_inbox = ClientInbox(
            self.limits.client_inbox_max, self.limits.client_inbox_max_bytes, self.clock
        )
        self._step_ms = 0
        """The replica's time: the receipt time of the newest event stepped, never decreasing."""
        self._next_reoffer_ms = 0
        self._frames = RoundFrames()
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
    def started(self) -> bool:
        """The store is open and the replica restored (until ``stop()``)."""
        return self._store is not None and self._replica is not None

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
        if cfg.tls.enabled:
            check_own_certificate(cfg.tls, cfg.replicas[self.node_id].public_key)
        if cfg.access_open:
            log.warning(
                "ACCESS OPEN: [access] open = true, so anyone who can reach this node reads "
                "every record's metadata and status; set it to false outside a dev cluster"
            )
        store = open_store(
            cfg.data_dir,
            STORE_FILE,
            node_id=cfg.node_id,
            vote_log_sync=cfg.vote_log_sync,
            wipe=self._wipe,
        )
        self._wipe = False  # a restart of this object reuses what it wiped and rebuilt
        watch: StoreWatch | None = None
        try:
            watch = StoreWatch(store.path)
            height, head = store.head()
            persisted = store.load_messages()
            registry = ClientRegistry(cfg.client_keys())
            self._ledger_app = LedgerApp(store, registry)
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
            if watch is not None:
                watch.close()
            store.close()
            raise
        self._store = store
        store.on_write = self.observer.on_store_write
        set_position(self._log_position)
        self._durable = DurablePending(
            store, self.limits.pending_max_txs, self.limits.pending_max_bytes
        )
        self._open_read_path(store, registry, crypto)
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
            self._store = self._durable = None
            watch.close()
            store.close()
            raise
        assert self.reader is not None
        http = self._reader_http(crypto)
        await self.reader.start(http=http)
        if self.auditor is not None:
            await self.auditor.start(http=http)
        self.gc_pauses.install()
        self._core_task = asyncio.create_task(self._run_core(), name="consensus")
        self._watch_task = asyncio.create_task(self._watch_store(watch), name="store-watch")
        self._resubmit_pending()

    def _reader_http(self, crypto: NodeCrypto) -> ReaderHttp:
        """How this node reads from its peers (repair, audit): its certificate over TLS, a read
        token signed with its replica key otherwise (peers may be closed to anonymous reads)."""
        tls = self.config.tls
        ctx = node_client_context(tls) if tls.enabled else None
        return ReaderHttp(ssl_context=ctx, tokens=ReadTokens(crypto.public, crypto.sign))

    def _open_read_path(self, store: Store, registry: ClientRegistry, crypto: NodeCrypto) -> None:
        """The reader (always) and the cross-audit (if enabled), sharing one database and the
        client registry the ledger uses; the stored chain is checked before anything serves."""
        cfg = self.config
        repair_log: RepairLog
        if cfg.audit_enabled:
            # The one place that wires the cross-audit in: a node with it off never loads it.
            from node.audit.auditor import Auditor
            from node.audit.log import AuditLog

            repair_log = audit_log = AuditLog.for_node(cfg)
        else:
            repair_log = RepairLog.for_node(cfg)
        self.reader = BlockReader.for_node(cfg, store, registry, repair_log)
        self.reader.startup_check(full=self._full_verify)
        if cfg.audit_enabled:
            self.auditor = Auditor.for_node(cfg, self.reader, crypto, audit_log)

    def _audit_routes(self) -> list[web.RouteDef]:
        """GET /audit and /audit/evidence: the auditor's, or a 404 naming why there is none."""
        if not self.config.audit_enabled:
            return [web.get("/audit", _audit_disabled), web.get("/audit/evidence", _audit_disabled)]
        from node.audit.routes import audit_routes

        return audit_routes(lambda: self.auditor)

    def _resubmit_pending(self) -> None:
        """Hand the replica what this node acknowledged before a crash and never saw commit."""
        assert self._durable is not None
        pending = self._durable.load(self.limits.pending_max_txs)
        self._offer_acknowledged(pending)
        if pending:
            log.info("re-submitting %d accepted transactions not yet committed", len(pending))

    def _reoffer_pending(self, *, now: bool = False) -> None:
        """Every ``pending_reoffer_ms``, and after every view change (``now``): hand the replica
        again the acknowledged transactions it no longer holds (refused while full, or held
        by a replica that restarted). With those it still holds, ``normal.relay_stale`` and
        ``reforward_pending`` take them to the current primary; together an acknowledged
        transaction reaches the primary of every view until it commits."""
        clock = self.clock()
        if not now and clock < self._next_reoffer_ms:
            return
        self._next_reoffer_ms = clock + self.limits.pending_reoffer_ms
        durable = self._durable
        if durable is None or not len(durable) or len(self._client_inbox):
            return
        replica = self.replica
        limit = self.config.consensus.max_inflight * self.config.consensus.max_batch_txs
        self._offer_acknowledged(durable.oldest(limit, replica.mempool.__contains__))

    def _offer_acknowledged(self, pending: list[tuple[bytes, bytes]]) -> None:
        step = self.config.consensus.max_request_txs
        loop = asyncio.get_running_loop()
        for i in range(0, len(pending), step):
            chunk = pending[i : i + step]
            ev = Submit(tuple(t for t, _ in chunk), tuple(tx for _, tx in chunk), True)
            size = sum(len(tx) for _, tx in chunk)
            self._client_inbox.push(ClientBatch(ev, loop.create_future(), size))
        if pending:
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
        self.gc_pauses.uninstall()
        self.waiters.release_all()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        watch_task, self._watch_task = self._watch_task, None
        if watch_task is not None:
            watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch_task
        task, self._core_task = self._core_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._client_inbox.fail_all("node is stopping")
        await self.transport.stop()
        if self.auditor is not None:
            await self.auditor.stop()
            self.auditor.close()
            self.auditor = None
        if self.reader is not None:
            await self.reader.stop()
            self.reader.close()
            self.reader = None
        if self._store is not None:
            self._store.close()
            self._store = None
            self._durable = None

    async def run(self, stop: asyncio.Event) -> int:
        """Serve until ``stop`` is set or the consensus task fails; returns the exit status."""
        await self.start()
        lim = self.limits
        runner = GuardedRunner(
            self.app,
            max_connections=lim.max_connections,
            handle_signals=False,
            **serve_kwargs(lim.header_timeout_ms),
        )
        try:
            await runner.setup()
            tls = self.config.tls
            site = runner.tcp_site(
                self.config.host,
                self.config.port,
                shutdown_timeout=self.limits.shutdown_grace_ms / 1000.0,
                reuse_address=True,
                ssl_context=server_context(tls) if tls.enabled else None,
            )
            await site.start()
            scheme = "https" if tls.enabled else "http"
            log.info("serving on %s://%s:%d", scheme, self.config.host, self.config.port)
            core = self._core_task
            assert core is not None
            stop_wait = asyncio.create_task(stop.wait(), name="stop-signal")
            try:
                await asyncio.wait({stop_wait, core}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop_wait.cancel()
            log.info("shutting down")
            # Long polls would hold the server's graceful shutdown open: answer them first,
            # and those that still arrive before the listener closes.
            self.waiters.release_all(close=True)
        finally:
            await runner.cleanup()
            await self.stop()
        if self._fatal is not None:
            log.critical("stopped after a fatal error: %r", self._fatal)
            return EXIT_FATAL
        log.info("stopped")
        return EXIT_OK

    # ------------------------------------------------------------------ inputs

    def _deliver_peer(self, sender: int, msg: Message, frame: bytes) -> bool:
        """Called by the transport for every decoded frame; never blocks. The inbox is bounded
        in messages and in bytes (a FetchResponse may be megabytes). The frame stays with a
        message the replica may persist, which is then stored without encoding it again."""
        keep = None if isinstance(msg, Request | FetchRequest | FetchResponse) else frame
        if not self.healthy or not self._peer_inbox.offer(Receive(msg, sender), len(frame), keep):
            self.counters.peer_inbox_dropped += 1
            return False
        self._wake.set()
        return True

    def check_admission(self, count: int) -> None:
        """Raise Overloaded (503 + Retry-After, counted) if this node takes no client
        transactions now: its client inbox or its acknowledged-not-committed set is full, or
        the oldest transaction its replica holds has waited past ``admission_max_age_ms``.
        Cheap, so POST /tx asks it before checking any signature."""
        if not self.healthy:
            raise Overloaded("node is not running")
        reason = None
        if self._client_inbox.full:
            reason = "client inbox full"
        elif self._durable is not None and not self._durable.room_for(count, 0):
            reason = "pending set full"
        else:
            oldest = self.replica.mempool.oldest_ms()
            limit = self.config.consensus.admission_max_age_ms
            if oldest is not None and self.clock() - oldest > limit:
                reason = DropReason.BACKLOG_TOO_OLD.value
        if reason is not None:
            self.counters.overloaded.add(reason, count)
            raise Overloaded(reason)

    async def submit(self, tx_ids: list[bytes], txs: list[bytes]) -> dict[bytes, str]:
        """Feed admitted transactions to the replica (``Submit``); wait until it has taken
        them. Returns the ids it refused, with the reason (mempool full). Raises Overloaded
        when the inbox is full or the node is stopping."""
        if not self.healthy:
            raise Overloaded("node is not running")
        if self._client_inbox.full:
            self.counters.client_inbox_refused += 1
            self.counters.overloaded.add("client inbox full", len(tx_ids))
            raise Overloaded("client inbox full")
        size = sum(len(tx) for tx in txs)
        assert self._durable is not None
        if not self._durable.room_for(len(tx_ids), size):
            # Admission control: this node has acknowledged as much as it keeps until commit.
            self.counters.overloaded.add("pending set full", len(tx_ids))
            raise Overloaded("too many accepted transactions not yet committed")
        done: asyncio.Future[dict[bytes, str]] = asyncio.get_running_loop().create_future()
        self._client_inbox.push(ClientBatch(Submit(tuple(tx_ids), tuple(txs)), done, size))
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
        await self.waiters.wait(tx_id, wait_ms)

    def get_block(self, height: int) -> Block | None:
        assert self.reader is not None
        return self.reader.read_block(height)

    def get_blocks(self, from_height: int, limit: int) -> list[Block]:
        assert self.reader is not None
        return self.reader.read_blocks(from_height, limit)

    def status(self) -> dict[str, object]:
        return status_document(self, self._consortium)

    def inbox_status(self) -> dict[str, int]:
        return {
            "peer": len(self._peer_inbox),
            "peer_bytes": self._peer_inbox.nbytes,
            "client": len(self._client_inbox),
        }

    async def _watch_store(self, watch: StoreWatch) -> None:
        """Stop the node (fail stop) within one interval of its database being deleted,
        truncated or replaced under it; /health answers 503 from that moment."""
        try:
            while True:
                await asyncio.sleep(self.limits.store_watch_ms / 1000.0)
                problem = watch.check()
                if problem is not None:
                    self._fatal = StoreError(problem)
                    log.critical("store failed, stopping: %s", problem)
                    self.waiters.release_all()
                    if self._core_task is not None:
                        self._core_task.cancel()
                    return
        finally:
            watch.close()

    def _log_position(self) -> tuple[int | None, int | None]:
        """(view, last executed seq) for structured log lines (node.logfmt)."""
        r = self._replica
        return (None, None) if r is None else (r.view, r.last_executed)

    def _sign(self, data: bytes) -> bytes:
        """This node's signature, for a transport that re-signs what it sends."""
        if self._crypto is None:
            raise RuntimeError("node not started")
        return self._crypto.sign(data)


async def _audit_disabled(request: web.Request) -> web.Response:
    return web.json_response(
        {"error": "audit disabled", "detail": "this node runs with [audit] enabled = false"},
        status=404,
    )
