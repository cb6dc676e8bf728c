"""The node's own read path: every block it serves or fetches is verified, bad ones repaired.

A block is verified whenever it is read through :meth:`BlockReader.read_block`,
:meth:`BlockReader.read_blocks` or :meth:`BlockReader.read_headers` (what the API and state
transfer serve; the newest headers come from the memory of what the node committed, not from
disk), by a background scrub that re-verifies stored blocks within a CPU budget
(``scrub_cpu_permille`` of one core, metered, in small steps that yield to the event loop), and
at start-up (``node.startup``). What verified is remembered in one cache
(``node.verified.VerifiedCache``). A block that fails is quarantined, refused to readers (HTTP
503 naming the problem) and repaired from a peer's verified copy (``node.repair``).

The reader's one background task runs repairs that are due and a scrub step every
``interval_ms``, and at once when a block is quarantined. It needs nothing of the cross-audit
(``node.audit``), which reads through it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from node.access import ReaderHttp
from node.ledger import Block, BlockHeader, ClientRegistry, VerifiedCommits, block_header
from node.periodic import PeriodicRounds
from node.repair import BlockFetcher, RepairBounds, Repairer, RepairLog
from node.startup import StartupReport, startup_verify
from node.store import Store
from node.verified import VERIFIED_BLOCKS, BlockUnavailable, ChainVerifier

if TYPE_CHECKING:
    from node.config import NodeConfig

log = logging.getLogger("medchain.reader")

_DONE: Final = object()


@dataclass(frozen=True, slots=True)
class ReaderSettings:
    """Bounds and periods of the read path (every field positive)."""

    interval_ms: int = 2000
    """Period of a round (repairs that are due, a scrub step)."""
    http_timeout_ms: int = 3000
    max_response_bytes: int = 32 * 1024 * 1024
    scrub_blocks: int = 64
    """Own stored blocks re-verified per round at most (unchanged ones cost one sha256)."""
    scrub_cpu_permille: int = 20
    """CPU the scrub may use, in thousandths of one core (20: 2%), measured per step with the
    thread's CPU clock; a step that overruns is paid back in later rounds. Full verification
    of a block (~30 ms for 500 txs) runs in steps of ``node.verified.TXS_PER_STEP``
    signatures."""
    repairs_per_round: int = 8
    repair_backoff_max_ms: int = 30_000
    max_quarantined: int = 256
    verified_cache: int = VERIFIED_BLOCKS
    """Stored blocks remembered as verified (height -> sha256 of bytes and the two hashes: 358
    bytes each under tracemalloc, so about 6 MB). 100,000 took 36 MB and, with blocks of a few
    transactions at moderate load, half an hour to fill: node memory still rose after ten
    minutes. Blocks older than the cache cost a full verification when read or scrubbed, within
    the scrub's CPU budget, as every block of a chain longer than any cache would."""
    verified_commits: int = 65_536
    """Commit signatures remembered as verified (~100 bytes each)."""
    startup_hash_blocks: int = 1024
    """Start-up check: the last this many blocks are decoded and their hashes recomputed."""
    startup_signature_blocks: int = 64
    """Start-up check: the last this many blocks are fully verified (signatures too)."""

    def __post_init__(self) -> None:
        for name in self.__slots__:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ReaderSettings.{name} must be a positive integer, got {value!r}")
        if self.scrub_cpu_permille > 1000:
            raise ValueError("ReaderSettings.scrub_cpu_permille is at most 1000 (one core)")

    @property
    def repair_bounds(self) -> RepairBounds:
        return RepairBounds(
            max_quarantined=self.max_quarantined,
            repairs_per_round=self.repairs_per_round,
            backoff_base_ms=self.interval_ms,
            backoff_max_ms=self.repair_backoff_max_ms,
        )


class Scrub:
    """Re-verifies stored blocks in the background, cycling through the chain: catches bytes
    changed under a running node in blocks nobody reads. Bounded in blocks per round and in
    CPU: every step is metered with the thread's CPU clock against a credit of
    ``scrub_cpu_permille`` of the round's interval (an overrun is paid back in later rounds),
    and it yields to the event loop between steps."""

    def __init__(
        self, repairer: Repairer, settings: ReaderSettings, cpu_clock: Callable[[], float]
    ) -> None:
        self._repairer = repairer
        self._settings = settings
        self._cpu_clock = cpu_clock
        self.next_height = 1
        self.cycles = 0
        self.checked = 0
        self._credit_ms = 0.0
        self.cpu_ms = 0.0

    async def step(self) -> None:
        s = self._settings
        store = self._repairer.store
        allowance_ms = s.interval_ms * s.scrub_cpu_permille / 1000.0
        self._credit_ms = min(self._credit_ms + allowance_ms, allowance_ms)
        checked = 0
        while checked < s.scrub_blocks and self._credit_ms > 0:
            head_height, _ = store.head()
            if self.next_height > head_height:
                if head_height:
                    self.cycles += 1
                self.next_height = 1
                return
            height = self.next_height
            self.next_height += 1
            if self._repairer.is_quarantined(height):
                continue
            await self._block(height)
            checked += 1
            self.checked += 1

    async def _block(self, height: int) -> None:
        repairer = self._repairer
        steps = repairer.verifier.verify_steps(repairer.store, height)
        while True:
            started = self._cpu_clock()
            try:
                more = next(steps, _DONE) is not _DONE
            except BlockUnavailable as e:
                repairer.quarantine(height, e.reason)
                more = False
            finally:
                used_ms = (self._cpu_clock() - started) * 1000.0
                self._credit_ms -= used_ms
                self.cpu_ms += used_ms
            if not more:
                return
            await asyncio.sleep(0)

    def status(self) -> dict[str, Any]:
        return {
            "next_height": self.next_height,
            "cycles": self.cycles,
            "blocks_checked": self.checked,
            "cpu_ms": round(self.cpu_ms, 1),
            "cpu_permille": self._settings.scrub_cpu_permille,
        }


class BlockReader:
    """This node's verified reads of its own store, with quarantine, repair and the scrub.

    ``start()`` opens the HTTP session repairs fetch with and (unless ``background=False``,
    for tests driving :meth:`run_round` themselves) spawns the background task; ``stop()``
    cancels it and closes the session; ``close()`` closes the log.
    """

    def __init__(
        self,
        *,
        store: Store,
        consortium: Sequence[bytes],
        registry: ClientRegistry,
        peers: Mapping[int, str],
        repair_log: RepairLog,
        settings: ReaderSettings | None = None,
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        """``cpu_clock`` (seconds of CPU used by this thread) meters the scrub (a parameter
        for tests)."""
        self.store = store
        self.settings = s = settings or ReaderSettings()
        self.log = repair_log
        self.peers = {pid: url.rstrip("/") for pid, url in sorted(peers.items())}
        self.verifier = ChainVerifier(
            consortium, registry, cache_size=s.verified_cache, commits_cache=s.verified_commits
        )
        self._rounds = PeriodicRounds("block-reader", s.interval_ms, self.run_round)
        self.repairer = Repairer(
            store, self.verifier, repair_log, s.repair_bounds, on_quarantine=self._rounds.wake
        )
        self.scrub = Scrub(self.repairer, s, cpu_clock)
        self.startup: StartupReport | None = None
        self.rounds = 0
        self._fetcher: BlockFetcher | None = None

    @classmethod
    def for_node(
        cls,
        config: NodeConfig,
        store: Store,
        registry: ClientRegistry,
        repair_log: RepairLog,
        *,
        settings: ReaderSettings | None = None,
    ) -> BlockReader:
        """The reader of a configured node (its consortium keys and peers)."""
        return cls(
            store=store,
            consortium=config.replica_publics,
            registry=registry,
            peers=config.peers,
            repair_log=repair_log,
            settings=settings,
        )

    # -- what the cross-audit reads ----------------------------------------------------------

    @property
    def consortium(self) -> tuple[bytes, ...]:
        return self.verifier.consortium

    @property
    def registry(self) -> ClientRegistry:
        return self.verifier.registry

    @property
    def commits(self) -> VerifiedCommits:
        return self.verifier.commits

    def is_quarantined(self, height: int) -> bool:
        return self.repairer.is_quarantined(height)

    def quarantine(self, height: int, reason: str) -> None:
        self.repairer.quarantine(height, reason)

    def known_hash(self, height: int) -> bytes | None:
        return self.verifier.known_hash(height)

    # -- lifecycle ---------------------------------------------------------------------------

    def startup_check(self, *, full: bool = False) -> StartupReport:
        """Verify the stored chain before serving (``node.startup``); bad blocks are
        quarantined and repaired from peers once the reader runs."""
        s = self.settings
        report = startup_verify(
            self.store,
            self.verifier,
            full=full,
            hash_blocks=s.startup_hash_blocks,
            signature_blocks=s.startup_signature_blocks,
            max_bad=s.max_quarantined,
        )
        self.startup = report
        for height, reason in report.bad:
            self.repairer.quarantine(height, f"start-up check: {reason}")
        summary = (
            f"{report.mode} check of {report.height} blocks: {report.links_checked} links, "
            f"{report.hashes_checked} hashed, {report.signatures_checked} fully verified, "
            f"{len(report.bad)} bad, {report.duration_ms} ms"
        )
        self.log.add_event("startup-check", None, summary)
        (log.warning if report.bad else log.info)("read path: %s", summary)
        return report

    async def start(self, *, background: bool = True, http: ReaderHttp | None = None) -> None:
        """``http``: how to reach peers (TLS, read tokens); plain HTTP without.
        ``background=False``: tests drive :meth:`run_round` themselves."""
        session = self._rounds.open(http)
        self._fetcher = BlockFetcher(
            session,
            timeout_ms=self.settings.http_timeout_ms,
            max_bytes=self.settings.max_response_bytes,
        )
        if background:
            self._rounds.spawn()

    async def stop(self) -> None:
        """Cancel the background task and close the session. Idempotent."""
        await self._rounds.stop()
        self._fetcher = None

    def close(self) -> None:
        self.log.close()

    @property
    def round_errors(self) -> int:
        return self._rounds.round_errors

    async def run_round(self) -> None:
        """Repairs that are due, then a scrub step of our own store."""
        fetcher = self._fetcher
        if fetcher is None:
            raise RuntimeError("reader not started")
        self.rounds += 1
        await self.repairer.repair_due(fetcher, self.peers)
        await self.scrub.step()

    # -- reads -------------------------------------------------------------------------------

    def note_written(self, blocks: Sequence[Block], raws: Sequence[bytes]) -> None:
        """Blocks this node just committed and wrote: built from data its consensus core had
        verified, so the bytes written count as verified; a later change of any of them on
        disk no longer matches and is verified (and caught) on the next read."""
        verifier = self.verifier
        for block, raw in zip(blocks, raws, strict=True):
            fingerprint = hashlib.sha256(raw).digest()
            verifier.cache.remember(block.height, fingerprint, block)
            # Peers' audits and the bench's observer are about to read its header.
            verifier.cache.remember_header(block_header(block, with_tx_ids=True))
            # Its certificate too: peers' copies of this block carry the same commits.
            verifier.commits.add_commits(block.commits, verifier.consortium)

    def read_block(self, height: int, raw: bytes | None = None) -> Block | None:
        """What the API serves: the verified block, None if absent; BlockUnavailable (answer
        ``e.response()``, a 503) if quarantined or failing verification now. ``raw``: the
        stored bytes, if the caller has just read them."""
        self.repairer.refuse_quarantined(height)
        try:
            return self.verifier.read(self.store, height, raw)
        except BlockUnavailable as e:
            self.repairer.quarantine(height, e.reason)
            raise

    def verified_hash(self, height: int) -> bytes | None:
        """The hash of the verified block (None if absent); BlockUnavailable as for reads."""
        self.repairer.refuse_quarantined(height)
        try:
            return self.verifier.verified_hash(self.store, height)
        except BlockUnavailable as e:
            self.repairer.quarantine(height, e.reason)
            raise

    def read_blocks(self, from_height: int, limit: int) -> list[Block]:
        """Verified blocks from ``from_height`` (at most ``limit``), stopping before the first
        unavailable one; BlockUnavailable if that is the very first."""
        out: list[Block] = []
        head_height, _ = self.store.head()
        for height in range(max(1, from_height), min(head_height, from_height + limit - 1) + 1):
            try:
                block = self.read_block(height)
            except BlockUnavailable:
                if out:
                    break
                raise
            if block is None:
                break
            out.append(block)
        return out

    def read_headers(
        self, from_height: int, limit: int, *, with_tx_ids: bool = False
    ) -> list[BlockHeader]:
        """Headers of the verified blocks from ``from_height`` (at most ``limit``), with their
        tx ids if asked, stopping before the first unavailable block; BlockUnavailable if that
        is the very first. The newest blocks' headers come from memory; others cost a read,
        a sha256 and a light decode when their bytes are unchanged since verified."""
        head_height, _ = self.store.head()
        last = min(head_height, from_height + limit - 1)
        if from_height < 1 or last < from_height:
            return []
        out: list[BlockHeader] = []
        stored: dict[int, bytes] | None = None
        for height in range(from_height, last + 1):
            try:
                self.repairer.refuse_quarantined(height)
                header = self.verifier.recent_header(height, with_tx_ids=with_tx_ids)
                if header is None:
                    if stored is None:  # one range query for the rest of the page
                        stored = dict(self.store.get_blocks_raw(height, last - height + 1))
                    raw = stored.get(height)
                    if raw is None:
                        break
                    header = self._read_header(height, raw, with_tx_ids)
            except BlockUnavailable:
                if out:
                    break
                raise
            out.append(header)
        return out

    def _read_header(self, height: int, raw: bytes, with_tx_ids: bool) -> BlockHeader:
        try:
            return self.verifier.read_header(self.store, height, raw, with_tx_ids=with_tx_ids)
        except BlockUnavailable as e:
            self.repairer.quarantine(height, e.reason)
            raise

    def status(self) -> dict[str, Any]:
        """Quarantine, repairs, scrub, cache and start-up check (``local`` in GET /audit)."""
        return {
            **self.repairer.status(),
            "scrub": self.scrub.status(),
            "verifier": self.verifier.status(),
            "startup": None if self.startup is None else self.startup.to_json(),
        }
