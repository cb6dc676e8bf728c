"""The load generator's interface: what it is asked to do (:class:`LoadSpec`) and the raw
records it hands back (:class:`LoadResult`), all picklable (they cross the process boundary)."""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Final

TX_UNSENT: Final = 0
TX_ACCEPTED: Final = 1
TX_REJECTED: Final = 2
TX_FAILED: Final = 3
"""Per-transaction outcome of the submission (``LoadResult.outcome``)."""


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
    long_poll: bool = False
    """Closed loop until commit: each accepted request long-polls ``GET /tx/{id}?wait_ms=`` of
    its last transaction on the node that accepted it, and its commit time is that answer's
    arrival (or the observer's, if earlier), not the next ``poll_ms`` grid point."""
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
    acked_by: array[int]
    """Per transaction: index (into the spec's targets) of the node that accepted it; -1."""
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
