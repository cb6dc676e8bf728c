"""Byzantine behaviours: wrappers around an honest replica's output, plus hand-made messages.

A byzantine node runs the real ``Replica``; its behaviour rewrites or drops what the replica sends
(``outgoing``), watches what it receives (``incoming``) and every ``inject_every_ms`` adds
messages of its own (``inject``). Everything it signs is signed with its own key (or, for the
colluding fork test only, with the keys of its fellow colluders): a correct PBFT must tolerate
any f nodes doing this.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from consensus.messages import (
    Batch,
    CertifiedBlock,
    Checkpoint,
    Commit,
    FetchRequest,
    FetchResponse,
    Message,
    NewView,
    Prepare,
    PrePrepare,
    Request,
    SignedMessage,
    ViewChange,
)
from tests.sim.app import INVALID_PREFIX, VALID_PREFIX, tx_id

Sign = Callable[[bytes], bytes]
Outgoing = list[tuple[int, Any]]
"""(destination replica id, Message or raw wire bytes)."""


def invalid_tx(rng: random.Random) -> tuple[bytes, bytes]:
    """A transaction whose id matches but whose content the application rejects."""
    blob = INVALID_PREFIX + rng.randbytes(12)
    return tx_id(blob), blob


S = TypeVar("S", bound=SignedMessage)


def resign(msg: S, sign: Sign) -> S:
    """``msg`` with its signature recomputed (after a byzantine node changed its content)."""
    unsigned = replace(msg, signature=b"")
    return replace(unsigned, signature=sign(unsigned.signing_bytes()))


@dataclass(slots=True)
class ByzContext:
    """What a behaviour may use: its id, its key, its own rng and the current virtual time."""

    replica_id: int
    n: int
    rng: random.Random
    sign: Sign
    now_ms: int = 0
    view: int = 0
    """The view its own (honest) replica is in: lets behaviours aim at plausible views."""
    last_executed: int = 0

    def others(self) -> list[int]:
        return [i for i in range(self.n) if i != self.replica_id]


class Behaviour:
    """Honest by default; subclasses override what they corrupt."""

    name = "honest"
    inject_every_ms: int | None = None

    def outgoing(self, ctx: ByzContext, dest: int, msg: Message) -> Outgoing:
        return [(dest, msg)]

    def incoming(self, ctx: ByzContext, sender: int, msg: Message) -> None:
        return None

    def inject(self, ctx: ByzContext) -> Outgoing:
        return []


class Silent(Behaviour):
    """Receives everything, sends nothing: a primary that never proposes, a backup that never
    votes, a peer that never serves blocks."""

    name = "silent"

    def outgoing(self, ctx: ByzContext, dest: int, msg: Message) -> Outgoing:
        return []


def _alternative(batch: Batch) -> Batch:
    """A different batch for the same slot: one transaction fewer and a later timestamp."""
    return replace(
        batch,
        timestamp_ms=batch.timestamp_ms + 1,
        tx_ids=batch.tx_ids[:-1],
        txs=batch.txs[:-1],
    )


class Equivocate(Behaviour):
    """As primary, sends one batch to some backups and another to the rest, and backs the second
    one with its own prepares and commits towards that group."""

    name = "equivocate"

    def __init__(self) -> None:
        self._forks: dict[tuple[int, int], tuple[bytes, frozenset[int]]] = {}

    def outgoing(self, ctx: ByzContext, dest: int, msg: Message) -> Outgoing:
        if isinstance(msg, PrePrepare) and msg.replica == ctx.replica_id:
            fork = self._forks.get((msg.view, msg.seq))
            if fork is None:
                others = ctx.others()
                group = frozenset(ctx.rng.sample(others, ctx.rng.randint(1, len(others) - 1)))
                alt = _alternative(msg.batch)
                fork = (alt.digest(), group)
                self._remember((msg.view, msg.seq), fork)
            if dest in fork[1]:
                alt = _alternative(msg.batch)
                return [(dest, resign(replace(msg, batch=alt, digest=alt.digest()), ctx.sign))]
            return [(dest, msg)]
        if isinstance(msg, Prepare | Commit) and msg.replica == ctx.replica_id:
            fork = self._forks.get((msg.view, msg.seq))
            if fork is not None and dest in fork[1]:
                return [(dest, resign(replace(msg, digest=fork[0]), ctx.sign))]
        return [(dest, msg)]

    def _remember(self, key: tuple[int, int], fork: tuple[bytes, frozenset[int]]) -> None:
        if len(self._forks) >= 256:
            self._forks.pop(next(iter(self._forks)))
        self._forks[key] = fork


class InvalidTxs(Behaviour):
    """As primary, slips a transaction the application rejects into every batch; as anyone,
    forwards requests carrying invalid transactions or ids that do not match."""

    name = "invalid_txs"
    inject_every_ms = 40

    def outgoing(self, ctx: ByzContext, dest: int, msg: Message) -> Outgoing:
        if isinstance(msg, PrePrepare) and msg.replica == ctx.replica_id:
            bad_id, blob = invalid_tx(random.Random(msg.seq * 7919 + msg.view))
            batch = replace(
                msg.batch, tx_ids=(*msg.batch.tx_ids, bad_id), txs=(*msg.batch.txs, blob)
            )
            return [(dest, resign(replace(msg, batch=batch, digest=batch.digest()), ctx.sign))]
        return [(dest, msg)]

    def inject(self, ctx: ByzContext) -> Outgoing:
        bad_id, blob = invalid_tx(ctx.rng)
        wrong_id = ctx.rng.randbytes(32)
        out: Outgoing = []
        for dest in ctx.others():
            out.append((dest, Request(tx_ids=(bad_id,), txs=(blob,), replica=ctx.replica_id)))
            good = VALID_PREFIX + b"forged-id|" + ctx.rng.randbytes(8)
            out.append((dest, Request(tx_ids=(wrong_id,), txs=(good,), replica=ctx.replica_id)))
        return out


class Forger(Behaviour):
    """Breaks signatures: random bytes instead of its own signature, messages that claim to come
    from other replicas, and signed messages whose content was changed after signing."""

    name = "forger"
    inject_every_ms = 30

    def outgoing(self, ctx: ByzContext, dest: int, msg: Message) -> Outgoing:
        rng = ctx.rng
        if isinstance(msg, Prepare | Commit | Checkpoint | PrePrepare | ViewChange | NewView):
            roll = rng.random()
            if roll < 0.3:
                return [(dest, replace(msg, signature=rng.randbytes(64)))]
            if roll < 0.5 and isinstance(msg, Prepare | Commit):
                return [(dest, replace(msg, digest=rng.randbytes(32)))]  # stale signature
        return [(dest, msg)]

    def inject(self, ctx: ByzContext) -> Outgoing:
        rng = ctx.rng
        victim = rng.choice(ctx.others())
        seq = ctx.last_executed + rng.randint(1, 3)
        fake: list[Message] = [
            Prepare(ctx.view, seq, rng.randbytes(32), victim, rng.randbytes(64)),
            Commit(ctx.view, seq, rng.randbytes(32), victim, rng.randbytes(64)),
            ViewChange(ctx.view + 1, 0, rng.randbytes(32), (), (), victim, rng.randbytes(64)),
        ]
        return [(dest, rng.choice(fake)) for dest in ctx.others()]


class Replay(Behaviour):
    """Keeps what it has seen and sends old messages again, to anyone, at any time."""

    name = "replay"
    inject_every_ms = 25

    def __init__(self) -> None:
        self._seen: deque[Message] = deque(maxlen=512)

    def incoming(self, ctx: ByzContext, sender: int, msg: Message) -> None:
        self._seen.append(msg)

    def outgoing(self, ctx: ByzContext, dest: int, msg: Message) -> Outgoing:
        self._seen.append(msg)
        return [(dest, msg)]

    def inject(self, ctx: ByzContext) -> Outgoing:
        if not self._seen:
            return []
        rng = ctx.rng
        return [
            (rng.choice(ctx.others()), rng.choice(self._seen)) for _ in range(rng.randint(1, 6))
        ]


class WrongDigest(Behaviour):
    """Votes, properly signed, for digests nobody proposed and checkpoints of a state it
    does not have."""

    name = "wrong_digest"

    def outgoing(self, ctx: ByzContext, dest: int, msg: Message) -> Outgoing:
        if isinstance(msg, Prepare | Commit) and msg.replica == ctx.replica_id:
            return [(dest, resign(replace(msg, digest=ctx.rng.randbytes(32)), ctx.sign))]
        if isinstance(msg, Checkpoint) and msg.replica == ctx.replica_id:
            bad = replace(msg, state_digest=ctx.rng.randbytes(32))
            return [(dest, resign(bad, ctx.sign))]
        return [(dest, msg)]


class Garbage(Behaviour):
    """Otherwise honest, but sprays odd messages: requests whose ids do not match, validly signed
    messages with absurd views and sequence numbers, fetches of absurd ranges, tampered blocks
    in fetch responses, a new-view from a non-primary, and raw bytes that must not decode."""

    name = "garbage"
    inject_every_ms = 20

    def __init__(self, raw_bytes: bool) -> None:
        self._raw_bytes = raw_bytes

    def outgoing(self, ctx: ByzContext, dest: int, msg: Message) -> Outgoing:
        if isinstance(msg, FetchResponse) and msg.blocks and ctx.rng.random() < 0.7:
            return [(dest, replace(msg, blocks=tuple(_tamper(b, ctx.rng) for b in msg.blocks)))]
        return [(dest, msg)]

    def inject(self, ctx: ByzContext) -> Outgoing:
        rng = ctx.rng
        me = ctx.replica_id
        huge = rng.choice([2**31, 2**40, 2**62])
        view = ctx.view
        candidates: list[Any] = [
            Request((rng.randbytes(32),), (VALID_PREFIX + rng.randbytes(8),), me),
            Request((rng.randbytes(32), rng.randbytes(32)), (VALID_PREFIX,), me),
            resign(Prepare(view, huge, rng.randbytes(32), me), ctx.sign),
            resign(Commit(huge, ctx.last_executed + 1, rng.randbytes(32), me), ctx.sign),
            resign(Checkpoint(huge, rng.randbytes(32), me), ctx.sign),
            resign(ViewChange(view + huge, 0, rng.randbytes(32), (), (), me), ctx.sign),
            resign(NewView(view + 1, (), (), me), ctx.sign),
            FetchRequest(1, huge, me),
            FetchRequest(ctx.last_executed + 5, 1, me),
            FetchResponse((_fake_block(ctx.last_executed + 1, rng),), me),
        ]
        if self._raw_bytes:
            candidates.append(rng.randbytes(rng.randint(0, 64)))
            candidates.append(b"\x93\x01\x02")  # a well-formed msgpack array, not a message
        dest = rng.choice(ctx.others())
        return [(dest, rng.choice(candidates))]


def _fake_block(seq: int, rng: random.Random) -> CertifiedBlock:
    blob = VALID_PREFIX + b"fake"
    batch = Batch(0, 0, 0, (tx_id(blob),), (blob,))
    commits = tuple(
        Commit(0, seq, batch.digest(), replica, rng.randbytes(64)) for replica in range(3)
    )
    return CertifiedBlock(seq=seq, batch=batch, commits=commits)


def _tamper(block: CertifiedBlock, rng: random.Random) -> CertifiedBlock:
    """A served block that must fail verification: other transactions under the same
    certificate, or a certificate with a forged signature."""
    if rng.random() < 0.5 or not block.commits:
        blob = VALID_PREFIX + b"tampered"
        return replace(block, batch=replace(block.batch, tx_ids=(tx_id(blob),), txs=(blob,)))
    first = replace(block.commits[0], signature=rng.randbytes(64))
    return replace(block, commits=(first, *block.commits[1:]))


class Collusion:
    """f+1 colluders (more than PBFT tolerates) that split the honest replicas into two halves
    and drive each half to commit a different batch at the same sequence number.

    The primary's pre-prepare goes out unchanged to half A and re-made for half B; a moment
    later (so they arrive after the pre-prepare) every colluder sends each half prepares and
    commits for that half's batch, signed with its own key. Used only to prove that the safety
    checker catches a fork.
    """

    def __init__(self, colluders: Sequence[int], signers: Mapping[int, Sign], n: int) -> None:
        self.colluders = frozenset(colluders)
        self._signers = signers
        honest = [i for i in range(n) if i not in self.colluders]
        half = len(honest) // 2
        self.half_a = frozenset(honest[:half])
        self.half_b = frozenset(honest[half:])
        self._split: set[tuple[int, int]] = set()
        self._votes: Outgoing = []

    def member(self, replica_id: int) -> Behaviour:
        return _Colluder(self, replica_id)

    def split(self, msg: PrePrepare, dest: int) -> Outgoing:
        """Route the primary's pre-prepare and queue the colluders' votes for ``dest``."""
        self._split.add((msg.view, msg.seq))
        if dest not in self.half_b:
            chosen = msg
        else:
            alt = _alternative(msg.batch)
            chosen = resign(
                replace(msg, batch=alt, digest=alt.digest()), self._signers[msg.replica]
            )
        if dest in self.half_a or dest in self.half_b:
            for colluder in sorted(self.colluders):
                sign = self._signers[colluder]
                if colluder != msg.replica:
                    prepare = Prepare(msg.view, msg.seq, chosen.digest, colluder)
                    self._votes.append((dest, resign(prepare, sign)))
                commit = Commit(msg.view, msg.seq, chosen.digest, colluder)
                self._votes.append((dest, resign(commit, sign)))
        return [(dest, chosen)]

    def filter_vote(self, msg: Prepare | Commit, dest: int) -> Outgoing:
        """A colluder's own honest vote on a split slot would only muddle the halves."""
        if (msg.view, msg.seq) in self._split and dest not in self.colluders:
            return []
        return [(dest, msg)]

    def release_votes(self) -> Outgoing:
        votes, self._votes = self._votes, []
        return votes


class _Colluder(Behaviour):
    name = "colluder"
    inject_every_ms = 10

    def __init__(self, collusion: Collusion, replica_id: int) -> None:
        self._collusion = collusion
        self._id = replica_id

    def outgoing(self, ctx: ByzContext, dest: int, msg: Message) -> Outgoing:
        if isinstance(msg, PrePrepare) and msg.replica == self._id and msg.batch.tx_ids:
            return self._collusion.split(msg, dest)
        if isinstance(msg, Prepare | Commit) and msg.replica == self._id:
            return self._collusion.filter_vote(msg, dest)
        return [(dest, msg)]

    def inject(self, ctx: ByzContext) -> Outgoing:
        return self._collusion.release_votes()


BEHAVIOURS: dict[str, Callable[[bool], Behaviour]] = {
    "silent": lambda raw: Silent(),
    "equivocate": lambda raw: Equivocate(),
    "invalid_txs": lambda raw: InvalidTxs(),
    "forger": lambda raw: Forger(),
    "replay": lambda raw: Replay(),
    "wrong_digest": lambda raw: WrongDigest(),
    "garbage": lambda raw: Garbage(raw_bytes=raw),
}
"""Behaviour factories by name; the argument says whether raw wire bytes can be injected."""


def names() -> Iterable[str]:
    return BEHAVIOURS.keys()
