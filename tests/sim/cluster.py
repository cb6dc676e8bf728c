"""A whole medchain cluster in one process, on a seeded network with virtual time.

Each ``SimNode`` is one hospital: a durable store (what survives a crash: persisted consensus
messages and committed blocks with their certificates) and a volatile ``Replica``. The cluster
plays the shell's part exactly as ``consensus/events.py`` specifies for every ``Ready``: persist
first, then store the committed blocks, then send, then serve fetches from the block store, then
arm the timer. It is the only place that advances virtual time, and every random choice it makes
comes from ``random.Random`` instances derived from the seed, so a run replays exactly.

Messages between nodes go through ``node/codec`` (encode on send, decode per recipient) when that
module exists; otherwise the frozen message objects are passed as they are, which is safe because
they are immutable all the way down (bytes, ints, tuples).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import nacl.exceptions
import nacl.signing

from consensus.config import ReplicaConfig
from consensus.events import Committed, Event, Ready, Receive, Retention, Submit, Tick
from consensus.hashing import GENESIS_HASH
from consensus.messages import (
    CertifiedBlock,
    Checkpoint,
    Commit,
    FetchResponse,
    Message,
    NewView,
    Prepare,
    PrePrepare,
    Suspect,
    ViewChange,
)
from tests.sim.app import VALID_PREFIX, SimApp, tx_id, tx_problem
from tests.sim.byzantine import Behaviour, ByzContext
from tests.sim.invariants import LivenessTracker, RunId, SafetyChecker
from tests.sim.network import BENIGN, EventQueue, LinkPolicy, Network

EPOCH_MS = 1_700_000_000_000
"""Nodes' clocks read like wall-clock milliseconds, not like a counter from zero."""

SIM_CONFIG: dict[str, int] = {
    "checkpoint_interval": 4,
    "watermark_window": 16,
    "max_inflight": 4,
    "max_batch_txs": 8,
    "batch_timeout_ms": 0,
    "view_timeout_ms": 150,
    "max_view_timeout_ms": 1200,
    "fetch_batch_blocks": 8,
    "fetch_retry_ms": 100,
    "heartbeat_ms": 50,
    "retransmit_ms": 100,
}
"""Protocol timers scaled to the sim's millisecond links so a run stays a few virtual seconds."""

CLIENT_TIMEOUT_MS = 400
CLIENT_MAX_TIMEOUT_MS = 3200
MAX_TICKS_AT_ONE_INSTANT = 200
VERIFY_MEMO_MAX = 500_000

_SIGNED = (PrePrepare, Prepare, Commit, Checkpoint, ViewChange, NewView, Suspect)
_DELIVER, _TICK, _INJECT, _CALL = range(4)


def _optional(module: str) -> ModuleType | None:
    """Import ``module`` if it has been written yet (its own import errors still surface)."""
    if importlib.util.find_spec(module) is None:
        return None
    return importlib.import_module(module)


_codec = _optional("node.codec")
_node_crypto = _optional("node.crypto")


def _replica_class() -> Any:
    from consensus.replica import Replica  # the lead's module; imported late so tools load first

    return Replica


# ---------------------------------------------------------------------------------------------
# Keys and signatures


def node_secret(replica_id: int) -> bytes:
    return bytes([replica_id + 1]) * 32


class _NaclCrypto:
    """Raw Ed25519 over the signing bytes: stands in for node/crypto.NodeCrypto until it exists."""

    def __init__(self, secret: bytes, publics: list[bytes]) -> None:
        self._key = nacl.signing.SigningKey(secret)
        self._publics = [nacl.signing.VerifyKey(p) for p in publics]

    def sign(self, data: bytes) -> bytes:
        return bytes(self._key.sign(data).signature)

    def verify(self, replica: int, data: bytes, signature: bytes) -> bool:
        if not 0 <= replica < len(self._publics):
            return False
        try:
            self._publics[replica].verify(data, signature)
        except (nacl.exceptions.CryptoError, ValueError, TypeError):
            return False
        return True


def _public_key(secret: bytes) -> bytes:
    if _node_crypto is not None:
        _, public = _node_crypto.generate_keypair(secret)
        return bytes(public)
    return bytes(nacl.signing.SigningKey(secret).verify_key.encode())


def _inner_crypto(secret: bytes, publics: list[bytes]) -> Any:
    if _node_crypto is not None:
        return _node_crypto.NodeCrypto(secret, publics)
    return _NaclCrypto(secret, publics)


class SimCrypto:
    """A node's real signer, with verification memoised across the whole cluster.

    Verification is a pure function of (replica, data, signature), and in a cluster every
    message is verified by n-1 receivers and again by the invariant checker; sharing one memo
    cuts the dominant cost of a run by about n without changing any result.
    """

    __slots__ = ("_inner", "_memo")

    def __init__(self, inner: Any, memo: dict[tuple[int, bytes, bytes], bool]) -> None:
        self._inner = inner
        self._memo = memo

    def sign(self, data: bytes) -> bytes:
        return bytes(self._inner.sign(data))

    def verify(self, replica: int, data: bytes, signature: bytes) -> bool:
        key = (replica, data, signature)
        result = self._memo.get(key)
        if result is None:
            result = bool(self._inner.verify(replica, data, signature))
            if len(self._memo) >= VERIFY_MEMO_MAX:
                self._memo.clear()
            self._memo[key] = result
        return result


# ---------------------------------------------------------------------------------------------
# Nodes


class DurableStore:
    """What a node keeps across crashes: persisted messages and the certified chain.

    Message handling mirrors node/store: identical messages are stored once, and the core's
    ``Retention`` instructions say which ones are forgotten.
    """

    __slots__ = ("_messages", "blocks", "tx_heights")

    def __init__(self) -> None:
        self._messages: dict[Message, None] = {}
        self.blocks: list[Committed] = []
        self.tx_heights: dict[bytes, int] = {}

    @property
    def messages(self) -> tuple[Message, ...]:
        return tuple(self._messages)

    @property
    def height(self) -> int:
        return len(self.blocks)

    @property
    def head(self) -> bytes:
        return self.blocks[-1].block_hash if self.blocks else GENESIS_HASH

    def persist(self, messages: Iterable[Message]) -> None:
        for m in messages:
            self._messages[m] = None

    def retain(self, retention: Retention) -> None:
        self._messages = {m: None for m in self._messages if not retention.covers(m)}

    def append(self, committed: Committed) -> None:
        height = committed.block.seq
        self.blocks.append(committed)
        for tid in committed.block.batch.tx_ids:
            self.tx_heights.setdefault(tid, height)

    def serve(self, from_seq: int, to_seq: int, limit: int) -> tuple[CertifiedBlock, ...]:
        first = max(from_seq, 1)
        last = min(to_seq, self.height, first + limit - 1)
        return tuple(self.blocks[s - 1].block for s in range(first, last + 1))


class SimNode:
    """One hospital: a durable store, a replica while it is up, its clock and its behaviour."""

    def __init__(
        self, replica_id: int, label: str, config: ReplicaConfig, crypto: SimCrypto, rate: float
    ) -> None:
        self.replica_id = replica_id
        self.label = label
        self.config = config
        self.crypto = crypto
        self.store = DurableStore()
        self.app = SimApp(self.store.tx_heights)
        self.replica: Any = None
        self.behaviour: Behaviour | None = None
        self.ctx: ByzContext | None = None
        self.honest = True
        self.rate = rate
        self.offset = EPOCH_MS
        self.tick_gen = 0
        self.tick_at: int | None = None
        self.torn: str | None = None
        self.last_tick_ms = -1
        self.ticks_at_instant = 0
        self.acknowledged: dict[bytes, bytes] = {}
        """What this node acknowledged to a client and has not committed: durable, like the
        node's pending table, and re-offered as the node does (node.runtime)."""

    @property
    def up(self) -> bool:
        return self.replica is not None

    def local_now(self, t: int) -> int:
        return self.offset + int(t * self.rate)

    def virtual_at(self, deadline: int, now: int) -> int:
        """The first virtual ms >= now at which this node's clock reads >= deadline."""
        if deadline <= self.local_now(now):
            return now
        t = max(now, int((deadline - self.offset) / self.rate))
        while self.local_now(t) < deadline:
            t += 1
        return t


# ---------------------------------------------------------------------------------------------
# The cluster


@dataclass(slots=True)
class SimStats:
    events: int = 0
    deliveries: int = 0
    ticks: int = 0
    to_crashed: int = 0
    codec_rejects: int = 0
    view_changes: int = 0
    crashes: int = 0
    restarts: int = 0
    replica_drops: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class _ClientTx:
    blob: bytes
    submitted_ms: int
    acked_ms: int | None = None


def describe(msg: Any) -> str:
    """One short line for a trace."""
    if isinstance(msg, bytes | bytearray):
        return f"raw[{len(msg)}]"
    name = type(msg).__name__
    parts = []
    for attr in ("view", "new_view", "seq", "from_seq", "to_seq", "stable_seq", "replica"):
        value = getattr(msg, attr, None)
        if value is not None:
            parts.append(f"{attr}={value}")
    digest = getattr(msg, "digest", None)
    if isinstance(digest, bytes):
        parts.append(f"d={digest.hex()[:8]}")
    return f"{name}({', '.join(parts)})"


class SimCluster:
    """n replicas, a network, clients and invariant checks, driven by one seed.

    Faults and byzantine behaviours are installed before ``start()``; the run then proceeds
    with ``run_until``. Any broken invariant raises ``InvariantViolation`` at the event that
    broke it.
    """

    def __init__(
        self,
        n: int,
        seed: int,
        *,
        scenario: str = "custom",
        config: Mapping[str, int] | None = None,
        policy: LinkPolicy = BENIGN,
        max_drift: float = 0.01,
        max_skew_ms: int = 20,
        max_events: int = 2_000_000,
        codec: bool = True,
        trace: Callable[[str], None] | None = None,
    ) -> None:
        self.run_id = RunId(seed, scenario, n, codec)
        self.n = n
        self.seed = seed
        self.now = 0
        self.queue = EventQueue()
        self.network = Network(self.rng("network"), policy)
        self.stats = SimStats()
        self.max_events = max_events
        self.codec = _codec if codec else None
        self._trace = trace
        self._clock_rng = self.rng("clocks")
        self._client_rng = self.rng("clients")
        self._settings = {**SIM_CONFIG, **(config or {})}
        secrets = [node_secret(i) for i in range(n)]
        self.publics = [_public_key(s) for s in secrets]
        self._memo: dict[tuple[int, bytes, bytes], bool] = {}
        self.nodes = [self._make_node(i, f"node{i}", max_drift, max_skew_ms) for i in range(n)]
        self._targets: dict[int, list[SimNode]] = {i: [node] for i, node in enumerate(self.nodes)}
        self.twins: list[SimNode] = []
        quorum = self.nodes[0].config.quorum
        self.checker = SafetyChecker(
            self.run_id, n, quorum, self.nodes[0].crypto.verify, tx_problem
        )
        self.liveness: LivenessTracker | None = None
        self._signed_by_honest: dict[tuple[Any, ...], bytes] = {}
        self._client_txs: dict[bytes, _ClientTx] = {}
        self._tx_counter = 0
        self.started = False

    # -- construction ---------------------------------------------------------------------

    def rng(self, purpose: str) -> random.Random:
        """An independent stream for one purpose, so adding draws in one place does not shift
        every other random choice of the run."""
        return random.Random(f"medchain-sim/{self.seed}/{purpose}")

    def _make_node(self, replica_id: int, label: str, max_drift: float, max_skew: int) -> SimNode:
        config = ReplicaConfig(n=self.n, replica_id=replica_id, **self._settings)
        inner = _inner_crypto(node_secret(replica_id), self.publics)
        rate = 1.0 + self._clock_rng.uniform(-max_drift, max_drift)
        node = SimNode(replica_id, label, config, SimCrypto(inner, self._memo), rate)
        node.offset = EPOCH_MS + self._clock_rng.randint(0, max_skew)
        return node

    def set_behaviour(self, replica_id: int, behaviour: Behaviour) -> None:
        """Make a node byzantine (before ``start``)."""
        self._require_not_started()
        node = self.nodes[replica_id]
        node.behaviour = behaviour
        node.honest = False
        node.ctx = ByzContext(
            replica_id, self.n, self.rng(f"byzantine/{replica_id}"), node.crypto.sign
        )

    def add_twin(self, replica_id: int, boot_at_ms: int) -> SimNode:
        """A second replica with the same id and key, fed every message to that id and sending
        as that id; both are byzantine as far as the invariants are concerned."""
        self._require_not_started()
        twin = self._make_node(replica_id, f"twin{replica_id}", 0.0, 0)
        twin.honest = False
        self.nodes[replica_id].honest = False
        self.twins.append(twin)
        self._targets[replica_id].append(twin)
        self.at(boot_at_ms, lambda: self._boot(twin))
        return twin

    def _require_not_started(self) -> None:
        if self.started:
            raise RuntimeError("configure behaviours and twins before start()")

    @property
    def honest_nodes(self) -> list[SimNode]:
        return [node for node in self.nodes if node.honest]

    @property
    def f(self) -> int:
        return self.nodes[0].config.f

    def start(self) -> None:
        """Boot every replica at virtual time 0 and fix the honest set."""
        self._require_not_started()
        self.started = True
        self.liveness = LivenessTracker([node.label for node in self.honest_nodes])
        for node in self.nodes:
            self._boot(node)
            if node.behaviour is not None and node.behaviour.inject_every_ms:
                self.queue.push(self.now + node.behaviour.inject_every_ms, (_INJECT, node))

    # -- scheduling -----------------------------------------------------------------------

    def at(self, time_ms: int, action: Callable[[], object]) -> None:
        """Run ``action`` at virtual time ``time_ms`` (a fault, a client, a probe)."""
        self.queue.push(max(time_ms, self.now), (_CALL, action))

    def run_until(self, end_ms: int, stop: Callable[[], bool] | None = None) -> bool:
        """Process events up to ``end_ms``; returns True if ``stop()`` became true first."""
        if not self.started:
            self.start()
        queue = self.queue
        while queue:
            next_time = queue.peek_time()
            assert next_time is not None
            if next_time > end_ms:
                break
            self.now, item = queue.pop()
            self.stats.events += 1
            if self.stats.events > self.max_events:
                raise self.checker.fail(
                    "budget", f"more than {self.max_events} events: a message storm?", self.now
                )
            self._dispatch(item)
            if stop is not None and stop():
                return True
        self.now = max(self.now, end_ms)
        return False

    def _dispatch(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == _DELIVER:
            self._deliver(item[1], item[2], item[3])
        elif kind == _TICK:
            self._tick(item[1], item[2])
        elif kind == _INJECT:
            self._inject(item[1])
        else:
            item[1]()

    # -- the shell's side of the Ready contract ------------------------------------------------

    def _boot(self, node: SimNode) -> None:
        store = node.store
        node.replica = _replica_class()(
            node.config,
            node.crypto,
            node.app,
            last_executed=store.height,
            head_hash=store.head,
            persisted=store.messages,
        )
        self.log(f"boot {node.label} at height {store.height}")
        self._step(node, Tick())
        self._reoffer(node)

    def _reoffer(self, node: SimNode) -> None:
        """As node.runtime does at start and after every view change: hand the replica the
        acknowledged transactions it does not hold."""
        if node.replica is None or not node.acknowledged:
            return
        txs = [(t, b) for t, b in node.acknowledged.items() if t not in node.replica.mempool]
        if txs:
            event = Submit(tuple(t for t, _ in txs), tuple(b for _, b in txs), True)
            self._step(node, event)

    def _step(self, node: SimNode, event: Event) -> None:
        if node.ctx is not None:
            self._refresh_ctx(node)
        try:
            ready = node.replica.step(event, node.local_now(self.now))
        except Exception as exc:
            detail = f"{node.label}: step({type(event).__name__}) raised {exc!r}"
            raise self.checker.fail("exception", detail, self.now) from exc
        self._apply(node, ready)

    def _apply(self, node: SimNode, ready: Ready) -> None:
        store = node.store
        store.persist(ready.persist)
        if node.torn == "after-persist" and (ready.persist or ready.committed or ready.send):
            self._crash_now(node)
            return
        for committed in ready.committed:
            store.append(committed)
            for tid in committed.block.batch.tx_ids:
                node.acknowledged.pop(tid, None)
            if node.honest:
                self._on_honest_commit(node, committed)
        if node.torn == "after-commit" and (ready.persist or ready.committed or ready.send):
            self._crash_now(node)
            return
        # The shell's contract (consensus.events): forget only after the blocks are stored. The
        # simulator forgot first, so a crash before the blocks lost the pre-prepare a restarted
        # primary needed to not sign seq n again (seed 118334, reported as honest equivocation).
        if ready.retain is not None:
            store.retain(ready.retain)
        if node.honest:
            self._check_core_matches_store(node)
        for dest, msg in ready.send:
            self._send(node, dest, msg)
        for req in ready.serve:
            blocks = store.serve(req.from_seq, req.to_seq, node.config.fetch_batch_blocks)
            if blocks:
                self._send(node, req.replica, FetchResponse(blocks=blocks, replica=node.replica_id))
        if ready.deadline_ms is not None:
            self._arm(node, ready.deadline_ms)
        if ready.dropped:
            self.stats.replica_drops.update(d.reason.value for d in ready.dropped)
            if self._trace is not None:
                for d in ready.dropped:
                    self.log(f"{node.label} drops: {d.reason.value} ({d.detail})")
        if ready.view_changed is not None:
            self.stats.view_changes += 1
            cause = ready.view_change_cause
            why = "" if cause is None else f" ({cause.name.lower()})"
            self.log(f"{node.label} enters view {ready.view_changed}{why}")
            self._reoffer(node)

    def _on_honest_commit(self, node: SimNode, committed: Committed) -> None:
        self.checker.on_commit(node.label, committed, self.now)
        batch = committed.block.batch
        self.log(
            f"{node.label} commits seq {committed.block.seq} ({len(batch.tx_ids)} txs) "
            f"{committed.block_hash.hex()[:8]}"
        )
        assert self.liveness is not None
        for tid in batch.tx_ids:
            self.liveness.on_honest_commit(tid)
            record = self._client_txs.get(tid)
            if record is not None and record.acked_ms is None:
                record.acked_ms = self.now

    def _check_core_matches_store(self, node: SimNode) -> None:
        replica = node.replica
        store = node.store
        if replica.last_executed != store.height or replica.head_hash != store.head:
            detail = (
                f"{node.label}: replica at {replica.last_executed} "
                f"{replica.head_hash.hex()[:8]}, its committed blocks end at {store.height} "
                f"{store.head.hex()[:8]}"
            )
            raise self.checker.fail("core-vs-store", detail, self.now)

    def _arm(self, node: SimNode, deadline_ms: int) -> None:
        t = node.virtual_at(deadline_ms, self.now)
        if node.tick_at == t:
            return
        node.tick_gen += 1
        node.tick_at = t
        self.queue.push(t, (_TICK, node, node.tick_gen))

    def _tick(self, node: SimNode, gen: int) -> None:
        if gen != node.tick_gen or node.replica is None:
            return  # superseded by a later deadline, or the node crashed
        node.tick_at = None
        if node.last_tick_ms == self.now:
            node.ticks_at_instant += 1
            if node.ticks_at_instant > MAX_TICKS_AT_ONE_INSTANT:
                detail = f"{node.label} asked for {node.ticks_at_instant} ticks at one instant"
                raise self.checker.fail("timer-loop", detail, self.now)
        else:
            node.last_tick_ms = self.now
            node.ticks_at_instant = 0
        self.stats.ticks += 1
        self._step(node, Tick())

    # -- the network ----------------------------------------------------------------------

    def _send(self, node: SimNode, dest: int | None, msg: Message) -> None:
        if dest is None:
            dests = [i for i in range(self.n) if i != node.replica_id]
        elif 0 <= dest < self.n:
            dests = [dest]
        else:
            raise self.checker.fail("bad-output", f"{node.label} sends to {dest}", self.now)
        if node.honest and isinstance(msg, _SIGNED):
            self._check_honest_signed(node, msg)
        behaviour = node.behaviour
        wire: tuple[Any, Any] = (None, None)
        for d in dests:
            if behaviour is None:
                wire = self._transmit(node, d, msg, wire)
            else:
                assert node.ctx is not None
                for d2, m2 in behaviour.outgoing(node.ctx, d, msg):
                    wire = self._transmit(node, d2, m2, wire)

    def _check_honest_signed(self, node: SimNode, msg: Any) -> None:
        """Honest nodes send only validly signed messages, and never sign two different things
        for one slot (across restarts too: that is what persist-before-send guarantees)."""
        if not node.crypto.verify(msg.replica, msg.signing_bytes(), msg.signature):
            detail = f"{node.label} sends {describe(msg)} with a bad signature"
            raise self.checker.fail("honest-signature", detail, self.now)
        if msg.replica != node.replica_id:
            return  # relaying someone else's message
        if isinstance(msg, PrePrepare | Prepare | Commit):
            key: tuple[Any, ...] = (type(msg).__name__, msg.replica, msg.view, msg.seq)
            value = msg.digest
        elif isinstance(msg, Checkpoint):
            key, value = ("Checkpoint", msg.replica, msg.seq), msg.state_digest
        else:
            return
        previous = self._signed_by_honest.setdefault(key, value)
        if previous != value:
            detail = (
                f"{node.label} signed {describe(msg)} after signing digest {previous.hex()[:8]}"
            )
            raise self.checker.fail("honest-equivocation", detail, self.now)

    def _transmit(
        self, node: SimNode, dest: int, msg: Any, wire: tuple[Any, Any]
    ) -> tuple[Any, Any]:
        """Put one message on the wire to ``dest``; ``wire`` caches the last encoding so a
        broadcast is encoded once."""
        if wire[0] is msg:
            payload = wire[1]
        elif isinstance(msg, bytes) or self.codec is None:
            payload = msg
        else:
            try:
                payload = self.codec.encode_message(msg)
            except Exception as exc:
                if node.honest:
                    detail = f"{node.label} sends {describe(msg)} that does not encode: {exc!r}"
                    raise self.checker.fail("encode", detail, self.now) from exc
                return wire  # a byzantine node's malformed message never reaches the wire
        src = node.replica_id
        for delay in self.network.delays(src, dest):
            self.queue.push(self.now + delay, (_DELIVER, dest, src, payload))
        return (msg, payload)

    def _deliver(self, dest: int, src: int, payload: Any) -> None:
        if not self.network.connected(src, dest):
            self.network.stats.cut += 1
            return
        for node in self._targets[dest]:
            if node.replica is None:
                self.stats.to_crashed += 1
                continue
            if self.codec is None:
                msg = payload
            else:
                try:
                    msg = self.codec.decode_message(payload)
                except self.codec.CodecError as exc:
                    if self.nodes[src].honest:
                        detail = f"a message from honest node{src} does not decode: {exc}"
                        raise self.checker.fail("codec", detail, self.now) from exc
                    self.stats.codec_rejects += 1
                    continue
            self.stats.deliveries += 1
            if self._trace is not None:
                self.log(f"{src}->{node.label} {describe(msg)}")
            if node.behaviour is not None and node.ctx is not None:
                node.behaviour.incoming(node.ctx, src, msg)
            self._step(node, Receive(msg, src))

    def _inject(self, node: SimNode) -> None:
        behaviour = node.behaviour
        assert behaviour is not None and behaviour.inject_every_ms
        if node.replica is not None and node.ctx is not None:
            self._refresh_ctx(node)
            wire: tuple[Any, Any] = (None, None)
            for dest, msg in behaviour.inject(node.ctx):
                wire = self._transmit(node, dest, msg, wire)
        self.queue.push(self.now + behaviour.inject_every_ms, (_INJECT, node))

    def _refresh_ctx(self, node: SimNode) -> None:
        ctx = node.ctx
        assert ctx is not None
        ctx.now_ms = self.now
        if node.replica is not None:
            ctx.view = node.replica.view
            ctx.last_executed = node.replica.last_executed

    # -- faults ---------------------------------------------------------------------------

    def crash(self, replica_id: int, torn: str | None = None) -> None:
        """Crash a node now, or (``torn``) while it handles its next non-empty Ready: after
        persisting ("after-persist") or after storing committed blocks ("after-commit"), in
        both cases before anything of that Ready is sent."""
        if torn not in (None, "after-persist", "after-commit"):
            raise ValueError(f"unknown torn crash point {torn!r}")
        node = self.nodes[replica_id]
        if node.replica is None:
            return
        if torn is None:
            self._crash_now(node)
        else:
            node.torn = torn

    def _crash_now(self, node: SimNode) -> None:
        node.replica = None
        node.torn = None
        node.tick_gen += 1
        node.tick_at = None
        self.stats.crashes += 1
        self.log(f"crash {node.label}")

    def restart(self, replica_id: int) -> None:
        """Bring a crashed node back from its durable store (no-op if it is up)."""
        node = self.nodes[replica_id]
        node.torn = None
        if node.replica is None:
            self.stats.restarts += 1
            self._boot(node)

    def heal(self) -> None:
        """End every network fault and bring every crashed node back."""
        self.network.heal()
        for node in self.nodes:
            self.restart(node.replica_id)
        self.log("heal")

    def current_primary(self) -> int:
        """The primary of the highest view any live honest replica is in."""
        views = [node.replica.view for node in self.honest_nodes if node.replica is not None]
        return self.nodes[0].config.primary(max(views, default=0))

    # -- clients --------------------------------------------------------------------------

    def new_tx(self) -> tuple[bytes, bytes]:
        self._tx_counter += 1
        blob = VALID_PREFIX + f"{self.seed}/{self._tx_counter}".encode()
        return tx_id(blob), blob

    def client_submit(self, replica_id: int, count: int = 1) -> list[bytes]:
        """A client sends ``count`` new transactions to one node (another if that one is down)
        and, like a PBFT client, re-sends them to every node until one is committed somewhere
        honest (acknowledged), with a doubling timeout."""
        assert self.liveness is not None, "start() the cluster first"
        txs = [self.new_tx() for _ in range(count)]
        for tid, blob in txs:
            self.liveness.expect(tid)
            self._client_txs[tid] = _ClientTx(blob, self.now)
        target = self.nodes[replica_id]
        if target.replica is None:
            live = [node for node in self.nodes if node.replica is not None]
            if not live:
                return [tid for tid, _ in txs]
            target = self._client_rng.choice(live)
        self._submit(target, txs)
        ids = [tid for tid, _ in txs]
        self.at(self.now + CLIENT_TIMEOUT_MS, lambda: self._client_retry(ids, CLIENT_TIMEOUT_MS))
        return ids

    def submit_once(self, replica_id: int, count: int) -> list[bytes]:
        """A client sends ``count`` new transactions to one node once and never again: what
        that node acknowledges (its durable pending table) must commit on its own."""
        assert self.liveness is not None, "start() the cluster first"
        node = self.nodes[replica_id]
        txs = [self.new_tx() for _ in range(count)]
        for tid, blob in txs:
            self.liveness.expect(tid)
            self._client_txs[tid] = _ClientTx(blob, self.now)
        event = Submit(tuple(t for t, _ in txs), tuple(b for _, b in txs))
        ready = node.replica.step(event, node.local_now(self.now))
        refused = ready.refused()
        node.acknowledged.update((t, b) for t, b in txs if t not in refused)
        self._apply(node, ready)
        return [t for t, _ in txs if t not in refused]

    def _submit(self, node: SimNode, txs: list[tuple[bytes, bytes]]) -> None:
        event = Submit(tuple(t for t, _ in txs), tuple(b for _, b in txs))
        self._step(node, event)

    def _client_retry(self, ids: list[bytes], timeout: int) -> None:
        pending = [
            (t, self._client_txs[t].blob) for t in ids if self._client_txs[t].acked_ms is None
        ]
        if not pending:
            return
        for node in self.nodes:
            if node.replica is not None:
                self._submit(node, pending)
        later = min(timeout * 2, CLIENT_MAX_TIMEOUT_MS)
        still = [t for t, _ in pending]
        self.at(self.now + later, lambda: self._client_retry(still, later))

    def schedule_load(self, count: int, start_ms: int, end_ms: int, max_group: int = 3) -> None:
        """``count`` transactions in groups of 1..max_group, at random times and random nodes."""
        rng = self._client_rng
        remaining = count
        while remaining > 0:
            group = min(remaining, rng.randint(1, max_group))
            remaining -= group
            target = rng.randrange(self.n)
            when = rng.randint(start_ms, end_ms)
            self.at(when, functools.partial(self.client_submit, target, group))

    def acked(self) -> int:
        return sum(1 for record in self._client_txs.values() if record.acked_ms is not None)

    # -- reporting ------------------------------------------------------------------------

    def log(self, line: str) -> None:
        if self._trace is not None:
            self._trace(f"{self.now:>7} {line}")

    def chains(self) -> dict[str, list[bytes]]:
        """Every honest node's block hashes, in height order."""
        return {node.label: [c.block_hash for c in node.store.blocks] for node in self.honest_nodes}

    def fingerprint(self) -> str:
        """A digest of everything a run decided: equal across replays of one seed."""
        digest = hashlib.sha256()
        for node in self.nodes + self.twins:
            digest.update(node.label.encode())
            for committed in node.store.blocks:
                digest.update(committed.block_hash)
        net = self.network.stats
        counters = (self.now, self.stats.events, self.stats.deliveries, net.sent, net.lost)
        digest.update(repr(counters).encode())
        return digest.hexdigest()

    def summary(self) -> dict[str, Any]:
        return {
            "virtual_ms": self.now,
            "heights": {node.label: node.store.height for node in self.nodes + self.twins},
            "views": {
                node.label: node.replica.view for node in self.nodes if node.replica is not None
            },
            "blocks_checked": self.checker.blocks_checked,
            "txs_expected": self.liveness.expected if self.liveness else 0,
            "txs_acked": self.acked(),
            "deliveries": self.stats.deliveries,
            "events": self.stats.events,
            "view_changes": self.stats.view_changes,
            "crashes": self.stats.crashes,
            "net_lost": self.network.stats.lost,
            "net_cut": self.network.stats.cut,
            "codec_rejects": self.stats.codec_rejects,
            "replica_drops": dict(self.stats.replica_drops),
        }
