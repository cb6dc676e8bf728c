"""``medchain audit``: every node's chain side by side, and offline checks of evidence.

    medchain audit [--dir DIR | --nodes URL,URL,...] [--last N] [--json]
    medchain audit --check-evidence FILE [--dir DIR | --config FILE] [--json]

For each node: height, head hash, how far it agrees with the others, whether every block it
holds verifies (hash links, Merkle roots, tx signatures, commit certificates against the
consortium's keys), its lag, and what its own auditor has found (evidence records,
quarantined and repaired blocks, from ``GET /audit``). With ``--dir``, a node that does not
answer is audited offline from its SQLite store (read only), so a stopped node is compared too.

Blocks are compared height by height with the majority of the nodes that hold that height.
Different heights with the same blocks are reported as ``lagging``, never as a divergence.
Exit status 1 on any divergence or any block that fails verification (or if no node could be
audited at all); 0 otherwise. ``--check-evidence`` verifies evidence records (a file saved
from ``GET /audit/evidence``, one record, or JSON lines) against the consortium's keys; exit
status 1 if any record fails.

The lead wires it into ``node/cli.py`` with ``add_audit_parser(sub)``; the parser's default
``func`` is :func:`main_audit`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.table import Table

from consensus.hashing import GENESIS_HASH
from node.argtypes import non_negative_int as _non_negative_int
from node.argtypes import positive_float as _positive_float
from node.argtypes import positive_int as _positive_int
from node.audit import PeerClient, PeerError
from node.codec import CodecError
from node.config import ConfigError, NodeConfig, load_config
from node.evidence import (
    AUDIT_DB_NAME,
    AuditLog,
    EvidenceError,
    check_served_block,
    conflict_signers,
    evidence_from_json,
    load_evidence_file,
    parse_block_json,
    verify_evidence,
)
from node.ledger import ClientRegistry, decode_block, verify_block
from scripts.cluster import DEFAULT_CLUSTER_DIR, ClusterLayout

PAGE_BLOCKS = 100
"""Blocks per GET /blocks (a node serves at most ``NodeLimits.blocks_page_max``, 100)."""
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_LAG_TOLERANCE = 2
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
_STORE_SUFFIXES = (".sqlite", ".sqlite3", ".db")

LIVE = "live"
OFFLINE = "offline"
UNREACHABLE = "unreachable"

stdout = Console(highlight=False, soft_wrap=True)
if not stdout.is_terminal:
    stdout.width = 160  # piped or captured: no need to squeeze the table into 80 columns


class AuditCliError(RuntimeError):
    """An error for the user: printed as ``medchain: error: ...``, exit status 1."""


# =============================================================================================
# keys and targets


@dataclass(frozen=True, slots=True)
class Keys:
    replica_publics: tuple[bytes, ...]
    registry: ClientRegistry
    source: str


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    url: str | None
    data_dir: Path | None


def _load(path: Path) -> NodeConfig:
    try:
        return load_config(path)
    except ConfigError as e:
        raise AuditCliError(str(e)) from e


def keys_from_config(config: NodeConfig, source: str) -> Keys:
    return Keys(tuple(config.replica_publics), ClientRegistry(config.client_keys()), source)


def keys_from_status(doc: object, url: str) -> Keys:
    """Keys a node publishes in GET /status (weaker: the node vouches for itself)."""
    try:
        assert isinstance(doc, dict)
        replicas = tuple(bytes.fromhex(r["public_key"]) for r in doc["replicas"])
        registry = ClientRegistry(
            (bytes.fromhex(c["public_key"]), str(c["hospital"])) for c in doc["clients"]
        )
    except (AssertionError, KeyError, TypeError, ValueError) as e:
        raise AuditCliError(
            f"{url}/status does not publish the consortium's keys ({e}); pass --config"
        ) from None
    return Keys(replicas, registry, f"{url}/status")


def cluster_targets(root: Path) -> tuple[list[Target], Keys]:
    layout = ClusterLayout(root)
    indices = layout.node_indices()
    if not indices:
        raise AuditCliError(f"{layout.root}: no cluster here; give --nodes URL,URL,... instead")
    targets = []
    keys: Keys | None = None
    for i in indices:
        path = layout.config_path(i)
        config = _load(path)
        keys = keys or keys_from_config(config, str(path))
        targets.append(Target(f"node{i}", config.self_url, config.data_dir))
    assert keys is not None
    return targets, keys


def url_targets(text: str) -> list[Target]:
    urls = [u.strip().rstrip("/") for u in text.split(",") if u.strip()]
    if not urls:
        raise AuditCliError("--nodes needs at least one URL")
    for u in urls:
        if not u.startswith(("http://", "https://")):
            raise AuditCliError(f"--nodes: {u!r} is not an http(s):// URL")
    return [Target(u, u, None) for u in urls]


def find_store_file(data_dir: Path) -> Path | None:
    """The node's chain database in its data directory: the SQLite file holding a ``blocks``
    table (the audit's own database is skipped)."""
    if not data_dir.is_dir():
        return None
    for path in sorted(data_dir.iterdir()):
        if path.suffix not in _STORE_SUFFIXES or path.name == AUDIT_DB_NAME or not path.is_file():
            continue
        try:
            db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
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


# =============================================================================================
# gathering one node's chain


@dataclass(slots=True)
class NodeView:
    name: str
    url: str | None
    source: str = UNREACHABLE
    height: int | None = None
    head_hash: str | None = None
    stable_seq: int | None = None
    hashes: dict[int, bytes] = field(default_factory=dict)
    """Verified block hashes by height, over the audited range."""
    bad_height: int | None = None
    bad_reason: str | None = None
    evidence: int | None = None
    quarantined: int | None = None
    repaired: int | None = None
    self_report: str | None = None
    """The node's own auditor's overall agreement (live nodes)."""
    error: str | None = None
    status: str = UNREACHABLE
    agrees_through: int | None = None
    lag: int | None = None

    def fail(self, height: int, reason: str) -> None:
        if self.bad_height is None:
            self.bad_height, self.bad_reason = height, reason

    @property
    def verified_through(self) -> int | None:
        if self.height is None:
            return None
        return self.height if self.bad_height is None else self.bad_height - 1

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "source": self.source,
            "status": self.status,
            "height": self.height,
            "head_hash": self.head_hash,
            "stable_seq": self.stable_seq,
            "agrees_through": self.agrees_through,
            "lag": self.lag,
            "certificates_ok": None if self.height is None else self.bad_height is None,
            "first_bad_height": self.bad_height,
            "bad_reason": self.bad_reason,
            "evidence": self.evidence,
            "quarantined": self.quarantined,
            "repaired": self.repaired,
            "self_report": self.self_report,
            "error": self.error,
        }


class _ChainChecker:
    """Verifies a node's blocks in height order: each block on its own and its link."""

    def __init__(self, view: NodeView, keys: Keys, start: int) -> None:
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


async def probe_live(client: PeerClient, view: NodeView) -> bool:
    """Fill height/head from GET /status; False if the node does not answer."""
    assert view.url is not None
    try:
        status = await client.status(view.url)
    except PeerError as e:
        view.error = e.reason
        return False
    view.source = LIVE
    view.height = status.height
    view.head_hash = None if status.head_hash is None else status.head_hash.hex()
    view.stable_seq = status.stable_seq
    return True


async def gather_live(client: PeerClient, view: NodeView, keys: Keys, start: int) -> None:
    assert view.url is not None and view.height is not None
    checker = _ChainChecker(view, keys, start)
    while checker.expected <= view.height and not checker.done():
        limit = min(PAGE_BLOCKS, view.height - checker.expected + 1)
        try:
            # With payloads: a payload that no longer matches its hash is caught too.
            docs = await client.blocks(view.url, checker.expected, limit, payload=True)
        except PeerError as e:
            view.fail(checker.expected, f"cannot fetch blocks from {checker.expected}: {e.reason}")
            break
        if not docs:
            view.fail(checker.expected, f"node served no block at height {checker.expected}")
            break
        for doc in docs:
            checker.served(doc)
            if checker.done() or checker.expected > view.height:
                break
    await _self_report(client, view)


async def _self_report(client: PeerClient, view: NodeView) -> None:
    """What the node's own auditor says (absent on a node without GET /audit)."""
    assert view.url is not None
    try:
        doc = await client.get_json(f"{view.url}/audit")
    except PeerError:
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


def _ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


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


def gather_offline(view: NodeView, path: Path, data_dir: Path, keys: Keys, start: int) -> None:
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


# =============================================================================================
# comparing


@dataclass(frozen=True, slots=True)
class Divergence:
    height: int
    by_hash: dict[str, list[str]]
    """Block hash (hex) -> names of the nodes holding it."""

    def to_json(self) -> dict[str, Any]:
        return {"height": self.height, "blocks": self.by_hash}


def compare(views: Sequence[NodeView], start: int, lag_tolerance: int) -> list[Divergence]:
    """Set each view's status, agreement and lag; return the heights where nodes differ."""
    audited = [v for v in views if v.source != UNREACHABLE]
    divergences: list[Divergence] = []
    diverged_at: dict[str, int] = {}
    top = max((h for v in audited for h in v.hashes), default=start - 1)
    for height in range(start, top + 1):
        holders = [(v, v.hashes[height]) for v in audited if height in v.hashes]
        counts = Counter(bhash for _, bhash in holders)
        if len(counts) <= 1:
            continue
        ranked = counts.most_common()
        majority = ranked[0][0] if ranked[0][1] > ranked[1][1] else None
        by_hash: dict[str, list[str]] = {}
        for v, bhash in holders:
            by_hash.setdefault(bhash.hex(), []).append(v.name)
            if bhash != majority:
                diverged_at.setdefault(v.name, height)
        divergences.append(Divergence(height, by_hash))
    max_height = max((v.height for v in audited if v.height is not None), default=0)
    for v in views:
        if v.source == UNREACHABLE or v.height is None:
            v.status = UNREACHABLE
            continue
        v.lag = max_height - v.height
        first_div = diverged_at.get(v.name)
        through = v.verified_through or 0
        v.agrees_through = min(through, first_div - 1) if first_div is not None else through
        if first_div is not None:
            v.status = "diverged"
        elif v.bad_height is not None:
            v.status = "invalid"
        elif v.lag > lag_tolerance:
            v.status = "lagging"
        else:
            v.status = "agree"
    return divergences


# =============================================================================================
# the command


async def audit_nodes(
    targets: Sequence[Target],
    keys: Keys | None,
    *,
    last: int | None,
    lag_tolerance: int,
    timeout_s: float,
) -> tuple[list[NodeView], list[Divergence], Keys, int]:
    views = [NodeView(t.name, t.url) for t in targets]
    async with aiohttp.ClientSession() as session:
        client = PeerClient(session, timeout_ms=int(timeout_s * 1000), max_bytes=MAX_RESPONSE_BYTES)
        alive = await asyncio.gather(*(probe_live(client, v) if v.url else _false() for v in views))
        stores: dict[str, Path] = {}
        for t, v, ok in zip(targets, views, alive, strict=True):
            if not ok and t.data_dir is not None:
                path = probe_offline(v, t.data_dir)
                if path is not None:
                    stores[v.name] = path
        if keys is None:
            first = next((v for v in views if v.source == LIVE), None)
            if first is None or first.url is None:
                raise AuditCliError("no node answered; cannot read the consortium's keys")
            keys = keys_from_status(await client.get_json(f"{first.url}/status"), first.url)
        heights = [v.height for v in views if v.height is not None]
        start = 1 if last is None or not heights else max(1, min(heights) - last + 1)
        await asyncio.gather(
            *(gather_live(client, v, keys, start) for v in views if v.source == LIVE)
        )
    for t, v in zip(targets, views, strict=True):
        if v.name in stores and t.data_dir is not None:
            gather_offline(v, stores[v.name], t.data_dir, keys, start)
    return views, compare(views, start, lag_tolerance), keys, start


async def _false() -> bool:
    return False


def _run_audit(args: argparse.Namespace) -> int:
    keys: Keys | None = None
    if args.nodes:
        targets = url_targets(args.nodes)
    else:
        targets, keys = cluster_targets(args.dir or DEFAULT_CLUSTER_DIR)
    if args.config:
        keys = keys_from_config(_load(args.config), str(args.config))
    views, divergences, keys, start = asyncio.run(
        audit_nodes(
            targets,
            keys,
            last=args.last,
            lag_tolerance=args.lag_tolerance,
            timeout_s=args.timeout,
        )
    )
    audited = [v for v in views if v.status != UNREACHABLE]
    failed = [v for v in views if v.status in ("diverged", "invalid")]
    ok = bool(audited) and not failed and not divergences
    common = min((v.verified_through or 0 for v in audited), default=0)
    if args.json:
        _print_json(
            {
                "ok": ok,
                "keys": keys.source,
                "from_height": start,
                "common_height": common,
                "nodes": [v.to_json() for v in views],
                "divergences": [d.to_json() for d in divergences],
            }
        )
    else:
        _print_table(views, keys, start)
        _print_verdict(views, divergences, ok)
    return 0 if ok else 1


def _print_table(views: Sequence[NodeView], keys: Keys, start: int) -> None:
    what = "whole chains" if start == 1 else f"heights {start}.."
    table = Table(title=f"medchain audit ({what}; keys from {keys.source})")
    for col in ("node", "source"):
        table.add_column(col, no_wrap=True)
    for col in ("height", "head", "agrees to", "lag"):
        table.add_column(col, justify="left" if col == "head" else "right", no_wrap=True)
    table.add_column("certs", no_wrap=True)
    for col in ("evidence", "quarant.", "repaired"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    colours = {
        "agree": "green",
        "lagging": "yellow",
        "diverged": "red",
        "invalid": "red",
        UNREACHABLE: "dim",
    }
    for v in views:
        if v.height is None:
            certs = "-"
        elif v.bad_height is None:
            certs = "ok"
        else:
            certs = f"[red]bad at {v.bad_height}[/]"
        table.add_row(
            v.name,
            v.source,
            _dash(v.height),
            "-" if v.head_hash is None else v.head_hash[:12],
            _dash(v.agrees_through),
            _dash(v.lag),
            certs,
            _dash(v.evidence),
            _dash(v.quarantined),
            _dash(v.repaired),
            f"[{colours.get(v.status, 'white')}]{v.status}[/]",
        )
    stdout.print(table)


def _print_verdict(views: Sequence[NodeView], divergences: Sequence[Divergence], ok: bool) -> None:
    for v in views:
        if v.bad_height is not None:
            stdout.print(f"[red]{v.name}[/]: block {v.bad_height} fails: {v.bad_reason}")
        if v.status == UNREACHABLE and v.error:
            stdout.print(f"[dim]{v.name}: not audited: {v.error.lstrip('; ')}[/]")
    for d in divergences[:10]:
        parts = "; ".join(f"{h[:16]} held by {', '.join(ns)}" for h, ns in d.by_hash.items())
        stdout.print(f"[red]divergence at height {d.height}[/]: {parts}")
    if len(divergences) > 10:
        stdout.print(f"[red]... {len(divergences) - 10} more divergent heights[/]")
    if ok:
        stdout.print("[green]OK[/]: every audited chain verifies and agrees")
    elif not any(v.status != UNREACHABLE for v in views):
        stdout.print("[red]FAILED[/]: no node could be audited")
    else:
        stdout.print("[red]FAILED[/]: divergence or failed verification (see above)")


# ---------------------------------------------------------------------------------------------
# --check-evidence


def _check_evidence(args: argparse.Namespace) -> int:
    if args.config:
        keys = keys_from_config(_load(args.config), str(args.config))
    elif args.nodes:
        raise AuditCliError("--check-evidence needs the keys: --config FILE or --dir DIR")
    else:
        _, keys = cluster_targets(args.dir or DEFAULT_CLUSTER_DIR)
    try:
        docs = load_evidence_file(args.check_evidence)
    except EvidenceError as e:
        raise AuditCliError(e.reason) from None
    if not docs:
        raise AuditCliError(f"{args.check_evidence} holds no evidence records")
    results = []
    for i, doc in enumerate(docs):
        problem = verify_evidence(doc, keys.replica_publics, registry=keys.registry)
        entry: dict[str, Any] = {
            "index": i,
            "ok": problem is None,
            "problem": problem,
            "kind": doc.get("kind"),
            "height": doc.get("height"),
            "reporter": doc.get("reporter"),
            "accused": doc.get("accused"),
        }
        if problem is None:
            entry["implicated"] = conflict_signers(evidence_from_json(doc))
        results.append(entry)
    ok = all(r["ok"] for r in results)
    if args.json:
        _print_json({"ok": ok, "keys": keys.source, "records": results})
        return 0 if ok else 1
    for r in results:
        where = f"{r['kind']} at height {r['height']}, reported by replica {r['reporter']}"
        if r["ok"]:
            extra = f"; replicas {r['implicated']} signed both" if r.get("implicated") else ""
            stdout.print(
                f"[green]VALID[/] record {r['index']}: {where}, accused {r['accused']}{extra}"
            )
        else:
            stdout.print(f"[red]INVALID[/] record {r['index']}: {where}: {r['problem']}")
    return 0 if ok else 1


# ---------------------------------------------------------------------------------------------
# argparse


def add_audit_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``audit`` to a ``medchain`` subparsers object; its ``func`` is :func:`main_audit`."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "audit",
        help="compare every node's chain: agreement, certificates, lag, evidence",
        description="Show every node of a cluster side by side: height, head hash, agreement "
        "up to the common height, certificate validity, lag, evidence and repairs. Exit "
        "status 1 on any divergence or failed verification. With --check-evidence, verify "
        "evidence records offline instead.",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--dir",
        type=Path,
        help=f"cluster directory (default: {DEFAULT_CLUSTER_DIR}); nodes that do not answer "
        "are audited offline from their stores",
    )
    src.add_argument("--nodes", metavar="URL,URL,...", help="audit these nodes over HTTP")
    p.add_argument(
        "--config",
        type=Path,
        help="node config holding the consortium's keys (default: the cluster's node config; "
        "with --nodes, the keys the first node publishes in GET /status)",
    )
    p.add_argument(
        "--last", type=_positive_int, help="compare only the last N common heights (default: all)"
    )
    p.add_argument(
        "--lag-tolerance",
        type=_non_negative_int,
        default=DEFAULT_LAG_TOLERANCE,
        help=f"blocks behind the highest node still counted as agreeing (default "
        f"{DEFAULT_LAG_TOLERANCE})",
    )
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds per HTTP request (default {DEFAULT_TIMEOUT_S:.0f})",
    )
    p.add_argument(
        "--check-evidence",
        type=Path,
        metavar="FILE",
        help="verify the evidence records in FILE (from GET /audit/evidence) and exit",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    p.set_defaults(func=main_audit)
    return p


def main_audit(args: argparse.Namespace) -> int:
    """Run ``medchain audit``; returns the exit status (errors printed to stderr, status 1)."""
    try:
        if args.check_evidence is not None:
            return _check_evidence(args)
        return _run_audit(args)
    except AuditCliError as e:
        sys.stderr.write(f"medchain: error: {e}\n")
        return 1


def _print_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")
    sys.stdout.flush()


def _dash(value: object) -> str:
    return "-" if value is None else str(value)


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point (``python -m scripts.audit``) until the lead wires the CLI."""
    parser = argparse.ArgumentParser(prog="medchain")
    add_audit_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["audit", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
