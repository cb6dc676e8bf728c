"""Persistent peer links over aiohttp: bounded per-peer queues, batched POSTs, backoff.

Wire format. A node receives consensus traffic on ``POST /peer/msgs``: the body is a msgpack
array of frames (each frame a ``node.codec`` encoded message, as msgpack bin), the header
``X-Medchain-From`` names the sending replica id. The response is 204 on success, a JSON error
otherwise. The header is only a claim: every consensus message is signed, and the core checks
signatures against the replica named inside the message; the header lets us reject traffic from
outside the consortium early and attribute counters.

Sending. Each peer has one owned sender task draining a bounded FIFO of encoded frames. It packs
whatever is queued (up to a frame/byte budget) into one POST over a shared keep-alive
``ClientSession``, so a burst of votes costs one round trip, and exactly one request per peer is
in flight (frames arrive in order). When the queue is full the oldest frame is dropped and
counted: consensus tolerates loss (retransmission and view change recover), and the newest
messages are the most useful. On a failed POST the batch goes back to the head of the queue and
the sender waits an exponentially growing, jittered, bounded delay before retrying.

We chose HTTP POST batches over a websocket per peer: no connection state machine beyond what
aiohttp's pool already does (reconnects are implicit), one code path for errors, and the peer
endpoint sits in the same aiohttp app and middleware as the client API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp
import msgpack
from aiohttp import web

from consensus.messages import Message
from node.codec import MAX_FRAME_BYTES, CodecError, decode_message, encode_message
from node.config import NodeLimits
from node.faults import FaultLayer

log = logging.getLogger("medchain.transport")

PEER_PATH = "/peer/msgs"
FROM_HEADER = "X-Medchain-From"
FRAMES_CONTENT_TYPE = "application/msgpack"
MAX_FRAMES_PER_BODY = 100_000
"""A body holding more frames than this is refused whole (bounds per-request work)."""
_MAX_RESPONSE_BYTES = 64 * 1024
"""A peer's answer is a tiny JSON at most; a larger one is not read (the connection is closed)."""
_MAX_REASON_KEYS = 64
"""Distinct drop-reason counters kept; further reasons are counted under ``other``."""
_INDEX = re.compile(r"\[\d+\]")


def json_error(status: int, error: str, detail: object = None) -> web.Response:
    """The uniform JSON error body of every medchain HTTP endpoint."""
    return web.json_response({"error": error, "detail": detail}, status=status)


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds {limit} bytes")
        self.limit = limit


async def read_body_limited(request: web.Request, limit: int) -> bytes:
    """Read a request body, refusing (BodyTooLarge) as soon as it would exceed ``limit``.

    Checks Content-Length first, then counts while streaming, so neither a lying header nor a
    chunked upload can make us buffer more than ``limit`` bytes.
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


class LogLimiter:
    """At most one log line per key per interval; counts what it suppressed in between."""

    __slots__ = ("_interval_s", "_last", "_max_keys", "_suppressed")

    def __init__(self, interval_s: float = 5.0, max_keys: int = 256) -> None:
        self._interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()
        self._max_keys = max_keys

    def __call__(
        self, logger: logging.Logger, level: int, key: str, msg: str, *args: object
    ) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval_s:
            self._suppressed[key] += 1
            return
        if last is None and len(self._last) >= self._max_keys:
            # Forget the oldest key rather than grow without bound.
            oldest = next(iter(self._last))
            del self._last[oldest]
            self._suppressed.pop(oldest, None)
        self._last.pop(key, None)
        self._last[key] = now
        skipped = self._suppressed.pop(key, 0)
        suffix = f" (+{skipped} similar suppressed)" if skipped else ""
        logger.log(level, msg + suffix, *args)


def reason_key(reason: str) -> str:
    """A bounded counter key for a codec error: its field path with indexes erased."""
    return _INDEX.sub("[]", reason.split(":", 1)[0])[:80]


class ReasonCounter:
    """Counter of drop reasons with a bounded number of distinct keys."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, key: str, n: int = 1) -> None:
        if key not in self.counts and len(self.counts) >= _MAX_REASON_KEYS:
            key = "other"
        self.counts[key] += n

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)


@dataclass(slots=True)
class LinkStats:
    """Mutable per-peer counters (owned by the peer's sender task; read by /status)."""

    state: str = "idle"
    """idle (nothing sent yet) | up (last POST succeeded) | down (last POST failed)."""
    sent_frames: int = 0
    sent_batches: int = 0
    sent_bytes: int = 0
    dropped_queue_full: int = 0
    dropped_rejected: int = 0
    send_errors: int = 0
    consecutive_failures: int = 0
    last_error: str | None = None
    last_ok_monotonic: float | None = None


class PeerLink:
    """One peer: a bounded frame queue and the task that drains it into batched POSTs."""

    def __init__(
        self,
        *,
        self_id: int,
        peer_id: int,
        url: str,
        limits: NodeLimits,
        session: aiohttp.ClientSession,
        rng: random.Random,
    ) -> None:
        self.peer_id = peer_id
        self.url = url.rstrip("/") + PEER_PATH
        self.stats = LinkStats()
        self._self_id = self_id
        self._limits = limits
        self._session = session
        self._rng = rng
        self._queue: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._headers = {FROM_HEADER: str(self_id), "Content-Type": FRAMES_CONTENT_TYPE}

    @property
    def queued(self) -> int:
        return len(self._queue)

    def enqueue(self, frame: bytes) -> None:
        self._queue.append(frame)
        self._trim()
        self._wake.set()

    def _trim(self) -> None:
        excess = len(self._queue) - self._limits.peer_queue_max_msgs
        for _ in range(excess):
            self._queue.popleft()
        if excess > 0:
            self.stats.dropped_queue_full += excess

    def _take_batch(self) -> list[bytes]:
        budget = self._limits.peer_batch_max_bytes
        batch: list[bytes] = []
        size = 0
        q = self._queue
        while q and len(batch) < self._limits.peer_batch_max_frames:
            if batch and size + len(q[0]) > budget:
                break
            frame = q.popleft()
            batch.append(frame)
            size += len(frame)
        return batch

    def _requeue(self, batch: list[bytes]) -> None:
        """Put an unsent batch back at the head; the bound then drops the oldest frames."""
        self._queue.extendleft(reversed(batch))
        self._trim()

    async def run(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._take_batch()
            outcome = await self._post(batch)
            if outcome == "ok":
                continue
            if outcome == "retry":
                self._requeue(batch)
            else:
                self.stats.dropped_rejected += len(batch)
            await asyncio.sleep(self._backoff_s())

    def _backoff_s(self) -> float:
        """Exponential in consecutive failures, bounded, with jitter in [delay/2, delay]."""
        lim = self._limits
        exp = min(self.stats.consecutive_failures - 1, 30)
        delay_ms = min(lim.peer_backoff_max_ms, lim.peer_backoff_min_ms * (1 << max(exp, 0)))
        return (delay_ms / 2 + self._rng.uniform(0, delay_ms / 2)) / 1000.0

    async def _post(self, batch: list[bytes]) -> str:
        """POST one batch; returns ok, retry (transient failure) or reject (peer refused it)."""
        body = msgpack.packb(batch, use_bin_type=True)
        try:
            async with self._session.post(self.url, data=body, headers=self._headers) as resp:
                status = resp.status
                detail = await _short_response(resp)
        except asyncio.CancelledError:
            self._requeue(batch)  # keep the frames if the task is cancelled mid-flight
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            self._failed(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
            return "retry"
        if 200 <= status < 300:
            s = self.stats
            if s.state != "up":
                log.info("peer %d link up (%s)", self.peer_id, self.url)
            s.state = "up"
            s.consecutive_failures = 0
            s.last_error = None
            s.last_ok_monotonic = time.monotonic()
            s.sent_frames += len(batch)
            s.sent_batches += 1
            s.sent_bytes += len(body)
            return "ok"
        self._failed(f"HTTP {status}: {detail}")
        # 4xx: the peer will refuse this batch again (misconfigured consortium, oversize);
        # dropping it keeps one bad batch from blocking the link forever. 5xx/429: retry.
        return "retry" if status >= 500 or status == 429 else "reject"

    def _failed(self, error: str) -> None:
        s = self.stats
        if s.state != "down":
            log.warning("peer %d link down (%s): %s", self.peer_id, self.url, error)
        s.state = "down"
        s.send_errors += 1
        s.consecutive_failures += 1
        s.last_error = error[:200]

    def status(self) -> dict[str, object]:
        s = self.stats
        last_ok = s.last_ok_monotonic
        return {
            "id": self.peer_id,
            "url": self.url.removesuffix(PEER_PATH),
            "state": s.state,
            "queued": len(self._queue),
            "sent_frames": s.sent_frames,
            "sent_batches": s.sent_batches,
            "sent_bytes": s.sent_bytes,
            "dropped_queue_full": s.dropped_queue_full,
            "dropped_rejected": s.dropped_rejected,
            "send_errors": s.send_errors,
            "consecutive_failures": s.consecutive_failures,
            "last_error": s.last_error,
            "last_ok_ms_ago": None if last_ok is None else int((time.monotonic() - last_ok) * 1000),
        }


async def _short_response(resp: aiohttp.ClientResponse) -> str:
    if resp.content_length is not None and resp.content_length > _MAX_RESPONSE_BYTES:
        resp.close()
        return f"<{resp.content_length} bytes>"
    data = await resp.content.read(_MAX_RESPONSE_BYTES)
    return data.decode("utf-8", "replace")[:200]


Deliver = Callable[[int, Message, int], bool]
"""Hands a decoded message (sender id, message, frame size in bytes) to the node; returns
False if the node had to drop it."""


class Transport:
    """All peer links of one node plus the receiving endpoint.

    ``deliver`` is called synchronously from the request handler for every decoded frame; it
    must not block (the runtime puts the message in its bounded inbox).
    """

    def __init__(
        self,
        *,
        self_id: int,
        peers: Mapping[int, str],
        limits: NodeLimits,
        deliver: Deliver,
        rng: random.Random | None = None,
        faults: FaultLayer | None = None,
    ) -> None:
        if self_id in peers:
            raise ValueError("peers must not include this node")
        self.self_id = self_id
        self._peer_urls = dict(peers)
        self._limits = limits
        self._deliver = deliver
        self._faults = faults
        self._rng = rng or random.Random()
        self._session: aiohttp.ClientSession | None = None
        self._links: dict[int, PeerLink] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._log_limit = LogLimiter()
        self.received_frames = 0
        self.received_bodies = 0
        self.rejected = ReasonCounter()
        """Whole bodies refused, by reason."""
        self.dropped_frames = ReasonCounter()
        """Single frames dropped on receipt, by reason (codec error path, inbox full)."""
        self.send_encode_errors = ReasonCounter()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._session is not None:
            raise RuntimeError("transport already started")
        timeout = aiohttp.ClientTimeout(total=self._limits.peer_timeout_ms / 1000.0)
        # One pooled connection per peer is enough (one request in flight per link); keep-alive
        # is aiohttp's default, so the TCP connection persists across batches.
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=2)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, raise_for_status=False
        )
        for peer_id, url in sorted(self._peer_urls.items()):
            link = PeerLink(
                self_id=self.self_id,
                peer_id=peer_id,
                url=url,
                limits=self._limits,
                session=self._session,
                rng=self._rng,
            )
            self._links[peer_id] = link
            self._tasks.append(asyncio.create_task(link.run(), name=f"peer-{peer_id}-sender"))

    async def stop(self) -> None:
        """Cancel every sender task, wait for them, close the session. Idempotent."""
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------------ sending

    def send(self, dest: int | None, msg: Message) -> None:
        """Queue ``msg`` for ``dest`` (None: every peer). Encoded once, never blocks."""
        targets = list(self._links.values()) if dest is None else [self._links.get(dest)]
        if dest is not None and targets[0] is None:
            self.send_encode_errors.add("unknown_destination")
            return
        try:
            frame = encode_message(msg)
        except (CodecError, TypeError) as e:
            # Our own message too large (or a bug): never crash the node over one message.
            self.send_encode_errors.add(type(msg).__name__)
            self._log_limit(log, logging.ERROR, "encode", "cannot encode %s: %s", msg, e)
            return
        for link in targets:
            if link is None:
                continue
            if self._faults is None:
                link.enqueue(frame)
                continue
            # Fault injection: drop, duplicate, or enqueue later (delay, reorder).
            for delay_s, out in self._faults.on_send(link.peer_id, frame):
                if delay_s > 0:
                    asyncio.get_running_loop().call_later(delay_s, link.enqueue, out)
                else:
                    link.enqueue(out)

    # ------------------------------------------------------------------ receiving

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(PEER_PATH, self.handle_msgs)

    async def handle_msgs(self, request: web.Request) -> web.Response:
        raw_from = request.headers.get(FROM_HEADER)
        if raw_from is None or not raw_from.isdigit() or len(raw_from) > 6:
            self.rejected.add("bad_sender_header")
            return json_error(400, "bad sender header", f"{FROM_HEADER} must be a replica id")
        sender = int(raw_from)
        if sender not in self._peer_urls:
            self.rejected.add("unknown_sender")
            self._log_limit(
                log,
                logging.WARNING,
                "unknown_sender",
                "refused frames from unknown sender %d",
                sender,
            )
            return json_error(403, "unknown sender", f"replica {sender} is not a peer of this node")
        if request.content_type != FRAMES_CONTENT_TYPE:
            self.rejected.add("content_type")
            return json_error(415, "unsupported content type", f"expected {FRAMES_CONTENT_TYPE}")
        try:
            body = await read_body_limited(request, self._limits.peer_max_body_bytes)
        except BodyTooLarge as e:
            self.rejected.add("body_too_large")
            return json_error(413, "body too large", str(e))
        frames = self._split_frames(body)
        if isinstance(frames, str):
            self.rejected.add("malformed_body")
            self._log_limit(
                log, logging.WARNING, f"body:{sender}", "malformed body from %d: %s", sender, frames
            )
            return json_error(400, "malformed body", frames)
        self.received_bodies += 1
        for frame in frames:
            self._receive_frame(sender, frame)
        return web.Response(status=204)

    @staticmethod
    def _split_frames(body: bytes) -> list[object] | str:
        """The body's frames, or the reason it is not a msgpack array of frames."""
        if not body:
            return "empty body"
        try:
            frames = msgpack.unpackb(
                body,
                raw=False,
                use_list=True,
                max_array_len=MAX_FRAMES_PER_BODY,
                max_bin_len=MAX_FRAME_BYTES,
                max_str_len=1024,
                max_map_len=0,
                max_ext_len=0,
            )
        except Exception as e:  # msgpack may raise several types; any means "malformed"
            return f"not a msgpack array of frames ({type(e).__name__})"
        if not isinstance(frames, list):
            return f"expected an array of frames, got {type(frames).__name__}"
        return frames

    def _receive_frame(self, sender: int, frame: object) -> None:
        if type(frame) is not bytes:
            self.dropped_frames.add("frame_not_bytes")
            return
        if self._faults is not None and not self._faults.on_receive(sender, frame):
            self.dropped_frames.add("fault_injected")
            return
        try:
            msg = decode_message(frame)
        except CodecError as e:
            key = reason_key(e.reason)
            self.dropped_frames.add(key)
            self._log_limit(
                log, logging.WARNING, f"codec:{key}", "dropped frame from %d: %s", sender, e.reason
            )
            return
        self.received_frames += 1
        if not self._deliver(sender, msg, len(frame)):
            self.dropped_frames.add("inbox_full")

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, object]:
        return {
            "received_frames": self.received_frames,
            "received_bodies": self.received_bodies,
            "rejected_bodies": self.rejected.snapshot(),
            "dropped_frames": self.dropped_frames.snapshot(),
            "send_errors": self.send_encode_errors.snapshot(),
        }

    def peers_status(self) -> list[dict[str, object]]:
        return [link.status() for _, link in sorted(self._links.items())]

    def link(self, peer_id: int) -> PeerLink:
        return self._links[peer_id]
