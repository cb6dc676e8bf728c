"""Inputs to and outputs from ``Replica.step``: the only contract between the core and a shell.

The shape follows etcd-io/raft's ``Ready``: the shell feeds one event at a time together with
the current time, then carries out what comes back, in this order:
  1. durably persist ``persist`` (and honour ``truncate_through``) before anything else;
  2. store and apply ``committed`` blocks, in order;
  3. send ``send`` (``dest is None`` means every other replica);
  4. answer every ``FetchRequest`` in ``serve`` from its block store with a ``FetchResponse``;
  5. call ``step(Tick(), now)`` again no later than ``deadline_ms``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from consensus.messages import CertifiedBlock, FetchRequest, Message


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


@dataclass(slots=True)
class Ready:
    persist: list[Message] = field(default_factory=list)
    truncate_through: int | None = None
    committed: list[Committed] = field(default_factory=list)
    send: list[tuple[int | None, Message]] = field(default_factory=list)
    serve: list[FetchRequest] = field(default_factory=list)
    deadline_ms: int | None = None
    dropped: list[tuple[str, str]] = field(default_factory=list)
    view_changed: int | None = None

    def drop(self, reason: str, detail: str = "") -> None:
        self.dropped.append((reason, detail))


class Crypto(Protocol):
    """Ed25519 signing as the core needs it; the shell provides it (pynacl), keys from config."""

    def sign(self, data: bytes) -> bytes: ...

    def verify(self, replica: int, data: bytes, signature: bytes) -> bool: ...


class Application(Protocol):
    """What the core asks of the transaction layer; must be deterministic."""

    def check_txs(self, tx_ids: tuple[bytes, ...], txs: tuple[bytes, ...]) -> str | None:
        """None if every tx decodes, has that id and a valid signature; else the reason."""
        ...

    def committed_among(self, tx_ids: Sequence[bytes]) -> set[bytes]:
        """Those of ``tx_ids`` already on this replica's chain (one lookup for a whole batch)."""
        ...
