"""Driving one benchmark point: start (or attach to) the cluster under test, run the load
generator in a process of its own, and sample every node's CPU and memory meanwhile."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import multiprocessing
import re
import shutil
import signal
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import psutil

from node.config import ConfigError, load_config
from node.crypto import load_key
from scripts.bench.analyse import SAMPLE_INTERVAL_S, LoadOutcome, Target, UsageSample
from scripts.bench.loadgen import loadgen_main
from scripts.bench.loadspec import ClientKey, LoadResult, LoadSpec
from scripts.bench.params import CLUSTER_SIDE, BenchError, BenchParams
from scripts.bench.progress import BenchUI
from scripts.cluster import (
    STARTUP_TIMEOUT_S,
    ClusterLayout,
    ClusterProcesses,
    fetch_status,
)
from scripts.output import CliError
from scripts.provision import init_cluster

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


_HOSPITAL_KEY_FILE = re.compile(r"^client-(.+)\.key$")


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
    assert p.nodes is not None
    root = out / "cluster"
    overrides = {CLUSTER_SIDE[name]: getattr(p, name) for name in CLUSTER_SIDE}
    try:
        init_cluster(root, p.nodes, force=True, consensus=overrides)
    except ConfigError as e:
        raise BenchError(f"bad cluster parameters: {e}") from None
    except CliError as e:  # e.g. a cluster from an earlier run still runs there
        raise BenchError(str(e)) from None
    if p.vote_log_sync != "full":
        _set_vote_log_sync(root, p.vote_log_sync)
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


def _set_vote_log_sync(root: Path, mode: str) -> None:
    """Write ``vote_log_sync`` into every node config's [node] table (init writes none for the
    default, "full")."""
    for path in sorted(root.glob("node*.toml")):
        lines = path.read_text().splitlines()
        if "[node]" not in lines or any(x.startswith("vote_log_sync") for x in lines):
            raise BenchError(f"{path}: cannot set vote_log_sync in it")
        at = lines.index("[node]") + 1
        path.write_text("\n".join([*lines[:at], f'vote_log_sync = "{mode}"', *lines[at:]]) + "\n")


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


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Ignore SIGINT/SIGTERM for the duration (teardown must not be cut short)."""
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


class UsageSampler:
    """Samples CPU and memory of the node processes and the load generator (psutil).

    Given ``resolve`` (node index -> the pid the launcher's pid file names now), it follows
    restarts: a node whose process exited is looked up again every sample, and a new process
    (the launcher restarted it, a scenario's kill healed) is sampled from then on. So a rolling
    restart is never taken for a dead cluster."""

    def __init__(
        self,
        pids: Sequence[int | None],
        loadgen_pid: int | None,
        resolve: Callable[[int], int | None] | None = None,
    ) -> None:
        self.procs = [self._proc(pid) for pid in pids]
        self.loadgen = self._proc(loadgen_pid)
        self.resolve = resolve
        self.samples: list[UsageSample] = []
        self.down: set[int] = set()
        """Nodes whose process is not running now."""
        self.died: set[int] = set()
        """Nodes whose process exited at some point of the run."""
        self.restarts: dict[int, int] = {}
        """Node -> how many times a new process of it was found after one exited."""

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
        """True if the node processes were known and every one is down at once."""
        known = sum(1 for p in self.procs if p is not None)
        return known > 0 and len(self.down) == known

    def _follow(self, i: int) -> None:
        """Node i's process is gone: find its new one, if the launcher started one."""
        if self.resolve is None:
            return
        old = self.procs[i]
        try:
            pid = self.resolve(i)
        except (OSError, ValueError):
            pid = None
        if pid is None or (old is not None and pid == old.pid):
            return
        proc = self._proc(pid)
        if proc is None:
            return
        with contextlib.suppress(psutil.Error):
            proc.cpu_percent(None)
        self.procs[i] = proc
        self.down.discard(i)
        self.restarts[i] = self.restarts.get(i, 0) + 1

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
        for i in range(len(self.procs)):
            if i in self.down:
                self._follow(i)
            proc = self.procs[i]
            c, m = self._measure(proc)
            if proc is not None and c is None and i not in self.down:
                self.down.add(i)
                self.died.add(i)
                self._follow(i)  # restarted already (a quick restart between two samples)
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
        sampler = UsageSampler(target.pids, proc.pid, _pid_resolver(target))
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
        return LoadOutcome(
            result,
            sampler.samples,
            frozenset(sampler.died),
            stopped,
            proc.pid,
            dict(sampler.restarts),
        )
    finally:
        _end_child(proc, parent_conn, graceful=running)


def _pid_resolver(target: Target) -> Callable[[int], int | None] | None:
    """Node index -> its current pid, from the launcher's pid files (a cluster directory)."""
    if target.cluster_dir is None:
        return None
    procs = ClusterProcesses(target.cluster_dir)
    return procs.pid


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
                    ui.note("every node process is down: stopping the load")
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
