"""TLS for a node: a small cluster CA, per-node and per-client certificates, SSL contexts.

Every certificate's key is an Ed25519 key the consortium already knows: a node's certificate
carries its replica key, a client's carries its registered hospital client key. So a peer or a
client is identified by the key in its certificate, checked against the node's config, and the
CA only vouches that the certificate is one of this cluster's: a certificate the CA signed for a
key the config does not list is refused, and a stolen CA key alone cannot impersonate a replica
(the attacker would also need that replica's key).

TLS 1.3 only (Ed25519 certificates need it or TLS 1.2 with ed25519 sigalgs; 1.3 is simpler and
the only version we test). The server asks every client for a certificate but does not require
one (``CERT_OPTIONAL``): hospitals submit signed transactions and read ``/health`` without one,
and the peer endpoint and the read paths refuse an unidentified connection themselves
(``node.transport``, ``node.access``). A certificate presented must chain to the cluster CA.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import ssl
import tempfile
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from node.config import TlsConfig

CA_DAYS = 3650
LEAF_DAYS = 825
_PEER_KEY_CACHE = 1024
"""Distinct peer certificates whose key is remembered (one parse per certificate, not per
request)."""


class TlsError(ValueError):
    """A TLS file is missing, malformed, or does not belong to this node."""


# ---------------------------------------------------------------------------------------------
# certificates (what `medchain init --tls` makes)


def private_key(seed: bytes) -> Ed25519PrivateKey:
    """The cryptography key of an Ed25519 seed (the 32 bytes a medchain key file holds)."""
    return Ed25519PrivateKey.from_private_bytes(seed)


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def make_ca(seed: bytes, name: str) -> x509.Certificate:
    """A self-signed CA certificate for the cluster (path length 0: it signs leaves only)."""
    key = private_key(seed)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    return builder.sign(key, None)


def issue(
    ca_seed: bytes,
    ca_cert: x509.Certificate,
    public: bytes,
    name: str,
    *,
    hosts: Sequence[str] = (),
    server: bool,
) -> x509.Certificate:
    """A leaf certificate for the Ed25519 key ``public``: client auth always, server auth
    (with ``hosts`` as subject alternative names) for a node."""
    now = datetime.datetime.now(datetime.UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + (
        [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(Ed25519PublicKey.from_public_bytes(public))
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    if hosts:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False
        )
    return builder.sign(private_key(ca_seed), None)


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(seed: bytes) -> bytes:
    return private_key(seed).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_private(path: Path, data: bytes) -> None:
    """A private key file: created 0600 (never briefly readable), fsynced, moved into place."""
    _write(path, data, 0o600)


def write_public(path: Path, data: bytes) -> None:
    _write(path, data, 0o644)


def _write(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def certificate_key(path: Path) -> bytes:
    """The raw Ed25519 public key of the PEM certificate at ``path``; TlsError otherwise."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as e:
        raise TlsError(f"{path}: not a readable PEM certificate ({e})") from None
    key = cert.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise TlsError(f"{path}: the certificate's key is not Ed25519")
    return raw_public(key)


# ---------------------------------------------------------------------------------------------
# SSL contexts


def _base(purpose: ssl.Purpose, ca_file: Path) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(purpose, cafile=str(ca_file))
    except (OSError, ssl.SSLError) as e:
        raise TlsError(f"{ca_file}: cannot load the cluster CA ({e})") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def _load_chain(ctx: ssl.SSLContext, cert_file: Path, key_file: Path) -> None:
    try:
        ctx.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as e:
        raise TlsError(f"{cert_file}, {key_file}: cannot load ({e})") from None


def server_context(tls: TlsConfig) -> ssl.SSLContext:
    """The node's server side: its certificate; a client certificate asked for, checked
    against the cluster CA if presented, but not required (see the module docstring)."""
    assert tls.ca_file and tls.cert_file and tls.key_file
    ctx = _base(ssl.Purpose.CLIENT_AUTH, tls.ca_file)
    _load_chain(ctx, tls.cert_file, tls.key_file)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def client_context(
    ca_file: Path, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """A client side that trusts only the cluster CA (and checks the host name), presenting
    ``cert_file`` if given (a node to its peers, a hospital client to a node)."""
    ctx = _base(ssl.Purpose.SERVER_AUTH, ca_file)
    if cert_file is not None and key_file is not None:
        _load_chain(ctx, cert_file, key_file)
    return ctx


def node_client_context(tls: TlsConfig) -> ssl.SSLContext:
    assert tls.ca_file
    return client_context(tls.ca_file, tls.cert_file, tls.key_file)


def check_own_certificate(tls: TlsConfig, replica_public: bytes) -> None:
    """Refuse to start with a certificate that does not carry this node's replica key."""
    assert tls.cert_file
    if certificate_key(tls.cert_file) != replica_public:
        raise TlsError(
            f"{tls.cert_file}: the certificate's key is not this node's replica key "
            f"({replica_public.hex()[:16]}...): re-issue it with `medchain init --tls`"
        )


class PeerKeys:
    """The Ed25519 key of the certificate on a TLS connection, parsed once per certificate."""

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: OrderedDict[bytes, bytes | None] = OrderedDict()

    def of(self, ssl_object: object) -> bytes | None:
        """The verified peer certificate's raw Ed25519 key; None without one."""
        getpeercert = getattr(ssl_object, "getpeercert", None)
        if getpeercert is None:
            return None
        der = getpeercert(binary_form=True)
        if not der:
            return None
        if der in self._cache:
            self._cache.move_to_end(der)
            return self._cache[der]
        try:
            key = x509.load_der_x509_certificate(der).public_key()
            public = raw_public(key) if isinstance(key, Ed25519PublicKey) else None
        except ValueError:
            public = None
        self._cache[der] = public
        if len(self._cache) > _PEER_KEY_CACHE:
            self._cache.popitem(last=False)
        return public


__all__ = [
    "PeerKeys",
    "TlsError",
    "cert_pem",
    "certificate_key",
    "check_own_certificate",
    "client_context",
    "issue",
    "key_pem",
    "make_ca",
    "node_client_context",
    "server_context",
    "write_private",
    "write_public",
]
