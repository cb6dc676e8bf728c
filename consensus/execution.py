"""Execution: at-most-once over a chain, the one rule for a transaction that appears again.

PBFT executes each request at most once (Castro & Liskov, section 4.2; the client's timestamp
there, the tx id here). A transaction can still reach the chain twice legitimately, and then
the later one is a no-op, counted, and the transaction counts at its first height:

- a batch prepared in an old view must be re-issued by the new-view (section 4.4) even when
  some of its transactions committed meanwhile in another batch (the later batch is re-issued:
  its batch view is below its certificate view);
- a batch prepared in view v at seq s, left out of view v+1's new-view (no view-change of that
  quorum carried it), is re-issued by a later view v' once more; meanwhile view v+1 may
  certify a fresh batch at a higher seq with the same transaction, since no honest backup of
  v+1 knew of it. Here the *earlier* occurrence is certified in a later view than the repeat
  (sim seed 114145, n = 7).

A fresh batch certified in a view no earlier than the first occurrence's can never repeat it:
honest backups refuse a pre-prepare whose transactions are committed, or in flight in an
accepted pre-prepare of their view (the new-view's re-issued batches included), so a quorum of
them never certifies it. Such a repeat is a violation, and so is any tx id twice in one batch.

One rule, used by offline chain verification, the node's start-up check, the simulator's
invariants and the history checker alike. Pure: it sees seq numbers, views and tx ids only.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

TxId = TypeVar("TxId", bound=Hashable)
"""A transaction's id: ``bytes`` on a chain, any hashable label in a history check."""


@dataclass(frozen=True, slots=True)
class RepeatedTx(Generic[TxId]):
    """A transaction seen at ``seq`` that was already on the chain at ``first_seq``."""

    tx_id: TxId
    first_seq: int
    seq: int

    def describe(self) -> str:
        shown = self.tx_id.hex() if isinstance(self.tx_id, bytes) else str(self.tx_id)
        return f"tx {shown[:16]} at seq {self.seq} repeats seq {self.first_seq}"


@dataclass(frozen=True, slots=True)
class RepeatVerdict(Generic[TxId]):
    """What one batch's repeats amount to."""

    repeats: int
    """Legitimate repeats in this batch: no-ops of a re-issued batch."""
    violations: tuple[RepeatedTx[TxId], ...] = ()
    """Repeats no honest quorum certifies (a fresh batch, or twice in one batch)."""

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def problem(self) -> str | None:
        """The first violation, naming the tx and both seqs; None if there is none."""
        if not self.violations:
            return None
        first = self.violations[0]
        kind = "twice in one batch" if first.first_seq == first.seq else "in a fresh batch"
        more = f" (and {len(self.violations) - 1} more)" if len(self.violations) > 1 else ""
        return f"{first.describe()} {kind}{more}"


def is_reissued(batch_view: int, certificate_view: int) -> bool:
    """Whether a batch was re-issued by a later view than the one that proposed it."""
    return batch_view < certificate_view


class RepeatCheck(Generic[TxId]):
    """At-most-once execution over one chain, fed its batches in increasing seq order.

    Keeps each transaction's first seq and that batch's certificate view: one entry per
    distinct transaction."""

    __slots__ = ("_first", "_last_seq", "repeats")

    def __init__(self) -> None:
        self._first: dict[TxId, tuple[int, int]] = {}
        self._last_seq = 0
        self.repeats = 0
        """Legitimate repeats so far (no-ops)."""

    def first_seq(self, tx_id: TxId) -> int | None:
        """The seq where ``tx_id`` counts, or None if it was not seen."""
        first = self._first.get(tx_id)
        return None if first is None else first[0]

    def observe(
        self, seq: int, batch_view: int, certificate_view: int, tx_ids: Iterable[TxId]
    ) -> RepeatVerdict[TxId]:
        """Record the batch committed at ``seq`` (proposed in ``batch_view``, certified in
        ``certificate_view``) and judge its repeats. Every new tx id is recorded at ``seq``
        whatever the verdict, so one bad batch does not hide the next one's repeats.
        ValueError if ``seq`` does not follow the last one observed (a caller's bug)."""
        if seq <= self._last_seq:
            raise ValueError(f"seq {seq} observed after seq {self._last_seq}")
        self._last_seq = seq
        reissued = is_reissued(batch_view, certificate_view)
        in_batch: set[TxId] = set()
        repeats = 0
        violations: list[RepeatedTx[TxId]] = []
        for tx_id in tx_ids:
            if tx_id in in_batch:
                violations.append(RepeatedTx(tx_id, seq, seq))
                continue
            in_batch.add(tx_id)
            first, first_view = self._first.setdefault(tx_id, (seq, certificate_view))
            if first == seq:
                continue
            if reissued or first_view > certificate_view:
                repeats += 1
            else:
                violations.append(RepeatedTx(tx_id, first, seq))
        self.repeats += repeats
        return RepeatVerdict(repeats, tuple(violations))
