"""What a tool presents to a cluster's nodes: the cluster CA, a client certificate, read tokens.

A cluster directory holds everything a tool needs (``medchain init`` wrote it): hospital-0's
client key (``keys/client-hospital-0.key``), with ``--tls`` the cluster CA (``tls/ca.pem``) and
that client's certificate and PEM key, and the cluster id (in every ``node{i}.toml``). A tool
that knows the cluster directory calls :func:`use_cluster_credentials` (the CLI does for
``--dir``, ``ClusterProcesses`` for the cluster it manages); every ``NodeClient`` opened after
that, in this process or a child (the variable is in the environment, so the bench's load
generator has it too), trusts that CA, presents that certificate and signs read tokens with that
key. Without one, a client speaks plain HTTP anonymously, as before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from node.access import ReaderHttp, ReadTokens, client_signer
from node.config import ConfigError, load_config
from node.crypto import KeyFileError, load_key
from node.tls import client_context

CLUSTER_ENV = "MEDCHAIN_CLUSTER"
"""The cluster directory whose credentials the tools of this process (and its children) use."""


@dataclass(frozen=True, slots=True)
class Credentials:
    cluster_id: bytes
    hospital: str
    client_public: bytes
    client_secret: bytes = field(repr=False)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def reader_http(self) -> ReaderHttp:
        ctx = None
        if self.ca_file is not None:
            ctx = client_context(self.ca_file, self.cert_file, self.key_file)
        tokens = ReadTokens(self.client_public, client_signer(self.client_secret, self.cluster_id))
        return ReaderHttp(ssl_context=ctx, tokens=tokens)


def for_cluster(root: Path) -> Credentials | None:
    """The credentials in cluster directory ``root``; None if it holds no cluster."""
    from scripts.cluster import ClusterLayout  # the layout's module imports the client

    layout = ClusterLayout(root)
    indices = layout.node_indices()
    if not indices:
        return None
    try:
        config = load_config(layout.config_path(indices[0]))
    except ConfigError:
        return None
    if not config.clients:
        return None
    hospital = config.clients[0].hospital
    try:
        secret, public = load_key(layout.client_key(hospital))
    except KeyFileError:
        return None
    tls = {}
    if layout.ca_cert.is_file():
        name = f"client-{hospital}"
        tls = {"ca_file": layout.ca_cert, "cert_file": layout.cert(name)}
        tls["key_file"] = layout.tls_key(name)
    return Credentials(
        cluster_id=config.cluster_id.encode(),
        hospital=hospital,
        client_public=public,
        client_secret=secret,
        **tls,
    )


_cache: dict[str, Credentials | None] = {}


def use_cluster_credentials(root: Path) -> None:
    """Make ``root``'s credentials the ones this process's (and its children's) tools use."""
    os.environ[CLUSTER_ENV] = str(Path(root).resolve())


def current() -> Credentials | None:
    """The credentials named by the environment (see :func:`use_cluster_credentials`)."""
    root = os.environ.get(CLUSTER_ENV)
    if not root:
        return None
    if root not in _cache:
        _cache[root] = for_cluster(Path(root))
    return _cache[root]


def reader_http() -> ReaderHttp:
    """How this process's tools reach nodes (TlsError if the cluster's TLS files are bad)."""
    creds = current()
    return creds.reader_http() if creds is not None else ReaderHttp()


def client_session(*, limit: int = 100) -> aiohttp.ClientSession:
    """An aiohttp session to the current cluster's nodes (TLS and read tokens as configured):
    for the tools that speak another API than ``NodeClient``'s (the admin API)."""
    return reader_http().session(limit=limit, limit_per_host=0)


__all__ = [
    "CLUSTER_ENV",
    "Credentials",
    "client_session",
    "current",
    "for_cluster",
    "reader_http",
    "use_cluster_credentials",
]
