"""How much a node serves to one peer's state-transfer fetches: rate- and byte-limited.

A FetchRequest is a few bytes; its answer may be megabytes of blocks. Without a bound a peer
(or, before peer links were authenticated, anyone) could make a node read, verify and send
hundreds of MiB for a few hundred bytes sent. Each peer has two token buckets: requests per
second and block bytes per second, each with a burst. A request that finds either bucket empty
is not served (counted): the fetcher retries every ``fetch_retry_ms`` and asks other peers
too, so an honest laggard is slowed, never stuck. A request served may take the byte bucket
below zero by its last block (a block is never split); the debt is paid before the next one.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.config import NodeLimits


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at_s: float


class FetchBudget:
    """Per-peer request and byte budgets of served fetches."""

    __slots__ = ("_bytes", "_limits", "_reqs", "refused")

    def __init__(self, limits: NodeLimits) -> None:
        self._limits = limits
        self._reqs: dict[int, _Bucket] = {}
        self._bytes: dict[int, _Bucket] = {}
        self.refused = 0
        """Fetches not served because the peer's budget was spent."""

    def take(self, peer: int, now_s: float) -> int:
        """The block bytes ``peer`` may be sent now (0: do not serve this request at all);
        takes one request token when the answer is not 0."""
        lim = self._limits
        reqs = _refill(self._reqs, peer, now_s, lim.fetch_serve_per_s, lim.fetch_serve_per_s)
        byts = _refill(
            self._bytes, peer, now_s, lim.fetch_serve_bytes_per_s, lim.fetch_serve_burst_bytes
        )
        if reqs.tokens < 1 or byts.tokens <= 0:
            self.refused += 1
            return 0
        reqs.tokens -= 1
        return int(min(byts.tokens, lim.fetch_response_max_bytes))

    def charge(self, peer: int, sent_bytes: int) -> None:
        """Count the block bytes actually sent to ``peer`` (after :meth:`take`)."""
        bucket = self._bytes.get(peer)
        if bucket is not None:
            bucket.tokens -= sent_bytes


def _refill(
    buckets: dict[int, _Bucket], peer: int, now_s: float, rate: float, burst: float
) -> _Bucket:
    b = buckets.get(peer)
    if b is None:
        b = buckets[peer] = _Bucket(tokens=burst, at_s=now_s)
        return b
    b.tokens = min(burst, b.tokens + max(0.0, now_s - b.at_s) * rate)
    b.at_s = now_s
    return b


__all__ = ["FetchBudget"]
