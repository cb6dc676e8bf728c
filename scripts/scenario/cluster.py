"""The cluster a scenario runs on: created fresh with fault injection enabled, its processes,
URLs and keys, and which nodes are down."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

from node.config import load_config
from node.configwrite import write_config
from node.crypto import ReplicaKeys, load_key
from node.faults import FaultsConfig
from node.ledger import ClientRegistry
from scripts.cluster import ClusterLayout, ClusterProcesses, hospital_id
from scripts.provision import init_cluster
from scripts.scenario.params import Scenario

T = TypeVar("T")

STARTUP_TIMEOUT_S: Final = 60.0


class RunError(RuntimeError):
    """The scenario could not be run (cluster did not start, ...)."""


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

    async def process(
        self,
        fn: Callable[..., T],
        *args: Any,
        started: Callable[[], None] | None = None,
        **kwargs: Any,
    ) -> T:
        """Run a blocking launcher call in a thread; one at a time (the launcher object is
        not thread-safe). ``started`` runs when the call's turn comes."""
        async with self._lock:
            if started is not None:
                started()
            return await asyncio.to_thread(fn, *args, **kwargs)


def _consortium(config_path: Path) -> tuple[ReplicaKeys, ClientRegistry]:
    """Replica public keys and the client registry, read from a node config."""
    config = load_config(config_path)
    registry = ClientRegistry((c.public_key, c.hospital) for c in config.clients)
    return config.replica_publics, registry


def create_cluster(root: Path, scenario: Scenario, seed: int) -> None:
    """Keys and configs for a fresh cluster in ``root`` with fault injection enabled."""
    init_cluster(root, scenario.nodes, consensus=dict(scenario.consensus))
    layout = ClusterLayout(root)
    for i in layout.node_indices():
        enable_faults(layout.config_path(i), seed=(seed * 1009 + i) % (1 << 62))


def enable_faults(
    config_path: Path, *, seed: int, consensus: Mapping[str, int] | None = None
) -> None:
    """Turn on the fault layer, with ``seed``, in a node config written by init (a config
    that has it on already is left as it is), and apply a scenario's ``[consensus]``
    overrides (``medchain bench --scenario`` runs the scenario's cluster shape)."""
    config = load_config(config_path)
    if config.faults.enabled and not consensus:
        return
    replica = config.consensus
    if consensus:
        replica = dataclasses.replace(replica, **dict(consensus))
    # load_config resolves paths; init writes them relative to the cluster directory (so it
    # can be moved whole), and so does this.
    base = config_path.resolve().parent
    write_config(
        config_path,
        dataclasses.replace(
            config,
            data_dir=_relative(config.data_dir, base),
            key_file=_relative(config.key_file, base),
            faults=config.faults if config.faults.enabled else FaultsConfig(True, seed=seed),
            consensus=replica,
        ),
    )


def _relative(path: Path, base: Path) -> Path:
    return path.relative_to(base) if path.is_relative_to(base) else path
