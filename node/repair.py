"""Quarantine and repair of this node's own stored blocks.

A stored block that fails verification is quarantined: its corrupt bytes kept with the reason
(in :class:`RepairLog`, so the quarantine survives a restart), refused to readers, and
replaced with a copy fetched from a peer (``GET /blocks/{h}?payload=1``, parsed by the ledger's
one JSON parser) once that copy verifies against the chain around it (previous block's hash,
next block's prev_hash, certificate, every tx). Every step is an event in the log.

:class:`BlockFetcher` is the bounded HTTP GET against a peer's API (timeout, answer size) that
repair fetches copies with; the cross-audit's client (``node.audit.client``) builds on it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Self

import aiohttp

from node.ledger import Block, BlockJsonError, block_from_json
from node.store import Store, StoreError
from node.verified import BlockUnavailable, ChainVerifier

if TYPE_CHECKING:
    from node.config import NodeConfig

log = logging.getLogger("medchain.repair")

AUDIT_DB_NAME: Final = "audit.sqlite"
"""The node's small SQLite database beside the chain's store: quarantine and events (read
path), evidence records (cross-audit). Never the chain's store itself."""
MAX_DETAIL_CHARS: Final = 1000
MAX_ERROR_CHARS: Final = 300


def now_ms() -> int:
    return int(time.time() * 1000)


def short(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# the persistent log: quarantined blocks and events


_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS events (
    id     INTEGER PRIMARY KEY,
    at_ms  INTEGER NOT NULL,
    kind   TEXT NOT NULL,
    height INTEGER,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    height         INTEGER PRIMARY KEY,
    detected_at_ms INTEGER NOT NULL,
    reason         TEXT NOT NULL,
    data           BLOB
);
"""


@dataclass(frozen=True, slots=True)
class AuditEvent:
    id: int
    at_ms: int
    kind: str
    """tamper-detected | repaired | repair-failed | resolved | evidence | startup-check"""
    height: int | None
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at_ms": self.at_ms,
            "kind": self.kind,
            "height": self.height,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class QuarantineRow:
    height: int
    detected_at_ms: int
    reason: str
    data: bytes | None
    """The corrupt stored bytes at detection time (None if the block did not exist)."""


class RepairLog:
    """Quarantined blocks and events in ``DATA_DIR/audit.sqlite`` (``None``: in memory).

    Bounded: at most ``max_events`` events (the oldest go first) and ``max_quarantine``
    quarantined blocks' bytes. One connection, used from the node's event loop thread; every
    write is one short transaction. ``node.audit.log.AuditLog`` adds the evidence table.
    """

    _extra_schema: str = ""
    """Tables a subclass adds to the same database."""

    def __init__(
        self,
        path: str | Path | None,
        *,
        max_events: int = 1000,
        max_quarantine: int = 1024,
        read_only: bool = False,
    ) -> None:
        if min(max_events, max_quarantine) < 1:
            raise ValueError("AuditLog bounds must be positive")
        self.path = None if path is None else Path(path)
        self.max_events = max_events
        self.max_quarantine = max_quarantine
        if self.path is None:
            self._db = sqlite3.connect(":memory:", isolation_level=None)
        elif read_only:
            self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
        else:
            self._db = sqlite3.connect(self.path, isolation_level=None)
        try:
            if not read_only:
                if self.path is not None:
                    self._db.execute("PRAGMA journal_mode=WAL")
                self._db.executescript(_SCHEMA + self._extra_schema)
        except BaseException:
            self._db.close()
            raise

    @classmethod
    def for_node(cls, config: NodeConfig) -> Self:
        """The log of a configured node: ``DATA_DIR/audit.sqlite`` (the directory is made)."""
        config.data_dir.mkdir(parents=True, exist_ok=True)
        return cls(config.data_dir / AUDIT_DB_NAME)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- events ------------------------------------------------------------------------------

    def add_event(self, kind: str, height: int | None, detail: str) -> AuditEvent:
        at_ms = now_ms()
        detail = short(detail, MAX_DETAIL_CHARS)
        with self._write():
            cur = self._db.execute(
                "INSERT INTO events(at_ms, kind, height, detail) VALUES (?, ?, ?, ?)",
                (at_ms, kind, height, detail),
            )
            self._trim("events", self.max_events)
        return AuditEvent(int(cur.lastrowid or 0), at_ms, kind, height, detail)

    def events(self, limit: int = 50) -> list[AuditEvent]:
        """Newest first."""
        rows = self._db.execute(
            "SELECT id, at_ms, kind, height, detail FROM events ORDER BY id DESC LIMIT ?",
            (max(0, limit),),
        ).fetchall()
        return [AuditEvent(int(i), int(t), str(k), hh, str(d)) for i, t, k, hh, d in rows]

    def event_counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT kind, COUNT(*) FROM events GROUP BY kind").fetchall()
        return {str(k): int(n) for k, n in rows}

    # -- quarantine --------------------------------------------------------------------------

    def quarantine(self, height: int, reason: str, data: bytes | None) -> bool:
        """Remember a corrupt block's bytes until it is repaired; False if the table is full
        (the block is still refused and repaired, only its bytes are not kept)."""
        with self._write():
            count = int(self._db.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0])
            exists = self._db.execute(
                "SELECT 1 FROM quarantine WHERE height = ?", (height,)
            ).fetchone()
            if exists is None and count >= self.max_quarantine:
                return False
            self._db.execute(
                "INSERT INTO quarantine(height, detected_at_ms, reason, data) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(height) DO UPDATE SET reason = excluded.reason, data = excluded.data",
                (height, now_ms(), short(reason, MAX_DETAIL_CHARS), data),
            )
        return True

    def release(self, height: int) -> None:
        with self._write():
            self._db.execute("DELETE FROM quarantine WHERE height = ?", (height,))

    def quarantined(self) -> list[QuarantineRow]:
        rows = self._db.execute(
            "SELECT height, detected_at_ms, reason, data FROM quarantine ORDER BY height"
        ).fetchall()
        return [
            QuarantineRow(int(hh), int(t), str(r), None if d is None else bytes(d))
            for hh, t, r, d in rows
        ]

    def _trim(self, table: str, keep: int) -> None:
        # Table names are our own constants, never input.
        self._db.execute(
            f"DELETE FROM {table} WHERE id NOT IN "
            f"(SELECT id FROM {table} ORDER BY id DESC LIMIT ?)",
            (keep,),
        )


# ---------------------------------------------------------------------------------------------
# fetching a copy from a peer


class PeerError(Exception):
    """A peer did not answer usefully (connection, timeout, HTTP error, unexpected shape)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidServed(Exception):
    """A peer answered with a block that is malformed or fails verification."""

    def __init__(self, reason: str, doc: object | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.doc = doc
        """The JSON document served (None if it was not JSON)."""


@dataclass(frozen=True, slots=True)
class FetchedBlock:
    block: Block
    doc: object
    """The block's JSON document as served (evidence, if it turns out not to fit our chain)."""


async def _read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    if resp.content_length is not None and resp.content_length > limit:
        raise PeerError(f"answer of {resp.content_length} bytes exceeds {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise PeerError(f"answer exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _error_summary(body: bytes) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return short(body.decode("utf-8", "replace"), 200)
    if isinstance(doc, dict):
        parts = [str(doc[k]) for k in ("error", "detail") if doc.get(k)]
        return short(": ".join(parts), 200)
    return ""


class BlockFetcher:
    """Bounded GETs against a peer's HTTP API (one shared keep-alive session)."""

    def __init__(self, session: aiohttp.ClientSession, *, timeout_ms: int, max_bytes: int) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_ms / 1000.0)
        self._max_bytes = max_bytes

    async def get(self, url: str) -> bytes:
        """The body of a 200 answer; PeerError otherwise."""
        try:
            async with self._session.get(url, timeout=self._timeout) as resp:
                body = await _read_limited(resp, self._max_bytes)
                if resp.status != 200:
                    raise PeerError(f"HTTP {resp.status} {_error_summary(body)}".rstrip())
                return body
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            detail = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            raise PeerError(short(detail)) from None

    async def get_json(self, url: str) -> object:
        body = await self.get(url)
        try:
            return json.loads(body)
        except ValueError:
            raise PeerError(f"{url}: answer is not JSON") from None

    async def block(self, base: str, height: int) -> FetchedBlock:
        """The whole block (payloads included) for repair. InvalidServed if the answer is not
        a block; PeerError if there is no answer."""
        body = await self.get(f"{base}/blocks/{height}?payload=1")
        try:
            doc = json.loads(body)
        except ValueError:
            raise InvalidServed("served bytes do not decode as JSON", None) from None
        if isinstance(doc, dict) and isinstance(doc.get("block"), dict):
            doc = doc["block"]
        try:
            block = block_from_json(doc)
        except (BlockJsonError, ValueError, OverflowError) as e:
            # ValueError, OverflowError: values the JSON parser let through but the codec
            # cannot hold (a served block is bad input, never a crash of the repair).
            raise InvalidServed(f"malformed block: {e}", doc) from None
        return FetchedBlock(block, doc)


# ---------------------------------------------------------------------------------------------
# quarantine and repair


@dataclass(slots=True)
class Quarantined:
    height: int
    reason: str
    detected_at_ms: int
    attempts: int = 0
    last_error: str | None = None
    next_attempt: float = 0.0
    """time.monotonic() before which no repair is tried."""

    def to_json(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "reason": self.reason,
            "detected_at_ms": self.detected_at_ms,
            "attempts": self.attempts,
            "last_error": self.last_error,
        }


@dataclass(frozen=True, slots=True)
class RepairBounds:
    max_quarantined: int = 256
    repairs_per_round: int = 8
    backoff_base_ms: int = 2000
    """The first retry delay (the reader's round interval); doubles per failed attempt."""
    backoff_max_ms: int = 30_000


BadCopy = Callable[[int, str, int, str, object | None], None]
"""(peer id, peer url, height, problem, served document) -> None: a peer served a bad copy."""


class Repairer:
    """Quarantines stored blocks that fail verification, refuses them to readers, and
    replaces them with a verified copy fetched from a peer."""

    def __init__(
        self,
        store: Store,
        verifier: ChainVerifier,
        repair_log: RepairLog,
        bounds: RepairBounds,
        *,
        on_quarantine: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.verifier = verifier
        self._log = repair_log
        self._bounds = bounds
        self._on_quarantine = on_quarantine or (lambda: None)
        self._q: dict[int, Quarantined] = {}
        self.repaired = 0
        self.repair_failures = 0
        self.overflow = 0
        self.on_bad_copy: BadCopy = lambda *_: None
        """Told of every bad copy a peer served (the cross-audit records it as evidence)."""
        for row in repair_log.quarantined():
            # Remembered from before a restart: still bad until repaired or verified again.
            self._q[row.height] = Quarantined(row.height, row.reason, row.detected_at_ms)

    # -- quarantine --------------------------------------------------------------------------

    def is_quarantined(self, height: int) -> bool:
        return height in self._q

    @property
    def quarantined(self) -> list[Quarantined]:
        return [self._q[hh] for hh in sorted(self._q)]

    def quarantine(self, height: int, reason: str) -> None:
        """Refuse block ``height`` from now on, keep its bytes, and schedule its repair."""
        if height in self._q:
            return
        if len(self._q) >= self._bounds.max_quarantined:
            self.overflow += 1
            log.error("block %d is bad (%s) but the quarantine is full", height, reason)
            return
        log.warning(
            "block %d failed verification: %s; quarantined, repairing from peers", height, reason
        )
        self.verifier.cache.forget(height)
        self._log.quarantine(height, reason, self.store.get_block_raw(height))
        self._log.add_event("tamper-detected", height, reason)
        self._q[height] = Quarantined(height, reason, now_ms())
        self._on_quarantine()

    def refuse_quarantined(self, height: int) -> None:
        q = self._q.get(height)
        if q is not None:
            raise BlockUnavailable(height, q.reason, quarantined=True)

    def _release(self, height: int) -> None:
        self._q.pop(height, None)
        self._log.release(height)

    # -- repair ------------------------------------------------------------------------------

    def replacement_problem(self, height: int, block: Block) -> str | None:
        """None if ``block`` is a valid block for ``height`` that fits our chain."""
        if block.height != height:
            return f"served block {block.height} instead of {height}"
        expected_prev = self.verifier.trusted_hash(self.store, height - 1)
        problem = self.verifier.check_block(
            block, block.prev_hash if expected_prev is None else expected_prev
        )
        if problem:
            return problem
        expected_hash = self.verifier.expected_hash(self.store, height)
        if expected_hash is not None and block.block_hash != expected_hash:
            return f"does not link to block {height + 1}"
        return None

    async def repair_due(self, fetcher: BlockFetcher, peers: Mapping[int, str]) -> None:
        """Try to repair the quarantined blocks whose backoff has expired (bounded count)."""
        now = time.monotonic()
        due = [hh for hh in sorted(self._q) if self._q[hh].next_attempt <= now]
        for height in due[: self._bounds.repairs_per_round]:
            await self.repair(height, fetcher, peers)

    async def repair(self, height: int, fetcher: BlockFetcher, peers: Mapping[int, str]) -> bool:
        q = self._q.get(height)
        if q is None:
            return True
        q.attempts += 1
        errors: list[str] = []
        for peer_id, url in self._peer_order(height, q.attempts, peers):
            fetched = await self._fetch(fetcher, peer_id, url, height, errors)
            if fetched is None:
                continue
            if height not in self._q:
                return True  # repaired meanwhile (a concurrent read verified it)
            problem = self.replacement_problem(height, fetched.block)
            if problem:
                errors.append(f"replica {peer_id}: {problem}")
                if fetched.block.height == height:
                    self.on_bad_copy(peer_id, url, height, problem, fetched.doc)
                continue
            if self._replace(height, q, fetched.block, peer_id, url, errors):
                return True
        # A verified copy always replaces ours (it also rewrites the store's index columns);
        # without one, a block that verifies again (restored by an operator) is released.
        if self._verifies_again(height):
            self._release(height)
            self._log.add_event("resolved", height, "no copy fetched; stored block verifies again")
            return True
        self._failed(q, errors)
        return False

    async def _fetch(
        self, fetcher: BlockFetcher, peer_id: int, url: str, height: int, errors: list[str]
    ) -> FetchedBlock | None:
        try:
            return await fetcher.block(url, height)
        except PeerError as e:
            errors.append(f"replica {peer_id}: {e.reason}")
        except InvalidServed as e:
            errors.append(f"replica {peer_id} served an invalid block: {e.reason}")
            self.on_bad_copy(peer_id, url, height, e.reason, e.doc)
        return None

    def _verifies_again(self, height: int) -> bool:
        try:
            return self.verifier.read(self.store, height) is not None
        except BlockUnavailable:
            return False

    def _replace(
        self, height: int, q: Quarantined, block: Block, peer_id: int, url: str, errors: list[str]
    ) -> bool:
        reason = f"audit: {q.reason}; replaced with the copy of replica {peer_id}"
        try:
            self.store.replace_block(height, block, reason=short(reason, 500))
        except StoreError as e:
            errors.append(f"replica {peer_id}: store refused the copy: {e}")
            return False
        self.verifier.cache.forget(height)
        self._release(height)
        self.repaired += 1
        log.warning("block %d repaired with the copy of replica %d (%s)", height, peer_id, url)
        self._log.add_event(
            "repaired",
            height,
            f"replaced with the verified copy of replica {peer_id} ({url}); was: {q.reason}",
        )
        return True

    def _failed(self, q: Quarantined, errors: list[str]) -> None:
        self.repair_failures += 1
        q.last_error = short("; ".join(errors) or "no peer to fetch from")
        backoff_ms = min(
            self._bounds.backoff_max_ms,
            self._bounds.backoff_base_ms * (1 << min(q.attempts - 1, 16)),
        )
        q.next_attempt = time.monotonic() + backoff_ms / 1000.0
        # Events at attempts 1, 2, 4, 8, ...: visible without flooding the bounded log.
        if q.attempts & (q.attempts - 1) == 0:
            self._log.add_event("repair-failed", q.height, f"attempt {q.attempts}: {q.last_error}")

    @staticmethod
    def _peer_order(height: int, attempt: int, peers: Mapping[int, str]) -> list[tuple[int, str]]:
        """Every peer once, starting at a different one per height and attempt (spreads load
        and gets past a peer that keeps failing)."""
        items = sorted(peers.items())
        if not items:
            return []
        start = (height + attempt) % len(items)
        return items[start:] + items[:start]

    def status(self) -> dict[str, Any]:
        return {
            "quarantined": [q.to_json() for q in self.quarantined],
            "repaired": self.repaired,
            "repair_failures": self.repair_failures,
            "quarantine_overflow": self.overflow,
        }
