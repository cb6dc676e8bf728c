"""PBFT protocol messages (Castro & Liskov, TOCS 2002, section 4) as frozen, slotted dataclasses.

Every message a replica signs has a ``signing_bytes()``: a domain tag plus msgpack of a
fixed-order tuple (never a dict). The ``signature`` field is excluded from it. Wire encoding
(tags, size limits) lives in ``node/codec``; this module only defines content and what is signed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from consensus.hashing import batch_digest, canonical, h, merkle_root

NO_PROPOSER = -1


@dataclass(frozen=True, slots=True)
class Batch:
    """An ordered batch of client transactions: the request of a PBFT pre-prepare.

    ``view`` and ``proposer`` name where the batch was first proposed; a batch re-proposed in a
    new view keeps them, so every replica derives the same block whatever view commits it.
    ``txs`` are encoded signed transactions, opaque to the core; ``tx_ids`` their ids. ``txs``
    is empty in a stripped batch (see ``stripped``).
    """

    view: int
    proposer: int
    timestamp_ms: int
    tx_ids: tuple[bytes, ...]
    txs: tuple[bytes, ...]
    _digest: bytes = field(init=False, repr=False, compare=False, default=b"")

    def digest(self) -> bytes:
        """Computed once: the Merkle root over hundreds of ids is the core's hottest hash."""
        if not self._digest:
            d = batch_digest(
                self.view,
                self.proposer,
                self.timestamp_ms,
                merkle_root(self.tx_ids),
                len(self.tx_ids),
            )
            object.__setattr__(self, "_digest", d)
        return self._digest

    @property
    def is_null(self) -> bool:
        return self.proposer == NO_PROPOSER

    @property
    def is_stripped(self) -> bool:
        """Ids without transactions: enough to check the digest, not to execute."""
        return not self.txs and bool(self.tx_ids)

    def stripped(self) -> Batch:
        """The same batch (same digest) without its transactions. View-change and new-view
        messages carry batches that are already committed in this form, which keeps them small;
        a replica lacking the transactions fetches the committed block instead."""
        if not self.txs:
            return self
        return Batch(self.view, self.proposer, self.timestamp_ms, self.tx_ids, ())


NULL_BATCH = Batch(view=0, proposer=NO_PROPOSER, timestamp_ms=0, tx_ids=(), txs=())


@dataclass(frozen=True, slots=True)
class PrePrepare:
    """<PRE-PREPARE, v, n, d>_p with the batch m beside it (section 4.2)."""

    view: int
    seq: int
    digest: bytes
    replica: int
    batch: Batch
    signature: bytes = b""

    def signing_bytes(self) -> bytes:
        return canonical(b"medchain/pre-prepare", (self.view, self.seq, self.digest, self.replica))


@dataclass(frozen=True, slots=True)
class Prepare:
    """<PREPARE, v, n, d, i>_i (section 4.2)."""

    view: int
    seq: int
    digest: bytes
    replica: int
    signature: bytes = b""

    def signing_bytes(self) -> bytes:
        return canonical(b"medchain/prepare", (self.view, self.seq, self.digest, self.replica))


@dataclass(frozen=True, slots=True)
class Commit:
    """<COMMIT, v, n, D(m), i>_i (section 4.2). 2f+1 of them form a block's commit certificate."""

    view: int
    seq: int
    digest: bytes
    replica: int
    signature: bytes = b""

    def signing_bytes(self) -> bytes:
        return canonical(b"medchain/commit", (self.view, self.seq, self.digest, self.replica))


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """<CHECKPOINT, n, d, i>_i (section 4.3); d is the chain hash after executing seq n."""

    seq: int
    state_digest: bytes
    replica: int
    signature: bytes = b""

    def signing_bytes(self) -> bytes:
        return canonical(b"medchain/checkpoint", (self.seq, self.state_digest, self.replica))


@dataclass(frozen=True, slots=True)
class PreparedProof:
    """The P_m of a view-change (section 4.4): a pre-prepare and 2f matching prepares."""

    pre_prepare: PrePrepare
    prepares: tuple[Prepare, ...]


@dataclass(frozen=True, slots=True)
class ViewChange:
    """<VIEW-CHANGE, v+1, n, C, P, i>_i (section 4.4).

    ``stable_seq``/``stable_digest`` name the replica's last stable checkpoint and
    ``checkpoint_proof`` holds the 2f+1 checkpoints proving it (empty for seq 0).
    """

    new_view: int
    stable_seq: int
    stable_digest: bytes
    checkpoint_proof: tuple[Checkpoint, ...]
    prepared: tuple[PreparedProof, ...]
    replica: int
    signature: bytes = b""

    def summary(self) -> tuple[object, ...]:
        return (
            self.new_view,
            self.stable_seq,
            self.stable_digest,
            tuple((c.replica, c.signature) for c in self.checkpoint_proof),
            tuple(
                (p.pre_prepare.view, p.pre_prepare.seq, p.pre_prepare.digest) for p in self.prepared
            ),
            self.replica,
        )

    def signing_bytes(self) -> bytes:
        return canonical(b"medchain/view-change", self.summary())

    def stripped(self) -> ViewChange:
        """Signatures cover digests only, so stripping batches keeps this view-change valid."""
        prepared = tuple(
            PreparedProof(replace(p.pre_prepare, batch=p.pre_prepare.batch.stripped()), p.prepares)
            for p in self.prepared
        )
        return replace(self, prepared=prepared)

    def ref(self) -> bytes:
        """A short binding reference to this signed view-change (used inside new-view)."""
        return h(b"medchain/view-change-ref", self.signing_bytes(), self.signature)


@dataclass(frozen=True, slots=True)
class NewView:
    """<NEW-VIEW, v+1, V, O>_p (section 4.4): 2f+1 view-changes and the re-issued pre-prepares."""

    view: int
    view_changes: tuple[ViewChange, ...]
    pre_prepares: tuple[PrePrepare, ...]
    replica: int
    signature: bytes = b""

    def signing_bytes(self) -> bytes:
        return canonical(
            b"medchain/new-view",
            (
                self.view,
                tuple(vc.ref() for vc in self.view_changes),
                tuple((pp.seq, pp.digest) for pp in self.pre_prepares),
                self.replica,
            ),
        )


@dataclass(frozen=True, slots=True)
class Suspect:
    """<SUSPECT, v, i>_i: replica i's timer expired in view v. Not in the paper: a replica
    whose timer fires stays in view v and says so; the view change starts at a replica that
    suspects v itself and holds f+1 fresh suspicions of it (one is an honest replica's), like
    BFT-SMaRt's STOP. A
    replica that alone saw no progress (it was behind, or starved of CPU) left view v at
    once, and stayed out of it while the others worked (``viewchange.on_suspect``)."""

    view: int
    replica: int
    signature: bytes = b""

    def signing_bytes(self) -> bytes:
        return canonical(b"medchain/suspect", (self.view, self.replica))


@dataclass(frozen=True, slots=True)
class Request:
    """Client transactions forwarded to the primary. Unsigned by the replica: every transaction
    carries its hospital's own signature, checked by the application before use."""

    tx_ids: tuple[bytes, ...]
    txs: tuple[bytes, ...]
    replica: int


@dataclass(frozen=True, slots=True)
class CertifiedBlock:
    """A committed batch with its commit certificate (2f+1 matching signed commits)."""

    seq: int
    batch: Batch
    commits: tuple[Commit, ...]


@dataclass(frozen=True, slots=True)
class FetchRequest:
    """State transfer (section 5.3.2, whole blocks): ask for blocks from_seq..to_seq."""

    from_seq: int
    to_seq: int
    replica: int


@dataclass(frozen=True, slots=True)
class FetchResponse:
    """Blocks with certificates, served from a peer's store; each is verified before use."""

    blocks: tuple[CertifiedBlock, ...]
    replica: int


Message = (
    PrePrepare
    | Prepare
    | Commit
    | Checkpoint
    | ViewChange
    | NewView
    | Suspect
    | Request
    | FetchRequest
    | FetchResponse
)
SignedMessage = PrePrepare | Prepare | Commit | Checkpoint | ViewChange | NewView | Suspect
