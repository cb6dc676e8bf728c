"""Inputs to and outputs from ``Replica.step``: the only contract between the core and a shell.

The shape follows etcd-io/raft's ``Ready``: the shell feeds one event at a time together with
the current time, then carries out what comes back, in this order:
  1. durably persist ``persist`` before anything else;
  2. store and apply ``committed`` blocks, in order;
  3. carry out ``retain`` (forget persisted messages the core no longer needs; after 2, so a
     crash in between leaves more on disk, never less);
  4. send ``send`` (``dest is None`` means every other replica);
  5. answer every ``FetchRequest`` in ``serve`` from its block store with a ``FetchResponse``;
  6. call ``step(Tick(), now)`` again no later than ``deadline_ms``.

Everything the core tells the shell is a typed value: a refused or ignored input is a ``Drop``
with a ``DropReason`` and the ids it concerns, retention is a ``Retention`` instruction. The
shell never parses a string to learn what happened.

The one synchronous port: while stepping, the core calls out of itself only to the
``Application`` (``check_txs`` and ``committed_among``; ``Crypto`` is a pure function of its
keys). That call is allowed inside a pure, deterministic step because it is deterministic (the
same transactions and the same chain give the same answer on every replica), local (this
replica's own chain and key registry, no peer asked) and bounded (a batch at most, one lookup
for it): no network, no clock, no waiting. Anything that would need one of those is an event
in or an instruction out, never a call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from consensus.messages import (
    CertifiedBlock,
    Checkpoint,
    Commit,
    FetchRequest,
    Message,
    NewView,
    Prepare,
    PrePrepare,
    SignedMessage,
    ViewChange,
)


@dataclass(frozen=True, slots=True)
class Receive:
    """A message arrived from a peer (``sender`` is the transport's claim, not trusted)."""

    message: Message
    sender: int


@dataclass(frozen=True, slots=True)
class Submit:
    """Client transactions admitted by the shell (already decoded and signature-checked)."""

    tx_ids: tuple[bytes, ...]
    txs: tuple[bytes, ...]
    acknowledged: bool = False
    """Already acknowledged to their client (the shell re-offers what it accepted and has
    not seen commit): taken whatever the backlog's age, as long as the mempool has room."""


@dataclass(frozen=True, slots=True)
class Tick:
    """Time has passed; fire whatever timers are due."""


Event = Receive | Submit | Tick


@dataclass(frozen=True, slots=True)
class Committed:
    """A block decided at ``seq``: apply it; ``block_hash`` is the chain hash through it."""

    block: CertifiedBlock
    prev_hash: bytes
    block_hash: bytes


class ViewChangeCause(Enum):
    """Why a replica started a view change (for the shell's log, events and metrics)."""

    VIEW_TIMER = "view timer: waited view_timeout_ms for progress on a request"
    REQUEST_TIMER = "request timer: one request waited request_timeout_ms"
    HIGHER_VIEW = "messages of a later view from f+1 replicas"
    F_PLUS_ONE = "view-changes for later views from f+1 replicas"
    SUSPECTED = "the primary suspected by f+1 replicas, this one among them"


class DropReason(Enum):
    """Why the core refused or ignored an input. The value names it in logs and counters."""

    UNKNOWN_EVENT = "unknown event"
    UNKNOWN_MESSAGE = "unknown message"
    MALFORMED_SUBMIT = "malformed submit"
    MALFORMED_REQUEST = "malformed request"
    INVALID_REQUEST_TX = "invalid transaction in request"
    MEMPOOL_FULL = "mempool full"
    """A submitted or relayed transaction found no room: the shell answers a client 503."""
    BACKLOG_TOO_OLD = "backlog too old"
    """A client submission arrived while the oldest held transaction had waited longer than
    ``admission_max_age_ms``: refused, the shell answers 503 with Retry-After."""
    PRE_PREPARE_NOT_FROM_PRIMARY = "pre-prepare not from the primary"
    PRE_PREPARE_OUTSIDE_WATERMARKS = "pre-prepare outside watermarks"
    EQUIVOCATION = "conflicting pre-prepare (equivocation)"
    BAD_SIGNATURE = "bad signature"
    INVALID_BATCH = "invalid batch"
    PREPARE_FROM_PRIMARY = "prepare from the primary"
    PREPARE_OUTSIDE_WATERMARKS = "prepare outside watermarks"
    COMMIT_OUTSIDE_WATERMARKS = "commit outside watermarks"
    UNKNOWN_REPLICA = "unknown replica"
    INVALID_VIEW_CHANGE = "invalid view-change"
    INVALID_NEW_VIEW = "invalid new-view"
    FETCH_FROM_UNKNOWN_REPLICA = "fetch from unknown replica"
    FETCHED_BLOCK_REJECTED = "fetched block rejected"
    FETCHED_BLOCK_CONFLICTS = "fetched block conflicts with our certificate"


@dataclass(frozen=True, slots=True)
class Drop:
    """One refused or ignored input: the reason, the ids it concerns (where there are any) and
    a human detail for the log."""

    reason: DropReason
    detail: str = ""
    tx_ids: tuple[bytes, ...] = ()
    replica: int | None = None
    view: int | None = None
    seq: int | None = None


def _position(m: Message) -> tuple[int | None, int | None]:
    """(seq, view) by which retention rules compare a persisted message. A view-change's view
    is the one it votes for and its seq its stable checkpoint's; a new-view has no seq, a
    checkpoint no view."""
    if isinstance(m, PrePrepare | Prepare | Commit):
        return m.seq, m.view
    if isinstance(m, Checkpoint):
        return m.seq, None
    if isinstance(m, ViewChange):
        return m.stable_seq, m.new_view
    if isinstance(m, NewView):
        return None, m.view
    return None, None


@dataclass(frozen=True, slots=True)
class Forget:
    """Persisted messages of ``kinds`` below both bounds given are never needed again: seq
    below ``below_seq``, view below ``below_view`` (see ``_position``). A message without
    the number a bound compares is kept."""

    kinds: frozenset[type[SignedMessage]]
    below_seq: int | None = None
    below_view: int | None = None

    def __post_init__(self) -> None:
        if self.below_seq is None and self.below_view is None:
            raise ValueError("a Forget rule needs a seq or a view bound")

    def covers(self, m: Message) -> bool:
        if type(m) not in self.kinds:
            return False
        seq, view = _position(m)
        if self.below_seq is not None and (seq is None or seq >= self.below_seq):
            return False
        return self.below_view is None or (view is not None and view < self.below_view)


@dataclass(frozen=True, slots=True)
class Retention:
    """Which persisted messages the shell may delete: every one some rule covers. The core
    decides (a stable checkpoint, an installed view); the store executes it generically."""

    forget: tuple[Forget, ...]

    def covers(self, m: Message) -> bool:
        return any(rule.covers(m) for rule in self.forget)


@dataclass(slots=True)
class Ready:
    persist: list[Message] = field(default_factory=list)
    committed: list[Committed] = field(default_factory=list)
    retain: Retention | None = None
    send: list[tuple[int | None, Message]] = field(default_factory=list)
    serve: list[FetchRequest] = field(default_factory=list)
    deadline_ms: int | None = None
    dropped: list[Drop] = field(default_factory=list)
    view_changed: int | None = None
    """The view this step moved to (for the shell's log and counters)."""
    view_change_cause: ViewChangeCause | None = None
    """Why this step started a view change (None if it did not start one)."""
    suspected: ViewChangeCause | None = None
    """Why this step suspected the primary (sent a Suspect), whether or not that was the
    f+1-th suspicion that started a view change."""

    def drop(
        self,
        reason: DropReason,
        detail: str = "",
        *,
        tx_ids: tuple[bytes, ...] = (),
        replica: int | None = None,
        view: int | None = None,
        seq: int | None = None,
    ) -> None:
        self.dropped.append(Drop(reason, detail, tx_ids, replica, view, seq))

    def drop_msg(self, reason: DropReason, m: PrePrepare | Prepare | Commit, detail: str) -> None:
        self.dropped.append(Drop(reason, detail, replica=m.replica, view=m.view, seq=m.seq))

    def forget(self, retention: Retention) -> None:
        """Add ``retention``'s rules to this step's instruction."""
        before = () if self.retain is None else self.retain.forget
        self.retain = Retention((*before, *retention.forget))

    def refused(self) -> dict[bytes, DropReason]:
        """The submitted transactions this step turned away for lack of room or because the
        backlog is too old (the client may retry), each with its reason, in order."""
        return {
            tx_id: d.reason for d in self.dropped if d.reason in _REFUSALS for tx_id in d.tx_ids
        }


_REFUSALS = frozenset({DropReason.MEMPOOL_FULL, DropReason.BACKLOG_TOO_OLD})


class Crypto(Protocol):
    """Ed25519 signing as the core needs it; the shell provides it (pynacl), keys from config."""

    def sign(self, data: bytes) -> bytes: ...

    def verify(self, replica: int, data: bytes, signature: bytes) -> bool: ...


class Application(Protocol):
    """What the core asks of the transaction layer: its one synchronous port (see the module
    docstring). Both calls must be deterministic (every honest replica answers the same for
    the same chain), local (this replica's own chain and registry, never a peer) and bounded
    (one batch, one lookup); they never touch the network, never read the clock, never wait.
    The core calls them while it validates a request, a pre-prepare or a fetched block."""

    def check_txs(self, tx_ids: tuple[bytes, ...], txs: tuple[bytes, ...]) -> str | None:
        """None if every tx decodes, has that id and a valid signature; else the reason (the
        core reports it as a ``Drop`` with the tx ids)."""
        ...

    def committed_among(self, tx_ids: Sequence[bytes]) -> set[bytes]:
        """Those of ``tx_ids`` already on this replica's chain (one lookup for a whole batch)."""
        ...
