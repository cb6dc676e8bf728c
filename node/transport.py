"""Persistent peer links over aiohttp: bounded per-peer queues, batched POSTs, backoff.

Wire format. A node receives consensus traffic on ``POST /peer/msgs``: the body is a msgpack
array of frames (each frame a ``node.codec`` encoded message, as msgpack bin). The response is
204 on success, a JSON error otherwise. The sender is authenticated before the body is read
(``node.peerauth``: the node certificate of a TLS link, or a signed header on a plain one);
anything else is refused unread. Unsigned messages (Request, FetchRequest, FetchResponse) must
name the authenticated sender as their replica, so a fetch is answered only to whoever asked.

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
import ssl
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp
import msgpack
from aiohttp import web

from consensus.messages import FetchRequest, FetchResponse, Message, Request
from node.codec import MAX_FRAME_BYTES, CodecError, check_nesting, decode_message, encode_message
from node.config import NodeLimits
from node.http import BadRequest, BodyTooLarge, json_error, read_body_limited
from node.peerauth import FROM_HEADER as FROM_HEADER
from node.peerauth import PeerAuth, Refusal

log = logging.getLogger("medchain.transport")

PEER_PATH = "/peer/msgs"
FRAMES_CONTENT_TYPE = "application/msgpack"
MAX_FRAMES_PER_BODY = 100_000
"""A body holding more frames than this is refused whole (bounds per-request work)."""
_MAX_RESPONSE_BYTES = 64 * 1024
"""A peer's answer is a tiny JSON at most; a larger one is not read (the connection is closed)."""
_MAX_REASON_KEYS = 64
"""Distinct drop-reason counters kept; further reasons are counted under ``other``."""
_INDEX = re.compile(r"\[\d+\]")


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
    rtt_s: float | None = None
    """Round trip of the last successful POST (send the batch, the peer's 204 back)."""


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
        auth: PeerAuth,
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
        self._auth = auth

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
        started = time.monotonic()
        headers = self._auth.headers(self.peer_id, body)
        headers["Content-Type"] = FRAMES_CONTENT_TYPE
        try:
            async with self._session.post(self.url, data=body, headers=headers) as resp:
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
            s.rtt_s = s.last_ok_monotonic - started
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


_UNSIGNED = (Request, FetchRequest, FetchResponse)

Deliver = Callable[[int, Message, bytes], bool]
"""Hands a decoded message (sender id, message, the frame it was decoded from) to the node;
returns False if the node had to drop it. The node may keep the frame to persist the message
without encoding it again."""


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
        auth: PeerAuth,
        ssl_context: ssl.SSLContext | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if self_id in peers:
            raise ValueError("peers must not include this node")
        self.self_id = self_id
        self.auth = auth
        self._ssl = ssl_context
        self._peer_urls = dict(peers)
        self._limits = limits
        self._deliver = deliver
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
        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=2, ssl=self._ssl if self._ssl is not None else True
        )
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
                auth=self.auth,
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

    def send(self, dest: int | None, msg: Message, frame: bytes | None = None) -> None:
        """Queue ``msg`` for ``dest`` (None: every peer); never blocks. ``frame``: its encoding
        when the caller has it already (persisted in the same round), else encoded here, once
        for every peer."""
        if frame is None:
            frame = self.encode(msg)
        if frame is not None:
            self.send_frame(dest, frame)

    def encode(self, msg: Message) -> bytes | None:
        """``msg`` as a frame; None (counted and logged) if it cannot be encoded."""
        try:
            return encode_message(msg)
        except (CodecError, TypeError) as e:
            # Our own message too large (or a bug): never crash the node over one message.
            self.send_encode_errors.add(type(msg).__name__)
            self._log_limit(log, logging.ERROR, "encode", "cannot encode %s: %s", msg, e)
            return None

    def send_frame(self, dest: int | None, frame: bytes) -> None:
        """Queue an encoded frame for ``dest`` (None: every peer); never blocks."""
        if dest is None:
            for each in self._links.values():
                each.enqueue(frame)
            return
        link = self._links.get(dest)
        if link is None:
            self.send_encode_errors.add("unknown_destination")
            return
        link.enqueue(frame)

    @property
    def peer_ids(self) -> list[int]:
        """The peers this node has a link to (once started), in id order."""
        return list(self._links)

    # ------------------------------------------------------------------ receiving

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(PEER_PATH, self.handle_msgs)

    async def handle_msgs(self, request: web.Request) -> web.Response:
        who = self.auth.identify(request)
        if isinstance(who, Refusal):
            return self._refuse(request, who)
        sender = who.replica
        if request.content_type != FRAMES_CONTENT_TYPE:
            self.rejected.add("content_type")
            return json_error(415, "unsupported content type", f"expected {FRAMES_CONTENT_TYPE}")
        try:
            body = await read_body_limited(
                request,
                self._limits.peer_max_body_bytes,
                timeout_s=self._limits.body_timeout_ms / 1000.0,
            )
        except BodyTooLarge as e:
            self.rejected.add("body_too_large")
            return e.response()
        except BadRequest as e:
            self.rejected.add("body_too_slow")
            return e.response()
        mismatch = self.auth.check_body(who, body)
        if mismatch is not None:
            return self._refuse(request, mismatch)
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

    def _refuse(self, request: web.Request, refusal: Refusal) -> web.Response:
        """Refused before the body is decoded (before it is read, but for a signed body that
        does not match its hash); the connection is closed so the body is not read either."""
        self.rejected.add(refusal.reason)
        peer = request.remote or "?"
        self._log_limit(
            log,
            logging.WARNING,
            f"auth:{refusal.reason}",
            "refused peer POST from %s: %s (%s)",
            peer,
            refusal.reason,
            refusal.detail,
        )
        resp = json_error(refusal.status, "peer not authenticated", refusal.detail)
        resp.force_close()
        return resp

    @staticmethod
    def _split_frames(body: bytes) -> list[object] | str:
        """The body's frames, or the reason it is not a msgpack array of frames."""
        if not body:
            return "empty body"
        try:
            check_nesting(body, 1, "body")  # an array of bins: nothing nests inside it
        except CodecError as e:
            return e.reason
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
        try:
            msg = decode_message(frame)
        except CodecError as e:
            key = reason_key(e.reason)
            self.dropped_frames.add(key)
            self._log_limit(
                log, logging.WARNING, f"codec:{key}", "dropped frame from %d: %s", sender, e.reason
            )
            return
        if isinstance(msg, _UNSIGNED) and msg.replica != sender:
            # Unsigned: only the authenticated link says who sent it. A fetch naming another
            # replica would make us send blocks to a third party (an amplifier).
            self.dropped_frames.add("replica_not_sender")
            return
        self.received_frames += 1
        if not self._deliver(sender, msg, frame):
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
