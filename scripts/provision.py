"""Provisioning a local cluster: keys, free ports and one config per hospital node.

``init_cluster`` writes what ``medchain init`` (and ``cluster up``, the bench, the scenario
runner and the demo) start from: an Ed25519 key per node, a client key per hospital, an
operator key (all mode 0600 in ``DIR/keys``, a 0700 directory), a random cluster id and
``DIR/node{i}.toml`` per node. With ``tls`` it also makes a small CA (``DIR/tls/ca.pem``, its
key in ``DIR/keys``) and one certificate per node and per hospital client, each carrying that
node's or client's own Ed25519 key (``node.tls``), and the nodes serve https only.

Access: a cluster made without ``tls`` is a dev cluster, open to anonymous reads (``[access]
open = true``, announced by every node when it starts); one made with ``tls`` is closed (reads
need a client certificate or a signed read token), unless ``open_access`` says otherwise.
``MEDCHAIN_TLS=1`` in the environment makes ``tls`` the default, so every tool that makes its
own cluster (bench, scenarios, demo) runs over TLS with no other flag. See scripts/cluster.py
for the directory layout.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from node.config import (
    ClientEntry,
    ConfigError,
    NodeConfig,
    ReplicaEntry,
    TlsConfig,
    load_config,
    make_node_config,
)
from node.configwrite import write_config
from node.crypto import generate_keypair, save_key
from node.tls import cert_pem, issue, key_pem, make_ca, write_private, write_public
from scripts.cluster import ClusterLayout, ClusterProcesses, hospital_id
from scripts.output import CliError

DEFAULT_NODES = 4
DEFAULT_HOST = "127.0.0.1"
MIN_NODES = 4
MAX_NODES = 64
PORT_POOL_START = 20_000
"""Listening ports for `init` are drawn from PORT_POOL_START up to the ephemeral range."""
PORT_TRIES = 64
TLS_ENV = "MEDCHAIN_TLS"
"""``MEDCHAIN_TLS=1``: clusters made without an explicit ``tls`` argument use TLS."""


@dataclass(frozen=True, slots=True)
class InitResult:
    root: Path
    nodes: tuple[tuple[int, str, Path], ...]
    """(index, url, config path) of every node."""
    tls: bool = False
    open_access: bool = False


def free_ports(count: int, host: str = DEFAULT_HOST) -> list[int]:
    """``count`` distinct ports free right now on ``host``.

    Drawn at random from below the kernel's ephemeral range when there is room: a listening
    port inside that range can be taken, between a node's stop and its restart, by the local
    end of some outgoing connection (peers reconnect constantly). Each candidate is bound, all
    held at once (so none repeats), then released. Falls back to the kernel's choice (port 0).
    """
    socks: list[socket.socket] = []
    try:
        low = ephemeral_low()
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


def ephemeral_low() -> int:
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
    tls: bool | None = None,
    open_access: bool | None = None,
) -> InitResult:
    """Create keys (node, hospital client, operator), TLS certificates if ``tls`` (default:
    the ``MEDCHAIN_TLS`` environment variable) and one config per node under ``root``.

    ``open_access`` (default: open without TLS, closed with it) writes ``[access] open``.
    Refuses to touch an existing cluster unless ``force``; never replaces a running one.
    Paths inside the configs are relative to ``root``, so the directory can be moved whole.
    """
    if tls is None:
        tls = os.environ.get(TLS_ENV, "") == "1"
    if open_access is None:
        open_access = not tls
    if not MIN_NODES <= n <= MAX_NODES:
        raise CliError(f"--nodes must be in {MIN_NODES}..{MAX_NODES} (n = 3f+1), got {n}")
    layout = ClusterLayout(root)
    replacing = _check_replaceable(layout, force)
    # Everything that can fail (ports, config validation) comes before anything is written,
    # so a failure leaves an existing cluster untouched and no half-written one behind.
    ports = list(range(base_port, base_port + n)) if base_port is not None else free_ports(n, host)
    if base_port is not None:
        check_ports_free(ports, host)
    keys = _ClusterKeys.generate(n)
    scheme = "https" if tls else "http"
    replicas = [
        ReplicaEntry(id=i, url=f"{scheme}://{host}:{ports[i]}", public_key=keys.nodes[i][1])
        for i in range(n)
    ]
    cluster = _ClusterSettings(
        cluster_id=f"medchain-{secrets.token_hex(8)}", tls=tls, open_access=open_access
    )
    configs = _node_configs(layout, host, ports, replicas, keys, consensus, cluster)
    if replacing:
        _remove_cluster(layout)
    _write_cluster(layout, keys, configs)
    if tls:
        _write_certificates(layout, keys, host, cluster.cluster_id)
    return InitResult(
        root=layout.root,
        nodes=tuple((i, replicas[i].url, layout.config_path(i)) for i in range(n)),
        tls=tls,
        open_access=open_access,
    )


@dataclass(frozen=True, slots=True)
class _ClusterSettings:
    cluster_id: str
    tls: bool
    open_access: bool


@dataclass(frozen=True, slots=True)
class _ClusterKeys:
    """(secret, public) key pairs: one per node, one per hospital client, the operator's."""

    nodes: tuple[tuple[bytes, bytes], ...]
    clients: tuple[tuple[bytes, bytes], ...]
    operator: tuple[bytes, bytes]
    ca: tuple[bytes, bytes]

    @classmethod
    def generate(cls, n: int) -> _ClusterKeys:
        nodes = tuple(generate_keypair() for _ in range(n))
        clients = tuple(generate_keypair() for _ in range(n))
        return cls(nodes=nodes, clients=clients, operator=generate_keypair(), ca=generate_keypair())


def _check_replaceable(layout: ClusterLayout, force: bool) -> bool:
    """Whether ``layout`` already holds a cluster (then ``force`` is needed and none of its
    nodes may run)."""
    if not layout.exists():
        return False
    if not force:
        raise CliError(
            f"{layout.root} already holds a cluster ({len(layout.node_indices())} nodes); "
            "use --force to replace it (destroys its keys and chains)"
        )
    _refuse_if_running(layout)
    return True


def _node_configs(
    layout: ClusterLayout,
    host: str,
    ports: Sequence[int],
    replicas: Sequence[ReplicaEntry],
    keys: _ClusterKeys,
    consensus: Mapping[str, int] | None,
    cluster: _ClusterSettings,
) -> list[NodeConfig]:
    clients = [
        ClientEntry(hospital=hospital_id(i), public_key=pair[1])
        for i, pair in enumerate(keys.clients)
    ]
    return [
        make_node_config(
            node_id=i,
            host=host,
            port=ports[i],
            data_dir=layout.data_dir(i).relative_to(layout.root),
            key_file=layout.node_key(i).relative_to(layout.root),
            replicas=replicas,
            clients=clients,
            operator_public_key=keys.operator[1],
            consensus=consensus,
            cluster_id=cluster.cluster_id,
            tls=_tls_config(layout, i) if cluster.tls else None,
            access_open=cluster.open_access,
        )
        for i in range(len(replicas))
    ]


def _tls_config(layout: ClusterLayout, i: int) -> TlsConfig:
    name = f"node{i}"
    return TlsConfig(
        enabled=True,
        ca_file=layout.ca_cert.relative_to(layout.root),
        cert_file=layout.cert(name).relative_to(layout.root),
        key_file=layout.tls_key(name).relative_to(layout.root),
    )


def _write_certificates(layout: ClusterLayout, keys: _ClusterKeys, host: str, cid: str) -> None:
    """The cluster CA and a certificate per node (server and client) and per hospital client,
    each for the Ed25519 key that node or client already has; private keys 0600 in keys/."""
    layout.tls_dir.mkdir(mode=0o755, exist_ok=True)
    ca_seed = keys.ca[0]
    ca = make_ca(ca_seed, f"medchain cluster CA {cid}")
    write_public(layout.ca_cert, cert_pem(ca))
    write_private(layout.tls_key("ca"), key_pem(ca_seed))
    hosts = sorted({host, "127.0.0.1", "localhost"})
    for i, (secret, public) in enumerate(keys.nodes):
        name = f"node{i}"
        cert = issue(ca_seed, ca, public, f"{cid} replica {i}", hosts=hosts, server=True)
        write_public(layout.cert(name), cert_pem(cert))
        write_private(layout.tls_key(name), key_pem(secret))
    for i, (secret, public) in enumerate(keys.clients):
        name = f"client-{hospital_id(i)}"
        cert = issue(ca_seed, ca, public, f"{cid} {hospital_id(i)}", server=False)
        write_public(layout.cert(name), cert_pem(cert))
        write_private(layout.tls_key(name), key_pem(secret))


def _write_cluster(
    layout: ClusterLayout, keys: _ClusterKeys, configs: Sequence[NodeConfig]
) -> None:
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.keys_dir.mkdir(mode=0o700, exist_ok=True)
    os.chmod(layout.keys_dir, 0o700)
    for i, (node_pair, client_pair) in enumerate(zip(keys.nodes, keys.clients, strict=True)):
        save_key(layout.node_key(i), *node_pair)
        save_key(layout.client_key(hospital_id(i)), *client_pair)
    save_key(layout.operator_key, *keys.operator)
    for i, config in enumerate(configs):
        write_config(layout.config_path(i), config)


def _refuse_if_running(layout: ClusterLayout) -> None:
    running = ClusterProcesses(layout.root).running()
    if running:
        raise CliError(
            f"nodes {running} of the cluster in {layout.root} are running; "
            f"stop them first: medchain cluster down --dir {layout.root}"
        )


def _remove_cluster(layout: ClusterLayout) -> None:
    """Delete what init wrote (never the directory itself: it may be the user's)."""
    for sub in (layout.keys_dir, layout.tls_dir, layout.data_root, layout.run_dir, layout.logs_dir):
        if sub.exists():
            shutil.rmtree(sub)
    for i in layout.node_indices():
        layout.config_path(i).unlink()


def load_node_config(path: Path) -> NodeConfig:
    """A node's config, or a CliError saying what is wrong with it."""
    try:
        return load_config(path)
    except ConfigError as exc:
        raise CliError(str(exc)) from exc
