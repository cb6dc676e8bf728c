"""The scenario's open-loop load: signed records in small batches at a fixed rate, to any node,
failing over to the next one that answers; every transaction's fate recorded as a history
entry (its commit is seen by :mod:`scripts.scenario.follow`, which reads the blocks).

The load is not told which nodes the timeline killed or froze: like any client, it finds out
(a refused connection, no answer within SUBMIT_TIMEOUT_S, a 503) and moves on
(``scripts.client.NodeHealth``); a request is resubmitted whole to the next node, which is
harmless since a transaction's id makes a second submission the same transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from node.api import msgpack_tx_body
from node.ledger import TxEnvelope, make_transaction
from scripts.client import NO_RETRY, Answer, NodeClient, NodeError
from scripts.cluster import hospital_id
from scripts.history import TxRecord
from scripts.scenario.cluster import Cluster
from scripts.tasks import RequestTasks

REQUESTS_PER_S: Final = 100
"""About this many POST /tx a second; each carries rate / REQUESTS_PER_S transactions."""
MAX_REQUEST_TXS: Final = 500
SUBMIT_TIMEOUT_S: Final = 5.0
"""The longest one POST /tx waits on one node before the request goes to the next."""
SUBMIT_DEADLINE_S: Final = 30.0
"""A request no node accepted within this long is given up (its transactions: not accepted)."""
ALL_SUSPECT_PAUSE_S: Final = 0.2
MAX_INFLIGHT: Final = 512
"""Requests in flight at once; beyond it the load skips (and counts) a request."""
PRESIGN_MARGIN_S: Final = 10.0
"""Transactions signed before the clock starts: for the duration plus this (then on the fly)."""
MAX_PRESIGNED: Final = 500_000
PAYLOAD_BYTES: Final = (64, 512)


@dataclass(slots=True)
class _Tx:
    env: TxEnvelope
    submit_s: float = -1.0
    node: int | None = None
    ack_s: float | None = None
    error: str | None = None
    commit_s: float | None = None
    commit_node: int | None = None
    commit_height: int | None = None

    def record(self) -> TxRecord:
        return TxRecord(
            tx_id=self.env.tx_id.hex(),
            submit_s=round(self.submit_s, 4),
            node=self.node,
            ack_s=None if self.ack_s is None else round(self.ack_s, 4),
            error=self.error,
            commit_s=None if self.commit_s is None else round(self.commit_s, 4),
            commit_node=self.commit_node,
            commit_height=self.commit_height,
        )


class Load:
    """Open-loop load of ``rate`` signed records per second; every transaction's fate is
    recorded as a :class:`TxRecord`."""

    def __init__(
        self,
        nodes: NodeClient,
        cluster: Cluster,
        *,
        name: str,
        rate: float,
        rng: random.Random,
        clock: Callable[[], float],
    ) -> None:
        self._order = list(cluster.urls)
        urls = [cluster.urls[i] for i in self._order]
        # One attempt per request: the load moves to the next node itself; the clients
        # share one health table, so every request learns of a dead node from the first.
        self._client = nodes.at(urls, retry=NO_RETRY, timeout_s=SUBMIT_TIMEOUT_S)
        self._nodes = {i: self._client.at(cluster.urls[i]) for i in self._order}
        self._urls = urls
        self._cluster = cluster
        self._name = name
        self.rate = rate
        self.batch = max(1, min(MAX_REQUEST_TXS, round(rate / REQUESTS_PER_S)))
        self._rng = rng
        self._clock = clock
        self._tasks: RequestTasks[None] = RequestTasks()
        self._seq = 0
        self._signed: list[TxEnvelope] = []
        self._txs: list[_Tx] = []
        self._by_id: dict[str, _Tx] = {}
        self._commits: list[tuple[float, float]] = []
        """(commit_s, submit_s) of every commit seen, in the order seen (commit_s rises)."""
        self.errors: Counter[str] = Counter()
        self.client_errors: list[str] = []
        """4xx answers to valid transactions (a node refusing what it must accept)."""
        self.skipped = 0
        """Requests not sent because MAX_INFLIGHT were already in flight."""

    @property
    def inflight(self) -> int:
        return len(self._tasks)

    @property
    def records(self) -> list[TxRecord]:
        return [t.record() for t in self._txs]

    def presign(self, seconds: float) -> int:
        """Sign the transactions of the first ``seconds`` (+ margin) before the clock starts,
        so signing does not compete with the nodes while they are measured."""
        count = min(MAX_PRESIGNED, int(self.rate * (seconds + PRESIGN_MARGIN_S)) + self.batch)
        self._signed = [self._make_tx() for _ in range(count)]
        self._signed.reverse()  # pop() from the end, in signing order
        return count

    def note_commit(self, tx_id: str, t: float, node: int, height: int) -> None:
        """The follower saw ``tx_id`` in block ``height`` of ``node`` at ``t``."""
        tx = self._by_id.get(tx_id)
        if tx is None or tx.commit_s is not None:
            return  # not ours (cannot happen on a fresh cluster) or seen already
        tx.commit_s, tx.commit_node, tx.commit_height = t, node, height
        self._commits.append((t, tx.submit_s))

    def first_commit_after(self, t: float) -> float | None:
        """The first commit seen of a transaction submitted at or after ``t``."""
        # A transaction submitted after t commits after t: start the scan there.
        k = bisect_left(self._commits, (t, -1.0))
        for commit_s, submit_s in self._commits[k:]:
            if submit_s >= t:
                return commit_s
        return None

    def is_ours(self, tx_id: str) -> bool:
        return tx_id in self._by_id

    async def run(self, stop: asyncio.Event) -> None:
        interval = self.batch / self.rate
        next_at = self._clock()
        while not stop.is_set():
            if len(self._tasks) >= MAX_INFLIGHT:
                self.skipped += 1
            else:
                txs = [self._next_tx() for _ in range(self.batch)]
                self._tasks.start(self._request(txs))
            next_at += interval
            delay = next_at - self._clock()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            else:
                next_at = self._clock()  # fell behind: do not burst to catch up
                await asyncio.sleep(0)

    async def drain(self, grace_s: float) -> None:
        """Wait (bounded) for requests in flight, then cancel the rest (their transactions
        are recorded as they are: not accepted, or accepted)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_s)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_s)

    def check_requests(self) -> None:
        """RuntimeError if a request task raised: its transactions went unrecorded."""
        self._tasks.check()

    def _next_tx(self) -> _Tx:
        env = self._signed.pop() if self._signed else self._make_tx()
        tx = _Tx(env, submit_s=self._clock())
        self._txs.append(tx)
        self._by_id[env.tx_id.hex()] = tx
        return tx

    def _make_tx(self) -> TxEnvelope:
        rng = self._rng
        self._seq += 1
        hospital = hospital_id(rng.randrange(self._cluster.n))
        size = rng.randint(*PAYLOAD_BYTES)
        return make_transaction(
            self._cluster.client_secrets[hospital],
            hospital,
            patient=f"patient-{rng.randrange(10_000):05d}",
            record_type=rng.choice(("observation", "prescription", "lab-result", "note")),
            payload=rng.randbytes(size),
            record_id=f"{self._name}-{self._seq}",
            nonce=rng.randbytes(16),
        )

    async def _request(self, txs: list[_Tx]) -> None:
        """Submit ``txs`` until a node accepts each of them, moving to the next node on no
        answer, a 503 or a transaction turned away; bounded by SUBMIT_DEADLINE_S."""
        deadline = self._clock() + SUBMIT_DEADLINE_S
        pending = txs
        k = self._rng.randrange(len(self._urls))
        error = "no node answered"
        while pending and self._clock() < deadline:
            k = self._client.health.choose(self._urls, k)
            node = self._order[k]
            body = msgpack_tx_body([t.env for t in pending])
            answer: Answer | None
            try:
                answer = await self._nodes[node].post_tx_body(body, timeout_s=SUBMIT_TIMEOUT_S)
            except NodeError as e:
                answer = e.answer  # a 503 (or a gateway's): judged below like any other
                if answer is None:
                    kind = type(e.transport_error).__name__
                    error = f"node {node}: {kind}"
                    self.errors[f"submit:{kind}"] += 1
            if answer is not None:
                pending, error, final = self._judge(pending, node, answer.status, answer.doc)
                if final:
                    break
            k += 1
            if pending and self._client.health.wait_s(self._urls) > 0:
                await asyncio.sleep(ALL_SUSPECT_PAUSE_S)  # every node is suspect: pace
        for t in pending:
            t.error = error

    def _judge(
        self, pending: list[_Tx], node: int, status: int, doc: object
    ) -> tuple[list[_Tx], str, bool]:
        """(still pending, the last error, give up) after a node's answer."""
        if status == 202 and isinstance(doc, dict) and isinstance(doc.get("accepted"), list):
            accepted = set(doc["accepted"])
            now = self._clock()
            left = []
            for t in pending:
                if t.env.tx_id.hex() in accepted:
                    t.node, t.ack_s = node, now
                else:
                    left.append(t)
            if left:
                self.errors["submit:turned away in a 202"] += 1
            return left, f"node {node}: turned away in a 202", False
        text = str(doc)[:200] if doc is not None else ""
        error = f"node {node}: HTTP {status}: {text}"
        self.errors[f"submit:HTTP {status}"] += 1
        if 400 <= status < 500 and status != 429:
            self.client_errors.append(error)
            return pending, error, True  # refused as invalid: another node would refuse too
        return pending, error, False
