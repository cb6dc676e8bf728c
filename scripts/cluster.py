"""Process control for a local medchain cluster: start, stop, signal and wipe node processes.

A cluster directory (written by ``medchain init``) looks like::

    DIR/node{i}.toml          one config per node (the source of truth for ids, urls, data dirs)
    DIR/keys/                 private keys, mode 0600 in a 0700 directory (never committed)
    DIR/tls/                  with --tls: ca.pem, node{i}.pem, client-hospital-{i}.pem
    DIR/data/node{i}/         each node's SQLite store
    DIR/logs/node{i}.log      each node's stdout and stderr (appended across restarts)
    DIR/run/node{i}.pid       JSON {pid, start_ticks, create_time, config} of a running node

``ClusterProcesses`` is the one place that knows how to run node processes, so the CLI, the
demo, the integration tests and fault tooling (kill -9, SIGSTOP/SIGCONT, restart, wipe) share it.
Every node runs as ``python -m node.main --config FILE`` in its own process group, so a
signal reaches the whole node and nothing it spawned outlives it.

A pid file alone proves nothing (the node may have crashed and the pid been reused): a node
counts as running only if a live, non-zombie process has that pid, the creation time recorded
at launch, and our command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from node.config import ConfigError, load_config
from node.storeguard import voted_marker_path
from scripts.client import probe_status
from scripts.credentials import use_cluster_credentials

DEFAULT_CLUSTER_DIR = Path(".medchain") / "cluster"
NODE_MODULE = "node.main"
"""The node's entry point: what nodes run as (``python -m``), and how they are recognised."""
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
STATUS_HTTP_TIMEOUT_S = 2.0
LOCK_TIMEOUT_S = 30.0
LOG_TAIL_LINES = 20
_CONFIG_NAME = re.compile(r"^node(\d+)\.toml$")
_CREATE_TIME_SLACK_S = 1.5
"""Where the start time in clock ticks cannot be read: psutil's create_time adds the boot time
the kernel reports now, which moves by a second when the wall clock is adjusted."""


def start_ticks(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (Linux: field 22 of /proc/PID/stat),
    or None where that cannot be read. Fixed for the process's life, unlike psutil's
    create_time, which a second process can compute a second apart from the launcher (it adds
    the boot time the kernel reports now, which moves when the wall clock is adjusted): a
    running node was then taken for a reused pid, skipped by ``down`` and left running."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()  # the command name may hold spaces
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _same_process(proc: psutil.Process, record: dict[str, Any]) -> bool:
    """Is ``proc`` the process the pid file was written for (not a reused pid)?"""
    recorded = record.get("start_ticks")
    if isinstance(recorded, int):
        now = start_ticks(proc.pid)
        if now is not None:
            return now == recorded
    created = float(proc.create_time())
    return abs(created - float(record.get("create_time", -1))) <= _CREATE_TIME_SLACK_S


class ClusterError(RuntimeError):
    """A cluster operation failed; the message names the node and where to look."""


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """What the launcher needs to know about one node, read from its config file."""

    index: int
    config_path: Path
    host: str
    port: int
    data_dir: Path
    url: str
    """The node's base URL as the consortium lists it (https:// with TLS)."""


@dataclass(frozen=True, slots=True)
class NodeProcess:
    """A node's process state as seen from the outside (no HTTP)."""

    index: int
    pid: int | None
    alive: bool
    stopped: bool
    """True if the process is suspended (SIGSTOP): alive but not answering."""


class ClusterLayout:
    """Paths inside a cluster directory; no I/O besides listing node configs."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def data_root(self) -> Path:
        return self.root / "data"

    def config_path(self, i: int) -> Path:
        return self.root / f"node{i}.toml"

    def node_key(self, i: int) -> Path:
        return self.keys_dir / f"node{i}.key"

    def client_key(self, hospital: str) -> Path:
        return self.keys_dir / f"client-{hospital}.key"

    @property
    def operator_key(self) -> Path:
        return self.keys_dir / "operator.key"

    @property
    def tls_dir(self) -> Path:
        return self.root / "tls"

    @property
    def ca_cert(self) -> Path:
        return self.tls_dir / "ca.pem"

    def cert(self, name: str) -> Path:
        """The certificate of ``node{i}`` or ``client-{hospital}``."""
        return self.tls_dir / f"{name}.pem"

    def tls_key(self, name: str) -> Path:
        """The PKCS#8 PEM private key of ``cert(name)`` (``ca`` for the CA's)."""
        return self.keys_dir / f"{name}.tls.pem"

    def data_dir(self, i: int) -> Path:
        return self.data_root / f"node{i}"

    def log_path(self, i: int) -> Path:
        return self.logs_dir / f"node{i}.log"

    def pid_path(self, i: int) -> Path:
        return self.run_dir / f"node{i}.pid"

    def node_indices(self) -> list[int]:
        """Indices of the node configs present, sorted; [] if this is not a cluster dir."""
        if not self.root.is_dir():
            return []
        found = (_CONFIG_NAME.match(p.name) for p in self.root.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def exists(self) -> bool:
        """True if anything a cluster init writes is already here."""
        return bool(self.node_indices()) or self.keys_dir.exists()


def hospital_id(i: int) -> str:
    """The consortium member name of hospital ``i`` (one node and one client key each)."""
    return f"hospital-{i}"


def read_node_spec(config_path: Path, index: int) -> NodeSpec:
    """The launcher's view of a node config (validated in full by node.config)."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise ClusterError(f"node {index}: {exc}") from exc
    if config.node_id != index:
        raise ClusterError(f"{config_path}: [node] id = {config.node_id} but file is node{index}")
    return NodeSpec(
        index=index,
        config_path=config_path,
        host=config.host,
        port=config.port,
        data_dir=config.data_dir,
        url=config.self_url,
    )


def fetch_status(url: str, timeout: float = STATUS_HTTP_TIMEOUT_S) -> dict[str, Any] | None:
    """GET {url}/status as a dict, or None if the node does not answer (yet) or answers badly.

    For synchronous callers (the launcher, tests); a coroutine awaits
    ``scripts.client.probe_status`` instead."""
    return asyncio.run(probe_status(url, timeout))


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file (bounded read), or '' if there is none."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


class ClusterProcesses:
    """Start, stop, signal and wipe the node processes of one cluster directory.

    Safe to use from several processes at once (a CLI and a test, say): operations that change
    which processes run take an exclusive lock on ``DIR/run/.lock``. Processes started by this
    object are reaped by it; processes found running from an earlier invocation are managed
    through their pid files.
    """

    def __init__(self, root: Path, *, python: str = sys.executable) -> None:
        self.layout = ClusterLayout(root)
        # A tool that manages this cluster talks to its nodes with its credentials.
        use_cluster_credentials(self.layout.root)
        self.python = python
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._lock_depth = 0

    # ----------------------------------------------------------------------------- discovery

    @property
    def root(self) -> Path:
        return self.layout.root

    def indices(self) -> list[int]:
        return self.layout.node_indices()

    def spec(self, i: int) -> NodeSpec:
        path = self.layout.config_path(i)
        if not path.is_file():
            raise ClusterError(f"node {i}: no config {path} (run `medchain init` first)")
        return read_node_spec(path, i)

    def specs(self) -> list[NodeSpec]:
        return [self.spec(i) for i in self.indices()]

    # ------------------------------------------------------------------------ process state

    def _reap(self) -> None:
        """Collect exit statuses of our own children so none lingers as a zombie."""
        for i, child in list(self._children.items()):
            if child.poll() is not None:
                del self._children[i]

    def _read_pid_file(self, i: int) -> dict[str, Any] | None:
        try:
            record = json.loads(self.layout.pid_path(i).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or not isinstance(record.get("pid"), int):
            return None
        return record

    def _process(self, i: int) -> psutil.Process | None:
        """The live process of node i, or None (no pid file, dead, zombie, or not our node)."""
        self._reap()
        record = self._read_pid_file(i)
        if record is None:
            return None
        child = self._children.get(i)
        if child is not None and child.pid == record["pid"]:
            # Our own unreaped child is certainly our node, and may not have exec'd yet (its
            # command line would still be ours): skip the checks below.
            try:
                return psutil.Process(child.pid)
            except psutil.Error:
                return None
        try:
            proc = psutil.Process(record["pid"])
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            if not _same_process(proc, record):
                return None  # the pid was reused by another process
            cmdline = proc.cmdline()
        except (psutil.Error, TypeError, ValueError):
            return None
        config = str(self.layout.config_path(i))
        if NODE_MODULE not in cmdline or config not in cmdline:
            return None
        return proc

    def pid(self, i: int) -> int | None:
        proc = self._process(i)
        return int(proc.pid) if proc else None

    def is_alive(self, i: int) -> bool:
        return self._process(i) is not None

    def state(self, i: int) -> NodeProcess:
        proc = self._process(i)
        if proc is None:
            return NodeProcess(index=i, pid=None, alive=False, stopped=False)
        try:
            stopped = proc.status() == psutil.STATUS_STOPPED
        except psutil.Error:
            return NodeProcess(index=i, pid=None, alive=False, stopped=False)
        return NodeProcess(index=i, pid=int(proc.pid), alive=True, stopped=stopped)

    def running(self) -> list[int]:
        return [i for i in self.indices() if self.is_alive(i)]

    # -------------------------------------------------------------------------------- locking

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive, bounded, re-entrant lock on the cluster's run directory."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        self.layout.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.layout.run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() > deadline:
                        raise ClusterError(
                            f"{self.root}: another medchain command holds the cluster lock"
                        ) from exc
                    time.sleep(0.05)
            self._lock_depth = 1
            try:
                yield
            finally:
                self._lock_depth = 0
        finally:
            os.close(fd)  # closing releases the flock

    # ------------------------------------------------------------------------------ lifecycle

    def command(self, i: int) -> list[str]:
        return [self.python, "-m", NODE_MODULE, "--config", str(self.layout.config_path(i))]

    def start(self, i: int) -> int:
        """Start node i in the background unless it already runs; return its pid.

        Does not wait for it to serve: see ``wait_ready``.
        """
        spec = self.spec(i)
        with self._locked():
            existing = self._process(i)
            if existing is not None:
                return int(existing.pid)
            self.layout.logs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            spec.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            log_path = self.layout.log_path(i)
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            # Node logs name patients' record ids: 0600, like the data they describe.
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "ab") as log:
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
                log.write(f"--- medchain launcher: starting node {i} at {stamp}\n".encode())
                log.flush()
                child = subprocess.Popen(
                    self.command(i),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,  # own process group: signals reach the whole node
                    close_fds=True,
                )
            self._children[i] = child
            try:
                create_time = psutil.Process(child.pid).create_time()
            except psutil.Error:
                create_time = -1.0  # already gone: wait_ready reports it with the log tail
            record = {
                "pid": child.pid,
                "start_ticks": start_ticks(child.pid),
                "create_time": create_time,
                "config": str(spec.config_path),
            }
            _write_atomic(self.layout.pid_path(i), json.dumps(record) + "\n")
            return child.pid

    def wait_ready(self, indices: Iterable[int], timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Return once every node in ``indices`` answers GET /status; raise ClusterError if one
        exits or the bounded wait runs out, naming the node and quoting its log."""
        pending = {i: self.spec(i) for i in indices}
        deadline = time.monotonic() + timeout
        delay = 0.05
        while pending:
            for i, spec in list(pending.items()):
                if not self.is_alive(i):
                    raise ClusterError(self._failure(i, "exited during startup"))
                if fetch_status(spec.url) is not None:
                    del pending[i]
            if not pending:
                return
            if time.monotonic() > deadline:
                first = min(pending)
                raise ClusterError(
                    self._failure(first, f"did not answer GET /status within {timeout:.0f}s")
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _failure(self, i: int, what: str) -> str:
        log_path = self.layout.log_path(i)
        last = tail(log_path)
        quoted = "\n".join("    " + line for line in last.splitlines()) or "    (log is empty)"
        return f"node {i} {what}; see its log {log_path}:\n{quoted}"

    def up(
        self, indices: Sequence[int] | None = None, timeout: float = STARTUP_TIMEOUT_S
    ) -> list[int]:
        """Start every node (or those in ``indices``) that is down and wait until all serve.

        Returns the indices started. Nodes already running are left alone.
        """
        wanted = list(self.indices() if indices is None else indices)
        if not wanted:
            raise ClusterError(f"{self.root}: no node configs (run `medchain init` first)")
        with self._locked():
            started = [i for i in wanted if not self.is_alive(i)]
            for i in started:
                self.start(i)
        self.wait_ready(wanted, timeout)
        return started

    def stop(self, i: int, timeout: float = STOP_TIMEOUT_S) -> bool:
        """SIGTERM node i's process group, wait (bounded), then SIGKILL. Returns True if a
        process was running. Always removes the pid file."""
        with self._locked():
            proc = self._process(i)
            if proc is not None:
                self._signal_group(proc.pid, signal.SIGTERM)
                # A suspended node cannot act on SIGTERM until it is continued.
                self._signal_group(proc.pid, signal.SIGCONT)
                if not self._wait_exit(i, proc, timeout):
                    self._signal_group(proc.pid, signal.SIGKILL)
                    if not self._wait_exit(i, proc, timeout):
                        raise ClusterError(f"node {i} (pid {proc.pid}) survived SIGKILL")
            self.layout.pid_path(i).unlink(missing_ok=True)
            return proc is not None

    def down(self, timeout: float = STOP_TIMEOUT_S) -> list[int]:
        """Stop every node; SIGTERM all first so they shut down in parallel. Returns the
        indices that were running."""
        with self._locked():
            procs = {i: p for i in self.indices() if (p := self._process(i)) is not None}
            for proc in procs.values():
                self._signal_group(proc.pid, signal.SIGTERM)
                self._signal_group(proc.pid, signal.SIGCONT)
            deadline = time.monotonic() + timeout
            for i, proc in procs.items():
                if not self._wait_exit(i, proc, max(0.0, deadline - time.monotonic())):
                    self._signal_group(proc.pid, signal.SIGKILL)
                    if not self._wait_exit(i, proc, timeout):
                        raise ClusterError(f"node {i} (pid {proc.pid}) survived SIGKILL")
            for i in self.indices():
                self.layout.pid_path(i).unlink(missing_ok=True)
            return sorted(procs)

    def kill(self, i: int, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to node i's process group (kill -9, SIGSTOP, SIGCONT, ...); return the
        pid. For SIGKILL, waits (bounded) until the process is gone and removes its pid file."""
        with self._locked():
            proc = self._process(i)
            if proc is None:
                raise ClusterError(f"node {i} is not running")
            self._signal_group(proc.pid, sig)
            if sig == signal.SIGKILL:
                if not self._wait_exit(i, proc, STOP_TIMEOUT_S):
                    raise ClusterError(f"node {i} (pid {proc.pid}) survived SIGKILL")
                self.layout.pid_path(i).unlink(missing_ok=True)
            return int(proc.pid)

    def restart(self, i: int, timeout: float = STARTUP_TIMEOUT_S) -> int:
        self.stop(i)
        pid = self.start(i)
        self.wait_ready([i], timeout)
        return pid

    def wipe(self, i: int) -> None:
        """Erase node i's data directory (its chain and consensus state); keys, config and log
        stay. The node must be stopped: wiping under a running node would corrupt it."""
        spec = self.spec(i)
        with self._locked():
            if self.is_alive(i):
                raise ClusterError(f"node {i} is running; stop it before wiping its data")
            if spec.data_dir.exists():
                shutil.rmtree(spec.data_dir)
            # The operator asked for a blank node: its "voted" marker goes too, or the node
            # would (rightly) refuse to start on the empty store.
            voted_marker_path(spec.data_dir).unlink(missing_ok=True)

    # -------------------------------------------------------------------------------- helpers

    @staticmethod
    def _signal_group(pid: int, sig: int) -> None:
        # The node leads its own process group (start_new_session), so pgid == pid.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)

    def _wait_exit(self, i: int, proc: psutil.Process, timeout: float) -> bool:
        """Wait (bounded) until the process has exited; reap it if it is our child."""
        child = self._children.get(i)
        if child is not None and child.pid == proc.pid:
            try:
                child.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return False
            del self._children[i]
            return True
        try:
            proc.wait(timeout=timeout)
        except psutil.TimeoutExpired:
            # Not our child: a zombie we cannot reap still counts as gone.
            try:
                return bool(proc.status() == psutil.STATUS_ZOMBIE)
            except psutil.Error:
                return True
        except psutil.Error:
            pass
        return True


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
