"""The bench's parameters: the argparse table, the defaults, and the benchmark points it asks
for (one, or a sweep's cartesian product), each validated before anything starts."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from consensus.config import ReplicaConfig
from node.config import VOTE_LOG_SYNC
from node.ledger import MAX_PAYLOAD_BYTES

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
MAX_POOL_TXS: Final = 2_000_000
"""About 2.6 GB of signed 1 KB transactions: the most the bench will hold in memory. Enough
for a 30-minute open-loop run at 1,000 tx/s (1.98 million with the slack); 1,000,000 had
ended a 30-minute run at half of peak after 23 minutes, its pool spent."""
TX_OVERHEAD_BYTES: Final = 260
"""Approximate encoded size of a transaction beyond its payload (header, signature, framing)."""
CLOSED_UNTIL: Final = ("commit", "ack")
LATENCY_FROM: Final = ("long-poll", "status-poll")
"""Where a closed-loop commit time comes from: the accepting node's answer to a
``GET /tx/{id}?wait_ms=`` long poll (sent as the request is accepted, answered as the node
stores the block), or the observer's ``GET /status`` grid (every ``--poll-ms``)."""

SWEEPABLE: Final[dict[str, Callable[[str], Any]]] = {
    "nodes": int,
    "block_txs": int,
    "batch_timeout_ms": int,
    "inflight": int,
    "payload_size": int,
    "rate": float,
    "concurrency": int,
    "clients": int,
    "client_batch": int,
}
"""Parameters that take a comma-separated list in ``bench sweep`` (option name: element type)."""
CLUSTER_SIDE: Final = {
    "block_txs": "max_batch_txs",
    "batch_timeout_ms": "batch_timeout_ms",
    "inflight": "max_inflight",
}
"""Bench parameters that go into the nodes' [consensus] config (bench name: config key)."""


class BenchError(RuntimeError):
    """An error for the user: printed without a traceback, exit status 1."""


def _replica_default(name: str) -> int:
    for f in dataclasses.fields(ReplicaConfig):
        if f.name == name and isinstance(f.default, int):
            return f.default
    raise KeyError(name)


@dataclass(frozen=True, slots=True)
class BenchParams:
    """One benchmark point: every parameter, resolved to its value (no "default" left)."""

    nodes: int | None
    """Cluster size when the bench starts the cluster; None when it targets a running one."""
    urls: tuple[str, ...]
    """Target node URLs of a running cluster (empty when the bench starts one)."""
    block_txs: int
    """Most transactions per block, consensus max_batch_txs."""
    batch_timeout_ms: int
    inflight: int
    payload_size: int
    duration_s: float | None
    count: int | None
    warmup_s: float
    rate: float | None
    concurrency: int | None
    """Closed loop: requests outstanding at once (``clients * outstanding`` if --clients)."""
    clients: int | None
    """Closed loop by clients: how many, each with ``outstanding`` requests (None: given as
    --concurrency)."""
    outstanding: int
    client_batch: int
    closed_until: str
    latency_from: str
    """One of LATENCY_FROM; always "status-poll" in open loop or --closed-until ack."""
    vote_log_sync: str
    """The nodes' [node] vote_log_sync: "full" fsyncs every vote before it is sent."""
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
            "block_txs": "block",
            "batch_timeout_ms": "bto",
            "inflight": "inflight",
            "payload_size": "payload",
            "rate": "rate",
            "concurrency": "conc",
            "clients": "clients",
            "client_batch": "cb",
        }
        parts = [f"{short[name]}{fmt_number(getattr(self, name))}" for name in varying]
        return "-".join(parts) or "run"


def fmt_number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``medchain bench`` (and ``bench sweep``)."""
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
        "--block-txs",
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
        "--vote-log-sync",
        choices=VOTE_LOG_SYNC,
        default="full",
        help="the started nodes' [node] vote_log_sync: full fsyncs each vote before sending it "
        "(about 4 ms a round on the reference machine, three rounds a block), normal does not",
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
        "--clients",
        default=None,
        help="closed loop: clients, each with --outstanding requests at once (instead of "
        "--concurrency: C clients x K outstanding = C*K requests outstanding)",
    )
    load.add_argument(
        "--outstanding",
        type=int,
        default=None,
        help="closed loop: requests each of --clients keeps outstanding (default 1)",
    )
    load.add_argument(
        "--batch",
        "--client-batch",
        dest="client_batch",
        default=None,
        help="transactions (records) per submit request (default "
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
        "--latency-from",
        choices=LATENCY_FROM,
        default=None,
        help="closed loop until commit: commit times from a GET /tx/{id}?wait_ms= long poll "
        "of the accepting node per request (default), or from the --poll-ms GET /status grid "
        "(open loop always uses the grid)",
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
        if args.vote_log_sync != "full":
            given.append("vote_log_sync")
        if given:
            raise BenchError(
                f"--{given[0].replace('_', '-')} is a cluster-side parameter: it only applies "
                "when the bench starts the cluster (use --nodes N)"
            )
    elif args.key is not None:
        raise BenchError("--key is for a running cluster (--nodes URL,... or --dir)")
    if lists["rate"] is not None and lists["concurrency"] is not None:
        raise BenchError("--rate (open loop) and --concurrency (closed loop) exclude each other")
    if lists["clients"] is not None and lists["rate"] is not None:
        raise BenchError("--rate (open loop) and --clients (closed loop) exclude each other")
    if lists["clients"] is not None and lists["concurrency"] is not None:
        raise BenchError("--clients (times --outstanding) and --concurrency exclude each other")
    if args.outstanding is not None and lists["clients"] is None:
        raise BenchError("--outstanding is per client: give --clients too")
    if args.count is not None and args.duration is not None:
        raise BenchError("--count and --duration exclude each other")
    defaults: dict[str, list[Any]] = {
        "nodes": [None] if running else [DEFAULT_NODES],
        "block_txs": [_replica_default("max_batch_txs")],
        "batch_timeout_ms": [_replica_default("batch_timeout_ms")],
        "inflight": [_replica_default("max_inflight")],
        "payload_size": [DEFAULT_PAYLOAD_BYTES],
        "rate": [None],
        "concurrency": [None]
        if lists["rate"] is not None or lists["clients"] is not None
        else [DEFAULT_CONCURRENCY],
        "clients": [None],
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
    rate, concurrency, clients = v["rate"], v["concurrency"], v["clients"]
    outstanding = 1 if args.outstanding is None else args.outstanding
    if clients is not None:
        concurrency = clients * outstanding
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
        block_txs=v["block_txs"],
        batch_timeout_ms=v["batch_timeout_ms"],
        inflight=v["inflight"],
        payload_size=v["payload_size"],
        duration_s=duration,
        count=args.count,
        warmup_s=args.warmup,
        rate=rate,
        concurrency=concurrency,
        clients=clients,
        outstanding=outstanding,
        client_batch=client_batch,
        closed_until=args.closed_until,
        latency_from=_latency_from(args.latency_from, rate, args.closed_until),
        vote_log_sync=args.vote_log_sync,
        seed=args.seed,
        poll_ms=args.poll_ms,
        drain_s=args.drain,
        presign=args.presign,
        observe=args.observe,
    )
    _validate(params)
    return params


def _latency_from(asked: str | None, rate: float | None, closed_until: str) -> str:
    """Long polls only where a request waits for its commit (closed loop until commit): an
    open loop's requests do not wait, and a poll per request would add load of its own."""
    if rate is not None or closed_until != "commit":
        if asked == "long-poll":
            raise BenchError("--latency-from long-poll is for a closed loop until commit")
        return "status-poll"
    return asked or "long-poll"


def _validate(p: BenchParams) -> None:
    checks: list[tuple[bool, str]] = [
        (p.nodes is None or 4 <= p.nodes <= 64, f"--nodes must be in 4..64, got {p.nodes}"),
        (p.block_txs >= 1, "--block-txs must be positive"),
        (p.batch_timeout_ms >= 0, "--batch-timeout-ms must not be negative"),
        (p.inflight >= 1, "--inflight must be positive"),
        (
            0 <= p.payload_size <= MAX_PAYLOAD_BYTES,
            f"--payload-size must be in 0..{MAX_PAYLOAD_BYTES} (the node's payload limit)",
        ),
        (p.duration_s is None or p.duration_s > 0, "--duration must be positive"),
        (p.count is None or p.count >= 1, "--count must be positive"),
        (p.warmup_s >= 0, "--warmup must not be negative"),
        (p.rate is None or p.rate > 0, "--rate must be positive"),
        (p.clients is None or p.clients >= 1, "--clients must be positive"),
        (p.outstanding >= 1, "--outstanding must be positive"),
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
