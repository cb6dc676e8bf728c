"""A cluster made by `medchain init --tls`: real node processes on 127.0.0.1 over TLS only.

It commits signed records end to end and every chain verifies (the tools read the CA, the client
certificate and the cluster id from the cluster directory); reads are closed to anonymous
clients; a certificate of another CA does not get through the handshake; a certificate the
cluster CA signed for a key the config does not list reads nothing and cannot speak as a peer;
plain HTTP to a TLS node gets no answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from node.crypto import generate_keypair, load_key
from node.ledger import make_transaction
from node.tls import cert_pem, client_context, issue, key_pem, make_ca, write_private, write_public
from scripts.cli import main as cli_main
from scripts.client import NodeClient
from scripts.cluster import ClusterLayout, ClusterProcesses
from scripts.provision import init_cluster

pytestmark = pytest.mark.integration
READY_TIMEOUT_S = 60.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterProcesses]:
    root = tmp_path / "cluster"
    result = init_cluster(root, 4, tls=True)
    assert result.tls and not result.open_access
    procs = ClusterProcesses(root)
    try:
        procs.up(timeout=READY_TIMEOUT_S)
        yield procs
    finally:
        with contextlib.suppress(Exception):
            procs.down(timeout=10)


def _stranger(tmp_path: Path, layout: ClusterLayout, *, same_ca: bool) -> ssl.SSLContext:
    """A client context with a certificate for a key no config lists, signed by the cluster CA
    (``same_ca``) or by a CA of its own."""
    secret, public = generate_keypair()
    if same_ca:
        ca_seed = _pem_seed(layout.tls_key("ca"))
        from cryptography import x509

        ca = x509.load_pem_x509_certificate(layout.ca_cert.read_bytes())
    else:
        ca_seed = generate_keypair()[0]
        ca = make_ca(ca_seed, "another CA")
    cert = issue(ca_seed, ca, public, "stranger", server=False)
    cert_file, key_file = tmp_path / f"stranger-{same_ca}.pem", tmp_path / f"s-{same_ca}.key"
    write_public(cert_file, cert_pem(cert))
    write_private(key_file, key_pem(secret))
    return client_context(layout.ca_cert, cert_file, key_file)


def _pem_seed(path: Path) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = serialization.load_pem_private_key(path.read_bytes(), None)
    assert isinstance(key, Ed25519PrivateKey)
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


async def _get(ctx: ssl.SSLContext | None, url: str) -> int:
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx or False)) as s,
        s.get(url, timeout=aiohttp.ClientTimeout(total=10)) as r,
    ):
        return r.status


async def _post_peer(ctx: ssl.SSLContext, url: str) -> int:
    headers = {"X-Medchain-From": "1", "Content-Type": "application/msgpack"}
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s,
        s.post(url + "/peer/msgs", data=b"\x90", headers=headers) as r,
    ):
        return r.status


def test_a_tls_cluster_commits_verifies_and_refuses_strangers(
    cluster: ClusterProcesses, tmp_path: Path
) -> None:
    layout = cluster.layout
    urls = [s.url for s in cluster.specs()]
    assert all(u.startswith("https://") for u in urls)
    secret, _ = load_key(layout.client_key("hospital-0"))
    envs = [
        make_transaction(secret, "hospital-0", f"p-{i}", "lab", f"x{i}".encode(), record_id=f"r{i}")
        for i in range(20)
    ]

    async def commit() -> list[int]:
        async with NodeClient(urls) as client:
            await client.submit(envs, deadline=time.monotonic() + 30)
            return [await client.wait_committed(e, deadline=time.monotonic() + 30) for e in envs]

    heights = asyncio.run(commit())
    assert min(heights) >= 1
    assert cli_main(["verify", "--dir", str(layout.root)]) == 0

    async def strangers() -> None:
        anonymous = client_context(layout.ca_cert)
        assert await _get(anonymous, f"{urls[0]}/blocks/1") == 401
        assert await _get(anonymous, f"{urls[0]}/health") == 200
        registered_ca = _stranger(tmp_path, layout, same_ca=True)
        assert await _get(registered_ca, f"{urls[0]}/blocks/1") == 401
        assert await _post_peer(registered_ca, urls[0]) == 403
        other_ca = _stranger(tmp_path, layout, same_ca=False)
        with pytest.raises(aiohttp.ClientError):
            await _get(other_ca, f"{urls[0]}/health")
        with pytest.raises(aiohttp.ClientError):
            await _get(None, urls[0].replace("https://", "http://") + "/health")

    asyncio.run(strangers())
