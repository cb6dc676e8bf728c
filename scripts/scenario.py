"""``medchain scenario``: run a fault scenario on a real local cluster and check the outcome.

    medchain scenario run FILE... [--nodes N] [--seed S] [--out DIR] [--keep-cluster]
    medchain scenario list
    medchain scenario check FILE...

A scenario (TOML, see docs/faults.md and configs/scenarios/) is a timeline of faults applied
while a load of signed patient records runs. ``run`` starts a fresh cluster in a temporary
directory with fault injection enabled, then:

1. runs the load: a client submits signed records to random live nodes at a fixed rate and
   records its history (submit time, node, acknowledgement, commit observed);
2. applies the timeline: process faults through the launcher (kill -9, SIGSTOP, restart, wipe),
   message faults through the nodes' signed admin API; roles ("primary", "backup:1") are
   resolved against the cluster's view when the step fires;
3. at ``duration_s`` heals everything, keeps the load running until the cluster has made
   progress after every heal (at most ``recovery_s`` each), stops the load and lets the
   cluster settle (at most ``settle_s``);
4. checks (scripts/history.py): every commit the client saw is on every honest chain exactly
   once, chains agree, converge and verify, and progress resumed within ``recovery_s`` of
   every heal.

Writes OUT/report.json, OUT/timeline.png (commits per second, faults shaded), OUT/history.jsonl
(the client history), OUT/samples.jsonl (node status over time) and OUT/logs/ (node logs).
Exit status: 0 every check passed, 1 a check failed, 2 the scenario could not run (bad file,
cluster did not start).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import aiohttp
from rich.console import Console
from rich.markup import escape

from node.api import MSGPACK, msgpack_tx_body
from node.crypto import load_key
from node.faults import FAULT_KINDS, FaultError, parse_fault
from node.ledger import ClientRegistry, TxEnvelope, make_transaction
from scripts import history
from scripts.cluster import ClusterError, ClusterLayout, ClusterProcesses, hospital_id
from scripts.faultctl import AdminClient, AdminRequestError, wipe_node
from scripts.history import BlockSummary, CheckResult, TxRecord

SCENARIO_DIR: Final = Path(__file__).resolve().parents[1] / "configs" / "scenarios"
DEFAULT_OUT: Final = Path(".medchain") / "scenarios"
PROCESS_KINDS: Final = ("kill", "stop", "restart", "wipe")
STEP_KINDS: Final = PROCESS_KINDS + FAULT_KINDS

MIN_NODES: Final = 4
MAX_NODES: Final = 16
MAX_DURATION_S: Final = 3600.0
MAX_RATE: Final = 2000.0
MAX_STEPS: Final = 200
STARTUP_TIMEOUT_S: Final = 60.0
STEP_GRACE_S: Final = 90.0
"""Longest wait at heal time for timeline steps still running (a restart in progress)."""
SUBMIT_TIMEOUT_S: Final = 5.0
SUBMIT_ATTEMPTS: Final = 3
OBSERVE_WAIT_MS: Final = 2000
OBSERVE_MIN_INTERVAL_S: Final = 0.25
COMMIT_TIMEOUT_S: Final = 60.0
"""A transaction whose commit is not seen within this long is left indeterminate."""
MAX_INFLIGHT: Final = 512
STATUS_TIMEOUT_S: Final = 1.0
POLL_INTERVAL_S: Final = 0.5
MAX_SAMPLES: Final = 200_000
DRAIN_GRACE_S: Final = 5.0
CHAIN_FETCH_ATTEMPTS: Final = 3
PAYLOAD_BYTES: Final = (64, 512)

EXIT_OK: Final = 0
EXIT_VIOLATION: Final = 1
EXIT_ERROR: Final = 2

stdout = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False)

T = TypeVar("T")


class ScenarioError(ValueError):
    """A scenario file is invalid; the message names the file and the key."""


class RunError(RuntimeError):
    """The scenario could not be run (cluster did not start, ...)."""


# =============================================================================================
# the scenario file


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
    rate: float
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
        rate=_num(doc, "rate", 20.0, lo=0.1, hi=MAX_RATE),
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


# =============================================================================================
# the cluster under test


class Cluster:
    """A cluster created for one run: processes, URLs, keys, and which nodes are down."""

    def __init__(self, root: Path, n: int) -> None:
        self.root = root
        self.n = n
        self.f = (n - 1) // 3
        self.layout = ClusterLayout(root)
        self.procs = ClusterProcesses(root)
        self.urls = {s.index: s.url for s in self.procs.specs()}
        self.operator_secret = load_key(self.layout.operator_key)[0]
        self.client_secrets = {
            hospital_id(i): load_key(self.layout.client_key(hospital_id(i)))[0] for i in range(n)
        }
        self.consortium, self.registry = _consortium(self.layout.config_path(0))
        self.down: set[int] = set()
        """Killed or wiped and not yet restarted: no client traffic is sent there."""
        self.suspended: set[int] = set()
        """SIGSTOPped: the kernel accepts connections but nothing answers."""
        self._lock = asyncio.Lock()

    def reachable(self) -> list[int]:
        return [i for i in range(self.n) if i not in self.down and i not in self.suspended]

    async def process(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking launcher call in a thread; one at a time (the launcher object is
        not thread-safe)."""
        async with self._lock:
            return await asyncio.to_thread(fn, *args, **kwargs)


def _consortium(config_path: Path) -> tuple[list[bytes], ClientRegistry]:
    """Replica public keys and the client registry, read from a node config."""
    with config_path.open("rb") as fh:
        doc = tomllib.load(fh)
    publics = [bytes.fromhex(r["public_key"]) for r in doc.get("replicas", [])]
    registry = ClientRegistry(
        (bytes.fromhex(c["public_key"]), c["hospital"]) for c in doc.get("clients", [])
    )
    return publics, registry


def create_cluster(root: Path, scenario: Scenario, seed: int) -> None:
    """Keys and configs for a fresh cluster in ``root`` with fault injection enabled."""
    from node.cli import init_cluster  # here: node.cli wires this module in (no import cycle)

    init_cluster(root, scenario.nodes, consensus=dict(scenario.consensus))
    layout = ClusterLayout(root)
    for i in layout.node_indices():
        enable_faults(layout.config_path(i), seed=(seed * 1009 + i) % (1 << 62))


def enable_faults(config_path: Path, *, seed: int) -> None:
    """Add ``[faults] enabled = true`` (and a seed) to a node config written by init."""
    text = config_path.read_text(encoding="utf-8")
    existing = tomllib.loads(text).get("faults")
    if existing is not None:
        if existing.get("enabled") is not True:
            raise RunError(f"{config_path}: has a [faults] table without enabled = true")
        return
    if not text.endswith("\n"):
        text += "\n"
    text += f"\n[faults]\nenabled = true\nseed = {seed}\n"
    tmp = config_path.with_name(f".{config_path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, config_path)


# =============================================================================================
# the load client


class Load:
    """Open-loop load: ``rate`` signed records per second to random reachable nodes; every
    transaction's fate is recorded as a :class:`TxRecord`."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        cluster: Cluster,
        *,
        name: str,
        rate: float,
        rng: random.Random,
        clock: Callable[[], float],
        honest: Callable[[], set[int]],
    ) -> None:
        self._session = session
        self._cluster = cluster
        self._name = name
        self._rate = rate
        self._rng = rng
        self._clock = clock
        self._honest = honest
        self._tasks: set[asyncio.Task[None]] = set()
        self._seq = 0
        self.records: list[TxRecord] = []
        self.errors: Counter[str] = Counter()
        self.client_errors: list[str] = []
        """4xx answers to valid transactions (a node refusing what it must accept)."""
        self.skipped = 0
        """Transactions not sent because MAX_INFLIGHT were already in flight."""

    @property
    def inflight(self) -> int:
        return len(self._tasks)

    async def run(self, stop: asyncio.Event) -> None:
        interval = 1.0 / self._rate
        next_at = self._clock()
        while not stop.is_set():
            if len(self._tasks) >= MAX_INFLIGHT:
                self.skipped += 1
            else:
                task = asyncio.create_task(self._one(self._make_tx()))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            next_at += interval
            delay = next_at - self._clock()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            else:
                next_at = self._clock()  # fell behind: do not burst to catch up
                await asyncio.sleep(0)

    async def drain(self, grace_s: float) -> None:
        """Wait (bounded) for transactions in flight, then cancel the rest (they are recorded
        as they are: indeterminate)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_s)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_s)

    def first_commit_after(self, t: float) -> float | None:
        """The first commit seen of a transaction submitted at or after ``t`` (None if none)."""
        times = [r.commit_s for r in self.records if r.commit_s is not None and r.submit_s >= t]
        return min(times) if times else None

    def _make_tx(self) -> TxEnvelope:
        rng = self._rng
        self._seq += 1
        hospital = hospital_id(rng.randrange(self._cluster.n))
        size = rng.randint(*PAYLOAD_BYTES)
        return make_transaction(
            self._cluster.client_secrets[hospital],
            hospital,
            patient=f"patient-{rng.randrange(10_000):05d}",
            record_type=rng.choice(("observation", "prescription", "lab-result", "note")),
            payload=rng.randbytes(size),
            record_id=f"{self._name}-{self._seq}",
            nonce=rng.randbytes(16),
        )

    async def _one(self, env: TxEnvelope) -> None:
        tx_id = env.tx_id.hex()
        submit_s = self._clock()
        node: int | None = None
        ack_s: float | None = None
        error: str | None = None
        commit: tuple[float, int, int] | None = None
        try:
            node, error = await self._submit(env, tx_id)
            if node is not None:
                ack_s = self._clock()
                commit = await self._observe(tx_id, node, submit_s + COMMIT_TIMEOUT_S)
        finally:  # also when cancelled at the end of the run: the record says what was seen
            self.records.append(
                TxRecord(
                    tx_id=tx_id,
                    submit_s=round(submit_s, 4),
                    node=node,
                    ack_s=None if ack_s is None else round(ack_s, 4),
                    error=error,
                    commit_s=None if commit is None else round(commit[0], 4),
                    commit_node=None if commit is None else commit[1],
                    commit_height=None if commit is None else commit[2],
                )
            )

    async def _submit(self, env: TxEnvelope, tx_id: str) -> tuple[int | None, str | None]:
        body = msgpack_tx_body([env])
        tried: list[int] = []
        error = "no reachable node"
        timeout = aiohttp.ClientTimeout(total=SUBMIT_TIMEOUT_S)
        for attempt in range(SUBMIT_ATTEMPTS):
            candidates = [i for i in self._cluster.reachable() if i not in tried]
            if not candidates:
                break
            node = self._rng.choice(candidates)
            tried.append(node)
            url = f"{self._cluster.urls[node]}/tx"
            try:
                async with self._session.post(
                    url, data=body, headers={"Content-Type": MSGPACK}, timeout=timeout
                ) as resp:
                    status = resp.status
                    text = await resp.text()
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                error = f"node {node}: {type(e).__name__}"
                self.errors[f"submit:{type(e).__name__}"] += 1
            else:
                if status == 202 and tx_id in text:
                    return node, None
                error = f"node {node}: HTTP {status}: {text[:200]}"
                self.errors[f"submit:HTTP {status}"] += 1
                if 400 <= status < 500 and status != 429:
                    self.client_errors.append(error)
                    return None, error  # refused as invalid: another node would refuse too
            if attempt + 1 < SUBMIT_ATTEMPTS:
                await asyncio.sleep(0.2)
        return None, error

    async def _observe(
        self, tx_id: str, first: int, deadline: float
    ) -> tuple[float, int, int] | None:
        """Long-poll GET /tx/{id} until an honest node says committed or the deadline."""
        timeout = aiohttp.ClientTimeout(total=OBSERVE_WAIT_MS / 1000 + 3.0)
        node = first
        while self._clock() < deadline:
            honest = self._honest()
            candidates = [i for i in self._cluster.reachable() if i in honest]
            if not candidates:
                await asyncio.sleep(0.5)
                continue
            if node not in candidates:
                node = self._rng.choice(candidates)
            url = f"{self._cluster.urls[node]}/tx/{tx_id}"
            asked = self._clock()
            try:
                async with self._session.get(
                    url, params={"wait_ms": str(OBSERVE_WAIT_MS)}, timeout=timeout
                ) as resp:
                    doc = await resp.json() if resp.status == 200 else None
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
                self.errors[f"observe:{type(e).__name__}"] += 1
                doc = None
            if isinstance(doc, dict) and doc.get("status") == "committed":
                height = doc.get("height")
                return self._clock(), node, height if type(height) is int else -1
            if self._clock() - asked < OBSERVE_MIN_INTERVAL_S:
                # An immediate answer that is not a commit (an error, a refused long poll):
                # pace the retries instead of spinning on the node.
                await asyncio.sleep(OBSERVE_MIN_INTERVAL_S)
            # Not committed there (yet): ask another node next, so a node that is cut off
            # or behind cannot hide a commit that happened elsewhere.
            node = self._rng.choice(candidates)
        return None


# =============================================================================================
# status sampling


@dataclass(frozen=True, slots=True)
class Sample:
    t: float
    node: int
    ok: bool
    height: int | None = None
    view: int | None = None
    head: str | None = None
    in_view_change: bool | None = None
    mempool: int | None = None


class Poller:
    def __init__(
        self, session: aiohttp.ClientSession, cluster: Cluster, clock: Callable[[], float]
    ) -> None:
        self._session = session
        self._cluster = cluster
        self._clock = clock
        self.samples: list[Sample] = []

    async def snapshot(self, nodes: Sequence[int]) -> dict[int, Sample]:
        samples = await asyncio.gather(*(self._one(i) for i in nodes))
        return {s.node: s for s in samples}

    async def _one(self, i: int) -> Sample:
        t = self._clock()
        if i in self._cluster.suspended or i in self._cluster.down:
            return Sample(t, i, False)
        timeout = aiohttp.ClientTimeout(total=STATUS_TIMEOUT_S)
        try:
            async with self._session.get(f"{self._cluster.urls[i]}/status", timeout=timeout) as r:
                doc = await r.json() if r.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            doc = None
        if not isinstance(doc, dict):
            return Sample(t, i, False)
        return Sample(
            t,
            i,
            True,
            height=_opt_int(doc.get("height")),
            view=_opt_int(doc.get("view")),
            head=doc.get("head_hash") if isinstance(doc.get("head_hash"), str) else None,
            in_view_change=bool(doc.get("in_view_change", False)),
            mempool=_opt_int(doc.get("mempool_size")),
        )

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            snap = await self.snapshot(range(self._cluster.n))
            if len(self.samples) + len(snap) <= MAX_SAMPLES:
                self.samples.extend(snap.values())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_INTERVAL_S)

    async def primary(self) -> int:
        """The primary of the view most reachable nodes report (ties: the higher view)."""
        snap = await self.snapshot(self._cluster.reachable())
        views = Counter(s.view for s in snap.values() if s.ok and s.view is not None)
        if not views:
            raise RunError("no node answers GET /status: cannot tell which node is primary")
        view = max(views, key=lambda v: (views[v], v))
        return view % self._cluster.n


def _opt_int(value: object) -> int | None:
    return value if type(value) is int else None


# =============================================================================================
# the timeline


@dataclass(slots=True)
class FaultSpan:
    """One timeline step as it happened (mutable while the run goes on)."""

    label: str
    kind: str
    nodes: list[int]
    start_s: float
    params: dict[str, Any]
    healed_s: float | None = None
    error: str | None = None
    fault_ids: dict[int, int] = field(default_factory=dict)
    """node -> fault id on that node's fault layer (message faults)."""
    recovery_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["fault_ids"] = {str(k): v for k, v in self.fault_ids.items()}
        return out


class Timeline:
    def __init__(
        self,
        cluster: Cluster,
        admin: AdminClient,
        poller: Poller,
        clock: Callable[[], float],
        out: Console,
    ) -> None:
        self._cluster = cluster
        self._admin = admin
        self._poller = poller
        self._clock = clock
        self._out = out
        self.spans: list[FaultSpan] = []
        self.byzantine: set[int] = set()
        self._tasks: list[asyncio.Task[None]] = []

    def schedule(self, steps: Sequence[Step]) -> None:
        for step in steps:
            self._tasks.append(asyncio.create_task(self._at(step), name=f"step-{step.label}"))

    async def _at(self, step: Step) -> None:
        await asyncio.sleep(max(0.0, step.at_s - self._clock()))
        span = FaultSpan(step.label, step.kind, [], round(self._clock(), 3), dict(step.params))
        self.spans.append(span)
        try:
            primary = await self._poller.primary()
            n = self._cluster.n
            span.nodes = resolve_all(step.nodes, primary, n)
            line = f"[{span.start_s:6.1f}s] {step.label} -> nodes {span.nodes}"
            self._out.print(line, markup=False)
            if step.is_process:
                await self._process_step(step, span)
            else:
                await self._layer_step(step, span, primary)
        except asyncio.CancelledError:
            raise
        except (RunError, ClusterError, AdminRequestError, OSError) as e:
            span.error = str(e)
            self._out.print(f"step {step.label} failed: {e}", style="red", markup=False)
        except Exception as e:  # a harness bug must still show up as a failed step
            span.error = f"{type(e).__name__}: {e}"
            self._out.print(
                f"step {step.label} failed unexpectedly: {span.error}", style="red", markup=False
            )

    async def _process_step(self, step: Step, span: FaultSpan) -> None:
        c = self._cluster
        for i in span.nodes:
            if step.kind == "kill":
                c.down.add(i)
                await c.process(c.procs.kill, i, signal.SIGKILL)
            elif step.kind == "stop":
                c.suspended.add(i)
                await c.process(c.procs.kill, i, signal.SIGSTOP)
            elif step.kind == "wipe":
                c.down.add(i)
                await c.process(wipe_node, c.procs, i, start=False)
            else:  # restart: graceful stop, start, wait until it serves
                c.down.add(i)
                try:
                    await c.process(c.procs.restart, i, timeout=STARTUP_TIMEOUT_S)
                finally:
                    c.down.discard(i)
        if step.kind == "restart":
            span.healed_s = round(self._clock(), 3)
            return
        if step.duration_s is None and step.kind != "wipe":
            return  # healed at the end of the timeline
        await asyncio.sleep(step.duration_s or 0.0)
        for i in span.nodes:
            await self._revive(i)
        span.healed_s = round(self._clock(), 3)

    async def _revive(self, i: int) -> None:
        c = self._cluster
        if i in c.suspended:
            await c.process(c.procs.kill, i, signal.SIGCONT)
            c.suspended.discard(i)
        if i in c.down:
            await c.process(c.procs.start, i)
            await c.process(c.procs.wait_ready, [i], timeout=STARTUP_TIMEOUT_S)
            c.down.discard(i)

    async def _layer_step(self, step: Step, span: FaultSpan, primary: int) -> None:
        n = self._cluster.n
        fault: dict[str, Any] = {"kind": step.kind, **step.params}
        if step.groups:
            groups = [resolve_all(g, primary, n) for g in step.groups]
            fault["groups"] = groups
            span.params["groups"] = groups
        if step.duration_s is not None:
            fault["duration_s"] = step.duration_s
        if step.kind == "byzantine":
            self.byzantine.update(span.nodes)
            if len(self.byzantine) > self._cluster.f:
                raise RunError(
                    f"byzantine nodes {sorted(self.byzantine)} exceed f = {self._cluster.f}: "
                    "the scenario asks for more than PBFT tolerates"
                )
        targets = [i for i in span.nodes if i in self._cluster.reachable()]
        results = await asyncio.gather(
            *(self._admin.apply(i, self._cluster.urls[i], fault) for i in targets),
            return_exceptions=True,
        )
        errors = []
        for i, res in zip(targets, results, strict=True):
            if isinstance(res, BaseException):
                errors.append(str(res))
            else:
                span.fault_ids[i] = int(res["applied"]["id"])
        if errors:
            raise RunError("; ".join(errors))
        if step.duration_s is not None:
            await asyncio.sleep(step.duration_s)
            span.healed_s = round(self._clock(), 3)  # each node clears it on its own clock

    async def heal_all(self) -> None:
        """Let running steps finish (bounded), then revive every node and clear every fault."""
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            _done, still = await asyncio.wait(pending, timeout=STEP_GRACE_S)
            for t in still:
                t.cancel()
        c = self._cluster
        for i in sorted(c.down | c.suspended):
            try:
                await self._revive(i)
            except (ClusterError, OSError) as e:
                self._out.print(f"heal: node {i} did not come back: {e}", style="red", markup=False)
        results = await asyncio.gather(
            *(self._admin.clear(i, c.urls[i]) for i in c.reachable()), return_exceptions=True
        )
        for i, res in zip(c.reachable(), results, strict=True):
            if isinstance(res, BaseException):
                self._out.print(
                    f"heal: clearing faults on node {i} failed: {res}", style="red", markup=False
                )
        now = round(self._clock(), 3)
        for span in self.spans:
            if span.healed_s is None and span.error is None:
                span.healed_s = now


# =============================================================================================
# under the benchmark: `medchain bench --scenario FILE`


class BenchTimeline:
    """A scenario's fault timeline, applied while ``medchain bench`` drives the cluster (the
    bench's load replaces the scenario's, and the bench reports the figures). Implements
    ``scripts.bench.BenchScenario``; the timeline runs on an event loop in its own thread so
    the bench's loop is never blocked, and ``stop`` heals everything before returning."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._session: aiohttp.ClientSession | None = None
        self._timeline: Timeline | None = None
        self._t0 = 0.0

    def prepare(self, cluster_dir: Path) -> None:
        layout = ClusterLayout(cluster_dir)
        for i in layout.node_indices():
            enable_faults(layout.config_path(i), seed=1009 + i)

    def start(self, cluster_dir: Path) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="scenario", daemon=True)
        self._thread.start()
        n = len(ClusterLayout(cluster_dir).node_indices())
        asyncio.run_coroutine_threadsafe(self._begin(cluster_dir, n), loop).result(30.0)

    async def _begin(self, cluster_dir: Path, n: int) -> None:
        cluster = Cluster(cluster_dir, n)
        self._session = aiohttp.ClientSession()
        self._t0 = time.monotonic()
        poller = Poller(self._session, cluster, self._clock)
        admin = AdminClient(self._session, cluster.operator_secret)
        out = Console(stderr=True, highlight=False)
        self._timeline = Timeline(cluster, admin, poller, self._clock, out)
        self._timeline.schedule(self.scenario.steps)

    def _clock(self) -> float:
        return time.monotonic() - self._t0

    def stop(self) -> dict[str, Any]:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return {"name": self.scenario.name, "faults": [], "error": "never started"}
        try:
            fut = asyncio.run_coroutine_threadsafe(self._end(), loop)
            return fut.result(STEP_GRACE_S + STARTUP_TIMEOUT_S * 2)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10.0)
            if not thread.is_alive():
                loop.close()

    async def _end(self) -> dict[str, Any]:
        timeline = self._timeline
        assert timeline is not None and self._session is not None
        try:
            await timeline.heal_all()
        finally:
            await self._session.close()
        return {
            "name": self.scenario.name,
            "file": str(self.scenario.path),
            "faults": [s.to_json() for s in timeline.spans],
            "byzantine": sorted(timeline.byzantine),
        }


def bench_scenario(path: Path) -> BenchTimeline:
    """``medchain bench --scenario FILE``: the scenario's timeline as a bench companion."""
    return BenchTimeline(load_scenario(path))


# =============================================================================================
# the run


@dataclass(frozen=True, slots=True)
class RunOptions:
    seed: int
    out_dir: Path
    keep_cluster: bool = False
    quiet: bool = False
    cluster_dir: Path | None = None
    """Where to create the cluster (must hold none yet); kept afterwards. Default: a
    temporary directory, removed afterwards unless ``keep_cluster``."""


class Runner:
    def __init__(self, scenario: Scenario, options: RunOptions) -> None:
        self.scenario = scenario
        self.options = options
        self.out = Console(stderr=True, highlight=False, quiet=options.quiet)
        self._t0 = 0.0

    def clock(self) -> float:
        return time.monotonic() - self._t0

    def run(self) -> dict[str, Any]:
        """Run the scenario end to end; always tears the cluster down. Returns the report."""
        sc = self.scenario
        opts = self.options
        opts.out_dir.mkdir(parents=True, exist_ok=True)
        if opts.cluster_dir is not None:
            work = opts.cluster_dir
            if ClusterLayout(work).exists():
                raise RunError(f"{work} already holds a cluster; give an empty --cluster-dir")
        else:
            work = Path(tempfile.mkdtemp(prefix=f"medchain-scenario-{sc.name}-"))
        procs: ClusterProcesses | None = None
        try:
            self.out.print(
                f"[bold]scenario {escape(sc.name)}[/]: {sc.nodes} nodes, seed {opts.seed}"
            )
            try:
                create_cluster(work, sc, opts.seed)
            except (RuntimeError, ValueError, OSError) as e:  # CliError, ConfigError, ...
                raise RunError(f"cannot create the cluster in {work}: {e}") from e
            procs = ClusterProcesses(work)
            try:
                procs.up(timeout=STARTUP_TIMEOUT_S)
            except ClusterError as e:
                raise RunError(f"cluster did not start: {e}") from e
            report = asyncio.run(self._run_async(Cluster(work, sc.nodes)))
            return report
        finally:
            if procs is not None:
                with contextlib.suppress(ClusterError, OSError):
                    procs.down()
            _copy_logs(ClusterLayout(work), opts.out_dir / "logs")
            if opts.keep_cluster or opts.cluster_dir is not None:
                self.out.print(f"cluster kept in {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)

    async def _run_async(self, cluster: Cluster) -> dict[str, Any]:
        sc = self.scenario
        rng = random.Random(self.options.seed)
        connector = aiohttp.TCPConnector(limit=MAX_INFLIGHT + 64)
        async with aiohttp.ClientSession(connector=connector) as session:
            self._t0 = time.monotonic()
            poller = Poller(session, cluster, self.clock)
            admin = AdminClient(session, cluster.operator_secret)
            timeline = Timeline(cluster, admin, poller, self.clock, self.out)

            def honest() -> set[int]:
                return set(range(cluster.n)) - timeline.byzantine

            load = Load(
                session,
                cluster,
                name=sc.name,
                rate=sc.rate,
                rng=rng,
                clock=self.clock,
                honest=honest,
            )
            stop_load, stop_poll = asyncio.Event(), asyncio.Event()
            load_task = asyncio.create_task(load.run(stop_load), name="load")
            poll_task = asyncio.create_task(poller.run(stop_poll), name="poller")
            try:
                timeline.schedule(sc.steps)
                await asyncio.sleep(max(0.0, sc.duration_s - self.clock()))
                self.out.print(f"[{self.clock():6.1f}s] healing everything", markup=False)
                await timeline.heal_all()
                await self._await_recovery(timeline, load)
                stop_load.set()
                load_s = self.clock()
                self.out.print(f"[{load_s:6.1f}s] load stopped; settling", markup=False)
                settled = await self._settle(poller, honest())
                await load.drain(DRAIN_GRACE_S)
                chains, verify_checks = await self._chains(session, cluster, sorted(honest()))
            finally:
                stop_load.set()
                stop_poll.set()
                for task in (load_task, poll_task):
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait_for(task, 10.0)
                await load.drain(0.1)
            return self._report(
                cluster, timeline, load, poller, chains, verify_checks, settled, load_s
            )

    async def _await_recovery(self, timeline: Timeline, load: Load) -> None:
        """Keep the load running until every healed fault has seen progress (bounded)."""
        bound = self.scenario.recovery_s
        while True:
            waiting = [
                s
                for s in timeline.spans
                if s.healed_s is not None
                and load.first_commit_after(s.healed_s) is None
                and self.clock() < s.healed_s + bound
            ]
            if not waiting:
                return
            await asyncio.sleep(0.25)

    async def _settle(self, poller: Poller, honest: set[int]) -> dict[str, Any]:
        """Wait (bounded) until every honest node reports the same head twice in a row with an
        empty mempool."""
        start = self.clock()
        deadline = start + self.scenario.settle_s
        previous: tuple[int | None, str | None] | None = None
        reasons: list[str] = ["no honest node polled"]
        while self.clock() < deadline:
            snap = await poller.snapshot(sorted(honest))
            heads = {(s.height, s.head) for s in snap.values()}
            reasons = [r for s in snap.values() if (r := _unsettled(s))]
            if not reasons and len(heads) == 1:
                head = next(iter(heads))
                if head == previous:
                    return {
                        "ok": True,
                        "seconds": round(self.clock() - start, 2),
                        "height": head[0],
                    }
                previous = head
            else:
                previous = None
                if not reasons:
                    heights = ", ".join(f"node {s.node}: {s.height}" for s in snap.values())
                    reasons = [f"heads differ ({heights})"]
            await asyncio.sleep(POLL_INTERVAL_S * 2)
        return {
            "ok": False,
            "seconds": round(self.clock() - start, 2),
            "height": None,
            "reasons": reasons,
        }

    async def _chains(
        self, session: aiohttp.ClientSession, cluster: Cluster, honest: list[int]
    ) -> tuple[dict[int, list[BlockSummary]], list[CheckResult]]:
        """Fetch and verify every honest chain; refetch (bounded) if heads differ because a
        last block landed between two fetches."""
        chains: dict[int, list[BlockSummary]] = {}
        problems: list[str] = []
        for attempt in range(CHAIN_FETCH_ATTEMPTS):
            chains, problems = {}, []
            docs = await asyncio.gather(
                *(history.fetch_chain(session, cluster.urls[i]) for i in honest),
                return_exceptions=True,
            )
            for i, d in zip(honest, docs, strict=True):
                if isinstance(d, BaseException):
                    problems.append(f"node {i}: {d}")
                    continue
                blocks, report = history.verify_served_chain(
                    d, cluster.consortium, cluster.registry
                )
                chains[i] = history.summarize(blocks)
                if isinstance(report, str):
                    problems.append(f"node {i}: {report}")
                elif not report.ok:
                    problems.append(f"node {i}: block {report.first_bad_height}: {report.reason}")
            heads = {(len(c), c[-1].block_hash if c else "") for c in chains.values()}
            if len(heads) <= 1 or attempt + 1 == CHAIN_FETCH_ATTEMPTS:
                break
            await asyncio.sleep(1.0)
        verify = history.make_result(
            "chains_verify",
            problems,
            f"{len(chains)} honest chains verify (links, roots, signatures, certificates)",
        )
        return chains, [verify]

    # ------------------------------------------------------------------ report

    def _report(
        self,
        cluster: Cluster,
        timeline: Timeline,
        load: Load,
        poller: Poller,
        chains: Mapping[int, list[BlockSummary]],
        verify_checks: list[CheckResult],
        settled: Mapping[str, Any],
        load_s: float,
    ) -> dict[str, Any]:
        sc = self.scenario
        records = sorted(load.records, key=lambda r: r.submit_s)
        checks = [
            *history.check_history(records, chains),
            *history.check_chains_agree(chains),
            *verify_checks,
            CheckResult(
                "nodes_rejoined",
                bool(settled["ok"]),
                f"every honest node back in normal operation within {settled['seconds']}s"
                if settled["ok"]
                else f"not every honest node was back in normal operation (same head, no view "
                f"change in progress, mempool drained) within settle_s = {sc.settle_s:g}s",
                tuple(settled.get("reasons", ())),
            ),
            self._recovery_check(timeline, load),
            self._timeline_check(timeline),
            _accepted_check(load),
            _progress_check(records),
        ]
        horizon = max(load_s, *(r.commit_s or 0.0 for r in records)) if records else load_s
        commits = [r.commit_s for r in records if r.commit_s is not None]
        report: dict[str, Any] = {
            "scenario": sc.name,
            "description": sc.description,
            "file": str(sc.path) if sc.path else None,
            "seed": self.options.seed,
            "nodes": sc.nodes,
            "f": sc.f,
            "ok": all(c.ok for c in checks),
            "rate": sc.rate,
            "duration_s": sc.duration_s,
            "recovery_bound_s": sc.recovery_s,
            "load_s": round(load_s, 2),
            "settle": dict(settled),
            "honest": sorted(chains),
            "byzantine": sorted(timeline.byzantine),
            "faults": [s.to_json() for s in timeline.spans],
            "checks": [c.to_json() for c in checks],
            "stats": {
                **history.history_stats(records, chains),
                "skipped_backpressure": load.skipped,
                "errors": dict(sorted(load.errors.items())),
            },
            "commits_per_second": history.per_second(commits, horizon),
            "latency_ms": {
                "commit": history.latency_percentiles(
                    [(r.commit_s - r.submit_s) * 1000 for r in records if r.commit_s is not None]
                ),
                "ack": history.latency_percentiles(
                    [(r.ack_s - r.submit_s) * 1000 for r in records if r.ack_s is not None]
                ),
            },
            "view_changes": _view_changes(poller.samples),
            "heights": {str(i): len(c) for i, c in sorted(chains.items())},
            "artifacts": {
                "history": "history.jsonl",
                "samples": "samples.jsonl",
                "timeline": "timeline.png",
                "logs": "logs/",
            },
        }
        out = self.options.out_dir
        history.write_history(out / "history.jsonl", records)
        with (out / "samples.jsonl").open("w", encoding="utf-8") as fh:
            for s in poller.samples:
                fh.write(json.dumps(dataclasses.asdict(s), separators=(",", ":")) + "\n")
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        plot_timeline(report, out / "timeline.png")
        return report

    def _recovery_check(self, timeline: Timeline, load: Load) -> CheckResult:
        bound = self.scenario.recovery_s
        problems = []
        healed = [s for s in timeline.spans if s.healed_s is not None]
        for s in healed:
            assert s.healed_s is not None
            first = load.first_commit_after(s.healed_s)
            s.recovery_s = None if first is None else round(first - s.healed_s, 3)
            if s.recovery_s is None or s.recovery_s > bound:
                got = "no commit" if s.recovery_s is None else f"first commit after {s.recovery_s}s"
                problems.append(f"{s.label} healed at {s.healed_s}s: {got} (bound {bound:g}s)")
        worst = max((s.recovery_s or 0.0 for s in healed), default=0.0)
        return history.make_result(
            "recovery",
            problems,
            f"progress within {worst:.2f}s of each of {len(healed)} heals (bound {bound:g}s)",
        )

    @staticmethod
    def _timeline_check(timeline: Timeline) -> CheckResult:
        problems = [f"{s.label} at {s.start_s}s: {s.error}" for s in timeline.spans if s.error]
        return history.make_result(
            "timeline_applied", problems, f"{len(timeline.spans)} steps applied as written"
        )


def _unsettled(s: Sample) -> str | None:
    """Why a node is not settled yet (None if it is)."""
    if not s.ok:
        return f"node {s.node} does not answer GET /status"
    if s.in_view_change:
        return f"node {s.node} is in a view change (view {s.view})"
    if s.mempool:
        return f"node {s.node} holds {s.mempool} uncommitted transactions (view {s.view})"
    return None


def _accepted_check(load: Load) -> CheckResult:
    return history.make_result(
        "valid_txs_accepted", load.client_errors, "no node refused a valid transaction (4xx)"
    )


def _progress_check(records: Sequence[TxRecord]) -> CheckResult:
    seen = sum(1 for r in records if r.committed)
    if seen:
        return CheckResult("made_progress", True, f"{seen} commits seen by the client")
    return CheckResult("made_progress", False, "the client saw no commit at all")


def _view_changes(samples: Sequence[Sample]) -> dict[str, Any]:
    """Per node: how many times its view went up, and its last view; plus when the highest
    view seen anywhere went up (for the plot)."""
    per_node: dict[int, int] = {}
    last: dict[int, int] = {}
    max_view = -1
    rises: list[dict[str, Any]] = []
    for s in sorted(samples, key=lambda s: s.t):
        if not s.ok or s.view is None:
            continue
        if s.node in last and s.view > last[s.node]:
            per_node[s.node] = per_node.get(s.node, 0) + 1
        last[s.node] = s.view
        if s.view > max_view:
            if max_view >= 0:
                rises.append({"t": round(s.t, 2), "view": s.view})
            max_view = s.view
    return {
        "per_node": {str(k): v for k, v in sorted(per_node.items())},
        "final_views": {str(k): v for k, v in sorted(last.items())},
        "max_view": max_view,
        "rises": rises,
    }


def _copy_logs(layout: ClusterLayout, dest: Path) -> None:
    if not layout.logs_dir.is_dir():
        return
    dest.mkdir(parents=True, exist_ok=True)
    for log_file in layout.logs_dir.glob("*.log"):
        with contextlib.suppress(OSError):
            shutil.copyfile(log_file, dest / log_file.name)


# =============================================================================================
# the plot


_KIND_COLORS: Final = {
    "kill": "tab:red",
    "stop": "tab:orange",
    "restart": "tab:pink",
    "wipe": "tab:brown",
    "partition": "tab:purple",
    "pause": "tab:olive",
    "byzantine": "black",
}


def plot_timeline(report: Mapping[str, Any], path: Path) -> None:
    """Commits per second over time, faults as shaded spans, view changes as dotted lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    commits = report["commits_per_second"]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    try:
        ax.bar(
            range(len(commits)),
            commits,
            width=1.0,
            align="edge",
            color="tab:blue",
            alpha=0.8,
            label="commits/s (seen by the client)",
        )
        top = max([*commits, 1]) * 1.15
        faults = report["faults"]
        for row, span in enumerate(faults):
            end = span["healed_s"] if span["healed_s"] is not None else report["load_s"]
            end = max(end, span["start_s"] + 0.3)  # instantaneous steps stay visible
            color = _KIND_COLORS.get(span["kind"], "tab:gray")
            ax.axvspan(span["start_s"], end, color=color, alpha=0.18)
            y = top * (0.97 - 0.07 * (row % 6))
            ax.text(
                span["start_s"],
                y,
                f" {span['label']} {span['nodes']}",
                fontsize=7,
                va="top",
                color=color,
            )
        for rise in report["view_changes"]["rises"]:
            ax.axvline(rise["t"], color="gray", linestyle=":", linewidth=1)
        ax.axvline(report["load_s"], color="gray", linestyle="--", linewidth=1)
        ax.set_ylim(0, top)
        ax.set_xlim(0, max(len(commits), 1))
        ax.set_xlabel("seconds since the load started (dotted: view changes, dashed: load end)")
        ax.set_ylabel("transactions committed / s")
        verdict = "PASS" if report["ok"] else "FAIL"
        ax.set_title(
            f"{report['scenario']} (n={report['nodes']}, seed {report['seed']}): {verdict}"
        )
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


# =============================================================================================
# command line


def _seed(args: argparse.Namespace) -> int:
    return args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        scenarios = [load_scenario(Path(f), nodes=args.nodes) for f in args.files]
    except ScenarioError as e:
        stderr.print(f"medchain: error: {e}", markup=False)
        return EXIT_ERROR
    seed = _seed(args)
    out_root = Path(args.out) if args.out else DEFAULT_OUT
    results = []
    worst = EXIT_OK
    for sc in scenarios:
        out_dir = out_root / sc.name if (len(scenarios) > 1 or not args.out) else out_root
        cluster_dir = None
        if args.cluster_dir is not None:
            cluster_dir = (
                Path(args.cluster_dir) / sc.name if len(scenarios) > 1 else Path(args.cluster_dir)
            )
        options = RunOptions(seed, out_dir, args.keep_cluster, _json(args), cluster_dir)
        runner = Runner(sc, options)
        try:
            report = _with_sigterm(runner.run)
        except (RunError, ClusterError, OSError) as e:
            stderr.print(f"medchain: error: scenario {sc.name}: {e}", markup=False)
            results.append({"scenario": sc.name, "ok": False, "error": str(e), "out": str(out_dir)})
            worst = max(worst, EXIT_ERROR)
            continue
        results.append({"scenario": sc.name, "ok": report["ok"], "out": str(out_dir)})
        if not report["ok"]:
            worst = max(worst, EXIT_VIOLATION)
        if not _json(args):
            _print_report(report, out_dir)
    if _json(args):
        sys.stdout.write(json.dumps(results, indent=2) + "\n")
    return worst


def _with_sigterm(fn: Callable[[], T]) -> T:
    """Run ``fn`` with SIGTERM turned into KeyboardInterrupt, so teardown still happens."""

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        return fn()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _print_report(report: Mapping[str, Any], out_dir: Path) -> None:
    verdict = "[green]PASS[/]" if report["ok"] else "[red]FAIL[/]"
    name, where = escape(report["scenario"]), escape(f"{out_dir}/report.json")
    stdout.print(f"\n[bold]{name}[/]: {verdict}  (report: {where})")
    for c in report["checks"]:
        mark = "[green]ok[/]  " if c["ok"] else "[red]FAIL[/]"
        stdout.print(f"  {mark} {escape(c['name'])}: {escape(c['detail'])}")
        for v in c["violations"][:5]:
            stdout.print(f"         {v}", markup=False)
    st = report["stats"]
    lat = report["latency_ms"]["commit"]
    stdout.print(
        f"  {st['submitted']} submitted, {st['accepted']} accepted, {st['commit_observed']} "
        f"commits seen (p50 {lat['p50']} ms, p99 {lat['p99']} ms), "
        f"max view {report['view_changes']['max_view']}"
    )


def cmd_list(args: argparse.Namespace) -> int:
    rows = []
    for path in shipped_scenarios():
        try:
            sc = load_scenario(path)
            rows.append(
                {
                    "name": sc.name,
                    "file": str(path),
                    "duration_s": sc.duration_s,
                    "description": sc.description,
                }
            )
        except ScenarioError as e:
            rows.append({"name": path.stem, "file": str(path), "error": str(e)})
    if _json(args):
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    else:
        for r in rows:
            text = " ".join(str(r.get("description") or r.get("error", "")).split())
            stdout.print(f"[bold]{escape(str(r['name'])):32}[/] {escape(text)}")
    return 0 if all("error" not in r for r in rows) else EXIT_ERROR


def cmd_check(args: argparse.Namespace) -> int:
    status = EXIT_OK
    for f in args.files:
        try:
            sc = load_scenario(Path(f), nodes=args.nodes)
        except ScenarioError as e:
            stderr.print(f"medchain: error: {e}", markup=False)
            status = EXIT_ERROR
            continue
        stdout.print(f"{f}: ok ({sc.name}, {len(sc.steps)} steps, {sc.duration_s:g}s)")
    return status


def _json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def add_scenario_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``scenario`` (run, list, check) to a ``medchain`` subparsers object."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "scenario",
        help="run fault scenarios on a fresh local cluster and check the outcome",
        description="Run fault scenarios (configs/scenarios/*.toml, see docs/faults.md).",
    )
    sub = p.add_subparsers(dest="scenario_cmd", required=True, metavar="ACTION")
    rp = sub.add_parser("run", help="run scenario files; exit 1 on any violated check")
    rp.add_argument("files", nargs="+", help="scenario TOML files")
    rp.add_argument("--nodes", type=int, help="override the scenario's node count")
    rp.add_argument("--seed", type=int, help="seed of the load and the faults (default: random)")
    rp.add_argument(
        "--out",
        help=f"output directory (default: {DEFAULT_OUT}/NAME; with several files, OUT/NAME)",
    )
    rp.add_argument("--keep-cluster", action="store_true", help="keep the cluster directory")
    rp.add_argument(
        "--cluster-dir",
        help="create the cluster here instead of a temporary directory (kept afterwards; "
        "with several files, CLUSTER_DIR/NAME)",
    )
    rp.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print a JSON summary on stdout",
    )
    rp.set_defaults(scenario_handler=cmd_run)
    lp = sub.add_parser("list", help="list the shipped scenarios")
    lp.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    lp.set_defaults(scenario_handler=cmd_list)
    cp = sub.add_parser("check", help="validate scenario files without running them")
    cp.add_argument("files", nargs="+")
    cp.add_argument("--nodes", type=int, help="validate for this node count")
    cp.set_defaults(scenario_handler=cmd_check)
    p.set_defaults(func=main_scenario)
    return p


def main_scenario(args: argparse.Namespace) -> int:
    status: int = args.scenario_handler(args)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medchain")
    add_scenario_parser(parser.add_subparsers(dest="command", required=True))
    try:
        return main_scenario(parser.parse_args(argv))
    except KeyboardInterrupt:
        stderr.print("medchain: interrupted", markup=False)
        return 130


if __name__ == "__main__":
    sys.exit(main())
