"""``medchain``: the command line of a medchain consortium.

    medchain init     --nodes N --dir DIR      keys and one config per hospital node
    medchain node     --config FILE            run one node in the foreground
    medchain cluster  up|status|down|...       run a local cluster of node processes
    medchain submit   ...                      sign patient records and commit them
    medchain verify   --node URL | --db FILE   check a whole chain offline

Every command that prints data takes ``--json`` (machine-readable, on stdout); human output
goes through ``rich``. Errors go to stderr as ``medchain: error: ...`` with exit status 1
(2 for bad usage), so scripts can rely on the exit status alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from consensus.hashing import GENESIS_HASH
from node import codec, ledger
from node.api import msgpack_tx_body
from node.argtypes import positive_float as _positive_float
from node.argtypes import positive_int as _positive_int
from node.config import (
    ClientEntry,
    ConfigError,
    NodeConfig,
    ReplicaEntry,
    load_config,
    make_node_config,
    write_config,
)
from node.crypto import KeyFileError, generate_keypair, load_key, save_key
from node.store import Store, StoreError
from scripts.cluster import (
    DEFAULT_CLUSTER_DIR,
    STARTUP_TIMEOUT_S,
    STOP_TIMEOUT_S,
    ClusterError,
    ClusterLayout,
    ClusterProcesses,
    fetch_status,
    hospital_id,
)

DEFAULT_NODES = 4
DEFAULT_HOST = "127.0.0.1"
MIN_NODES = 4
MAX_NODES = 64
SUBMIT_BATCH = 200
"""Transactions per POST /tx (the node accepts up to NodeLimits.max_batch_request_txs)."""
SUBMIT_TIMEOUT_S = 120.0
HTTP_ATTEMPTS = 8
"""Tries of one HTTP request on 503 or a connection error before giving up."""
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 3.0
WAIT_POLL_MS = 10_000
"""Long-poll length of one GET /tx/{id}?wait_ms= (the node caps it at its tx_wait_max_ms)."""
WAIT_CONCURRENCY = 32
BLOCKS_PAGE = 100
MAX_DATA_BYTES = 1 << 20
PORT_POOL_START = 20_000
"""Listening ports for `init` are drawn from PORT_POOL_START up to the ephemeral range."""
PORT_TRIES = 64


def _console(*, to_stderr: bool) -> Console:
    # Redirected output (CI logs, `| less`) gets wide tables instead of rich's 80 columns.
    stream = sys.stderr if to_stderr else sys.stdout
    width = None if stream.isatty() or "COLUMNS" in os.environ else 160
    return Console(stderr=to_stderr, highlight=False, soft_wrap=True, width=width)


stdout = _console(to_stderr=False)
stderr = _console(to_stderr=True)


class CliError(RuntimeError):
    """An error for the user: printed without a traceback, exit status 1."""


# =============================================================================================
# init


@dataclass(frozen=True, slots=True)
class InitResult:
    root: Path
    nodes: tuple[tuple[int, str, Path], ...]
    """(index, url, config path) of every node."""


def free_ports(count: int, host: str = DEFAULT_HOST) -> list[int]:
    """``count`` distinct ports free right now on ``host``.

    Drawn at random from below the kernel's ephemeral range when there is room: a listening
    port inside that range can be taken, between a node's stop and its restart, by the local
    end of some outgoing connection (peers reconnect constantly). Each candidate is bound, all
    held at once (so none repeats), then released. Falls back to the kernel's choice (port 0).
    """
    socks: list[socket.socket] = []
    try:
        low = _ephemeral_low()
        pool = range(PORT_POOL_START, low) if low - PORT_POOL_START >= 1000 else range(0)
        for _ in range(count):
            socks.append(_bind_free(host, pool))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _bind_free(host: str, pool: range) -> socket.socket:
    for port in (random.choice(pool) for _ in range(PORT_TRIES if pool else 0)):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((host, port))
            return s
        except OSError:
            s.close()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((host, 0))
    except OSError:
        s.close()
        raise
    return s


def _ephemeral_low() -> int:
    """First port of the kernel's ephemeral range (Linux; IANA's 49152 elsewhere)."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 49152


def check_ports_free(ports: Sequence[int], host: str = DEFAULT_HOST) -> None:
    for port in ports:
        if not 1 <= port <= 65_535:
            raise CliError(f"port {port} is out of range 1..65535")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError as exc:
                raise CliError(f"port {port} on {host} is not free: {exc.strerror}") from exc


def init_cluster(
    root: Path,
    n: int,
    *,
    base_port: int | None = None,
    force: bool = False,
    host: str = DEFAULT_HOST,
    consensus: Mapping[str, int] | None = None,
) -> InitResult:
    """Create keys (node, hospital client, operator) and one config per node under ``root``.

    Refuses to touch an existing cluster unless ``force``; never replaces a running one.
    Paths inside the configs are relative to ``root``, so the directory can be moved whole.
    """
    if not MIN_NODES <= n <= MAX_NODES:
        raise CliError(f"--nodes must be in {MIN_NODES}..{MAX_NODES} (n = 3f+1), got {n}")
    layout = ClusterLayout(root)
    replacing = layout.exists()
    if replacing:
        if not force:
            raise CliError(
                f"{layout.root} already holds a cluster ({len(layout.node_indices())} nodes); "
                "use --force to replace it (destroys its keys and chains)"
            )
        _refuse_if_running(layout)
    # Everything that can fail (ports, config validation) comes before anything is written,
    # so a failure leaves an existing cluster untouched and no half-written one behind.
    ports = list(range(base_port, base_port + n)) if base_port is not None else free_ports(n, host)
    if base_port is not None:
        check_ports_free(ports, host)
    node_keys = [generate_keypair() for _ in range(n)]
    client_keys = [generate_keypair() for _ in range(n)]
    operator_key = generate_keypair()
    replicas = [
        ReplicaEntry(id=i, url=f"http://{host}:{ports[i]}", public_key=node_keys[i][1])
        for i in range(n)
    ]
    clients = [ClientEntry(hospital=hospital_id(i), public_key=client_keys[i][1]) for i in range(n)]
    configs = [
        make_node_config(
            node_id=i,
            host=host,
            port=ports[i],
            data_dir=layout.data_dir(i).relative_to(layout.root),
            key_file=layout.node_key(i).relative_to(layout.root),
            replicas=replicas,
            clients=clients,
            operator_public_key=operator_key[1],
            consensus=consensus,
        )
        for i in range(n)
    ]

    if replacing:
        _remove_cluster(layout)
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.keys_dir.mkdir(mode=0o700, exist_ok=True)
    os.chmod(layout.keys_dir, 0o700)
    for i in range(n):
        save_key(layout.node_key(i), *node_keys[i])
        save_key(layout.client_key(hospital_id(i)), *client_keys[i])
    save_key(layout.operator_key, *operator_key)
    for i, config in enumerate(configs):
        write_config(layout.config_path(i), config)
    return InitResult(
        root=layout.root,
        nodes=tuple((i, replicas[i].url, layout.config_path(i)) for i in range(n)),
    )


def _refuse_if_running(layout: ClusterLayout) -> None:
    running = ClusterProcesses(layout.root).running()
    if running:
        raise CliError(
            f"nodes {running} of the cluster in {layout.root} are running; "
            f"stop them first: medchain cluster down --dir {layout.root}"
        )


def _remove_cluster(layout: ClusterLayout) -> None:
    """Delete what init wrote (never the directory itself: it may be the user's)."""
    for sub in (layout.keys_dir, layout.data_root, layout.run_dir, layout.logs_dir):
        if sub.exists():
            shutil.rmtree(sub)
    for i in layout.node_indices():
        layout.config_path(i).unlink()


def cmd_init(args: argparse.Namespace) -> int:
    result = init_cluster(args.dir, args.nodes, base_port=args.base_port, force=args.force)
    _print_endpoints(args, result.root, [(i, url) for i, url, _ in result.nodes], "initialised")
    return 0


def _print_endpoints(
    args: argparse.Namespace, root: Path, nodes: Sequence[tuple[int, str]], what: str
) -> None:
    if args.json:
        _print_json(
            {
                "dir": str(root),
                "nodes": [
                    {"id": i, "url": url, "config": str(ClusterLayout(root).config_path(i))}
                    for i, url in nodes
                ],
            }
        )
        return
    table = Table(title=f"medchain cluster {what}: {root}")
    table.add_column("node", justify="right")
    table.add_column("hospital")
    table.add_column("url")
    table.add_column("config")
    for i, url in nodes:
        table.add_row(str(i), hospital_id(i), url, str(ClusterLayout(root).config_path(i)))
    stdout.print(table)


# =============================================================================================
# node


def cmd_node(args: argparse.Namespace) -> int:
    # Imported here: only this command needs the server, and the others stay usable (init,
    # verify, cluster down) even if the node's runtime cannot be imported.
    from node.runtime import run_node

    try:
        return run_node(args.config, full_verify=args.full_verify)
    except (ConfigError, KeyFileError, ValueError) as exc:
        raise CliError(f"cannot start node from {args.config}: {exc}") from exc


# =============================================================================================
# cluster


def cmd_cluster_up(args: argparse.Namespace) -> int:
    layout = ClusterLayout(args.dir)
    existing = layout.node_indices()
    if not existing:
        init_cluster(args.dir, args.nodes or DEFAULT_NODES, base_port=args.base_port)
    elif args.nodes is not None and args.nodes != len(existing):
        raise CliError(
            f"{layout.root} holds a {len(existing)}-node cluster, not {args.nodes}; "
            "use another --dir or `medchain init --force`"
        )
    procs = ClusterProcesses(args.dir)
    try:
        started = procs.up(timeout=args.timeout)
    except ClusterError as exc:
        raise CliError(
            f"{exc}\nstop the rest with: medchain cluster down --dir {layout.root}"
        ) from exc
    specs = procs.specs()
    if not args.json:
        already = len(specs) - len(started)
        stderr.print(f"started {len(started)} node(s), {already} already running")
    _print_endpoints(args, layout.root, [(s.index, s.url) for s in specs], "up")
    return 0


def cluster_status(root: Path) -> list[dict[str, Any]]:
    """One row per node: process state plus what its GET /status says (fetched in parallel)."""
    procs = ClusterProcesses(root)
    specs = procs.specs()
    if not specs:
        raise CliError(f"{procs.root}: no cluster here (run `medchain cluster up` first)")
    states = [procs.state(s.index) for s in specs]
    with ThreadPoolExecutor(max_workers=len(specs)) as pool:
        statuses = list(
            # A suspended (SIGSTOP) node would only make us wait for the HTTP timeout.
            pool.map(
                lambda sp, st: fetch_status(sp.url) if st.alive and not st.stopped else None,
                specs,
                states,
            )
        )
    rows = []
    for spec, state, status in zip(specs, states, statuses, strict=True):
        st = status or {}
        rows.append(
            {
                "id": spec.index,
                "pid": state.pid,
                "url": spec.url,
                "view": st.get("view"),
                "primary": st.get("primary"),
                "height": st.get("height"),
                "head_hash": st.get("head_hash"),
                "alive": state.alive,
                "suspended": state.stopped,
                "serving": status is not None,
            }
        )
    return rows


def cmd_cluster_status(args: argparse.Namespace) -> int:
    rows = cluster_status(args.dir)
    if args.json:
        _print_json(rows)
        return 0
    table = Table(title=f"medchain cluster: {ClusterLayout(args.dir).root}")
    for col, justify in (
        ("id", "right"),
        ("pid", "right"),
        ("url", "left"),
        ("view", "right"),
        ("primary", "right"),
        ("height", "right"),
        ("head_hash", "left"),
        ("alive", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        alive = "[green]yes[/]" if r["alive"] else "[red]no[/]"
        if r["suspended"]:
            alive = "[yellow]suspended[/]"
        elif r["alive"] and not r["serving"]:
            alive = "[yellow]not answering[/]"
        table.add_row(
            str(r["id"]),
            _dash(r["pid"]),
            r["url"],
            _dash(r["view"]),
            _dash(r["primary"]),
            _dash(r["height"]),
            _short_hash(r["head_hash"]),
            alive,
        )
    stdout.print(table)
    return 0


def cmd_cluster_down(args: argparse.Namespace) -> int:
    procs = ClusterProcesses(args.dir)
    stopped = procs.down(timeout=args.timeout)
    if args.json:
        _print_json({"dir": str(procs.root), "stopped": stopped})
    else:
        stdout.print(f"stopped {len(stopped)} node(s) of {procs.root}")
    return 0


def cmd_cluster_start_node(args: argparse.Namespace) -> int:
    procs = ClusterProcesses(args.dir)
    pid = procs.start(_node_index(procs, args.index))
    procs.wait_ready([args.index], timeout=args.timeout)
    return _report_node(args, {"id": args.index, "pid": pid, "action": "started"})


def cmd_cluster_stop_node(args: argparse.Namespace) -> int:
    procs = ClusterProcesses(args.dir)
    was_running = procs.stop(_node_index(procs, args.index), timeout=args.timeout)
    return _report_node(args, {"id": args.index, "was_running": was_running, "action": "stopped"})


def cmd_cluster_kill_node(args: argparse.Namespace) -> int:
    procs = ClusterProcesses(args.dir)
    pid = procs.kill(_node_index(procs, args.index), args.signal)
    name = signal.Signals(args.signal).name
    return _report_node(args, {"id": args.index, "pid": pid, "action": f"sent {name}"})


def cmd_cluster_wipe_node(args: argparse.Namespace) -> int:
    procs = ClusterProcesses(args.dir)
    procs.wipe(_node_index(procs, args.index))
    return _report_node(args, {"id": args.index, "action": "wiped"})


def _node_index(procs: ClusterProcesses, index: int) -> int:
    if index not in procs.indices():
        raise CliError(f"no node {index} in {procs.root} (nodes: {procs.indices()})")
    return index


def _report_node(args: argparse.Namespace, result: dict[str, Any]) -> int:
    if args.json:
        _print_json(result)
    else:
        extra = f" (pid {result['pid']})" if result.get("pid") else ""
        stdout.print(f"node {result['id']}: {result['action']}{extra}")
    return 0


def _parse_signal(text: str) -> int:
    name = text.upper()
    if name.isdigit():
        return int(name)
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise argparse.ArgumentTypeError(f"unknown signal {text!r}") from None


# =============================================================================================
# output helpers


def _print_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")
    sys.stdout.flush()


def _dash(value: object) -> str:
    return "-" if value is None else str(value)


def _short_hash(value: object) -> str:
    return "-" if not isinstance(value, str) else value[:16]


# =============================================================================================
# submit


@dataclass(frozen=True, slots=True)
class Record:
    """One patient record to put on chain (the payload is what the tx's hash covers)."""

    patient: str
    record_type: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Receipt:
    tx_id: str
    height: int | None
    """Committed height, or None when the caller did not wait."""
    node: str


@dataclass(frozen=True, slots=True)
class SubmitTarget:
    url: str
    client_secret: bytes
    hospital: str


_RECORD_TYPES = ("observation", "lab-result", "prescription", "imaging-report", "discharge-note")


def synthetic_records(
    count: int, *, patient: str | None = None, record_type: str | None = None, run: str = ""
) -> Iterator[Record]:
    """``count`` plausible records for load and demos: pseudonymous patients, rotating types,
    a small JSON payload. ``run`` tags payloads so two runs never look alike."""
    run = run or os.urandom(4).hex()
    for k in range(count):
        body = {"run": run, "seq": k, "value": round(36.0 + (k % 30) / 10, 1), "unit": "C"}
        yield Record(
            patient=patient or f"patient-{k % 97:04d}",
            record_type=record_type or _RECORD_TYPES[k % len(_RECORD_TYPES)],
            payload=json.dumps(body, separators=(",", ":")).encode(),
        )


def read_data_arg(text: str) -> bytes:
    """``--data``: literal text, or ``@FILE`` for a file's bytes (bounded)."""
    if not text.startswith("@"):
        return text.encode()
    path = Path(text[1:])
    try:
        size = path.stat().st_size
        if size > MAX_DATA_BYTES:
            raise CliError(f"--data file {path} is {size} bytes, limit {MAX_DATA_BYTES}")
        return path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read --data file {path}: {exc.strerror}") from exc


def build_envelopes(target: SubmitTarget, records: Sequence[Record]) -> list[ledger.TxEnvelope]:
    try:
        return [
            ledger.make_transaction(
                target.client_secret, target.hospital, r.patient, r.record_type, r.payload
            )
            for r in records
        ]
    except ledger.LedgerError as exc:
        raise CliError(f"invalid record: {exc.reason}") from exc


class _Transient(Exception):
    """A failure worth retrying: 503, 502/504, or a connection problem."""


async def _backoff(attempt: int, deadline: float) -> None:
    delay = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2**attempt) * random.uniform(0.5, 1.0)
    await asyncio.sleep(max(0.0, min(delay, deadline - time.monotonic())))


async def _post_batch(
    session: aiohttp.ClientSession, url: str, envs: Sequence[ledger.TxEnvelope], deadline: float
) -> None:
    """POST /tx one batch until every tx is accepted; retries 503 and connection errors with
    backoff (bounded attempts and deadline). Submitting is idempotent on the node, so a retry
    after a lost answer is safe."""
    pending = list(envs)
    last_problem = ""
    for attempt in range(HTTP_ATTEMPTS):
        if attempt:
            await _backoff(attempt - 1, deadline)
        if time.monotonic() >= deadline:
            break
        try:
            status, doc = await _http_json(
                session,
                "POST",
                f"{url}/tx",
                data=msgpack_tx_body(pending),
                headers={"Content-Type": "application/msgpack"},
                deadline=deadline,
            )
        except _Transient as exc:
            last_problem = str(exc)
            continue
        rejected = doc.get("rejected") if isinstance(doc, dict) else None
        if status == 202:
            if not rejected:
                return
            # Some were turned away (typically a full mempool): retry just those.
            keep = {r["index"] for r in rejected if isinstance(r, dict) and "index" in r}
            last_problem = "; ".join(str(r.get("error")) for r in rejected[:3])
            pending = [env for i, env in enumerate(pending) if i in keep]
            continue
        if status == 503:
            last_problem = _error_text(doc) or "node overloaded (503)"
            continue
        raise CliError(f"{url} refused the transactions ({status}): {_error_text(doc)}")
    raise CliError(
        f"{url}: {len(pending)} transaction(s) not accepted after {HTTP_ATTEMPTS} attempts "
        f"or the deadline: {last_problem}"
    )


async def _wait_committed(
    session: aiohttp.ClientSession,
    url: str,
    env: ledger.TxEnvelope,
    deadline: float,
) -> int:
    """Long-poll GET /tx/{id}?wait_ms= until committed; returns the height. A node that does
    not know the tx (404: it restarted and lost its mempool) gets it submitted again."""
    tx_hex = env.tx_id.hex()
    failures = 0
    resubmits = 0
    while True:
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0:
            raise CliError(f"transaction {tx_hex} not committed on {url} before the timeout")
        wait_ms = min(WAIT_POLL_MS, remaining_ms)
        try:
            status, doc = await _http_json(
                session, "GET", f"{url}/tx/{tx_hex}?wait_ms={wait_ms}", deadline=deadline
            )
        except _Transient as exc:
            failures += 1
            if failures >= HTTP_ATTEMPTS:
                raise CliError(f"{url}: cannot query transaction {tx_hex}: {exc}") from exc
            await _backoff(failures - 1, deadline)
            continue
        failures = 0
        if status == 200 and isinstance(doc, dict) and doc.get("status") == "committed":
            height = doc.get("height")
            if type(height) is not int:
                raise CliError(f"{url}: committed transaction {tx_hex} has no valid height")
            return height
        if status == 404:
            await _post_batch(session, url, [env], deadline)
            await _backoff(resubmits, deadline)  # pace a node that keeps forgetting it
            resubmits += 1
        elif status != 200:
            raise CliError(f"{url}: GET /tx/{tx_hex} answered {status}: {_error_text(doc)}")


async def _http_json(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    deadline: float,
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, Any]:
    """One request; (status, parsed JSON body or None). Raises _Transient for retryable
    failures (connection problems, timeouts, 502/504)."""
    # Long polls need room beyond their wait_ms; never past the caller's deadline.
    timeout = aiohttp.ClientTimeout(total=max(1.0, deadline - time.monotonic() + 1.0))
    try:
        async with session.request(
            method, url, data=data, headers=headers, timeout=timeout
        ) as resp:
            body = await resp.content.read(4 << 20)
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _Transient(f"{type(exc).__name__}: {exc}") from exc
    if status in (502, 504):
        raise _Transient(f"HTTP {status}")
    try:
        doc = json.loads(body) if body else None
    except ValueError:
        doc = None
    return status, doc


def _error_text(doc: object) -> str:
    if isinstance(doc, dict):
        parts = [str(doc[k]) for k in ("error", "detail") if doc.get(k)]
        return ": ".join(parts)
    return ""


async def submit_records(
    target: SubmitTarget,
    records: Sequence[Record],
    *,
    wait: bool,
    timeout: float = SUBMIT_TIMEOUT_S,
    batch_size: int = SUBMIT_BATCH,
    on_progress: Callable[[str, int], None] | None = None,
) -> list[Receipt]:
    """Sign ``records`` as ``target.hospital``, POST them in batches and, with ``wait``, wait
    until each is committed. ``on_progress(phase, n)`` reports n more txs "sent"/"committed"."""
    envs = build_envelopes(target, records)
    deadline = time.monotonic() + timeout
    progress = on_progress or (lambda phase, n: None)
    connector = aiohttp.TCPConnector(limit=WAIT_CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        for start in range(0, len(envs), batch_size):
            chunk = envs[start : start + batch_size]
            await _post_batch(session, target.url, chunk, deadline)
            progress("sent", len(chunk))
        heights: list[int | None] = [None] * len(envs)
        if wait:
            gate = asyncio.Semaphore(WAIT_CONCURRENCY)

            async def wait_one(i: int) -> None:
                async with gate:
                    heights[i] = await _wait_committed(session, target.url, envs[i], deadline)
                progress("committed", 1)

            await asyncio.gather(*(wait_one(i) for i in range(len(envs))))
    return [
        Receipt(tx_id=env.tx_id.hex(), height=heights[i], node=target.url)
        for i, env in enumerate(envs)
    ]


def _submit_target(args: argparse.Namespace) -> SubmitTarget:
    if args.node:
        if not args.key:
            raise CliError("--node needs --key (the hospital client's key file)")
        url, key_path, hospital = args.node.rstrip("/"), Path(args.key), args.hospital
    else:
        layout = ClusterLayout(args.dir)
        indices = layout.node_indices()
        if not indices:
            raise CliError(f"{layout.root}: no cluster here (run `medchain cluster up` first)")
        if args.node_index not in indices:
            raise CliError(f"no node {args.node_index} in {layout.root} (nodes: {indices})")
        url = _load_config(layout.config_path(args.node_index)).self_url
        key_path = Path(args.key) if args.key else layout.client_key(args.hospital)
        hospital = args.hospital
    try:
        secret, _public = load_key(key_path)
    except KeyFileError as exc:
        raise CliError(str(exc)) from exc
    return SubmitTarget(url=url, client_secret=secret, hospital=hospital)


def cmd_submit(args: argparse.Namespace) -> int:
    target = _submit_target(args)
    if args.count is not None:
        if args.count < 1:
            raise CliError("--count must be at least 1")
        records = list(synthetic_records(args.count, patient=args.patient, record_type=args.type))
    else:
        if not (args.patient and args.type and args.data is not None):
            raise CliError("give --patient, --type and --data for one record, or --count K")
        records = [Record(args.patient, args.type, read_data_arg(args.data))]

    if args.json:
        receipts = asyncio.run(
            submit_records(target, records, wait=args.wait, timeout=args.timeout)
        )
        _print_json([{"tx_id": r.tx_id, "height": r.height, "node": r.node} for r in receipts])
        return 0
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
    ) as bar:
        tasks = {"sent": bar.add_task("submitted", total=len(records))}
        if args.wait:
            tasks["committed"] = bar.add_task("committed", total=len(records))
        receipts = asyncio.run(
            submit_records(
                target,
                records,
                wait=args.wait,
                timeout=args.timeout,
                on_progress=lambda phase, n: bar.advance(tasks[phase], n),
            )
        )
    heights = [r.height for r in receipts if r.height is not None]
    where = f" at heights {min(heights)}..{max(heights)}" if heights else ""
    state = "committed" if args.wait else "submitted"
    stdout.print(f"{len(receipts)} record(s) {state} via {target.url}{where}")
    if len(receipts) == 1:
        stdout.print(f"tx_id {receipts[0].tx_id}")
    return 0


def _load_config(path: Path) -> NodeConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise CliError(str(exc)) from exc


# =============================================================================================
# verify


@dataclass(frozen=True, slots=True)
class Consortium:
    """What a chain is verified against: replica keys (certificates) and client keys (txs)."""

    replica_publics: tuple[bytes, ...]
    registry: ledger.ClientRegistry
    source: str
    """Where the keys came from (a config file, or the node itself)."""


def consortium_from_config(config: NodeConfig, source: str) -> Consortium:
    return Consortium(
        replica_publics=tuple(config.replica_publics),
        registry=ledger.ClientRegistry(config.client_keys()),
        source=source,
    )


def consortium_from_status(status: Mapping[str, Any], url: str) -> Consortium:
    """Keys as the node publishes them in GET /status (weaker: the node vouches for itself)."""
    try:
        replicas = [bytes.fromhex(r["public_key"]) for r in status["replicas"]]
        clients = [(bytes.fromhex(c["public_key"]), str(c["hospital"])) for c in status["clients"]]
        registry = ledger.ClientRegistry(clients)
    except (KeyError, TypeError, ValueError) as exc:
        raise CliError(
            f"{url}/status does not publish the consortium's keys ({exc}); pass --config"
        ) from exc
    return Consortium(tuple(replicas), registry, source=f"{url}/status")


class _FetchError(Exception):
    def __init__(self, height: int, reason: str) -> None:
        super().__init__(reason)
        self.height = height
        self.reason = reason


def _http_get_json(url: str, timeout: float = 10.0) -> Any:
    last = ""
    for attempt in range(HTTP_ATTEMPTS):
        if attempt:
            time.sleep(min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2**attempt))
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return json.loads(resp.read(64 << 20))
        except urllib.error.HTTPError as exc:
            if exc.code != 503:
                raise CliError(f"GET {url}: HTTP {exc.code}") from exc
            last = "HTTP 503"
        except (OSError, ValueError) as exc:
            last = str(exc)
    raise CliError(f"GET {url} failed after {HTTP_ATTEMPTS} attempts: {last}")


def fetch_blocks(url: str, up_to: int, page: int = BLOCKS_PAGE) -> Iterator[ledger.Block]:
    """Blocks 1..up_to from a node, a page at a time (bounded memory: verify streams them)."""
    next_height = 1
    while next_height <= up_to:
        limit = min(page, up_to - next_height + 1)
        doc = _http_get_json(f"{url}/blocks?from={next_height}&limit={limit}&payload=1")
        items = doc.get("blocks") if isinstance(doc, dict) else None
        if not isinstance(items, list) or not items:
            raise _FetchError(next_height, f"node served no block at height {next_height}")
        for item in items:
            try:
                block = ledger.block_from_json(item)
            except (KeyError, TypeError, ValueError, codec.CodecError) as exc:
                raise _FetchError(next_height, f"malformed block: {exc}") from exc
            yield block
            next_height = block.height + 1
            if next_height > up_to:
                return


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
    except _FetchError as exc:
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


def verify_node(url: str, keys: Consortium | None = None) -> VerifyResult:
    """Fetch a node's whole chain (up to its height when we start) and verify it."""
    url = url.rstrip("/")
    status = _http_get_json(f"{url}/status")
    if not isinstance(status, dict) or type(status.get("height")) is not int:
        raise CliError(f"{url}/status did not report a height")
    keys = keys or consortium_from_status(status, url)
    return verify_blocks(url, fetch_blocks(url, status["height"]), keys)


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
                    raise _FetchError(height, f"stored block does not decode: {exc}") from exc
            next_height = page[-1][0] + 1

    try:
        with Store(db_path) as store:
            return verify_blocks(str(db_path), blocks(store), keys)
    except (StoreError, sqlite3.Error) as exc:
        raise CliError(f"cannot read {db_path}: {exc}") from exc


def cmd_verify(args: argparse.Namespace) -> int:
    config_keys = None
    if args.config:
        config_keys = consortium_from_config(_load_config(args.config), str(args.config))
    if args.db:
        if config_keys is None:
            raise CliError("--db needs --config (the consortium's keys)")
        results = [verify_db(args.db, config_keys)]
    elif args.node:
        results = [verify_node(args.node, config_keys)]
    else:
        layout = ClusterLayout(args.dir)
        if not layout.node_indices():
            raise CliError(f"{layout.root}: no cluster here; give --node URL or --db FILE")
        results = []
        for i in layout.node_indices():
            config = _load_config(layout.config_path(i))
            keys = config_keys or consortium_from_config(config, str(layout.config_path(i)))
            results.append(verify_node(config.self_url, keys))
    ok = all(r.ok for r in results)
    if args.json:
        docs = [r.to_json() for r in results]
        _print_json(docs if not (args.db or args.node) else docs[0])
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


# =============================================================================================
# argument parsing


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")


def _add_dir(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_CLUSTER_DIR,
        help=f"cluster directory (default: {DEFAULT_CLUSTER_DIR})",
    )


# Operator and researcher tools living in scripts/: (command, module, add-parser function).
TOOLS: tuple[tuple[str, str, str], ...] = (
    ("audit", "scripts.audit", "add_audit_parser"),
    ("fault", "scripts.faultctl", "add_fault_parser"),
    ("scenario", "scripts.scenario", "add_scenario_parser"),
    ("bench", "scripts.bench", "add_bench_parser"),
)


def _add_tool_parsers(sub: Any) -> None:
    """Register the tools' commands. A tool that cannot be imported gets a command that says
    why, so one broken tool never takes the others (or `medchain node`) down with it."""
    import importlib

    for name, module, func in TOOLS:
        try:
            getattr(importlib.import_module(module), func)(sub)
        except ImportError as exc:
            p = sub.add_parser(name, help=f"(unavailable: {exc})")
            p.set_defaults(func=_unavailable(name, exc))


def _unavailable(name: str, exc: Exception) -> Callable[[argparse.Namespace], int]:
    def run(_: argparse.Namespace) -> int:
        raise CliError(f"`medchain {name}` is unavailable: {exc}")

    return run


def build_parser(*, with_tools: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medchain",
        description="A PBFT consortium blockchain for hospitals: run, measure and break it.",
        epilog="Run `medchain COMMAND --help` for the options of a command.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "init",
        help="create keys and node configs for a new cluster",
        description="Generate an Ed25519 key per hospital node, one client key per hospital "
        "(hospital-0, hospital-1, ...) and an operator key (all mode 0600 in DIR/keys), and "
        "one config per node (DIR/node{i}.toml) on 127.0.0.1.",
    )
    p.add_argument("--nodes", type=_positive_int, required=True, help="number of nodes (>= 4)")
    _add_dir(p)
    p.add_argument(
        "--base-port",
        type=_positive_int,
        help="node i listens on BASE_PORT+i (default: free ports chosen by the OS)",
    )
    p.add_argument(
        "--force", action="store_true", help="replace an existing cluster (its keys and chains)"
    )
    _add_json(p)
    p.set_defaults(func=cmd_init)

    p = sub.add_parser(
        "node",
        help="run one node in the foreground",
        description="Run one node until SIGINT/SIGTERM.",
    )
    p.add_argument("--config", type=Path, required=True, help="the node's TOML config")
    p.add_argument(
        "--full-verify",
        action="store_true",
        help="re-verify every stored block on start (default: links of all, the newest fully)",
    )
    p.set_defaults(func=cmd_node)

    _add_cluster_parser(sub)
    _add_submit_parser(sub)
    _add_verify_parser(sub)
    if with_tools:
        _add_tool_parsers(sub)
    return parser


def _add_cluster_parser(sub: Any) -> None:
    cluster = sub.add_parser(
        "cluster",
        help="run a local cluster of node processes",
        description="Start, inspect and stop a local cluster (one process per node, logs in "
        "DIR/logs, pid files in DIR/run).",
    )
    csub = cluster.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")

    p = csub.add_parser(
        "up",
        help="init if needed, start every node that is down, wait until all serve",
        description="Create the cluster if DIR holds none, start the nodes that are not "
        "running, and return once every node answers GET /status.",
    )
    p.add_argument(
        "--nodes",
        type=_positive_int,
        help=f"number of nodes for a new cluster (default {DEFAULT_NODES}); must match an "
        "existing one",
    )
    _add_dir(p)
    p.add_argument("--base-port", type=_positive_int, help="for a new cluster: see `init`")
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=STARTUP_TIMEOUT_S,
        help=f"seconds to wait for every node to serve (default {STARTUP_TIMEOUT_S:.0f})",
    )
    _add_json(p)
    p.set_defaults(func=cmd_cluster_up)

    p = csub.add_parser("status", help="one row per node: pid, url, view, height, head hash")
    _add_dir(p)
    _add_json(p)
    p.set_defaults(func=cmd_cluster_status)

    p = csub.add_parser(
        "down",
        help="stop every node (SIGTERM, then SIGKILL after the timeout)",
    )
    _add_dir(p)
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=STOP_TIMEOUT_S,
        help=f"seconds to wait after SIGTERM before SIGKILL (default {STOP_TIMEOUT_S:.0f})",
    )
    _add_json(p)
    p.set_defaults(func=cmd_cluster_down)

    for name, func, text in (
        ("start-node", cmd_cluster_start_node, "start node I (if down) and wait until it serves"),
        ("stop-node", cmd_cluster_stop_node, "stop node I (SIGTERM, then SIGKILL)"),
        ("kill-node", cmd_cluster_kill_node, "send a signal to node I (default KILL)"),
        ("wipe-node", cmd_cluster_wipe_node, "erase stopped node I's data (keeps keys, config)"),
    ):
        p = csub.add_parser(name, help=text, description=text)
        p.add_argument("index", type=int, metavar="I", help="node index")
        _add_dir(p)
        if name == "kill-node":
            p.add_argument(
                "--signal",
                type=_parse_signal,
                default=int(signal.SIGKILL),
                help="signal name or number: KILL, TERM, STOP, CONT, ... (default KILL)",
            )
        if name in ("start-node", "stop-node"):
            default = STARTUP_TIMEOUT_S if name == "start-node" else STOP_TIMEOUT_S
            p.add_argument(
                "--timeout",
                type=_positive_float,
                default=default,
                help=f"seconds to wait (default {default:.0f})",
            )
        _add_json(p)
        p.set_defaults(func=func)


def _add_submit_parser(sub: Any) -> None:
    p = sub.add_parser(
        "submit",
        help="sign patient records as a hospital and submit them",
        description="Build signed transactions with the hospital client key and POST them "
        "(msgpack, in batches; 503 and connection errors are retried with backoff). Either one "
        "record (--patient, --type, --data) or --count K synthetic ones.",
    )
    target = p.add_argument_group("target (a local cluster, or any node)")
    _add_dir(target)
    target.add_argument(
        "--node-index", type=int, default=0, help="with --dir: node to send to (default 0)"
    )
    target.add_argument("--node", metavar="URL", help="a node's base URL (needs --key)")
    target.add_argument(
        "--key",
        type=Path,
        help="hospital client key file (default with --dir: DIR/keys/client-HOSPITAL.key)",
    )
    target.add_argument(
        "--hospital", default=hospital_id(0), help="submitting hospital (default hospital-0)"
    )
    what = p.add_argument_group("records")
    what.add_argument("--patient", help="pseudonymous patient id (default for --count: varied)")
    what.add_argument("--type", help="record type, e.g. lab-result (default for --count: varied)")
    data = what.add_mutually_exclusive_group()
    data.add_argument("--data", help="record payload: TEXT, or @FILE for a file's bytes")
    data.add_argument("--count", type=int, help="submit K synthetic records")
    p.add_argument("--wait", action="store_true", help="wait until every record is committed")
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=SUBMIT_TIMEOUT_S,
        help=f"overall bound in seconds (default {SUBMIT_TIMEOUT_S:.0f})",
    )
    _add_json(p)
    p.set_defaults(func=cmd_submit)


def _add_verify_parser(sub: Any) -> None:
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
    _add_dir(p)
    p.add_argument(
        "--config",
        type=Path,
        help="node config holding the consortium's keys (required with --db; with --node the "
        "keys otherwise come from the node's own GET /status)",
    )
    _add_json(p)
    p.set_defaults(func=cmd_verify)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # A node process needs none of the tools: skip importing them (faster, and more robust).
    parser = build_parser(with_tools=argv[:1] != ["node"])
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except (CliError, ClusterError) as exc:
        stderr.print(f"medchain: error: {exc}", markup=False)
        return 1
    except KeyboardInterrupt:
        stderr.print("medchain: interrupted", markup=False)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
