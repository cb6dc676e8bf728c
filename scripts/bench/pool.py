"""The pre-signed pool: every transaction of a run, signed before the clock starts and cut
into prebuilt request bodies, so client-side signing and encoding never limit what is
measured."""

from __future__ import annotations

import random
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from node.api import msgpack_tx_body
from node.ledger import make_transaction
from scripts.bench.loadspec import LoadSpec

SIGNING_REPORT_EVERY: Final = 2000
"""Transactions signed between two "signing" progress messages."""


RECORD_TYPES: Final = ("lab-result", "prescription", "imaging", "discharge-note", "vitals")


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
    tx_hex: list[str]
    """Transaction number -> its id (hex): what a long poll asks for."""

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
    tx_hex: list[str] = []
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
                tx_hex.append(envs[-1].tx_id.hex())
                index_of[tx_hex[-1]] = j
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
    return Pool(
        bodies=bodies, target=target, first=first, size=size, index_of=index_of, tx_hex=tx_hex
    )


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]
