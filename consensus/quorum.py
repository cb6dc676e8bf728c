"""Certificates: collecting matching signed votes from distinct replicas, and checking them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar

from consensus.events import Crypto
from consensus.messages import Checkpoint, Commit, Prepare, PreparedProof

V = TypeVar("V", Prepare, Commit, Checkpoint)


class VoteSet(Generic[V]):
    """Votes for one slot, grouped by the value voted for; one vote per replica and key."""

    __slots__ = ("_by_key",)

    def __init__(self) -> None:
        self._by_key: dict[tuple[int, bytes], dict[int, V]] = {}

    def add(self, key: tuple[int, bytes], vote: V, replica: int) -> None:
        """Record a vote; a replica's first vote for ``key`` is the one kept."""
        self._by_key.setdefault(key, {}).setdefault(replica, vote)

    def voters(self, key: tuple[int, bytes]) -> dict[int, V]:
        return self._by_key.get(key, {})

    def drop_views_below(self, view: int) -> None:
        for key in [k for k in self._by_key if k[0] < view]:
            del self._by_key[key]


def distinct(votes: Iterable[V], members: int) -> dict[int, V]:
    """First vote per replica id in range; duplicates and unknown ids ignored."""
    out: dict[int, V] = {}
    for v in votes:
        if 0 <= v.replica < members:
            out.setdefault(v.replica, v)
    return out


def check_commit_certificate(
    seq: int, digest: bytes, commits: Sequence[Commit], n: int, quorum: int, crypto: Crypto
) -> str | None:
    """None if ``commits`` hold ``quorum`` valid commits for (v, seq, digest) from distinct
    replicas in one view v (section 4.2: committed certificate); otherwise the reason."""
    if not commits:
        return "empty commit certificate"
    view = commits[0].view
    by_replica = distinct(commits, n)
    if len(by_replica) < quorum:
        return f"commit certificate has {len(by_replica)} distinct signers, needs {quorum}"
    for c in by_replica.values():
        if c.view != view or c.seq != seq or c.digest != digest:
            return f"commit from replica {c.replica} is for another view, seq or digest"
        if not crypto.verify(c.replica, c.signing_bytes(), c.signature):
            return f"bad commit signature from replica {c.replica}"
    return None


def check_checkpoint_proof(
    seq: int, digest: bytes, proof: Sequence[Checkpoint], n: int, quorum: int, crypto: Crypto
) -> str | None:
    """None if ``proof`` holds ``quorum`` valid matching checkpoints (section 4.3: stable)."""
    by_replica = distinct(proof, n)
    if len(by_replica) < quorum:
        return f"checkpoint proof has {len(by_replica)} distinct signers, needs {quorum}"
    for c in by_replica.values():
        if c.seq != seq or c.state_digest != digest:
            return f"checkpoint from replica {c.replica} does not match"
        if not crypto.verify(c.replica, c.signing_bytes(), c.signature):
            return f"bad checkpoint signature from replica {c.replica}"
    return None


def check_prepared_proof(
    proof: PreparedProof, n: int, quorum: int, primary_of: int, crypto: Crypto
) -> str | None:
    """None if ``proof`` is a prepared certificate (section 4.2): a valid pre-prepare from the
    primary of its view whose batch matches its digest, and quorum-1 matching prepares from
    distinct backups."""
    pp = proof.pre_prepare
    if pp.replica != primary_of:
        return "prepared proof: pre-prepare not from that view's primary"
    if pp.batch.digest() != pp.digest:
        return "prepared proof: batch does not match digest"
    if not crypto.verify(pp.replica, pp.signing_bytes(), pp.signature):
        return "prepared proof: bad pre-prepare signature"
    backups = {r: p for r, p in distinct(proof.prepares, n).items() if r != primary_of}
    if len(backups) < quorum - 1:
        return f"prepared proof has {len(backups)} prepares, needs {quorum - 1}"
    for p in backups.values():
        if (p.view, p.seq, p.digest) != (pp.view, pp.seq, pp.digest):
            return f"prepared proof: prepare from {p.replica} does not match"
        if not crypto.verify(p.replica, p.signing_bytes(), p.signature):
            return f"prepared proof: bad prepare signature from {p.replica}"
    return None
