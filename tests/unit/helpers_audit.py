"""Shared by the tests of node/reader, node/audit and scripts/audit: chains, stores whose bytes
the tests change directly, and in-process aiohttp peers serving blocks built from fixed seeds
(tests.unit.helpers_ledger), honest or altered."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.test_utils import TestServer

from consensus.hashing import GENESIS_HASH
from node.audit.auditor import Auditor
from node.audit.evidence import KIND_CONFLICT, Exhibit, block_exhibit_text, make_evidence
from node.audit.log import AuditLog
from node.audit.settings import AuditSettings
from node.config import ClientEntry, ReplicaEntry, make_node_config
from node.configwrite import write_config
from node.crypto import Signer
from node.ledger import (
    Block,
    TxEnvelope,
    block_from_committed,
    block_header,
    block_to_json,
    header_to_json,
)
from node.reader import BlockReader, ReaderSettings
from node.repair import RepairLog
from node.store import Store
from tests.unit.helpers_ledger import (
    CLIENT_KEYS,
    CONSORTIUM,
    HOSPITALS,
    REGISTRY,
    REPLICA_KEYS,
    N,
    make_chain,
    make_committed,
    make_tx,
)

SIGNERS = [Signer(secret) for secret, _ in REPLICA_KEYS]
FAST = AuditSettings(interval_ms=50, http_timeout_ms=2000)
FAST_READ = ReaderSettings(
    interval_ms=50, http_timeout_ms=2000, repair_backoff_max_ms=50, scrub_cpu_permille=1000
)
R = TypeVar("R", BlockReader, Auditor)


def fork_chain(base: list[Block], at: int, *, replicas: tuple[int, ...] = (1, 2, 3)) -> list[Block]:
    """``base`` up to ``at - 1``, then other validly certified blocks (signed by ``replicas``)."""
    blocks = list(base[: at - 1])
    prev = blocks[-1].block_hash if blocks else GENESIS_HASH
    for seq in range(at, len(base) + 1):
        txs = [make_tx(5000 + seq, client=1)]
        block = block_from_committed(
            make_committed(seq, prev, txs, proposer=seq % N, replicas=replicas)
        )
        blocks.append(block)
        prev = block.block_hash
    return blocks


def new_store(path: Path, blocks: list[Block]) -> Store:
    store = Store(path)
    store.append_blocks(blocks)
    return store


def raw_of(path: Path, height: int) -> bytes:
    with sqlite3.connect(path) as db:
        return bytes(
            db.execute("SELECT data FROM blocks WHERE height = ?", (height,)).fetchone()[0]
        )


class RawEditor:
    """Changes stored bytes behind the store's back (a second SQLite connection)."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA synchronous=OFF")

    def write(self, height: int, data: bytes) -> None:
        self.db.execute("UPDATE blocks SET data = ? WHERE height = ?", (data, height))

    def set_column(self, height: int, column: str, value: bytes) -> None:
        assert column in ("hash", "prev_hash")
        self.db.execute(f"UPDATE blocks SET {column} = ? WHERE height = ?", (value, height))

    def close(self) -> None:
        self.db.close()


def flip(data: bytes, pos: int, mask: int = 0x01) -> bytes:
    return data[:pos] + bytes([data[pos] ^ mask]) + data[pos + 1 :]


def replace_once(data: bytes, old: bytes, new: bytes) -> bytes:
    assert len(old) == len(new) and data.count(old) >= 1, old
    return data.replace(old, new, 1)


def altered_payload(block: Block) -> Block:
    """The block with one tx payload changed (decodes fine, fails verification)."""
    env = block.txs[0]
    bad = TxEnvelope(tx=env.tx, payload=env.payload + b"!")
    return dataclasses.replace(block, txs=(bad, *block.txs[1:]))


def forged_certificate(block: Block) -> Block:
    """The block with one commit signature replaced (decodes fine, fails verification)."""
    bad = dataclasses.replace(block.commits[0], signature=bytes(64))
    return dataclasses.replace(block, commits=(bad, *block.commits[1:]))


JsonMutator = Callable[[dict[str, Any]], None]


def set_tx(key: str, value: object) -> JsonMutator:
    def m(doc: dict[str, Any]) -> None:
        if "txs" in doc:  # a header has none: the lie is only in the whole block
            doc["txs"][0][key] = value

    return m


def set_key(key: str, value: object) -> JsonMutator:
    def m(doc: dict[str, Any]) -> None:
        doc[key] = value

    return m


def set_commit(key: str, value: object) -> JsonMutator:
    def m(doc: dict[str, Any]) -> None:
        doc["certificate"][0][key] = value

    return m


class FakePeer:
    """A peer's HTTP API (GET /status, /blocks[?txs=0], /blocks/{h}) over a fixed list of
    blocks. ``mutate`` alters served documents of both forms (a mutator of transactions leaves
    headers alone), ``header_mutate`` only headers."""

    def __init__(
        self,
        blocks: list[Block],
        *,
        mutate: dict[int, JsonMutator] | None = None,
        header_mutate: dict[int, JsonMutator] | None = None,
        repair_bodies: dict[int, bytes] | None = None,
        status_extra: dict[str, Any] | None = None,
    ) -> None:
        self.blocks = {b.height: b for b in blocks}
        self.mutate = mutate or {}
        self.header_mutate = header_mutate or {}
        self.repair_bodies = repair_bodies or {}
        """Bodies of GET /blocks/{h} (what repair fetches) other than the honest block."""
        self.status_extra = status_extra or {}
        self.requests: list[str] = []
        self.server: TestServer | None = None

    @property
    def height(self) -> int:
        return max(self.blocks, default=0)

    @property
    def url(self) -> str:
        assert self.server is not None and self.server.port is not None
        return f"http://127.0.0.1:{self.server.port}"

    def doc(self, height: int, payload: bool = False) -> dict[str, Any]:
        doc = block_to_json(self.blocks[height], include_payload=payload)
        if height in self.mutate:
            self.mutate[height](doc)
        return doc

    async def status(self, request: web.Request) -> web.Response:
        self.requests.append("status")
        head = self.blocks[self.height].block_hash if self.blocks else GENESIS_HASH
        return web.json_response(
            {"height": self.height, "head_hash": head.hex(), "view": 0, **self.status_extra}
        )

    def header_doc(self, height: int) -> dict[str, Any]:
        doc = header_to_json(block_header(self.blocks[height]))
        for mutators in (self.mutate, self.header_mutate):
            if height in mutators:
                mutators[height](doc)
        return doc

    async def page(self, request: web.Request) -> web.Response:
        start, limit = int(request.query["from"]), int(request.query["limit"])
        heights = [h for h in range(start, start + min(limit, 1000)) if h in self.blocks]
        if request.query.get("txs") == "0":
            self.requests.append(f"headers {start}+{limit}")
            return web.json_response({"blocks": [self.header_doc(h) for h in heights]})
        self.requests.append(f"blocks {start}+{limit}")
        payload = request.query.get("payload") == "1"
        return web.json_response({"blocks": [self.doc(h, payload) for h in heights[:100]]})

    async def one(self, request: web.Request) -> web.Response:
        height = int(request.match_info["h"])
        self.requests.append(f"block {height}")
        if height not in self.blocks:
            return web.json_response({"error": "not found"}, status=404)
        honest = json.dumps(block_to_json(self.blocks[height], include_payload=True)).encode()
        data = self.repair_bodies.get(height, honest)
        return web.Response(body=data, content_type="application/json")

    async def __aenter__(self) -> FakePeer:
        app = web.Application()
        app.router.add_get("/status", self.status)
        app.router.add_get("/blocks", self.page)
        app.router.add_get("/blocks/{h}", self.one)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        await self.server.close()


def whole_blocks_fetched(peer: FakePeer) -> set[int]:
    """Heights whose whole blocks ``peer`` was asked for (GET /blocks without txs=0)."""
    out: set[int] = set()
    for q in peer.requests:
        if q.startswith("blocks "):
            start, limit = map(int, q.removeprefix("blocks ").split("+"))
            out.update(range(start, start + limit))
    return out


def make_reader(
    store: Store,
    peers: dict[int, str],
    *,
    settings: ReaderSettings = FAST_READ,
    repair_log: RepairLog | None = None,
    cpu_clock: Callable[[], float] = time.thread_time,
) -> BlockReader:
    return BlockReader(
        store=store,
        consortium=CONSORTIUM,
        registry=REGISTRY,
        peers=peers,
        repair_log=repair_log or AuditLog(None),
        settings=settings,
        cpu_clock=cpu_clock,
    )


def make_auditor(
    store: Store,
    peers: dict[int, str],
    *,
    settings: AuditSettings = FAST,
    read_settings: ReaderSettings = FAST_READ,
    node_id: int = 0,
) -> Auditor:
    """An auditor reading through a reader of its own (both share one in-memory log)."""
    audit_log = AuditLog(None)
    reader = make_reader(store, peers, settings=read_settings, repair_log=audit_log)
    return Auditor(
        node_id=node_id,
        reader=reader,
        signer=SIGNERS[node_id],
        audit_log=audit_log,
        settings=settings,
    )


Running = BlockReader | Auditor


async def started(running: list[Running], thing: R) -> R:
    """``thing`` started without background tasks (an auditor's reader too), to be stopped by
    :func:`stop_all`."""
    running.append(thing)
    if isinstance(thing, Auditor):
        await thing.reader.start(background=False)
    await thing.start(background=False)
    return thing


async def stop_all(running: list[Running]) -> None:
    for thing in running:
        await thing.stop()
        thing.close()
        if isinstance(thing, Auditor):
            await thing.reader.stop()
            thing.reader.close()


async def full_round(auditor: Auditor) -> None:
    """One period of a node's two tasks: the reader's (repairs, scrub), then the audit's."""
    await auditor.reader.run_round()
    await auditor.run_round()


def peer_report(auditor: Auditor, peer_id: int) -> dict[str, Any]:
    return next(p for p in auditor.report()["peers"] if p["id"] == peer_id)


def chain_of_ten() -> list[Block]:
    return make_chain(10, txs_per_block=2)


def conflict_record(chain: list[Block], height: int = 5) -> tuple[Any, list[Block]]:
    fork = fork_chain(chain, height)
    record = make_evidence(
        SIGNERS[0],
        kind=KIND_CONFLICT,
        height=height,
        reporter=0,
        accused=3,
        source="http://127.0.0.1:1",
        reason="test conflict",
        exhibits=[
            Exhibit("served by replica 3", block_exhibit_text(block_to_json(fork[height - 1]))),
            Exhibit("held by replica 0", block_exhibit_text(block_to_json(chain[height - 1]))),
        ],
    )
    return record, fork


def write_test_config(
    path: Path, data_dir: Path, node_id: int = 0, ports: list[int] | None = None
) -> None:
    ports = ports or [1 + i for i in range(N)]
    config = make_node_config(
        node_id=node_id,
        host="127.0.0.1",
        port=ports[node_id],
        data_dir=data_dir,
        key_file=path.parent / f"node{node_id}.key",
        replicas=[
            ReplicaEntry(id=i, url=f"http://127.0.0.1:{ports[i]}", public_key=CONSORTIUM[i])
            for i in range(N)
        ],
        clients=[ClientEntry(HOSPITALS[i], CLIENT_KEYS[i][1]) for i in range(len(HOSPITALS))],
    )
    write_config(path, config)
