"""Blocks and headers as a peer serves them over its HTTP API, parsed strictly and verified.

:func:`parse_block_json` / :func:`check_served_block` parse and verify a block in the API's
JSON form (``node.ledger.block_to_json``), with or without payloads; :func:`parse_header_json`
/ :func:`check_served_header` the light form without transactions
(``node.ledger.header_to_json``). Parsing is the ledger's one parser of those forms
(``node.ledger.parse_block_doc`` / ``parse_header_doc``); here its results become values whose
every claim is re-checked. The audit compares peers' headers in every round and fetches whole
blocks only to look closer (and to exhibit them as evidence: exhibits are always whole blocks,
so a third party can recompute every id and root).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from consensus.hashing import batch_digest, chain_link, merkle_root
from consensus.messages import NO_PROPOSER, Commit
from node.audit.evidence import EvidenceError
from node.crypto import verify
from node.ledger import (
    Block,
    BlockJsonError,
    ClientRegistry,
    Transaction,
    TxEnvelope,
    VerifiedCommits,
    block_to_json,
    parse_block_doc,
    parse_header_doc,
    payload_hash,
    quorum_size,
    verify_certificate,
)


@dataclass(frozen=True, slots=True)
class ServedHeader:
    """A block header as a peer served it (``ledger.header_to_json``): no transactions.

    Nothing is trusted: :func:`check_served_header` recomputes the digest and the block hash
    and verifies the certificate. The Merkle root cannot be checked without the transactions;
    the block hash and the certificate bind it all the same.
    """

    height: int
    block_hash: bytes
    prev_hash: bytes
    merkle_root: bytes
    claimed_digest: bytes
    view: int
    proposer: int
    timestamp_ms: int
    tx_count: int
    commits: tuple[Commit, ...]

    @property
    def digest(self) -> bytes:
        """The batch digest recomputed from the header fields (what the commits must sign)."""
        return batch_digest(
            self.view, self.proposer, self.timestamp_ms, self.merkle_root, self.tx_count
        )

    @property
    def is_null(self) -> bool:
        return self.proposer == NO_PROPOSER


@dataclass(frozen=True, slots=True)
class ServedBlock:
    """A block as a peer served it in JSON: header, tx headers, certificate; payloads optional.

    Nothing here is trusted: ``claimed_*`` fields are what the document says, and
    :func:`check_served_block` recomputes everything they must agree with.
    """

    height: int
    block_hash: bytes
    prev_hash: bytes
    merkle_root: bytes
    claimed_digest: bytes
    view: int
    proposer: int
    timestamp_ms: int
    txs: tuple[Transaction, ...]
    claimed_tx_ids: tuple[bytes, ...]
    payloads: tuple[bytes | None, ...]
    commits: tuple[Commit, ...]

    @property
    def header(self) -> ServedHeader:
        return ServedHeader(
            height=self.height,
            block_hash=self.block_hash,
            prev_hash=self.prev_hash,
            merkle_root=self.merkle_root,
            claimed_digest=self.claimed_digest,
            view=self.view,
            proposer=self.proposer,
            timestamp_ms=self.timestamp_ms,
            tx_count=len(self.txs),
            commits=self.commits,
        )

    @property
    def digest(self) -> bytes:
        """The batch digest recomputed from the header fields (what the commits must sign)."""
        return self.header.digest

    @property
    def is_null(self) -> bool:
        return self.proposer == NO_PROPOSER

    def to_block(self) -> Block:
        """The ledger block, if every payload was served; EvidenceError otherwise."""
        envs = []
        for i, (tx, payload) in enumerate(zip(self.txs, self.payloads, strict=True)):
            if payload is None:
                raise EvidenceError(f"tx {i} was served without its payload")
            envs.append(TxEnvelope(tx=tx, payload=payload))
        return Block(
            height=self.height,
            prev_hash=self.prev_hash,
            block_hash=self.block_hash,
            merkle_root=self.merkle_root,
            view=self.view,
            proposer=self.proposer,
            timestamp_ms=self.timestamp_ms,
            txs=tuple(envs),
            commits=self.commits,
        )


def parse_block_json(doc: object) -> ServedBlock:
    """Strictly parse a block in ``block_to_json`` form, with or without payloads
    (``node.ledger.parse_block_doc``); EvidenceError naming the first problem.

    Checks structure only (types, sizes, bounds); validity is :func:`check_served_block`'s job.
    """
    try:
        parsed = parse_block_doc(doc)
    except BlockJsonError as e:
        raise EvidenceError(e.reason) from None
    head = parsed.head.header
    return ServedBlock(
        height=head.height,
        block_hash=head.block_hash,
        prev_hash=head.prev_hash,
        merkle_root=head.merkle_root,
        claimed_digest=parsed.head.claimed_digest,
        view=head.view,
        proposer=head.proposer,
        timestamp_ms=head.timestamp_ms,
        txs=tuple(t.tx for t in parsed.txs),
        claimed_tx_ids=tuple(t.claimed_id for t in parsed.txs),
        payloads=tuple(t.payload for t in parsed.txs),
        commits=head.commits,
    )


def parse_header_json(doc: object) -> ServedHeader:
    """Strictly parse a header in ``header_to_json`` form (a whole block document parses too:
    its transactions are ignored, ``tx_count`` stands for them; ``node.ledger.parse_header_doc``);
    EvidenceError naming the first problem. Structure only: validity is
    :func:`check_served_header`'s job."""
    try:
        parsed = parse_header_doc(doc)
    except BlockJsonError as e:
        raise EvidenceError(e.reason) from None
    head = parsed.header
    return ServedHeader(
        height=head.height,
        block_hash=head.block_hash,
        prev_hash=head.prev_hash,
        merkle_root=head.merkle_root,
        claimed_digest=parsed.claimed_digest,
        view=head.view,
        proposer=head.proposer,
        timestamp_ms=head.timestamp_ms,
        tx_count=head.tx_count,
        commits=head.commits,
    )


def served_from_block(block: Block) -> ServedBlock:
    """A local block in the same form as a served one (for like-for-like comparison)."""
    return parse_block_json(block_to_json(block))


def check_served_header(
    header: ServedHeader,
    consortium: Sequence[bytes],
    *,
    verified_commits: VerifiedCommits | None = None,
) -> str | None:
    """None if the served header is internally valid: digest and block hash recomputed from its
    fields, and a commit certificate (>= quorum of distinct consortium members) for that
    digest. A few signatures at most, and none already in ``verified_commits``."""
    return (
        _proposer_problem(header, len(consortium))
        or _hash_problem(header)
        or _certificate_problem(header, consortium, verified_commits)
    )


def check_served_block(
    block: ServedBlock,
    consortium: Sequence[bytes],
    *,
    registry: ClientRegistry | None = None,
    known_signatures: Mapping[bytes, bytes] | None = None,
    verified_commits: VerifiedCommits | None = None,
) -> str | None:
    """None if the served block is internally valid; else the first problem found.

    The same checks as ``ledger.verify_block`` minus the link to the previous block (a caller
    that knows it compares ``prev_hash`` itself) and minus payload policy: tx ids recomputed
    from the tx headers, the Merkle root, the batch digest, the block hash, the commit
    certificate, every tx signature (under the tx's own client key; with ``registry`` also
    that the key is registered for the hospital) and, where served, each payload's hash.

    ``known_signatures`` maps tx ids to signatures already verified elsewhere (our own copy of
    the block), so an honest peer's copy of a block we hold costs no tx signature checks;
    ``verified_commits`` likewise spares commit signatures already checked.
    Cheap checks run first; signatures last.
    """
    header = block.header
    tx_ids = tuple(tx.tx_id for tx in block.txs)
    return (
        _proposer_problem(header, len(consortium))
        or _tx_content_problem(block, tx_ids)
        or _hash_problem(header)
        or _certificate_problem(header, consortium, verified_commits)
        or _tx_signature_problem(block, tx_ids, registry, known_signatures or {})
    )


def _proposer_problem(header: ServedHeader, members: int) -> str | None:
    if header.proposer != NO_PROPOSER and not 0 <= header.proposer < members:
        return f"proposer {header.proposer} is not a consortium member"
    if header.is_null and header.tx_count:
        return "null block carries transactions"
    return None


def _tx_content_problem(block: ServedBlock, tx_ids: tuple[bytes, ...]) -> str | None:
    """Tx ids against their claims and each other, served payloads, the Merkle root."""
    for i, (tx_id, claimed) in enumerate(zip(tx_ids, block.claimed_tx_ids, strict=True)):
        if tx_id != claimed:
            return f"tx {i} ({claimed.hex()[:16]}) does not match its tx_id"
    if len(set(tx_ids)) != len(tx_ids):
        return "duplicate tx id in block"
    for i, (tx, payload) in enumerate(zip(block.txs, block.payloads, strict=True)):
        if payload is not None and payload_hash(payload) != tx.payload_hash:
            return f"tx {i} ({tx_ids[i].hex()[:16]}): payload hash mismatch"
    if merkle_root(tx_ids) != block.merkle_root:
        return "merkle root does not match the transactions"
    return None


def _hash_problem(header: ServedHeader) -> str | None:
    digest = header.digest
    if digest != header.claimed_digest:
        return "digest does not match the header"
    if chain_link(header.height, header.prev_hash, digest) != header.block_hash:
        return "block hash does not match the header"
    return None


def _certificate_problem(
    header: ServedHeader, consortium: Sequence[bytes], verified: VerifiedCommits | None
) -> str | None:
    return verify_certificate(
        header.height,
        header.digest,
        header.commits,
        consortium,
        quorum_size(len(consortium)),
        verified=verified,
    )


def _tx_signature_problem(
    block: ServedBlock,
    tx_ids: tuple[bytes, ...],
    registry: ClientRegistry | None,
    known: Mapping[bytes, bytes],
) -> str | None:
    for i, (tx_id, tx) in enumerate(zip(tx_ids, block.txs, strict=True)):
        if registry is not None and registry.hospital_of(tx.client_key) != tx.hospital:
            return f"tx {i} ({tx_id.hex()[:16]}): client key not registered for {tx.hospital!r}"
        if known.get(tx_id) == tx.signature:
            continue
        if not verify(tx.client_key, tx.header_bytes(), tx.signature):
            return f"tx {i} ({tx_id.hex()[:16]}): bad signature"
    return None
