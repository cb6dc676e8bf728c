"""Who may read from a node: the read-authorization check of the client API.

``GET /tx/{id}``, ``/blocks``, ``/audit`` and the details of ``/status`` answer only a reader
holding a key the node's config registers: a hospital client key (``[[clients]]``) or a
replica key (``[[replicas]]``: peers audit and repair from each other). A reader proves it
holds one in either of two ways:

* a TLS client certificate whose key is that key (``node.tls``: ``medchain init --tls`` issues
  one per hospital client and per node), or
* a signed read token, ``X-Medchain-Read: <public key hex> <expires_ms> <signature hex>``: an
  Ed25519 signature, bound to the cluster id (``node.crypto.cluster_domain``), over
  ``canonical("medchain/read-token", (public key, expires_ms))``, valid until ``expires_ms``
  and for at most ``READ_TOKEN_MAX_MS``. A token can be replayed by whoever sees it until it
  expires; over TLS nobody else sees it, over plain HTTP the answers are visible anyway.

Without either, these answer 401 (anonymous ``/status`` gets the public summary: id, view,
height, head hash, health), unless the config says ``[access] open = true``: a cluster open for
research, which the node announces loudly at start-up. ``POST /tx`` needs no reader key (every
transaction is signed by a registered client key and checked), nor does ``/health``.
Who may read which patient's payload is the privacy layer's decision; this module makes sure
nobody anonymous reads what the config does not allow.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware

from consensus.hashing import canonical
from node.crypto import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, cluster_domain, verify
from node.tls import PeerKeys

if TYPE_CHECKING:
    from node.runtime import Node

READ_HEADER: Final = "X-Medchain-Read"
READ_TOKEN_MAX_MS: Final = 60_000
"""Longest a read token may be valid for (a longer one is refused)."""
READ_TOKEN_RENEW_MS: Final = 20_000
"""A signer makes a new token once its current one has less than this left."""
_DOMAIN: Final = b"medchain/read-token"
PROTECTED_PREFIXES: Final = ("/tx/", "/blocks", "/audit")
STATUS_PATH: Final = "/status"
PUBLIC_STATUS_KEYS: Final = (
    "node",
    "view",
    "primary",
    "is_primary",
    "in_view_change",
    "height",
    "head_hash",
    "healthy",
    "n",
    "f",
    "cluster_id",
)
"""What anonymous GET /status shows of a closed cluster: enough for a launcher or a load
balancer to see the node is up and where it is, nothing about its peers, clients or traffic."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def token_bytes(public: bytes, expires_ms: int) -> bytes:
    """What a read token's key signs (the caller prefixes the cluster domain)."""
    return canonical(_DOMAIN, (public, expires_ms))


class ReadChecker:
    """Decides whether one request may read: the key of its certificate or token."""

    def __init__(
        self,
        *,
        readers: Collection[bytes],
        cluster_id: bytes,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self._readers = frozenset(readers)
        self._domain = cluster_domain(cluster_id)
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self._peer_keys = PeerKeys()

    def reader(self, request: web.Request) -> bytes | str:
        """The registered key the request reads under; else why it has none."""
        transport = request.transport
        ssl_object = None if transport is None else transport.get_extra_info("ssl_object")
        key = self._peer_keys.of(ssl_object)
        if key is not None and key in self._readers:
            return key
        header = request.headers.get(READ_HEADER)
        if header is None:
            if key is not None:
                return "the client certificate's key is not a registered client or replica key"
            return f"a registered client certificate or a signed {READ_HEADER} token is needed"
        return self._check_token(header)

    def _check_token(self, header: str) -> bytes | str:
        parsed = _parse_token(header)
        if parsed is None:
            return f"{READ_HEADER} must be '<public key hex> <expires_ms> <signature hex>'"
        public, expires_ms, sig = parsed
        now = self._clock_ms()
        if expires_ms <= now:
            return "the read token has expired"
        if expires_ms - now > READ_TOKEN_MAX_MS:
            return f"a read token may be valid for at most {READ_TOKEN_MAX_MS} ms"
        if public not in self._readers:
            return "the read token's key is not a registered client or replica key"
        if not verify(public, self._domain + token_bytes(public, expires_ms), sig):
            return "the read token's signature does not verify"
        return public


def _parse_token(header: str) -> tuple[bytes, int, bytes] | None:
    if not header.isascii():
        return None
    parts = header.split(" ")
    if len(parts) != 3:
        return None
    pub, expires, sig = parts
    if len(pub) != 2 * PUBLIC_KEY_SIZE or len(sig) != 2 * SIGNATURE_SIZE:
        return None
    if not expires.isdigit() or len(expires) > 16:
        return None
    try:
        return bytes.fromhex(pub), int(expires), bytes.fromhex(sig)
    except ValueError:
        return None


def protected(path: str) -> bool:
    return path.startswith(PROTECTED_PREFIXES)


def read_access(node: Node) -> Middleware:
    """The middleware that enforces read authorization on ``node``'s API."""
    cfg = node.config
    checker = ReadChecker(
        readers={c.public_key for c in cfg.clients} | {r.public_key for r in cfg.replicas},
        cluster_id=cfg.cluster_id.encode(),
    )

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if cfg.access_open or request.method not in ("GET", "HEAD"):
            return await handler(request)
        path = request.path
        is_status = path == STATUS_PATH
        if not is_status and not protected(path):
            return await handler(request)
        who = checker.reader(request)
        if isinstance(who, bytes):
            return await handler(request)
        if is_status:
            return web.json_response(public_status(node.status()))
        return web.json_response(
            {"error": "authentication required", "detail": who},
            status=401,
            headers={"WWW-Authenticate": "medchain-read"},
        )

    return middleware


def public_status(doc: dict[str, object]) -> dict[str, object]:
    out: dict[str, object] = {k: doc[k] for k in PUBLIC_STATUS_KEYS if k in doc}
    out["access"] = "closed"
    out["detail"] = "peers, counters and keys need a registered client or replica key"
    return out


# ---------------------------------------------------------------------------------------------
# the reading side: tokens and sessions


class ReadTokens:
    """Signs read tokens for one key, renewing each before it runs out.

    ``sign`` signs bytes with the reader's key, bound to the cluster (a ``NodeCrypto.sign``,
    or a hospital client's key with the cluster domain in front: see :func:`client_signer`)."""

    __slots__ = ("_clock_ms", "_current", "_expires_ms", "_public", "_sign")

    def __init__(
        self,
        public: bytes,
        sign: Callable[[bytes], bytes],
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self._public = public
        self._sign = sign
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self._current = ""
        self._expires_ms = 0

    def header(self) -> str:
        now = self._clock_ms()
        if self._expires_ms - now < READ_TOKEN_RENEW_MS:
            expires = now + READ_TOKEN_MAX_MS - 1_000  # a second of slack for the node's clock
            sig = self._sign(token_bytes(self._public, expires))
            self._current = f"{self._public.hex()} {expires} {sig.hex()}"
            self._expires_ms = expires
        return self._current


def client_signer(secret: bytes, cluster_id: bytes) -> Callable[[bytes], bytes]:
    """Signs with a hospital client key, bound to ``cluster_id`` (as the node verifies)."""
    from node.crypto import Signer

    signer = Signer(secret)
    domain = cluster_domain(cluster_id)
    return lambda data: signer.sign(domain + data)


@dataclass(frozen=True, slots=True)
class ReaderHttp:
    """How a reader opens HTTP sessions to nodes: TLS context (None: plain HTTP) and the read
    tokens every request carries (None: none)."""

    ssl_context: ssl.SSLContext | None = None
    tokens: ReadTokens | None = None

    def session(self, *, limit: int = 0, limit_per_host: int = 2) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=limit,
            limit_per_host=limit_per_host,
            ssl=self.ssl_context if self.ssl_context is not None else True,
        )
        tokens = self.tokens
        if tokens is None:
            return aiohttp.ClientSession(connector=connector)

        async def sign_reads(
            req: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
        ) -> aiohttp.ClientResponse:
            if req.method in ("GET", "HEAD"):
                req.headers[READ_HEADER] = tokens.header()
            return await handler(req)

        return aiohttp.ClientSession(connector=connector, middlewares=(sign_reads,))


__all__ = [
    "READ_HEADER",
    "ReadChecker",
    "ReadTokens",
    "ReaderHttp",
    "client_signer",
    "public_status",
    "read_access",
    "token_bytes",
]
