"""The consensus task's inboxes: what peers sent and what clients submitted, bounded; and the
bytes of a round's messages, so that none is encoded twice.

Producers (the peer endpoint, POST /tx) never block: a full inbox refuses, and the caller
counts it (a peer's message is dropped, a client gets 503). The consensus task drains both.

Each event keeps the time it was received: the replica steps it at that time, not at the time
the consensus task gets to it. Its timers then judge the primary by what had arrived when they
expire; stepped at the current time, a backlog longer than the view timeout fired them on
messages that proved progress but were still queued behind (a view change while the primary
was committing, under twice the peak load).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from consensus.events import Receive, Submit
from consensus.messages import Message
from node.api import Overloaded
from node.codec import encode_message


class PeerInbox:
    """Received messages, bounded in number and in bytes (a FetchResponse may be megabytes),
    each with the frame it came in when that is worth keeping (see :meth:`offer`)."""

    __slots__ = ("_clock", "_items", "_max_bytes", "_max_msgs", "nbytes")

    def __init__(self, max_msgs: int, max_bytes: int, clock: Callable[[], int]) -> None:
        self._max_msgs = max_msgs
        self._max_bytes = max_bytes
        self._clock = clock
        self._items: deque[tuple[Receive, int, bytes | None, int]] = deque()
        self.nbytes = 0
        """Sum of the queued messages' frame sizes."""

    def __len__(self) -> int:
        return len(self._items)

    def offer(self, event: Receive, size: int, frame: bytes | None) -> bool:
        """Queue ``event``, whose frame was ``size`` bytes; ``frame`` is kept with it if given
        (a message the replica may persist). False if that would exceed a bound."""
        if len(self._items) >= self._max_msgs or self.nbytes + size > self._max_bytes:
            return False
        self._items.append((event, size, frame, self._clock()))
        self.nbytes += size
        return True

    def pop(self) -> tuple[Receive, bytes | None, int]:
        """The oldest event, its frame, and when it was received (ms)."""
        event, size, frame, received_ms = self._items.popleft()
        self.nbytes -= size
        return event, frame, received_ms


class RoundFrames:
    """The encoding of each message of one round, by message identity: what a message came in
    as, or what it was first encoded to, so that persisting and sending it share the bytes.

    Each entry holds its message, so no id is reused while the entries live; the consensus task
    clears them at the end of every round.
    """

    __slots__ = ("_by_id",)

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[Message, bytes]] = {}

    def note(self, msg: Message, frame: bytes) -> None:
        self._by_id[id(msg)] = (msg, frame)

    def get(self, msg: Message) -> bytes | None:
        entry = self._by_id.get(id(msg))
        return None if entry is None else entry[1]

    def encoded(self, msg: Message) -> bytes:
        """``msg``'s frame, encoded now (CodecError if it cannot be) unless known already."""
        frame = self.get(msg)
        if frame is None:
            frame = encode_message(msg)
            self.note(msg, frame)
        return frame

    def clear(self) -> None:
        self._by_id.clear()


@dataclass(slots=True)
class ClientBatch:
    """Admitted client transactions waiting for the consensus task, and who waits for them."""

    event: Submit
    done: asyncio.Future[dict[bytes, str]]
    nbytes: int = 0
    """Encoded bytes of the event's transactions (the inbox's byte bound)."""
    received_ms: int = 0
    """When it was queued (set by ``ClientInbox.push``)."""


class ClientInbox:
    """Client batches in arrival order, bounded in batches and in transaction bytes: ``full``
    past either (POST /tx then gets 503)."""

    __slots__ = ("_clock", "_items", "_max", "_max_bytes", "nbytes")

    def __init__(self, max_batches: int, max_bytes: int, clock: Callable[[], int]) -> None:
        self._clock = clock
        self._max = max_batches
        self._max_bytes = max_bytes
        self._items: deque[ClientBatch] = deque()
        self.nbytes = 0
        """Encoded bytes of the queued transactions."""

    def __len__(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        return len(self._items) >= self._max or self.nbytes >= self._max_bytes

    def push(self, batch: ClientBatch) -> None:
        batch.received_ms = self._clock()
        self._items.append(batch)
        self.nbytes += batch.nbytes

    def pop(self) -> ClientBatch:
        batch = self._items.popleft()
        self.nbytes -= batch.nbytes
        return batch

    def fail_all(self, why: str) -> None:
        """Answer every queued batch with Overloaded(``why``) and empty the inbox."""
        while self._items:
            batch = self.pop()
            if not batch.done.done():
                batch.done.set_exception(Overloaded(why))
