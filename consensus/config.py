"""Replica parameters: n, f and the bounds of every window, queue and timer."""

from __future__ import annotations

from dataclasses import dataclass


def max_faulty(n: int) -> int:
    """f = floor((n-1)/3): the byzantine replicas n tolerates."""
    return (n - 1) // 3


def quorum_size(n: int) -> int:
    f = max_faulty(n)
    return (n + f + 2) // 2


@dataclass(frozen=True, slots=True)
class ReplicaConfig:
    n: int
    replica_id: int
    checkpoint_interval: int = 32
    """K: a checkpoint every K sequence numbers (section 4.3)."""
    watermark_window: int = 128
    """L = high - low watermark; a multiple of K (section 4.3)."""
    max_inflight: int = 8
    """Batches the primary keeps proposed but not yet executed (pipelining)."""
    max_batch_txs: int = 500
    max_batch_bytes: int = 1 << 20
    batch_timeout_ms: int = 0
    """How long a partial batch may wait for more requests while the pipeline has room; 0:
    propose at once (adaptive batching, ``normal.maybe_propose``: batches form only while
    max_inflight batches are in flight). Measured (README, bench): a fixed 20 ms here held a
    lone client to 33 requests/s."""
    view_timeout_ms: int = 2000
    """Initial view-change timer; doubles per failed view (section 4.5.2)."""
    max_view_timeout_ms: int = 60_000
    request_timeout_ms: int = 20_000
    """A request held this long without executing means the primary ignores it, whatever
    else it executes (section 4.5.2's timer is per request): suspect it. Doubles per failed
    view like ``view_timeout_ms``; far above ``admission_max_age_ms`` so an honest primary
    with a long but moving backlog never trips it."""
    mempool_max_txs: int = 50_000
    mempool_max_bytes: int = 64 << 20
    """Encoded bytes of the transactions the mempool holds; beyond it a submit is refused."""
    admission_max_age_ms: int = 2_000
    """Client submissions are refused (the shell answers 503 with Retry-After) while the
    oldest transaction this replica holds has waited longer than this: the backlog is long
    enough that more would only wait longer, so the client is told to come back."""
    fetch_batch_blocks: int = 64
    fetch_retry_ms: int = 500
    """How often a replica that is behind asks a peer for blocks."""
    recent_executed_max: int = 100_000
    """Executed transaction ids the core remembers itself, so a request arriving before the
    shell has stored the block that holds it is never admitted again."""
    heartbeat_ms: int = 500
    """How often a replica tells every peer it is alive (a one-block fetch probe): catches up
    a replica that missed blocks, and lets a timer tell a faulty primary from a partition."""
    retransmit_ms: int = 500
    """How often unexecuted slots re-send this replica's own votes (lost messages)."""
    max_request_txs: int = 500

    def __post_init__(self) -> None:
        if self.n < 4:
            raise ValueError(f"n must be >= 4 (n = 3f+1, f >= 1), got {self.n}")
        if not 0 <= self.replica_id < self.n:
            raise ValueError(f"replica_id {self.replica_id} not in 0..{self.n - 1}")
        if self.watermark_window % self.checkpoint_interval:
            raise ValueError("watermark_window must be a multiple of checkpoint_interval")
        if self.watermark_window < 2 * self.checkpoint_interval:
            raise ValueError("watermark_window must be at least 2 * checkpoint_interval")
        if self.batch_timeout_ms < 0:
            raise ValueError("batch_timeout_ms must not be negative")
        if self.request_timeout_ms < self.view_timeout_ms:
            raise ValueError("request_timeout_ms must be at least view_timeout_ms")

    @property
    def f(self) -> int:
        return max_faulty(self.n)

    @property
    def quorum(self) -> int:
        """Quorum size: 2f+1 when n = 3f+1, ceil((n+f+1)/2) in general, so that any two
        quorums intersect in at least f+1 replicas (one of them honest)."""
        return quorum_size(self.n)

    @property
    def weak_quorum(self) -> int:
        """f+1: at least one honest replica among them."""
        return self.f + 1

    def primary(self, view: int) -> int:
        return view % self.n
