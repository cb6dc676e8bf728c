"""``medchain bench``: measure a medchain cluster's throughput and latency.

    medchain bench [--nodes N] [--duration S | --count N] [--rate TX/S | --concurrency C] ...
    medchain bench --nodes URL,URL,... (--dir DIR | --key FILE [--hospital NAME]) ...
    medchain bench sweep --nodes 4,7,10 --batch 100,500 [other bench parameters]

With ``--nodes N`` the bench starts an N-node cluster of its own in ``OUT/cluster`` (through the
cluster launcher, with the consensus parameters written into every node's config) and always
stops it again, on success, error or Ctrl-C. With ``--nodes URL,...`` or ``--dir DIR`` it loads
a cluster that is already running.

The load comes from a separate process (``scripts.loadgen``) that signs every transaction before
the clock starts, then submits them over HTTP, open loop (``--rate``) or closed loop
(``--concurrency``), and observes commits by polling one node's ``GET /status`` at a fixed
interval (``--poll-ms``) and reading the new blocks' tx ids with ``GET /blocks?txs=ids`` (headers
and ids only: observing costs the observed node little). This process samples every node's CPU
and memory once a second, shows progress, and turns the raw records into:

    OUT/result.json                 headline figures, per-node resources, errors, and a manifest
    OUT/timeline.csv                one row per second
    OUT/throughput.png              committed (and sent) transactions per second over time
    OUT/latency.png                 latency percentiles over time
    OUT/latency_distribution.png    latency histogram and CDF
    OUT/cluster/                    the bench's cluster: configs and node logs (keys and chain
                                    data are deleted unless --keep-cluster)

What the numbers mean (also written into result.json):

- throughput_tx_per_s: transactions in blocks observed committed during the measurement window
  (after the warmup), divided by the window's length; blocks_per_s likewise.
- latency: for each transaction sent during the window, from its submission (closed loop: the
  moment its request was sent; open loop: the moment it was scheduled, so client-side queueing
  counts) to the moment the observer first saw its block committed. Observation is by polling,
  so a latency overstates the true one by at most ``poll_ms`` plus one GET /status round trip
  (about half of ``poll_ms`` on average): ``observation_resolution_ms`` in the result.
- the machine is shared by the nodes, the load generator and this process: CPU figures show
  who was busy. Nothing here asserts a speed; benchmarks are not tests.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime as dt
import importlib.util
import itertools
import json
import math
import multiprocessing
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import psutil
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from consensus.config import ReplicaConfig
from node.config import ConfigError, load_config
from node.crypto import KeyFileError, load_key
from node.ledger import MAX_PAYLOAD_BYTES
from scripts.cluster import (
    STARTUP_TIMEOUT_S,
    ClusterError,
    ClusterLayout,
    ClusterProcesses,
    fetch_status,
)
from scripts.loadgen import (
    TX_ACCEPTED,
    TX_FAILED,
    TX_REJECTED,
    BlockSeen,
    ClientKey,
    LiveStats,
    LoadResult,
    LoadSpec,
    loadgen_main,
)

DEFAULT_NODES: Final = 4
DEFAULT_DURATION_S: Final = 10.0
DEFAULT_WARMUP_S: Final = 2.0
DEFAULT_PAYLOAD_BYTES: Final = 1024
DEFAULT_CONCURRENCY: Final = 8
DEFAULT_CLOSED_CLIENT_BATCH: Final = 100
OPEN_LOOP_REQUESTS_PER_S: Final = 200
"""Open loop default: client batches small enough to send about this many requests a second."""
MAX_CLIENT_BATCH: Final = 1000
"""The node's default max_batch_request_txs."""
DEFAULT_POLL_MS: Final = 25
DEFAULT_DRAIN_S: Final = 15.0
DEFAULT_SEED: Final = 1
DEFAULT_OUT_ROOT: Final = Path(".medchain") / "bench"

PRESIGN_TX_PER_S: Final = 4000
"""Closed loop: the rate the pre-signed pool is sized for (``--presign`` overrides). If the
cluster commits faster, the pool runs out, the run ends early and says so."""
POOL_SLACK: Final = 1.1
MAX_POOL_TXS: Final = 1_000_000
"""About 1.3 GB of signed 1 KB transactions: the most the bench will hold in memory."""
TX_OVERHEAD_BYTES: Final = 260
"""Approximate encoded size of a transaction beyond its payload (header, signature, framing)."""

SAMPLE_INTERVAL_S: Final = 1.0
SIGNING_MIN_TIMEOUT_S: Final = 120.0
SIGNING_TX_PER_S_FLOOR: Final = 1000
"""The signing phase is given pool / this many seconds (at least SIGNING_MIN_TIMEOUT_S)."""
RUN_MARGIN_S: Final = 60.0
"""Beyond warmup + duration + drain, how long the load generator may take before it is killed."""
MAX_COUNT_RUN_S: Final = 3600.0
"""Upper bound of a --count run."""
STOP_GRACE_S: Final = 15.0
"""After Ctrl-C, how long the load generator gets to send its partial records."""
CHILD_EXIT_TIMEOUT_S: Final = 5.0
GIT_TIMEOUT_S: Final = 5.0
CLOSED_UNTIL: Final = ("commit", "ack")

OFFERED_SHORTFALL: Final = 0.95
"""Open loop: warn when fewer than this share of the offered transactions were sent."""
EXIT_INTERRUPTED: Final = 130
_NS: Final = 1_000_000_000

SWEEPABLE: Final[dict[str, Callable[[str], Any]]] = {
    "nodes": int,
    "batch": int,
    "batch_timeout_ms": int,
    "inflight": int,
    "payload_size": int,
    "rate": float,
    "concurrency": int,
    "client_batch": int,
}
"""Parameters that take a comma-separated list in ``bench sweep`` (option name: element type)."""
CLUSTER_SIDE: Final = {
    "batch": "max_batch_txs",
    "batch_timeout_ms": "batch_timeout_ms",
    "inflight": "max_inflight",
}
"""Bench parameters that go into the nodes' [consensus] config (bench name: config key)."""

_HOSPITAL_KEY_FILE = re.compile(r"^client-(.+)\.key$")

stderr = Console(stderr=True, highlight=False)
stdout = Console(highlight=False, soft_wrap=True)


class BenchError(RuntimeError):
    """An error for the user: printed without a traceback, exit status 1."""


def _replica_default(name: str) -> int:
    for f in dataclasses.fields(ReplicaConfig):
        if f.name == name and isinstance(f.default, int):
            return f.default
    raise KeyError(name)


# =============================================================================================
# parameters


@dataclass(frozen=True, slots=True)
class BenchParams:
    """One benchmark point: every parameter, resolved to its value (no "default" left)."""

    nodes: int | None
    """Cluster size when the bench starts the cluster; None when it targets a running one."""
    urls: tuple[str, ...]
    """Target node URLs of a running cluster (empty when the bench starts one)."""
    batch: int
    batch_timeout_ms: int
    inflight: int
    payload_size: int
    duration_s: float | None
    count: int | None
    warmup_s: float
    rate: float | None
    concurrency: int | None
    client_batch: int
    closed_until: str
    seed: int
    poll_ms: int
    drain_s: float
    presign: int | None
    observe: int | None
    """Index of the observed node; None: the last node."""

    @property
    def open_loop(self) -> bool:
        return self.rate is not None

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["urls"] = list(self.urls)
        out["mode"] = "open loop" if self.open_loop else "closed loop"
        return out

    def label(self, varying: Sequence[str]) -> str:
        """A directory-safe name of this point from the parameters that vary in a sweep."""
        short = {
            "nodes": "n",
            "batch": "batch",
            "batch_timeout_ms": "bto",
            "inflight": "inflight",
            "payload_size": "payload",
            "rate": "rate",
            "concurrency": "conc",
            "client_batch": "cb",
        }
        parts = [f"{short[name]}{_fmt_number(getattr(self, name))}" for name in varying]
        return "-".join(parts) or "run"


def _fmt_number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``bench`` (and ``bench sweep``) on an argparse subparsers object."""
    p = subparsers.add_parser(
        "bench",
        help="measure throughput and latency (starts its own cluster unless given one)",
        description=(
            "Measure a cluster: start one (--nodes N) or load a running one (--nodes URL,... "
            "or --dir DIR), drive it with pre-signed transactions from a separate load "
            "generator process, and write result.json, timeline.csv and plots to --out. "
            "`medchain bench sweep` takes comma-separated lists for the sweepable parameters "
            "(nodes, batch, batch-timeout-ms, inflight, payload-size, rate, concurrency, "
            "client-batch) and runs every combination in turn."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("mode", nargs="?", choices=["sweep"], help="run a parameter sweep")
    cluster = p.add_argument_group("cluster")
    cluster.add_argument(
        "--nodes",
        default=None,
        help=f"cluster size to start (default {DEFAULT_NODES}), or URL,URL,... of a running "
        "cluster's nodes",
    )
    cluster.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="directory of a running cluster (its configs "
        "give the node URLs and pids, its keys dir the client keys)",
    )
    cluster.add_argument("--key", type=Path, default=None, help="client key file (JSON)")
    cluster.add_argument(
        "--hospital",
        default=None,
        help="hospital of --key (default: from a client-NAME.key file name)",
    )
    cluster.add_argument(
        "--batch",
        default=None,
        help="max transactions per block, consensus max_batch_txs "
        f"(default {_replica_default('max_batch_txs')})",
    )
    cluster.add_argument(
        "--batch-timeout-ms",
        default=None,
        help=f"consensus batch_timeout_ms (default {_replica_default('batch_timeout_ms')})",
    )
    cluster.add_argument(
        "--inflight",
        default=None,
        help="max batches in flight, consensus max_inflight "
        f"(default {_replica_default('max_inflight')})",
    )
    cluster.add_argument(
        "--keep-cluster",
        action="store_true",
        help="keep the started cluster's keys and "
        "chain data in OUT/cluster (they are deleted by default)",
    )
    load = p.add_argument_group("load")
    load.add_argument(
        "--payload-size",
        default=None,
        help=f"payload bytes per transaction (default {DEFAULT_PAYLOAD_BYTES})",
    )
    load.add_argument(
        "--duration",
        type=float,
        default=None,
        help=f"measured seconds after the warmup (default {DEFAULT_DURATION_S:g} unless --count)",
    )
    load.add_argument(
        "--count",
        type=int,
        default=None,
        help="transactions to send after the warmup (instead of --duration)",
    )
    load.add_argument(
        "--warmup", type=float, default=DEFAULT_WARMUP_S, help="seconds of load before measuring"
    )
    load.add_argument("--rate", default=None, help="open loop: transactions per second offered")
    load.add_argument(
        "--concurrency",
        default=None,
        help="closed loop: requests outstanding at once "
        f"(default {DEFAULT_CONCURRENCY} unless --rate)",
    )
    load.add_argument(
        "--client-batch",
        default=None,
        help="transactions per submit request (default "
        f"{DEFAULT_CLOSED_CLIENT_BATCH} in closed loop; in open loop, enough for about "
        f"{OPEN_LOOP_REQUESTS_PER_S} requests/s)",
    )
    load.add_argument(
        "--closed-until",
        choices=CLOSED_UNTIL,
        default="commit",
        help="closed loop: a "
        "request stays outstanding until its transactions commit, or only until the node "
        "accepts them (then the mempool can grow without bound and latency with it)",
    )
    load.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help="seed of the generated transactions and schedule",
    )
    load.add_argument(
        "--presign",
        type=int,
        default=None,
        help="transactions to sign up front (default: "
        f"enough for --rate, or {PRESIGN_TX_PER_S} tx/s in closed loop)",
    )
    obs = p.add_argument_group("observation and output")
    obs.add_argument(
        "--poll-ms",
        type=int,
        default=DEFAULT_POLL_MS,
        help="GET /status polling interval of the commit observer (the latency resolution)",
    )
    obs.add_argument(
        "--observe",
        type=int,
        default=None,
        help="index of the node whose commits are observed (default: the last one, a backup in "
        "the first views, so that the observer's reads do not load the primary)",
    )
    obs.add_argument(
        "--drain",
        type=float,
        default=DEFAULT_DRAIN_S,
        help="after the load, longest wait for accepted transactions to commit (seconds)",
    )
    obs.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"results directory (default {DEFAULT_OUT_ROOT}/<time>)",
    )
    obs.add_argument(
        "--scenario", type=Path, default=None, help="fault scenario to run during the load"
    )
    obs.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.set_defaults(func=main_bench)
    parser: argparse.ArgumentParser = p
    return parser


def _split_list(raw: str | None, name: str, kind: Callable[[str], Any]) -> list[Any] | None:
    if raw is None:
        return None
    items = [x.strip() for x in str(raw).split(",")]
    if not items or any(not x for x in items):
        raise BenchError(f"--{name.replace('_', '-')}: empty value in {raw!r}")
    try:
        values = [kind(x) for x in items]
    except ValueError:
        raise BenchError(
            f"--{name.replace('_', '-')}: expected {kind.__name__} values, got {raw!r}"
        ) from None
    if len(set(values)) != len(values):
        raise BenchError(f"--{name.replace('_', '-')}: repeated value in {raw!r}")
    return values


def _parse_nodes(raw: str | None) -> tuple[list[int] | None, tuple[str, ...]]:
    """``--nodes``: a list of cluster sizes, or a list of node URLs."""
    if raw is None:
        return None, ()
    if "://" not in raw:
        return _split_list(raw, "nodes", int), ()
    urls = tuple(u.strip().rstrip("/") for u in raw.split(","))
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BenchError(f"--nodes: {url!r} is not an http(s)://host:port URL")
    if len(set(urls)) != len(urls):
        raise BenchError("--nodes: a URL is repeated")
    return None, urls


def build_points(args: argparse.Namespace) -> tuple[list[BenchParams], list[str]]:
    """The benchmark points asked for (one, or a sweep's cartesian product) and the names of
    the parameters that vary. Raises BenchError for bad or inconsistent parameters."""
    sweep = args.mode == "sweep"
    sizes, urls = _parse_nodes(args.nodes)
    lists: dict[str, list[Any] | None] = {"nodes": sizes}
    for name, kind in SWEEPABLE.items():
        if name != "nodes":
            lists[name] = _split_list(getattr(args, name), name, kind)
    for name, values in lists.items():
        if values is not None and len(values) > 1 and not sweep:
            raise BenchError(
                f"--{name.replace('_', '-')} has several values: use `medchain bench sweep`"
            )
    running = bool(urls) or args.dir is not None
    if running:
        if sizes is not None:
            raise BenchError("--dir targets a running cluster; --nodes N starts a new one")
        given = [n for n in CLUSTER_SIDE if lists[n] is not None]
        if given:
            raise BenchError(
                f"--{given[0].replace('_', '-')} is a cluster-side parameter: it only applies "
                "when the bench starts the cluster (use --nodes N)"
            )
    elif args.key is not None:
        raise BenchError("--key is for a running cluster (--nodes URL,... or --dir)")
    if lists["rate"] is not None and lists["concurrency"] is not None:
        raise BenchError("--rate (open loop) and --concurrency (closed loop) exclude each other")
    if args.count is not None and args.duration is not None:
        raise BenchError("--count and --duration exclude each other")
    defaults: dict[str, list[Any]] = {
        "nodes": [None] if running else [DEFAULT_NODES],
        "batch": [_replica_default("max_batch_txs")],
        "batch_timeout_ms": [_replica_default("batch_timeout_ms")],
        "inflight": [_replica_default("max_inflight")],
        "payload_size": [DEFAULT_PAYLOAD_BYTES],
        "rate": [None],
        "concurrency": [None] if lists["rate"] is not None else [DEFAULT_CONCURRENCY],
        "client_batch": [None],
    }
    axes = {name: lists[name] or defaults[name] for name in SWEEPABLE}
    varying = [name for name in SWEEPABLE if len(axes[name]) > 1]
    points = [
        _make_point(args, urls, dict(zip(axes, combo, strict=True)))
        for combo in itertools.product(*axes.values())
    ]
    return points, varying


def _make_point(args: argparse.Namespace, urls: tuple[str, ...], v: dict[str, Any]) -> BenchParams:
    rate, concurrency = v["rate"], v["concurrency"]
    client_batch = v["client_batch"]
    if client_batch is None:
        if rate is not None:
            client_batch = max(
                1, min(DEFAULT_CLOSED_CLIENT_BATCH, round(rate / OPEN_LOOP_REQUESTS_PER_S))
            )
        else:
            client_batch = DEFAULT_CLOSED_CLIENT_BATCH
    duration = args.duration
    if duration is None and args.count is None:
        duration = DEFAULT_DURATION_S
    params = BenchParams(
        nodes=v["nodes"],
        urls=urls,
        batch=v["batch"],
        batch_timeout_ms=v["batch_timeout_ms"],
        inflight=v["inflight"],
        payload_size=v["payload_size"],
        duration_s=duration,
        count=args.count,
        warmup_s=args.warmup,
        rate=rate,
        concurrency=concurrency,
        client_batch=client_batch,
        closed_until=args.closed_until,
        seed=args.seed,
        poll_ms=args.poll_ms,
        drain_s=args.drain,
        presign=args.presign,
        observe=args.observe,
    )
    _validate(params)
    return params


def _validate(p: BenchParams) -> None:
    checks: list[tuple[bool, str]] = [
        (p.nodes is None or 4 <= p.nodes <= 64, f"--nodes must be in 4..64, got {p.nodes}"),
        (p.batch >= 1, "--batch must be positive"),
        (p.batch_timeout_ms >= 1, "--batch-timeout-ms must be positive"),
        (p.inflight >= 1, "--inflight must be positive"),
        (
            0 <= p.payload_size <= MAX_PAYLOAD_BYTES,
            f"--payload-size must be in 0..{MAX_PAYLOAD_BYTES} (the node's payload limit)",
        ),
        (p.duration_s is None or p.duration_s > 0, "--duration must be positive"),
        (p.count is None or p.count >= 1, "--count must be positive"),
        (p.warmup_s >= 0, "--warmup must not be negative"),
        (p.rate is None or p.rate > 0, "--rate must be positive"),
        (p.concurrency is None or p.concurrency >= 1, "--concurrency must be positive"),
        (
            1 <= p.client_batch <= MAX_CLIENT_BATCH,
            f"--client-batch must be in 1..{MAX_CLIENT_BATCH}",
        ),
        (1 <= p.poll_ms <= 1000, "--poll-ms must be in 1..1000"),
        (p.drain_s >= 0, "--drain must not be negative"),
        (
            p.presign is None or 1 <= p.presign <= MAX_POOL_TXS,
            f"--presign must be in 1..{MAX_POOL_TXS}",
        ),
        (p.observe is None or p.observe >= 0, "--observe must not be negative"),
    ]
    for ok, message in checks:
        if not ok:
            raise BenchError(message)


def pool_size(p: BenchParams, n_targets: int) -> tuple[int, bool]:
    """Transactions to pre-sign for ``p``, and whether the size had to be capped."""
    if p.presign is not None:
        return p.presign, False
    tx_per_s = p.rate if p.rate is not None else PRESIGN_TX_PER_S
    if p.count is not None:
        need = p.count + tx_per_s * p.warmup_s
    else:
        assert p.duration_s is not None
        need = tx_per_s * (p.warmup_s + p.duration_s)
    # Every target gets whole requests; leave one spare request per target.
    size = math.ceil(need * POOL_SLACK) + p.client_batch * n_targets
    return min(size, MAX_POOL_TXS), size > MAX_POOL_TXS


# =============================================================================================
# the cluster under test


@dataclass(frozen=True, slots=True)
class Target:
    """The cluster being measured, as the bench needs it."""

    urls: tuple[str, ...]
    keys: tuple[ClientKey, ...]
    pids: tuple[int | None, ...]
    """Node process ids (for CPU/memory sampling), None where unknown."""
    started: bool
    """True if the bench started (and will stop) this cluster."""
    cluster_dir: Path | None
    consensus: dict[str, Any] | None
    """The nodes' consensus parameters, if known (from a config file)."""


@contextlib.contextmanager
def started_cluster(
    p: BenchParams,
    out: Path,
    ui: BenchUI,
    *,
    keep: bool,
    prepare: Callable[[Path], None] | None = None,
) -> Iterator[Target]:
    """Start a p.nodes-node cluster in OUT/cluster; stop it on exit, whatever happens.

    ``prepare(root)`` runs between writing the configs and starting the nodes."""
    # Imported here: node.cli imports this module to register the command.
    from node.cli import CliError, init_cluster

    assert p.nodes is not None
    root = out / "cluster"
    overrides = {CLUSTER_SIDE[name]: getattr(p, name) for name in CLUSTER_SIDE}
    try:
        init_cluster(root, p.nodes, force=True, consensus=overrides)
    except ConfigError as e:
        raise BenchError(f"bad cluster parameters: {e}") from None
    except CliError as e:  # e.g. a cluster from an earlier run still runs there
        raise BenchError(str(e)) from None
    if prepare is not None:
        prepare(root)
    procs = ClusterProcesses(root)
    try:
        ui.note(f"starting a {p.nodes}-node cluster in {root}")
        procs.up(timeout=STARTUP_TIMEOUT_S)
        layout = ClusterLayout(root)
        config = load_config(layout.config_path(0))
        keys = tuple(
            ClientKey(c.hospital, load_key(layout.client_key(c.hospital))[0])
            for c in config.clients
        )
        yield Target(
            urls=tuple(s.url for s in procs.specs()),
            keys=keys,
            pids=tuple(procs.pid(i) for i in procs.indices()),
            started=True,
            cluster_dir=procs.root,
            consensus=dataclasses.asdict(config.consensus),
        )
    finally:
        with _signals_deferred():
            ui.note("stopping the cluster")
            procs.down()
            if not keep:
                for sub in ("keys", "data", "run"):
                    shutil.rmtree(root / sub, ignore_errors=True)


def running_cluster(args: argparse.Namespace, urls: tuple[str, ...]) -> Target:
    """A cluster that is already running: from --dir and/or --nodes URL,... and --key."""
    pids: list[int | None]
    consensus = None
    keys: list[ClientKey] = []
    if args.dir is not None:
        procs = ClusterProcesses(args.dir)
        specs = procs.specs()
        if not specs:
            raise BenchError(f"{procs.root}: no cluster here (no node*.toml)")
        by_url = {s.url: s.index for s in specs}
        urls = urls or tuple(s.url for s in specs)
        pids = [procs.pid(by_url[u]) if u in by_url else None for u in urls]
        config = load_config(procs.layout.config_path(specs[0].index))
        consensus = dataclasses.asdict(config.consensus)
        if args.key is None:
            keys = _dir_client_keys(procs.layout, config.clients)
    else:
        pids = _pids_by_port(urls)
    if args.key is not None:
        keys = [_key_from_file(args.key, args.hospital)]
    if not keys:
        raise BenchError("no client key: give --key FILE (and --hospital) or --dir DIR")
    for url in urls:
        if fetch_status(url) is None:
            raise BenchError(f"node {url} does not answer GET /status")
    return Target(
        urls=urls,
        keys=tuple(keys),
        pids=tuple(pids),
        started=False,
        cluster_dir=args.dir.resolve() if args.dir is not None else None,
        consensus=consensus,
    )


def _dir_client_keys(layout: ClusterLayout, clients: Sequence[Any]) -> list[ClientKey]:
    keys = []
    for c in clients:
        path = layout.client_key(c.hospital)
        if not path.is_file():
            continue
        secret, public = load_key(path)
        if public != c.public_key:
            raise BenchError(f"{path} does not hold the key the config lists for {c.hospital}")
        keys.append(ClientKey(c.hospital, secret))
    return keys


def _key_from_file(path: Path, hospital: str | None) -> ClientKey:
    secret, _public = load_key(path)
    if hospital is None:
        m = _HOSPITAL_KEY_FILE.match(path.name)
        if m is None:
            raise BenchError(f"--hospital is needed: cannot tell the hospital of {path}")
        hospital = m.group(1)
    return ClientKey(hospital, secret)


def _pids_by_port(urls: Sequence[str]) -> list[int | None]:
    """Best effort: pids of local processes listening on the URLs' ports."""
    pids: list[int | None] = [None] * len(urls)
    local = {"127.0.0.1", "localhost", "::1"}
    wanted = {}
    for i, url in enumerate(urls):
        parts = urllib.parse.urlsplit(url)
        if parts.hostname in local and parts.port is not None:
            wanted[parts.port] = i
    if not wanted:
        return pids
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return pids
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port in wanted and c.pid:
            pids[wanted[c.laddr.port]] = c.pid
    return pids


# =============================================================================================
# fault scenarios (optional module)


class BenchScenario(Protocol):
    """What ``medchain bench --scenario FILE`` needs from ``scripts/scenario.py``: a function
    ``bench_scenario(path: Path) -> BenchScenario`` that parses and validates FILE, returning
    an object with these three methods (called once per benchmark point, in this order)."""

    def prepare(self, cluster_dir: Path) -> None:
        """After ``init``, before any node starts (e.g. enable fault injection in configs)."""
        ...

    def start(self, cluster_dir: Path) -> None:
        """At second 0 of the load: start applying the timeline in the background."""
        ...

    def stop(self) -> dict[str, Any]:
        """After the load: heal everything; return what was done (goes into result.json)."""
        ...


def load_scenario(path: Path | None) -> BenchScenario | None:
    """The scenario for ``--scenario`` (checked before anything starts), or None."""
    if path is None:
        return None
    if importlib.util.find_spec("scripts.scenario") is None:
        raise BenchError(
            "--scenario: fault scenarios are not available yet (scripts/scenario.py is not "
            "part of this installation)"
        )
    import scripts.scenario as scenario_module

    factory = getattr(scenario_module, "bench_scenario", None)
    if factory is None:
        raise BenchError(
            "--scenario: fault scenarios cannot run under the bench yet (scripts/scenario.py "
            "has no bench_scenario()); run them with `medchain scenario run FILE`"
        )
    if not path.is_file():
        raise BenchError(f"--scenario: no such file {path}")
    try:
        scenario: BenchScenario = factory(path)
    except ValueError as e:  # ScenarioError: the file is not a valid scenario
        raise BenchError(f"--scenario: {e}") from e
    return scenario


# =============================================================================================
# progress display


class BenchUI:
    """Progress on stderr: a rich progress bar on a terminal, plain lines otherwise."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            transient=True,
            disable=not self.live,
        )
        self._signing: TaskID | None = None
        self._load: TaskID | None = None
        self._last: LiveStats | None = None
        self._last_printed = -1

    def __enter__(self) -> BenchUI:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def note(self, text: str) -> None:
        self.console.print(f"[dim]bench:[/] {text}")

    def signing(self, done: int, total: int) -> None:
        if self._signing is None:
            self._signing = self.progress.add_task("signing", total=total, info="")
            if not self.live:
                self.note(f"signing {total} transactions")
        self.progress.update(self._signing, completed=done, info=f"{done}/{total} txs")

    def load_started(self, total: float) -> None:
        """A new load bar (seconds, or transactions for --count); a sweep's old one goes."""
        for task in (self._signing, self._load):
            if task is not None:
                self.progress.remove_task(task)
        self._signing = None
        self._last = None
        self._load = self.progress.add_task("load", total=total, info="")

    def tick(self, live: LiveStats, count: int | None) -> None:
        prev = self._last
        self._last = live
        rate = 0.0
        if prev is not None and live.elapsed_s > prev.elapsed_s:
            rate = (live.committed_txs - prev.committed_txs) / (live.elapsed_s - prev.elapsed_s)
        info = (
            f"{live.phase:<7} {rate:7.0f} tx/s committed  height {live.height}  "
            f"view {live.view}  errors {live.errors}"
        )
        if self._load is not None:
            done = live.sent_txs if count is not None else live.elapsed_s
            self.progress.update(self._load, completed=done, info=info)
        second = int(live.elapsed_s)
        if not self.live and second // 5 != self._last_printed // 5:
            self._last_printed = second
            self.note(f"t={live.elapsed_s:5.1f}s {info}")


# =============================================================================================
# driving the load generator


@dataclass(frozen=True, slots=True)
class UsageSample:
    t_ns: int
    cpu: tuple[float | None, ...]
    """Per node: CPU percent over the last interval (100 = one core), None if unknown/dead."""
    rss: tuple[int | None, ...]
    """Per node: resident memory in bytes."""
    loadgen_cpu: float | None
    system_cpu: float
    """Whole machine, percent of all cores."""


def _covered(u: UsageSample) -> int:
    """The middle of the interval a sample covers (CPU percent is over the last interval)."""
    return u.t_ns - int(SAMPLE_INTERVAL_S * _NS) // 2


class UsageSampler:
    """Samples CPU and memory of the node processes and the load generator (psutil)."""

    def __init__(self, pids: Sequence[int | None], loadgen_pid: int | None) -> None:
        self.procs = [self._proc(pid) for pid in pids]
        self.loadgen = self._proc(loadgen_pid)
        self.samples: list[UsageSample] = []
        self.died: set[int] = set()

    @staticmethod
    def _proc(pid: int | None) -> psutil.Process | None:
        if pid is None:
            return None
        try:
            return psutil.Process(pid)
        except psutil.Error:
            return None

    @property
    def all_dead(self) -> bool:
        """True if the node processes were known and every one has exited."""
        known = sum(1 for p in self.procs if p is not None)
        return known > 0 and len(self.died) == known

    def prime(self) -> None:
        """Start the CPU counters (psutil's first cpu_percent call has no interval)."""
        psutil.cpu_percent(None)
        for proc in (*self.procs, self.loadgen):
            if proc is not None:
                with contextlib.suppress(psutil.Error):
                    proc.cpu_percent(None)

    def sample(self) -> None:
        cpu: list[float | None] = []
        rss: list[int | None] = []
        for i, proc in enumerate(self.procs):
            c, m = self._measure(proc)
            if proc is not None and c is None:
                self.died.add(i)
            cpu.append(c)
            rss.append(m)
        loadgen_cpu, _ = self._measure(self.loadgen)
        self.samples.append(
            UsageSample(
                time.monotonic_ns(), tuple(cpu), tuple(rss), loadgen_cpu, psutil.cpu_percent(None)
            )
        )

    @staticmethod
    def _measure(proc: psutil.Process | None) -> tuple[float | None, int | None]:
        if proc is None:
            return None, None
        try:
            with proc.oneshot():
                if proc.status() == psutil.STATUS_ZOMBIE:
                    return None, None
                return proc.cpu_percent(None), proc.memory_info().rss
        except psutil.Error:
            return None, None


@dataclass(frozen=True, slots=True)
class LoadOutcome:
    result: LoadResult
    usage: list[UsageSample]
    died: frozenset[int]
    stopped: str | None
    """Why the load was cut short: "interrupted" (Ctrl-C), "overran" (time budget), "cluster
    died" (every node process exited), or None."""
    loadgen_pid: int | None

    @property
    def interrupted(self) -> bool:
        return self.stopped == "interrupted"


def drive_load(
    spec: LoadSpec,
    target: Target,
    params: BenchParams,
    ui: BenchUI,
    on_go: Callable[[], None] | None = None,
) -> LoadOutcome:
    """Run the load generator process to completion (bounded) and sample resources meanwhile.

    Ctrl-C asks the generator to stop and waits (bounded) for its partial records; the
    caller sees ``interrupted`` and still gets them. The child never outlives this call.
    """
    ctx = multiprocessing.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe(duplex=True)
    proc = ctx.Process(
        target=loadgen_main, args=(spec, child_conn), name="medchain-loadgen", daemon=True
    )
    proc.start()
    child_conn.close()
    running = False
    try:
        _wait_ready(proc, parent_conn, spec, ui)
        sampler = UsageSampler(target.pids, proc.pid)
        sampler.prime()
        if on_go is not None:
            on_go()
        parent_conn.send(("go",))
        running = True
        if params.count is not None:
            ui.load_started(params.count)
            budget = MAX_COUNT_RUN_S
        else:
            assert params.duration_s is not None
            ui.load_started(params.warmup_s + params.duration_s)
            budget = params.warmup_s + params.duration_s
        budget += params.drain_s + RUN_MARGIN_S
        result, stopped = _collect(proc, parent_conn, sampler, ui, params, budget)
        return LoadOutcome(result, sampler.samples, frozenset(sampler.died), stopped, proc.pid)
    finally:
        _end_child(proc, parent_conn, graceful=running)


def _wait_ready(proc: Any, conn: Any, spec: LoadSpec, ui: BenchUI) -> None:
    timeout = max(SIGNING_MIN_TIMEOUT_S, spec.pool_size / SIGNING_TX_PER_S_FLOOR)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not conn.poll(0.2):
            if not proc.is_alive():
                raise BenchError(
                    f"the load generator exited (status {proc.exitcode}) while signing"
                )
            continue
        message = _recv(conn, proc)
        kind = message[0]
        if kind == "signing":
            ui.signing(message[1], message[2])
        elif kind == "ready":
            return
        elif kind == "error":
            raise BenchError(f"load generator failed: {message[1]}")
    raise BenchError(f"the load generator did not finish signing within {timeout:.0f}s")


def _recv(conn: Any, proc: Any) -> tuple[Any, ...]:
    try:
        message = conn.recv()
    except (EOFError, OSError):
        proc.join(CHILD_EXIT_TIMEOUT_S)
        raise BenchError(f"the load generator died (exit status {proc.exitcode})") from None
    if not isinstance(message, tuple) or not message:
        raise BenchError(f"unexpected message from the load generator: {message!r}")
    return message


def _collect(
    proc: Any, conn: Any, sampler: UsageSampler, ui: BenchUI, params: BenchParams, budget: float
) -> tuple[LoadResult, str | None]:
    """Receive progress until the result arrives, sampling resources every second. Returns the
    result and why it was cut short, if it was (see LoadOutcome.stopped)."""
    stopped: str | None = None
    deadline = time.monotonic() + budget
    next_sample = time.monotonic() + SAMPLE_INTERVAL_S
    while True:
        try:
            now = time.monotonic()
            if now > deadline:
                if stopped is not None:
                    raise BenchError("the load generator did not stop when asked")
                stopped = "overran"
                ui.note(f"the load did not end within {budget:.0f}s: stopping it")
                _ask_stop(conn)
                deadline = now + STOP_GRACE_S
            if now >= next_sample:
                sampler.sample()
                next_sample = max(next_sample + SAMPLE_INTERVAL_S, now)
                if sampler.all_dead and stopped is None:
                    stopped = "cluster died"
                    ui.note("every node process has exited: stopping the load")
                    _ask_stop(conn)
                    deadline = min(deadline, now + STOP_GRACE_S)
            if not conn.poll(max(0.0, min(next_sample, deadline) - time.monotonic())):
                if not proc.is_alive() and not conn.poll():
                    raise BenchError(f"the load generator died (exit status {proc.exitcode})")
                continue
            message = _recv(conn, proc)
            if message[0] == "tick":
                ui.tick(message[1], params.count)
            elif message[0] == "result":
                return message[1], stopped
            elif message[0] == "error":
                raise BenchError(f"load generator failed: {message[1]}")
        except KeyboardInterrupt:
            if stopped == "interrupted":
                continue  # already stopping
            stopped = "interrupted"
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # restored by main_bench
            ui.note("interrupted: stopping the load, collecting partial results")
            _ask_stop(conn)
            deadline = min(deadline, time.monotonic() + STOP_GRACE_S)


def _ask_stop(conn: Any) -> None:
    with contextlib.suppress(OSError):
        conn.send(("stop",))


def _end_child(proc: Any, conn: Any, *, graceful: bool) -> None:
    """Make sure the load generator is gone: ask (if it runs the load; while signing it does
    not listen), then terminate, then kill, all bounded."""
    if graceful and proc.is_alive():
        _ask_stop(conn)
        proc.join(CHILD_EXIT_TIMEOUT_S)
    if proc.is_alive():
        proc.terminate()
        proc.join(CHILD_EXIT_TIMEOUT_S)
    if proc.is_alive():
        proc.kill()
        proc.join(CHILD_EXIT_TIMEOUT_S)
    conn.close()


# =============================================================================================
# analysis


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation; None for no data."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass(frozen=True, slots=True)
class Distribution:
    count: int
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None
    mean: float | None
    min: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> Distribution:
        s = sorted(values)
        if not s:
            return cls(0, None, None, None, None, None, None)
        return cls(
            count=len(s),
            p50=percentile(s, 50),
            p95=percentile(s, 95),
            p99=percentile(s, 99),
            max=s[-1],
            mean=sum(s) / len(s),
            min=s[0],
        )

    def to_json(self, digits: int = 2) -> dict[str, Any]:
        return {
            k: (round(v, digits) if isinstance(v, float) else v)
            for k, v in dataclasses.asdict(self).items()
        }


@dataclass(frozen=True, slots=True)
class TimelineRow:
    second: int
    phase: str
    sent_tx: int
    committed_tx: int
    """Transactions (anyone's) in blocks observed committed during this second."""
    blocks: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    """Latency of our transactions observed committed during this second."""
    view: int | None
    system_cpu: float | None
    loadgen_cpu: float | None
    node_cpu: tuple[float | None, ...]
    node_rss_mb: tuple[float | None, ...]


@dataclass(frozen=True, slots=True)
class Analysis:
    summary: dict[str, Any]
    timeline: list[TimelineRow]
    latencies_ms: list[float]
    window_s: tuple[float, float]
    """Measurement window in seconds since second 0."""


def _window(r: LoadResult, p: BenchParams) -> tuple[int, int, list[int]]:
    """The measurement window [start, end) in ns and the transactions it measures: those sent
    in it (duration), or every one sent after the warmup, the window ending at the last of
    their commits (count)."""
    start = r.warmup_end_ns
    sent = r.sent_ns
    if p.duration_s is not None:
        end = max(start, min(start + int(p.duration_s * _NS), r.submit_end_ns))
        return start, end, [i for i in range(r.pool_size) if start <= sent[i] < end]
    measured = [i for i in range(r.pool_size) if sent[i] >= start]
    commits = [r.committed_ns[i] for i in measured if r.committed_ns[i] >= 0]
    end = max(commits) if commits else r.submit_end_ns
    return start, max(start, end), measured


def analyze(p: BenchParams, target: Target, load: LoadOutcome, warnings: list[str]) -> Analysis:
    """Turn the raw records of one run into the result's figures and the per-second timeline."""
    r = load.result
    start, end, measured = _window(r, p)
    window_s = (end - start) / _NS
    accepted = [i for i in measured if r.outcome[i] == TX_ACCEPTED]
    committed = [i for i in accepted if r.committed_ns[i] >= 0]
    latencies = [(r.committed_ns[i] - r.origin_ns[i]) / 1e6 for i in committed]
    in_window = [b for b in r.blocks if start <= b.observed_ns < end]
    window_txs = sum(b.txs for b in in_window)
    views = [s for s in r.status if s.t_ns <= r.end_ns]
    usage = [u for u in load.usage if start <= _covered(u) < end] or load.usage
    warnings.extend(
        _warnings(p, target, load, window_s, len(measured), len(accepted) - len(committed))
    )
    summary: dict[str, Any] = {
        "throughput_tx_per_s": round(window_txs / window_s, 2) if window_s > 0 else None,
        "blocks_per_s": round(len(in_window) / window_s, 3) if window_s > 0 else None,
        "latency_ms": Distribution.of(latencies).to_json(),
        "latency_breakdown_ms": _breakdown(
            r, committed, {b.height: b for b in r.blocks}, p.open_loop
        ),
        "observation_resolution_ms": p.poll_ms,
        "measured_seconds": round(window_s, 3),
        "committed_txs_in_window": window_txs,
        "blocks_in_window": len(in_window),
        "txs_per_block": round(window_txs / len(in_window), 2) if in_window else None,
        "sent_txs": len(measured),
        "accepted_txs": len(accepted),
        "rejected_txs": sum(1 for i in measured if r.outcome[i] == TX_REJECTED),
        "failed_txs": sum(1 for i in measured if r.outcome[i] == TX_FAILED),
        "committed_txs": len(committed),
        "uncommitted_txs": len(accepted) - len(committed),
        "offered_tx_per_s": p.rate,
        "view_changes": views[-1].view - views[0].view if views else 0,
        "view_change_events": views[-1].view_changes - views[0].view_changes if views else 0,
        "view_start": views[0].view if views else None,
        "view_end": views[-1].view if views else None,
        "requests": r.requests,
        "retries": r.retries,
        "errors": dict(sorted(r.errors.items(), key=lambda kv: -kv[1])),
        "nodes": _node_usage(target, usage),
        "loadgen_cpu_percent_mean": _mean([u.loadgen_cpu for u in usage]),
        "loadgen_pid": load.loadgen_pid,
        "system_cpu_percent_mean": _mean([u.system_cpu for u in usage]),
        "pool_size": r.pool_size,
        "pool_exhausted": r.pool_exhausted,
        "interrupted": load.interrupted,
    }
    return Analysis(
        summary=summary,
        timeline=_timeline(r, load.usage, len(target.urls), start, end),
        latencies_ms=latencies,
        window_s=((start - r.t0_ns) / _NS, (end - r.t0_ns) / _NS),
    )


def _warnings(
    p: BenchParams,
    target: Target,
    load: LoadOutcome,
    window_s: float,
    measured: int,
    uncommitted: int,
) -> list[str]:
    r = load.result
    out = []
    if window_s <= 0:
        out.append("the measurement window is empty (stopped during the warmup?)")
    if r.pool_exhausted:
        out.append(
            f"the {r.pool_size} pre-signed transactions ran out before the end: the run was cut "
            "short (raise --presign)"
        )
    if load.stopped == "interrupted":
        out.append("interrupted: partial results")
    elif load.stopped == "overran":
        out.append("the load did not end within its time budget and was stopped")
    elif load.stopped == "cluster died":
        out.append("the load was stopped early: every node process exited")
    if p.rate is not None and window_s > 0 and measured < OFFERED_SHORTFALL * p.rate * window_s:
        out.append(
            f"only {measured / window_s:.0f} of the offered {p.rate:g} tx/s were sent "
            f"(requests went out up to {r.max_schedule_lag_ms:.0f} ms behind schedule); "
            "latency counts from the schedule"
        )
    for i in sorted(load.died):
        out.append(f"node {i} (pid {target.pids[i]}) exited during the run")
    if uncommitted:
        out.append(f"{uncommitted} accepted transactions were not seen committed within the drain")
    return out


def _breakdown(
    r: LoadResult, committed: list[int], by_height: dict[int, BlockSeen], open_loop: bool
) -> dict[str, Any]:
    """Split latency at the block's timestamp (the primary's clock when it built the batch;
    1 ms resolution; comparable because nodes and client share this machine's clock)."""
    to_proposal: list[float] = []
    to_observed: list[float] = []
    queued: list[float] = []
    heights = r.height
    for i in committed:
        block = by_height.get(heights[i])
        if block is None:
            continue
        proposal_ns = block.timestamp_ms * 1_000_000 - r.wall_minus_mono_ns
        to_proposal.append((proposal_ns - r.sent_ns[i]) / 1e6)
        to_observed.append((r.committed_ns[i] - proposal_ns) / 1e6)
        queued.append((r.sent_ns[i] - r.origin_ns[i]) / 1e6)
    out = {
        "submit_to_proposal": Distribution.of(to_proposal).to_json(),
        "proposal_to_commit_observed": Distribution.of(to_observed).to_json(),
    }
    if open_loop:
        out["schedule_to_send"] = Distribution.of(queued).to_json()
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    xs = [v for v in values if v is not None]
    return round(sum(xs) / len(xs), 1) if xs else None


def _max(values: Sequence[float | None]) -> float | None:
    xs = [v for v in values if v is not None]
    return round(max(xs), 1) if xs else None


def _mb(value: int | None) -> float | None:
    return None if value is None else value / 1e6


def _node_usage(target: Target, usage: Sequence[UsageSample]) -> list[dict[str, Any]]:
    out = []
    for i, url in enumerate(target.urls):
        cpu = [u.cpu[i] for u in usage]
        rss = [_mb(u.rss[i]) for u in usage]
        out.append(
            {
                "id": i,
                "url": url,
                "pid": target.pids[i] if i < len(target.pids) else None,
                "cpu_percent_mean": _mean(cpu),
                "cpu_percent_max": _max(cpu),
                "rss_mb_mean": _mean(rss),
                "rss_mb_max": _max(rss),
            }
        )
    return out


def _timeline(
    r: LoadResult, usage: Sequence[UsageSample], n_nodes: int, start: int, end: int
) -> list[TimelineRow]:
    t0 = r.t0_ns
    seconds = max(1, math.ceil((r.end_ns - t0) / _NS))

    def sec(t: int) -> int:
        return min(seconds - 1, max(0, (t - t0) // _NS))

    sent = [0] * seconds
    for t in r.sent_ns:
        if t >= 0:
            sent[sec(t)] += 1
    committed = [0] * seconds
    blocks = [0] * seconds
    for b in r.blocks:
        committed[sec(b.observed_ns)] += b.txs
        blocks[sec(b.observed_ns)] += 1
    lat: list[list[float]] = [[] for _ in range(seconds)]
    for i in range(r.pool_size):
        c = r.committed_ns[i]
        if c >= 0 and r.outcome[i] == TX_ACCEPTED:
            lat[sec(c)].append((c - r.origin_ns[i]) / 1e6)
    view: list[int | None] = [None] * seconds
    for s in r.status:
        k = sec(s.t_ns)
        view[k] = max(view[k] or 0, s.view)
    per_second: list[list[UsageSample]] = [[] for _ in range(seconds)]
    for u in usage:
        per_second[sec(_covered(u))].append(u)
    rows = []
    for k in range(seconds):
        d = Distribution.of(lat[k])
        us = per_second[k]
        mid = t0 + k * _NS + _NS // 2
        phase = "warmup" if mid < start else ("measure" if mid < end else "drain")
        rows.append(
            TimelineRow(
                second=k,
                phase=phase,
                sent_tx=sent[k],
                committed_tx=committed[k],
                blocks=blocks[k],
                p50_ms=d.p50,
                p95_ms=d.p95,
                p99_ms=d.p99,
                max_ms=d.max,
                view=view[k],
                system_cpu=_mean([u.system_cpu for u in us]),
                loadgen_cpu=_mean([u.loadgen_cpu for u in us]),
                node_cpu=tuple(_mean([u.cpu[i] for u in us]) for i in range(n_nodes)),
                node_rss_mb=tuple(_mean([_mb(u.rss[i]) for u in us]) for i in range(n_nodes)),
            )
        )
    return rows


# =============================================================================================
# outputs


DEFINITIONS: Final = {
    "throughput_tx_per_s": "transactions in blocks observed committed during the measurement "
    "window (after the warmup) / window length; counts every client's transactions",
    "blocks_per_s": "blocks (including empty ones) observed committed in the window / length",
    "latency_ms": "per transaction sent in the window: submission (closed loop: request sent; "
    "open loop: request scheduled) to its block first seen committed by the observer",
    "observation_resolution_ms": "the observer polls GET /status of one node at this interval; "
    "a commit is seen at most one interval plus one round trip after it happens",
    "latency_breakdown_ms": "submit_to_proposal: request sent to the block's timestamp (the "
    "primary's clock when it built the batch); proposal_to_commit_observed: from there to the "
    "observation; schedule_to_send (open loop): client-side wait for a free request slot",
    "view_changes": "views the observed node moved through during the run (view at the end "
    "minus view at the start)",
    "view_change_events": "the observed node's own view_changes counter over the run (it counts "
    "every view it enters, including views abandoned before they were installed)",
    "nodes": "per node process: CPU percent (100 = one core) and resident memory, sampled "
    "once a second during the window",
}


def manifest(
    p: BenchParams, target: Target, started_at: dt.datetime, spec: LoadSpec
) -> dict[str, Any]:
    repo = Path(__file__).resolve().parents[1]
    commit = _git(repo, "rev-parse", "HEAD")
    dirty = _git(repo, "--no-optional-locks", "status", "--porcelain", "--untracked-files=no")
    try:
        from importlib.metadata import version

        medchain_version: str | None = version("medchain")
    except Exception:
        medchain_version = None
    return {
        "tool": "medchain bench",
        "medchain_version": medchain_version,
        "git_commit": commit,
        "git_dirty": None if dirty is None else bool(dirty),
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": sys.argv,
        "parameters": p.to_json(),
        "seed": p.seed,
        "pool_size": spec.pool_size,
        "cluster": {
            "started_by_bench": target.started,
            "nodes": len(target.urls),
            "urls": list(target.urls),
            "pids": list(target.pids),
            "dir": str(target.cluster_dir) if target.cluster_dir else None,
            "consensus": target.consensus,
            "observed_node": p.observe,
            "client_hospitals": [k.hospital for k in target.keys],
        },
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "memory_total_mb": round(psutil.virtual_memory().total / 1e6),
        "definitions": DEFINITIONS,
    }


def _git(repo: Path, *argv: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *argv],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def write_json(path: Path, value: object) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


def write_timeline(path: Path, rows: Sequence[TimelineRow], n_nodes: int) -> None:
    header = [
        "second",
        "phase",
        "sent_tx",
        "committed_tx",
        "blocks",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "max_ms",
        "view",
        "system_cpu_percent",
        "loadgen_cpu_percent",
        *[f"node{i}_cpu_percent" for i in range(n_nodes)],
        *[f"node{i}_rss_mb" for i in range(n_nodes)],
    ]

    def cell(v: object) -> object:
        if v is None:
            return ""
        return round(v, 2) if isinstance(v, float) else v

    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for r in rows:
            w.writerow(
                [
                    cell(x)
                    for x in (
                        r.second,
                        r.phase,
                        r.sent_tx,
                        r.committed_tx,
                        r.blocks,
                        r.p50_ms,
                        r.p95_ms,
                        r.p99_ms,
                        r.max_ms,
                        r.view,
                        r.system_cpu,
                        r.loadgen_cpu,
                        *r.node_cpu,
                        *r.node_rss_mb,
                    )
                ]
            )


def _figure(width: float = 8.0, height: float = 4.5) -> Any:
    # The object-oriented API with the Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _shade_phases(ax: Any, window: tuple[float, float], last: float) -> None:
    if window[0] > 0:
        ax.axvspan(0, window[0], color="0.9", label="warmup")
    if last > window[1]:
        ax.axvspan(window[1], last, color="0.95", label="drain")


def plot_throughput(path: Path, a: Analysis, title: str) -> None:
    fig = _figure()
    ax = fig.add_subplot()
    xs = [r.second + 0.5 for r in a.timeline]
    _shade_phases(ax, a.window_s, len(a.timeline))
    ax.step(xs, [r.committed_tx for r in a.timeline], where="mid", label="committed tx/s")
    ax.step(xs, [r.sent_tx for r in a.timeline], "--", where="mid", alpha=0.7, label="sent tx/s")
    tput = a.summary["throughput_tx_per_s"]
    if tput:
        ax.axhline(tput, color="k", lw=0.8, label=f"window mean {tput:.0f} tx/s")
    ax.set(xlabel="time (s)", ylabel="transactions / s", title=title)
    ax.set_ylim(bottom=0)
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    fig.savefig(path)


def plot_latency(path: Path, a: Analysis, title: str) -> None:
    fig = _figure()
    ax = fig.add_subplot()
    xs = [r.second + 0.5 for r in a.timeline]
    _shade_phases(ax, a.window_s, len(a.timeline))
    for name in ("p50_ms", "p95_ms", "p99_ms", "max_ms"):
        ys = [getattr(r, name) for r in a.timeline]
        ax.plot(xs, [math.nan if y is None else y for y in ys], marker=".", label=name[:-3])
    ax.set(xlabel="time of commit (s)", ylabel="latency (ms)", title=title)
    ax.set_ylim(bottom=0)
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    fig.savefig(path)


def plot_latency_distribution(path: Path, a: Analysis, title: str) -> None:
    fig = _figure(10.0, 4.5)
    hist, cdf = fig.subplots(1, 2)
    values = sorted(a.latencies_ms)
    if values:
        hist.hist(values, bins=min(60, max(5, len(values) // 20)))
        ys = [(i + 1) / len(values) for i in range(len(values))]
        cdf.plot(values, ys)
        lat = a.summary["latency_ms"]
        for q in ("p50", "p95", "p99"):
            if lat[q] is not None:
                cdf.axvline(lat[q], ls=":", color="k", lw=0.8)
                cdf.text(lat[q], 0.02, q, rotation=90, fontsize="small")
    else:
        for ax in (hist, cdf):
            ax.text(0.5, 0.5, "no committed transactions", ha="center", transform=ax.transAxes)
    hist.set(xlabel="latency (ms)", ylabel="transactions", title="histogram")
    cdf.set(xlabel="latency (ms)", ylabel="fraction of transactions", title="CDF")
    cdf.set_ylim(0, 1)
    for ax in (hist, cdf):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)


def _title(p: BenchParams, n_nodes: int) -> str:
    load = f"rate {p.rate:g} tx/s" if p.rate is not None else f"concurrency {p.concurrency}"
    return (
        f"{n_nodes} nodes, batch {p.batch}, {p.payload_size} B payload, {load}, "
        f"client batch {p.client_batch}"
    )


def _fmt(v: object, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def print_summary(result: dict[str, Any], out: Path) -> None:
    lat = result["latency_ms"]
    t = Table(title=f"medchain bench: {_title_from(result)}", show_header=False)
    t.add_column("metric", style="bold")
    t.add_column("value", justify="right")
    rows = [
        ("throughput (tx/s)", _fmt(result["throughput_tx_per_s"])),
        ("blocks/s", _fmt(result["blocks_per_s"], 2)),
        ("txs per block", _fmt(result["txs_per_block"])),
        (
            "latency p50 / p95 / p99 (ms)",
            f"{_fmt(lat['p50'])} / {_fmt(lat['p95'])} / {_fmt(lat['p99'])}",
        ),
        ("latency max (ms)", _fmt(lat["max"])),
        ("observation resolution (ms)", f"<= {result['observation_resolution_ms']} + RTT"),
        ("measured window (s)", _fmt(result["measured_seconds"], 2)),
        (
            "sent / committed / uncommitted",
            f"{_fmt(result['sent_txs'])} / {_fmt(result['committed_txs'])} / "
            f"{_fmt(result['uncommitted_txs'])}",
        ),
        ("view changes", _fmt(result["view_changes"])),
        ("errors", _fmt(sum(result["errors"].values()))),
        ("load generator CPU %", _fmt(result["loadgen_cpu_percent_mean"])),
        ("machine CPU % (all cores)", _fmt(result["system_cpu_percent_mean"])),
    ]
    for k, v in rows:
        t.add_row(k, v)
    stdout.print(t)
    nodes = Table(title="per node (measurement window)")
    for col in ("node", "pid", "CPU % mean", "CPU % max", "RSS MB mean", "RSS MB max"):
        nodes.add_column(col, justify="right")
    for n in result["nodes"]:
        nodes.add_row(
            str(n["id"]),
            _fmt(n["pid"]),
            _fmt(n["cpu_percent_mean"]),
            _fmt(n["cpu_percent_max"]),
            _fmt(n["rss_mb_mean"]),
            _fmt(n["rss_mb_max"]),
        )
    stdout.print(nodes)
    for w in result["warnings"]:
        stderr.print(f"[yellow]warning:[/] {w}")
    stdout.print(f"results in {out}")


def _title_from(result: dict[str, Any]) -> str:
    p = result["manifest"]["parameters"]
    load = f"rate {p['rate']:g}" if p["rate"] is not None else f"concurrency {p['concurrency']}"
    return (
        f"{result['manifest']['cluster']['nodes']} nodes, batch {p['batch']}, "
        f"{p['payload_size']} B, {load}"
    )


# =============================================================================================
# one run


def run_point(
    args: argparse.Namespace,
    p: BenchParams,
    out: Path,
    ui: BenchUI,
    scenario: BenchScenario | None,
) -> dict[str, Any]:
    """Run one benchmark point into ``out``; returns result.json's content."""
    out.mkdir(parents=True, exist_ok=True)
    started_at = dt.datetime.now(dt.UTC)
    if p.nodes is None:
        if scenario is not None:
            raise BenchError("--scenario needs a cluster the bench starts (--nodes N)")
        return _measure(p, running_cluster(args, p.urls), out, ui, None, started_at)
    prepare = scenario.prepare if scenario is not None else None
    with started_cluster(p, out, ui, keep=args.keep_cluster, prepare=prepare) as target:
        return _measure(p, target, out, ui, scenario, started_at)


def _measure(
    p: BenchParams,
    target: Target,
    out: Path,
    ui: BenchUI,
    scenario: BenchScenario | None,
    started_at: dt.datetime,
) -> dict[str, Any]:
    last = len(target.urls) - 1
    p = dataclasses.replace(p, observe=last if p.observe is None else p.observe)
    assert p.observe is not None
    if not 0 <= p.observe <= last:
        raise BenchError(f"--observe {p.observe}: the cluster has nodes 0..{last}")
    warnings: list[str] = []
    size, capped = pool_size(p, len(target.urls))
    if capped:
        warnings.append(f"the pre-signed pool was capped at {MAX_POOL_TXS} transactions")
    batch_bytes = p.batch * (p.payload_size + TX_OVERHEAD_BYTES)
    max_bytes = (target.consensus or {}).get("max_batch_bytes")
    if max_bytes and batch_bytes > max_bytes:
        warnings.append(
            f"--batch {p.batch} x {p.payload_size} B exceeds max_batch_bytes ({max_bytes}): "
            "blocks are capped by size, not count"
        )
    spec = LoadSpec(
        targets=target.urls,
        keys=target.keys,
        observe_url=target.urls[p.observe],
        payload_size=p.payload_size,
        client_batch=p.client_batch,
        pool_size=size,
        seed=p.seed,
        warmup_s=p.warmup_s,
        duration_s=p.duration_s,
        count=p.count,
        rate=p.rate,
        concurrency=p.concurrency,
        closed_until_commit=p.closed_until == "commit",
        poll_ms=p.poll_ms,
        drain_s=p.drain_s,
    )
    started: list[BenchScenario] = []

    def on_go() -> None:
        if scenario is not None and target.cluster_dir is not None:
            scenario.start(target.cluster_dir)
            started.append(scenario)

    try:
        load = drive_load(spec, target, p, ui, on_go)
    finally:
        scenario_report = started[0].stop() if started else None
    a = analyze(p, target, load, warnings)
    result = {**a.summary, "warnings": warnings}
    if scenario_report is not None:
        result["scenario"] = scenario_report
    files = {
        "result": "result.json",
        "timeline": "timeline.csv",
        "throughput_plot": "throughput.png",
        "latency_plot": "latency.png",
        "latency_distribution_plot": "latency_distribution.png",
    }
    result["files"] = files
    result["manifest"] = manifest(p, target, started_at, spec)
    title = _title(p, len(target.urls))
    write_timeline(out / files["timeline"], a.timeline, len(target.urls))
    plot_throughput(out / files["throughput_plot"], a, title)
    plot_latency(out / files["latency_plot"], a, title)
    plot_latency_distribution(out / files["latency_distribution_plot"], a, title)
    write_json(out / files["result"], result)
    return result


# =============================================================================================
# sweep


SUMMARY_METRICS: Final = (
    "throughput_tx_per_s",
    "blocks_per_s",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "latency_max_ms",
    "view_changes",
    "committed_txs",
    "uncommitted_txs",
    "errors",
)


def _summary_row(
    label: str, p: BenchParams, result: dict[str, Any] | None, error: str | None, out: Path
) -> dict[str, Any]:
    row: dict[str, Any] = {"point": label, "status": "ok" if error is None else "failed"}
    params = p.to_json()
    params.pop("urls")
    row.update(params)
    lat = (result or {}).get("latency_ms") or {}
    metrics = {
        "throughput_tx_per_s": (result or {}).get("throughput_tx_per_s"),
        "blocks_per_s": (result or {}).get("blocks_per_s"),
        "latency_p50_ms": lat.get("p50"),
        "latency_p95_ms": lat.get("p95"),
        "latency_p99_ms": lat.get("p99"),
        "latency_max_ms": lat.get("max"),
        "view_changes": (result or {}).get("view_changes"),
        "committed_txs": (result or {}).get("committed_txs"),
        "uncommitted_txs": (result or {}).get("uncommitted_txs"),
        "errors": sum((result or {}).get("errors", {}).values()) if result else None,
    }
    row.update(metrics)
    row["error"] = error
    row["dir"] = str(out / label)
    return row


def run_sweep(
    args: argparse.Namespace,
    points: list[BenchParams],
    varying: list[str],
    out: Path,
    ui: BenchUI,
    scenario: BenchScenario | None,
) -> tuple[list[dict[str, Any]], bool]:
    """Run every point in turn into OUT/<label>/; returns the summary rows and whether all
    points succeeded. A failed point is recorded and the sweep goes on; Ctrl-C ends it."""
    rows: list[dict[str, Any]] = []
    ok = True
    for k, p in enumerate(points, 1):
        label = p.label(varying)
        ui.note(f"sweep point {k}/{len(points)}: {label}")
        result: dict[str, Any] | None = None
        error: str | None = None
        try:
            result = run_point(args, p, out / label, ui, scenario)
        except (BenchError, ClusterError, ConfigError, KeyFileError) as e:
            error, ok = str(e), False
            ui.note(f"point {label} failed: {e}")
        interrupted = bool(result and result.get("interrupted"))
        rows.append(_summary_row(label, p, result, "interrupted" if interrupted else error, out))
        _write_sweep_summary(out, rows, varying)
        if interrupted:
            raise KeyboardInterrupt
    return rows, ok


def _write_sweep_summary(out: Path, rows: list[dict[str, Any]], varying: list[str]) -> None:
    write_json(out / "summary.json", {"varying": varying, "points": rows})
    with (out / "summary.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    plot_sweep(out / "sweep_throughput.png", rows, varying)


def plot_sweep(path: Path, rows: list[dict[str, Any]], varying: list[str]) -> None:
    """Throughput (and p50 latency) against the first varying parameter, one line per
    combination of the others."""
    fig = _figure(10.0, 4.5)
    tput_ax, lat_ax = fig.subplots(1, 2)
    x_name = varying[0] if varying else None
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        key = ", ".join(f"{v}={_fmt_number(row[v])}" for v in varying[1:]) or "all"
        groups.setdefault(key, []).append(row)
    for key, group in groups.items():
        ok = [r for r in group if r["throughput_tx_per_s"] is not None]
        xs = [r[x_name] if x_name else i for i, r in enumerate(ok)]
        tput_ax.plot(xs, [r["throughput_tx_per_s"] for r in ok], marker="o", label=key)
        lat_ok = [r for r in ok if r["latency_p50_ms"] is not None]
        lat_ax.plot(
            [r[x_name] if x_name else i for i, r in enumerate(lat_ok)],
            [r["latency_p50_ms"] for r in lat_ok],
            marker="o",
            label=key,
        )
    xlabel = x_name.replace("_", " ") if x_name else "point"
    tput_ax.set(xlabel=xlabel, ylabel="throughput (tx/s)", title="throughput")
    lat_ax.set(xlabel=xlabel, ylabel="p50 latency (ms)", title="median latency")
    for ax in (tput_ax, lat_ax):
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if len(groups) > 1:
            ax.legend(fontsize="small")
    fig.suptitle(f"medchain bench sweep over {', '.join(varying) or 'nothing'}")
    fig.tight_layout()
    fig.savefig(path)


def print_sweep(rows: list[dict[str, Any]], out: Path) -> None:
    t = Table(title=f"medchain bench sweep ({len(rows)} points; latency in ms)")
    t.add_column("point", no_wrap=True)
    for col in ("tx/s", "blocks/s", "p50", "p95", "p99", "views", "status"):
        t.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        t.add_row(
            r["point"],
            _fmt(r["throughput_tx_per_s"], 0),
            _fmt(r["blocks_per_s"], 1),
            _fmt(r["latency_p50_ms"], 0),
            _fmt(r["latency_p95_ms"], 0),
            _fmt(r["latency_p99_ms"], 0),
            _fmt(r["view_changes"]),
            r["status"],
        )
    stdout.print(t)
    stdout.print(f"results in {out} (summary.csv, summary.json, sweep_throughput.png)")


# =============================================================================================
# entry point


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Ignore SIGINT/SIGTERM for the duration (teardown must not be cut short)."""
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _default_out(sweep: bool) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return DEFAULT_OUT_ROOT / (f"{stamp}-sweep" if sweep else stamp)


def main_bench(args: argparse.Namespace) -> int:
    """``medchain bench [sweep]``: returns the exit status (0 ok, 1 error, 130 interrupted)."""
    # Ctrl-C must interrupt even where SIGINT arrives ignored (a background job of a
    # non-interactive shell starts with SIGINT ignored, and Python keeps it that way).
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM tears down too
    try:
        points, varying = build_points(args)
        scenario = load_scenario(args.scenario)
        sweep = args.mode == "sweep"
        out = (args.out or _default_out(sweep)).resolve()
        out.mkdir(parents=True, exist_ok=True)
        with BenchUI(stderr) as ui:
            if sweep:
                rows, ok = run_sweep(args, points, varying, out, ui, scenario)
            else:
                result = run_point(args, points[0], out, ui, scenario)
        if sweep:
            if args.json:
                sys.stdout.write(json.dumps({"varying": varying, "points": rows}, indent=2) + "\n")
            else:
                print_sweep(rows, out)
            return 0 if ok else 1
        if args.json:
            sys.stdout.write(json.dumps(result, indent=2) + "\n")
        else:
            print_summary(result, out)
        return EXIT_INTERRUPTED if result.get("interrupted") else 0
    except KeyboardInterrupt:
        stderr.print("medchain: interrupted (the bench's cluster and load generator are stopped)")
        return EXIT_INTERRUPTED
    except (BenchError, ClusterError, ConfigError, KeyFileError) as e:
        stderr.print(f"medchain: error: {e}", markup=False)
        return 1
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m scripts.bench ...`` (the same as ``medchain bench ...``)."""
    parser = argparse.ArgumentParser(prog="medchain")
    sub = parser.add_subparsers(dest="command", required=True)
    add_bench_parser(sub)
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
