"""Fixtures for tests that run real node processes on 127.0.0.1.

Every cluster lives in the test's tmp dir on free ports. Teardown always stops it, however the
test ended: ``medchain cluster down``, then the in-process launcher, then SIGKILL to every
process group the test ever saw, so no node outlives its test.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from scripts.cluster import ClusterProcesses, fetch_status

CLI_TIMEOUT_S = 180.0
CONVERGE_TIMEOUT_S = 60.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything in this directory starts processes: mark it so `-m 'not integration'` works."""
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here):
            item.add_marker(pytest.mark.integration)


def run_cli(
    *args: str, timeout: float = CLI_TIMEOUT_S, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``python -m scripts.cli ARGS`` as a subprocess (the installed code, as a user runs it)."""
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "200"},
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"medchain {' '.join(args)} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


def run_cli_json(*args: str, timeout: float = CLI_TIMEOUT_S) -> Any:
    return json.loads(run_cli(*args, "--json", timeout=timeout).stdout)


@dataclass
class Cluster:
    """A cluster directory driven through the CLI, with the launcher for process-level checks."""

    root: Path
    procs: ClusterProcesses
    seen_pids: set[int] = field(default_factory=set)

    def up(self, nodes: int | None = None) -> list[dict[str, Any]]:
        extra = ["--nodes", str(nodes)] if nodes is not None else []
        doc = run_cli_json("cluster", "up", "--dir", str(self.root), *extra)
        self.remember_pids()
        return list(doc["nodes"])

    def down(self) -> None:
        run_cli("cluster", "down", "--dir", str(self.root))

    def status(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = run_cli_json("cluster", "status", "--dir", str(self.root))
        self.seen_pids.update(r["pid"] for r in rows if r["pid"])
        return rows

    def remember_pids(self) -> None:
        for i in self.procs.indices():
            pid = self.procs.pid(i)
            if pid is not None:
                self.seen_pids.add(pid)

    def urls(self) -> list[str]:
        return [s.url for s in self.procs.specs()]

    def wait_converged(
        self, min_height: int, timeout: float = CONVERGE_TIMEOUT_S
    ) -> tuple[int, str]:
        """Poll every node's /status until all report the same height (>= min_height) and head
        hash; returns them. Bounded: fails the test with the last statuses seen."""
        deadline = time.monotonic() + timeout
        last: list[Any] = []
        while time.monotonic() < deadline:
            last = [fetch_status(url) for url in self.urls()]
            heads = {(s["height"], s["head_hash"]) for s in last if s is not None}
            if None not in last and len(heads) == 1:
                height, head = heads.pop()
                if height >= min_height:
                    return height, head
            time.sleep(0.2)
        summary = [None if s is None else (s.get("height"), s.get("head_hash")) for s in last]
        pytest.fail(f"nodes did not converge on height >= {min_height} in {timeout}s: {summary}")

    def live_nodes(self) -> list[int]:
        """Pids seen by this test that still run one of this cluster's nodes."""
        return [pid for pid in self.seen_pids if _runs_node_of(pid, self.root)]

    def kill_everything(self) -> None:
        """Last resort: SIGKILL the process group of every node of ours still alive."""
        self.remember_pids()
        for pid in self.live_nodes():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[[str], Cluster]]:
    """Factory for clusters in tmp dirs; teardown always stops every one of them."""
    clusters: list[Cluster] = []

    def make(name: str = "cluster") -> Cluster:
        root = tmp_path / name
        cluster = Cluster(root=root, procs=ClusterProcesses(root))
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "scripts.cli",
                    "cluster",
                    "down",
                    "--dir",
                    str(cluster.root),
                ],
                capture_output=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )
        with contextlib.suppress(Exception):
            cluster.procs.down(timeout=10)
        cluster.kill_everything()
        leftovers = cluster.live_nodes()
        assert not leftovers, f"node processes outlived the test: {leftovers}"


def _runs_node_of(pid: int, root: Path) -> bool:
    """True if ``pid`` is a live (non-zombie) process whose command line names ``root``
    (a recycled pid belongs to someone else and is never signalled)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return any(str(root) in arg for arg in proc.cmdline())
    except psutil.Error:
        return False
