"""One run of the load inside the generator process: the submitters (open or closed loop),
the commit observer and the once-a-second report (see scripts/bench/loadgen.py for what
"committed" and "latency origin" mean)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from scripts.bench.loadspec import (
    TX_ACCEPTED,
    TX_FAILED,
    TX_REJECTED,
    TX_UNSENT,
    BlockSeen,
    LiveStats,
    LoadgenError,
    LoadResult,
    LoadSpec,
    StatusSample,
)
from scripts.bench.pool import Pool
from scripts.client import NO_RETRY, NodeClient, NodeError, NodeHealth
from scripts.tasks import RequestTasks

SUBMIT_TIMEOUT_S: Final = 5.0
"""The longest one POST /tx waits on one node (connect + send + answer); then the request goes
to the next node that is not suspect (scripts.client.NodeHealth), so a dead or frozen node
holds a request slot for at most this long, and only the first requests that meet it."""
OBSERVE_CONNECTIONS: Final = 4
STATUS_TIMEOUT_S: Final = 2.0
"""The longest the observer waits for one /status before it moves to the next node."""
BLOCKS_TIMEOUT_S: Final = 30.0
BLOCKS_PAGE: Final = 200
"""Blocks asked for in one GET /blocks?txs=ids (a node serves up to 1000 in this form)."""
RETRY_MIN_S: Final = 0.02
RETRY_MAX_S: Final = 1.0
"""Backoff of a retried POST /tx (after 503 or a connection error), doubling per attempt."""
LONG_POLL_MS: Final = 10_000
"""One GET /tx/{id}?wait_ms= of the closed loop's long poll (the node caps it at its
tx_wait_max_ms, 30 s by default); asked again until COMMIT_WAIT_S."""
LONG_POLL_SLACK_S: Final = 5.0
"""Beyond wait_ms, how long the long poll's HTTP answer may take."""
COMMIT_WAIT_S: Final = 60.0
"""Closed loop: longest wait for one batch to commit before the worker moves on (counted)."""
MAX_ERROR_KINDS: Final = 32
"""Distinct error strings kept in the counters (the rest are lumped together)."""
_NS: Final = 1_000_000_000


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
        self.acked_by = array("b", [-1]) * n
        """Per transaction: index of the target node that accepted it (-1: none)."""
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
        self.polled = array("b", bytes(n))
        """Per transaction: 1 while its commit time came from a long poll and the observer
        has not shown its block yet."""
        self.long_polled = 0
        """Transactions whose commit time came from a long poll and whose block the observer
        has not shown yet: at the end, ones it never showed (counted as an error)."""
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
        self.tasks: RequestTasks[bool] = RequestTasks()
        self.targets: list[NodeClient] = []
        """One client per target node, over the submit pool; the retries are the run's own."""
        self.health = NodeHealth()
        """Which targets answer, shared by every request (the targets' clients mark it)."""

    # ------------------------------------------------------------------ driving

    async def run(self) -> LoadResult:
        wall_minus_mono = time.time_ns() - time.monotonic_ns()
        # One keep-alive pool without a connection limit for the submissions; the observer
        # gets its own: its polls must never queue behind submissions, or the commit times it
        # records would be late. Every request is one attempt: the run retries (and counts).
        observed = [self.spec.observe_url]
        observed += [u for u in self.spec.targets if u != self.spec.observe_url]
        async with (
            NodeClient(
                self.spec.targets, retry=NO_RETRY, timeout_s=SUBMIT_TIMEOUT_S, connections=0
            ) as submit,
            NodeClient(
                # The observed node first; if it stops answering, the next one that does.
                observed,
                retry=NO_RETRY,
                connections=OBSERVE_CONNECTIONS,
            ) as observer,
        ):
            self.health = submit.health
            self.targets = [submit.at(url) for url in self.spec.targets]
            # Blocks committed before the run are not ours: observe from the current height.
            self.fetched = self.seen_height = self.height = await self._initial_height(observer)
            self._start_clock()
            if self.measure_end is not None:
                delay = (self.measure_end - time.monotonic_ns()) / _NS
                asyncio.get_running_loop().call_later(delay, self.load_over.set)
            observing = asyncio.create_task(self._observe(observer), name="observer")
            ticker = asyncio.create_task(self._tick(), name="ticker")
            try:
                await self._submit()
                self.submit_end = self.submit_end or time.monotonic_ns()
                self.submit_over.set()
                await self._drain()
            finally:
                end = time.monotonic_ns()
                if self.long_polled > 0:
                    self.counters.error("committed by a long poll, block not observed")
                for task in (observing, ticker, *self.tasks):
                    task.cancel()
                await asyncio.gather(observing, ticker, *self.tasks, return_exceptions=True)
        self.tasks.check()
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
            acked_by=self.acked_by,
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

    async def _submit(self) -> None:
        if self.spec.rate is not None:
            await self._open_loop(self.spec.rate)
        else:
            assert self.spec.concurrency is not None
            workers = [
                asyncio.create_task(self._closed_worker(), name=f"worker-{i}")
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

    async def _open_loop(self, rate: float) -> None:
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
            task = self.tasks.start(self._post(request, due))
            task.add_done_callback(lambda _: slots.release())
            k += 1

    async def _closed_worker(self) -> None:
        while self._submitting(time.monotonic_ns()):
            request = self._take_request()
            if request is None:
                return
            accepted = await self._post(request, None)
            if accepted and self.spec.closed_until_commit:
                if self.spec.long_poll:
                    await self._until_load_over(self._long_poll(request))
                await self._wait_committed(request)

    async def _long_poll(self, request: int) -> None:
        """Long-poll the request's last accepted transaction on the node that accepted it;
        when it is committed there, so is the rest of the request (one POST is one Submit, and
        the mempool proposes in arrival order), and each of its transactions gets the answer's
        arrival as its commit time, unless the observer saw it earlier. Gives up silently
        (the observer still sees the commit) on an error or after COMMIT_WAIT_S."""
        pool = self.pool
        first, n = pool.first[request], pool.size[request]
        accepted = [i for i in range(first, first + n) if self.outcome[i] == TX_ACCEPTED]
        if not accepted:
            return
        last = accepted[-1]
        node = self.acked_by[last]
        give_up = time.monotonic_ns() + int(COMMIT_WAIT_S * _NS)
        while self.remaining[request] > 0 and time.monotonic_ns() < give_up:
            try:
                reply = await self.targets[node].poll_tx(
                    pool.tx_hex[last],
                    LONG_POLL_MS,
                    timeout_s=LONG_POLL_MS / 1000 + LONG_POLL_SLACK_S,
                )
            except NodeError as e:
                self.counters.error(f"long poll: {type(e.transport_error).__name__}")
                return
            now = time.monotonic_ns()
            doc = reply.doc if isinstance(reply.doc, dict) else {}
            if reply.status != 200:
                self.counters.error(f"long poll: http {reply.status}")
                return
            if doc.get("status") == "committed":
                self._note_committed(request, accepted, now)
                return

    def _note_committed(self, request: int, txs: list[int], now: int) -> None:
        """Commit times known before the observer's (a long poll's answer); the observer's
        block fills in the height later, and its time if that was earlier."""
        for i in txs:
            if self.committed_ns[i] >= 0:
                continue  # the observer saw it first: that time stands
            self.committed_ns[i] = now
            self.polled[i] = 1
            self.committed += 1
            self.long_polled += 1
            self._resolve(request)

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

    async def _post(self, request: int, scheduled_ns: int | None) -> bool:
        """Send one prebuilt request to its target, or to the next node that answers if the
        target is suspect or fails (a refused connection, no answer within SUBMIT_TIMEOUT_S,
        503: resubmitting is idempotent), for at most ``drain_s`` (and never after a stop).
        Returns True if a node accepted at least one of its transactions."""
        pool = self.pool
        first, n = pool.first[request], pool.size[request]
        urls = self.spec.targets
        target = pool.target[request]
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
            # Every node suspect (down, or overloaded and asking for time in Retry-After):
            # wait until the first may be asked again, never sending into its Retry-After.
            hold_s = self.health.wait_s(urls)
            if hold_s > 0:
                left_s = (give_up_ns - (time.monotonic_ns() - sent)) / _NS
                await self._pause(min(max(hold_s, backoff * (0.5 + random.random())), left_s))
                backoff = min(backoff * 2, RETRY_MAX_S)
            target = self.health.choose(urls, target)
            outcome = None
            if not self._gave_up(sent, give_up_ns):
                self.counters.requests += 1
                outcome = await self._post_once(target, body, request)
            if outcome is not None:
                break
            if self._gave_up(sent, give_up_ns):
                self.counters.error("request abandoned after retries")
                self._settle(request, TX_FAILED)
                return False
            self.counters.retries += 1
            target = (target + 1) % len(urls)
        pool.bodies[request] = b""  # sent for good: free the memory
        return outcome

    def _gave_up(self, sent_ns: int, give_up_ns: int) -> bool:
        return self.stop_event.is_set() or time.monotonic_ns() - sent_ns > give_up_ns

    async def _pause(self, seconds: float) -> None:
        """Sleep up to ``seconds``, less if the run is stopped meanwhile."""
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop_event.wait(), seconds)

    async def _post_once(self, target: int, body: bytes, request: int) -> bool | None:
        """True/False once the node decided; None if the request should be retried (the
        node's client has marked it suspect)."""
        try:
            reply = await self.targets[target].post_tx_body(body)
        except NodeError as e:
            if e.answer is None:
                self.counters.error(f"connection: {type(e.transport_error).__name__}")
                return None
            reply = e.answer  # a 503 (or a gateway's answer): judged below like any other
        acked = time.monotonic_ns()
        status, answer = reply.status, reply.doc
        if status == 503:
            self.counters.error("http 503 (overloaded)")
            return None
        if not isinstance(answer, dict):
            self.counters.error(f"http {status}: unreadable answer")
            self._settle(request, TX_FAILED)
            return False
        if status != 202:
            self.counters.error(f"http {status}: {answer.get('error', '?')}")
        self._record_answer(request, answer, acked, target)
        return status == 202

    def _record_answer(self, request: int, answer: dict[str, Any], acked: int, target: int) -> None:
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
                self.acked_by[i] = target
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

    async def _observe(self, observer: NodeClient) -> None:
        """Poll /status at a fixed interval; on a new height, fetch the new blocks beside."""
        interval = self.spec.poll_ms * 1_000_000
        seen_event = asyncio.Event()
        fetcher = asyncio.create_task(self._fetch_blocks(observer, seen_event), name="fetcher")
        next_poll = time.monotonic_ns()
        try:
            while True:
                status = await self._status(observer)
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

    async def _initial_height(self, observer: NodeClient) -> int:
        status = None
        for _ in observer.urls:  # the observed node first, then the others
            status = await self._status(observer)
            if status is not None:
                break
        if status is None:
            raise LoadgenError(f"the observed node does not answer GET {observer.url}/status")
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

    async def _fetch_blocks(self, observer: NodeClient, seen_event: asyncio.Event) -> None:
        """Read the contents of newly seen blocks, in height order, a page at a time."""
        while True:
            await seen_event.wait()
            seen_event.clear()
            while self.fetched < self.seen_height:
                page = await self._blocks_page(observer, self.fetched + 1)
                if not self._note_page(page, time.monotonic_ns()):
                    await asyncio.sleep(self.spec.poll_ms / 1000)  # no busy loop on bad pages

    def _note_page(self, blocks: list[Any] | None, now: int) -> bool:
        """Record the blocks of a GET /blocks page; False if it brought nothing usable."""
        if not blocks:
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
            if i is None:
                continue  # not ours (another client, or an earlier run)
            if self.polled[i]:  # a long poll's time (or this one, if earlier), this height
                self.polled[i] = 0
                self.long_polled -= 1
                self.committed_ns[i] = min(self.committed_ns[i], observed)
                self.height_of[i] = height
                continue
            if self.committed_ns[i] >= 0:
                continue
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

    async def _status(self, observer: NodeClient) -> dict[str, Any] | None:
        try:
            return await observer.status(timeout_s=STATUS_TIMEOUT_S)
        except NodeError as e:
            self._observer_error(e)
            return None

    async def _blocks_page(self, observer: NodeClient, start: int) -> list[Any] | None:
        try:
            page = await observer.blocks(start, BLOCKS_PAGE, txs="ids", timeout_s=BLOCKS_TIMEOUT_S)
        except NodeError as e:
            self._observer_error(e)
            return None
        return page.blocks

    def _observer_error(self, e: NodeError) -> None:
        if e.answer is not None and e.answer.status != 200:
            self.counters.error(f"observer: http {e.answer.status}")
        elif e.transport_error is not None:
            self.counters.error(f"observer: {type(e.transport_error).__name__}")
        else:
            self.counters.error("observer: unreadable answer")

    # ------------------------------------------------------------------ drain and report

    async def _drain(self) -> None:
        """Wait (bounded) until every accepted transaction is observed committed."""
        if self.stop_event.is_set():
            return
        deadline = time.monotonic() + self.spec.drain_s
        # A long poll resolves a request before the observer has read its block: wait for
        # those blocks too, so each is counted in the throughput and has its height.
        while self.resolved < self.accepted + self.failed or self.long_polled > 0:
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
