"""``medchain verify``: check a whole chain from genesis against the consortium's keys.

Hash links, Merkle roots, transaction signatures and commit certificates, with
``node.ledger.verify_chain``, over blocks streamed (bounded memory) from a node's HTTP API
(``--node URL``) or read from a node's SQLite store (``--db FILE``, safe while the node runs).
The first block that fails, or cannot be fetched or decoded, is named.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from consensus.hashing import GENESIS_HASH
from node import codec, ledger
from node.config import NodeConfig
from node.store import Store, StoreError
from scripts.client import BlocksPage, Consortium, NodeClient, NodeError, consortium_from_status
from scripts.cluster import DEFAULT_CLUSTER_DIR, ClusterLayout
from scripts.output import CliError, print_json, stdout
from scripts.provision import load_node_config

BLOCKS_PAGE = 100
T = TypeVar("T")


def consortium_from_config(config: NodeConfig, source: str) -> Consortium:
    return Consortium(
        replica_publics=config.replica_publics,
        registry=ledger.ClientRegistry(config.client_keys()),
        source=source,
    )


class FetchError(Exception):
    """Block ``height`` could not be had (not served, malformed, does not decode)."""

    def __init__(self, height: int, reason: str) -> None:
        super().__init__(reason)
        self.height = height
        self.reason = reason


@dataclass(frozen=True, slots=True)
class VerifyResult:
    source: str
    keys: str
    ok: bool
    height: int
    head_hash: str
    first_bad_height: int | None
    reason: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "keys": self.keys,
            "ok": self.ok,
            "height": self.height,
            "head_hash": self.head_hash,
            "first_bad_height": self.first_bad_height,
            "reason": self.reason,
        }


def verify_blocks(source: str, blocks: Iterator[ledger.Block], keys: Consortium) -> VerifyResult:
    """Verify a stream of blocks from genesis with ``ledger.verify_chain``. A block that cannot
    be fetched or decoded counts as the first bad block, like one that fails verification."""
    verified: list[Any] = [0, GENESIS_HASH]

    def tracked() -> Iterator[ledger.Block]:
        while True:
            try:
                block = next(blocks)
            except StopIteration:
                return
            yield block
            # verify_chain asks for the next block only once this one has verified.
            verified[:] = [block.height, block.block_hash]

    try:
        report = ledger.verify_chain(tracked(), keys.replica_publics, keys.registry)
    except FetchError as exc:
        return VerifyResult(
            source, keys.source, False, verified[0], verified[1].hex(), exc.height, exc.reason
        )
    return VerifyResult(
        source=source,
        keys=keys.source,
        ok=report.ok,
        height=report.height,
        head_hash=report.head_hash.hex(),
        first_bad_height=report.first_bad_height,
        reason=report.reason,
    )


def served_blocks(
    fetch: Callable[[Coroutine[Any, Any, BlocksPage]], BlocksPage],
    client: NodeClient,
    up_to: int,
    page: int = BLOCKS_PAGE,
) -> Iterator[ledger.Block]:
    """Blocks 1..up_to from a node, a page at a time; ``fetch`` runs one of the client's
    coroutines to completion (verification runs in a thread, the client on the event loop)."""
    next_height = 1
    while next_height <= up_to:
        limit = min(page, up_to - next_height + 1)
        try:
            served = fetch(client.blocks(next_height, limit, payload=True))
        except NodeError as exc:
            raise FetchError(next_height, str(exc)) from exc
        if not served.blocks:
            raise FetchError(next_height, f"node served no block at height {next_height}")
        for item in served.blocks:
            try:
                block = ledger.block_from_json(item)
            except (KeyError, TypeError, ValueError, codec.CodecError) as exc:
                raise FetchError(next_height, f"malformed block: {exc}") from exc
            yield block
            next_height = block.height + 1
            if next_height > up_to:
                return


async def verify_node(url: str, keys: Consortium | None = None) -> VerifyResult:
    """Fetch a node's whole chain (up to its height when we start) and verify it."""
    url = url.rstrip("/")
    async with NodeClient(url) as client:
        try:
            status = await client.status()
        except NodeError as exc:
            raise CliError(str(exc)) from exc
        if type(status.get("height")) is not int:
            raise CliError(f"{url}/status did not report a height")
        if keys is None:
            try:
                keys = consortium_from_status(status, url)
            except NodeError as exc:
                raise CliError(str(exc)) from exc
        loop = asyncio.get_running_loop()

        def fetch(coro: Coroutine[Any, Any, T]) -> T:
            return asyncio.run_coroutine_threadsafe(coro, loop).result()

        blocks = served_blocks(fetch, client, status["height"])
        return await asyncio.to_thread(verify_blocks, url, blocks, keys)


def verify_db(db_path: Path, keys: Consortium) -> VerifyResult:
    """Verify the chain in a node's SQLite store (the node may be running: WAL readers are
    isolated from its writes)."""
    if not db_path.is_file():
        raise CliError(f"no database at {db_path}")

    def blocks(store: Store) -> Iterator[ledger.Block]:
        # Decoded one by one (not store.iter_blocks, which decodes a page at once) so that
        # every block before a corrupt one is still verified and the corrupt one is named.
        next_height = 1
        while page := store.get_blocks_raw(next_height, BLOCKS_PAGE):
            for height, raw in page:
                try:
                    yield ledger.decode_block(raw)
                except codec.CodecError as exc:
                    raise FetchError(height, f"stored block does not decode: {exc}") from exc
            next_height = page[-1][0] + 1

    try:
        with Store(db_path) as store:
            return verify_blocks(str(db_path), blocks(store), keys)
    except (StoreError, sqlite3.Error) as exc:
        raise CliError(f"cannot read {db_path}: {exc}") from exc


async def _verify_cluster(root: Path, keys: Consortium | None) -> list[VerifyResult]:
    layout = ClusterLayout(root)
    if not layout.node_indices():
        raise CliError(f"{layout.root}: no cluster here; give --node URL or --db FILE")
    results = []
    for i in layout.node_indices():
        config = load_node_config(layout.config_path(i))
        node_keys = keys or consortium_from_config(config, str(layout.config_path(i)))
        results.append(await verify_node(config.self_url, node_keys))
    return results


def cmd_verify(args: argparse.Namespace) -> int:
    config_keys = None
    if args.config:
        config_keys = consortium_from_config(load_node_config(args.config), str(args.config))
    if args.db:
        if config_keys is None:
            raise CliError("--db needs --config (the consortium's keys)")
        results = [verify_db(args.db, config_keys)]
    elif args.node:
        results = [asyncio.run(verify_node(args.node, config_keys))]
    else:
        results = asyncio.run(_verify_cluster(args.dir, config_keys))
    ok = all(r.ok for r in results)
    if args.json:
        docs = [r.to_json() for r in results]
        print_json(docs if not (args.db or args.node) else docs[0])
        return 0 if ok else 1
    for r in results:
        if r.ok:
            stdout.print(
                f"[green]OK[/] {r.source}: {r.height} blocks verified, head {r.head_hash[:16]} "
                f"(keys from {r.keys})"
            )
        else:
            stdout.print(
                f"[red]BAD[/] {r.source}: block {r.first_bad_height} is bad: {r.reason} "
                f"({r.height} blocks verified before it)"
            )
    return 0 if ok else 1


def add_verify_parser(sub: Any) -> None:
    p = sub.add_parser(
        "verify",
        help="verify a whole chain: links, Merkle roots, signatures, commit certificates",
        description="Verify a chain from genesis against the consortium's public keys; exit "
        "status 1 naming the first bad block. With --dir (the default), every node of a local "
        "cluster is verified against its config's keys.",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--node", metavar="URL", help="fetch the chain from this node")
    src.add_argument("--db", type=Path, metavar="FILE", help="read the chain from a node's store")
    p.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_CLUSTER_DIR,
        help=f"cluster directory (default: {DEFAULT_CLUSTER_DIR})",
    )
    p.add_argument(
        "--config",
        type=Path,
        help="node config holding the consortium's keys (required with --db; with --node the "
        "keys otherwise come from the node's own GET /status)",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    p.set_defaults(func=cmd_verify)
