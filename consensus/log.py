"""The message log: one slot per sequence number between the low and high watermarks.

Section 4.3: the low watermark h is the last stable checkpoint, the high watermark H = h + L.
Slots at or below h are garbage-collected when a checkpoint becomes stable.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from consensus.messages import Commit, Prepare, PreparedProof, PrePrepare
from consensus.quorum import VoteSet


@dataclass(slots=True)
class Slot:
    seq: int
    pre_prepare: PrePrepare | None = None
    """The pre-prepare accepted for this seq in the current view (or decided in an earlier one)."""
    prepares: VoteSet[Prepare] = field(default_factory=VoteSet)
    commits: VoteSet[Commit] = field(default_factory=VoteSet)
    my_prepare: Prepare | None = None
    my_commit: Commit | None = None
    prepared_proof: PreparedProof | None = None
    """Highest-view prepared certificate, carried into view-change messages (section 4.4)."""
    sent_ms: int = -(1 << 62)
    """When this replica last sent its own message for this slot (drives retransmission)."""
    certificate: tuple[Commit, ...] | None = None
    """2f+1 matching commits: the slot is committed and may execute once its turn comes."""
    accepted_ms: int = 0
    """When this replica accepted ``pre_prepare`` (a batch not prepared long after is relayed)."""

    def reset_for_view(self, view: int) -> None:
        """Drop per-view state on a view change; a committed slot keeps its decision."""
        if self.certificate is None:
            self.pre_prepare = None
        self.my_prepare = None
        self.my_commit = None
        self.prepares.drop_views_below(view)
        self.commits.drop_views_below(view)


class Log:
    __slots__ = ("_slots",)

    def __init__(self) -> None:
        self._slots: dict[int, Slot] = {}

    def get(self, seq: int) -> Slot | None:
        return self._slots.get(seq)

    def slot(self, seq: int) -> Slot:
        s = self._slots.get(seq)
        if s is None:
            s = self._slots[seq] = Slot(seq)
        return s

    def seqs(self) -> list[int]:
        return sorted(self._slots)

    def slots(self) -> list[Slot]:
        return [self._slots[s] for s in sorted(self._slots)]

    def collect_garbage(self, through_seq: int) -> None:
        for seq in [s for s in self._slots if s <= through_seq]:
            del self._slots[seq]

    def __len__(self) -> int:
        return len(self._slots)

    def __iter__(self) -> Iterator[Slot]:
        """Every slot, in no particular order (``slots()`` sorts)."""
        return iter(self._slots.values())
