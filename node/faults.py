"""The fault layer: message-level fault injection inside a running node.

Real-cluster fault injection (``medchain fault ...``, ``medchain scenario run``) drives this
layer through the signed admin API (``node/admin.py``). It is off unless the node config says
``[faults] enabled = true``; a disabled layer passes every frame through untouched and refuses
every fault, so a production node cannot be made to misbehave over HTTP.

Where the shell consults it:

* the transport, for every encoded frame: :meth:`FaultLayer.on_send` returns what to actually
  send, as ``(delay_s, frame)`` pairs (empty: drop it; two: duplicate; delays with jitter
  reorder), and :meth:`FaultLayer.on_receive` says whether a received frame is delivered;
* the runtime, before feeding the replica: while :attr:`FaultLayer.paused` it stops stepping the
  replica (its inboxes stay bounded and overflow is dropped and counted, as under overload), and
  waits with :meth:`FaultLayer.wait_unpaused`;
* the runtime, for every outgoing consensus message before encoding:
  :meth:`FaultLayer.outgoing` applies the active byzantine mode (equivocate, silent, corrupt
  signatures, wrong digests, altered blocks in state transfer), re-signing with the node's key
  where the mode needs a validly signed lie;
* the API, when serving blocks: :func:`alter_block_json` while :attr:`serves_altered_blocks`.

Faults: drop (a probability), delay (ms +- jitter), duplicate, reorder, each towards or from
chosen peers; partitions (groups of nodes that cannot reach each other, both directions); pause;
byzantine modes. Every fault may carry a duration after which it clears itself, measured on the
node's monotonic clock (lazily: checked whenever the layer is consulted). Every random choice
comes from a per-fault ``random.Random`` seeded from the fault's ``seed`` (or the layer's seed),
so a given seed and sequence of calls always gives the same drops, delays and digests.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import random
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Final

from consensus.messages import (
    Batch,
    CertifiedBlock,
    Checkpoint,
    Commit,
    FetchResponse,
    Message,
    NewView,
    Prepare,
    PrePrepare,
    ViewChange,
)

log = logging.getLogger("medchain.faults")

MAX_ACTIVE_FAULTS: Final = 64
"""Faults active at once on one node; more is an operator mistake, refused with 409."""
MAX_DELAY_MS: Final = 60_000
"""Largest delay, jitter or reorder window a fault may ask for."""
MAX_DURATION_S: Final = 24 * 3600.0
MAX_SEED: Final = (1 << 63) - 1
MAX_DELAYED_FRAMES: Final = 50_000
"""Frames held back by delay/reorder at once; beyond it new frames are dropped and counted
(a 60 s delay on a busy link must not grow the heap of pending sends without bound)."""
PAUSE_POLL_S: Final = 0.25
"""Longest single wait inside :meth:`FaultLayer.wait_unpaused` (re-checks expiry)."""
DIGEST_BYTES: Final = 32

Sign = Callable[[bytes], bytes]
Clock = Callable[[], float]


class FaultError(ValueError):
    """A fault description is invalid: ``field`` names the offending key."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class FaultConflict(FaultError):
    """A valid fault that cannot be applied now (layer disabled or full, a second byzantine
    mode); the admin API answers 409."""


class FaultsDisabled(FaultConflict):
    def __init__(self) -> None:
        super().__init__("faults", "fault injection is disabled ([faults] enabled = false)")


class Direction(StrEnum):
    OUT = "out"
    """Frames this node sends to the chosen peers."""
    IN = "in"
    """Frames this node receives from the chosen peers."""
    BOTH = "both"


class ByzantineMode(StrEnum):
    EQUIVOCATE = "equivocate"
    """As primary, send a different batch (last tx dropped, re-signed) to half the backups."""
    SILENT = "silent"
    """Send no consensus message at all (still receives and serves clients)."""
    CORRUPT_SIGNATURES = "corrupt_signatures"
    """Flip every bit of every signature this node sends."""
    WRONG_DIGEST = "wrong_digest"
    """Prepare and commit, validly signed, for random digests."""
    ALTER_BLOCKS = "alter_blocks"
    """Serve blocks (state transfer and GET /blocks) with a transaction payload altered."""


# ---------------------------------------------------------------------------------------------
# fault descriptions


@dataclass(frozen=True, slots=True)
class Drop:
    kind: ClassVar[str] = "drop"
    probability: float
    peers: frozenset[int] | None = None
    """None: every peer."""
    direction: Direction = Direction.OUT

    def params(self) -> dict[str, Any]:
        return {
            "probability": self.probability,
            "peers": _peers_json(self.peers),
            "direction": self.direction.value,
        }


@dataclass(frozen=True, slots=True)
class Delay:
    kind: ClassVar[str] = "delay"
    ms: float
    jitter_ms: float = 0.0
    """Each frame waits ms + uniform(-jitter_ms, +jitter_ms) (at least 0): jitter reorders."""
    peers: frozenset[int] | None = None

    def params(self) -> dict[str, Any]:
        return {"ms": self.ms, "jitter_ms": self.jitter_ms, "peers": _peers_json(self.peers)}


@dataclass(frozen=True, slots=True)
class Duplicate:
    kind: ClassVar[str] = "duplicate"
    probability: float
    peers: frozenset[int] | None = None

    def params(self) -> dict[str, Any]:
        return {"probability": self.probability, "peers": _peers_json(self.peers)}


@dataclass(frozen=True, slots=True)
class Reorder:
    kind: ClassVar[str] = "reorder"
    probability: float
    window_ms: float = 50.0
    """A chosen frame is held back uniform(0, window_ms) so that later frames overtake it."""
    peers: frozenset[int] | None = None

    def params(self) -> dict[str, Any]:
        return {
            "probability": self.probability,
            "window_ms": self.window_ms,
            "peers": _peers_json(self.peers),
        }


@dataclass(frozen=True, slots=True)
class Partition:
    """Groups of nodes that cannot reach each other. Nodes named in no group form one more
    group together, so ``[[3]]`` isolates node 3 from everyone else."""

    kind: ClassVar[str] = "partition"
    groups: tuple[frozenset[int], ...]

    def group_of(self, node: int) -> int:
        for i, g in enumerate(self.groups):
            if node in g:
                return i
        return len(self.groups)

    def separates(self, a: int, b: int) -> bool:
        return self.group_of(a) != self.group_of(b)

    def params(self) -> dict[str, Any]:
        return {"groups": [sorted(g) for g in self.groups]}


@dataclass(frozen=True, slots=True)
class Pause:
    kind: ClassVar[str] = "pause"

    def params(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True, slots=True)
class Byzantine:
    kind: ClassVar[str] = "byzantine"
    mode: ByzantineMode

    def params(self) -> dict[str, Any]:
        return {"mode": self.mode.value}


Fault = Drop | Delay | Duplicate | Reorder | Partition | Pause | Byzantine
FAULT_KINDS: Final[tuple[str, ...]] = (
    "drop",
    "delay",
    "duplicate",
    "reorder",
    "partition",
    "pause",
    "byzantine",
)


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """A fault plus how long it lasts and how its randomness is seeded."""

    fault: Fault
    duration_s: float | None = None
    """None: until cleared."""
    seed: int | None = None
    """None: derived from the layer's seed and the fault's id."""

    @property
    def kind(self) -> str:
        return self.fault.kind

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, **self.fault.params()}
        if self.duration_s is not None:
            out["duration_s"] = self.duration_s
        if self.seed is not None:
            out["seed"] = self.seed
        return out


def _peers_json(peers: frozenset[int] | None) -> list[int] | None:
    return None if peers is None else sorted(peers)


# ---------------------------------------------------------------------------------------------
# parsing (JSON from the admin API, TOML tables from scenarios)

_COMMON_KEYS: Final = frozenset({"kind", "duration_s", "seed"})
_KIND_KEYS: Final[dict[str, frozenset[str]]] = {
    "drop": frozenset({"probability", "peers", "direction"}),
    "delay": frozenset({"ms", "jitter_ms", "peers"}),
    "duplicate": frozenset({"probability", "peers"}),
    "reorder": frozenset({"probability", "window_ms", "peers"}),
    "partition": frozenset({"groups"}),
    "pause": frozenset(),
    "byzantine": frozenset({"mode"}),
}


def parse_fault(obj: object, *, n: int | None = None) -> FaultSpec:
    """Validate a fault description (a JSON object / TOML table); FaultError names the field.

    With ``n``, node ids (peers, partition groups) must be in 0..n-1.
    """
    if not isinstance(obj, Mapping):
        raise FaultError("fault", f"must be an object, got {type(obj).__name__}")
    kind = obj.get("kind")
    if kind not in _KIND_KEYS:
        raise FaultError("kind", f"must be one of {', '.join(FAULT_KINDS)}, got {kind!r}")
    allowed = _COMMON_KEYS | _KIND_KEYS[kind]
    for key in obj:
        if key not in allowed:
            raise FaultError(
                str(key), f"unknown key for a {kind} fault (allowed: {', '.join(sorted(allowed))})"
            )
    duration = obj.get("duration_s")
    if duration is not None:
        duration = _number(obj, "duration_s", lo=0.0, hi=MAX_DURATION_S)
        if duration <= 0:
            raise FaultError("duration_s", "must be > 0 (leave it out for no auto-clear)")
    seed = obj.get("seed")
    if seed is not None and (type(seed) is not int or not 0 <= seed <= MAX_SEED):
        raise FaultError("seed", f"must be an integer in 0..{MAX_SEED}, got {seed!r}")
    return FaultSpec(fault=_PARSERS[kind](obj, n), duration_s=duration, seed=seed)


def _parse_drop(obj: Mapping[str, Any], n: int | None) -> Fault:
    raw_dir = obj.get("direction", Direction.OUT.value)
    try:
        direction = Direction(raw_dir)
    except ValueError:
        choices = ", ".join(d.value for d in Direction)
        raise FaultError("direction", f"must be one of {choices}, got {raw_dir!r}") from None
    return Drop(
        probability=_probability(obj),
        peers=_peers(obj, n),
        direction=direction,
    )


def _parse_delay(obj: Mapping[str, Any], n: int | None) -> Fault:
    ms = _number(obj, "ms", lo=0.0, hi=MAX_DELAY_MS)
    jitter = _number(obj, "jitter_ms", lo=0.0, hi=MAX_DELAY_MS, default=0.0)
    return Delay(ms=ms, jitter_ms=jitter, peers=_peers(obj, n))


def _parse_duplicate(obj: Mapping[str, Any], n: int | None) -> Fault:
    return Duplicate(probability=_probability(obj), peers=_peers(obj, n))


def _parse_reorder(obj: Mapping[str, Any], n: int | None) -> Fault:
    window = _number(obj, "window_ms", lo=0.0, hi=MAX_DELAY_MS, default=50.0)
    return Reorder(probability=_probability(obj), window_ms=window, peers=_peers(obj, n))


def _parse_partition(obj: Mapping[str, Any], n: int | None) -> Fault:
    raw = obj.get("groups")
    if not isinstance(raw, list | tuple) or not raw:
        raise FaultError("groups", "must be a non-empty list of lists of node ids")
    seen: set[int] = set()
    groups = []
    for i, g in enumerate(raw):
        ids = _id_list(g, f"groups[{i}]", n)
        if not ids:
            raise FaultError(f"groups[{i}]", "must not be empty")
        overlap = seen & ids
        if overlap:
            raise FaultError(f"groups[{i}]", f"node {min(overlap)} is in two groups")
        seen |= ids
        groups.append(ids)
    if n is not None and len(groups) == 1 and seen == set(range(n)):
        raise FaultError("groups", "a single group holding every node partitions nothing")
    return Partition(groups=tuple(groups))


def _parse_pause(obj: Mapping[str, Any], n: int | None) -> Fault:
    return Pause()


def _parse_byzantine(obj: Mapping[str, Any], n: int | None) -> Fault:
    raw = obj.get("mode")
    try:
        return Byzantine(mode=ByzantineMode(str(raw)))
    except ValueError:
        choices = ", ".join(m.value for m in ByzantineMode)
        raise FaultError("mode", f"must be one of {choices}, got {raw!r}") from None


_PARSERS: Final[dict[str, Callable[[Mapping[str, Any], int | None], Fault]]] = {
    "drop": _parse_drop,
    "delay": _parse_delay,
    "duplicate": _parse_duplicate,
    "reorder": _parse_reorder,
    "partition": _parse_partition,
    "pause": _parse_pause,
    "byzantine": _parse_byzantine,
}


def _number(
    obj: Mapping[str, Any], key: str, *, lo: float, hi: float, default: float | None = None
) -> float:
    if key not in obj or obj[key] is None:
        if default is None:
            raise FaultError(key, "missing")
        return default
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FaultError(key, f"must be a number, got {value!r}")
    if not lo <= value <= hi:
        raise FaultError(key, f"must be in {lo:g}..{hi:g}, got {value!r}")
    return float(value)


def _probability(obj: Mapping[str, Any]) -> float:
    return _number(obj, "probability", lo=0.0, hi=1.0)


def _peers(obj: Mapping[str, Any], n: int | None) -> frozenset[int] | None:
    raw = obj.get("peers")
    if raw is None:
        return None
    ids = _id_list(raw, "peers", n)
    if not ids:
        raise FaultError("peers", "must not be empty (leave it out for every peer)")
    return ids


def _id_list(raw: object, where: str, n: int | None) -> frozenset[int]:
    if not isinstance(raw, list | tuple):
        raise FaultError(where, f"must be a list of node ids, got {type(raw).__name__}")
    out: set[int] = set()
    for value in raw:
        if type(value) is not int or value < 0:
            raise FaultError(where, f"node ids must be non-negative integers, got {value!r}")
        if n is not None and value >= n:
            raise FaultError(where, f"node {value} does not exist (ids are 0..{n - 1})")
        out.add(value)
    return frozenset(out)


# ---------------------------------------------------------------------------------------------
# node config: the [faults] table


@dataclass(frozen=True, slots=True)
class FaultsConfig:
    """The ``[faults]`` table of a node config."""

    enabled: bool = False
    seed: int | None = None
    """Seeds the faults that carry no seed of their own; None: from the OS."""


FAULTS_TABLE_KEYS: Final = frozenset({"enabled", "seed"})


def parse_faults_table(table: object) -> FaultsConfig:
    """Validate the ``[faults]`` table (for node/config.py); FaultError names the key."""
    if table is None:
        return FaultsConfig()
    if not isinstance(table, Mapping):
        raise FaultError("faults", "must be a table ([faults])")
    for key in table:
        if key not in FAULTS_TABLE_KEYS:
            allowed = ", ".join(sorted(FAULTS_TABLE_KEYS))
            raise FaultError(f"faults.{key}", f"unknown key (allowed: {allowed})")
    enabled = table.get("enabled", False)
    if type(enabled) is not bool:
        raise FaultError("faults.enabled", f"must be true or false, got {enabled!r}")
    seed = table.get("seed")
    if seed is not None and (type(seed) is not int or not 0 <= seed <= MAX_SEED):
        raise FaultError("faults.seed", f"must be an integer in 0..{MAX_SEED}, got {seed!r}")
    return FaultsConfig(enabled=enabled, seed=seed)


def faults_config_of(config: object, config_path: str | Path | None = None) -> FaultsConfig:
    """The faults settings of a node: ``config.faults`` once NodeConfig carries it, else the
    ``[faults]`` table read straight from the config file. Any problem reading it leaves
    faults disabled (the safe side) and is logged."""
    attr = getattr(config, "faults", None)
    if isinstance(attr, FaultsConfig):
        return attr
    if config_path is None:
        return FaultsConfig()
    try:
        with Path(config_path).open("rb") as fh:
            doc = tomllib.load(fh)
        return parse_faults_table(doc.get("faults"))
    except (OSError, tomllib.TOMLDecodeError, FaultError) as e:
        log.error("fault injection disabled: cannot read [faults] from %s: %s", config_path, e)
        return FaultsConfig()


# ---------------------------------------------------------------------------------------------
# byzantine rewriting (pure functions of the message; randomness comes in through rng)

SIGNED_TYPES: Final = (PrePrepare, Prepare, Commit, Checkpoint, ViewChange, NewView)


def resign(msg: PrePrepare | Prepare | Commit, sign: Sign) -> PrePrepare | Prepare | Commit:
    unsigned = replace(msg, signature=b"")
    return replace(unsigned, signature=sign(unsigned.signing_bytes()))


def flip_bytes(data: bytes) -> bytes:
    return bytes(b ^ 0xFF for b in data)


def alternative_batch(batch: Batch) -> Batch:
    """A different batch for the same slot: the last transaction dropped, a later timestamp
    (so even a one-transaction batch gets a different digest)."""
    return replace(
        batch,
        timestamp_ms=batch.timestamp_ms + 1,
        tx_ids=batch.tx_ids[:-1],
        txs=batch.txs[:-1],
    )


def equivocation_target(dest: int, primary: int, n: int) -> bool:
    """True for the backups that get the alternative batch: the second half, counting backups
    from the primary (n=4, primary 0: backups 2 and 3; backup 1 gets the real batch)."""
    rank = (dest - primary) % n
    return rank > (n - 1) // 2


def byzantine_rewrite(
    mode: ByzantineMode,
    dest: int | None,
    message: Message,
    sign: Sign,
    *,
    n: int,
    rng: random.Random,
) -> Message | None:
    """What a byzantine node in ``mode`` sends to ``dest`` instead of ``message`` (None: send
    nothing). ``sign`` is the node's own signing function (its key): every lie that must pass
    signature checks to be interesting is signed by the liar itself."""
    if mode is ByzantineMode.SILENT:
        return None
    if mode is ByzantineMode.EQUIVOCATE:
        if (
            isinstance(message, PrePrepare)
            and dest is not None
            and not message.batch.is_null
            and equivocation_target(dest, message.replica, n)
        ):
            alt = alternative_batch(message.batch)
            return resign(replace(message, batch=alt, digest=alt.digest()), sign)
        return message
    if mode is ByzantineMode.CORRUPT_SIGNATURES:
        if isinstance(message, SIGNED_TYPES):
            return replace(message, signature=flip_bytes(message.signature))
        return message
    if mode is ByzantineMode.WRONG_DIGEST:
        if isinstance(message, Prepare | Commit):
            return resign(replace(message, digest=rng.randbytes(DIGEST_BYTES)), sign)
        return message
    if mode is ByzantineMode.ALTER_BLOCKS:
        if isinstance(message, FetchResponse) and message.blocks:
            return replace(message, blocks=tuple(alter_certified_block(b) for b in message.blocks))
        return message
    raise AssertionError(f"unhandled byzantine mode {mode}")


def alter_certified_block(block: CertifiedBlock) -> CertifiedBlock:
    """The block with its first transaction's payload altered (the tx id, which covers only the
    header, is unchanged, so only the payload-hash check catches it); a block without
    transactions gets a later timestamp instead (its digest no longer matches the
    certificate). Either way the block must fail verification at the receiver."""
    batch = block.batch
    if not batch.txs:
        return replace(block, batch=replace(batch, timestamp_ms=batch.timestamp_ms + 1))
    altered = _alter_encoded_tx(batch.txs[0])
    return replace(block, batch=replace(batch, txs=(altered, *batch.txs[1:])))


def _alter_encoded_tx(raw: bytes) -> bytes:
    # Imported here: node.ledger pulls in the codec and crypto, which the rest of this module
    # (consulted on every frame) does not need.
    from node.codec import CodecError
    from node.ledger import TxEnvelope, decode_tx, encode_tx

    try:
        env = decode_tx(raw)
    except CodecError:
        return raw[:-1] + bytes([raw[-1] ^ 0xFF]) if raw else b"\x00"
    payload = env.payload
    altered = bytes([payload[0] ^ 0xFF]) + payload[1:] if payload else b"\x00"
    return encode_tx(TxEnvelope(tx=env.tx, payload=altered))


def alter_block_json(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a served block (``node.ledger.block_to_json``) with one transaction altered:
    its payload (when served) or else its payload hash; a block without transactions gets a
    later timestamp. Whoever verifies the served chain must notice."""
    out = dict(doc)
    txs = out.get("txs")
    if isinstance(txs, list) and txs and isinstance(txs[0], Mapping):
        tx0 = dict(txs[0])
        field_name = "payload" if isinstance(tx0.get("payload"), str) else "payload_hash"
        tx0[field_name] = _flip_hex(str(tx0.get(field_name, "")))
        out["txs"] = [tx0, *txs[1:]]
        return out
    ts = out.get("timestamp_ms")
    out["timestamp_ms"] = ts + 1 if type(ts) is int else 1
    return out


def _flip_hex(text: str) -> str:
    if len(text) < 2:
        return "00"
    try:
        first = int(text[:2], 16) ^ 0xFF
    except ValueError:
        return "00" + text[2:]
    return f"{first:02x}{text[2:]}"


# ---------------------------------------------------------------------------------------------
# the layer


@dataclass(frozen=True, slots=True)
class ActiveFault:
    id: int
    spec: FaultSpec
    started: float
    expires: float | None
    rng: random.Random = field(compare=False, repr=False)

    def applies_to(self, peer: int) -> bool:
        peers = getattr(self.spec.fault, "peers", None)
        return peers is None or peer in peers

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            **self.spec.to_json(),
            "age_s": round(now - self.started, 3),
            "remaining_s": None if self.expires is None else round(max(0.0, self.expires - now), 3),
        }


class FaultLayer:
    """The faults active on one node, consulted by its transport, runtime and API.

    Single-threaded by design: every method runs on the node's event loop.
    """

    def __init__(
        self,
        self_id: int,
        n: int,
        *,
        enabled: bool,
        seed: int | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        if not 0 <= self_id < n:
            raise ValueError(f"self_id {self_id} not in 0..{n - 1}")
        self.self_id = self_id
        self.n = n
        self.enabled = enabled
        self._clock = clock
        self._seed_rng = random.Random(seed)
        self._active: dict[int, ActiveFault] = {}
        self._next_id = 1
        self._delayed: list[float] = []
        """Release times (clock seconds) of frames held back by delay/reorder: a min-heap."""
        self._resumed: asyncio.Event | None = None
        self.counters: Counter[str] = Counter()

    @classmethod
    def from_config(
        cls, config: object, config_path: str | Path | None = None, **kwargs: Any
    ) -> FaultLayer:
        """The layer for a loaded NodeConfig (``node_id``, ``n`` and ``[faults]``)."""
        fc = faults_config_of(config, config_path)
        node_id = getattr(config, "node_id")  # noqa: B009 - NodeConfig is duck-typed here
        n = getattr(config, "n")  # noqa: B009
        return cls(node_id, n, enabled=fc.enabled, seed=fc.seed, **kwargs)

    @property
    def peers(self) -> list[int]:
        return [i for i in range(self.n) if i != self.self_id]

    # ------------------------------------------------------------------ applying and clearing

    def apply(self, spec: FaultSpec) -> ActiveFault:
        """Activate ``spec``; raises FaultConflict if disabled, full, or a second byzantine
        mode, FaultError if it names nodes outside the consortium."""
        if not self.enabled:
            raise FaultsDisabled()
        now = self._clock()
        self._expire(now)
        if len(self._active) >= MAX_ACTIVE_FAULTS:
            raise FaultConflict("faults", f"{MAX_ACTIVE_FAULTS} faults already active")
        self._check_ids(spec.fault)
        if isinstance(spec.fault, Byzantine):
            current = self._byzantine()
            if current is not None:
                raise FaultConflict(
                    "mode", f"byzantine fault {current.id} is already active; clear it first"
                )
        fault_id = self._next_id
        self._next_id += 1
        seed = spec.seed if spec.seed is not None else self._seed_rng.getrandbits(63)
        expires = None if spec.duration_s is None else now + spec.duration_s
        active = ActiveFault(fault_id, spec, now, expires, random.Random(seed))
        self._active[fault_id] = active
        self.counters["applied"] += 1
        self.counters[f"applied_{spec.kind}"] += 1
        log.warning("fault %d injected: %s", fault_id, spec.to_json())
        return active

    def clear(self, fault_id: int | None = None) -> list[int]:
        """Clear one fault (or all); returns the ids cleared ([] if ``fault_id`` is unknown)."""
        self._expire(self._clock())
        ids = list(self._active) if fault_id is None else [fault_id]
        cleared = [i for i in ids if self._active.pop(i, None) is not None]
        if cleared:
            self.counters["cleared"] += len(cleared)
            log.warning("faults cleared: %s", cleared)
            self._wake_paused()
        return cleared

    def active(self) -> list[ActiveFault]:
        self._expire(self._clock())
        return list(self._active.values())

    def _check_ids(self, fault: Fault) -> None:
        ids: Iterable[int] = ()
        if isinstance(fault, Partition):
            ids = (i for g in fault.groups for i in g)
        elif getattr(fault, "peers", None) is not None:
            ids = getattr(fault, "peers")  # noqa: B009
        for i in ids:
            if not 0 <= i < self.n:
                raise FaultError("peers", f"node {i} does not exist (ids are 0..{self.n - 1})")

    def _expire(self, now: float) -> None:
        expired = [
            a.id for a in self._active.values() if a.expires is not None and now >= a.expires
        ]
        if not expired:
            return
        for fault_id in expired:
            a = self._active.pop(fault_id)
            log.warning("fault %d (%s) expired after %.1fs", fault_id, a.spec.kind, now - a.started)
        self.counters["expired"] += len(expired)
        self._wake_paused()

    # ------------------------------------------------------------------ transport hooks

    def on_send(self, dest: int, frame: bytes) -> list[tuple[float, bytes]]:
        """What to send to ``dest`` for ``frame``: ``(delay_s, frame)`` pairs, in order.

        [] drops it; two pairs duplicate it; a positive delay means "enqueue after delay_s"
        (delays with jitter reorder frames)."""
        if not self._active:
            return [(0.0, frame)]
        now = self._clock()
        self._expire(now)
        delay_s = 0.0
        copies = 1
        for a in self._active.values():
            f = a.spec.fault
            if isinstance(f, Partition):
                if f.separates(self.self_id, dest):
                    self.counters["partition_out"] += 1
                    return []
            elif not a.applies_to(dest):
                continue
            elif isinstance(f, Drop):
                if f.direction is not Direction.IN and a.rng.random() < f.probability:
                    self.counters["drop_out"] += 1
                    return []
            elif isinstance(f, Delay):
                jitter = a.rng.uniform(-f.jitter_ms, f.jitter_ms) if f.jitter_ms else 0.0
                delay_s += max(0.0, f.ms + jitter) / 1000.0
                self.counters["delay"] += 1
            elif isinstance(f, Reorder):
                if a.rng.random() < f.probability:
                    delay_s += a.rng.uniform(0.0, f.window_ms) / 1000.0
                    self.counters["reorder"] += 1
            elif isinstance(f, Duplicate) and a.rng.random() < f.probability:
                copies = 2
                self.counters["duplicate"] += 1
        if delay_s > 0.0 and not self._hold(now, now + delay_s, copies):
            self.counters["delay_overflow"] += 1
            return []
        return [(delay_s, frame)] * copies

    def _hold(self, now: float, release: float, copies: int) -> bool:
        """Account for frames held back until ``release``; False if the bound is reached."""
        heap = self._delayed
        while heap and heap[0] <= now:
            heapq.heappop(heap)
        if len(heap) + copies > MAX_DELAYED_FRAMES:
            return False
        for _ in range(copies):
            heapq.heappush(heap, release)
        return True

    def on_receive(self, sender: int, frame: bytes) -> bool:
        """True if a frame received from ``sender`` is delivered; False drops it (counted)."""
        if not self._active:
            return True
        self._expire(self._clock())
        for a in self._active.values():
            f = a.spec.fault
            if isinstance(f, Partition):
                if f.separates(self.self_id, sender):
                    self.counters["partition_in"] += 1
                    return False
            elif (
                isinstance(f, Drop)
                and f.direction is not Direction.OUT
                and a.applies_to(sender)
                and a.rng.random() < f.probability
            ):
                self.counters["drop_in"] += 1
                return False
        return True

    # ------------------------------------------------------------------ runtime hooks

    @property
    def paused(self) -> bool:
        if not self._active:
            return False
        self._expire(self._clock())
        return any(isinstance(a.spec.fault, Pause) for a in self._active.values())

    def _pause_remaining(self) -> float | None:
        """Seconds until every pause fault expires; None if one has no duration."""
        now = self._clock()
        remaining = 0.0
        for a in self._active.values():
            if isinstance(a.spec.fault, Pause):
                if a.expires is None:
                    return None
                remaining = max(remaining, a.expires - now)
        return remaining

    async def wait_unpaused(self) -> None:
        """Return once no pause fault is active (cleared or expired). Waits at most
        PAUSE_POLL_S at a time, so expiry is noticed without a timer of its own."""
        while self.paused:
            remaining = self._pause_remaining()
            step = PAUSE_POLL_S if remaining is None else min(PAUSE_POLL_S, remaining)
            if self._resumed is None:
                self._resumed = asyncio.Event()
            self._resumed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._resumed.wait(), max(step, 0.001))

    def _wake_paused(self) -> None:
        if self._resumed is not None:
            self._resumed.set()

    def _byzantine(self) -> ActiveFault | None:
        for a in self._active.values():
            if isinstance(a.spec.fault, Byzantine):
                return a
        return None

    @property
    def byzantine_mode(self) -> ByzantineMode | None:
        if not self._active:
            return None
        self._expire(self._clock())
        a = self._byzantine()
        return a.spec.fault.mode if a is not None and isinstance(a.spec.fault, Byzantine) else None

    @property
    def serves_altered_blocks(self) -> bool:
        """True while the API must serve blocks through :func:`alter_block_json`."""
        return self.byzantine_mode is ByzantineMode.ALTER_BLOCKS

    def outgoing(
        self, dest: int | None, msg: Message, sign: Sign
    ) -> list[tuple[int | None, Message]]:
        """The sends that replace ``(dest, msg)`` under the active byzantine mode (``dest`` None
        means every peer, as in ``Ready.send``). Without one: ``[(dest, msg)]`` unchanged."""
        if not self._active:
            return [(dest, msg)]
        self._expire(self._clock())
        active = self._byzantine()
        if active is None or not isinstance(active.spec.fault, Byzantine):
            return [(dest, msg)]
        mode = active.spec.fault.mode
        if dest is None and mode is ByzantineMode.EQUIVOCATE and isinstance(msg, PrePrepare):
            targets: list[int | None] = list(self.peers)  # equivocation differs per backup
        else:
            targets = [dest]
        out: list[tuple[int | None, Message]] = []
        for d in targets:
            rewritten = byzantine_rewrite(mode, d, msg, sign, n=self.n, rng=active.rng)
            if rewritten is None:
                self.counters[f"byzantine_{mode.value}_dropped"] += 1
                continue
            if rewritten is not msg:
                self.counters[f"byzantine_{mode.value}"] += 1
            out.append((d, rewritten))
        return out

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """For GET /status and GET /admin/faults."""
        now = self._clock()
        self._expire(now)
        return {
            "enabled": self.enabled,
            "paused": any(isinstance(a.spec.fault, Pause) for a in self._active.values()),
            "active": [a.to_json(now) for a in self._active.values()],
            "held_frames": sum(1 for t in self._delayed if t > now),
            "counters": dict(sorted(self.counters.items())),
        }


__all__ = [
    "FAULT_KINDS",
    "ActiveFault",
    "Byzantine",
    "ByzantineMode",
    "Delay",
    "Direction",
    "Drop",
    "Duplicate",
    "Fault",
    "FaultConflict",
    "FaultError",
    "FaultLayer",
    "FaultSpec",
    "FaultsConfig",
    "FaultsDisabled",
    "Partition",
    "Pause",
    "Reorder",
    "alter_block_json",
    "alter_certified_block",
    "alternative_batch",
    "byzantine_rewrite",
    "equivocation_target",
    "faults_config_of",
    "parse_fault",
    "parse_faults_table",
]
