"""Ed25519 keys, signatures and key files (pynacl / libsodium).

The consensus core signs and verifies through the small ``consensus.events.Crypto`` protocol;
:class:`NodeCrypto` is the shell's implementation of it. Everything signed in medchain is
already domain separated by its caller (``signing_bytes()`` / ``header_bytes()`` start with a
``medchain/...`` tag). Consensus signatures are also bound to the cluster: :class:`NodeCrypto`
signs and verifies ``cluster_domain(cluster_id) + signing_bytes``, so a vote or a commit
certificate of one consortium never verifies in another one that shares a replica key (a
hospital in two consortia, a test cluster beside a production one). :class:`ReplicaKeys` carries
the cluster id beside the replica keys to every offline verifier of certificates.

We call libsodium through ``nacl.bindings`` rather than ``SigningKey``/``VerifyKey``: the hot path
(verifying every consensus message and every transaction) then does one C call with no wrapper
objects, and the expanded signing key is derived once per :class:`NodeCrypto`, not per signature.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path

import nacl.bindings
import nacl.exceptions

SEED_SIZE = 32
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
KEY_KIND = "ed25519"
MAX_KEY_FILE_BYTES = 4096
"""A key file is ~200 bytes; refuse to read anything much larger (wrong path, not a key)."""


class KeyFileError(ValueError):
    """A key file is missing, unreadable, malformed, inconsistent or too widely readable."""


def generate_keypair(seed: bytes | None = None) -> tuple[bytes, bytes]:
    """Return ``(secret, public)``: the 32-byte Ed25519 seed and its 32-byte public key.

    A fixed ``seed`` gives a deterministic key (tests, simulations); without one the seed comes
    from the OS CSPRNG.
    """
    if seed is None:
        seed = os.urandom(SEED_SIZE)
    _check_seed(seed)
    public, _expanded = nacl.bindings.crypto_sign_seed_keypair(seed)
    return bytes(seed), public


def public_key_of(secret: bytes) -> bytes:
    _check_seed(secret)
    public, _expanded = nacl.bindings.crypto_sign_seed_keypair(secret)
    return public


def sign(secret: bytes, data: bytes) -> bytes:
    """Detached 64-byte signature of ``data`` with the 32-byte seed ``secret``.

    Derives the expanded key on every call; long-lived signers should use :class:`Signer`.
    """
    return Signer(secret).sign(data)


def verify(public: bytes, data: bytes, signature: bytes) -> bool:
    """True iff ``signature`` is a valid Ed25519 signature of ``data`` under ``public``.

    Never raises: wrong types, wrong sizes and invalid keys all give False, so callers can feed
    it whatever a peer or client sent.
    """
    if not (
        type(public) is bytes
        and len(public) == PUBLIC_KEY_SIZE
        and type(signature) is bytes
        and len(signature) == SIGNATURE_SIZE
        and type(data) is bytes
    ):
        return False
    try:
        nacl.bindings.crypto_sign_open(signature + data, public)
    except nacl.exceptions.CryptoError:
        return False
    return True


class Signer:
    """Holds an expanded Ed25519 signing key so each signature is a single libsodium call."""

    __slots__ = ("_expanded", "public")

    def __init__(self, secret: bytes) -> None:
        _check_seed(secret)
        self.public, self._expanded = nacl.bindings.crypto_sign_seed_keypair(secret)

    def sign(self, data: bytes) -> bytes:
        # crypto_sign returns signature || message; the detached signature is the prefix.
        signed: bytes = nacl.bindings.crypto_sign(data, self._expanded)
        return signed[:SIGNATURE_SIZE]

    def __repr__(self) -> str:  # never print key material
        return f"Signer(public={self.public.hex()})"


MAX_CLUSTER_ID_BYTES = 64


def cluster_domain(cluster_id: bytes) -> bytes:
    """The prefix that binds a consensus signature to one cluster. Empty for the empty id (a
    cluster made before cluster ids existed, and unit tests), so those signatures are unchanged;
    otherwise a tag, the id's length and the id, so no id is a prefix of another's domain."""
    if type(cluster_id) is not bytes or len(cluster_id) > MAX_CLUSTER_ID_BYTES:
        raise ValueError(f"cluster id must be at most {MAX_CLUSTER_ID_BYTES} bytes")
    if not cluster_id:
        return b""
    return b"medchain/cluster\x00" + bytes([len(cluster_id)]) + cluster_id


class ReplicaKeys(tuple[bytes, ...]):
    """The replica public keys of one cluster in replica-id order, and the cluster id that
    each of its consensus signatures binds (see :func:`cluster_domain`). A plain sequence of
    keys stands for the empty cluster id."""

    cluster_id: bytes

    def __new__(cls, publics: Sequence[bytes], cluster_id: bytes = b"") -> ReplicaKeys:
        keys = super().__new__(cls, publics)
        cluster_domain(cluster_id)  # validates it
        keys.cluster_id = cluster_id
        return keys

    def __getnewargs__(self) -> tuple[tuple[bytes, ...], bytes]:
        return (tuple(self), self.cluster_id)


def as_replica_keys(consortium: Sequence[bytes]) -> ReplicaKeys:
    """``consortium`` as ReplicaKeys, keeping its cluster id (``tuple()`` would drop it)."""
    if isinstance(consortium, ReplicaKeys):
        return consortium
    return ReplicaKeys(tuple(consortium))


def domain_of(consortium: Sequence[bytes]) -> bytes:
    """The signing domain of the cluster whose replica keys ``consortium`` holds."""
    return cluster_domain(getattr(consortium, "cluster_id", b""))


class NodeCrypto:
    """``consensus.events.Crypto`` for one replica: its own key plus the consortium's publics,
    every signature bound to the cluster id."""

    __slots__ = ("_domain", "_publics", "_signer")

    def __init__(
        self, secret: bytes, replica_publics: Sequence[bytes], cluster_id: bytes | None = None
    ) -> None:
        publics = tuple(replica_publics)
        for i, pk in enumerate(publics):
            if type(pk) is not bytes or len(pk) != PUBLIC_KEY_SIZE:
                raise ValueError(f"replica {i} public key must be {PUBLIC_KEY_SIZE} bytes")
        if cluster_id is None:
            cluster_id = getattr(replica_publics, "cluster_id", b"")
        self._signer = Signer(secret)
        self._publics = publics
        self._domain = cluster_domain(cluster_id)

    @property
    def public(self) -> bytes:
        return self._signer.public

    @property
    def replica_publics(self) -> tuple[bytes, ...]:
        return self._publics

    def sign(self, data: bytes) -> bytes:
        return self._signer.sign(self._domain + data)

    def verify(self, replica: int, data: bytes, signature: bytes) -> bool:
        """False for an unknown replica id as for a bad signature: a peer cannot make us raise."""
        if type(replica) is not int or not 0 <= replica < len(self._publics):
            return False
        if type(data) is not bytes:
            return False
        return verify(self._publics[replica], self._domain + data, signature)

    def sign_raw(self, data: bytes) -> bytes:
        """A signature of ``data`` as given (its caller has its own domain tag)."""
        return self._signer.sign(data)

    def __repr__(self) -> str:
        return f"NodeCrypto(public={self.public.hex()}, n={len(self._publics)})"


# ---------------------------------------------------------------------------------------------
# hex helpers


def public_key_hex(public: bytes) -> str:
    if type(public) is not bytes or len(public) != PUBLIC_KEY_SIZE:
        raise ValueError(f"public key must be {PUBLIC_KEY_SIZE} bytes")
    return public.hex()


def public_key_from_hex(text: str) -> bytes:
    """Parse a hex public key (as in configs and the HTTP API); ValueError naming the problem."""
    return _hex_bytes(text, PUBLIC_KEY_SIZE, "public key")


def _hex_bytes(text: object, size: int, what: str) -> bytes:
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a hex string, got {type(text).__name__}")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{what} is not valid hex") from None
    if len(raw) != size:
        raise ValueError(f"{what} must be {size} bytes ({2 * size} hex chars), got {len(raw)}")
    return raw


# ---------------------------------------------------------------------------------------------
# key files


def save_key(
    path: str | os.PathLike[str], secret: bytes, public: bytes, *, overwrite: bool = False
) -> None:
    """Write a key file ``{"kind":"ed25519","public":hex,"secret":hex}`` readable by owner only.

    The file is created 0600 from the start (never briefly world readable), fsynced, and moved
    into place atomically, so a crash leaves either the old key or the new one, never half.
    Refuses to replace an existing file unless ``overwrite``: losing a node key is unrecoverable.
    """
    _check_seed(secret)
    if public_key_of(secret) != public:
        raise ValueError("public key does not match the secret key")
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"key file {target} already exists")
    body = json.dumps({"kind": KEY_KIND, "public": public.hex(), "secret": secret.hex()})
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        # mkstemp creates the file 0600 with O_EXCL; fchmod guards against exotic platforms.
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(body + "\n")
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, target)
        else:
            # link() fails if the target appeared meanwhile: never clobber a key by accident.
            os.link(tmp, target)
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


def load_key(
    path: str | os.PathLike[str], *, strict_permissions: bool = True
) -> tuple[bytes, bytes]:
    """Read a key file written by :func:`save_key`; returns ``(secret, public)``.

    Raises :class:`KeyFileError` naming the problem. With ``strict_permissions`` (the default) a
    file readable by group or others is refused, as ssh does for private keys.
    """
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError as e:
        raise KeyFileError(f"cannot open key file {p}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"key file {p} is not a regular file")
        if strict_permissions and st.st_mode & 0o077:
            raise KeyFileError(
                f"key file {p} has mode {stat.S_IMODE(st.st_mode):04o}; it must not be readable "
                "by group or others (chmod 600)"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read(MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"key file {p} is larger than {MAX_KEY_FILE_BYTES} bytes")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise KeyFileError(f"key file {p} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise KeyFileError(f"key file {p} must hold a JSON object")
    if doc.get("kind") != KEY_KIND:
        raise KeyFileError(f"key file {p}: kind must be {KEY_KIND!r}")
    try:
        secret = _hex_bytes(doc.get("secret"), SEED_SIZE, "secret")
        public = _hex_bytes(doc.get("public"), PUBLIC_KEY_SIZE, "public")
    except ValueError as e:
        raise KeyFileError(f"key file {p}: {e}") from None
    if public_key_of(secret) != public:
        raise KeyFileError(f"key file {p}: public key does not match the secret key")
    return secret, public


def _check_seed(secret: object) -> None:
    if type(secret) is not bytes or len(secret) != SEED_SIZE:
        raise ValueError(f"secret key (seed) must be {SEED_SIZE} bytes")


def _fsync_dir(directory: Path) -> None:
    """Make the new directory entry durable (best effort: not every platform allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
