"""Gathering each node's chain: live through the node API, or offline from its SQLite store.

A live node is read through :class:`scripts.client.NodeClient`, one attempt per request (a node
that does not answer is audited offline or reported, not waited for). A stopped cluster node is
read from its store, read only. Either way every block is verified in height order (hash links,
Merkle roots, tx signatures, commit certificates against the consortium's keys) and the view
keeps the verified hashes for comparing.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

from consensus.hashing import GENESIS_HASH
from node.audit.client import parse_status
from node.audit.evidence import EvidenceError
from node.audit.log import AuditLog
from node.audit.served import check_served_block, parse_block_json
from node.codec import CodecError
from node.ledger import decode_block, verify_block
from node.repair import AUDIT_DB_NAME, PeerError
from scripts.audit.targets import Target
from scripts.audit.view import LIVE, OFFLINE, NodeView
from scripts.client import NO_RETRY, Consortium, NodeClient, NodeError
from scripts.credentials import client_session
from scripts.output import CliError

PAGE_BLOCKS = 100
"""Blocks per GET /blocks (a node serves at most ``NodeLimits.blocks_page_max``, 100)."""
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
_STORE_SUFFIXES = (".sqlite", ".sqlite3", ".db")


async def gather_all(
    targets: Sequence[Target], keys: Consortium | None, *, last: int | None, timeout_s: float
) -> tuple[list[NodeView], Consortium, int]:
    """Every target's view, the keys used (the first live node's if none are given) and the
    first audited height (``last`` heights below the lowest node's height, or 1)."""
    views = [NodeView(t.name, t.url) for t in targets]
    async with client_session() as session:
        clients = {
            v.name: NodeClient(
                v.url,
                retry=NO_RETRY,
                timeout_s=timeout_s,
                max_body_bytes=MAX_RESPONSE_BYTES,
                session=session,
            )
            for v in views
            if v.url
        }
        alive = await asyncio.gather(
            *(probe_live(clients[v.name], v) if v.url else _false() for v in views)
        )
        stores: dict[str, Path] = {}
        for t, v, ok in zip(targets, views, alive, strict=True):
            if not ok and t.data_dir is not None:
                path = probe_offline(v, t.data_dir)
                if path is not None:
                    stores[v.name] = path
        if keys is None:
            keys = await _published_keys(clients, views)
        heights = [v.height for v in views if v.height is not None]
        start = 1 if last is None or not heights else max(1, min(heights) - last + 1)
        await asyncio.gather(
            *(gather_live(clients[v.name], v, keys, start) for v in views if v.source == LIVE)
        )
    for t, v in zip(targets, views, strict=True):
        if v.name in stores and t.data_dir is not None:
            gather_offline(v, stores[v.name], t.data_dir, keys, start)
    return views, keys, start


async def _false() -> bool:
    return False


async def _published_keys(clients: dict[str, NodeClient], views: Sequence[NodeView]) -> Consortium:
    """The keys the first live node publishes in GET /status (the node vouches for itself)."""
    first = next((v for v in views if v.source == LIVE), None)
    if first is None:
        raise CliError("no node answered; cannot read the consortium's keys")
    try:
        return await clients[first.name].consortium()
    except NodeError as e:
        raise CliError(str(e)) from None


class _ChainChecker:
    """Verifies a node's blocks in height order: each block on its own and its link."""

    def __init__(self, view: NodeView, keys: Consortium, start: int) -> None:
        self.view = view
        self.keys = keys
        self.expected = start
        self.prev_hash: bytes | None = GENESIS_HASH if start == 1 else None

    def done(self) -> bool:
        return self.view.bad_height is not None

    def served(self, doc: object) -> None:
        try:
            block = parse_block_json(doc)
        except EvidenceError as e:
            self.view.fail(self.expected, f"malformed block: {e.reason}")
            return
        problem = check_served_block(block, self.keys.replica_publics, registry=self.keys.registry)
        self._step(block.height, block.block_hash, block.prev_hash, problem)

    def stored(self, height: int, raw: bytes) -> None:
        try:
            block = decode_block(raw)
        except CodecError as e:
            self.view.fail(height, f"stored bytes do not decode: {e.reason}")
            return
        problem = verify_block(
            block, block.prev_hash, self.keys.replica_publics, self.keys.registry
        )
        if problem is None and block.height != height:
            problem = f"stored at height {height} but says {block.height}"
        self._step(block.height, block.block_hash, block.prev_hash, problem)

    def _step(self, height: int, bhash: bytes, prev: bytes, problem: str | None) -> None:
        if height != self.expected:
            self.view.fail(self.expected, f"expected block {self.expected}, got {height}")
            return
        if problem is None and self.prev_hash is not None and prev != self.prev_hash:
            problem = f"prev_hash does not link to block {height - 1}"
        if problem:
            self.view.fail(height, problem)
            return
        self.view.hashes[height] = bhash
        self.prev_hash = bhash
        self.expected = height + 1


# ---------------------------------------------------------------------------------------------
# live: through the node API


async def probe_live(client: NodeClient, view: NodeView) -> bool:
    """Fill height/head from GET /status; False if the node does not answer."""
    try:
        status = parse_status(await client.status())
    except NodeError as e:
        view.error = str(e)
        return False
    except PeerError as e:
        view.error = e.reason
        return False
    view.source = LIVE
    view.height = status.height
    view.head_hash = None if status.head_hash is None else status.head_hash.hex()
    view.stable_seq = status.stable_seq
    return True


async def gather_live(client: NodeClient, view: NodeView, keys: Consortium, start: int) -> None:
    assert view.height is not None
    checker = _ChainChecker(view, keys, start)
    while checker.expected <= view.height and not checker.done():
        limit = min(PAGE_BLOCKS, view.height - checker.expected + 1)
        try:
            # With payloads: a payload that no longer matches its hash is caught too.
            docs = (await client.blocks(checker.expected, limit, payload=True)).blocks
        except NodeError as e:
            view.fail(checker.expected, f"cannot fetch blocks from {checker.expected}: {e}")
            break
        if not docs:
            view.fail(checker.expected, f"node served no block at height {checker.expected}")
            break
        for doc in docs:
            checker.served(doc)
            if checker.done() or checker.expected > view.height:
                break
    await _self_report(client, view)


async def _self_report(client: NodeClient, view: NodeView) -> None:
    """What the node's own auditor says (absent on a node without GET /audit)."""
    try:
        doc = await client.get_json("/audit")
    except NodeError:
        return
    if not isinstance(doc, dict):
        return
    ev, local = doc.get("evidence"), doc.get("local")
    if isinstance(ev, dict) and type(ev.get("count")) is int:
        view.evidence = ev["count"]
    if isinstance(local, dict):
        if isinstance(local.get("quarantined"), list):
            view.quarantined = len(local["quarantined"])
        if type(local.get("repaired")) is int:
            view.repaired = local["repaired"]
    if isinstance(doc.get("agreement"), str):
        view.self_report = doc["agreement"]


# ---------------------------------------------------------------------------------------------
# offline: a stopped node's store, read only


def _ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def find_store_file(data_dir: Path) -> Path | None:
    """The node's chain database in its data directory: the SQLite file holding a ``blocks``
    table (the audit's own database is skipped)."""
    if not data_dir.is_dir():
        return None
    for path in sorted(data_dir.iterdir()):
        if path.suffix not in _STORE_SUFFIXES or path.name == AUDIT_DB_NAME or not path.is_file():
            continue
        try:
            db = _ro(path)
            try:
                row = db.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'blocks'"
                ).fetchone()
            finally:
                db.close()
        except sqlite3.Error:
            continue
        if row is not None:
            return path
    return None


def probe_offline(view: NodeView, data_dir: Path) -> Path | None:
    """Height and head from a stopped node's store, read only; the store's path or None."""
    path = find_store_file(data_dir)
    if path is None:
        view.error = (view.error or "") + f"; no chain database in {data_dir}"
        return None
    try:
        db = _ro(path)
        try:
            row = db.execute(
                "SELECT height, hash FROM blocks ORDER BY height DESC LIMIT 1"
            ).fetchone()
        finally:
            db.close()
    except sqlite3.Error as e:
        view.error = f"cannot read {path}: {e}"
        return None
    view.source = OFFLINE
    view.height = 0 if row is None else int(row[0])
    view.head_hash = GENESIS_HASH.hex() if row is None else bytes(row[1]).hex()
    return path


def _stored_blocks(path: Path, start: int) -> Iterator[tuple[int, bytes]]:
    db = _ro(path)
    try:
        next_height = start
        while True:
            rows = db.execute(
                "SELECT height, data FROM blocks WHERE height >= ? ORDER BY height LIMIT ?",
                (next_height, PAGE_BLOCKS),
            ).fetchall()
            if not rows:
                return
            for height, data in rows:
                yield int(height), bytes(data)
            next_height = int(rows[-1][0]) + 1
    finally:
        db.close()


def gather_offline(
    view: NodeView, path: Path, data_dir: Path, keys: Consortium, start: int
) -> None:
    checker = _ChainChecker(view, keys, start)
    try:
        for height, raw in _stored_blocks(path, start):
            checker.stored(height, raw)
            if checker.done():
                break
    except sqlite3.Error as e:
        view.fail(checker.expected, f"cannot read the store: {e}")
    audit_db = data_dir / AUDIT_DB_NAME
    if audit_db.is_file():
        try:
            with AuditLog(audit_db, read_only=True) as audit_log:
                view.evidence = audit_log.evidence_count()
                view.quarantined = len(audit_log.quarantined())
                view.repaired = audit_log.event_counts().get("repaired", 0)
        except sqlite3.Error:
            pass
