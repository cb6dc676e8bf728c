"""The start-up check: verify the stored chain before the node serves it.

Fast (default): the hash links of every header (the store's hash/prev_hash columns: contiguous
heights, each prev_hash equal to the hash before it), the last ``hash_blocks`` blocks decoded
with every hash recomputed (payloads, Merkle root, block hash, agreement with the columns), and
the last ``signature_blocks`` fully verified (certificates and tx signatures). ``full``: every
block fully verified, and no transaction repeated outside a re-issued batch (the one rule,
``consensus.execution``). Older signatures are covered by the reader's
background scrub once the node runs.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consensus.execution import RepeatCheck
from consensus.hashing import GENESIS_HASH
from node.ledger import block_repeats
from node.store import Store
from node.verified import BlockUnavailable, ChainVerifier


@dataclass(frozen=True, slots=True)
class StartupReport:
    mode: str
    """fast | full"""
    height: int
    links_checked: int
    hashes_checked: int
    signatures_checked: int
    bad: tuple[tuple[int, str], ...]
    duration_ms: int

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "height": self.height,
            "links_checked": self.links_checked,
            "hashes_checked": self.hashes_checked,
            "signatures_checked": self.signatures_checked,
            "bad": [{"height": hh, "reason": r} for hh, r in self.bad],
            "duration_ms": self.duration_ms,
        }


def _header_rows(path: Path, start: int) -> Iterable[tuple[int, bytes, bytes]]:
    """(height, hash, prev_hash) columns of the store's blocks table from ``start`` on, through
    a separate read-only connection (WAL: isolated from the store's writer). These columns are
    what the store trusts for the head and for linking; the data blobs are checked separately.
    """
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        cursor = db.execute(
            "SELECT height, hash, prev_hash FROM blocks WHERE height >= ? ORDER BY height",
            (start,),
        )
        for height, bhash, prev in cursor:
            yield int(height), bytes(bhash), bytes(prev)
    finally:
        db.close()


@dataclass(slots=True)
class _Check:
    """The state of one start-up check as it walks the chain."""

    store: Store
    verifier: ChainVerifier
    full: bool
    hash_from: int
    sig_from: int
    max_bad: int
    bad: dict[int, str] = field(default_factory=dict)
    columns: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    links: int = 0
    hashes: int = 0
    signatures: int = 0
    repeats: RepeatCheck[bytes] = field(default_factory=RepeatCheck[bytes])
    """The one rule for a transaction repeated on the chain (``consensus.execution``)."""
    prev_data_hash: bytes | None = None

    def flag(self, height: int, reason: str) -> None:
        if len(self.bad) < self.max_bad:
            self.bad.setdefault(height, reason)

    def links_of_headers(self) -> None:
        if not self.store.path.is_file():
            return
        prev_height, prev_hash = 0, GENESIS_HASH
        for height, bhash, prev in _header_rows(self.store.path, 1):
            if height != prev_height + 1:
                self.flag(prev_height + 1, f"blocks {prev_height + 1}..{height - 1} are missing")
            elif prev != prev_hash:
                self.flag(height, f"stored prev_hash does not link to block {height - 1}")
            if height >= self.hash_from:
                self.columns[height] = (bhash, prev)
            prev_height, prev_hash = height, bhash
            self.links += 1

    def blocks(self, head_height: int) -> None:
        next_height = self.hash_from
        while next_height <= head_height:
            page = self.store.get_blocks_raw(next_height, 256)
            if not page:
                break
            for height, raw in page:
                problem = self.block(height, raw)
                if problem:
                    self.flag(height, problem)
                    self.prev_data_hash = None
            next_height = page[-1][0] + 1

    def block(self, height: int, raw: bytes) -> str | None:
        try:
            block = self.verifier.decode_stored(height, raw)
        except BlockUnavailable as e:
            return e.reason
        problem = self.verifier.hash_problem(block)
        col = self.columns.get(height)
        if problem is None and col is not None and col != (block.block_hash, block.prev_hash):
            problem = "stored hash columns disagree with the block's header"
        prev = self.prev_data_hash
        if problem is None and prev is not None and block.prev_hash != prev:
            problem = f"prev_hash does not link to block {height - 1}"
        self.hashes += 1
        if problem is None and height >= self.sig_from:
            problem = self.verifier.check_block(block, block.prev_hash)
            if problem is None and self.full:
                problem = block_repeats(self.repeats, block).problem
            self.signatures += 1
            if problem is None:
                self.verifier.cache.remember(height, hashlib.sha256(raw).digest(), block)
        if problem is None:
            self.prev_data_hash = block.block_hash
        return problem


def startup_verify(
    store: Store,
    verifier: ChainVerifier,
    *,
    full: bool = False,
    hash_blocks: int = 1024,
    signature_blocks: int = 64,
    max_bad: int = 1024,
) -> StartupReport:
    """Check the stored chain before the node serves it (see the module docstring); returns
    the bad heights found. Blocks fully verified are remembered in the verifier's cache."""
    started = time.monotonic()
    head_height, _ = store.head()
    check = _Check(
        store,
        verifier,
        full,
        hash_from=1 if full else max(1, head_height - hash_blocks + 1),
        sig_from=1 if full else max(1, head_height - signature_blocks + 1),
        max_bad=max_bad,
    )
    check.links_of_headers()
    check.blocks(head_height)
    return StartupReport(
        mode="full" if full else "fast",
        height=head_height,
        links_checked=check.links,
        hashes_checked=check.hashes,
        signatures_checked=check.signatures,
        bad=tuple(sorted(check.bad.items())),
        duration_ms=int((time.monotonic() - started) * 1000),
    )
