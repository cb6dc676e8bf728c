"""The flight recorder: a bounded ring of one node's recent protocol events (``GET /events``).

Every event is a :class:`ProtocolEvent`: when (the node clock: wall-anchored milliseconds that
never go backwards), what (``kind``), the view and seq it concerns, the peer, and a short
detail. No event carries a transaction, a payload or a patient identifier: only message kinds,
counts, view and seq numbers, peer ids and fault parameters.

Kinds: ``msg_in`` / ``msg_out`` (consensus traffic; see below), ``timer`` (the view timer
fired), ``view_change`` (this node started one: "to view V"), ``new_view`` (a view was
installed), ``commit`` (a block executed: seq = height, "N txs"), ``checkpoint`` (a checkpoint
became stable), ``fault`` (injected, cleared or expired).

Message events are aggregated per consensus round (one pass of the node's task: up to
``max_events_per_round`` events stepped, then one group commit): one ``msg_in`` and one
``msg_out`` event per message kind and round. ``detail`` is the message kind (pre-prepare,
prepare, commit, checkpoint, view-change, new-view, request, fetch) when the round carried one
such message, else ``"<kind> xN"``, followed by ``" seq A..B"`` when the messages span several
seqs and ``" peers 1,2,3"`` when several peers sent or received them; ``view`` and ``seq`` are
the highest among them, ``peer`` the one peer or null. A broadcast counts once per peer. So the
ring costs a few events per round, whatever the load, and a view change's traffic (rare, small
rounds) still shows message by message.

The ring is bounded in events and in bytes (``[limits] events_max``, ``events_max_bytes``);
the oldest events are evicted first and counted, so a reader learns how many it missed
(``dropped``). Paging is by time: ``since=T`` returns events with ``t_ms >= T`` and ``next``
is the ``since`` of the following page. A page is cut only between two milliseconds, and an
event recorded after a page was served is stamped at least ``next`` (at most a millisecond
late), so paging with ``next`` never misses nor repeats an event.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from consensus.messages import (
    Checkpoint,
    Commit,
    FetchRequest,
    FetchResponse,
    Message,
    NewView,
    Prepare,
    PrePrepare,
    Request,
    Suspect,
    ViewChange,
)

MSG_IN: Final = "msg_in"
MSG_OUT: Final = "msg_out"
TIMER: Final = "timer"
VIEW_CHANGE: Final = "view_change"
NEW_VIEW: Final = "new_view"
COMMIT: Final = "commit"
CHECKPOINT: Final = "checkpoint"
FAULT: Final = "fault"
EVENT_KINDS: Final = (MSG_IN, MSG_OUT, TIMER, VIEW_CHANGE, NEW_VIEW, COMMIT, CHECKPOINT, FAULT)

MAX_DETAIL_CHARS: Final = 200
"""A longer detail is cut (a fault's parameters are the only long one)."""
_EVENT_OVERHEAD_BYTES: Final = 160
"""What one event costs in memory beyond its strings (object, slots, ints, ring entry)."""
_EVICTED_RUNS_MAX: Final = 4096
"""Milliseconds of evicted events remembered to count what a reader missed exactly."""

MESSAGE_KINDS: Final[dict[type, str]] = {
    PrePrepare: "pre-prepare",
    Prepare: "prepare",
    Commit: "commit",
    Checkpoint: "checkpoint",
    ViewChange: "view-change",
    NewView: "new-view",
    Suspect: "suspect",
    Request: "request",
    FetchRequest: "fetch",
    FetchResponse: "fetch",
}
"""The wire vocabulary of the paper, one name per message type (both fetch directions are
"fetch": state transfer, section 5.3.2)."""


def _vs_slot(m: PrePrepare | Prepare | Commit) -> tuple[int | None, int | None]:
    return m.view, m.seq


def _vs_checkpoint(m: Checkpoint) -> tuple[int | None, int | None]:
    return None, m.seq


def _vs_view_change(m: ViewChange) -> tuple[int | None, int | None]:
    return m.new_view, m.stable_seq


def _vs_new_view(m: NewView) -> tuple[int | None, int | None]:
    return m.view, None


def _vs_suspect(m: Suspect) -> tuple[int | None, int | None]:
    return m.view, None


def _vs_fetch(m: FetchRequest) -> tuple[int | None, int | None]:
    return None, m.from_seq


def _vs_fetch_response(m: FetchResponse) -> tuple[int | None, int | None]:
    return None, max((b.seq for b in m.blocks), default=None)


def _vs_none(m: Message) -> tuple[int | None, int | None]:
    return None, None


POSITION: Final[dict[type, Callable[..., tuple[int | None, int | None]]]] = {
    PrePrepare: _vs_slot,
    Prepare: _vs_slot,
    Commit: _vs_slot,
    Checkpoint: _vs_checkpoint,
    ViewChange: _vs_view_change,
    NewView: _vs_new_view,
    Suspect: _vs_suspect,
    Request: _vs_none,
    FetchRequest: _vs_fetch,
    FetchResponse: _vs_fetch_response,
}
"""(view, seq) a message concerns: a view-change's view is the one it votes for and its seq
its stable checkpoint's; a fetch's seq the first block asked for (or the last one sent)."""


def position(msg: Message) -> tuple[int | None, int | None]:
    return POSITION.get(type(msg), _vs_none)(msg)


@dataclass(frozen=True, slots=True)
class ProtocolEvent:
    t_ms: int
    kind: str
    view: int | None
    seq: int | None
    peer: int | None
    detail: str

    def to_json(self) -> dict[str, object]:
        return {
            "t_ms": self.t_ms,
            "kind": self.kind,
            "view": self.view,
            "seq": self.seq,
            "peer": self.peer,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class Page:
    """One ``GET /events`` answer (without the node id and clock)."""

    events: list[ProtocolEvent]
    next: int
    dropped: int


Summary = tuple[str, int, int | None, int | None, int]
"""A round's messages of one kind and direction: (kind, count, lowest seq, highest seq, peer
bitmask). Kept as it is in the ring and put into words only when served: recording costs one
tuple, whatever is read later."""
_Entry = tuple[int, str, int | None, int | None, int | None, str | Summary, int]
"""(t_ms, kind, view, seq, peer, detail or summary, estimated bytes): one ring slot."""
_SUMMARY_BYTES: Final = 48


def _t(entry: _Entry) -> int:
    return entry[0]


def _materialise(e: _Entry) -> ProtocolEvent:
    detail = e[5]
    if isinstance(detail, str):
        return ProtocolEvent(e[0], e[1], e[2], e[3], e[4], detail)
    kind, count, lo, hi, mask = detail
    peers = _bits(mask)
    text = kind if count == 1 else f"{kind} x{count}"
    if lo is not None and lo != hi:
        text += f" seq {lo}..{hi}"
    if len(peers) > 1:
        text += " peers " + ",".join(map(str, peers))
    return ProtocolEvent(e[0], e[1], e[2], e[3], peers[0] if len(peers) == 1 else None, text)


class EventRing:
    """The newest protocol events, bounded in count and in bytes; oldest evicted first."""

    __slots__ = (
        "_events",
        "_evicted_runs",
        "_floor_ms",
        "_max_bytes",
        "_max_events",
        "evicted",
        "nbytes",
        "recorded",
    )

    def __init__(self, max_events: int, max_bytes: int) -> None:
        if max_events < 1 or max_bytes < 1:
            raise ValueError("the event ring needs room for at least one event")
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._events: deque[_Entry] = deque()
        self._evicted_runs: deque[tuple[int, int]] = deque()
        """(t_ms, evicted count through that ms) for the newest evicted milliseconds."""
        self._floor_ms = 0
        """No event is stamped earlier than this (the ``next`` of the last page served)."""
        self.nbytes = 0
        self.recorded = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._events)

    def add(
        self,
        t_ms: int,
        kind: str,
        *,
        view: int | None = None,
        seq: int | None = None,
        peer: int | None = None,
        detail: str = "",
    ) -> None:
        detail = detail[:MAX_DETAIL_CHARS]
        size = _EVENT_OVERHEAD_BYTES + len(kind) + len(detail)
        self._append((t_ms, kind, view, seq, peer, detail, size))

    def add_summary(self, t_ms: int, direction: str, view: int | None, summary: Summary) -> None:
        """One round's messages of one kind (see the module docstring for how it reads)."""
        size = _EVENT_OVERHEAD_BYTES + _SUMMARY_BYTES
        self._append((t_ms, direction, view, summary[3], None, summary, size))

    def _append(self, entry: _Entry) -> None:
        events = self._events
        # Never earlier than an event already recorded or a page already served: t_ms stays
        # non-decreasing, which paging by time relies on.
        t = entry[0]
        floor = events[-1][0] if events else 0
        if floor < self._floor_ms:
            floor = self._floor_ms
        if t < floor:
            entry = (floor, *entry[1:])
        events.append(entry)
        self.nbytes += entry[6]
        self.recorded += 1
        while len(events) > self._max_events or (self.nbytes > self._max_bytes and events):
            self._evict()

    def _evict(self) -> None:
        old = self._events.popleft()
        self.nbytes -= old[6]
        self.evicted += 1
        runs = self._evicted_runs
        if runs and runs[-1][0] == old[0]:
            runs[-1] = (old[0], self.evicted)
        else:
            runs.append((old[0], self.evicted))
            if len(runs) > _EVICTED_RUNS_MAX:
                runs.popleft()

    def dropped_since(self, since_ms: int) -> int:
        """Evicted events stamped at or after ``since_ms``: what a reader asking from there
        missed (exact over the last few thousand evicted milliseconds, an upper bound before)."""
        runs = self._evicted_runs
        if not runs or runs[-1][0] < since_ms:
            return 0
        i = bisect.bisect_left(runs, since_ms, key=lambda r: r[0])
        if i == 0:
            # Older than every remembered run: count everything evicted before it too.
            return self.evicted
        return self.evicted - runs[i - 1][1]

    def page(self, since_ms: int, limit: int) -> Page:
        """Events with ``t_ms >= since_ms``, oldest first, at most ``limit`` (more only when
        one millisecond alone holds more), cut between two milliseconds."""
        events = self._events
        start = bisect.bisect_left(events, since_ms, key=_t)
        stop = min(len(events), start + limit)
        if stop < len(events):
            cut = events[stop][0]
            # Back off to the first event of the cut's millisecond (its rest follows next page).
            back = bisect.bisect_left(events, cut, lo=start, hi=stop, key=_t)
            # (Unless that empties the page: then the whole millisecond comes now.)
            stop = back if back > start else bisect.bisect_right(events, cut, lo=stop, key=_t)
        out = [_materialise(events[i]) for i in range(start, stop)]
        if stop < len(events):
            nxt = events[stop][0]
        else:
            nxt = out[-1].t_ms + 1 if out else since_ms
            # Whatever is recorded from now on is at or after ``next``: nothing is skipped.
            self._floor_ms = max(self._floor_ms, nxt)
        return Page(out, nxt, self.dropped_since(since_ms))


class RoundTally:
    """The round's consensus messages by direction and kind, turned into one event each.

    Per kind a list [count, highest view, lowest seq, highest seq, peer bitmask] (consortia
    are small: bit i is peer i), updated in place: the cheapest thing to do per message."""

    __slots__ = ("inbound", "outbound")

    def __init__(self) -> None:
        self.inbound: dict[str, list[int | None]] = {}
        self.outbound: dict[str, list[int | None]] = {}

    @staticmethod
    def add(
        into: dict[str, list[int | None]], kind: str, view: int | None, seq: int | None, peer: int
    ) -> None:
        t = into.get(kind)
        if t is None:
            into[kind] = [1, view, seq, seq, 1 << peer if 0 <= peer < 64 else 0]
            return
        t[0] += 1  # type: ignore[operator]
        if view is not None and (t[1] is None or view > t[1]):
            t[1] = view
        if seq is not None:
            if t[2] is None or seq < t[2]:
                t[2] = seq
            if t[3] is None or seq > t[3]:
                t[3] = seq
        if 0 <= peer < 64:
            t[4] |= 1 << peer  # type: ignore[operator]

    def __bool__(self) -> bool:
        return bool(self.inbound or self.outbound)

    def flush(self, ring: EventRing, t_ms: int, received: dict[str, int]) -> None:
        """Record one event per (direction, kind) into ``ring``, add the inbound counts to
        ``received``, and start a new round."""
        inbound = self.inbound
        if inbound:
            for kind, (count, view, lo, hi, mask) in inbound.items():
                ring.add_summary(t_ms, MSG_IN, view, (kind, count, lo, hi, mask))  # type: ignore[arg-type]
                received[kind] = received.get(kind, 0) + count  # type: ignore[operator]
            inbound.clear()
        outbound = self.outbound
        if outbound:
            for kind, (count, view, lo, hi, mask) in outbound.items():
                ring.add_summary(t_ms, MSG_OUT, view, (kind, count, lo, hi, mask))  # type: ignore[arg-type]
            outbound.clear()


def _bits(mask: int) -> list[int]:
    out: list[int] = []
    i = 0
    while mask:
        if mask & 1:
            out.append(i)
        mask >>= 1
        i += 1
    return out
