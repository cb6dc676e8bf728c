"""The benchmark's load generator: pre-signed transactions, submitted from a process of its own,
with commits observed by polling one node.

``medchain bench`` runs :func:`loadgen_main` in a child process (multiprocessing, spawn) and
talks to it over a pipe::

    child  -> parent   ("signing", done, total)      while the pool is being signed
    child  -> parent   ("ready", pool_size)          everything is signed; waiting for "go"
    parent -> child    ("go",)                       start the clock (second 0 of the run)
    child  -> parent   ("tick", LiveStats)           once a second while the load runs
    parent -> child    ("stop",)                     end early (Ctrl-C): partial results follow
    child  -> parent   ("result", LoadResult)        raw per-transaction and per-block records
    child  -> parent   ("error", message)            the generator could not run

Every transaction is signed *before* the clock starts (``make_transaction``) and the request
bodies are prebuilt, so client-side signing and encoding never limit what is measured.

What "committed" means here, precisely: a block counts as committed at the moment the observer
receives the first ``GET /status`` answer of the observed node whose ``height`` includes it
(``GET /status`` is polled at a fixed interval, ``poll_ms``; which transactions each block holds
is then read on the side with ``GET /blocks?txs=ids``, headers and tx ids only, so neither the
blocks' size nor their decoding delays the next poll or loads the observed node). A
transaction's commit time is its block's. The observation therefore lags the node's real commit
by at most one poll interval plus one ``/status`` round trip (on average about half an
interval), and that is the resolution of every latency the bench reports.

Latency origin: in closed loop, the moment the request carrying the transaction was first
sent; in open loop, the moment it was *scheduled* to be sent, so that time spent waiting for a
free request slot when the cluster falls behind is counted (no coordinated omission).

All times are ``time.monotonic_ns()``: on Linux and macOS one system-wide clock, so the parent
can place its CPU samples on the same axis.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
import traceback
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Final

import aiohttp

from node.api import MSGPACK, msgpack_tx_body
from node.ledger import make_transaction

SIGNING_REPORT_EVERY: Final = 2000
"""Transactions signed between two "signing" progress messages."""
GO_TIMEOUT_S: Final = 600.0
"""How long a signed pool waits for the parent's "go" before giving up."""
SUBMIT_TIMEOUT_S: Final = 30.0
"""Timeout of one POST /tx (connect + send + answer)."""
STATUS_TIMEOUT_S: Final = 5.0
BLOCKS_TIMEOUT_S: Final = 30.0
BLOCKS_PAGE: Final = 200
"""Blocks asked for in one GET /blocks?txs=ids (a node serves up to 1000 in this form)."""
RETRY_MIN_S: Final = 0.02
RETRY_MAX_S: Final = 1.0
"""Backoff of a retried POST /tx (after 503 or a connection error), doubling per attempt."""
COMMIT_WAIT_S: Final = 60.0
"""Closed loop: longest wait for one batch to commit before the worker moves on (counted)."""
MAX_ERROR_KINDS: Final = 32
"""Distinct error strings kept in the counters (the rest are lumped together)."""
RECORD_TYPES: Final = ("lab-result", "prescription", "imaging", "discharge-note", "vitals")

TX_UNSENT: Final = 0
TX_ACCEPTED: Final = 1
TX_REJECTED: Final = 2
TX_FAILED: Final = 3
"""Per-transaction outcome of the submission (``LoadResult.outcome``)."""

_NS: Final = 1_000_000_000


class LoadgenError(RuntimeError):
    """The load generator cannot run (bad spec, no node answers): reported to the parent."""


@dataclass(frozen=True, slots=True)
class ClientKey:
    """A hospital client's signing key (the Ed25519 seed) and the hospital it signs for."""

    hospital: str
    secret: bytes


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """Everything the generator needs; picklable (it crosses the process boundary)."""

    targets: tuple[str, ...]
    """Node base URLs; request k goes to ``targets[k % len(targets)]``."""
    keys: tuple[ClientKey, ...]
    """``keys[t % len(keys)]`` signs the transactions sent to ``targets[t]``."""
    observe_url: str
    payload_size: int
    client_batch: int
    """Transactions per POST /tx."""
    pool_size: int
    """Transactions signed up front; the load stops early (flagged) if they run out."""
    seed: int
    warmup_s: float
    duration_s: float | None
    """Measured seconds after the warmup (exclusive with ``count``)."""
    count: int | None
    """Transactions to send after the warmup (rounded up to whole requests)."""
    rate: float | None
    """Open loop: transactions per second offered (exclusive with ``concurrency``)."""
    concurrency: int | None
    """Closed loop: requests outstanding at once."""
    closed_until_commit: bool = True
    """Closed loop: a request stays outstanding until its transactions commit (else until the
    node answers the POST)."""
    max_outstanding: int = 256
    """Open loop: most requests in flight at once; beyond it sending falls behind schedule."""
    poll_ms: int = 25
    drain_s: float = 15.0
    """After the load stops, longest wait for accepted transactions to commit."""

    def __post_init__(self) -> None:
        if not self.targets:
            raise ValueError("no target nodes")
        if not self.keys:
            raise ValueError("no client key")
        if (self.duration_s is None) == (self.count is None):
            raise ValueError("exactly one of duration_s and count must be set")
        if (self.rate is None) == (self.concurrency is None):
            raise ValueError("exactly one of rate and concurrency must be set")
        if self.client_batch < 1 or self.pool_size < 1 or self.poll_ms < 1:
            raise ValueError("client_batch, pool_size and poll_ms must be positive")


@dataclass(frozen=True, slots=True)
class LiveStats:
    """What the progress display shows; sent once a second."""

    elapsed_s: float
    phase: str
    """"warmup", "measure", "drain" or "done"."""
    sent_txs: int
    accepted_txs: int
    committed_txs: int
    """Of ours, observed committed."""
    height: int
    view: int
    errors: int


@dataclass(frozen=True, slots=True)
class BlockSeen:
    height: int
    observed_ns: int
    """Receive time of the first /status (or /blocks) answer that showed this block."""
    timestamp_ms: int
    """The block's own timestamp: the primary's wall clock when it built the batch."""
    txs: int
    view: int
    """View the batch was proposed in."""


@dataclass(frozen=True, slots=True)
class StatusSample:
    t_ns: int
    height: int
    view: int
    view_changes: int
    """The observed node's own view-change counter."""


@dataclass(frozen=True, slots=True)
class LoadResult:
    """Raw records of one run; ``scripts.bench`` turns them into statistics."""

    t0_ns: int
    """Second 0 of the run: when the parent said "go"."""
    warmup_end_ns: int
    submit_end_ns: int
    """When submission stopped (duration over, count reached, pool exhausted or stopped)."""
    end_ns: int
    """When the drain ended."""
    wall_minus_mono_ns: int
    """time.time_ns() - time.monotonic_ns(), to put block timestamps on the monotonic axis."""
    pool_size: int
    origin_ns: array[int]
    """Per transaction: latency origin (see the module docstring); -1 if never sent."""
    sent_ns: array[int]
    """Per transaction: when its request was first sent; -1 if never sent."""
    acked_ns: array[int]
    """Per transaction: when the node's 202 arrived; -1 if not accepted."""
    committed_ns: array[int]
    """Per transaction: observed commit time; -1 if not observed committed."""
    height: array[int]
    """Per transaction: height of the block it was committed in; -1 if not observed."""
    outcome: array[int]
    """Per transaction: TX_UNSENT / TX_ACCEPTED / TX_REJECTED / TX_FAILED."""
    blocks: list[BlockSeen]
    status: list[StatusSample]
    errors: dict[str, int]
    requests: int
    retries: int
    pool_exhausted: bool
    interrupted: bool
    max_schedule_lag_ms: float
    """Open loop: the longest a request waited past its scheduled time."""


# =============================================================================================
# the pre-signed pool


@dataclass(slots=True)
class Pool:
    """Prebuilt request bodies, in sending order, and the transaction ids they carry."""

    bodies: list[bytes]
    target: array[int]
    """Per request: index into the spec's targets."""
    first: array[int]
    """Per request: index of its first transaction (transactions are numbered in order)."""
    size: array[int]
    """Per request: number of transactions."""
    index_of: dict[str, int]
    """Transaction id (hex, as the API prints it) -> transaction number."""

    @property
    def txs(self) -> int:
        return len(self.index_of)


def build_pool(spec: LoadSpec, progress: Callable[[int, int], None] | None = None) -> Pool:
    """Sign ``spec.pool_size`` transactions and cut them into request bodies.

    Deterministic given the seed (payloads, patients, nonces, record types), except for the
    header timestamp, which is the signing time: it makes every run's transaction ids new, so
    repeated runs against one long-lived cluster never collide with committed transactions.
    """
    rng = random.Random(spec.seed)
    stamp_ms = time.time_ns() // 1_000_000
    n_targets = len(spec.targets)
    per_target = _split(spec.pool_size, n_targets)
    pending: list[list[Any]] = [[] for _ in range(n_targets)]
    bodies: list[bytes] = []
    target = array("q")
    first = array("q")
    size = array("q")
    index_of: dict[str, int] = {}
    signed = 0
    # Round-robin over targets, one request's worth at a time, so transaction numbers follow
    # the order in which requests are sent.
    while any(per_target):
        for t in range(n_targets):
            take = min(spec.client_batch, per_target[t])
            if not take:
                continue
            per_target[t] -= take
            key = spec.keys[t % len(spec.keys)]
            envs = pending[t]
            for _ in range(take):
                j = signed
                envs.append(
                    make_transaction(
                        key.secret,
                        key.hospital,
                        patient=f"patient-{rng.randrange(1_000_000):06d}",
                        record_type=rng.choice(RECORD_TYPES),
                        payload=rng.randbytes(spec.payload_size),
                        record_id=f"bench-{stamp_ms}-{spec.seed}-{j}",
                        timestamp_ms=stamp_ms,
                        nonce=rng.randbytes(16),
                    )
                )
                index_of[envs[-1].tx_id.hex()] = j
                signed += 1
                if progress is not None and signed % SIGNING_REPORT_EVERY == 0:
                    progress(signed, spec.pool_size)
            target.append(t)
            first.append(signed - take)
            size.append(take)
            bodies.append(msgpack_tx_body(envs))
            envs.clear()
    if progress is not None:
        progress(signed, spec.pool_size)
    return Pool(bodies=bodies, target=target, first=first, size=size, index_of=index_of)


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


# =============================================================================================
# the run


def _filled(n: int, value: int) -> array[int]:
    return array("q", [value]) * n


@dataclass(slots=True)
class _Counters:
    errors: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    retries: int = 0
    max_lag_ns: int = 0

    def error(self, kind: str) -> None:
        if kind not in self.errors and len(self.errors) >= MAX_ERROR_KINDS:
            kind = "other"
        self.errors[kind] = self.errors.get(kind, 0) + 1

    @property
    def error_total(self) -> int:
        return sum(self.errors.values())


class LoadRun:
    """One run of the load: submitters, the commit observer and the once-a-second report."""

    def __init__(self, spec: LoadSpec, pool: Pool, report: Callable[[LiveStats], None]) -> None:
        self.spec = spec
        self.pool = pool
        self.report = report
        n = pool.txs
        self.origin_ns = _filled(n, -1)
        self.sent_ns = _filled(n, -1)
        self.acked_ns = _filled(n, -1)
        self.committed_ns = _filled(n, -1)
        self.height_of = _filled(n, -1)
        self.outcome = array("b", bytes(n))
        # Per request: transactions not yet committed (or rejected), and who waits for it.
        self.remaining = array("q", pool.size)
        self.waiters: dict[int, asyncio.Future[None]] = {}
        self.counters = _Counters()
        self.blocks: list[BlockSeen] = []
        self.status: list[StatusSample] = []
        self.next_request = 0
        self.sent = 0
        self.sent_after_warmup = 0
        self.accepted = 0
        self.committed = 0
        self.failed = 0
        """Transactions rejected by the node or never delivered."""
        self.resolved = 0
        """Accepted transactions now observed committed, plus failed ones."""
        self.fetched = 0
        """Height through which block contents have been fetched."""
        self.seen_height = 0
        """Height through which commits have been observed."""
        self.observed_at: dict[int, int] = {}
        """Observation time of heights seen in /status whose contents are not fetched yet."""
        self.height = 0
        self.view = 0
        self.pool_exhausted = False
        self.interrupted = False
        self.stop_event = asyncio.Event()
        """Set by stop(): end now, skip the drain."""
        self.load_over = asyncio.Event()
        """Set when no new request may start (duration over, count reached, or stop)."""
        self.submit_over = asyncio.Event()
        """Set once every request has finished."""
        self.progress_event = asyncio.Event()
        self.t0 = self.warmup_end = self.submit_end = 0
        self.measure_end: int | None = None
        self.tasks: set[asyncio.Task[bool]] = set()

    # ------------------------------------------------------------------ driving

    async def run(self) -> LoadResult:
        wall_minus_mono = time.time_ns() - time.monotonic_ns()
        submit_conn = aiohttp.TCPConnector(limit=0, force_close=False)
        # The observer gets its own connection pool: its polls must never queue behind
        # submissions, or the commit times it records would be late.
        observe_conn = aiohttp.TCPConnector(limit=4)
        async with (
            aiohttp.ClientSession(connector=submit_conn) as submit_session,
            aiohttp.ClientSession(connector=observe_conn) as observe_session,
        ):
            # Blocks committed before the run are not ours: observe from the current height.
            self.fetched = self.seen_height = self.height = await self._initial_height(
                observe_session
            )
            self._start_clock()
            if self.measure_end is not None:
                delay = (self.measure_end - time.monotonic_ns()) / _NS
                asyncio.get_running_loop().call_later(delay, self.load_over.set)
            observer = asyncio.create_task(self._observe(observe_session), name="observer")
            ticker = asyncio.create_task(self._tick(), name="ticker")
            try:
                await self._submit(submit_session)
                self.submit_end = self.submit_end or time.monotonic_ns()
                self.submit_over.set()
                await self._drain()
            finally:
                end = time.monotonic_ns()
                for task in (observer, ticker, *self.tasks):
                    task.cancel()
                await asyncio.gather(observer, ticker, *self.tasks, return_exceptions=True)
        self.report(self._live("done"))
        return LoadResult(
            t0_ns=self.t0,
            warmup_end_ns=self.warmup_end,
            submit_end_ns=self.submit_end,
            end_ns=end,
            wall_minus_mono_ns=wall_minus_mono,
            pool_size=self.pool.txs,
            origin_ns=self.origin_ns,
            sent_ns=self.sent_ns,
            acked_ns=self.acked_ns,
            committed_ns=self.committed_ns,
            height=self.height_of,
            outcome=self.outcome,
            blocks=self.blocks,
            status=self.status,
            errors=dict(self.counters.errors),
            requests=self.counters.requests,
            retries=self.counters.retries,
            pool_exhausted=self.pool_exhausted,
            interrupted=self.interrupted,
            max_schedule_lag_ms=self.counters.max_lag_ns / 1e6,
        )

    def _start_clock(self) -> None:
        spec = self.spec
        self.t0 = time.monotonic_ns()
        self.warmup_end = self.t0 + int(spec.warmup_s * _NS)
        if spec.duration_s is not None:
            self.measure_end = self.warmup_end + int(spec.duration_s * _NS)

    def stop(self) -> None:
        """End early (the parent was interrupted): stop sending, skip the drain."""
        self.interrupted = True
        self.stop_event.set()
        self.load_over.set()

    def _submitting(self, now: int) -> bool:
        if self.load_over.is_set():
            return False
        if self.measure_end is not None:
            return now < self.measure_end
        assert self.spec.count is not None
        return now < self.warmup_end or self.sent_after_warmup < self.spec.count

    def _take_request(self) -> int | None:
        k = self.next_request
        if k >= len(self.pool.bodies):
            if not self.pool_exhausted:
                # The measured window ends here: what follows would measure an idle cluster.
                self.pool_exhausted = True
                self.submit_end = time.monotonic_ns()
                self.load_over.set()
            return None
        self.next_request = k + 1
        return k

    async def _submit(self, session: aiohttp.ClientSession) -> None:
        if self.spec.rate is not None:
            await self._open_loop(session, self.spec.rate)
        else:
            assert self.spec.concurrency is not None
            workers = [
                asyncio.create_task(self._closed_worker(session), name=f"worker-{i}")
                for i in range(self.spec.concurrency)
            ]
            try:
                await asyncio.gather(*workers)
            finally:
                for w in workers:
                    w.cancel()
        # Requests still in flight belong to the load: let them finish (each is bounded by
        # SUBMIT_TIMEOUT_S and stops retrying once stop_event is set).
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _open_loop(self, session: aiohttp.ClientSession, rate: float) -> None:
        interval_ns = self.spec.client_batch / rate * _NS
        slots = asyncio.Semaphore(self.spec.max_outstanding)
        k = 0
        while True:
            due = self.t0 + int(k * interval_ns)
            delay = (due - time.monotonic_ns()) / _NS
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.load_over.wait(), delay)
            if not self._submitting(due) or not await self._until_load_over(slots.acquire()):
                return
            request = self._take_request()
            if request is None:
                slots.release()
                return
            lag = time.monotonic_ns() - due
            self.counters.max_lag_ns = max(self.counters.max_lag_ns, lag)
            task = asyncio.create_task(self._post(session, request, due))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            task.add_done_callback(lambda _: slots.release())
            k += 1

    async def _closed_worker(self, session: aiohttp.ClientSession) -> None:
        while self._submitting(time.monotonic_ns()):
            request = self._take_request()
            if request is None:
                return
            accepted = await self._post(session, request, None)
            if accepted and self.spec.closed_until_commit:
                await self._wait_committed(request)

    async def _wait_committed(self, request: int) -> None:
        """Until the request's transactions commit, the load is over, or COMMIT_WAIT_S."""
        if self.remaining[request] <= 0:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters[request] = fut
        try:
            # Once the load is over the drain waits for the rest.
            async with asyncio.timeout(COMMIT_WAIT_S):
                await self._until_load_over(fut)
        except TimeoutError:
            self.counters.error(f"request not committed within {COMMIT_WAIT_S:.0f}s")
        finally:
            self.waiters.pop(request, None)

    async def _until_load_over(self, aw: Awaitable[Any]) -> bool:
        """Await ``aw`` unless the load ends first: True if ``aw`` completed."""
        task = asyncio.ensure_future(aw)
        over = asyncio.ensure_future(self.load_over.wait())
        try:
            await asyncio.wait({task, over}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            over.cancel()
        if task.done():
            return True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # An acquire that completed while being cancelled must still count as done.
        return task.done() and not task.cancelled()

    # ------------------------------------------------------------------ one request

    async def _post(
        self, session: aiohttp.ClientSession, request: int, scheduled_ns: int | None
    ) -> bool:
        """Send one prebuilt request, retrying on 503 and connection errors for at most
        ``drain_s`` (and never after a stop). Returns True if the node accepted at least one
        of its transactions."""
        pool = self.pool
        first, n = pool.first[request], pool.size[request]
        url = self.spec.targets[pool.target[request]] + "/tx"
        body = pool.bodies[request]
        sent = time.monotonic_ns()
        origin = sent if scheduled_ns is None else scheduled_ns
        for i in range(first, first + n):
            self.origin_ns[i] = origin
            self.sent_ns[i] = sent
        self.sent += n
        if sent >= self.warmup_end:
            self.sent_after_warmup += n
            if self.spec.count is not None and self.sent_after_warmup >= self.spec.count:
                self.load_over.set()
        backoff = RETRY_MIN_S
        give_up_ns = int(self.spec.drain_s * _NS)
        while True:
            self.counters.requests += 1
            outcome = await self._post_once(session, url, body, request)
            if outcome is not None:
                break
            if self.stop_event.is_set() or time.monotonic_ns() - sent > give_up_ns:
                self.counters.error("request abandoned after retries")
                self._settle(request, TX_FAILED)
                return False
            self.counters.retries += 1
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, RETRY_MAX_S)
        pool.bodies[request] = b""  # sent for good: free the memory
        return outcome

    async def _post_once(
        self, session: aiohttp.ClientSession, url: str, body: bytes, request: int
    ) -> bool | None:
        """True/False once the node decided; None if the request should be retried."""
        timeout = aiohttp.ClientTimeout(total=SUBMIT_TIMEOUT_S)
        try:
            async with session.post(
                url, data=body, headers={"Content-Type": MSGPACK}, timeout=timeout
            ) as resp:
                status = resp.status
                try:
                    answer = await resp.json(content_type=None)
                except (ValueError, aiohttp.ContentTypeError):
                    answer = None
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            self.counters.error(f"connection: {type(e).__name__}")
            return None
        acked = time.monotonic_ns()
        if status == 503:
            self.counters.error("http 503 (overloaded)")
            return None
        if not isinstance(answer, dict):
            self.counters.error(f"http {status}: unreadable answer")
            self._settle(request, TX_FAILED)
            return False
        if status != 202:
            self.counters.error(f"http {status}: {answer.get('error', '?')}")
        self._record_answer(request, answer, acked)
        return status == 202

    def _record_answer(self, request: int, answer: dict[str, Any], acked: int) -> None:
        first, n = self.pool.first[request], self.pool.size[request]
        rejected = answer.get("rejected")
        bad: set[int] = set()
        if isinstance(rejected, list):
            for item in rejected:
                if isinstance(item, dict) and isinstance(item.get("index"), int):
                    bad.add(item["index"])
                    self.counters.error(f"tx rejected: {item.get('error', '?')}")
        if "accepted" not in answer:
            bad = set(range(n))
        for j in range(n):
            i = first + j
            if j in bad:
                self.outcome[i] = TX_REJECTED
                self.failed += 1
                self._resolve(request)
            elif self.outcome[i] == TX_UNSENT:
                self.outcome[i] = TX_ACCEPTED
                self.acked_ns[i] = acked
                self.accepted += 1
                if self.committed_ns[i] >= 0:  # the observer saw it commit before the 202
                    self._resolve(request)

    def _settle(self, request: int, outcome: int) -> None:
        first, n = self.pool.first[request], self.pool.size[request]
        for i in range(first, first + n):
            if self.outcome[i] == TX_UNSENT:
                self.outcome[i] = outcome
                self.failed += 1
                self._resolve(request)

    def _resolve(self, request: int) -> None:
        self.resolved += 1
        self.remaining[request] -= 1
        if self.remaining[request] <= 0:
            fut = self.waiters.get(request)
            if fut is not None and not fut.done():
                fut.set_result(None)
        self.progress_event.set()

    # ------------------------------------------------------------------ observing commits

    async def _observe(self, session: aiohttp.ClientSession) -> None:
        """Poll /status at a fixed interval; on a new height, fetch the new blocks beside."""
        base = self.spec.observe_url
        interval = self.spec.poll_ms * 1_000_000
        seen_event = asyncio.Event()
        fetcher = asyncio.create_task(self._fetch_blocks(session, seen_event), name="fetcher")
        next_poll = time.monotonic_ns()
        try:
            while True:
                status = await self._get_json(session, f"{base}/status", STATUS_TIMEOUT_S)
                now = time.monotonic_ns()
                if status is not None:
                    self._note_status(status, now, seen_event)
                next_poll += interval
                if next_poll < now:  # fell behind (a slow answer): skip, do not burst
                    next_poll = now + interval
                await asyncio.sleep((next_poll - now) / _NS)
        finally:
            fetcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fetcher

    async def _initial_height(self, session: aiohttp.ClientSession) -> int:
        url = f"{self.spec.observe_url}/status"
        status = await self._get_json(session, url, STATUS_TIMEOUT_S)
        if status is None:
            raise LoadgenError(f"the observed node does not answer GET {url}")
        self.view = _int(status.get("view"))
        return _int(status.get("height"))

    def _note_status(self, status: dict[str, Any], now: int, seen_event: asyncio.Event) -> None:
        height, view = _int(status.get("height")), _int(status.get("view"))
        counters = status.get("counters")
        vc = _int(counters.get("view_changes")) if isinstance(counters, dict) else 0
        self.status.append(StatusSample(now, height, view, vc))
        self.view = view
        if height > self.seen_height:
            for h in range(self.seen_height + 1, height + 1):
                self.observed_at[h] = now
            self.seen_height = height
            self.height = height
            seen_event.set()

    async def _fetch_blocks(
        self, session: aiohttp.ClientSession, seen_event: asyncio.Event
    ) -> None:
        """Read the contents of newly seen blocks, in height order, a page at a time."""
        base = self.spec.observe_url
        while True:
            await seen_event.wait()
            seen_event.clear()
            while self.fetched < self.seen_height:
                url = f"{base}/blocks?from={self.fetched + 1}&limit={BLOCKS_PAGE}&txs=ids"
                page = await self._get_json(session, url, BLOCKS_TIMEOUT_S)
                if not self._note_page(page, time.monotonic_ns()):
                    await asyncio.sleep(self.spec.poll_ms / 1000)  # no busy loop on bad pages

    def _note_page(self, page: dict[str, Any] | None, now: int) -> bool:
        """Record a GET /blocks page; False if it brought nothing usable."""
        blocks = page.get("blocks") if page is not None else None
        if not isinstance(blocks, list) or not blocks:
            return False
        for block in blocks:
            if not isinstance(block, dict) or _int(block.get("height")) != self.fetched + 1:
                self.counters.error("observer: unexpected block in GET /blocks")
                return False
            self._note_block(block, now)
        return True

    def _note_block(self, block: dict[str, Any], now: int) -> None:
        height = self.fetched + 1
        # A block this page shows before any /status did is observed now.
        observed = self.observed_at.pop(height, now)
        if height > self.seen_height:
            self.seen_height = self.height = height
        tx_ids = _block_tx_ids(block)
        self.blocks.append(
            BlockSeen(
                height=height,
                observed_ns=observed,
                timestamp_ms=_int(block.get("timestamp_ms")),
                txs=len(tx_ids),
                view=_int(block.get("view")),
            )
        )
        index_of = self.pool.index_of
        for tx_id in tx_ids:
            i = index_of.get(tx_id) if isinstance(tx_id, str) else None
            if i is None or self.committed_ns[i] >= 0:
                continue  # not ours (another client, or an earlier run)
            self.committed_ns[i] = observed
            self.height_of[i] = height
            self.committed += 1
            if self.outcome[i] == TX_ACCEPTED:
                self._resolve(self._request_of(i))
        self.fetched = height

    def _request_of(self, tx: int) -> int:
        """The request carrying transaction ``tx`` (requests hold consecutive numbers)."""
        lo, hi = 0, len(self.pool.first) - 1
        first = self.pool.first
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if first[mid] <= tx:
                lo = mid
            else:
                hi = mid - 1
        return lo

    async def _get_json(
        self, session: aiohttp.ClientSession, url: str, timeout_s: float
    ) -> dict[str, Any] | None:
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                if resp.status != 200:
                    self.counters.error(f"observer: http {resp.status}")
                    return None
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
            self.counters.error(f"observer: {type(e).__name__}")
            return None
        return body if isinstance(body, dict) else None

    # ------------------------------------------------------------------ drain and report

    async def _drain(self) -> None:
        """Wait (bounded) until every accepted transaction is observed committed."""
        if self.stop_event.is_set():
            return
        deadline = time.monotonic() + self.spec.drain_s
        while self.resolved < self.accepted + self.failed:
            left = deadline - time.monotonic()
            if left <= 0 or self.stop_event.is_set():
                return
            self.progress_event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.progress_event.wait(), min(left, 0.5))

    def _phase(self, now: int) -> str:
        if self.submit_over.is_set():
            return "drain"
        return "warmup" if now < self.warmup_end else "measure"

    def _live(self, phase: str) -> LiveStats:
        return LiveStats(
            elapsed_s=(time.monotonic_ns() - self.t0) / _NS,
            phase=phase,
            sent_txs=self.sent,
            accepted_txs=self.accepted,
            committed_txs=self.committed,
            height=self.height,
            view=self.view,
            errors=self.counters.error_total,
        )

    async def _tick(self) -> None:
        parent = os.getppid()
        while True:
            await asyncio.sleep(1.0)
            if os.getppid() != parent:  # orphaned: the bench died; do not load a cluster alone
                self.stop()
                return
            self.report(self._live(self._phase(time.monotonic_ns())))


def _int(value: object) -> int:
    return value if type(value) is int else 0


def _block_tx_ids(block: dict[str, Any]) -> list[object]:
    """The tx ids (hex) of a served block: ``tx_ids`` of the light form (``txs=ids``), or the
    ``tx_id`` of each transaction of the full form (a node that ignores ``txs``)."""
    ids = block.get("tx_ids")
    if isinstance(ids, list):
        return ids
    txs = block.get("txs")
    if isinstance(txs, list):
        return [tx.get("tx_id") if isinstance(tx, dict) else None for tx in txs]
    return []


# =============================================================================================
# process entry point


def loadgen_main(spec: LoadSpec, conn: Connection) -> None:
    """Child-process entry: sign, wait for "go", run, send the result (or an error)."""
    # Ctrl-C reaches the whole foreground process group; the parent decides what happens,
    # and tells us with "stop".
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        pool = build_pool(spec, lambda done, total: conn.send(("signing", done, total)))
        conn.send(("ready", pool.txs))
        if not conn.poll(GO_TIMEOUT_S):
            return
        message = conn.recv()
        if message != ("go",):
            return
        result = asyncio.run(_run_with_control(spec, pool, conn))
        conn.send(("result", result))
    except (EOFError, BrokenPipeError):
        return  # the parent is gone
    except Exception as e:
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}"))
    finally:
        conn.close()


async def _run_with_control(spec: LoadSpec, pool: Pool, conn: Connection) -> LoadResult:
    run = LoadRun(spec, pool, lambda live: conn.send(("tick", live)))
    loop = asyncio.get_running_loop()

    def on_message() -> None:
        try:
            message = conn.recv() if conn.poll() else None
        except (EOFError, OSError):
            message = ("stop",)  # the parent is gone
        if message == ("stop",):
            loop.remove_reader(conn.fileno())
            run.stop()

    loop.add_reader(conn.fileno(), on_message)
    try:
        return await run.run()
    finally:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(conn.fileno())
