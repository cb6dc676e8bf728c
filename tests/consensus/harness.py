"""A minimal synchronous harness for the pure core: FIFO delivery, virtual time, real Ed25519.

The tests of single protocol rules (tests/consensus, one module per section of the paper) use
it; the seeded simulator in tests/sim covers faults.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from consensus.config import ReplicaConfig
from consensus.events import Committed, Event, Ready, Receive, Submit, Tick
from consensus.messages import FetchResponse, Message
from consensus.replica import Replica


class SeedCrypto:
    def __init__(self, replica_id: int, n: int) -> None:
        self._sk = SigningKey(bytes([replica_id + 1]) * 32)
        self._vks = [SigningKey(bytes([i + 1]) * 32).verify_key for i in range(n)]

    def sign(self, data: bytes) -> bytes:
        return bytes(self._sk.sign(data).signature)

    def verify(self, replica: int, data: bytes, signature: bytes) -> bool:
        if not 0 <= replica < len(self._vks):
            return False
        vk: VerifyKey = self._vks[replica]
        try:
            vk.verify(data, signature)
        except (BadSignatureError, ValueError):
            return False
        return True


class MemApp:
    """Transactions are any bytes; the id is their sha256; b"bad"-prefixed ones are invalid."""

    def __init__(self) -> None:
        self.committed: set[bytes] = set()

    def check_txs(self, tx_ids: tuple[bytes, ...], txs: tuple[bytes, ...]) -> str | None:
        for tx_id, tx in zip(tx_ids, txs, strict=True):
            if hashlib.sha256(tx).digest() != tx_id or tx.startswith(b"bad"):
                return "invalid transaction"
        return None

    def committed_among(self, tx_ids: object) -> set[bytes]:
        return {t for t in tx_ids if t in self.committed}  # type: ignore[attr-defined]


def tx(i: int) -> tuple[bytes, bytes]:
    body = f"tx-{i}".encode()
    return hashlib.sha256(body).digest(), body


@dataclass
class Node:
    replica: Replica
    app: MemApp
    blocks: list[Committed] = field(default_factory=list)
    persisted: list[Message] = field(default_factory=list)
    deadline: int = 0


class Cluster:
    def __init__(self, n: int = 4, **overrides: int) -> None:
        self.n = n
        self.now = 0
        self.queue: deque[tuple[int, int, Message]] = deque()
        self.down: set[int] = set()
        self.cut: set[int] = set()
        """Partitioned away: they keep running (their timers fire) but no message gets in or out."""
        self.nodes = [self._make(i, overrides) for i in range(n)]
        self.overrides = overrides

    def _make(self, i: int, overrides: dict[str, int], **restore: object) -> Node:
        app = MemApp()
        cfg = ReplicaConfig(n=self.n, replica_id=i, **overrides)
        return Node(Replica(cfg, SeedCrypto(i, self.n), app, **restore), app)  # type: ignore[arg-type]

    def feed(self, i: int, ev: Event) -> None:
        node = self.nodes[i]
        self.apply(i, node.replica.step(ev, self.now))

    def apply(self, i: int, ready: Ready) -> None:
        node = self.nodes[i]
        node.persisted.extend(ready.persist)
        for c in ready.committed:
            node.blocks.append(c)
            node.app.committed.update(c.block.batch.tx_ids)
        if ready.retain is not None:  # after the blocks, as the shell's contract says
            node.persisted = [m for m in node.persisted if not ready.retain.covers(m)]
        for dest, msg in ready.send:
            targets = [d for d in range(self.n) if d != i] if dest is None else [dest]
            for d in targets:
                self.queue.append((i, d, msg))
        for req in ready.serve:
            blocks = tuple(
                c.block for c in node.blocks if req.from_seq <= c.block.seq <= req.to_seq
            )
            if blocks:
                self.queue.append((i, req.replica, FetchResponse(blocks, i)))
        node.deadline = ready.deadline_ms or self.now + 1000

    def submit(self, i: int, txs: list[tuple[bytes, bytes]]) -> None:
        self.feed(i, Submit(tuple(t[0] for t in txs), tuple(t[1] for t in txs)))

    def run(self, ms: int, drop: object = None) -> None:
        end = self.now + ms
        while self.now < end:
            while self.queue:
                src, dst, msg = self.queue.popleft()
                if {src, dst} & (self.down | self.cut):
                    continue
                if callable(drop) and drop(src, dst, msg):
                    continue
                self.feed(dst, Receive(msg, src))
            self.now += 5
            for i, node in enumerate(self.nodes):
                if i not in self.down and node.deadline <= self.now:
                    self.feed(i, Tick())

    def heads(self) -> list[tuple[int, bytes]]:
        return [(n.replica.last_executed, n.replica.head_hash) for n in self.nodes]


SMALL = {"max_batch_txs": 10, "checkpoint_interval": 4, "watermark_window": 8}


def start(n: int = 4, **kw: int) -> Cluster:
    c = Cluster(n, **{**SMALL, **kw})
    for i in range(n):
        c.feed(i, Tick())
    return c


def tx_count(node: Node) -> int:
    return sum(len(b.block.batch.tx_ids) for b in node.blocks)


def assert_same_chain(c: Cluster, nodes: list[int] | None = None) -> None:
    ids = nodes if nodes is not None else list(range(c.n))
    heads = {c.nodes[i].replica.head_hash for i in ids}
    assert len(heads) == 1, [c.nodes[i].replica.last_executed for i in ids]
