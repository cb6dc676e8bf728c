"""A fault scenario: the TOML file, its node selectors and timeline steps, validated before
anything starts."""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from node.faults import FAULT_KINDS, FaultError, parse_fault

SCENARIO_DIR: Final = Path(__file__).resolve().parents[2] / "configs" / "scenarios"
DEFAULT_OUT: Final = Path(".medchain") / "scenarios"
PROCESS_KINDS: Final = ("kill", "stop", "restart", "wipe")
STEP_KINDS: Final = PROCESS_KINDS + FAULT_KINDS

MIN_NODES: Final = 4
MAX_NODES: Final = 16
MAX_DURATION_S: Final = 3600.0
MAX_RATE: Final = 50_000.0
MAX_LOAD_SHARE: Final = 4.0
"""``load`` may ask for up to this many times the measured peak (an overload run)."""
DEFAULT_RATE: Final = 20.0
MAX_STEPS: Final = 200


class ScenarioError(ValueError):
    """A scenario file is invalid; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class Selector:
    """Which node(s) a step targets: ``3`` / ``"node:3"``, ``"primary"``, ``"backup:K"`` (the
    K-th backup after the primary, 1..n-1), ``"backups"``, ``"all"``."""

    role: str
    index: int = 0

    @classmethod
    def parse(cls, raw: object, n: int, where: str) -> Selector:
        if type(raw) is int:
            return cls._node(raw, n, where)
        if not isinstance(raw, str):
            raise ScenarioError(f"{where}: a node selector is an id or a role, got {raw!r}")
        if raw in ("primary", "backups", "all"):
            return cls(raw)
        role, _, num = raw.partition(":")
        if role in ("node", "backup") and num.isdigit():
            if role == "node":
                return cls._node(int(num), n, where)
            if not 1 <= int(num) <= n - 1:
                raise ScenarioError(f"{where}: {raw!r}: backups are numbered 1..{n - 1}")
            return cls("backup", int(num))
        raise ScenarioError(
            f"{where}: unknown node selector {raw!r} (use an id, node:I, primary, backup:K, "
            "backups or all)"
        )

    @classmethod
    def _node(cls, i: int, n: int, where: str) -> Selector:
        if not 0 <= i < n:
            raise ScenarioError(f"{where}: node {i} does not exist (ids are 0..{n - 1})")
        return cls("node", i)

    def resolve(self, primary: int, n: int) -> list[int]:
        if self.role == "node":
            return [self.index]
        if self.role == "primary":
            return [primary]
        if self.role == "backup":
            return [(primary + self.index) % n]
        if self.role == "backups":
            return [i for i in range(n) if i != primary]
        return list(range(n))

    def __str__(self) -> str:
        if self.role == "node":
            return str(self.index)
        return f"backup:{self.index}" if self.role == "backup" else self.role


def resolve_all(selectors: Sequence[Selector], primary: int, n: int) -> list[int]:
    return sorted({i for s in selectors for i in s.resolve(primary, n)})


@dataclass(frozen=True, slots=True)
class Step:
    at_s: float
    kind: str
    nodes: tuple[Selector, ...]
    duration_s: float | None
    params: Mapping[str, Any]
    """Parameters of a fault-layer fault (probability, ms, mode, ...), without kind/duration."""
    groups: tuple[tuple[Selector, ...], ...] = ()
    """Partition groups (selectors, resolved when the step fires)."""

    @property
    def is_process(self) -> bool:
        return self.kind in PROCESS_KINDS

    @property
    def label(self) -> str:
        if self.kind == "partition":
            target = " | ".join(",".join(str(s) for s in g) for g in self.groups)
        else:
            target = ",".join(str(s) for s in self.nodes)
        extra = self.params.get("mode", "")
        return f"{self.kind}{'(' + extra + ')' if extra else ''} {target}"


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    path: Path | None
    nodes: int
    duration_s: float
    recovery_s: float
    settle_s: float
    rate: float | None
    """Transactions per second offered, when the file gives a rate."""
    load: float | None
    """Share of the measured peak offered (``load = "peak"`` is 1.0), when the file gives
    one; exactly one of ``rate`` and ``load`` is set."""
    consensus: Mapping[str, int]
    steps: tuple[Step, ...]

    @property
    def f(self) -> int:
        return (self.nodes - 1) // 3


_TOP_KEYS: Final = frozenset(
    {
        "name",
        "description",
        "nodes",
        "duration_s",
        "recovery_s",
        "settle_s",
        "rate",
        "load",
        "consensus",
        "timeline",
    }
)
_STEP_KEYS: Final = frozenset({"at", "fault", "nodes", "duration_s"})


def load_scenario(path: Path, *, nodes: int | None = None) -> Scenario:
    """Read and validate a scenario file; ``nodes`` overrides the file's node count."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ScenarioError(f"{path}: cannot read: {e.strerror or e}") from e
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ScenarioError(f"{path}: invalid TOML: {e}") from e
    try:
        return parse_scenario(doc, name=path.stem, path=path, nodes=nodes)
    except ScenarioError as e:
        raise ScenarioError(f"{path}: {e}") from e


def parse_scenario(
    doc: Mapping[str, Any], *, name: str, path: Path | None = None, nodes: int | None = None
) -> Scenario:
    for key in doc:
        if key not in _TOP_KEYS:
            raise ScenarioError(f"{key}: unknown key (allowed: {', '.join(sorted(_TOP_KEYS))})")
    n = nodes if nodes is not None else _int(doc, "nodes", 4)
    if not MIN_NODES <= n <= MAX_NODES:
        raise ScenarioError(f"nodes: must be in {MIN_NODES}..{MAX_NODES}, got {n}")
    duration = _num(doc, "duration_s", None, lo=1.0, hi=MAX_DURATION_S)
    consensus = doc.get("consensus", {})
    if not isinstance(consensus, dict) or not all(
        type(v) is int and v > 0 for v in consensus.values()
    ):
        raise ScenarioError("consensus: must be a table of positive integers")
    raw_steps = doc.get("timeline", [])
    if not isinstance(raw_steps, list) or not all(isinstance(s, dict) for s in raw_steps):
        raise ScenarioError("timeline: must be an array of tables ([[timeline]])")
    if len(raw_steps) > MAX_STEPS:
        raise ScenarioError(f"timeline: at most {MAX_STEPS} steps")
    steps = tuple(
        sorted(
            (_parse_step(s, n, duration, f"timeline[{i}]") for i, s in enumerate(raw_steps)),
            key=lambda s: s.at_s,
        )
    )
    rate, load = _offered(doc)
    name_value = doc.get("name", name)
    description = doc.get("description", "")
    if not isinstance(name_value, str) or not name_value or not isinstance(description, str):
        raise ScenarioError("name, description: must be strings")
    return Scenario(
        name=name_value,
        description=description.strip(),
        path=path,
        nodes=n,
        duration_s=duration,
        recovery_s=_num(doc, "recovery_s", 15.0, lo=1.0, hi=MAX_DURATION_S),
        settle_s=_num(doc, "settle_s", 30.0, lo=1.0, hi=MAX_DURATION_S),
        rate=rate,
        load=load,
        consensus=dict(consensus),
        steps=steps,
    )


def _parse_step(raw: Mapping[str, Any], n: int, total_s: float, where: str) -> Step:
    kind = raw.get("fault")
    if kind not in STEP_KINDS:
        raise ScenarioError(f"{where}.fault: must be one of {', '.join(STEP_KINDS)}, got {kind!r}")
    at = _num(raw, "at", None, lo=0.0, hi=total_s, where=where)
    if at >= total_s:
        raise ScenarioError(f"{where}.at: must be before duration_s ({total_s:g})")
    duration = _num(raw, "duration_s", math.nan, lo=0.001, hi=MAX_DURATION_S, where=where)
    dur = None if math.isnan(duration) else duration
    if kind == "restart" and dur is not None:
        raise ScenarioError(f"{where}.duration_s: a restart has no duration")
    if dur is not None and at + dur > total_s:
        raise ScenarioError(
            f"{where}: heals at {at + dur:g}s, after the end of the timeline ({total_s:g}s)"
        )
    default_nodes: object = "all" if kind == "partition" else None
    raw_nodes = raw.get("nodes", default_nodes)
    if raw_nodes is None:
        raise ScenarioError(f"{where}.nodes: missing (an id, a role or a list of them)")
    node_list = raw_nodes if isinstance(raw_nodes, list) else [raw_nodes]
    selectors = tuple(Selector.parse(s, n, f"{where}.nodes") for s in node_list)
    if not selectors:
        raise ScenarioError(f"{where}.nodes: must not be empty")
    if kind in PROCESS_KINDS:
        extra = sorted(set(raw) - _STEP_KEYS)
        if extra:
            raise ScenarioError(f"{where}.{extra[0]}: a {kind} step takes no parameters")
        return Step(at, kind, selectors, dur, {})
    params = {k: v for k, v in raw.items() if k not in _STEP_KEYS}
    groups: tuple[tuple[Selector, ...], ...] = ()
    if kind == "partition":
        raw_groups = params.pop("groups", None)
        if not isinstance(raw_groups, list) or not raw_groups:
            raise ScenarioError(f"{where}.groups: a list of groups of node selectors is required")
        groups = tuple(
            tuple(Selector.parse(s, n, f"{where}.groups[{i}]") for s in _as_list(g))
            for i, g in enumerate(raw_groups)
        )
        placeholder = [[i] for i in range(len(groups))]  # real ids resolve when it fires
        check: dict[str, Any] = {"kind": kind, **params, "groups": placeholder}
    else:
        check = {"kind": kind, **params}
    try:
        parse_fault(check, n=n)
    except FaultError as e:
        raise ScenarioError(f"{where}.{e.field}: {e.problem}") from None
    return Step(at, kind, selectors, dur, params, groups)


def parse_load(value: object, where: str = "load") -> float:
    """``"peak"`` or a share of the peak (0 < share <= MAX_LOAD_SHARE)."""
    if value == "peak":
        return 1.0
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ScenarioError(
                f'{where}: "peak" or a share of the peak (0.5 = half), got {value!r}'
            ) from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ScenarioError(f'{where}: "peak" or a share of the peak (0.5 = half), got {value!r}')
    if not 0 < value <= MAX_LOAD_SHARE:
        raise ScenarioError(f"{where}: a share of the peak in (0, {MAX_LOAD_SHARE:g}], got {value}")
    return float(value)


def _offered(doc: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(rate, load) of the file: one of them, or the default rate."""
    if "rate" in doc and "load" in doc:
        raise ScenarioError("rate, load: give one (a rate in tx/s, or a share of the peak)")
    if "load" in doc:
        return None, parse_load(doc["load"])
    return _num(doc, "rate", DEFAULT_RATE, lo=0.1, hi=MAX_RATE), None


def _as_list(value: object) -> list[object]:
    return value if isinstance(value, list) else [value]


def _int(doc: Mapping[str, Any], key: str, default: int) -> int:
    value = doc.get(key, default)
    if type(value) is not int:
        raise ScenarioError(f"{key}: must be an integer, got {value!r}")
    return value


def _num(
    doc: Mapping[str, Any],
    key: str,
    default: float | None,
    *,
    lo: float,
    hi: float,
    where: str = "",
) -> float:
    name = f"{where}.{key}" if where else key
    if key not in doc:
        if default is None:
            raise ScenarioError(f"{name}: missing")
        return default
    value = doc[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ScenarioError(f"{name}: must be a number, got {value!r}")
    if not lo <= value <= hi:
        raise ScenarioError(f"{name}: must be in {lo:g}..{hi:g}, got {value!r}")
    return float(value)


def shipped_scenarios() -> list[Path]:
    return sorted(SCENARIO_DIR.glob("*.toml"))
