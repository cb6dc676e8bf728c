"""What this node has verified of its own stored chain: the one cache, and the checks that fill it.

:class:`VerifiedCache` is the process's one memory of verified things on the read path:

- per height, the sha256 of the stored bytes that verified, with the block's hash and prev_hash
  (LRU, at most ``heights`` entries, ~150 bytes each): re-reading unchanged bytes costs one
  hash, and any changed byte forces a full verification;
- the headers (with tx ids) of the newest blocks this node wrote (at most ``RECENT_HEADERS``),
  served to peers' audits and observers without a read or a decode;
- commit signatures once verified (``ledger.VerifiedCommits``, at most ``commits`` keys), seeded
  with the certificates this node formed itself, so peers' copies of a block usually cost no
  signature check.

:class:`ChainVerifier` verifies stored blocks against the consortium's keys and the chain
around them (``ledger.verify_block`` and friends) and remembers what passed in that cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections import OrderedDict
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from consensus.hashing import GENESIS_HASH, chain_link, merkle_root
from node.codec import CodecError
from node.crypto import as_replica_keys
from node.ledger import (
    HARD_MAX_PAYLOAD_BYTES,
    Block,
    BlockHeader,
    ClientRegistry,
    VerifiedCommits,
    block_header,
    decode_block,
    decode_block_header,
    encode_block,
    payload_hash,
    verify_block,
    verify_block_header,
    verify_txs,
)
from node.store import Store

RECENT_HEADERS: Final = 256
"""Headers (with tx ids) of the newest blocks kept for serving."""
VERIFIED_BLOCKS: Final = 16_384
"""Default bound of the cache's verified blocks (``ReadSettings.verified_cache``)."""
TXS_PER_STEP: Final = 32
"""Transaction signatures checked in one step of :meth:`ChainVerifier.verify_steps` (~2-3 ms)."""


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
class VerifiedBlock:
    fingerprint: bytes
    """sha256 of the stored bytes that verified."""
    block_hash: bytes
    prev_hash: bytes


class VerifiedCache:
    """The one bounded cache of what the read path has verified (see the module docstring)."""

    def __init__(self, *, heights: int = VERIFIED_BLOCKS, commits: int = 65_536) -> None:
        if heights < 1:
            raise ValueError("cache_size must be positive")
        self._capacity = heights
        self._blocks: OrderedDict[int, VerifiedBlock] = OrderedDict()
        self._headers: OrderedDict[int, BlockHeader] = OrderedDict()
        self.commits = VerifiedCommits(commits)
        """Commit signatures verified so far (ours, stored blocks', peers')."""
        self.hits = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def lookup(self, height: int, fingerprint: bytes) -> VerifiedBlock | None:
        """The entry if exactly these bytes verified at ``height`` (counts as a hit)."""
        entry = self._blocks.get(height)
        if entry is None or entry.fingerprint != fingerprint:
            return None
        self._blocks.move_to_end(height)
        self.hits += 1
        return entry

    def get(self, height: int) -> VerifiedBlock | None:
        """The entry of ``height`` whatever its stored bytes are now (no LRU update)."""
        return self._blocks.get(height)

    def remember(self, height: int, fingerprint: bytes, block: Block) -> None:
        self._blocks[height] = VerifiedBlock(fingerprint, block.block_hash, block.prev_hash)
        self._blocks.move_to_end(height)
        while len(self._blocks) > self._capacity:
            self._blocks.popitem(last=False)

    def remember_header(self, header: BlockHeader) -> None:
        self._headers[header.height] = header
        self._headers.move_to_end(header.height)
        while len(self._headers) > RECENT_HEADERS:
            self._headers.popitem(last=False)

    def header(self, height: int) -> BlockHeader | None:
        return self._headers.get(height)

    def forget(self, height: int) -> None:
        self._blocks.pop(height, None)
        self._headers.pop(height, None)

    def drop(self, height: int) -> None:
        """Forget the verified bytes of ``height`` (they just failed); its header stays."""
        self._blocks.pop(height, None)


class ChainVerifier:
    """Verifies stored blocks against the consortium's keys and the chain around them.

    The hash a verified block had stays trusted even if its bytes change later (blocks are
    immutable): neighbours are checked against it.
    """

    def __init__(
        self,
        consortium: Sequence[bytes],
        registry: ClientRegistry,
        *,
        cache_size: int = VERIFIED_BLOCKS,
        max_payload: int = HARD_MAX_PAYLOAD_BYTES,
        commits_cache: int = 65_536,
    ) -> None:
        self.consortium = as_replica_keys(consortium)
        self.registry = registry
        self.cache = VerifiedCache(heights=cache_size, commits=commits_cache)
        # Integrity, not admission policy: accept any payload the decoder accepts, so a node
        # whose policy cap changed never calls its own history corrupt.
        self._max_payload = max_payload
        self.verified = 0
        self.failures = 0

    @property
    def commits(self) -> VerifiedCommits:
        return self.cache.commits

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
        if self.cache.lookup(height, fingerprint) is not None:
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
        cached = self.cache.lookup(height, fingerprint)
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
        if self.cache.lookup(height, fingerprint) is not None:
            with contextlib.suppress(CodecError):  # cannot fail: these bytes decoded before
                return decode_block_header(raw, with_tx_ids=with_tx_ids)
        block = self.decode_stored(height, raw)
        self._verify(store, height, block, fingerprint)
        return block_header(block, with_tx_ids=with_tx_ids)

    def recent_header(self, height: int, *, with_tx_ids: bool = False) -> BlockHeader | None:
        """The header of a block this node wrote lately, from memory (None if not kept). It is
        what the node committed and verified, whatever its stored bytes became since: serving
        it serves nothing corrupt, and the scrub and whole-block reads look after the bytes."""
        header = self.cache.header(height)
        if header is None or with_tx_ids:
            return header
        return dataclasses.replace(header, tx_ids=None)

    def known_hash(self, height: int) -> bytes | None:
        """The verified hash of block ``height`` if remembered (no I/O; None otherwise)."""
        entry = self.cache.get(height)
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
        if self.cache.lookup(height, fingerprint) is not None:
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
            problem = yield from self._block_steps(store, block)
        if store.get_block_raw(height) != raw:
            return
        self._conclude(height, fingerprint, block, problem)

    def _block_steps(self, store: Store, block: Block) -> Generator[None, None, str | None]:
        """The checks of one decoded block in steps; returns the first problem (or None)."""
        problem = verify_block_header(
            block, block.prev_hash, self.consortium, verified_commits=self.commits
        ) or self._link_problem(store, block)
        for start in range(0, len(block.txs), TXS_PER_STEP):
            if problem:
                break
            yield
            problem = verify_txs(
                block,
                self.registry,
                max_payload=self._max_payload,
                start=start,
                stop=start + TXS_PER_STEP,
            )
        return problem

    def _verify(self, store: Store, height: int, block: Block, fingerprint: bytes) -> None:
        problem = self.check_block(block, block.prev_hash) or self._link_problem(store, block)
        self._conclude(height, fingerprint, block, problem)

    def _conclude(
        self, height: int, fingerprint: bytes, block: Block | None, problem: str | None
    ) -> None:
        if problem or block is None:
            self.failures += 1
            self.cache.drop(height)
            raise BlockUnavailable(height, problem or "does not decode")
        self.verified += 1
        self.cache.remember(height, fingerprint, block)

    def _link_problem(self, store: Store, block: Block) -> str | None:
        height = block.height
        expected_prev = self.trusted_hash(store, height - 1)
        if expected_prev is not None and block.prev_hash != expected_prev:
            return f"prev_hash does not link to block {height - 1}"
        expected_hash = self.expected_hash(store, height)
        if expected_hash is not None and block.block_hash != expected_hash:
            return f"block hash does not match what block {height + 1} (or the head) links to"
        return None

    # -- what the neighbours say -------------------------------------------------------------

    def trusted_hash(self, store: Store, height: int) -> bytes | None:
        """The hash block ``height`` is known to have, for checking its successor's link:
        GENESIS_HASH for 0, a verified hash, or the hash of a self-consistent stored block
        (its hash recomputes from its header). None if nothing trustworthy is at hand: a
        single corrupted block is then never blamed on its neighbour."""
        if height == 0:
            return GENESIS_HASH
        entry = self.cache.get(height)
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
        entry = self.cache.get(height + 1)
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
            "cached": len(self.cache),
            "cache_hits": self.cache.hits,
            "verified": self.verified,
            "failures": self.failures,
            "commits_cached": len(self.commits),
            "commit_cache_hits": self.commits.hits,
            "commit_cache_misses": self.commits.misses,
        }
