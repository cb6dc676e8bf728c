"""Nodes check each other's chains: live cross-audit, tamper detection and repair.

Three duties, all owned by one :class:`Auditor` per node and driven by one background task:

Cross-audit (every ``interval_ms``, default 2 s)
    For every peer: ``GET /status`` (height, head hash, stable checkpoint), then the peer's
    block HEADERS (``GET /blocks?from=&limit=&txs=0``: ``ledger.header_to_json``, no
    transactions) at heights we also hold. Each served header is verified (digest and block
    hash recomputed, commit certificate of >= quorum distinct consortium signatures) and its
    hash compared with ours (the verified hash we remember, else our store's hash column).
    Commit signatures are remembered once verified (``ledger.VerifiedCommits``, seeded with
    the certificates this node formed itself), so each peer's copy of a block costs a couple
    of hashes and, usually, no signature check at all. Each round looks at the heights not
    compared yet: the tip (the last ``recent_blocks`` common heights) and the next
    ``sweep_blocks`` from a cursor that walks up the whole common history once, so every
    common height is compared once per peer; plus a random window of ``history_sample_blocks``
    older heights re-checked (a peer that rewrites its history later is still caught) and
    ``body_sample_blocks`` random WHOLE blocks (without payloads), whose transactions are
    checked against the header (tx ids, Merkle root, signatures not already known from our
    copy). Whole blocks are otherwise fetched only to look closer: where a header disagrees
    (bounded by ``full_blocks_per_round``) and at open issues; they make the evidence.
    Per peer the report says: ``agree`` (same blocks; heights within ``lag_tolerance``),
    ``lagging`` (heights differ by more, same blocks up to the common height: an honest node
    catching up), ``diverged`` (a block with a valid certificate that differs from ours at the
    same height), ``invalid`` (the peer served something that does not verify) or
    ``unreachable``. Divergent and invalid heights stay open, and are re-checked every round
    with whole blocks, until the peer serves the right block there.

Evidence (``node.evidence``)
    A served block that does not verify, or two validly certified blocks at one height, is
    recorded as a signed evidence record a third party can check offline; records are
    deduplicated and kept (bounded) in ``DATA_DIR/audit.sqlite``.

Tamper detection and repair (our own store)
    A block is verified whenever it is read through :meth:`Auditor.read_block` or
    :meth:`Auditor.read_headers` (what the API serves; the newest headers come from the
    memory of what the node committed, not from disk), by a background scrub that re-verifies
    stored blocks within a CPU budget (``scrub_cpu_permille`` of one core, metered, in small
    steps that yield to the event loop), and at start-up (:func:`startup_verify`: hash links
    of all headers, hashes of the last blocks, signatures of the last few; ``full=True``
    re-verifies everything). Verified blocks are
    remembered by the sha256 of their stored bytes, so re-reading an unchanged block costs one
    hash, and any changed byte forces a full verification. A block that fails is quarantined
    (its corrupt bytes kept with the reason), refused to readers (HTTP 503 naming the
    problem), fetched from peers (``GET /blocks/{h}?format=msgpack``), verified against the
    chain around it (previous block's hash, next block's prev_hash, certificate, every tx) and
    written back with ``Store.replace_block``. Every step is an event in ``GET /audit``.

Everything runs on the node's event loop thread (the store's SQLite connection belongs to it;
the hash column is read through a read-only connection of the auditor's own). Work per round
is bounded by the settings; signature checks are skipped where a verified copy already vouches
for the same bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import random
import sqlite3
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import aiohttp
from aiohttp import web

from consensus.hashing import GENESIS_HASH, chain_link, merkle_root
from node.codec import CodecError
from node.evidence import (
    AUDIT_DB_NAME,
    KIND_CONFLICT,
    KIND_INVALID,
    MAX_MALFORMED_EXHIBIT_CHARS,
    AuditLog,
    EvidenceError,
    Exhibit,
    ServedBlock,
    Signer,
    block_exhibit_text,
    check_served_block,
    check_served_header,
    exhibit_problem,
    make_evidence,
    parse_block_json,
    parse_header_json,
)
from node.ledger import (
    HARD_MAX_PAYLOAD_BYTES,
    Block,
    BlockHeader,
    ClientRegistry,
    VerifiedCommits,
    block_header,
    block_to_json,
    decode_block,
    decode_block_header,
    encode_block,
    payload_hash,
    verify_block,
    verify_block_header,
    verify_txs,
)
from node.store import Store, StoreError

if TYPE_CHECKING:
    from node.config import NodeConfig

log = logging.getLogger("medchain.audit")

AGREE: Final = "agree"
LAGGING: Final = "lagging"
DIVERGED: Final = "diverged"
INVALID: Final = "invalid"
UNREACHABLE: Final = "unreachable"
UNKNOWN: Final = "unknown"
AGREEMENTS: Final = (AGREE, LAGGING, DIVERGED, INVALID, UNREACHABLE, UNKNOWN)
_SEVERITY: Final = {UNKNOWN: 0, AGREE: 1, LAGGING: 2, UNREACHABLE: 3, INVALID: 4, DIVERGED: 5}

MSGPACK_TYPES: Final = ("application/msgpack", "application/x-msgpack", "application/octet-stream")
MAX_EVIDENCE_PAGE: Final = 200
PAGE_BLOCKS: Final = 50
"""Most blocks asked for in one GET /blocks (a node serves up to ``blocks_page_max``, 100)."""
PAGE_HEADERS: Final = 256
"""Most headers asked for in one GET /blocks?txs=0 (a node serves up to 1000)."""
_HEADERS_PER_YIELD: Final = 32
"""Served headers checked between two yields to the event loop."""
_SCRUB_TXS_PER_STEP: Final = 32
"""Transaction signatures the scrub checks between two yields (~2-3 ms)."""
_RECENT_HEADERS: Final = 256
"""Headers (with tx ids) of the newest blocks kept for serving (see ChainVerifier)."""
_MAX_RECHECKS: Final = 8
"""Open issues re-checked (whole blocks) per peer per round."""
_MAX_OPEN_ISSUES: Final = 64
_MAX_TIP_DONE: Final = 4096
_MAX_ERROR_CHARS: Final = 300
_DONE: Final = object()


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """Bounds and periods of the audit (every field positive)."""

    interval_ms: int = 2000
    """Period of an audit round (peers, scrub, repairs)."""
    recent_blocks: int = 64
    """Tip window: the last common heights whose headers are compared with each peer (those
    not compared yet). Wider than the blocks committed in one round under load."""
    sweep_blocks: int = 256
    """Older common headers compared per peer per round, walking up from height 1 (catch-up
    after a start; once the sweep reaches the tip, only new heights are left)."""
    history_sample_blocks: int = 8
    """Already compared heights re-checked (headers) per peer per round: a random window."""
    body_sample_blocks: int = 1
    """Whole blocks (without payloads) fetched per peer per round at random heights to check
    their transactions against the header (tx ids, Merkle root, signatures)."""
    full_blocks_per_round: int = 16
    """Whole blocks fetched per peer per round to look closer where headers disagree and at
    open issues (the lowest heights first)."""
    lag_tolerance: int = 2
    """A peer within this many blocks of us (same blocks) counts as ``agree``, not ``lagging``:
    under load, heights read a moment apart differ by a block or two."""
    http_timeout_ms: int = 3000
    max_response_bytes: int = 32 * 1024 * 1024
    max_problems: int = 32
    """Problems remembered per peer (the newest)."""
    scrub_blocks: int = 64
    """Own stored blocks re-verified per round at most (unchanged ones cost one sha256)."""
    scrub_cpu_permille: int = 20
    """CPU the scrub may use, in thousandths of one core (20: 2%), measured per step with the
    thread's CPU clock; a step that overruns is paid back in later rounds. Full verification
    of a block (~30 ms for 500 txs) runs in steps of ``_SCRUB_TXS_PER_STEP`` signatures."""
    repairs_per_round: int = 8
    repair_backoff_max_ms: int = 30_000
    max_quarantined: int = 256
    verified_cache: int = 100_000
    """Stored blocks remembered as verified (height -> sha256 of bytes, ~150 bytes each)."""
    verified_commits: int = 65_536
    """Commit signatures remembered as verified (~100 bytes each)."""
    startup_hash_blocks: int = 1024
    """Start-up check: the last this many blocks are decoded and their hashes recomputed."""
    startup_signature_blocks: int = 64
    """Start-up check: the last this many blocks are fully verified (signatures too)."""

    def __post_init__(self) -> None:
        for name in self.__slots__:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"AuditSettings.{name} must be a positive integer, got {value!r}")
        if self.scrub_cpu_permille > 1000:
            raise ValueError("AuditSettings.scrub_cpu_permille is at most 1000 (one core)")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _short(text: str, limit: int = _MAX_ERROR_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# verifying our own stored blocks


class BlockUnavailable(Exception):
    """A stored block failed verification or is quarantined awaiting repair: never serve it."""

    def __init__(self, height: int, reason: str, *, quarantined: bool = False) -> None:
        super().__init__(f"block {height} is unavailable: {reason}")
        self.height = height
        self.reason = reason
        self.quarantined = quarantined

    def to_json(self) -> dict[str, Any]:
        return {
            "error": "block unavailable",
            "detail": {
                "height": self.height,
                "reason": self.reason,
                "state": "quarantined, repair from peers pending",
            },
        }

    def response(self) -> web.Response:
        """503 (retry later: repair is under way) with a JSON body naming the problem."""
        return web.json_response(self.to_json(), status=503, headers={"Retry-After": "2"})


@dataclass(frozen=True, slots=True)
class _Verified:
    fingerprint: bytes
    """sha256 of the stored bytes that verified."""
    block_hash: bytes
    prev_hash: bytes


class ChainVerifier:
    """Verifies stored blocks against the consortium's keys and the chain around them.

    Remembers (bounded LRU) the sha256 of each block's stored bytes once they verified, so a
    re-read of unchanged bytes costs one hash. The hash a verified block had stays trusted
    even if its bytes change later (blocks are immutable): neighbours are checked against it.
    """

    def __init__(
        self,
        consortium: Sequence[bytes],
        registry: ClientRegistry,
        *,
        cache_size: int = 100_000,
        max_payload: int = HARD_MAX_PAYLOAD_BYTES,
        commits_cache: int = 65_536,
    ) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be positive")
        self.consortium = tuple(consortium)
        self.registry = registry
        self.commits = VerifiedCommits(commits_cache)
        """Commit signatures verified so far (ours, stored blocks', peers')."""
        # Integrity, not admission policy: accept any payload the decoder accepts, so a node
        # whose policy cap changed never calls its own history corrupt.
        self._max_payload = max_payload
        self._cache_size = cache_size
        self._cache: OrderedDict[int, _Verified] = OrderedDict()
        self._headers: OrderedDict[int, BlockHeader] = OrderedDict()
        """Headers with tx ids of the newest blocks this node wrote: what peers' audits and the
        bench's observer read, just after the blocks were written."""
        self.cache_hits = 0
        self.verified = 0
        self.failures = 0

    # -- pure checks -------------------------------------------------------------------------

    def check_block(self, block: Block, prev_hash: bytes) -> str | None:
        """Full verification (``ledger.verify_block``): link, hashes, certificate, every tx."""
        return verify_block(
            block,
            prev_hash,
            self.consortium,
            self.registry,
            max_payload=self._max_payload,
            verified_commits=self.commits,
        )

    @staticmethod
    def hash_problem(block: Block) -> str | None:
        """Everything but signatures: payload hashes, Merkle root, block hash (cheap)."""
        for i, env in enumerate(block.txs):
            if payload_hash(env.payload) != env.tx.payload_hash:
                return f"tx {i}: payload hash mismatch"
        if merkle_root(block.tx_ids) != block.merkle_root:
            return "merkle root does not match the transactions"
        if chain_link(block.height, block.prev_hash, block.digest) != block.block_hash:
            return "block hash does not match the header"
        return None

    @staticmethod
    def decode_stored(height: int, raw: bytes) -> Block:
        """Decode stored bytes strictly; BlockUnavailable if they are not exactly the canonical
        encoding of a block at ``height`` (a changed byte that still decodes to the same block,
        e.g. a re-typed integer, is tampering too)."""
        try:
            block = decode_block(raw)
        except CodecError as e:
            raise BlockUnavailable(height, f"stored bytes do not decode: {e.reason}") from None
        if block.height != height:
            raise BlockUnavailable(height, f"stored at height {height} but says {block.height}")
        if encode_block(block) != raw:
            raise BlockUnavailable(height, "stored bytes are not the block's canonical encoding")
        return block

    # -- reads -------------------------------------------------------------------------------

    def read(self, store: Store, height: int, raw: bytes | None = None) -> Block | None:
        """The verified block at ``height``, None if there is none; BlockUnavailable if its
        stored bytes (``raw`` if the caller has just read them) fail verification."""
        if raw is None:
            raw = store.get_block_raw(height)
        if raw is None:
            return None
        fingerprint = hashlib.sha256(raw).digest()
        if self._cached(height, fingerprint) is not None:
            # The very bytes that verified (and were canonical): decoding cannot fail.
            return decode_block(raw)
        block = self.decode_stored(height, raw)
        self._verify(store, height, block, fingerprint)
        return block

    def verified_hash(self, store: Store, height: int) -> bytes | None:
        """The hash of the verified block at ``height`` (no decode when unchanged since last
        verified); None if there is no block; BlockUnavailable if it fails verification."""
        raw = store.get_block_raw(height)
        if raw is None:
            return None
        fingerprint = hashlib.sha256(raw).digest()
        cached = self._cached(height, fingerprint)
        if cached is not None:
            return cached.block_hash
        block = self.decode_stored(height, raw)
        self._verify(store, height, block, fingerprint)
        return block.block_hash

    def read_header(
        self, store: Store, height: int, raw: bytes, *, with_tx_ids: bool = False
    ) -> BlockHeader:
        """The header of the verified block stored as ``raw`` at ``height`` (with its tx ids
        if asked): verified bytes are decoded without building their transactions.
        BlockUnavailable if they fail verification."""
        fingerprint = hashlib.sha256(raw).digest()
        if self._cached(height, fingerprint) is not None:
            with contextlib.suppress(CodecError):  # cannot fail: these bytes decoded before
                return decode_block_header(raw, with_tx_ids=with_tx_ids)
        block = self.decode_stored(height, raw)
        self._verify(store, height, block, fingerprint)
        return block_header(block, with_tx_ids=with_tx_ids)

    def recent_header(self, height: int, *, with_tx_ids: bool = False) -> BlockHeader | None:
        """The header of a block this node wrote lately, from memory (None if not kept). It is
        what the node committed and verified, whatever its stored bytes became since: serving
        it serves nothing corrupt, and the scrub and whole-block reads look after the bytes."""
        header = self._headers.get(height)
        if header is None or with_tx_ids:
            return header
        return dataclasses.replace(header, tx_ids=None)

    def known_hash(self, height: int) -> bytes | None:
        """The verified hash of block ``height`` if remembered (no I/O; None otherwise)."""
        entry = self._cache.get(height)
        return None if entry is None else entry.block_hash

    def verify_steps(self, store: Store, height: int) -> Iterator[None]:
        """Verify stored block ``height`` like :meth:`verified_hash`, as a generator whose
        every step is short (a decode, the header and certificate, a few transactions): the
        scrub yields to the event loop between steps and meters their CPU. Raises
        BlockUnavailable at the end if the bytes fail, unless they were replaced meanwhile
        (a repair): a verdict is only ever given on the bytes still stored."""
        raw = store.get_block_raw(height)
        if raw is None:
            return
        fingerprint = hashlib.sha256(raw).digest()
        if self._cached(height, fingerprint) is not None:
            return
        yield
        problem: str | None = None
        block: Block | None = None
        try:
            block = self.decode_stored(height, raw)
        except BlockUnavailable as e:
            problem = e.reason
        if block is not None:
            yield
            problem = verify_block_header(
                block, block.prev_hash, self.consortium, verified_commits=self.commits
            ) or self._link_problem(store, block)
            for start in range(0, len(block.txs), _SCRUB_TXS_PER_STEP):
                if problem:
                    break
                yield
                problem = verify_txs(
                    block,
                    self.registry,
                    max_payload=self._max_payload,
                    start=start,
                    stop=start + _SCRUB_TXS_PER_STEP,
                )
        if store.get_block_raw(height) != raw:
            return
        if problem or block is None:
            self.failures += 1
            self._cache.pop(height, None)
            raise BlockUnavailable(height, problem or "does not decode")
        self.verified += 1
        self.remember(height, fingerprint, block)

    def _cached(self, height: int, fingerprint: bytes) -> _Verified | None:
        entry = self._cache.get(height)
        if entry is None or entry.fingerprint != fingerprint:
            return None
        self._cache.move_to_end(height)
        self.cache_hits += 1
        return entry

    def _verify(self, store: Store, height: int, block: Block, fingerprint: bytes) -> None:
        problem = self.check_block(block, block.prev_hash) or self._link_problem(store, block)
        if problem:
            self.failures += 1
            self._cache.pop(height, None)
            raise BlockUnavailable(height, problem)
        self.verified += 1
        self.remember(height, fingerprint, block)

    def _link_problem(self, store: Store, block: Block) -> str | None:
        height = block.height
        expected_prev = self.trusted_hash(store, height - 1)
        if expected_prev is not None and block.prev_hash != expected_prev:
            return f"prev_hash does not link to block {height - 1}"
        expected_hash = self.expected_hash(store, height)
        if expected_hash is not None and block.block_hash != expected_hash:
            return f"block hash does not match what block {height + 1} (or the head) links to"
        return None

    def remember(self, height: int, fingerprint: bytes, block: Block) -> None:
        self._cache[height] = _Verified(fingerprint, block.block_hash, block.prev_hash)
        self._cache.move_to_end(height)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def remember_header(self, header: BlockHeader) -> None:
        """Keep the header (with tx ids) of a block just written: serving it then costs no
        read and no decode (bounded: the newest few)."""
        self._headers[header.height] = header
        self._headers.move_to_end(header.height)
        while len(self._headers) > _RECENT_HEADERS:
            self._headers.popitem(last=False)

    def forget(self, height: int) -> None:
        self._cache.pop(height, None)
        self._headers.pop(height, None)

    # -- what the neighbours say -------------------------------------------------------------

    def trusted_hash(self, store: Store, height: int) -> bytes | None:
        """The hash block ``height`` is known to have, for checking its successor's link:
        GENESIS_HASH for 0, a verified hash, or the hash of a self-consistent stored block
        (its hash recomputes from its header). None if nothing trustworthy is at hand: a
        single corrupted block is then never blamed on its neighbour."""
        if height == 0:
            return GENESIS_HASH
        entry = self._cache.get(height)
        if entry is not None:
            return entry.block_hash
        block = self._self_consistent(store, height)
        return None if block is None else block.block_hash

    def expected_hash(self, store: Store, height: int) -> bytes | None:
        """The hash block ``height`` must have according to what follows it: the next block's
        prev_hash (verified or self-consistent), or the store's head hash for the head."""
        head_height, head_hash = store.head()
        if height == head_height:
            return head_hash
        if height > head_height:
            return None
        entry = self._cache.get(height + 1)
        if entry is not None:
            return entry.prev_hash
        block = self._self_consistent(store, height + 1)
        return None if block is None else block.prev_hash

    def _self_consistent(self, store: Store, height: int) -> Block | None:
        raw = store.get_block_raw(height)
        if raw is None:
            return None
        try:
            block = self.decode_stored(height, raw)
        except BlockUnavailable:
            return None
        if chain_link(height, block.prev_hash, block.digest) != block.block_hash:
            return None
        return block

    def status(self) -> dict[str, int]:
        return {
            "cached": len(self._cache),
            "cache_hits": self.cache_hits,
            "verified": self.verified,
            "failures": self.failures,
            "commits_cached": len(self.commits),
            "commit_cache_hits": self.commits.hits,
            "commit_cache_misses": self.commits.misses,
        }


def verify_on_read(store: Store, height: int, verifier: ChainVerifier) -> Block | None:
    """The block at ``height`` if it verifies, None if the store has none; raises
    BlockUnavailable (with ``.response()``, an HTTP 503) if its stored bytes fail.

    Stateless helper; a running node reads through :meth:`Auditor.read_block` instead, which
    also quarantines and repairs what fails.
    """
    return verifier.read(store, height)


# ---------------------------------------------------------------------------------------------
# start-up check


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


def startup_verify(
    store: Store,
    verifier: ChainVerifier,
    *,
    full: bool = False,
    hash_blocks: int = 1024,
    signature_blocks: int = 64,
    max_bad: int = 1024,
) -> StartupReport:
    """Check the stored chain before the node serves it; returns the bad heights found.

    Fast (default): the hash links of every header (the store's hash/prev_hash columns:
    contiguous heights, each prev_hash equal to the hash before it), the last ``hash_blocks``
    blocks decoded with every hash recomputed (payloads, Merkle root, block hash, agreement
    with the columns), and the last ``signature_blocks`` fully verified (certificates and tx
    signatures). ``full``: every block fully verified, and no tx committed twice. Older
    signatures are covered by the background scrub once the node runs.
    """
    started = time.monotonic()
    head_height, _ = store.head()
    bad: dict[int, str] = {}

    def flag(height: int, reason: str) -> None:
        if len(bad) < max_bad:
            bad.setdefault(height, reason)

    hash_from = 1 if full else max(1, head_height - hash_blocks + 1)
    sig_from = 1 if full else max(1, head_height - signature_blocks + 1)
    columns: dict[int, tuple[bytes, bytes]] = {}
    links = 0
    if store.path.is_file():
        prev_height, prev_hash = 0, GENESIS_HASH
        for height, bhash, prev in _header_rows(store.path, 1):
            if height != prev_height + 1:
                flag(prev_height + 1, f"blocks {prev_height + 1}..{height - 1} are missing")
            elif prev != prev_hash:
                flag(height, f"stored prev_hash does not link to block {height - 1}")
            if height >= hash_from:
                columns[height] = (bhash, prev)
            prev_height, prev_hash = height, bhash
            links += 1

    hashes = signatures = 0
    seen_txs: set[bytes] = set()
    prev_data_hash: bytes | None = None
    next_height = hash_from
    while next_height <= head_height:
        page = store.get_blocks_raw(next_height, 256)
        if not page:
            break
        for height, raw in page:
            try:
                block = verifier.decode_stored(height, raw)
            except BlockUnavailable as e:
                flag(height, e.reason)
                prev_data_hash = None
                continue
            problem = verifier.hash_problem(block)
            col = columns.get(height)
            if problem is None and col is not None and col != (block.block_hash, block.prev_hash):
                problem = "stored hash columns disagree with the block's header"
            if problem is None and prev_data_hash is not None and block.prev_hash != prev_data_hash:
                problem = f"prev_hash does not link to block {height - 1}"
            hashes += 1
            if problem is None and height >= sig_from:
                problem = verifier.check_block(block, block.prev_hash)
                if problem is None and full:
                    dup = next((t for t in block.tx_ids if t in seen_txs), None)
                    if dup is not None:
                        problem = f"tx {dup.hex()[:16]} committed twice"
                    seen_txs.update(block.tx_ids)
                signatures += 1
                if problem is None:
                    verifier.remember(height, hashlib.sha256(raw).digest(), block)
            if problem:
                flag(height, problem)
                prev_data_hash = None
            else:
                prev_data_hash = block.block_hash
        next_height = page[-1][0] + 1
    return StartupReport(
        mode="full" if full else "fast",
        height=head_height,
        links_checked=links,
        hashes_checked=hashes,
        signatures_checked=signatures,
        bad=tuple(sorted(bad.items())),
        duration_ms=int((time.monotonic() - started) * 1000),
    )


class HashColumn:
    """Our stored blocks' hashes by height, read from the store's ``hash`` column through a
    read-only connection of its own (WAL: isolated from the store's writer; one indexed range
    query per page of headers instead of reading and hashing every block). The column is what
    the store links and serves heads by; the scrub and read-time verification check the block
    bytes behind it, and no verdict against a peer rests on it alone (see ``_settle``).
    A store that is not a file (tests) answers nothing: callers fall back to verified reads.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._db: sqlite3.Connection | None = None

    def hashes(self, lo: int, hi: int) -> dict[int, bytes]:
        if hi < lo:
            return {}
        db = self._connect()
        if db is None:
            return {}
        try:
            rows = db.execute(
                "SELECT height, hash FROM blocks WHERE height BETWEEN ? AND ?", (lo, hi)
            ).fetchall()
        except sqlite3.Error as e:
            log.warning("cannot read the store's hash column: %s", e)
            self.close()
            return {}
        return {int(height): bytes(bhash) for height, bhash in rows}

    def _connect(self) -> sqlite3.Connection | None:
        if self._db is None and self._path.is_file():
            try:
                self._db = sqlite3.connect(f"{self._path.resolve().as_uri()}?mode=ro", uri=True)
            except sqlite3.Error as e:
                log.warning("cannot open %s read-only: %s", self._path, e)
        return self._db

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()


# ---------------------------------------------------------------------------------------------
# talking to peers


class PeerError(Exception):
    """A peer did not answer usefully (connection, timeout, HTTP error, unexpected shape)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidServed(Exception):
    """A peer answered with a block that is malformed or fails verification."""

    def __init__(self, reason: str, exhibit: str | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exhibit = exhibit
        """What was served, as exhibit text (None if not worth keeping)."""


@dataclass(frozen=True, slots=True)
class PeerStatus:
    height: int
    head_hash: bytes | None
    stable_seq: int | None
    view: int | None


def parse_status(doc: object) -> PeerStatus:
    """The fields the audit needs from ``GET /status``; PeerError if ``height`` is missing."""
    if not isinstance(doc, dict):
        raise PeerError("status is not a JSON object")
    height = doc.get("height")
    if type(height) is not int or height < 0:
        raise PeerError("status has no valid height")
    head = doc.get("head_hash", doc.get("head"))
    head_hash: bytes | None = None
    if isinstance(head, str):
        with contextlib.suppress(ValueError):
            head_hash = bytes.fromhex(head)
    stable = doc.get("stable_seq", doc.get("stable_checkpoint", doc.get("checkpoint")))
    if isinstance(stable, dict):
        stable = stable.get("seq")
    view = doc.get("view")
    return PeerStatus(
        height=height,
        head_hash=head_hash if head_hash is not None and len(head_hash) == 32 else None,
        stable_seq=stable if type(stable) is int else None,
        view=view if type(view) is int else None,
    )


@dataclass(frozen=True, slots=True)
class FetchedBlock:
    block: Block
    exhibit: str
    """The block as exhibit text (for evidence if it turns out not to fit our chain)."""


async def _read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    if resp.content_length is not None and resp.content_length > limit:
        raise PeerError(f"answer of {resp.content_length} bytes exceeds {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise PeerError(f"answer exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _error_summary(body: bytes) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return _short(body.decode("utf-8", "replace"), 200)
    if isinstance(doc, dict):
        parts = [str(doc[k]) for k in ("error", "detail") if doc.get(k)]
        return _short(": ".join(parts), 200)
    return ""


class PeerClient:
    """Bounded GETs against a peer's HTTP API (one shared keep-alive session)."""

    def __init__(self, session: aiohttp.ClientSession, *, timeout_ms: int, max_bytes: int) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_ms / 1000.0)
        self._max_bytes = max_bytes

    async def get(self, url: str) -> tuple[str, bytes]:
        """(content type, body) of a 200 answer; PeerError otherwise."""
        try:
            async with self._session.get(url, timeout=self._timeout) as resp:
                body = await _read_limited(resp, self._max_bytes)
                if resp.status != 200:
                    raise PeerError(f"HTTP {resp.status} {_error_summary(body)}".rstrip())
                return resp.content_type, body
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            detail = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            raise PeerError(_short(detail)) from None

    async def get_json(self, url: str) -> object:
        _, body = await self.get(url)
        try:
            return json.loads(body)
        except ValueError:
            raise PeerError(f"{url}: answer is not JSON") from None

    async def status(self, base: str) -> PeerStatus:
        return parse_status(await self.get_json(f"{base}/status"))

    async def blocks(
        self, base: str, from_height: int, limit: int, *, payload: bool = False
    ) -> list[object]:
        """Raw block documents of ``GET /blocks?from=&limit=`` (``{"blocks": [...]}`` or a
        bare array); with ``payload``, txs carry their payloads (so their hashes are checked)."""
        return await self._page(base, from_height, limit, "&payload=1" if payload else "")

    async def headers(self, base: str, from_height: int, limit: int) -> list[object]:
        """Raw header documents of ``GET /blocks?from=&limit=&txs=0`` (no transactions)."""
        return await self._page(base, from_height, limit, "&txs=0")

    async def _page(self, base: str, from_height: int, limit: int, extra: str) -> list[object]:
        doc = await self.get_json(f"{base}/blocks?from={from_height}&limit={limit}{extra}")
        items = doc.get("blocks") if isinstance(doc, dict) else doc
        if not isinstance(items, list):
            raise PeerError("GET /blocks did not answer a list of blocks")
        return items

    async def block(self, base: str, height: int) -> FetchedBlock:
        """The whole block (payloads included) for repair: msgpack (``encode_block``) or JSON
        with payloads. InvalidServed if the answer is not a block; PeerError if no answer."""
        ctype, body = await self.get(f"{base}/blocks/{height}?format=msgpack&payload=1")
        if ctype in MSGPACK_TYPES:
            try:
                block = decode_block(body)
            except CodecError as e:
                raise InvalidServed(f"served bytes do not decode: {e.reason}", None) from None
            return FetchedBlock(block, block_exhibit_text(block_to_json(block)))
        try:
            doc = json.loads(body)
        except ValueError:
            raise InvalidServed("answer is neither msgpack nor JSON", None) from None
        if isinstance(doc, dict) and isinstance(doc.get("block"), dict):
            doc = doc["block"]
        try:
            block = parse_block_json(doc).to_block()
        except EvidenceError as e:
            raise InvalidServed(e.reason, _malformed_exhibit(doc)) from None
        return FetchedBlock(block, block_exhibit_text(doc))


def _malformed_exhibit(doc: object) -> str:
    try:
        text = block_exhibit_text(doc)
    except (TypeError, ValueError):
        text = repr(doc)
    return text[:MAX_MALFORMED_EXHIBIT_CHARS]


# ---------------------------------------------------------------------------------------------
# comparison logic (pure)


@dataclass(frozen=True, slots=True)
class HeightCheck:
    """One common height compared with one peer."""

    height: int
    ours: bytes | None
    """Our verified block hash (None: ours is quarantined, nothing to compare with)."""
    theirs: bytes | None
    """The peer's block hash as served (None: it served nothing parseable)."""
    problem: str | None = None
    """Why the peer's block does not verify (None if it does)."""

    @property
    def outcome(self) -> str:
        if self.problem is not None:
            return INVALID
        if self.ours is None or self.theirs is None:
            return UNKNOWN
        return AGREE if self.ours == self.theirs else DIVERGED


@dataclass(frozen=True, slots=True)
class Verdict:
    agreement: str
    lag: int
    """peer height - our height: positive when the peer is ahead (we are the one lagging)."""
    open_issues: Mapping[int, str]
    """Heights still divergent or invalid, with the outcome."""


def apply_checks(open_issues: Mapping[int, str], checks: Iterable[HeightCheck]) -> dict[int, str]:
    """Open issues after this round: a height becomes open when its check fails and closes
    when a later check of the same height agrees. Bounded (the lowest heights are kept: the
    first divergence is the one that matters)."""
    issues = dict(open_issues)
    for c in checks:
        outcome = c.outcome
        if outcome in (INVALID, DIVERGED):
            issues[c.height] = outcome
        elif outcome == AGREE:
            issues.pop(c.height, None)
    if len(issues) > _MAX_OPEN_ISSUES:
        issues = dict(sorted(issues.items())[:_MAX_OPEN_ISSUES])
    return issues


def classify(
    our_height: int, peer_height: int, open_issues: Mapping[int, str], *, lag_tolerance: int
) -> Verdict:
    """The agreement with a peer: diverged > invalid > lagging > agree.

    Different heights alone never make a divergence: a peer that is behind (or ahead) with the
    same blocks up to the common height is ``lagging``.
    """
    lag = peer_height - our_height
    outcomes = set(open_issues.values())
    if DIVERGED in outcomes:
        agreement = DIVERGED
    elif INVALID in outcomes:
        agreement = INVALID
    elif abs(lag) > lag_tolerance:
        agreement = LAGGING
    else:
        agreement = AGREE
    return Verdict(agreement=agreement, lag=lag, open_issues=dict(open_issues))


def plan_heights(
    cursor: int, done: Iterable[int], common: int, *, recent: int, sweep: int
) -> list[int]:
    """Heights to compare this round: the tip window (last ``recent`` common heights) and the
    next ``sweep`` heights from ``cursor``, minus those already compared (``done``)."""
    if common < 1:
        return []
    already = set(done)
    start = max(1, cursor)
    picked = {h for h in range(max(start, common - recent + 1), common + 1) if h not in already}
    # The sweep skips heights already compared, so one height that cannot be compared yet
    # (ours is being repaired, the peer's is missing) never stalls it.
    height = start
    swept = 0
    while height <= common and swept < sweep:
        if height not in already and height not in picked:
            picked.add(height)
            swept += 1
        height += 1
    return sorted(picked)


def contiguous_ranges(heights: Sequence[int], *, max_len: int = 1 << 62) -> list[tuple[int, int]]:
    """Sorted heights as (first, last) runs of at most ``max_len`` heights each."""
    out: list[tuple[int, int]] = []
    for height in heights:
        if out and height == out[-1][1] + 1 and height - out[-1][0] < max_len:
            out[-1] = (out[-1][0], height)
        else:
            out.append((height, height))
    return out


# ---------------------------------------------------------------------------------------------
# per-peer state


@dataclass(slots=True)
class PeerCounters:
    rounds: int = 0
    unreachable: int = 0
    blocks_compared: int = 0
    """Common heights compared for the first time (each height once)."""
    history_samples: int = 0
    """Already compared heights compared again (the random history window)."""
    headers_verified: int = 0
    blocks_verified: int = 0
    """Whole blocks fetched and verified (body sample, closer looks, open issues)."""
    invalid_blocks: int = 0
    divergent_blocks: int = 0
    evidence_recorded: int = 0

    def to_json(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(slots=True)
class PeerState:
    peer_id: int
    url: str
    max_problems: int
    agreement: str = UNKNOWN
    height: int | None = None
    head_hash: bytes | None = None
    stable_seq: int | None = None
    view: int | None = None
    lag: int | None = None
    cursor: int = 1
    """Every common height below this one has been compared."""
    tip_done: set[int] = field(default_factory=set)
    """Heights >= cursor already compared (by the tip window)."""
    last_compared: int = 0
    open_issues: dict[int, str] = field(default_factory=dict)
    problems: deque[dict[str, Any]] = field(default_factory=deque)
    counters: PeerCounters = field(default_factory=PeerCounters)
    last_error: str | None = None
    last_audit_ms: int | None = None

    def problem(self, kind: str, height: int | None, detail: str) -> None:
        self.problems.append(
            {"at_ms": _now_ms(), "kind": kind, "height": height, "detail": _short(detail)}
        )
        while len(self.problems) > self.max_problems:
            self.problems.popleft()

    def mark_done(self, heights: Iterable[int]) -> None:
        self.tip_done.update(heights)
        while self.cursor in self.tip_done:
            self.tip_done.discard(self.cursor)
            self.cursor += 1
        if len(self.tip_done) > _MAX_TIP_DONE:
            # Forget the highest: they are simply compared again later.
            self.tip_done = set(sorted(self.tip_done)[:_MAX_TIP_DONE])

    def restart_sweep(self) -> None:
        self.cursor = 1
        self.tip_done.clear()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.peer_id,
            "url": self.url,
            "agreement": self.agreement,
            "height": self.height,
            "head_hash": None if self.head_hash is None else self.head_hash.hex(),
            "stable_seq": self.stable_seq,
            "view": self.view,
            "lag": self.lag,
            "audited_through": self.cursor - 1,
            "last_compared_height": self.last_compared,
            "open_issues": [
                {"height": hh, "outcome": o} for hh, o in sorted(self.open_issues.items())
            ],
            "problems": list(self.problems),
            "counters": self.counters.to_json(),
            "last_error": self.last_error,
            "last_audit_ms": self.last_audit_ms,
        }


# ---------------------------------------------------------------------------------------------
# quarantine and repair


@dataclass(slots=True)
class Quarantined:
    height: int
    reason: str
    detected_at_ms: int
    attempts: int = 0
    last_error: str | None = None
    next_attempt: float = 0.0
    """time.monotonic() before which no repair is tried."""

    def to_json(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "reason": self.reason,
            "detected_at_ms": self.detected_at_ms,
            "attempts": self.attempts,
            "last_error": self.last_error,
        }


ReportInvalid = Callable[[int, str, int, str, str | None], None]
"""(peer id, peer url, height, problem, exhibit text) -> None: a peer served a bad block."""


class Repairer:
    """Quarantines stored blocks that fail verification, refuses them to readers, and
    replaces them with a verified copy fetched from a peer."""

    def __init__(
        self,
        store: Store,
        verifier: ChainVerifier,
        audit_log: AuditLog,
        settings: AuditSettings,
        *,
        on_quarantine: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.verifier = verifier
        self._log = audit_log
        self._settings = settings
        self._on_quarantine = on_quarantine or (lambda: None)
        self._q: dict[int, Quarantined] = {}
        self.repaired = 0
        self.repair_failures = 0
        self.overflow = 0
        for row in audit_log.quarantined():
            # Remembered from before a restart: still bad until repaired or verified again.
            self._q[row.height] = Quarantined(row.height, row.reason, row.detected_at_ms)

    # -- quarantine --------------------------------------------------------------------------

    def is_quarantined(self, height: int) -> bool:
        return height in self._q

    @property
    def quarantined(self) -> list[Quarantined]:
        return [self._q[hh] for hh in sorted(self._q)]

    def quarantine(self, height: int, reason: str) -> None:
        """Refuse block ``height`` from now on, keep its bytes, and schedule its repair."""
        if height in self._q:
            return
        if len(self._q) >= self._settings.max_quarantined:
            self.overflow += 1
            log.error("block %d is bad (%s) but the quarantine is full", height, reason)
            return
        log.warning(
            "block %d failed verification: %s; quarantined, repairing from peers", height, reason
        )
        self.verifier.forget(height)
        self._log.quarantine(height, reason, self.store.get_block_raw(height))
        self._log.add_event("tamper-detected", height, reason)
        self._q[height] = Quarantined(height, reason, _now_ms())
        self._on_quarantine()

    def _release(self, height: int) -> None:
        self._q.pop(height, None)
        self._log.release(height)

    # -- verified reads ----------------------------------------------------------------------

    def read_block(self, height: int, raw: bytes | None = None) -> Block | None:
        """The verified block, None if absent; BlockUnavailable if quarantined or bad now."""
        self._refuse_quarantined(height)
        try:
            return self.verifier.read(self.store, height, raw)
        except BlockUnavailable as e:
            self.quarantine(height, e.reason)
            raise

    def recent_header(self, height: int, *, with_tx_ids: bool = False) -> BlockHeader | None:
        """The header kept in memory for a block written lately (None if not kept);
        BlockUnavailable if quarantined."""
        self._refuse_quarantined(height)
        return self.verifier.recent_header(height, with_tx_ids=with_tx_ids)

    def read_header(self, height: int, raw: bytes, *, with_tx_ids: bool = False) -> BlockHeader:
        """The verified block's header; BlockUnavailable if quarantined or bad now."""
        self._refuse_quarantined(height)
        try:
            return self.verifier.read_header(self.store, height, raw, with_tx_ids=with_tx_ids)
        except BlockUnavailable as e:
            self.quarantine(height, e.reason)
            raise

    def verified_hash(self, height: int) -> bytes | None:
        self._refuse_quarantined(height)
        try:
            return self.verifier.verified_hash(self.store, height)
        except BlockUnavailable as e:
            self.quarantine(height, e.reason)
            raise

    def _refuse_quarantined(self, height: int) -> None:
        q = self._q.get(height)
        if q is not None:
            raise BlockUnavailable(height, q.reason, quarantined=True)

    # -- repair ------------------------------------------------------------------------------

    def replacement_problem(self, height: int, block: Block) -> str | None:
        """None if ``block`` is a valid block for ``height`` that fits our chain."""
        if block.height != height:
            return f"served block {block.height} instead of {height}"
        expected_prev = self.verifier.trusted_hash(self.store, height - 1)
        problem = self.verifier.check_block(
            block, block.prev_hash if expected_prev is None else expected_prev
        )
        if problem:
            return problem
        expected_hash = self.verifier.expected_hash(self.store, height)
        if expected_hash is not None and block.block_hash != expected_hash:
            return f"does not link to block {height + 1}"
        return None

    async def repair_due(
        self, client: PeerClient, peers: Mapping[int, str], report_invalid: ReportInvalid
    ) -> None:
        """Try to repair the quarantined blocks whose backoff has expired (bounded count)."""
        now = time.monotonic()
        due = [hh for hh in sorted(self._q) if self._q[hh].next_attempt <= now]
        for height in due[: self._settings.repairs_per_round]:
            await self.repair(height, client, peers, report_invalid)

    async def repair(
        self,
        height: int,
        client: PeerClient,
        peers: Mapping[int, str],
        report_invalid: ReportInvalid,
    ) -> bool:
        q = self._q.get(height)
        if q is None:
            return True
        q.attempts += 1
        errors: list[str] = []
        for peer_id, url in self._peer_order(height, q.attempts, peers):
            try:
                fetched = await client.block(url, height)
            except PeerError as e:
                errors.append(f"replica {peer_id}: {e.reason}")
                continue
            except InvalidServed as e:
                errors.append(f"replica {peer_id} served an invalid block: {e.reason}")
                report_invalid(peer_id, url, height, e.reason, e.exhibit)
                continue
            if height not in self._q:
                return True  # repaired meanwhile (a concurrent read verified it)
            problem = self.replacement_problem(height, fetched.block)
            if problem:
                errors.append(f"replica {peer_id}: {problem}")
                if fetched.block.height == height:
                    report_invalid(peer_id, url, height, problem, fetched.exhibit)
                continue
            if self._replace(height, q, fetched.block, peer_id, url, errors):
                return True
        # A verified copy always replaces ours (it also rewrites the store's index columns);
        # without one, a block that verifies again (restored by an operator) is released.
        if self._verifies_again(height):
            self._release(height)
            self._log.add_event("resolved", height, "no copy fetched; stored block verifies again")
            return True
        self._failed(q, errors)
        return False

    def _verifies_again(self, height: int) -> bool:
        try:
            return self.verifier.read(self.store, height) is not None
        except BlockUnavailable:
            return False

    def _replace(
        self, height: int, q: Quarantined, block: Block, peer_id: int, url: str, errors: list[str]
    ) -> bool:
        reason = f"audit: {q.reason}; replaced with the copy of replica {peer_id}"
        try:
            self.store.replace_block(height, block, reason=_short(reason, 500))
        except StoreError as e:
            errors.append(f"replica {peer_id}: store refused the copy: {e}")
            return False
        self.verifier.forget(height)
        self._release(height)
        self.repaired += 1
        log.warning("block %d repaired with the copy of replica %d (%s)", height, peer_id, url)
        self._log.add_event(
            "repaired",
            height,
            f"replaced with the verified copy of replica {peer_id} ({url}); was: {q.reason}",
        )
        return True

    def _failed(self, q: Quarantined, errors: list[str]) -> None:
        self.repair_failures += 1
        q.last_error = _short("; ".join(errors) or "no peer to fetch from")
        backoff_ms = min(
            self._settings.repair_backoff_max_ms,
            self._settings.interval_ms * (1 << min(q.attempts - 1, 16)),
        )
        q.next_attempt = time.monotonic() + backoff_ms / 1000.0
        # Events at attempts 1, 2, 4, 8, ...: visible without flooding the bounded log.
        if q.attempts & (q.attempts - 1) == 0:
            self._log.add_event("repair-failed", q.height, f"attempt {q.attempts}: {q.last_error}")

    @staticmethod
    def _peer_order(height: int, attempt: int, peers: Mapping[int, str]) -> list[tuple[int, str]]:
        """Every peer once, starting at a different one per height and attempt (spreads load
        and gets past a peer that keeps failing)."""
        items = sorted(peers.items())
        if not items:
            return []
        start = (height + attempt) % len(items)
        return items[start:] + items[:start]

    def status(self) -> dict[str, Any]:
        return {
            "quarantined": [q.to_json() for q in self.quarantined],
            "repaired": self.repaired,
            "repair_failures": self.repair_failures,
            "quarantine_overflow": self.overflow,
        }


# ---------------------------------------------------------------------------------------------
# the auditor


class Auditor:
    """One node's audit: cross-audit of peers, tamper detection and repair of its own store.

    Owned by the node: ``start()`` spawns the single background task, ``stop()`` cancels it
    and closes the HTTP session, ``close()`` closes the audit database. ``cleanup_ctx`` does
    all of it as an aiohttp cleanup context.
    """

    def __init__(
        self,
        *,
        node_id: int,
        store: Store,
        consortium: Sequence[bytes],
        registry: ClientRegistry,
        signer: Signer,
        peers: Mapping[int, str],
        audit_log: AuditLog,
        settings: AuditSettings | None = None,
        rng: random.Random | None = None,
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        """``rng`` picks the sampled heights; ``cpu_clock`` (seconds of CPU used by this
        thread) meters the scrub. Both are parameters for tests."""
        if node_id in peers:
            raise ValueError("peers must not include this node")
        self.node_id = node_id
        self.store = store
        self.settings = settings or AuditSettings()
        self.audit_log = audit_log
        self._signer = signer
        self._peers = {pid: url.rstrip("/") for pid, url in sorted(peers.items())}
        # Which heights are sampled only spreads the work: nothing depends on it being secret.
        self._rng = rng or random.Random()
        self._hash_column = HashColumn(store.path)
        self.verifier = ChainVerifier(
            consortium,
            registry,
            cache_size=self.settings.verified_cache,
            commits_cache=self.settings.verified_commits,
        )
        self._wake = asyncio.Event()
        self.repairer = Repairer(
            store, self.verifier, audit_log, self.settings, on_quarantine=self._wake.set
        )
        self._states = {
            pid: PeerState(pid, url, self.settings.max_problems) for pid, url in self._peers.items()
        }
        self._session: aiohttp.ClientSession | None = None
        self._client: PeerClient | None = None
        self._task: asyncio.Task[None] | None = None
        self.startup: StartupReport | None = None
        self.rounds = 0
        self.round_errors = 0
        self.last_round_ms: int | None = None
        self._scrub_next = 1
        self._scrub_cycles = 0
        self._scrubbed = 0
        self._scrub_credit_ms = 0.0
        self._scrub_cpu_ms = 0.0
        self._cpu_clock = cpu_clock

    @classmethod
    def for_node(
        cls,
        config: NodeConfig,
        store: Store,
        signer: Signer,
        *,
        settings: AuditSettings | None = None,
    ) -> Auditor:
        """An auditor for a configured node; its database is ``DATA_DIR/audit.sqlite``."""
        config.data_dir.mkdir(parents=True, exist_ok=True)
        return cls(
            node_id=config.node_id,
            store=store,
            consortium=config.replica_publics,
            registry=ClientRegistry(config.client_keys()),
            signer=signer,
            peers=config.peers,
            audit_log=AuditLog(config.data_dir / AUDIT_DB_NAME),
            settings=settings,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def startup_check(self, *, full: bool = False) -> StartupReport:
        """Verify the stored chain before serving (see :func:`startup_verify`); bad blocks
        are quarantined and repaired from peers once the auditor runs."""
        s = self.settings
        report = startup_verify(
            self.store,
            self.verifier,
            full=full,
            hash_blocks=s.startup_hash_blocks,
            signature_blocks=s.startup_signature_blocks,
            max_bad=s.max_quarantined,
        )
        self.startup = report
        for height, reason in report.bad:
            self.repairer.quarantine(height, f"start-up check: {reason}")
        summary = (
            f"{report.mode} check of {report.height} blocks: {report.links_checked} links, "
            f"{report.hashes_checked} hashed, {report.signatures_checked} fully verified, "
            f"{len(report.bad)} bad, {report.duration_ms} ms"
        )
        self.audit_log.add_event("startup-check", None, summary)
        (log.warning if report.bad else log.info)("audit: %s", summary)
        return report

    async def start(self, *, background: bool = True) -> None:
        """Open the HTTP session and (unless ``background=False``, for tests driving
        :meth:`run_round` themselves) spawn the audit task."""
        if self._session is not None:
            raise RuntimeError("auditor already started")
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=2)
        self._session = aiohttp.ClientSession(connector=connector)
        self._client = PeerClient(
            self._session,
            timeout_ms=self.settings.http_timeout_ms,
            max_bytes=self.settings.max_response_bytes,
        )
        if background:
            self._task = asyncio.create_task(self._run(), name=f"auditor-{self.node_id}")

    async def stop(self) -> None:
        """Cancel the audit task and close the session. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        session, self._session, self._client = self._session, None, None
        if session is not None:
            await session.close()

    def close(self) -> None:
        self._hash_column.close()
        self.audit_log.close()

    async def cleanup_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """``app.cleanup_ctx.append(auditor.cleanup_ctx)``: runs while the app serves."""
        await self.start()
        try:
            yield
        finally:
            await self.stop()
            self.close()

    async def _run(self) -> None:
        interval = self.settings.interval_ms / 1000.0
        while True:
            started = time.monotonic()
            self._wake.clear()
            try:
                await self.run_round()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug in one round must not end auditing; it is logged and counted.
                self.round_errors += 1
                log.exception("audit round failed")
            delay = max(0.0, interval - (time.monotonic() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    # -- one round ---------------------------------------------------------------------------

    async def run_round(self) -> None:
        """Repairs that are due, a scrub step of our own store, then every peer, concurrently."""
        client = self._client
        if client is None:
            raise RuntimeError("auditor not started")
        self.rounds += 1
        await self.repairer.repair_due(client, self._peers, self._report_invalid_repair)
        await self._scrub()
        await asyncio.gather(*(self._audit_peer(client, s) for s in self._states.values()))
        self.last_round_ms = _now_ms()

    async def _scrub(self) -> None:
        """Re-verify the next stored blocks (cycling through the chain): catches bytes changed
        under a running node in blocks nobody reads. Bounded in blocks per round and in CPU:
        every step is metered with the thread's CPU clock against a credit of
        ``scrub_cpu_permille`` of the round's interval (an overrun is paid back in later
        rounds), and the scrub yields to the event loop between steps."""
        s = self.settings
        allowance_ms = s.interval_ms * s.scrub_cpu_permille / 1000.0
        self._scrub_credit_ms = min(self._scrub_credit_ms + allowance_ms, allowance_ms)
        checked = 0
        while checked < s.scrub_blocks and self._scrub_credit_ms > 0:
            head_height, _ = self.store.head()
            if self._scrub_next > head_height:
                if head_height:
                    self._scrub_cycles += 1
                self._scrub_next = 1
                return
            height = self._scrub_next
            self._scrub_next += 1
            if self.repairer.is_quarantined(height):
                continue
            await self._scrub_block(height)
            checked += 1
            self._scrubbed += 1

    async def _scrub_block(self, height: int) -> None:
        steps = self.verifier.verify_steps(self.store, height)
        while True:
            started = self._cpu_clock()
            try:
                more = next(steps, _DONE) is not _DONE
            except BlockUnavailable as e:
                self.repairer.quarantine(height, e.reason)
                more = False
            finally:
                used_ms = (self._cpu_clock() - started) * 1000.0
                self._scrub_credit_ms -= used_ms
                self._scrub_cpu_ms += used_ms
            if not more:
                return
            await asyncio.sleep(0)

    async def _audit_peer(self, client: PeerClient, state: PeerState) -> None:
        try:
            await self._audit_peer_once(client, state)
        except PeerError as e:
            state.agreement = UNREACHABLE
            state.counters.unreachable += 1
            state.last_error = e.reason
        except Exception as e:
            # Whatever a peer sends, the audit of the others goes on; this is our bug.
            log.exception("audit of replica %d failed", state.peer_id)
            state.last_error = _short(f"internal error: {type(e).__name__}: {e}")
        finally:
            state.counters.rounds += 1
            state.last_audit_ms = _now_ms()

    async def _audit_peer_once(self, client: PeerClient, state: PeerState) -> None:
        status = await client.status(state.url)
        our_height, _ = self.store.head()
        if state.height is not None and status.height < state.height:
            state.problem(
                "height-dropped",
                status.height,
                f"height went from {state.height} to {status.height}",
            )
            state.restart_sweep()
            state.open_issues = {
                hh: o for hh, o in state.open_issues.items() if hh <= status.height
            }
        state.height, state.head_hash = status.height, status.head_hash
        state.stable_seq, state.view = status.stable_seq, status.view
        s = self.settings
        common = min(our_height, status.height)
        new = plan_heights(
            state.cursor, state.tip_done, common, recent=s.recent_blocks, sweep=s.sweep_blocks
        )
        sampled = self._history_sample(state.cursor, common)
        # Headers: new heights, the history sample, and a head that does not match ours.
        wanted = sorted(set(new) | set(sampled) | set(self._head_mismatch(status, our_height)))
        headers = await self._check_headers(client, state, wanted)
        # Whole blocks: where a header disagrees, open issues, and the body sample.
        suspects = [hh for hh, c in sorted(headers.items()) if c.outcome in (INVALID, DIVERGED)]
        issues = sorted(hh for hh in state.open_issues if hh <= common)[:_MAX_RECHECKS]
        closer = sorted(set(suspects) | set(issues))[: s.full_blocks_per_round]
        bodies = self._body_sample(common, exclude=closer)
        full = await self._check_blocks(client, state, sorted(set(closer) | set(bodies)))
        checks: list[HeightCheck] = []
        for height in sorted(set(headers) | set(full)):
            if height in suspects and height not in closer:
                continue  # looked at more closely in a later round
            check = self._settle(state, height, headers.get(height), full.get(height))
            if check is not None:
                checks.append(check)
        self._count(state, checks, new=set(new), sampled=set(sampled))
        compared = {c.height for c in checks if c.outcome != UNKNOWN}
        state.mark_done(hh for hh in new if hh in compared)
        if compared:
            state.last_compared = max(state.last_compared, *compared)
        state.open_issues = apply_checks(state.open_issues, checks)
        self._check_status_head(state, status, checks)
        verdict = classify(
            our_height, status.height, state.open_issues, lag_tolerance=s.lag_tolerance
        )
        if verdict.agreement != state.agreement and verdict.agreement in (DIVERGED, INVALID):
            log.warning(
                "replica %d: %s (open issues at heights %s)",
                state.peer_id,
                verdict.agreement,
                sorted(verdict.open_issues),
            )
        state.agreement, state.lag, state.last_error = verdict.agreement, verdict.lag, None

    def _history_sample(self, cursor: int, common: int) -> list[int]:
        """A random window of already compared heights to re-check (all of them if few)."""
        top = min(cursor - 1, common)
        size = self.settings.history_sample_blocks
        if top <= size:
            return list(range(1, top + 1))
        start = self._rng.randint(1, top - size + 1)
        return list(range(start, start + size))

    def _body_sample(self, common: int, *, exclude: Iterable[int]) -> list[int]:
        """Random common heights whose whole blocks are checked (all of them if few)."""
        skip = set(exclude)
        size = self.settings.body_sample_blocks
        if common - len(skip) <= size:
            return [hh for hh in range(1, common + 1) if hh not in skip]
        picked: set[int] = set()
        while len(picked) < size:
            hh = self._rng.randint(1, common)
            if hh not in skip:
                picked.add(hh)
        return sorted(picked)

    def _our_hashes(self, lo: int, hi: int) -> dict[int, bytes]:
        """Our block hashes at ``lo..hi`` to compare served headers with: the verified hash we
        remember, else the store's hash column, else a verified read. Quarantined heights
        (nothing trustworthy to compare with) are left out."""
        out: dict[int, bytes] = {}
        missing: list[int] = []
        for height in range(lo, hi + 1):
            if self.repairer.is_quarantined(height):
                continue
            known = self.verifier.known_hash(height)
            if known is None:
                missing.append(height)
            else:
                out[height] = known
        if not missing:
            return out
        column = self._hash_column.hashes(missing[0], missing[-1])
        for height in missing:
            bhash = column.get(height)
            if bhash is None:
                bhash = self._our_verified_hash(height)
            if bhash is not None:
                out[height] = bhash
        return out

    def _our_verified_hash(self, height: int) -> bytes | None:
        known = self.verifier.known_hash(height)
        if known is not None:
            return known
        try:
            return self.repairer.verified_hash(height)
        except BlockUnavailable:
            return None

    async def _check_headers(
        self, client: PeerClient, state: PeerState, heights: Sequence[int]
    ) -> dict[int, HeightCheck]:
        out: dict[int, HeightCheck] = {}
        for lo, hi in contiguous_ranges(heights, max_len=PAGE_HEADERS):
            docs = await client.headers(state.url, lo, hi - lo + 1)
            ours = self._our_hashes(lo, hi)
            for i, doc in enumerate(docs):
                if i and i % _HEADERS_PER_YIELD == 0:
                    await asyncio.sleep(0)  # consensus and the API run in between
                check = self._check_header(state, doc, lo, hi, ours)
                if check is not None and check.height not in out:
                    out[check.height] = check
        return out

    def _check_header(
        self, state: PeerState, doc: object, lo: int, hi: int, ours: Mapping[int, bytes]
    ) -> HeightCheck | None:
        try:
            header = parse_header_json(doc)
        except EvidenceError as e:
            height = doc.get("height") if isinstance(doc, dict) else None
            hh = height if type(height) is int and lo <= height <= hi else lo
            return HeightCheck(hh, ours.get(hh), None, f"malformed header: {e.reason}")
        height = header.height
        if not lo <= height <= hi:
            state.problem("unexpected-block", height, f"asked for {lo}..{hi}, got block {height}")
            return None
        our_hash = ours.get(height)
        if our_hash is None:
            return None  # ours is being repaired: compare later
        state.counters.headers_verified += 1
        problem = check_served_header(
            header, self.verifier.consortium, verified_commits=self.verifier.commits
        )
        return HeightCheck(height, our_hash, header.block_hash, problem)

    async def _check_blocks(
        self, client: PeerClient, state: PeerState, heights: Sequence[int]
    ) -> dict[int, HeightCheck]:
        out: dict[int, HeightCheck] = {}
        for lo, hi in contiguous_ranges(heights, max_len=PAGE_BLOCKS):
            docs = await client.blocks(state.url, lo, hi - lo + 1)
            for check in await self._check_served(state, docs, lo, hi):
                out.setdefault(check.height, check)
        return out

    def _settle(
        self, state: PeerState, height: int, header: HeightCheck | None, full: HeightCheck | None
    ) -> HeightCheck | None:
        """One height's outcome from its header check and its whole-block check (either may
        be missing). A whole block that fails stands (it made the evidence); a header that
        fails while its whole block is fine (or was not served) stands too, as a problem
        without evidence (exhibits are whole blocks); a divergence seen in a header alone is
        confirmed against our own verified block first."""
        bad = (INVALID, DIVERGED)
        if full is not None and full.outcome in bad:
            return full
        if header is None or header.outcome not in bad:
            if full is not None and full.outcome == AGREE:
                return full
            return header or full
        whole = " (the whole block it serves there is ours)" if full is not None else ""
        if header.outcome == INVALID:
            state.problem(
                INVALID, height, f"served header does not verify: {header.problem}{whole}"
            )
            return header
        ours = full.ours if full is not None and full.ours else self._our_verified_hash(height)
        if ours is None:
            return None  # ours is being repaired: compare later
        check = HeightCheck(height, ours, header.theirs)
        if check.outcome == AGREE:
            # The peer agrees with our verified block: what disagreed was our hash column (the
            # verified hashes we remember cannot). Repair rewrites it with a verified copy.
            self.repairer.quarantine(
                height, "the store's hash column does not match the block stored there"
            )
        elif check.outcome == DIVERGED:
            theirs = header.theirs.hex()[:16] if header.theirs else "?"
            state.problem(
                DIVERGED,
                height,
                f"served header {theirs} is validly certified but differs from ours "
                f"{ours.hex()[:16]}{whole}",
            )
        return check

    @staticmethod
    def _count(
        state: PeerState, checks: Iterable[HeightCheck], *, new: set[int], sampled: set[int]
    ) -> None:
        counters = state.counters
        for c in checks:
            outcome = c.outcome
            if outcome == UNKNOWN:
                continue
            if c.height in new:
                counters.blocks_compared += 1
            elif c.height in sampled:
                counters.history_samples += 1
            if outcome == INVALID:
                counters.invalid_blocks += 1
            elif outcome == DIVERGED:
                counters.divergent_blocks += 1

    def _head_mismatch(self, status: PeerStatus, our_height: int) -> list[int]:
        if status.head_hash is None or not 1 <= status.height <= our_height:
            return []
        ours = self._our_verified_hash(status.height)
        return [] if ours is None or ours == status.head_hash else [status.height]

    def _check_status_head(
        self, state: PeerState, status: PeerStatus, checks: list[HeightCheck]
    ) -> None:
        """A peer whose status names a head other than the block it serves at that height is
        inconsistent (an honest node's block at a height never changes)."""
        if status.head_hash is None:
            return
        served = next((c for c in checks if c.height == status.height), None)
        if served is not None and served.theirs is not None and served.theirs != status.head_hash:
            state.problem(
                "status-inconsistent",
                status.height,
                "GET /status names a head hash other than the block it serves there",
            )
            # A divergence found at that height already says more.
            state.open_issues.setdefault(status.height, INVALID)

    async def _check_served(
        self, state: PeerState, docs: list[object], lo: int, hi: int
    ) -> list[HeightCheck]:
        checks: list[HeightCheck] = []
        seen: set[int] = set()
        for doc in docs:
            # One block's checks at a time: consensus and the API run in between.
            await asyncio.sleep(0)
            try:
                served = parse_block_json(doc)
            except EvidenceError as e:
                height = doc.get("height") if isinstance(doc, dict) else None
                hh = height if type(height) is int and lo <= height <= hi else lo
                checks.append(HeightCheck(hh, None, None, f"malformed block: {e.reason}"))
                self._invalid_served(
                    state, hh, f"malformed block: {e.reason}", _malformed_exhibit(doc)
                )
                continue
            if not lo <= served.height <= hi or served.height in seen:
                state.problem(
                    "unexpected-block",
                    served.height,
                    f"asked for {lo}..{hi}, got block {served.height}",
                )
                continue
            seen.add(served.height)
            check = self._compare(state, served, doc)
            if check is not None:
                checks.append(check)
        return checks

    def _compare(self, state: PeerState, served: ServedBlock, doc: object) -> HeightCheck | None:
        height = served.height
        try:
            ours = self.repairer.read_block(height)
        except BlockUnavailable:
            return None  # our copy is bad: being repaired; compare later
        if ours is None:
            return None
        known = None
        if ours.block_hash == served.block_hash:
            # Same hash: tx ids, root and header are bound to ours; only signatures could differ.
            known = {env.tx_id: env.tx.signature for env in ours.txs}
        problem = check_served_block(
            served,
            self.verifier.consortium,
            registry=self.verifier.registry,
            known_signatures=known,
            verified_commits=self.verifier.commits,
        )
        state.counters.blocks_verified += 1
        check = HeightCheck(height, ours.block_hash, served.block_hash, problem)
        if problem:
            self._invalid_served(state, height, problem, block_exhibit_text(doc))
        elif check.outcome == DIVERGED:
            self._diverged(state, served, ours, doc)
        return check

    # -- findings ----------------------------------------------------------------------------

    def _invalid_served(self, state: PeerState, height: int, problem: str, exhibit: str) -> None:
        state.problem(INVALID, height, problem)
        if self._evidential(exhibit, height) and self._record(
            kind=KIND_INVALID,
            height=height,
            accused=state.peer_id,
            source=state.url,
            reason=f"replica {state.peer_id} served block {height} that does not verify: {problem}",
            exhibits=[Exhibit(f"served by replica {state.peer_id}", exhibit)],
        ):
            state.counters.evidence_recorded += 1

    def _diverged(self, state: PeerState, served: ServedBlock, ours: Block, doc: object) -> None:
        height = served.height
        if served.digest == ours.digest:
            # Same batch on a different history: the fork is lower down; that height's own
            # comparison carries the evidence.
            state.problem(
                DIVERGED,
                height,
                "same batch as ours on a different history (the chains diverge below this height)",
            )
            return
        state.problem(
            DIVERGED,
            height,
            f"validly certified block {served.block_hash.hex()[:16]} differs from "
            f"ours {ours.block_hash.hex()[:16]}",
        )
        if self._record(
            kind=KIND_CONFLICT,
            height=height,
            accused=state.peer_id,
            source=state.url,
            reason=f"two validly certified blocks at height {height}: replica "
            f"{state.peer_id} serves {served.block_hash.hex()}, replica {self.node_id} holds "
            f"{ours.block_hash.hex()}",
            exhibits=[
                Exhibit(f"served by replica {state.peer_id}", block_exhibit_text(doc)),
                Exhibit(f"held by replica {self.node_id}", block_exhibit_text(block_to_json(ours))),
            ],
        ):
            state.counters.evidence_recorded += 1

    def _report_invalid_repair(
        self, peer_id: int, url: str, height: int, problem: str, exhibit: str | None
    ) -> None:
        state = self._states.get(peer_id)
        if state is not None:
            state.problem("bad-repair-copy", height, problem)
        if exhibit is not None and self._evidential(exhibit, height):
            self._record(
                kind=KIND_INVALID,
                height=height,
                accused=peer_id,
                source=url,
                reason=f"replica {peer_id} served block {height} for repair that does not "
                f"verify: {problem}",
                exhibits=[Exhibit(f"served by replica {peer_id}", exhibit)],
            )

    def _evidential(self, exhibit: str, height: int) -> bool:
        """Only a block that is invalid as exhibited (without payloads) makes evidence; a bad
        payload alone stays a logged problem, since evidence never carries payloads."""
        return (
            exhibit_problem(
                exhibit, self.verifier.consortium, registry=self.verifier.registry, height=height
            )
            is not None
        )

    def _record(
        self,
        *,
        kind: str,
        height: int,
        accused: int,
        source: str,
        reason: str,
        exhibits: list[Exhibit],
    ) -> bool:
        try:
            record = make_evidence(
                self._signer,
                kind=kind,
                height=height,
                reporter=self.node_id,
                accused=accused,
                source=source,
                reason=reason,
                exhibits=exhibits,
            )
        except ValueError as e:
            log.error("cannot record evidence at height %d: %s", height, e)
            return False
        if not self.audit_log.add_evidence(record):
            return False  # the same finding is already on record
        self.audit_log.add_event("evidence", height, f"{kind} against replica {accused}: {reason}")
        log.warning("evidence recorded: %s", reason)
        return True

    # -- reads for the API -------------------------------------------------------------------

    def note_written(self, blocks: Sequence[Block], raws: Sequence[bytes]) -> None:
        """Blocks this node just committed and wrote: built from data its consensus core had
        verified, so the bytes written count as verified; a later change of any of them on
        disk no longer matches and is verified (and caught) on the next read."""
        verifier = self.verifier
        for block, raw in zip(blocks, raws, strict=True):
            fingerprint = hashlib.sha256(raw).digest()
            verifier.remember(block.height, fingerprint, block)
            # Peers' audits and the bench's observer are about to read its header.
            verifier.remember_header(block_header(block, with_tx_ids=True))
            # Its certificate too: peers' copies of this block carry the same commits.
            verifier.commits.add_commits(block.commits, verifier.consortium)

    def read_block(self, height: int, raw: bytes | None = None) -> Block | None:
        """What the API serves: the verified block, None if absent; BlockUnavailable (answer
        ``e.response()``, a 503) if quarantined or failing verification now. ``raw``: the
        stored bytes, if the caller has just read them."""
        return self.repairer.read_block(height, raw)

    def read_blocks(self, from_height: int, limit: int) -> list[Block]:
        """Verified blocks from ``from_height`` (at most ``limit``), stopping before the first
        unavailable one; BlockUnavailable if that is the very first."""
        out: list[Block] = []
        head_height, _ = self.store.head()
        for height in range(max(1, from_height), min(head_height, from_height + limit - 1) + 1):
            try:
                block = self.read_block(height)
            except BlockUnavailable:
                if out:
                    break
                raise
            if block is None:
                break
            out.append(block)
        return out

    def read_headers(
        self, from_height: int, limit: int, *, with_tx_ids: bool = False
    ) -> list[BlockHeader]:
        """Headers of the verified blocks from ``from_height`` (at most ``limit``), with their
        tx ids if asked, stopping before the first unavailable block; BlockUnavailable if that
        is the very first. The newest blocks' headers come from memory; others cost a read,
        a sha256 and a light decode when their bytes are unchanged since verified."""
        head_height, _ = self.store.head()
        last = min(head_height, from_height + limit - 1)
        if from_height < 1 or last < from_height:
            return []
        out: list[BlockHeader] = []
        stored: dict[int, bytes] | None = None
        for height in range(from_height, last + 1):
            try:
                header = self.repairer.recent_header(height, with_tx_ids=with_tx_ids)
                if header is None:
                    if stored is None:  # one range query for the rest of the page
                        stored = dict(self.store.get_blocks_raw(height, last - height + 1))
                    raw = stored.get(height)
                    if raw is None:
                        break
                    header = self.repairer.read_header(height, raw, with_tx_ids=with_tx_ids)
            except BlockUnavailable:
                if out:
                    break
                raise
            out.append(header)
        return out

    # -- reports -----------------------------------------------------------------------------

    def agreement(self) -> str:
        """The worst agreement over all peers (unknown before the first round)."""
        states = [s.agreement for s in self._states.values()]
        return max(states, key=lambda a: _SEVERITY[a]) if states else AGREE

    def report(self) -> dict[str, Any]:
        height, head = self.store.head()
        return {
            "node": self.node_id,
            "height": height,
            "head_hash": head.hex(),
            "agreement": self.agreement(),
            "interval_ms": self.settings.interval_ms,
            "rounds": self.rounds,
            "round_errors": self.round_errors,
            "last_round_ms": self.last_round_ms,
            "peers": [s.to_json() for s in self._states.values()],
            "local": {
                **self.repairer.status(),
                "scrub": {
                    "next_height": self._scrub_next,
                    "cycles": self._scrub_cycles,
                    "blocks_checked": self._scrubbed,
                    "cpu_ms": round(self._scrub_cpu_ms, 1),
                    "cpu_permille": self.settings.scrub_cpu_permille,
                },
                "verifier": self.verifier.status(),
                "startup": None if self.startup is None else self.startup.to_json(),
            },
            "evidence": {
                "count": self.audit_log.evidence_count(),
                "by_kind": self.audit_log.evidence_by_kind(),
                "latest": self.audit_log.evidence_summaries(10),
            },
            "events": [e.to_json() for e in self.audit_log.events(20)],
            "event_counts": self.audit_log.event_counts(),
        }

    def evidence(self, limit: int = 50, before: int | None = None) -> list[dict[str, Any]]:
        return self.audit_log.evidence(limit, before_id=before)


# ---------------------------------------------------------------------------------------------
# HTTP


def _int_param(
    request: web.Request, name: str, default: int | None, lo: int, hi: int
) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 12 or not lo <= int(raw) <= hi:
        raise web.HTTPBadRequest(
            text=json.dumps(
                {
                    "error": "bad query parameter",
                    "detail": f"{name} must be an integer in {lo}..{hi}",
                }
            ),
            content_type="application/json",
        )
    return int(raw)


def audit_routes(auditor: Auditor | Callable[[], Auditor | None]) -> list[web.RouteDef]:
    """``GET /audit`` (the report) and ``GET /audit/evidence?limit=&before=`` (records, newest
    first; ``before`` pages by the records' ``seq``).

    ``auditor`` may be a callable returning the current auditor (or None while the node is not
    started: 503), for an app built before the node opens its store.
    """

    def current() -> Auditor:
        a = auditor if isinstance(auditor, Auditor) else auditor()
        if a is None:
            raise web.HTTPServiceUnavailable(
                text=json.dumps({"error": "audit not running", "detail": "node not started"}),
                content_type="application/json",
            )
        return a

    async def get_audit(request: web.Request) -> web.Response:
        return web.json_response(current().report())

    async def get_evidence(request: web.Request) -> web.Response:
        a = current()
        limit = _int_param(request, "limit", 50, 1, MAX_EVIDENCE_PAGE)
        before = _int_param(request, "before", None, 1, 1 << 62)
        assert limit is not None
        return web.json_response(
            {"count": a.audit_log.evidence_count(), "evidence": a.evidence(limit, before)}
        )

    return [web.get("/audit", get_audit), web.get("/audit/evidence", get_evidence)]


__all__ = [
    "AGREE",
    "AGREEMENTS",
    "DIVERGED",
    "INVALID",
    "LAGGING",
    "UNREACHABLE",
    "AuditSettings",
    "Auditor",
    "BlockUnavailable",
    "ChainVerifier",
    "HashColumn",
    "HeightCheck",
    "PeerClient",
    "PeerError",
    "PeerStatus",
    "Repairer",
    "StartupReport",
    "Verdict",
    "apply_checks",
    "audit_routes",
    "classify",
    "contiguous_ranges",
    "parse_status",
    "plan_heights",
    "startup_verify",
    "verify_on_read",
]
