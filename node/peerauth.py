"""Who sent a POST /peer/msgs: the sender is authenticated before a byte of the body is read.

Two ways, one per link kind:

* **TLS** (``[tls] enabled``): the sender is the replica whose public key is the key of the
  client certificate on the connection (``node.tls``: node certificates carry the replica key).
  The CA proves the certificate is this cluster's; the key, looked up in the config, proves
  which replica it is. The ``X-Medchain-From`` header must name that same replica.
* **Plain HTTP** (dev clusters): each POST carries ``X-Medchain-Peer-Auth: <ts_ms> <sha256 of
  the body, hex> <signature, hex>``, the sender's Ed25519 signature (bound to the cluster id
  like every consensus signature) over ``canonical("medchain/peer-post", (sender, receiver,
  ts_ms, body_sha256))``. The receiver checks the signature, that the receiver named is itself,
  that ``ts_ms`` is within ``PEER_AUTH_WINDOW_MS`` of its clock and above the last one accepted
  from that sender (a captured POST cannot be replayed, here or at another node), all before it
  reads the body; then that the body it read has the signed hash, before decoding it. A plain
  link is authenticated, not encrypted: use TLS between hospitals.

The sender id that comes out of this is what the node believes: it is the replica that counts
as "heard from", and the only one a fetch reply or any answer is sent to
(``node.transport``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from consensus.hashing import canonical
from node.crypto import SIGNATURE_SIZE, ReplicaKeys, domain_of, verify
from node.tls import PeerKeys

FROM_HEADER = "X-Medchain-From"
AUTH_HEADER = "X-Medchain-Peer-Auth"
PEER_AUTH_WINDOW_MS = 30_000
"""How far a signed POST's clock may be from the receiver's (both ways)."""
_DOMAIN = b"medchain/peer-post"
_MAX_TS_DIGITS = 16
_HASH_HEX = 64


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a POST is refused before its body is read: the status, a counter key, the detail."""

    status: int
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Sender:
    """An authenticated sender, and the body hash a plain-HTTP POST signed (None under TLS)."""

    replica: int
    body_sha256: bytes | None


class PeerAuth:
    """Both ends of peer authentication for one node: ``headers`` signs what it sends,
    ``identify`` and ``check_body`` authenticate what it receives."""

    def __init__(
        self,
        *,
        self_id: int,
        replicas: ReplicaKeys,
        sign: Callable[[bytes], bytes],
        tls: bool,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self.self_id = self_id
        self.tls = tls
        self._publics = tuple(replicas)
        self._domain = domain_of(replicas)
        self._by_key = {pk: i for i, pk in enumerate(replicas) if i != self_id}
        self._sign = sign
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self._last_sent_ms = 0
        self._last_seen_ms: dict[int, int] = {}
        self._peer_keys = PeerKeys()

    # -- sending -----------------------------------------------------------------------------

    def headers(self, dest: int, body: bytes) -> dict[str, str]:
        """The authentication headers of one POST of ``body`` to replica ``dest``."""
        out = {FROM_HEADER: str(self.self_id)}
        if self.tls:
            return out  # the connection's certificate says who we are
        ts = max(self._clock_ms(), self._last_sent_ms + 1)
        self._last_sent_ms = ts
        digest = hashlib.sha256(body).digest()
        sig = self._sign(_signed(self.self_id, dest, ts, digest))
        out[AUTH_HEADER] = f"{ts} {digest.hex()} {sig.hex()}"
        return out

    # -- receiving ---------------------------------------------------------------------------

    def identify(self, request: web.Request) -> Sender | Refusal:
        """The authenticated sender of ``request``, from its headers and connection only."""
        claimed = _claimed_sender(request.headers.get(FROM_HEADER))
        if claimed is None:
            return Refusal(400, "bad_sender_header", f"{FROM_HEADER} must be a replica id")
        if self.tls:
            return self._identify_tls(request, claimed)
        if claimed == self.self_id or not 0 <= claimed < len(self._publics):
            return Refusal(403, "unknown_sender", f"replica {claimed} is not a peer of this node")
        return self._identify_signed(request.headers.get(AUTH_HEADER), claimed)

    def _identify_tls(self, request: web.Request, claimed: int) -> Sender | Refusal:
        transport = request.transport
        ssl_object = None if transport is None else transport.get_extra_info("ssl_object")
        key = self._peer_keys.of(ssl_object)
        if key is None:
            return Refusal(401, "no_client_certificate", "peer links need a node certificate")
        sender = self._by_key.get(key)
        if sender is None:
            return Refusal(403, "unknown_certificate", "the certificate's key is no peer's key")
        if sender != claimed:
            return Refusal(
                403, "sender_mismatch", f"{FROM_HEADER} says {claimed}, the certificate {sender}"
            )
        return Sender(sender, None)

    def _identify_signed(self, header: str | None, claimed: int) -> Sender | Refusal:
        parsed = _parse_auth(header)
        if parsed is None:
            return Refusal(401, "bad_peer_auth", f"{AUTH_HEADER}: <ts_ms> <sha256 hex> <sig hex>")
        ts, digest, sig = parsed
        now = self._clock_ms()
        if abs(now - ts) > PEER_AUTH_WINDOW_MS:
            return Refusal(401, "stale_peer_auth", f"timestamp {ts} is {now - ts} ms off")
        signed = self._domain + _signed(claimed, self.self_id, ts, digest)
        if not verify(self._publics[claimed], signed, sig):
            return Refusal(401, "bad_peer_signature", f"not signed by replica {claimed}")
        if ts <= self._last_seen_ms.get(claimed, 0):
            return Refusal(401, "replayed_peer_auth", f"timestamp {ts} was already used")
        self._last_seen_ms[claimed] = ts
        return Sender(claimed, digest)

    @staticmethod
    def check_body(sender: Sender, body: bytes) -> Refusal | None:
        """A plain-HTTP POST's body must be the one its sender signed."""
        if sender.body_sha256 is not None and hashlib.sha256(body).digest() != sender.body_sha256:
            return Refusal(401, "body_hash_mismatch", "the body is not the one signed")
        return None


def _signed(sender: int, receiver: int, ts_ms: int, digest: bytes) -> bytes:
    return canonical(_DOMAIN, (sender, receiver, ts_ms, digest))


def _claimed_sender(raw: str | None) -> int | None:
    if raw is None or not raw.isascii() or not raw.isdigit() or len(raw) > 6:
        return None
    return int(raw)


def _parse_auth(header: str | None) -> tuple[int, bytes, bytes] | None:
    if header is None or not header.isascii():
        return None
    parts = header.split(" ")
    if len(parts) != 3:
        return None
    ts, digest, sig = parts
    if not ts.isdigit() or len(ts) > _MAX_TS_DIGITS or len(digest) != _HASH_HEX:
        return None
    if len(sig) != 2 * SIGNATURE_SIZE:
        return None
    try:
        return int(ts), bytes.fromhex(digest), bytes.fromhex(sig)
    except ValueError:
        return None


__all__ = ["AUTH_HEADER", "FROM_HEADER", "PeerAuth", "Refusal", "Sender"]
