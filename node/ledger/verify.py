"""Verification: the one rule for each check of a certificate, a block, a chain.

Anyone holding the consortium's public keys can verify a chain offline with these
(``medchain verify``, the audit, state transfer, the history checker): hash links, Merkle
roots, block hashes, commit certificates, transactions, and at-most-once execution
(``consensus.execution``) over the chain.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from consensus.execution import RepeatCheck, RepeatVerdict
from consensus.hashing import GENESIS_HASH, chain_link, merkle_root
from consensus.messages import NO_PROPOSER, Commit
from node.crypto import domain_of, verify
from node.ledger.block import Block
from node.ledger.tx import MAX_PAYLOAD_BYTES, ClientRegistry, check_tx


def quorum_size(n: int) -> int:
    """ceil((n+f+1)/2) with f = (n-1)//3: any two quorums share an honest replica.

    For n = 3f+1 this is the familiar 2f+1.
    """
    if n < 1:
        raise ValueError(f"consortium size must be positive, got {n}")
    f = (n - 1) // 3
    return (n + f + 2) // 2


class VerifiedCommits:
    """Commit signatures already verified, so that each is checked once however many
    certificates repeat it (every holder of block h carries copies of the same deterministic
    Ed25519 commits). A bounded LRU of 32-byte keys, each the sha256 of the signer's public key,
    the signed bytes and the signature: a hit is only possible for the very same signature over
    the very same bytes by the very same key, so skipping it cannot change any verdict."""

    __slots__ = ("_capacity", "_keys", "hits", "misses")

    def __init__(self, capacity: int = 65_536) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self._capacity = capacity
        self._keys: OrderedDict[bytes, None] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(public: bytes, signing_bytes: bytes, signature: bytes) -> bytes:
        return hashlib.sha256(public + signature + signing_bytes).digest()

    def known(self, key: bytes) -> bool:
        if key in self._keys:
            self._keys.move_to_end(key)
            self.hits += 1
            return True
        self.misses += 1
        return False

    def add(self, key: bytes) -> None:
        self._keys[key] = None
        self._keys.move_to_end(key)
        while len(self._keys) > self._capacity:
            self._keys.popitem(last=False)

    def add_commits(self, commits: Iterable[Commit], consortium_publics: Sequence[bytes]) -> None:
        """Remember commits verified elsewhere (a certificate this node's consensus formed)."""
        domain = domain_of(consortium_publics)
        for c in commits:
            if 0 <= c.replica < len(consortium_publics):
                signed = domain + c.signing_bytes()
                self.add(self.key(consortium_publics[c.replica], signed, c.signature))

    def __len__(self) -> int:
        return len(self._keys)


def verify_certificate(
    seq: int,
    digest: bytes,
    commits: Sequence[Commit],
    consortium_publics: Sequence[bytes],
    quorum: int,
    *,
    verified: VerifiedCommits | None = None,
) -> str | None:
    """None if ``commits`` certify (seq, digest): >= quorum valid commits, one view, distinct
    consortium members. A certificate with any bad commit in it is rejected as a whole: an
    honest node never stores one, so it can only come from tampering. Signatures found in
    ``verified`` are not checked again; those that verify are added to it."""
    if not commits:
        return "certificate is empty"
    if len(commits) < quorum:
        return f"certificate has {len(commits)} commits, quorum is {quorum}"
    view = commits[0].view
    seen: set[int] = set()
    for c in commits:
        if not 0 <= c.replica < len(consortium_publics):
            return f"commit from unknown replica {c.replica}"
        if c.replica in seen:
            return f"duplicate commit from replica {c.replica}"
        seen.add(c.replica)
        if c.seq != seq:
            return f"commit from replica {c.replica} is for seq {c.seq}, not {seq}"
        if c.digest != digest:
            return f"commit from replica {c.replica} is for another digest"
        if c.view != view:
            return f"commits are for different views ({view} and {c.view})"
    # Signatures last: they are the expensive part. Each binds the cluster id (its domain).
    domain = domain_of(consortium_publics)
    for c in commits:
        public = consortium_publics[c.replica]
        signed = domain + c.signing_bytes()
        key = b""
        if verified is not None:
            key = verified.key(public, signed, c.signature)
            if verified.known(key):
                continue
        if not verify(public, signed, c.signature):
            return f"bad commit signature from replica {c.replica}"
        if verified is not None:
            verified.add(key)
    return None


def verify_block(
    block: Block,
    prev_hash: bytes,
    consortium: Sequence[bytes],
    registry: ClientRegistry,
    *,
    max_payload: int = MAX_PAYLOAD_BYTES,
    verified_commits: VerifiedCommits | None = None,
) -> str | None:
    """None if ``block`` is a valid successor of ``prev_hash``; else the first problem found.

    Checks: the link to ``prev_hash``, the Merkle root recomputed from the txs, the block hash
    recomputed from the header, the commit certificate, and every transaction.
    """
    return verify_block_header(
        block, prev_hash, consortium, verified_commits=verified_commits
    ) or verify_txs(block, registry, max_payload=max_payload)


def verify_block_header(
    block: Block,
    prev_hash: bytes,
    consortium: Sequence[bytes],
    *,
    verified_commits: VerifiedCommits | None = None,
) -> str | None:
    """:func:`verify_block` but for the transactions' own checks (:func:`verify_txs`): the
    link, the Merkle root over the tx ids, the block hash and the certificate."""
    if block.prev_hash != prev_hash:
        return "prev_hash does not link to the previous block"
    if block.proposer != NO_PROPOSER and not 0 <= block.proposer < len(consortium):
        return f"proposer {block.proposer} is not a consortium member"
    if block.is_null and block.txs:
        return "null block carries transactions"
    tx_ids = block.tx_ids
    if len(set(tx_ids)) != len(tx_ids):
        return "duplicate tx id in block"
    if merkle_root(tx_ids) != block.merkle_root:
        return "merkle root does not match the transactions"
    digest = block.digest
    if chain_link(block.height, prev_hash, digest) != block.block_hash:
        return "block hash does not match the header"
    return verify_certificate(
        block.height,
        digest,
        block.commits,
        consortium,
        quorum_size(len(consortium)),
        verified=verified_commits,
    )


def verify_txs(
    block: Block,
    registry: ClientRegistry,
    *,
    max_payload: int = MAX_PAYLOAD_BYTES,
    start: int = 0,
    stop: int | None = None,
) -> str | None:
    """The first problem of the block's transactions ``start..stop`` (all by default): fields,
    payload hash, registered client, signature. Ranges let a caller spread one block's
    signature checks over several steps."""
    txs = block.txs
    for i in range(start, len(txs) if stop is None else min(stop, len(txs))):
        env = txs[i]
        problem = check_tx(env, registry, max_payload=max_payload)
        if problem:
            return f"tx {i} ({env.tx_id.hex()[:16]}): {problem}"
    return None


@dataclass(frozen=True, slots=True)
class ChainReport:
    ok: bool
    height: int
    """Height of the last block that verified (0 if none)."""
    head_hash: bytes
    """Hash of that block (GENESIS_HASH if none)."""
    first_bad_height: int | None
    reason: str | None
    duplicate_txs: int = 0
    """Transactions repeated in a re-issued batch: no-ops, counted at their first height."""


def verify_chain(
    blocks: Iterable[Block],
    consortium: Sequence[bytes],
    registry: ClientRegistry,
    *,
    max_payload: int = MAX_PAYLOAD_BYTES,
) -> ChainReport:
    """Verify a chain from genesis: contiguous heights from 1, hash links, every block, and
    at-most-once execution. Stops at the first bad block.

    A transaction id may reappear in a later certified block only inside a re-issued batch:
    PBFT's new-view re-issues a batch prepared in an old view even after some of its
    transactions committed elsewhere. Such a repeat is a no-op (the transaction counts at its
    first height) and is counted; a repeat in a batch proposed fresh in the view that certified
    it is a bad block (:func:`block_repeats`).

    Keeps one 32-byte id and its height per transaction in memory (about 120 MB per million).
    """
    height, head = 0, GENESIS_HASH
    repeats = RepeatCheck[bytes]()
    for block in blocks:
        problem = _chain_step_problem(block, height, head, consortium, registry, max_payload)
        if problem is None:
            problem = block_repeats(repeats, block).problem
        if problem:
            return ChainReport(False, height, head, height + 1, problem, repeats.repeats)
        height, head = block.height, block.block_hash
    return ChainReport(True, height, head, None, None, repeats.repeats)


def _chain_step_problem(
    block: Block,
    height: int,
    head: bytes,
    consortium: Sequence[bytes],
    registry: ClientRegistry,
    max_payload: int,
) -> str | None:
    if block.height != height + 1:
        return f"expected height {height + 1}, found {block.height}"
    return verify_block(block, head, consortium, registry, max_payload=max_payload)


def certificate_view(block: Block) -> int:
    """The view of the block's commit certificate (one view, by :func:`verify_certificate`);
    the batch's own view for a block without commits (no verified chain holds one)."""
    return block.commits[0].view if block.commits else block.view


def block_repeats(check: RepeatCheck[bytes], block: Block) -> RepeatVerdict[bytes]:
    """The repeat rule (``consensus.execution``) on the next block of a chain: feed a chain's
    blocks in height order to one ``RepeatCheck[bytes]()``. The verdict counts legitimate
    repeats and its ``problem`` names a forbidden one (tx, both heights), else None."""
    return check.observe(block.height, block.view, certificate_view(block), block.tx_ids)
