"""One peer's comparison with our chain in one audit round.

For a peer: ``GET /status`` (height, head hash, stable checkpoint), then its block HEADERS
(``GET /blocks?from=&limit=&txs=0``: ``ledger.header_to_json``, no transactions) at heights we
also hold. Each served header is verified (digest and block hash recomputed, commit certificate
of >= quorum distinct consortium signatures, each signature checked once: see
``node.verified.VerifiedCache``) and its hash compared with ours (the verified hash we
remember, else our store's hash column). Each round looks at the heights not compared yet: the
tip (the last ``recent_blocks`` common heights) and the next ``sweep_blocks`` from a cursor that
walks up the whole common history once; plus a random window of ``history_sample_blocks`` older
heights re-checked (a peer that rewrites its history later is still caught) and
``body_sample_blocks`` random WHOLE blocks (without payloads), whose transactions are checked
against the header. Whole blocks are otherwise fetched only to look closer: where a header
disagrees (bounded by ``full_blocks_per_round``) and at open issues; they make the evidence.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from node.audit.client import PeerClient, PeerStatus
from node.audit.compare import (
    AGREE,
    DIVERGED,
    INVALID,
    UNKNOWN,
    HeightCheck,
    PeerState,
    apply_checks,
    classify,
    contiguous_ranges,
    plan_heights,
)
from node.audit.evidence import EvidenceError, block_exhibit_text
from node.audit.findings import Findings, malformed_exhibit
from node.audit.served import (
    ServedBlock,
    check_served_block,
    check_served_header,
    parse_block_json,
    parse_header_json,
)
from node.audit.settings import AuditSettings
from node.reader import BlockReader
from node.verified import BlockUnavailable

log = logging.getLogger("medchain.audit")

PAGE_BLOCKS: Final = 50
"""Most blocks asked for in one GET /blocks (a node serves up to ``blocks_page_max``, 100)."""
PAGE_HEADERS: Final = 256
"""Most headers asked for in one GET /blocks?txs=0 (a node serves up to 1000)."""
_HEADERS_PER_YIELD: Final = 32
"""Served headers checked between two yields to the event loop."""
_MAX_RECHECKS: Final = 8
"""Open issues re-checked (whole blocks) per peer per round."""


class HashColumn:
    """Our stored blocks' hashes by height, read from the store's ``hash`` column through a
    read-only connection of its own (WAL: isolated from the store's writer; one indexed range
    query per page of headers instead of reading and hashing every block). The column is what
    the store links and serves heads by; the scrub and read-time verification check the block
    bytes behind it, and no verdict against a peer rests on it alone (see ``PeerAudit._settle``).
    A store that is not a file (tests) answers nothing: callers fall back to verified reads.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._db: sqlite3.Connection | None = None

    def hashes(self, lo: int, hi: int) -> dict[int, bytes]:
        if hi < lo:
            return {}
        db = self._connect()
        if db is None:
            return {}
        try:
            rows = db.execute(
                "SELECT height, hash FROM blocks WHERE height BETWEEN ? AND ?", (lo, hi)
            ).fetchall()
        except sqlite3.Error as e:
            log.warning("cannot read the store's hash column: %s", e)
            self.close()
            return {}
        return {int(height): bytes(bhash) for height, bhash in rows}

    def _connect(self) -> sqlite3.Connection | None:
        if self._db is None and self._path.is_file():
            try:
                self._db = sqlite3.connect(f"{self._path.resolve().as_uri()}?mode=ro", uri=True)
            except sqlite3.Error as e:
                log.warning("cannot open %s read-only: %s", self._path, e)
        return self._db

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()


class OurChain:
    """Our block hashes to compare a peer's with: the verified hash the reader remembers,
    else the store's hash column, else a verified read. Quarantined heights (nothing
    trustworthy to compare with) are left out."""

    def __init__(self, reader: BlockReader) -> None:
        self.reader = reader
        self._column = HashColumn(reader.store.path)

    def hashes(self, lo: int, hi: int) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        missing: list[int] = []
        for height in range(lo, hi + 1):
            if self.reader.is_quarantined(height):
                continue
            known = self.reader.known_hash(height)
            if known is None:
                missing.append(height)
            else:
                out[height] = known
        if not missing:
            return out
        column = self._column.hashes(missing[0], missing[-1])
        for height in missing:
            bhash = column.get(height)
            if bhash is None:
                bhash = self.verified_hash(height)
            if bhash is not None:
                out[height] = bhash
        return out

    def verified_hash(self, height: int) -> bytes | None:
        known = self.reader.known_hash(height)
        if known is not None:
            return known
        try:
            return self.reader.verified_hash(height)
        except BlockUnavailable:
            return None

    def head_mismatch(self, status: PeerStatus, our_height: int) -> list[int]:
        """The peer's head height if its status names a head hash other than our block's."""
        if status.head_hash is None or not 1 <= status.height <= our_height:
            return []
        ours = self.verified_hash(status.height)
        return [] if ours is None or ours == status.head_hash else [status.height]

    def close(self) -> None:
        self._column.close()


@dataclass(frozen=True, slots=True)
class _Plan:
    """The heights looked at with one peer in one round."""

    common: int
    new: frozenset[int]
    """Heights not compared yet (tip window and sweep)."""
    sampled: frozenset[int]
    """Already compared heights re-checked (the random history window)."""
    headers: tuple[int, ...]
    """Heights whose headers are fetched: new, sampled, and a head that does not match ours."""


def history_sample(rng: random.Random, cursor: int, common: int, size: int) -> list[int]:
    """A random window of already compared heights to re-check (all of them if few)."""
    top = min(cursor - 1, common)
    if top <= size:
        return list(range(1, top + 1))
    start = rng.randint(1, top - size + 1)
    return list(range(start, start + size))


def body_sample(rng: random.Random, common: int, size: int, *, exclude: Iterable[int]) -> list[int]:
    """Random common heights whose whole blocks are checked (all of them if few)."""
    skip = set(exclude)
    if common - len(skip) <= size:
        return [hh for hh in range(1, common + 1) if hh not in skip]
    picked: set[int] = set()
    while len(picked) < size:
        hh = rng.randint(1, common)
        if hh not in skip:
            picked.add(hh)
    return sorted(picked)


def count_checks(
    state: PeerState, checks: Iterable[HeightCheck], *, new: Iterable[int], sampled: Iterable[int]
) -> None:
    counters = state.counters
    new, sampled = set(new), set(sampled)
    for c in checks:
        outcome = c.outcome
        if outcome == UNKNOWN:
            continue
        if c.height in new:
            counters.blocks_compared += 1
        elif c.height in sampled:
            counters.history_samples += 1
        if outcome == INVALID:
            counters.invalid_blocks += 1
        elif outcome == DIVERGED:
            counters.divergent_blocks += 1


def check_status_head(state: PeerState, status: PeerStatus, checks: Sequence[HeightCheck]) -> None:
    """A peer whose status names a head other than the block it serves at that height is
    inconsistent (an honest node's block at a height never changes)."""
    if status.head_hash is None:
        return
    served = next((c for c in checks if c.height == status.height), None)
    if served is not None and served.theirs is not None and served.theirs != status.head_hash:
        state.problem(
            "status-inconsistent",
            status.height,
            "GET /status names a head hash other than the block it serves there",
        )
        # A divergence found at that height already says more.
        state.open_issues.setdefault(status.height, INVALID)


def note_status(state: PeerState, status: PeerStatus) -> None:
    """Take the peer's status; a height that went down restarts the sweep."""
    if state.height is not None and status.height < state.height:
        state.problem(
            "height-dropped", status.height, f"height went from {state.height} to {status.height}"
        )
        state.restart_sweep()
        state.open_issues = {hh: o for hh, o in state.open_issues.items() if hh <= status.height}
    state.height, state.head_hash = status.height, status.head_hash
    state.stable_seq, state.view = status.stable_seq, status.view


class PeerAudit:
    """Compares one peer's chain with ours, a round at a time (what persists between rounds
    is the peer's :class:`PeerState`)."""

    def __init__(
        self,
        ours: OurChain,
        findings: Findings,
        settings: AuditSettings,
        rng: random.Random,
    ) -> None:
        self.ours = ours
        self.reader = ours.reader
        self.findings = findings
        self.settings = settings
        self._rng = rng

    async def round(self, client: PeerClient, state: PeerState) -> None:
        """One round with the peer; PeerError if it does not answer."""
        status = await client.status(state.url)
        our_height, _ = self.reader.store.head()
        note_status(state, status)
        plan = self._plan(state, status, our_height)
        headers = await self._check_headers(client, state, plan.headers)
        checks = await self._look_closer(client, state, plan.common, headers)
        count_checks(state, checks, new=plan.new, sampled=plan.sampled)
        compared = {c.height for c in checks if c.outcome != UNKNOWN}
        state.mark_done(hh for hh in sorted(plan.new) if hh in compared)
        if compared:
            state.last_compared = max(state.last_compared, *compared)
        state.open_issues = apply_checks(state.open_issues, checks)
        check_status_head(state, status, checks)
        verdict = classify(
            our_height, status.height, state.open_issues, lag_tolerance=self.settings.lag_tolerance
        )
        if verdict.agreement != state.agreement and verdict.agreement in (DIVERGED, INVALID):
            log.warning(
                "replica %d: %s (open issues at heights %s)",
                state.peer_id,
                verdict.agreement,
                sorted(verdict.open_issues),
            )
        state.agreement, state.lag, state.last_error = verdict.agreement, verdict.lag, None

    def _plan(self, state: PeerState, status: PeerStatus, our_height: int) -> _Plan:
        s = self.settings
        common = min(our_height, status.height)
        new = plan_heights(
            state.cursor, state.tip_done, common, recent=s.recent_blocks, sweep=s.sweep_blocks
        )
        sampled = history_sample(self._rng, state.cursor, common, s.history_sample_blocks)
        head = self.ours.head_mismatch(status, our_height)
        return _Plan(
            common=common,
            new=frozenset(new),
            sampled=frozenset(sampled),
            headers=tuple(sorted(set(new) | set(sampled) | set(head))),
        )

    async def _look_closer(
        self, client: PeerClient, state: PeerState, common: int, headers: Mapping[int, HeightCheck]
    ) -> list[HeightCheck]:
        """Whole blocks where a header disagrees, at open issues and the body sample; then
        each height's outcome from what was seen of it."""
        s = self.settings
        suspects = [hh for hh, c in sorted(headers.items()) if c.outcome in (INVALID, DIVERGED)]
        issues = sorted(hh for hh in state.open_issues if hh <= common)[:_MAX_RECHECKS]
        closer = sorted(set(suspects) | set(issues))[: s.full_blocks_per_round]
        bodies = body_sample(self._rng, common, s.body_sample_blocks, exclude=closer)
        full = await self._check_blocks(client, state, sorted(set(closer) | set(bodies)))
        checks: list[HeightCheck] = []
        for height in sorted(set(headers) | set(full)):
            if height in suspects and height not in closer:
                continue  # looked at more closely in a later round
            check = self._settle(state, height, headers.get(height), full.get(height))
            if check is not None:
                checks.append(check)
        return checks

    # -- headers -----------------------------------------------------------------------------

    async def _check_headers(
        self, client: PeerClient, state: PeerState, heights: Sequence[int]
    ) -> dict[int, HeightCheck]:
        out: dict[int, HeightCheck] = {}
        for lo, hi in contiguous_ranges(heights, max_len=PAGE_HEADERS):
            docs = await client.headers(state.url, lo, hi - lo + 1)
            ours = self.ours.hashes(lo, hi)
            for i, doc in enumerate(docs):
                if i and i % _HEADERS_PER_YIELD == 0:
                    await asyncio.sleep(0)  # consensus and the API run in between
                check = self._check_header(state, doc, lo, hi, ours)
                if check is not None and check.height not in out:
                    out[check.height] = check
        return out

    def _check_header(
        self, state: PeerState, doc: object, lo: int, hi: int, ours: Mapping[int, bytes]
    ) -> HeightCheck | None:
        try:
            header = parse_header_json(doc)
        except EvidenceError as e:
            height = doc.get("height") if isinstance(doc, dict) else None
            hh = height if type(height) is int and lo <= height <= hi else lo
            return HeightCheck(hh, ours.get(hh), None, f"malformed header: {e.reason}")
        height = header.height
        if not lo <= height <= hi:
            state.problem("unexpected-block", height, f"asked for {lo}..{hi}, got block {height}")
            return None
        our_hash = ours.get(height)
        if our_hash is None:
            return None  # ours is being repaired: compare later
        state.counters.headers_verified += 1
        problem = check_served_header(
            header, self.reader.consortium, verified_commits=self.reader.commits
        )
        return HeightCheck(height, our_hash, header.block_hash, problem)

    # -- whole blocks ------------------------------------------------------------------------

    async def _check_blocks(
        self, client: PeerClient, state: PeerState, heights: Sequence[int]
    ) -> dict[int, HeightCheck]:
        out: dict[int, HeightCheck] = {}
        for lo, hi in contiguous_ranges(heights, max_len=PAGE_BLOCKS):
            docs = await client.blocks(state.url, lo, hi - lo + 1)
            for check in await self._check_served(state, docs, lo, hi):
                out.setdefault(check.height, check)
        return out

    async def _check_served(
        self, state: PeerState, docs: list[object], lo: int, hi: int
    ) -> list[HeightCheck]:
        checks: list[HeightCheck] = []
        seen: set[int] = set()
        for doc in docs:
            # One block's checks at a time: consensus and the API run in between.
            await asyncio.sleep(0)
            try:
                served = parse_block_json(doc)
            except EvidenceError as e:
                height = doc.get("height") if isinstance(doc, dict) else None
                hh = height if type(height) is int and lo <= height <= hi else lo
                problem = f"malformed block: {e.reason}"
                checks.append(HeightCheck(hh, None, None, problem))
                self.findings.invalid_served(state, hh, problem, malformed_exhibit(doc))
                continue
            if not lo <= served.height <= hi or served.height in seen:
                state.problem(
                    "unexpected-block",
                    served.height,
                    f"asked for {lo}..{hi}, got block {served.height}",
                )
                continue
            seen.add(served.height)
            check = self._compare(state, served, doc)
            if check is not None:
                checks.append(check)
        return checks

    def _compare(self, state: PeerState, served: ServedBlock, doc: object) -> HeightCheck | None:
        height = served.height
        try:
            ours = self.reader.read_block(height)
        except BlockUnavailable:
            return None  # our copy is bad: being repaired; compare later
        if ours is None:
            return None
        known = None
        if ours.block_hash == served.block_hash:
            # Same hash: tx ids, root and header are bound to ours; only signatures could differ.
            known = {env.tx_id: env.tx.signature for env in ours.txs}
        problem = check_served_block(
            served,
            self.reader.consortium,
            registry=self.reader.registry,
            known_signatures=known,
            verified_commits=self.reader.commits,
        )
        state.counters.blocks_verified += 1
        check = HeightCheck(height, ours.block_hash, served.block_hash, problem)
        if problem:
            self.findings.invalid_served(state, height, problem, block_exhibit_text(doc))
        elif check.outcome == DIVERGED:
            self.findings.diverged(state, served, ours, doc)
        return check

    # -- one height's outcome ----------------------------------------------------------------

    def _settle(
        self, state: PeerState, height: int, header: HeightCheck | None, full: HeightCheck | None
    ) -> HeightCheck | None:
        """One height's outcome from its header check and its whole-block check (either may
        be missing). A whole block that fails stands (it made the evidence); a header that
        fails while its whole block is fine (or was not served) stands too, as a problem
        without evidence (exhibits are whole blocks); a divergence seen in a header alone is
        confirmed against our own verified block first."""
        bad = (INVALID, DIVERGED)
        if full is not None and full.outcome in bad:
            return full
        if header is None or header.outcome not in bad:
            if full is not None and full.outcome == AGREE:
                return full
            return header or full
        whole = " (the whole block it serves there is ours)" if full is not None else ""
        if header.outcome == INVALID:
            state.problem(
                INVALID, height, f"served header does not verify: {header.problem}{whole}"
            )
            return header
        ours = full.ours if full is not None and full.ours else self.ours.verified_hash(height)
        if ours is None:
            return None  # ours is being repaired: compare later
        check = HeightCheck(height, ours, header.theirs)
        if check.outcome == AGREE:
            # The peer agrees with our verified block: what disagreed was our hash column (the
            # verified hashes we remember cannot). Repair rewrites it with a verified copy.
            self.reader.quarantine(
                height, "the store's hash column does not match the block stored there"
            )
        elif check.outcome == DIVERGED:
            theirs = header.theirs.hex()[:16] if header.theirs else "?"
            state.problem(
                DIVERGED,
                height,
                f"served header {theirs} is validly certified but differs from ours "
                f"{ours.hex()[:16]}{whole}",
            )
        return check
