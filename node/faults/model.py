"""The fault model: what a fault is, how one is written down, and the ``[faults]`` node table.

Faults: drop (a probability), delay (ms +- jitter), duplicate, reorder, each towards or from
chosen peers; partitions (groups of nodes that cannot reach each other, both directions); pause;
byzantine modes. A :class:`FaultSpec` adds how long a fault lasts and how its randomness is
seeded. :func:`parse_fault` is the one validator of a fault description, used alike for JSON
from the admin API, TOML tables from scenarios and the ``medchain fault`` command line.
"""

from __future__ import annotations

import logging
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Final

log = logging.getLogger("medchain.faults")

MAX_DELAY_MS: Final = 60_000
"""Largest delay, jitter or reorder window a fault may ask for."""
MAX_DURATION_S: Final = 24 * 3600.0
MAX_SEED: Final = (1 << 63) - 1


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


__all__ = [
    "FAULT_KINDS",
    "Byzantine",
    "ByzantineMode",
    "Delay",
    "Direction",
    "Drop",
    "Duplicate",
    "Fault",
    "FaultConflict",
    "FaultError",
    "FaultSpec",
    "FaultsConfig",
    "FaultsDisabled",
    "Partition",
    "Pause",
    "Reorder",
    "faults_config_of",
    "parse_fault",
    "parse_faults_table",
]
