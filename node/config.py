"""Node configuration: one TOML file per node, loaded into frozen dataclasses.

Layout (see ``configs/defaults.toml`` for every optional key, its default and its meaning)::

    [node]         id, host, port, data_dir, key_file, log_level, vote_log_sync
    [consensus]    overrides of any ``consensus.config.ReplicaConfig`` field except n, replica_id
    [limits]       overrides of any ``NodeLimits`` field (node-level bounds)
    [[replicas]]   id, url, public_key (hex); the list index is the replica id, n = len(replicas)
    [[clients]]    hospital, public_key (hex): hospital keys allowed to submit transactions
    [operator]     public_key (hex), optional
    [audit]        enabled (bool, default true): cross-audit of peers (``node.audit``)
    [cluster]      id: the cluster id every consensus signature binds (written by init)
    [tls]          enabled, ca_file, cert_file, key_file: TLS for the client API and peer links
    [access]       open (bool, default false): anonymous reads of /tx, /blocks, /audit, /status

Every default lives in a dataclass field default (``ReplicaConfig`` for the protocol,
``NodeLimits`` for the node); nothing here repeats them. Unknown sections and keys are errors, so
a typo cannot silently fall back to a default. Relative paths are resolved against the directory
of the config file, so a cluster directory can be moved as a whole.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from consensus.config import ReplicaConfig
from node.configfields import (
    ConfigError,
    check_key,
    check_port,
    check_url,
    hex_key,
    int_field,
    only_keys,
    path_field,
    str_field,
    sub_table,
    table_array,
)
from node.crypto import MAX_CLUSTER_ID_BYTES, ReplicaKeys
from node.faults.model import FaultError, FaultsConfig, parse_faults_table

LOG_LEVELS = ("debug", "info", "warning", "error")
VOTE_LOG_SYNC = ("full", "normal")
_MAX_HOSPITAL_LEN = 128
# Fields of ReplicaConfig that the file may not set: they follow from [node].id and [[replicas]].
DERIVED_CONSENSUS_FIELDS = frozenset({"n", "replica_id"})
_CLUSTER_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


@dataclass(frozen=True, slots=True)
class NodeLimits:
    """Node-level bounds (the I/O shell's queues, sizes and waits); protocol bounds live in
    ``ReplicaConfig``. Every field can be overridden in the ``[limits]`` table."""

    max_body_bytes: int = 8 * 1024 * 1024
    """Largest client request body (POST /tx); larger bodies get 413."""
    max_batch_request_txs: int = 1000
    """Most transactions accepted in one POST /tx."""
    client_inbox_max: int = 1024
    """Admitted client batches waiting for the consensus task; when full, POST /tx gets 503."""
    client_inbox_max_bytes: int = 32 * 1024 * 1024
    """Encoded transaction bytes in those batches; beyond it POST /tx gets 503."""
    pending_max_txs: int = 50_000
    """Transactions this node acknowledged (202) and has not seen commit, kept on disk until
    they do; at the bound POST /tx gets 503 instead of acknowledging more."""
    pending_max_bytes: int = 64 * 1024 * 1024
    """Encoded bytes of those transactions; beyond it POST /tx gets 503."""
    pending_reoffer_ms: int = 2000
    """How often (and after every view change) the acknowledged transactions the replica no
    longer holds are handed to it again, so they reach the current primary."""
    peer_inbox_max: int = 20_000
    """Peer messages waiting for the consensus task; when full, new ones are dropped (counted)."""
    peer_inbox_max_bytes: int = 256 * 1024 * 1024
    """Encoded bytes of the messages waiting in the peer inbox; beyond it new ones are dropped."""
    max_events_per_round: int = 512
    """Events fed to the replica before one group commit (persist once, then send)."""
    peer_queue_max_msgs: int = 8192
    """Outgoing frames queued per peer; when full the oldest is dropped (counted)."""
    peer_batch_max_frames: int = 512
    """Most frames carried by one POST /peer/msgs."""
    peer_batch_max_bytes: int = 4 * 1024 * 1024
    """Target size of one POST /peer/msgs body (a single larger frame is still sent alone)."""
    peer_max_body_bytes: int = 32 * 1024 * 1024
    """Largest POST /peer/msgs body this node accepts; larger bodies get 413."""
    peer_timeout_ms: int = 10_000
    """Timeout of one POST to a peer (connect + send + response)."""
    peer_backoff_min_ms: int = 50
    """First reconnect delay after a failed POST; doubles per failure, with jitter."""
    peer_backoff_max_ms: int = 5000
    """Upper bound of the reconnect delay."""
    fetch_response_max_bytes: int = 8 * 1024 * 1024
    """Most encoded block bytes served in one FetchResponse (at least one block is served)."""
    fetch_serve_per_s: int = 50
    """FetchRequests served per second to one peer (also the burst); more are not served."""
    fetch_serve_bytes_per_s: int = 32 * 1024 * 1024
    """Block bytes served per second to one peer's fetches (``node.fetchserve``)."""
    fetch_serve_burst_bytes: int = 16 * 1024 * 1024
    """Block bytes one peer's fetches may take at once after a quiet spell."""
    tx_wait_max_ms: int = 30_000
    """Upper bound of GET /tx/{id}?wait_ms=N."""
    max_waiters: int = 10_000
    """Concurrent long-poll waiters; beyond this GET /tx/{id}?wait_ms gets 503."""
    pending_tx_max: int = 200_000
    """Transaction ids remembered as pending (client-submitted or seen from peers); LRU."""
    pending_tx_ttl_ms: int = 600_000
    """A pending id not committed within this time is forgotten (GET /tx then says 404)."""
    blocks_page_max: int = 100
    """Largest ``limit`` of GET /blocks."""
    idle_tick_ms: int = 1000
    """Longest gap between two Ticks even if the replica asks for none (harmless safety net)."""
    shutdown_grace_ms: int = 5000
    """Time allowed for in-flight HTTP requests and peer sends on shutdown."""
    events_max: int = 20_000
    """Protocol events kept by the flight recorder (GET /events); the oldest go first."""
    events_max_bytes: int = 4 * 1024 * 1024
    """Estimated memory of those events; beyond it the oldest go first."""
    ready_max_lag_seqs: int = 64
    """GET /readyz answers 503 while this node is more seqs behind its peers than this."""
    header_timeout_ms: int = 30_000
    """A connection that has not sent complete request headers this long after it opened (or
    after its last response) is closed: idle keep-alives and slowloris clients alike."""
    body_timeout_ms: int = 30_000
    """A request body (POST /tx, /peer/msgs, admin) must arrive within this, else 408."""
    max_connections: int = 512
    """Open HTTP connections accepted at once; beyond it new ones are closed on accept."""
    json_max_depth: int = 16
    """Deepest JSON nesting accepted in a request body (checked before parsing)."""
    store_watch_ms: int = 1000
    """How often the node checks that its database file is still the one it opened (not
    deleted, truncated or replaced); on a mismatch it stops."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"limits.{f.name}", f"must be an integer, got {value!r}")
            if value < 1:
                raise ConfigError(f"limits.{f.name}", f"must be >= 1, got {value}")
        if self.peer_backoff_min_ms > self.peer_backoff_max_ms:
            raise ConfigError("limits.peer_backoff_min_ms", "must be <= peer_backoff_max_ms")
        if self.peer_batch_max_bytes > self.peer_max_body_bytes:
            raise ConfigError("limits.peer_batch_max_bytes", "must be <= peer_max_body_bytes")
        if self.fetch_response_max_bytes > self.peer_max_body_bytes:
            raise ConfigError("limits.fetch_response_max_bytes", "must be <= peer_max_body_bytes")
        if self.fetch_serve_burst_bytes < self.fetch_response_max_bytes:
            raise ConfigError(
                "limits.fetch_serve_burst_bytes", "must be >= fetch_response_max_bytes"
            )


@dataclass(frozen=True, slots=True)
class ReplicaEntry:
    """One consortium member: its replica id, base URL and Ed25519 public key."""

    id: int
    url: str
    public_key: bytes


@dataclass(frozen=True, slots=True)
class ClientEntry:
    """A hospital key allowed to submit transactions."""

    hospital: str
    public_key: bytes


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS for the node's HTTP server (client API and peer endpoint) and its peer links.

    ``cert_file`` holds this node's certificate: its key is the node's Ed25519 replica key, so
    the certificate is bound to the consortium's keys and not to the CA alone; ``key_file`` the
    same key as PKCS#8 PEM (mode 0600); ``ca_file`` the cluster CA that signed every node and
    client certificate."""

    enabled: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def __post_init__(self) -> None:
        if self.enabled:
            for name in ("ca_file", "cert_file", "key_file"):
                if getattr(self, name) is None:
                    raise ConfigError(f"tls.{name}", "required when tls.enabled = true")


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node_id: int
    host: str
    port: int
    data_dir: Path
    key_file: Path
    replicas: tuple[ReplicaEntry, ...]
    clients: tuple[ClientEntry, ...]
    operator_public_key: bytes | None
    consensus: ReplicaConfig
    limits: NodeLimits = field(default_factory=NodeLimits)
    log_level: str = "info"
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    audit_enabled: bool = True
    """Cross-audit of peers and its routes; the node's own read path runs either way."""
    vote_log_sync: str = "full"
    """SQLite ``synchronous`` for the consensus-message log: ``full`` (fsync before what was
    signed is sent: survives power loss) or ``normal`` (survives a process crash only)."""
    cluster_id: str = ""
    """Bound into every consensus signature (``node.crypto.cluster_domain``); "" for none."""
    tls: TlsConfig = field(default_factory=TlsConfig)
    access_open: bool = False
    """``[access] open``: anyone may read /tx, /blocks, /audit and /status details. Off, only a
    registered client or replica key (a TLS certificate or a signed read token) may."""

    def __post_init__(self) -> None:
        check_port("node.port", self.port)
        _check_cluster_id(self.cluster_id)
        if self.tls.enabled and any(not r.url.startswith("https://") for r in self.replicas):
            raise ConfigError("replicas", "every url must be https:// when tls.enabled = true")
        if not self.host:
            raise ConfigError("node.host", "must not be empty")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError("node.log_level", f"must be one of {', '.join(LOG_LEVELS)}")
        if self.vote_log_sync not in VOTE_LOG_SYNC:
            raise ConfigError("node.vote_log_sync", f"must be one of {', '.join(VOTE_LOG_SYNC)}")
        if not self.replicas:
            raise ConfigError("replicas", "at least 4 replicas are needed (n = 3f+1, f >= 1)")
        seen_keys: dict[bytes, int] = {}
        for i, r in enumerate(self.replicas):
            if r.id != i:
                raise ConfigError(
                    f"replicas[{i}].id", f"must equal its position {i} (ids are 0..n-1), got {r.id}"
                )
            check_url(f"replicas[{i}].url", r.url)
            check_key(f"replicas[{i}].public_key", r.public_key)
            if r.public_key in seen_keys:
                raise ConfigError(
                    f"replicas[{i}].public_key", f"duplicates replicas[{seen_keys[r.public_key]}]"
                )
            seen_keys[r.public_key] = i
        if not 0 <= self.node_id < len(self.replicas):
            raise ConfigError(
                "node.id", f"{self.node_id} is not a replica id (0..{len(self.replicas) - 1})"
            )
        if self.consensus.n != len(self.replicas) or self.consensus.replica_id != self.node_id:
            raise ConfigError("consensus", "n and replica_id must match len(replicas) and node.id")
        seen_clients: set[bytes] = set()
        for i, c in enumerate(self.clients):
            if not c.hospital or len(c.hospital) > _MAX_HOSPITAL_LEN:
                raise ConfigError(
                    f"clients[{i}].hospital", f"must be 1..{_MAX_HOSPITAL_LEN} characters"
                )
            check_key(f"clients[{i}].public_key", c.public_key)
            if c.public_key in seen_clients:
                raise ConfigError(f"clients[{i}].public_key", "duplicates an earlier client key")
            seen_clients.add(c.public_key)
        if self.operator_public_key is not None:
            check_key("operator.public_key", self.operator_public_key)

    @property
    def n(self) -> int:
        return len(self.replicas)

    @property
    def replica_publics(self) -> ReplicaKeys:
        """Public keys indexed by replica id, with the cluster id (what ``NodeCrypto`` and every
        verifier of certificates take)."""
        return ReplicaKeys([r.public_key for r in self.replicas], self.cluster_id.encode())

    @property
    def peers(self) -> dict[int, str]:
        """Every other replica's base URL, by id."""
        return {r.id: r.url for r in self.replicas if r.id != self.node_id}

    @property
    def self_url(self) -> str:
        return self.replicas[self.node_id].url

    def client_keys(self) -> dict[bytes, str]:
        """Allowed client public keys, mapped to their hospital."""
        return {c.public_key: c.hospital for c in self.clients}


def make_node_config(
    *,
    node_id: int,
    host: str,
    port: int,
    data_dir: Path,
    key_file: Path,
    replicas: Sequence[ReplicaEntry],
    clients: Sequence[ClientEntry] = (),
    operator_public_key: bytes | None = None,
    consensus: Mapping[str, int] | None = None,
    limits: NodeLimits | None = None,
    log_level: str = "info",
    cluster_id: str = "",
    tls: TlsConfig | None = None,
    access_open: bool = False,
) -> NodeConfig:
    """Build a validated NodeConfig; ``consensus`` holds ReplicaConfig overrides only."""
    return NodeConfig(
        node_id=node_id,
        host=host,
        port=port,
        data_dir=data_dir,
        key_file=key_file,
        replicas=tuple(replicas),
        clients=tuple(clients),
        operator_public_key=operator_public_key,
        consensus=_replica_config(dict(consensus or {}), len(replicas), node_id),
        limits=limits or NodeLimits(),
        log_level=log_level,
        cluster_id=cluster_id,
        tls=tls or TlsConfig(),
        access_open=access_open,
    )


# ---------------------------------------------------------------------------------------------
# Loading


def load_config(path: str | os.PathLike[str]) -> NodeConfig:
    """Read and validate a node config file; raises ConfigError naming the file and field."""
    p = Path(path)
    source = str(p)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError("file", f"cannot read: {e.strerror or e}", source) from e
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError("file", f"not UTF-8: {e}", source) from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("file", f"invalid TOML: {e}", source) from e
    try:
        return parse_config(data, base_dir=p.resolve().parent)
    except ConfigError as e:
        raise e.with_source(source) from e


def parse_config(data: Mapping[str, Any], *, base_dir: Path) -> NodeConfig:
    """Validate an already-parsed TOML document (relative paths resolve against base_dir)."""
    only_keys(
        "",
        data,
        {
            "node",
            "consensus",
            "limits",
            "replicas",
            "clients",
            "operator",
            "faults",
            "audit",
            "cluster",
            "tls",
            "access",
        },
    )
    node = sub_table(data, "node", required=True)
    only_keys(
        "node", node, {"id", "host", "port", "data_dir", "key_file", "log_level", "vote_log_sync"}
    )
    node_id = int_field(node, "node", "id", required=True)
    replicas = _replicas(data)
    return NodeConfig(
        node_id=node_id,
        host=str_field(node, "node", "host", default="127.0.0.1"),
        port=int_field(node, "node", "port", required=True),
        data_dir=path_field(node, "node", "data_dir", base_dir),
        key_file=path_field(node, "node", "key_file", base_dir),
        replicas=replicas,
        clients=_clients(data),
        operator_public_key=_operator(data),
        faults=_faults(data),
        audit_enabled=_audit_enabled(data),
        consensus=_consensus(data, len(replicas), node_id),
        limits=_limits(data),
        log_level=str_field(node, "node", "log_level", default="info"),
        vote_log_sync=str_field(node, "node", "vote_log_sync", default="full"),
        cluster_id=_cluster_id(data),
        tls=_tls(data, base_dir),
        access_open=_bool_key(data, "access", "open", default=False),
    )


def _replicas(data: Mapping[str, Any]) -> tuple[ReplicaEntry, ...]:
    out = []
    for i, item in enumerate(table_array(data, "replicas")):
        where = f"replicas[{i}]"
        only_keys(where, item, {"id", "url", "public_key"})
        out.append(
            ReplicaEntry(
                id=int_field(item, where, "id", required=True),
                url=str_field(item, where, "url", required=True),
                public_key=hex_key(item, where, "public_key"),
            )
        )
    return tuple(out)


def _clients(data: Mapping[str, Any]) -> tuple[ClientEntry, ...]:
    out = []
    for i, item in enumerate(table_array(data, "clients")):
        where = f"clients[{i}]"
        only_keys(where, item, {"hospital", "public_key"})
        out.append(
            ClientEntry(
                hospital=str_field(item, where, "hospital", required=True),
                public_key=hex_key(item, where, "public_key"),
            )
        )
    return tuple(out)


def _operator(data: Mapping[str, Any]) -> bytes | None:
    table = sub_table(data, "operator", required=False)
    if not table:
        return None
    only_keys("operator", table, {"public_key"})
    return hex_key(table, "operator", "public_key")


def _faults(data: Mapping[str, Any]) -> FaultsConfig:
    try:
        return parse_faults_table(data.get("faults"))
    except FaultError as e:
        raise ConfigError(e.field, e.problem) from None


def _audit_enabled(data: Mapping[str, Any]) -> bool:
    return _bool_key(data, "audit", "enabled", default=True)


def _bool_key(data: Mapping[str, Any], section: str, key: str, *, default: bool) -> bool:
    """The one boolean of a one-key table ([audit] enabled, [access] open)."""
    table = sub_table(data, section, required=False)
    only_keys(section, table, {key})
    value = table.get(key, default)
    if type(value) is not bool:
        raise ConfigError(f"{section}.{key}", f"must be true or false, got {value!r}")
    return value


def _cluster_id(data: Mapping[str, Any]) -> str:
    table = sub_table(data, "cluster", required=False)
    only_keys("cluster", table, {"id"})
    return str_field(table, "cluster", "id", default="")


def _tls(data: Mapping[str, Any], base_dir: Path) -> TlsConfig:
    table = sub_table(data, "tls", required=False)
    only_keys("tls", table, {"enabled", "ca_file", "cert_file", "key_file"})
    enabled = table.get("enabled", False)
    if type(enabled) is not bool:
        raise ConfigError("tls.enabled", f"must be true or false, got {enabled!r}")
    paths = {
        name: path_field(table, "tls", name, base_dir) if name in table else None
        for name in ("ca_file", "cert_file", "key_file")
    }
    return TlsConfig(enabled=enabled, **paths)


def _check_cluster_id(cluster_id: object) -> None:
    if not isinstance(cluster_id, str):
        raise ConfigError("cluster.id", "must be a string")
    if len(cluster_id) > MAX_CLUSTER_ID_BYTES or not set(cluster_id) <= _CLUSTER_ID_CHARS:
        raise ConfigError("cluster.id", f"must be at most {MAX_CLUSTER_ID_BYTES} of [A-Za-z0-9._-]")


def _consensus(data: Mapping[str, Any], n: int, node_id: int) -> ReplicaConfig:
    table = sub_table(data, "consensus", required=False)
    allowed = _consensus_fields()
    only_keys("consensus", table, allowed)
    overrides = {k: int_field(table, "consensus", k, required=True) for k in table}
    return _replica_config(overrides, n, node_id)


def _limits(data: Mapping[str, Any]) -> NodeLimits:
    table = sub_table(data, "limits", required=False)
    only_keys("limits", table, {f.name for f in dataclasses.fields(NodeLimits)})
    return NodeLimits(**{k: int_field(table, "limits", k, required=True) for k in table})


def _consensus_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(ReplicaConfig)} - DERIVED_CONSENSUS_FIELDS


_ZERO_ALLOWED_CONSENSUS_FIELDS: Final = frozenset({"batch_timeout_ms"})
"""Consensus keys for which 0 means something (no linger: adaptive batching)."""


def _replica_config(overrides: dict[str, int], n: int, node_id: int) -> ReplicaConfig:
    unknown = set(overrides) - _consensus_fields()
    if unknown:
        raise ConfigError(f"consensus.{sorted(unknown)[0]}", "unknown key")
    for k, v in overrides.items():
        least = 0 if k in _ZERO_ALLOWED_CONSENSUS_FIELDS else 1
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            what = "a non-negative" if least == 0 else "a positive"
            raise ConfigError(f"consensus.{k}", f"must be {what} integer, got {v!r}")
    if n < 4:
        raise ConfigError("replicas", f"at least 4 replicas are needed (n = 3f+1), got {n}")
    if not 0 <= node_id < n:
        raise ConfigError("node.id", f"{node_id} is not a replica id (0..{n - 1})")
    try:
        return ReplicaConfig(n=n, replica_id=node_id, **overrides)
    except ValueError as e:
        raise ConfigError("consensus", str(e)) from e


__all__ = [
    "LOG_LEVELS",
    "ClientEntry",
    "ConfigError",
    "NodeConfig",
    "NodeLimits",
    "ReplicaEntry",
    "TlsConfig",
    "load_config",
    "make_node_config",
    "parse_config",
]
