"""Operator-signed admin endpoints that drive a node's fault layer.

    POST /admin/fault    {"fault": {...}, "nonce": hex, "timestamp_ms": int}   -> 201 {"id", ...}
    POST /admin/clear    {"id": int (optional), "nonce": hex, "timestamp_ms": int}
    GET  /admin/faults?nonce=hex&timestamp_ms=int                              -> layer status

Every request is signed with the consortium operator's Ed25519 key (``medchain init`` writes it
to ``keys/operator.key``; node configs hold its public key under ``[operator]``). The signature,
hex in the ``X-Medchain-Operator-Signature`` header, covers :func:`admin_signing_bytes`: the
canonical bytes (``consensus.hashing.canonical``) of the action, the target node id, the nonce,
the timestamp and the request's parameters as canonical JSON (sorted keys, no spaces). Binding
the action and the node id means a signed "clear" cannot be replayed as a "fault", nor a request
for node 1 against node 2; the timestamp (at most 30 s from the node's clock) and a bounded
cache of recently seen nonces stop replays of the same request.

Answers: 400 malformed request or fault, 401 no usable credentials (missing or malformed
signature, nonce or timestamp), 403 credentials refused (bad signature, stale timestamp,
replayed nonce, no operator key configured), 404 fault injection disabled in the node config,
409 fault cannot be applied now, 429 nonce cache full. Every error is JSON
``{"error": ..., "detail": ...}``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Final

from aiohttp import web

from consensus.hashing import canonical
from node.crypto import Signer, verify
from node.faults import FaultConflict, FaultError, FaultLayer, parse_fault
from node.transport import BodyTooLarge, json_error, read_body_limited

log = logging.getLogger("medchain.admin")

ADMIN_DOMAIN: Final = b"medchain/admin/v1"
SIGNATURE_HEADER: Final = "X-Medchain-Operator-Signature"
MAX_SKEW_MS: Final = 30_000
NONCE_MIN_BYTES: Final = 16
NONCE_MAX_BYTES: Final = 64
NONCE_CACHE_MAX: Final = 10_000
MAX_ADMIN_BODY_BYTES: Final = 64 * 1024
SIGNATURE_BYTES: Final = 64

ACTION_FAULT: Final = "fault"
ACTION_CLEAR: Final = "clear"
ACTION_LIST: Final = "list"
_ENVELOPE_KEYS: Final = frozenset({"nonce", "timestamp_ms"})
_PARAM_KEYS: Final[dict[str, frozenset[str]]] = {
    ACTION_FAULT: frozenset({"fault"}),
    ACTION_CLEAR: frozenset({"id"}),
    ACTION_LIST: frozenset(),
}

WallClockMs = Callable[[], int]


def canonical_json(value: object) -> str:
    """The one JSON spelling of ``value`` that is signed: sorted keys, no whitespace."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def admin_signing_bytes(
    action: str, node_id: int, params: Mapping[str, Any], nonce: bytes, timestamp_ms: int
) -> bytes:
    return canonical(
        ADMIN_DOMAIN, (action, node_id, nonce, timestamp_ms, canonical_json(dict(params)))
    )


def _wall_ms() -> int:
    return int(time.time() * 1000)


def sign_admin_request(
    operator_secret: bytes,
    action: str,
    node_id: int,
    params: Mapping[str, Any],
    *,
    now_ms: int | None = None,
    nonce: bytes | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Client side: the request fields (JSON body for POST, query for GET) and the headers.

    The fields are ``params`` plus ``nonce`` and ``timestamp_ms``."""
    if action not in _PARAM_KEYS:
        raise ValueError(f"unknown admin action {action!r}")
    nonce = os.urandom(NONCE_MIN_BYTES) if nonce is None else nonce
    ts = _wall_ms() if now_ms is None else now_ms
    signature = Signer(operator_secret).sign(
        admin_signing_bytes(action, node_id, params, nonce, ts)
    )
    fields = {**params, "nonce": nonce.hex(), "timestamp_ms": ts}
    return fields, {SIGNATURE_HEADER: signature.hex()}


class NonceCache:
    """Nonces seen within the replay window, oldest first; bounded.

    A nonce is remembered for twice the allowed skew after it arrives: its timestamp can be
    at most MAX_SKEW_MS in the future, and after that it is stale anyway."""

    __slots__ = ("_max", "_seen", "_ttl_ms")

    def __init__(self, max_entries: int = NONCE_CACHE_MAX, ttl_ms: int = 2 * MAX_SKEW_MS) -> None:
        self._max = max_entries
        self._ttl_ms = ttl_ms
        self._seen: OrderedDict[bytes, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, nonce: bytes, now_ms: int) -> str | None:
        """Remember ``nonce``; None if fresh, else "replayed" or "full"."""
        while self._seen:
            oldest, expires = next(iter(self._seen.items()))
            if expires > now_ms:
                break
            del self._seen[oldest]
        if nonce in self._seen:
            return "replayed"
        if len(self._seen) >= self._max:
            return "full"  # refusing is safe; forgetting a live nonce would allow a replay
        self._seen[nonce] = now_ms + self._ttl_ms
        return None


class AdminError(Exception):
    def __init__(self, status: int, error: str, detail: object = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail


class AdminApi:
    """Handlers bound to one node's fault layer and the operator's public key."""

    def __init__(
        self,
        faults: FaultLayer | None,
        operator_public_key: bytes | None,
        *,
        wall_clock_ms: WallClockMs = _wall_ms,
        nonces: NonceCache | None = None,
    ) -> None:
        self.faults = faults
        self.operator_public_key = operator_public_key
        self._now_ms = wall_clock_ms
        self._nonces = nonces or NonceCache()
        self.rejected: dict[str, int] = {}

    # ------------------------------------------------------------------ handlers

    async def post_fault(self, request: web.Request) -> web.Response:
        return await self._handle(request, ACTION_FAULT)

    async def post_clear(self, request: web.Request) -> web.Response:
        return await self._handle(request, ACTION_CLEAR)

    async def get_faults(self, request: web.Request) -> web.Response:
        return await self._handle(request, ACTION_LIST)

    async def _handle(self, request: web.Request, action: str) -> web.Response:
        try:
            layer = self._enabled_layer()
            fields = await self._fields(request, action)
            params = self._authenticate(request, action, layer.self_id, fields)
            return self._perform(layer, action, params)
        except AdminError as e:
            self.rejected[e.error] = self.rejected.get(e.error, 0) + 1
            if e.status in (401, 403):
                log.warning(
                    "admin %s from %s refused: %s (%s)", action, request.remote, e.error, e.detail
                )
            return json_error(e.status, e.error, e.detail)

    # ------------------------------------------------------------------ steps

    def _enabled_layer(self) -> FaultLayer:
        if self.faults is None or not self.faults.enabled:
            raise AdminError(
                404,
                "fault injection disabled",
                "set [faults] enabled = true in this node's config to allow it",
            )
        return self.faults

    async def _fields(self, request: web.Request, action: str) -> dict[str, Any]:
        """The request's fields: the JSON body of a POST, the query of a GET."""
        if request.method == "GET":
            fields: dict[str, Any] = dict(request.query)
            if "timestamp_ms" in fields:
                fields["timestamp_ms"] = _query_int(fields["timestamp_ms"])
        else:
            if request.content_type != "application/json":
                raise AdminError(415, "unsupported content type", "use application/json")
            try:
                body = await read_body_limited(request, MAX_ADMIN_BODY_BYTES)
            except BodyTooLarge as e:
                raise AdminError(413, "body too large", str(e)) from None
            try:
                doc = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise AdminError(400, "malformed JSON", str(e)) from None
            if not isinstance(doc, dict):
                raise AdminError(400, "malformed request", "body must be a JSON object")
            fields = doc
        allowed = _ENVELOPE_KEYS | _PARAM_KEYS[action]
        unknown = sorted(set(fields) - allowed)
        if unknown:
            raise AdminError(400, "malformed request", f"unknown field {unknown[0]!r} for {action}")
        return fields

    def _authenticate(
        self, request: web.Request, action: str, node_id: int, fields: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Check signature, freshness and nonce; returns the signed parameters."""
        nonce = _nonce(fields.get("nonce"))
        ts = fields.get("timestamp_ms")
        if type(ts) is not int or ts < 0:
            raise AdminError(401, "missing credentials", "timestamp_ms must be an integer")
        sig_hex = request.headers.get(SIGNATURE_HEADER)
        if sig_hex is None:
            raise AdminError(401, "missing credentials", f"no {SIGNATURE_HEADER} header")
        try:
            signature = bytes.fromhex(sig_hex)
        except ValueError:
            raise AdminError(401, "malformed signature", "signature is not hex") from None
        if len(signature) != SIGNATURE_BYTES:
            raise AdminError(401, "malformed signature", f"must be {SIGNATURE_BYTES} bytes")
        if self.operator_public_key is None:
            raise AdminError(403, "no operator key", "this node's config has no [operator] key")
        params = {k: v for k, v in fields.items() if k not in _ENVELOPE_KEYS}
        try:
            signed = admin_signing_bytes(action, node_id, params, nonce, ts)
        except (TypeError, ValueError) as e:  # e.g. NaN in the body: it was never signed
            raise AdminError(400, "malformed request", str(e)) from None
        if not verify(self.operator_public_key, signed, signature):
            raise AdminError(403, "bad signature", "not signed by the operator key for this node")
        now = self._now_ms()
        if abs(now - ts) > MAX_SKEW_MS:
            raise AdminError(
                403,
                "stale request",
                f"timestamp is {(ts - now) / 1000:+.1f}s from the node's clock "
                f"(allowed: {MAX_SKEW_MS // 1000}s)",
            )
        verdict = self._nonces.add(nonce, now)
        if verdict == "replayed":
            raise AdminError(403, "replayed nonce", "this nonce was already used")
        if verdict == "full":
            raise AdminError(429, "too many admin requests", "retry in a few seconds")
        return params

    def _perform(self, layer: FaultLayer, action: str, params: Mapping[str, Any]) -> web.Response:
        if action == ACTION_FAULT:
            try:
                spec = parse_fault(params.get("fault"), n=layer.n)
                active = layer.apply(spec)
            except FaultConflict as e:
                raise AdminError(409, "fault not applied", str(e)) from None
            except FaultError as e:
                raise AdminError(400, "bad fault", str(e)) from None
            return web.json_response(
                {"node": layer.self_id, "applied": active.to_json(active.started)}, status=201
            )
        if action == ACTION_CLEAR:
            fault_id = params.get("id")
            if fault_id is not None and (type(fault_id) is not int or fault_id < 1):
                raise AdminError(400, "malformed request", "id must be a positive integer")
            cleared = layer.clear(fault_id)
            if fault_id is not None and not cleared:
                raise AdminError(404, "no such fault", f"fault {fault_id} is not active")
            return web.json_response({"node": layer.self_id, "cleared": cleared})
        return web.json_response({"node": layer.self_id, **layer.status()})


def _nonce(value: object) -> bytes:
    if not isinstance(value, str):
        raise AdminError(401, "missing credentials", "nonce must be a hex string")
    try:
        nonce = bytes.fromhex(value)
    except ValueError:
        raise AdminError(401, "missing credentials", "nonce is not hex") from None
    if not NONCE_MIN_BYTES <= len(nonce) <= NONCE_MAX_BYTES:
        raise AdminError(
            401, "missing credentials", f"nonce must be {NONCE_MIN_BYTES}..{NONCE_MAX_BYTES} bytes"
        )
    return nonce


def _query_int(text: str) -> int | str:
    """An integer query value, or the text unchanged (then refused as a bad timestamp)."""
    if text.isdigit() and len(text) <= 19:
        return int(text)
    return text


def admin_routes(
    fault_layer: FaultLayer | None,
    operator_public_key: bytes | None,
    *,
    wall_clock_ms: WallClockMs = _wall_ms,
) -> list[web.RouteDef]:
    """The admin routes for ``app.add_routes``. Always register them: with faults disabled
    they answer 404 with a JSON body saying how to enable them."""
    api = AdminApi(fault_layer, operator_public_key, wall_clock_ms=wall_clock_ms)
    return [
        web.post("/admin/fault", api.post_fault),
        web.post("/admin/clear", api.post_clear),
        web.get("/admin/faults", api.get_faults),
    ]


__all__ = [
    "ADMIN_DOMAIN",
    "MAX_SKEW_MS",
    "SIGNATURE_HEADER",
    "AdminApi",
    "NonceCache",
    "admin_routes",
    "admin_signing_bytes",
    "canonical_json",
    "sign_admin_request",
]
